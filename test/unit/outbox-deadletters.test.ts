import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';
import { Outbox, type OutboxClass, type OutboxOptions } from '../../src/store/outbox.js';

const LONG = { alarm: 1e9, event: 1e9, metrology: 1e9 };

let tmpRoot: string;
const open: Array<{ outbox: Outbox; lease: DatabaseLease }> = [];
beforeAll(() => {
  tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'outbox-dead-'));
});
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));
afterEach(closeAll);

async function openOutbox(dir: string, options: Partial<OutboxOptions> = {}): Promise<Outbox> {
  const lease = await acquireDatabase(dir);
  const outbox = await Outbox.open(lease.db, { maxBytes: 1e9, ttlMs: LONG, ...options });
  open.push({ outbox, lease });
  return outbox;
}

async function closeAll(): Promise<void> {
  for (const { outbox, lease } of open.splice(0)) {
    await outbox.close();
    await lease.release();
  }
}

/** 'key' + meter + payload bytes count against the budget. */
const record = (key: string, recordClass: OutboxClass, meter = 'm1', bytes = 10) => ({ key, meter, recordClass, payload: Buffer.alloc(bytes, 1) });

describe('outbox dead letters', () => {
  it('quarantines queued and in-flight records in one go, skips unknown keys, and the drain can no longer send or acknowledge them', async () => {
    let now = 5_000;
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'q-')), { now: () => now });
    for (const key of ['a', 'b', 'c', 'd']) await outbox.append(record(key, 'event'));
    expect((await outbox.take(2)).map((e) => e.key)).toEqual(['a', 'b']);
    now = 9_000;
    await outbox.quarantine(['a', 'c', 'never-there', 'a'], 'HES refused: 4.00 bad body');
    // 'a' was in flight: the drain's later acknowledgement and release of it change nothing.
    expect(await outbox.ack(['a'])).toBe(0);
    outbox.release(['a']);
    expect((await outbox.take(10)).map((e) => e.key)).toEqual(['d']);
    const stats = await outbox.stats();
    // 'key' 1 + 'm1' 2 + 10 payload bytes = 13 a record.
    expect(stats.event).toMatchObject({ records: 2, bytes: 26, quarantined: 2, quarantinedBytes: 26 });
    expect(stats.totals).toMatchObject({ records: 2, quarantined: 2, quarantinedBytes: 26 });
    expect(stats.inFlight).toBe(2);
    const dead = await outbox.peek({ limit: 10, dead: true });
    expect(dead).toEqual([
      { key: 'a', meter: 'm1', recordClass: 'event', enqueuedAt: 5_000, size: 13, inFlight: false, dead: true, reason: 'HES refused: 4.00 bad body', quarantinedAt: 9_000 },
      { key: 'c', meter: 'm1', recordClass: 'event', enqueuedAt: 5_000, size: 13, inFlight: false, dead: true, reason: 'HES refused: 4.00 bad body', quarantinedAt: 9_000 },
    ]);
    // Quarantining again (or what has been acknowledged meanwhile) does nothing.
    expect(await outbox.ack(['b'])).toBe(1);
    await outbox.quarantine(['a', 'b'], 'again');
    expect((await outbox.stats()).event).toMatchObject({ records: 1, quarantined: 2 });
    expect((await outbox.peek({ limit: 10, dead: true })).map((e) => e.reason)).toEqual(['HES refused: 4.00 bad body', 'HES refused: 4.00 bad body']);
  });

  it('keeps dead letters across a restart, counts a resend of one as a duplicate, and requeues them at the end of their class', async () => {
    const dir = mkdtempSync(path.join(tmpRoot, 'restart-'));
    let now = 1_000;
    const outbox = await openOutbox(dir, { now: () => now });
    for (const key of ['a1', 'r1', 'r2']) await outbox.append(record(key, key.startsWith('a') ? 'alarm' : 'metrology'));
    await outbox.quarantine(['a1', 'r1'], 'poison');
    await closeAll();

    now = 50_000;
    const again = await openOutbox(dir, { now: () => now });
    expect((await again.stats()).totals).toMatchObject({ records: 1, quarantined: 2 });
    expect((await again.peek({ limit: 10, dead: true })).map((e) => [e.key, e.reason])).toEqual([
      ['a1', 'poison'],
      ['r1', 'poison'],
    ]);
    // The meter sending it again does not put a second copy in the queue.
    expect(await again.append(record('r1', 'metrology'))).toEqual({ duplicate: true });
    await again.append(record('r3', 'metrology'));
    expect(await again.requeue(['r1', 'a1', 'r3', 'unknown'])).toBe(2);
    expect(await again.requeue(['r1'])).toBe(0);
    const stats = await again.stats();
    expect(stats.totals).toMatchObject({ records: 4, quarantined: 0, quarantinedBytes: 0 });
    expect(stats.alarm.oldestEnqueuedAt).toBe(50_000);
    // Requeued as enqueued now: behind what waited in their class.
    expect((await again.take(10)).map((e) => e.key)).toEqual(['a1', 'r2', 'r3', 'r1']);
    expect(await again.ack(['a1', 'r2', 'r3', 'r1'])).toBe(4);
    expect((await again.stats()).totals.records).toBe(0);
  });

  it('counts dead letters against the disk budget and never drops them for space', async () => {
    // 13 bytes a record; the budget holds three.
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'budget-')), { maxBytes: 40 });
    for (const key of ['1', '2', '3']) await outbox.append(record(key, 'metrology'));
    await outbox.quarantine(['1'], 'poison');
    // Room for '4' comes from the oldest metrology still queued ('2'), not from the dead letter.
    await outbox.append(record('4', 'metrology'));
    await outbox.append(record('5', 'metrology'));
    const stats = await outbox.stats();
    expect(stats.metrology).toMatchObject({ records: 2, dropped: 2, quarantined: 1 });
    expect((await outbox.peek({ limit: 10 })).map((e) => e.key)).toEqual(['4', '5']);
    expect((await outbox.peek({ limit: 10, dead: true })).map((e) => e.key)).toEqual(['1']);
    // With only dead letters and events left, nothing can be dropped: FULL.
    await outbox.quarantine(['4', '5'], 'poison');
    await expect(outbox.append(record('6', 'event'))).rejects.toMatchObject({ code: 'FULL' });
  });
});

describe('outbox peek and stats', () => {
  it('lists entries in drain order without taking them, filtered by class and meter, with the in-flight ones marked', async () => {
    let now = 100_000;
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'peek-')), { now: () => now });
    const appended: Array<[string, OutboxClass, string]> = [
      ['r1', 'metrology', 'mA'],
      ['e1', 'event', 'mB'],
      ['r2', 'metrology', 'mB'],
      ['a1', 'alarm', 'mA'],
      ['e2', 'event', 'mA'],
      ['r3', 'metrology', 'mA'],
    ];
    for (const [key, recordClass, meter] of appended) {
      await outbox.append(record(key, recordClass, meter, 20));
      now += 1_000;
    }
    expect((await outbox.peek({ limit: 100 })).map((e) => e.key)).toEqual(['a1', 'e1', 'e2', 'r1', 'r2', 'r3']);
    expect((await outbox.peek({ limit: 4 })).map((e) => e.key)).toEqual(['a1', 'e1', 'e2', 'r1']);
    expect((await outbox.peek({ limit: 100, recordClass: 'metrology' })).map((e) => e.key)).toEqual(['r1', 'r2', 'r3']);
    expect((await outbox.peek({ limit: 100, meter: 'mA' })).map((e) => e.key)).toEqual(['a1', 'e2', 'r1', 'r3']);
    expect((await outbox.peek({ limit: 1, recordClass: 'metrology', meter: 'mB' })).map((e) => e.key)).toEqual(['r2']);
    expect(await outbox.peek({ limit: 10, meter: 'nobody' })).toEqual([]);
    // Peeking takes nothing: the drain still gets everything, in the same order.
    expect((await outbox.take(2)).map((e) => e.key)).toEqual(['a1', 'e1']);
    const [first, second, third] = await outbox.peek({ limit: 3 });
    expect(first).toEqual({ key: 'a1', meter: 'mA', recordClass: 'alarm', enqueuedAt: 103_000, size: 24, inFlight: true, dead: false });
    expect(second).toMatchObject({ key: 'e1', inFlight: true });
    expect(third).toMatchObject({ key: 'e2', inFlight: false });
    expect(await outbox.peek({ limit: 10, dead: true })).toEqual([]);
  });

  it('reports per class and in total: records, bytes, oldest, dropped for the budget, expired for the TTL, dead letters', async () => {
    let now = 1_000_000;
    // 'xN' 2 + 'm1' 2 + 10 = 14 bytes a record; the budget holds four.
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'stats-')), {
      maxBytes: 60,
      now: () => now,
      ttlMs: { alarm: 1e9, event: 5_000, metrology: 1e9 },
    });
    await outbox.append(record('r1', 'metrology'));
    now += 1_000;
    await outbox.append(record('e1', 'event'));
    await outbox.append(record('r2', 'metrology'));
    await outbox.append(record('a1', 'alarm'));
    now += 1_000;
    // Over the budget: r1 goes.
    await outbox.append(record('a2', 'alarm'));
    now += 10_000;
    // Past the event TTL: e1 goes.
    expect(await outbox.sweep()).toBe(1);
    await outbox.quarantine(['a2'], 'poison');
    const stats = await outbox.stats();
    expect(stats.alarm).toEqual({ records: 1, bytes: 14, oldestAgeMs: 11_000, oldestEnqueuedAt: 1_001_000, dropped: 0, expired: 0, quarantined: 1, quarantinedBytes: 14 });
    expect(stats.event).toEqual({ records: 0, bytes: 0, oldestAgeMs: undefined, oldestEnqueuedAt: undefined, dropped: 0, expired: 1, quarantined: 0, quarantinedBytes: 0 });
    expect(stats.metrology).toEqual({ records: 1, bytes: 14, oldestAgeMs: 11_000, oldestEnqueuedAt: 1_001_000, dropped: 1, expired: 0, quarantined: 0, quarantinedBytes: 0 });
    expect(stats.totals).toEqual({ records: 2, bytes: 28, dropped: 1, expired: 1, quarantined: 1, quarantinedBytes: 14 });
    expect(stats).toMatchObject({ bytes: 28, maxBytes: 60, inFlight: 0 });
    expect(stats.storageError).toBeUndefined();
  });
});
