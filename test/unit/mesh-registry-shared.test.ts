import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseLinkFormat } from '../../src/mesh/linkformat.js';
import { MeterRegistry, type RegistrationInput } from '../../src/mesh/registry.js';
import { IdsByKey, SharedValues } from '../../src/mesh/shared-values.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';

/**
 * The registry keeps one instance of equal links, tags and firmware versions
 * for all the meters that have them (src/mesh/shared-values.ts); these tests
 * hold it to giving every meter exactly what it registered all the same.
 */
const LINKS = parseLinkFormat('</status>;rt="ami.status";obs, </lp>;rt="ami.lp";ct=60, </fw>;rt="ami.fw"');

let dir: string;
let lease: DatabaseLease;
const registries: MeterRegistry[] = [];

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-registry-shared-'));
  lease = await acquireDatabase(dir);
});

afterEach(async () => {
  for (const registry of registries.splice(0)) await registry.close();
  await lease.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function open(): Promise<MeterRegistry> {
  const registry = await MeterRegistry.open(lease.db, { maxMeters: 1000, sync: false });
  registries.push(registry);
  return registry;
}

function input(endpoint: string, extra: Partial<RegistrationInput> = {}): RegistrationInput {
  return {
    endpoint,
    address: { address: 'fd00::1', port: 5683 },
    links: LINKS,
    firmware: { comm: '2.1.0', metro: '5.0.3' },
    tags: { feeder: 'F3' },
    ...extra,
  };
}

describe('registry: equal values shared between meters', () => {
  it('gives meters with equal links, tags and firmware the same frozen instances', async () => {
    const registry = await open();
    await registry.register(input('m1', { address: { address: 'fd00::1', port: 5683 } }));
    await registry.register(input('m2', { address: { address: 'fd00::2', port: 5683 } }));
    await registry.register(input('m3', { address: { address: 'fd00::3', port: 5683 }, tags: { feeder: 'F4' }, links: [] }));
    const [m1, m2, m3] = ['m1', 'm2', 'm3'].map((name) => registry.byEndpoint(name)!);
    expect(m2!.resources).toBe(m1!.resources);
    expect(m2!.tags).toBe(m1!.tags);
    expect(m2!.firmware).toBe(m1!.firmware);
    expect(m3!.tags).not.toBe(m1!.tags);
    expect(m3!.tags).toEqual({ feeder: 'F4' });
    expect(m3!.resources).toEqual([]);
    expect(Object.isFrozen(m1!.resources) && Object.isFrozen(m1!.tags) && Object.isFrozen(m1!.firmware)).toBe(true);
    expect(Object.isFrozen(m1!.resources[0]!.attributes)).toBe(true);
  });

  it('changes one meter without touching the others that shared its values', async () => {
    const registry = await open();
    const { id } = await registry.register(input('m1'));
    await registry.register(input('m2', { address: { address: 'fd00::2', port: 5683 } }));
    await registry.update(id, { firmware: { comm: '2.2.0' }, links: parseLinkFormat('</status>;rt="ami.status"') });
    const m1 = registry.get(id)!;
    const m2 = registry.byEndpoint('m2')!;
    expect(m1.firmware).toEqual({ comm: '2.2.0', metro: '5.0.3' });
    expect(m2.firmware).toEqual({ comm: '2.1.0', metro: '5.0.3' });
    expect(m1.resources.map((link) => link.target)).toEqual(['/status']);
    expect(m2.resources.map((link) => link.target)).toEqual(['/status', '/lp', '/fw']);
  });

  it('shares again after loading the registry from LevelDB', async () => {
    const first = await open();
    await first.register(input('m1'));
    await first.register(input('m2', { address: { address: 'fd00::2', port: 5683 } }));
    await first.close();
    const reopened = await open();
    const [m1, m2] = [reopened.byEndpoint('m1')!, reopened.byEndpoint('m2')!];
    expect(m1.resources).toEqual(LINKS);
    expect(m2.resources).toBe(m1.resources);
    expect(m2.tags).toBe(m1.tags);
    expect(m2.firmware).toBe(m1.firmware);
  });
});

describe('SharedValues', () => {
  it('returns the first instance for a key and starts over at its cap', () => {
    const pool = new SharedValues<object>(2);
    const a = Object.freeze({ v: 'a' });
    expect(pool.share('a', a)).toBe(a);
    expect(pool.share('a', Object.freeze({ v: 'a' }))).toBe(a);
    pool.share('b', Object.freeze({ v: 'b' }));
    expect(pool.size).toBe(2);
    // A third distinct value: the pool starts over rather than grow.
    const c = Object.freeze({ v: 'c' });
    expect(pool.share('c', c)).toBe(c);
    expect(pool.size).toBe(1);
    const a2 = Object.freeze({ v: 'a' });
    expect(pool.share('a', a2)).toBe(a2);
  });
});

describe('IdsByKey', () => {
  it('behaves as a map of insertion-ordered sets', () => {
    // A model: Map<key, Set<id>>; any sequence of adds and deletes gives the same answers.
    const operation = fc.record({ add: fc.boolean(), key: fc.constantFrom('a', 'b', 'c'), id: fc.constantFrom('1', '2', '3', '4') });
    fc.assert(
      fc.property(fc.array(operation, { maxLength: 60 }), (operations) => {
        const index = new IdsByKey();
        const model = new Map<string, Set<string>>();
        for (const { add, key, id } of operations) {
          if (add) {
            index.add(key, id);
            if (!model.has(key)) model.set(key, new Set());
            model.get(key)!.add(id);
          } else {
            index.delete(key, id);
            model.get(key)?.delete(id);
            if (model.get(key)?.size === 0) model.delete(key);
          }
          for (const k of ['a', 'b', 'c']) {
            expect(index.get(k)).toEqual([...(model.get(k) ?? [])]);
            expect(index.first(k)).toBe([...(model.get(k) ?? [])][0]);
            expect(index.has(k)).toBe(model.has(k));
          }
          expect(index.size).toBe(model.size);
        }
      }),
    );
  });
});
