#!/usr/bin/env node
// Reconnect storm: N simulated meters register with the gateway's resource
// directory all at once, as after a feeder outage, side by side in one run:
//   baseline  a bare coap server answering every POST /rd with 2.01 and a Location
//             (what the library and the meters' own stack cost)
//   gateway   MeshEndpoint + ResourceDirectory + MeterRegistry in LevelDB (synced
//             batches), wired as the ami-mesh-endpoint node wires them, with its
//             admission control (at most 128 registrations being written at once,
//             5.03 + Max-Age beyond that)
//   appliance `ami-gateway start` (Node-RED, the default flow, its store) with its
//             directory as deployed (Max-Age 20-40 s), started as npm start and the
//             systemd unit start it (with the heap settings of src/appliance/node-flags.ts)
//   v8-heap   the same appliance on V8's default heap settings: what those settings buy
// The server under test runs in a child process of its own (its peak RSS is the
// kernel's, VmHWM, so the figure is the server's alone), the meters in another (MeterFleet
// from dist/, one UDP socket per meter, serve: false, no readings). A meter's
// latency runs from its first attempt to its 2.01, 5.03 waits included.
// For a run of reasonable length the directory's Max-Age here is 1-2 s
// (BENCH_RETRY_AFTER=1); the node uses 20 s (20-40 s), which stretches the tail
// of a real storm accordingly. Not a test: nothing asserts timings, but the
// registrations stored are counted and any loss is reported (exit code 1).
import { fork, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { percentile, procCpuSeconds, procMemory, resetPeakRss } from './metrics.mjs';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = (file) => require(path.join(root, 'dist/src', file));

const METERS = Number(process.env.BENCH_METERS ?? 10_000);
const RETRY_AFTER_SECONDS = Number(process.env.BENCH_RETRY_AFTER ?? 1);
/** As nodes/ami-mesh-endpoint (RD_MAX_IN_FLIGHT). */
const MAX_IN_FLIGHT = Number(process.env.BENCH_MAX_IN_FLIGHT ?? 128);
/** As the default flow's mesh endpoint (maxMeters). */
const MAX_METERS = 20_000;
/** A storm that has not settled by then is reported as it stands. */
const DEADLINE_MS = Number(process.env.BENCH_DEADLINE_SECONDS ?? 600) * 1000;

const [mode, variant, portArg] = process.argv.slice(2);

/** What npm start and the systemd unit give node; BENCH_APPLIANCE_NODE_FLAGS (space-separated) tries others. */
function applianceNodeFlags() {
  const override = process.env.BENCH_APPLIANCE_NODE_FLAGS;
  return override === undefined ? [...dist('appliance/node-flags.js').APPLIANCE_NODE_FLAGS] : override.split(' ').filter(Boolean);
}

async function serveGateway() {
  const { acquireDatabase } = dist('store/database.js');
  const { MeterRegistry } = dist('mesh/registry.js');
  const { ResourceDirectory } = dist('mesh/rd.js');
  const { MeshEndpoint, DEFAULT_ACCEPT_TIMEOUT_MS, DEFAULT_RETRY_AFTER_SECONDS } = dist('coap/endpoint.js');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-rd-'));
  const lease = await acquireDatabase(path.join(dir, 'store'));
  // sync: true (the default), as the node opens it: a registration is answered once it is on disk.
  let registry = await MeterRegistry.open(lease.db, { maxMeters: MAX_METERS });
  const endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: DEFAULT_ACCEPT_TIMEOUT_MS, retryAfterSeconds: DEFAULT_RETRY_AFTER_SECONDS });
  const directory = new ResourceDirectory(registry, { maxInFlight: MAX_IN_FLIGHT, retryAfterSeconds: RETRY_AFTER_SECONDS });
  endpoint.addResource({ matches: (p) => ResourceDirectory.handles(p), handle: (req, res, p, q) => directory.handle(req, res, p, q) });
  await endpoint.start();
  // From here on the kernel keeps the peak (VmHWM): nothing to sample.
  resetPeakRss();
  const idleRss = process.memoryUsage().rss;
  const cpuAtIdle = procCpuSeconds();
  process.send({ port: endpoint.port, receiveBufferBytes: endpoint.receiveBufferBytes, idleRss });
  process.once('message', async () => {
    const rssPeakBytes = procMemory().peak;
    const cpuSeconds = procCpuSeconds() - cpuAtIdle;
    const inMemory = registry.size;
    await endpoint.stop();
    // What survives: close the registry (its last batch written) and load it again from LevelDB.
    await registry.close();
    registry = await MeterRegistry.open(lease.db, { maxMeters: MAX_METERS });
    const stored = registry.size;
    await registry.close();
    await lease.release();
    rmSync(dir, { recursive: true, force: true });
    process.send({ rssPeakBytes, cpuSeconds, inMemory, stored, deferred: directory.counters.deferred, refused: directory.counters.refused }, () => process.exit(0));
  });
}

async function serveBaseline() {
  const coap = require('coap');
  const { sizeReceiveBuffer } = dist('coap/server.js');
  const { RECEIVE_BUFFER_BYTES } = dist('coap/endpoint.js');
  const server = coap.createServer({ type: 'udp6' });
  const registered = new Set();
  let next = 0;
  server.on('request', (req, res) => {
    // The endpoint name, so the count says how many distinct meters got their 2.01.
    const ep = /(?:^|[?&])ep=([^&]*)/.exec(req.url)?.[1];
    if (ep) registered.add(ep);
    next += 1;
    res.code = '2.01';
    res.setOption('Location-Path', [Buffer.from('rd'), Buffer.from(next.toString(36))]);
    res.end();
  });
  await new Promise((resolve) => server.listen(0, '::1', resolve));
  // The receive buffer the mesh endpoint asks for: without it a burst overflows the default one and the
  // baseline would measure CoAP retransmission timers, not the library.
  const receiveBufferBytes = sizeReceiveBuffer(server, RECEIVE_BUFFER_BYTES);
  // From here on the kernel keeps the peak (VmHWM): nothing to sample.
  resetPeakRss();
  const idleRss = process.memoryUsage().rss;
  const cpuAtIdle = procCpuSeconds();
  process.send({ port: server._sock.address().port, receiveBufferBytes, idleRss });
  process.once('message', () => {
    const rssPeakBytes = procMemory().peak;
    const cpuSeconds = procCpuSeconds() - cpuAtIdle;
    server.close();
    process.send({ rssPeakBytes, cpuSeconds, inMemory: registered.size, stored: registered.size, deferred: 0, refused: 0 }, () => process.exit(0));
  });
}

/**
 * The whole appliance (`ami-gateway start`: Node-RED, the default flow, the
 * store) with no simulated meters of its own. Its peak RSS is the kernel's
 * high-water mark; the registrations stored are counted from its LevelDB
 * after it has stopped.
 */
async function serveAppliance(nodeFlags) {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-rd-appliance-'));
  const meshPort = 26683 + Math.floor(Math.random() * 1000);
  const httpPort = 22880 + Math.floor(Math.random() * 1000);
  const gateway = spawn(process.execPath, [...nodeFlags, path.join(root, 'bin/ami-gateway.js'), 'start'], {
    env: { ...process.env, AMI_DATA_DIR: dataDir, AMI_MESH_PORT: String(meshPort), AMI_HTTP_PORT: String(httpPort), AMI_SIM_METERS: '0', AMI_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const exited = new Promise((resolve) => gateway.once('exit', resolve));
  // Up once its health answers and the mesh endpoint reports no problem (registry loaded, socket open).
  for (let attempt = 0; ; attempt += 1) {
    try {
      const health = await (await fetch(`http://127.0.0.1:${httpPort}/ami/health`)).json();
      if (health.hesEndpoint && !(health.problems ?? []).some((p) => /mesh/.test(p))) break;
    } catch {
      // not listening yet
    }
    if (attempt > 600) throw new Error('the appliance did not come up within 60 s');
    await new Promise((resolve) => setTimeout(resolve, 100)); // no event to await across processes
  }
  const idle = procMemory(gateway.pid);
  const cpuAtIdle = procCpuSeconds(gateway.pid);
  process.send({ port: meshPort, idleRss: idle.rss });
  process.once('message', async () => {
    const { peak } = procMemory(gateway.pid);
    const cpuSeconds = procCpuSeconds(gateway.pid) - cpuAtIdle;
    gateway.kill('SIGTERM');
    await exited;
    const { acquireDatabase } = dist('store/database.js');
    const { MeterRegistry } = dist('mesh/registry.js');
    const lease = await acquireDatabase(path.join(dataDir, 'ami-store'));
    const registry = await MeterRegistry.open(lease.db, { maxMeters: MAX_METERS });
    const stored = registry.size;
    await registry.close();
    await lease.release();
    rmSync(dataDir, { recursive: true, force: true });
    // No directory counters from outside the process: the 5.03 column shows what the meters counted.
    process.send({ rssPeakBytes: peak, cpuSeconds, inMemory: stored, stored }, () => process.exit(0));
  });
}

async function runMeters(port) {
  const { MeterFleet } = dist('sim/meters.js');
  const fleet = new MeterFleet({
    count: METERS,
    gateway: `coap://[::1]:${port}`,
    intervalMs: 3_600_000,
    prefix: 'bench-',
    readings: false,
    register: true,
    serve: false,
    lifetimeSeconds: 3600,
    // All at once, as after an outage.
    startSpreadMs: 0,
  });
  const latencies = [];
  let firstAttemptAt;
  let lastRegisteredAt;
  let done;
  const allRegistered = new Promise((resolve) => (done = resolve));
  // When the last meter made its first attempt: how long the meters' process took to send the storm.
  let lastFirstAttemptAt;
  const tried = new Set();
  fleet.onRegistration((event) => {
    if (event.kind === 'attempt') {
      firstAttemptAt ??= event.at;
      if (!tried.has(event.meter)) {
        tried.add(event.meter);
        lastFirstAttemptAt = event.at;
      }
    }
    if (event.kind === 'registered') {
      latencies.push(event.latencyMs);
      lastRegisteredAt = event.at;
      if (latencies.length === METERS) done();
    }
  });
  await fleet.start();
  const deadline = setTimeout(done, DEADLINE_MS);
  await allRegistered;
  clearTimeout(deadline);
  latencies.sort((a, b) => a - b);
  const { registered, registrationDeferred, registrationRetries, registrationFailed } = fleet.stats;
  const result = {
    registered,
    allMs: lastRegisteredAt - firstAttemptAt,
    sentMs: lastFirstAttemptAt - firstAttemptAt,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    max: latencies.at(-1),
    deferred: registrationDeferred,
    retries: registrationRetries,
    failed: registrationFailed,
  };
  await fleet.stop();
  process.send(result, () => process.exit(0));
}

function child(args) {
  const proc = fork(fileURLToPath(import.meta.url), args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const messages = [];
  const waiters = [];
  proc.on('message', (message) => (waiters.length ? waiters.shift()(message) : messages.push(message)));
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  return {
    next: () =>
      messages.length
        ? Promise.resolve(messages.shift())
        : new Promise((resolve, reject) => {
            waiters.push(resolve);
            exited.then((code) => reject(new Error(`${args.join(' ')} exited with ${code}`)));
          }),
    send: (message) => proc.send(message),
    exited,
  };
}

async function storm(label) {
  const server = child(['server', label]);
  const ready = await server.next();
  const meters = child(['meters', label, String(ready.port)]);
  const fleet = await meters.next();
  await meters.exited;
  server.send('report');
  const report = await server.next();
  await server.exited;
  return { label, ...ready, ...fleet, fleetDeferred: fleet.deferred, ...report };
}

if (mode === 'server') {
  if (variant === 'gateway') await serveGateway();
  else if (variant === 'appliance') await serveAppliance(applianceNodeFlags());
  else if (variant === 'v8-heap') await serveAppliance([]);
  else await serveBaseline();
} else if (mode === 'meters') {
  await runMeters(Number(portArg));
} else {
  const results = [await storm('baseline'), await storm('gateway'), await storm('appliance'), await storm('v8-heap')];
  const [base, gateway, appliance, v8Heap] = results;
  const mib = (bytes) => (bytes / 1024 / 1024).toFixed(1);
  console.log(`reconnect storm: ${METERS} meters register at once, loopback, node ${process.version}, ${os.cpus().length} cores`);
  console.log(
    `gateway: mesh endpoint + resource directory (maxInFlight ${MAX_IN_FLIGHT}, 5.03 Max-Age ${RETRY_AFTER_SECONDS}-${2 * RETRY_AFTER_SECONDS} s for this bench; the node uses 20-40 s) + registry in LevelDB (synced)`,
  );
  console.log('meters wait Max-Age x 1-1.5 after a 5.03; latency = first attempt to 2.01, waits included');
  console.log('storm sent = first to last meter\'s first attempt (how fast the meters\' process puts the storm on the wire)');
  console.log('variant    storm sent s  all registered s   p50 ms   p99 ms   max ms    5.03  retries  failed   RSS idle MiB  RSS peak MiB  CPU s   stored');
  for (const r of results) {
    console.log(
      `${r.label.padEnd(10)} ${(r.sentMs / 1000).toFixed(2).padStart(12)} ${(r.allMs / 1000).toFixed(2).padStart(17)} ${r.p50.toFixed(0).padStart(8)} ${r.p99.toFixed(0).padStart(8)} ${r.max.toFixed(0).padStart(8)} ${String(r.deferred).padStart(7)} ${String(r.retries).padStart(8)} ${String(r.failed).padStart(7)} ${mib(r.idleRss).padStart(14)} ${mib(r.rssPeakBytes).padStart(13)} ${r.cpuSeconds.toFixed(1).padStart(6)} ${String(r.stored).padStart(8)}`,
    );
  }
  console.log(
    `ratio gateway/baseline: all registered ${(gateway.allMs / base.allMs).toFixed(2)}x, p50 ${(gateway.p50 / base.p50).toFixed(2)}x, p99 ${(gateway.p99 / base.p99).toFixed(2)}x`,
  );
  console.log(
    `ratio appliance/baseline: all registered ${(appliance.allMs / base.allMs).toFixed(2)}x, p99 ${(appliance.p99 / base.p99).toFixed(2)}x; the appliance's directory uses the node's Max-Age (20-40 s)`,
  );
  console.log(
    `RSS and CPU: the server process alone (the meters run in another process); RSS peak from the kernel (VmHWM; appliance: Node-RED and its start-up included); CPU from ready to the storm's end; socket receive buffer granted: ${Math.round((gateway.receiveBufferBytes ?? 0) / 1024)} KiB (baseline ${Math.round((base.receiveBufferBytes ?? 0) / 1024)} KiB)`,
  );
  console.log(`5.03 answered by the directory: ${gateway.deferred}; counted by the meters: ${gateway.fleetDeferred}`);
  const lost = METERS - gateway.stored;
  console.log(`registrations lost: ${lost} (${gateway.stored} of ${METERS} in LevelDB after closing and reopening the registry)`);
  console.log(`appliance registrations lost: ${METERS - appliance.stored} (${appliance.stored} of ${METERS} in its LevelDB after it stopped); on V8's default heap: ${METERS - v8Heap.stored}`);
  console.log(
    `appliance heap settings: ${applianceNodeFlags().join(' ')}; RSS peak ${mib(appliance.rssPeakBytes)} MiB with them, ${mib(v8Heap.rssPeakBytes)} MiB on V8's defaults (${(appliance.rssPeakBytes / v8Heap.rssPeakBytes).toFixed(2)}x); CPU during the storm ${appliance.cpuSeconds.toFixed(1)} s vs ${v8Heap.cpuSeconds.toFixed(1)} s (${(appliance.cpuSeconds / v8Heap.cpuSeconds).toFixed(2)}x)`,
  );
  if (lost !== 0 || base.stored !== METERS || appliance.stored !== METERS || v8Heap.stored !== METERS) process.exitCode = 1;
}
