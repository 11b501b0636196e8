import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { Agent } from 'coap';
import { afterEach, describe, expect, it } from 'vitest';
import { MeshEndpoint, piggybackWindowMs, RECEIVE_BUFFER_BYTES, type Uplink } from '../../src/coap/endpoint.js';
import { pendingExchangeCount, settleExchange } from '../../src/coap/exchanges.js';
import { CONTENT_FORMAT, encodeReading, readingKey, type MeterReading } from '../../src/coap/reading.js';
import { closeAgent, coapCall } from '../../src/coap/request.js';
import { freeUdpPort } from '../helpers/ports.js';

const endpoints: MeshEndpoint[] = [];
function endpoint(options: Partial<ConstructorParameters<typeof MeshEndpoint>[0]> = {}): MeshEndpoint {
  const e = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 5000, retryAfterSeconds: 9, ...options });
  endpoints.push(e);
  return e;
}
afterEach(async () => {
  for (const e of endpoints.splice(0)) await e.stop();
});

const reading = (id: string): MeterReading => ({ id, meter: 'mtr-life', ts: 1, values: [{ obis: '1.0.1.8.0.255', value: 1 }] });

function post(port: number, r: MeterReading, host = '::1', agent?: Agent) {
  return coapCall(`coap://${host.includes(':') ? `[${host}]` : host}:${port}/readings`, {
    method: 'POST',
    payload: encodeReading(r),
    contentFormat: CONTENT_FORMAT.cbor,
    timeoutMs: 15_000,
    agent,
  });
}

/** Resolves with the next uplink the endpoint hands to its consumers. */
function nextUplink(e: MeshEndpoint): Promise<Uplink> {
  return new Promise((resolve) => {
    const remove = e.onUplink((uplink) => {
      remove();
      resolve(uplink);
    });
  });
}

describe('MeshEndpoint lifecycle and timing', () => {
  it('holds the answer only within the piggyback window, never up to ACK_TIMEOUT', () => {
    expect(piggybackWindowMs(300)).toBe(300);
    expect(piggybackWindowMs(15_000)).toBe(1000);
  });

  it('answers a slow acceptance with an empty ACK and a separate 2.04, handling the request once', async () => {
    const e = endpoint();
    let handled = 0;
    e.onUplink((uplink) => {
      handled += 1;
      // Accept after 2.5 s: longer than ACK_TIMEOUT, so a held ACK would make the meter retransmit.
      setTimeout(() => settleExchange(uplink.exchangeId, readingKey(uplink.reading.meter, uplink.reading.id), { accepted: true }), 2500);
    });
    await e.start();
    const response = await post(e.port!, reading('slow'));
    expect(response.code).toBe('2.04');
    expect(handled).toBe(1);
  });

  it('answers 5.03 with Max-Age when nothing accepts in time', async () => {
    const e = endpoint({ acceptTimeoutMs: 300 });
    e.onUplink(() => undefined);
    await e.start();
    const response = await post(e.port!, reading('orphan'));
    expect(response.code).toBe('5.03');
    expect(response.maxAge).toBe(9);
    expect(pendingExchangeCount()).toBe(0);
  });

  it('ignores an acceptance for another record and waits for the right one', async () => {
    const e = endpoint({ acceptTimeoutMs: 2000 });
    await e.start();
    const uplink = nextUplink(e);
    const answer = post(e.port!, reading('right'));
    const { exchangeId } = await uplink;
    expect(settleExchange(exchangeId, 'mtr-life/wrong', { accepted: true })).toBe('key-mismatch');
    expect(settleExchange(exchangeId, 'mtr-life/right', { accepted: true })).toBe('settled');
    expect((await answer).code).toBe('2.04');
  });

  it('tells waiting meters to retry (5.03) when stopped, and leaves no timer behind', async () => {
    const e = endpoint({ acceptTimeoutMs: 60_000 });
    await e.start();
    const uplink = nextUplink(e);
    const answer = post(e.port!, reading('stopped'));
    await uplink;
    await e.stop();
    const response = await answer;
    expect(response.code).toBe('5.03');
    expect(response.payload.toString()).toBe('gateway shutting down');
    expect(pendingExchangeCount()).toBe(0);
  });

  it('closes the socket when stopped while it was still opening', async () => {
    const port = await freeUdpPort();
    const e = endpoint({ port });
    const starting = e.start();
    const stopping = e.stop();
    await starting;
    await stopping;
    const socket = createSocket('udp6');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, '::1', () => resolve());
    });
    socket.close();
  });

  it('refuses to share its port with another endpoint (EADDRINUSE)', async () => {
    const first = endpoint();
    await first.start();
    const second = endpoint({ port: first.port! });
    await expect(second.start()).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });

  it('listens on an IPv4 address too', async () => {
    const e = endpoint({ bind: '127.0.0.1' });
    e.onUplink((uplink) => settleExchange(uplink.exchangeId, readingKey(uplink.reading.meter, uplink.reading.id), { accepted: true }));
    await e.start();
    const agent = new Agent({ type: 'udp4' });
    try {
      expect((await post(e.port!, reading('v4'), '127.0.0.1', agent)).code).toBe('2.04');
    } finally {
      await closeAgent(agent);
    }
  });
});

describe('MeshEndpoint receive buffer', () => {
  it('asks the kernel for a 4 MiB receive buffer and reports what it granted', async () => {
    const endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 300, retryAfterSeconds: 5 });
    await endpoint.start();
    try {
      // Linux caps the request at net.core.rmem_max and reports twice what it keeps.
      const rmemMax = Number(readFileSync('/proc/sys/net/core/rmem_max', 'utf8').trim());
      expect(endpoint.receiveBufferBytes).toBe(2 * Math.min(RECEIVE_BUFFER_BYTES, rmemMax));
    } finally {
      await endpoint.stop();
    }
  });
});
