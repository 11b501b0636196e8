import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_SLIP_FRAME_BYTES,
  SLIP_END,
  SLIP_ESC,
  SLIP_ESC_END,
  SLIP_ESC_ESC,
  SlipDecoder,
  encodeSlip,
  type SlipError,
} from '../../src/lowpan/slip.js';

const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');

/** Bytes with the four SLIP specials far more often than 4 in 256, so escapes are exercised. */
const slipByte = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 255 }) },
  { weight: 2, arbitrary: fc.constantFrom(SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC) },
);
const frameArb = fc.array(slipByte, { minLength: 1, maxLength: 200 }).map((bytes) => Buffer.from(bytes));

/** Splits `bytes` at the given cut points (any order, duplicates allowed). */
function chunked(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((cut) => cut % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const point of points) {
    chunks.push(bytes.subarray(start, point));
    start = point;
  }
  chunks.push(bytes.subarray(start));
  return chunks;
}

describe('encodeSlip (RFC 1055)', () => {
  it('escapes END and ESC and frames with END on both sides', () => {
    expect(encodeSlip(hex('01 c0 02 db 03'))).toEqual(hex('c0 01 dbdc 02 dbdd 03 c0'));
  });

  it('leaves ESC_END and ESC_ESC bytes alone when not after ESC', () => {
    expect(encodeSlip(hex('dc dd'))).toEqual(hex('c0 dc dd c0'));
  });

  it('escapes a frame made only of specials', () => {
    expect(encodeSlip(hex('c0 c0 db db'))).toEqual(hex('c0 dbdc dbdc dbdd dbdd c0'));
  });

  it('encodes an empty frame as two ENDs, which decoders ignore', () => {
    expect(encodeSlip(Buffer.alloc(0))).toEqual(hex('c0 c0'));
    expect(new SlipDecoder().push(encodeSlip(Buffer.alloc(0)))).toEqual([]);
  });
});

describe('SlipDecoder', () => {
  it('decodes the RFC 1055 escapes', () => {
    expect(new SlipDecoder().push(hex('c0 01 dbdc 02 dbdd 03 c0'))).toEqual([hex('01 c0 02 db 03')]);
  });

  it('takes a frame without a leading END (END only terminates)', () => {
    expect(new SlipDecoder().push(hex('01 02 c0'))).toEqual([hex('01 02')]);
  });

  it('ignores empty frames between ENDs', () => {
    const decoder = new SlipDecoder();
    expect(decoder.push(hex('c0 c0 c0 01 c0 c0 c0 02 c0 c0'))).toEqual([hex('01'), hex('02')]);
    expect(decoder.stats).toEqual({ frames: 2, badEscapes: 0, oversizeFrames: 0 });
  });

  it('keeps an unfinished frame across pushes, escape split between chunks', () => {
    const decoder = new SlipDecoder();
    expect(decoder.push(hex('c0 01 db'))).toEqual([]);
    expect(decoder.bufferedBytes).toBe(1);
    expect(decoder.push(hex('dc 02'))).toEqual([]);
    expect(decoder.push(hex('c0'))).toEqual([hex('01 c0 02')]);
    expect(decoder.bufferedBytes).toBe(0);
  });

  it('drops a frame with a bad escape, counts it, and resynchronises on the next END', () => {
    const errors: SlipError[] = [];
    const decoder = new SlipDecoder({ onError: (error) => errors.push(error) });
    // ESC 05 is invalid; the rest of that frame (02, and a valid-looking escape) is discarded too.
    expect(decoder.push(hex('c0 01 db 05 02 dbdc c0 03 c0'))).toEqual([hex('03')]);
    expect(decoder.stats.badEscapes).toBe(1);
    expect(errors.map((error) => error.code)).toEqual(['BAD_ESCAPE']);
    expect(errors[0]?.message).toMatch(/0x05/);
  });

  it('treats ESC followed by END as a bad escape: the frame is dropped, the END still ends it', () => {
    const errors: SlipError[] = [];
    const decoder = new SlipDecoder({ onError: (error) => errors.push(error) });
    expect(decoder.push(hex('c0 01 02 db c0 04 c0'))).toEqual([hex('04')]);
    expect(errors.map((error) => error.code)).toEqual(['BAD_ESCAPE']);
  });

  it('passes line noise before the first END through as a frame of its own (RFC 1055: the leading END isolates it)', () => {
    expect(new SlipDecoder().push(Buffer.concat([hex('ff fe'), encodeSlip(hex('01 02'))]))).toEqual([hex('ff fe'), hex('01 02')]);
  });

  it('keeps a frame of exactly the maximum and drops one byte more, once, counted', () => {
    const errors: SlipError[] = [];
    const decoder = new SlipDecoder({ maxFrameBytes: 4, onError: (error) => errors.push(error) });
    expect(decoder.push(encodeSlip(hex('01 02 03 04')))).toEqual([hex('01 02 03 04')]);
    expect(decoder.push(encodeSlip(hex('01 02 03 04 05 06 07')))).toEqual([]);
    expect(decoder.push(encodeSlip(hex('09')))).toEqual([hex('09')]);
    expect(decoder.stats).toEqual({ frames: 2, badEscapes: 0, oversizeFrames: 1 });
    expect(errors.map((error) => error.code)).toEqual(['OVERSIZE']);
  });

  it('measures the maximum in decoded bytes: escapes count once', () => {
    const decoder = new SlipDecoder({ maxFrameBytes: 2 });
    expect(decoder.push(encodeSlip(hex('c0 db')))).toEqual([hex('c0 db')]);
  });

  it('defaults to a 2,048-byte maximum', () => {
    const decoder = new SlipDecoder();
    expect(decoder.maxFrameBytes).toBe(DEFAULT_MAX_SLIP_FRAME_BYTES);
    expect(DEFAULT_MAX_SLIP_FRAME_BYTES).toBe(2048);
    expect(decoder.push(encodeSlip(Buffer.alloc(2048, 7)))).toHaveLength(1);
    expect(decoder.push(encodeSlip(Buffer.alloc(2049, 7)))).toHaveLength(0);
    expect(decoder.stats.oversizeFrames).toBe(1);
  });

  it('holds at most maxFrameBytes of a line that never sends END, and counts one oversize frame', () => {
    const decoder = new SlipDecoder({ maxFrameBytes: 256 });
    const noise = Buffer.alloc(64 * 1024, 0x41);
    for (let i = 0; i < 160; i++) {
      expect(decoder.push(noise)).toEqual([]);
      expect(decoder.bufferedBytes).toBeLessThanOrEqual(256);
    }
    expect(decoder.stats.oversizeFrames).toBe(1);
    expect(decoder.push(encodeSlip(hex('0102')))).toEqual([hex('0102')]);
  });

  it('reset() forgets a half frame', () => {
    const decoder = new SlipDecoder();
    decoder.push(hex('c0 01 02 db'));
    decoder.reset();
    expect(decoder.push(hex('03 c0'))).toEqual([hex('03')]);
  });

  it('returns frames that do not alias its buffer', () => {
    const decoder = new SlipDecoder();
    const [first] = decoder.push(encodeSlip(hex('01 02 03')));
    decoder.push(encodeSlip(hex('09 09 09')));
    expect(first).toEqual(hex('01 02 03'));
  });

  it('rejects a maximum that is not a positive integer', () => {
    expect(() => new SlipDecoder({ maxFrameBytes: 0 })).toThrow(RangeError);
    expect(() => new SlipDecoder({ maxFrameBytes: 1.5 })).toThrow(RangeError);
  });
});

describe('SLIP properties', () => {
  it('decode(encode(frames)) gives the frames back, however the byte stream is chunked', () => {
    fc.assert(
      fc.property(fc.array(frameArb, { maxLength: 20 }), fc.array(fc.nat(), { maxLength: 30 }), (frames, cuts) => {
        const stream = Buffer.concat(frames.map((frame) => encodeSlip(frame)));
        const decoder = new SlipDecoder();
        const decoded = chunked(stream, cuts).flatMap((chunk) => decoder.push(chunk));
        expect(decoded).toEqual(frames);
        expect(decoder.stats).toEqual({ frames: frames.length, badEscapes: 0, oversizeFrames: 0 });
      }),
      { numRuns: 500 },
    );
  });

  it('an encoded frame never contains END except at both ends, and ESC only before ESC_END or ESC_ESC', () => {
    fc.assert(
      fc.property(frameArb, (frame) => {
        const encoded = encodeSlip(frame);
        expect(encoded[0]).toBe(SLIP_END);
        expect(encoded[encoded.length - 1]).toBe(SLIP_END);
        const inner = encoded.subarray(1, -1);
        expect(inner.includes(SLIP_END)).toBe(false);
        for (let i = 0; i < inner.length; i++) {
          if (inner[i] === SLIP_ESC) {
            expect([SLIP_ESC_END, SLIP_ESC_ESC]).toContain(inner[i + 1]);
            i++;
          }
        }
      }),
      { numRuns: 500 },
    );
  });

  it('after any garbage, the next encoded frame comes out intact (fast-check)', () => {
    fc.assert(
      fc.property(fc.array(slipByte, { maxLength: 300 }), frameArb, fc.array(fc.nat(), { maxLength: 10 }), (garbage, frame, cuts) => {
        const decoder = new SlipDecoder({ maxFrameBytes: 256 });
        const stream = Buffer.concat([Buffer.from(garbage), encodeSlip(frame)]);
        const decoded = chunked(stream, cuts).flatMap((chunk) => decoder.push(chunk));
        expect(decoded.at(-1)).toEqual(frame);
        expect(decoder.bufferedBytes).toBe(0);
      }),
      { numRuns: 1000 },
    );
  });

  it('fuzz: 100,000 random byte streams never throw, stay within the maximum, and resynchronise', () => {
    // A fixed-seed xorshift so a failure reproduces; fast-check would take far longer for this many runs.
    let seed = 0x2545f491;
    const random = (): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) / 0x1_0000_0000;
    };
    const specials = [SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC];
    const maxFrameBytes = 64;
    const probe = hex('41 c0 db 42');
    const decoder = new SlipDecoder({ maxFrameBytes });
    let framesOut = 0;
    for (let run = 0; run < 100_000; run++) {
      const length = Math.floor(random() * 160);
      const garbage = Buffer.allocUnsafe(length);
      for (let i = 0; i < length; i++) {
        garbage[i] = random() < 0.3 ? specials[Math.floor(random() * 4)]! : Math.floor(random() * 256);
      }
      // The decoder carries its state from one stream to the next, as on a real line.
      framesOut += decoder.push(garbage).length;
      if (decoder.bufferedBytes > maxFrameBytes) throw new Error(`run ${run}: ${decoder.bufferedBytes} bytes buffered`);
      if (run % 10 === 0) {
        const decoded = decoder.push(encodeSlip(probe));
        if (!probe.equals(decoded.at(-1) ?? Buffer.alloc(0))) throw new Error(`run ${run}: no resync after ${garbage.toString('hex')}`);
        framesOut += decoded.length;
      }
    }
    const stats = decoder.stats;
    expect(stats.frames).toBe(framesOut);
    expect(stats.badEscapes).toBeGreaterThan(0);
    expect(stats.oversizeFrames).toBeGreaterThan(0);
  });
});
