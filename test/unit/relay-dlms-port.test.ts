import { describe, expect, it } from 'vitest';
import { MeshRequestError } from '../../src/coap/client/errors.js';
import { encodeApdu } from '../../src/dlms/apdu.js';
import { DlmsError } from '../../src/dlms/errors.js';
import {
  actionOutcome,
  actionResult,
  controlStateRequest,
  DISCONNECT_CONTROL,
  interpretCoapAnswer,
  interpretControlState,
  interpretVoltage,
  invokeIdAndPriority,
  loadVoltageRequest,
  meshError,
  needsSupplyCheck,
  relayActionRequest,
  securityError,
  supplyVoltageRequest,
} from '../../src/relay/dlms-port.js';
import { RelayPortError, type RelayPortErrorCode } from '../../src/relay/types.js';
import { actionResponse, getResponse, portError, wire } from '../helpers/dlms-wire.js';

describe('relay DLMS port: building requests', () => {
  it('reads control_state: class 70 0.0.96.3.10.255 attribute 3, high priority confirmed', () => {
    const apdu = wire(controlStateRequest(5));
    expect(apdu).toEqual({
      type: 'get-request',
      invokeIdAndPriority: 0xc5,
      descriptor: { classId: 70, instanceId: '0.0.96.3.10.255', attributeId: 3 },
    });
  });

  it('reads the load-side and supply voltages: class 3 attribute 2', () => {
    expect(wire(loadVoltageRequest(1))).toMatchObject({ type: 'get-request', descriptor: { classId: 3, instanceId: '1.0.32.7.128.255', attributeId: 2 } });
    expect(wire(supplyVoltageRequest(2))).toMatchObject({ type: 'get-request', descriptor: { classId: 3, instanceId: '1.0.32.7.0.255', attributeId: 2 } });
  });

  it('invokes remote_disconnect (1) and remote_reconnect (2) with parameter integer 0', () => {
    expect(wire(relayActionRequest('remote_disconnect', 3))).toEqual({
      type: 'action-request',
      invokeIdAndPriority: 0xc3,
      cosemMethodDescriptor: { classId: DISCONNECT_CONTROL.classId, instanceId: DISCONNECT_CONTROL.obis, methodId: 1 },
      parameters: { type: 'integer', value: 0 },
    });
    expect(wire(relayActionRequest('remote_reconnect', 4))).toMatchObject({ cosemMethodDescriptor: { methodId: 2 } });
  });

  it('keeps the invoke id in four bits', () => {
    expect(invokeIdAndPriority(17)).toBe(0xc1);
  });
});

describe('relay DLMS port: interpreting answers', () => {
  it('reads control_state 0, 1 and 2', () => {
    for (const state of [0, 1, 2] as const) {
      expect(interpretControlState(getResponse(7, { data: { type: 'enum', value: state } }), 7)).toBe(state);
    }
  });

  it('refuses a control_state out of range, of another type, for another invoke id, or a data-access-result', () => {
    expect(portError(() => interpretControlState(getResponse(1, { data: { type: 'enum', value: 3 } }), 1)).code).toBe('REFUSED');
    expect(portError(() => interpretControlState(getResponse(1, { data: { type: 'boolean', value: true } }), 1)).code).toBe('REFUSED');
    expect(portError(() => interpretControlState(getResponse(2, { data: { type: 'enum', value: 0 } }), 1)).message).toMatch(/invoke id/);
    const denied = portError(() => interpretControlState(getResponse(1, { dataAccessResult: 4 }), 1));
    expect(denied.code).toBe('REFUSED');
    expect(denied.message).toMatch(/object-undefined/);
  });

  it('scales a voltage register by 10^-1: 2300 is 230 V, 0 is 0 V', () => {
    expect(interpretVoltage(getResponse(1, { data: { type: 'long-unsigned', value: 2300 } }), 1)).toBe(230);
    expect(interpretVoltage(getResponse(1, { data: { type: 'long-unsigned', value: 2315 } }), 1)).toBe(231.5);
    expect(interpretVoltage(getResponse(1, { data: { type: 'long-unsigned', value: 0 } }), 1)).toBe(0);
    expect(portError(() => interpretVoltage(getResponse(1, { data: { type: 'visible-string', value: 'x' } }), 1)).code).toBe('REFUSED');
  });

  it('maps every action-result to its outcome', () => {
    const cases: Array<[number, number | undefined, RelayPortErrorCode | undefined]> = [
      [0, undefined, undefined],
      [2, undefined, 'LOW_CAPACITOR'],
      [1, undefined, 'OBSTRUCTION'],
      [11, 0, 'NO_POWER'],
      [11, 230, 'REFUSED'],
      [3, undefined, 'REFUSED'],
      [250, undefined, 'REFUSED'],
    ];
    for (const [result, supply, code] of cases) {
      const apdu = actionResponse(9, result);
      expect(actionResult(apdu, 9)).toBe(result);
      expect(needsSupplyCheck(result)).toBe(result === 11);
      expect(actionOutcome(result, 'remote_disconnect', supply)?.code, `result ${result}`).toBe(code);
    }
    expect(actionOutcome(2, 'remote_disconnect')?.message).toMatch(/E001/);
    expect(actionOutcome(1, 'remote_reconnect')?.message).toMatch(/E044/);
  });

  it('refuses an exception-response in place of an action-response; deciphering errors are AUTH_FAILURE', () => {
    expect(portError(() => actionResult(wire({ type: 'exception-response', stateError: 2, serviceError: 3 }), 1)).code).toBe('REFUSED');
    expect(portError(() => actionResult(wire({ type: 'exception-response', stateError: 1, serviceError: 5 }), 1)).code).toBe('AUTH_FAILURE');
    expect(portError(() => actionResult(getResponse(1, { data: { type: 'enum', value: 0 } }), 1)).code).toBe('REFUSED');
  });

  it('maps CoAP answers: 2.04 carries the answer, 4.01 is AUTH_FAILURE, 5.xx waits, others are refused', () => {
    expect(interpretCoapAnswer('2.04', Buffer.alloc(0))).toEqual({ ok: true });
    const exception = encodeApdu({ type: 'exception-response', stateError: 1, serviceError: 5 });
    const auth = interpretCoapAnswer('4.01', exception);
    expect(auth.ok).toBe(false);
    if (!auth.ok) {
      expect(auth.error.code).toBe('AUTH_FAILURE');
      expect(auth.error.message).toMatch(/deciphering/);
    }
    const busy = interpretCoapAnswer('5.03', Buffer.alloc(0));
    expect(!busy.ok && busy.error.code).toBe('COMM_TIMEOUT_ERR');
    const missing = interpretCoapAnswer('4.04', Buffer.from('no resource'));
    expect(!missing.ok && missing.error.code).toBe('REFUSED');
  });

  it('maps key and authentication errors to AUTH_FAILURE, mesh timeouts to COMM_TIMEOUT_ERR, keeps aborts', () => {
    for (const code of ['MIC_FAILURE', 'NO_KEYS', 'NO_SYSTEM_TITLE', 'REPLAY'] as const) {
      expect(securityError(new DlmsError(code, 'x'), 'm1').code).toBe('AUTH_FAILURE');
    }
    expect(securityError(new DlmsError('TRUNCATED', 'x'), 'm1').code).toBe('REFUSED');
    const timeout = meshError(new MeshRequestError('COMM_TIMEOUT_ERR', 'no answer'), 'm1');
    expect(timeout).toBeInstanceOf(RelayPortError);
    expect((timeout as RelayPortError).code).toBe('COMM_TIMEOUT_ERR');
    expect((meshError(new MeshRequestError('RESET', 'rst'), 'm1') as RelayPortError).code).toBe('COMM_TIMEOUT_ERR');
    const aborted = new MeshRequestError('ABORTED', 'aborted');
    expect(meshError(aborted, 'm1')).toBe(aborted);
  });
});
