export * from './transport.js';
export * from './errors.js';
export * from './parameters.js';
export * from './scheduler.js';
export * from './options.js';
export { MessageLayer, type MessageLayerCounters, type ReceivedResponse } from './message-layer.js';
export * from './client.js';
