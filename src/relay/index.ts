/** The relay command lifecycle (issue 6): public face of src/relay. */
export * from './types.js';
export * from './policy.js';
export * from './journal.js';
export * from './audit.js';
export * from './service.js';
export * from './operators.js';
export * from './totp.js';
export * from './dlms-port.js';
export * from './api.js';
export * from './reporter.js';
