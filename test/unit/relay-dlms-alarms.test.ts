/**
 * DlmsRelayPort's alarm register 1 (class 1, 0.0.97.98.0.255, attribute 2):
 * the pure request builders and answer interpreters, then readAlarms and
 * clearAlarms against simulated meters (MeterFleet, ciphered DLMS over CoAP)
 * through the gateway's keyring and a real MeshClient on loopback.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  ALARM_REGISTER,
  alarmRegisterRequest,
  clearAlarmsRequest,
  interpretAlarmRegister,
  interpretSetResult,
  invokeIdAndPriority,
} from '../../src/relay/dlms-port.js';
import { RelayPortError, TAMPER_ALARM_BIT } from '../../src/relay/types.js';
import { ALARM_BIT, ALARM_REGISTER_OBIS, DATA_CLASS_ID, type FaultAssignment } from '../../src/sim/relay.js';
import { getResponse, portError, setResponse, wire } from '../helpers/dlms-wire.js';
import { startRelayMeterRig, type RelayMeterRig } from '../helpers/relay-rig.js';

describe('relay DLMS port: alarm register requests', () => {
  it('names the object the simulated meter serves', () => {
    expect(ALARM_REGISTER).toEqual({ classId: DATA_CLASS_ID, obis: ALARM_REGISTER_OBIS, valueAttribute: 2 });
    expect(TAMPER_ALARM_BIT).toBe(ALARM_BIT.fraudAttempt);
  });

  it('reads alarm register 1: get-request class 1 0.0.97.98.0.255 attribute 2, high priority confirmed', () => {
    expect(wire(alarmRegisterRequest(6))).toEqual({
      type: 'get-request',
      invokeIdAndPriority: 0xc6,
      descriptor: { classId: 1, instanceId: '0.0.97.98.0.255', attributeId: 2 },
    });
  });

  it('clears alarms with a set-request writing the mask as double-long-unsigned', () => {
    expect(wire(clearAlarmsRequest(TAMPER_ALARM_BIT, 7))).toEqual({
      type: 'set-request',
      invokeIdAndPriority: 0xc7,
      descriptor: { classId: 1, instanceId: '0.0.97.98.0.255', attributeId: 2 },
      value: { type: 'double-long-unsigned', value: 0x1_0000 },
    });
    expect(wire(clearAlarmsRequest(0xffff_ffff, 1))).toMatchObject({ value: { type: 'double-long-unsigned', value: 0xffff_ffff } });
    expect(wire(clearAlarmsRequest(0, 1))).toMatchObject({ value: { type: 'double-long-unsigned', value: 0 } });
  });

  it('refuses a mask that is no double-long-unsigned', () => {
    for (const mask of [-1, 0x1_0000_0000, 1.5, Number.NaN]) {
      expect(portError(() => clearAlarmsRequest(mask, 1)).code, String(mask)).toBe('REFUSED');
    }
  });
});

describe('relay DLMS port: alarm register answers', () => {
  it('reads the bit field of a get-response', () => {
    expect(interpretAlarmRegister(getResponse(3, { data: { type: 'double-long-unsigned', value: TAMPER_ALARM_BIT | 0b101 } }), 3)).toBe(0x1_0005);
    expect(interpretAlarmRegister(getResponse(3, { data: { type: 'double-long-unsigned', value: 0 } }), 3)).toBe(0);
    expect(interpretAlarmRegister(getResponse(3, { data: { type: 'double-long-unsigned', value: 0xffff_ffff } }), 3)).toBe(0xffff_ffff);
  });

  it('refuses a data-access-result, another type, another invoke id or another APDU in place of the register', () => {
    const undefinedObject = portError(() => interpretAlarmRegister(getResponse(3, { dataAccessResult: 4 }), 3));
    expect(undefinedObject.code).toBe('REFUSED');
    expect(undefinedObject.message).toMatch(/object-undefined/);
    expect(portError(() => interpretAlarmRegister(getResponse(3, { data: { type: 'visible-string', value: 'x' } }), 3)).message).toMatch(/visible-string/);
    expect(portError(() => interpretAlarmRegister(getResponse(3, { data: { type: 'double-long', value: -1 } }), 3)).code).toBe('REFUSED');
    const other = portError(() => interpretAlarmRegister(getResponse(4, { data: { type: 'double-long-unsigned', value: 0 } }), 3));
    expect(other.code).toBe('REFUSED');
    expect(other.message).toMatch(/invoke id 4, expected 3/);
    expect(portError(() => interpretAlarmRegister(setResponse(3, 0), 3)).message).toMatch(/expected get-response, got set-response/);
  });

  it('accepts set result 0 (success) and refuses any other data-access-result, naming it', () => {
    expect(interpretSetResult(setResponse(9, 0), 9)).toBeUndefined();
    const cases: Array<[number, RegExp]> = [
      [3, /data-access-result 3 \(read-write-denied\)/],
      [12, /data-access-result 12 \(type-unmatched\)/],
      [9, /object-class-inconsistent/],
      [250, /other-reason/],
      [99, /data-access-result 99 \(unknown\)/],
    ];
    for (const [result, message] of cases) {
      const err = portError(() => interpretSetResult(setResponse(9, result), 9));
      expect(err.code, `result ${result}`).toBe('REFUSED');
      expect(err.message).toMatch(message);
    }
  });

  it('refuses a set-response for another invoke id and answers that are not set-responses', () => {
    const other = portError(() => interpretSetResult(setResponse(2, 0), 9));
    expect(other.code).toBe('REFUSED');
    expect(other.message).toMatch(/invoke id 2, expected 9/);
    expect(portError(() => interpretSetResult(getResponse(9, { data: { type: 'double-long-unsigned', value: 0 } }), 9)).message).toMatch(
      /expected set-response, got get-response/,
    );
    expect(portError(() => interpretSetResult(wire({ type: 'action-response', invokeIdAndPriority: 0xc9, result: 0 }), 9)).code).toBe('REFUSED');
    // Exception-responses: deciphering errors are the association's security failing, others a refusal.
    expect(portError(() => interpretSetResult(wire({ type: 'exception-response', stateError: 1, serviceError: 5 }), 9)).code).toBe('AUTH_FAILURE');
    expect(portError(() => interpretSetResult(wire({ type: 'exception-response', stateError: 2, serviceError: 3 }), 9)).code).toBe('REFUSED');
    expect(portError(() => interpretSetResult(wire({ type: 'confirmed-service-error', service: 3, errorGroup: 1, error: 0 }), 9)).message).toMatch(
      /confirmed-service-error/,
    );
  });
});

// ---------------------------------------------------------------------------
// Against simulated meters

const SEED = 'relay-dlms-alarms-test';
const MASTER = Buffer.alloc(32, 0x5a);
const GATEWAY_TITLE = '4757303030303043';

let rig: RelayMeterRig | undefined;

afterEach(async () => {
  await rig?.close();
  rig = undefined;
});

async function start(count: number, faults: FaultAssignment[]): Promise<RelayMeterRig> {
  rig = await startRelayMeterRig({
    seed: SEED,
    masterKey: MASTER,
    gatewaySystemTitle: GATEWAY_TITLE,
    count,
    faults,
    // Short retransmission so the offline meter's COMM_TIMEOUT_ERR comes quickly.
    transmission: { ackTimeoutMs: 100, ackRandomFactor: 1, maxRetransmit: 1 },
    tmpPrefix: 'relay-alarms-',
  });
  return rig;
}

const signal = (): AbortSignal => new AbortController().signal;

describe('relay DLMS port: alarm register of simulated meters', () => {
  it('reads the tamper bit, clears it with a set of the mask, and reads it cleared; an untampered meter reads it clear', async () => {
    const { fleet, port, names } = await start(2, [{ fault: 'tamper', meter: '1' }]);
    const [tampered, healthy] = names as [string, string];
    expect(fleet.relay(tampered)?.tampered).toBe(true);

    const before = await port.readAlarms(tampered, signal());
    expect(before & TAMPER_ALARM_BIT).toBe(TAMPER_ALARM_BIT);
    expect(before).toBe(fleet.relay(tampered)?.alarmRegister);
    expect((await port.readAlarms(healthy, signal())) & TAMPER_ALARM_BIT).toBe(0);

    // Writing 0, or another bit, clears nothing of the tamper.
    await port.clearAlarms(tampered, 0, signal());
    await port.clearAlarms(tampered, 1 << 3, signal());
    expect((await port.readAlarms(tampered, signal())) & TAMPER_ALARM_BIT).toBe(TAMPER_ALARM_BIT);

    await port.clearAlarms(tampered, TAMPER_ALARM_BIT, signal());
    expect(fleet.relay(tampered)?.tampered).toBe(false);
    expect((await port.readAlarms(tampered, signal())) & TAMPER_ALARM_BIT).toBe(0);
    // The fraud event object follows the register.
    expect(fleet.relay(tampered)?.fraudEventCode).toBe(0);

    // A tamper at run time shows at the next read.
    fleet.relay(tampered)?.raiseTamper();
    expect((await port.readAlarms(tampered, signal())) & TAMPER_ALARM_BIT).toBe(TAMPER_ALARM_BIT);

    // Clearing the untampered meter is harmless and leaves it clear.
    await port.clearAlarms(healthy, TAMPER_ALARM_BIT, signal());
    expect(await port.readAlarms(healthy, signal())).toBe(0);
  });

  it('maps an unreachable meter to COMM_TIMEOUT_ERR and a bad mask to REFUSED without asking the meter', async () => {
    const { fleet, client, port, names } = await start(2, [
      { fault: 'tamper', meter: '1' },
      { fault: 'offline', meter: '2' },
    ]);
    const [tampered, offline] = names as [string, string];

    const unknown = await port.readAlarms('mtr-not-registered', signal()).catch((err: unknown) => err);
    expect(unknown).toBeInstanceOf(RelayPortError);
    expect((unknown as RelayPortError).code).toBe('COMM_TIMEOUT_ERR');

    const silent = await port.clearAlarms(offline, TAMPER_ALARM_BIT, signal()).catch((err: unknown) => err);
    expect(silent).toBeInstanceOf(RelayPortError);
    expect((silent as RelayPortError).code).toBe('COMM_TIMEOUT_ERR');

    const sent = client.counters().requests;
    const badMask = await port.clearAlarms(tampered, -1, signal()).catch((err: unknown) => err);
    expect(badMask).toBeInstanceOf(RelayPortError);
    expect((badMask as RelayPortError).code).toBe('REFUSED');
    expect(client.counters().requests).toBe(sent);
    expect(fleet.relay(tampered)?.tampered).toBe(true);

    const aborted = new AbortController();
    aborted.abort();
    await expect(port.readAlarms(tampered, aborted.signal)).rejects.toThrow();
  });
});
