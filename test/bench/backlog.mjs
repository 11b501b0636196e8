#!/usr/bin/env node
// A long HES outage, end to end: a backlog of RECORDS (1,000,000 by default) is built
// through the real Outbox API (group-committed, synced appends from WRITERS concurrent
// writers: realistic ~150-byte DLMS-keyed records from 10,000 meters, 1% alarms, 4% events,
// 95% readings), then drained to a HES simulator in its own process
// (`ami-gateway sim hes` on loopback) through the real OutboxDrain and HesUplink, with the
// drain's rate limit raised for the bench. This process plays the gateway: its peak RSS
// (VmHWM) must stay under 200 MB for the whole run. Checks that the simulator stored
// RECORDS distinct keys and that the outbox is empty.
//
//   node test/bench/backlog.mjs [RECORDS]        (or BENCH_BACKLOG=RECORDS; 100000 for a quick run)
//
// Prints build rate, drain rate, times and the peak RSS. Not a test: nothing asserts
// timings; the exit code is 1 when a record is missing or the RSS limit was passed.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { procMemory } from './metrics.mjs';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = (relative) => require(path.join(root, 'dist', 'src', relative));

export const METERS = 10_000;
const RSS_LIMIT = 200 * 1024 * 1024;

function systemTitle(meter) {
  return `4d4d4d${meter.toString(16).padStart(10, '0')}`;
}

/**
 * The i-th record of the bench load, as the gateway hands it to the outbox
 * (a HES record: DLMS key, kind, meter, capture time, body), prefixed so two
 * loads in one simulator do not share keys.
 */
export function benchRecord(i, prefix = '') {
  const meter = i % METERS;
  const counter = Math.floor(i / METERS) + 1;
  const name = `MTR${String(meter).padStart(6, '0')}`;
  const ts = 1_767_225_600_000 + counter * 900_000;
  const key = `${prefix}dlms/${systemTitle(meter)}/1/${counter}`;
  const slot = i % 100;
  if (slot === 0) return { key, kind: 'alarm', meter: name, ts, body: { alarm: 'tamper-cover-open', register: '0.0.97.98.0.255', flags: 0x40 } };
  if (slot < 5) return { key, kind: 'event', meter: name, ts, body: { event: 'power-restored', log: '0.0.99.98.1.255', code: 2 } };
  return {
    key,
    kind: 'reading',
    meter: name,
    ts,
    body: {
      id: counter,
      meter: name,
      ts,
      values: [{ obis: '1.0.1.8.0.255', value: 1_000_000 + counter * 37, unit: 'Wh' }],
    },
  };
}

/** Starts `ami-gateway sim hes` in its own process, recording first-time keys to `recordFile`. */
export async function startHesSim(recordFile) {
  const child = spawn(process.execPath, [path.join(root, 'bin/ami-gateway.js'), 'sim', 'hes', '--port', '0', '--bind', '::1', '--meters', '0', '--record', recordFile], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let log = '';
  const url = await new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      log += chunk;
      const match = /listening on (coap:\/\/\S+?)(,|\s|$)/.exec(log);
      if (match) resolve(match[1]);
    });
    child.once('exit', (code) => reject(new Error(`the HES simulator exited with ${code}: ${log}`)));
  });
  return {
    url,
    pid: child.pid,
    /** Stops it (its recorder flushes on the way out). */
    stop: async () => {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Distinct keys in a simulator's record file, counted by coreutils in their own processes. */
export function distinctRecordedKeys(recordFile, prefix = '') {
  // Each line is {"id":"<key>",...}: the key is the fourth "-separated field.
  const out = spawnSync('sh', ['-c', `cut -d'"' -f4 "$1" | grep -c "^$2" ; cut -d'"' -f4 "$1" | grep "^$2" | sort -u | wc -l`, 'sh', recordFile, prefix], {
    encoding: 'utf8',
    maxBuffer: 1 << 20,
  });
  const [lines, distinct] = out.stdout.trim().split('\n').map(Number);
  return { lines, distinct };
}

/** Appends records [from, to) through Outbox.append from `writers` concurrent closed-loop writers. */
export async function buildBacklog(outbox, from, to, writers, prefix = '', onProgress = () => undefined) {
  const { outboxEntryFor } = dist('hes/drain.js');
  let next = from;
  let payloadBytes = 0;
  await Promise.all(
    Array.from({ length: writers }, async () => {
      for (let i = next++; i < to; i = next++) {
        const entry = outboxEntryFor(benchRecord(i, prefix));
        payloadBytes += entry.payload.length;
        await outbox.append(entry);
        if ((i + 1) % 100_000 === 0) onProgress(i + 1);
      }
    }),
  );
  return { payloadBytes };
}

function mib(bytes) {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** Where the RSS is: anonymous memory (heaps) and mapped files (the node binary, LevelDB's tables), and V8's heap. */
function breakdown() {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kib = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  const { heapUsed, heapTotal, external } = process.memoryUsage();
  return `RSS ${mib(kib('VmRSS'))} (anonymous ${mib(kib('RssAnon'))}, files ${mib(kib('RssFile'))}; V8 heap ${mib(heapUsed)} of ${mib(heapTotal)}, external ${mib(external)})`;
}

async function main() {
  const { acquireDatabase } = dist('store/database.js');
  const { Outbox } = dist('store/outbox.js');
  const { OutboxDrain } = dist('hes/drain.js');
  const { HesUplink, DEFAULT_UPLINK_OPTIONS } = dist('hes/uplink.js');

  const RECORDS = Number(process.argv[2] ?? process.env.BENCH_BACKLOG ?? 1_000_000);
  const WRITERS = Number(process.env.BENCH_WRITERS ?? 500);
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-backlog-'));
  let peakSampled = 0;
  const sampler = setInterval(() => {
    peakSampled = Math.max(peakSampled, procMemory().rss);
  }, 200);
  sampler.unref();
  const progress = (what) => (count) => process.stderr.write(`  ${what} ${count} records, ${breakdown()}\n`);
  let sim;
  let exitCode = 0;
  try {
    // Started first: it idles while the backlog is built (the HES is down, as far as the gateway knows).
    sim = await startHesSim(path.join(tmp, 'hes-records.jsonl'));
    const lease = await acquireDatabase(path.join(tmp, 'store'));
    const outbox = await Outbox.open(lease.db, { maxBytes: 1e12, ttlMs: { alarm: 1e12, event: 1e12, metrology: 1e12 } });
    const startRss = procMemory().rss;

    const buildStarted = performance.now();
    const { payloadBytes } = await buildBacklog(outbox, 0, RECORDS, WRITERS, '', progress('built'));
    const buildSeconds = (performance.now() - buildStarted) / 1000;
    const afterBuild = procMemory();
    const afterBuildBreakdown = breakdown();
    const built = await outbox.stats();
    const du = spawnSync('du', ['-sk', path.join(tmp, 'store')], { encoding: 'utf8' }).stdout.split('\t')[0];

    const uplink = new HesUplink({ ...DEFAULT_UPLINK_OPTIONS, gateway: 'bench-gateway', endpoints: [sim.url] });
    // The rate limit raised (the default 2,000 records/s protects a real HES); otherwise the drain's defaults.
    const drain = new OutboxDrain(outbox, uplink, { maxRecordsPerSecond: 1e9 });
    let drained = 0;
    let failures = 0;
    let batches = 0;
    let nextReport = 100_000;
    const done = new Promise((resolve) => {
      drain.on('drained', (count) => {
        drained += count;
        batches += 1;
        if (drained >= nextReport) {
          progress('drained')(drained);
          nextReport += 100_000;
        }
        if (drained >= RECORDS) resolve();
      });
    });
    drain.on('failed', (err) => {
      failures += 1;
      process.stderr.write(`  drain: batch failed (${err.code}): ${err.message}\n`);
    });
    const drainStarted = performance.now();
    drain.start();
    await done;
    const drainSeconds = (performance.now() - drainStarted) / 1000;
    await drain.stop();
    await uplink.close();
    const left = await outbox.stats();
    const end = procMemory();
    const endBreakdown = breakdown();
    await outbox.close();
    await lease.release();
    clearInterval(sampler);
    await sim.stop();
    sim = undefined;
    const recorded = distinctRecordedKeys(path.join(tmp, 'hes-records.jsonl'));

    const peak = Math.max(end.peak, afterBuild.peak);
    console.log(`backlog: ${RECORDS} records (${METERS} meters; 1% alarms, 4% events, 95% readings), node ${process.version}, ${os.cpus().length} cores, synced writes`);
    console.log('| phase | records | seconds | records/s | notes |');
    console.log('|---|---|---|---|---|');
    console.log(
      `| build: Outbox.append, ${WRITERS} writers | ${RECORDS} | ${buildSeconds.toFixed(1)} | ${(RECORDS / buildSeconds).toFixed(0)} | payload ${(payloadBytes / RECORDS).toFixed(0)} B avg; outbox ${mib(built.totals.bytes)} counted, LevelDB ${mib(Number(du) * 1024)} on disk |`,
    );
    console.log(
      `| drain: OutboxDrain + HesUplink -> sim hes (own process) | ${drained} | ${drainSeconds.toFixed(1)} | ${(drained / drainSeconds).toFixed(0)} | ${batches} batches (${(drained / batches).toFixed(1)} records each: the 1000-byte ack), ${failures} failed |`,
    );
    console.log(
      `gateway process RSS: ${mib(startRss)} after opening, ${mib(afterBuild.rss)} after the build, peak (VmHWM) ${mib(peak)} (sampled ${mib(peakSampled)}); limit ${mib(RSS_LIMIT)}: ${peak < RSS_LIMIT ? 'PASS' : 'FAIL'}`,
    );
    console.log(`  after the build: ${afterBuildBreakdown}`);
    console.log(`  after the drain: ${endBreakdown}`);
    console.log(
      `HES simulator: ${recorded.distinct} distinct keys stored (${recorded.lines} first-time lines) of ${RECORDS}: ${recorded.distinct === RECORDS ? 'PASS' : 'FAIL'}; left in the outbox: ${left.totals.records}`,
    );
    if (peak >= RSS_LIMIT || recorded.distinct !== RECORDS || left.totals.records !== 0) exitCode = 1;
  } finally {
    clearInterval(sampler);
    await sim?.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
  process.exitCode = exitCode;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) await main();
