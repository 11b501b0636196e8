import { createHash, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import { decodeBlock, decodeUint, encodeBlock, MeshClient } from '../../src/coap/client/index.js';
import { MeshEndpoint } from '../../src/coap/endpoint.js';
import { FirmwareError, openFirmwareRepository, type FirmwareRepository } from '../../src/firmware/index.js';
import { FirmwareResource } from '../../src/mesh/firmware-resource.js';
import { REPO_ROOT } from '../helpers/appliance.js';
import { RawCoapPeer } from '../helpers/raw-coap-peer.js';

const FAST = { ackTimeoutMs: 20, ackRandomFactor: 1, maxRetransmit: 2, separateResponseTimeoutMs: 300 };

/**
 * Relay control traffic goes first: while the gateway's mesh client has a
 * control request queued or under way, meters asking for image blocks are
 * told to come back (5.03 with Max-Age); the listing is still served.
 */
describe('firmware resource defers image blocks to control traffic', () => {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'ami-fw-defer-'));
  let endpoint: MeshEndpoint;
  let gatewayClient: MeshClient;
  let meterClient: MeshClient;
  let resource: FirmwareResource;

  beforeAll(async () => {
    cpSync(path.join(REPO_ROOT, 'firmware-images', 'test-images'), path.join(scratch, 'images'), { recursive: true });
    const rootCa = readFileSync(path.join(REPO_ROOT, 'firmware-images', 'test-ca', 'root-ca.pem'), 'utf8');
    const repository = await openFirmwareRepository({ root: path.join(scratch, 'images'), trustAnchorsPem: [rootCa] });
    // Slower retransmissions than the meter's: the relay command stays pending while the meter asks.
    gatewayClient = await MeshClient.open({ bind: '::1' }, { transmission: { ...FAST, ackTimeoutMs: 200 } });
    meterClient = await MeshClient.open({ bind: '::1' }, { transmission: FAST });
    endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 2_000, retryAfterSeconds: 30 });
    resource = new FirmwareResource(repository, { deferWhile: () => gatewayClient.controlRequestsPending() > 0, deferSeconds: 3 });
    endpoint.addResource(resource);
    await endpoint.start();
  });

  afterAll(async () => {
    await meterClient.close();
    await gatewayClient.close();
    await endpoint.stop();
    rmSync(scratch, { recursive: true, force: true });
  });

  it('answers 5.03 Max-Age while a relay command is pending, and the image once it is done', async () => {
    const peer = { address: '::1', port: endpoint.port as number };
    // A relay command to a meter that does not answer: pending until its retransmissions run out.
    const silentMeter = await RawCoapPeer.open();
    const control = gatewayClient.request({ peer: { address: silentMeter.address, port: silentMeter.port }, method: 'POST', path: '/dlms', priority: 'control' }).catch((err: unknown) => err);
    expect(gatewayClient.controlRequestsPending()).toBe(1);
    const deferred = await meterClient.request({ peer, method: 'GET', path: '/fw/acme/comm-2.1.0' });
    expect(deferred).toMatchObject({ code: '5.03', maxAge: 3 });
    expect(resource.deferred).toBe(1);
    const listing = await meterClient.request({ peer, method: 'GET', path: '/fw' });
    expect(listing.code).toBe('2.05');

    expect(await control).toMatchObject({ code: 'COMM_TIMEOUT_ERR' });
    await silentMeter.close();
    expect(gatewayClient.controlRequestsPending()).toBe(0);
    const served = await meterClient.request({ peer, method: 'GET', path: '/fw/acme/comm-2.1.0' });
    expect(served.code).toBe('2.05');
    expect(served.payload.length).toBe(4096);
    // A metrology request does not defer anything.
    const metrology = gatewayClient.request({ peer: { address: '::1', port: 9 }, method: 'GET', path: '/x' }).catch(() => undefined);
    expect(gatewayClient.controlRequestsPending()).toBe(0);
    await metrology;
  });
});

/** One confirmable GET from a bare UDP socket, answered with the parsed packet. */
async function rawGet(port: number, pathSegments: string[], block2?: Buffer): Promise<ParsedPacket> {
  const socket = createSocket('udp6');
  await new Promise<void>((resolve) => socket.bind(0, '::1', () => resolve()));
  try {
    const answer = new Promise<ParsedPacket>((resolve) => socket.once('message', (message) => resolve(parse(message))));
    const options: { name: string; value: Buffer }[] = pathSegments.map((segment) => ({ name: 'Uri-Path', value: Buffer.from(segment) }));
    if (block2) options.push({ name: 'Block2', value: block2 });
    socket.send(generate({ confirmable: true, code: '0.01', messageId: Math.floor(Math.random() * 65536), token: randomBytes(4), options: options as Parameters<typeof generate>[0]['options'] }), port, '::1');
    return await answer;
  } finally {
    socket.close();
  }
}

describe('firmware resource cuts its own blocks', () => {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'ami-fw-blocks-'));
  let endpoint: MeshEndpoint;
  let image: Buffer;
  let sha256: string;

  beforeAll(async () => {
    cpSync(path.join(REPO_ROOT, 'firmware-images', 'test-images'), path.join(scratch, 'images'), { recursive: true });
    const rootCa = readFileSync(path.join(REPO_ROOT, 'firmware-images', 'test-ca', 'root-ca.pem'), 'utf8');
    const repository = await openFirmwareRepository({ root: path.join(scratch, 'images'), trustAnchorsPem: [rootCa] });
    image = readFileSync(path.join(scratch, 'images', 'acme', 'comm-2.1.0', 'image.bin'));
    sha256 = createHash('sha256').update(image).digest('hex');
    endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 2_000, retryAfterSeconds: 30 });
    endpoint.addResource(new FirmwareResource(repository));
    await endpoint.start();
  });

  afterAll(async () => {
    await endpoint.stop();
    rmSync(scratch, { recursive: true, force: true });
  });

  const option = (packet: ParsedPacket, name: string): Buffer | undefined => packet.options.find((o) => o.name === name)?.value;

  it('answers the block asked for with its Block2, Size2 and the image digest as ETag', async () => {
    const answer = await rawGet(endpoint.port as number, ['fw', 'acme', 'comm-2.1.0'], encodeBlock({ num: 3, more: false, szx: 4 }));
    expect(answer.code).toBe('2.05');
    expect(decodeBlock(option(answer, 'Block2') as Buffer)).toEqual({ num: 3, more: true, szx: 4 });
    expect(answer.payload).toEqual(image.subarray(3 * 256, 4 * 256));
    expect(option(answer, 'ETag')?.toString('hex')).toBe(sha256.slice(0, 16));
    expect(decodeUint(option(answer, 'Size2') as Buffer)).toBe(image.length);
  });

  it('answers a wish for 1024-byte blocks in 512-byte blocks (RFC 7959 2.3), and the last block without M', async () => {
    const asked = await rawGet(endpoint.port as number, ['fw', 'acme', 'comm-2.1.0'], encodeBlock({ num: 1, more: false, szx: 6 }));
    // Block 1 of 1024 bytes starts at byte 1024: block 2 of 512.
    expect(decodeBlock(option(asked, 'Block2') as Buffer)).toEqual({ num: 2, more: true, szx: 5 });
    expect(asked.payload).toEqual(image.subarray(1024, 1536));
    const last = await rawGet(endpoint.port as number, ['fw', 'acme', 'comm-2.1.0'], encodeBlock({ num: image.length / 512 - 1, more: false, szx: 5 }));
    expect(decodeBlock(option(last, 'Block2') as Buffer)?.more).toBe(false);
    const first = await rawGet(endpoint.port as number, ['fw', 'acme', 'comm-2.1.0']);
    expect(decodeBlock(option(first, 'Block2') as Buffer)).toEqual({ num: 0, more: true, szx: 5 });
  });

  it('refuses a block past the end (4.02) and a malformed Block2 (4.00)', async () => {
    const past = await rawGet(endpoint.port as number, ['fw', 'acme', 'comm-2.1.0'], encodeBlock({ num: 100, more: false, szx: 5 }));
    expect(past.code).toBe('4.02');
    const malformed = await rawGet(endpoint.port as number, ['fw', 'acme', 'comm-2.1.0'], Buffer.from([0x0f]));
    expect(malformed.code).toBe('4.00');
  });
});

describe('firmware resource: the listing and the deferral cap', () => {
  /** A catalog of many images: the listing outgrows one block. */
  const manyImages = Array.from({ length: 40 }, (_, i) => ({
    id: `acme/comm-2.${i}.0`,
    manifest: { target: 'comm', version: `2.${i}.0`, size: 4096 },
  }));
  const catalog = {
    goodImages: () => manyImages,
    verifyBeforeSend: (id: string) => Promise.reject(new FirmwareError('UNKNOWN_IMAGE', `no image ${id}`, id)),
  } as unknown as FirmwareRepository;
  let endpoint: MeshEndpoint;
  let client: MeshClient;
  let clock = 0;
  let deferring = false;

  beforeAll(async () => {
    client = await MeshClient.open({ bind: '::1' }, { transmission: FAST });
    endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 2_000, retryAfterSeconds: 30 });
    endpoint.addResource(new FirmwareResource(catalog, { deferWhile: () => deferring, maxDeferMs: 10_000, now: () => clock }));
    await endpoint.start();
  });

  afterAll(async () => {
    await client.close();
    await endpoint.stop();
  });

  it('sends a listing larger than a block block-wise, whole', async () => {
    const listing = await client.request({ peer: { address: '::1', port: endpoint.port as number }, method: 'GET', path: '/fw', blockSize: 256 });
    expect(listing.code).toBe('2.05');
    expect(listing.exchanges).toBeGreaterThan(1);
    expect(listing.payload.toString().split(',')).toHaveLength(40);
  });

  it('defers image blocks for at most maxDeferMs in a row, then serves them even while control traffic lasts', async () => {
    const peer = { address: '::1', port: endpoint.port as number };
    deferring = true;
    clock = 1_000;
    // The catalog is not a repository: past the deferral, the image is unknown (4.04), which is what shows it was served.
    expect((await client.request({ peer, method: 'GET', path: '/fw/acme/comm-2.1.0' })).code).toBe('5.03');
    clock = 10_999;
    expect((await client.request({ peer, method: 'GET', path: '/fw/acme/comm-2.1.0' })).code).toBe('5.03');
    clock = 11_000;
    expect((await client.request({ peer, method: 'GET', path: '/fw/acme/comm-2.1.0' })).code).not.toBe('5.03');
    // Control traffic over: the next stretch of it may defer again.
    deferring = false;
    expect((await client.request({ peer, method: 'GET', path: '/fw/acme/comm-2.1.0' })).code).not.toBe('5.03');
    deferring = true;
    expect((await client.request({ peer, method: 'GET', path: '/fw/acme/comm-2.1.0' })).code).toBe('5.03');
  });

  it('a malformed percent-escape in the image path is 4.04, not an error', async () => {
    const answer = await rawGet(endpoint.port as number, ['fw', '%zz']);
    expect(answer.code).toBe('4.04');
  });
});
