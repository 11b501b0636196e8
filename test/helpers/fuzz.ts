/**
 * What the seeded fuzz tests share (DLMS, 6LoWPAN, C12.18): a small, fast,
 * seedable generator, so a failure can be reproduced from the seed it
 * prints. Each test extends Gen with the structures of its own codec.
 */

/** mulberry32: a uniform number in [0, 1) per call, from a 32-bit seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Gen {
  constructor(readonly next: () => number) {}
  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  pick<T>(items: readonly T[]): T {
    const item = items[this.int(0, items.length - 1)];
    if (item === undefined) throw new Error('pick from an empty list');
    return item;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(0, 255);
    return out;
  }
}

/** `bytes` with `remove` bytes at `at` replaced by `insert`. */
export function splice(bytes: Uint8Array, at: number, remove: number, insert: ArrayLike<number> = []): Uint8Array {
  const end = Math.min(bytes.length, at + remove);
  const out = new Uint8Array(bytes.length - (end - at) + insert.length);
  out.set(bytes.subarray(0, at));
  out.set(insert, at);
  out.set(bytes.subarray(end), at + insert.length);
  return out;
}

/** A mutation of a codec's own: it gets the bytes so far and a position in them, and returns the new bytes. */
export type CodecMutation = (g: Gen, bytes: Uint8Array, at: number) => Uint8Array;

export interface MutateOptions {
  /** Byte values worth trying in any position: the codec's tags, dispatches, length prefixes and limits. */
  interesting: readonly number[];
  /** Longest random tail appended (default 6). */
  maxTail?: number;
  /** The codec's own mutations (length fields, CRCs, nesting), drawn as often as each generic one. */
  codec?: readonly CodecMutation[];
}

/**
 * 1 to 3 rounds of mutation of a valid input: the byte-level ones every
 * codec's fuzz test applies (bit flip, random or interesting byte,
 * truncation, insertion, deletion, a duplicated slice, a random tail), and
 * the codec's own.
 */
export function mutate(g: Gen, input: Uint8Array, options: MutateOptions): Uint8Array {
  const generic: CodecMutation[] = [
    (gen, b, at) => (b.length ? withByte(b, at, (b[at] ?? 0) ^ (1 << gen.int(0, 7))) : b),
    (gen, b, at) => (b.length ? withByte(b, at, gen.int(0, 255)) : b),
    (gen, b, at) => (b.length ? withByte(b, at, gen.pick(options.interesting)) : b),
    (gen, b) => b.slice(0, gen.int(0, b.length)),
    (gen, b, at) => splice(b, at, 0, gen.bytes(gen.int(1, 4))),
    (gen, b, at) => splice(b, at, gen.int(1, 4)),
    (gen, b, at) => {
      const end = Math.min(b.length, at + gen.int(1, 12));
      return splice(b, end, 0, b.slice(at, end));
    },
    (gen, b) => splice(b, b.length, 0, gen.bytes(gen.int(1, options.maxTail ?? 6))),
  ];
  const mutations = [...generic, ...(options.codec ?? [])];
  let bytes: Uint8Array = new Uint8Array(input);
  const rounds = g.int(1, 3);
  for (let round = 0; round < rounds; round++) {
    const at = bytes.length === 0 ? 0 : g.int(0, bytes.length - 1);
    bytes = g.pick(mutations)(g, bytes, at);
  }
  return bytes;
}

function withByte(bytes: Uint8Array, at: number, value: number): Uint8Array {
  bytes[at] = value;
  return bytes;
}
