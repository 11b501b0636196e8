import { LowpanError } from './errors.js';
import { decodeFragmentHeader, fragmentDatagram, type Fragment, type FragmentHeader } from './frag.js';
import { decodeBroadcastHeader, decodeMeshHeader, dispatchKind, type BroadcastHeader, type MeshHeader } from './headers.js';
import {
  buildUdpDatagram,
  compressIphc,
  decompressIphc,
  describeHeaders,
  DISPATCH_IPV6,
  finishDatagram,
  IPV6_HEADER_LENGTH,
  parseIpv6Datagram,
  type ContextTable,
  type Ipv6Datagram,
  type Ipv6Header,
  type LinkAddresses,
  type UdpDatagramInit,
  type UdpHeader,
} from './iphc.js';
import { decodeMacFrame, encodeMacFrame, FCS_LENGTH, macHeaderLength, MAX_FRAME_SIZE, parseMacAddress, type MacAddress, type MacFrame, type MacFrameInit, type MacFrameVersion } from './mac.js';

/**
 * The whole path between a radio frame and a UDP datagram: MAC header, the
 * optional mesh and broadcast headers, then either a complete datagram
 * (IPHC-compressed or uncompressed) or one fragment of one, to be handed to
 * a Reassembler.
 */

export interface FrameDecodeOptions {
  /** The frame ends in the FCS, to be verified (pcap files); off on the SLIP link, where the radio checked it. */
  fcs?: boolean;
  /** The PAN's shared contexts for stateful address compression. */
  contexts?: ContextTable;
  /** Verify inline UDP checksums (default true). */
  verifyUdpChecksum?: boolean;
}

/** What a first fragment's decompressed headers say, before the rest of the datagram has arrived. */
export interface FirstFragmentHeaders {
  readonly ipv6: Ipv6Header;
  readonly udp?: Omit<UdpHeader, 'checksum'> & { readonly checksum?: number };
}

export type LowpanContent =
  | { readonly kind: 'datagram'; readonly dispatch: 'iphc' | 'ipv6'; readonly datagram: Ipv6Datagram }
  | { readonly kind: 'fragment'; readonly header: FragmentHeader; readonly fragment: Fragment; readonly headers?: FirstFragmentHeaders }
  /** A beacon, acknowledgement or MAC command: no 6LoWPAN payload. */
  | { readonly kind: 'none' };

export interface DecodedFrame {
  readonly mac: MacFrame;
  readonly mesh?: MeshHeader;
  readonly broadcast?: BroadcastHeader;
  readonly lowpan: LowpanContent;
}

export interface DecodedLowpan {
  readonly mesh?: MeshHeader;
  readonly broadcast?: BroadcastHeader;
  readonly lowpan: Exclude<LowpanContent, { kind: 'none' }>;
}

/** Decodes one radio frame as the SLIP link delivers it (or, with `fcs`, as a pcap stores it). */
export function decodeFrame(bytes: Uint8Array, options: FrameDecodeOptions = {}): DecodedFrame {
  const mac = decodeMacFrame(bytes, { fcs: options.fcs ?? false });
  if (mac.kind !== 'data') return { mac, lowpan: { kind: 'none' } };
  const end = mac.payloadOffset + mac.payload.length;
  return { mac, ...decodeLowpan(bytes, mac.payloadOffset, end, { src: mac.src, dst: mac.dst }, options) };
}

/**
 * Decodes the 6LoWPAN payload in bytes[start, end) (offsets in errors are
 * absolute in `bytes`). `link` gives the MAC addresses that elided IPv6
 * addresses are derived from; a mesh header replaces them with its
 * originator and final destination (RFC 4944 11).
 */
export function decodeLowpan(bytes: Uint8Array, start: number, end: number, link: LinkAddresses, options: FrameDecodeOptions = {}): DecodedLowpan {
  let at = start;
  let mesh: MeshHeader | undefined;
  let broadcast: BroadcastHeader | undefined;
  let addresses = link;
  const verifyUdpChecksum = options.verifyUdpChecksum ?? true;
  const extras = (): { mesh?: MeshHeader; broadcast?: BroadcastHeader } => ({ ...(mesh ? { mesh } : {}), ...(broadcast ? { broadcast } : {}) });
  for (;;) {
    if (at >= end) throw new LowpanError('TRUNCATED', at === start ? 'the data frame has no 6LoWPAN payload' : 'the input ends before the next dispatch', end);
    const dispatch = bytes[at] ?? 0;
    const kind = dispatchKind(dispatch);
    switch (kind) {
      case 'mesh': {
        if (mesh || broadcast) throw new LowpanError('BAD_DISPATCH', 'a mesh header must come first', at);
        const decoded = decodeMeshHeader(bytes, at, end);
        mesh = decoded.header;
        addresses = { src: mesh.originator, dst: mesh.finalDestination };
        at = decoded.next;
        continue;
      }
      case 'bc0': {
        if (broadcast) throw new LowpanError('BAD_DISPATCH', 'a second broadcast header', at);
        const decoded = decodeBroadcastHeader(bytes, at, end);
        broadcast = decoded.header;
        at = decoded.next;
        continue;
      }
      case 'frag1':
      case 'fragn':
        return { ...extras(), lowpan: decodeFragment(bytes, at, end, addresses, options) };
      case 'iphc': {
        const decoded = decompressIphc(bytes, at, end, { link: addresses, ...(options.contexts ? { contexts: options.contexts } : {}) });
        const datagram = concat(decoded.headers, bytes.subarray(decoded.payloadOffset, end));
        let finished: Ipv6Datagram;
        try {
          finished = finishDatagram(datagram, decoded.udpChecksumElided, { verifyUdpChecksum });
        } catch (err) {
          if (!(err instanceof LowpanError) || err.offset === undefined) throw err;
          // Point into the input: bytes carried inline map back one to one, decompressed ones to the header that stood for them.
          const inline = err.offset >= decoded.headers.length;
          const offset = inline ? Math.min(end, decoded.payloadOffset + err.offset - decoded.headers.length) : (decoded.nhcOffset ?? at);
          throw new LowpanError(err.code, err.detail, offset);
        }
        return { ...extras(), lowpan: { kind: 'datagram', dispatch: 'iphc', datagram: finished } };
      }
      case 'ipv6':
        return { ...extras(), lowpan: { kind: 'datagram', dispatch: 'ipv6', datagram: parseIpv6Datagram(bytes, at + 1, end, { verifyUdpChecksum }) } };
      case 'hc1':
        throw new LowpanError('UNSUPPORTED', 'LOWPAN_HC1 compression (obsoleted by RFC 6282) is not supported', at);
      case 'esc':
        throw new LowpanError('UNSUPPORTED', 'extended dispatch (ESC) is not supported', at);
      case 'nalp':
        throw new LowpanError('BAD_DISPATCH', `0x${hex2(dispatch)}: not a LoWPAN frame (NALP)`, at);
      default:
        throw new LowpanError('BAD_DISPATCH', `0x${hex2(dispatch)} is a reserved dispatch`, at);
    }
  }
}

function decodeFragment(bytes: Uint8Array, start: number, end: number, link: LinkAddresses, options: FrameDecodeOptions): Extract<LowpanContent, { kind: 'fragment' }> {
  const { header, next } = decodeFragmentHeader(bytes, start, end);
  if (header.datagramSize < IPV6_HEADER_LENGTH) throw new LowpanError('BAD_LENGTH', `datagram size ${header.datagramSize} is smaller than an IPv6 header`, start);
  const base = { kind: header.kind, src: link.src, dst: link.dst, datagramSize: header.datagramSize, datagramTag: header.datagramTag, offset: header.offset };
  if (header.kind === 'FRAGN') {
    if (next >= end) throw new LowpanError('TRUNCATED', 'a subsequent fragment without data', end);
    const data = bytes.slice(next, end);
    if (header.offset + data.length > header.datagramSize) {
      throw new LowpanError('BAD_LENGTH', `fragment bytes ${header.offset}..${header.offset + data.length} run past datagram size ${header.datagramSize}`, start + 4);
    }
    return { kind: 'fragment', header, fragment: { ...base, data, udpChecksumElided: false } };
  }
  if (next >= end) throw new LowpanError('TRUNCATED', 'a first fragment without a datagram header', end);
  const inner = bytes[next] ?? 0;
  const innerKind = dispatchKind(inner);
  let data: Uint8Array;
  let udpChecksumElided = false;
  if (innerKind === 'iphc') {
    const decoded = decompressIphc(bytes, next, end, { link, datagramSize: header.datagramSize, ...(options.contexts ? { contexts: options.contexts } : {}) });
    data = concat(decoded.headers, bytes.subarray(decoded.payloadOffset, end));
    udpChecksumElided = decoded.udpChecksumElided;
  } else if (innerKind === 'ipv6') {
    data = bytes.slice(next + 1, end);
    if (data.length === 0) throw new LowpanError('TRUNCATED', 'a first fragment without IPv6 bytes', end);
  } else if (innerKind === 'hc1') {
    throw new LowpanError('UNSUPPORTED', 'LOWPAN_HC1 compression (obsoleted by RFC 6282) is not supported', next);
  } else {
    throw new LowpanError('BAD_DISPATCH', `0x${hex2(inner)} cannot follow a first fragment header`, next);
  }
  if (data.length > header.datagramSize) throw new LowpanError('BAD_LENGTH', `the first fragment holds ${data.length} bytes of a ${header.datagramSize}-byte datagram`, start);
  const fragment: Fragment = { ...base, data, udpChecksumElided };
  if (data.length < IPV6_HEADER_LENGTH) return { kind: 'fragment', header, fragment };
  const described = describeHeaders(data.subarray(0, Math.min(data.length, IPV6_HEADER_LENGTH + 8)));
  const headers: FirstFragmentHeaders = described.udp
    ? { ipv6: described.ipv6, udp: udpChecksumElided ? { srcPort: described.udp.srcPort, dstPort: described.udp.dstPort, length: described.udp.length } : described.udp }
    : { ipv6: described.ipv6 };
  return { kind: 'fragment', header, fragment, headers };
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function hex2(byte: number): string {
  return byte.toString(16).padStart(2, '0');
}

// ---------------------------------------------------------------- encoding

export interface DatagramInit extends UdpDatagramInit {
  /** The sender's MAC address: a MacAddress, or 4 (short) or 16 (EUI-64) hex digits. */
  readonly srcMac: MacAddress | string;
  readonly dstMac: MacAddress | string;
  readonly panId: number;
  /** Sequence number of the first frame; each further fragment takes the next one. Default 0. */
  readonly sequenceNumber?: number;
  /**
   * The RFC 4944 datagram tag for a fragmented datagram. Default 0: the
   * caller must count it up per datagram so that a receiver keeps
   * consecutive datagrams apart.
   */
  readonly datagramTag?: number;
  /** Default 1 (802.15.4-2006). */
  readonly frameVersion?: MacFrameVersion;
  readonly ackRequest?: boolean;
}

export interface FrameEncodeOptions {
  contexts?: ContextTable;
  /** Append the FCS to each frame (for pcap files); the 2 bytes count against the frame size either way. */
  fcs?: boolean;
  /** Elide the UDP checksum; only when an upper layer authorizes it (RFC 6282 4.3.2). Default false. */
  elideUdpChecksum?: boolean;
  /** Compress with IPHC (default) or send the uncompressed IPv6 dispatch 0x41. */
  compress?: boolean;
  /** Largest frame, FCS included (default 127, aMaxPHYPacketSize). */
  maxFrameSize?: number;
}

function toMacAddress(value: MacAddress | string): MacAddress {
  return typeof value === 'string' ? parseMacAddress(value) : value;
}

/**
 * Encodes a UDP datagram into MAC frames: one when it fits in a frame
 * (counting the 2-byte FCS whether or not it is appended), else a FRAG1 and
 * FRAGNs, each filling its frame.
 */
export function encodeDatagram(init: DatagramInit, options: FrameEncodeOptions = {}): Uint8Array[] {
  const srcMac = toMacAddress(init.srcMac);
  const dstMac = toMacAddress(init.dstMac);
  const datagram = buildUdpDatagram(init);
  let compressedHeader: Uint8Array;
  let uncompressedHeaderLength: number;
  if (options.compress ?? true) {
    const encoded = compressIphc(datagram, {
      link: { src: srcMac, dst: dstMac },
      ...(options.contexts ? { contexts: options.contexts } : {}),
      elideUdpChecksum: options.elideUdpChecksum ?? false,
    });
    compressedHeader = encoded.header;
    uncompressedHeaderLength = encoded.payloadOffset;
  } else {
    compressedHeader = Uint8Array.of(DISPATCH_IPV6);
    uncompressedHeaderLength = 0;
  }
  const rest = datagram.subarray(uncompressedHeaderLength);
  const firstSequence = init.sequenceNumber ?? 0;
  const macInit: MacFrameInit = {
    kind: 'data',
    frameVersion: init.frameVersion ?? 1,
    sequenceNumber: firstSequence,
    panId: init.panId,
    dst: dstMac,
    src: srcMac,
    ackRequest: init.ackRequest ?? false,
  };
  const maxFrameSize = options.maxFrameSize ?? MAX_FRAME_SIZE;
  const room = maxFrameSize - FCS_LENGTH - macHeaderLength(macInit);
  const fcs = { fcs: options.fcs ?? false };
  if (compressedHeader.length + rest.length <= room) return [encodeMacFrame(macInit, concat(compressedHeader, rest), fcs)];
  const fragments = fragmentDatagram({ compressedHeader, uncompressedHeaderLength, rest, datagramTag: init.datagramTag ?? 0 }, room);
  return fragments.map((fragment, i) => encodeMacFrame({ ...macInit, sequenceNumber: (firstSequence + i) & 0xff }, fragment, fcs));
}
