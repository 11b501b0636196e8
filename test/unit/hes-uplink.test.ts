import { once } from 'node:events';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HesSimulator } from '../../src/sim/hes.js';
import { HesUplink, HesUplinkError } from '../../src/hes/uplink.js';
import type { HesRecord } from '../../src/hes/contract.js';
import { freeUdpPort } from '../helpers/ports.js';

let hes: HesSimulator;
const uplinks: HesUplink[] = [];

function record(n: number): HesRecord {
  return { key: `m/${n}`, kind: 'reading', meter: 'm', ts: n, body: { n } };
}

function uplink(endpoints: string[], overrides: Partial<ConstructorParameters<typeof HesUplink>[0]> = {}): HesUplink {
  const link = new HesUplink({ gateway: 'gw', endpoints, requestTimeoutMs: 800, lingerMs: 5, maxBatch: 64, maxQueued: 1000, ...overrides });
  uplinks.push(link);
  return link;
}

beforeEach(async () => {
  hes = new HesSimulator({ port: 0, bind: '::1' });
  await hes.start();
});

afterEach(async () => {
  for (const link of uplinks.splice(0)) await link.close();
  await hes.stop();
});

describe('HesUplink', () => {
  it('batches concurrent submissions and resolves each once the HES stored it', async () => {
    const link = uplink([hes.url]);
    const batches: number[] = [];
    link.on('delivered', (records) => batches.push(records.length));
    await Promise.all(Array.from({ length: 200 }, (_, i) => link.submit(record(i))));
    for (let i = 0; i < 200; i++) expect(hes.has(`m/${i}`)).toBe(true);
    expect(batches.reduce((a, b) => a + b, 0)).toBe(200);
    // 200 records travel in a few batches of at most 64, not 200 requests.
    expect(batches.length).toBeLessThanOrEqual(8);
    expect(Math.max(...batches)).toBeLessThanOrEqual(64);
    expect(link.depth).toBe(0);
  });

  it('fails over to the secondary when the primary does not answer, and stays there', async () => {
    const dead = `coap://[::1]:${await freeUdpPort()}`;
    const link = uplink([dead, hes.url]);
    const switched: string[] = [];
    link.on('endpoint', (endpoint) => switched.push(endpoint));
    await link.submit(record(1));
    expect(hes.has('m/1')).toBe(true);
    expect(switched).toEqual([hes.url]);
    expect(link.activeEndpoint).toBe(hes.url);
    await link.submit(record(2));
    expect(switched).toEqual([hes.url]);
  });

  it('rejects with UNAVAILABLE when no HES answers', async () => {
    const link = uplink([`coap://[::1]:${await freeUdpPort()}`]);
    const failure = link.submit(record(1)).catch((err: unknown) => err);
    const err = (await failure) as HesUplinkError;
    expect(err).toBeInstanceOf(HesUplinkError);
    expect(err.code).toBe('UNAVAILABLE');
  });

  it('treats 5.03 from the HES as unavailable', async () => {
    hes.refuseNext(1);
    const link = uplink([hes.url]);
    const err = (await link.submit(record(1)).catch((e: unknown) => e)) as HesUplinkError;
    expect(err.code).toBe('UNAVAILABLE');
    expect(err.message).toContain('5.03');
    await link.submit(record(1));
    expect(hes.has('m/1')).toBe(true);
  });

  it('refuses at once when too many records wait', async () => {
    const link = uplink([`coap://[::1]:${await freeUdpPort()}`], { maxQueued: 2 });
    const pending = [link.submit(record(1)).catch(() => 'failed'), link.submit(record(2)).catch(() => 'failed')];
    const err = (await link.submit(record(3)).catch((e: unknown) => e)) as HesUplinkError;
    expect(err.code).toBe('QUEUE_FULL');
    expect(await Promise.all(pending)).toEqual(['failed', 'failed']);
  });

  it('rejects what is still queued when closed', async () => {
    const link = uplink([hes.url], { lingerMs: 10_000 });
    const queued = link.submit(record(1)).catch((e: unknown) => e);
    await link.close();
    expect(((await queued) as HesUplinkError).code).toBe('CLOSED');
    expect(((await link.submit(record(2)).catch((e: unknown) => e)) as HesUplinkError).code).toBe('CLOSED');
  });
});

describe('batchLength', () => {
  it('cuts batches so that the acknowledgement of their keys fits one CoAP block', async () => {
    const { batchLength, MAX_ACK_BYTES } = await import('../../src/hes/uplink.js');
    const { encodeAck } = await import('../../src/hes/contract.js');
    const queue = Array.from({ length: 300 }, (_, i) => ({ record: { ...record(i), key: `meter-${String(i).padStart(6, '0')}/reading-${'x'.repeat(i % 40)}` } }));
    let start = 0;
    while (start < queue.length) {
      const length = batchLength(queue.slice(start), 64);
      expect(length).toBeGreaterThan(0);
      expect(length).toBeLessThanOrEqual(64);
      const ack = encodeAck({ accepted: queue.slice(start, start + length).map((q) => q.record.key) });
      expect(ack.length).toBeLessThanOrEqual(MAX_ACK_BYTES);
      start += length;
    }
    // A single record always makes a batch, however long its key.
    expect(batchLength([{ record: { ...record(1), key: 'k'.repeat(256) } }], 64)).toBe(1);
  });
});

describe('HesUplink resends and shutdown', () => {
  it('joins a resend of a waiting record instead of queueing a copy', async () => {
    const dead = `coap://[::1]:${await freeUdpPort()}`;
    const link = uplink([dead], { lingerMs: 50 });
    const first = link.submit(record(7)).catch((e: unknown) => e);
    const again = link.submit(record(7)).catch((e: unknown) => e);
    expect(link.depth).toBe(1);
    const [a, b] = await Promise.all([first, again]);
    expect(a).toBe(b);
    expect((a as HesUplinkError).code).toBe('UNAVAILABLE');
  });

  it('aborts the batch in flight when closed, rejecting it as CLOSED at once', async () => {
    const dead = `coap://[::1]:${await freeUdpPort()}`;
    const link = uplink([dead], { requestTimeoutMs: 30_000, lingerMs: 1 });
    const sending = once(link, 'sending');
    const inFlight = link.submit(record(8)).catch((e: unknown) => e);
    await sending;
    expect(link.depth).toBe(1);
    const started = Date.now();
    await link.close();
    expect(((await inFlight) as HesUplinkError).code).toBe('CLOSED');
    expect(Date.now() - started).toBeLessThan(1000);
    expect(link.depth).toBe(0);
  });
});

describe('coapCall', () => {
  it('resolves a host name first and reaches an IPv6-only HES over IPv6', async () => {
    const { coapCall } = await import('../../src/coap/request.js');
    const looked: string[] = [];
    const response = await coapCall(`coap://hes.example.test:${hes.port}/ami/v1/health`, {
      method: 'GET',
      timeoutMs: 5000,
      lookup: async (host) => {
        looked.push(host);
        return { address: '::1' };
      },
    });
    expect(looked).toEqual(['hes.example.test']);
    expect(response.code).toBe('2.05');
  });

  it('turns a name that does not resolve into a typed NETWORK error', async () => {
    const { coapCall, CoapRequestError } = await import('../../src/coap/request.js');
    const err = await coapCall('coap://nowhere.invalid/x', { method: 'GET', timeoutMs: 2000, lookup: () => Promise.reject(new Error('ENOTFOUND')) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CoapRequestError);
    expect((err as InstanceType<typeof CoapRequestError>).code).toBe('NETWORK');
  });
});
