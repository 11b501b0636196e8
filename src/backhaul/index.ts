// The backhaul to the HES: whether the OpenVPN tunnel is up, read from
// OpenVPN's management interface (docs/backhaul.md).
export * from './errors.js';
export * from './address.js';
export * from './parser.js';
export * from './reply.js';
export * from './client.js';
export * from './monitor.js';
export * from './request.js';
