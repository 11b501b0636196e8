// The appliance's configuration, health, logs and settings. The runtime that
// embeds Node-RED (runtime.ts) and the CLI (cli.ts) are entry points of their
// own, not exported here, so that loading the core never loads Node-RED.
export * from './config.js';
export * from './health.js';
export * from './log.js';
export * from './secrets.js';
export * from './admin-users.js';
export * from './settings.js';
