/**
 * The relay lifecycle's meter port over DLMS/COSEM on the mesh: each call is
 * one glo-ciphered xDLMS request (sealed by the gateway's keyring) posted to
 * the meter's `/dlms` resource (Content-Format 42) through the
 * congestion-controlled mesh client at `control` priority, and the ciphered
 * answer opened by the keyring.
 *
 *   readControlState  GET    class 70 0.0.96.3.10.255 attribute 3 (enum)
 *   readLoadVoltage   GET    class 3  1.0.32.7.128.255 attribute 2 (0.1 V)
 *   invoke            ACTION class 70 0.0.96.3.10.255 method 1 | 2 (integer 0)
 *   readAlarms        GET    class 1  0.0.97.98.0.255 attribute 2 (double-long-unsigned bit field)
 *   clearAlarms       SET    class 1  0.0.97.98.0.255 attribute 2 (double-long-unsigned mask:
 *                            the meter clears the bits written as 1)
 *
 * How answers map to RelayPortError codes:
 *
 * | on the wire                                         | code             |
 * | --------------------------------------------------- | ---------------- |
 * | action result 0 success                             | (resolves)       |
 * | action result 2 temporary-failure                   | LOW_CAPACITOR    |
 * | action result 1 hardware-fault                      | OBSTRUCTION      |
 * | action result 11 object-unavailable, supply 0 V     | NO_POWER         |
 * | action result 3 read-write-denied, or anything else | REFUSED          |
 * | set result 0 success                                | (resolves)       |
 * | set result other than 0 (e.g. 12 type-unmatched)    | REFUSED          |
 * | get data-access-result instead of data, wrong type  | REFUSED          |
 * | answer of another type or for another invoke id     | REFUSED          |
 * | CoAP 4.01 (exception-response), MIC failure, no keys| AUTH_FAILURE     |
 * | no answer (mesh COMM_TIMEOUT_ERR, RESET, QUEUE_FULL)| COMM_TIMEOUT_ERR |
 * | meter without an address (not registered)           | COMM_TIMEOUT_ERR |
 *
 * The first part of this file is pure (APDU building and interpretation);
 * the transport is only in DlmsRelayPort.
 */
import { ACTION_RESULT, DATA_ACCESS_RESULT, SERVICE_ERROR, decodeApdu, type XdlmsApdu } from '../dlms/apdu.js';
import type { DlmsData } from '../dlms/axdr.js';
import { DlmsError } from '../dlms/errors.js';
import { MeshRequestError } from '../coap/client/errors.js';
import type { MeshRequest, MeshResponse } from '../coap/client/client.js';
import type { RequestPriority } from '../coap/client/scheduler.js';
import type { PeerAddress } from '../coap/client/transport.js';
import type { OpenedFrame, SealOptions, SealedFrame } from '../keys/keyring.js';
import { RelayPortError, type ControlState, type RelayMeterPort } from './types.js';

// ---------------------------------------------------------------------------
// The meter's objects

export const DISCONNECT_CONTROL = { classId: 70, obis: '0.0.96.3.10.255', controlStateAttribute: 3 } as const;
export const RELAY_METHOD_ID: Readonly<Record<RelayMethod, number>> = { remote_disconnect: 1, remote_reconnect: 2 };
/** Load-side voltage (manufacturer-specific value group E 128), Register, long-unsigned in 0.1 V. */
export const LOAD_VOLTAGE = { classId: 3, obis: '1.0.32.7.128.255', valueAttribute: 2 } as const;
/** Supply-side L1 voltage, Register, long-unsigned in 0.1 V; 0 while the mains are off. */
export const SUPPLY_VOLTAGE = { classId: 3, obis: '1.0.32.7.0.255', valueAttribute: 2 } as const;
/** Alarm register 1, Data (class 1), value double-long-unsigned bit field; TAMPER_ALARM_BIT (types.ts) is bit 16. */
export const ALARM_REGISTER = { classId: 1, obis: '0.0.97.98.0.255', valueAttribute: 2 } as const;
/** The largest double-long-unsigned (Unsigned32). */
const MAX_DOUBLE_LONG_UNSIGNED = 0xffff_ffff;
/** scaler of the voltage registers (scaler_unit {-1, V}). */
export const VOLTAGE_SCALER = -1;
/** Content-Format of ciphered xDLMS on /dlms (application/octet-stream). */
export const DLMS_CONTENT_FORMAT = 42;
export const METER_DLMS_RESOURCE = '/dlms';

export type RelayMethod = 'remote_disconnect' | 'remote_reconnect';

/** Invoke-Id-And-Priority: high priority (bit 7), confirmed (bit 6), invoke id in bits 0-3. */
export function invokeIdAndPriority(invokeId: number): number {
  return 0xc0 | (invokeId & 0x0f);
}

// ---------------------------------------------------------------------------
// Building requests (pure)

export function controlStateRequest(invokeId: number): XdlmsApdu {
  return {
    type: 'get-request',
    invokeIdAndPriority: invokeIdAndPriority(invokeId),
    descriptor: { classId: DISCONNECT_CONTROL.classId, instanceId: DISCONNECT_CONTROL.obis, attributeId: DISCONNECT_CONTROL.controlStateAttribute },
  };
}

export function loadVoltageRequest(invokeId: number): XdlmsApdu {
  return {
    type: 'get-request',
    invokeIdAndPriority: invokeIdAndPriority(invokeId),
    descriptor: { classId: LOAD_VOLTAGE.classId, instanceId: LOAD_VOLTAGE.obis, attributeId: LOAD_VOLTAGE.valueAttribute },
  };
}

export function supplyVoltageRequest(invokeId: number): XdlmsApdu {
  return {
    type: 'get-request',
    invokeIdAndPriority: invokeIdAndPriority(invokeId),
    descriptor: { classId: SUPPLY_VOLTAGE.classId, instanceId: SUPPLY_VOLTAGE.obis, attributeId: SUPPLY_VOLTAGE.valueAttribute },
  };
}

export function alarmRegisterRequest(invokeId: number): XdlmsApdu {
  return {
    type: 'get-request',
    invokeIdAndPriority: invokeIdAndPriority(invokeId),
    descriptor: { classId: ALARM_REGISTER.classId, instanceId: ALARM_REGISTER.obis, attributeId: ALARM_REGISTER.valueAttribute },
  };
}

/**
 * Writes `mask` (double-long-unsigned) to alarm register 1: the meter clears
 * the bits written as 1. Throws RelayPortError REFUSED for a mask that is not
 * an integer 0..2^32-1 (nothing is sent).
 */
export function clearAlarmsRequest(mask: number, invokeId: number): XdlmsApdu {
  if (!Number.isInteger(mask) || mask < 0 || mask > MAX_DOUBLE_LONG_UNSIGNED) {
    throw new RelayPortError('REFUSED', `alarm mask ${String(mask)} is not an integer 0..${MAX_DOUBLE_LONG_UNSIGNED}`);
  }
  return {
    type: 'set-request',
    invokeIdAndPriority: invokeIdAndPriority(invokeId),
    descriptor: { classId: ALARM_REGISTER.classId, instanceId: ALARM_REGISTER.obis, attributeId: ALARM_REGISTER.valueAttribute },
    value: { type: 'double-long-unsigned', value: mask },
  };
}

/** remote_disconnect / remote_reconnect with the Blue Book's parameter integer 0. */
export function relayActionRequest(method: RelayMethod, invokeId: number): XdlmsApdu {
  const methodId = RELAY_METHOD_ID[method];
  if (methodId === undefined) throw new RelayPortError('REFUSED', `unknown relay method ${String(method)}`);
  return {
    type: 'action-request',
    invokeIdAndPriority: invokeIdAndPriority(invokeId),
    cosemMethodDescriptor: { classId: DISCONNECT_CONTROL.classId, instanceId: DISCONNECT_CONTROL.obis, methodId },
    parameters: { type: 'integer', value: 0 },
  };
}

// ---------------------------------------------------------------------------
// Interpreting answers (pure)

/** What the CoAP layer said about a /dlms request, before the DLMS answer is opened. */
export type CoapAnswer = { ok: true } | { ok: false; error: RelayPortError };

/**
 * 2.04/2.05: a ciphered answer follows. 4.01: the meter refused our
 * ciphering (its exception-response, unciphered, is described in the
 * message): AUTH_FAILURE. 5.xx: the meter cannot answer now:
 * COMM_TIMEOUT_ERR (the command waits). Anything else: REFUSED.
 */
export function interpretCoapAnswer(code: string, payload: Uint8Array): CoapAnswer {
  if (code === '2.04' || code === '2.05' || code === '2.01') return { ok: true };
  const exception = describeException(payload);
  const why = exception ? `: ${exception}` : '';
  if (code === '4.01') return { ok: false, error: new RelayPortError('AUTH_FAILURE', `the meter refused the request's security (CoAP 4.01${why})`) };
  if (code.startsWith('5.')) return { ok: false, error: new RelayPortError('COMM_TIMEOUT_ERR', `the meter could not answer (CoAP ${code}${why})`) };
  return { ok: false, error: new RelayPortError('REFUSED', `the meter refused the request (CoAP ${code}${why})`) };
}

/** 'exception-response service-not-allowed/deciphering-error' for an unciphered exception-response, else undefined. */
export function describeException(payload: Uint8Array): string | undefined {
  if (payload.length === 0) return undefined;
  let apdu: XdlmsApdu;
  try {
    apdu = decodeApdu(payload);
  } catch {
    return undefined;
  }
  if (apdu.type !== 'exception-response') return apdu.type;
  const state = apdu.stateError === 1 ? 'service-not-allowed' : apdu.stateError === 2 ? 'service-unknown' : `state-error ${apdu.stateError}`;
  const service = SERVICE_ERROR[apdu.serviceError] ?? `service-error ${apdu.serviceError}`;
  return `exception-response ${state}/${service}`;
}

/** The error a DlmsError from sealing or opening becomes: key and authentication problems are E012. */
export function securityError(err: DlmsError, meter: string): RelayPortError {
  switch (err.code) {
    case 'MIC_FAILURE':
    case 'NO_KEYS':
    case 'NO_SYSTEM_TITLE':
    case 'REPLAY':
    case 'UNPROTECTED':
      return new RelayPortError('AUTH_FAILURE', `meter ${meter}: ${err.message}`, { cause: err });
    default:
      return new RelayPortError('REFUSED', `meter ${meter}: unusable answer: ${err.message}`, { cause: err });
  }
}

function checkInvokeId(apdu: { invokeIdAndPriority: number }, invokeId: number): void {
  if ((apdu.invokeIdAndPriority & 0x0f) !== (invokeId & 0x0f)) {
    throw new RelayPortError('REFUSED', `answer for invoke id ${apdu.invokeIdAndPriority & 0x0f}, expected ${invokeId & 0x0f}`);
  }
}

/** An answer that is an exception-response or confirmed-service-error instead of the expected response. */
function unexpected(apdu: XdlmsApdu, expected: string): RelayPortError {
  if (apdu.type === 'exception-response') {
    const description = `${apdu.stateError === 1 ? 'service-not-allowed' : 'service-unknown'}/${SERVICE_ERROR[apdu.serviceError] ?? apdu.serviceError}`;
    // Deciphering or invocation-counter errors are the association's security failing.
    if (apdu.serviceError === 5 || apdu.serviceError === 6) return new RelayPortError('AUTH_FAILURE', `exception-response ${description}`);
    return new RelayPortError('REFUSED', `exception-response ${description}`);
  }
  if (apdu.type === 'confirmed-service-error') return new RelayPortError('REFUSED', `confirmed-service-error (service ${apdu.service}, group ${apdu.errorGroup}, error ${apdu.error})`);
  return new RelayPortError('REFUSED', `expected ${expected}, got ${apdu.type}`);
}

function getData(apdu: XdlmsApdu, invokeId: number, what: string): DlmsData {
  if (apdu.type !== 'get-response') throw unexpected(apdu, 'get-response');
  checkInvokeId(apdu, invokeId);
  if ('dataAccessResult' in apdu.result) {
    const name = DATA_ACCESS_RESULT[apdu.result.dataAccessResult] ?? 'unknown';
    throw new RelayPortError('REFUSED', `reading ${what}: data-access-result ${apdu.result.dataAccessResult} (${name})`);
  }
  return apdu.result.data;
}

/** control_state from a get-response: enum 0, 1 or 2. Throws RelayPortError REFUSED otherwise. */
export function interpretControlState(apdu: XdlmsApdu, invokeId: number): ControlState {
  const data = getData(apdu, invokeId, 'control_state');
  if (data.type !== 'enum' && data.type !== 'unsigned') throw new RelayPortError('REFUSED', `control_state is ${data.type}, expected enum`);
  if (data.value !== 0 && data.value !== 1 && data.value !== 2) throw new RelayPortError('REFUSED', `control_state ${data.value} is not 0, 1 or 2`);
  return data.value;
}

const NUMERIC_TYPES: ReadonlySet<DlmsData['type']> = new Set(['integer', 'long', 'unsigned', 'long-unsigned', 'double-long', 'double-long-unsigned']);

/** A voltage register's value in volts (raw x 10^scaler). Throws RelayPortError REFUSED for anything but an integer. */
export function interpretVoltage(apdu: XdlmsApdu, invokeId: number, scaler = VOLTAGE_SCALER, what = 'voltage'): number {
  const data = getData(apdu, invokeId, what);
  if (!NUMERIC_TYPES.has(data.type) || !('value' in data) || typeof data.value !== 'number') {
    throw new RelayPortError('REFUSED', `${what} is ${data.type}, expected an integer`);
  }
  // Rounded to the register's resolution, so 2300 x 0.1 is 230, not 229.99999999999997.
  const digits = Math.max(0, -scaler);
  return Number((data.value * 10 ** scaler).toFixed(digits));
}

const UNSIGNED_TYPES: ReadonlySet<DlmsData['type']> = new Set(['unsigned', 'long-unsigned', 'double-long-unsigned']);

/**
 * Alarm register 1's bit field from a get-response (double-long-unsigned; a
 * narrower unsigned integer is taken too). Throws RelayPortError REFUSED for
 * anything else, a data-access-result, another invoke id or another APDU.
 */
export function interpretAlarmRegister(apdu: XdlmsApdu, invokeId: number): number {
  const data = getData(apdu, invokeId, 'alarm register 1');
  if (!UNSIGNED_TYPES.has(data.type) || !('value' in data) || typeof data.value !== 'number') {
    throw new RelayPortError('REFUSED', `alarm register 1 is ${data.type}, expected double-long-unsigned`);
  }
  return data.value;
}

/**
 * A set-response's Data-Access-Result: resolves for 0 (success), throws
 * RelayPortError REFUSED naming the result otherwise (and for another
 * invoke id or an APDU that is not a set-response).
 */
export function interpretSetResult(apdu: XdlmsApdu, invokeId: number, what = 'alarm register 1'): void {
  if (apdu.type !== 'set-response') throw unexpected(apdu, 'set-response');
  checkInvokeId(apdu, invokeId);
  if (apdu.result === 0) return;
  const name = DATA_ACCESS_RESULT[apdu.result] ?? 'unknown';
  throw new RelayPortError('REFUSED', `writing ${what}: data-access-result ${apdu.result} (${name})`);
}

/** The action-result of an action-response (invoke id checked). */
export function actionResult(apdu: XdlmsApdu, invokeId: number): number {
  if (apdu.type !== 'action-response') throw unexpected(apdu, 'action-response');
  checkInvokeId(apdu, invokeId);
  return apdu.result;
}

/**
 * What an action-result means for the lifecycle: undefined for success, else
 * the error. Result 11 (object-unavailable) is NO_POWER when the supply
 * voltage is 0 (`supplyVolts`, read after the refusal), else REFUSED;
 * `supplyVolts` undefined means not read.
 */
export function actionOutcome(result: number, method: RelayMethod, supplyVolts?: number): RelayPortError | undefined {
  const name = ACTION_RESULT[result] ?? 'unknown';
  const what = `${method}: action-result ${result} (${name})`;
  switch (result) {
    case 0:
      return undefined;
    case 2:
      return new RelayPortError('LOW_CAPACITOR', `${what}: the firing capacitor is not charged (E001)`);
    case 1:
      return new RelayPortError('OBSTRUCTION', `${what}: the actuator did not move (E044)`);
    case 11:
      if (supplyVolts === 0) return new RelayPortError('NO_POWER', `${what}: no mains supply (0 V)`);
      return new RelayPortError('REFUSED', `${what}${supplyVolts === undefined ? '' : ` with ${supplyVolts} V supply`}`);
    case 3:
      return new RelayPortError('REFUSED', `${what}: refused by the meter's control mode or configuration`);
    default:
      return new RelayPortError('REFUSED', what);
  }
}

/** Whether an action-result needs the supply voltage to be told apart (11: no power or no such object). */
export function needsSupplyCheck(result: number): boolean {
  return result === 11;
}

/** MeshRequestError -> RelayPortError; ABORTED and CLOSED are passed through (the lifecycle recognises its abort). */
export function meshError(err: MeshRequestError, meter: string): Error {
  switch (err.code) {
    case 'COMM_TIMEOUT_ERR':
    case 'RESET':
    case 'QUEUE_FULL':
      return new RelayPortError('COMM_TIMEOUT_ERR', `meter ${meter}: ${err.message}`, { cause: err });
    case 'ABORTED':
    case 'CLOSED':
      return err;
    default:
      return new RelayPortError('REFUSED', `meter ${meter}: ${err.message}`, { cause: err });
  }
}

// ---------------------------------------------------------------------------
// The port

/** What the port needs of the gateway's keyring (src/keys/keyring.ts Keyring). */
export interface RelayKeyring {
  sealFrame(apdu: XdlmsApdu | Uint8Array, target: { systemTitle?: string; meter?: string }, options: SealOptions): Promise<SealedFrame>;
  openFrame(input: Uint8Array, context?: { meter?: string; systemTitle?: string }): Promise<OpenedFrame>;
}

/** What the port needs of the mesh client (src/coap/client/client.ts MeshClient). */
export interface RelayMeshClient {
  request(request: MeshRequest): Promise<MeshResponse>;
}

export interface DlmsRelayPortOptions {
  client: RelayMeshClient;
  keyring: RelayKeyring;
  /**
   * The meter's CoAP address, e.g. from the mesh registry
   * (`(m) => { const r = registry.byEndpoint(m); return r && meterTarget(r).peer; }`);
   * undefined: the meter is not reachable now (COMM_TIMEOUT_ERR, the command waits).
   */
  resolve: (meter: string) => PeerAddress | undefined | Promise<PeerAddress | undefined>;
  /** Default 'control'. */
  priority?: RequestPriority;
  /** Default '/dlms'. */
  path?: string;
  /** When set (16 hex characters, the gateway's system title), adds `?st=` to each request; not needed with general-glo, which carries it. */
  systemTitleQuery?: string;
}

export class DlmsRelayPort implements RelayMeterPort {
  private invokeId = 0;
  private readonly priority: RequestPriority;
  private readonly path: string;

  constructor(private readonly options: DlmsRelayPortOptions) {
    this.priority = options.priority ?? 'control';
    this.path = options.path ?? METER_DLMS_RESOURCE;
  }

  async readControlState(meter: string, signal: AbortSignal): Promise<ControlState> {
    const id = this.nextInvokeId();
    const answer = await this.exchange(meter, controlStateRequest(id), signal);
    return interpretControlState(answer, id);
  }

  async readLoadVoltage(meter: string, signal: AbortSignal): Promise<number> {
    const id = this.nextInvokeId();
    const answer = await this.exchange(meter, loadVoltageRequest(id), signal);
    return interpretVoltage(answer, id, VOLTAGE_SCALER, 'load-side voltage');
  }

  /** Supply-side voltage, volts (0 while the mains are off). */
  async readSupplyVoltage(meter: string, signal: AbortSignal): Promise<number> {
    const id = this.nextInvokeId();
    const answer = await this.exchange(meter, supplyVoltageRequest(id), signal);
    return interpretVoltage(answer, id, VOLTAGE_SCALER, 'supply voltage');
  }

  /** Alarm register 1's bit field (TAMPER_ALARM_BIT is the magnetic tamper). */
  async readAlarms(meter: string, signal: AbortSignal): Promise<number> {
    const id = this.nextInvokeId();
    const answer = await this.exchange(meter, alarmRegisterRequest(id), signal);
    return interpretAlarmRegister(answer, id);
  }

  /** Clears the bits of `mask` in alarm register 1 (a set-request writing the mask). */
  async clearAlarms(meter: string, mask: number, signal: AbortSignal): Promise<void> {
    const id = this.nextInvokeId();
    const request = clearAlarmsRequest(mask, id);
    const answer = await this.exchange(meter, request, signal);
    interpretSetResult(answer, id);
  }

  async invoke(meter: string, method: RelayMethod, signal: AbortSignal): Promise<void> {
    const id = this.nextInvokeId();
    const answer = await this.exchange(meter, relayActionRequest(method, id), signal);
    const result = actionResult(answer, id);
    const supply = needsSupplyCheck(result) ? await this.readSupplyVoltage(meter, signal) : undefined;
    const error = actionOutcome(result, method, supply);
    if (error) throw error;
  }

  private nextInvokeId(): number {
    this.invokeId = (this.invokeId + 1) & 0x0f;
    return this.invokeId;
  }

  /** One ciphered request/answer with the meter; the opened answer APDU. */
  private async exchange(meter: string, apdu: XdlmsApdu, signal: AbortSignal): Promise<XdlmsApdu> {
    signal.throwIfAborted();
    const peer = await this.options.resolve(meter);
    if (!peer) throw new RelayPortError('COMM_TIMEOUT_ERR', `meter ${meter} has no known address (not registered)`);
    let sealed: SealedFrame;
    try {
      sealed = await this.options.keyring.sealFrame(apdu, { meter }, { security: 'authenticated-encrypted', framing: 'general-glo' });
    } catch (err) {
      if (err instanceof DlmsError) throw securityError(err, meter);
      throw err;
    }
    signal.throwIfAborted();
    let response: MeshResponse;
    try {
      response = await this.options.client.request({
        peer,
        method: 'POST',
        path: this.path,
        ...(this.options.systemTitleQuery ? { query: `st=${this.options.systemTitleQuery}` } : {}),
        payload: sealed.frame,
        contentFormat: DLMS_CONTENT_FORMAT,
        priority: this.priority,
        signal,
      });
    } catch (err) {
      if (err instanceof MeshRequestError) throw meshError(err, meter);
      throw err;
    }
    const coap = interpretCoapAnswer(response.code, response.payload);
    if (!coap.ok) throw coap.error;
    let opened: OpenedFrame;
    try {
      opened = await this.options.keyring.openFrame(response.payload, { meter });
    } catch (err) {
      if (err instanceof DlmsError) throw securityError(err, meter);
      throw err;
    }
    if (opened.systemTitle !== undefined && opened.systemTitle !== sealed.systemTitle) {
      throw new RelayPortError('AUTH_FAILURE', `meter ${meter}: the answer comes from system title ${opened.systemTitle}, expected ${sealed.systemTitle}`);
    }
    return opened.apdu;
  }
}
