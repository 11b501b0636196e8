import { decodeApdu, encodeApdu, type ActionRequestApdu, type GetDataResult, type XdlmsApdu } from '../dlms/apdu.js';
import { dateTimeFromDate, type DlmsData } from '../dlms/axdr.js';
import { DlmsError } from '../dlms/errors.js';
import { unwrapKey } from '../dlms/keywrap.js';
import { obisFromString } from '../dlms/obis.js';
import { unitCode } from '../dlms/profile.js';
import { decryptApdu, encryptApdu, isCipheredApdu, parseCipheredApdu } from '../dlms/security.js';
import { decodeWrapper, encodeWrapper, looksLikeWrapper } from '../dlms/wrapper.js';
import type { MeterKeySet } from '../keys/keystore.js';
import { DEFAULT_SECURITY_SETUP, GLOBAL_KEY_ID, GLOBAL_KEY_TRANSFER_METHOD_ID, SECURITY_SETUP_CLASS_ID } from '../keys/rotation.js';
import {
  actionResultOf,
  ALARM_REGISTER_OBIS,
  DATA_CLASS_ID,
  DISCONNECT_CONTROL_ATTRIBUTE,
  DISCONNECT_CONTROL_CLASS_ID,
  DISCONNECT_CONTROL_METHOD,
  DISCONNECT_CONTROL_OBIS,
  FRAUD_EVENT_OBIS,
  LOAD_VOLTAGE_OBIS,
  REGISTER_CLASS_ID,
  SimulatedRelay,
  SUPPLY_VOLTAGE_OBIS,
  type RelayOptions,
  type RelayOutcome,
} from './relay.js';

/**
 * A meter's DLMS/COSEM application layer, as far as the simulators need it:
 * it pushes ciphered data-notifications in the gateway's push profile
 * (docs/dlms.md), answers ciphered get/set/action requests from the gateway,
 * and performs the global key transfer (Security setup, class 64, method 2):
 * it answers under the old keys, then switches to the new ones, as the Green
 * Book describes.
 *
 * The relay (relay.ts) is on the wire as:
 *
 *   0.0.96.3.10.255  class 70 Disconnect control: get 1 logical_name
 *                    (octet-string), 2 output_state (boolean), 3 control_state
 *                    (enum), 4 control_mode (enum; set accepts enum 0..6);
 *                    action 1 remote_disconnect, 2 remote_reconnect (parameter
 *                    integer 0, or none): action-response with the result of
 *                    relay.ts (0 success, 2 temporary-failure = E001, 1
 *                    hardware-fault = E044, 11 object-unavailable = no supply,
 *                    3 read-write-denied = control_mode forbids it)
 *   1.0.32.7.128.255 class 3 load-side voltage: 2 value (long-unsigned, 0.1 V),
 *                    3 scaler_unit (structure {integer -1, enum 35 V})
 *   1.0.32.7.0.255   class 3 supply-side voltage, the same types
 *   0.0.97.98.0.255  class 1 alarm register 1: 2 value (double-long-unsigned,
 *                    bit 16 fraud attempt); a set clears the bits written as 1
 *   0.0.96.11.1.255  class 1 fraud detection event: 2 value (unsigned, 42
 *                    strong DC field = magnetic tamper, 0 none)
 *
 * An object the meter has under another class is object-class-inconsistent
 * (9), an attribute it does not have object-undefined (4). Every response is
 * general-glo-ciphered with the meter's system title (whatever the request's
 * framing), so the gateway opens it without knowing whose answer it is. A
 * glo-ciphered request carries no system title:
 * the meter takes the client's from the caller, else from its options, else
 * the last general-glo request it accepted (as from an association).
 */
export interface ProfileReading {
  obis: string;
  value: number;
  /** Power of ten the value is scaled by (value = raw * 10^scaler). */
  scaler?: number;
  unit?: string;
}

export interface CosemMeterOptions {
  /** The invocation counter the meter starts from (it survives a reboot in a real meter). */
  invocationCounter?: number;
  /** The relay, or the options of a new one (default: connected, control_mode 4, charged). */
  relay?: SimulatedRelay | RelayOptions;
  /** The client's (gateway's) system title, hex, for glo-ciphered requests. */
  clientSystemTitle?: string;
  /** Called after each relay method invocation, with its outcome. */
  onRelayOperation?: (outcome: RelayOutcome, methodId: number) => void;
}

/** What `serve` answers: the ciphered response, or why the meter refused the request. */
export type CosemServeResult =
  | { ok: true; response: Buffer; repeat: boolean }
  | {
      ok: false;
      /** 'security': MIC failure, replay, unprotected, no system title; 'malformed': anything else. */
      kind: 'security' | 'malformed';
      code: string;
      message: string;
      /** The unciphered exception-response the meter answers with (Green Book: deciphering or counter error). */
      exception: Buffer;
    };

/** Requests remembered to answer a retransmission with the same bytes. */
const ANSWERED_CACHE = 16;
const SECURITY_CODES: ReadonlySet<string> = new Set(['MIC_FAILURE', 'REPLAY', 'UNPROTECTED', 'NO_SYSTEM_TITLE', 'BAD_SECURITY', 'BAD_KEY']);

export class SimulatedCosemMeter {
  private invocationCounter: number;
  private keys: MeterKeySet;
  /** Last invocation counter seen from each client system title: the meter refuses replays too. */
  private readonly clientCounters = new Map<string, number>();
  private notificationId = 0;
  readonly attributes = new Map<string, DlmsData>();
  readonly relay: SimulatedRelay;
  private lastClientSystemTitle: string | undefined;
  private readonly answered = new Map<string, Buffer>();
  private readonly onRelayOperation: ((outcome: RelayOutcome, methodId: number) => void) | undefined;

  constructor(keys: MeterKeySet, options: CosemMeterOptions = {}) {
    this.keys = { ...keys };
    this.invocationCounter = options.invocationCounter ?? 0;
    this.relay = options.relay instanceof SimulatedRelay ? options.relay : new SimulatedRelay(options.relay);
    this.lastClientSystemTitle = options.clientSystemTitle?.toLowerCase();
    this.onRelayOperation = options.onRelayOperation;
    this.attributes.set(`1/0.0.42.0.0.255/2`, { type: 'octet-string', value: Buffer.from(keys.meter) });
  }

  get systemTitle(): string {
    return this.keys.systemTitle;
  }

  get meter(): string {
    return this.keys.meter;
  }

  /** The meter's current keys (tests compare them with the gateway's). */
  get currentKeys(): MeterKeySet {
    return { ...this.keys };
  }

  private nextCounter(): number {
    this.invocationCounter += 1;
    return this.invocationCounter;
  }

  private seal(plain: Uint8Array, keys: MeterKeySet = this.keys): Buffer {
    return encryptApdu(plain, {
      keys,
      systemTitle: Buffer.from(keys.systemTitle, 'hex'),
      invocationCounter: this.nextCounter(),
      security: 'authenticated-encrypted',
      framing: 'general-glo',
    });
  }

  /** A ciphered data-notification carrying `readings` in the push profile. */
  pushFrame(readings: ProfileReading[], at: Date = new Date()): Buffer {
    this.notificationId = (this.notificationId + 1) & 0x00ff_ffff;
    const body: DlmsData = {
      type: 'structure',
      items: [
        { type: 'visible-string', value: this.keys.meter },
        {
          type: 'array',
          items: readings.map((reading) => ({
            type: 'structure',
            items: [
              { type: 'octet-string', value: obisFromString(reading.obis) },
              Number.isInteger(reading.value) && reading.value >= 0 && reading.value <= 0xffff_ffff
                ? { type: 'double-long-unsigned', value: reading.value }
                : { type: 'float64', value: reading.value },
              {
                type: 'structure',
                items: [
                  { type: 'integer', value: reading.scaler ?? 0 },
                  { type: 'enum', value: (reading.unit !== undefined ? unitCode(reading.unit) : undefined) ?? 255 },
                ],
              },
            ],
          })),
        },
      ],
    };
    const apdu: XdlmsApdu = {
      type: 'data-notification',
      longInvokeIdAndPriority: this.notificationId,
      dateTime: dateTimeFromDate(at),
      body,
    };
    return this.seal(encodeApdu(apdu));
  }

  /**
   * Answers one ciphered request from the gateway (general-glo-ciphering,
   * which carries the gateway's system title). Returns the ciphered response,
   * or throws DlmsError for a request the meter drops (bad tag, replay).
   */
  handleRequest(frame: Uint8Array, clientSystemTitle?: string): Buffer {
    if (!isCipheredApdu(frame)) throw new DlmsError('UNPROTECTED', 'the meter accepts ciphered requests only');
    const ciphered = parseCipheredApdu(frame);
    const client = ciphered.systemTitle?.toString('hex') ?? clientSystemTitle?.toLowerCase() ?? this.lastClientSystemTitle;
    if (!client) throw new DlmsError('NO_SYSTEM_TITLE', 'the request carries no client system title');
    const last = this.clientCounters.get(client);
    if (last !== undefined && ciphered.invocationCounter <= last) {
      throw new DlmsError('REPLAY', `request counter ${ciphered.invocationCounter} is not above ${last}`);
    }
    const plain = decryptApdu(ciphered, this.keys, Buffer.from(client, 'hex'));
    this.clientCounters.set(client, ciphered.invocationCounter);
    if (ciphered.kind === 'general-glo') this.lastClientSystemTitle = client;
    const request = decodeApdu(plain);
    const keysForAnswer = this.keys;
    const response = this.dispatch(request);
    // The answer goes out under the keys the request came with; a key transfer takes effect after it.
    return this.seal(encodeApdu(response), keysForAnswer);
  }

  /**
   * What the meter's `/dlms` resource does with a request: `frame` is a
   * ciphered APDU, bare or in the DLMS/COSEM UDP wrapper (the answer then
   * comes in a wrapper too, wPorts swapped). The same bytes again (a
   * retransmission whose answer was lost) get the same answer, and nothing
   * is done twice. A request the meter refuses yields the exception-response
   * a meter answers with (unciphered), and why.
   */
  serve(frame: Uint8Array, clientSystemTitle?: string): CosemServeResult {
    const key = Buffer.from(frame).toString('base64');
    const cached = this.answered.get(key);
    if (cached) return { ok: true, response: cached, repeat: true };
    let response: Buffer;
    let exception: Buffer | undefined;
    let wrapper: { sourceWPort: number; destinationWPort: number } | undefined;
    try {
      let apdu: Uint8Array = frame;
      if (looksLikeWrapper(frame)) {
        const decoded = decodeWrapper(frame);
        wrapper = { sourceWPort: decoded.destinationWPort, destinationWPort: decoded.sourceWPort };
        apdu = decoded.apdu;
      }
      response = this.handleRequest(apdu, clientSystemTitle);
    } catch (err) {
      const code = err instanceof DlmsError ? err.code : 'BAD_VALUE';
      const security = SECURITY_CODES.has(code);
      exception = encodeApdu(
        code === 'REPLAY'
          ? { type: 'exception-response', stateError: 1, serviceError: 6, invocationCounter: (this.lastCounterSeen() ?? 0) + 1 }
          : { type: 'exception-response', stateError: security ? 1 : 2, serviceError: security ? 5 /* deciphering-error */ : 3 /* other-reason */ },
      );
      if (wrapper) exception = encodeWrapper({ ...wrapper, apdu: exception });
      return { ok: false, kind: security ? 'security' : 'malformed', code, message: (err as Error).message, exception };
    }
    if (wrapper) response = encodeWrapper({ ...wrapper, apdu: response });
    this.answered.set(key, response);
    if (this.answered.size > ANSWERED_CACHE) this.answered.delete(this.answered.keys().next().value as string);
    return { ok: true, response, repeat: false };
  }

  private lastCounterSeen(): number | undefined {
    let max: number | undefined;
    for (const value of this.clientCounters.values()) max = max === undefined ? value : Math.max(max, value);
    return max;
  }

  private dispatch(request: XdlmsApdu): XdlmsApdu {
    switch (request.type) {
      case 'get-request': {
        const { classId, instanceId, attributeId } = request.descriptor;
        const relayResult = this.getRelayObject(classId, instanceId, attributeId);
        if (relayResult) return { type: 'get-response', invokeIdAndPriority: request.invokeIdAndPriority, result: relayResult };
        if (classId === 8 && instanceId === '0.0.1.0.0.255' && attributeId === 2) {
          return { type: 'get-response', invokeIdAndPriority: request.invokeIdAndPriority, result: { data: { type: 'date-time', value: dateTimeFromDate(new Date()) } } };
        }
        const value = this.attributes.get(`${classId}/${instanceId}/${attributeId}`);
        return {
          type: 'get-response',
          invokeIdAndPriority: request.invokeIdAndPriority,
          result: value ? { data: value } : { dataAccessResult: 4 /* object-undefined */ },
        };
      }
      case 'set-request': {
        const { classId, instanceId, attributeId } = request.descriptor;
        const relayResult = this.setRelayObject(classId, instanceId, attributeId, request.value);
        if (relayResult !== undefined) return { type: 'set-response', invokeIdAndPriority: request.invokeIdAndPriority, result: relayResult };
        this.attributes.set(`${classId}/${instanceId}/${attributeId}`, request.value);
        return { type: 'set-response', invokeIdAndPriority: request.invokeIdAndPriority, result: 0 };
      }
      case 'action-request':
        return this.action(request);
      default:
        return { type: 'exception-response', stateError: 2, serviceError: 2 };
    }
  }

  private action(request: ActionRequestApdu): XdlmsApdu {
    const { classId, instanceId, methodId } = request.cosemMethodDescriptor;
    const answer = (result: number): XdlmsApdu => ({ type: 'action-response', invokeIdAndPriority: request.invokeIdAndPriority, result });
    if (instanceId === DISCONNECT_CONTROL_OBIS) {
      if (classId !== DISCONNECT_CONTROL_CLASS_ID) return answer(9 /* object-class-inconsistent */);
      return answer(this.relayAction(methodId, request.parameters));
    }
    if (classId !== SECURITY_SETUP_CLASS_ID || instanceId !== DEFAULT_SECURITY_SETUP || methodId !== GLOBAL_KEY_TRANSFER_METHOD_ID) {
      return answer(11 /* object-unavailable */);
    }
    const parameters = request.parameters;
    if (parameters?.type !== 'array') return answer(12 /* type-unmatched */);
    const next = { ...this.keys };
    for (const item of parameters.items) {
      if (item.type !== 'structure' || item.items.length !== 2) return answer(12);
      const [keyId, wrapped] = item.items as [DlmsData, DlmsData];
      if (keyId.type !== 'enum' || wrapped.type !== 'octet-string') return answer(12);
      let key: Buffer;
      try {
        key = unwrapKey(this.keys.kek, wrapped.value);
      } catch {
        return answer(3 /* read-write-denied: the wrapped key does not unwrap under our KEK */);
      }
      if (key.length !== 16) return answer(250);
      if (keyId.value === GLOBAL_KEY_ID.unicastEncryption) next.ek = key;
      else if (keyId.value === GLOBAL_KEY_ID.authentication) next.ak = key;
      else if (keyId.value === GLOBAL_KEY_ID.kek) next.kek = key;
      else return answer(250 /* other-reason: the broadcast key is not simulated */);
    }
    next.epoch = this.keys.epoch + 1;
    // The response is still sealed under the old keys: handleRequest took them before dispatching.
    this.keys = next;
    return answer(0);
  }

  // -------------------------------------------------------------------------
  // The relay's objects

  /** The Get-Data-Result for one of the relay's objects, or undefined when `instanceId` is none of them. */
  private getRelayObject(classId: number, instanceId: string, attributeId: number): GetDataResult | undefined {
    const relay = this.relay;
    const expected = RELAY_OBJECT_CLASS.get(instanceId);
    if (expected === undefined) return undefined;
    if (classId !== expected) return { dataAccessResult: 9 /* object-class-inconsistent */ };
    if (attributeId === 1) return { data: { type: 'octet-string', value: obisFromString(instanceId) } };
    const decivolts = (volts: number): GetDataResult => ({ data: { type: 'long-unsigned', value: Math.round(volts * 10) } });
    switch (instanceId) {
      case DISCONNECT_CONTROL_OBIS:
        if (attributeId === DISCONNECT_CONTROL_ATTRIBUTE.outputState) return { data: { type: 'boolean', value: relay.outputState } };
        if (attributeId === DISCONNECT_CONTROL_ATTRIBUTE.controlState) return { data: { type: 'enum', value: relay.controlState } };
        if (attributeId === DISCONNECT_CONTROL_ATTRIBUTE.controlMode) return { data: { type: 'enum', value: relay.controlMode } };
        break;
      case LOAD_VOLTAGE_OBIS:
      case SUPPLY_VOLTAGE_OBIS:
        if (attributeId === 2) return decivolts(instanceId === LOAD_VOLTAGE_OBIS ? relay.loadVoltage : relay.supplyVoltage);
        if (attributeId === 3) return { data: VOLTAGE_SCALER_UNIT };
        break;
      case ALARM_REGISTER_OBIS:
        if (attributeId === 2) return { data: { type: 'double-long-unsigned', value: relay.alarmRegister } };
        break;
      case FRAUD_EVENT_OBIS:
        if (attributeId === 2) return { data: { type: 'unsigned', value: relay.fraudEventCode } };
        break;
    }
    return { dataAccessResult: 4 /* object-undefined */ };
  }

  /** The Data-Access-Result of a set on one of the relay's objects, or undefined when it is none of them. */
  private setRelayObject(classId: number, instanceId: string, attributeId: number, value: DlmsData): number | undefined {
    const expected = RELAY_OBJECT_CLASS.get(instanceId);
    if (expected === undefined) return undefined;
    if (classId !== expected) return 9;
    if (instanceId === DISCONNECT_CONTROL_OBIS && attributeId === DISCONNECT_CONTROL_ATTRIBUTE.controlMode) {
      if (value.type !== 'enum') return 12 /* type-unmatched */;
      if (value.value > 6) return 250 /* other-reason: no such mode */;
      this.relay.controlMode = value.value;
      return 0;
    }
    if (instanceId === ALARM_REGISTER_OBIS && attributeId === 2) {
      if (value.type !== 'double-long-unsigned') return 12;
      this.relay.clearAlarms(value.value);
      return 0;
    }
    return 3 /* read-write-denied */;
  }

  /** Runs a method of the Disconnect control object; returns the Action-Result. */
  private relayAction(methodId: number, parameters: DlmsData | undefined): number {
    if (methodId !== DISCONNECT_CONTROL_METHOD.remoteDisconnect && methodId !== DISCONNECT_CONTROL_METHOD.remoteReconnect) {
      return 11 /* object-unavailable: no such method */;
    }
    // The Blue Book's parameter is integer 0; a client that sends none is served too.
    if (parameters !== undefined && parameters.type !== 'integer') return 12 /* type-unmatched */;
    const outcome = methodId === DISCONNECT_CONTROL_METHOD.remoteDisconnect ? this.relay.remoteDisconnect() : this.relay.remoteReconnect();
    this.onRelayOperation?.(outcome, methodId);
    return actionResultOf(outcome);
  }
}

/** The relay's objects and their interface classes. */
const RELAY_OBJECT_CLASS: ReadonlyMap<string, number> = new Map([
  [DISCONNECT_CONTROL_OBIS, DISCONNECT_CONTROL_CLASS_ID],
  [LOAD_VOLTAGE_OBIS, REGISTER_CLASS_ID],
  [SUPPLY_VOLTAGE_OBIS, REGISTER_CLASS_ID],
  [ALARM_REGISTER_OBIS, DATA_CLASS_ID],
  [FRAUD_EVENT_OBIS, DATA_CLASS_ID],
]);

/** scaler_unit of the voltage registers: 10^-1 V. */
const VOLTAGE_SCALER_UNIT: DlmsData = {
  type: 'structure',
  items: [
    { type: 'integer', value: -1 },
    { type: 'enum', value: 35 /* V */ },
  ],
};
