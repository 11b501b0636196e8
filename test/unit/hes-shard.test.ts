import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RendezvousShards, ShardError } from '../../src/hes/shard.js';

const engineList = fc.uniqueArray(fc.stringMatching(/^coap:\/\/engine-[a-z0-9]{1,6}$/), { minLength: 2, maxLength: 8 });
const meterIds = fc.uniqueArray(fc.stringMatching(/^[A-Z]{3}[0-9]{5,10}$/), { minLength: 1, maxLength: 200 });

describe('rendezvous sharding', () => {
  it('moves only the failed engine\'s meters when one engine fails, each to its next choice', () => {
    fc.assert(
      fc.property(engineList, meterIds, fc.nat(), (engines, meters, pick) => {
        const shards = new RendezvousShards(engines);
        const failed = engines[pick % engines.length] as string;
        for (const meter of meters) {
          const before = shards.ownerOf(meter);
          const after = shards.ownerOf(meter, (engine) => engine !== failed);
          if (before === failed) {
            expect(after).not.toBe(failed);
            expect(after).toBe(shards.rank(meter)[1]);
          } else {
            expect(after).toBe(before);
          }
        }
      }),
    );
  });

  it('moves only the meters the new engine wins when an engine is added', () => {
    fc.assert(
      fc.property(engineList, meterIds, (engines, meters) => {
        const [added, ...rest] = engines as [string, ...string[]];
        const without = new RendezvousShards(rest);
        const withIt = new RendezvousShards(engines);
        for (const meter of meters) {
          const owner = withIt.ownerOf(meter);
          if (owner !== added) expect(owner).toBe(without.ownerOf(meter));
        }
      }),
    );
  });

  it('spreads meters evenly', () => {
    const engines = ['coap://[2001:db8::1]:5683', 'coap://[2001:db8::2]:5683', 'coap://[2001:db8::3]:5683', 'coap://[2001:db8::4]:5683'];
    const shards = new RendezvousShards(engines);
    const counts = new Map<string, number>();
    const meters = 20_000;
    for (let i = 0; i < meters; i++) {
      const owner = shards.ownerOf(`LGZ${String(10_000_000 + i)}`) as string;
      counts.set(owner, (counts.get(owner) ?? 0) + 1);
    }
    // 5,000 each expected; a binomial standard deviation is about 61: ±5 % is over 4 of them.
    for (const engine of engines) {
      expect(counts.get(engine)).toBeGreaterThan(4750);
      expect(counts.get(engine)).toBeLessThan(5250);
    }
    // After one engine fails, the remaining three share its meters evenly too.
    const failed = engines[1];
    const after = new Map<string, number>();
    for (let i = 0; i < meters; i++) {
      const owner = shards.ownerOf(`LGZ${String(10_000_000 + i)}`, (engine) => engine !== failed) as string;
      after.set(owner, (after.get(owner) ?? 0) + 1);
    }
    for (const engine of engines.filter((e) => e !== failed)) {
      expect(after.get(engine)).toBeGreaterThan(6333);
      expect(after.get(engine)).toBeLessThan(7000);
    }
  });

  it('is the same on every gateway: the owner depends on the engines and the meter only, not their order', () => {
    fc.assert(
      fc.property(engineList, meterIds, (engines, meters) => {
        const a = new RendezvousShards(engines);
        const b = new RendezvousShards([...engines].reverse());
        for (const meter of meters) expect(a.ownerOf(meter)).toBe(b.ownerOf(meter));
      }),
    );
  });

  it('splits a batch by owner, in order, and refuses an empty or repeated engine list', () => {
    const shards = new RendezvousShards(['a', 'b', 'c']);
    const records = Array.from({ length: 50 }, (_, i) => ({ meter: `m${i % 7}`, n: i }));
    const parts = shards.split(records, (r) => r.meter, (engine) => engine !== 'c');
    expect([...parts.keys()].every((engine) => engine === 'a' || engine === 'b')).toBe(true);
    expect([...parts.values()].flat()).toHaveLength(50);
    for (const part of parts.values()) expect(part.map((r) => r.n)).toEqual([...part.map((r) => r.n)].sort((x, y) => x - y));
    expect(shards.split(records, (r) => r.meter, () => false).get(undefined)).toHaveLength(50);
    expect(() => new RendezvousShards([])).toThrow(ShardError);
    expect(() => new RendezvousShards(['a', 'a'])).toThrow(ShardError);
  });
});
