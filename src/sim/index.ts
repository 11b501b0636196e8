export * from './hes.js';
export * from './meters.js';
export * from './recorder.js';
export type { SimLog } from './log.js';
