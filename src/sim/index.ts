export * from './hes.js';
export * from './meters.js';
export * from './mesh-meter.js';
export * from './meter-server.js';
export * from './recorder.js';
export * from './relay.js';
export { SimulatedCosemMeter, type CosemMeterOptions, type CosemServeResult } from './cosem-meter.js';
export type { SimLog } from './log.js';
