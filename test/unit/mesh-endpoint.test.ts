import { createSocket, type Socket } from 'node:dgram';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dlmsFrameKey, MAX_DLMS_FRAME_BYTES, MeshEndpoint, type DlmsUplink, type Uplink } from '../../src/coap/endpoint.js';
import { rebindExchange, settleExchange } from '../../src/coap/exchanges.js';
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

describe('MeshEndpoint /dlms resource (raw CoAP datagrams)', () => {
  let dlmsEndpoint: MeshEndpoint;
  const frames: DlmsUplink[] = [];
  const reasons: string[] = [];
  let refuseNext: '4.01' | undefined;

  beforeAll(async () => {
    dlmsEndpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 300, retryAfterSeconds: 13 });
    dlmsEndpoint.on('rejected', (reason) => reasons.push(reason));
    dlmsEndpoint.onDlmsUplink((uplink) => {
      frames.push(uplink);
      // What dlms decode does: re-key the exchange to the record, then the record is accepted (or refused).
      expect(rebindExchange(uplink.exchangeId, uplink.frameKey, `dlms/test/${frames.length}`)).toBe('settled');
      const outcome = refuseNext ? { accepted: false as const, reason: 'REPLAY: old counter', refuseWith: refuseNext } : { accepted: true as const };
      refuseNext = undefined;
      settleExchange(uplink.exchangeId, `dlms/test/${frames.length}`, outcome);
    });
    await dlmsEndpoint.start();
  });

  afterAll(async () => {
    await dlmsEndpoint.stop();
  });

  function postDlms(payload: Buffer, query?: string, contentFormat: number | undefined = 42): Buffer {
    messageId = (messageId + 1) & 0xffff;
    const options: Array<{ name: never; value: Buffer }> = [{ name: 'Uri-Path' as never, value: Buffer.from('dlms') }];
    if (contentFormat !== undefined) options.push({ name: 'Content-Format' as never, value: Buffer.from([contentFormat]) });
    if (query !== undefined) options.push({ name: 'Uri-Query' as never, value: Buffer.from(query) });
    return generate({ code: '0.02', confirmable: true, messageId, token: Buffer.from([messageId & 0xff, 2]), options, payload }, 65_000);
  }

  function send(datagram: Buffer): Promise<ParsedPacket | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(undefined), 1000);
      client.once('message', (message: Buffer) => {
        clearTimeout(timer);
        resolve(parse(message));
      });
      client.send(datagram, dlmsEndpoint.port!, '::1');
    });
  }

  it('hands the frame as received to DLMS listeners, with the meter from ?ep=, and acknowledges once the record is accepted', async () => {
    const frame = Buffer.from('db08414d4900000000010000', 'hex');
    const answer = await send(postDlms(frame, 'ep=mtr-dlms-1'));
    expect(answer?.code).toBe('2.04');
    expect(frames.at(-1)?.frame.equals(frame)).toBe(true);
    expect(frames.at(-1)?.meter).toBe('mtr-dlms-1');
    expect(frames.at(-1)?.frameKey).toBe(dlmsFrameKey(frame));
  });

  it('answers a refusal the flow marks permanent with its 4.xx code', async () => {
    refuseNext = '4.01';
    const answer = await send(postDlms(Buffer.from([0xdb, 0x00, 0x01]), 'ep=mtr-dlms-2'));
    expect(answer?.code).toBe('4.01');
    expect(answer?.payload.toString()).toMatch(/REPLAY/);
    expect(reasons.at(-1)).toBe('REFUSED_BY_FLOW');
  });

  it('refuses another content format (4.15), an empty frame (4.00), an oversized one (4.13) and a bad ep (4.00)', async () => {
    expect((await send(postDlms(Buffer.from([0xdb]), undefined, 60)))?.code).toBe('4.15');
    expect((await send(postDlms(Buffer.alloc(0))))?.code).toBe('4.00');
    expect((await send(postDlms(Buffer.alloc(MAX_DLMS_FRAME_BYTES + 1, 0xdb))))?.code).toBe('4.13');
    expect((await send(postDlms(Buffer.from([0xdb]), 'ep=' + 'x'.repeat(65))))?.code).toBe('4.00');
    expect(reasons.slice(-4)).toEqual(['UNSUPPORTED_FORMAT', 'EMPTY_FRAME', 'TOO_LARGE', 'BAD_SHAPE']);
  });
});
