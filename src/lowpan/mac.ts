import { LowpanError } from './errors.js';

/**
 * IEEE 802.15.4 MAC frames as the meters' radios hand them over the SLIP link:
 * frame versions 2003, 2006 and 2015, short and extended addresses, PAN ID
 * compression (including the 2015 table), sequence number suppression and
 * information elements (skipped, reported). MAC security is refused: the
 * radio terminates it, so a secured frame reaching the gateway is a
 * misconfiguration worth a typed error rather than garbage decoded as IPv6.
 */

/**
 * A link-layer address. Extended addresses travel little-endian on the air
 * but are shown big-endian, as printed on the meter's label (EUI-64), so that
 * the string matches what field engineers type.
 */
export type MacAddress =
  | { readonly mode: 'short'; readonly short: number }
  | { readonly mode: 'extended'; readonly eui64: string };

/** The broadcast short address: frames to it are not acknowledged and reach every neighbour. */
export const BROADCAST_SHORT_ADDRESS = 0xffff;

export type MacFrameKind = 'beacon' | 'data' | 'ack' | 'command';

/** 0 = 802.15.4-2003, 1 = 802.15.4-2006, 2 = 802.15.4-2015 (the Frame Version field). */
export type MacFrameVersion = 0 | 1 | 2;

/** A header information element (2015 frames), reported so that a capture can be explained, not interpreted. */
export interface HeaderIe {
  readonly elementId: number;
  readonly length: number;
}

/** A payload information element (2015 frames): group and length only. */
export interface PayloadIe {
  readonly groupId: number;
  readonly length: number;
}

export interface MacHeader {
  readonly kind: MacFrameKind;
  readonly frameVersion: MacFrameVersion;
  readonly framePending: boolean;
  readonly ackRequest: boolean;
  readonly panIdCompression: boolean;
  /** Absent when a 2015 frame suppresses it. */
  readonly sequenceNumber?: number;
  /** The destination PAN as carried; absent when the addressing mode elides it. */
  readonly dstPan?: number;
  readonly dst?: MacAddress;
  /** The source PAN: carried, or taken from dstPan when PAN ID compression elides it. */
  readonly srcPan?: number;
  readonly src?: MacAddress;
  readonly headerIes: readonly HeaderIe[];
  readonly payloadIes: readonly PayloadIe[];
}

export interface MacFrame extends MacHeader {
  /** Offset of the MAC payload (after the addressing fields and any IEs) in the decoded bytes. */
  readonly payloadOffset: number;
  /** The MAC payload, a view into the decoded bytes (no FCS). */
  readonly payload: Uint8Array;
  /** The verified FCS, when decoded with `fcs: true`. */
  readonly fcs?: number;
}

export interface MacDecodeOptions {
  /**
   * The frame ends in the 2-byte FCS, to be verified and stripped. Off by
   * default: on the SLIP link the radio has already checked and removed it;
   * pcap files with LINKTYPE_IEEE802_15_4_WITHFCS carry it.
   */
  fcs?: boolean;
}

export interface MacFrameInit {
  kind?: MacFrameKind;
  /** Default 1 (2006), which every 6LoWPAN stack and dissector reads. */
  frameVersion?: MacFrameVersion;
  /** Default 0. */
  sequenceNumber?: number;
  /** Only for frame version 2: leave the sequence number out. */
  suppressSequenceNumber?: boolean;
  /** The PAN the frame belongs to (the destination PAN). */
  panId?: number;
  /** A different source PAN (inter-PAN frames); by default the same as panId, then compressed away. */
  srcPanId?: number;
  dst?: MacAddress;
  src?: MacAddress;
  ackRequest?: boolean;
  framePending?: boolean;
}

export interface MacEncodeOptions {
  /** Append the 2-byte FCS (for pcap files and radios that want it from the host). */
  fcs?: boolean;
}

/** The largest PHY payload of the 2.4 GHz and sub-GHz O-QPSK/BPSK PHYs (aMaxPHYPacketSize), FCS included. */
export const MAX_FRAME_SIZE = 127;
/** Bytes of FCS that every over-the-air frame spends, whether or not the SLIP link carries them. */
export const FCS_LENGTH = 2;

const FRAME_KINDS: readonly MacFrameKind[] = ['beacon', 'data', 'ack', 'command'];
const HT1 = 0x7e;
const HT2 = 0x7f;
const PAYLOAD_IE_TERMINATION = 0x0f;

/** CRC-16/KERMIT (ITU-T polynomial, reflected, init 0): the FCS of 802.15.4 frames. */
export function crc16Kermit(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let crc = 0;
  for (let i = start; i < end; i++) {
    crc ^= bytes[i] ?? 0;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0x8408 : crc >>> 1;
  }
  return crc;
}

export function shortAddress(short: number): MacAddress {
  if (!Number.isInteger(short) || short < 0 || short > 0xffff) throw new LowpanError('BAD_ADDRESS', `short address ${short} is not 0..0xffff`);
  return { mode: 'short', short };
}

/** `hex`: 16 hex digits, big-endian (as printed); separators ':' and '-' are allowed. */
export function extendedAddress(hex: string): MacAddress {
  const digits = hex.replace(/[:\-\s]/g, '').replace(/^0x/i, '').toLowerCase();
  if (!/^[0-9a-f]{16}$/.test(digits)) throw new LowpanError('BAD_ADDRESS', `"${hex}" is not an EUI-64 (16 hex digits)`);
  return { mode: 'extended', eui64: digits };
}

/** 4 hex digits for a short address, 16 for an extended one (EUI-64, big-endian); ':'/'-' separators and 0x allowed. */
export function parseMacAddress(text: string): MacAddress {
  const digits = text.replace(/[:\-\s]/g, '').replace(/^0x/i, '').toLowerCase();
  if (/^[0-9a-f]{4}$/.test(digits)) return { mode: 'short', short: Number.parseInt(digits, 16) };
  if (/^[0-9a-f]{16}$/.test(digits)) return { mode: 'extended', eui64: digits };
  throw new LowpanError('BAD_ADDRESS', `"${text}" is neither a short (4 hex digits) nor an extended (16 hex digits) MAC address`);
}

export function formatMacAddress(address: MacAddress): string {
  return address.mode === 'short' ? address.short.toString(16).padStart(4, '0') : address.eui64;
}

/** The address as big-endian bytes (2 or 8): the order in which IPv6 interface identifiers are derived from it. */
export function macAddressBytes(address: MacAddress): Uint8Array {
  if (address.mode === 'short') return Uint8Array.of(address.short >>> 8, address.short & 0xff);
  return Uint8Array.from(Buffer.from(address.eui64, 'hex'));
}

export function macAddressEquals(a: MacAddress | undefined, b: MacAddress | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return formatMacAddress(a) === formatMacAddress(b) && a.mode === b.mode;
}

type AddressMode = 0 | 2 | 3;

function addressMode(address: MacAddress | undefined): AddressMode {
  return address === undefined ? 0 : address.mode === 'short' ? 2 : 3;
}

/**
 * Which PAN ID fields a frame carries. Frame versions 2003/2006: the
 * destination PAN goes with a destination address, the source PAN with a
 * source address unless compressed. Version 2015 replaces this with table
 * 7-2 of 802.15.4-2015 (7.2.1.5), which also covers frames without addresses.
 * Returns undefined for a 2015 combination the table marks invalid.
 */
function panIdFields(version: MacFrameVersion, dstMode: AddressMode, srcMode: AddressMode, compression: boolean): { dst: boolean; src: boolean } | undefined {
  if (version < 2) return { dst: dstMode !== 0, src: srcMode !== 0 && !compression };
  const dst = dstMode !== 0;
  const src = srcMode !== 0;
  if (!dst && !src) return { dst: compression, src: false };
  if (dst && !src) return { dst: !compression, src: false };
  if (!dst && src) return { dst: false, src: !compression };
  if (dstMode === 3 && srcMode === 3) return { dst: !compression, src: false };
  return { dst: true, src: !compression };
}

function readAddress(bytes: Uint8Array, at: number, mode: 2 | 3): MacAddress {
  if (mode === 2) return { mode: 'short', short: (bytes[at] ?? 0) | ((bytes[at + 1] ?? 0) << 8) };
  let hex = '';
  for (let i = 7; i >= 0; i--) hex += (bytes[at + i] ?? 0).toString(16).padStart(2, '0');
  return { mode: 'extended', eui64: hex };
}

function need(end: number, at: number, count: number, what: string): void {
  if (at + count > end) throw new LowpanError('TRUNCATED', `the frame ends inside the ${what}`, Math.min(at, end));
}

/** Decodes one MAC frame; data frames carry the 6LoWPAN payload, the others are decoded for their header only. */
export function decodeMacFrame(bytes: Uint8Array, options: MacDecodeOptions = {}): MacFrame {
  let end = bytes.length;
  let fcs: number | undefined;
  if (options.fcs) {
    if (end < FCS_LENGTH + 2) throw new LowpanError('TRUNCATED', 'a frame with FCS needs at least 4 bytes', end);
    end -= FCS_LENGTH;
    const carried = (bytes[end] ?? 0) | ((bytes[end + 1] ?? 0) << 8);
    const computed = crc16Kermit(bytes, 0, end);
    if (carried !== computed) {
      throw new LowpanError('BAD_CHECKSUM', `FCS 0x${carried.toString(16).padStart(4, '0')} does not match the frame (0x${computed.toString(16).padStart(4, '0')})`, end);
    }
    fcs = carried;
  }
  need(end, 0, 2, 'frame control field');
  const fc = (bytes[0] ?? 0) | ((bytes[1] ?? 0) << 8);
  const frameType = fc & 0x7;
  const kind = FRAME_KINDS[frameType];
  if (kind === undefined) throw new LowpanError('UNSUPPORTED', `frame type ${frameType} (multipurpose, fragment or extended) is not handled`, 0);
  if (fc & 0x08) throw new LowpanError('UNSUPPORTED', 'MAC security is enabled; the radio must terminate it', 0);
  const framePending = (fc & 0x10) !== 0;
  const ackRequest = (fc & 0x20) !== 0;
  const panIdCompression = (fc & 0x40) !== 0;
  const version = (fc >> 12) & 0x3;
  if (version === 3) throw new LowpanError('UNSUPPORTED', 'frame version 3 is reserved', 1);
  const frameVersion = version as MacFrameVersion;
  // Sequence number suppression and IE present exist only from 802.15.4e on (frame version 2); before, the bits are reserved.
  const seqSuppressed = frameVersion === 2 && (fc & 0x100) !== 0;
  const iePresent = frameVersion === 2 && (fc & 0x200) !== 0;
  const dstMode = (fc >> 10) & 0x3;
  const srcMode = (fc >> 14) & 0x3;
  if (dstMode === 1) throw new LowpanError('BAD_VALUE', 'destination addressing mode 1 is reserved', 1);
  if (srcMode === 1) throw new LowpanError('BAD_VALUE', 'source addressing mode 1 is reserved', 1);
  const pans = panIdFields(frameVersion, dstMode as AddressMode, srcMode as AddressMode, panIdCompression);
  if (pans === undefined) throw new LowpanError('BAD_VALUE', 'addressing modes and PAN ID compression form no valid combination', 0);

  let at = 2;
  let sequenceNumber: number | undefined;
  if (!seqSuppressed) {
    need(end, at, 1, 'sequence number');
    sequenceNumber = bytes[at++];
  }
  let dstPan: number | undefined;
  let dst: MacAddress | undefined;
  let srcPan: number | undefined;
  let src: MacAddress | undefined;
  if (pans.dst) {
    need(end, at, 2, 'destination PAN ID');
    dstPan = (bytes[at] ?? 0) | ((bytes[at + 1] ?? 0) << 8);
    at += 2;
  }
  if (dstMode !== 0) {
    const size = dstMode === 2 ? 2 : 8;
    need(end, at, size, 'destination address');
    dst = readAddress(bytes, at, dstMode as 2 | 3);
    at += size;
  }
  if (pans.src) {
    need(end, at, 2, 'source PAN ID');
    srcPan = (bytes[at] ?? 0) | ((bytes[at + 1] ?? 0) << 8);
    at += 2;
  } else if (srcMode !== 0) {
    srcPan = dstPan;
  }
  if (srcMode !== 0) {
    const size = srcMode === 2 ? 2 : 8;
    need(end, at, size, 'source address');
    src = readAddress(bytes, at, srcMode as 2 | 3);
    at += size;
  }

  const headerIes: HeaderIe[] = [];
  const payloadIes: PayloadIe[] = [];
  if (iePresent) at = skipInformationElements(bytes, at, end, headerIes, payloadIes);

  const header: MacFrame = {
    kind,
    frameVersion,
    framePending,
    ackRequest,
    panIdCompression,
    ...(sequenceNumber === undefined ? {} : { sequenceNumber }),
    ...(dstPan === undefined ? {} : { dstPan }),
    ...(dst === undefined ? {} : { dst }),
    ...(srcPan === undefined ? {} : { srcPan }),
    ...(src === undefined ? {} : { src }),
    headerIes,
    payloadIes,
    payloadOffset: at,
    payload: bytes.subarray(at, end),
    ...(fcs === undefined ? {} : { fcs }),
  };
  return header;
}

/**
 * Walks the header IEs and, after an HT1 termination, the payload IEs, and
 * returns where the MAC payload starts. Without a termination IE the IEs run
 * to the end of the frame and the payload is empty.
 */
function skipInformationElements(bytes: Uint8Array, start: number, end: number, headerIes: HeaderIe[], payloadIes: PayloadIe[]): number {
  let at = start;
  let payloadIesFollow = false;
  while (at < end) {
    need(end, at, 2, 'header IE descriptor');
    const descriptor = (bytes[at] ?? 0) | ((bytes[at + 1] ?? 0) << 8);
    if (descriptor & 0x8000) throw new LowpanError('BAD_VALUE', 'a payload IE where a header IE was expected', at);
    const length = descriptor & 0x7f;
    const elementId = (descriptor >> 7) & 0xff;
    need(end, at + 2, length, 'header IE');
    headerIes.push({ elementId, length });
    at += 2 + length;
    if (elementId === HT1) {
      payloadIesFollow = true;
      break;
    }
    if (elementId === HT2) break;
  }
  if (!payloadIesFollow) return at;
  while (at < end) {
    need(end, at, 2, 'payload IE descriptor');
    const descriptor = (bytes[at] ?? 0) | ((bytes[at + 1] ?? 0) << 8);
    if (!(descriptor & 0x8000)) throw new LowpanError('BAD_VALUE', 'a header IE where a payload IE was expected', at);
    const length = descriptor & 0x7ff;
    const groupId = (descriptor >> 11) & 0xf;
    need(end, at + 2, length, 'payload IE');
    payloadIes.push({ groupId, length });
    at += 2 + length;
    if (groupId === PAYLOAD_IE_TERMINATION) break;
  }
  return at;
}

interface HeaderPlan {
  frameControl: number;
  dstPan: boolean;
  srcPan: boolean;
  length: number;
}

function planHeader(init: MacFrameInit): HeaderPlan {
  const version = init.frameVersion ?? 1;
  if (version !== 0 && version !== 1 && version !== 2) throw new LowpanError('BAD_VALUE', `frame version ${String(version)} is not 0, 1 or 2`);
  const kind = init.kind ?? 'data';
  const frameType = FRAME_KINDS.indexOf(kind);
  if (frameType < 0) throw new LowpanError('BAD_VALUE', `frame kind "${String(kind)}" is unknown`);
  if (init.suppressSequenceNumber && version !== 2) throw new LowpanError('BAD_VALUE', 'sequence number suppression needs frame version 2 (2015)');
  for (const [name, pan] of [['panId', init.panId], ['srcPanId', init.srcPanId]] as const) {
    if (pan !== undefined && (!Number.isInteger(pan) || pan < 0 || pan > 0xffff)) throw new LowpanError('BAD_VALUE', `${name} ${pan} is not 0..0xffff`);
  }
  const dstMode = addressMode(init.dst);
  const srcMode = addressMode(init.src);
  const panId = init.panId ?? init.srcPanId;
  const interPan = init.panId !== undefined && init.srcPanId !== undefined && init.srcPanId !== init.panId;
  // Of the two settings of PAN ID compression, the shortest header that still carries every PAN the caller gave.
  let best: { compression: boolean; dst: boolean; src: boolean } | undefined;
  for (const compression of [false, true]) {
    const pans = panIdFields(version, dstMode, srcMode, compression);
    if (pans === undefined) continue;
    if (interPan && !(pans.dst && pans.src)) continue;
    if (panId !== undefined && !pans.dst && !pans.src) continue;
    if (panId === undefined && (pans.dst || pans.src)) continue;
    const count = Number(pans.dst) + Number(pans.src);
    if (best === undefined || count < Number(best.dst) + Number(best.src)) best = { compression, ...pans };
  }
  if (best === undefined) throw new LowpanError('BAD_VALUE', 'these addresses cannot carry the PAN IDs given (see 802.15.4 PAN ID compression)');
  let frameControl = frameType | (dstMode << 10) | (version << 12) | (srcMode << 14);
  if (init.framePending) frameControl |= 0x10;
  if (init.ackRequest) frameControl |= 0x20;
  if (best.compression) frameControl |= 0x40;
  if (init.suppressSequenceNumber) frameControl |= 0x100;
  const addressLength = (mode: AddressMode): number => (mode === 0 ? 0 : mode === 2 ? 2 : 8);
  const length = 2 + (init.suppressSequenceNumber ? 0 : 1) + (best.dst ? 2 : 0) + (best.src ? 2 : 0) + addressLength(dstMode) + addressLength(srcMode);
  return { frameControl, dstPan: best.dst, srcPan: best.src, length };
}

/** The MAC header length (no FCS) that encodeMacFrame writes for `init`: what the fragmenter must leave room for. */
export function macHeaderLength(init: MacFrameInit): number {
  return planHeader(init).length;
}

function writeAddress(out: Uint8Array, at: number, address: MacAddress): number {
  const be = macAddressBytes(address);
  for (let i = 0; i < be.length; i++) out[at + i] = be[be.length - 1 - i] ?? 0;
  return at + be.length;
}

export function encodeMacFrame(init: MacFrameInit, payload: Uint8Array, options: MacEncodeOptions = {}): Uint8Array {
  const plan = planHeader(init);
  const sequenceNumber = init.sequenceNumber ?? 0;
  if (!Number.isInteger(sequenceNumber) || sequenceNumber < 0 || sequenceNumber > 0xff) throw new LowpanError('BAD_VALUE', `sequence number ${sequenceNumber} is not 0..255`);
  const out = new Uint8Array(plan.length + payload.length + (options.fcs ? FCS_LENGTH : 0));
  out[0] = plan.frameControl & 0xff;
  out[1] = plan.frameControl >> 8;
  let at = 2;
  if (!init.suppressSequenceNumber) out[at++] = sequenceNumber;
  const panId = init.panId ?? init.srcPanId ?? 0;
  if (plan.dstPan) {
    out[at++] = panId & 0xff;
    out[at++] = panId >> 8;
  }
  if (init.dst) at = writeAddress(out, at, init.dst);
  if (plan.srcPan) {
    const srcPan = init.srcPanId ?? panId;
    out[at++] = srcPan & 0xff;
    out[at++] = srcPan >> 8;
  }
  if (init.src) at = writeAddress(out, at, init.src);
  out.set(payload, at);
  at += payload.length;
  if (options.fcs) {
    const crc = crc16Kermit(out, 0, at);
    out[at] = crc & 0xff;
    out[at + 1] = crc >> 8;
  }
  return out;
}
