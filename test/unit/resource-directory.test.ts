import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as coap from 'coap';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MeshEndpoint } from '../../src/coap/endpoint.js';
import { closeAgent, coapCall } from '../../src/coap/request.js';
import { ResourceDirectory } from '../../src/mesh/rd.js';
import { MeterRegistry } from '../../src/mesh/registry.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';

const COAP_CLIENT = '/usr/bin/coap-client-notls';
let dir: string;
let lease: DatabaseLease;
let registry: MeterRegistry;
let endpoint: MeshEndpoint;
let directory: ResourceDirectory;

async function start(maxInFlight: number, maxMeters = 1000): Promise<void> {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ami-rd-'));
  lease = await acquireDatabase(path.join(dir, 'store'));
  registry = await MeterRegistry.open(lease.db, { maxMeters, sync: false });
  endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 1000, retryAfterSeconds: 5 });
  directory = new ResourceDirectory(registry, { maxInFlight, retryAfterSeconds: 1 });
  endpoint.addResource(directory);
  await endpoint.start();
}

afterEach(async () => {
  await endpoint.stop();
  await registry.close();
  await lease.release();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * libcoap's client exits 0 even on failure: the verdict is in what it prints.
 * Asynchronous, since the endpoint it talks to runs in this process.
 */
function coapClient(args: string[]): Promise<string> {
  return new Promise((resolve) => {
    execFile(COAP_CLIENT, args, { encoding: 'utf8', timeout: 20_000 }, (_err, stdout, stderr) => resolve(`${stdout}${stderr}`));
  });
}

describe('resource directory (RFC 9176) on the mesh endpoint', () => {
  beforeEach(async () => {
    await start(64);
  });

  it('registers, updates, serves and removes a meter with libcoap\'s coap-client as the meter', async () => {
    const base = `coap://[::1]:${endpoint.port}`;
    const created = await coapClient(['-m', 'post', '-t', '40', '-e', '</1/0/0>;rt="meter",</3/0/1>', '-v', '6', `${base}/rd?ep=mtr-rd-1&lt=120&rssi=-90&hops=9&feeder=F7&fw_comm=2.1.0`]);
    const location = /c:2\.01 .*Location-Path:rd, Location-Path:([A-Za-z0-9_-]+)/.exec(created);
    expect(location, created).not.toBeNull();
    const id = location![1]!;
    const meter = registry.get(id);
    expect(meter).toMatchObject({ endpoint: 'mtr-rd-1', lifetimeSeconds: 120, metrics: { rssi: -90, hops: 9 }, tags: { feeder: 'F7' }, firmware: { comm: '2.1.0' } });
    expect(meter?.resources.map((link) => link.target)).toEqual(['/1/0/0', '/3/0/1']);

    const updated = await coapClient(['-m', 'post', '-v', '6', `${base}/rd/${id}?lt=300&rssi=-70&fw_metro=1.4.2`]);
    expect(updated).toMatch(/c:2\.04/);
    // New firmware versions reported in an update are kept, merged with the ones registered.
    expect(registry.get(id)).toMatchObject({ lifetimeSeconds: 300, metrics: { rssi: -70, hops: 9 }, firmware: { comm: '2.1.0', metro: '1.4.2' } });

    const links = await coapClient(['-m', 'get', `${base}/rd/${id}`]);
    expect(links).toContain('</1/0/0>;rt="meter"');

    const deleted = await coapClient(['-m', 'delete', '-v', '6', `${base}/rd/${id}`]);
    expect(deleted).toMatch(/c:2\.02/);
    expect(registry.get(id)).toBeUndefined();
    expect(await coapClient(['-m', 'get', `${base}/rd/${id}`])).toMatch(/4\.04/);
  });

  it('refuses malformed registrations with 4.00 and keeps serving', async () => {
    const base = `coap://[::1]:${endpoint.port}`;
    for (const url of [`${base}/rd`, `${base}/rd?ep=`, `${base}/rd?ep=ok&lt=5`, `${base}/rd?ep=bad%20name`]) {
      const answer = await coapCall(url, { method: 'POST', payload: Buffer.from('</a>'), contentFormat: 40, timeoutMs: 5000 });
      expect(answer.code, url).toBe('4.00');
    }
    const broken = await coapCall(`${base}/rd?ep=mtr-x`, { method: 'POST', payload: Buffer.from('<unterminated'), contentFormat: 40, timeoutMs: 5000 });
    expect(broken.code).toBe('4.00');
    const fine = await coapCall(`${base}/rd?ep=mtr-x`, { method: 'POST', payload: Buffer.from('</a>'), contentFormat: 40, timeoutMs: 5000 });
    expect(fine.code).toBe('2.01');
    expect(directory.counters.refused).toBe(5);
  });
});

describe('reconnect storm', () => {
  it('spreads 300 simultaneous registrations with 5.03 and Max-Age; every meter ends up registered once', async () => {
    await start(8);
    const base = `coap://[::1]:${endpoint.port}`;
    const meters = Array.from({ length: 300 }, (_, i) => `mtr-storm-${i}`);
    let deferred = 0;
    const agents: coap.Agent[] = [];
    try {
      await Promise.all(
        meters.map(async (name) => {
          const agent = new coap.Agent({ type: 'udp6' });
          agents.push(agent);
          for (;;) {
            const answer = await coapCall(`${base}/rd?ep=${name}&lt=3600`, { method: 'POST', payload: Buffer.from('</1/0/0>'), contentFormat: 40, timeoutMs: 20_000, agent });
            if (answer.code === '2.01') return;
            expect(answer.code).toBe('5.03');
            expect(answer.maxAge).toBeGreaterThanOrEqual(1);
            deferred += 1;
            // As a meter does: wait Max-Age, here scaled down to keep the test short.
            await new Promise((resolve) => setTimeout(resolve, (answer.maxAge ?? 1) * 20 * (1 + Math.random())));
          }
        }),
      );
    } finally {
      // Closed whether or not every meter got in: a failed run leaves no socket behind.
      await Promise.all(agents.map((agent) => closeAgent(agent)));
    }
    expect(registry.size).toBe(300);
    expect(new Set(registry.list().map((meter) => meter.endpoint)).size).toBe(300);
    expect(deferred).toBeGreaterThan(0);
    expect(directory.counters.deferred).toBe(deferred);
  });
});
