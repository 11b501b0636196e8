import { tableChecksum } from './crc.js';
import { C1218Error, type C1218ErrorCode } from './errors.js';

/**
 * ANSI C12.18 application-layer services: request encoders/decoders and
 * response encoders/decoders, pure functions over the application data a
 * packet (or a multi-packet transmission) carries. Integers are big-endian on
 * this layer whatever the device's table data order.
 */

/** Request codes (the first byte of a request). */
export const ServiceCode = {
  IDENTIFY: 0x20,
  TERMINATE: 0x21,
  FULL_READ: 0x30,
  PARTIAL_READ_OFFSET: 0x3f,
  LOGON: 0x50,
  SECURITY: 0x51,
  LOGOFF: 0x52,
  /** 0x60 without baud rates; 0x61..0x6B with 1..11 baud rate codes. */
  NEGOTIATE: 0x60,
  WAIT: 0x70,
} as const;

/** Response codes (the first byte of a response). */
export const ResponseCode = {
  OK: 0x00,
  ERR: 0x01,
  SNS: 0x02,
  ISC: 0x03,
  ONP: 0x04,
  IAR: 0x05,
  BSY: 0x06,
  DNR: 0x07,
  DLK: 0x08,
  RNO: 0x09,
  ISSS: 0x0a,
} as const;

/** The refusals a device can answer with, by name. */
export type RefusalName = Exclude<keyof typeof ResponseCode, 'OK'>;

const REFUSAL_BY_CODE = new Map<number, RefusalName>(
  (Object.entries(ResponseCode) as Array<[keyof typeof ResponseCode, number]>).filter((e): e is [RefusalName, number] => e[0] !== 'OK').map(([name, code]) => [code, name]),
);

const REFUSAL_TEXT: Record<RefusalName, string> = {
  ERR: 'the device refused the request (err)',
  SNS: 'service not supported (sns)',
  ISC: 'insufficient security clearance (isc)',
  ONP: 'operation not possible (onp)',
  IAR: 'inappropriate action requested (iar)',
  BSY: 'device busy (bsy)',
  DNR: 'data not ready (dnr)',
  DLK: 'data locked (dlk)',
  RNO: 'renegotiate request (rno)',
  ISSS: 'invalid service sequence state (isss)',
};

/** User name: 10 bytes, padded with spaces. */
export const USER_LENGTH = 10;
/** Password of the security service: 20 bytes, padded with spaces. */
export const PASSWORD_LENGTH = 20;

/**
 * Baud rate codes of the negotiate service. 0 means "externally defined" (the
 * baud stays as it is). The order is the standard's: 38400 comes after 57600.
 */
const BAUD_BY_CODE: ReadonlyArray<number> = [0, 300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 28800, 57600, 38400, 115200, 128000, 256000];

export function baudRateCode(baudRate: number): number {
  const code = BAUD_BY_CODE.indexOf(baudRate);
  if (code < 0) throw new C1218Error('BAD_ARGUMENT', `${baudRate} baud has no C12.18 baud rate code (${BAUD_BY_CODE.slice(1).join(', ')})`);
  return code;
}

export function baudRateOfCode(code: number, offset?: number): number {
  const baud = BAUD_BY_CODE[code];
  if (baud === undefined) throw new C1218Error('BAD_VALUE', `unknown baud rate code 0x${code.toString(16).padStart(2, '0')}`, offset);
  return baud;
}

/** Baud rates a C12.18 negotiate request can name (0 = externally defined excluded). */
export const C1218_BAUD_RATES: ReadonlyArray<number> = BAUD_BY_CODE.slice(1);

export type C1218Request =
  | { service: 'identify' }
  | { service: 'terminate' }
  | { service: 'full-read'; table: number }
  | { service: 'partial-read'; table: number; offset: number; count: number }
  /** user: up to 10 latin1 characters; trailing spaces are padding. */
  | { service: 'logon'; userId: number; user: string }
  /** password: exactly 20 bytes (passwordBytes() pads a text). */
  | { service: 'security'; password: Uint8Array }
  | { service: 'logoff' }
  /** packetSize: the largest packet the requester accepts; maxPackets: how many of them in one transmission; baudRates in bit/s, preferred first. */
  | { service: 'negotiate'; packetSize: number; maxPackets: number; baudRates: number[] }
  /** Keeps the session open for `seconds` without traffic. */
  | { service: 'wait'; seconds: number };

function checkRange(name: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) throw new C1218Error('BAD_ARGUMENT', `${name} must be an integer from ${min} to ${max}, got ${value}`);
}

function latin1(text: string, name: string, length: number): Uint8Array {
  if (text.length > length) throw new C1218Error('BAD_ARGUMENT', `${name} has at most ${length} characters, not ${text.length}`);
  const out = new Uint8Array(length).fill(0x20);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0xff) throw new C1218Error('BAD_ARGUMENT', `${name} must be latin1 text`);
    out[i] = c;
  }
  return out;
}

/** A password as the security service sends it: its latin1 bytes padded with spaces to 20. */
export function passwordBytes(password: string | Uint8Array): Uint8Array {
  if (typeof password === 'string') return latin1(password, 'the password', PASSWORD_LENGTH);
  if (password.length > PASSWORD_LENGTH) throw new C1218Error('BAD_ARGUMENT', `the password has at most ${PASSWORD_LENGTH} bytes, not ${password.length}`);
  const out = new Uint8Array(PASSWORD_LENGTH).fill(0x20);
  out.set(password);
  return out;
}

export function encodeRequest(request: C1218Request): Uint8Array {
  switch (request.service) {
    case 'identify':
      return Uint8Array.of(ServiceCode.IDENTIFY);
    case 'terminate':
      return Uint8Array.of(ServiceCode.TERMINATE);
    case 'logoff':
      return Uint8Array.of(ServiceCode.LOGOFF);
    case 'full-read':
      checkRange('table', request.table, 0, 0xffff);
      return Uint8Array.of(ServiceCode.FULL_READ, request.table >>> 8, request.table & 0xff);
    case 'partial-read':
      checkRange('table', request.table, 0, 0xffff);
      checkRange('offset', request.offset, 0, 0xffffff);
      checkRange('count', request.count, 0, 0xffff);
      return Uint8Array.of(
        ServiceCode.PARTIAL_READ_OFFSET,
        request.table >>> 8,
        request.table & 0xff,
        request.offset >>> 16,
        (request.offset >>> 8) & 0xff,
        request.offset & 0xff,
        request.count >>> 8,
        request.count & 0xff,
      );
    case 'logon': {
      checkRange('userId', request.userId, 0, 0xffff);
      const out = new Uint8Array(3 + USER_LENGTH);
      out[0] = ServiceCode.LOGON;
      out[1] = request.userId >>> 8;
      out[2] = request.userId & 0xff;
      out.set(latin1(request.user, 'the user name', USER_LENGTH), 3);
      return out;
    }
    case 'security': {
      if (request.password.length !== PASSWORD_LENGTH) throw new C1218Error('BAD_ARGUMENT', `the password field is ${PASSWORD_LENGTH} bytes, not ${request.password.length}`);
      const out = new Uint8Array(1 + PASSWORD_LENGTH);
      out[0] = ServiceCode.SECURITY;
      out.set(request.password, 1);
      return out;
    }
    case 'negotiate': {
      checkRange('packetSize', request.packetSize, 0, 0xffff);
      checkRange('maxPackets', request.maxPackets, 0, 0xff);
      if (request.baudRates.length > 11) throw new C1218Error('BAD_ARGUMENT', `negotiate names at most 11 baud rates, not ${request.baudRates.length}`);
      const out = new Uint8Array(4 + request.baudRates.length);
      out[0] = ServiceCode.NEGOTIATE + request.baudRates.length;
      out[1] = request.packetSize >>> 8;
      out[2] = request.packetSize & 0xff;
      out[3] = request.maxPackets;
      request.baudRates.forEach((baud, i) => (out[4 + i] = baudRateCode(baud)));
      return out;
    }
    case 'wait':
      checkRange('seconds', request.seconds, 0, 0xff);
      return Uint8Array.of(ServiceCode.WAIT, request.seconds);
  }
}

function expectLength(bytes: Uint8Array, length: number, what: string): void {
  if (bytes.length < length) throw new C1218Error('TRUNCATED', `${what} is ${length} bytes; only ${bytes.length} arrived`, bytes.length);
  if (bytes.length > length) throw new C1218Error('TRAILING_BYTES', `${bytes.length - length} bytes after ${what}`, length);
}

function u16(bytes: Uint8Array, at: number): number {
  return ((bytes[at] as number) << 8) | (bytes[at + 1] as number);
}

/** Decodes a request (what the simulated meter receives). Throws C1218Error with an offset. */
export function decodeRequest(bytes: Uint8Array): C1218Request {
  if (bytes.length === 0) throw new C1218Error('TRUNCATED', 'an empty request', 0);
  const code = bytes[0] as number;
  switch (code) {
    case ServiceCode.IDENTIFY:
      expectLength(bytes, 1, 'an identify request');
      return { service: 'identify' };
    case ServiceCode.TERMINATE:
      expectLength(bytes, 1, 'a terminate request');
      return { service: 'terminate' };
    case ServiceCode.LOGOFF:
      expectLength(bytes, 1, 'a logoff request');
      return { service: 'logoff' };
    case ServiceCode.FULL_READ:
      expectLength(bytes, 3, 'a full read request');
      return { service: 'full-read', table: u16(bytes, 1) };
    case ServiceCode.PARTIAL_READ_OFFSET:
      expectLength(bytes, 8, 'a partial read request');
      return {
        service: 'partial-read',
        table: u16(bytes, 1),
        offset: ((bytes[3] as number) << 16) | u16(bytes, 4),
        count: u16(bytes, 6),
      };
    case ServiceCode.LOGON:
      expectLength(bytes, 3 + USER_LENGTH, 'a logon request');
      return {
        service: 'logon',
        userId: u16(bytes, 1),
        user: String.fromCharCode(...bytes.subarray(3)).replace(/ +$/, ''),
      };
    case ServiceCode.SECURITY:
      expectLength(bytes, 1 + PASSWORD_LENGTH, 'a security request');
      return { service: 'security', password: bytes.slice(1) };
    case ServiceCode.WAIT:
      expectLength(bytes, 2, 'a wait request');
      return { service: 'wait', seconds: bytes[1] as number };
    default:
      if (code >= ServiceCode.NEGOTIATE && code <= ServiceCode.NEGOTIATE + 11) {
        const bauds = code - ServiceCode.NEGOTIATE;
        expectLength(bytes, 4 + bauds, 'a negotiate request');
        const baudRates: number[] = [];
        for (let i = 0; i < bauds; i++) baudRates.push(baudRateOfCode(bytes[4 + i] as number, 4 + i));
        return { service: 'negotiate', packetSize: u16(bytes, 1), maxPackets: bytes[3] as number, baudRates };
      }
      throw new C1218Error('UNSUPPORTED_SERVICE', `request code 0x${code.toString(16).padStart(2, '0')} is not decoded here`, 0);
  }
}

/** The error a refusal response (first byte not <ok>) stands for. */
export function refusalError(code: number, service: string): C1218Error {
  const name = REFUSAL_BY_CODE.get(code);
  if (name === undefined) {
    return new C1218Error('UNKNOWN_RESPONSE', `${service}: unknown response code 0x${code.toString(16).padStart(2, '0')}`, undefined, code);
  }
  return new C1218Error(name satisfies C1218ErrorCode, `${service}: ${REFUSAL_TEXT[name]}`, undefined, code);
}

/** Throws the refusal or a TRUNCATED error unless the response starts with <ok>. */
function expectOk(bytes: Uint8Array, service: string): void {
  if (bytes.length === 0) throw new C1218Error('TRUNCATED', `${service}: an empty response`, 0);
  const code = bytes[0] as number;
  if (code !== ResponseCode.OK) throw refusalError(code, service);
}

export interface IdentifyResponse {
  /** <std>: 0 = ANSI C12.18, 1 = C12.21, 2 = C12.22. */
  standard: number;
  standardName: string;
  version: number;
  revision: number;
  /** The <feature>* bytes between <rev> and <end-of-list>, undecoded (they differ by standard edition). */
  features: Uint8Array;
}

const STANDARD_NAMES: Record<number, string> = { 0: 'ANSI C12.18', 1: 'ANSI C12.21', 2: 'ANSI C12.22' };

export function standardName(standard: number): string {
  return STANDARD_NAMES[standard] ?? `reference standard ${standard}`;
}

/** <ok><std><ver><rev><feature>*<end-of-list 0x00>, or a refusal. */
export function decodeIdentifyResponse(bytes: Uint8Array): IdentifyResponse {
  expectOk(bytes, 'identify');
  if (bytes.length < 5) throw new C1218Error('TRUNCATED', `identify: the response is at least 5 bytes, not ${bytes.length}`, bytes.length);
  if (bytes[bytes.length - 1] !== 0x00) throw new C1218Error('TRUNCATED', 'identify: the feature list has no end-of-list byte', bytes.length);
  const standard = bytes[1] as number;
  return {
    standard,
    standardName: standardName(standard),
    version: bytes[2] as number,
    revision: bytes[3] as number,
    features: bytes.slice(4, bytes.length - 1),
  };
}

export function encodeIdentifyResponse(response: Pick<IdentifyResponse, 'standard' | 'version' | 'revision'> & { features?: Uint8Array }): Uint8Array {
  const features = response.features ?? new Uint8Array(0);
  const out = new Uint8Array(5 + features.length);
  out[0] = ResponseCode.OK;
  out[1] = response.standard;
  out[2] = response.version;
  out[3] = response.revision;
  out.set(features, 4);
  out[4 + features.length] = 0x00;
  return out;
}

export interface NegotiateResponse {
  /** Largest packet either side sends from now on. */
  packetSize: number;
  /** Most packets in one multi-packet transmission. */
  maxPackets: number;
  /** The baud rate both switch to after the response is acknowledged; absent when the response names none. */
  baudRate?: number;
}

/** <ok><packet-size 2><nbr-packet 1>[<baud-rate 1>], or a refusal. */
export function decodeNegotiateResponse(bytes: Uint8Array): NegotiateResponse {
  expectOk(bytes, 'negotiate');
  if (bytes.length < 4) throw new C1218Error('TRUNCATED', `negotiate: the response is 4 or 5 bytes, not ${bytes.length}`, bytes.length);
  if (bytes.length > 5) throw new C1218Error('TRAILING_BYTES', `negotiate: ${bytes.length - 5} bytes after the response`, 5);
  const response: NegotiateResponse = { packetSize: u16(bytes, 1), maxPackets: bytes[3] as number };
  if (bytes.length === 5) response.baudRate = baudRateOfCode(bytes[4] as number, 4);
  return response;
}

export function encodeNegotiateResponse(response: NegotiateResponse): Uint8Array {
  checkRange('packetSize', response.packetSize, 0, 0xffff);
  checkRange('maxPackets', response.maxPackets, 0, 0xff);
  const head = [ResponseCode.OK, response.packetSize >>> 8, response.packetSize & 0xff, response.maxPackets];
  return Uint8Array.from(response.baudRate === undefined ? head : [...head, baudRateCode(response.baudRate)]);
}

/** A bare <ok>: the response to wait, logon, security, logoff and terminate. */
export function decodeOkResponse(bytes: Uint8Array, service: string): void {
  expectOk(bytes, service);
  if (bytes.length > 1) throw new C1218Error('TRAILING_BYTES', `${service}: ${bytes.length - 1} bytes after <ok>`, 1);
}

/**
 * <ok><count 2><data><cksum> (the response to full and partial reads), or a
 * refusal. Verifies the count and the checksum (BAD_TABLE_CHECKSUM).
 */
export function decodeReadResponse(bytes: Uint8Array): Uint8Array {
  expectOk(bytes, 'read');
  if (bytes.length < 4) throw new C1218Error('TRUNCATED', `read: the response is at least 4 bytes, not ${bytes.length}`, bytes.length);
  const count = u16(bytes, 1);
  const end = 3 + count;
  if (bytes.length < end + 1) throw new C1218Error('TRUNCATED', `read: ${count} data bytes announced, ${Math.max(0, bytes.length - 4)} arrived`, bytes.length);
  if (bytes.length > end + 1) throw new C1218Error('TRAILING_BYTES', `read: ${bytes.length - end - 1} bytes after the checksum`, end + 1);
  const expected = tableChecksum(bytes, 3, end);
  if (bytes[end] !== expected) {
    throw new C1218Error('BAD_TABLE_CHECKSUM', `read: the table data checksum is 0x${(bytes[end] as number).toString(16).padStart(2, '0')}, the data adds up to 0x${expected.toString(16).padStart(2, '0')}`, end);
  }
  return bytes.slice(3, end);
}

/** The read response for `data`; `corruptChecksum` is for fault injection. */
export function encodeReadResponse(data: Uint8Array, options: { corruptChecksum?: boolean } = {}): Uint8Array {
  if (data.length > 0xffff) throw new C1218Error('BAD_ARGUMENT', `a read response carries at most 65535 bytes, not ${data.length}`);
  const out = new Uint8Array(4 + data.length);
  out[0] = ResponseCode.OK;
  out[1] = data.length >>> 8;
  out[2] = data.length & 0xff;
  out.set(data, 3);
  const checksum = tableChecksum(data);
  out[3 + data.length] = options.corruptChecksum ? (checksum + 1) & 0xff : checksum;
  return out;
}

export function encodeRefusal(name: RefusalName): Uint8Array {
  return Uint8Array.of(ResponseCode[name]);
}

/** A bare <ok> response. */
export function encodeOkResponse(): Uint8Array {
  return Uint8Array.of(ResponseCode.OK);
}
