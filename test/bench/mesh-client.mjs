#!/usr/bin/env node
// Requests to meters through the gateway's congestion-controlled client
// (MeshClient: NSTART 1 per meter, gateway-wide cap, priorities) against the
// coap library's Agent doing the same requests with the same concurrency, in
// one run and against the same meters.
//   meters    N coap library servers in a child process, each answering GET /status (64 bytes)
//             and GET /lp (4 KiB, block-wise)
//   baseline  coap Agent, at most one request per meter at a time, CONCURRENCY in all
//   client    MeshClient with maxConcurrent CONCURRENCY
// Prints requests/s, p50 and p99, and the ratio to the baseline. Not a test: nothing asserts timings.
import { fork } from 'node:child_process';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { percentile } from './metrics.mjs';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const self = fileURLToPath(import.meta.url);
const coap = require('coap');

const METERS = Number(process.env.BENCH_METERS ?? 100);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 64);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const LOAD_PROFILE = Buffer.alloc(4096, 7);

if (process.argv[2] === 'meters') {
  // The meters: one coap server (own socket) per meter.
  const ports = [];
  for (let i = 0; i < METERS; i += 1) {
    const server = coap.createServer({ type: 'udp6' });
    server.on('request', (req, res) => {
      if (req.url.startsWith('/lp')) res.end(LOAD_PROFILE);
      else res.end(Buffer.alloc(64, i & 0xff));
    });
    await new Promise((resolve) => server.listen(0, '::1', resolve));
    ports.push(server._sock.address().port);
  }
  process.send({ ports });
  process.on('message', () => process.exit(0));
} else {
  const { MeshClient } = require(path.join(root, 'dist/src/coap/client/index.js'));
  const child = fork(self, ['meters'], { stdio: 'inherit' });
  const { ports } = await new Promise((resolve) => child.once('message', resolve));

  // Closed loop: CONCURRENCY workers, each taking the next meter in turn; a meter is never asked twice at once.
  async function drive(label, pathName, send) {
    const latencies = [];
    let failed = 0;
    const busy = new Set();
    let next = 0;
    const deadline = Date.now() + SECONDS * 1000;
    const started = Date.now();
    await Promise.all(
      Array.from({ length: Math.min(CONCURRENCY, METERS) }, async () => {
        while (Date.now() < deadline) {
          let meter;
          do meter = next++ % METERS;
          while (busy.has(meter));
          busy.add(meter);
          const t0 = performance.now();
          try {
            const bytes = await send(ports[meter], pathName);
            if (bytes > 0) latencies.push(performance.now() - t0);
            else failed += 1;
          } catch {
            failed += 1;
          } finally {
            busy.delete(meter);
          }
        }
      }),
    );
    const seconds = (Date.now() - started) / 1000;
    latencies.sort((a, b) => a - b);
    return { label, rate: latencies.length / seconds, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99), failed };
  }

  const agent = new coap.Agent({ type: 'udp6' });
  const viaAgent = (port, pathName) =>
    new Promise((resolve, reject) => {
      const req = coap.request({ hostname: '::1', port, pathname: pathName, agent, confirmable: true });
      req.on('response', (res) => resolve(res.payload.length));
      req.on('error', reject);
      req.on('timeout', reject);
      req.end();
    });
  const client = await MeshClient.open({ bind: '::1', receiveBufferBytes: 4 * 1024 * 1024 }, { maxConcurrent: CONCURRENCY, blockSize: 1024 });
  const viaClient = async (port, pathName) => (await client.request({ peer: { address: '::1', port }, method: 'GET', path: pathName })).payload.length;

  const rows = [];
  for (const [pathName, what] of [
    ['/status', 'GET /status (64 B)'],
    ['/lp', 'GET /lp (4 KiB, 4 blocks)'],
  ]) {
    // Warm both up, then measure side by side.
    await drive('warm-up', pathName, viaAgent);
    await drive('warm-up', pathName, viaClient);
    const baseline = await drive('coap Agent (baseline)', pathName, viaAgent);
    const ours = await drive('MeshClient', pathName, viaClient);
    rows.push({ what, baseline, ours });
  }
  console.log(`\nmesh client: ${METERS} meters, ${CONCURRENCY} requests in flight, ${SECONDS} s per variant\n`);
  console.log('| request | variant | requests/s | ratio | p50 ms | p99 ms | failed |');
  console.log('|---|---|---|---|---|---|---|');
  for (const { what, baseline, ours } of rows) {
    for (const r of [baseline, ours]) {
      console.log(`| ${what} | ${r.label} | ${r.rate.toFixed(0)} | ${(r.rate / baseline.rate).toFixed(2)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.failed} |`);
    }
  }
  await client.close();
  agent.close();
  child.send('stop');
}
