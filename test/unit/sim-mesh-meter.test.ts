import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as coap from 'coap';
import { generate, parse } from 'coap-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { cborDecode } from '../../src/coap/cbor.js';
import { MeshEndpoint } from '../../src/coap/endpoint.js';
import { settleExchange } from '../../src/coap/exchanges.js';
import { readingKey } from '../../src/coap/reading.js';
import { ResourceDirectory } from '../../src/mesh/rd.js';
import { MeterRegistry, type RegisteredMeter } from '../../src/mesh/registry.js';
import { meterRadioProfile, type RegistrationEvent } from '../../src/sim/mesh-meter.js';
import { loadProfile, MeterCoapServer } from '../../src/sim/meter-server.js';
import { MeterFleet, type MeterFleetOptions } from '../../src/sim/meters.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';

const COAP_CLIENT = '/usr/bin/coap-client-notls';

interface Gateway {
  endpoint: MeshEndpoint;
  registry: MeterRegistry;
  directory: ResourceDirectory;
  url: string;
}

const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The gateway side as the appliance wires it: mesh endpoint, resource directory, registry in LevelDB on disk. */
async function startGateway(rd: { maxInFlight: number; retryAfterSeconds: number } = { maxInFlight: 64, retryAfterSeconds: 1 }): Promise<Gateway> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-sim-rd-'));
  const lease: DatabaseLease = await acquireDatabase(path.join(dir, 'store'));
  const registry = await MeterRegistry.open(lease.db, { maxMeters: 1000, sync: false });
  const endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 2000, retryAfterSeconds: 1 });
  const directory = new ResourceDirectory(registry, rd);
  endpoint.addResource({ matches: (p) => ResourceDirectory.handles(p), handle: (req, res, p, q) => directory.handle(req, res, p, q) });
  await endpoint.start();
  cleanups.push(async () => {
    await endpoint.stop();
    await registry.close();
    await lease.release();
    rmSync(dir, { recursive: true, force: true });
  });
  return { endpoint, registry, directory, url: `coap://[::1]:${endpoint.port}` };
}

async function startFleet(options: Partial<MeterFleetOptions> & { gateway: string; count: number }): Promise<{ fleet: MeterFleet; events: RegistrationEvent[] }> {
  const fleet = new MeterFleet({ intervalMs: 60_000, protocol: 'plain', prefix: 'sim-', readings: false, startSpreadMs: 0, ...options });
  const events: RegistrationEvent[] = [];
  fleet.onRegistration((event) => events.push(event));
  cleanups.push(() => fleet.stop());
  await fleet.start();
  return { fleet, events };
}

/** Resolves once `predicate` holds; checked on every registration event of the fleet, with a deadline. */
function until(fleet: MeterFleet, predicate: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  if (predicate()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`not within ${timeoutMs} ms: ${what}; stats ${JSON.stringify(fleet.stats)}`));
    }, timeoutMs);
    const stop = fleet.onRegistration(() => {
      if (!predicate()) return;
      clearTimeout(timer);
      stop();
      resolve();
    });
  });
}

/** libcoap's client; it exits 0 even on failure, so the verdict is in what it prints. Asynchronous: the meters run in this process. */
function coapClient(args: string[], timeoutMs = 20_000): Promise<string> {
  return new Promise((resolve) => {
    execFile(COAP_CLIENT, args, { encoding: 'utf8', timeout: timeoutMs }, (_err, stdout, stderr) => resolve(`${stdout}${stderr}`));
  });
}

function byEndpoint(registry: MeterRegistry, name: string): RegisteredMeter {
  const meter = registry.byEndpoint(name);
  if (!meter) throw new Error(`${name} is not registered`);
  return meter;
}

describe('simulated meters joining the resource directory', () => {
  it('register with their base, link metrics, firmware and links, and push readings only once registered', async () => {
    const gateway = await startGateway();
    const joinedAt = new Map<string, number>();
    gateway.registry.on('joined', (meter) => joinedAt.set(meter.endpoint, Date.now()));
    const firstReadingAt = new Map<string, number>();
    let readingFromEach: () => void = () => undefined;
    const allReported = new Promise<void>((resolve) => (readingFromEach = resolve));
    gateway.endpoint.onUplink(({ exchangeId, reading }) => {
      if (!firstReadingAt.has(reading.meter)) firstReadingAt.set(reading.meter, Date.now());
      settleExchange(exchangeId, readingKey(reading.meter, reading.id), { accepted: true });
      if (firstReadingAt.size === 12) readingFromEach();
    });
    const { fleet } = await startFleet({ gateway: gateway.url, count: 12, register: true, serve: true, readings: true, intervalMs: 300, startSpreadMs: 200 });
    await until(fleet, () => fleet.stats.registered === 12, 'all 12 registered');
    // Readings follow registration; wait for one from every meter (a reading reaches the gateway before it is acknowledged).
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([allReported, new Promise<void>((resolve) => (timer = setTimeout(resolve, 20_000)))]);
    clearTimeout(timer);
    expect(firstReadingAt.size).toBe(12);
    // The meter counts a reading acknowledged only once the gateway's answer arrives.
    await new Promise<void>((resolve) => {
      if (fleet.stats.acknowledged >= 12) return resolve();
      const stop = fleet.onAcknowledged(() => {
        if (fleet.stats.acknowledged < 12) return;
        stop();
        resolve();
      });
    });

    expect(gateway.registry.size).toBe(12);
    for (const meter of fleet.meters()) {
      const registered = byEndpoint(gateway.registry, meter.name);
      const profile = meterRadioProfile(meter.name);
      expect(meter.base).toBe(`coap://[::1]:${meter.address.port}`);
      expect(registered.base).toBe(meter.base);
      // Requests leave from the socket the meter serves on.
      expect(registered.address).toEqual({ address: '::1', port: meter.address.port });
      expect(registered.lifetimeSeconds).toBe(3600);
      expect(registered.metrics).toMatchObject({ hops: profile.hops, lqi: profile.lqi });
      // Reported RSSI varies by up to 2 dB around the meter's own.
      expect(Math.abs((registered.metrics.rssi ?? Number.NaN) - profile.rssi)).toBeLessThanOrEqual(2);
      expect(registered.firmware).toEqual({ comm: profile.fwComm, metro: profile.fwMetro });
      expect(registered.tags.feeder).toBe(profile.feeder);
      expect(registered.resources.map((link) => link.target)).toEqual(['/status', '/lp', '/fw', '/relay']);
      expect(registered.resources[0]?.attributes.obs).toBe(true);
      expect(meter.location).toBe(`/rd/${registered.id}`);
      expect(firstReadingAt.get(meter.name)).toBeGreaterThanOrEqual(joinedAt.get(meter.name) ?? Number.POSITIVE_INFINITY);
    }
    expect(fleet.stats.acknowledged).toBeGreaterThanOrEqual(12);
  });

  it('link metrics are stable per meter and include meters a field engineer must look at', () => {
    const names = Array.from({ length: 500 }, (_, i) => `mtr-${String(i + 1).padStart(6, '0')}`);
    const profiles = names.map((name) => meterRadioProfile(name));
    expect(names.map((name) => meterRadioProfile(name))).toEqual(profiles);
    const far = profiles.filter((p) => p.hops > 8).length;
    const faint = profiles.filter((p) => p.rssi < -85).length;
    // A few, not none and not most: the topology report has something to flag.
    expect(far).toBeGreaterThan(0);
    expect(far).toBeLessThan(names.length / 10);
    expect(faint).toBeGreaterThan(0);
    expect(faint).toBeLessThan(names.length / 10);
    for (const p of profiles) {
      expect(p.hops).toBeGreaterThanOrEqual(1);
      expect(p.lqi).toBeGreaterThanOrEqual(0);
      expect(p.lqi).toBeLessThanOrEqual(255);
    }
  });

  it('a reconnect storm against a tiny maxInFlight is deferred with 5.03; every meter waits at least Max-Age and still registers', async () => {
    const gateway = await startGateway({ maxInFlight: 1, retryAfterSeconds: 1 });
    const { fleet, events } = await startFleet({ gateway: gateway.url, count: 40, register: true });
    await until(fleet, () => fleet.stats.registered === 40, 'all 40 registered', 45_000);

    expect(gateway.registry.size).toBe(40);
    expect(new Set(gateway.registry.list().map((meter) => meter.endpoint)).size).toBe(40);
    expect(fleet.stats.registrationDeferred).toBeGreaterThan(0);
    expect(fleet.stats.registrationDeferred).toBe(gateway.directory.counters.deferred);
    expect(fleet.stats.registrationRetries).toBe(fleet.stats.registrationDeferred);
    expect(fleet.stats.registrationFailed).toBe(0);

    let checked = 0;
    for (const name of fleet.meters().map((meter) => meter.name)) {
      const own = events.filter((event) => event.meter === name);
      for (const [i, event] of own.entries()) {
        if (event.kind !== 'deferred') continue;
        const next = own.slice(i + 1).find((later) => later.kind === 'attempt');
        expect(next, `${name} tried again after its 5.03`).toBeDefined();
        expect(event.maxAgeSeconds).toBeGreaterThanOrEqual(1);
        expect(event.waitMs).toBeGreaterThanOrEqual(event.maxAgeSeconds * 1000);
        expect(event.waitMs).toBeLessThanOrEqual(event.maxAgeSeconds * 1500);
        // Timers may fire a millisecond before Date.now() says the delay is over.
        expect(next!.at - event.at).toBeGreaterThanOrEqual(event.maxAgeSeconds * 1000 - 2);
        checked += 1;
      }
      const registered = own.find((event) => event.kind === 'registered');
      const first = own.find((event) => event.kind === 'attempt');
      expect(registered?.kind === 'registered' && registered.latencyMs).toBe(registered!.at - first!.at);
    }
    expect(checked).toBe(fleet.stats.registrationDeferred);
  });

  it('refreshes at the configured fraction of the lifetime, and registers from scratch when the refresh gets 4.04', async () => {
    const gateway = await startGateway();
    // lt=60 is the least the directory accepts; refreshing at 2-3 % of it keeps the test short.
    const { fleet, events } = await startFleet({ gateway: gateway.url, count: 3, register: true, lifetimeSeconds: 60, refreshAt: [0.02, 0.03] });
    const updates: RegisteredMeter[] = [];
    gateway.registry.on('updated', (meter) => updates.push(meter));
    const count = (kind: RegistrationEvent['kind'], name?: string): number =>
      events.filter((event) => event.kind === kind && (name === undefined || event.meter === name)).length;
    await until(fleet, () => count('refreshed') >= 6, 'two refreshes per meter');

    for (const meter of fleet.meters()) {
      const own = events.filter((event) => event.meter === meter.name);
      const registered = own.find((event) => event.kind === 'registered')!;
      const refreshes = own.filter((event) => event.kind === 'attempt' && event.refresh);
      expect(refreshes.length).toBeGreaterThanOrEqual(2);
      // Due between 2 % and 3 % of 60 s after the registration (the timer may fire a millisecond early).
      const after = refreshes[0]!.at - registered.at;
      expect(after).toBeGreaterThanOrEqual(1200 - 2);
      expect(after).toBeLessThan(1800 + 500);
    }
    const refreshedAtGateway = updates.filter((meter) => meter.endpoint === 'sim-000001');
    expect(refreshedAtGateway.length).toBeGreaterThanOrEqual(2);
    // Each refresh renews the full lifetime from when it arrived.
    for (const meter of refreshedAtGateway) expect(meter.expiresAt).toBe(meter.lastSeen + 60_000);

    // The gateway forgets one meter; its next refresh gets 4.04 and it registers again.
    const victim = byEndpoint(gateway.registry, 'sim-000002');
    await gateway.registry.remove(victim.id);
    const lostBefore = count('lost', 'sim-000002');
    const registeredBefore = count('registered', 'sim-000002');
    await until(fleet, () => count('registered', 'sim-000002') > registeredBefore, 'sim-000002 registered again');
    expect(count('lost', 'sim-000002')).toBe(lostBefore + 1);
    const again = byEndpoint(gateway.registry, 'sim-000002');
    expect(again.id).not.toBe(victim.id);
    expect(fleet.meters().find((meter) => meter.name === 'sim-000002')?.location).toBe(`/rd/${again.id}`);
    expect(fleet.stats.registered).toBe(3);
  });

  it('without Max-Age a 5.03 means 60 s (jittered); a 2.01 without Location-Path is a failure with backoff', async () => {
    // A stand-in gateway answering what a real one would not, to see the meter's side of it.
    const server = coap.createServer({ type: 'udp6' });
    server.on('request', (req: coap.IncomingMessage, res: coap.OutgoingMessage) => {
      res.code = req.url.includes('ep=sim-000001') ? '5.03' : '2.01';
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '::1', () => resolve()));
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const port = (server as unknown as { _sock: { address(): { port: number } } })._sock.address().port;
    const warnings: string[] = [];
    const log = { info: () => undefined, warn: (message: string) => warnings.push(message) };
    const { fleet, events } = await startFleet({ gateway: `coap://[::1]:${port}`, count: 2, register: true, log });
    await until(fleet, () => events.some((e) => e.kind === 'deferred') && events.some((e) => e.kind === 'failed'), 'a deferral and a failure');
    const deferred = events.find((e) => e.kind === 'deferred');
    expect(deferred).toMatchObject({ meter: 'sim-000001', maxAgeSeconds: 60 });
    expect(deferred?.kind === 'deferred' && deferred.waitMs).toBeGreaterThanOrEqual(60_000);
    expect(deferred?.kind === 'deferred' && deferred.waitMs).toBeLessThanOrEqual(90_000);
    const failed = events.find((e) => e.kind === 'failed');
    expect(failed).toMatchObject({ meter: 'sim-000002', refresh: false });
    expect(failed?.kind === 'failed' && failed.reason).toMatch(/2\.01 without a usable Location-Path/);
    expect(failed?.kind === 'failed' && failed.waitMs).toBeGreaterThanOrEqual(2000);
    expect(fleet.stats).toMatchObject({ registered: 0, registrationDeferred: 1, registrationFailed: 1 });
    // Said once for the fleet, not once per meter and attempt.
    expect(warnings.filter((message) => message.includes('registration answered 2.01'))).toHaveLength(1);
  });
});

describe('a simulated meter serving CoAP, with libcoap as the client', () => {
  async function servingMeter(statusIntervalMs = 400): Promise<{ fleet: MeterFleet; base: string; name: string; server: MeterCoapServer }> {
    const gateway = await startGateway();
    const { fleet } = await startFleet({ gateway: gateway.url, count: 1, register: true, serve: true, statusIntervalMs });
    await until(fleet, () => fleet.stats.registered === 1, 'registered');
    const [meter] = fleet.meters();
    // The meter's base as the gateway's registry holds it: what the gateway would contact.
    const base = byEndpoint(gateway.registry, meter!.name).base!;
    return { fleet, base, name: meter!.name, server: meter!.server! };
  }

  it('GET /lp arrives whole, block-wise (Block2), at the default and at a small block size', async () => {
    const { base, name } = await servingMeter();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-sim-lp-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    for (const blockArgs of [[], ['-b', '256']]) {
      const file = path.join(dir, `lp${blockArgs.length}.cbor`);
      const before = loadProfile(name, Date.now());
      const out = await coapClient(['-m', 'get', ...blockArgs, '-o', file, `${base}/lp`]);
      const after = loadProfile(name, Date.now());
      const received = readFileSync(file);
      // Larger than one block: the transfer had to be block-wise.
      expect(received.length, out).toBeGreaterThan(2048);
      // The same bytes the meter serves (a quarter-hour may have turned during the transfer).
      expect(received.equals(before) || received.equals(after)).toBe(true);
      const decoded = cborDecode(received) as { meter: string; entries: { t: number; ai: number }[] };
      expect(decoded.meter).toBe(name);
      expect(decoded.entries).toHaveLength(96);
      for (let i = 1; i < decoded.entries.length; i++) {
        expect(decoded.entries[i]!.t - decoded.entries[i - 1]!.t).toBe(900);
        expect(decoded.entries[i]!.ai).toBeGreaterThan(decoded.entries[i - 1]!.ai);
      }
    }
  });

  it('observing /status gets periodic notifications and one when the relay switches', async () => {
    const { base, server } = await servingMeter(500);
    const observing = coapClient(['-m', 'get', '-s', '3', '-v', '6', `${base}/status`]);
    // Switch the relay once the observation is registered (the server tells; no event crosses the process boundary).
    const deadline = Date.now() + 5000;
    while (server.observerCount === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(server.observerCount).toBe(1);
    const switched = await coapClient(['-m', 'put', '-t', '0', '-e', 'disconnected', '-v', '6', `${base}/relay`]);
    expect(switched).toMatch(/c:2\.04/);
    const out = await observing;
    // With -v 6 libcoap prints each notification's header line, then its payload in hex between << >>.
    const lines = out.split('\n');
    const notifications = lines.flatMap((line, i) => {
      const header = /c:2\.05 .*Observe:(\d+)/.exec(line);
      const hex = /^<<([0-9a-f]+)>>$/.exec(lines[i + 1] ?? '');
      return header && hex ? [{ observe: Number(header[1]), status: cborDecode(Buffer.from(hex[1]!, 'hex')) as { power: string; relay: string; energyWh: number; ts: number } }] : [];
    });
    // The first answer, the relay change, and periodic ones every 0.5 s for 3 s.
    expect(notifications.length, out).toBeGreaterThanOrEqual(4);
    for (let i = 1; i < notifications.length; i++) {
      expect(notifications[i]!.observe).toBeGreaterThan(notifications[i - 1]!.observe);
      expect(notifications[i]!.status.ts).toBeGreaterThanOrEqual(notifications[i - 1]!.status.ts);
    }
    expect(notifications[0]!.status).toMatchObject({ power: 'on', relay: 'connected' });
    expect(notifications.at(-1)!.status.relay).toBe('disconnected');
    expect(server.relay).toBe('disconnected');
    expect(server.notifications).toBeGreaterThanOrEqual(notifications.length - 1);
    // libcoap deregisters when it stops observing (RFC 7641 section 3.6): the meter forgets it.
    const forgotten = Date.now() + 5000;
    while (server.observerCount > 0 && Date.now() < forgotten) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(server.observerCount).toBe(0);
  });

  it('PUT /fw of 5 KiB block-wise (Block1) answers the SHA-256 of what arrived', async () => {
    const { base, server } = await servingMeter();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-sim-fw-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const image = randomBytes(5 * 1024);
    const file = path.join(dir, 'fw.bin');
    writeFileSync(file, image);
    const expected = createHash('sha256').update(image).digest('hex');
    for (const blockSize of ['1024', '256']) {
      const out = await coapClient(['-m', 'put', '-b', blockSize, '-f', file, `${base}/fw`]);
      expect(out.trim(), `block size ${blockSize}`).toBe(expected);
      expect(server.lastUpload).toMatchObject({ bytes: image.length, sha256: expected });
    }
  });

  it('keeps serving after garbage, malformed options and out-of-order blocks', async () => {
    const { base, server } = await servingMeter();
    const port = Number(/:(\d+)$/.exec(base)![1]);
    const socket = createSocket('udp6');
    cleanups.push(() => {
      socket.close();
    });
    await new Promise<void>((resolve) => socket.bind(0, '::1', () => resolve()));
    const ours: ReturnType<typeof parse>[] = [];
    let answeredAll: () => void = () => undefined;
    const allAnswered = new Promise<void>((resolve) => (answeredAll = resolve));
    socket.on('message', (message) => {
      const packet = parse(message);
      if (packet.token.length !== 1 || ![1, 2, 3].includes(packet.messageId)) return;
      ours.push(packet);
      if (ours.length === 3) answeredAll();
    });
    const send = (bytes: Buffer): Promise<void> => new Promise((resolve) => socket.send(bytes, port, '::1', () => resolve()));
    await send(randomBytes(64));
    await send(Buffer.from([0x40, 0x01, 0x00]));
    // A Block1 upload that starts at block 3, one with a reserved block size, and Block1 on /status.
    const request = (messageId: number, pathName: string, block1: Buffer): Buffer =>
      generate({ messageId, token: Buffer.from([messageId]), code: '0.03', confirmable: true, options: [{ name: 'Uri-Path', value: Buffer.from(pathName) }, { name: 'Block1', value: block1 }], payload: Buffer.alloc(64, 1) });
    await send(request(1, 'fw', Buffer.from([(3 << 4) | 0x8 | 2])));
    await send(request(2, 'fw', Buffer.from([0x0f])));
    await send(request(3, 'status', Buffer.from([0x02])));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([allAnswered, new Promise<void>((resolve) => (timer = setTimeout(resolve, 5000)))]);
    clearTimeout(timer);
    expect(ours.sort((a, b) => a.messageId - b.messageId).map((packet) => packet.code)).toEqual(['4.08', '4.00', '4.02']);
    expect(server.lastUpload).toBeUndefined();
    const status = await coapClient(['-m', 'get', '-v', '6', `${base}/status`]);
    expect(status).toMatch(/c:2\.05/);
  });
});
