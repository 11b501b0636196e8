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
  it('a restart after `actuating` was recorded and the invoke reached the relay does not invoke again', async () => {
    const port = new ScriptedRelayPort();
    const relay = port.relay('m1', { state: 1 });
    port.decide = ({ kind }) => (kind === 'invoke' ? 'apply-then-hang' : 'run');
    let h = await open(path.join(dir, 'db'), port);
    const running = h.service.execute({ id: 'c1', meter: 'm1', action: 'disconnect', authorization: ADMIN, notAfter: time.now() + 60_000 });
    const settled = running.then(() => undefined, (err: unknown) => err);
    await port.hung;
    await crash(h);
    expect(await settled).toMatchObject({ code: 'CLOSED' });
    expect(relay.invokes).toBe(1);

    port.heal();
    h = await open(path.join(dir, 'db'), port);
    expect((await h.service.status('c1'))?.phase).toBe('actuating');
    const [result] = await h.service.resume();
    expect(result).toMatchObject({ code: 'RELAY_OP_SUCCESS', resumed: true, actuated: true, state: 0 });
    expect(relay.invokes).toBe(1);
    // and a repeat of the command after all that
    expect((await h.service.execute({ id: 'c1', meter: 'm1', action: 'disconnect', authorization: ADMIN, notAfter: time.now() + 60_000 - 0 })).code).toBe(
      'RELAY_OP_SUCCESS',
    );
    expect(relay.invokes).toBe(1);
    await crash(h);
  });

  it('a rolling disconnect of 200 meters (concurrency 16) interrupted after 50 invokes resumes: one outcome each, no relay operated twice', async () => {
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
    const before = meters.filter((m) => port.relays.get(m)?.invokes === 1).length;
    expect(before).toBeGreaterThanOrEqual(50);
    expect(before).toBeLessThan(200);

    port.heal();
    h = await open(path.join(dir, 'db'), port);
    const progress: RelayRunProgress[] = [];
    h.service.on('progress', (p) => progress.push(p));
    await h.service.resume();
    await h.service.idle();

    // Commands whose `actuating` was on disk when the gateway stopped are only verified after the restart:
    // those whose invoke had not left yet end E099 (relay not moved, real state recorded), never invoked twice.
    const codes: Record<string, number> = {};
    for (const m of meters) {
      const relay = port.relays.get(m);
      expect(relay?.invokes, m).toBeLessThanOrEqual(1);
      const entry = await h.service.status(`roll-1:${m}`);
      expect(entry?.phase, m).toBe('done');
      const code = entry?.outcome?.code ?? 'none';
      codes[code] = (codes[code] ?? 0) + 1;
      if (code === 'RELAY_OP_SUCCESS') expect([relay?.invokes, relay?.state], m).toEqual([1, 0]);
      else expect([code, relay?.invokes, relay?.state, entry?.outcome?.state], m).toEqual(['E099', 0, 1, 1]);
    }
    expect(Object.keys(codes).sort()).toEqual(expect.arrayContaining(['RELAY_OP_SUCCESS']));
    expect(codes.E099 ?? 0).toBeLessThanOrEqual(16);
    const last = progress[progress.length - 1];
    expect(last).toMatchObject({ runId: 'roll-1', done: 200, total: 200, byCode: codes });
    // Running the same run again changes nothing.
    const again = await h.service.runMany(template, meters, { concurrency: 16, runId: 'roll-1' });
    expect(again).toMatchObject({ total: 200, finished: true, byCode: codes });
    expect(meters.every((m) => (port.relays.get(m)?.invokes ?? 0) <= 1)).toBe(true);
    await crash(h);
  });

  it('property: crashes at random port calls, with or without the call taking effect, never invoke a relay twice', async () => {
    let round = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ at: fc.integer({ min: 1, max: 12 }), applied: fc.boolean() }), { minLength: 0, maxLength: 4 }),
        fc.array(fc.constantFrom(0 as const, 1 as const), { minLength: 4, maxLength: 4 }),
        async (crashes, initial) => {
          round += 1;
          const dbDir = path.join(dir, `db-${round}`);
          const port = new ScriptedRelayPort();
          const meters = initial.map((_, i) => `m${i}`);
          initial.forEach((state, i) => port.relay(`m${i}`, { state }));
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
          for (const m of meters) {
            const relay = port.relays.get(m);
            expect(relay?.invokes ?? 0).toBeLessThanOrEqual(1);
            const entry = await h.service.status(`p:${m}`);
            expect(entry?.phase).toBe('done');
            expect(entry?.outcome?.final).toBe(true);
            // A relay that was connected was operated exactly once, or the command says why not.
            if (entry?.outcome?.code === 'RELAY_OP_SUCCESS') expect(relay?.state).toBe(0);
          }
          await crash(h);
        },
      ),
      { numRuns: 25 },
    );
  });
});
