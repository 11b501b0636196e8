import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireDatabase } from '../../src/store/database.js';
import { Outbox, OutboxError, type OutboxClass } from '../../src/store/outbox.js';

let tmpRoot: string;
beforeAll(() => {
  tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'outbox-consistency-'));
});
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));

/** 'k-<writer>-<n>' + 'm<writer>' + 20 payload bytes. */
const sizeOf = (key: string, meter: string): number => Buffer.byteLength(key) + Buffer.byteLength(meter) + 20;

describe('outbox bookkeeping under concurrency', () => {
  it('accounts for every stored record (delivered, dropped, expired, waiting or dead) while writers, a drain, the budget, sweeps and quarantines interleave', async () => {
    const dir = mkdtempSync(path.join(tmpRoot, 'mix-'));
    let now = 0;
    const options = { maxBytes: 40 * 40, ttlMs: { alarm: 1e9, event: 1e9, metrology: 400 }, now: () => now, lingerMs: 1 };
    const lease = await acquireDatabase(dir);
    const outbox = await Outbox.open(lease.db, options);
    let stored = 0;
    let full = 0;
    let delivered = 0;
    let writing = true;

    const writers = Array.from({ length: 12 }, async (_, writer) => {
      for (let n = 0; n < 120; n += 1) {
        now += 1;
        const recordClass: OutboxClass = n % 10 === 0 ? 'alarm' : n % 10 === 1 ? 'event' : 'metrology';
        try {
          await outbox.append({ key: `k-${writer}-${n}`, meter: `m${writer}`, recordClass, payload: Buffer.alloc(20, writer) });
          stored += 1;
        } catch (err) {
          if (!(err instanceof OutboxError) || err.code !== 'FULL') throw err;
          full += 1;
        }
      }
    });
    const drain = (async () => {
      let round = 0;
      while (writing || outbox.depth > 0) {
        round += 1;
        const taken = await outbox.take(5);
        if (taken.length === 0) {
          await new Promise((resolve) => setImmediate(resolve));
          continue;
        }
        const keys = taken.map((e) => e.key);
        // Acknowledged, released (sent again later) and, now and then, quarantined, all at once.
        const acknowledged = outbox.ack(keys.slice(0, 3));
        outbox.release(keys.slice(3));
        const quarantined = round % 7 === 0 ? outbox.quarantine([keys[0]!, keys[4] ?? keys[0]!], 'poison') : Promise.resolve();
        const swept = round % 5 === 0 ? outbox.sweep() : Promise.resolve(0);
        const [count] = await Promise.all([acknowledged, quarantined, swept]);
        delivered += count;
        if (round > 20_000) throw new Error('the drain does not finish');
      }
    })();
    await Promise.all(writers);
    writing = false;
    await drain;

    const dead = await outbox.peek({ limit: 10_000, dead: true });
    const waiting = await outbox.peek({ limit: 10_000 });
    const stats = await outbox.stats();
    expect(stored + full).toBe(12 * 120);
    expect(stats.totals.dropped, 'the budget had to drop some metrology').toBeGreaterThan(0);
    expect(dead.length, 'some were quarantined').toBeGreaterThan(0);
    // Every record stored went exactly one way.
    expect(delivered + stats.totals.dropped + stats.totals.expired + waiting.length + dead.length).toBe(stored);
    expect(stats.totals.records).toBe(waiting.length);
    expect(stats.totals.bytes).toBe(waiting.reduce((sum, e) => sum + e.size, 0));
    expect(stats.totals.quarantined).toBe(dead.length);
    expect(stats.totals.quarantinedBytes).toBe(dead.reduce((sum, e) => sum + sizeOf(e.key, e.meter), 0));
    expect(outbox.depth).toBe(waiting.length);
    await outbox.close();
    await lease.release();

    // The counters on disk say the same.
    const lease2 = await acquireDatabase(dir);
    const reopened = await Outbox.open(lease2.db, options);
    try {
      expect((await reopened.stats()).totals).toEqual(stats.totals);
    } finally {
      await reopened.close();
      await lease2.release();
    }
  });

  it('stores a key once when resends of it arrive while its first write is still on its way to the disk', async () => {
    const lease = await acquireDatabase(mkdtempSync(path.join(tmpRoot, 'resend-')));
    const outbox = await Outbox.open(lease.db, { maxBytes: 1e9, ttlMs: { alarm: 1e9, event: 1e9, metrology: 1e9 }, lingerMs: 1 });
    try {
      const outcomes: Array<Promise<{ duplicate: boolean }>> = [];
      const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
      // Each key is sent three times a few event-loop turns apart, among the other keys' sends:
      // some resends come before the first write is decided, some while it is written, some after.
      for (let round = 0; round < 3; round += 1) {
        for (let key = 0; key < 300; key += 1) {
          outcomes.push(outbox.append({ key: `k${key}`, meter: 'm', recordClass: 'metrology', payload: Buffer.alloc(30, 1) }));
          if (key % (7 + round) === 0) await tick();
        }
      }
      const results = await Promise.all(outcomes);
      expect(results.filter((r) => !r.duplicate)).toHaveLength(300);
      const queued = await outbox.peek({ limit: 10_000 });
      expect(queued).toHaveLength(300);
      expect(new Set(queued.map((e) => e.key)).size).toBe(300);
      expect((await outbox.stats()).totals.records).toBe(300);
    } finally {
      await outbox.close();
      await lease.release();
    }
  });

  it('stores a key once when its resend decides only after the first write landed, having looked before it did', async () => {
    // 2,000 readings fill the budget; then, in one tick: A, a large alarm C that must drop every
    // reading (a long walk, during which A's write lands), and B, a resend of A. B's lookup ran
    // with A's, before A was on disk; its decision comes after C's, after A's write.
    const lease = await acquireDatabase(mkdtempSync(path.join(tmpRoot, 'late-')));
    const reading = (n: number) => ({ key: `r${String(n).padStart(4, '0')}`, meter: 'm', recordClass: 'metrology' as const, payload: Buffer.alloc(45, 1) });
    const readingBytes = 5 + 1 + 45;
    const alarm = { key: 'alarm-a', meter: 'm', recordClass: 'alarm' as const, payload: Buffer.alloc(10, 2) };
    const alarmBytes = 7 + 1 + 10;
    const outbox = await Outbox.open(lease.db, { maxBytes: 2_000 * readingBytes + alarmBytes, ttlMs: { alarm: 1e9, event: 1e9, metrology: 1e9 }, lingerMs: 1 });
    try {
      await Promise.all(Array.from({ length: 2_000 }, (_, n) => outbox.append(reading(n))));
      const large = { key: 'alarm-c', meter: 'm', recordClass: 'alarm' as const, payload: Buffer.alloc(2_000 * readingBytes - 20, 3) };
      const [a, c, b] = await Promise.all([outbox.append(alarm), outbox.append(large), outbox.append(alarm)]);
      expect([a, c, b]).toEqual([{ duplicate: false }, { duplicate: false }, { duplicate: true }]);
      expect((await outbox.peek({ limit: 10, recordClass: 'alarm' })).map((e) => e.key)).toEqual(['alarm-a', 'alarm-c']);
      expect((await outbox.stats()).alarm.records).toBe(2);
    } finally {
      await outbox.close();
      await lease.release();
    }
  });
});
