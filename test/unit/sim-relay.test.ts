import { describe, expect, it } from 'vitest';
import {
  ALARM_BIT,
  actionResultOf,
  CONTROL_STATE,
  faultsFor,
  FRAUD_EVENT_CODE,
  parseFaultSpec,
  SimRelayError,
  SimulatedRelay,
  type RelayOptions,
} from '../../src/sim/relay.js';

/** A relay on a hand-driven clock. */
function relayAt(options: RelayOptions = {}): { relay: SimulatedRelay; clock: { t: number } } {
  const clock = { t: 1_000_000 };
  const relay = new SimulatedRelay({ now: () => clock.t, rechargeMs: 10_000, ...options });
  return { relay, clock };
}

describe('simulated disconnect relay', () => {
  it('disconnects and reconnects, with load voltage following the contacts and one actuation each', () => {
    const { relay, clock } = relayAt();
    expect(relay.controlState).toBe(CONTROL_STATE.connected);
    expect(relay.outputState).toBe(true);
    expect(relay.loadVoltage).toBe(230);
    expect(relay.controlMode).toBe(4);

    expect(relay.remoteDisconnect()).toEqual({ ok: true, actuated: true, state: CONTROL_STATE.disconnected });
    expect(relay.outputState).toBe(false);
    expect(relay.loadVoltage).toBe(0);
    expect(relay.supplyVoltage).toBe(230);

    clock.t += 10_000;
    expect(relay.remoteReconnect()).toEqual({ ok: true, actuated: true, state: CONTROL_STATE.connected });
    expect(relay.loadVoltage).toBe(230);
    expect(relay.stats).toMatchObject({ actuations: 2, disconnects: 1, reconnects: 1, confirmations: 0 });
  });

  it('is idempotent: a second disconnect moves nothing, even with the capacitor low', () => {
    const { relay } = relayAt();
    relay.remoteDisconnect();
    // The capacitor is empty now, but nothing needs to move.
    const again = relay.remoteDisconnect();
    expect(again).toEqual({ ok: true, actuated: false, state: CONTROL_STATE.disconnected });
    expect(actionResultOf(again)).toBe(0);
    expect(relay.stats.actuations).toBe(1);
    expect(relay.stats.confirmations).toBe(1);
    // And a reconnect of a connected relay neither.
    const connected = relayAt().relay;
    expect(connected.remoteReconnect()).toMatchObject({ ok: true, actuated: false });
    expect(connected.stats.actuations).toBe(0);
  });

  it('needs the capacitor recharged between operations (E001: temporary-failure), then operates', () => {
    const { relay, clock } = relayAt();
    relay.remoteDisconnect();
    clock.t += 9_999;
    const early = relay.remoteReconnect();
    expect(early).toMatchObject({ ok: false, reason: 'low-capacitor', state: CONTROL_STATE.disconnected });
    expect(actionResultOf(early)).toBe(2);
    expect(relay.capacitorReadyInMs()).toBe(1);
    expect(relay.stats.actuations).toBe(1);
    expect(relay.loadVoltage).toBe(0);
    clock.t += 1;
    expect(relay.capacitorCharged).toBe(true);
    expect(relay.remoteReconnect()).toMatchObject({ ok: true, actuated: true });
    expect(relay.stats).toMatchObject({ actuations: 2, refusedLowCapacitor: 1 });
  });

  it('latches across a power loss, refuses to actuate without supply, and recharges after power returns', () => {
    const { relay, clock } = relayAt();
    relay.remoteDisconnect();
    clock.t += 60_000;
    relay.powerOff();
    expect(relay.controlState).toBe(CONTROL_STATE.disconnected);
    expect(relay.loadVoltage).toBe(0);
    expect(relay.supplyVoltage).toBe(0);
    const refused = relay.remoteReconnect();
    expect(refused).toMatchObject({ ok: false, reason: 'no-supply' });
    expect(actionResultOf(refused)).toBe(11);
    // A confirmation needs no supply.
    expect(relay.remoteDisconnect()).toMatchObject({ ok: true, actuated: false });

    relay.powerOn();
    expect(relay.controlState).toBe(CONTROL_STATE.disconnected);
    // The capacitor charges from the moment the supply is back.
    expect(relay.remoteReconnect()).toMatchObject({ ok: false, reason: 'low-capacitor' });
    clock.t += 10_000;
    expect(relay.remoteReconnect()).toMatchObject({ ok: true, actuated: true });
    expect(relay.loadVoltage).toBe(230);

    // Connected, then the power goes: still connected when it returns, load live again.
    relay.powerOff();
    expect(relay.loadVoltage).toBe(0);
    relay.powerOn();
    expect(relay.controlState).toBe(CONTROL_STATE.connected);
    expect(relay.loadVoltage).toBe(230);
    expect(relay.stats).toMatchObject({ actuations: 2, refusedNoSupply: 1, refusedLowCapacitor: 1 });
  });

  it('weld: reports disconnected while the load side keeps its voltage', () => {
    const { relay } = relayAt({ faults: ['weld'] });
    expect(relay.remoteDisconnect()).toEqual({ ok: true, actuated: true, state: CONTROL_STATE.disconnected });
    expect(relay.controlState).toBe(CONTROL_STATE.disconnected);
    expect(relay.outputState).toBe(false);
    expect(relay.contactsAreClosed).toBe(true);
    expect(relay.loadVoltage).toBe(230);
    expect(relay.stats.actuations).toBe(1);
  });

  it('obstruction: the actuator fires but does not move (E044: hardware-fault)', () => {
    const { relay } = relayAt({ faults: ['obstruction'] });
    const outcome = relay.remoteDisconnect();
    expect(outcome).toMatchObject({ ok: false, reason: 'obstruction', state: CONTROL_STATE.connected });
    expect(actionResultOf(outcome)).toBe(1);
    expect(relay.controlState).toBe(CONTROL_STATE.connected);
    expect(relay.loadVoltage).toBe(230);
    expect(relay.stats).toMatchObject({ actuations: 1, obstructed: 1, disconnects: 0 });
  });

  it('lowcap: the capacitor never charges (E001) until the fault is cleared', () => {
    const { relay, clock } = relayAt({ faults: ['lowcap'] });
    clock.t += 3_600_000;
    expect(relay.capacitorReadyInMs()).toBe(Number.POSITIVE_INFINITY);
    const outcome = relay.remoteDisconnect();
    expect(outcome).toMatchObject({ ok: false, reason: 'low-capacitor' });
    expect(actionResultOf(outcome)).toBe(2);
    expect(relay.stats.actuations).toBe(0);
    relay.removeFault('lowcap');
    clock.t += 10_000;
    expect(relay.remoteDisconnect()).toMatchObject({ ok: true, actuated: true });
  });

  it('tamper: raises the fraud alarm bit and event, cleared by writing the bit', () => {
    const { relay } = relayAt({ faults: ['tamper'] });
    expect(relay.tampered).toBe(true);
    expect(relay.alarmRegister & ALARM_BIT.fraudAttempt).toBe(ALARM_BIT.fraudAttempt);
    expect(relay.fraudEventCode).toBe(FRAUD_EVENT_CODE.strongDcField);
    expect(relay.stats.tamperEvents).toBe(1);
    // The relay still works: the lock is the gateway's.
    expect(relay.remoteDisconnect()).toMatchObject({ ok: true, actuated: true });
    relay.clearAlarms(ALARM_BIT.fraudAttempt);
    expect(relay.tampered).toBe(false);
    expect(relay.alarmRegister).toBe(0);
    expect(relay.fraudEventCode).toBe(0);
    const clean = relayAt().relay;
    expect(clean.tampered).toBe(false);
    clean.raiseTamper();
    expect(clean.tampered).toBe(true);
  });

  it('control_mode: modes 1/3/5/6 go to ready_for_reconnection, the button connects; mode 0 refuses', () => {
    const { relay, clock } = relayAt({ controlMode: 1 });
    relay.remoteDisconnect();
    clock.t += 10_000;
    expect(relay.remoteReconnect()).toEqual({ ok: true, actuated: false, state: CONTROL_STATE.readyForReconnection });
    expect(relay.outputState).toBe(false);
    expect(relay.loadVoltage).toBe(0);
    // Again: already as far as remote can take it.
    expect(relay.remoteReconnect()).toMatchObject({ ok: true, actuated: false, state: CONTROL_STATE.readyForReconnection });
    expect(relay.manualReconnect()).toEqual({ ok: true, actuated: true, state: CONTROL_STATE.connected });
    expect(relay.loadVoltage).toBe(230);
    expect(relay.stats.actuations).toBe(2);

    // ready_for_reconnection -> remote_disconnect is logical only.
    clock.t += 10_000;
    relay.remoteDisconnect();
    clock.t += 10_000;
    relay.remoteReconnect();
    expect(relay.remoteDisconnect()).toEqual({ ok: true, actuated: false, state: CONTROL_STATE.disconnected });
    expect(relay.stats.actuations).toBe(3);

    const none = relayAt({ controlMode: 0 }).relay;
    const refused = none.remoteDisconnect();
    expect(refused).toMatchObject({ ok: false, reason: 'not-allowed' });
    expect(actionResultOf(refused)).toBe(3);
    expect(none.loadVoltage).toBe(230);
    expect(() => (none.controlMode = 7)).toThrowError(expect.objectContaining({ code: 'BAD_CONTROL_MODE' }) as Error);
  });

  it('parses --faults and assigns faults by name or 1-based number', () => {
    const spec = parseFaultSpec('weld:mtr-000003, obstruction:7,lowcap:mtr-000003,offline:2,tamper:9');
    expect(spec).toHaveLength(5);
    expect(faultsFor(spec, 'mtr-000003', 3).sort()).toEqual(['lowcap', 'weld']);
    expect(faultsFor(spec, 'mtr-000007', 7)).toEqual(['obstruction']);
    expect(faultsFor(spec, 'mtr-000001', 1)).toEqual([]);
    expect(parseFaultSpec('')).toEqual([]);
    for (const bad of ['melt:1', 'weld', 'weld:']) {
      expect(() => parseFaultSpec(bad)).toThrowError(SimRelayError);
      try {
        parseFaultSpec(bad);
      } catch (err) {
        expect((err as SimRelayError).code).toBe('BAD_FAULT_SPEC');
      }
    }
  });
});
