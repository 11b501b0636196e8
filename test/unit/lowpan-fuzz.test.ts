import { describe, expect, it } from 'vitest';
import {
  compressIphc,
  decodeFragmentHeader,
  decodeFrame,
  decodeMacFrame,
  decompressIphc,
  encodeBroadcastHeader,
  encodeDatagram,
  encodeMacFrame,
  encodeMeshHeader,
  extendedAddress,
  finishDatagram,
  formatIpv6Address,
  interfaceIdentifier,
  LowpanError,
  Reassembler,
  shortAddress,
  type ContextTable,
  type Fragment,
  type MacAddress,
} from '../../src/lowpan/index.js';
import { Gen, mutate, prng } from '../helpers/fuzz.js';

/**
 * Random and mutated frames through every 6LoWPAN decoder: the MAC decoder,
 * IPHC decompression, fragment headers and the Reassembler, and the whole
 * decodeFrame path. Each call must return or throw a LowpanError whose
 * offset lies inside the input; the Reassembler must never throw and never
 * hold more than its cap; a datagram that decodes must compress and
 * decompress back to the same bytes.
 *
 * Reproduce a failure with LOWPAN_FUZZ_SEED=<seed printed in the failure>.
 */
const SEED = process.env.LOWPAN_FUZZ_SEED ? Number(process.env.LOWPAN_FUZZ_SEED) : 0x6c6f_7770;
const RANDOM_FRAMES = 40_000;
const MUTATED_FRAMES = 80_000;
const REASSEMBLER_CAP = 16 * 1024;

const CONTEXTS: ContextTable = ['2001:db8:1::/64', undefined, { prefix: 'fd00:aa::', length: 48 }, '2001:db8:2:3:4::/80'];

class LowpanGen extends Gen {
  mac(): MacAddress {
    return this.chance(0.4) ? shortAddress(this.int(0, 0xffff)) : extendedAddress(Buffer.from(this.bytes(8)).toString('hex'));
  }
  /** An address in one of the forms IPHC compresses differently. */
  address(link: MacAddress, multicastAllowed: boolean): string {
    const iid = (): Uint8Array => interfaceIdentifier(link);
    const short = (): Uint8Array => Uint8Array.of(0, 0, 0, 0xff, 0xfe, 0, this.int(0, 255), this.int(0, 255));
    const prefix = (): Uint8Array => this.pick([Uint8Array.of(0xfe, 0x80, 0, 0, 0, 0, 0, 0), Uint8Array.of(0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0), Uint8Array.of(0xfd, 0, 0, 0xaa, 0, 0, 0, 0), this.bytes(8)]);
    const form = this.int(0, multicastAllowed ? 6 : 3);
    if (form === 0) return formatIpv6Address(Uint8Array.of(...prefix(), ...iid()));
    if (form === 1) return formatIpv6Address(Uint8Array.of(...prefix(), ...short()));
    if (form === 2) return formatIpv6Address(Uint8Array.of(...prefix(), ...this.bytes(8)));
    if (form === 3) return this.chance(0.3) ? '::' : formatIpv6Address(this.bytes(16));
    if (form === 4) return `ff02::${this.int(0, 255).toString(16)}`;
    if (form === 5) return formatIpv6Address(Uint8Array.of(0xff, this.int(0, 255), ...new Uint8Array(9), ...this.bytes(5)));
    return this.pick(['ff3e:40:2001:db8:1:0:1:2', formatIpv6Address(Uint8Array.of(0xff, ...this.bytes(15)))]);
  }
  port(): number {
    return this.pick([this.int(0xf0b0, 0xf0bf), this.int(0xf000, 0xf0ff), 5683, this.int(0, 0xffff)]);
  }
}

interface Sample {
  frame: Uint8Array;
  fcs: boolean;
}

/** Valid frames of every shape the encoders make, plus hand-assembled mesh/broadcast/2015 ones. */
function buildCorpus(g: LowpanGen): { frames: Sample[]; iphc: Array<{ bytes: Uint8Array; link: { src: MacAddress; dst: MacAddress } }> } {
  const frames: Sample[] = [];
  const iphc: Array<{ bytes: Uint8Array; link: { src: MacAddress; dst: MacAddress } }> = [];
  const uncompressed: Array<{ bytes: Uint8Array }> = [];
  for (let i = 0; i < 400; i++) {
    const srcMac = g.mac();
    const dstMac = g.mac();
    const fcs = g.chance(0.3);
    const init = {
      src: g.address(srcMac, false),
      dst: g.address(dstMac, true),
      srcPort: g.port(),
      dstPort: g.port(),
      payload: g.bytes(g.chance(0.8) ? g.int(0, 60) : g.int(100, 500)),
      hopLimit: g.pick([1, 64, 255, g.int(0, 255)]),
      trafficClass: g.chance(0.5) ? 0 : g.int(0, 255),
      flowLabel: g.chance(0.5) ? 0 : g.int(0, 0xfffff),
      srcMac,
      dstMac,
      panId: g.int(0, 0xffff),
      sequenceNumber: g.int(0, 200),
      datagramTag: g.int(0, 0xffff),
      frameVersion: g.pick([0, 1, 2] as const),
    };
    const options = { contexts: CONTEXTS, fcs, elideUdpChecksum: g.chance(0.3), compress: g.chance(0.9) };
    let encoded: Uint8Array[];
    try {
      encoded = encodeDatagram(init, options);
    } catch (err) {
      if (err instanceof LowpanError) continue; // e.g. 2015 extended/extended cannot carry some PAN layouts
      throw err;
    }
    for (const frame of encoded) frames.push({ frame, fcs });
    if (i % 4 === 0 && encoded.length === 1 && !fcs) {
      // Re-wrap the 6LoWPAN payload behind mesh and broadcast headers, as a relay would send it.
      const inner = decodeMacFrame(encoded[0]!).payload;
      const prefix = Uint8Array.of(
        ...encodeMeshHeader({ hopsLeft: g.int(0, 30), originator: srcMac, finalDestination: dstMac }),
        ...(g.chance(0.5) ? encodeBroadcastHeader({ sequenceNumber: g.int(0, 255) }) : []),
      );
      frames.push({ frame: encodeMacFrame({ panId: 1, src: g.mac(), dst: g.mac() }, Uint8Array.of(...prefix, ...inner)), fcs: false });
    }
    const datagram = encodeDatagram({ ...init, payload: init.payload.subarray(0, 40) }, { ...options, compress: false, maxFrameSize: 4096 })[0]!;
    const ipv6 = decodeMacFrame(datagram, { fcs }).payload.subarray(1);
    uncompressed.push({ bytes: ipv6 });
    const compressed = compressIphc(ipv6, { link: { src: srcMac, dst: dstMac }, contexts: CONTEXTS, elideUdpChecksum: options.elideUdpChecksum });
    iphc.push({ bytes: Uint8Array.of(...compressed.header, ...ipv6.subarray(compressed.payloadOffset)), link: { src: srcMac, dst: dstMac } });
  }
  // 2015 frames with sequence number suppression and IEs (header IE, HT1, payload IE, termination), carrying uncompressed IPv6.
  for (const { bytes } of uncompressed.slice(0, 30)) {
    const fc = 0x1 | 0x40 | 0x100 | 0x200 | (2 << 10) | (2 << 12) | (2 << 14);
    frames.push({ frame: Uint8Array.of(fc & 0xff, fc >> 8, 1, 0, 2, 0, 3, 0, 0x02, 0x0f, 0xaa, 0xbb, 0x00, 0x3f, 0x01, 0x88, 0xcc, 0x00, 0xf8, 0x41, ...bytes), fcs: false });
  }
  return { frames, iphc };
}

const INTERESTING = [0x00, 0x01, 0x40, 0x41, 0x42, 0x50, 0x60, 0x7e, 0x7f, 0x80, 0xbf, 0xc0, 0xc7, 0xe0, 0xe7, 0xf0, 0xf7, 0xff];

function mutateLowpan(g: LowpanGen, input: Uint8Array): Uint8Array {
  return mutate(g, input, {
    interesting: INTERESTING,
    maxTail: 40,
    codec: [
      // frame control bits: type, security, compression, modes, version
      (gen, b) => {
        if (b.length > 1) b[gen.int(0, 1)] = (b[gen.int(0, 1)] ?? 0) ^ (1 << gen.int(0, 7));
        return b;
      },
    ],
  });
}

function randomBytes(g: LowpanGen, first?: readonly number[]): Uint8Array {
  const b = g.bytes(g.int(0, 130));
  if (b.length && first && g.chance(0.7)) b[0] = g.pick(first);
  return b;
}

/** Runs `fn`; returns what went wrong, or undefined when it returned or threw a LowpanError with an offset inside the input. */
function check<T>(input: Uint8Array, fn: () => T, after?: (out: T) => string | undefined): string | undefined {
  let out: T;
  try {
    out = fn();
  } catch (err) {
    if (!(err instanceof LowpanError)) return `threw a non-LowpanError: ${String(err)}`;
    if (typeof err.offset !== 'number' || !Number.isInteger(err.offset) || err.offset < 0 || err.offset > input.length) {
      return `LowpanError ${err.code} with offset ${String(err.offset)} outside [0, ${input.length}]`;
    }
    return undefined;
  }
  return after?.(out);
}

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString('hex');

interface Failure {
  codec: string;
  input: string;
  problem: string;
}

describe('6LoWPAN decoders under fuzzing', () => {
  const g = new LowpanGen(prng(SEED));
  const corpus = buildCorpus(g);
  const failures: Failure[] = [];
  const note = (codec: string, input: Uint8Array, problem: string | undefined): void => {
    if (problem !== undefined && failures.length < 5) failures.push({ codec, input: hexOf(input), problem });
  };
  /** Most calls end in a thrown LowpanError; capturing several hundred thousand stack traces would dominate the run. */
  const withoutStacks = <T>(fn: () => T): T => {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      return fn();
    } finally {
      Error.stackTraceLimit = limit;
    }
  };
  const inputs = (count: number, base: readonly Uint8Array[], first?: readonly number[]): Uint8Array[] => {
    const out: Uint8Array[] = [];
    for (let i = 0; i < count; i++) out.push(i % 3 === 0 ? randomBytes(g, first) : mutateLowpan(g, g.pick(base)));
    return out;
  };
  const started = performance.now();
  const total = RANDOM_FRAMES + MUTATED_FRAMES;

  it(`the corpus is valid: every encoded frame decodes (seed ${SEED})`, () => {
    for (const { frame, fcs } of corpus.frames) {
      expect(() => decodeFrame(frame, { fcs, contexts: CONTEXTS })).not.toThrow();
    }
    expect(corpus.frames.length).toBeGreaterThan(500);
  });

  it(`decodeMacFrame: ${total} random and mutated frames`, () => {
    const frames = inputs(total, corpus.frames.map((s) => s.frame), [0x41, 0x61, 0x01, 0x02, 0x03, 0x49, 0x42]);
    withoutStacks(() => {
      for (const frame of frames) {
        const fcs = g.chance(0.2);
        note('decodeMacFrame', frame, check(frame, () => decodeMacFrame(frame, { fcs }), (mac) => (mac.payloadOffset + mac.payload.length <= frame.length ? undefined : 'payload runs past the input')));
      }
    });
    expect(failures, `fuzz seed ${SEED} (rerun with LOWPAN_FUZZ_SEED=${SEED}):\n${JSON.stringify(failures, null, 2)}`).toEqual([]);
  });

  it(`decompressIphc: ${total} random and mutated compressed headers`, () => {
    const bases = corpus.iphc.map((c) => c.bytes);
    const frames = inputs(total, bases, [0x60, 0x7a, 0x7e, 0x7f, 0x78]);
    withoutStacks(() => {
      for (const bytes of frames) {
        const link = g.pick(corpus.iphc).link;
        const datagramSize = g.chance(0.3) ? g.int(0, 2047) : undefined;
        note(
          'decompressIphc',
          bytes,
          check(
            bytes,
            () => decompressIphc(bytes, 0, bytes.length, { link: g.chance(0.9) ? link : {}, contexts: CONTEXTS, ...(datagramSize === undefined ? {} : { datagramSize }) }),
            (decoded) => {
              if (decoded.payloadOffset > bytes.length) return 'payload offset past the input';
              if (datagramSize !== undefined) return undefined;
              const rebuilt = Uint8Array.of(...decoded.headers, ...bytes.subarray(decoded.payloadOffset));
              return check(bytes, () => finishDatagram(rebuilt, decoded.udpChecksumElided, { verifyUdpChecksum: g.chance(0.5), errorOffset: decoded.nhcOffset ?? 0 }));
            },
          ),
        );
      }
    });
    expect(failures, `fuzz seed ${SEED} (rerun with LOWPAN_FUZZ_SEED=${SEED}):\n${JSON.stringify(failures, null, 2)}`).toEqual([]);
  });

  it(`fragment headers and the Reassembler: ${total} random and mutated fragments, memory within the cap`, () => {
    let now = 0;
    const reassembler = new Reassembler({ now: () => now, maxBytesTotal: REASSEMBLER_CAP, maxBytesPerPeer: 4096, timeoutMs: 5_000 });
    const fragmented = corpus.frames.filter((s) => {
      const d = decodeFrame(s.frame, { fcs: s.fcs, contexts: CONTEXTS });
      return d.lowpan.kind === 'fragment';
    });
    expect(fragmented.length).toBeGreaterThan(50);
    const frames = inputs(total, fragmented.map((s) => s.frame), [0x41]);
    let maxHeld = 0;
    let completed = 0;
    withoutStacks(() => {
      for (const [i, frame] of frames.entries()) {
        now += g.int(0, 20);
        // The fragment header decoder alone, on the 6LoWPAN part of the frame (or the raw bytes).
        const lowpanStart = g.chance(0.5) ? 0 : Math.min(frame.length, 21);
        note('decodeFragmentHeader', frame, check(frame, () => decodeFragmentHeader(frame, lowpanStart, frame.length)));
        let fragment: Fragment | undefined;
        note(
          'decodeFrame(fragment)',
          frame,
          check(
            frame,
            () => decodeFrame(frame, { contexts: CONTEXTS }),
            (d) => {
              if (d.lowpan.kind === 'fragment') fragment = d.lowpan.fragment;
              return undefined;
            },
          ),
        );
        // Hand-made fragments with arbitrary sizes and offsets, not only what the decoder lets through.
        if (i % 4 === 0) {
          fragment = {
            kind: g.chance(0.3) ? 'FRAG1' : 'FRAGN',
            src: g.chance(0.5) ? shortAddress(g.int(0, 50)) : undefined,
            dst: shortAddress(1),
            datagramSize: g.pick([g.int(0, 2047), g.int(40, 400), -1, 5000, 1.5]),
            datagramTag: g.int(0, 3),
            offset: g.pick([0, 8 * g.int(0, 50), g.int(0, 400), -8]),
            data: g.bytes(g.int(0, 120)),
            udpChecksumElided: g.chance(0.5),
          };
        }
        if (fragment) {
          try {
            const outcome = reassembler.add(fragment);
            if (outcome.status === 'complete') completed++;
          } catch (err) {
            note('Reassembler.add', frame, `threw ${String(err)}`);
          }
          const held = reassembler.stats().bytesHeld;
          maxHeld = Math.max(maxHeld, held);
          if (held > REASSEMBLER_CAP) note('Reassembler', frame, `holds ${held} bytes, over its ${REASSEMBLER_CAP}-byte cap`);
        }
        if (i % 1000 === 0) reassembler.expire();
      }
    });
    expect(failures, `fuzz seed ${SEED} (rerun with LOWPAN_FUZZ_SEED=${SEED}):\n${JSON.stringify(failures, null, 2)}`).toEqual([]);
    expect(maxHeld).toBeLessThanOrEqual(REASSEMBLER_CAP);
    const stats = reassembler.stats();
    expect(stats.badFragments + stats.droppedOverCap + stats.timedOut).toBeGreaterThan(0);
    expect(completed).toBe(stats.completed);
  });

  it(`decodeFrame: ${total} random and mutated frames; what decodes re-compresses to the same datagram`, () => {
    const frames = inputs(total, corpus.frames.map((s) => s.frame), [0x41, 0x61, 0x01]);
    let datagrams = 0;
    withoutStacks(() => {
      for (const frame of frames) {
        const fcs = g.chance(0.1);
        note(
          'decodeFrame',
          frame,
          check(
            frame,
            () => decodeFrame(frame, { fcs, contexts: CONTEXTS, verifyUdpChecksum: g.chance(0.5) }),
            (d) => {
              if (d.lowpan.kind !== 'datagram') return undefined;
              datagrams++;
              const link = d.mesh ? { src: d.mesh.originator, dst: d.mesh.finalDestination } : { src: d.mac.src, dst: d.mac.dst };
              const bytes = d.lowpan.datagram.bytes;
              try {
                const encoded = compressIphc(bytes, { link, contexts: CONTEXTS });
                const wire = Uint8Array.of(...encoded.header, ...bytes.subarray(encoded.payloadOffset));
                const back = decompressIphc(wire, 0, wire.length, { link, contexts: CONTEXTS });
                const rebuilt = Uint8Array.of(...back.headers, ...wire.subarray(back.payloadOffset));
                return hexOf(rebuilt) === hexOf(bytes) ? undefined : 're-compressed datagram decompresses differently';
              } catch (err) {
                return `re-compressing a decoded datagram failed: ${String(err)}`;
              }
            },
          ),
        );
      }
    });
    expect(failures, `fuzz seed ${SEED} (rerun with LOWPAN_FUZZ_SEED=${SEED}):\n${JSON.stringify(failures, null, 2)}`).toEqual([]);
    expect(datagrams).toBeGreaterThan(1000);
    const seconds = (performance.now() - started) / 1000;
    expect(seconds, `fuzzing took ${seconds.toFixed(1)} s`).toBeLessThan(20);
  });
});
