import { crc16X25 } from './crc.js';
import { C1218Error } from './errors.js';

/**
 * ANSI C12.18 data-link packets, pure functions over bytes (no timers, no I/O):
 *
 *   <stp 0xEE><identity><ctrl><seq-nbr><length: 2 bytes big-endian><data><crc: 2 bytes, LSB first>
 *
 * ctrl bit 7: part of a multi-packet transmission; bit 6: its first packet;
 * bit 5: toggle bit (alternates with every new packet a side sends, so that a
 * retransmission can be told from a new packet); bits 0-1: data format (C12.21,
 * 0 in C12.18). seq-nbr counts the packets still to come, down to 0.
 * Between packets a receiver answers ACK (0x06) or NAK (0x15), one byte each.
 */
export const STP = 0xee;
export const ACK = 0x06;
export const NAK = 0x15;

/** stp, identity, ctrl, seq-nbr, length. */
export const PACKET_HEADER_LENGTH = 6;
/** Header plus CRC: a packet's size is its data length plus this. */
export const PACKET_OVERHEAD = PACKET_HEADER_LENGTH + 2;
/** The packet size both sides use until negotiate agrees on another (C12.18 default). */
export const DEFAULT_PACKET_SIZE = 64;
/** The largest packet size this implementation negotiates or accepts. */
export const MAX_PACKET_SIZE = 8192;

export const CTRL_MULTI_PACKET = 0x80;
export const CTRL_FIRST_PACKET = 0x40;
export const CTRL_TOGGLE = 0x20;
export const CTRL_DATA_FORMAT_MASK = 0x03;

export interface C1218Packet {
  /** <identity>: 0 on an optical port (C12.21 uses it to address a device). */
  identity: number;
  /** The raw <ctrl> byte; packetFlags() reads its bits. */
  ctrl: number;
  /** <seq-nbr>: packets still to come in this transmission after this one. */
  sequence: number;
  data: Uint8Array;
}

export interface DecodedPacket extends C1218Packet {
  /** The packet's CRC, which with the toggle bit tells a retransmission from a new packet. */
  crc: number;
}

export interface PacketFlags {
  multiPacket: boolean;
  firstPacket: boolean;
  toggle: boolean;
  dataFormat: number;
}

export function packetFlags(ctrl: number): PacketFlags {
  return {
    multiPacket: (ctrl & CTRL_MULTI_PACKET) !== 0,
    firstPacket: (ctrl & CTRL_FIRST_PACKET) !== 0,
    toggle: (ctrl & CTRL_TOGGLE) !== 0,
    dataFormat: ctrl & CTRL_DATA_FORMAT_MASK,
  };
}

export function ctrlByte(flags: Partial<PacketFlags>): number {
  return (
    (flags.multiPacket ? CTRL_MULTI_PACKET : 0) |
    (flags.firstPacket ? CTRL_FIRST_PACKET : 0) |
    (flags.toggle ? CTRL_TOGGLE : 0) |
    ((flags.dataFormat ?? 0) & CTRL_DATA_FORMAT_MASK)
  );
}

function checkByte(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xff) throw new C1218Error('BAD_ARGUMENT', `${name} must be a byte (0..255), got ${value}`);
}

/** The packet's bytes, CRC included. Refuses empty data and data longer than a packet can carry. */
export function encodePacket(packet: C1218Packet): Uint8Array {
  checkByte('identity', packet.identity);
  checkByte('ctrl', packet.ctrl);
  checkByte('sequence', packet.sequence);
  const length = packet.data.length;
  if (length === 0) throw new C1218Error('BAD_ARGUMENT', 'a packet carries at least one data byte');
  if (length > MAX_PACKET_SIZE - PACKET_OVERHEAD) {
    throw new C1218Error('BAD_ARGUMENT', `a packet carries at most ${MAX_PACKET_SIZE - PACKET_OVERHEAD} data bytes, not ${length}`);
  }
  const out = new Uint8Array(length + PACKET_OVERHEAD);
  out[0] = STP;
  out[1] = packet.identity;
  out[2] = packet.ctrl;
  out[3] = packet.sequence;
  out[4] = length >>> 8;
  out[5] = length & 0xff;
  out.set(packet.data, PACKET_HEADER_LENGTH);
  const crc = crc16X25(out, 0, PACKET_HEADER_LENGTH + length);
  out[PACKET_HEADER_LENGTH + length] = crc & 0xff;
  out[PACKET_HEADER_LENGTH + length + 1] = crc >>> 8;
  return out;
}

/** Reads the CRC stored after `dataLength` bytes of data in a packet starting at `start`. */
function storedCrc(bytes: Uint8Array, start: number, dataLength: number): number {
  const at = start + PACKET_HEADER_LENGTH + dataLength;
  return (bytes[at] as number) | ((bytes[at + 1] as number) << 8);
}

function packetAt(bytes: Uint8Array, start: number, dataLength: number, crc: number): DecodedPacket {
  return {
    identity: bytes[start + 1] as number,
    ctrl: bytes[start + 2] as number,
    sequence: bytes[start + 3] as number,
    // A copy: the caller's buffer is reused as more bytes arrive.
    data: bytes.slice(start + PACKET_HEADER_LENGTH, start + PACKET_HEADER_LENGTH + dataLength),
    crc,
  };
}

/**
 * Exactly one packet, strictly: throws C1218Error (TRUNCATED, BAD_VALUE for a
 * missing <stp>, BAD_LENGTH, BAD_CRC, TRAILING_BYTES) with the offset where it
 * went wrong.
 */
export function decodePacket(bytes: Uint8Array, maxPacketSize = MAX_PACKET_SIZE): DecodedPacket {
  if (bytes.length === 0) throw new C1218Error('TRUNCATED', 'no bytes: a packet starts with 0xEE', 0);
  if (bytes[0] !== STP) throw new C1218Error('BAD_VALUE', `a packet starts with 0xEE, not 0x${(bytes[0] as number).toString(16).padStart(2, '0')}`, 0);
  if (bytes.length < PACKET_HEADER_LENGTH) throw new C1218Error('TRUNCATED', 'the packet header is incomplete', bytes.length);
  const length = ((bytes[4] as number) << 8) | (bytes[5] as number);
  if (length === 0 || length > maxPacketSize - PACKET_OVERHEAD) {
    throw new C1218Error('BAD_LENGTH', `data length ${length} is outside 1..${maxPacketSize - PACKET_OVERHEAD}`, 4);
  }
  const total = length + PACKET_OVERHEAD;
  if (bytes.length < total) throw new C1218Error('TRUNCATED', `the packet claims ${length} data bytes; only ${bytes.length} bytes in all`, bytes.length);
  const crc = crc16X25(bytes, 0, PACKET_HEADER_LENGTH + length);
  if (crc !== storedCrc(bytes, 0, length)) throw new C1218Error('BAD_CRC', 'the CRC does not match the packet', PACKET_HEADER_LENGTH + length);
  if (bytes.length > total) throw new C1218Error('TRAILING_BYTES', `${bytes.length - total} bytes after the packet`, total);
  return packetAt(bytes, 0, length, crc);
}

/** What the byte stream between two C12.18 devices is made of. */
export type LinkUnit =
  | { kind: 'ack'; offset: number }
  | { kind: 'nak'; offset: number }
  | { kind: 'packet'; offset: number; packet: DecodedPacket }
  /** Bytes that were skipped: `offset` and `length` in stream bytes, `error.code` says why. */
  | { kind: 'error'; offset: number; length: number; error: C1218Error };

export interface PacketDecoderOptions {
  /** Packets claiming more than this many bytes in all are refused as BAD_LENGTH (default MAX_PACKET_SIZE). */
  maxPacketSize?: number;
}

/**
 * Splits a byte stream into packets, ACKs and NAKs as bytes arrive, in any
 * chunking. Never throws on input: garbage, impossible lengths and CRC
 * failures come out as 'error' units (with the stream offset where the skipped
 * bytes began) and decoding resynchronises on the next start of packet.
 *
 * A packet whose CRC fails is skipped whole, as a receiving device does (its
 * data could hold bytes that look like ACK or NAK), unless a valid packet
 * starts inside it (a retransmission after a corrupted length field).
 * A packet still incomplete waits for more bytes; the link layer calls
 * flushPending() when the inter-character timeout says they will not come.
 */
export class PacketDecoder {
  private pending: Uint8Array = new Uint8Array(0);
  /** Stream offset of pending[0]. */
  private base = 0;
  maxPacketSize: number;

  constructor(options: PacketDecoderOptions = {}) {
    this.maxPacketSize = options.maxPacketSize ?? MAX_PACKET_SIZE;
  }

  /** Bytes of an incomplete packet held until the rest arrives. */
  get pendingBytes(): number {
    return this.pending.length;
  }

  /** Stream bytes seen so far. */
  get bytesSeen(): number {
    return this.base + this.pending.length;
  }

  push(chunk: Uint8Array): LinkUnit[] {
    let buffer: Uint8Array;
    if (this.pending.length === 0) buffer = chunk;
    else {
      buffer = new Uint8Array(this.pending.length + chunk.length);
      buffer.set(this.pending);
      buffer.set(chunk, this.pending.length);
    }
    const units: LinkUnit[] = [];
    const consumed = this.scan(buffer, units);
    this.pending = buffer.slice(consumed);
    this.base += consumed;
    return units;
  }

  /**
   * Gives up on the incomplete packet held (the inter-character timeout
   * expired): reported as INTERCHAR_TIMEOUT, then any valid packet found
   * inside it is decoded.
   */
  flushPending(): LinkUnit[] {
    const buffer = this.pending;
    if (buffer.length === 0) return [];
    const units: LinkUnit[] = [];
    const resync = this.findValidPacket(buffer, 1, buffer.length) ?? buffer.length;
    units.push({
      kind: 'error',
      offset: this.base,
      length: resync,
      error: new C1218Error('INTERCHAR_TIMEOUT', `an incomplete packet of ${buffer.length} bytes stopped arriving`, this.base),
    });
    const rest = buffer.subarray(resync);
    this.base += resync;
    const consumed = this.scan(rest, units);
    this.pending = rest.slice(consumed);
    this.base += consumed;
    return units;
  }

  /** Decodes what `buffer` (starting at stream offset this.base) holds; returns how many bytes it used up. */
  private scan(buffer: Uint8Array, units: LinkUnit[]): number {
    const maxData = this.maxPacketSize - PACKET_OVERHEAD;
    let i = 0;
    while (i < buffer.length) {
      const byte = buffer[i] as number;
      if (byte === ACK) {
        units.push({ kind: 'ack', offset: this.base + i });
        i++;
        continue;
      }
      if (byte === NAK) {
        units.push({ kind: 'nak', offset: this.base + i });
        i++;
        continue;
      }
      if (byte !== STP) {
        let end = i + 1;
        while (end < buffer.length && buffer[end] !== STP && buffer[end] !== ACK && buffer[end] !== NAK) end++;
        units.push({
          kind: 'error',
          offset: this.base + i,
          length: end - i,
          error: new C1218Error('GARBAGE', `${end - i} bytes outside any packet`, this.base + i),
        });
        i = end;
        continue;
      }
      if (buffer.length - i < PACKET_HEADER_LENGTH) break;
      const length = ((buffer[i + 4] as number) << 8) | (buffer[i + 5] as number);
      if (length === 0 || length > maxData) {
        units.push({
          kind: 'error',
          offset: this.base + i,
          length: 1,
          error: new C1218Error('BAD_LENGTH', `a packet claiming ${length} data bytes (1..${maxData} allowed)`, this.base + i),
        });
        i++;
        continue;
      }
      const total = length + PACKET_OVERHEAD;
      if (buffer.length - i < total) break;
      const crc = crc16X25(buffer, i, i + PACKET_HEADER_LENGTH + length);
      if (crc === storedCrc(buffer, i, length)) {
        units.push({ kind: 'packet', offset: this.base + i, packet: packetAt(buffer, i, length, crc) });
        i += total;
        continue;
      }
      const resync = this.findValidPacket(buffer, i + 1, i + total) ?? i + total;
      units.push({
        kind: 'error',
        offset: this.base + i,
        length: resync - i,
        error: new C1218Error('BAD_CRC', `a ${total}-byte packet whose CRC does not match`, this.base + i),
      });
      i = resync;
    }
    return i;
  }

  /** Index in [from, to) where a complete packet with a good CRC starts, if any. */
  private findValidPacket(buffer: Uint8Array, from: number, to: number): number | undefined {
    const maxData = this.maxPacketSize - PACKET_OVERHEAD;
    for (let at = buffer.indexOf(STP, from); at !== -1 && at < to; at = buffer.indexOf(STP, at + 1)) {
      if (buffer.length - at < PACKET_HEADER_LENGTH) return undefined;
      const length = ((buffer[at + 4] as number) << 8) | (buffer[at + 5] as number);
      if (length === 0 || length > maxData || buffer.length - at < length + PACKET_OVERHEAD) continue;
      if (crc16X25(buffer, at, at + PACKET_HEADER_LENGTH + length) === storedCrc(buffer, at, length)) return at;
    }
    return undefined;
  }
}
