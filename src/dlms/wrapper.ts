import { DlmsError } from './errors.js';

/**
 * The DLMS/COSEM wrapper (IEC 62056-9-7, Green Book "TCP-UDP/IP based
 * communication profiles"): an 8-byte header in front of each APDU,
 *
 *   version (Unsigned16, 0x0001) | source wPort (Unsigned16)
 *   | destination wPort (Unsigned16) | length (Unsigned16: APDU bytes that follow)
 *
 * On UDP one datagram holds exactly one wrapper frame, so the length must match
 * the bytes that follow exactly.
 */

/** IANA-registered DLMS/COSEM port, for UDP and TCP. */
export const DLMS_UDP_PORT = 4059;
export const WRAPPER_VERSION = 0x0001;
export const WRAPPER_HEADER_LENGTH = 8;

/** Reserved wPorts, client side. */
export const WPORT_NO_STATION = 0x0000;
export const WPORT_CLIENT_MANAGEMENT_PROCESS = 0x0001;
export const WPORT_PUBLIC_CLIENT = 0x0010;
/** Reserved wPorts, server side. */
export const WPORT_SERVER_MANAGEMENT_LOGICAL_DEVICE = 0x0001;
export const WPORT_ALL_STATIONS = 0x007f;

export interface WrapperFrame {
  version: number;
  sourceWPort: number;
  destinationWPort: number;
  apdu: Uint8Array;
}

/**
 * True when `bytes` starts the way a wrapper frame does (version 0x0001). No
 * xDLMS APDU starts with 0x00, so a bare APDU never looks like a wrapper.
 */
export function looksLikeWrapper(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x00 && bytes[1] === 0x01;
}

/**
 * Splits a wrapper frame. The APDU is a copy. Errors: TRUNCATED inside the
 * header (at the field that is cut) or when the length promises more than
 * follows (at the length field), BAD_VALUE for another version, BAD_LENGTH for
 * a zero length, TRAILING_BYTES past the promised length.
 */
export function decodeWrapper(bytes: Uint8Array): WrapperFrame {
  const fields = ['version', 'source wPort', 'destination wPort', 'length'];
  for (let i = 0; i < fields.length; i++) {
    if (bytes.length < i * 2 + 2) {
      throw new DlmsError('TRUNCATED', `wrapper header cut inside the ${fields[i] ?? 'header'} field`, i * 2);
    }
  }
  const u16 = (at: number): number => ((bytes[at] ?? 0) << 8) | (bytes[at + 1] ?? 0);
  const version = u16(0);
  if (version !== WRAPPER_VERSION) {
    throw new DlmsError('BAD_VALUE', `wrapper version ${version}, expected ${WRAPPER_VERSION}`, 0);
  }
  const length = u16(6);
  const available = bytes.length - WRAPPER_HEADER_LENGTH;
  if (length === 0) throw new DlmsError('BAD_LENGTH', 'wrapper length is 0: no APDU', 6);
  if (length > available) {
    throw new DlmsError('TRUNCATED', `wrapper length says ${length} APDU bytes, only ${available} follow`, 6);
  }
  if (length < available) {
    throw new DlmsError(
      'TRAILING_BYTES',
      `${available - length} bytes after the ${length}-byte APDU the wrapper announces`,
      WRAPPER_HEADER_LENGTH + length,
    );
  }
  return {
    version,
    sourceWPort: u16(2),
    destinationWPort: u16(4),
    apdu: new Uint8Array(bytes.subarray(WRAPPER_HEADER_LENGTH)),
  };
}

/** Puts the wrapper header in front of `apdu` (1..65535 bytes). */
export function encodeWrapper(frame: {
  version?: number;
  sourceWPort: number;
  destinationWPort: number;
  apdu: Uint8Array;
}): Buffer {
  const { version = WRAPPER_VERSION, sourceWPort, destinationWPort, apdu } = frame;
  for (const [name, v] of [
    ['version', version],
    ['sourceWPort', sourceWPort],
    ['destinationWPort', destinationWPort],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff) {
      throw new DlmsError('BAD_VALUE', `${name} must be an integer 0..65535, not ${String(v)}`);
    }
  }
  if (version !== WRAPPER_VERSION) throw new DlmsError('BAD_VALUE', `only wrapper version ${WRAPPER_VERSION} exists, not ${version}`);
  if (!(apdu instanceof Uint8Array)) throw new DlmsError('BAD_VALUE', 'apdu must be a Uint8Array');
  if (apdu.length === 0 || apdu.length > 0xffff) {
    throw new DlmsError('BAD_LENGTH', `a wrapped APDU must be 1..65535 bytes, not ${apdu.length}`);
  }
  const out = Buffer.alloc(WRAPPER_HEADER_LENGTH + apdu.length);
  out.writeUInt16BE(version, 0);
  out.writeUInt16BE(sourceWPort, 2);
  out.writeUInt16BE(destinationWPort, 4);
  out.writeUInt16BE(apdu.length, 6);
  out.set(apdu, WRAPPER_HEADER_LENGTH);
  return out;
}
