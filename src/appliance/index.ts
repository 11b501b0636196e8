export * from './config.js';
export * from './health.js';
export * from './log.js';
export * from './secrets.js';
export * from './admin-users.js';
export * from './settings.js';
export { startAppliance, meshTargetHost, type RunningAppliance } from './runtime.js';
export { main } from './cli.js';
