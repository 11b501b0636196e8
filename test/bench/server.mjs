#!/usr/bin/env node
// One benchmark server variant in its own process, so that every variant gets
// the same split of the machine: the load generator in one process, the
// server under test in another. Prints "port <n>" once it listens; SIGTERM stops it.
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const coap = require('coap');
const { MeshEndpoint } = require(path.join(root, 'dist/src/coap/endpoint.js'));
const { settleExchange } = require(path.join(root, 'dist/src/coap/exchanges.js'));
const { HesUplink } = require(path.join(root, 'dist/src/hes/uplink.js'));
const { HesSimulator } = require(path.join(root, 'dist/src/sim/hes.js'));
const { readingKey } = require(path.join(root, 'dist/src/hes/contract.js'));

const variant = process.argv[2];
const stops = [];

if (variant === 'baseline') {
  // A bare coap server: what the library itself costs per request.
  const server = coap.createServer({ type: 'udp6' });
  server.on('request', (_req, res) => {
    res.code = '2.04';
    res.end();
  });
  await new Promise((resolve) => server.listen(0, '::1', resolve));
  stops.push(() => new Promise((resolve) => server.close(resolve)));
  console.log(`port ${server._sock.address().port}`);
} else if (variant === 'core') {
  // The gateway's data path without Node-RED: mesh endpoint -> HES uplink -> HES simulator.
  const hes = new HesSimulator({ port: 0, bind: '::1' });
  await hes.start();
  const uplink = new HesUplink({ gateway: 'bench', endpoints: [hes.url], requestTimeoutMs: 5000, lingerMs: 5, maxBatch: 64, maxQueued: 10_000 });
  const endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 1500, retryAfterSeconds: 30 });
  endpoint.onUplink(({ exchangeId, reading }) => {
    uplink
      .submit({ key: readingKey(reading.meter, reading.id), kind: 'reading', meter: reading.meter, ts: reading.ts, body: reading })
      .then(
        () => settleExchange(exchangeId, readingKey(reading.meter, reading.id), { accepted: true }),
        (err) => settleExchange(exchangeId, readingKey(reading.meter, reading.id), { accepted: false, reason: err.message }),
      );
  });
  await endpoint.start();
  stops.push(() => endpoint.stop(), () => uplink.close(), () => hes.stop());
  console.log(`port ${endpoint.port}`);
} else {
  console.error(`unknown variant ${variant}`);
  process.exit(2);
}

process.once('SIGTERM', async () => {
  for (const stop of stops) await stop();
  process.exit(0);
});
