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
