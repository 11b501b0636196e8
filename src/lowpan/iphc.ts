import { LowpanError } from './errors.js';
import { macAddressBytes, type MacAddress } from './mac.js';

/**
 * RFC 6282 IPv6 header compression (LOWPAN_IPHC) with the UDP next-header
 * compression (LOWPAN_NHC), and the uncompressed IPv6 datagrams both sides of
 * it work on. Decompression rebuilds the exact uncompressed datagram (so that
 * checksums and reassembly work on the bytes the meter meant); compression
 * takes an uncompressed datagram and picks the shortest encoding the link
 * addresses and the context table allow.
 */

export const IPV6_HEADER_LENGTH = 40;
export const UDP_HEADER_LENGTH = 8;
export const NEXT_HEADER_UDP = 17;

/** RFC 4944 dispatch of an uncompressed IPv6 datagram. */
export const DISPATCH_IPV6 = 0x41;

export interface Ipv6Header {
  /** DSCP and ECN as in the IPv6 header (DSCP << 2 | ECN). */
  readonly trafficClass: number;
  readonly flowLabel: number;
  readonly payloadLength: number;
  readonly nextHeader: number;
  readonly hopLimit: number;
  /** RFC 5952 text form. */
  readonly src: string;
  readonly dst: string;
}

export interface UdpHeader {
  readonly srcPort: number;
  readonly dstPort: number;
  readonly length: number;
  readonly checksum: number;
}

/** A complete IPv6 datagram: UDP with its payload, or another next header with the raw IPv6 payload. */
export interface Ipv6Datagram {
  readonly ipv6: Ipv6Header;
  readonly udp?: UdpHeader;
  /** The UDP payload for UDP, otherwise the IPv6 payload (extension headers are not parsed). */
  readonly payload: Uint8Array;
  /** The uncompressed datagram, IPv6 header first. */
  readonly bytes: Uint8Array;
}

/** One shared context (RFC 6282 3.1.1, RFC 6775 6CO): a prefix, by default /64. */
export interface LowpanContext {
  readonly prefix: string;
  readonly length?: number;
}

/**
 * The shared contexts of the PAN, indexed by context identifier 0..15: a map
 * or an array; each entry a prefix ("2001:db8:1::/64" or "2001:db8:1::",
 * which means /64) or a LowpanContext.
 */
export type ContextTable = ReadonlyMap<number, string | LowpanContext> | ReadonlyArray<string | LowpanContext | undefined>;

export interface NormalizedContext {
  readonly prefix: Uint8Array;
  readonly length: number;
}

/** The link-layer addresses IIDs are derived from: the MAC addresses, or the mesh header's originator and final destination. */
export interface LinkAddresses {
  readonly src?: MacAddress | undefined;
  readonly dst?: MacAddress | undefined;
}

// ---------------------------------------------------------------- addresses

/** Parses an IPv6 address in text form (RFC 4291 2.2, an embedded dotted IPv4 included; no zone). */
export function parseIpv6Address(text: string): Uint8Array {
  const bad = (): LowpanError => new LowpanError('BAD_ADDRESS', `"${text}" is not an IPv6 address`);
  if (typeof text !== 'string' || text.length === 0 || text.length > 45) throw bad();
  let head = text;
  let tail4: number[] = [];
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.') && lastColon >= 0) {
    const quad = text.slice(lastColon + 1).split('.');
    if (quad.length !== 4 || quad.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) throw bad();
    tail4 = quad.map(Number);
    head = text.slice(0, lastColon + 1) + '0:0';
  }
  const halves = head.split('::');
  if (halves.length > 2) throw bad();
  const groups = (part: string): number[] => {
    if (part === '') return [];
    return part.split(':').map((g) => {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw bad();
      return Number.parseInt(g, 16);
    });
  };
  const left = groups(halves[0] ?? '');
  const right = halves.length === 2 ? groups(halves[1] ?? '') : [];
  const words = halves.length === 2 ? [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right] : left;
  if (halves.length === 2 && left.length + right.length > 7) throw bad();
  if (words.length !== 8) throw bad();
  const out = new Uint8Array(16);
  words.forEach((w, i) => {
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  });
  if (tail4.length === 4) out.set(tail4, 12);
  return out;
}

/** RFC 5952 canonical text of the 16 bytes at `offset`: lower case, longest zero run (of two or more groups) as "::". */
export function formatIpv6Address(bytes: Uint8Array, offset = 0): string {
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push(((bytes[offset + 2 * i] ?? 0) << 8) | (bytes[offset + 2 * i + 1] ?? 0));
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLength && j - i >= 2) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (ws: number[]): string => ws.map((w) => w.toString(16)).join(':');
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLength))}`;
}

/** The canonical text of an address given in any valid form. */
export function normalizeIpv6Address(text: string): string {
  return formatIpv6Address(parseIpv6Address(text));
}

/**
 * The interface identifier a link-layer address stands for (RFC 6282 3.2.2):
 * an EUI-64 with the universal/local bit inverted (RFC 4291 appendix A), or
 * 0000:00ff:fe00:XXXX for a short address.
 */
export function interfaceIdentifier(address: MacAddress): Uint8Array {
  const be = macAddressBytes(address);
  if (address.mode === 'extended') {
    const iid = Uint8Array.from(be);
    iid[0] = (iid[0] ?? 0) ^ 0x02;
    return iid;
  }
  return Uint8Array.of(0, 0, 0, 0xff, 0xfe, 0, be[0] ?? 0, be[1] ?? 0);
}

/** The link-local address RFC 6282 stateless compression derives from a MAC address (fe80::IID). */
export function linkLocalAddress(address: MacAddress): string {
  const out = new Uint8Array(16);
  out[0] = 0xfe;
  out[1] = 0x80;
  out.set(interfaceIdentifier(address), 8);
  return formatIpv6Address(out);
}

// ---------------------------------------------------------------- contexts

/**
 * Parsed tables, keyed by the caller's table object and checked against a
 * signature of its entries: a gateway that learns contexts (RFC 6775 6CO)
 * may update its Map in place, and must not keep decoding with the old one.
 */
const normalizedTables = new WeakMap<object, { signature: string; contexts: ReadonlyArray<NormalizedContext | undefined> }>();

function parseContext(id: number, entry: string | LowpanContext): NormalizedContext {
  let text: string;
  let length: number | undefined;
  if (typeof entry === 'string') {
    const slash = entry.indexOf('/');
    text = slash < 0 ? entry : entry.slice(0, slash);
    if (slash >= 0) {
      const lengthText = entry.slice(slash + 1);
      if (!/^\d{1,3}$/.test(lengthText)) throw new LowpanError('BAD_CONTEXT', `context ${id}: "${entry}" has no valid prefix length`);
      length = Number(lengthText);
    }
  } else if (entry !== null && typeof entry === 'object' && typeof entry.prefix === 'string') {
    text = entry.prefix;
    length = entry.length;
  } else {
    throw new LowpanError('BAD_CONTEXT', `context ${id} is neither a prefix string nor { prefix, length }`);
  }
  length ??= 64;
  if (!Number.isInteger(length) || length < 0 || length > 128) throw new LowpanError('BAD_CONTEXT', `context ${id}: prefix length ${length} is not 0..128`);
  let prefix: Uint8Array;
  try {
    prefix = parseIpv6Address(text);
  } catch {
    throw new LowpanError('BAD_CONTEXT', `context ${id}: "${text}" is not an IPv6 prefix`);
  }
  return { prefix: maskPrefix(prefix, length), length };
}

function maskPrefix(address: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) {
    const bits = Math.max(0, Math.min(8, length - 8 * i));
    out[i] = (address[i] ?? 0) & ((0xff00 >> bits) & 0xff);
  }
  return out;
}

/** Validates a context table (ids 0..15, prefixes), parsed again only when its entries change; throws BAD_CONTEXT. */
export function normalizeContexts(table: ContextTable | undefined): ReadonlyArray<NormalizedContext | undefined> {
  if (table === undefined) return [];
  const entries: Array<[number, string | LowpanContext | undefined]> =
    table instanceof Map ? [...(table as ReadonlyMap<number, string | LowpanContext>).entries()] : [...(table as ReadonlyArray<string | LowpanContext | undefined>).entries()];
  const signature = entries.map(([id, entry]) => `${String(id)}=${typeof entry === 'object' && entry !== null ? `${String(entry.prefix)}/${String(entry.length)}` : String(entry)}`).join(',');
  const cached = normalizedTables.get(table);
  if (cached?.signature === signature) return cached.contexts;
  const contexts: Array<NormalizedContext | undefined> = new Array<NormalizedContext | undefined>(16).fill(undefined);
  for (const [id, entry] of entries) {
    if (!Number.isInteger(id) || id < 0 || id > 15) throw new LowpanError('BAD_CONTEXT', `context id ${String(id)} is not 0..15`);
    if (entry === undefined) continue;
    contexts[id] = parseContext(id, entry);
  }
  normalizedTables.set(table, { signature, contexts });
  return contexts;
}

/** `base` with its first `context.length` bits replaced by the context prefix (RFC 6282: context bits always win). */
function overlayContext(base: Uint8Array, context: NormalizedContext): Uint8Array {
  const out = Uint8Array.from(base);
  for (let i = 0; i < 16; i++) {
    const bits = Math.max(0, Math.min(8, context.length - 8 * i));
    if (bits === 0) break;
    const mask = (0xff00 >> bits) & 0xff;
    out[i] = ((context.prefix[i] ?? 0) & mask) | ((out[i] ?? 0) & ~mask & 0xff);
  }
  return out;
}

// ---------------------------------------------------------------- checksums

/** The UDP checksum (RFC 768 over the RFC 8200 8.1 pseudo-header) of the UDP header and data in `udp`, its checksum field taken as zero. */
export function udpChecksum(src: Uint8Array, dst: Uint8Array, udp: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < 16; i += 2) sum += (((src[i] ?? 0) << 8) | (src[i + 1] ?? 0)) + (((dst[i] ?? 0) << 8) | (dst[i + 1] ?? 0));
  sum += (udp.length >>> 16) + (udp.length & 0xffff) + NEXT_HEADER_UDP;
  for (let i = 0; i < udp.length; i += 2) {
    if (i === 6) continue;
    sum += ((udp[i] ?? 0) << 8) | (udp[i + 1] ?? 0);
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  const checksum = ~sum & 0xffff;
  // RFC 768: a computed zero is sent as all ones (zero means "no checksum", which IPv6 forbids).
  return checksum === 0 ? 0xffff : checksum;
}

// ---------------------------------------------------------------- uncompressed datagrams

export interface UdpDatagramInit {
  readonly src: string;
  readonly dst: string;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly payload: Uint8Array;
  /** Default 64. */
  readonly hopLimit?: number;
  /** Default 0. */
  readonly trafficClass?: number;
  /** Default 0. */
  readonly flowLabel?: number;
}

function checkInteger(name: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) throw new LowpanError('BAD_VALUE', `${name} ${value} is not 0..${max}`);
}

/** The uncompressed IPv6/UDP datagram, checksum computed. */
export function buildUdpDatagram(init: UdpDatagramInit): Uint8Array {
  checkInteger('source port', init.srcPort, 0xffff);
  checkInteger('destination port', init.dstPort, 0xffff);
  const hopLimit = init.hopLimit ?? 64;
  const trafficClass = init.trafficClass ?? 0;
  const flowLabel = init.flowLabel ?? 0;
  checkInteger('hop limit', hopLimit, 0xff);
  checkInteger('traffic class', trafficClass, 0xff);
  checkInteger('flow label', flowLabel, 0xfffff);
  const udpLength = UDP_HEADER_LENGTH + init.payload.length;
  if (udpLength > 0xffff) throw new LowpanError('TOO_LARGE', `a UDP payload of ${init.payload.length} bytes does not fit a UDP datagram`);
  const src = parseIpv6Address(init.src);
  const dst = parseIpv6Address(init.dst);
  const out = new Uint8Array(IPV6_HEADER_LENGTH + udpLength);
  const view = new DataView(out.buffer);
  view.setUint32(0, (6 << 28) | (trafficClass << 20) | flowLabel);
  view.setUint16(4, udpLength);
  out[6] = NEXT_HEADER_UDP;
  out[7] = hopLimit;
  out.set(src, 8);
  out.set(dst, 24);
  view.setUint16(40, init.srcPort);
  view.setUint16(42, init.dstPort);
  view.setUint16(44, udpLength);
  out.set(init.payload, 48);
  view.setUint16(46, udpChecksum(src, dst, out.subarray(40)));
  return out;
}

export interface DatagramParseOptions {
  /** Verify an inline UDP checksum (default true): a mismatch is BAD_CHECKSUM. */
  verifyUdpChecksum?: boolean;
  /** Report every error at this offset instead (the datagram was rebuilt from compressed input). */
  errorOffset?: number;
}

/** Parses the uncompressed IPv6 datagram in bytes[start, end); error offsets are absolute in `bytes`. */
export function parseIpv6Datagram(bytes: Uint8Array, start = 0, end = bytes.length, options: DatagramParseOptions = {}): Ipv6Datagram {
  const fail = (code: 'TRUNCATED' | 'BAD_VALUE' | 'BAD_LENGTH' | 'BAD_CHECKSUM', detail: string, at: number): LowpanError =>
    new LowpanError(code, detail, options.errorOffset ?? at);
  if (end - start < IPV6_HEADER_LENGTH) throw fail('TRUNCATED', 'the IPv6 header is incomplete', end);
  const b = (i: number): number => bytes[start + i] ?? 0;
  if (b(0) >> 4 !== 6) throw fail('BAD_VALUE', `IP version ${b(0) >> 4} is not 6`, start);
  const trafficClass = ((b(0) & 0x0f) << 4) | (b(1) >> 4);
  const flowLabel = ((b(1) & 0x0f) << 16) | (b(2) << 8) | b(3);
  const payloadLength = (b(4) << 8) | b(5);
  const nextHeader = b(6);
  const hopLimit = b(7);
  const available = end - start - IPV6_HEADER_LENGTH;
  if (payloadLength > available) throw fail('TRUNCATED', `the IPv6 payload length ${payloadLength} exceeds the ${available} bytes present`, end);
  if (payloadLength < available) throw fail('BAD_LENGTH', `the IPv6 payload length ${payloadLength} is less than the ${available} bytes present`, start + 4);
  const ipv6: Ipv6Header = {
    trafficClass,
    flowLabel,
    payloadLength,
    nextHeader,
    hopLimit,
    src: formatIpv6Address(bytes, start + 8),
    dst: formatIpv6Address(bytes, start + 24),
  };
  const datagram = bytes.subarray(start, end);
  const payloadStart = start + IPV6_HEADER_LENGTH;
  if (nextHeader !== NEXT_HEADER_UDP) return { ipv6, payload: bytes.subarray(payloadStart, end), bytes: datagram };
  if (payloadLength < UDP_HEADER_LENGTH) throw fail('TRUNCATED', 'the UDP header is incomplete', end);
  const u = (i: number): number => b(IPV6_HEADER_LENGTH + i);
  const udp: UdpHeader = { srcPort: (u(0) << 8) | u(1), dstPort: (u(2) << 8) | u(3), length: (u(4) << 8) | u(5), checksum: (u(6) << 8) | u(7) };
  if (udp.length !== payloadLength) throw fail('BAD_LENGTH', `the UDP length ${udp.length} differs from the IPv6 payload length ${payloadLength}`, payloadStart + 4);
  if (options.verifyUdpChecksum ?? true) {
    if (udp.checksum === 0) throw fail('BAD_CHECKSUM', 'a zero UDP checksum is not allowed over IPv6', payloadStart + 6);
    const computed = udpChecksum(bytes.subarray(start + 8, start + 24), bytes.subarray(start + 24, start + 40), bytes.subarray(payloadStart, end));
    if (computed !== udp.checksum) {
      throw fail('BAD_CHECKSUM', `UDP checksum 0x${udp.checksum.toString(16).padStart(4, '0')} does not match the datagram (0x${computed.toString(16).padStart(4, '0')})`, payloadStart + 6);
    }
  }
  return { ipv6, udp, payload: bytes.subarray(payloadStart + UDP_HEADER_LENGTH, end), bytes: datagram };
}

/**
 * Completes a datagram rebuilt from compressed headers: fills in the UDP
 * checksum when the sender elided it (RFC 6282 4.3.2: the decompressor must
 * compute it), then parses it. `bytes` is modified in place.
 */
export function finishDatagram(bytes: Uint8Array, udpChecksumElided: boolean, options: DatagramParseOptions = {}): Ipv6Datagram {
  if (udpChecksumElided && bytes.length >= IPV6_HEADER_LENGTH + UDP_HEADER_LENGTH && bytes[6] === NEXT_HEADER_UDP) {
    const checksum = udpChecksum(bytes.subarray(8, 24), bytes.subarray(24, 40), bytes.subarray(IPV6_HEADER_LENGTH));
    bytes[46] = checksum >> 8;
    bytes[47] = checksum & 0xff;
  }
  return parseIpv6Datagram(bytes, 0, bytes.length, options);
}

/** The fields of decompressed headers (IPv6, and UDP when present), for reporting a first fragment before the datagram is complete. */
export function describeHeaders(headers: Uint8Array): { ipv6: Ipv6Header; udp?: UdpHeader } {
  const h = (i: number): number => headers[i] ?? 0;
  const ipv6: Ipv6Header = {
    trafficClass: ((h(0) & 0x0f) << 4) | (h(1) >> 4),
    flowLabel: ((h(1) & 0x0f) << 16) | (h(2) << 8) | h(3),
    payloadLength: (h(4) << 8) | h(5),
    nextHeader: h(6),
    hopLimit: h(7),
    src: formatIpv6Address(headers, 8),
    dst: formatIpv6Address(headers, 24),
  };
  if (headers.length < IPV6_HEADER_LENGTH + UDP_HEADER_LENGTH || ipv6.nextHeader !== NEXT_HEADER_UDP) return { ipv6 };
  const u = (i: number): number => h(IPV6_HEADER_LENGTH + i);
  return { ipv6, udp: { srcPort: (u(0) << 8) | u(1), dstPort: (u(2) << 8) | u(3), length: (u(4) << 8) | u(5), checksum: (u(6) << 8) | u(7) } };
}

// ---------------------------------------------------------------- decompression

export interface IphcDecodeOptions {
  readonly link?: LinkAddresses;
  readonly contexts?: ContextTable;
  /**
   * The uncompressed size of the whole datagram when the compressed header
   * opens a FRAG1 (the fragment header says it); otherwise the datagram ends
   * with the input and its size follows from it.
   */
  readonly datagramSize?: number;
}

/** Decompressed headers of an IPHC datagram (or first fragment). */
export interface IphcDecoded {
  /** The uncompressed IPv6 header and, after UDP NHC, the UDP header, with lengths filled in. */
  readonly headers: Uint8Array;
  /** Offset in the input where the (uncompressed) rest of the payload starts. */
  readonly payloadOffset: number;
  /** The sender elided the UDP checksum: compute it once the datagram is complete. */
  readonly udpChecksumElided: boolean;
  /** Offset of the UDP NHC byte, when present: where checksum errors of the datagram are reported. */
  readonly nhcOffset?: number;
  /** Header fields as decompressed, before lengths are known, for reporting. */
  readonly nextHeader: number;
}

const LINK_LOCAL_PREFIX = Uint8Array.of(0xfe, 0x80, 0, 0, 0, 0, 0, 0);
const SHORT_IID_PREFIX = Uint8Array.of(0, 0, 0, 0xff, 0xfe, 0);

/** Decompresses the LOWPAN_IPHC header (and a UDP NHC) that starts at bytes[start]; input ends at `end`. */
export function decompressIphc(bytes: Uint8Array, start: number, end: number, options: IphcDecodeOptions = {}): IphcDecoded {
  const need = (at: number, count: number, what: string): void => {
    if (at + count > end) throw new LowpanError('TRUNCATED', `the input ends inside the ${what}`, Math.min(at, end));
  };
  need(start, 2, 'IPHC base header');
  const b0 = bytes[start] ?? 0;
  const b1 = bytes[start + 1] ?? 0;
  if (b0 >> 5 !== 0b011) throw new LowpanError('BAD_DISPATCH', `0x${b0.toString(16).padStart(2, '0')} is not an IPHC dispatch`, start);
  const tf = (b0 >> 3) & 3;
  const nhCompressed = (b0 & 0x04) !== 0;
  const hlim = b0 & 3;
  const cid = (b1 & 0x80) !== 0;
  const sac = (b1 & 0x40) !== 0;
  const sam = (b1 >> 4) & 3;
  const multicast = (b1 & 0x08) !== 0;
  const dac = (b1 & 0x04) !== 0;
  const dam = b1 & 3;
  let at = start + 2;
  let sci = 0;
  let dci = 0;
  if (cid) {
    need(at, 1, 'context identifier extension');
    sci = (bytes[at] ?? 0) >> 4;
    dci = (bytes[at] ?? 0) & 0x0f;
    at++;
  }
  const cidOffset = cid ? start + 2 : start + 1;
  const contexts = options.contexts === undefined ? [] : normalizeContexts(options.contexts);

  let ecn = 0;
  let dscp = 0;
  let flowLabel = 0;
  if (tf === 0) {
    need(at, 4, 'traffic class and flow label');
    ecn = (bytes[at] ?? 0) >> 6;
    dscp = (bytes[at] ?? 0) & 0x3f;
    flowLabel = (((bytes[at + 1] ?? 0) & 0x0f) << 16) | ((bytes[at + 2] ?? 0) << 8) | (bytes[at + 3] ?? 0);
    at += 4;
  } else if (tf === 1) {
    need(at, 3, 'ECN and flow label');
    ecn = (bytes[at] ?? 0) >> 6;
    flowLabel = (((bytes[at] ?? 0) & 0x0f) << 16) | ((bytes[at + 1] ?? 0) << 8) | (bytes[at + 2] ?? 0);
    at += 3;
  } else if (tf === 2) {
    need(at, 1, 'traffic class');
    ecn = (bytes[at] ?? 0) >> 6;
    dscp = (bytes[at] ?? 0) & 0x3f;
    at += 1;
  }
  let nextHeader = 0;
  if (!nhCompressed) {
    need(at, 1, 'next header');
    nextHeader = bytes[at] ?? 0;
    at++;
  }
  let hopLimit: number;
  if (hlim === 0) {
    need(at, 1, 'hop limit');
    hopLimit = bytes[at] ?? 0;
    at++;
  } else {
    hopLimit = hlim === 1 ? 1 : hlim === 2 ? 64 : 255;
  }

  const inline = (count: number, what: string): Uint8Array => {
    need(at, count, what);
    const out = bytes.subarray(at, at + count);
    at += count;
    return out;
  };
  const context = (id: number): NormalizedContext => {
    const found = contexts[id];
    if (found === undefined) throw new LowpanError('BAD_CONTEXT', `context ${id} is not configured`, cidOffset);
    return found;
  };
  const fromLink = (address: MacAddress | undefined, which: string): Uint8Array => {
    if (address === undefined) throw new LowpanError('BAD_VALUE', `the ${which} address is elided but the frame has no ${which} link-layer address`, start + 1);
    return interfaceIdentifier(address);
  };
  const withIid = (prefix: Uint8Array, iid: Uint8Array): Uint8Array => {
    const out = new Uint8Array(16);
    out.set(prefix, 0);
    out.set(iid, 8);
    return out;
  };
  const shortIid = (inline16: Uint8Array): Uint8Array => Uint8Array.of(...SHORT_IID_PREFIX, inline16[0] ?? 0, inline16[1] ?? 0);

  const unicast = (stateful: boolean, mode: number, ctxId: number, link: MacAddress | undefined, which: string): Uint8Array => {
    if (!stateful) {
      if (mode === 0) return Uint8Array.from(inline(16, `${which} address`));
      if (mode === 1) return withIid(LINK_LOCAL_PREFIX, inline(8, `${which} interface identifier`));
      if (mode === 2) return withIid(LINK_LOCAL_PREFIX, shortIid(inline(2, `${which} short address`)));
      return withIid(LINK_LOCAL_PREFIX, fromLink(link, which));
    }
    if (mode === 0) {
      if (which === 'source') return new Uint8Array(16);
      throw new LowpanError('BAD_VALUE', 'DAC=1 with DAM=00 is reserved', start + 1);
    }
    const ctx = context(ctxId);
    if (mode === 1) return overlayContext(withIid(new Uint8Array(8), inline(8, `${which} interface identifier`)), ctx);
    if (mode === 2) return overlayContext(withIid(new Uint8Array(8), shortIid(inline(2, `${which} short address`))), ctx);
    return overlayContext(withIid(new Uint8Array(8), fromLink(link, which)), ctx);
  };

  const src = unicast(sac, sam, sci, options.link?.src, 'source');
  let dst: Uint8Array;
  if (!multicast) {
    dst = unicast(dac, dam, dci, options.link?.dst, 'destination');
  } else if (!dac) {
    dst = new Uint8Array(16);
    if (dam === 0) {
      dst.set(inline(16, 'multicast destination'));
    } else if (dam === 1) {
      const carried = inline(6, 'multicast destination');
      dst[0] = 0xff;
      dst[1] = carried[0] ?? 0;
      dst.set(carried.subarray(1), 11);
    } else if (dam === 2) {
      const carried = inline(4, 'multicast destination');
      dst[0] = 0xff;
      dst[1] = carried[0] ?? 0;
      dst.set(carried.subarray(1), 13);
    } else {
      const carried = inline(1, 'multicast destination');
      dst[0] = 0xff;
      dst[1] = 0x02;
      dst[15] = carried[0] ?? 0;
    }
  } else {
    if (dam !== 0) throw new LowpanError('BAD_VALUE', `M=1 DAC=1 with DAM=${dam} is reserved`, start + 1);
    const ctx = context(dci);
    if (ctx.length > 64) throw new LowpanError('BAD_CONTEXT', `context ${dci} (/${ctx.length}) is longer than the 64 bits a unicast-prefix-based multicast address holds`, cidOffset);
    const carried = inline(6, 'multicast destination');
    dst = multicastFromContext(carried, ctx);
  }

  let udpChecksumElided = false;
  let nhcOffset: number | undefined;
  let udp: Uint8Array | undefined;
  if (nhCompressed) {
    need(at, 1, 'next header compression');
    const nhc = bytes[at] ?? 0;
    nhcOffset = at;
    if ((nhc & 0xf8) === 0xf0) {
      at++;
      nextHeader = NEXT_HEADER_UDP;
      const ports = nhc & 3;
      udpChecksumElided = (nhc & 0x04) !== 0;
      let srcPort: number;
      let dstPort: number;
      if (ports === 0) {
        const p = inline(4, 'UDP ports');
        srcPort = ((p[0] ?? 0) << 8) | (p[1] ?? 0);
        dstPort = ((p[2] ?? 0) << 8) | (p[3] ?? 0);
      } else if (ports === 1) {
        const p = inline(3, 'UDP ports');
        srcPort = ((p[0] ?? 0) << 8) | (p[1] ?? 0);
        dstPort = 0xf000 | (p[2] ?? 0);
      } else if (ports === 2) {
        const p = inline(3, 'UDP ports');
        srcPort = 0xf000 | (p[0] ?? 0);
        dstPort = ((p[1] ?? 0) << 8) | (p[2] ?? 0);
      } else {
        const p = inline(1, 'UDP ports');
        srcPort = 0xf0b0 | ((p[0] ?? 0) >> 4);
        dstPort = 0xf0b0 | ((p[0] ?? 0) & 0x0f);
      }
      udp = new Uint8Array(UDP_HEADER_LENGTH);
      udp[0] = srcPort >> 8;
      udp[1] = srcPort & 0xff;
      udp[2] = dstPort >> 8;
      udp[3] = dstPort & 0xff;
      if (!udpChecksumElided) udp.set(inline(2, 'UDP checksum'), 6);
    } else if ((nhc & 0xf0) === 0xe0) {
      throw new LowpanError('UNSUPPORTED', 'IPv6 extension header compression (NHC 1110EEEN) is not supported', at);
    } else {
      throw new LowpanError('BAD_VALUE', `0x${nhc.toString(16).padStart(2, '0')} is not a known next header compression`, at);
    }
  }

  const headerLength = IPV6_HEADER_LENGTH + (udp ? UDP_HEADER_LENGTH : 0);
  const total = options.datagramSize ?? headerLength + (end - at);
  if (total < headerLength) throw new LowpanError('BAD_LENGTH', `datagram size ${total} is smaller than its ${headerLength} bytes of headers`, start);
  const payloadLength = total - IPV6_HEADER_LENGTH;
  if (payloadLength > 0xffff) throw new LowpanError('TOO_LARGE', `an IPv6 payload of ${payloadLength} bytes needs a jumbogram`, start);
  const headers = new Uint8Array(headerLength);
  const trafficClass = (dscp << 2) | ecn;
  headers[0] = 0x60 | (trafficClass >> 4);
  headers[1] = ((trafficClass & 0x0f) << 4) | (flowLabel >> 16);
  headers[2] = (flowLabel >> 8) & 0xff;
  headers[3] = flowLabel & 0xff;
  headers[4] = payloadLength >> 8;
  headers[5] = payloadLength & 0xff;
  headers[6] = nextHeader;
  headers[7] = hopLimit;
  headers.set(src, 8);
  headers.set(dst, 24);
  if (udp) {
    udp[4] = payloadLength >> 8;
    udp[5] = payloadLength & 0xff;
    headers.set(udp, IPV6_HEADER_LENGTH);
  }
  return { headers, payloadOffset: at, udpChecksumElided, nextHeader, ...(nhcOffset === undefined ? {} : { nhcOffset }) };
}

/** ffXX:XXLL:PPPP:PPPP:PPPP:PPPP:XXXX:XXXX (RFC 3306) from the 6 carried bytes and the context's prefix and length. */
function multicastFromContext(carried: Uint8Array, ctx: NormalizedContext): Uint8Array {
  const dst = new Uint8Array(16);
  dst[0] = 0xff;
  dst[1] = carried[0] ?? 0;
  dst[2] = carried[1] ?? 0;
  dst[3] = ctx.length;
  dst.set(ctx.prefix.subarray(0, 8), 4);
  dst.set(carried.subarray(2, 6), 12);
  return dst;
}

// ---------------------------------------------------------------- compression

export interface IphcEncodeOptions {
  readonly link?: LinkAddresses;
  readonly contexts?: ContextTable;
  /**
   * Elide the UDP checksum (C=1). Off by default: RFC 6282 4.3.2 allows it
   * only when an upper layer (a MIC, IPsec) covers the datagram.
   */
  readonly elideUdpChecksum?: boolean;
  /** Compress a UDP header with LOWPAN_NHC (default true). */
  readonly compressUdp?: boolean;
}

export interface IphcEncoded {
  /** The IPHC header and NHC, ready to be followed by datagram[payloadOffset...]. */
  readonly header: Uint8Array;
  /** Where the uncompressed rest of the datagram starts (40, or 48 after UDP NHC). */
  readonly payloadOffset: number;
}

interface AddressChoice {
  /** SAC/DAC. */
  readonly stateful: boolean;
  /** SAM/DAM. */
  readonly mode: number;
  readonly contextId: number;
  readonly inline: Uint8Array;
  readonly multicast: boolean;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function isZero(bytes: Uint8Array): boolean {
  return bytes.every((v) => v === 0);
}

/** Every encoding that decompresses back to this unicast address (each checked by rebuilding it), for the caller to pick the cheapest. */
function unicastChoices(address: Uint8Array, link: MacAddress | undefined, contexts: ReadonlyArray<NormalizedContext | undefined>, source: boolean): AddressChoice[] {
  const choices: AddressChoice[] = [];
  const none = new Uint8Array(0);
  const linkIid = link === undefined ? undefined : interfaceIdentifier(link);
  const tail = address.subarray(8);
  const isShortIid = equalBytes(address.subarray(8, 14), SHORT_IID_PREFIX);
  if (source && isZero(address)) choices.push({ stateful: true, mode: 0, contextId: 0, inline: none, multicast: false });
  if (equalBytes(address.subarray(0, 8), LINK_LOCAL_PREFIX)) {
    if (linkIid && equalBytes(tail, linkIid)) choices.push({ stateful: false, mode: 3, contextId: 0, inline: none, multicast: false });
    if (isShortIid) choices.push({ stateful: false, mode: 2, contextId: 0, inline: address.slice(14), multicast: false });
    choices.push({ stateful: false, mode: 1, contextId: 0, inline: address.slice(8), multicast: false });
  }
  contexts.forEach((ctx, contextId) => {
    if (ctx === undefined) return;
    const rebuilt = (iid: Uint8Array): Uint8Array => {
      const base = new Uint8Array(16);
      base.set(iid, 8);
      return overlayContext(base, ctx);
    };
    if (linkIid && equalBytes(rebuilt(linkIid), address)) choices.push({ stateful: true, mode: 3, contextId, inline: none, multicast: false });
    const shortForm = Uint8Array.of(...SHORT_IID_PREFIX, address[14] ?? 0, address[15] ?? 0);
    if (equalBytes(rebuilt(shortForm), address)) choices.push({ stateful: true, mode: 2, contextId, inline: address.slice(14), multicast: false });
    if (equalBytes(rebuilt(tail), address)) choices.push({ stateful: true, mode: 1, contextId, inline: address.slice(8), multicast: false });
  });
  choices.push({ stateful: false, mode: 0, contextId: 0, inline: address.slice(), multicast: false });
  return choices;
}

/** The same for a multicast destination (M=1): the three stateless short forms, unicast-prefix-based with a context, or inline. */
function multicastChoices(address: Uint8Array, contexts: ReadonlyArray<NormalizedContext | undefined>): AddressChoice[] {
  const choices: AddressChoice[] = [];
  if (address[1] === 0x02 && isZero(address.subarray(2, 15))) choices.push({ stateful: false, mode: 3, contextId: 0, inline: address.slice(15), multicast: true });
  if (isZero(address.subarray(2, 13))) choices.push({ stateful: false, mode: 2, contextId: 0, inline: Uint8Array.of(address[1] ?? 0, ...address.subarray(13)), multicast: true });
  if (isZero(address.subarray(2, 11))) choices.push({ stateful: false, mode: 1, contextId: 0, inline: Uint8Array.of(address[1] ?? 0, ...address.subarray(11)), multicast: true });
  contexts.forEach((ctx, contextId) => {
    if (ctx === undefined || ctx.length > 64) return;
    const carried = Uint8Array.of(address[1] ?? 0, address[2] ?? 0, ...address.subarray(12));
    if (equalBytes(multicastFromContext(carried, ctx), address)) choices.push({ stateful: true, mode: 0, contextId, inline: carried, multicast: true });
  });
  choices.push({ stateful: false, mode: 0, contextId: 0, inline: address.slice(), multicast: true });
  return choices;
}

/**
 * Compresses the uncompressed IPv6 datagram `datagram` (a UDP one, or any
 * other next header carried inline) into an IPHC header, choosing for each
 * field the shortest form that decompresses to the same bytes.
 */
export function compressIphc(datagram: Uint8Array, options: IphcEncodeOptions = {}): IphcEncoded {
  // Compression rebuilds the lengths from the frame, so they must be consistent here already.
  parseIpv6Datagram(datagram, 0, datagram.length, { verifyUdpChecksum: false });
  const contexts = normalizeContexts(options.contexts);
  const trafficClass = (((datagram[0] ?? 0) & 0x0f) << 4) | ((datagram[1] ?? 0) >> 4);
  const flowLabel = (((datagram[1] ?? 0) & 0x0f) << 16) | ((datagram[2] ?? 0) << 8) | (datagram[3] ?? 0);
  const nextHeader = datagram[6] ?? 0;
  const hopLimit = datagram[7] ?? 0;
  const src = datagram.subarray(8, 24);
  const dst = datagram.subarray(24, 40);
  const compressUdp = (options.compressUdp ?? true) && nextHeader === NEXT_HEADER_UDP && datagram.length >= IPV6_HEADER_LENGTH + UDP_HEADER_LENGTH;

  const ecn = trafficClass & 3;
  const dscp = trafficClass >> 2;
  let tf: number;
  let tfBytes: number[];
  if (trafficClass === 0 && flowLabel === 0) {
    tf = 3;
    tfBytes = [];
  } else if (flowLabel === 0) {
    tf = 2;
    tfBytes = [(ecn << 6) | dscp];
  } else if (dscp === 0) {
    tf = 1;
    tfBytes = [(ecn << 6) | (flowLabel >> 16), (flowLabel >> 8) & 0xff, flowLabel & 0xff];
  } else {
    tf = 0;
    tfBytes = [(ecn << 6) | dscp, flowLabel >> 16, (flowLabel >> 8) & 0xff, flowLabel & 0xff];
  }
  const hlim = hopLimit === 1 ? 1 : hopLimit === 64 ? 2 : hopLimit === 255 ? 3 : 0;

  const srcChoices = unicastChoices(src, options.link?.src, contexts, true);
  const dstChoices = dst[0] === 0xff ? multicastChoices(dst, contexts) : unicastChoices(dst, options.link?.dst, contexts, false);
  let best: { s: AddressChoice; d: AddressChoice; cost: number } | undefined;
  for (const s of srcChoices) {
    for (const d of dstChoices) {
      const needsCid = (s.stateful && s.contextId !== 0) || (d.stateful && d.contextId !== 0);
      const cost = s.inline.length + d.inline.length + (needsCid ? 1 : 0);
      if (best === undefined || cost < best.cost) best = { s, d, cost };
    }
  }
  // Both lists always end with the 128-bit inline form, so there is a choice.
  const { s, d } = best as { s: AddressChoice; d: AddressChoice };
  // SAC=1 SAM=00 (the unspecified address) uses no context: its identifier stays 0.
  const sci = s.stateful && s.mode !== 0 ? s.contextId : 0;
  const dci = d.stateful ? d.contextId : 0;
  const cid = sci !== 0 || dci !== 0;

  const out: number[] = [];
  out.push(0x60 | (tf << 3) | (compressUdp ? 0x04 : 0) | hlim);
  out.push((cid ? 0x80 : 0) | (s.stateful ? 0x40 : 0) | (s.mode << 4) | (d.multicast ? 0x08 : 0) | (d.stateful ? 0x04 : 0) | d.mode);
  if (cid) out.push((sci << 4) | dci);
  out.push(...tfBytes);
  if (!compressUdp) out.push(nextHeader);
  if (hlim === 0) out.push(hopLimit);
  out.push(...s.inline, ...d.inline);
  let payloadOffset = IPV6_HEADER_LENGTH;
  if (compressUdp) {
    const u = datagram.subarray(IPV6_HEADER_LENGTH);
    const srcPort = ((u[0] ?? 0) << 8) | (u[1] ?? 0);
    const dstPort = ((u[2] ?? 0) << 8) | (u[3] ?? 0);
    const elide = options.elideUdpChecksum === true;
    let nhc = 0xf0 | (elide ? 0x04 : 0);
    let ports: number[];
    if ((srcPort & 0xfff0) === 0xf0b0 && (dstPort & 0xfff0) === 0xf0b0) {
      nhc |= 3;
      ports = [((srcPort & 0x0f) << 4) | (dstPort & 0x0f)];
    } else if ((dstPort & 0xff00) === 0xf000) {
      nhc |= 1;
      ports = [srcPort >> 8, srcPort & 0xff, dstPort & 0xff];
    } else if ((srcPort & 0xff00) === 0xf000) {
      nhc |= 2;
      ports = [srcPort & 0xff, dstPort >> 8, dstPort & 0xff];
    } else {
      ports = [srcPort >> 8, srcPort & 0xff, dstPort >> 8, dstPort & 0xff];
    }
    out.push(nhc, ...ports);
    if (!elide) out.push(u[6] ?? 0, u[7] ?? 0);
    payloadOffset += UDP_HEADER_LENGTH;
  }
  return { header: Uint8Array.from(out), payloadOffset };
}
