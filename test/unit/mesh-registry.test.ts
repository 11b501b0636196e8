import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { parseLinkFormat } from '../../src/mesh/linkformat.js';
import {
  MeterRegistry,
  parseRegistrationQuery,
  RegistryError,
  type RegisteredMeter,
  type RegistrationInput,
} from '../../src/mesh/registry.js';
import { acquireDatabase, openSublevel, type DatabaseLease } from '../../src/store/database.js';

const LINKS = parseLinkFormat('</sensors/temp>;rt="temperature-c";if="sensor", </dlms>;rt="dlms";ct=0');
const T0 = Date.UTC(2025, 0, 1);

let dir: string;
let lease: DatabaseLease;
let clock: number;
const now = () => clock;
const registries: MeterRegistry[] = [];

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-registry-'));
  lease = await acquireDatabase(dir);
  clock = T0;
});

afterEach(async () => {
  vi.useRealTimers();
  for (const registry of registries.splice(0)) await registry.close();
  await lease.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function open(options: { maxMeters?: number; defaultLifetimeSeconds?: number } = {}): Promise<MeterRegistry> {
  const registry = await MeterRegistry.open(lease.db, { maxMeters: options.maxMeters ?? 100, now, sync: false, ...options });
  registries.push(registry);
  return registry;
}

function input(endpoint: string, extra: Partial<RegistrationInput> = {}): RegistrationInput {
  return { endpoint, address: { address: 'fd00::1', port: 5683 }, links: LINKS, ...extra };
}

function record(registry: MeterRegistry) {
  const events: string[] = [];
  registry.on('joined', (m) => events.push(`joined ${m.endpoint}`));
  registry.on('updated', (m) => events.push(`updated ${m.endpoint}`));
  registry.on('removed', (m, reason) => events.push(`removed ${m.endpoint} ${reason}`));
  return events;
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof RegistryError) return err.code;
    throw err;
  }
  throw new Error('expected a RegistryError');
}

async function storedKeys(): Promise<string[]> {
  return openSublevel(lease.db, 'registry').keys().all();
}

describe('MeterRegistry', () => {
  it('registers, updates and removes a meter', async () => {
    const registry = await open();
    const events = record(registry);
    const result = await registry.register(
      input('meter-1', {
        sector: 'north',
        lifetimeSeconds: 3600,
        metrics: { rssi: -71, lqi: 200, hops: 2 },
        firmware: { comm: '1.2.3', metro: '4.0' },
        tags: { feeder: 'F12', cell: 'c7' },
      }),
    );
    expect(result.created).toBe(true);
    expect(result.location).toBe(`/rd/${result.id}`);
    expect(result.id).toMatch(/^[A-Za-z0-9_-]{8}$/);
    expect(events).toEqual(['joined meter-1']);

    const meter = registry.get(result.id)!;
    expect(meter).toMatchObject({
      id: result.id,
      endpoint: 'meter-1',
      sector: 'north',
      address: { address: 'fd00::1', port: 5683 },
      registeredAt: T0,
      lastSeen: T0,
      expiresAt: T0 + 3_600_000,
      lifetimeSeconds: 3600,
      metrics: { rssi: -71, lqi: 200, hops: 2, updatedAt: T0 },
      firmware: { comm: '1.2.3', metro: '4.0' },
    });
    expect({ ...meter.tags }).toEqual({ feeder: 'F12', cell: 'c7' });
    expect(meter.resources.map((l) => l.target)).toEqual(['/sensors/temp', '/dlms']);
    expect(Object.isFrozen(meter) && Object.isFrozen(meter.metrics) && Object.isFrozen(meter.resources)).toBe(true);
    expect(registry.byEndpoint('meter-1')).toBe(meter);
    expect(registry.byEndpoint('meter-1', 'north')).toBe(meter);
    expect(registry.byEndpoint('meter-1', 'south')).toBeUndefined();
    expect(registry.size).toBe(1);
    expect(await storedKeys()).toEqual([result.id]);

    clock += 10_000;
    const updated = await registry.update(result.id, { address: { address: 'fd00::2', port: 61616 }, metrics: { snr: 7.5 } });
    expect(updated).toMatchObject({
      registeredAt: T0,
      lastSeen: T0 + 10_000,
      expiresAt: T0 + 10_000 + 3_600_000, // previous lifetime kept
      address: { address: 'fd00::2', port: 61616 },
      metrics: { rssi: -71, lqi: 200, hops: 2, snr: 7.5, updatedAt: T0 + 10_000 },
    });
    expect(registry.get(result.id)).toBe(updated);
    expect(meter.lastSeen).toBe(T0); // the earlier snapshot is unchanged

    const renewed = await registry.update(result.id, { lifetimeSeconds: 120, base: 'coap://[fd00::9]:5683', firmware: { comm: '1.3.0' } });
    expect(renewed.expiresAt).toBe(T0 + 10_000 + 120_000);
    expect(renewed.base).toBe('coap://[fd00::9]:5683');
    expect(renewed.firmware).toEqual({ comm: '1.3.0', metro: '4.0' });
    expect((await registry.update(result.id, { base: null })).base).toBeUndefined();

    const metered = await registry.updateMetrics('meter-1', { rssi: -80, hops: 3 });
    expect(metered.metrics).toMatchObject({ rssi: -80, hops: 3, snr: 7.5 });
    expect(metered.lastSeen).toBe(T0 + 10_000);

    const removed = await registry.remove(result.id);
    expect(removed.endpoint).toBe('meter-1');
    expect(registry.size).toBe(0);
    expect(registry.get(result.id)).toBeUndefined();
    expect(registry.byEndpoint('meter-1')).toBeUndefined();
    expect(await storedKeys()).toEqual([]);
    expect(events).toEqual(['joined meter-1', 'updated meter-1', 'updated meter-1', 'updated meter-1', 'updated meter-1', 'removed meter-1 deleted']);

    expect(await codeOf(registry.remove(result.id))).toBe('NOT_FOUND');
    expect(await codeOf(registry.update(result.id, {}))).toBe('NOT_FOUND');
    expect(await codeOf(registry.updateMetrics('meter-1', { rssi: -1 }))).toBe('NOT_FOUND');
  });

  it('replaces a registration of the same endpoint and sector, keeping its id', async () => {
    const registry = await open();
    const events = record(registry);
    const first = await registry.register(input('m', { metrics: { rssi: -60 }, tags: { feeder: 'A' } }));
    clock += 5000;
    const second = await registry.register(input('m', { links: [], address: { address: '10.0.0.7', port: 1 } }));
    expect(second).toEqual({ id: first.id, location: first.location, created: false });
    const meter = registry.get(first.id)!;
    expect(meter.registeredAt).toBe(T0 + 5000);
    expect(meter.resources).toEqual([]);
    expect(meter.address).toEqual({ address: '10.0.0.7', port: 1 });
    expect(meter.metrics.rssi).toBe(-60); // metrics kept when not re-reported
    expect({ ...meter.tags }).toEqual({}); // tags come from the new registration
    expect(events).toEqual(['joined m', 'removed m replaced', 'joined m']);
    expect(registry.size).toBe(1);

    // Another sector is another registration.
    const other = await registry.register(input('m', { sector: 'b' }));
    expect(other.created).toBe(true);
    expect(other.id).not.toBe(first.id);
    expect(registry.size).toBe(2);
    expect(registry.byEndpoint('m')!.id).toBe(first.id);
    expect(registry.byEndpoint('m', 'b')!.id).toBe(other.id);
  });

  it('refuses new meters at maxMeters but accepts re-registrations', async () => {
    const registry = await open({ maxMeters: 3 });
    for (const name of ['a', 'b', 'c']) await registry.register(input(name));
    expect(await codeOf(registry.register(input('d')))).toBe('FULL');
    expect((await registry.register(input('b'))).created).toBe(false);
    await registry.remove(registry.byEndpoint('a')!.id);
    expect((await registry.register(input('d'))).created).toBe(true);
    expect(registry.list().map((m) => m.endpoint).sort()).toEqual(['b', 'c', 'd']);
  });

  it('validates registrations with BAD_REQUEST', async () => {
    const registry = await open();
    const bad: Partial<RegistrationInput>[] = [
      { endpoint: '' },
      { endpoint: 'x'.repeat(64) },
      { endpoint: 'a b' },
      { sector: 'a/b' },
      { lifetimeSeconds: 59 },
      { lifetimeSeconds: 4_294_967_296 },
      { lifetimeSeconds: 100.5 },
      { address: { address: 'not-an-ip', port: 1 } },
      { address: { address: '::1', port: 70000 } },
      { base: 'http://example.com' },
      { base: 'coap://[fd00::1]?x=1' },
      { links: 'x' as unknown as [] },
      { links: [{ target: 5 }] as unknown as [] },
      { metrics: { rssi: Number.NaN } },
      { metrics: { hops: 1.5 } },
      { firmware: { comm: '' } },
      { tags: { 'bad tag': 'x' } },
    ];
    for (const extra of bad) {
      expect(await codeOf(registry.register(input('ok', extra))), JSON.stringify(extra)).toBe('BAD_REQUEST');
    }
    expect(registry.size).toBe(0);
    await registry.register(input('x'.repeat(63), { lifetimeSeconds: 4_294_967_295 }));
    expect(registry.size).toBe(1);
  });

  it('expires registrations with an injected clock and expireNow()', async () => {
    const registry = await open({ defaultLifetimeSeconds: 600 });
    const events = record(registry);
    const a = await registry.register(input('a', { lifetimeSeconds: 60 }));
    const b = await registry.register(input('b', { lifetimeSeconds: 120 }));
    await registry.register(input('c')); // default 600 s
    clock = T0 + 59_999;
    expect(await registry.expireNow()).toEqual([]);
    clock = T0 + 60_000;
    expect((await registry.expireNow()).map((m) => m.endpoint)).toEqual(['a']);
    // Refreshing b pushes its expiry out; its old heap entry is stale.
    clock = T0 + 100_000;
    await registry.update(b.id);
    clock = T0 + 200_000;
    expect(await registry.expireNow()).toEqual([]);
    clock = T0 + 220_000;
    expect((await registry.expireNow()).map((m) => m.endpoint)).toEqual(['b']);
    expect(registry.get(a.id)).toBeUndefined();
    expect(registry.list().map((m) => m.endpoint)).toEqual(['c']);
    expect(await storedKeys()).toEqual([registry.byEndpoint('c')!.id]);
    expect(events).toEqual(['joined a', 'joined b', 'joined c', 'removed a expired', 'updated b', 'removed b expired']);
  });

  it('arms one timer for the earliest expiry', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], now: T0 });
    const registry = await MeterRegistry.open(lease.db, { maxMeters: 10, sync: false });
    registries.push(registry);
    const removed: string[] = [];
    registry.on('removed', (m, reason) => removed.push(`${m.endpoint} ${reason}`));
    await registry.register(input('slow', { lifetimeSeconds: 3600 }));
    await registry.register(input('fast', { lifetimeSeconds: 60 }));
    await registry.register(input('mid', { lifetimeSeconds: 120 }));
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(60_000);
    await vi.waitFor(() => expect(removed).toEqual(['fast expired']));
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(60_000);
    await vi.waitFor(() => expect(removed).toEqual(['fast expired', 'mid expired']));
    await registry.remove(registry.byEndpoint('slow')!.id);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('persists across close and reopen; drops entries expired meanwhile', async () => {
    const first = await open();
    const keep = await first.register(
      input('keep', { lifetimeSeconds: 7200, sector: 's1', base: 'coaps://[fd00::5]:5684', metrics: { rssi: -90, snr: -3.25 }, tags: JSON.parse('{"__proto__":"p","cell":"9"}') as Record<string, string> }),
    );
    const gone = await first.register(input('gone', { lifetimeSeconds: 60, links: parseLinkFormat('</x>;__proto__="y";obs;rt=a;rt=b') }));
    const before = first.get(keep.id)!;
    await first.close();
    expect(await codeOf(first.register(input('late')))).toBe('CLOSED');

    clock = T0 + 61_000;
    const second = await open();
    const events = record(second);
    expect(second.size).toBe(1);
    expect(second.expiredOnLoad.map((m) => m.id)).toEqual([gone.id]);
    const after = second.get(keep.id)!;
    expect(after).toEqual(before);
    expect(Object.entries(after.tags)).toEqual([
      ['__proto__', 'p'],
      ['cell', '9'],
    ]);
    expect(second.byEndpoint('keep', 's1')).toBe(after);
    await vi.waitFor(() => expect(events).toEqual(['removed gone expired']));
    expect(await storedKeys()).toEqual([keep.id]);

    // Attribute maps survive storage, including awkward names.
    const again = await second.register(input('links', { links: parseLinkFormat('</x>;__proto__="y";obs;rt=a;rt=b') }));
    await second.close();
    const third = await open();
    const links = third.get(again.id)!.resources;
    expect(links[0]!.attributes['__proto__']).toBe('y');
    expect(Object.entries(links[0]!.attributes)).toEqual([
      ['__proto__', 'y'],
      ['obs', true],
      ['rt', ['a', 'b']],
    ]);
    expect(third.size).toBe(2);
  });

  it('skips and deletes unreadable stored records', async () => {
    const first = await open();
    await first.register(input('good'));
    await first.close();
    const sub = openSublevel(lease.db, 'registry');
    await sub.put('junk', new Uint8Array([0xff, 0x00, 0x13]));
    const second = await open();
    expect(second.size).toBe(1);
    expect(second.corruptOnLoad).toBe(1);
    await vi.waitFor(async () => expect(await storedKeys()).not.toContain('junk'));
  });

  it('takes 10,000 registrations quickly with an exact size', async () => {
    const registry = await open({ maxMeters: 10_000 });
    let joined = 0;
    registry.on('joined', () => (joined += 1));
    const started = performance.now();
    const results = await Promise.all(
      Array.from({ length: 10_000 }, (_, i) =>
        registry.register(input(`meter-${i}`, { address: { address: `fd00::${(i + 1).toString(16)}`, port: 5683 }, metrics: { rssi: -50 - (i % 40) } })),
      ),
    );
    const elapsed = performance.now() - started;
    expect(new Set(results.map((r) => r.id)).size).toBe(10_000);
    expect(registry.size).toBe(10_000);
    expect(joined).toBe(10_000);
    expect(await codeOf(registry.register(input('one-too-many')))).toBe('FULL');
    // Sequential refreshes (one batch each) also stay fast.
    for (const result of results.slice(0, 500)) await registry.update(result.id);
    expect(registry.size).toBe(10_000);
    expect(elapsed).toBeLessThan(3000);
    expect((await storedKeys()).length).toBe(10_000);
  });
});

describe('parseRegistrationQuery', () => {
  it('parses RFC 9176 and gateway parameters', () => {
    const q = parseRegistrationQuery(
      '?ep=meter-7&d=south&lt=3600&base=coap%3A%2F%2F%5Bfd00%3A%3A7%5D&rssi=-71.5&lqi=180&snr=6&hops=3&fw_comm=2.1.0&fw_metro=1.0&feeder=F1&cell=C2&tag.zone=Z%209&et=oic.d.meter',
    );
    expect(q).toMatchObject({
      endpoint: 'meter-7',
      sector: 'south',
      lifetimeSeconds: 3600,
      base: 'coap://[fd00::7]',
      metrics: { rssi: -71.5, lqi: 180, snr: 6, hops: 3 },
      firmware: { comm: '2.1.0', metro: '1.0' },
    });
    expect({ ...q.tags }).toEqual({ feeder: 'F1', cell: 'C2', zone: 'Z 9' });
    expect(parseRegistrationQuery('ep=x')).toMatchObject({ endpoint: 'x', metrics: {}, firmware: {} });
  });

  it('parses registration updates without ep', () => {
    expect(parseRegistrationQuery('lt=120&rssi=-80', { update: true })).toMatchObject({ lifetimeSeconds: 120, metrics: { rssi: -80 } });
    expect(parseRegistrationQuery('', { update: true })).toMatchObject({ metrics: {}, firmware: {} });
    expect(() => parseRegistrationQuery('ep=x', { update: true })).toThrow(RegistryError);
  });

  it('rejects malformed queries with BAD_REQUEST', () => {
    for (const query of [
      '',
      'lt=100',
      'ep=',
      'ep',
      'ep=a&ep=b',
      'ep=a%zz',
      'ep=a&lt=59',
      'ep=a&lt=1e5',
      'ep=a&lt=99999999999',
      'ep=a&rssi=abc',
      'ep=a&rssi=-500',
      'ep=a&hops=-1',
      'ep=a&hops=1.5',
      'ep=a&lqi=300',
      'ep=a&base=http://x',
      'ep=a&tag.=x',
      'ep=a&tag.a%20b=x',
      'ep=a&feeder=',
      'ep=a&fw_comm=' + 'x'.repeat(65),
      'ep=a&' + Array.from({ length: 17 }, (_, i) => `tag.t${i}=v`).join('&'),
      'ep=' + 'x'.repeat(3000),
    ]) {
      let code: string | undefined;
      try {
        parseRegistrationQuery(query);
      } catch (err) {
        code = err instanceof RegistryError ? err.code : 'OTHER';
      }
      expect(code, query).toBe('BAD_REQUEST');
    }
  });

  it('feeds register() directly', async () => {
    const registry = await open();
    const query = parseRegistrationQuery('ep=m1&lt=300&feeder=F3&hops=1');
    const result = await registry.register({ ...query, address: { address: '::1', port: 5683 }, links: LINKS });
    const meter: RegisteredMeter = registry.get(result.id)!;
    expect(meter.tags.feeder).toBe('F3');
    expect(meter.metrics.hops).toBe(1);
    expect(meter.expiresAt).toBe(T0 + 300_000);
  });
});
