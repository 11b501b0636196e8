import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { acquireDatabase } from '../../src/store/database.js';
import { Outbox, OutboxError, type OutboxClass } from '../../src/store/outbox.js';

const LONG = { alarm: 1e9, event: 1e9, metrology: 1e9 };
const CLASSES: OutboxClass[] = ['alarm', 'event', 'metrology'];

/**
 * A real ENOSPC: a small tmpfs, mounted for this file (we run as root in CI
 * and in the dev container). Elsewhere the disk-full test is skipped, and says
 * so in its name; in CI it must not be skipped.
 */
const tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'outbox-storage-'));
const mountPoint = path.join(tmpRoot, 'tmpfs');
let mountProblem: string | undefined;
if (process.getuid?.() !== 0) {
  mountProblem = 'not root';
} else {
  try {
    mkdirSync(mountPoint);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', mountPoint], { stdio: 'pipe' });
  } catch (err) {
    mountProblem = `mount -t tmpfs failed: ${(err as Error).message.split('\n')[0]}`;
  }
}
if (mountProblem !== undefined && process.env.CI) throw new Error(`the disk-full test cannot run in CI: ${mountProblem}`);

const cleanups: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
  if (mountProblem === undefined) execFileSync('umount', [mountPoint]);
  rmSync(tmpRoot, { recursive: true, force: true });
});

const record = (key: string, recordClass: OutboxClass, bytes = 200) => ({ key, meter: `meter-${key.length}`, recordClass, payload: Buffer.alloc(bytes, 7) });

function freeBytes(dir: string): number {
  const fs = statfsSync(dir);
  return fs.bavail * fs.bsize;
}

describe.skipIf(mountProblem !== undefined)(`outbox on a full disk${mountProblem ? ` (SKIPPED: ${mountProblem})` : ''}`, () => {
  it('rejects every append it could not write with STORAGE, counts nothing it did not store, and after space returns stores again, durably', async () => {
    const dir = path.join(mountPoint, 'store');
    const lease = await acquireDatabase(dir);
    const outbox = await Outbox.open(lease.db, { maxBytes: 1e9, ttlMs: LONG });
    // The tmpfs cannot be unmounted while the database is open, whatever the outcome.
    cleanups.push(async () => {
      await outbox.close().catch(() => undefined);
      await lease.release();
    });
    const stored = new Map<string, number>();
    const failed = new Set<string>();
    let next = 0;
    const wave = async (count: number): Promise<unknown[]> => {
      const keys = Array.from({ length: count }, () => `rec-${next++}`);
      const outcomes = await Promise.allSettled(keys.map((key, i) => outbox.append(record(key, CLASSES[i % 3]!))));
      const errors: unknown[] = [];
      outcomes.forEach((outcome, i) => {
        const key = keys[i]!;
        if (outcome.status === 'fulfilled') {
          expect(outcome.value).toEqual({ duplicate: false });
          stored.set(key, Buffer.byteLength(key) + Buffer.byteLength(`meter-${key.length}`) + 200);
        } else {
          failed.add(key);
          errors.push(outcome.reason);
        }
      });
      return errors;
    };

    expect(await wave(50)).toEqual([]);
    // Leave about 48 KiB: a few hundred more records fit, then the log write fails.
    writeFileSync(path.join(mountPoint, 'filler'), Buffer.alloc(Math.max(0, freeBytes(mountPoint) - 48 * 1024)));
    let errors: unknown[] = [];
    for (let round = 0; round < 100 && errors.length === 0; round += 1) errors = await wave(100);
    expect(errors.length, 'the disk never filled').toBeGreaterThan(0);
    for (const err of errors) {
      expect(err).toBeInstanceOf(OutboxError);
      expect((err as OutboxError).code).toBe('STORAGE');
    }

    // Still full: refused at once, typed; counters and the dedup index hold only what was stored.
    const stillFull = await wave(20);
    expect(stillFull).toHaveLength(20);
    expect(stillFull.every((err) => err instanceof OutboxError && err.code === 'STORAGE')).toBe(true);
    let stats = await outbox.stats();
    expect(stats.totals.records).toBe(stored.size);
    expect(stats.totals.bytes).toBe([...stored.values()].reduce((a, b) => a + b, 0));
    expect(outbox.depth).toBe(stored.size);
    expect(stats.storageError).toMatch(/No space left on device/);

    // Acknowledgements and quarantines fail as a whole, and leave the records where they were.
    const taken = await outbox.take(5);
    await expect(outbox.ack(taken.map((e) => e.key))).rejects.toMatchObject({ code: 'STORAGE' });
    const [victim] = [...stored.keys()].filter((key) => !taken.some((e) => e.key === key));
    await expect(outbox.quarantine([victim!], 'poison')).rejects.toMatchObject({ code: 'STORAGE' });
    stats = await outbox.stats();
    expect(stats.totals).toMatchObject({ records: stored.size, quarantined: 0 });
    expect(await outbox.peek({ limit: 10, dead: true })).toEqual([]);

    // Space returns: appends are stored again, the failed keys as new records (nothing of them was kept).
    rmSync(path.join(mountPoint, 'filler'));
    const retried = [...failed].slice(0, 50);
    for (const key of retried) {
      expect(await outbox.append(record(key, 'metrology'))).toEqual({ duplicate: false });
      stored.set(key, Buffer.byteLength(key) + Buffer.byteLength(`meter-${key.length}`) + 200);
    }
    expect(await wave(200)).toEqual([]);
    // The records whose acknowledgement failed are handed out again; now it goes through.
    const again = await outbox.take(1e6);
    expect(again.map((e) => e.key)).toEqual(expect.arrayContaining(taken.map((e) => e.key)));
    outbox.release(again.map((e) => e.key));
    expect(await outbox.ack(taken.map((e) => e.key))).toBe(taken.length);
    for (const e of taken) stored.delete(e.key);
    await outbox.quarantine([victim!], 'poison');
    stats = await outbox.stats();
    expect(stats.storageError).toBeUndefined();
    expect(stats.totals).toMatchObject({ records: stored.size - 1, quarantined: 1 });

    // Reopened from disk (the database really closes): every record it said was stored is there, and
    // the counters agree. (Without a new LevelDB log after the failed write, what was written after it
    // would be skipped here.)
    await outbox.close();
    await lease.release();
    const lease2 = await acquireDatabase(dir);
    const reopened = await Outbox.open(lease2.db, { maxBytes: 1e9, ttlMs: LONG });
    try {
      const all = await reopened.take(1e6);
      const keys = new Set(all.map((e) => e.key));
      const expected = [...stored.keys()].filter((key) => key !== victim);
      expect(expected.filter((key) => !keys.has(key))).toEqual([]);
      expect(keys.size).toBe(expected.length);
      const reopenedStats = await reopened.stats();
      expect(reopenedStats.totals).toMatchObject({ records: expected.length, quarantined: 1 });
      expect(reopenedStats.totals.bytes).toBe(expected.reduce((sum, key) => sum + stored.get(key)!, 0));
    } finally {
      await reopened.close();
      await lease2.release();
    }
  });
});

describe('outbox on a closed database', () => {
  it('rejects appends, acknowledgements, quarantines and reads with CLOSED, and changes no counter, in memory or on disk', async () => {
    const dir = mkdtempSync(path.join(tmpRoot, 'closed-'));
    const lease = await acquireDatabase(dir);
    const outbox = await Outbox.open(lease.db, { maxBytes: 1e9, ttlMs: LONG });
    try {
      await outbox.append(record('a', 'alarm'));
      await outbox.append(record('b', 'metrology'));
      const [taken] = await outbox.take(1);
      expect(taken?.key).toBe('a');
      // Something else closes the shared handle underneath the outbox.
      await lease.db.close();
      await expect(outbox.append(record('c', 'event'))).rejects.toMatchObject({ name: 'OutboxError', code: 'CLOSED' });
      await expect(outbox.ack(['a'])).rejects.toMatchObject({ code: 'CLOSED' });
      await expect(outbox.quarantine(['b'], 'x')).rejects.toMatchObject({ code: 'CLOSED' });
      await expect(outbox.stats()).rejects.toMatchObject({ code: 'CLOSED' });
      expect(outbox.depth).toBe(2);

    } finally {
      await outbox.close();
      await lease.release();
    }
    // Opened again, the outbox finds what was on disk before: the failed writes left no trace.
    const lease2 = await acquireDatabase(dir);
    const reopened = await Outbox.open(lease2.db, { maxBytes: 1e9, ttlMs: LONG });
    try {
      expect(reopened.depth).toBe(2);
      expect((await reopened.take(10)).map((e) => e.key)).toEqual(['a', 'b']);
      expect(await reopened.append(record('c', 'event'))).toEqual({ duplicate: false });
      expect(await reopened.ack(['a'])).toBe(1);
      expect((await reopened.stats()).totals.records).toBe(2);
    } finally {
      await reopened.close();
      await lease2.release();
    }
  });
});
