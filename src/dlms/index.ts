/**
 * The DLMS/COSEM codec and security layer: pure functions over bytes.
 */
export * from './errors.js';
export * from './obis.js';
export * from './axdr.js';
export * from './apdu.js';
export * from './wrapper.js';
export * from './keywrap.js';
export * from './security.js';
