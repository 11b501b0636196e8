import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ACK,
  C1218Error,
  NAK,
  PacketDecoder,
  baudRateCode,
  baudRateOfCode,
  crc16X25,
  ctrlByte,
  decodeDeviceIdentification,
  decodeGeneralConfiguration,
  decodeIdentifyResponse,
  decodeManufacturerIdentification,
  decodeNegotiateResponse,
  decodeOkResponse,
  decodePacket,
  decodeReadResponse,
  decodeRequest,
  encodeDeviceIdentification,
  encodeGeneralConfiguration,
  encodeIdentifyResponse,
  encodeManufacturerIdentification,
  encodeNegotiateResponse,
  encodeOkResponse,
  encodePacket,
  encodeReadResponse,
  encodeRefusal,
  encodeRequest,
  packetFlags,
  passwordBytes,
  tableChecksum,
  tableFormatOf,
  tablesUsed,
  type C1218Request,
  type GeneralConfigurationInput,
  type LinkUnit,
  type TableFormat,
} from '../../src/c1218/index.js';

const hex = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text.replace(/\s+/g, ''), 'hex'));
const toHex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof C1218Error) return err.code;
    throw err;
  }
  return undefined;
}

describe('checksums', () => {
  it('CRC-16/X-25 of "123456789" is 0x906E (its catalogue check value)', () => {
    expect(crc16X25(new TextEncoder().encode('123456789'))).toBe(0x906e);
  });

  it('CRC-16/X-25 of nothing is 0x0000 (init 0xFFFF xor 0xFFFF)', () => {
    expect(crc16X25(new Uint8Array(0))).toBe(0x0000);
  });

  it('the table checksum makes data plus checksum sum to 0 mod 256', () => {
    expect(tableChecksum(Uint8Array.of(0x01, 0x02, 0x03))).toBe(0xfa);
    expect(tableChecksum(new Uint8Array(0))).toBe(0);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (data) => {
        const sum = data.reduce((s, b) => s + b, 0) + tableChecksum(data);
        expect(sum & 0xff).toBe(0);
      }),
    );
  });
});

describe('packets', () => {
  // A meter's optical port session as a C12.18 client logged it (MeteringSDK's documentation).
  const IDENTIFY_REQUEST = 'ee 00 00 00 00 01 20 13 10';
  const IDENTIFY_RESPONSE = 'ee 00 00 00 00 05 00 00 01 00 00 c6 b5';
  const NEGOTIATE_REQUEST = 'ee 00 20 00 00 05 61 04 00 80 06 c2 29';
  const NEGOTIATE_RESPONSE = 'ee 00 20 00 00 05 00 04 00 80 06 35 83';

  it('encodes the identify request of a recorded session byte for byte (CRC sent LSB first)', () => {
    expect(toHex(encodePacket({ identity: 0, ctrl: 0, sequence: 0, data: encodeRequest({ service: 'identify' }) }))).toBe(IDENTIFY_REQUEST.replace(/ /g, ''));
  });

  it('encodes the negotiate request (toggle bit set, 1024-byte packets, 128 packets, 9600 baud) byte for byte', () => {
    const data = encodeRequest({ service: 'negotiate', packetSize: 1024, maxPackets: 128, baudRates: [9600] });
    expect(toHex(encodePacket({ identity: 0, ctrl: ctrlByte({ toggle: true }), sequence: 0, data }))).toBe(NEGOTIATE_REQUEST.replace(/ /g, ''));
  });

  it('decodes the recorded responses', () => {
    const identify = decodePacket(hex(IDENTIFY_RESPONSE));
    expect(decodeIdentifyResponse(identify.data)).toEqual({ standard: 0, standardName: 'ANSI C12.18', version: 1, revision: 0, features: new Uint8Array(0) });
    const negotiate = decodePacket(hex(NEGOTIATE_RESPONSE));
    expect(packetFlags(negotiate.ctrl).toggle).toBe(true);
    expect(decodeNegotiateResponse(negotiate.data)).toEqual({ packetSize: 1024, maxPackets: 128, baudRate: 9600 });
  });

  it('ctrl bits: 7 multi-packet, 6 first packet, 5 toggle', () => {
    expect(ctrlByte({ multiPacket: true, firstPacket: true, toggle: true })).toBe(0xe0);
    expect(packetFlags(0x80)).toEqual({ multiPacket: true, firstPacket: false, toggle: false, dataFormat: 0 });
  });

  it('refuses a bad CRC, a bad length, truncation and trailing bytes with offsets', () => {
    const good = hex(IDENTIFY_REQUEST);
    const badCrc = Uint8Array.from(good);
    badCrc[8] = (badCrc[8] as number) ^ 0xff;
    expect(() => decodePacket(badCrc)).toThrow(expect.objectContaining({ code: 'BAD_CRC', offset: 7 }));
    expect(() => decodePacket(good.subarray(0, 5))).toThrow(expect.objectContaining({ code: 'TRUNCATED', offset: 5 }));
    expect(() => decodePacket(hex('ee 00 00 00 00 00 13 10'))).toThrow(expect.objectContaining({ code: 'BAD_LENGTH', offset: 4 }));
    expect(() => decodePacket(Uint8Array.of(...good, 0x06))).toThrow(expect.objectContaining({ code: 'TRAILING_BYTES', offset: 9 }));
    expect(() => decodePacket(hex('06'))).toThrow(expect.objectContaining({ code: 'BAD_VALUE', offset: 0 }));
  });

  it('round-trips any packet (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.uint8Array({ minLength: 1, maxLength: 600 }), (identity, ctrl, sequence, data) => {
        const decoded = decodePacket(encodePacket({ identity, ctrl, sequence, data }));
        expect({ identity: decoded.identity, ctrl: decoded.ctrl, sequence: decoded.sequence, data: decoded.data }).toEqual({ identity, ctrl, sequence, data });
      }),
    );
  });
});

describe('the streaming packet decoder', () => {
  const packet = (data: number[], ctrl = 0): Uint8Array => encodePacket({ identity: 0, ctrl, sequence: 0, data: Uint8Array.from(data) });
  const kinds = (units: LinkUnit[]): string[] => units.map((u) => (u.kind === 'error' ? `error:${u.error.code}` : u.kind));

  it('splits ACK, NAK and packets however the bytes are chunked', () => {
    const stream = Uint8Array.of(ACK, ...packet([0x00, 0x01]), NAK, ...packet([0x20], 0x20), ACK);
    const whole = new PacketDecoder().push(stream);
    expect(kinds(whole)).toEqual(['ack', 'packet', 'nak', 'packet', 'ack']);
    const decoder = new PacketDecoder();
    const oneByOne = Array.from(stream).flatMap((b) => decoder.push(Uint8Array.of(b)));
    expect(kinds(oneByOne)).toEqual(kinds(whole));
    expect(oneByOne.map((u) => u.offset)).toEqual(whole.map((u) => u.offset));
  });

  it('reports garbage with its stream offset and resynchronises on the next packet', () => {
    const decoder = new PacketDecoder();
    decoder.push(Uint8Array.of(ACK));
    const units = decoder.push(Uint8Array.of(0x41, 0x42, 0x43, ...packet([0x00])));
    expect(kinds(units)).toEqual(['error:GARBAGE', 'packet']);
    expect(units[0]).toMatchObject({ offset: 1, length: 3 });
    expect(units[1]?.offset).toBe(4);
  });

  it('skips a packet with a bad CRC whole (no ACK read out of its data), then decodes the next', () => {
    const corrupted = packet([0x06, 0x06, 0x15, 0x00]);
    corrupted[7] = (corrupted[7] as number) ^ 0x10;
    const units = new PacketDecoder().push(Uint8Array.of(...corrupted, ...packet([0x00])));
    expect(kinds(units)).toEqual(['error:BAD_CRC', 'packet']);
    expect(units[0]).toMatchObject({ offset: 0, length: corrupted.length });
  });

  it('finds a retransmitted packet inside one whose corrupted length swallowed it', () => {
    const good = packet([0x00, 0x01, 0x02]);
    const broken = Uint8Array.from(good);
    broken[5] = 4; // claims one byte more than it has: the CRC check spans the next packet's first byte
    const units = new PacketDecoder().push(Uint8Array.of(...broken, ...good));
    expect(kinds(units)).toEqual(['error:BAD_CRC', 'packet']);
    expect(units[1]?.offset).toBe(broken.length);
  });

  it('refuses an impossible length and keeps scanning after the start byte', () => {
    const decoder = new PacketDecoder({ maxPacketSize: 64 });
    const units = decoder.push(Uint8Array.of(0xee, 0x00, 0x00, 0x00, 0x10, 0x00, ...packet([0x00])));
    expect(kinds(units)).toEqual(['error:BAD_LENGTH', 'error:GARBAGE', 'packet']);
  });

  it('holds an incomplete packet until flushPending gives up on it', () => {
    const decoder = new PacketDecoder();
    const half = packet([1, 2, 3, 4]).subarray(0, 7);
    expect(decoder.push(half)).toEqual([]);
    expect(decoder.pendingBytes).toBe(7);
    const units = decoder.flushPending();
    expect(kinds(units)).toEqual(['error:INTERCHAR_TIMEOUT']);
    expect(decoder.pendingBytes).toBe(0);
    expect(kinds(decoder.push(packet([9])))).toEqual(['packet']);
  });

  it('finds every packet among random garbage free of start bytes (property)', () => {
    const noStp = fc.uint8Array({ maxLength: 20 }).map((a) => a.map((b) => (b === 0xee ? 0x00 : b)));
    fc.assert(
      fc.property(fc.array(fc.tuple(noStp, fc.uint8Array({ minLength: 1, maxLength: 80 })), { maxLength: 6 }), fc.integer({ min: 1, max: 17 }), (parts, chunk) => {
        const stream: number[] = [];
        for (const [garbage, data] of parts) stream.push(...garbage, ...encodePacket({ identity: 0, ctrl: 0, sequence: 0, data }));
        const decoder = new PacketDecoder();
        const units: LinkUnit[] = [];
        for (let at = 0; at < stream.length; at += chunk) units.push(...decoder.push(Uint8Array.from(stream.slice(at, at + chunk))));
        const packets = units.flatMap((u) => (u.kind === 'packet' ? [u.packet.data] : []));
        expect(packets).toEqual(parts.map(([, data]) => data));
        for (const unit of units) {
          expect(unit.offset).toBeGreaterThanOrEqual(0);
          expect(unit.offset).toBeLessThan(stream.length);
        }
      }),
    );
  });
});

describe('service requests', () => {
  it('encodes each request as C12.18 lays it out', () => {
    expect(toHex(encodeRequest({ service: 'identify' }))).toBe('20');
    expect(toHex(encodeRequest({ service: 'terminate' }))).toBe('21');
    expect(toHex(encodeRequest({ service: 'logoff' }))).toBe('52');
    expect(toHex(encodeRequest({ service: 'wait', seconds: 30 }))).toBe('701e');
    expect(toHex(encodeRequest({ service: 'full-read', table: 5 }))).toBe('300005');
    expect(toHex(encodeRequest({ service: 'partial-read', table: 2049, offset: 0x012345, count: 600 }))).toBe('3f08010123450258');
    expect(toHex(encodeRequest({ service: 'logon', userId: 2, user: 'ami' }))).toBe('500002616d6920202020202020');
    expect(toHex(encodeRequest({ service: 'security', password: passwordBytes('secret') }))).toBe('51' + '736563726574' + '20'.repeat(14));
    expect(toHex(encodeRequest({ service: 'negotiate', packetSize: 256, maxPackets: 4, baudRates: [] }))).toBe('60010004');
    expect(toHex(encodeRequest({ service: 'negotiate', packetSize: 256, maxPackets: 4, baudRates: [19200, 9600] }))).toBe('620100040806');
  });

  it('maps baud rates to the standard codes (38400 after 57600) and refuses others', () => {
    expect(baudRateCode(9600)).toBe(6);
    expect(baudRateCode(57600)).toBe(10);
    expect(baudRateCode(38400)).toBe(11);
    expect(baudRateOfCode(12)).toBe(115200);
    expect(codeOf(() => baudRateCode(12345))).toBe('BAD_ARGUMENT');
    expect(codeOf(() => baudRateOfCode(15))).toBe('BAD_VALUE');
  });

  it('refuses arguments out of range', () => {
    expect(codeOf(() => encodeRequest({ service: 'logon', userId: 1, user: 'much too long' }))).toBe('BAD_ARGUMENT');
    expect(codeOf(() => passwordBytes('x'.repeat(21)))).toBe('BAD_ARGUMENT');
    expect(codeOf(() => encodeRequest({ service: 'partial-read', table: 1, offset: 1 << 24, count: 1 }))).toBe('BAD_ARGUMENT');
  });

  const requests: fc.Arbitrary<C1218Request> = fc.oneof(
    fc.constant<C1218Request>({ service: 'identify' }),
    fc.constant<C1218Request>({ service: 'terminate' }),
    fc.constant<C1218Request>({ service: 'logoff' }),
    fc.integer({ min: 0, max: 255 }).map((seconds): C1218Request => ({ service: 'wait', seconds })),
    fc.integer({ min: 0, max: 0xffff }).map((table): C1218Request => ({ service: 'full-read', table })),
    fc.record({ table: fc.integer({ min: 0, max: 0xffff }), offset: fc.integer({ min: 0, max: 0xffffff }), count: fc.integer({ min: 0, max: 0xffff }) }).map((r): C1218Request => ({ service: 'partial-read', ...r })),
    fc
      .record({ userId: fc.integer({ min: 0, max: 0xffff }), user: fc.string({ unit: fc.integer({ min: 0x21, max: 0xff }).map((c) => String.fromCharCode(c)), maxLength: 10 }) })
      .map((r): C1218Request => ({ service: 'logon', ...r })),
    fc.uint8Array({ minLength: 20, maxLength: 20 }).map((password): C1218Request => ({ service: 'security', password })),
    fc
      .record({
        packetSize: fc.integer({ min: 0, max: 0xffff }),
        maxPackets: fc.integer({ min: 0, max: 255 }),
        baudRates: fc.array(fc.constantFrom(300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 28800, 57600, 38400, 115200, 128000, 256000), { maxLength: 11 }),
      })
      .map((r): C1218Request => ({ service: 'negotiate', ...r })),
  );

  it('round-trips every request (property)', () => {
    fc.assert(
      fc.property(requests, (request) => {
        expect(decodeRequest(encodeRequest(request))).toEqual(request);
      }),
    );
  });

  it('refuses an unknown request code and a short request', () => {
    expect(codeOf(() => decodeRequest(Uint8Array.of(0x40, 0, 1)))).toBe('UNSUPPORTED_SERVICE');
    expect(codeOf(() => decodeRequest(Uint8Array.of(0x30, 0)))).toBe('TRUNCATED');
    expect(codeOf(() => decodeRequest(Uint8Array.of(0x21, 0)))).toBe('TRAILING_BYTES');
  });
});

describe('service responses', () => {
  it('turns each refusal code into a typed C1218Error', () => {
    const names = ['ERR', 'SNS', 'ISC', 'ONP', 'IAR', 'BSY', 'DNR', 'DLK', 'RNO', 'ISSS'] as const;
    names.forEach((name, i) => {
      expect(toHex(encodeRefusal(name))).toBe((i + 1).toString(16).padStart(2, '0'));
      for (const decode of [decodeIdentifyResponse, decodeNegotiateResponse, decodeReadResponse, (b: Uint8Array) => decodeOkResponse(b, 'logon')]) {
        expect(() => decode(encodeRefusal(name))).toThrow(expect.objectContaining({ code: name, responseCode: i + 1 }));
      }
    });
    expect(() => decodeReadResponse(Uint8Array.of(0x0b))).toThrow(expect.objectContaining({ code: 'UNKNOWN_RESPONSE', responseCode: 0x0b }));
  });

  it('verifies a read response: count, checksum, length', () => {
    const data = Uint8Array.of(1, 2, 3);
    expect(toHex(encodeReadResponse(data))).toBe('00000301020' + '3fa');
    expect(decodeReadResponse(encodeReadResponse(data))).toEqual(data);
    expect(() => decodeReadResponse(encodeReadResponse(data, { corruptChecksum: true }))).toThrow(expect.objectContaining({ code: 'BAD_TABLE_CHECKSUM', offset: 6 }));
    expect(() => decodeReadResponse(encodeReadResponse(data).subarray(0, 6))).toThrow(expect.objectContaining({ code: 'TRUNCATED' }));
    expect(() => decodeReadResponse(Uint8Array.of(...encodeReadResponse(data), 0))).toThrow(expect.objectContaining({ code: 'TRAILING_BYTES', offset: 7 }));
  });

  it('round-trips read, identify and negotiate responses (property)', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2000 }), (data) => {
      expect(decodeReadResponse(encodeReadResponse(data))).toEqual(data);
    }));
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 12 }), (standard, version, revision, features) => {
        const decoded = decodeIdentifyResponse(encodeIdentifyResponse({ standard, version, revision, features }));
        expect(decoded).toMatchObject({ standard, version, revision, features });
      }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 255 }), fc.option(fc.constantFrom(0, 9600, 19200, 38400, 256000), { nil: undefined }), (packetSize, maxPackets, baudRate) => {
        const response = baudRate === undefined ? { packetSize, maxPackets } : { packetSize, maxPackets, baudRate };
        expect(decodeNegotiateResponse(encodeNegotiateResponse(response))).toEqual(response);
      }),
    );
  });

  it('a bare ok for the session services, nothing after it', () => {
    expect(() => decodeOkResponse(encodeOkResponse(), 'terminate')).not.toThrow();
    expect(codeOf(() => decodeOkResponse(Uint8Array.of(0, 0), 'terminate'))).toBe('TRAILING_BYTES');
    expect(codeOf(() => decodeOkResponse(new Uint8Array(0), 'terminate'))).toBe('TRUNCATED');
    expect(codeOf(() => decodeIdentifyResponse(Uint8Array.of(0, 0, 1, 0, 7)))).toBe('TRUNCATED');
  });
});

describe('C12.19 tables', () => {
  // An ST0 as an electricity meter sends it: ISO 8859/1, little-endian, tables 0-8, 21-23, 52, 61-64 and MT0, MT2.
  const ST0 = hex(
    '04 0a 88 47 45 20 20 02 00 20 20 02 00 09 01 03 00 00 00' + // fixed part: FC1 FC2 FC3 "GE  " electric ...
      'ff 01 e0 00 00 00 10 00 01' + // STD_TBLS_USED (9 bytes): 0..8, 21, 22, 23, 52, 64
      '05' + // MFG_TBLS_USED: MT0, MT2
      '00 00 00' + // STD_PROC_USED (3 bytes): none
      '00 00 00 00 00 00 00 00 00' + // STD_TBLS_WRITE
      '00', // MFG_TBLS_WRITE
  );

  it('decodes ST0: format control bits, dimensions and the table sets', () => {
    const st0 = decodeGeneralConfiguration(ST0);
    expect(st0.formatControl1).toEqual({ dataOrder: 'little-endian', charFormat: 2, charFormatName: 'ISO 8859/1 (Latin 1)', modelSelect: 0 });
    expect(st0.formatControl2).toEqual({ tmFormat: 2, dataAccessMethod: 1, idForm: 'string', intFormat: 0 });
    expect(st0.formatControl3).toEqual({ niFormat1: 8, niFormat2: 8 });
    expect(st0.deviceClass).toBe('47452020');
    expect(st0.nameplateTypeName).toBe('electric');
    expect([st0.maxProcParmLength, st0.maxRespDataLen, st0.stdVersionNo, st0.stdRevisionNo]).toEqual([32, 32, 2, 0]);
    expect([st0.dimStdTblsUsed, st0.dimMfgTblsUsed, st0.dimStdProcUsed, st0.dimMfgProcUsed]).toEqual([9, 1, 3, 0]);
    expect(st0.stdTblsUsed).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 21, 22, 23, 52, 64]);
    expect(st0.mfgTblsUsed).toEqual([0, 2]);
    expect(tablesUsed(st0)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 21, 22, 23, 52, 64, 2048, 2050]);
    expect(tableFormatOf(st0)).toEqual({ dataOrder: 'little-endian', charFormat: 2, idForm: 'string' });
  });

  it('reads big-endian, 7-bit ASCII and BCD identifiers from the format bits', () => {
    const st0 = Uint8Array.from(ST0);
    st0[0] = 0x03; // big-endian, ISO 646
    st0[1] = 0x2a; // ID_FORM = BCD
    const decoded = decodeGeneralConfiguration(st0);
    expect(decoded.formatControl1.dataOrder).toBe('big-endian');
    expect(decoded.formatControl1.charFormatName).toBe('ISO/IEC 646 (7-bit ASCII)');
    expect(decoded.formatControl2.idForm).toBe('bcd');
  });

  it('refuses an ST0 shorter than its dimensions with TRUNCATED', () => {
    expect(() => decodeGeneralConfiguration(ST0.subarray(0, 18))).toThrow(expect.objectContaining({ code: 'TRUNCATED', offset: 18 }));
    expect(() => decodeGeneralConfiguration(ST0.subarray(0, 25))).toThrow(expect.objectContaining({ code: 'TRUNCATED' }));
    // Without the write sets (some devices): decoded, with empty write sets.
    expect(decodeGeneralConfiguration(ST0.subarray(0, 32)).stdTblsWrite).toEqual([]);
  });

  const latin: TableFormat = { dataOrder: 'little-endian', charFormat: 2, idForm: 'string' };
  const bcd: TableFormat = { dataOrder: 'big-endian', charFormat: 1, idForm: 'bcd' };

  it('decodes ST1 and ST5 as strings (ISO 8859/1) and as BCD', () => {
    const st1 = hex('4c 47 59 52' + '46 4f 43 55 53 20 41 58' + '01 02 0a 0b' + Buffer.from('34567890ÄB      ', 'latin1').toString('hex'));
    expect(decodeManufacturerIdentification(st1, latin)).toEqual({
      manufacturer: 'LGYR',
      edModel: 'FOCUS AX',
      hwVersionNumber: 1,
      hwRevisionNumber: 2,
      fwVersionNumber: 10,
      fwRevisionNumber: 11,
      mfgSerialNumber: '34567890ÄB',
    });
    const st1Bcd = hex('4c 47 59 52' + '46 4f 43 55 53 20 41 58' + '01 02 0a 0b' + '00 00 00 12 34 56 78 90');
    expect(decodeManufacturerIdentification(st1Bcd, bcd).mfgSerialNumber).toBe('0000001234567890');
    expect(decodeDeviceIdentification(hex('12 34 56 78 90 12 34 56 78 90'), bcd).identification).toBe('12345678901234567890');
    expect(decodeDeviceIdentification(Uint8Array.from(Buffer.from('METER 42            ', 'latin1')), latin).identification).toBe('METER 42');
    expect(() => decodeDeviceIdentification(hex('1a 34 56 78 90 12 34 56 78 90'), bcd)).toThrow(expect.objectContaining({ code: 'BAD_VALUE', offset: 0 }));
    expect(() => decodeManufacturerIdentification(st1.subarray(0, 31), latin)).toThrow(expect.objectContaining({ code: 'TRUNCATED' }));
    // 7-bit ASCII: a byte above 0x7F is not a character; it shows as U+FFFD instead of failing the table.
    expect(decodeDeviceIdentification(Uint8Array.of(0x41, 0xc4, ...new Array<number>(18).fill(0x20)), { ...latin, charFormat: 1 }).identification).toBe('A\ufffd');
  });

  const st0Inputs: fc.Arbitrary<GeneralConfigurationInput> = fc
    .record({
      dims: fc.tuple(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 4 })),
      bytes: fc.uint8Array({ minLength: 8, maxLength: 8 }),
      deviceClass: fc.uint8Array({ minLength: 4, maxLength: 4 }).map((b) => Buffer.from(b).toString('hex')),
      fc: fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 3 }), fc.boolean(), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 15 })),
      seed: fc.array(fc.nat(), { minLength: 6, maxLength: 6 }),
    })
    .map(({ dims: [std, mfg, stdProc, mfgProc], bytes, deviceClass, fc: f, seed }) => {
      const set = (dim: number, s: number): number[] => Array.from({ length: dim * 8 }, (_, i) => i).filter((i) => ((s >>> (i % 31)) + i) % 3 === 0);
      return {
        formatControl1: { dataOrder: f[0] ? 'big-endian' : 'little-endian', charFormat: f[1], modelSelect: f[2] },
        formatControl2: { tmFormat: f[3], dataAccessMethod: f[4], idForm: f[5] ? 'bcd' : 'string', intFormat: f[6] },
        formatControl3: { niFormat1: f[7], niFormat2: f[8] },
        deviceClass,
        nameplateType: bytes[0] as number,
        defaultSetUsed: bytes[1] as number,
        maxProcParmLength: bytes[2] as number,
        maxRespDataLen: bytes[3] as number,
        stdVersionNo: bytes[4] as number,
        stdRevisionNo: bytes[5] as number,
        dimStdTblsUsed: std,
        dimMfgTblsUsed: mfg,
        dimStdProcUsed: stdProc,
        dimMfgProcUsed: mfgProc,
        dimMfgStatusUsed: bytes[6] as number,
        nbrPending: bytes[7] as number,
        stdTblsUsed: set(std, seed[0] ?? 0),
        mfgTblsUsed: set(mfg, seed[1] ?? 0),
        stdProcUsed: set(stdProc, seed[2] ?? 0),
        mfgProcUsed: set(mfgProc, seed[3] ?? 0),
        stdTblsWrite: set(std, seed[4] ?? 0),
        mfgTblsWrite: set(mfg, seed[5] ?? 0),
      } satisfies GeneralConfigurationInput;
    });

  it('round-trips ST0 (property)', () => {
    fc.assert(
      fc.property(st0Inputs, (input) => {
        const decoded = decodeGeneralConfiguration(encodeGeneralConfiguration(input));
        const { charFormatName: _name, ...fc1 } = decoded.formatControl1;
        const { nameplateTypeName: _type, ...rest } = decoded;
        expect({ ...rest, formatControl1: fc1 }).toEqual(input);
      }),
    );
  });

  it('round-trips ST1 and ST5 in every supported format (property)', () => {
    const text = (max: number) => fc.string({ unit: fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: max });
    const formats = fc.constantFrom<TableFormat>(latin, bcd, { dataOrder: 'little-endian', charFormat: 3, idForm: 'string' }, { dataOrder: 'big-endian', charFormat: 1, idForm: 'string' });
    fc.assert(
      fc.property(
        formats,
        text(4),
        text(8),
        fc.uint8Array({ minLength: 4, maxLength: 4 }),
        text(16),
        fc.stringMatching(/^[0-9]{16}$/),
        text(20),
        fc.stringMatching(/^[0-9]{20}$/),
        (format, manufacturer, edModel, versions, serialText, serialDigits, idText, idDigits) => {
          const st1 = {
            manufacturer,
            edModel,
            hwVersionNumber: versions[0] as number,
            hwRevisionNumber: versions[1] as number,
            fwVersionNumber: versions[2] as number,
            fwRevisionNumber: versions[3] as number,
            mfgSerialNumber: format.idForm === 'bcd' ? serialDigits : serialText,
          };
          expect(decodeManufacturerIdentification(encodeManufacturerIdentification(st1, format), format)).toEqual(st1);
          const st5 = { identification: format.idForm === 'bcd' ? idDigits : idText };
          expect(decodeDeviceIdentification(encodeDeviceIdentification(st5, format), format)).toEqual(st5);
        },
      ),
    );
  });
});
