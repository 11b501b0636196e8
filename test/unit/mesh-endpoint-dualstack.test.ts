import { createSocket } from 'node:dgram';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { MeshEndpoint, type Uplink } from '../../src/coap/endpoint.js';
import { settleExchange } from '../../src/coap/exchanges.js';
import { readingKey } from '../../src/coap/reading.js';
import { explainListenError } from '../../src/coap/server.js';
import { canonicalSourceAddress } from '../../src/coap/address.js';
import { MeshAllowlist } from '../../src/mesh/allowlist.js';
import { ResourceDirectory } from '../../src/mesh/rd.js';
import { MeterRegistry } from '../../src/mesh/registry.js';
import { acquireDatabase } from '../../src/store/database.js';

/**
 * The endpoint bound to :: serves IPv4 meters too (as IPv4-mapped sources),
 * and the allowlist and "registered meters only" see those as the IPv4
 * addresses they are. libcoap's coap-client is the IPv4 meter.
 */

const COAP_CLIENT = '/usr/bin/coap-client-notls';
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startEndpoint(options: Partial<ConstructorParameters<typeof MeshEndpoint>[0]> = {}): Promise<MeshEndpoint> {
  const endpoint = new MeshEndpoint({ bind: '::', port: 0, acceptTimeoutMs: 3000, retryAfterSeconds: 9, ...options });
  endpoint.onUplink((uplink) => settleExchange(uplink.exchangeId, readingKey(uplink.reading.meter, uplink.reading.id), { accepted: true }));
  await endpoint.start();
  cleanups.push(() => endpoint.stop());
  return endpoint;
}

/**
 * libcoap's client exits 0 even on failure: the verdict is in what it prints.
 * `-B` bounds its wait: 1 s for a request that will not be answered, shorter
 * than its first retransmission (ACK_TIMEOUT, 2-3 s), so it sends one datagram.
 */
function coapClient(args: string[], waitSeconds = 3): Promise<string> {
  return new Promise((resolve) => {
    execFile(COAP_CLIENT, ['-B', String(waitSeconds), ...args], { encoding: 'utf8', timeout: 20_000 }, (_err, stdout, stderr) => resolve(`${stdout}${stderr}`));
  });
}

const readingJson = (id: string, meter = 'mtr-v4') => JSON.stringify({ id, meter, ts: 1, values: [{ obis: '1.0.1.8.0.255', value: 3 }] });

async function openRegistry(): Promise<MeterRegistry> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-dualstack-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const lease = await acquireDatabase(path.join(dir, 'store'));
  cleanups.push(() => lease.release());
  const registry = await MeterRegistry.open(lease.db, { maxMeters: 100, sync: false });
  cleanups.push(() => registry.close());
  return registry;
}

function serveDirectory(endpoint: MeshEndpoint, registry: MeterRegistry): void {
  const directory = new ResourceDirectory(registry, { maxInFlight: 16, retryAfterSeconds: 1 });
  endpoint.addResource(directory);
}

describe('canonicalSourceAddress', () => {
  it('spells IPv4-mapped IPv6 sources as IPv4 and lower-cases IPv6', () => {
    expect(canonicalSourceAddress('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(canonicalSourceAddress('::FFFF:10.1.2.3')).toBe('10.1.2.3');
    expect(canonicalSourceAddress('::ffff:a01:203')).toBe('10.1.2.3');
    expect(canonicalSourceAddress('FD00::1')).toBe('fd00::1');
    expect(canonicalSourceAddress('10.1.2.3')).toBe('10.1.2.3');
    expect(canonicalSourceAddress('::ffff:1')).toBe('::ffff:1');
  });
});

describe('MeshAllowlist with IPv4-mapped sources', () => {
  it('matches ::ffff:10.1.2.3 against 10.0.0.0/8 in any spelling, and a link-local source with its zone', () => {
    const list = MeshAllowlist.parse('10.0.0.0/8 fe80::/10');
    expect(list.allows('::ffff:10.1.2.3')).toBe(true);
    expect(list.allows('::FFFF:10.1.2.3')).toBe(true);
    expect(list.allows('::ffff:a01:203')).toBe(true);
    expect(list.allows('::ffff:11.1.2.3')).toBe(false);
    expect(list.allows('fe80::1%eth0')).toBe(true);
  });
});

describe('MeshEndpoint bound to :: (dual stack)', () => {
  it('serves an IPv4 meter (libcoap coap-client to coap://127.0.0.1) as the IPv4-mapped source', async () => {
    const endpoint = await startEndpoint();
    const uplinks: Uplink[] = [];
    endpoint.onUplink((uplink) => uplinks.push(uplink));
    const accepted = await coapClient(['-m', 'post', '-t', '50', '-e', readingJson('v4-1'), '-v', '6', `coap://127.0.0.1:${endpoint.port}/readings`]);
    expect(accepted).toMatch(/t:ACK c:2\.04/);
    expect(uplinks.map((u) => [u.reading.id, u.peer.address])).toEqual([['v4-1', '::ffff:127.0.0.1']]);
    // The answer's text reaches the IPv4 meter too.
    const refused = await coapClient(['-m', 'post', '-t', '50', '-e', '{"id":"x"}', `coap://127.0.0.1:${endpoint.port}/readings`]);
    expect(refused).toMatch(/4\.00 .*meter/);
  });

  it('admits IPv4 meters by an IPv4 prefix of the allowlist and drops the others unanswered', async () => {
    const loopback = MeshAllowlist.parse('127.0.0.0/8');
    const inside = await startEndpoint({ allowSource: (a) => loopback.allows(a) });
    expect(await coapClient(['-m', 'post', '-t', '50', '-e', readingJson('v4-allowed'), '-v', '6', `coap://127.0.0.1:${inside.port}/readings`])).toMatch(/c:2\.04/);
    expect(inside.dropped).toBe(0);

    const tenNet = MeshAllowlist.parse('10.0.0.0/8');
    const outside = await startEndpoint({ allowSource: (a) => tenNet.allows(a) });
    const dropped = once(outside, 'dropped');
    const answer = coapClient(['-m', 'post', '-t', '50', '-e', readingJson('v4-outside'), '-v', '6', `coap://127.0.0.1:${outside.port}/readings`], 1);
    const [peer] = (await dropped) as [{ address: string }];
    expect(peer.address).toBe('::ffff:127.0.0.1');
    expect(await answer).not.toMatch(/c:2\.04|t:ACK|t:RST/);
  });

  it('with "registered meters only", drops an IPv4 meter\'s readings until it registered from that address (any port), and keeps the directory open', async () => {
    const registry = await openRegistry();
    const endpoint = await startEndpoint({ isRegisteredSource: (address) => registry.hasAddress(address) });
    serveDirectory(endpoint, registry);
    const base = `coap://127.0.0.1:${endpoint.port}`;

    const unregistered = once(endpoint, 'unregistered');
    const dropped = coapClient(['-m', 'post', '-t', '50', '-e', readingJson('before-joining'), '-v', '6', `${base}/readings`], 1);
    const [peer, requestPath] = (await unregistered) as [{ address: string }, string];
    expect([peer.address, requestPath]).toEqual(['::ffff:127.0.0.1', '/readings']);
    expect(await dropped).not.toMatch(/t:ACK/);

    // coap-client takes a new source port each time: the registration is matched by IP alone.
    const joined = await coapClient(['-m', 'post', '-t', '40', '-e', '</1/0/0>', '-v', '6', `${base}/rd?ep=mtr-v4&lt=300`]);
    expect(joined).toMatch(/c:2\.01/);
    expect(registry.byEndpoint('mtr-v4')?.address.address).toBe('::ffff:127.0.0.1');
    expect(registry.hasAddress('127.0.0.1')).toBe(true);
    expect(await coapClient(['-m', 'post', '-t', '50', '-e', readingJson('after-joining'), '-v', '6', `${base}/readings`])).toMatch(/c:2\.04/);

    // An IPv6 source that did not register is still dropped (::1 is not 127.0.0.1).
    const v6 = once(endpoint, 'unregistered');
    const fromV6 = coapClient(['-m', 'post', '-t', '50', '-e', readingJson('v6-stranger'), `coap://[::1]:${endpoint.port}/dlms`], 1);
    expect(((await v6) as [{ address: string }, string])[1]).toBe('/dlms');
    await fromV6;
    expect(endpoint.droppedUnregistered).toBe(2);
  });

  it('answers a malformed request (a 4-byte Block1) to the IPv4 sender itself, not to the loopback address', async () => {
    const endpoint = await startEndpoint();
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
    cleanups.push(() => new Promise<void>((resolve) => socket.close(() => resolve())));
    const answer = new Promise<ParsedPacket>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no answer within 5 s')), 5000);
      socket.once('message', (message: Buffer) => {
        clearTimeout(timer);
        resolve(parse(message));
      });
    });
    socket.send(
      generate({ code: '0.02', confirmable: true, messageId: 0x0404, token: Buffer.from('v4'), options: [{ name: 'Uri-Path', value: Buffer.from('readings') }, { name: 'Block1', value: Buffer.from([0, 0, 0, 8]) }], payload: Buffer.from('x') }),
      endpoint.port!,
      '127.0.0.1',
    );
    expect(await answer).toMatchObject({ ack: true, code: '4.00', messageId: 0x0404 });
  });
});

describe('binding errors', () => {
  it('explains an IPv6 address that is not this host\'s (EADDRNOTAVAIL), and a kernel without IPv6 (EAFNOSUPPORT)', async () => {
    const endpoint = new MeshEndpoint({ bind: 'fd00::dead:beef', port: 0, acceptTimeoutMs: 1000, retryAfterSeconds: 5 });
    const err = (await endpoint.start().then(
      () => undefined,
      (e: unknown) => e,
    )) as NodeJS.ErrnoException;
    expect(err.code).toBe('EADDRNOTAVAIL');
    expect(explainListenError(err, 'fd00::dead:beef')).toMatch(/\[fd00::dead:beef\] is not an address of this host.*0\.0\.0\.0/);
    const unsupported = Object.assign(new Error('bind EAFNOSUPPORT ::'), { code: 'EAFNOSUPPORT' });
    expect(explainListenError(unsupported, '::')).toMatch(/IPv6 is not available on this system.*0\.0\.0\.0/);
    expect(explainListenError(Object.assign(new Error('odd'), { code: 'EWHATEVER' }), '::')).toBe('odd');
  });
});
