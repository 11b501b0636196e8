import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';
import { Outbox, OutboxError, type OutboxClass, type OutboxOptions } from '../../src/store/outbox.js';

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const CHILD = path.join(REPO_ROOT, 'test', 'fixtures', 'outbox-child.mjs');
const LONG = { alarm: 1e9, event: 1e9, metrology: 1e9 };

let tmpRoot: string;
const open: Array<{ outbox: Outbox; lease: DatabaseLease }> = [];
beforeAll(() => {
  tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'outbox-'));
});
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));
afterEach(async () => {
  for (const { outbox, lease } of open.splice(0)) {
    await outbox.close();
    await lease.release();
  }
});

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

const record = (key: string, recordClass: OutboxClass, meter = 'm1', bytes = 10) => ({ key, meter, recordClass, payload: Buffer.alloc(bytes, 1) });

describe('outbox', () => {
  it('hands out alarms, then events, then metrology, each oldest first; ack removes, release hands out again', async () => {
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'order-')));
    await outbox.append(record('read-1', 'metrology'));
    await outbox.append(record('event-1', 'event'));
    await outbox.append(record('read-2', 'metrology'));
    await outbox.append(record('alarm-1', 'alarm'));
    await outbox.append(record('event-2', 'event'));
    const first = await outbox.take(3);
    expect(first.map((e) => e.key)).toEqual(['alarm-1', 'event-1', 'event-2']);
    // Handed out records are not handed out twice.
    expect((await outbox.take(10)).map((e) => e.key)).toEqual(['read-1', 'read-2']);
    expect(await outbox.ack(['alarm-1', 'event-1'])).toBe(2);
    outbox.release(['event-2', 'read-1', 'read-2']);
    expect((await outbox.take(10)).map((e) => e.key)).toEqual(['event-2', 'read-1', 'read-2']);
    const stats = await outbox.stats();
    expect(stats.alarm.records).toBe(0);
    expect(stats.event.records).toBe(1);
    expect(stats.metrology.records).toBe(2);
    expect(stats.inFlight).toBe(3);
  });

  it('takes on from where the last take stopped, goes back for released records, and on to new ones', async () => {
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'cursor-')));
    for (const key of ['a', 'b', 'c']) await outbox.append(record(key, 'metrology'));
    expect((await outbox.take(2)).map((e) => e.key)).toEqual(['a', 'b']);
    outbox.release(['a']);
    await outbox.append(record('d', 'alarm'));
    await outbox.append(record('e', 'metrology'));
    expect((await outbox.take(10)).map((e) => e.key)).toEqual(['d', 'a', 'c', 'e']);
    expect(await outbox.ack(['a', 'b', 'c', 'd', 'e'])).toBe(5);
    expect(await outbox.take(10)).toEqual([]);
    await outbox.append(record('f', 'event'));
    expect((await outbox.take(10)).map((e) => e.key)).toEqual(['f']);
  });

  it('counts a record once when the budget makes room while its acknowledgement is being written', async () => {
    // 13 bytes a record, three fit; a long commit window keeps the acknowledgement unwritten while appends decide.
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'ack-drop-')), { maxBytes: 40, lingerMs: 50 });
    await Promise.all(['1', '2', '3'].map((key) => outbox.append(record(key, 'metrology'))));
    expect((await outbox.take(1)).map((e) => e.key)).toEqual(['1']);
    const acked = outbox.ack(['1']);
    // '5' needs room: the oldest metrology goes, and that is '2' ('1' is leaving already).
    await Promise.all([outbox.append(record('4', 'metrology')), outbox.append(record('5', 'metrology'))]);
    expect(await acked).toBe(1);
    const left = (await outbox.take(10)).map((e) => e.key);
    expect(left).toEqual(['3', '4', '5']);
    const stats = await outbox.stats();
    expect(stats.metrology).toMatchObject({ records: left.length, bytes: 13 * left.length, dropped: 1 });
  });

  it('stores a key once, also when two appends of it race', async () => {
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'dedup-')));
    const results = await Promise.all([outbox.append(record('k', 'metrology')), outbox.append(record('k', 'metrology'))]);
    expect(results.map((r) => r.duplicate).sort()).toEqual([false, true]);
    expect(await outbox.append(record('k', 'metrology'))).toEqual({ duplicate: true });
    expect((await outbox.stats()).metrology.records).toBe(1);
    expect(await outbox.take(10)).toHaveLength(1);
  });

  it('keeps records and counters across a restart', async () => {
    const dir = mkdtempSync(path.join(tmpRoot, 'restart-'));
    // 13 bytes a record: the third one makes the oldest metrology go.
    const outbox = await openOutbox(dir, { maxBytes: 30 });
    await outbox.append(record('a', 'metrology', 'm1', 10));
    await outbox.append(record('b', 'metrology', 'm1', 10));
    await outbox.append(record('c', 'alarm', 'm1', 10));
    await closeAll();
    const again = await openOutbox(dir, { maxBytes: 30 });
    expect((await again.take(10)).map((e) => e.key)).toEqual(['c', 'b']);
    const stats = await again.stats();
    expect(stats.metrology).toMatchObject({ records: 1, dropped: 1 });
    expect(stats.alarm.records).toBe(1);
  });

  it('drops the oldest metrology when the budget is used up, never alarms, and pushes back with FULL', async () => {
    // Each record is 'key' (1) + 'm1' (2) + 10 payload bytes = 13 bytes; the budget holds three.
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'budget-')), { maxBytes: 40 });
    await outbox.append(record('1', 'metrology'));
    await outbox.append(record('2', 'alarm'));
    await outbox.append(record('3', 'metrology'));
    await outbox.append(record('4', 'alarm'));
    let stats = await outbox.stats();
    expect(stats.metrology).toMatchObject({ records: 1, dropped: 1 });
    await outbox.append(record('5', 'alarm'));
    stats = await outbox.stats();
    expect(stats.metrology).toMatchObject({ records: 0, dropped: 2 });
    expect(stats.alarm.records).toBe(3);
    const full = await outbox.append(record('6', 'alarm')).catch((err: unknown) => err);
    expect(full).toBeInstanceOf(OutboxError);
    expect((full as OutboxError).code).toBe('FULL');
    await expect(outbox.append(record('7', 'metrology'))).rejects.toMatchObject({ code: 'FULL' });
    expect((await outbox.take(10)).map((e) => e.key)).toEqual(['2', '4', '5']);
  });

  it('expires records past their class TTL and counts them', async () => {
    let now = 1_000_000;
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'ttl-')), { ttlMs: { alarm: 10_000, event: 5_000, metrology: 1_000 }, now: () => now });
    await outbox.append(record('read', 'metrology'));
    await outbox.append(record('event', 'event'));
    await outbox.append(record('alarm', 'alarm'));
    now += 2_000;
    expect(await outbox.sweep()).toBe(1);
    now += 4_000;
    expect(await outbox.sweep()).toBe(1);
    const stats = await outbox.stats();
    expect(stats.metrology.expired).toBe(1);
    expect(stats.event.expired).toBe(1);
    expect(stats.alarm).toMatchObject({ records: 1, expired: 0, oldestAgeMs: 6_000 });
  });

  it('refuses records without a key, meter or known class', async () => {
    const outbox = await openOutbox(mkdtempSync(path.join(tmpRoot, 'bad-')));
    await expect(outbox.append(record('', 'alarm'))).rejects.toMatchObject({ code: 'BAD_RECORD' });
    await expect(outbox.append({ ...record('x', 'alarm'), recordClass: 'urgent' as OutboxClass })).rejects.toMatchObject({ code: 'BAD_RECORD' });
    await expect(outbox.append({ key: 'y', meter: 'm', recordClass: 'alarm', payload: 'text' as unknown as Uint8Array })).rejects.toMatchObject({ code: 'BAD_RECORD' });
  });

  it('loses no record it said was safe when the process is killed with SIGKILL, five times over', async () => {
    const dir = mkdtempSync(path.join(tmpRoot, 'sigkill-'));
    const safe = new Set<string>();
    for (let run = 0; run < 5; run += 1) {
      const child = spawn(process.execPath, [CHILD, dir, `run${run}`], { stdio: ['pipe', 'pipe', 'inherit'] });
      let buffered = '';
      let kill: () => void = () => undefined;
      const enough = new Promise<void>((resolve) => (kill = resolve));
      let seen = 0;
      child.stdout.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        const lines = buffered.split('\n');
        buffered = lines.pop() ?? '';
        for (const line of lines) {
          if (!line.startsWith('SAFE ')) continue;
          safe.add(line.slice(5));
          seen += 1;
          // A different moment each run: after 200, 400, ... acknowledged records.
          if (seen === 200 * (run + 1)) kill();
        }
      });
      // 'close', not 'exit': every line the child wrote before it died has been read by then.
      const closed = new Promise<NodeJS.Signals | null>((resolve) => child.once('close', (_code, signal) => resolve(signal)));
      // A child that dies on its own (dist/ not built, say) fails the test instead of leaving it waiting.
      const outcome = await Promise.race([enough.then(() => 'enough' as const), closed.then(() => 'ended early' as const)]);
      expect(outcome, `run ${run}: the child ended before ${200 * (run + 1)} records were safe`).toBe('enough');
      child.kill('SIGKILL');
      expect(await closed).toBe('SIGKILL');
    }
    const outbox = await openOutbox(dir);
    const stored = new Set((await outbox.take(1e7)).map((e) => e.key));
    const missing = [...safe].filter((key) => !stored.has(key));
    expect(missing).toEqual([]);
    expect(safe.size).toBeGreaterThanOrEqual(200 + 400 + 600 + 800 + 1000);
    // The counters were written with the records: they agree with what is there.
    const stats = await outbox.stats();
    expect(stats.alarm.records + stats.event.records + stats.metrology.records).toBe(stored.size);
  });
});
