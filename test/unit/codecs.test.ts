import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CONTENT_FORMAT, decodeReading, encodeReading, ReadingFormatError, type MeterReading } from '../../src/coap/reading.js';
import { decodeAck, decodeBatch, encodeAck, encodeBatch, HesContractError, type RecordBatch } from '../../src/hes/contract.js';
import { CoapUrlError, formatCoapUrl, parseCoapUrl } from '../../src/coap/url.js';
import { cborEncode } from '../../src/coap/cbor.js';

const printable = (min: number, max: number) =>
  fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./'.split('')), minLength: min, maxLength: max });

const readingArb: fc.Arbitrary<MeterReading> = fc.record({
  id: printable(1, 40),
  meter: printable(1, 30),
  ts: fc.integer({ min: 0, max: 2 ** 48 }),
  values: fc.array(
    fc.record({
      obis: fc.tuple(...Array.from({ length: 6 }, () => fc.integer({ min: 0, max: 255 }))).map((p) => p.join('.')),
      // cbor-x writes -0 as the integer 0; a meter value has no use for the sign of zero.
      value: fc.double({ noNaN: true, noDefaultInfinity: true }).map((v) => (v === 0 ? 0 : v)),
      unit: fc.constantFrom('Wh', 'V', 'A', 'var'),
    }),
    { minLength: 1, maxLength: 8 },
  ),
});

describe('meter reading codec', () => {
  it('round-trips any valid reading through CBOR and JSON', () => {
    fc.assert(
      fc.property(readingArb, (reading) => {
        expect(decodeReading(encodeReading(reading), CONTENT_FORMAT.cbor)).toEqual(reading);
        const json = Buffer.from(JSON.stringify(reading));
        // JSON cannot tell -0 from 0; compare after the same normalisation.
        expect(decodeReading(json, CONTENT_FORMAT.json)).toEqual(JSON.parse(json.toString()));
      }),
    );
  });

  it('throws only ReadingFormatError on arbitrary bytes (fuzz)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), fc.constantFrom(CONTENT_FORMAT.cbor, CONTENT_FORMAT.json, 0, undefined), (bytes, format) => {
        try {
          decodeReading(bytes, format);
        } catch (err) {
          expect(err).toBeInstanceOf(ReadingFormatError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('throws only ReadingFormatError on arbitrary CBOR values (structure fuzz)', () => {
    fc.assert(
      fc.property(fc.anything({ withMap: false, withSet: false, withBigInt: false, withTypedArray: true }), (value) => {
        try {
          decodeReading(cborEncode(value), CONTENT_FORMAT.cbor);
        } catch (err) {
          expect(err).toBeInstanceOf(ReadingFormatError);
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('names the problem in its errors', () => {
    const bad = (value: unknown) => {
      try {
        decodeReading(cborEncode(value), CONTENT_FORMAT.cbor);
      } catch (err) {
        return err as ReadingFormatError;
      }
      throw new Error('expected a ReadingFormatError');
    };
    expect(bad([1, 2]).message).toBe('reading must be a map');
    expect(bad({ id: 'a', meter: 'm', ts: 1, values: [{ obis: '1.2.3', value: 1 }] }).message).toContain('values[0].obis');
    expect(bad({ id: 'a', meter: 'm', ts: -1, values: [] }).code).toBe('BAD_SHAPE');
    expect(() => decodeReading(Buffer.from('{}'), 42)).toThrow(/Content-Format 42/);
    expect(() => decodeReading(Buffer.from('{}'), Number.NaN)).toThrow(/not recognised/);
    expect(() => decodeReading(Buffer.from([0xc3, 0x28]), CONTENT_FORMAT.json)).toThrow(/invalid JSON/);
  });

  it('does not let a __proto__ key reach the prototype', () => {
    const payload = Buffer.from('{"__proto__":{"polluted":true},"id":"a","meter":"m","ts":1,"values":[{"obis":"1.0.1.8.0.255","value":1}]}');
    const reading = decodeReading(payload, CONTENT_FORMAT.json);
    expect(Object.getPrototypeOf(reading)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe('HES uplink contract', () => {
  it('round-trips batches and acknowledgements', () => {
    fc.assert(
      fc.property(fc.array(readingArb, { maxLength: 20 }), (readings) => {
        const batch: RecordBatch = {
          gateway: 'gw-1',
          records: readings.map((r) => ({ key: `${r.meter}/${r.id}`, kind: 'reading' as const, meter: r.meter, ts: r.ts, body: r })),
        };
        expect(decodeBatch(encodeBatch(batch))).toEqual(batch);
        const keys = batch.records.map((r) => r.key);
        expect(decodeAck(encodeAck({ accepted: keys }))).toEqual({ accepted: keys });
      }),
    );
  });

  it('throws only HesContractError on arbitrary input (fuzz)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.anything().map((v) => new Uint8Array(cborEncode(v)))), (bytes) => {
        for (const decode of [decodeBatch, decodeAck]) {
          try {
            decode(bytes);
          } catch (err) {
            expect(err).toBeInstanceOf(HesContractError);
          }
        }
      }),
      { numRuns: 1500 },
    );
  });

  it('encodes plain CBOR maps, readable without cbor-x extensions', () => {
    const bytes = encodeBatch({ gateway: 'g', records: [] });
    // 0xa2: a map of two pairs (RFC 8949), not a cbor-x record tag.
    expect(bytes[0]).toBe(0xa2);
  });
});

describe('coap:// URLs', () => {
  it('parses IPv6 literals, host names and default ports', () => {
    expect(parseCoapUrl('coap://[::1]:5683')).toEqual({ host: '::1', port: 5683, pathname: '/', query: '' });
    expect(parseCoapUrl('coap://hes.example/base')).toEqual({ host: 'hes.example', port: 5683, pathname: '/base', query: '' });
    // The query travels as Uri-Query options (coapCall used to drop it).
    expect(parseCoapUrl('coap://[::1]/rd?ep=mtr-1&lt=60')).toEqual({ host: '::1', port: 5683, pathname: '/rd', query: 'ep=mtr-1&lt=60' });
    expect(formatCoapUrl('::1', 7)).toBe('coap://[::1]:7');
    expect(formatCoapUrl('10.0.0.1', 7, '/x')).toBe('coap://10.0.0.1:7/x');
  });

  it('refuses what is not a coap:// URL', () => {
    expect(() => parseCoapUrl('http://x')).toThrow(CoapUrlError);
    expect(() => parseCoapUrl('coap://')).toThrow(CoapUrlError);
    expect(() => parseCoapUrl('not a url')).toThrow(CoapUrlError);
  });
});
