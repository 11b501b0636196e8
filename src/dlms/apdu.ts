import {
  AxdrReader,
  AxdrWriter,
  dateTimeToDate,
  dateTimeToLocalString,
  type CosemDate,
  type CosemDateTime,
  type CosemTime,
  type DlmsData,
} from './axdr.js';
import { DlmsError } from './errors.js';
import { obisFromString, obisToString } from './obis.js';

/**
 * Unciphered xDLMS APDUs (Green Book, COSEMpdu module) the gateway speaks with
 * logical-name referencing: the push notifications, and the "normal" forms of
 * GET, SET and ACTION with their responses, exception-response and
 * confirmed-service-error. Block transfer and with-list variants are
 * UNSUPPORTED; ciphered APDUs are unwrapped by the security layer first.
 */

/** The APDU tags this module knows by name. */
export const APDU_TAG = {
  'confirmed-service-error': 0x0e,
  'data-notification': 0x0f,
  'get-request': 0xc0,
  'set-request': 0xc1,
  'event-notification-request': 0xc2,
  'action-request': 0xc3,
  'get-response': 0xc4,
  'set-response': 0xc5,
  'action-response': 0xc7,
  'exception-response': 0xd8,
} as const;

export interface CosemAttributeDescriptor {
  classId: number;
  /** Logical name in dotted form, e.g. '0.0.1.0.0.255'. */
  instanceId: string;
  /** Integer8: negative ids are manufacturer-specific. */
  attributeId: number;
}

export interface CosemMethodDescriptor {
  classId: number;
  instanceId: string;
  methodId: number;
}

export interface SelectiveAccess {
  /** Access selector (e.g. 1 range, 2 entry for a profile generic). */
  selector: number;
  parameters: DlmsData;
}

/** Get-Data-Result: the data, or why there is none. */
export type GetDataResult = { data: DlmsData } | { dataAccessResult: number };

export interface DataNotificationApdu {
  type: 'data-notification';
  /** Long-Invoke-Id-And-Priority (Unsigned32). */
  longInvokeIdAndPriority: number;
  /** Absent when the APDU carries an empty date-time octet-string. */
  dateTime?: CosemDateTime;
  body: DlmsData;
}

export interface EventNotificationRequestApdu {
  type: 'event-notification-request';
  time?: CosemDateTime;
  cosemAttributeDescriptor: CosemAttributeDescriptor;
  attributeValue: DlmsData;
}

export interface GetRequestApdu {
  type: 'get-request';
  invokeIdAndPriority: number;
  descriptor: CosemAttributeDescriptor;
  accessSelection?: SelectiveAccess;
}

export interface GetResponseApdu {
  type: 'get-response';
  invokeIdAndPriority: number;
  result: GetDataResult;
}

export interface SetRequestApdu {
  type: 'set-request';
  invokeIdAndPriority: number;
  descriptor: CosemAttributeDescriptor;
  accessSelection?: SelectiveAccess;
  value: DlmsData;
}

export interface SetResponseApdu {
  type: 'set-response';
  invokeIdAndPriority: number;
  /** Data-Access-Result. */
  result: number;
}

export interface ActionRequestApdu {
  type: 'action-request';
  invokeIdAndPriority: number;
  cosemMethodDescriptor: CosemMethodDescriptor;
  parameters?: DlmsData;
}

export interface ActionResponseApdu {
  type: 'action-response';
  invokeIdAndPriority: number;
  /** Action-Result. */
  result: number;
  returnParameters?: GetDataResult;
}

export interface ExceptionResponseApdu {
  type: 'exception-response';
  /** 1 service-not-allowed, 2 service-unknown. */
  stateError: number;
  /** The service-error choice, see SERVICE_ERROR. */
  serviceError: number;
  /** With service error 6 (invocation-counter-error): the counter value the server expects. */
  invocationCounter?: number;
}

export interface ConfirmedServiceErrorApdu {
  type: 'confirmed-service-error';
  /** ConfirmedServiceError choice, see CONFIRMED_SERVICE. */
  service: number;
  /** ServiceError choice, see SERVICE_ERROR_GROUP. */
  errorGroup: number;
  /** The enumerated value within the group. */
  error: number;
}

export type XdlmsApdu =
  | DataNotificationApdu
  | EventNotificationRequestApdu
  | GetRequestApdu
  | GetResponseApdu
  | SetRequestApdu
  | SetResponseApdu
  | ActionRequestApdu
  | ActionResponseApdu
  | ExceptionResponseApdu
  | ConfirmedServiceErrorApdu;

export type XdlmsApduType = XdlmsApdu['type'];

// ---------------------------------------------------------------------------
// Name tables

export const DATA_ACCESS_RESULT: Readonly<Record<number, string>> = {
  0: 'success',
  1: 'hardware-fault',
  2: 'temporary-failure',
  3: 'read-write-denied',
  4: 'object-undefined',
  9: 'object-class-inconsistent',
  11: 'object-unavailable',
  12: 'type-unmatched',
  13: 'scope-of-access-violated',
  14: 'data-block-unavailable',
  15: 'long-get-aborted',
  16: 'no-long-get-in-progress',
  17: 'long-set-aborted',
  18: 'no-long-set-in-progress',
  19: 'data-block-number-invalid',
  250: 'other-reason',
};

export const ACTION_RESULT: Readonly<Record<number, string>> = {
  0: 'success',
  1: 'hardware-fault',
  2: 'temporary-failure',
  3: 'read-write-denied',
  4: 'object-undefined',
  9: 'object-class-inconsistent',
  11: 'object-unavailable',
  12: 'type-unmatched',
  13: 'scope-of-access-violated',
  14: 'data-block-unavailable',
  15: 'long-action-aborted',
  16: 'no-long-action-in-progress',
  250: 'other-reason',
};

export const STATE_ERROR: Readonly<Record<number, string>> = {
  1: 'service-not-allowed',
  2: 'service-unknown',
};

/** The service-error choice of exception-response. */
export const SERVICE_ERROR: Readonly<Record<number, string>> = {
  1: 'operation-not-possible',
  2: 'service-not-supported',
  3: 'other-reason',
  4: 'pdu-too-long',
  5: 'deciphering-error',
  6: 'invocation-counter-error',
};

/** The ConfirmedServiceError choice: which service failed. */
export const CONFIRMED_SERVICE: Readonly<Record<number, string>> = {
  1: 'initiate-error',
  2: 'get-status',
  3: 'get-name-list',
  4: 'get-variable-attribute',
  5: 'read',
  6: 'write',
  7: 'get-data-set-attribute',
  8: 'get-ti-attribute',
  9: 'change-scope',
  10: 'start',
  11: 'stop',
  12: 'resume',
  13: 'make-usable',
  14: 'initiate-load',
  15: 'load-segment',
  16: 'terminate-load',
  17: 'initiate-upload',
  18: 'upload-segment',
  19: 'terminate-upload',
};

/** The ServiceError choice: the group the error value belongs to. */
export const SERVICE_ERROR_GROUP: Readonly<Record<number, string>> = {
  0: 'application-reference',
  1: 'hardware-resource',
  2: 'vde-state-error',
  3: 'service',
  4: 'definition',
  5: 'access',
  6: 'initiate',
  7: 'load-data-set',
  8: 'change-scope',
  9: 'task',
  10: 'other',
};

/** The name of `code` in `table`, or `unknown(<code>)`. */
export function nameOf(table: Readonly<Record<number, string>>, code: number): string {
  return table[code] ?? `unknown(${code})`;
}

const SERVICE_ERROR_INVOCATION_COUNTER = 6;

// ---------------------------------------------------------------------------
// Invoke-id helpers

/** Invoke-Id-And-Priority (Unsigned8): bits 0-3 invoke-id, bit 6 confirmed, bit 7 high priority. */
export function splitInvokeIdAndPriority(v: number): { invokeId: number; confirmed: boolean; highPriority: boolean } {
  return { invokeId: v & 0x0f, confirmed: (v & 0x40) !== 0, highPriority: (v & 0x80) !== 0 };
}

/**
 * Long-Invoke-Id-And-Priority (Unsigned32): bits 0-23 invoke-id, bit 28
 * self-descriptive, bit 29 break-on-error, bit 30 confirmed, bit 31 high priority.
 */
export function splitLongInvokeIdAndPriority(v: number): {
  invokeId: number;
  selfDescriptive: boolean;
  breakOnError: boolean;
  confirmed: boolean;
  highPriority: boolean;
} {
  return {
    invokeId: v & 0xffffff,
    selfDescriptive: (v & 0x10000000) !== 0,
    breakOnError: (v & 0x20000000) !== 0,
    confirmed: (v & 0x40000000) !== 0,
    highPriority: v >= 0x80000000,
  };
}

// ---------------------------------------------------------------------------
// Decoding

/** Tags of APDUs protected by ciphering (service-specific, legacy glo/ded, general-*). */
function isCipheredTag(tag: number): boolean {
  return (
    (tag >= 0xc8 && tag <= 0xd7) ||
    tag === 0xdb ||
    tag === 0xdc ||
    tag === 0xdd ||
    [0x21, 0x25, 0x26, 0x28, 0x2c, 0x2d, 0x2e, 0x36, 0x38].includes(tag) ||
    [0x41, 0x45, 0x46, 0x48, 0x4c, 0x4d, 0x4e, 0x56, 0x58].includes(tag)
  );
}

/** Known, valid APDUs the codec does not implement. */
const UNSUPPORTED_TAGS: ReadonlyMap<number, string> = new Map([
  [0x01, 'initiateRequest'],
  [0x05, 'readRequest'],
  [0x06, 'writeRequest'],
  [0x08, 'initiateResponse'],
  [0x0c, 'readResponse'],
  [0x0d, 'writeResponse'],
  [0x16, 'unconfirmedWriteRequest'],
  [0x18, 'informationReportRequest'],
  [0x60, 'AARQ (ACSE)'],
  [0x61, 'AARE (ACSE)'],
  [0x62, 'RLRQ (ACSE)'],
  [0x63, 'RLRE (ACSE)'],
  [0xd9, 'access-request'],
  [0xda, 'access-response'],
  [0xdf, 'general-signing'],
  [0xe0, 'general-block-transfer'],
]);

/** Variants of each service other than normal (choice 1), by choice number. */
const OTHER_VARIANTS: Readonly<Record<string, Readonly<Record<number, string>>>> = {
  'get-request': { 2: 'get-request-next', 3: 'get-request-with-list' },
  'get-response': { 2: 'get-response-with-datablock', 3: 'get-response-with-list' },
  'set-request': {
    2: 'set-request-with-first-datablock',
    3: 'set-request-with-datablock',
    4: 'set-request-with-list',
    5: 'set-request-with-list-and-first-datablock',
  },
  'set-response': {
    2: 'set-response-datablock',
    3: 'set-response-last-datablock',
    4: 'set-response-last-datablock-with-list',
    5: 'set-response-with-list',
  },
  'action-request': {
    2: 'action-request-next-pblock',
    3: 'action-request-with-list',
    4: 'action-request-with-first-pblock',
    5: 'action-request-with-list-and-first-pblock',
    6: 'action-request-with-pblock',
  },
  'action-response': {
    2: 'action-response-with-pblock',
    3: 'action-response-with-list',
    4: 'action-response-next-pblock',
  },
};

/** Reads the service's CHOICE byte; only the normal form (1) goes on. */
function expectNormal(r: AxdrReader, service: string): void {
  const at = r.pos;
  const choice = r.u8(`the ${service} choice`);
  if (choice === 1) return;
  const variant = OTHER_VARIANTS[service]?.[choice];
  if (variant) throw new DlmsError('UNSUPPORTED', `${variant} is not supported`, at);
  throw new DlmsError('BAD_TAG', `unknown ${service} choice ${choice}`, at);
}

function readObis(r: AxdrReader): string {
  return obisToString(r.take(6, 'a logical name'));
}

function readAttributeDescriptor(r: AxdrReader): CosemAttributeDescriptor {
  const classId = r.u16('a class-id');
  const instanceId = readObis(r);
  const attributeId = r.i8('an attribute-id');
  return { classId, instanceId, attributeId };
}

function readMethodDescriptor(r: AxdrReader): CosemMethodDescriptor {
  const classId = r.u16('a class-id');
  const instanceId = readObis(r);
  const methodId = r.i8('a method-id');
  return { classId, instanceId, methodId };
}

function readAccessSelection(r: AxdrReader): SelectiveAccess | undefined {
  if (!r.flag('the access-selection flag')) return undefined;
  const selector = r.u8('an access-selector');
  const parameters = r.data();
  return { selector, parameters };
}

function readGetDataResult(r: AxdrReader): GetDataResult {
  const at = r.pos;
  const choice = r.u8('the Get-Data-Result choice');
  if (choice === 0) return { data: r.data() };
  if (choice === 1) return { dataAccessResult: r.u8('a Data-Access-Result') };
  throw new DlmsError('BAD_TAG', `unknown Get-Data-Result choice ${choice}`, at);
}

/** A date-time carried as an octet-string: 12 bytes, or (when `emptyAllowed`) none. */
function readDateTimeOctets(r: AxdrReader, what: string, emptyAllowed: boolean): CosemDateTime | undefined {
  const at = r.pos;
  const n = r.length(what);
  if (n === 0 && emptyAllowed) return undefined;
  if (n !== 12) throw new DlmsError('BAD_LENGTH', `${what} must be 12 bytes${emptyAllowed ? ' or empty' : ''}, not ${n}`, at);
  return r.dateTime();
}

/**
 * Decodes one unciphered xDLMS APDU, which must fill `bytes` exactly. Any
 * failure is a DlmsError whose offset is relative to the start of `bytes`.
 */
export function decodeApdu(bytes: Uint8Array): XdlmsApdu {
  const r = new AxdrReader(bytes);
  const tagAt = r.pos;
  const tag = r.u8('the APDU tag');
  let apdu: XdlmsApdu;
  switch (tag) {
    case APDU_TAG['data-notification']: {
      const longInvokeIdAndPriority = r.u32('the long-invoke-id-and-priority');
      const dateTime = readDateTimeOctets(r, 'the date-time', true);
      const body = r.data();
      const a: DataNotificationApdu = { type: 'data-notification', longInvokeIdAndPriority, body };
      if (dateTime) a.dateTime = dateTime;
      apdu = a;
      break;
    }
    case APDU_TAG['event-notification-request']: {
      const time = r.flag('the time flag') ? readDateTimeOctets(r, 'the time', false) : undefined;
      const cosemAttributeDescriptor = readAttributeDescriptor(r);
      const attributeValue = r.data();
      const a: EventNotificationRequestApdu = { type: 'event-notification-request', cosemAttributeDescriptor, attributeValue };
      if (time) a.time = time;
      apdu = a;
      break;
    }
    case APDU_TAG['get-request']: {
      expectNormal(r, 'get-request');
      const invokeIdAndPriority = r.u8('the invoke-id-and-priority');
      const descriptor = readAttributeDescriptor(r);
      const accessSelection = readAccessSelection(r);
      const a: GetRequestApdu = { type: 'get-request', invokeIdAndPriority, descriptor };
      if (accessSelection) a.accessSelection = accessSelection;
      apdu = a;
      break;
    }
    case APDU_TAG['get-response']: {
      expectNormal(r, 'get-response');
      const invokeIdAndPriority = r.u8('the invoke-id-and-priority');
      apdu = { type: 'get-response', invokeIdAndPriority, result: readGetDataResult(r) };
      break;
    }
    case APDU_TAG['set-request']: {
      expectNormal(r, 'set-request');
      const invokeIdAndPriority = r.u8('the invoke-id-and-priority');
      const descriptor = readAttributeDescriptor(r);
      const accessSelection = readAccessSelection(r);
      const value = r.data();
      const a: SetRequestApdu = { type: 'set-request', invokeIdAndPriority, descriptor, value };
      if (accessSelection) a.accessSelection = accessSelection;
      apdu = a;
      break;
    }
    case APDU_TAG['set-response']: {
      expectNormal(r, 'set-response');
      const invokeIdAndPriority = r.u8('the invoke-id-and-priority');
      apdu = { type: 'set-response', invokeIdAndPriority, result: r.u8('a Data-Access-Result') };
      break;
    }
    case APDU_TAG['action-request']: {
      expectNormal(r, 'action-request');
      const invokeIdAndPriority = r.u8('the invoke-id-and-priority');
      const cosemMethodDescriptor = readMethodDescriptor(r);
      const parameters = r.flag('the parameters flag') ? r.data() : undefined;
      const a: ActionRequestApdu = { type: 'action-request', invokeIdAndPriority, cosemMethodDescriptor };
      if (parameters) a.parameters = parameters;
      apdu = a;
      break;
    }
    case APDU_TAG['action-response']: {
      expectNormal(r, 'action-response');
      const invokeIdAndPriority = r.u8('the invoke-id-and-priority');
      const result = r.u8('an Action-Result');
      const returnParameters = r.flag('the return-parameters flag') ? readGetDataResult(r) : undefined;
      const a: ActionResponseApdu = { type: 'action-response', invokeIdAndPriority, result };
      if (returnParameters) a.returnParameters = returnParameters;
      apdu = a;
      break;
    }
    case APDU_TAG['exception-response']: {
      const stateError = r.u8('the state-error');
      const serviceError = r.u8('the service-error');
      const invocationCounter =
        serviceError === SERVICE_ERROR_INVOCATION_COUNTER ? r.u32('the expected invocation counter') : undefined;
      const a: ExceptionResponseApdu = { type: 'exception-response', stateError, serviceError };
      if (invocationCounter !== undefined) a.invocationCounter = invocationCounter;
      apdu = a;
      break;
    }
    case APDU_TAG['confirmed-service-error']: {
      const service = r.u8('the confirmed-service-error choice');
      const errorGroup = r.u8('the service-error choice');
      const error = r.u8('the service-error value');
      apdu = { type: 'confirmed-service-error', service, errorGroup, error };
      break;
    }
    default: {
      if (isCipheredTag(tag)) {
        throw new DlmsError('UNSUPPORTED', `APDU tag 0x${hex(tag)} is ciphered: decipher it before decoding`, tagAt);
      }
      const known = UNSUPPORTED_TAGS.get(tag);
      if (known) throw new DlmsError('UNSUPPORTED', `${known} APDUs are not supported`, tagAt);
      throw new DlmsError('BAD_TAG', `unknown APDU tag 0x${hex(tag)}`, tagAt);
    }
  }
  r.end('the APDU');
  return apdu;
}

// ---------------------------------------------------------------------------
// Encoding

function writeObis(w: AxdrWriter, s: unknown): void {
  if (typeof s !== 'string') throw new DlmsError('BAD_VALUE', 'instanceId must be an OBIS string');
  w.bytes(obisFromString(s));
}

function writeAttributeDescriptor(w: AxdrWriter, d: CosemAttributeDescriptor): void {
  checkObject(d, 'an attribute descriptor');
  w.u16(d.classId, 'classId');
  writeObis(w, d.instanceId);
  w.i8(d.attributeId, 'attributeId');
}

function writeMethodDescriptor(w: AxdrWriter, d: CosemMethodDescriptor): void {
  checkObject(d, 'a method descriptor');
  w.u16(d.classId, 'classId');
  writeObis(w, d.instanceId);
  w.i8(d.methodId, 'methodId');
}

function writeAccessSelection(w: AxdrWriter, s: SelectiveAccess | undefined): void {
  w.flag(s !== undefined);
  if (s === undefined) return;
  checkObject(s, 'an access selection');
  w.u8(s.selector, 'selector').data(s.parameters);
}

function writeGetDataResult(w: AxdrWriter, result: GetDataResult): void {
  checkObject(result, 'a Get-Data-Result');
  if ('data' in result) w.u8(0, 'choice').data(result.data);
  else if ('dataAccessResult' in result) w.u8(1, 'choice').u8(result.dataAccessResult, 'dataAccessResult');
  else throw new DlmsError('BAD_VALUE', 'a Get-Data-Result needs data or dataAccessResult');
}

function writeDateTimeOctets(w: AxdrWriter, dt: CosemDateTime): void {
  w.length(12).dateTime(dt);
}

/** Encodes an xDLMS APDU. Out-of-range fields are BAD_VALUE. */
export function encodeApdu(apdu: XdlmsApdu): Buffer {
  checkObject(apdu, 'an APDU');
  const w = new AxdrWriter();
  switch (apdu.type) {
    case 'data-notification':
      w.u8(APDU_TAG[apdu.type], 'tag').u32(apdu.longInvokeIdAndPriority, 'longInvokeIdAndPriority');
      if (apdu.dateTime === undefined) w.length(0);
      else writeDateTimeOctets(w, apdu.dateTime);
      w.data(apdu.body);
      break;
    case 'event-notification-request':
      w.u8(APDU_TAG[apdu.type], 'tag').flag(apdu.time !== undefined);
      if (apdu.time !== undefined) writeDateTimeOctets(w, apdu.time);
      writeAttributeDescriptor(w, apdu.cosemAttributeDescriptor);
      w.data(apdu.attributeValue);
      break;
    case 'get-request':
      w.u8(APDU_TAG[apdu.type], 'tag').u8(1, 'choice').u8(apdu.invokeIdAndPriority, 'invokeIdAndPriority');
      writeAttributeDescriptor(w, apdu.descriptor);
      writeAccessSelection(w, apdu.accessSelection);
      break;
    case 'get-response':
      w.u8(APDU_TAG[apdu.type], 'tag').u8(1, 'choice').u8(apdu.invokeIdAndPriority, 'invokeIdAndPriority');
      writeGetDataResult(w, apdu.result);
      break;
    case 'set-request':
      w.u8(APDU_TAG[apdu.type], 'tag').u8(1, 'choice').u8(apdu.invokeIdAndPriority, 'invokeIdAndPriority');
      writeAttributeDescriptor(w, apdu.descriptor);
      writeAccessSelection(w, apdu.accessSelection);
      w.data(apdu.value);
      break;
    case 'set-response':
      w.u8(APDU_TAG[apdu.type], 'tag').u8(1, 'choice').u8(apdu.invokeIdAndPriority, 'invokeIdAndPriority');
      w.u8(apdu.result, 'result');
      break;
    case 'action-request':
      w.u8(APDU_TAG[apdu.type], 'tag').u8(1, 'choice').u8(apdu.invokeIdAndPriority, 'invokeIdAndPriority');
      writeMethodDescriptor(w, apdu.cosemMethodDescriptor);
      w.flag(apdu.parameters !== undefined);
      if (apdu.parameters !== undefined) w.data(apdu.parameters);
      break;
    case 'action-response':
      w.u8(APDU_TAG[apdu.type], 'tag').u8(1, 'choice').u8(apdu.invokeIdAndPriority, 'invokeIdAndPriority');
      w.u8(apdu.result, 'result').flag(apdu.returnParameters !== undefined);
      if (apdu.returnParameters !== undefined) writeGetDataResult(w, apdu.returnParameters);
      break;
    case 'exception-response': {
      w.u8(APDU_TAG[apdu.type], 'tag').u8(apdu.stateError, 'stateError').u8(apdu.serviceError, 'serviceError');
      const counterError = apdu.serviceError === SERVICE_ERROR_INVOCATION_COUNTER;
      if (counterError !== (apdu.invocationCounter !== undefined)) {
        throw new DlmsError('BAD_VALUE', 'invocationCounter goes with service error 6 (invocation-counter-error), and only with it');
      }
      if (apdu.invocationCounter !== undefined) w.u32(apdu.invocationCounter, 'invocationCounter');
      break;
    }
    case 'confirmed-service-error':
      w.u8(APDU_TAG[apdu.type], 'tag').u8(apdu.service, 'service').u8(apdu.errorGroup, 'errorGroup').u8(apdu.error, 'error');
      break;
    default: {
      const type: unknown = (apdu as { type?: unknown }).type;
      throw new DlmsError('BAD_VALUE', `unknown APDU type ${JSON.stringify(type)}`);
    }
  }
  return w.finish();
}

function checkObject(v: unknown, what: string): void {
  if (typeof v !== 'object' || v === null) throw new DlmsError('BAD_VALUE', `${what} must be an object`);
}

function hex(n: number): string {
  return n.toString(16).padStart(2, '0');
}

// ---------------------------------------------------------------------------
// Description (JSON-safe)

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

function jsonBigint(v: bigint): number | string {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
}

/** NaN and the infinities as strings; -0 as 0, which is what JSON makes of it anyway. */
function jsonFloat(v: number): number | string {
  if (!Number.isFinite(v)) return String(v);
  return v === 0 ? 0 : v;
}

function fields(o: CosemDate | CosemTime | CosemDateTime): JsonObject {
  return { ...o } as unknown as JsonObject;
}

/** A date-time as JSON: its fields, the instant in ISO form (null when it names none) and the local wall-clock time. */
export function describeDateTime(dt: CosemDateTime): JsonObject {
  const when = dateTimeToDate(dt);
  return { iso: when ? when.toISOString() : null, local: dateTimeToLocalString(dt) ?? null, ...fields(dt) };
}

/** A Data value as JSON: bigints as numbers when safe (else strings), bytes as hex, floats that JSON cannot hold as strings. */
export function describeData(d: DlmsData): JsonObject {
  switch (d.type) {
    case 'null':
    case 'dont-care':
      return { type: d.type };
    case 'array':
    case 'structure':
      return { type: d.type, items: d.items.map(describeData) };
    case 'long64':
    case 'long64-unsigned':
      return { type: d.type, value: jsonBigint(d.value) };
    case 'float32':
    case 'float64':
      return { type: d.type, value: jsonFloat(d.value) };
    case 'octet-string':
      return { type: d.type, value: Buffer.from(d.value.buffer, d.value.byteOffset, d.value.byteLength).toString('hex') };
    case 'bit-string':
      return { type: d.type, bits: d.bits };
    case 'date-time':
      return { type: d.type, value: describeDateTime(d.value) };
    case 'date':
    case 'time':
      return { type: d.type, value: fields(d.value) };
    default:
      return { type: d.type, value: d.value };
  }
}

function describeDescriptor(d: CosemAttributeDescriptor | CosemMethodDescriptor): JsonObject {
  return { ...d } as unknown as JsonObject;
}

function describeGetDataResult(r: GetDataResult): JsonObject {
  if ('data' in r) return { data: describeData(r.data) };
  return { dataAccessResult: r.dataAccessResult, dataAccessResultName: nameOf(DATA_ACCESS_RESULT, r.dataAccessResult) };
}

function describeInvoke(v: number): JsonObject {
  return { invokeIdAndPriority: v, ...splitInvokeIdAndPriority(v) };
}

/** A plain, JSON-safe object for CLI output and Node-RED messages. */
export function describeApdu(apdu: XdlmsApdu): JsonObject {
  switch (apdu.type) {
    case 'data-notification':
      return {
        type: apdu.type,
        longInvokeIdAndPriority: apdu.longInvokeIdAndPriority,
        ...splitLongInvokeIdAndPriority(apdu.longInvokeIdAndPriority),
        ...(apdu.dateTime ? { dateTime: describeDateTime(apdu.dateTime) } : {}),
        body: describeData(apdu.body),
      };
    case 'event-notification-request':
      return {
        type: apdu.type,
        ...(apdu.time ? { time: describeDateTime(apdu.time) } : {}),
        cosemAttributeDescriptor: describeDescriptor(apdu.cosemAttributeDescriptor),
        attributeValue: describeData(apdu.attributeValue),
      };
    case 'get-request':
    case 'set-request':
      return {
        type: apdu.type,
        ...describeInvoke(apdu.invokeIdAndPriority),
        descriptor: describeDescriptor(apdu.descriptor),
        ...(apdu.accessSelection
          ? { accessSelection: { selector: apdu.accessSelection.selector, parameters: describeData(apdu.accessSelection.parameters) } }
          : {}),
        ...(apdu.type === 'set-request' ? { value: describeData(apdu.value) } : {}),
      };
    case 'get-response':
      return { type: apdu.type, ...describeInvoke(apdu.invokeIdAndPriority), result: describeGetDataResult(apdu.result) };
    case 'set-response':
      return {
        type: apdu.type,
        ...describeInvoke(apdu.invokeIdAndPriority),
        result: apdu.result,
        resultName: nameOf(DATA_ACCESS_RESULT, apdu.result),
      };
    case 'action-request':
      return {
        type: apdu.type,
        ...describeInvoke(apdu.invokeIdAndPriority),
        cosemMethodDescriptor: describeDescriptor(apdu.cosemMethodDescriptor),
        ...(apdu.parameters ? { parameters: describeData(apdu.parameters) } : {}),
      };
    case 'action-response':
      return {
        type: apdu.type,
        ...describeInvoke(apdu.invokeIdAndPriority),
        result: apdu.result,
        resultName: nameOf(ACTION_RESULT, apdu.result),
        ...(apdu.returnParameters ? { returnParameters: describeGetDataResult(apdu.returnParameters) } : {}),
      };
    case 'exception-response':
      return {
        type: apdu.type,
        stateError: apdu.stateError,
        stateErrorName: nameOf(STATE_ERROR, apdu.stateError),
        serviceError: apdu.serviceError,
        serviceErrorName: nameOf(SERVICE_ERROR, apdu.serviceError),
        ...(apdu.invocationCounter !== undefined ? { invocationCounter: apdu.invocationCounter } : {}),
      };
    case 'confirmed-service-error':
      return {
        type: apdu.type,
        service: apdu.service,
        serviceName: nameOf(CONFIRMED_SERVICE, apdu.service),
        errorGroup: apdu.errorGroup,
        errorGroupName: nameOf(SERVICE_ERROR_GROUP, apdu.errorGroup),
        error: apdu.error,
      };
  }
}
