import { LowpanError } from './errors.js';
import { finishDatagram, type Ipv6Datagram } from './iphc.js';
import { formatMacAddress, type MacAddress } from './mac.js';

/**
 * RFC 4944 link fragmentation: the FRAG1/FRAGN headers, splitting a
 * compressed datagram into frames, and a Reassembler that a meter flood or a
 * hostile neighbour cannot grow past its memory caps.
 */

/** RFC 4944 5.3: the 11-bit datagram_size field. */
export const MAX_DATAGRAM_SIZE = 2047;
/** RFC 4944 5.3: a reassembly may last at most 60 s. */
export const DEFAULT_REASSEMBLY_TIMEOUT_MS = 60_000;
export const FRAG1_HEADER_LENGTH = 4;
export const FRAGN_HEADER_LENGTH = 5;

export interface FragmentHeader {
  readonly kind: 'FRAG1' | 'FRAGN';
  /** Size of the whole uncompressed IPv6 datagram. */
  readonly datagramSize: number;
  readonly datagramTag: number;
  /** Offset of this fragment's data in the uncompressed datagram, in bytes (the header carries eighths). */
  readonly offset: number;
}

export function decodeFragmentHeader(bytes: Uint8Array, start: number, end: number): { header: FragmentHeader; next: number } {
  if (start >= end) throw new LowpanError('TRUNCATED', 'the fragment header is missing', end);
  const first = bytes[start] ?? 0;
  const kind = first >> 3 === 0b11000 ? 'FRAG1' : first >> 3 === 0b11100 ? 'FRAGN' : undefined;
  if (kind === undefined) throw new LowpanError('BAD_DISPATCH', `0x${first.toString(16).padStart(2, '0')} is not a fragment header`, start);
  const length = kind === 'FRAG1' ? FRAG1_HEADER_LENGTH : FRAGN_HEADER_LENGTH;
  if (start + length > end) throw new LowpanError('TRUNCATED', `the input ends inside the ${kind} header`, end);
  const datagramSize = ((first & 0x07) << 8) | (bytes[start + 1] ?? 0);
  const datagramTag = ((bytes[start + 2] ?? 0) << 8) | (bytes[start + 3] ?? 0);
  const offset = kind === 'FRAG1' ? 0 : (bytes[start + 4] ?? 0) * 8;
  return { header: { kind, datagramSize, datagramTag, offset }, next: start + length };
}

export function encodeFragmentHeader(header: FragmentHeader): Uint8Array {
  const { datagramSize, datagramTag, offset } = header;
  if (!Number.isInteger(datagramSize) || datagramSize < 1 || datagramSize > MAX_DATAGRAM_SIZE) throw new LowpanError('TOO_LARGE', `datagram size ${datagramSize} is not 1..${MAX_DATAGRAM_SIZE}`);
  if (!Number.isInteger(datagramTag) || datagramTag < 0 || datagramTag > 0xffff) throw new LowpanError('BAD_VALUE', `datagram tag ${datagramTag} is not 0..65535`);
  const sizeBytes = [datagramSize >> 8, datagramSize & 0xff] as const;
  if (header.kind === 'FRAG1') return Uint8Array.of(0xc0 | sizeBytes[0], sizeBytes[1], datagramTag >> 8, datagramTag & 0xff);
  if (!Number.isInteger(offset) || offset < 0 || offset % 8 !== 0 || offset / 8 > 0xff) throw new LowpanError('BAD_VALUE', `fragment offset ${offset} is not a multiple of 8 up to 2040`);
  return Uint8Array.of(0xe0 | sizeBytes[0], sizeBytes[1], datagramTag >> 8, datagramTag & 0xff, offset / 8);
}

export interface FragmentSource {
  /** What precedes the payload in the first fragment: the IPHC header (and NHC), or the 0x41 dispatch. */
  readonly compressedHeader: Uint8Array;
  /** How many bytes of the uncompressed datagram the compressed header stands for (40, 48, or 0 after 0x41). */
  readonly uncompressedHeaderLength: number;
  /** The rest of the datagram, carried as is. */
  readonly rest: Uint8Array;
  readonly datagramTag: number;
}

/**
 * Splits a compressed datagram into 6LoWPAN payloads (FRAG1, then FRAGNs),
 * each at most `room` bytes (the frame size less MAC header and FCS).
 * Every fragment but the last ends on an 8-byte boundary of the uncompressed
 * datagram, since FRAGN offsets count eighths of it.
 */
export function fragmentDatagram(source: FragmentSource, room: number): Uint8Array[] {
  const datagramSize = source.uncompressedHeaderLength + source.rest.length;
  if (datagramSize > MAX_DATAGRAM_SIZE) throw new LowpanError('TOO_LARGE', `a datagram of ${datagramSize} bytes exceeds the ${MAX_DATAGRAM_SIZE} bytes RFC 4944 fragmentation can carry`);
  const firstRoom = room - FRAG1_HEADER_LENGTH - source.compressedHeader.length;
  const firstEnd = Math.floor((source.uncompressedHeaderLength + firstRoom) / 8) * 8;
  const firstCount = firstEnd - source.uncompressedHeaderLength;
  if (firstRoom < 0 || firstCount < 0 || firstEnd === 0) throw new LowpanError('TOO_LARGE', `the compressed headers (${source.compressedHeader.length} bytes) do not fit a first fragment of ${room} bytes`);
  const nRoom = Math.floor((room - FRAGN_HEADER_LENGTH) / 8) * 8;
  if (nRoom <= 0) throw new LowpanError('TOO_LARGE', `a frame with ${room} bytes of room cannot carry a subsequent fragment`);
  const header = { datagramSize, datagramTag: source.datagramTag };
  const first = Math.min(firstCount, source.rest.length);
  const out: Uint8Array[] = [Uint8Array.of(...encodeFragmentHeader({ kind: 'FRAG1', ...header, offset: 0 }), ...source.compressedHeader, ...source.rest.subarray(0, first))];
  for (let taken = first; taken < source.rest.length; ) {
    const count = Math.min(nRoom, source.rest.length - taken);
    const offset = source.uncompressedHeaderLength + taken;
    const fragmentHeader = encodeFragmentHeader({ kind: 'FRAGN', ...header, offset });
    const fragment = new Uint8Array(fragmentHeader.length + count);
    fragment.set(fragmentHeader);
    fragment.set(source.rest.subarray(taken, taken + count), fragmentHeader.length);
    out.push(fragment);
    taken += count;
  }
  return out;
}

/** A fragment ready for reassembly: its data is uncompressed datagram bytes (a FRAG1's headers already decompressed). */
export interface Fragment {
  readonly kind: 'FRAG1' | 'FRAGN';
  /** The sender the datagram is keyed on: the mesh originator when a mesh header is present, else the MAC source. */
  readonly src: MacAddress | undefined;
  readonly dst: MacAddress | undefined;
  readonly datagramSize: number;
  readonly datagramTag: number;
  /** Offset of `data` in the uncompressed datagram, in bytes. */
  readonly offset: number;
  readonly data: Uint8Array;
  /** FRAG1 only: the UDP checksum was elided and is computed once the datagram is complete. */
  readonly udpChecksumElided: boolean;
}

export interface ReassemblerOptions {
  /** Default 60 s (RFC 4944 5.3). */
  timeoutMs?: number;
  /** Bytes of partial datagrams one sender may hold (default 8 KiB: four datagrams of the largest size). */
  maxBytesPerPeer?: number;
  /** Bytes of partial datagrams all senders together may hold (default 512 KiB). */
  maxBytesTotal?: number;
  /** The clock, in ms (default monotonic, performance.now); injected so that timeouts are testable without sleeping. */
  now?: () => number;
  /** Verify the UDP checksum of completed datagrams (default true). */
  verifyUdpChecksum?: boolean;
}

export interface ReassemblerStats {
  readonly completed: number;
  readonly timedOut: number;
  /** Datagrams refused because their sender or the whole reassembler was at its cap. */
  readonly droppedOverCap: number;
  /** Fragments refused as malformed, or that overlapped an earlier fragment inconsistently (the earlier ones were discarded). */
  readonly badFragments: number;
  /** Datagrams complete but invalid (a UDP checksum mismatch, inconsistent lengths). */
  readonly badDatagrams: number;
  readonly inProgress: number;
  /** Bytes reserved for datagrams in progress (each reserves its whole datagram size). */
  readonly bytesHeld: number;
}

export type ReassemblyOutcome =
  | {
      readonly status: 'pending';
      readonly received: number;
      readonly datagramSize: number;
      /** This fragment overlapped earlier ones inconsistently: those were discarded and the datagram starts over from it. */
      readonly restarted?: boolean;
    }
  | { readonly status: 'duplicate' }
  | { readonly status: 'complete'; readonly datagram: Ipv6Datagram }
  | { readonly status: 'dropped'; readonly reason: 'bad-fragment' | 'over-cap' | 'bad-datagram'; readonly error?: LowpanError };

interface Reassembly {
  readonly key: string;
  readonly peer: string;
  readonly size: number;
  readonly buffer: Uint8Array;
  /** Received [start, end) ranges, to tell duplicates from inconsistent overlaps. */
  readonly ranges: Array<[number, number]>;
  received: number;
  readonly startedAt: number;
  udpChecksumElided: boolean;
}

function addressKey(address: MacAddress | undefined): string {
  return address === undefined ? '-' : `${address.mode[0] ?? ''}${formatMacAddress(address)}`;
}

/**
 * Puts fragmented datagrams back together, keyed as RFC 4944 5.3 says: by
 * link-layer source and destination, datagram size and tag. Each datagram in
 * progress reserves its full size against the per-sender and total caps when
 * its first fragment (of any kind) arrives; one that would exceed a cap is
 * dropped and counted, so memory stays bounded whatever arrives.
 */
export class Reassembler {
  private readonly timeoutMs: number;
  private readonly maxBytesPerPeer: number;
  private readonly maxBytesTotal: number;
  private readonly now: () => number;
  private readonly verifyUdpChecksum: boolean;
  /** In creation order, which is expiry order: expire() stops at the first one still alive. */
  private readonly reassemblies = new Map<string, Reassembly>();
  private readonly bytesPerPeer = new Map<string, number>();
  /**
   * Datagrams refused over a cap, by key, with when: their later fragments are
   * refused too. Otherwise a later fragment, arriving once room is free again,
   * would reserve the whole datagram although the refused fragment is gone
   * for good: an orphan that can never complete and holds its bytes until the
   * timeout, crowding out datagrams that could (seen in test/bench/radio.mjs).
   */
  private readonly refused = new Map<string, number>();
  private bytesHeld = 0;
  private completed = 0;
  private timedOut = 0;
  private droppedOverCap = 0;
  private badFragments = 0;
  private badDatagrams = 0;

  constructor(options: ReassemblerOptions = {}) {
    this.timeoutMs = options.timeoutMs ?? DEFAULT_REASSEMBLY_TIMEOUT_MS;
    this.maxBytesPerPeer = options.maxBytesPerPeer ?? 8 * 1024;
    this.maxBytesTotal = options.maxBytesTotal ?? 512 * 1024;
    // Monotonic: a wall clock stepped back (NTP) would stop partial datagrams from expiring while the caps stay full.
    this.now = options.now ?? (() => performance.now());
    this.verifyUdpChecksum = options.verifyUdpChecksum ?? true;
    for (const [name, value] of [['timeoutMs', this.timeoutMs], ['maxBytesPerPeer', this.maxBytesPerPeer], ['maxBytesTotal', this.maxBytesTotal]] as const) {
      if (!(value > 0)) throw new LowpanError('BAD_VALUE', `${name} must be positive`);
    }
  }

  /** Adds one fragment; never throws for bad input (it is counted and reported in the outcome). */
  add(fragment: Fragment): ReassemblyOutcome {
    const now = this.now();
    this.expireBefore(now - this.timeoutMs, true);
    const { datagramSize: size, offset, data } = fragment;
    const valid =
      Number.isInteger(size) &&
      size >= 1 &&
      size <= MAX_DATAGRAM_SIZE &&
      Number.isInteger(offset) &&
      offset >= 0 &&
      offset % 8 === 0 &&
      data.length > 0 &&
      offset + data.length <= size &&
      (fragment.kind === 'FRAG1') === (offset === 0);
    if (!valid) {
      this.badFragments++;
      return { status: 'dropped', reason: 'bad-fragment' };
    }
    const peer = addressKey(fragment.src);
    const key = `${peer}>${addressKey(fragment.dst)}/${size}/${fragment.datagramTag}`;
    let reassembly = this.reassemblies.get(key);
    let overlapped = false;
    if (reassembly) {
      const end = offset + data.length;
      for (const [s, e] of reassembly.ranges) {
        if (e <= offset || s >= end) continue;
        if (s === offset && e === end && equalRange(reassembly.buffer, s, data)) return { status: 'duplicate' };
        overlapped = true;
        break;
      }
      if (overlapped) {
        // RFC 4944 5.3: an overlap that differs from what was received discards the accumulated fragments; this one starts anew.
        this.badFragments++;
        this.remove(reassembly);
        reassembly = undefined;
      }
    }
    if (!reassembly) {
      if (this.refused.has(key)) return { status: 'dropped', reason: 'over-cap' };
      const peerBytes = this.bytesPerPeer.get(peer) ?? 0;
      if (peerBytes + size > this.maxBytesPerPeer || this.bytesHeld + size > this.maxBytesTotal) {
        this.droppedOverCap++;
        this.refuse(key, now);
        return { status: 'dropped', reason: 'over-cap' };
      }
      reassembly = { key, peer, size, buffer: new Uint8Array(size), ranges: [], received: 0, startedAt: now, udpChecksumElided: false };
      this.reassemblies.set(key, reassembly);
      this.bytesPerPeer.set(peer, peerBytes + size);
      this.bytesHeld += size;
    }
    reassembly.buffer.set(data, offset);
    reassembly.ranges.push([offset, offset + data.length]);
    reassembly.received += data.length;
    if (fragment.kind === 'FRAG1') reassembly.udpChecksumElided = fragment.udpChecksumElided;
    if (reassembly.received < size) {
      return { status: 'pending', received: reassembly.received, datagramSize: size, ...(overlapped ? { restarted: true } : {}) };
    }
    this.remove(reassembly);
    try {
      const datagram = finishDatagram(reassembly.buffer, reassembly.udpChecksumElided, { verifyUdpChecksum: this.verifyUdpChecksum, errorOffset: 0 });
      this.completed++;
      return { status: 'complete', datagram };
    } catch (err) {
      if (!(err instanceof LowpanError)) throw err;
      this.badDatagrams++;
      return { status: 'dropped', reason: 'bad-datagram', error: err };
    }
  }

  /** Drops the datagrams whose first fragment is older than the timeout; returns how many. */
  expire(): number {
    return this.expireBefore(this.now() - this.timeoutMs, false);
  }

  stats(): ReassemblerStats {
    return {
      completed: this.completed,
      timedOut: this.timedOut,
      droppedOverCap: this.droppedOverCap,
      badFragments: this.badFragments,
      badDatagrams: this.badDatagrams,
      inProgress: this.reassemblies.size,
      bytesHeld: this.bytesHeld,
    };
  }

  /** Remembers a refused datagram for the reassembly timeout, at most as many as could be held in progress. */
  private refuse(key: string, now: number): void {
    this.refused.delete(key);
    this.refused.set(key, now);
    // Each refused datagram was at least 8 bytes: no more keys than the total cap has 8-byte units.
    const limit = Math.max(64, Math.floor(this.maxBytesTotal / 8));
    while (this.refused.size > limit) {
      const oldest = this.refused.keys().next().value;
      if (oldest === undefined) break;
      this.refused.delete(oldest);
    }
  }

  private expireBefore(cutoff: number, stopAtFirstAlive: boolean): number {
    // Refusals are in time order too.
    for (const [key, at] of this.refused) {
      if (at > cutoff) break;
      this.refused.delete(key);
    }
    let count = 0;
    for (const reassembly of this.reassemblies.values()) {
      if (reassembly.startedAt > cutoff) {
        if (stopAtFirstAlive) break;
        continue;
      }
      this.remove(reassembly);
      this.timedOut++;
      count++;
    }
    return count;
  }

  private remove(reassembly: Reassembly): void {
    if (this.reassemblies.get(reassembly.key) !== reassembly) return;
    this.reassemblies.delete(reassembly.key);
    const peerBytes = (this.bytesPerPeer.get(reassembly.peer) ?? 0) - reassembly.size;
    if (peerBytes > 0) this.bytesPerPeer.set(reassembly.peer, peerBytes);
    else this.bytesPerPeer.delete(reassembly.peer);
    this.bytesHeld -= reassembly.size;
  }
}

function equalRange(buffer: Uint8Array, start: number, data: Uint8Array): boolean {
  for (let i = 0; i < data.length; i++) if (buffer[start + i] !== data[i]) return false;
  return true;
}
