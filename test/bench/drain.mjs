#!/usr/bin/env node
// Drain rate from the outbox to a HES simulator, against a baseline, in one run and to the
// same simulator (`ami-gateway sim hes`, its own process, loopback):
//   baseline  raw LevelDB and the bare coap library: an iterator over the outbox's queue
//             sublevel, the records decoded and cut into the same CBOR batches (same
//             batchLength rule: the acknowledgement fits one block), each POSTed (block-wise
//             when larger than 1024 bytes) and its acknowledgement decoded, then the accepted
//             records deleted (queue and key entries) in one synced batch; one batch in flight
//   drain     OutboxDrain + HesUplink over Outbox (take, ack), the rate limit raised
// Both drain RECORDS records built the same way (Outbox.append) into stores of their own
// (distinct keys, so the simulator stores both), in two rounds of RECORDS/2 taking turns
// (baseline, drain, baseline, drain), so neither gains from going second (a warm simulator).
// Prints records/s and the ratio to the baseline. Not a test: nothing asserts timings.
//
//   BENCH_DRAIN_RECORDS=N node test/bench/drain.mjs          (default 50000)
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { buildBacklog, distinctRecordedKeys, startHesSim } from './backlog.mjs';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = (relative) => require(path.join(root, 'dist', 'src', relative));
const coap = require('coap');
const { acquireDatabase, openSublevel } = dist('store/database.js');
const { Outbox } = dist('store/outbox.js');
const { OutboxDrain } = dist('hes/drain.js');
const { HesUplink, DEFAULT_UPLINK_OPTIONS, batchLength } = dist('hes/uplink.js');
const { encodeBatch, decodeAck, RECORDS_PATH } = dist('hes/contract.js');
const { cborDecode } = dist('coap/cbor.js');

const RECORDS = Number(process.env.BENCH_DRAIN_RECORDS ?? 50_000);
// The drain's default (DEFAULT_DRAIN_OPTIONS.maxBatch); the 1000-byte acknowledgement cuts batches shorter anyway.
const MAX_BATCH = 64;
const TTL = { alarm: 1e12, event: 1e12, metrology: 1e12 };

async function buildStore(dir, prefix, from, to) {
  const lease = await acquireDatabase(dir);
  const outbox = await Outbox.open(lease.db, { maxBytes: 1e12, ttlMs: TTL });
  await buildBacklog(outbox, from, to, 500, prefix);
  await outbox.close();
  await lease.release();
}

function post(port, payload) {
  return new Promise((resolve, reject) => {
    const req = coap.request({ hostname: '::1', port, pathname: RECORDS_PATH, method: 'POST', confirmable: true, agent: coap.globalAgentIPv6 });
    req.setOption('Content-Format', 60);
    req.setOption('Accept', 60);
    if (payload.length > 1024) req.setOption('Block1', Buffer.of(6));
    req.on('response', resolve);
    req.on('timeout', () => reject(new Error('timeout')));
    req.on('error', reject);
    req.end(payload);
  });
}

async function baseline(dir, port) {
  const lease = await acquireDatabase(dir);
  const queue = openSublevel(lease.db, 'outbox-q');
  const keys = openSublevel(lease.db, 'outbox-k');
  let drained = 0;
  let batches = 0;
  const started = performance.now();
  const pending = [];
  const send = async () => {
    const count = batchLength(pending, MAX_BATCH);
    const batch = pending.splice(0, count);
    const res = await post(port, encodeBatch({ gateway: 'bench-baseline', records: batch.map((p) => p.record) }));
    if (res.code !== '2.04') throw new Error(`the simulator answered ${res.code}`);
    const accepted = new Set(decodeAck(res.payload).accepted);
    const deletes = lease.db.batch();
    for (const { id, record } of batch) {
      if (!accepted.has(record.key)) continue;
      deletes.del(id, { sublevel: queue });
      deletes.del(record.key, { sublevel: keys });
      drained += 1;
    }
    await deletes.write({ sync: true });
    batches += 1;
  };
  for await (const [id, value] of queue.iterator()) {
    pending.push({ id, record: cborDecode(cborDecode(value).p) });
    if (pending.length >= MAX_BATCH) await send();
  }
  while (pending.length > 0) await send();
  const seconds = (performance.now() - started) / 1000;
  await lease.release();
  return { drained, batches, seconds };
}

async function outboxDrain(dir, url, expected) {
  const lease = await acquireDatabase(dir);
  const outbox = await Outbox.open(lease.db, { maxBytes: 1e12, ttlMs: TTL });
  const uplink = new HesUplink({ ...DEFAULT_UPLINK_OPTIONS, gateway: 'bench-drain', endpoints: [url] });
  const drain = new OutboxDrain(outbox, uplink, { maxRecordsPerSecond: 1e9, maxBatch: MAX_BATCH });
  let drained = 0;
  let batches = 0;
  let failed = 0;
  const done = new Promise((resolve) => {
    drain.on('drained', (count) => {
      drained += count;
      batches += 1;
      if (drained >= expected) resolve();
    });
  });
  drain.on('failed', (err) => {
    failed += 1;
    process.stderr.write(`  drain: batch failed (${err.code}): ${err.message}\n`);
  });
  const started = performance.now();
  drain.start();
  await done;
  const seconds = (performance.now() - started) / 1000;
  await drain.stop();
  await uplink.close();
  const left = (await outbox.stats()).totals.records;
  await outbox.close();
  await lease.release();
  return { drained, batches, seconds, failed, left };
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-drain-'));
let sim;
try {
  const half = Math.floor(RECORDS / 2);
  const rounds = [
    [0, half],
    [half, RECORDS],
  ];
  const recordFile = path.join(tmp, 'hes-records.jsonl');
  sim = await startHesSim(recordFile);
  for (const [round, [from, to]] of rounds.entries()) {
    await buildStore(path.join(tmp, `baseline-${round}`), 'b/', from, to);
    await buildStore(path.join(tmp, `drain-${round}`), 'o/', from, to);
  }
  const port = Number(/:(\d+)$/.exec(sim.url)[1]);
  const raw = { drained: 0, batches: 0, seconds: 0 };
  const ours = { drained: 0, batches: 0, seconds: 0, failed: 0, left: 0 };
  const add = (total, part) => {
    for (const name of Object.keys(total)) total[name] += part[name];
  };
  for (const [round, [from, to]] of rounds.entries()) {
    add(raw, await baseline(path.join(tmp, `baseline-${round}`), port));
    add(ours, await outboxDrain(path.join(tmp, `drain-${round}`), sim.url, to - from));
  }
  await sim.stop();
  sim = undefined;
  const storedRaw = distinctRecordedKeys(recordFile, 'b/').distinct;
  const storedOurs = distinctRecordedKeys(recordFile, 'o/').distinct;
  const rate = (r) => r.drained / r.seconds;
  console.log(`drain: ${RECORDS} records (~150-byte DLMS-keyed records, 10000 meters) to sim hes in its own process, loopback, node ${process.version}, ${os.cpus().length} cores`);
  console.log('| variant | records/s | ratio | batches | records/batch | stored by the HES |');
  console.log('|---|---|---|---|---|---|');
  console.log(`| raw LevelDB iterator + bare coap POST + synced batch deletes (baseline) | ${rate(raw).toFixed(0)} | 1.00 | ${raw.batches} | ${(raw.drained / raw.batches).toFixed(1)} | ${storedRaw} |`);
  console.log(
    `| OutboxDrain + HesUplink (rate limit raised) | ${rate(ours).toFixed(0)} | ${(rate(ours) / rate(raw)).toFixed(2)} | ${ours.batches} | ${(ours.drained / ours.batches).toFixed(1)} | ${storedOurs} |`,
  );
  if (ours.failed > 0 || ours.left > 0) console.log(`drain: ${ours.failed} failed batches, ${ours.left} records left in the outbox`);
} finally {
  await sim?.stop();
  rmSync(tmp, { recursive: true, force: true });
}
