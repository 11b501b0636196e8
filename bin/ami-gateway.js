#!/usr/bin/env node
'use strict';
// The ami-gateway command. The implementation is compiled TypeScript in dist/
// (npm run build); this stub only hands over to it.
let cli;
try {
  cli = require('../dist/src/appliance/cli.js');
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && /dist[\\/]src[\\/]appliance[\\/]cli/.test(String(err.message))) {
    process.stderr.write('ami-gateway: not built yet; run "npm run build" first\n');
    process.exit(1);
  }
  throw err;
}
cli.main(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`ami-gateway: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
