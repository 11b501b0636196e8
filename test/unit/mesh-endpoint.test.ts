import { createSocket, type Socket } from 'node:dgram';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MeshEndpoint, type Uplink } from '../../src/coap/endpoint.js';
import { settleExchange } from '../../src/coap/exchanges.js';
import { CONTENT_FORMAT, encodeReading, MAX_READING_BYTES, readingKey } from '../../src/coap/reading.js';

let endpoint: MeshEndpoint;
let client: Socket;
const uplinks: Uplink[] = [];
const rejected: string[] = [];
let messageId = 1;

beforeAll(async () => {
  endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 300, retryAfterSeconds: 11 });
  endpoint.on('rejected', (reason) => rejected.push(reason));
  // Accept every reading at once, as a durable consumer would.
  endpoint.onUplink((uplink) => {
    uplinks.push(uplink);
    settleExchange(uplink.exchangeId, readingKey(uplink.reading.meter, uplink.reading.id), { accepted: true });
  });
  await endpoint.start();
  client = createSocket('udp6');
  await new Promise<void>((resolve) => client.bind(0, '::1', () => resolve()));
});

afterAll(async () => {
  client.close();
  await endpoint.stop();
});

/** Sends one raw datagram and resolves with the parsed answer, or undefined after `waitMs`. */
function exchange(datagram: Buffer, waitMs = 1000): Promise<ParsedPacket | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      client.off('message', onMessage);
      resolve(undefined);
    }, waitMs);
    const sentToken = datagram.length >= 4 ? datagram.subarray(4, 4 + (datagram[0]! & 0x0f)) : Buffer.alloc(0);
    const onMessage = (message: Buffer): void => {
      let packet: ParsedPacket;
      try {
        packet = parse(message);
      } catch {
        return;
      }
      // Only the answer to this request: a late answer to an earlier one is not credited here.
      if (packet.token.length > 0 && !packet.token.equals(sentToken)) return;
      clearTimeout(timer);
      client.off('message', onMessage);
      resolve(packet);
    };
    client.on('message', onMessage);
    client.send(datagram, endpoint.port!, '::1');
  });
}

function post(payload: Buffer, contentFormat?: number): Buffer {
  messageId = (messageId + 1) & 0xffff;
  const options = [{ name: 'Uri-Path' as const, value: Buffer.from('readings') }];
  if (contentFormat !== undefined) options.push({ name: 'Content-Format' as never, value: Buffer.from([contentFormat]) });
  // Generated with a large limit: a hostile meter ignores the 1280-byte guidance.
  return generate({ code: '0.02', confirmable: true, messageId, token: Buffer.from([messageId & 0xff, 1]), options, payload }, 65_000);
}

describe('MeshEndpoint (raw CoAP datagrams)', () => {
  it('acknowledges a valid reading with a piggybacked 2.04', async () => {
    const answer = await exchange(post(encodeReading({ id: 'raw-1', meter: 'mtr-raw', ts: 1, values: [{ obis: '1.0.1.8.0.255', value: 5 }] }), CONTENT_FORMAT.cbor));
    expect(answer?.code).toBe('2.04');
    expect(answer?.ack).toBe(true);
    expect(uplinks.at(-1)?.reading.id).toBe('raw-1');
  });

  it('refuses a payload larger than the reading limit with 4.13', async () => {
    const answer = await exchange(post(Buffer.alloc(MAX_READING_BYTES + 100, 0xa0), CONTENT_FORMAT.cbor));
    expect(answer?.code).toBe('4.13');
  });

  it('answers every confirmable POST with some response and survives random payloads (fuzz)', async () => {
    const before = uplinks.length;
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 600 }),
        fc.constantFrom(CONTENT_FORMAT.cbor, CONTENT_FORMAT.json, 42, undefined),
        async (bytes, format) => {
          const answer = await exchange(post(Buffer.from(bytes), format));
          expect(answer).toBeDefined();
          // Random bytes are never a valid reading, except by a fluke the endpoint then accepts.
          expect(['2.04', '4.00', '4.15']).toContain(answer!.code);
        },
      ),
      { numRuns: 150 },
    );
    // Random input produced at most a handful of well-formed readings.
    expect(uplinks.length - before).toBeLessThan(5);
  });

  it('ignores datagrams that are not CoAP at all and keeps serving', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 64 }), async (bytes) => {
        // Whatever the library does with garbage, it must not take the endpoint down.
        await exchange(Buffer.from(bytes), 30);
      }),
      { numRuns: 100 },
    );
    const answer = await exchange(post(encodeReading({ id: 'raw-after-garbage', meter: 'mtr-raw', ts: 1, values: [{ obis: '1.0.1.8.0.255', value: 5 }] }), CONTENT_FORMAT.cbor));
    expect(answer?.code).toBe('2.04');
  });
});
