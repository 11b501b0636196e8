export * from './url.js';
export * from './cbor.js';
export * from './reading.js';
export * from './exchanges.js';
export * from './endpoint.js';
export * from './request.js';
export * from './options.js';
export * from './server.js';
