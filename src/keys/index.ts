export * from './bundle.js';
export * from './pki.js';
export * from './keystore.js';
export * from './counters.js';
export * from './keyring.js';
export * from './sync.js';
export * from './files.js';
export * from './rotation.js';
