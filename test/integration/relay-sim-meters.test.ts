/**
 * The relay lifecycle against simulated meters with real components on
 * loopback: MeterFleet (ciphered DLMS over CoAP, relay faults, packet loss),
 * the gateway's keyring, the congestion-controlled mesh client on a UDP
 * socket, DlmsRelayPort, and RelayService with its journal in LevelDB.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { RelayJournal } from '../../src/relay/journal.js';
import { RelayService } from '../../src/relay/service.js';
import type { RelayCommand } from '../../src/relay/types.js';
import type { MeterFleet } from '../../src/sim/meters.js';
import { startRelayMeterRig, type RelayMeterRig, type RelayMeterRigOptions } from '../helpers/relay-rig.js';

const SEED = 'relay-sim-meters-test';
const MASTER = Buffer.alloc(32, 0x3c);
const GATEWAY_TITLE = '4757303030303042';
const ADMIN = { source: 'hes' as const, operator: 'alice', role: 'utility-administrator', mfa: true };
const GOOD_LINK = { rssi: -60, snr: 20 };

let rig: RelayMeterRig | undefined;
let service: RelayService | undefined;

afterEach(async () => {
  await service?.close().catch(() => undefined);
  service = undefined;
  await rig?.close();
  rig = undefined;
});

async function start(
  options: Pick<RelayMeterRigOptions, 'count' | 'faults' | 'lossRate' | 'transmission' | 'wrongKeysFor'>,
): Promise<RelayMeterRig & { service: RelayService }> {
  rig = await startRelayMeterRig({
    ...options,
    seed: SEED,
    masterKey: MASTER,
    gatewaySystemTitle: GATEWAY_TITLE,
    // A second operation of one relay would find the capacitor still charging (E001).
    relay: { rechargeMs: 60_000 },
    maxConcurrent: 16,
    tmpPrefix: 'relay-sim-',
  });
  const journal = await RelayJournal.open(rig.lease.db);
  service = await RelayService.open({
    journal,
    port: rig.port,
    linkMetrics: () => GOOD_LINK,
    // E001 is retried after the charge cycle: far beyond the test.
    chargeCycleMs: 3_600_000,
  });
  return { ...rig, service };
}

function command(meter: string, id: string, action: 'disconnect' | 'reconnect' = 'disconnect'): RelayCommand {
  return { id, meter, action, authorization: ADMIN, notAfter: Date.now() + 3_600_000 };
}

function actuations(fleet: MeterFleet): Map<string, number> {
  return new Map(fleet.relayStats().map((info) => [info.name, info.stats.actuations]));
}

describe('relay lifecycle over DLMS/CoAP against simulated meters', () => {
  it('produces every outcome from the simulated faults, never actuates twice, and reports E012 for wrong keys', async () => {
    // mtr-000001 normal, 2 weld, 3 obstruction, 4 lowcap, 5 offline, 6 normal but the gateway's keys are wrong,
    // 7 without mains power, 8 in control_mode 0 (remote operation forbidden).
    const { fleet, service, names } = await start({
      count: 8,
      faults: [
        { fault: 'weld', meter: '2' },
        { fault: 'obstruction', meter: '3' },
        { fault: 'lowcap', meter: '4' },
        { fault: 'offline', meter: '5' },
      ],
      transmission: { ackTimeoutMs: 100, ackRandomFactor: 1, maxRetransmit: 1 },
      wrongKeysFor: ['mtr-000006'],
    });
    const [normal, weld, obstruction, lowcap, offline, wrongKey, unpowered, forbidden] = names as [string, string, string, string, string, string, string, string];
    fleet.relay(unpowered)?.powerOff();
    const forbiddenRelay = fleet.relay(forbidden);
    if (forbiddenRelay) forbiddenRelay.controlMode = 0;

    const first = new Map(names.map((meter) => [meter, command(meter, `d1:${meter}`)]));
    const results = await Promise.all([...first.values()].map((cmd) => service.execute(cmd)));
    const byMeter = new Map(results.map((r) => [r.meter, r]));

    expect(byMeter.get(normal)).toMatchObject({ code: 'RELAY_OP_SUCCESS', final: true, actuated: true, state: 0, loadVoltage: 0 });
    expect(byMeter.get(weld)).toMatchObject({ code: 'RELAY_WELD_DETECTED', final: true, actuated: true, state: 0, loadVoltage: 230 });
    expect(byMeter.get(obstruction)).toMatchObject({ code: 'E044', final: true, actuated: true });
    expect(byMeter.get(lowcap)).toMatchObject({ code: 'DEFERRED', reason: 'E001', final: false, actuated: false });
    expect(byMeter.get(offline)).toMatchObject({ code: 'COMM_TIMEOUT_ERR', final: false, actuated: false });
    expect(byMeter.get(wrongKey)).toMatchObject({ code: 'E012', final: true, actuated: false });
    expect(byMeter.get(unpowered)).toMatchObject({ code: 'DEFERRED', reason: 'no-power', final: false });
    expect(byMeter.get(forbidden)).toMatchObject({ code: 'REFUSED', final: true });
    expect((await service.status(`d1:${offline}`))?.phase).toBe('pending');
    expect(service.waitingFor(offline)).toEqual([`d1:${offline}`]);

    const after = actuations(fleet);
    expect(after.get(normal)).toBe(1);
    expect(after.get(weld)).toBe(1);
    expect(after.get(obstruction)).toBe(1);
    // lowcap refuses before firing; offline never heard us; the wrong keys never got past the meter's MIC check.
    expect(after.get(lowcap)).toBe(0);
    expect(after.get(offline)).toBe(0);
    expect(after.get(wrongKey)).toBe(0);
    expect(after.get(unpowered)).toBe(0);
    expect(after.get(forbidden)).toBe(0);
    expect(fleet.relay(wrongKey)?.controlState).toBe(1);

    // The same command again: its recorded outcome, nothing sent to the relay.
    const repeat = await service.execute({ ...(first.get(normal) as RelayCommand) });
    expect(repeat).toMatchObject({ code: 'RELAY_OP_SUCCESS', actuated: true });
    // A new disconnect of the already disconnected meter: confirmed without actuation.
    const confirm = await service.execute(command(normal, `d2:${normal}`));
    expect(confirm).toMatchObject({ code: 'RELAY_OP_SUCCESS', idempotent: true, actuated: false, state: 0 });
    expect(actuations(fleet)).toEqual(after);
    expect(fleet.relay(normal)?.stats.confirmations ?? 0).toBe(0);
  }, 30_000);

  it('disconnects 20 meters with 5% packet loss: every meter disconnected, at most one actuation each', async () => {
    const { fleet, service, names } = await start({
      count: 20,
      lossRate: 0.05,
      transmission: { ackTimeoutMs: 150, ackRandomFactor: 1.5, maxRetransmit: 6 },
    });
    const progress: number[] = [];
    service.on('progress', (p) => progress.push(p.done));
    const summary = await service.runMany(
      { action: 'disconnect', authorization: ADMIN, notAfter: Date.now() + 3_600_000 },
      names,
      { concurrency: 8, runId: 'roll-1' },
    );
    expect(summary.finished).toBe(true);
    expect(summary.byCode).toEqual({ RELAY_OP_SUCCESS: 20 });
    expect(summary.results.map((r) => r.meter)).toEqual(names);
    expect(progress).toHaveLength(20);

    const stats = fleet.relayStats();
    expect(stats).toHaveLength(20);
    for (const info of stats) {
      expect(info.controlState, info.name).toBe(0);
      expect(info.loadVoltage, info.name).toBe(0);
      expect(info.stats.actuations, info.name).toBeLessThanOrEqual(1);
    }
    expect(stats.reduce((sum, info) => sum + info.stats.actuations, 0)).toBe(20);
  }, 60_000);
});
