import { generate, parse } from 'coap-packet';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { inspectDatagram, resetMessage } from '../../src/coap/datagram.js';
import { EXCHANGE_LIFETIME_MS, MessageDeduplicator, NON_LIFETIME_MS } from '../../src/coap/deduplicator.js';

const post = (messageId = 1, payload = Buffer.from('x')): Buffer =>
  generate({ code: '0.02', confirmable: true, messageId, token: Buffer.from([1, 2, 3]), options: [{ name: 'Uri-Path', value: Buffer.from('readings') }], payload });

describe('inspectDatagram (RFC 7252 framing)', () => {
  it('accepts well-formed requests, responses and empty messages, and finds the first path segment', () => {
    expect(inspectDatagram(post(0xbeef))).toMatchObject({ ok: true, type: 'CON', isRequest: true, messageId: 0xbeef, firstPathSegment: 'readings' });
    const rd = generate({ code: '0.02', messageId: 2, options: [{ name: 'Uri-Path', value: Buffer.from('rd') }, { name: 'Uri-Query', value: Buffer.from('ep=x') }] });
    expect(inspectDatagram(rd)).toMatchObject({ ok: true, type: 'NON', firstPathSegment: 'rd' });
    expect(inspectDatagram(generate({ code: '2.04', ack: true, messageId: 3 }))).toMatchObject({ ok: true, type: 'ACK', isRequest: false });
    expect(inspectDatagram(Buffer.from([0x40, 0, 0, 9]))).toMatchObject({ ok: true, isEmpty: true, type: 'CON' });
    expect(inspectDatagram(Buffer.from([0x60, 0, 0, 9]))).toMatchObject({ ok: true, isEmpty: true, type: 'ACK' });
    // Long options use the extended delta and length forms (13 and 14).
    const long = generate({ code: '0.01', confirmable: true, messageId: 4, options: [{ name: 'Uri-Path', value: Buffer.alloc(300, 0x61) }, { name: 'Size1', value: Buffer.from([1]) }, { name: '2049', value: Buffer.from([1]) }] });
    expect(inspectDatagram(long)).toMatchObject({ ok: true, firstPathSegment: 'a'.repeat(300) });
  });

  it('names each message format error', () => {
    const valid = post(7);
    expect(inspectDatagram(Buffer.from([0x40, 0x02, 0]))).toEqual({ ok: false, reason: 'TOO_SHORT' });
    for (const version of [0, 2, 3]) {
      const copy = Buffer.from(valid);
      copy[0] = (copy[0]! & 0x3f) | (version << 6);
      expect(inspectDatagram(copy)).toEqual({ ok: false, reason: 'BAD_VERSION' });
    }
    for (let tokenLength = 9; tokenLength <= 15; tokenLength++) {
      const copy = Buffer.concat([Buffer.from([0x40 | tokenLength, 0x01, 0, 7]), Buffer.alloc(tokenLength)]);
      expect(inspectDatagram(copy)).toEqual({ ok: false, reason: 'BAD_TOKEN_LENGTH', type: 'CON', messageId: 7 });
    }
    expect(inspectDatagram(Buffer.concat([valid.subarray(0, valid.indexOf(0xff) + 1)]))).toMatchObject({ reason: 'EMPTY_PAYLOAD' });
    expect(inspectDatagram(Buffer.from([0x40, 0x01, 0, 7, 0xf1, 0x00]))).toMatchObject({ reason: 'BAD_OPTION' });
    expect(inspectDatagram(Buffer.from([0x40, 0x01, 0, 7, 0xbf]))).toMatchObject({ reason: 'BAD_OPTION' });
    expect(inspectDatagram(Buffer.from([0x40, 0x01, 0, 7, 0xb5, 0x61]))).toMatchObject({ reason: 'TRUNCATED' });
    expect(inspectDatagram(Buffer.from([0x40, 0x01, 0, 7, 0xd1]))).toMatchObject({ reason: 'TRUNCATED' });
    expect(inspectDatagram(Buffer.from([0x40, 0x01, 0, 7, 0xe1, 0x01]))).toMatchObject({ reason: 'TRUNCATED' });
    expect(inspectDatagram(Buffer.from([0x44, 0x01, 0, 7, 1]))).toMatchObject({ reason: 'TRUNCATED' });
    expect(inspectDatagram(Buffer.from([0x40, 0x00, 0, 7, 0xff, 1]))).toMatchObject({ reason: 'BAD_EMPTY' });
    expect(inspectDatagram(Buffer.from([0x50, 0x00, 0, 7]))).toMatchObject({ reason: 'BAD_TYPE' });
    expect(inspectDatagram(Buffer.from([0x60, 0x02, 0, 7]))).toMatchObject({ reason: 'BAD_TYPE' });
    for (const codeClass of [1, 6, 7]) expect(inspectDatagram(Buffer.from([0x40, codeClass << 5, 0, 7]))).toMatchObject({ reason: 'RESERVED_CODE' });
  });

  it('never throws, and whatever it accepts the coap library parses (fuzz)', () => {
    const mutated = fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.uint8Array({ maxLength: 40 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 })).map(([id, payload, flips]) => {
      const bytes = post(id, Buffer.from(payload));
      for (const [at, value] of flips) bytes[at % bytes.length] = value;
      return bytes;
    });
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.from(b)), mutated), (bytes) => {
        const result = inspectDatagram(bytes);
        if (result.ok) expect(() => parse(bytes)).not.toThrow();
      }),
      { numRuns: 20_000 },
    );
  });

  it('builds the Reset that rejects a message', () => {
    expect(parse(resetMessage(0xabcd))).toMatchObject({ reset: true, code: '0.00', messageId: 0xabcd });
  });
});

describe('MessageDeduplicator', () => {
  const datagram = (n: number) => Buffer.from([0x40, 2, n >> 8, n & 0xff, 0xff, n & 0xff]);

  it('remembers a CON request for EXCHANGE_LIFETIME and a NON one for NON_LIFETIME', () => {
    let now = 0;
    const dedup = new MessageDeduplicator({ now: () => now });
    expect(dedup.check('fd00::1', 5683, 1, true, datagram(1))).toEqual({ duplicate: false });
    expect(dedup.check('fd00::1', 5683, 2, false, datagram(2))).toEqual({ duplicate: false });
    now = NON_LIFETIME_MS - 1;
    expect(dedup.check('fd00::1', 5683, 1, true, datagram(1)).duplicate).toBe(true);
    expect(dedup.check('fd00::1', 5683, 2, false, datagram(2))).toEqual({ duplicate: true, held: false });
    now = NON_LIFETIME_MS;
    expect(dedup.check('fd00::1', 5683, 2, false, datagram(2)).duplicate).toBe(false);
    now = EXCHANGE_LIFETIME_MS - 1;
    expect(dedup.check('fd00::1', 5683, 1, true, datagram(1)).duplicate).toBe(true);
    now = EXCHANGE_LIFETIME_MS;
    expect(dedup.check('fd00::1', 5683, 1, true, datagram(1)).duplicate).toBe(false);
  });

  it('tells apart sources by address and port, and a reused message id with other bytes', () => {
    const dedup = new MessageDeduplicator();
    dedup.check('fd00::1', 5683, 1, true, datagram(1));
    expect(dedup.check('fd00::2', 5683, 1, true, datagram(1)).duplicate).toBe(false);
    expect(dedup.check('fd00::1', 5684, 1, true, datagram(1)).duplicate).toBe(false);
    expect(dedup.check('fd00::1', 5683, 1, true, datagram(9)).duplicate).toBe(false);
    expect(dedup.size).toBe(3);
  });

  it('holds copies until the answer exists, owes each one the answer, then answers copies at once', () => {
    const dedup = new MessageDeduplicator();
    dedup.check('fd00::1', 1, 5, true, datagram(5));
    expect(dedup.check('fd00::1', 1, 5, true, datagram(5))).toEqual({ duplicate: true, held: true });
    expect(dedup.check('fd00::1', 1, 5, true, datagram(5))).toEqual({ duplicate: true, held: true });
    const ack = Buffer.from([0x60, 0x44, 0, 5]);
    expect(dedup.answered('fd00::1', 1, 5, ack)).toBe(2);
    // The first answer stays the answer (an empty ACK before a separate response, say).
    expect(dedup.answered('fd00::1', 1, 5, Buffer.from([0x60, 0x45, 0, 5]))).toBe(0);
    expect(dedup.check('fd00::1', 1, 5, true, datagram(5))).toEqual({ duplicate: true, answer: ack, held: false });
    expect(dedup.answered('fd00::1', 1, 99, ack)).toBe(0);
  });

  it('holds at most 8 copies of one request', () => {
    const dedup = new MessageDeduplicator();
    dedup.check('fd00::1', 1, 5, true, datagram(5));
    const verdicts = Array.from({ length: 12 }, () => dedup.check('fd00::1', 1, 5, true, datagram(5)));
    expect(verdicts.filter((v) => v.duplicate && v.held)).toHaveLength(8);
    expect(dedup.answered('fd00::1', 1, 5, Buffer.from([0x60, 0x44, 0, 5]))).toBe(8);
  });

  it('forgets the oldest exchanges beyond its caps on exchanges and on answer bytes', () => {
    const dedup = new MessageDeduplicator({ maxExchanges: 3, maxAnswerBytes: 10 });
    for (let id = 1; id <= 4; id++) dedup.check('fd00::1', 1, id, true, datagram(id));
    expect(dedup.size).toBe(3);
    expect(dedup.forgottenEarly).toBe(1);
    expect(dedup.check('fd00::1', 1, 1, true, datagram(1)).duplicate).toBe(false); // 1 was forgotten (and 2 now is)
    expect(dedup.check('fd00::1', 1, 4, true, datagram(4)).duplicate).toBe(true);
    dedup.answered('fd00::1', 1, 3, Buffer.alloc(6));
    dedup.answered('fd00::1', 1, 4, Buffer.alloc(6));
    // 12 answer bytes > 10: the oldest (3) goes.
    expect(dedup.size).toBe(2);
    expect(dedup.check('fd00::1', 1, 4, true, datagram(4))).toMatchObject({ duplicate: true, held: false });
    expect(dedup.check('fd00::1', 1, 3, true, datagram(3)).duplicate).toBe(false);
  });
});
