import { LowpanError } from './errors.js';
import { macAddressBytes, type MacAddress } from './mac.js';

/**
 * The RFC 4944 dispatch byte and the two headers that may precede
 * fragmentation and compression: the mesh addressing header (a mesh-under
 * route's originator and final destination, with hops left) and the
 * LOWPAN_BC0 broadcast header (a sequence number for duplicate suppression).
 * The gateway routes route-over, so it only needs to see past them; it
 * reports them because the originator is the meter that sent the datagram,
 * and IIDs elided in the IPHC header are derived from these addresses.
 */

export type DispatchKind =
  /** 00xxxxxx: not a LoWPAN frame (another protocol shares the link). */
  | 'nalp'
  /** 0x41: an uncompressed IPv6 datagram follows. */
  | 'ipv6'
  /** 0x42: the obsolete LOWPAN_HC1 compression (RFC 6282 replaced it). */
  | 'hc1'
  /** 0x50: LOWPAN_BC0 broadcast header. */
  | 'bc0'
  /**
   * 0x40: escape to an extended dispatch. RFC 4944 had put ESC at 0x7f;
   * RFC 6282 moved it to 0x40 when it gave 011xxxxx to IPHC, where 0x7f is
   * an IPHC header with TF=11, NH=1, HLIM=11 (hop limit 255).
   */
  | 'esc'
  /** 011xxxxx: LOWPAN_IPHC. */
  | 'iphc'
  /** 10xxxxxx: mesh addressing header. */
  | 'mesh'
  /** 11000xxx: first fragment. */
  | 'frag1'
  /** 11100xxx: subsequent fragment. */
  | 'fragn'
  | 'reserved';

export function dispatchKind(byte: number): DispatchKind {
  if (byte >> 6 === 0) return 'nalp';
  if (byte === 0x41) return 'ipv6';
  if (byte === 0x42) return 'hc1';
  if (byte === 0x50) return 'bc0';
  if (byte === 0x40) return 'esc';
  if (byte >> 5 === 0b011) return 'iphc';
  if (byte >> 6 === 0b10) return 'mesh';
  if (byte >> 3 === 0b11000) return 'frag1';
  if (byte >> 3 === 0b11100) return 'fragn';
  return 'reserved';
}

export interface MeshHeader {
  /** Hops left (0..255: above 14 it travels in the Deep Hops Left byte). */
  readonly hopsLeft: number;
  /** The "very first" sender of the datagram in the mesh. */
  readonly originator: MacAddress;
  readonly finalDestination: MacAddress;
}

export interface BroadcastHeader {
  readonly sequenceNumber: number;
}

function readAddress(bytes: Uint8Array, at: number, short: boolean): MacAddress {
  // Mesh header addresses are in network byte order (RFC 4944 5.2), unlike the little-endian MAC header.
  if (short) return { mode: 'short', short: ((bytes[at] ?? 0) << 8) | (bytes[at + 1] ?? 0) };
  let hex = '';
  for (let i = 0; i < 8; i++) hex += (bytes[at + i] ?? 0).toString(16).padStart(2, '0');
  return { mode: 'extended', eui64: hex };
}

/**
 * Parses the mesh header at bytes[start]. A hops-left value of 0xF means the
 * count is in the following Deep Hops Left byte (the extension Thread and
 * Wireshark implement), so that routes longer than 14 hops stay decodable.
 */
export function decodeMeshHeader(bytes: Uint8Array, start: number, end: number): { header: MeshHeader; next: number } {
  if (start >= end) throw new LowpanError('TRUNCATED', 'the mesh header is missing', end);
  const first = bytes[start] ?? 0;
  if (first >> 6 !== 0b10) throw new LowpanError('BAD_DISPATCH', `0x${first.toString(16).padStart(2, '0')} is not a mesh header`, start);
  const originatorShort = (first & 0x20) !== 0;
  const finalShort = (first & 0x10) !== 0;
  let hopsLeft = first & 0x0f;
  let at = start + 1;
  if (hopsLeft === 0x0f) {
    if (at >= end) throw new LowpanError('TRUNCATED', 'the input ends before the Deep Hops Left byte', end);
    hopsLeft = bytes[at] ?? 0;
    at++;
  }
  const originatorLength = originatorShort ? 2 : 8;
  if (at + originatorLength > end) throw new LowpanError('TRUNCATED', 'the input ends inside the mesh originator address', at);
  const originator = readAddress(bytes, at, originatorShort);
  at += originatorLength;
  const finalLength = finalShort ? 2 : 8;
  if (at + finalLength > end) throw new LowpanError('TRUNCATED', 'the input ends inside the mesh final destination address', at);
  const finalDestination = readAddress(bytes, at, finalShort);
  at += finalLength;
  return { header: { hopsLeft, originator, finalDestination }, next: at };
}

export function encodeMeshHeader(header: MeshHeader): Uint8Array {
  const { hopsLeft } = header;
  if (!Number.isInteger(hopsLeft) || hopsLeft < 0 || hopsLeft > 0xff) throw new LowpanError('BAD_VALUE', `hops left ${hopsLeft} is not 0..255`);
  const originator = macAddressBytes(header.originator);
  const finalDestination = macAddressBytes(header.finalDestination);
  const deep = hopsLeft >= 0x0f;
  const first = 0x80 | (header.originator.mode === 'short' ? 0x20 : 0) | (header.finalDestination.mode === 'short' ? 0x10 : 0) | (deep ? 0x0f : hopsLeft);
  return Uint8Array.of(first, ...(deep ? [hopsLeft] : []), ...originator, ...finalDestination);
}

export function decodeBroadcastHeader(bytes: Uint8Array, start: number, end: number): { header: BroadcastHeader; next: number } {
  if (start >= end) throw new LowpanError('TRUNCATED', 'the broadcast header is missing', end);
  if (bytes[start] !== 0x50) throw new LowpanError('BAD_DISPATCH', `0x${(bytes[start] ?? 0).toString(16).padStart(2, '0')} is not LOWPAN_BC0`, start);
  if (start + 2 > end) throw new LowpanError('TRUNCATED', 'the input ends before the broadcast sequence number', end);
  return { header: { sequenceNumber: bytes[start + 1] ?? 0 }, next: start + 2 };
}

export function encodeBroadcastHeader(header: BroadcastHeader): Uint8Array {
  if (!Number.isInteger(header.sequenceNumber) || header.sequenceNumber < 0 || header.sequenceNumber > 0xff) {
    throw new LowpanError('BAD_VALUE', `broadcast sequence number ${header.sequenceNumber} is not 0..255`);
  }
  return Uint8Array.of(0x50, header.sequenceNumber);
}
