import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { MeshEndpoint, type Uplink } from '../../src/coap/endpoint.js';
import { settleExchange } from '../../src/coap/exchanges.js';
import { CONTENT_FORMAT, encodeReading, readingKey, type MeterReading } from '../../src/coap/reading.js';
import { ResourceDirectory } from '../../src/mesh/rd.js';
import { MeterRegistry } from '../../src/mesh/registry.js';
import { acquireDatabase } from '../../src/store/database.js';

/**
 * Duplicate detection (RFC 7252 section 4.5) on the mesh endpoint, driven with
 * raw datagrams so that a test controls message ids and retransmissions.
 */

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A UDP client on ::1 that records every datagram it gets back. */
class RawClient {
  readonly answers: ParsedPacket[] = [];
  private waiters: { count: number; resolve: () => void }[] = [];

  private constructor(
    readonly socket: Socket,
    private readonly port: number,
  ) {
    socket.on('message', (message: Buffer) => {
      this.answers.push(parse(message));
      for (const waiter of this.waiters.filter((w) => this.answers.length >= w.count)) waiter.resolve();
      this.waiters = this.waiters.filter((w) => this.answers.length < w.count);
    });
  }

  static async open(port: number): Promise<RawClient> {
    const socket = createSocket('udp6');
    await new Promise<void>((resolve) => socket.bind(0, '::1', () => resolve()));
    const client = new RawClient(socket, port);
    cleanups.push(() => new Promise<void>((resolve) => socket.close(() => resolve())));
    return client;
  }

  send(datagram: Buffer): void {
    this.socket.send(datagram, this.port, '::1');
  }

  /** Resolves once `count` answers in all have arrived; fails the test after 5 s. */
  async answered(count: number): Promise<ParsedPacket[]> {
    if (this.answers.length < count) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${this.answers.length} of ${count} answers arrived`)), 5000);
        this.waiters.push({
          count,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      });
    }
    return this.answers.slice(0, count);
  }
}

/** The next `event` of `endpoint`; fails the test when it has not come within 5 s (the listener goes either way). */
async function next<E extends 'duplicate' | 'received'>(endpoint: MeshEndpoint, event: E): Promise<unknown[]> {
  try {
    return await once(endpoint, event, { signal: AbortSignal.timeout(5000) });
  } catch (err) {
    throw new Error(`no ${event} event within 5 s`, { cause: err });
  }
}

async function startEndpoint(options: Partial<ConstructorParameters<typeof MeshEndpoint>[0]> = {}): Promise<MeshEndpoint> {
  const endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 5000, retryAfterSeconds: 9, ...options });
  await endpoint.start();
  cleanups.push(() => endpoint.stop());
  return endpoint;
}

/**
 * An endpoint, the uplinks it hands over (each accepted at once with
 * `acceptAtOnce`, else left for the test to settle), and a raw client.
 */
async function endpointWithClient(
  { acceptAtOnce = false, ...options }: Partial<ConstructorParameters<typeof MeshEndpoint>[0]> & { acceptAtOnce?: boolean } = {},
): Promise<{ endpoint: MeshEndpoint; uplinks: Uplink[]; client: RawClient }> {
  const endpoint = await startEndpoint(options);
  const uplinks: Uplink[] = [];
  endpoint.onUplink((uplink) => {
    uplinks.push(uplink);
    if (acceptAtOnce) accept(uplink);
  });
  return { endpoint, uplinks, client: await RawClient.open(endpoint.port!) };
}

function reading(id: string, meter = 'mtr-dup'): MeterReading {
  return { id, meter, ts: 1_700_000_000_000, values: [{ obis: '1.0.1.8.0.255', value: 7, unit: 'Wh' }] };
}

function readingPost(messageId: number, token: Buffer, r: MeterReading, confirmable = true): Buffer {
  return generate({
    code: '0.02',
    confirmable,
    messageId,
    token,
    options: [
      { name: 'Uri-Path', value: Buffer.from('readings') },
      { name: 'Content-Format', value: Buffer.from([CONTENT_FORMAT.cbor]) },
    ],
    payload: Buffer.from(encodeReading(r)),
  });
}

function accept(uplink: Uplink): void {
  expect(settleExchange(uplink.exchangeId, readingKey(uplink.reading.meter, uplink.reading.id), { accepted: true })).toBe('settled');
}

describe('MeshEndpoint duplicate detection', () => {
  it('processes a retransmitted CON reading once and acknowledges every copy with the same ACK', async () => {
    const { endpoint, uplinks, client } = await endpointWithClient();
    const datagram = readingPost(0x1234, Buffer.from('t1'), reading('dup-1'));

    const received = next(endpoint, 'received');
    client.send(datagram);
    await received;
    // The second copy arrives while the first waits for the flow to accept it.
    const held = next(endpoint, 'duplicate');
    client.send(datagram);
    expect((await held).slice(1)).toEqual([0x1234, false]);
    accept(uplinks[0]!);
    await client.answered(2);
    // The third copy comes after the 2.04: it gets the same answer, not another processing.
    const repeated = next(endpoint, 'duplicate');
    client.send(datagram);
    expect((await repeated).slice(1)).toEqual([0x1234, true]);
    const answers = await client.answered(3);

    expect(uplinks).toHaveLength(1);
    for (const answer of answers) {
      expect(answer).toMatchObject({ ack: true, code: '2.04', messageId: 0x1234 });
      expect(answer.token.toString()).toBe('t1');
    }
    expect(endpoint.duplicates).toBe(2);
  });

  it('answers a copy that arrives after an empty ACK with that empty ACK, and still processes the request once', async () => {
    const { endpoint, uplinks, client } = await endpointWithClient({ acceptTimeoutMs: 5000 });
    const datagram = readingPost(0x2001, Buffer.from('sep'), reading('dup-separate'));
    client.send(datagram);
    // Acceptance takes longer than the piggyback window: the meter gets an empty ACK first.
    const [emptyAck] = await client.answered(1);
    expect(emptyAck).toMatchObject({ ack: true, code: '0.00', messageId: 0x2001 });
    client.send(datagram);
    const [, repeated] = await client.answered(2);
    expect(repeated).toMatchObject({ ack: true, code: '0.00', messageId: 0x2001 });
    accept(uplinks[0]!);
    const [, , separate] = await client.answered(3);
    expect(separate).toMatchObject({ confirmable: true, code: '2.04' });
    expect(separate!.token.toString()).toBe('sep');
    // Acknowledge the separate response so that the endpoint stops retransmitting it.
    client.send(generate({ code: '0.00', ack: true, messageId: separate!.messageId }));
    expect(uplinks).toHaveLength(1);
    expect(endpoint.duplicates).toBe(1);
  });

  it('processes a duplicated NON reading once and ignores the copy', async () => {
    const { endpoint, uplinks, client } = await endpointWithClient({ acceptAtOnce: true });
    const datagram = readingPost(0x3003, Buffer.from('n1'), reading('dup-non'), false);
    client.send(datagram);
    await client.answered(1);
    const ignored = next(endpoint, 'duplicate');
    client.send(datagram);
    expect((await ignored).slice(1)).toEqual([0x3003, false]);
    expect(uplinks).toHaveLength(1);
    expect(endpoint.duplicates).toBe(1);
    // The copy was not answered: the only answer is the first one's NON 2.04.
    expect(client.answers.map((a) => [a.confirmable, a.ack, a.code])).toEqual([[false, false, '2.04']]);
  });

  it('still joins the same reading sent under another message id by its record key, without calling it a duplicate', async () => {
    const { endpoint, uplinks, client } = await endpointWithClient();
    const received = next(endpoint, 'received');
    client.send(readingPost(0x4001, Buffer.from('a'), reading('dup-key')));
    await received;
    client.send(readingPost(0x4002, Buffer.from('b'), reading('dup-key')));
    // A probe from the same socket, answered at once (4.04): when its answer is back, the endpoint has
    // handled the second reading too, which joined the pending exchange of the first.
    client.send(generate({ code: '0.01', confirmable: true, messageId: 0x4003, token: Buffer.from('p'), options: [{ name: 'Uri-Path', value: Buffer.from('probe') }] }));
    const [probe] = await client.answered(1);
    expect(probe).toMatchObject({ messageId: 0x4003, code: '4.04' });
    accept(uplinks[0]!);
    const answers = (await client.answered(3)).slice(1);
    expect(answers.map((a) => [a.messageId, a.code]).sort()).toEqual([
      [0x4001, '2.04'],
      [0x4002, '2.04'],
    ]);
    expect(uplinks).toHaveLength(1);
    expect(endpoint.duplicates).toBe(0);
  });

  it('processes a new request that reuses an old message id and token with other bytes (a meter that restarted)', async () => {
    const { endpoint, uplinks, client } = await endpointWithClient({ acceptAtOnce: true });
    client.send(readingPost(0x5005, Buffer.from('r'), reading('before-restart')));
    await client.answered(1);
    client.send(readingPost(0x5005, Buffer.from('r'), reading('after-restart')));
    await client.answered(2);
    expect(uplinks.map((u) => u.reading.id)).toEqual(['before-restart', 'after-restart']);
    expect(endpoint.duplicates).toBe(0);
  });

  it('forgets an exchange after its lifetime, so a copy after that is a new request', async () => {
    let now = 1_000_000;
    const { endpoint, uplinks, client } = await endpointWithClient({ acceptAtOnce: true, deduplication: { exchangeLifetimeMs: 247_000, now: () => now } });
    const datagram = readingPost(0x6006, Buffer.from('l'), reading('lifetime'));
    client.send(datagram);
    await client.answered(1);
    now += 246_000;
    const duplicate = next(endpoint, 'duplicate');
    client.send(datagram);
    await duplicate;
    await client.answered(2);
    expect(uplinks).toHaveLength(1);
    now += 2_000;
    const received = next(endpoint, 'received');
    client.send(datagram);
    await received;
    await client.answered(3);
    expect(uplinks).toHaveLength(2);
    expect(endpoint.duplicates).toBe(1);
  });
});

describe('MeshEndpoint duplicate detection for the resource directory', () => {
  it('registers a meter once when its POST /rd arrives three times, and answers every copy 2.01 with the same Location-Path', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-dedup-rd-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const lease = await acquireDatabase(path.join(dir, 'store'));
    cleanups.push(() => lease.release());
    const registry = await MeterRegistry.open(lease.db, { maxMeters: 100, sync: false });
    cleanups.push(() => registry.close());
    const joined: string[] = [];
    registry.on('joined', (meter) => joined.push(meter.id));
    const endpoint = await startEndpoint();
    const directory = new ResourceDirectory(registry, { maxInFlight: 16, retryAfterSeconds: 1 });
    endpoint.addResource(directory);
    const client = await RawClient.open(endpoint.port!);
    const datagram = generate({
      code: '0.02',
      confirmable: true,
      messageId: 0x7007,
      token: Buffer.from('rd'),
      options: [
        { name: 'Uri-Path', value: Buffer.from('rd') },
        { name: 'Content-Format', value: Buffer.from([40]) },
        { name: 'Uri-Query', value: Buffer.from('ep=mtr-dup-rd') },
        { name: 'Uri-Query', value: Buffer.from('lt=300') },
      ],
      payload: Buffer.from('</1/0/0>;rt="meter"'),
    });

    // Two copies back to back: the second arrives while the registration is being written.
    client.send(datagram);
    client.send(datagram);
    await client.answered(2);
    client.send(datagram);
    const answers = await client.answered(3);

    expect(joined).toHaveLength(1);
    expect(registry.size).toBe(1);
    for (const answer of answers) {
      expect(answer).toMatchObject({ ack: true, code: '2.01', messageId: 0x7007 });
      const location = answer.options.filter((o) => o.name === 'Location-Path').map((o) => o.value.toString());
      expect(location).toEqual(['rd', joined[0]]);
    }
    expect(endpoint.duplicates).toBe(2);
    expect(directory.counters.registered).toBe(1);
  });
});
