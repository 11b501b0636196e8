import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RelayJournal, RelayService, type RelayRunProgress } from '../../src/relay/index.js';
import { ManualRelayTime, ScriptedRelayPort } from '../helpers/relay-port.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';

const ADMIN = { source: 'local' as const, operator: 'bob', role: 'field-technician', mfa: true };

let dir: string;
let time: ManualRelayTime;

async function open(dbDir: string, port: ScriptedRelayPort): Promise<{ service: RelayService; lease: DatabaseLease; journal: RelayJournal }> {
  const lease = await acquireDatabase(dbDir);
  const journal = await RelayJournal.open(lease.db);
  const service = await RelayService.open({ journal, port, now: time.now, scheduler: time.scheduler });
  return { service, lease, journal };
}

/** The gateway "crashes": in-flight port calls never return; the service is closed and the database released. */
async function crash(h: { service: RelayService; lease: DatabaseLease }): Promise<void> {
  await h.service.close();
  await h.lease.release();
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'relay-restart-'));
  time = new ManualRelayTime();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('relay lifecycle: restarts', () => {
  it('a restart after `actuating` was recorded and the invoke took effect: read back, not invoked again', async () => {
    const port = new ScriptedRelayPort();
    const relay = port.relay('m1', { state: 1 });
    port.decide = ({ kind }) => (kind === 'invoke' ? 'apply-then-hang' : 'run');
    let h = await open(path.join(dir, 'db'), port);
    const running = h.service.execute({ id: 'c1', meter: 'm1', action: 'disconnect', authorization: ADMIN, notAfter: time.now() + 60_000 });
    const settled = running.then(() => undefined, (err: unknown) => err);
    await port.hung;
    await crash(h);
    expect(await settled).toMatchObject({ code: 'CLOSED' });
    expect(relay).toMatchObject({ invokeCalls: 1, actuations: 1 });

    port.heal();
    h = await open(path.join(dir, 'db'), port);
    expect(await h.service.status('c1')).toMatchObject({ phase: 'actuating', attempts: 1, invokeUnanswered: true });
    const [result] = await h.service.resume();
    expect(result).toMatchObject({ code: 'RELAY_OP_SUCCESS', resumed: true, actuated: true, state: 0 });
    expect(result?.attempts).toBeUndefined();
    expect(relay).toMatchObject({ invokeCalls: 1, actuations: 1 });
    // and a repeat of the command after all that
    expect((await h.service.execute({ id: 'c1', meter: 'm1', action: 'disconnect', authorization: ADMIN, notAfter: time.now() + 60_000 - 0 })).code).toBe(
      'RELAY_OP_SUCCESS',
    );
    expect(relay).toMatchObject({ invokeCalls: 1, actuations: 1 });
    await crash(h);
  });

  /** Runs c1 (disconnect m1) until the port hangs at the first invoke, "crashes", and reopens. */
  async function crashAtInvoke(port: ScriptedRelayPort, decision: 'hang' | 'apply-then-hang') {
    port.decide = ({ kind }) => (kind === 'invoke' ? decision : 'run');
    const h = await open(path.join(dir, 'db'), port);
    const settled = h.service
      .execute({ id: 'c1', meter: 'm1', action: 'disconnect', authorization: ADMIN, notAfter: time.now() + 60_000 })
      .then(() => undefined, (err: unknown) => err);
    await port.hung;
    await crash(h);
    expect(await settled).toMatchObject({ code: 'CLOSED' });
    port.heal();
    const reopened = await open(path.join(dir, 'db'), port);
    expect(await reopened.service.status('c1')).toMatchObject({ phase: 'actuating', invokeMaybeSent: true, invokeUnanswered: true, attempts: 1, fromState: 1 });
    return reopened;
  }

  it('a restart after `actuating` was recorded but before the invoke left: resume reads back, invokes once and succeeds', async () => {
    const port = new ScriptedRelayPort();
    const relay = port.relay('m1', { state: 1 });
    const h = await crashAtInvoke(port, 'hang');
    expect(relay).toMatchObject({ invokeCalls: 1, invokes: 0, actuations: 0, state: 1 });
    const [result] = await h.service.resume();
    expect(result).toMatchObject({ code: 'RELAY_OP_SUCCESS', final: true, resumed: true, actuated: true, attempts: 2, state: 0, loadVoltage: 0 });
    expect(relay).toMatchObject({ invokeCalls: 2, invokes: 1, actuations: 1, state: 0 });
    expect(await h.service.status('c1')).toMatchObject({ phase: 'done', attempts: 2 });
    // A repeat of the command changes nothing.
    expect((await h.service.execute({ id: 'c1', meter: 'm1', action: 'disconnect', authorization: ADMIN, notAfter: time.now() + 60_000 })).code).toBe('RELAY_OP_SUCCESS');
    expect(relay).toMatchObject({ invokeCalls: 2, actuations: 1 });
    await crash(h);
  });

  it('a restart after an invoke reached a meter that did not move (obstruction on the first attempt only): resume invokes once more', async () => {
    const port = new ScriptedRelayPort();
    const relay = port.relay('m1', { state: 1, invokeFault: { code: 'OBSTRUCTION', times: 1 } });
    const h = await crashAtInvoke(port, 'apply-then-hang');
    expect(relay).toMatchObject({ invokeCalls: 1, invokes: 1, actuations: 0, state: 1 });
    const [result] = await h.service.resume();
    expect(result).toMatchObject({ code: 'RELAY_OP_SUCCESS', resumed: true, attempts: 2, state: 0 });
    expect(relay).toMatchObject({ invokeCalls: 2, invokes: 2, actuations: 1, state: 0 });
    await crash(h);
  });

  it('a restart after an invoke reached a relay that never moves: one more invoke, then E099', async () => {
    const port = new ScriptedRelayPort();
    const relay = port.relay('m1', { state: 1, stuck: true });
    const h = await crashAtInvoke(port, 'apply-then-hang');
    const [result] = await h.service.resume();
    expect(result).toMatchObject({ code: 'E099', final: true, resumed: true, attempts: 2, state: 1, loadVoltage: 230 });
    expect(relay).toMatchObject({ invokeCalls: 2, invokes: 2, actuations: 0, state: 1 });
    await crash(h);
  });

  it('a second crash during the extra attempt: the next resume only verifies (at most two invokes per command)', async () => {
    const port = new ScriptedRelayPort();
    const relay = port.relay('m1', { state: 1 });
    let h = await crashAtInvoke(port, 'hang');
    port.decide = ({ kind }) => (kind === 'invoke' ? 'hang' : 'run');
    const resumed = h.service.resume().then(() => undefined, (err: unknown) => err);
    await port.hung;
    await crash(h);
    expect(await resumed).toMatchObject({ code: 'CLOSED' });
    port.heal();
    h = await open(path.join(dir, 'db'), port);
    expect(await h.service.status('c1')).toMatchObject({ phase: 'actuating', attempts: 2 });
    const [result] = await h.service.resume();
    expect(result).toMatchObject({ code: 'E099', final: true, resumed: true, attempts: 2, state: 1 });
    expect(relay).toMatchObject({ invokeCalls: 2, invokes: 0, actuations: 0 });
    await crash(h);
  });

  it('a rolling disconnect of 200 meters (concurrency 16) interrupted after 50 invokes resumes: every meter RELAY_OP_SUCCESS, no relay operated twice', async () => {
    const port = new ScriptedRelayPort();
    const meters = Array.from({ length: 200 }, (_, i) => `meter-${String(i).padStart(3, '0')}`);
    for (const m of meters) port.relay(m, { state: 1 });
    let invokes = 0;
    port.decide = ({ kind }) => (kind === 'invoke' && ++invokes === 50 ? 'apply-then-hang' : 'run');
    const template = { action: 'disconnect' as const, authorization: ADMIN, notAfter: time.now() + 3_600_000 };

    let h = await open(path.join(dir, 'db'), port);
    const first = h.service.runMany(template, meters, { concurrency: 16, runId: 'roll-1' });
    const firstSettled = first.then(() => undefined, (err: unknown) => err);
    await port.hung;
    await crash(h);
    expect(await firstSettled).toMatchObject({ code: 'CLOSED' });
    const before = meters.filter((m) => port.relays.get(m)?.actuations === 1).length;
    expect(before).toBeGreaterThanOrEqual(50);
    expect(before).toBeLessThan(200);
    // Commands whose `actuating` was on disk but whose invoke never left when the gateway stopped.
    const unsent = meters.filter((m) => port.relays.get(m)?.invokeCalls === 1 && port.relays.get(m)?.actuations === 0);
    expect(unsent.length).toBeGreaterThan(0);

    port.heal();
    h = await open(path.join(dir, 'db'), port);
    const progress: RelayRunProgress[] = [];
    h.service.on('progress', (p) => progress.push(p));
    await h.service.resume();
    await h.service.idle();

    // Every command completes after the restart: read back first, invoked once more only where the relay had not moved.
    const codes: Record<string, number> = {};
    for (const m of meters) {
      const relay = port.relays.get(m);
      expect(relay?.actuations, m).toBe(1);
      expect(relay?.invokeCalls, m).toBeLessThanOrEqual(2);
      const entry = await h.service.status(`roll-1:${m}`);
      expect(entry?.phase, m).toBe('done');
      const code = entry?.outcome?.code ?? 'none';
      codes[code] = (codes[code] ?? 0) + 1;
      expect([code, relay?.state, entry?.outcome?.state], m).toEqual(['RELAY_OP_SUCCESS', 0, 0]);
      // Only the interrupted commands whose invoke had not left were invoked once more.
      expect([relay?.invokeCalls, entry?.outcome?.attempts], m).toEqual(unsent.includes(m) ? [2, 2] : [1, undefined]);
    }
    expect(codes).toEqual({ RELAY_OP_SUCCESS: 200 });
    const last = progress[progress.length - 1];
    expect(last).toMatchObject({ runId: 'roll-1', done: 200, total: 200, byCode: codes });
    // Running the same run again changes nothing.
    const again = await h.service.runMany(template, meters, { concurrency: 16, runId: 'roll-1' });
    expect(again).toMatchObject({ total: 200, finished: true, byCode: codes });
    expect(meters.every((m) => port.relays.get(m)?.actuations === 1 && (port.relays.get(m)?.invokeCalls ?? 0) <= 2)).toBe(true);
    await crash(h);
  });

  it('property: crashes at random port calls, with or without the call taking effect: never two actuations for one command; every command final', async () => {
    let round = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ at: fc.integer({ min: 1, max: 12 }), applied: fc.boolean() }), { minLength: 0, maxLength: 4 }),
        fc.array(fc.constantFrom(0 as const, 1 as const), { minLength: 4, maxLength: 4 }),
        fc.array(fc.constantFrom('none' as const, 'obstruction-once' as const, 'stuck' as const), { minLength: 4, maxLength: 4 }),
        async (crashes, initial, faults) => {
          round += 1;
          const dbDir = path.join(dir, `db-${round}`);
          const port = new ScriptedRelayPort();
          const meters = initial.map((_, i) => `m${i}`);
          initial.forEach((state, i) =>
            port.relay(`m${i}`, {
              state,
              stuck: faults[i] === 'stuck',
              ...(faults[i] === 'obstruction-once' ? { invokeFault: { code: 'OBSTRUCTION' as const, times: 1 } } : {}),
            }),
          );
          const template = { action: 'disconnect' as const, authorization: ADMIN, notAfter: time.now() + 3_600_000 };
          for (const c of crashes) {
            let calls = 0;
            port.decide = () => (++calls === c.at ? (c.applied ? 'apply-then-hang' : 'hang') : 'run');
            const h = await open(dbDir, port);
            const runs = Promise.all([h.service.resume(), h.service.runMany(template, meters, { concurrency: 2, runId: 'p' })]);
            const outcome = await Promise.race([runs.then(() => 'done' as const), port.hung.then(() => 'hung' as const)]);
            if (outcome === 'done') await h.service.idle();
            await crash(h);
            await runs.catch(() => undefined);
            port.heal();
          }
          const h = await open(dbDir, port);
          await h.service.resume();
          await h.service.runMany(template, meters, { concurrency: 2, runId: 'p' });
          for (const [i, m] of meters.entries()) {
            const relay = port.relays.get(m);
            // One command per meter: never two actuations for it, at most two invokes sent.
            expect(relay?.actuations ?? 0).toBeLessThanOrEqual(1);
            expect(relay?.invokeCalls ?? 0).toBeLessThanOrEqual(2);
            const entry = await h.service.status(`p:${m}`);
            expect(entry?.phase).toBe('done');
            expect(entry?.outcome?.final).toBe(true);
            // A relay that was connected was operated exactly once, or the command says why not.
            if (entry?.outcome?.code === 'RELAY_OP_SUCCESS') expect(relay?.state).toBe(0);
            if (faults[i] !== 'none') continue;
            // A healthy relay that was connected ends disconnected by exactly one actuation, unless
            // both of its attempts were cut off by crashes before reaching it (then E099, never a third invoke).
            if (entry?.outcome?.code !== 'RELAY_OP_SUCCESS') expect([entry?.outcome?.code, relay?.invokeCalls, relay?.invokes]).toEqual(['E099', 2, 0]);
          }
          await crash(h);
        },
      ),
      { numRuns: 25 },
    );
  });
});
