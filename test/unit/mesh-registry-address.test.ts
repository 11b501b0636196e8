import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MeterRegistry, type RegistrationInput } from '../../src/mesh/registry.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';

/** The registry's index of source addresses, behind "registered meters only" and the meter of a reading. */

const T0 = Date.UTC(2025, 0, 1);
let dir: string;
let lease: DatabaseLease;
let clock: number;
const registries: MeterRegistry[] = [];

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-registry-address-'));
  lease = await acquireDatabase(dir);
  clock = T0;
});

afterEach(async () => {
  for (const registry of registries.splice(0)) await registry.close();
  await lease.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function open(): Promise<MeterRegistry> {
  const registry = await MeterRegistry.open(lease.db, { maxMeters: 100, now: () => clock, sync: false });
  registries.push(registry);
  return registry;
}

function input(endpoint: string, address: string, extra: Partial<RegistrationInput> = {}): RegistrationInput {
  return { endpoint, address: { address, port: 49152 }, links: [], lifetimeSeconds: 60, ...extra };
}

describe('MeterRegistry address index', () => {
  it('finds registrations by source IP, whatever the port, base or IPv4-mapped spelling', async () => {
    const registry = await open();
    await registry.register(input('mtr-a', 'fd00::a', { base: 'coap://[fd00::a]:5683' }));
    await registry.register(input('mtr-v4', '::ffff:10.1.2.3'));
    expect(registry.hasAddress('fd00::a')).toBe(true);
    expect(registry.hasAddress('FD00::A')).toBe(true);
    expect(registry.hasAddress('10.1.2.3')).toBe(true);
    expect(registry.hasAddress('::ffff:10.1.2.3')).toBe(true);
    expect(registry.hasAddress('fd00::b')).toBe(false);
    expect(registry.atAddress('fd00::a').map((m) => m.endpoint)).toEqual(['mtr-a']);
  });

  it('follows a meter that moves (update), leaves (remove) or expires, and is rebuilt when the store is opened again', async () => {
    const registry = await open();
    const { id } = await registry.register(input('mtr-move', 'fd00::1'));
    await registry.update(id, { address: { address: 'fd00::2', port: 5683 } });
    expect(registry.hasAddress('fd00::1')).toBe(false);
    expect(registry.hasAddress('fd00::2')).toBe(true);
    await registry.updateMetrics('mtr-move', { rssi: -80 });
    expect(registry.meterAt('fd00::2')?.metrics.rssi).toBe(-80);

    const other = await registry.register(input('mtr-gone', 'fd00::3'));
    await registry.remove(other.id);
    expect(registry.hasAddress('fd00::3')).toBe(false);

    await registry.register(input('mtr-expiring', 'fd00::4', { lifetimeSeconds: 60 }));
    await registry.update(id, { lifetimeSeconds: 3600 });
    clock += 61_000;
    await registry.expireNow();
    expect(registry.hasAddress('fd00::4')).toBe(false);
    expect(registry.hasAddress('fd00::2')).toBe(true);

    await registry.close();
    const reopened = await open();
    expect(reopened.hasAddress('fd00::2')).toBe(true);
    expect(reopened.hasAddress('fd00::1')).toBe(false);
  });

  it('names the meter behind an address only when that is unambiguous', async () => {
    const registry = await open();
    await registry.register(input('mtr-1', 'fd00::9'));
    expect(registry.meterAt('fd00::9')?.endpoint).toBe('mtr-1');
    await registry.register(input('mtr-2', 'fd00::9'));
    // Two meters behind one IP: only the name the request gives decides.
    expect(registry.meterAt('fd00::9')).toBeUndefined();
    expect(registry.meterAt('fd00::9', 'mtr-2')?.endpoint).toBe('mtr-2');
    expect(registry.meterAt('fd00::9', 'mtr-3')).toBeUndefined();
    // One meter at an address is that address's registration even when the request claims another
    // name: the flow sees both and can tell (the link metrics are the address's anyway).
    await registry.register(input('mtr-7', 'fd00::7'));
    expect(registry.meterAt('fd00::7', 'someone-else')?.endpoint).toBe('mtr-7');
    expect(registry.meterAt('fd00::8', 'mtr-7')).toBeUndefined();
  });
});
