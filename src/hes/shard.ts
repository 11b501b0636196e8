import { createHash } from 'node:crypto';

/**
 * N+1 sharding of meters across several HES collection engines by
 * rendezvous (highest random weight) hashing: each meter goes to the engine
 * with the highest score hash(engine, meter). When an engine fails, only its
 * meters move (each to its own second-highest engine); the meters of the
 * other engines stay where they are, and move back when it returns. No table
 * to keep in sync between gateways: any gateway computes the same owner from
 * the list of engines.
 *
 * Not wired into the outbox drain yet (which sends to one active site at a
 * time): see docs/hes-uplink.md, "Sharding".
 */
export class ShardError extends Error {
  override readonly name = 'ShardError';
  constructor(
    readonly code: 'NO_ENGINES' | 'DUPLICATE_ENGINE',
    message: string,
  ) {
    super(message);
  }
}

/** The score of `meter` on `engine`: the first 64 bits of SHA-256 over both, as an unsigned integer. */
export function rendezvousScore(engine: string, meter: string): bigint {
  // The separator keeps ("ab", "c") and ("a", "bc") apart.
  return createHash('sha256').update(engine).update('\0').update(meter).digest().readBigUInt64BE(0);
}

export class RendezvousShards {
  readonly engines: readonly string[];

  constructor(engines: readonly string[]) {
    if (engines.length === 0) throw new ShardError('NO_ENGINES', 'rendezvous sharding needs at least one engine');
    if (new Set(engines).size !== engines.length) throw new ShardError('DUPLICATE_ENGINE', 'each engine may be listed once');
    this.engines = [...engines];
  }

  /** The engines in the order `meter` prefers them: its owner first, then where it goes if that one fails. */
  rank(meter: string): string[] {
    return this.engines
      .map((engine) => ({ engine, score: rendezvousScore(engine, meter) }))
      .sort((a, b) => (a.score === b.score ? a.engine.localeCompare(b.engine) : a.score > b.score ? -1 : 1))
      .map(({ engine }) => engine);
  }

  /** The engine `meter` goes to: the highest-scoring one that `available` accepts (all by default); undefined when none does. */
  ownerOf(meter: string, available: (engine: string) => boolean = () => true): string | undefined {
    let best: { engine: string; score: bigint } | undefined;
    for (const engine of this.engines) {
      if (!available(engine)) continue;
      const score = rendezvousScore(engine, meter);
      if (!best || score > best.score || (score === best.score && engine.localeCompare(best.engine) < 0)) best = { engine, score };
    }
    return best?.engine;
  }

  /** Splits `items` by owner engine, keeping their order within each engine; items with no available engine are under `undefined`. */
  split<T>(items: readonly T[], meterOf: (item: T) => string, available?: (engine: string) => boolean): Map<string | undefined, T[]> {
    const parts = new Map<string | undefined, T[]>();
    for (const item of items) {
      const owner = this.ownerOf(meterOf(item), available);
      const part = parts.get(owner);
      if (part) part.push(item);
      else parts.set(owner, [item]);
    }
    return parts;
  }
}
