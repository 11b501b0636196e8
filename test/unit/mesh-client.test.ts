import { afterEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { generate } from 'coap-packet';
import {
  decodeBlock,
  decodeUint,
  encodeBlock,
  encodeUint,
  isFresher,
  MeshClient,
  MeshRequestError,
  MessageLayer,
  RFC7252_TRANSMISSION,
  UdpTransport,
  type DatagramTransport,
  type MeshClientOptions,
  type PeerAddress,
} from '../../src/coap/client/index.js';
import { RawCoapPeer, type ReceivedDatagram } from '../helpers/raw-coap-peer.js';

const FAST = { ackTimeoutMs: 20, ackRandomFactor: 1, maxRetransmit: 4, separateResponseTimeoutMs: 300 };

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function client(options: MeshClientOptions = {}): Promise<MeshClient> {
  const c = await MeshClient.open({ bind: '::1' }, { transmission: FAST, ...options });
  cleanups.push(() => c.close());
  return c;
}

/** A client whose send times are recorded where it sends, so delivery jitter does not blur its schedule. */
async function recordingClient(options: MeshClientOptions): Promise<{ c: MeshClient; sentAt: number[] }> {
  const udp = await UdpTransport.open({ bind: '::1' });
  const sentAt: number[] = [];
  const recording: DatagramTransport = {
    local: udp.local,
    send: (datagram, peer) => {
      sentAt.push(performance.now());
      udp.send(datagram, peer);
    },
    onDatagram: (receiver) => udp.onDatagram(receiver),
    close: () => udp.close(),
  };
  const c = new MeshClient(recording, options);
  cleanups.push(() => c.close());
  return { c, sentAt };
}

async function meter(): Promise<RawCoapPeer> {
  const m = await RawCoapPeer.open();
  cleanups.push(() => m.close());
  return m;
}

function path(d: ReceivedDatagram): string {
  return d.packet.options.filter((o) => o.name === 'Uri-Path').map((o) => o.value.toString()).join('/');
}

function requests(m: RawCoapPeer): ReceivedDatagram[] {
  return m.received.filter((d) => d.packet.code.startsWith('0.') && d.packet.code !== '0.00');
}

function option(d: ReceivedDatagram, name: string): Buffer | undefined {
  return d.packet.options.find((o) => o.name === name)?.value;
}

/** The meter serves `body` in 512-byte Block2 blocks, block `num` tagged `etagOf(num)`. */
function serveBlocks(m: RawCoapPeer, body: Buffer, etagOf: (num: number) => Buffer): void {
  m.onPacket = (d) => {
    const asked = option(d, 'Block2');
    const num = asked ? decodeBlock(asked)!.num : 0;
    m.answer(d, '2.05', body.subarray(num * 512, num * 512 + 512), [
      { name: 'ETag', value: etagOf(num) },
      { name: 'Block2', value: encodeBlock({ num, more: (num + 1) * 512 < body.length, szx: 5 }) },
    ]);
  };
}

describe('RFC 7252 retransmission', () => {
  it('gives up on a silent meter after MAX_RETRANSMIT retransmissions of the same message, doubling the timeout, with COMM_TIMEOUT_ERR', async () => {
    const { c, sentAt } = await recordingClient({ transmission: { ...FAST, ackTimeoutMs: 50 } });
    const m = await meter();
    const started = performance.now();
    const error = await c.request({ peer: m.peer, method: 'GET', path: '/status' }).then(
      () => undefined,
      (err: unknown) => err,
    );
    const elapsed = performance.now() - started;
    expect(error).toBeInstanceOf(MeshRequestError);
    expect((error as MeshRequestError).code).toBe('COMM_TIMEOUT_ERR');
    expect(m.received).toHaveLength(5);
    expect(new Set(m.received.map((d) => d.packet.messageId)).size).toBe(1);
    expect(m.received.every((d) => d.packet.confirmable)).toBe(true);
    expect(sentAt).toHaveLength(5);
    const gaps = sentAt.slice(1).map((at, i) => at - sentAt[i]!);
    // Each gap is ACK_TIMEOUT x 2^i (timers never fire early; 2 ms for libuv's cached loop clock).
    // Without the doubling the last gap would be 50 ms, not 400.
    gaps.forEach((gap, i) => expect(gap).toBeGreaterThanOrEqual(50 * 2 ** i - 2));
    // After the fifth transmission it waits once more (16 x ACK_TIMEOUT): 31 x ACK_TIMEOUT in all.
    expect(elapsed).toBeGreaterThanOrEqual(31 * 50 - 2);
    expect(c.counters()).toMatchObject({ timeouts: 1, retransmissions: 4, failed: 1 });
  });

  it('draws the initial timeout from [ACK_TIMEOUT, ACK_TIMEOUT x ACK_RANDOM_FACTOR]', async () => {
    const { c, sentAt } = await recordingClient({ transmission: { ...FAST, ackTimeoutMs: 40, ackRandomFactor: 1.5, maxRetransmit: 1 }, random: () => 0.999 });
    const m = await meter();
    await expect(c.request({ peer: m.peer, method: 'GET', path: '/x' })).rejects.toMatchObject({ code: 'COMM_TIMEOUT_ERR' });
    expect(sentAt).toHaveLength(2);
    // About 60 ms (40 x 1.5); without the random factor it would be 40.
    expect(sentAt[1]! - sentAt[0]!).toBeGreaterThanOrEqual(58);
  });

  it('succeeds after a lost acknowledgement and counts the retransmission', async () => {
    const c = await client();
    const m = await meter();
    m.onPacket = (d) => {
      if (m.received.length === 2) m.answer(d, '2.05', Buffer.from('ok'));
    };
    const response = await c.request({ peer: m.peer, method: 'GET', path: '/status' });
    expect(response.code).toBe('2.05');
    expect(response.payload.toString()).toBe('ok');
    expect(response.retransmissions).toBe(1);
  });

  it('waits for a separate response after an empty ACK, acknowledges it once and ignores its duplicate', async () => {
    const c = await client();
    const m = await meter();
    m.onPacket = (d) => {
      if (d.packet.code !== '0.01') return;
      m.send({ code: '0.00', ack: true, messageId: d.packet.messageId }, d.from);
      const separate = { code: '2.05', confirmable: true, messageId: 4242, token: d.packet.token, payload: Buffer.from('late') };
      setTimeout(() => {
        m.send(separate, d.from);
        m.send(separate, d.from);
      }, 60);
    };
    const response = await c.request({ peer: m.peer, method: 'GET', path: '/lp' });
    expect(response.payload.toString()).toBe('late');
    await m.receivedCount(3);
    const acks = m.received.filter((d) => d.packet.ack);
    expect(acks.length).toBe(2);
    expect(acks.every((d) => d.packet.messageId === 4242 && d.packet.code === '0.00')).toBe(true);
    expect(c.counters().duplicates).toBe(1);
  });

  it('times out with COMM_TIMEOUT_ERR when the promised separate response never comes', async () => {
    const c = await client();
    const m = await meter();
    m.onPacket = (d) => m.send({ code: '0.00', ack: true, messageId: d.packet.messageId }, d.from);
    await expect(c.request({ peer: m.peer, method: 'GET', path: '/lp' })).rejects.toMatchObject({ code: 'COMM_TIMEOUT_ERR' });
    expect(m.received).toHaveLength(1);
  });

  it('turns a Reset into RESET, answers unexpected responses with Reset, and survives garbage', async () => {
    const c = await client();
    const m = await meter();
    m.onPacket = (d) => {
      if (d.packet.code === '0.01') m.send({ code: '0.00', reset: true, messageId: d.packet.messageId }, d.from);
    };
    await expect(c.request({ peer: m.peer, method: 'GET', path: '/x' })).rejects.toMatchObject({ code: 'RESET' });
    m.onPacket = undefined;
    const local = c.local;
    for (let i = 0; i < 200; i += 1) {
      const garbage = randomBytes(1 + (i % 40));
      garbage[0] = garbage[0]! & 0x3f; // CoAP version 0: never a valid message
      m.sendRaw(garbage, local);
    }
    m.send({ code: '2.05', confirmable: true, messageId: 7, token: Buffer.from('feedbeef', 'hex'), payload: Buffer.from('?') }, local);
    await m.receivedCount(2);
    const reset = m.received[1]!.packet;
    expect(reset.reset).toBe(true);
    expect(reset.messageId).toBe(7);
    expect(c.counters().unexpected).toBe(1);
    expect(c.counters().malformed).toBe(200);
    m.onPacket = (d) => {
      if (d.packet.code === '0.01') m.answer(d, '2.05', Buffer.from('still here'));
    };
    expect((await c.request({ peer: m.peer, method: 'GET', path: '/x' })).payload.toString()).toBe('still here');
  });

  it('answers a message id again within EXCHANGE_LIFETIME and treats it as new after', () => {
    let now = 0;
    let deliver: (datagram: Buffer, peer: PeerAddress) => void = () => undefined;
    const sent: Buffer[] = [];
    const transport: DatagramTransport = {
      local: { address: '::1', port: 5683 },
      send: (datagram) => sent.push(datagram),
      onDatagram: (receiver) => {
        deliver = receiver;
        return () => undefined;
      },
      close: () => Promise.resolve(),
    };
    const layer = new MessageLayer(transport, { ...RFC7252_TRANSMISSION, exchangeLifetimeMs: 1000 }, Math.random, () => now);
    const meterA = { address: '::1', port: 40001 };
    const ping = (messageId: number): Buffer => generate({ code: '0.00', confirmable: true, messageId });
    deliver(ping(9), meterA);
    now = 999;
    deliver(ping(9), meterA);
    expect(layer.counters.duplicates).toBe(1);
    deliver(ping(10), meterA);
    now = 1500;
    // Id 9 is 1500 ms old, id 10 501 ms: 9 is new again, 10 still a duplicate.
    deliver(ping(9), meterA);
    deliver(ping(10), meterA);
    expect(layer.counters.duplicates).toBe(2);
    // Every ping is answered with a Reset, a duplicate with the same one again.
    expect(sent).toHaveLength(5);
    expect(sent[1]!.equals(sent[0]!)).toBe(true);
    layer.close();
  });
});

describe('congestion control', () => {
  it('keeps at most one outstanding request per meter (NSTART = 1) while serving two meters at once', async () => {
    // An ACK_TIMEOUT well above the meters' 15 ms: a retransmission would count as a second request here.
    const c = await client({ transmission: { ...FAST, ackTimeoutMs: 200 } });
    const a = await meter();
    const b = await meter();
    const outstanding = new Map<RawCoapPeer, number>([
      [a, 0],
      [b, 0],
    ]);
    let peakPerMeter = 0;
    let peakBoth = 0;
    for (const m of [a, b]) {
      m.onPacket = (d) => {
        const now = outstanding.get(m)! + 1;
        outstanding.set(m, now);
        peakPerMeter = Math.max(peakPerMeter, now);
        peakBoth = Math.max(peakBoth, outstanding.get(a)! + outstanding.get(b)!);
        setTimeout(() => {
          outstanding.set(m, outstanding.get(m)! - 1);
          m.answer(d, '2.05', Buffer.from(path(d)));
        }, 15);
      };
    }
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) => c.request({ peer: (i % 2 === 0 ? a : b).peer, method: 'GET', path: `/r${i}` })),
    );
    expect(results.map((r) => r.payload.toString())).toEqual(['r0', 'r1', 'r2', 'r3', 'r4', 'r5']);
    expect(peakPerMeter).toBe(1);
    expect(peakBoth).toBe(2);
    // Per meter, requests leave in the order they were made.
    expect(requests(a).map(path)).toEqual(['r0', 'r2', 'r4']);
  });

  it('caps outstanding exchanges gateway-wide', async () => {
    // An exchange is counted once by its message ID: on a loaded machine the 10 ms answer can come
    // after ACK_TIMEOUT, and the retransmission of the same exchange is not a second one.
    const c = await client({ maxConcurrent: 2, transmission: { ...FAST, ackTimeoutMs: 200 } });
    const meters = await Promise.all(Array.from({ length: 5 }, () => meter()));
    const outstanding = new Set<string>();
    let peak = 0;
    meters.forEach((m, index) => {
      m.onPacket = (d) => {
        const exchange = `${index}:${d.packet.messageId}`;
        if (outstanding.has(exchange)) return;
        outstanding.add(exchange);
        peak = Math.max(peak, outstanding.size);
        setTimeout(() => {
          outstanding.delete(exchange);
          m.answer(d, '2.05');
        }, 10);
      };
    });
    await Promise.all(meters.map((m) => c.request({ peer: m.peer, method: 'GET', path: '/status' })));
    expect(peak).toBe(2);
  });

  it('sends control traffic ahead of queued metrology reads', async () => {
    const c = await client({ maxConcurrent: 1 });
    const meters = await Promise.all(Array.from({ length: 4 }, () => meter()));
    const order: string[] = [];
    for (const m of meters) {
      m.onPacket = (d) => {
        order.push(path(d));
        setTimeout(() => m.answer(d, '2.04'), 5);
      };
    }
    const reads = meters.map((m, i) => c.request({ peer: m.peer, method: 'GET', path: `/read${i}` }));
    const relay = c.request({ peer: meters[3]!.peer, method: 'POST', path: '/relay', priority: 'control', payload: Buffer.from([0]) });
    await Promise.all([...reads, relay]);
    // read0 was already on the air when the command came; the command overtakes the three queued reads.
    expect(order).toEqual(['read0', 'relay', 'read1', 'read2', 'read3']);
  });

  it('refuses beyond the queue limit with QUEUE_FULL and lets a queued request be aborted', async () => {
    const c = await client({ maxConcurrent: 1, maxQueued: 2 });
    const m = await meter();
    const pending: ReceivedDatagram[] = [];
    m.onPacket = (d) => pending.push(d);
    const first = c.request({ peer: m.peer, method: 'GET', path: '/a' });
    const abort = new AbortController();
    const second = c.request({ peer: m.peer, method: 'GET', path: '/b', signal: abort.signal });
    const third = c.request({ peer: m.peer, method: 'GET', path: '/c' });
    await expect(c.request({ peer: m.peer, method: 'GET', path: '/d' })).rejects.toMatchObject({ code: 'QUEUE_FULL' });
    abort.abort();
    await expect(second).rejects.toMatchObject({ code: 'ABORTED' });
    expect(c.counters().queued).toBe(1);
    await m.receivedCount(1);
    m.onPacket = (d) => m.answer(d, '2.05');
    m.answer(pending[0]!, '2.05');
    await first;
    await third;
    expect(requests(m).map(path)).toEqual(['a', 'c']);
  });

  it('rejects requests it cannot send with BAD_REQUEST and fails everything with CLOSED on close', async () => {
    const c = await MeshClient.open({ bind: '::1' }, { transmission: FAST });
    const m = await meter();
    await expect(c.request({ peer: m.peer, method: 'GET', path: 'no-slash' })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(c.request({ peer: { address: '::1', port: 0 }, method: 'GET', path: '/x' })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(
      c.request({ peer: m.peer, method: 'GET', path: '/x', options: [{ name: 'Block2', value: Buffer.alloc(1) }] }),
    ).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    const outstanding = c.request({ peer: m.peer, method: 'GET', path: '/x' });
    const queued = c.request({ peer: m.peer, method: 'GET', path: '/y' });
    await m.receivedCount(1);
    await c.close();
    await expect(outstanding).rejects.toMatchObject({ code: 'CLOSED' });
    await expect(queued).rejects.toMatchObject({ code: 'CLOSED' });
  });
});

describe('block-wise transfer (RFC 7959)', () => {
  it('reassembles a Block2 response block by block and refuses a representation that changes mid-transfer', async () => {
    const c = await client();
    const m = await meter();
    const body = randomBytes(1500);
    serveBlocks(m, body, () => Buffer.from('v1'));
    const response = await c.request({ peer: m.peer, method: 'GET', path: '/lp' });
    expect(response.payload.equals(body)).toBe(true);
    expect(response.exchanges).toBe(3);
    // The resource changes after block 0 was sent.
    serveBlocks(m, body, (num) => Buffer.from(num === 0 ? 'v1' : 'v2'));
    await expect(c.request({ peer: m.peer, method: 'GET', path: '/lp' })).rejects.toMatchObject({ code: 'BLOCKWISE_ERR' });
    serveBlocks(m, body, () => Buffer.from('v2'));
    await expect(c.request({ peer: m.peer, method: 'GET', path: '/lp', maxBodyBytes: 1000 })).rejects.toMatchObject({ code: 'TOO_LARGE' });
  });

  it('uploads in Block1 blocks and follows a meter that asks for smaller blocks', async () => {
    const c = await client({ blockSize: 1024 });
    const m = await meter();
    const received: Buffer[] = [];
    m.onPacket = (d) => {
      const block = option(d, 'Block1')!;
      const { num, more } = decodeBlock(block)!;
      received.push(d.packet.payload);
      if (!more) {
        const digest = createHash('sha256').update(Buffer.concat(received)).digest();
        m.answer(d, '2.04', digest, [{ name: 'Block1', value: block }]);
        return;
      }
      // This meter only keeps 256-byte blocks: it says so in its first 2.31.
      m.answer(d, '2.31', undefined, [{ name: 'Block1', value: encodeBlock({ num, more: true, szx: 4 }) }]);
    };
    const image = randomBytes(3000);
    const response = await c.request({ peer: m.peer, method: 'PUT', path: '/fw', payload: image, contentFormat: 42 });
    expect(response.code).toBe('2.04');
    expect(response.payload.equals(createHash('sha256').update(image).digest())).toBe(true);
    const sizes = requests(m).map((d) => d.packet.payload.length);
    expect(sizes[0]).toBe(1024);
    expect(sizes.slice(1, -1).every((s) => s === 256)).toBe(true);
    expect(decodeUint(option(requests(m)[0]!, 'Size1')!)).toBe(3000);
  });
});

describe('Observe (RFC 7641)', () => {
  it('delivers fresh notifications in order, drops stale ones, and deregisters on cancel', async () => {
    const c = await client();
    const m = await meter();
    const seen: string[] = [];
    let registration: ReceivedDatagram | undefined;
    m.onPacket = (d) => {
      if (d.packet.code !== '0.01') return;
      if (registration) {
        // The deregistration: answered, so cancel() need not wait for its retransmissions to run out.
        m.answer(d, '2.05', Buffer.from('n9'));
        return;
      }
      registration = d;
      m.answer(d, '2.05', Buffer.from('n5'), [{ name: 'Observe', value: encodeUint(5) }]);
    };
    const observation = await c.observe({ peer: m.peer, path: '/status' }, (r) => seen.push(r.payload.toString()));
    const notify = (value: number, text: string, messageId: number): void =>
      m.send(
        { code: '2.05', confirmable: true, messageId, token: registration!.packet.token, options: [{ name: 'Observe', value: encodeUint(value) }], payload: Buffer.from(text) },
        registration!.from,
      );
    notify(7, 'n7', 100);
    notify(6, 'n6 (reordered)', 101);
    notify(8, 'n8', 102);
    await m.receivedCount(4); // registration + 3 ACKs
    expect(seen).toEqual(['n5', 'n7', 'n8']);
    expect(c.counters()).toMatchObject({ staleNotifications: 1, observations: 1 });
    await observation.cancel();
    const deregister = m.received.at(-1)!.packet;
    expect(deregister.code).toBe('0.01');
    expect(deregister.token.equals(registration!.packet.token)).toBe(true);
    expect(decodeUint(deregister.options.find((o) => o.name === 'Observe')!.value)).toBe(1);
    expect(c.counters().observations).toBe(0);
  });

  it('implements the freshness rule with wrap-around', () => {
    expect(isFresher(5, 6, 0)).toBe(true);
    expect(isFresher(6, 5, 0)).toBe(false);
    expect(isFresher(2 ** 24 - 1, 0, 0)).toBe(true);
    expect(isFresher(6, 5, 129_000)).toBe(true);
  });
});
