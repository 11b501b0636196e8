#!/usr/bin/env node
// Benchmarks the first data path side by side with its baseline, in one run:
//   baseline  a bare coap server that answers 2.04 at once (what the library costs)
//   core      MeshEndpoint -> HesUplink -> HES simulator, no Node-RED
//   appliance `ami-gateway start` (Node-RED flow mesh in -> hes out) -> HES simulator
// Each is driven by the same closed-loop load: C clients (own UDP sockets), each
// posting its next reading as soon as the previous one is acknowledged.
// Prints readings/s and the ratio to the baseline. Not a test: nothing asserts timings.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const coap = require('coap');
const { MeshEndpoint } = require(path.join(root, 'dist/src/coap/endpoint.js'));
const { settleExchange } = require(path.join(root, 'dist/src/coap/exchanges.js'));
const { coapCall, closeAgent } = require(path.join(root, 'dist/src/coap/request.js'));
const { encodeReading, CONTENT_FORMAT } = require(path.join(root, 'dist/src/coap/reading.js'));
const { HesUplink } = require(path.join(root, 'dist/src/hes/uplink.js'));
const { HesSimulator } = require(path.join(root, 'dist/src/sim/hes.js'));

const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 50);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);

async function drive(port, label) {
  const agents = Array.from({ length: CLIENTS }, () => new coap.Agent({ type: 'udp6' }));
  let done = 0;
  let failed = 0;
  const reasons = new Map();
  const latencies = [];
  const deadline = Date.now() + SECONDS * 1000;
  const started = Date.now();
  await Promise.all(
    agents.map(async (agent, i) => {
      let seq = 0;
      while (Date.now() < deadline) {
        seq += 1;
        const reading = { id: `${label}-${seq}`, meter: `bench-${i}`, ts: Date.now(), values: [{ obis: '1.0.1.8.0.255', value: seq, unit: 'Wh' }] };
        const t0 = process.hrtime.bigint();
        try {
          const res = await coapCall(`coap://[::1]:${port}/readings`, {
            method: 'POST',
            payload: encodeReading(reading),
            contentFormat: CONTENT_FORMAT.cbor,
            timeoutMs: 10_000,
            agent,
          });
          if (res.code === '2.04') {
            done += 1;
            latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
          } else {
            failed += 1;
            reasons.set(res.code, (reasons.get(res.code) ?? 0) + 1);
          }
        } catch (err) {
          failed += 1;
          reasons.set(err.code ?? err.message, (reasons.get(err.code ?? err.message) ?? 0) + 1);
        }
      }
    }),
  );
  const seconds = (Date.now() - started) / 1000;
  await Promise.all(agents.map((agent) => closeAgent(agent)));
  latencies.sort((a, b) => a - b);
  const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] : NaN);
  return { label, perSecond: done / seconds, done, failed, reasons, p50: pct(0.5), p99: pct(0.99) };
}

async function baseline() {
  const server = coap.createServer({ type: 'udp6' });
  server.on('request', (req, res) => {
    res.code = '2.04';
    res.end();
  });
  await new Promise((resolve) => server.listen(0, '::1', resolve));
  const port = server._sock.address().port;
  try {
    return await drive(port, 'baseline');
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

async function core() {
  const hes = new HesSimulator({ port: 0, bind: '::1' });
  await hes.start();
  const uplink = new HesUplink({ gateway: 'bench', endpoints: [hes.url], requestTimeoutMs: 5000, lingerMs: 5, maxBatch: 64, maxQueued: 10_000 });
  const endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 1500, retryAfterSeconds: 30 });
  endpoint.onUplink((uplink_) => {
    const r = uplink_.reading;
    uplink.submit({ key: `${r.meter}/${r.id}`, kind: 'reading', meter: r.meter, ts: r.ts, body: r }).then(
      () => settleExchange(uplink_.exchangeId, { accepted: true }),
      (err) => settleExchange(uplink_.exchangeId, { accepted: false, reason: err.message }),
    );
  });
  await endpoint.start();
  try {
    return await drive(endpoint.port, 'core');
  } finally {
    await endpoint.stop();
    await uplink.close();
    await hes.stop();
  }
}

async function appliance() {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-'));
  const meshPort = 25683 + Math.floor(Math.random() * 1000);
  const httpPort = 21880 + Math.floor(Math.random() * 1000);
  const child = spawn(process.execPath, [path.join(root, 'bin/ami-gateway.js'), 'start'], {
    env: { ...process.env, AMI_DATA_DIR: dataDir, AMI_MESH_PORT: String(meshPort), AMI_HTTP_PORT: String(httpPort), AMI_SIM_METERS: '0', AMI_LOG_LEVEL: 'warn' },
    stdio: ['ignore', process.env.BENCH_VERBOSE ? 'inherit' : 'ignore', 'inherit'],
  });
  try {
    for (let i = 0; i < 200; i++) {
      try {
        const res = await fetch(`http://127.0.0.1:${httpPort}/ami/health`);
        if (res.ok && (await res.json()).hesEndpoint) break;
      } catch {
        // not up yet
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return await drive(meshPort, 'appliance');
  } finally {
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const results = [await baseline(), await core(), await appliance()];
const base = results[0].perSecond;
console.log(`mesh -> HES data path: ${CLIENTS} closed-loop meters, ${SECONDS}s each, loopback, node ${process.version}`);
console.log('variant     readings/s   ratio   p50 ms   p99 ms   failed');
for (const r of results) {
  console.log(
    `${r.label.padEnd(10)} ${r.perSecond.toFixed(0).padStart(11)} ${(r.perSecond / base).toFixed(2).padStart(7)} ${r.p50.toFixed(2).padStart(8)} ${r.p99.toFixed(2).padStart(8)} ${String(r.failed).padStart(8)}${r.failed ? `  (${[...r.reasons].map(([k, v]) => `${k}: ${v}`).join(', ')})` : ''}`,
  );
}
