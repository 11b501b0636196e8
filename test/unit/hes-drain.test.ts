import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HesSimulator } from '../../src/sim/hes.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';
import { Outbox } from '../../src/store/outbox.js';
import { HesUplink, DEFAULT_UPLINK_OPTIONS, type HesUplinkError } from '../../src/hes/uplink.js';
import { OutboxDrain, outboxEntryFor } from '../../src/hes/drain.js';
import type { HesRecord, RecordKind } from '../../src/hes/contract.js';
import { formatCoapUrl } from '../../src/coap/url.js';
import { freeUdpPort } from '../helpers/ports.js';
import type { HesFailoverOptions } from '../../src/hes/sites.js';
import { createCoapServer, listenCoapServer } from '../../src/coap/server.js';
import { decodeBatch, encodeAck, HEALTH_PATH } from '../../src/hes/contract.js';
import { CONTENT_FORMAT } from '../../src/coap/reading.js';

let tmpRoot: string;
const cleanups: Array<() => Promise<void> | void> = [];
beforeAll(() => {
  tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'hes-drain-'));
});
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(port: number, drainOptions: ConstructorParameters<typeof OutboxDrain>[2] = {}, failover: Partial<HesFailoverOptions> = {}) {
  const lease: DatabaseLease = await acquireDatabase(mkdtempSync(path.join(tmpRoot, 'store-')));
  const outbox = await Outbox.open(lease.db, { maxBytes: 1e8, ttlMs: { alarm: 1e9, event: 1e9, metrology: 1e9 } });
  const uplink = new HesUplink({ ...DEFAULT_UPLINK_OPTIONS, requestTimeoutMs: 300, gateway: 'gw-drain', endpoints: [formatCoapUrl('::1', port)], failover });
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

/** Resolves when `emitter` emits any of `events`. */
function anyOf(emitter: NodeJS.EventEmitter, ...events: string[]): Promise<void> {
  return Promise.race(events.map((event) => once(emitter, event).then(() => undefined)));
}

describe('outbox drain and poison records', () => {
  it('isolates the records the HES refuses (4.00), quarantines them and delivers the rest', async () => {
    const hes = new HesSimulator({ port: 0, bind: '::1' });
    await hes.start();
    cleanups.push(() => hes.stop());
    const { outbox, drain } = await setup(hes.port);
    const quarantined: Array<{ keys: string[]; reason: string }> = [];
    drain.on('quarantined', (keys, reason) => quarantined.push({ keys, reason }));
    // A meter name longer than the contract allows makes the HES refuse any batch holding it.
    const poison = new Set([7, 22]);
    for (let n = 0; n < 30; n += 1) {
      const r = record(poison.has(n) ? `m-${'x'.repeat(70)}` : 'm', n, 'reading');
      await outbox.append(outboxEntryFor(r));
    }
    drain.start();
    while (outbox.depth > 0) await anyOf(drain, 'drained', 'quarantined');
    expect(hes.stats.stored).toBe(28);
    expect(hes.stats.malformed).toBeGreaterThan(0);
    expect(quarantined.flatMap((q) => q.keys).sort()).toEqual([`m-${'x'.repeat(70)}/22`, `m-${'x'.repeat(70)}/7`]);
    expect(quarantined[0]?.reason).toContain('4.00');
    const stats = await outbox.stats();
    expect(stats.metrology.quarantined).toBe(2);
    const dead = await outbox.peek({ limit: 10, dead: true });
    expect(dead.map((entry) => entry.key).sort()).toEqual(quarantined.flatMap((q) => q.keys).sort());
    expect(dead.every((entry) => entry.reason?.includes('refused by the HES'))).toBe(true);
  });

  it('quarantines nothing when the HES refuses every record of a batch, one by one, and isolates them once others go through', async () => {
    const hes = new HesSimulator({ port: 0, bind: '::1' });
    await hes.start();
    cleanups.push(() => hes.stop());
    const { outbox, drain } = await setup(hes.port, { retryInitialMs: 50, retryMaxMs: 100 });
    const quarantined: string[] = [];
    drain.on('quarantined', (keys) => quarantined.push(...keys));
    for (let n = 0; n < 3; n += 1) await outbox.append(outboxEntryFor(record(`bad-${'x'.repeat(70)}`, n, 'reading')));
    drain.start();
    const [err] = (await once(drain, 'failed')) as [HesUplinkError];
    expect(err.code).toBe('REJECTED');
    expect(quarantined).toEqual([]);
    expect(outbox.depth).toBe(3);
    // Records the HES takes, behind them: now it is clear which ones it refuses.
    for (let n = 0; n < 5; n += 1) await outbox.append(outboxEntryFor(record('good', n, 'reading')));
    drain.wake();
    while (outbox.depth > 0) await anyOf(drain, 'drained', 'quarantined', 'failed');
    expect(quarantined).toHaveLength(3);
    expect(hes.stats.stored).toBe(5);
  });

  it('quarantines a record the HES leaves out of its acknowledgement three times in a row while it accepts the others', async () => {
    // A HES that checks each record and leaves out the one it will not store.
    const server = createCoapServer('::1');
    const stored = new Set<string>();
    server.on('request', (req, res) => {
      if (req.url.startsWith(HEALTH_PATH)) {
        res.code = '2.05';
        res.end();
        return;
      }
      const batch = decodeBatch(req.payload);
      const accepted = batch.records.map((r) => r.key).filter((key) => !key.endsWith('/13'));
      for (const key of accepted) stored.add(key);
      res.code = '2.04';
      res.setOption('Content-Format', CONTENT_FORMAT.cbor);
      res.end(encodeAck({ accepted }));
    });
    const port = await listenCoapServer(server, 0, '::1');
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const { outbox, drain } = await setup(port, { maxBatch: 10 });
    const quarantined: Array<{ keys: string[]; reason: string }> = [];
    drain.on('quarantined', (keys, reason) => quarantined.push({ keys, reason }));
    drain.start();
    // The meter keeps reporting: the refused record travels with newer ones.
    let appended = 0;
    for (let n = 0; quarantined.length === 0; n += 1) {
      await outbox.append(outboxEntryFor(record('m', n, 'reading')));
      appended += 1;
      drain.wake();
      if (n % 4 === 3) await once(drain, 'drained');
    }
    while (outbox.depth > 0) await once(drain, 'drained');
    expect(stored.has('m/13')).toBe(false);
    expect(stored.size).toBe(appended - 1);
    expect(quarantined).toEqual([{ keys: ['m/13'], reason: 'not accepted by the HES in 3 batches in a row' }]);
  });
});

describe('outbox drain and the backhaul', () => {
  it('sends nothing and does not probe while the backhaul is down, and drains at once when it is up', async () => {
    const hes = new HesSimulator({ port: 0, bind: '::1' });
    await hes.start();
    cleanups.push(() => hes.stop());
    const { outbox, drain } = await setup(hes.port, {}, { probeIntervalMs: 50 });
    const failures: unknown[] = [];
    drain.on('failed', (err) => failures.push(err));
    drain.setLinkUp(false, 'VPN down');
    const waiting = once(drain, 'waiting-for-link');
    drain.start();
    await waiting;
    for (let n = 0; n < 10; n += 1) await outbox.append(outboxEntryFor(record('m', n, 'reading')));
    drain.wake();
    const probes = hes.stats.healthRequests;
    // Nothing to await for "nothing happens": six probe intervals.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(hes.stats.batches).toBe(0);
    expect(hes.stats.healthRequests).toBe(probes);
    expect(outbox.depth).toBe(10);
    drain.setLinkUp(true);
    while (hes.stats.stored < 10) await storedOnce(hes);
    expect(failures).toEqual([]);
    expect(hes.stats.healthRequests).toBeGreaterThan(probes);
  });

  it('ends its backoff when the backhaul comes back', async () => {
    const port = await freeUdpPort();
    const { outbox, drain } = await setup(port, { retryInitialMs: 5000, retryMaxMs: 5000, random: () => 0 });
    drain.start();
    for (let n = 0; n < 5; n += 1) await outbox.append(outboxEntryFor(record('m', n, 'reading')));
    drain.wake();
    const [, , retryInMs] = (await once(drain, 'failed')) as [HesUplinkError, number, number];
    expect(retryInMs).toBe(3750);
    // The VPN drops and returns; meanwhile the HES is there.
    drain.setLinkUp(false, 'VPN down');
    const hes = new HesSimulator({ port, bind: '::1' });
    await hes.start();
    cleanups.push(() => hes.stop());
    const upAt = Date.now();
    drain.setLinkUp(true);
    while (hes.stats.stored < 5) await storedOnce(hes);
    // Well before the 3.75 s the backoff had left.
    expect(Date.now() - upAt).toBeLessThan(2500);
  });
});
