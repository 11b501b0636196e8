#!/usr/bin/env node
// Outbox append rate against raw LevelDB batch puts, in one run, on the same disk:
//   baseline  classic-level (through level) chained batches of BATCH puts, each synced: the
//             record and its idempotency-key entry, nothing else: what the disk and LevelDB cost
//   outbox    Outbox.append from WRITERS concurrent closed-loop writers (each append resolves
//             once its group-committed batch is synced), then take + ack of everything
// Prints records/s and the ratio. Not a test: nothing asserts timings.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { percentile } from './metrics.mjs';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const { acquireDatabase, openSublevel } = require(path.join(root, 'dist/src/store/database.js'));
const { Outbox } = require(path.join(root, 'dist/src/store/outbox.js'));
const { cborEncode } = require(path.join(root, 'dist/src/coap/cbor.js'));

const RECORDS = Number(process.env.BENCH_RECORDS ?? 100_000);
const WRITERS = Number(process.env.BENCH_WRITERS ?? 500);
const BATCH = Number(process.env.BENCH_BATCH ?? 1000);
const PAYLOAD = Buffer.alloc(120, 7);
const classes = ['alarm', 'event', 'metrology'];

async function baseline(dir) {
  const lease = await acquireDatabase(dir);
  const queue = openSublevel(lease.db, 'q');
  const keys = openSublevel(lease.db, 'k');
  const started = performance.now();
  for (let i = 0; i < RECORDS; i += BATCH) {
    const batch = lease.db.batch();
    for (let j = i; j < Math.min(RECORDS, i + BATCH); j += 1) {
      const id = `2!${j.toString(16).padStart(13, '0')}`;
      batch.put(id, cborEncode({ k: `mtr-${j % 1000}/${j}`, m: `mtr-${j % 1000}`, t: Date.now(), p: PAYLOAD }), { sublevel: queue });
      batch.put(`mtr-${j % 1000}/${j}`, Buffer.from(id), { sublevel: keys });
    }
    await batch.write({ sync: true });
  }
  const seconds = (performance.now() - started) / 1000;
  await lease.release();
  return RECORDS / seconds;
}

async function outboxAppend(dir) {
  const lease = await acquireDatabase(dir);
  const outbox = await Outbox.open(lease.db, { maxBytes: 1e10, ttlMs: { alarm: 1e9, event: 1e9, metrology: 1e9 } });
  let next = 0;
  const latencies = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: WRITERS }, async () => {
      for (let j = next++; j < RECORDS; j = next++) {
        const t0 = performance.now();
        await outbox.append({ key: `mtr-${j % 1000}/${j}`, meter: `mtr-${j % 1000}`, recordClass: classes[j % 3], payload: PAYLOAD });
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const appendSeconds = (performance.now() - started) / 1000;
  const drainStarted = performance.now();
  let drained = 0;
  for (;;) {
    const batch = await outbox.take(500);
    if (batch.length === 0) break;
    drained += await outbox.ack(batch.map((e) => e.key));
  }
  const drainSeconds = (performance.now() - drainStarted) / 1000;
  const stats = await outbox.stats();
  await outbox.close();
  await lease.release();
  latencies.sort((a, b) => a - b);
  return {
    rate: RECORDS / appendSeconds,
    p99: percentile(latencies, 0.99),
    drainRate: drained / drainSeconds,
    left: stats.alarm.records + stats.event.records + stats.metrology.records,
  };
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-outbox-'));
try {
  const raw = await baseline(path.join(tmp, 'raw'));
  const ours = await outboxAppend(path.join(tmp, 'outbox'));
  console.log(`outbox: ${RECORDS} records of ${PAYLOAD.length} bytes, node ${process.version}, ${os.cpus().length} cores, synced writes`);
  console.log('| variant | records/s | ratio | append p99 ms |');
  console.log('|---|---|---|---|');
  console.log(`| raw LevelDB batches of ${BATCH} (baseline) | ${raw.toFixed(0)} | 1.00 | |`);
  console.log(`| Outbox.append, ${WRITERS} concurrent writers | ${ours.rate.toFixed(0)} | ${(ours.rate / raw).toFixed(2)} | ${ours.p99.toFixed(1)} |`);
  console.log(`drain (take 500 + ack, no HES): ${ours.drainRate.toFixed(0)} records/s; left in the outbox: ${ours.left}`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
