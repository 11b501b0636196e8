#!/usr/bin/env node
// Benchmarks uplink ingest, meter to flow output, side by side with its
// baseline, in one run. Target: the flow variant at least 0.6x the baseline's
// readings per second. Unlike run.mjs, there is no HES here: the reading is
// acknowledged as soon as it is taken in.
//   baseline    a bare coap server answering 2.04 to every request (what the library costs)
//   core        MeshEndpoint with one uplink listener that settles the exchange at once:
//               meter -> endpoint -> listener -> 2.04, no Node-RED
//   flow        Node-RED embedded, flow `ami-mesh-endpoint` + `ami-mesh-in` (ackMode "received",
//               wired to nothing): meter -> endpoint -> mesh in node's output -> 2.04
//   flow+fn     the same flow with the mesh in node wired to a function node that counts the
//               messages: what one downstream node costs, and proof the messages leave the node
// Each variant runs in its own child process (this file, with the variant as argument), the
// load generator in this one, so every variant gets the same share of the machine. Each is
// warmed up, then driven by the same closed-loop load: C clients (own UDP sockets), each
// posting its next reading as soon as the previous one is acknowledged.
// Prints a markdown table of readings/s, the ratio to the baseline, p50/p99 latency and
// failures. Not a test: nothing asserts timings; it exits non-zero only if a variant fails to start.
//   BENCH_CLIENTS (50)  BENCH_SECONDS (5)  BENCH_WARMUP_SECONDS (1)  BENCH_VERBOSE (Node-RED's log)
// Needs dist/ (npm run build).
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { driveReadings } from './closed-loop.mjs';

const require = createRequire(import.meta.url);
const self = fileURLToPath(import.meta.url);
const root = path.resolve(path.dirname(self), '..', '..');
const coap = require('coap');

const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 50);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 1);
const START_TIMEOUT_MS = 60_000;
const VARIANTS = ['baseline', 'core', 'flow', 'flow+fn'];

// ---------------------------------------------------------------------------------------------
// Child side: one server variant. Tells the parent its port over IPC ({ port }); on 'stop' it
// answers with what it counted ({ stats }) and exits.
// ---------------------------------------------------------------------------------------------

async function baselineServer() {
  const server = coap.createServer({ type: 'udp6' });
  server.on('request', (_req, res) => {
    res.code = '2.04';
    res.end();
  });
  await new Promise((resolve) => server.listen(0, '::1', resolve));
  return { port: server._sock.address().port, stats: () => ({}), stop: () => new Promise((resolve) => server.close(resolve)) };
}

async function coreServer() {
  const { MeshEndpoint } = require(path.join(root, 'dist/src/coap/endpoint.js'));
  const { settleExchange } = require(path.join(root, 'dist/src/coap/exchanges.js'));
  const { readingKey } = require(path.join(root, 'dist/src/coap/reading.js'));
  // The same options the node uses by default (15 s accept timeout, 30 s retry after).
  const endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 15_000, retryAfterSeconds: 30 });
  let settled = 0;
  endpoint.onUplink(({ exchangeId, reading }) => {
    if (settleExchange(exchangeId, readingKey(reading.meter, reading.id), { accepted: true }) === 'settled') settled += 1;
  });
  await endpoint.start();
  return { port: endpoint.port, stats: () => ({ settled, duplicates: endpoint.duplicates }), stop: () => endpoint.stop() };
}

/**
 * Node-RED embedded as the appliance embeds it (src/appliance/runtime.ts): RED.init on an
 * http server, this package loaded as a node module through `nodesDir`. The http server is
 * never listened on: nothing here needs the editor. The endpoint binds port 0; its port is
 * read from the node's "listening on coap://[::1]:PORT" log line, which also says the mesh in
 * node has registered (the endpoint opens when its first user registers).
 */
async function flowServer(withFunction) {
  const RED = require('node-red');
  const userDir = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-ingest-'));
  // Also when the flow fails to start and this process exits early.
  process.once('exit', () => rmSync(userDir, { recursive: true, force: true }));
  const counter = { messages: 0 };
  const flow = [
    { id: 'bench-tab', type: 'tab', label: 'ingest bench' },
    { id: 'bench-endpoint', type: 'ami-mesh-endpoint', name: 'mesh', bind: '::1', port: '0', acceptTimeout: '15000', retryAfter: '30', maxMeters: '20000', allow: '', registeredOnly: false },
    { id: 'bench-in', type: 'ami-mesh-in', z: 'bench-tab', name: 'readings', endpoint: 'bench-endpoint', ackMode: 'received', resource: 'readings', x: 150, y: 100, wires: [withFunction ? ['bench-count'] : []] },
  ];
  if (withFunction) {
    flow.push({ id: 'bench-count', type: 'function', z: 'bench-tab', name: 'count', func: "global.get('benchCounter').messages += 1;\nreturn null;", outputs: 0, x: 350, y: 100, wires: [] });
  }
  writeFileSync(path.join(userDir, 'flows.json'), JSON.stringify(flow));
  let resolvePort;
  let rejectPort;
  const listening = new Promise((resolve, reject) => {
    resolvePort = resolve;
    rejectPort = reject;
  });
  listening.catch(() => undefined); // may reject while RED.start() runs, before it is awaited
  const verbose = Boolean(process.env.BENCH_VERBOSE);
  const settings = {
    userDir,
    flowFile: 'flows.json',
    credentialSecret: 'ami-bench',
    httpAdminRoot: '/',
    httpNodeRoot: false,
    nodesDir: [root],
    functionGlobalContext: { benchCounter: counter },
    externalModules: { palette: { allowInstall: false }, modules: { allowInstall: false } },
    telemetry: { enabled: false, updateNotification: false },
    logging: {
      console: { level: verbose ? 'info' : 'error', metrics: false, audit: false },
      bench: {
        level: 'info',
        metrics: false,
        audit: false,
        handler: () => (msg) => {
          const text = typeof msg.msg === 'string' ? msg.msg : '';
          const match = /coap:\/\/\[::1\]:(\d+)/.exec(text);
          if (msg.type === 'ami-mesh-endpoint' && match) resolvePort(Number(match[1]));
          else if (msg.type === 'ami-mesh-endpoint' && msg.level <= 20) rejectPort(new Error(`mesh endpoint: ${text}`));
          // Our nodes failed to load (dist/ missing or being rebuilt): the flow would wait forever.
          else if (text.startsWith('Waiting for missing types')) rejectPort(new Error(`${text} (is dist/ built?)`));
        },
      },
    },
  };
  const server = http.createServer();
  RED.init(server, settings);
  await RED.start();
  const timer = setTimeout(() => rejectPort(new Error('the mesh endpoint did not start listening')), START_TIMEOUT_MS);
  const port = await listening.finally(() => clearTimeout(timer));
  const version = typeof RED.version === 'function' ? RED.version() : RED.version;
  return {
    port,
    stats: () => ({ nodeRed: version, ...(withFunction ? { delivered: counter.messages } : {}) }),
    stop: async () => {
      await RED.stop();
      rmSync(userDir, { recursive: true, force: true });
    },
  };
}

async function serve(variant) {
  const started =
    variant === 'baseline' ? baselineServer() : variant === 'core' ? coreServer() : variant === 'flow' ? flowServer(false) : variant === 'flow+fn' ? flowServer(true) : Promise.reject(new Error(`unknown variant ${variant}`));
  let server;
  try {
    server = await started;
  } catch (err) {
    process.send({ error: err.message ?? String(err) });
    process.exit(1);
  }
  process.on('message', async (message) => {
    if (message !== 'stop') return;
    const stats = server.stats();
    await server.stop();
    process.send({ stats }, () => process.exit(0));
  });
  process.send({ port: server.port });
}

// ---------------------------------------------------------------------------------------------
// Parent side: the load generator.
// ---------------------------------------------------------------------------------------------

function drive(port, label, seconds) {
  return driveReadings(port, label, { clients: CLIENTS, seconds });
}

/** Starts VARIANT in a child process; resolves with its port and a stop function that returns its stats. */
async function startChild(variant) {
  const child = fork(self, [variant], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const first = await Promise.race([
    new Promise((resolve) => child.once('message', resolve)),
    exited.then(({ code, signal }) => ({ error: `exited with ${code ?? signal} before listening` })),
    new Promise((resolve) => setTimeout(() => resolve({ error: `not listening after ${START_TIMEOUT_MS / 1000} s` }), START_TIMEOUT_MS).unref()),
  ]);
  if (first.error) {
    child.kill('SIGKILL');
    throw new Error(`${variant} did not start: ${first.error}`);
  }
  return {
    port: first.port,
    stop: async () => {
      const reply = new Promise((resolve) => child.once('message', (message) => resolve(message.stats)));
      child.send('stop');
      const stats = await Promise.race([reply, exited.then(() => undefined), new Promise((resolve) => setTimeout(resolve, 10_000).unref())]);
      child.kill('SIGTERM');
      await exited;
      return stats ?? {};
    },
  };
}

async function measure(variant) {
  const server = await startChild(variant);
  try {
    const warm = await drive(server.port, 'warm-up', WARMUP_SECONDS);
    const result = await drive(server.port, 'bench', SECONDS);
    return { ...result, label: variant, warmDone: warm.done, stats: await server.stop() };
  } catch (err) {
    await server.stop();
    throw err;
  }
}

async function main() {
  const results = [];
  let startFailures = 0;
  for (const variant of VARIANTS) {
    try {
      results.push(await measure(variant));
    } catch (err) {
      startFailures += 1;
      console.error(err.message);
      results.push({ label: variant, error: err.message });
    }
  }
  const base = results[0].error ? NaN : results[0].perSecond;
  const nodeRed = results.find((r) => r.stats?.nodeRed)?.stats.nodeRed;
  console.log(
    `\nuplink ingest, meter to flow output (no HES): ${CLIENTS} closed-loop meters, ${SECONDS} s each after ${WARMUP_SECONDS} s warm-up, loopback [::1], node ${process.version}${nodeRed ? `, Node-RED ${nodeRed}` : ''}, ${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'})\n`,
  );
  console.log('| variant | readings/s | ratio to baseline | p50 ms | p99 ms | failed |');
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const r of results) {
    if (r.error) {
      console.log(`| ${r.label} | did not start | | | | |`);
      continue;
    }
    const why = r.failed ? ` (${[...r.reasons].map(([k, v]) => `${k}: ${v}`).join(', ')})` : '';
    console.log(`| ${r.label} | ${r.perSecond.toFixed(0)} | ${(r.perSecond / base).toFixed(2)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${r.failed}${why} |`);
  }
  const fn = results.find((r) => r.label === 'flow+fn' && !r.error);
  if (fn && fn.stats.delivered !== undefined) {
    // Every acknowledged reading (warm-up included) should have reached the function node.
    console.log(`\nflow+fn: ${fn.stats.delivered} messages reached the function node for ${fn.warmDone + fn.done} acknowledged readings`);
  }
  if (startFailures) process.exitCode = 1;
}

if (process.argv[2]) await serve(process.argv[2]);
else await main();
