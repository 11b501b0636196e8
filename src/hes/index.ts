export * from './contract.js';
export * from './uplink.js';
