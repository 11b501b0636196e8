import { createSocket, type Socket } from 'node:dgram';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MeshEndpoint } from '../../src/coap/endpoint.js';
import { settleExchange } from '../../src/coap/exchanges.js';
import { CONTENT_FORMAT, encodeReading, readingKey } from '../../src/coap/reading.js';

/**
 * A storm of malformed datagrams against a real endpoint: it keeps serving,
 * and counts exactly the datagrams that are not well-formed CoAP.
 */

let endpoint: MeshEndpoint;
let client: Socket;
const replies: ParsedPacket[] = [];
let fenceId = 0;

beforeAll(async () => {
  endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 2000, retryAfterSeconds: 5 });
  endpoint.onUplink((uplink) => settleExchange(uplink.exchangeId, readingKey(uplink.reading.meter, uplink.reading.id), { accepted: true }));
  await endpoint.start();
  client = createSocket('udp6');
  client.on('message', (message: Buffer) => {
    try {
      replies.push(parse(message));
    } catch {
      // Every answer of the endpoint is CoAP; the assertion on replies would show otherwise.
    }
  });
  await new Promise<void>((resolve) => client.bind(0, '::1', () => resolve()));
});

afterAll(async () => {
  client.close();
  await endpoint.stop();
});

/**
 * Datagrams from one socket are handled in the order sent: once the answer
 * to a final probe (a GET answered 4.04 at once) is back, all before it were
 * handled. A fence, not a sleep.
 */
async function fence(): Promise<void> {
  fenceId += 1;
  // Fence tokens start with 0xfe (no other datagram here carries one).
  const token = Buffer.from([0xfe, fenceId >> 8, fenceId & 0xff]);
  const probe = generate({ code: '0.01', confirmable: true, messageId: 0xf000 + fenceId, token, options: [{ name: 'Uri-Path', value: Buffer.from('fence') }] });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the endpoint did not answer the fence probe within 10 s')), 10_000);
    const onMessage = (message: Buffer): void => {
      if (!parse(message).token.equals(token)) return;
      clearTimeout(timer);
      client.off('message', onMessage);
      resolve();
    };
    client.on('message', onMessage);
    client.send(probe, endpoint.port!, '::1');
  });
}

/** The answer carrying `token`; fails the test when none comes within 5 s. */
function answerTo(token: Buffer): Promise<ParsedPacket> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer with token ${token.toString('hex')} within 5 s`)), 5000);
    const onMessage = (message: Buffer): void => {
      const packet = parse(message);
      if (!packet.token.equals(token)) return;
      clearTimeout(timer);
      client.off('message', onMessage);
      resolve(packet);
    };
    client.on('message', onMessage);
  });
}

/** Sends in batches well within the socket's receive buffer, each fenced. */
async function sendAll(datagrams: Buffer[]): Promise<void> {
  for (let i = 0; i < datagrams.length; i += 200) {
    for (const datagram of datagrams.slice(i, i + 200)) client.send(datagram, endpoint.port!, '::1');
    await fence();
  }
}

const validPost = (messageId: number, payload: Buffer = Buffer.from('x')): Buffer =>
  generate({ code: '0.02', confirmable: true, messageId, token: Buffer.from([0xaa, messageId & 0xff]), options: [{ name: 'Uri-Path', value: Buffer.from('readings') }, { name: 'Content-Format', value: Buffer.from([60]) }], payload });

/** Malformed by construction, one kind per generator; `con` when a Reset must come back. */
const malformedKinds: { name: string; con: boolean; make: (rng: fc.Arbitrary<number>) => fc.Arbitrary<Buffer> }[] = [
  { name: 'truncated header', con: false, make: () => fc.uint8Array({ maxLength: 3 }).map((b) => Buffer.from(b)) },
  {
    name: 'version 0, 2 or 3',
    con: false,
    make: (id) => fc.tuple(id, fc.constantFrom(0, 2, 3)).map(([mid, version]) => {
      const bytes = validPost(mid);
      bytes[0] = (bytes[0]! & 0x3f) | (version << 6);
      return bytes;
    }),
  },
  {
    name: 'token length 9-15',
    con: true,
    make: (id) => fc.tuple(id, fc.integer({ min: 9, max: 15 }), fc.uint8Array({ minLength: 0, maxLength: 30 })).map(([mid, tkl, rest]) =>
      Buffer.concat([Buffer.from([0x40 | tkl, 0x02, mid >> 8, mid & 0xff]), Buffer.from(rest)]),
    ),
  },
  {
    name: 'payload marker with no payload',
    con: true,
    make: (id) => id.map((mid) => {
      const bytes = validPost(mid);
      return Buffer.concat([bytes.subarray(0, bytes.indexOf(0xff, 4 + (bytes[0]! & 0x0f)) + 1)]);
    }),
  },
  {
    name: 'option delta or length nibble 15',
    con: true,
    make: (id) => fc.tuple(id, fc.constantFrom(0xf0, 0xf3, 0x1f, 0xbf)).map(([mid, option]) => Buffer.from([0x40, 0x01, mid >> 8, mid & 0xff, option, 0x61, 0x62])),
  },
  {
    name: 'option running past the end',
    con: true,
    make: (id) => fc.tuple(id, fc.integer({ min: 1, max: 12 })).map(([mid, length]) => Buffer.concat([Buffer.from([0x40, 0x01, mid >> 8, mid & 0xff, 0xb0 | length]), Buffer.alloc(length - 1, 0x61)])),
  },
  {
    name: 'extended option delta cut off',
    con: true,
    make: (id) => fc.tuple(id, fc.constantFrom(0xd0, 0xe0, 0x0d, 0x0e)).map(([mid, option]) => Buffer.from([0x40, 0x01, mid >> 8, mid & 0xff, option])),
  },
  { name: 'reserved code class', con: true, make: (id) => fc.tuple(id, fc.constantFrom(1, 6, 7), fc.integer({ min: 0, max: 31 })).map(([mid, cls, detail]) => Buffer.from([0x40, (cls << 5) | detail, mid >> 8, mid & 0xff])) },
  { name: 'empty NON', con: false, make: (id) => id.map((mid) => Buffer.from([0x50, 0x00, mid >> 8, mid & 0xff])) },
  { name: 'ACK carrying a request', con: false, make: (id) => id.map((mid) => Buffer.from([0x60, 0x02, mid >> 8, mid & 0xff])) },
];

describe('MeshEndpoint under a storm of malformed datagrams', () => {
  it('counts every malformed datagram exactly, rejects the confirmable ones with a Reset, and keeps serving', async () => {
    const messageId = fc.integer({ min: 0, max: 0xefff });
    const datagrams: Buffer[] = [];
    let resets = 0;
    for (const kind of malformedKinds) {
      const samples = fc.sample(kind.make(messageId), 300).map((bytes) => Buffer.from(bytes));
      datagrams.push(...samples);
      if (kind.con) resets += samples.length;
    }
    const malformedBefore = endpoint.malformed;
    const repliesBefore = replies.length;
    const fencesBefore = fenceId;

    await sendAll(datagrams);

    expect(endpoint.malformed - malformedBefore).toBe(datagrams.length);
    const answers = replies.slice(repliesBefore).filter((reply) => reply.token[0] !== 0xfe);
    expect(answers.filter((reply) => reply.reset && reply.code === '0.00')).toHaveLength(resets);
    expect(answers).toHaveLength(resets);
    expect(fenceId - fencesBefore).toBe(Math.ceil(datagrams.length / 200));
  });

  it('survives thousands of random and mutated datagrams, counting at least the certainly malformed ones, then accepts a reading', async () => {
    const mutatedPost = fc
      .tuple(fc.integer({ min: 0, max: 0xefff }), fc.uint8Array({ maxLength: 60 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 3 }))
      .map(([mid, payload, flips]) => {
        const bytes = validPost(mid, Buffer.from(payload));
        for (const [at, value] of flips) bytes[at % bytes.length] = value;
        return bytes;
      });
    const random = fc.uint8Array({ maxLength: 120 }).map((b) => Buffer.from(b));
    const oversized = fc.integer({ min: 2000, max: 60_000 }).map((size) => Buffer.alloc(size, 0x5a));
    const datagrams = [...fc.sample(random, 2000), ...fc.sample(mutatedPost, 2000), ...fc.sample(oversized, 20)].map((bytes) => Buffer.from(bytes));
    // An independent lower bound: too short, a version other than 1, or a reserved token length.
    const certainlyMalformed = datagrams.filter((d) => d.length < 4 || d[0]! >> 6 !== 1 || (d[0]! & 0x0f) > 8).length;
    const malformedBefore = endpoint.malformed;

    await sendAll(datagrams);

    const counted = endpoint.malformed - malformedBefore;
    expect(counted).toBeGreaterThanOrEqual(certainlyMalformed);
    expect(counted).toBeLessThanOrEqual(datagrams.length);
    const reading = encodeReading({ id: 'after-storm', meter: 'mtr-storm', ts: 1, values: [{ obis: '1.0.1.8.0.255', value: 1 }] });
    // At most 8 token bytes: a longer token is itself a format error.
    const token = Buffer.from('storm-ok');
    const answer = answerTo(token);
    client.send(
      generate({ code: '0.02', confirmable: true, messageId: 0xfff0, token, options: [{ name: 'Uri-Path', value: Buffer.from('readings') }, { name: 'Content-Format', value: Buffer.from([CONTENT_FORMAT.cbor]) }], payload: Buffer.from(reading) }),
      endpoint.port!,
      '::1',
    );
    expect(await answer).toMatchObject({ ack: true, code: '2.04' });
  });

  it('refuses a well-framed request with a malformed Block1 (4 bytes) with an ACK 4.00 and says why', async () => {
    const rejected: string[] = [];
    endpoint.on('rejected', (reason, message) => rejected.push(`${reason}: ${message}`));
    const token = Buffer.from('block1');
    const answer = answerTo(token);
    client.send(
      generate({ code: '0.02', confirmable: true, messageId: 0xfff1, token, options: [{ name: 'Uri-Path', value: Buffer.from('readings') }, { name: 'Block1', value: Buffer.from([0, 0, 0, 0x08]) }], payload: Buffer.from('x') }),
      endpoint.port!,
      '::1',
    );
    const packet = await answer;
    // An ACK ends the meter's retransmissions.
    expect(packet).toMatchObject({ ack: true, code: '4.00', messageId: 0xfff1 });
    expect(packet.payload.toString()).toBe('malformed Block1 option');
    expect(rejected).toEqual(['BLOCKWISE: malformed Block1 option']);
  });
});
