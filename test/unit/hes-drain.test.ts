import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HesSimulator } from '../../src/sim/hes.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';
import { Outbox } from '../../src/store/outbox.js';
import { HesUplink, DEFAULT_UPLINK_OPTIONS } from '../../src/hes/uplink.js';
import { OutboxDrain, outboxEntryFor } from '../../src/hes/drain.js';
import type { HesRecord, RecordKind } from '../../src/hes/contract.js';
import { formatCoapUrl } from '../../src/coap/url.js';
import { freeUdpPort } from '../helpers/ports.js';

let tmpRoot: string;
const cleanups: Array<() => Promise<void> | void> = [];
beforeAll(() => {
  tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'hes-drain-'));
});
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(port: number, drainOptions: ConstructorParameters<typeof OutboxDrain>[2] = {}) {
  const lease: DatabaseLease = await acquireDatabase(mkdtempSync(path.join(tmpRoot, 'store-')));
  const outbox = await Outbox.open(lease.db, { maxBytes: 1e8, ttlMs: { alarm: 1e9, event: 1e9, metrology: 1e9 } });
  const uplink = new HesUplink({ ...DEFAULT_UPLINK_OPTIONS, requestTimeoutMs: 300, gateway: 'gw-drain', endpoints: [formatCoapUrl('::1', port)] });
  const drain = new OutboxDrain(outbox, uplink, { retryInitialMs: 50, retryMaxMs: 200, ...drainOptions });
  cleanups.push(async () => {
    await drain.stop();
    await uplink.close();
    await outbox.close();
    await lease.release();
  });
  return { outbox, drain };
}

/** Resolves when the HES stores its next record. */
function storedOnce(hes: HesSimulator): Promise<void> {
  return new Promise((resolve) => {
    const stop = hes.onStored(() => {
      stop();
      resolve();
    });
  });
}

function record(meter: string, n: number, kind: RecordKind): HesRecord {
  return { key: `${meter}/${n}`, kind, meter, ts: 1_700_000_000_000 + n, body: { n } };
}

describe('outbox drain', () => {
  it('keeps records while the HES is down and delivers each once, urgent first and in order per meter, when it is back', async () => {
    const port = await freeUdpPort();
    const { outbox, drain } = await setup(port);
    const failures: number[] = [];
    drain.on('failed', (_err, _count, retryInMs) => failures.push(retryInMs));
    drain.start();
    const records: HesRecord[] = [];
    for (let n = 0; n < 40; n += 1) records.push(record(`m${n % 4}`, n, n % 10 === 9 ? 'alarm' : 'reading'));
    for (const r of records) {
      await outbox.append(outboxEntryFor(r));
      drain.wake();
    }
    // The HES is not there: the drain fails and backs off, the records stay.
    while (failures.length < 2) await once(drain, 'failed');
    expect(failures[1]!).toBeGreaterThan(failures[0]! * 1.2);
    expect(outbox.depth).toBe(40);

    const hes = new HesSimulator({ port, bind: '::1' });
    const arrived: string[] = [];
    cleanups.push(hes.onStored((key) => arrived.push(key)));
    await hes.start();
    cleanups.push(() => hes.stop());
    while (arrived.length < 40) await storedOnce(hes);
    expect(new Set(arrived).size).toBe(40);
    expect(hes.stats.duplicates).toBe(0);
    // The four alarms first.
    const alarms = records.filter((r) => r.kind === 'alarm').map((r) => r.key);
    expect(alarms).toHaveLength(4);
    expect(arrived.slice(0, 4).sort()).toEqual([...alarms].sort());
    for (const meter of ['m0', 'm1', 'm2', 'm3']) {
      const order = arrived.filter((key) => key.startsWith(`${meter}/`) && !records.find((r) => r.key === key && r.kind === 'alarm')).map((key) => Number(key.split('/')[1]));
      expect(order).toEqual([...order].sort((a, b) => a - b));
    }
    while (outbox.depth > 0) await once(drain, 'drained');
    expect(outbox.depth).toBe(0);
  });

  it('keeps to its rate limit', async () => {
    const hes = new HesSimulator({ port: 0, bind: '::1' });
    await hes.start();
    cleanups.push(() => hes.stop());
    const { outbox, drain } = await setup(hes.port, { maxRecordsPerSecond: 200, maxBatch: 20 });
    for (let n = 0; n < 100; n += 1) await outbox.append(outboxEntryFor(record('m', n, 'reading')));
    const started = Date.now();
    drain.start();
    while (hes.stats.stored < 100) await storedOnce(hes);
    // 100 records at 200/s: the last batch leaves no earlier than 0.4 s after the first.
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
  });
});
