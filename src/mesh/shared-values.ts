/**
 * Memory helpers for the meter registry, which holds up to tens of thousands
 * of registrations on a box with a few hundred megabytes.
 */

/**
 * Hands out one shared instance for equal immutable values. Meters of one
 * model register the same links, and meters on one feeder the same tags, so
 * a registry that keeps each meter's own copy holds thousands of identical
 * frozen objects; null-prototype ones (links' attributes, tags) are
 * dictionaries in V8 with a hidden class of their own each, some 1.6 KiB a
 * meter with five links. The registry keeps the shared instance instead.
 *
 * Values must be frozen: whoever gets one shares it. The key must describe
 * the value completely (its canonical encoding). At `maxEntries` distinct
 * values the pool starts over: values handed out stay valid, they are only
 * no longer shared with later equal ones, so a peer that sends ever new
 * values cannot make the pool grow.
 */
export class SharedValues<T> {
  private readonly values = new Map<string, T>();

  constructor(private readonly maxEntries = 4096) {}

  get size(): number {
    return this.values.size;
  }

  /** The shared instance equal to `value` (which becomes it when none is known yet). */
  share(key: string, value: T): T {
    const known = this.values.get(key);
    if (known !== undefined) return known;
    if (this.values.size >= this.maxEntries) this.values.clear();
    this.values.set(key, value);
    return value;
  }
}

/**
 * A map from a key to the ids filed under it, for keys that nearly always
 * have one id (an endpoint name, a source address): a lone id is kept as
 * itself, a Set (about 200 bytes more) only once a second one arrives.
 */
export class IdsByKey {
  private readonly entries = new Map<string, string | Set<string>>();

  get size(): number {
    return this.entries.size;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  add(key: string, id: string): void {
    const known = this.entries.get(key);
    if (known === undefined || known === id) this.entries.set(key, id);
    else if (typeof known === 'string') this.entries.set(key, new Set([known, id]));
    else known.add(id);
  }

  delete(key: string, id: string): void {
    const known = this.entries.get(key);
    if (known === undefined) return;
    if (typeof known === 'string') {
      if (known === id) this.entries.delete(key);
      return;
    }
    known.delete(id);
    if (known.size === 1) this.entries.set(key, known.values().next().value as string);
    else if (known.size === 0) this.entries.delete(key);
  }

  /** The first id still under `key` (the one added first). */
  first(key: string): string | undefined {
    const known = this.entries.get(key);
    return typeof known === 'string' || known === undefined ? known : (known.values().next().value as string);
  }

  /** The ids under `key`, in the order they were added. */
  get(key: string): string[] {
    const known = this.entries.get(key);
    if (known === undefined) return [];
    return typeof known === 'string' ? [known] : [...known];
  }
}
