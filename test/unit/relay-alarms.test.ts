/**
 * Tamper locks, weld alarms and the reports of every outcome and alarm for
 * the HES (journal + RelayReporter), on a real LevelDB journal and the
 * scripted meter port.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  RelayAudit,
  RelayError,
  RelayJournal,
  RelayReporter,
  RelayService,
  TAMPER_ALARM_BIT,
  resultReportKey,
  type RelayAlarm,
  type RelayCommand,
  type RelayReport,
} from '../../src/relay/index.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';
import { ManualRelayTime, ScriptedRelayPort } from '../helpers/relay-port.js';

const ADMIN = { source: 'local' as const, operator: 'alice', role: 'utility-administrator', mfa: true };

let dir: string;
let lease: DatabaseLease;
let journal: RelayJournal;
let time: ManualRelayTime;
let port: ScriptedRelayPort;
let service: RelayService;
let alarmsRaised: RelayAlarm[];

async function start(): Promise<void> {
  lease = await acquireDatabase(path.join(dir, 'db'));
  journal = await RelayJournal.open(lease.db);
  service = await RelayService.open({ journal, port, audit: new RelayAudit(path.join(dir, 'logs'), time.now), now: time.now, scheduler: time.scheduler });
  service.on('alarm', (a) => alarmsRaised.push(a));
}

async function stop(): Promise<void> {
  await service.close();
  await lease.release();
}

let seq = 0;
function command(meter: string, action: 'disconnect' | 'reconnect'): RelayCommand {
  seq += 1;
  return { id: `c${seq}-${meter}-${action}`, meter, action, authorization: ADMIN, notAfter: time.now() + 3_600_000 };
}

async function queuedReports(): Promise<RelayReport[]> {
  return (await journal.reports(1000)).map((q) => q.report);
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'relay-alarms-'));
  time = new ManualRelayTime();
  port = new ScriptedRelayPort();
  alarmsRaised = [];
  await start();
});

afterEach(async () => {
  await stop().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

describe('tamper', () => {
  it('a reconnect that finds the tamper bit raises TAMPER and is refused without an invoke; the lock holds after the meter forgets', async () => {
    const relay = port.relay('m1', { state: 0, alarms: TAMPER_ALARM_BIT | 0x1 });
    const first = await service.execute(command('m1', 'reconnect'));
    expect(first).toMatchObject({ code: 'TAMPER_LOCKED', final: true, actuated: false });
    expect(first.detail).toMatch(/alarms reset --meter m1 --code TAMPER/);
    expect(relay).toMatchObject({ invokeCalls: 0, actuations: 0, state: 0 });
    expect(alarmsRaised).toEqual([expect.objectContaining({ meter: 'm1', code: 'TAMPER', source: 'meter-alarm-register', commandId: first.commandId })]);
    expect(await service.alarms('m1')).toHaveLength(1);

    // The meter's flag goes away (someone reset it on site): the gateway's lock stays, and no request goes out.
    relay.alarms = 0;
    const callsBefore = port.calls;
    const second = await service.execute(command('m1', 'reconnect'));
    expect(second.code).toBe('TAMPER_LOCKED');
    expect(port.calls).toBe(callsBefore);
    expect(relay.invokeCalls).toBe(0);

    // Reported once as an alarm, every outcome as a result.
    const reports = await queuedReports();
    expect(reports.filter((r) => r.kind === 'alarm')).toHaveLength(1);
    expect(reports.filter((r) => r.kind === 'result').map((r) => r.key)).toEqual([resultReportKey(first.commandId), resultReportKey(second.commandId)]);
    await stop();
    const actuator = await readFile(path.join(dir, 'logs', 'actuator.log'), 'utf8');
    expect(actuator).toMatch(/meter=m1 step=alarm token=TAMPER_ALARM/);
    expect(actuator).toMatch(/token=TAMPER_LOCKED/);
  });

  it('a tampered meter can still be disconnected', async () => {
    const relay = port.relay('m1', { state: 1, alarms: TAMPER_ALARM_BIT });
    await service.reportTamper('m1', 'strong DC field event 42');
    const result = await service.execute(command('m1', 'disconnect'));
    expect(result.code).toBe('RELAY_OP_SUCCESS');
    expect(relay.state).toBe(0);
  });

  it('an operator clears it: unauthorized or unknown is refused, a meter that cannot be cleared keeps the lock, then reconnect works', async () => {
    const relay = port.relay('m1', { state: 0, alarms: TAMPER_ALARM_BIT });
    expect((await service.execute(command('m1', 'reconnect'))).code).toBe('TAMPER_LOCKED');

    await expect(service.clearAlarm('m1', 'TAMPER', { ...ADMIN, mfa: false })).rejects.toMatchObject({ code: 'UNAUTHORIZED' });
    await expect(service.clearAlarm('m1', 'TAMPER', { ...ADMIN, role: 'viewer' })).rejects.toMatchObject({ code: 'UNAUTHORIZED' });
    await expect(service.clearAlarm('m1', 'RELAY_WELD_DETECTED', ADMIN)).rejects.toMatchObject({ code: 'NO_SUCH_ALARM' });
    await expect(service.clearAlarm('m2', 'TAMPER', ADMIN)).rejects.toBeInstanceOf(RelayError);

    relay.clearFault = 'COMM_TIMEOUT_ERR';
    await expect(service.clearAlarm('m1', 'TAMPER', ADMIN)).rejects.toMatchObject({ code: 'METER_FAILED' });
    expect(await service.alarms('m1')).toHaveLength(1);
    expect(relay.alarms & TAMPER_ALARM_BIT).not.toBe(0);

    delete relay.clearFault;
    const cleared = await service.clearAlarm('m1', 'TAMPER', ADMIN);
    expect(cleared).toMatchObject({ meterCleared: true, cleared: { meter: 'm1', code: 'TAMPER' } });
    expect(relay.alarms).toBe(0);
    expect(await service.alarms()).toEqual([]);
    const event = (await queuedReports()).find((r) => r.kind === 'event');
    expect(event?.body).toMatchObject({ type: 'relay-alarm-cleared', operator: 'alice', meterCleared: true });

    const reconnect = await service.execute(command('m1', 'reconnect'));
    expect(reconnect.code).toBe('RELAY_OP_SUCCESS');
    expect(relay).toMatchObject({ state: 1, actuations: 1 });
  });

  it('a tamper reported while an operator clears the previous one is kept (alarm changes of a meter run one after the other)', async () => {
    const relay = port.relay('m1', { state: 0, alarms: TAMPER_ALARM_BIT });
    const first = await service.reportTamper('m1', 'first magnet');
    // The meter's register write of the reset is held until the second tamper has been reported.
    const clearMeter = port.clearAlarms.bind(port);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let writing!: () => void;
    const writeStarted = new Promise<void>((resolve) => (writing = resolve));
    port.clearAlarms = async (meter, mask, signal) => {
      writing();
      await held;
      return clearMeter(meter, mask, signal);
    };
    const reset = service.clearAlarm('m1', 'TAMPER', ADMIN);
    await writeStarted;
    const second = service.reportTamper('m1', 'second magnet, during the reset');
    release();
    expect((await reset).cleared).toEqual(first);
    const standing = await second;
    expect(standing).toMatchObject({ meter: 'm1', code: 'TAMPER', detail: 'second magnet, during the reset' });
    expect(await service.alarms('m1')).toEqual([standing]);
    expect(alarmsRaised.map((a) => a.detail)).toEqual(['first magnet', 'second magnet, during the reset']);
    expect(relay.alarms).toBe(0);
    // And the lock holds.
    expect((await service.execute(command('m1', 'reconnect'))).code).toBe('TAMPER_LOCKED');
  });

  it('an event raises the lock once; the lock and the alarm survive a restart', async () => {
    port.relay('m1', { state: 0 });
    const first = await service.reportTamper('m1', 'fraud event 42');
    const again = await service.reportTamper('m1', 'fraud event 42 again');
    expect(again).toEqual(first);
    expect(alarmsRaised).toHaveLength(1);
    await expect(service.reportTamper('bad meter', 'x')).rejects.toMatchObject({ code: 'BAD_COMMAND' });
    await stop();
    await start();
    expect(await service.alarms('m1')).toEqual([first]);
    expect((await service.execute(command('m1', 'reconnect'))).code).toBe('TAMPER_LOCKED');
    expect(port.relay('m1').invokeCalls).toBe(0);
  });
});

describe('weld alarm', () => {
  it('a weld raises RELAY_WELD_DETECTED once; an operator clears it without a meter write', async () => {
    const relay = port.relay('m1', { state: 1, weld: true });
    expect((await service.execute(command('m1', 'disconnect'))).code).toBe('RELAY_WELD_DETECTED');
    // Already disconnected, still welded: the outcome repeats, the alarm is not raised twice.
    expect((await service.execute(command('m1', 'disconnect'))).code).toBe('RELAY_WELD_DETECTED');
    expect(alarmsRaised.map((a) => a.code)).toEqual(['RELAY_WELD_DETECTED']);
    expect(relay.actuations).toBe(1);
    const callsBefore = port.calls;
    expect(await service.clearAlarm('m1', 'RELAY_WELD_DETECTED', ADMIN)).toMatchObject({ meterCleared: false });
    expect(port.calls).toBe(callsBefore);
  });
});

describe('reports to the HES', () => {
  it('every final outcome is journaled with its report; the reporter hands them over and removes them, retrying after a failure', async () => {
    port.relay('m1', { state: 1 });
    port.relay('m2', { state: 0 });
    const a = await service.execute(command('m1', 'disconnect'));
    const b = await service.execute(command('m2', 'disconnect'));
    expect((await queuedReports()).map((r) => r.key)).toEqual([resultReportKey(a.commandId), resultReportKey(b.commandId)]);

    const delivered: RelayReport[] = [];
    let refuse = 1;
    const problems: Array<string | undefined> = [];
    let failed!: () => void;
    const firstFailure = new Promise<void>((resolve) => (failed = resolve));
    const reporter = new RelayReporter({
      journal,
      deliver: async (report) => {
        if (refuse > 0) {
          refuse -= 1;
          failed();
          throw new Error('QUEUE_FULL: outbox budget used up');
        }
        delivered.push(report);
      },
      minRetryMs: 60_000,
      onProblem: (p) => problems.push(p),
    });
    service.on('report', () => reporter.kick());
    reporter.start();
    await firstFailure;
    // A new outcome kicks the reporter out of its retry wait.
    port.relay('m3', { state: 1 });
    const c = await service.execute(command('m3', 'disconnect'));
    await reporter.drained();
    await reporter.stop();
    expect(delivered.map((r) => r.key)).toEqual([a, b, c].map((r) => resultReportKey(r.commandId)));
    expect(delivered[0]).toMatchObject({ kind: 'result', meter: 'm1', body: { type: 'relay-outcome', code: 'RELAY_OP_SUCCESS', operator: 'alice' } });
    expect(await queuedReports()).toEqual([]);
    expect(reporter.counters).toMatchObject({ delivered: 3, failures: 1 });
    expect(problems).toEqual(['QUEUE_FULL: outbox budget used up', undefined]);
  });

  it('reports not yet delivered survive a restart', async () => {
    port.relay('m1', { state: 1 });
    const a = await service.execute(command('m1', 'disconnect'));
    await stop();
    await start();
    const delivered: string[] = [];
    const reporter = new RelayReporter({ journal, deliver: async (r) => void delivered.push(r.key) });
    reporter.start();
    await reporter.drained();
    await reporter.stop();
    expect(delivered).toEqual([resultReportKey(a.commandId)]);
  });
});
