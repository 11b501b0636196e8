export * from './contract.js';
export * from './uplink.js';
export * from './records.js';
export * from './drain.js';
export * from './sites.js';
export * from './shard.js';
export * from './journal-reporter.js';
