import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  crc16Kermit,
  decodeMacFrame,
  encodeMacFrame,
  extendedAddress,
  formatMacAddress,
  LowpanError,
  macHeaderLength,
  parseMacAddress,
  shortAddress,
  type MacAddress,
  type MacFrameInit,
  type MacFrameVersion,
} from '../../src/lowpan/index.js';

const hex = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text.replace(/\s+/g, ''), 'hex'));

function lowpanError(fn: () => unknown): LowpanError {
  try {
    fn();
  } catch (err) {
    if (err instanceof LowpanError) return err;
    throw err;
  }
  throw new Error('expected a LowpanError');
}

describe('802.15.4 MAC frames', () => {
  it('decodes a captured 2003 data frame with extended addresses and PAN ID compression', () => {
    // First frame of smoltcp's sixlowpan_three_fragments capture (FCS stripped by the radio).
    const frame = hex('41cc92efbe424242424242 0b1a d93e08282f829332 c133003f6e33');
    const mac = decodeMacFrame(frame);
    expect(mac).toMatchObject({
      kind: 'data',
      frameVersion: 0,
      sequenceNumber: 0x92,
      panIdCompression: true,
      ackRequest: false,
      dstPan: 0xbeef,
      srcPan: 0xbeef,
      dst: { mode: 'extended', eui64: '1a0b424242424242' },
      src: { mode: 'extended', eui64: '3293822f28083ed9' },
      payloadOffset: 21,
    });
    expect(Buffer.from(mac.payload).toString('hex')).toBe('c133003f6e33');
  });

  it('computes the CRC-16/KERMIT check value and verifies an FCS', () => {
    expect(crc16Kermit(new TextEncoder().encode('123456789'))).toBe(0x2189);
    // An 802.15.4 immediate acknowledgement for sequence number 0x56: 02 00 56 + FCS.
    const ack = encodeMacFrame({ kind: 'ack', frameVersion: 0, sequenceNumber: 0x56 }, new Uint8Array(0), { fcs: true });
    expect(Buffer.from(ack).toString('hex')).toBe('020056' + Buffer.from([crc16Kermit(hex('020056')) & 0xff, crc16Kermit(hex('020056')) >> 8]).toString('hex'));
    const decoded = decodeMacFrame(ack, { fcs: true });
    expect(decoded.kind).toBe('ack');
    expect(decoded.sequenceNumber).toBe(0x56);
    expect(decoded.fcs).toBe(crc16Kermit(hex('020056')));
    const bad = Uint8Array.from(ack);
    bad[3] = (bad[3] ?? 0) ^ 1;
    const err = lowpanError(() => decodeMacFrame(bad, { fcs: true }));
    expect(err.code).toBe('BAD_CHECKSUM');
    expect(err.offset).toBe(3);
  });

  it('says what beacon and command frames are without a payload decoder', () => {
    const beacon = decodeMacFrame(encodeMacFrame({ kind: 'beacon', frameVersion: 0, panId: 0x1234, src: shortAddress(0x0001) }, hex('ff cf 00 00')));
    expect(beacon).toMatchObject({ kind: 'beacon', srcPan: 0x1234, src: { mode: 'short', short: 1 } });
    const command = decodeMacFrame(encodeMacFrame({ kind: 'command', panId: 0xffff, dst: shortAddress(0xffff), src: extendedAddress('0011223344556677') }, hex('07')));
    expect(command).toMatchObject({ kind: 'command', dstPan: 0xffff, srcPan: 0xffff, panIdCompression: true });
    expect(Array.from(command.payload)).toEqual([7]);
  });

  it('writes extended addresses little-endian and shows them big-endian', () => {
    const frame = encodeMacFrame({ panId: 0xabcd, dst: shortAddress(0x1234), src: extendedAddress('00:12:4b:00:01:02:03:04'), sequenceNumber: 9 }, hex('41'));
    // fc: data, PAN ID compression, dst short, version 2006, src extended
    expect(Buffer.from(frame).toString('hex')).toBe('41d8' + '09' + 'cdab' + '3412' + '04030201004b1200' + '41');
    expect(formatMacAddress(decodeMacFrame(frame).src as MacAddress)).toBe('00124b0001020304');
  });

  it('refuses secured frames, multipurpose frames and reserved values with typed errors', () => {
    expect(lowpanError(() => decodeMacFrame(hex('49cc00efbe')))).toMatchObject({ code: 'UNSUPPORTED', offset: 0 });
    expect(lowpanError(() => decodeMacFrame(hex('4588')))).toMatchObject({ code: 'UNSUPPORTED' });
    expect(lowpanError(() => decodeMacFrame(hex('4104 00')))).toMatchObject({ code: 'BAD_VALUE', offset: 1 });
    expect(lowpanError(() => decodeMacFrame(hex('4130 00')))).toMatchObject({ code: 'UNSUPPORTED', offset: 1 });
  });

  it('reports TRUNCATED with an offset inside the input for every prefix of a frame', () => {
    const frame = encodeMacFrame({ panId: 0xabcd, srcPanId: 0x1111, dst: extendedAddress('0102030405060708'), src: extendedAddress('1112131415161718') }, hex('7e33'));
    const headerLength = macHeaderLength({ panId: 0xabcd, srcPanId: 0x1111, dst: extendedAddress('0102030405060708'), src: extendedAddress('1112131415161718') });
    expect(headerLength).toBe(2 + 1 + 2 + 8 + 2 + 8);
    for (let n = 0; n < headerLength; n++) {
      const err = lowpanError(() => decodeMacFrame(frame.subarray(0, n)));
      expect(err.code).toBe('TRUNCATED');
      expect(err.offset).toBeGreaterThanOrEqual(0);
      expect(err.offset).toBeLessThanOrEqual(n);
    }
  });

  describe('802.15.4-2015 PAN ID compression (table 7-2)', () => {
    // [dst mode, src mode, PAN ID compression, dst PAN present, src PAN present]
    const rows: Array<[0 | 2 | 3, 0 | 2 | 3, 0 | 1, boolean, boolean]> = [
      [0, 0, 0, false, false],
      [0, 0, 1, true, false],
      [2, 0, 0, true, false],
      [3, 0, 0, true, false],
      [2, 0, 1, false, false],
      [3, 0, 1, false, false],
      [0, 2, 0, false, true],
      [0, 3, 0, false, true],
      [0, 2, 1, false, false],
      [0, 3, 1, false, false],
      [3, 3, 0, true, false],
      [3, 3, 1, false, false],
      [2, 2, 0, true, true],
      [2, 3, 0, true, true],
      [3, 2, 0, true, true],
      [2, 3, 1, true, false],
      [3, 2, 1, true, false],
      [2, 2, 1, true, false],
    ];
    it.each(rows)('dst mode %i, src mode %i, compression %i: dst PAN %s, src PAN %s', (dstMode, srcMode, compression, dstPan, srcPan) => {
      const fcField = 0x1 | (compression << 6) | (dstMode << 10) | (2 << 12) | (srcMode << 14);
      const parts = [fcField & 0xff, fcField >> 8, 0x2a];
      if (dstPan) parts.push(0xcd, 0xab);
      if (dstMode === 2) parts.push(0x34, 0x12);
      if (dstMode === 3) parts.push(8, 7, 6, 5, 4, 3, 2, 1);
      if (srcPan) parts.push(0x11, 0x11);
      if (srcMode === 2) parts.push(0x78, 0x56);
      if (srcMode === 3) parts.push(0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11);
      parts.push(0x99);
      const mac = decodeMacFrame(Uint8Array.from(parts));
      expect(mac.frameVersion).toBe(2);
      expect(mac.dstPan).toBe(dstPan ? 0xabcd : undefined);
      expect(mac.srcPan).toBe(srcPan ? 0x1111 : dstPan && srcMode !== 0 ? 0xabcd : undefined);
      expect(Array.from(mac.payload)).toEqual([0x99]);
      if (dstMode === 2) expect(mac.dst).toEqual({ mode: 'short', short: 0x1234 });
      if (srcMode === 3) expect(mac.src).toEqual({ mode: 'extended', eui64: '1112131415161718' });
    });

    it('handles sequence number suppression and skips header and payload IEs', () => {
      // 2015 data frame, seq suppressed, IE present, short/short, PAN ID compression.
      const fcField = 0x1 | 0x40 | 0x100 | 0x200 | (2 << 10) | (2 << 12) | (2 << 14);
      const headerIe = [0x02 | ((0x1e << 7) & 0xff), (0x1e << 7) >> 8, 0xaa, 0xbb]; // element 0x1e, 2 bytes
      const ht1 = [(0x7e << 7) & 0xff, (0x7e << 7) >> 8];
      const payloadIe = [0x01, 0x80 | (0x1 << 3), 0xcc]; // group 1, 1 byte
      const termination = [0x00, 0x80 | (0xf << 3)];
      const frame = Uint8Array.from([fcField & 0xff, fcField >> 8, 0xcd, 0xab, 0x34, 0x12, 0x78, 0x56, ...headerIe, ...ht1, ...payloadIe, ...termination, 0x41, 0x42]);
      const mac = decodeMacFrame(frame);
      expect(mac.sequenceNumber).toBeUndefined();
      expect(mac.headerIes).toEqual([
        { elementId: 0x1e, length: 2 },
        { elementId: 0x7e, length: 0 },
      ]);
      expect(mac.payloadIes).toEqual([
        { groupId: 1, length: 1 },
        { groupId: 0xf, length: 0 },
      ]);
      expect(Array.from(mac.payload)).toEqual([0x41, 0x42]);
      const ht2 = Uint8Array.from([fcField & 0xff, fcField >> 8, 0xcd, 0xab, 0x34, 0x12, 0x78, 0x56, (0x7f << 7) & 0xff, (0x7f << 7) >> 8, 0x61]);
      expect(Array.from(decodeMacFrame(ht2).payload)).toEqual([0x61]);
      expect(lowpanError(() => decodeMacFrame(Uint8Array.from([fcField & 0xff, fcField >> 8, 0xcd, 0xab, 0x34, 0x12, 0x78, 0x56, 0x05, 0x0f, 0x00])))).toMatchObject({ code: 'TRUNCATED' });
    });

    it('encodes the shortest PAN ID form the table allows', () => {
      const ext = extendedAddress('0102030405060708');
      expect(macHeaderLength({ frameVersion: 2, panId: 1, dst: ext, src: ext })).toBe(2 + 1 + 2 + 16);
      expect(macHeaderLength({ frameVersion: 2, panId: 1, dst: shortAddress(1), src: ext })).toBe(2 + 1 + 2 + 2 + 8);
      expect(macHeaderLength({ frameVersion: 2, panId: 1, srcPanId: 2, dst: shortAddress(1), src: ext })).toBe(2 + 1 + 4 + 2 + 8);
      expect(() => macHeaderLength({ frameVersion: 2, panId: 1, srcPanId: 2, dst: ext, src: ext })).toThrow(LowpanError);
      expect(macHeaderLength({ frameVersion: 2, suppressSequenceNumber: true, panId: 1, dst: shortAddress(1), src: shortAddress(2) })).toBe(2 + 2 + 4);
    });
  });

  it('parses MAC address text', () => {
    expect(parseMacAddress('ffff')).toEqual({ mode: 'short', short: 0xffff });
    expect(parseMacAddress('00-12-4B-00-01-02-03-04')).toEqual({ mode: 'extended', eui64: '00124b0001020304' });
    expect(() => parseMacAddress('123')).toThrow(LowpanError);
  });

  it('round-trips random frames of every version and addressing mode', () => {
    const address = fc.oneof(
      fc.integer({ min: 0, max: 0xffff }).map(shortAddress),
      fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => extendedAddress(Buffer.from(b).toString('hex'))),
    );
    fc.assert(
      fc.property(
        fc.record({
          frameVersion: fc.constantFrom<MacFrameVersion>(0, 1, 2),
          sequenceNumber: fc.integer({ min: 0, max: 255 }),
          panId: fc.integer({ min: 0, max: 0xffff }),
          srcPanId: fc.option(fc.integer({ min: 0, max: 0xffff }), { nil: undefined }),
          dst: fc.option(address, { nil: undefined }),
          src: fc.option(address, { nil: undefined }),
          ackRequest: fc.boolean(),
          framePending: fc.boolean(),
        }),
        fc.uint8Array({ maxLength: 40 }),
        fc.boolean(),
        (init, payload, withFcs) => {
          const frameInit: MacFrameInit = { ...init };
          if (!init.dst || !init.src) delete frameInit.srcPanId;
          if (!init.dst && !init.src && init.frameVersion !== 2) delete frameInit.panId;
          let frame: Uint8Array;
          try {
            frame = encodeMacFrame(frameInit, payload, { fcs: withFcs });
          } catch (err) {
            // Some combinations cannot carry two PANs (2015 extended/extended); the encoder must say so.
            expect(err).toBeInstanceOf(LowpanError);
            return;
          }
          const mac = decodeMacFrame(frame, { fcs: withFcs });
          expect(mac.kind).toBe('data');
          expect(mac.frameVersion).toBe(init.frameVersion);
          expect(mac.sequenceNumber).toBe(init.sequenceNumber);
          expect(mac.dst).toEqual(init.dst);
          expect(mac.src).toEqual(init.src);
          expect(mac.ackRequest).toBe(init.ackRequest);
          expect(mac.framePending).toBe(init.framePending);
          if (init.dst) expect(mac.dstPan).toBe(init.panId);
          if (init.src && init.dst) expect(mac.srcPan).toBe(frameInit.srcPanId ?? init.panId);
          expect(Array.from(mac.payload)).toEqual(Array.from(payload));
        },
      ),
      { numRuns: 500 },
    );
  });
});
