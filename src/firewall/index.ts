export * from './ruleset.js';
export * from './nft.js';
export * from './manager.js';
