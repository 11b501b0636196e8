import { createSocket, type Socket } from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { IncomingMessage, OutgoingMessage } from 'coap';
import { generate, parse } from 'coap-packet';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cborDecode, cborEncode } from '../../src/coap/cbor.js';
import { decodeBlock } from '../../src/coap/client/options.js';
import { MeshEndpoint, type MeshResource } from '../../src/coap/endpoint.js';
import { coapCall } from '../../src/coap/request.js';
import { openFirmwareRepository, type FirmwareRepository } from '../../src/firmware/index.js';
import type { FirmwareOffer, MeterFirmwareReport } from '../../src/firmware/rollout-types.js';
import { FirmwareResource } from '../../src/mesh/firmware-resource.js';
import { parseLinkFormat } from '../../src/mesh/linkformat.js';
import { ResourceDirectory } from '../../src/mesh/rd.js';
import { MeterRegistry, type RegisteredMeter } from '../../src/mesh/registry.js';
import type { SimulatedMeterFirmware } from '../../src/sim/meter-firmware.js';
import { MAX_FIRMWARE_BYTES } from '../../src/sim/meter-server.js';
import { MeterFleet, type MeterFleetOptions } from '../../src/sim/meters.js';
import { acquireDatabase } from '../../src/store/database.js';
import { REPO_ROOT } from '../helpers/appliance.js';

/**
 * The simulated meters' side of firmware updates (issue 9, the pull model):
 * a meter offered an image over POST /fw/update downloads it block by block
 * from a real gateway-side server (the mesh endpoint with the firmware
 * resource over the signed test images, and the resource directory), checks
 * it, installs it and registers again with its new versions.
 */

const IMAGES = path.join(REPO_ROOT, 'firmware-images', 'test-images');
const ROOT_CA = readFileSync(path.join(REPO_ROOT, 'firmware-images', 'test-ca', 'root-ca.pem'), 'utf8');
const CBOR = 60;
const INITIAL = { model: 'AMX-100', comm: '2.1.0', metro: '5.0.0' };

let repository: FirmwareRepository;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  repository = await openFirmwareRepository({ root: IMAGES, trustAnchorsPem: [ROOT_CA] });
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The offer the gateway makes for a good test image. */
function offerFor(id: string): FirmwareOffer {
  const image = repository.get(id);
  if (image?.status !== 'good') throw new Error(`${id} is not a good test image`);
  const { target, version, sha256, size } = image.manifest;
  return { path: `/fw/${id}`, target, version, sha256, size };
}

interface BlockRequest {
  path: string;
  num: number;
  szx: number;
  at: number;
  /** The request's Block2 option, as the endpoint hands it to the resource. */
  block2?: Buffer;
}

/**
 * The gateway's firmware resource, with a record of every block asked for.
 * `intercept` may answer a request itself (returns true) instead of the images.
 */
class RecordingFirmwareResource implements MeshResource {
  readonly requests: BlockRequest[] = [];
  intercept: ((request: BlockRequest, req: IncomingMessage, res: OutgoingMessage) => boolean) | undefined;

  /** Like the images it wraps, it gets the request's Block2 option from the endpoint. */
  ownBlock2(p: string): boolean {
    return this.images.ownBlock2(p);
  }

  constructor(readonly images: FirmwareResource) {}

  matches(p: string): boolean {
    return this.images.matches(p);
  }

  handle(req: IncomingMessage, res: OutgoingMessage, p: string, query: string, block2?: Buffer): void {
    const block = block2 === undefined ? undefined : decodeBlock(block2);
    const request = { path: p, num: block?.num ?? 0, szx: block?.szx ?? -1, at: Date.now(), ...(block2 ? { block2 } : {}) };
    this.requests.push(request);
    if (this.intercept?.(request, req, res)) return;
    this.images.handle(req, res, p, query, block2);
  }
}

interface Gateway {
  endpoint: MeshEndpoint;
  registry: MeterRegistry;
  firmware: RecordingFirmwareResource;
  url: string;
}

/** The gateway side as the appliance wires it: mesh endpoint, resource directory over LevelDB, firmware images. */
async function startGateway(): Promise<Gateway> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-sim-fw-'));
  const lease = await acquireDatabase(path.join(dir, 'store'));
  const registry = await MeterRegistry.open(lease.db, { maxMeters: 100, sync: false });
  const firmware = new RecordingFirmwareResource(new FirmwareResource(repository));
  const gateway: Gateway = { endpoint: await openEndpoint(registry, firmware, 0), registry, firmware, url: '' };
  gateway.url = `coap://[::1]:${gateway.endpoint.port}`;
  cleanups.push(async () => {
    await gateway.endpoint.stop();
    await registry.close();
    await lease.release();
    rmSync(dir, { recursive: true, force: true });
  });
  return gateway;
}

async function openEndpoint(registry: MeterRegistry, firmware: RecordingFirmwareResource, port: number): Promise<MeshEndpoint> {
  const endpoint = new MeshEndpoint({ bind: '::1', port, acceptTimeoutMs: 2000, retryAfterSeconds: 1 });
  endpoint.addResource(new ResourceDirectory(registry, { maxInFlight: 64, retryAfterSeconds: 1 }));
  endpoint.addResource(firmware);
  await endpoint.start();
  return endpoint;
}

interface Meter {
  fleet: MeterFleet;
  name: string;
  base: string;
  firmware: SimulatedMeterFirmware;
}

/** One serving meter running INITIAL's versions; registered with the gateway when `register` (the default). */
async function startMeter(gateway: Gateway, options: Partial<MeterFleetOptions> = {}): Promise<Meter> {
  const fleet = new MeterFleet({
    gateway: gateway.url,
    count: 1,
    prefix: 'fwm-',
    intervalMs: 60_000,
    readings: false,
    serve: true,
    register: true,
    startSpreadMs: 0,
    firmware: () => ({ ...INITIAL }),
    ...options,
  });
  const registered = fleet.options.register ? joined(gateway.registry, () => true) : Promise.resolve(undefined);
  cleanups.push(() => fleet.stop());
  await fleet.start();
  await registered;
  const [info] = fleet.meters();
  const firmware = info ? fleet.firmwareOf(info.name) : undefined;
  if (!info?.base || !firmware) throw new Error('the fleet has no serving meter');
  return { fleet, name: info.name, base: info.base, firmware };
}

/** Resolves with the next registration the gateway takes (a new one or one replacing another) that `predicate` accepts. */
function joined(registry: MeterRegistry, predicate: (meter: RegisteredMeter) => boolean, timeoutMs = 20_000): Promise<RegisteredMeter> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      registry.off('joined', listener);
      reject(new Error(`no such registration within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (meter: RegisteredMeter): void => {
      if (!predicate(meter)) return;
      clearTimeout(timer);
      registry.off('joined', listener);
      resolve(meter);
    };
    registry.on('joined', listener);
  });
}

/** Resolves with the first state change of the meter's firmware that `predicate` accepts. */
function stateChange(firmware: SimulatedMeterFirmware, predicate: (report: MeterFirmwareReport) => boolean, timeoutMs = 30_000): Promise<MeterFirmwareReport> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      firmware.off('state', listener);
      reject(new Error(`no such state within ${timeoutMs} ms; now ${JSON.stringify(firmware.state())}, ${JSON.stringify(firmware.stats)}`));
    }, timeoutMs);
    const listener = (report: MeterFirmwareReport): void => {
      if (!predicate(report)) return;
      clearTimeout(timer);
      firmware.off('state', listener);
      resolve(report);
    };
    firmware.on('state', listener);
  });
}

/** Every state the meter's firmware goes through, in order. */
function statesOf(firmware: SimulatedMeterFirmware): string[] {
  const states: string[] = [];
  firmware.on('state', (report) => states.push(report.state));
  return states;
}

async function postOffer(meter: Meter, payload: Buffer, contentFormat = CBOR): Promise<{ code: string; payload: Buffer }> {
  return coapCall(`${meter.base}/fw/update`, { method: 'POST', payload, contentFormat, timeoutMs: 20_000 });
}

async function offer(meter: Meter, what: FirmwareOffer): Promise<string> {
  return (await postOffer(meter, cborEncode(what))).code;
}

async function readState(meter: Meter): Promise<MeterFirmwareReport> {
  const response = await coapCall(`${meter.base}/fw/state`, { method: 'GET', timeoutMs: 20_000 });
  expect(response.code).toBe('2.05');
  return cborDecode(response.payload) as MeterFirmwareReport;
}

/** mulberry32: a repeatable [0, 1) source, so a lossy run drops the same datagrams each time. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

describe('a simulated meter updating its firmware from the gateway', () => {
  it('downloads and installs acme/comm-2.2.0, reports the new version and registers again with fw_comm=2.2.0', async () => {
    const gateway = await startGateway();
    const meter = await startMeter(gateway);
    expect(gateway.registry.byEndpoint(meter.name)?.firmware).toEqual({ comm: '2.1.0', metro: '5.0.0' });
    const wellKnown = await coapCall(`${meter.base}/.well-known/core`, { method: 'GET', timeoutMs: 10_000 });
    expect(parseLinkFormat(wellKnown.payload.toString('utf8')).map((link) => link.target)).toEqual(
      expect.arrayContaining(['/fw', '/fw/state', '/fw/update']),
    );
    expect(await readState(meter)).toEqual({ ...INITIAL, state: 'idle' });

    const comm220 = offerFor('acme/comm-2.2.0');
    const states = statesOf(meter.firmware);
    const installed = stateChange(meter.firmware, (report) => report.state === 'idle' && report.comm === '2.2.0');
    const rejoined = joined(gateway.registry, (registered) => registered.endpoint === meter.name && registered.firmware.comm === '2.2.0');
    expect(await offer(meter, comm220)).toBe('2.04');
    await installed;
    const registration = await rejoined;

    expect(states).toEqual(['downloading', 'updating', 'idle']);
    expect(await readState(meter)).toEqual({ model: 'AMX-100', comm: '2.2.0', metro: '5.0.0', state: 'idle' });
    expect(registration.firmware).toEqual({ comm: '2.2.0', metro: '5.0.0' });
    expect(gateway.registry.byEndpoint(meter.name)?.firmware).toEqual({ comm: '2.2.0', metro: '5.0.0' });
    expect(gateway.registry.size).toBe(1);
    expect(meter.firmware.ranPairs).toEqual([
      { comm: '2.1.0', metro: '5.0.0' },
      { comm: '2.2.0', metro: '5.0.0' },
    ]);
    // 5120 bytes in 256-byte blocks (szx 4): blocks 0..19, each asked for once, in order.
    expect(gateway.firmware.requests.map((request) => request.num)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(gateway.firmware.requests.every((request) => request.szx === 4 && request.path === '/fw/acme/comm-2.2.0')).toBe(true);
    expect(meter.firmware.stats).toMatchObject({ downloads: 1, blocksFetched: 20, blockRequests: 20, installs: 1, restarts: 0, deferrals: 0 });
    expect(meter.firmware.offers).toEqual([expect.objectContaining({ offer: comm220, accepted: true, code: '2.04', note: 'download' })]);
  });

  it('a repeated offer of the same image is harmless (one download, one install); another image meanwhile is 4.09', async () => {
    const gateway = await startGateway();
    const meter = await startMeter(gateway);
    const comm220 = offerFor('acme/comm-2.2.0');
    // The gateway holds block 3 back until the meter has been asked again, so the offers meet a download under way.
    let releaseBlock3: () => void = () => undefined;
    const block3Released = new Promise<void>((resolve) => (releaseBlock3 = resolve));
    let block3Asked: () => void = () => undefined;
    const block3AskedFor = new Promise<void>((resolve) => (block3Asked = resolve));
    gateway.firmware.intercept = (request, req, res) => {
      if (request.num !== 3) return false;
      block3Asked();
      void block3Released.then(() => gateway.firmware.images.handle(req, res, request.path, '', request.block2));
      return true;
    };
    const installed = stateChange(meter.firmware, (report) => report.state === 'idle' && report.comm === '2.2.0');

    expect(await offer(meter, comm220)).toBe('2.04');
    await block3AskedFor;
    expect(await readState(meter)).toEqual({
      ...INITIAL,
      state: 'downloading',
      image: { target: 'comm', version: '2.2.0', sha256: comm220.sha256 },
      received: 3 * 256,
      size: 5120,
    });
    expect(await offer(meter, comm220)).toBe('2.04');
    expect(await offer(meter, offerFor('acme/metro-5.1.0'))).toBe('4.09');
    releaseBlock3();
    await installed;
    expect(await offer(meter, comm220)).toBe('2.04');

    expect(meter.firmware.offers.map((record) => [record.code, record.note])).toEqual([
      ['2.04', 'download'],
      ['2.04', 'in-progress'],
      ['4.09', 'busy with comm 2.2.0'],
      ['2.04', 'already-running'],
    ]);
    expect(meter.firmware.stats).toMatchObject({ downloads: 1, installs: 1, blocksFetched: 20 });
    expect(meter.firmware.ranPairs).toEqual([
      { comm: '2.1.0', metro: '5.0.0' },
      { comm: '2.2.0', metro: '5.0.0' },
    ]);
    expect(gateway.firmware.requests).toHaveLength(20);
    expect(await readState(meter)).toMatchObject({ comm: '2.2.0', metro: '5.0.0', state: 'idle' });
  });

  it('an image whose SHA-256 is not the offered one ends failed/HASH_MISMATCH; the versions stay and the bytes are dropped', async () => {
    const gateway = await startGateway();
    const meter = await startMeter(gateway);
    const wrong = { ...offerFor('acme/comm-2.2.0'), sha256: 'ab'.repeat(32) };
    const failed = stateChange(meter.firmware, (report) => report.state === 'failed');
    expect(await offer(meter, wrong)).toBe('2.04');
    await failed;

    const report = await readState(meter);
    expect(report).toEqual({
      ...INITIAL,
      state: 'failed',
      image: { target: 'comm', version: '2.2.0', sha256: wrong.sha256 },
      received: 0,
      size: 5120,
      result: 'HASH_MISMATCH',
    });
    expect(meter.firmware.ranPairs).toEqual([{ comm: '2.1.0', metro: '5.0.0' }]);
    expect(meter.firmware.stats.installs).toBe(0);
    // All of it was fetched (the mismatch shows only at the end), and the meter did not register again.
    expect(meter.firmware.stats.blocksFetched).toBe(20);
    expect(gateway.registry.byEndpoint(meter.name)?.firmware).toEqual({ comm: '2.1.0', metro: '5.0.0' });
  });

  it('an image the gateway does not have ends failed/IMAGE_GONE', async () => {
    const gateway = await startGateway();
    const meter = await startMeter(gateway, { register: false });
    const gone = { ...offerFor('acme/comm-2.2.0'), path: '/fw/acme/comm-9.9.9', version: '9.9.9' };
    const failed = stateChange(meter.firmware, (report) => report.state === 'failed');
    expect(await offer(meter, gone)).toBe('2.04');
    expect(await failed).toMatchObject({ comm: '2.1.0', result: 'IMAGE_GONE', received: 0 });
    expect(gateway.firmware.requests.map((request) => [request.path, request.num])).toEqual([['/fw/acme/comm-9.9.9', 0]]);
  });

  it('refuses malformed offers with 4.00 and images larger than its flash slot with 4.13, and fetches nothing', async () => {
    const gateway = await startGateway();
    const meter = await startMeter(gateway, { register: false });
    const good = offerFor('acme/comm-2.2.0');
    const malformed: Buffer[] = [
      Buffer.from('not cbor at all \xff', 'latin1'),
      Buffer.alloc(0),
      cborEncode([good.path, good.target, good.version, good.sha256, good.size]),
      cborEncode('/fw/acme/comm-2.2.0'),
      cborEncode({ ...good, path: undefined }),
      cborEncode({ ...good, path: '/rd/acme/comm-2.2.0' }),
      cborEncode({ ...good, path: '/fw/' }),
      cborEncode({ ...good, path: '/fw/acme/../../rd' }),
      cborEncode({ ...good, path: '/fw/acme/%zz' }),
      cborEncode({ ...good, target: 'radio' }),
      cborEncode({ ...good, version: '' }),
      cborEncode({ ...good, version: 220 }),
      cborEncode({ ...good, sha256: good.sha256.slice(0, 63) }),
      cborEncode({ ...good, sha256: `${good.sha256.slice(0, 63)}g` }),
      cborEncode({ ...good, sha256: Buffer.from(good.sha256, 'hex') }),
      cborEncode({ ...good, size: 0 }),
      cborEncode({ ...good, size: -5120 }),
      cborEncode({ ...good, size: 5120.5 }),
      cborEncode({ ...good, size: '5120' }),
    ];
    for (const payload of malformed) {
      const answer = await postOffer(meter, payload);
      expect(answer.code, `${payload.toString('hex')} is malformed`).toBe('4.00');
    }
    expect((await postOffer(meter, cborEncode(good), 0)).code).toBe('4.00');
    const tooLarge = await postOffer(meter, cborEncode({ ...good, size: MAX_FIRMWARE_BYTES + 1 }));
    expect(tooLarge.code).toBe('4.13');
    expect((await coapCall(`${meter.base}/fw/update`, { method: 'GET', timeoutMs: 10_000 })).code).toBe('4.05');

    expect(await readState(meter)).toEqual({ ...INITIAL, state: 'idle' });
    expect(meter.firmware.offers.filter((record) => record.accepted)).toEqual([]);
    expect(meter.firmware.offers.map((record) => record.code)).toEqual([...malformed.map(() => '4.00'), '4.13']);
    expect(meter.firmware.stats.downloads).toBe(0);
    expect(gateway.firmware.requests).toEqual([]);
  });

  it('waits out a 5.03 from the gateway for at least its Max-Age, then continues where it was', async () => {
    const gateway = await startGateway();
    const meter = await startMeter(gateway, { register: false });
    let deferred = false;
    gateway.firmware.intercept = (request, _req, res) => {
      if (request.num !== 5 || deferred) return false;
      deferred = true;
      res.code = '5.03';
      res.setOption('Max-Age', 1);
      res.end();
      return true;
    };
    const installed = stateChange(meter.firmware, (report) => report.state === 'idle' && report.comm === '2.2.0');
    expect(await offer(meter, offerFor('acme/comm-2.2.0'))).toBe('2.04');
    await installed;

    const nums = gateway.firmware.requests.map((request) => request.num);
    expect(nums).toEqual([0, 1, 2, 3, 4, 5, ...Array.from({ length: 15 }, (_, i) => 5 + i)]);
    const [refused, again] = gateway.firmware.requests.filter((request) => request.num === 5);
    // Max-Age 1 s stretched by up to half as much again (timers may fire a millisecond early).
    expect(again!.at - refused!.at).toBeGreaterThanOrEqual(998);
    expect(again!.at - refused!.at).toBeLessThan(2500);
    expect(meter.firmware.stats).toMatchObject({ deferrals: 1, blocksFetched: 20, installs: 1 });
  });

  it('starts again from byte 0 when the ETag changes under a download', async () => {
    const gateway = await startGateway();
    const meter = await startMeter(gateway, { register: false });
    // From block 10 on, the gateway answers with another ETag, as if the image had been replaced.
    let replaced = false;
    gateway.firmware.intercept = (request, _req, res) => {
      replaced ||= request.num === 10;
      if (replaced) {
        const setOption = res.setOption.bind(res);
        res.setOption = (name, value) => setOption(name, name === 'ETag' ? Buffer.from('feedface', 'hex') : value);
      }
      return false;
    };
    const installed = stateChange(meter.firmware, (report) => report.state === 'idle' && report.comm === '2.2.0');
    expect(await offer(meter, offerFor('acme/comm-2.2.0'))).toBe('2.04');
    await installed;

    const nums = gateway.firmware.requests.map((request) => request.num);
    expect(nums).toEqual([...Array.from({ length: 11 }, (_, i) => i), ...Array.from({ length: 20 }, (_, i) => i)]);
    expect(meter.firmware.stats).toMatchObject({ restarts: 1, blocksFetched: 30, installs: 1 });
  });

  it('completes a download over a link that loses 5 % of the datagrams both ways', async () => {
    const gateway = await startGateway();
    // Seeded: the same datagrams are lost on every run.
    const meter = await startMeter(gateway, { linkLossRate: 0.05, random: seeded(9) });
    const installed = stateChange(meter.firmware, (report) => report.state === 'idle' && report.comm === '2.2.0', 50_000);
    const rejoined = joined(gateway.registry, (registered) => registered.firmware.comm === '2.2.0', 50_000);
    expect(await offer(meter, offerFor('acme/comm-2.2.0'))).toBe('2.04');
    await installed;
    await rejoined;

    expect(meter.firmware.stats).toMatchObject({ downloads: 1, blocksFetched: 20, installs: 1 });
    expect(meter.fleet.stats.linkDroppedSent + meter.fleet.stats.linkDroppedReceived).toBeGreaterThan(0);
    expect(await readState(meter)).toMatchObject({ comm: '2.2.0', state: 'idle' });
  }, 60_000);

  it('link loss drops datagrams the meter receives and datagrams it sends', async () => {
    const gateway = await startGateway();
    // Draws, in order: A received (lost), B received, B's answer sent (lost), C received, C's answer sent.
    const script = [0, 0.99, 0, 0.99, 0.99];
    let draws = 0;
    let drewThree: () => void = () => undefined;
    const threeDrawn = new Promise<void>((resolve) => (drewThree = resolve));
    const random = (): number => {
      const value = script[draws] ?? 0.99;
      draws += 1;
      if (draws === 3) drewThree();
      return value;
    };
    const meter = await startMeter(gateway, { register: false, linkLossRate: 0.5, random });
    const port = meter.fleet.meters()[0]!.address.port;
    const client: Socket = createSocket('udp6');
    cleanups.push(() => new Promise<void>((resolve) => client.close(() => resolve())));
    await new Promise<void>((resolve) => client.bind(0, '::1', () => resolve()));
    const answers: string[] = [];
    let answeredC: () => void = () => undefined;
    const cAnswered = new Promise<void>((resolve) => (answeredC = resolve));
    client.on('message', (message) => {
      const token = parse(message).token.toString('utf8');
      answers.push(token);
      if (token === 'C') answeredC();
    });
    const get = (token: string, messageId: number): void => {
      const datagram = generate({ confirmable: false, messageId, token: Buffer.from(token), code: 'GET', options: [{ name: 'Uri-Path', value: Buffer.from('fw') }, { name: 'Uri-Path', value: Buffer.from('state') }] });
      client.send(datagram, port, '::1');
    };
    get('A', 1);
    get('B', 2);
    await threeDrawn;
    get('C', 3);
    await cAnswered;

    expect(answers).toEqual(['C']);
    expect(meter.fleet.stats).toMatchObject({ linkDroppedReceived: 1, linkDroppedSent: 1 });
  });

  it('resumes an interrupted download from the bytes it holds', async () => {
    const gateway = await startGateway();
    const meter = await startMeter(gateway, {
      register: false,
      firmwareBlockSize: 64,
      // Short deadlines so that the meter gives up soon once the gateway is gone.
      firmwareDownload: { requestTimeoutMs: 400, maxFailures: 3, firstBackoffMs: 50, maxBackoffMs: 200 },
    });
    const comm220 = offerFor('acme/comm-2.2.0');
    const totalBlocks = comm220.size / 64;
    const port = gateway.endpoint.port!;

    // The gateway goes away after the meter has 20 of its 80 blocks.
    const endpointClosed = new Promise<void>((resolve) => {
      const onBlock = (block: { num: number }): void => {
        if (block.num !== 19) return;
        meter.firmware.off('block', onBlock);
        void gateway.endpoint.stop().then(resolve);
      };
      meter.firmware.on('block', onBlock);
    });
    const gaveUp = stateChange(meter.firmware, (report) => report.state === 'failed');
    expect(await offer(meter, comm220)).toBe('2.04');
    await endpointClosed;
    const failed = await gaveUp;
    expect(failed.result).toBe('DOWNLOAD_FAILED');
    const held = failed.received ?? 0;
    expect(held).toBeGreaterThanOrEqual(20 * 64);
    expect(held).toBeLessThan(comm220.size);
    expect(held % 64).toBe(0);

    // The gateway is back on the same port; offered again, the meter continues after what it holds.
    const requestsBefore = gateway.firmware.requests.length;
    gateway.endpoint = await openEndpoint(gateway.registry, gateway.firmware, port);
    const installed = stateChange(meter.firmware, (report) => report.state === 'idle' && report.comm === '2.2.0');
    expect(await offer(meter, comm220)).toBe('2.04');
    await installed;

    const afterResume = gateway.firmware.requests.slice(requestsBefore);
    expect(afterResume[0]?.num).toBe(held / 64);
    expect(afterResume[0]?.num).toBeGreaterThan(0);
    expect(afterResume.map((request) => request.num)).toEqual(Array.from({ length: totalBlocks - held / 64 }, (_, i) => held / 64 + i));
    expect(meter.firmware.stats.blocksFetched).toBeLessThan(2 * totalBlocks);
    // Nothing was fetched twice.
    expect(meter.firmware.stats.blocksFetched).toBe(totalBlocks);
    expect(meter.firmware.stats).toMatchObject({ downloads: 2, installs: 1 });
    expect(meter.firmware.offers.map((record) => record.note)).toEqual(['download', 'resume']);
  });
});
