import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { LinkMetrics } from '../../src/mesh/registry.js';
import {
  RelayAudit,
  RelayError,
  RelayJournal,
  RelayService,
  type RelayCommand,
  type RelayResult,
  type RelayServiceOptions,
} from '../../src/relay/index.js';
import { ManualRelayTime, ScriptedRelayPort } from '../helpers/relay-port.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';

const ADMIN = { source: 'hes' as const, operator: 'alice', role: 'utility-administrator', mfa: true };

let dir: string;
let lease: DatabaseLease;
let time: ManualRelayTime;
let port: ScriptedRelayPort;
let service: RelayService;
let results: RelayResult[];
let metrics: Map<string, LinkMetrics>;

async function start(options: Partial<RelayServiceOptions> = {}): Promise<RelayService> {
  lease = await acquireDatabase(path.join(dir, 'db'));
  const journal = await RelayJournal.open(lease.db);
  service = await RelayService.open({
    journal,
    port,
    audit: new RelayAudit(path.join(dir, 'logs'), time.now),
    linkMetrics: (meter) => metrics.get(meter),
    now: time.now,
    scheduler: time.scheduler,
    ...options,
  });
  service.on('result', (r) => results.push(r));
  return service;
}

async function stop(): Promise<void> {
  await service.close();
  await lease.release();
}

function command(meter: string, action: 'disconnect' | 'reconnect' = 'disconnect', extra: Partial<RelayCommand> = {}): RelayCommand {
  return { id: `cmd-${meter}-${action}`, meter, action, authorization: ADMIN, notAfter: time.now() + 3_600_000, ...extra };
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'relay-lifecycle-'));
  time = new ManualRelayTime();
  port = new ScriptedRelayPort();
  results = [];
  metrics = new Map();
  await start();
});

afterEach(async () => {
  await stop().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

describe('relay lifecycle: outcomes', () => {
  it('disconnects a connected meter: RELAY_OP_SUCCESS, one invoke, audited in both logs, emitted', async () => {
    const relay = port.relay('m1', { state: 1 });
    const result = await service.execute(command('m1'));
    expect(result).toMatchObject({ code: 'RELAY_OP_SUCCESS', final: true, actuated: true, state: 0, loadVoltage: 0, operator: 'alice' });
    expect(result.attempts).toBeUndefined();
    expect(relay).toMatchObject({ invokeCalls: 1, invokes: 1, actuations: 1 });
    expect(relay.state).toBe(0);
    expect(results.map((r) => r.code)).toEqual(['RELAY_OP_SUCCESS']);
    expect((await service.status('cmd-m1-disconnect'))?.phase).toBe('done');
    await stop();
    const actuator = await readFile(path.join(dir, 'logs', 'actuator.log'), 'utf8');
    const daemon = await readFile(path.join(dir, 'logs', 'relay_daemon.log'), 'utf8');
    expect(actuator).toMatch(/cmd=cmd-m1-disconnect operator=alice meter=m1 step=actuate token=ACTUATING/);
    expect(actuator).toMatch(/step=outcome token=RELAY_OP_SUCCESS/);
    for (const token of ['RECEIVED', 'AUTHORIZED', 'LINK_OK', 'APDU_SENT', 'APDU_RECEIVED', 'RELAY_OP_SUCCESS']) {
      expect(daemon).toContain(`token=${token}`);
    }
    expect(daemon.split('\n')[0]).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z cmd=/);
  });

  it('reconnects a disconnected meter', async () => {
    const relay = port.relay('m1', { state: 0 });
    const result = await service.execute(command('m1', 'reconnect'));
    expect(result).toMatchObject({ code: 'RELAY_OP_SUCCESS', state: 1, loadVoltage: 230 });
    expect(relay.invokes).toBe(1);
  });

  it('reports RELAY_WELD_DETECTED when the relay says disconnected but the load side keeps its voltage', async () => {
    port.relay('m1', { state: 1, weld: true });
    const result = await service.execute(command('m1'));
    expect(result).toMatchObject({ code: 'RELAY_WELD_DETECTED', final: true, state: 0, loadVoltage: 230, actuated: true });
  });

  it('honours a configurable weld threshold', async () => {
    await stop();
    await start({ weldVoltage: 300 });
    port.relay('m1', { state: 1, weld: true });
    expect((await service.execute(command('m1'))).code).toBe('RELAY_OP_SUCCESS');
  });

  it('E001 low capacitor: deferred for the charge cycle, then succeeds; the refused attempt does not count as wear', async () => {
    const relay = port.relay('m1', { state: 1, invokeFault: { code: 'LOW_CAPACITOR', times: 1 } });
    const first = await service.execute(command('m1'));
    expect(first).toMatchObject({ code: 'DEFERRED', reason: 'E001', final: false, retryAt: time.now() + 30_000, actuated: false });
    // The meter received the invoke and refused it: the relay did not move.
    expect(relay).toMatchObject({ invokes: 1, actuations: 0, state: 1 });
    time.advance(30_000);
    await service.idle();
    const entry = await service.status('cmd-m1-disconnect');
    expect(entry?.outcome).toMatchObject({ code: 'RELAY_OP_SUCCESS', actuated: true });
    expect(entry?.outcome?.attempts).toBeUndefined();
    expect(relay).toMatchObject({ invokes: 2, actuations: 1 });
    await stop();
    expect(await readFile(path.join(dir, 'logs', 'actuator.log'), 'utf8')).toContain('token=E001');
  });

  it('E012 authentication failure and E044 obstruction are final', async () => {
    port.relay('a', { state: 1, invokeFault: { code: 'AUTH_FAILURE', times: 1 } });
    port.relay('b', { state: 1, invokeFault: { code: 'OBSTRUCTION', times: 1 } });
    expect(await service.execute(command('a'))).toMatchObject({ code: 'E012', final: true });
    expect(await service.execute(command('b'))).toMatchObject({ code: 'E044', final: true });
    expect(port.relays.get('a')?.state).toBe(1);
  });

  it('E099 logical state mismatch: re-syncs and records the real state; an answered invoke is not sent again', async () => {
    const relay = port.relay('m1', { state: 1, stuck: true });
    const result = await service.execute(command('m1'));
    expect(result).toMatchObject({ code: 'E099', final: true, state: 1, loadVoltage: 230 });
    expect(relay).toMatchObject({ invokeCalls: 1, invokes: 1, actuations: 0 });
    await stop();
    expect(await readFile(path.join(dir, 'logs', 'relay_daemon.log'), 'utf8')).toContain('token=STATE_RESYNC');
  });

  it('REFUSED by the meter is final and nothing moves', async () => {
    const relay = port.relay('m1', { state: 1, invokeFault: { code: 'REFUSED', times: 1 } });
    expect(await service.execute(command('m1'))).toMatchObject({ code: 'REFUSED', final: true });
    expect(relay.state).toBe(1);
  });
});

describe('relay lifecycle: idempotence and authorization', () => {
  it('a second identical command returns the recorded outcome without touching the meter', async () => {
    const relay = port.relay('m1', { state: 1 });
    const first = await service.execute(command('m1'));
    const calls = port.calls;
    const again = await service.execute(command('m1'));
    expect(again).toEqual(first);
    expect(port.calls).toBe(calls);
    expect(relay.invokes).toBe(1);
    // also after a restart
    await stop();
    await start();
    expect(await service.execute(command('m1'))).toEqual(first);
    expect(port.calls).toBe(calls);
  });

  it('the same id for a different command is an ID_CONFLICT', async () => {
    port.relay('m1', { state: 1 });
    await service.execute(command('m1'));
    await expect(service.execute({ ...command('m1'), meter: 'm2' })).rejects.toMatchObject({ code: 'ID_CONFLICT' });
    await expect(service.execute({ ...command('m1'), id: '' })).rejects.toBeInstanceOf(RelayError);
  });

  it('an already disconnected meter is confirmed without actuation, and that does not count as wear', async () => {
    const relay = port.relay('m1', { state: 0 });
    const result = await service.execute(command('m1'));
    expect(result).toMatchObject({ code: 'RELAY_OP_SUCCESS', idempotent: true, actuated: false, state: 0 });
    expect(relay.invokes).toBe(0);
    // a reconnect right after is not held by the minimum interval
    expect(await service.execute(command('m1', 'reconnect'))).toMatchObject({ code: 'RELAY_OP_SUCCESS', actuated: true });
  });

  it('an already disconnected meter with voltage on the load side is a weld, without actuation', async () => {
    const relay = port.relay('m1', { state: 0, weld: true });
    expect(await service.execute(command('m1'))).toMatchObject({ code: 'RELAY_WELD_DETECTED', actuated: false });
    expect(relay.invokes).toBe(0);
  });

  it.each([
    ['no role', { ...ADMIN, role: 'viewer' }],
    ['no MFA', { ...ADMIN, mfa: false }],
    ['neither', { source: 'local' as const, operator: 'mallory', role: '', mfa: false }],
  ])('refuses a command with %s: nothing moves, nothing stored', async (_label, authorization) => {
    const relay = port.relay('m1', { state: 1 });
    const result = await service.execute(command('m1', 'disconnect', { authorization }));
    expect(result).toMatchObject({ code: 'UNAUTHORIZED', final: true, actuated: false });
    expect(port.calls).toBe(0);
    expect(relay.state).toBe(1);
    expect(await service.status('cmd-m1-disconnect')).toBeUndefined();
    await stop();
    expect(await readFile(path.join(dir, 'logs', 'relay_daemon.log'), 'utf8')).toContain('token=UNAUTHORIZED');
  });
});

describe('relay lifecycle: link, wear, pending, expiry', () => {
  it('defers when the link is below thresholds, says why, and runs once the link is good again', async () => {
    const relay = port.relay('m1', { state: 1 });
    metrics.set('m1', { rssi: -92, snr: 3 });
    const result = await service.execute(command('m1'));
    expect(result).toMatchObject({ code: 'DEFERRED', reason: 'link', final: false });
    expect(result.detail).toMatch(/RSSI -92 dBm below -85 dBm/);
    expect(result.detail).toMatch(/SNR 3 dB below 5 dB/);
    expect(port.calls).toBe(0);
    metrics.set('m1', { rssi: -70, snr: 12 });
    const [after] = await service.meterAvailable('m1');
    expect(after).toMatchObject({ code: 'RELAY_OP_SUCCESS' });
    expect(relay.invokes).toBe(1);
  });

  it('unknown link metrics: dispatched by default, deferred with unknown: defer', async () => {
    port.relay('m1', { state: 1 });
    expect((await service.execute(command('m1'))).code).toBe('RELAY_OP_SUCCESS');
    await stop();
    await start({ link: { unknown: 'defer' } });
    port.relay('m2', { state: 1 });
    const result = await service.execute(command('m2'));
    expect(result).toMatchObject({ code: 'DEFERRED', reason: 'link' });
    expect(result.detail).toMatch(/RSSI unknown/);
  });

  it('wear: a second operation within the minimum interval is deferred to the time it may run, then succeeds', async () => {
    const relay = port.relay('m1', { state: 1 });
    const t0 = time.now();
    await service.execute(command('m1'));
    const second = await service.execute(command('m1', 'reconnect'));
    expect(second).toMatchObject({ code: 'DEFERRED', reason: 'wear', retryAt: t0 + 60_000 });
    expect(relay.invokes).toBe(1);
    time.advance(60_000);
    await service.idle();
    expect((await service.status('cmd-m1-reconnect'))?.outcome).toMatchObject({ code: 'RELAY_OP_SUCCESS' });
    expect(relay.invokes).toBe(2);
  });

  it('wear: the hourly cap defers until the oldest operation leaves the hour, also across a restart', async () => {
    await stop();
    await start({ wear: { minIntervalMs: 0, maxPerHour: 2 } });
    const relay = port.relay('m1', { state: 1 });
    const t0 = time.now();
    await service.execute(command('m1', 'disconnect', { id: 'a' }));
    time.advance(1000);
    await service.execute(command('m1', 'reconnect', { id: 'b' }));
    await stop();
    await start({ wear: { minIntervalMs: 0, maxPerHour: 2 } });
    const third = await service.execute(command('m1', 'disconnect', { id: 'c', notAfter: t0 + 7_200_000 }));
    expect(third).toMatchObject({ code: 'DEFERRED', reason: 'wear', retryAt: t0 + 3_600_000 });
    time.advance(3_600_000);
    await service.idle();
    expect((await service.status('c'))?.outcome?.code).toBe('RELAY_OP_SUCCESS');
    expect(relay.invokes).toBe(3);
  });

  it('an unreachable meter keeps its command pending until meterAvailable', async () => {
    const relay = port.relay('m1', { state: 1, readFault: 'COMM_TIMEOUT_ERR' });
    const result = await service.execute(command('m1'));
    expect(result).toMatchObject({ code: 'COMM_TIMEOUT_ERR', final: false, actuated: false });
    expect(service.waitingFor('m1')).toEqual(['cmd-m1-disconnect']);
    await stop();
    await start();
    delete relay.readFault;
    const [after] = await service.meterAvailable('m1');
    expect(after).toMatchObject({ code: 'RELAY_OP_SUCCESS' });
    expect(service.waitingFor('m1')).toEqual([]);
  });

  it('a meter without power: deferred no-power, run when power is restored', async () => {
    const relay = port.relay('m1', { state: 1, invokeFault: { code: 'NO_POWER', times: 1 } });
    const result = await service.execute(command('m1'));
    expect(result).toMatchObject({ code: 'DEFERRED', reason: 'no-power', actuated: false });
    // The meter said it could not fire (no supply): once power is restored the command runs.
    const [after] = await service.meterAvailable('m1');
    expect(after).toMatchObject({ code: 'RELAY_OP_SUCCESS', state: 0 });
    expect(relay).toMatchObject({ invokeCalls: 2, actuations: 1 });
  });

  it('a timeout after the relay moved is pending, then verified without a second invoke', async () => {
    const relay = port.relay('m1', { state: 1, timeoutAfterActuate: true });
    expect(await service.execute(command('m1'))).toMatchObject({ code: 'COMM_TIMEOUT_ERR', actuated: true });
    const [after] = await service.meterAvailable('m1');
    expect(after).toMatchObject({ code: 'RELAY_OP_SUCCESS', resumed: true, actuated: true });
    expect(after?.attempts).toBeUndefined();
    expect(relay).toMatchObject({ invokeCalls: 1, invokes: 1, actuations: 1 });
  });

  it('an invoke that timed out before reaching the meter: read back on meterAvailable, unmoved, invoked once more (not held by its own wear record)', async () => {
    const relay = port.relay('m1', { state: 1, invokeFault: { code: 'COMM_TIMEOUT_ERR', times: 1 } });
    expect(await service.execute(command('m1'))).toMatchObject({ code: 'COMM_TIMEOUT_ERR', final: false, actuated: true });
    expect(await service.status('cmd-m1-disconnect')).toMatchObject({ phase: 'pending', invokeUnanswered: true, attempts: 1, fromState: 1 });
    expect(relay).toMatchObject({ invokeCalls: 1, invokes: 0, actuations: 0 });
    const [after] = await service.meterAvailable('m1');
    expect(after).toMatchObject({ code: 'RELAY_OP_SUCCESS', resumed: true, actuated: true, attempts: 2, state: 0 });
    expect(relay).toMatchObject({ invokeCalls: 2, invokes: 1, actuations: 1, state: 0 });
    // The extra invoke counts as wear: a reconnect right after is held by the minimum interval.
    expect(await service.execute(command('m1', 'reconnect'))).toMatchObject({ code: 'DEFERRED', reason: 'wear' });
    await stop();
    expect(await readFile(path.join(dir, 'logs', 'actuator.log'), 'utf8')).toMatch(/step=actuate token=ACTUATING .*attempt=2/);
    expect(await readFile(path.join(dir, 'logs', 'relay_daemon.log'), 'utf8')).toContain('token=RELAY_NOT_MOVED');
  });

  it('one extra attempt at most: a second unanswered invoke is only verified afterwards (E099 if the relay never moved)', async () => {
    const relay = port.relay('m1', { state: 1, invokeFault: { code: 'COMM_TIMEOUT_ERR', times: 2 } });
    expect((await service.execute(command('m1'))).code).toBe('COMM_TIMEOUT_ERR');
    const [second] = await service.meterAvailable('m1');
    expect(second).toMatchObject({ code: 'COMM_TIMEOUT_ERR', final: false });
    expect(await service.status('cmd-m1-disconnect')).toMatchObject({ phase: 'pending', invokeUnanswered: true, attempts: 2 });
    const [third] = await service.meterAvailable('m1');
    expect(third).toMatchObject({ code: 'E099', final: true, resumed: true, attempts: 2, state: 1 });
    expect(relay).toMatchObject({ invokeCalls: 2, invokes: 0, actuations: 0 });
  });

  it('an unanswered invoke and a relay that still does not move on the extra attempt: E099', async () => {
    const relay = port.relay('m1', { state: 1, stuck: true, invokeFault: { code: 'COMM_TIMEOUT_ERR', times: 1 } });
    await service.execute(command('m1'));
    const [after] = await service.meterAvailable('m1');
    expect(after).toMatchObject({ code: 'E099', resumed: true, attempts: 2, state: 1, loadVoltage: 230 });
    expect(after?.detail).toMatch(/2 attempts/);
    expect(relay).toMatchObject({ invokeCalls: 2, invokes: 1, actuations: 0 });
  });

  it('an unmoved relay found after notAfter is not invoked again: EXPIRED', async () => {
    const relay = port.relay('m1', { state: 1, invokeFault: { code: 'COMM_TIMEOUT_ERR', times: 1 } });
    await service.execute(command('m1', 'disconnect', { notAfter: time.now() + 10_000 }));
    time.advance(10_000);
    await service.idle();
    expect((await service.status('cmd-m1-disconnect'))?.outcome).toMatchObject({ code: 'EXPIRED', final: true, actuated: true, state: 1 });
    expect(relay).toMatchObject({ invokeCalls: 1, actuations: 0 });
  });

  it('a reconnect whose unanswered invoke left the relay ready for reconnection is not invoked again', async () => {
    // The relay moved (0 -> 2): neither unmoved nor, with acceptReadyForReconnection off, the target.
    await stop();
    await start({ acceptReadyForReconnection: false });
    const relay = port.relay('m1', { state: 0, invokeFault: { code: 'COMM_TIMEOUT_ERR', times: 1 } });
    await service.execute(command('m1', 'reconnect'));
    relay.state = 2;
    const [after] = await service.meterAvailable('m1');
    expect(after).toMatchObject({ code: 'E099', state: 2 });
    expect(relay.invokeCalls).toBe(1);
  });

  it('a pending command expires at notAfter; an expired command is not run', async () => {
    const relay = port.relay('m1', { state: 1, readFault: 'COMM_TIMEOUT_ERR' });
    await service.execute(command('m1', 'disconnect', { notAfter: time.now() + 10_000 }));
    time.advance(10_000);
    await service.idle();
    expect((await service.status('cmd-m1-disconnect'))?.outcome).toMatchObject({ code: 'EXPIRED', final: true });
    expect(results.map((r) => r.code)).toEqual(['COMM_TIMEOUT_ERR', 'EXPIRED']);
    delete relay.readFault;
    expect(await service.meterAvailable('m1')).toEqual([]);
    const late = await service.execute(command('m2', 'disconnect', { notAfter: time.now() - 1 }));
    expect(late).toMatchObject({ code: 'EXPIRED', final: true, actuated: false });
    expect(port.relays.get('m2')?.invokes ?? 0).toBe(0);
  });

  it('notBefore in the future defers until then', async () => {
    port.relay('m1', { state: 1 });
    const result = await service.execute(command('m1', 'disconnect', { notBefore: time.now() + 5000 }));
    expect(result).toMatchObject({ code: 'DEFERRED', reason: 'not-before' });
    time.advance(5000);
    await service.idle();
    expect((await service.status('cmd-m1-disconnect'))?.outcome?.code).toBe('RELAY_OP_SUCCESS');
  });
});
