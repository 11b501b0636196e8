import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ACTION_RESULT,
  DATA_ACCESS_RESULT,
  DEVIATION_NOT_SPECIFIED,
  DLMS_UDP_PORT,
  DlmsError,
  MAX_DATA_DEPTH,
  WPORT_PUBLIC_CLIENT,
  WPORT_SERVER_MANAGEMENT_LOGICAL_DEVICE,
  dateTimeFromDate,
  dateTimeToDate,
  decodeApdu,
  decodeData,
  decodeLength,
  decodeWrapper,
  describeApdu,
  encodeApdu,
  encodeData,
  encodeLength,
  encodeWrapper,
  isObisString,
  looksLikeWrapper,
  obisFromString,
  obisToString,
  type CosemDate,
  type CosemDateTime,
  type CosemTime,
  type DlmsData,
  type DlmsErrorCode,
  type XdlmsApdu,
} from '../../src/dlms/index.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** Runs `fn`, which must throw a DlmsError with this code and offset. */
function expectDlmsError(fn: () => unknown, code: DlmsErrorCode, offset?: number, message?: RegExp): DlmsError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(DlmsError);
  const err = caught as DlmsError;
  expect({ code: err.code, offset: err.offset }).toEqual({ code, offset });
  if (message) expect(err.message).toMatch(message);
  return err;
}

// A date-time used across vectors: 2024-03-15 (a Friday) 12:00:00.00 local, deviation -60 (UTC+1), status 0.
const DT_HEX = '07e8 03 0f 05 0c 00 00 00 ffc4 00';
const DT: CosemDateTime = {
  year: 2024,
  month: 3,
  dayOfMonth: 15,
  dayOfWeek: 5,
  hour: 12,
  minute: 0,
  second: 0,
  hundredths: 0,
  deviation: -60,
  clockStatus: 0,
};
const CLOCK = { classId: 8, instanceId: '0.0.1.0.0.255', attributeId: 2 };

describe('OBIS codes', () => {
  it('converts between bytes and text', () => {
    expect(obisToString(hex('0000010000ff'))).toBe('0.0.1.0.0.255');
    expect(toHex(obisFromString('1.0.1.8.0.255'))).toBe('0100010800ff');
    expect(toHex(obisFromString('1-0:1.8.0*255'))).toBe('0100010800ff');
    expect(toHex(obisFromString('1-0:99.1.0.255'))).toBe('0100630100ff');
    expect(isObisString('0.0.96.1.0.255')).toBe(true);
    for (const bad of ['', '1.2.3.4.5', '1.2.3.4.5.6.7', '256.0.0.0.0.0', 'a.b.c.d.e.f', ' 1.0.1.8.0.255', '1..1.8.0.255']) {
      expect(isObisString(bad)).toBe(false);
      expectDlmsError(() => obisFromString(bad), 'BAD_VALUE');
    }
    expectDlmsError(() => obisToString(hex('0000010000')), 'BAD_LENGTH');
  });

  it('round-trips any six bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 6, maxLength: 6 }), (b) => {
        expect(new Uint8Array(obisFromString(obisToString(b)))).toEqual(b);
      }),
    );
  });
});

describe('A-XDR lengths', () => {
  it('uses the short form below 0x80 and 0x81..0x84 above', () => {
    expect(toHex(encodeLength(0))).toBe('00');
    expect(toHex(encodeLength(0x7f))).toBe('7f');
    expect(toHex(encodeLength(0x80))).toBe('8180');
    expect(toHex(encodeLength(0xff))).toBe('81ff');
    expect(toHex(encodeLength(0x100))).toBe('820100');
    expect(toHex(encodeLength(0x10000))).toBe('83010000');
    expect(toHex(encodeLength(0xffffffff))).toBe('84ffffffff');
    expectDlmsError(() => encodeLength(-1), 'BAD_LENGTH');
    expectDlmsError(() => encodeLength(2 ** 32), 'BAD_LENGTH');
    expectDlmsError(() => encodeLength(1.5), 'BAD_LENGTH');
  });

  it('decodes lengths and refuses those beyond the input', () => {
    expect(decodeLength(hex('05 0102030405'))).toEqual({ length: 5, next: 1 });
    expect(decodeLength(hex('ff 8203e8'), 1, 1000)).toEqual({ length: 1000, next: 4 });
    expectDlmsError(() => decodeLength(hex('06 0102030405')), 'BAD_LENGTH', 0);
    expectDlmsError(() => decodeLength(hex('84ffffffff 00')), 'BAD_LENGTH', 0);
    expectDlmsError(() => decodeLength(hex('80')), 'BAD_LENGTH', 0);
    expectDlmsError(() => decodeLength(hex('85 0000000001')), 'BAD_LENGTH', 0);
    expectDlmsError(() => decodeLength(hex('00 8201'), 1), 'TRUNCATED', 1);
    expectDlmsError(() => decodeLength(hex('')), 'TRUNCATED', 0);
    expectDlmsError(() => decodeLength(hex('00'), 5), 'BAD_VALUE', 0);
  });

  it('round-trips any 32-bit length', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (n) => {
        const b = encodeLength(n);
        expect(decodeLength(b, 0, n)).toEqual({ length: n, next: b.length });
      }),
    );
  });
});

describe('Data known vectors', () => {
  const vectors: [string, DlmsData][] = [
    ['00', { type: 'null' }],
    ['ff', { type: 'dont-care' }],
    ['0301', { type: 'boolean', value: true }],
    ['0300', { type: 'boolean', value: false }],
    ['04 0a 80c0', { type: 'bit-string', bits: '1000000011' }],
    ['04 00', { type: 'bit-string', bits: '' }],
    ['05 fffffffe', { type: 'double-long', value: -2 }],
    ['06 00010000', { type: 'double-long-unsigned', value: 65536 }],
    ['09 06 0000010000ff', { type: 'octet-string', value: new Uint8Array([0, 0, 1, 0, 0, 255]) }],
    ['0a 03 414243', { type: 'visible-string', value: 'ABC' }],
    ['0c 02 c3a9', { type: 'utf8-string', value: 'é' }],
    ['0d 42', { type: 'bcd', value: 42 }],
    ['0f 80', { type: 'integer', value: -128 }],
    ['10 8000', { type: 'long', value: -32768 }],
    ['11 ff', { type: 'unsigned', value: 255 }],
    ['12 ffff', { type: 'long-unsigned', value: 65535 }],
    ['14 ffffffffffffffff', { type: 'long64', value: -1n }],
    ['15 ffffffffffffffff', { type: 'long64-unsigned', value: 2n ** 64n - 1n }],
    ['16 03', { type: 'enum', value: 3 }],
    ['17 3fc00000', { type: 'float32', value: 1.5 }],
    ['18 3ff8000000000000', { type: 'float64', value: 1.5 }],
    [`19 ${DT_HEX}`, { type: 'date-time', value: DT }],
    ['1a 07e8 03 0f 05', { type: 'date', value: { year: 2024, month: 3, dayOfMonth: 15, dayOfWeek: 5 } }],
    ['1b 17 3b 3b ff', { type: 'time', value: { hour: 23, minute: 59, second: 59, hundredths: 255 } }],
    ['01 02 1101 1102', { type: 'array', items: [{ type: 'unsigned', value: 1 }, { type: 'unsigned', value: 2 }] }],
    [
      '02 03 120001 0900 02 00',
      {
        type: 'structure',
        items: [
          { type: 'long-unsigned', value: 1 },
          { type: 'octet-string', value: new Uint8Array() },
          { type: 'structure', items: [] },
        ],
      },
    ],
  ];

  it.each(vectors)('%s', (bytesHex, value) => {
    const bytes = hex(bytesHex);
    expect(decodeData(bytes)).toEqual({ value, next: bytes.length });
    expect(toHex(encodeData(value))).toBe(toHex(bytes));
  });

  it('uses the long length forms for long strings and arrays', () => {
    const long200 = new Uint8Array(200).fill(7);
    expect(toHex(encodeData({ type: 'octet-string', value: long200 })).slice(0, 6)).toBe('0981c8');
    const long300 = new Uint8Array(300);
    const enc = encodeData({ type: 'octet-string', value: long300 });
    expect(toHex(enc.subarray(0, 4))).toBe('0982012c');
    expect(decodeData(enc).value).toEqual({ type: 'octet-string', value: long300 });
    const items: DlmsData[] = Array.from({ length: 130 }, () => ({ type: 'null' }));
    expect(toHex(encodeData({ type: 'array', items }).subarray(0, 3))).toBe('018182');
  });

  it('reads visible-strings as latin1 and accepts any non-zero boolean', () => {
    expect(decodeData(hex('0a 02 e9ff')).value).toEqual({ type: 'visible-string', value: 'éÿ' });
    expect(decodeData(hex('03 05')).value).toEqual({ type: 'boolean', value: true });
  });

  it('decodes at an offset, reporting offsets relative to the whole input', () => {
    expect(decodeData(hex('ffff 1101 00'), 2)).toEqual({ value: { type: 'unsigned', value: 1 }, next: 4 });
    expectDlmsError(() => decodeData(hex('ffff 1200'), 2), 'TRUNCATED', 3);
  });

  it('keeps a utf8 byte-order mark and rejects invalid UTF-8', () => {
    expect(decodeData(hex('0c 03 efbbbf')).value).toEqual({ type: 'utf8-string', value: '\ufeff' });
    expectDlmsError(() => decodeData(hex('0c 01 ff')), 'BAD_VALUE', 1);
  });

  it('returns copies, not views into the input', () => {
    const bytes = hex('09 02 abcd');
    const { value } = decodeData(bytes);
    bytes[2] = 0;
    expect(value).toEqual({ type: 'octet-string', value: new Uint8Array([0xab, 0xcd]) });
  });
});

describe('Data decoding errors', () => {
  it.each<[string, string, DlmsErrorCode, number]>([
    ['empty input', '', 'TRUNCATED', 0],
    ['cut integer', '12 00', 'TRUNCATED', 1],
    ['cut date-time', '19 07e8 03', 'TRUNCATED', 1],
    ['unassigned tag 7', '07', 'BAD_TAG', 0],
    ['unassigned tag 0x63', '63', 'BAD_TAG', 0],
    ['compact-array', '13 00', 'UNSUPPORTED', 0],
    ['octet-string longer than input', '09 05 0102', 'BAD_LENGTH', 1],
    ['octet-string claiming 4 GB', '09 84ffffffff', 'BAD_LENGTH', 1],
    ['array claiming 4 GB of elements', '01 84ffffffff 00', 'BAD_LENGTH', 1],
    ['structure with more elements than bytes', '02 03 0000', 'BAD_LENGTH', 1],
    ['bit-string claiming 4 G bits', '04 84ffffffff 00', 'BAD_LENGTH', 1],
    ['bit-string one byte short', '04 09 ff', 'BAD_LENGTH', 1],
    ['indefinite length', '09 80', 'BAD_LENGTH', 1],
    ['five-byte length', '09 85 0000000001', 'BAD_LENGTH', 1],
    ['cut length', '09 82 01', 'TRUNCATED', 1],
    ['element cut inside an array', '01 02 1101 12', 'TRUNCATED', 5],
    ['bad tag inside a structure', '02 02 00 08', 'BAD_TAG', 3],
    ['bcd with a non-decimal digit', '0d 1a', 'BAD_VALUE', 1],
  ])('%s', (_name, bytesHex, code, offset) => {
    expectDlmsError(() => decodeData(hex(bytesHex)), code, offset);
  });

  it(`allows ${MAX_DATA_DEPTH} nested containers and refuses one more (TOO_DEEP at its tag)`, () => {
    const nested = (depth: number): Buffer => Buffer.concat([Buffer.from('0101'.repeat(depth), 'hex'), hex('00')]);
    expect(decodeData(nested(MAX_DATA_DEPTH)).next).toBe(MAX_DATA_DEPTH * 2 + 1);
    expect(toHex(encodeData(decodeData(nested(MAX_DATA_DEPTH)).value))).toBe(toHex(nested(MAX_DATA_DEPTH)));
    expectDlmsError(() => decodeData(nested(MAX_DATA_DEPTH + 1)), 'TOO_DEEP', MAX_DATA_DEPTH * 2);
    // A hostile 100 000-deep nesting fails the same way, without exhausting the stack.
    expectDlmsError(() => decodeData(nested(100_000)), 'TOO_DEEP', MAX_DATA_DEPTH * 2);

    let deep: DlmsData = { type: 'null' };
    for (let i = 0; i <= MAX_DATA_DEPTH; i++) deep = { type: 'structure', items: [deep] };
    expectDlmsError(() => encodeData(deep), 'TOO_DEEP');
    const cyclic: DlmsData = { type: 'array', items: [] };
    cyclic.items.push(cyclic);
    expectDlmsError(() => encodeData(cyclic), 'TOO_DEEP');
  });
});

describe('Data encoding validation', () => {
  it.each<[string, unknown]>([
    ['integer above range', { type: 'integer', value: 128 }],
    ['long below range', { type: 'long', value: -32769 }],
    ['unsigned negative', { type: 'unsigned', value: -1 }],
    ['long-unsigned above range', { type: 'long-unsigned', value: 65536 }],
    ['double-long above range', { type: 'double-long', value: 2 ** 31 }],
    ['double-long-unsigned above range', { type: 'double-long-unsigned', value: 2 ** 32 }],
    ['enum above range', { type: 'enum', value: 256 }],
    ['fractional integer', { type: 'long', value: 1.5 }],
    ['NaN integer', { type: 'unsigned', value: Number.NaN }],
    ['long64 as number', { type: 'long64', value: 1 }],
    ['long64 above range', { type: 'long64', value: 2n ** 63n }],
    ['long64-unsigned negative', { type: 'long64-unsigned', value: -1n }],
    ['visible-string with non-ASCII', { type: 'visible-string', value: 'é' }],
    ['visible-string with a control character', { type: 'visible-string', value: 'a\nb' }],
    ['utf8-string with a lone surrogate', { type: 'utf8-string', value: 'a\ud800' }],
    ['bit-string with other characters', { type: 'bit-string', bits: '102' }],
    ['bcd above 99', { type: 'bcd', value: 100 }],
    ['octet-string as text', { type: 'octet-string', value: 'abc' }],
    ['date-time with a 16-bit hour', { type: 'date-time', value: { ...DT, hour: 256 } }],
    ['date-time deviation beyond int16', { type: 'date-time', value: { ...DT, deviation: 40000 } }],
    ['unknown type', { type: 'float128', value: 1 }],
    ['inherited property as type', { type: 'constructor' }],
    ['array without items', { type: 'array' }],
    ['not an object', 42],
  ])('%s is BAD_VALUE', (_name, value) => {
    expectDlmsError(() => encodeData(value as DlmsData), 'BAD_VALUE');
  });
});

describe('date and time helpers', () => {
  it('reads the deviation with the Blue Book sign (UTC = local + deviation)', () => {
    expect(dateTimeToDate(DT)?.toISOString()).toBe('2024-03-15T11:00:00.000Z');
    expect(dateTimeToDate({ ...DT, deviation: 0, hundredths: 0xff })?.toISOString()).toBe('2024-03-15T12:00:00.000Z');
    expect(dateTimeToDate({ ...DT, hundredths: 50 })?.toISOString()).toBe('2024-03-15T11:00:00.500Z');
  });

  it('names no instant when a field is not specified or impossible', () => {
    expect(dateTimeToDate({ ...DT, deviation: DEVIATION_NOT_SPECIFIED })).toBeUndefined();
    expect(dateTimeToDate({ ...DT, deviation: DEVIATION_NOT_SPECIFIED }, 0)?.toISOString()).toBe('2024-03-15T12:00:00.000Z');
    expect(dateTimeToDate({ ...DT, year: 0xffff })).toBeUndefined();
    expect(dateTimeToDate({ ...DT, month: 0xfe })).toBeUndefined();
    expect(dateTimeToDate({ ...DT, month: 2, dayOfMonth: 30 })).toBeUndefined();
    expect(dateTimeToDate({ ...DT, hour: 0xff })).toBeUndefined();
    expect(dateTimeToDate({ ...DT, deviation: 900 })).toBeUndefined();
  });

  it('builds a date-time from a Date in a given deviation', () => {
    expect(dateTimeFromDate(new Date('2024-03-15T11:00:00.123Z'), -60)).toEqual({ ...DT, hundredths: 12 });
    expect(dateTimeFromDate(new Date('2024-03-17T23:30:00Z'))).toMatchObject({ dayOfWeek: 7, hour: 23, deviation: 0 });
    expectDlmsError(() => dateTimeFromDate(new Date(Number.NaN)), 'BAD_VALUE');
    expectDlmsError(() => dateTimeFromDate(new Date(), 1000), 'BAD_VALUE');
  });

  it('round-trips any instant to 10 ms', () => {
    fc.assert(
      fc.property(
        fc.date({ min: new Date('1970-01-01T00:00:00Z'), max: new Date('2200-01-01T00:00:00Z'), noInvalidDate: true }),
        fc.integer({ min: -720, max: 720 }),
        (d, deviation) => {
          const back = dateTimeToDate(dateTimeFromDate(d, deviation));
          expect(back?.getTime()).toBe(Math.floor(d.getTime() / 10) * 10);
        },
      ),
    );
  });
});

// ---------------------------------------------------------------------------
// Arbitraries

const u8 = fc.integer({ min: 0, max: 0xff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const i8 = fc.integer({ min: -0x80, max: 0x7f });
const obisArb = fc.tuple(u8, u8, u8, u8, u8, u8).map((g) => g.join('.'));

const dateArb: fc.Arbitrary<CosemDate> = fc.record({ year: u16, month: u8, dayOfMonth: u8, dayOfWeek: u8 });
const timeArb: fc.Arbitrary<CosemTime> = fc.record({ hour: u8, minute: u8, second: u8, hundredths: u8 });
const dateTimeArb: fc.Arbitrary<CosemDateTime> = fc
  .tuple(dateArb, timeArb, fc.integer({ min: -0x8000, max: 0x7fff }), u8)
  .map(([date, time, deviation, clockStatus]) => ({ ...date, ...time, deviation, clockStatus }));

const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 30 });

const leafArb: fc.Arbitrary<DlmsData> = fc.oneof(
  fc.constant<DlmsData>({ type: 'null' }),
  fc.constant<DlmsData>({ type: 'dont-care' }),
  fc.boolean().map((value): DlmsData => ({ type: 'boolean', value })),
  fc.integer({ min: -0x80, max: 0x7f }).map((value): DlmsData => ({ type: 'integer', value })),
  fc.integer({ min: -0x8000, max: 0x7fff }).map((value): DlmsData => ({ type: 'long', value })),
  u8.map((value): DlmsData => ({ type: 'unsigned', value })),
  u16.map((value): DlmsData => ({ type: 'long-unsigned', value })),
  fc.integer().map((value): DlmsData => ({ type: 'double-long', value })),
  u32.map((value): DlmsData => ({ type: 'double-long-unsigned', value })),
  u8.map((value): DlmsData => ({ type: 'enum', value })),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((value): DlmsData => ({ type: 'long64', value })),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map((value): DlmsData => ({ type: 'long64-unsigned', value })),
  fc.float().map((value): DlmsData => ({ type: 'float32', value })),
  fc.double().map((value): DlmsData => ({ type: 'float64', value })),
  fc.uint8Array({ maxLength: 40 }).map((value): DlmsData => ({ type: 'octet-string', value })),
  fc.uint8Array({ minLength: 120, maxLength: 400 }).map((value): DlmsData => ({ type: 'octet-string', value })),
  printable.map((value): DlmsData => ({ type: 'visible-string', value })),
  fc.string({ unit: 'binary', maxLength: 20 }).map((value): DlmsData => ({ type: 'utf8-string', value })),
  fc.array(fc.constantFrom('0', '1'), { maxLength: 70 }).map((b): DlmsData => ({ type: 'bit-string', bits: b.join('') })),
  fc.integer({ min: 0, max: 99 }).map((value): DlmsData => ({ type: 'bcd', value })),
  dateTimeArb.map((value): DlmsData => ({ type: 'date-time', value })),
  dateArb.map((value): DlmsData => ({ type: 'date', value })),
  timeArb.map((value): DlmsData => ({ type: 'time', value })),
);

const { data: dataArb } = fc.letrec<{ data: DlmsData }>((tie) => ({
  data: fc.oneof(
    { maxDepth: 5, depthIdentifier: 'dlms-data' },
    leafArb,
    fc.array(tie('data'), { maxLength: 5 }).map((items): DlmsData => ({ type: 'array', items })),
    fc.array(tie('data'), { maxLength: 5 }).map((items): DlmsData => ({ type: 'structure', items })),
  ),
}));

const attributeDescriptorArb = fc.record({ classId: u16, instanceId: obisArb, attributeId: i8 });
const methodDescriptorArb = fc.record({ classId: u16, instanceId: obisArb, methodId: i8 });
const accessSelectionArb = fc.option(fc.record({ selector: u8, parameters: dataArb }), { nil: undefined });
const getDataResultArb = fc.oneof(
  dataArb.map((data) => ({ data })),
  u8.map((dataAccessResult) => ({ dataAccessResult })),
);

/** Drops keys whose value is undefined, as the decoder never sets them. */
function compact<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

const apduArb: fc.Arbitrary<XdlmsApdu> = fc.oneof(
  fc
    .record({ longInvokeIdAndPriority: u32, dateTime: fc.option(dateTimeArb, { nil: undefined }), body: dataArb })
    .map((r): XdlmsApdu => compact({ type: 'data-notification', ...r })),
  fc
    .record({
      time: fc.option(dateTimeArb, { nil: undefined }),
      cosemAttributeDescriptor: attributeDescriptorArb,
      attributeValue: dataArb,
    })
    .map((r): XdlmsApdu => compact({ type: 'event-notification-request', ...r })),
  fc
    .record({ invokeIdAndPriority: u8, descriptor: attributeDescriptorArb, accessSelection: accessSelectionArb })
    .map((r): XdlmsApdu => compact({ type: 'get-request', ...r })),
  fc.record({ invokeIdAndPriority: u8, result: getDataResultArb }).map((r): XdlmsApdu => ({ type: 'get-response', ...r })),
  fc
    .record({ invokeIdAndPriority: u8, descriptor: attributeDescriptorArb, accessSelection: accessSelectionArb, value: dataArb })
    .map((r): XdlmsApdu => compact({ type: 'set-request', ...r })),
  fc.record({ invokeIdAndPriority: u8, result: u8 }).map((r): XdlmsApdu => ({ type: 'set-response', ...r })),
  fc
    .record({
      invokeIdAndPriority: u8,
      cosemMethodDescriptor: methodDescriptorArb,
      parameters: fc.option(dataArb, { nil: undefined }),
    })
    .map((r): XdlmsApdu => compact({ type: 'action-request', ...r })),
  fc
    .record({ invokeIdAndPriority: u8, result: u8, returnParameters: fc.option(getDataResultArb, { nil: undefined }) })
    .map((r): XdlmsApdu => compact({ type: 'action-response', ...r })),
  fc
    .tuple(u8, u8, u32)
    .map(([stateError, serviceError, counter]): XdlmsApdu =>
      serviceError === 6
        ? { type: 'exception-response', stateError, serviceError, invocationCounter: counter }
        : { type: 'exception-response', stateError, serviceError },
    ),
  fc.record({ service: u8, errorGroup: u8, error: u8 }).map((r): XdlmsApdu => ({ type: 'confirmed-service-error', ...r })),
);

describe('round trips', () => {
  it('decodeData(encodeData(x)) equals x for every data type, nested', () => {
    fc.assert(
      fc.property(dataArb, (value) => {
        const bytes = encodeData(value);
        expect(decodeData(bytes)).toEqual({ value, next: bytes.length });
      }),
      { numRuns: 2000 },
    );
  });

  it('decodeApdu(encodeApdu(x)) equals x for every APDU type', () => {
    fc.assert(
      fc.property(apduArb, (apdu) => {
        const bytes = encodeApdu(apdu);
        const back = decodeApdu(bytes);
        expect(back).toEqual(apdu);
        expect(toHex(encodeApdu(back))).toBe(toHex(bytes));
        // The description is JSON-safe whatever the content.
        const json = JSON.stringify(describeApdu(back));
        expect(JSON.parse(json)).toEqual(describeApdu(back));
      }),
      { numRuns: 2000 },
    );
  });

  it('decodeWrapper(encodeWrapper(x)) equals x', () => {
    fc.assert(
      fc.property(u16, u16, fc.uint8Array({ minLength: 1, maxLength: 600 }), (sourceWPort, destinationWPort, apdu) => {
        const frame = encodeWrapper({ sourceWPort, destinationWPort, apdu });
        expect(decodeWrapper(frame)).toEqual({ version: 1, sourceWPort, destinationWPort, apdu });
      }),
    );
  });
});

// ---------------------------------------------------------------------------
// APDU vectors

const apduVectors: [string, string, XdlmsApdu][] = [
  [
    'get-request normal (Green Book: clock time)',
    'c0 01 c1 0008 0000010000ff 02 00',
    { type: 'get-request', invokeIdAndPriority: 0xc1, descriptor: CLOCK },
  ],
  [
    'get-request with selective access by entry',
    'c0 01 c1 0007 0100630100ff 02 01 02 0204 0600000001 060000000a 120001 120000',
    {
      type: 'get-request',
      invokeIdAndPriority: 0xc1,
      descriptor: { classId: 7, instanceId: '1.0.99.1.0.255', attributeId: 2 },
      accessSelection: {
        selector: 2,
        parameters: {
          type: 'structure',
          items: [
            { type: 'double-long-unsigned', value: 1 },
            { type: 'double-long-unsigned', value: 10 },
            { type: 'long-unsigned', value: 1 },
            { type: 'long-unsigned', value: 0 },
          ],
        },
      },
    },
  ],
  [
    'get-response with data',
    'c4 01 c1 00 06 00003039',
    { type: 'get-response', invokeIdAndPriority: 0xc1, result: { data: { type: 'double-long-unsigned', value: 12345 } } },
  ],
  [
    'get-response with a data-access-result',
    'c4 01 c1 01 04',
    { type: 'get-response', invokeIdAndPriority: 0xc1, result: { dataAccessResult: 4 } },
  ],
  [
    'set-request normal (clock time as octet-string)',
    `c1 01 c1 0008 0000010000ff 02 00 09 0c ${DT_HEX}`,
    {
      type: 'set-request',
      invokeIdAndPriority: 0xc1,
      descriptor: CLOCK,
      value: { type: 'octet-string', value: new Uint8Array(hex(DT_HEX)) },
    },
  ],
  ['set-response normal', 'c5 01 c1 00', { type: 'set-response', invokeIdAndPriority: 0xc1, result: 0 }],
  [
    'action-request normal (disconnect control remote_disconnect)',
    'c3 01 c1 0046 0000600300ff 01 01 0f00',
    {
      type: 'action-request',
      invokeIdAndPriority: 0xc1,
      cosemMethodDescriptor: { classId: 70, instanceId: '0.0.96.3.0.255', methodId: 1 },
      parameters: { type: 'integer', value: 0 },
    },
  ],
  [
    'action-request without parameters',
    'c3 01 41 0046 0000600300ff 02 00',
    {
      type: 'action-request',
      invokeIdAndPriority: 0x41,
      cosemMethodDescriptor: { classId: 70, instanceId: '0.0.96.3.0.255', methodId: 2 },
    },
  ],
  ['action-response normal', 'c7 01 c1 00 00', { type: 'action-response', invokeIdAndPriority: 0xc1, result: 0 }],
  [
    'action-response with return data',
    'c7 01 c1 00 01 00 1105',
    {
      type: 'action-response',
      invokeIdAndPriority: 0xc1,
      result: 0,
      returnParameters: { data: { type: 'unsigned', value: 5 } },
    },
  ],
  [
    'action-response with a data-access-result',
    'c7 01 c1 03 01 01 03',
    { type: 'action-response', invokeIdAndPriority: 0xc1, result: 3, returnParameters: { dataAccessResult: 3 } },
  ],
  [
    'event-notification-request without time',
    'c2 00 0001 0000600b00ff 02 1105',
    {
      type: 'event-notification-request',
      cosemAttributeDescriptor: { classId: 1, instanceId: '0.0.96.11.0.255', attributeId: 2 },
      attributeValue: { type: 'unsigned', value: 5 },
    },
  ],
  [
    'event-notification-request with time',
    `c2 01 0c ${DT_HEX} 0001 0000600b00ff 02 1105`,
    {
      type: 'event-notification-request',
      time: DT,
      cosemAttributeDescriptor: { classId: 1, instanceId: '0.0.96.11.0.255', attributeId: 2 },
      attributeValue: { type: 'unsigned', value: 5 },
    },
  ],
  [
    'data-notification without date-time',
    '0f 00000001 00 0202 0a034d5452 0100',
    {
      type: 'data-notification',
      longInvokeIdAndPriority: 1,
      body: {
        type: 'structure',
        items: [
          { type: 'visible-string', value: 'MTR' },
          { type: 'array', items: [] },
        ],
      },
    },
  ],
  [
    'data-notification with date-time',
    `0f 40000005 0c ${DT_HEX} 12002a`,
    { type: 'data-notification', longInvokeIdAndPriority: 0x40000005, dateTime: DT, body: { type: 'long-unsigned', value: 42 } },
  ],
  ['exception-response', 'd8 01 02', { type: 'exception-response', stateError: 1, serviceError: 2 }],
  [
    'exception-response invocation-counter-error',
    'd8 02 06 00000100',
    { type: 'exception-response', stateError: 2, serviceError: 6, invocationCounter: 256 },
  ],
  [
    'confirmed-service-error (initiate-error, initiate, dlms-version-too-low)',
    '0e 01 06 01',
    { type: 'confirmed-service-error', service: 1, errorGroup: 6, error: 1 },
  ],
];

describe('APDU known vectors', () => {
  it.each(apduVectors)('%s', (_name, bytesHex, apdu) => {
    const bytes = hex(bytesHex);
    expect(decodeApdu(bytes)).toEqual(apdu);
    expect(toHex(encodeApdu(apdu))).toBe(toHex(bytes));
  });

  it('decodes from a view with a non-zero byteOffset', () => {
    const backing = hex('deadbeef c001c1 0008 0000010000ff 02 00');
    expect(decodeApdu(backing.subarray(4))).toEqual(apduVectors[0]?.[2]);
    expectDlmsError(() => decodeApdu(backing.subarray(4, 10)), 'TRUNCATED', 5);
  });
});

describe('APDU decoding errors', () => {
  it.each<[string, string, DlmsErrorCode, number, RegExp?]>([
    ['empty input', '', 'TRUNCATED', 0],
    ['trailing byte after a get-request', 'c0 01 c1 0008 0000010000ff 02 00 00', 'TRAILING_BYTES', 13],
    ['get-request cut in the logical name', 'c0 01 c1 0008 000001', 'TRUNCATED', 5],
    ['get-request cut before the access flag', 'c0 01 c1 0008 0000010000ff 02', 'TRUNCATED', 12],
    ['get-request-next', 'c0 02 c1 00000001', 'UNSUPPORTED', 1, /get-request-next/],
    ['get-request-with-list', 'c0 03 c1 01', 'UNSUPPORTED', 1],
    ['get-response-with-datablock', 'c4 02 c1 01 00000001 00 00', 'UNSUPPORTED', 1],
    ['set-request-with-first-datablock', 'c1 02 c1', 'UNSUPPORTED', 1],
    ['action-request-with-list', 'c3 03 c1', 'UNSUPPORTED', 1],
    ['unknown get-request choice', 'c0 09 c1', 'BAD_TAG', 1],
    ['unknown Get-Data-Result choice', 'c4 01 c1 02 00', 'BAD_TAG', 3],
    ['bad Data tag in a get-response', 'c4 01 c1 00 07', 'BAD_TAG', 4],
    ['glo-get-response (ciphered)', 'cc 05 30 00000001', 'UNSUPPORTED', 0, /ciphered/],
    ['general-glo-ciphering (ciphered)', 'db 08 0102030405060708 05 30 00000001', 'UNSUPPORTED', 0, /ciphered/],
    ['general-ded-ciphering (ciphered)', 'dc 00', 'UNSUPPORTED', 0, /ciphered/],
    ['general-block-transfer', 'e0 81 0001 0000 00', 'UNSUPPORTED', 0],
    ['AARQ', '60 00', 'UNSUPPORTED', 0],
    ['unknown tag', '99 00', 'BAD_TAG', 0],
    ['data-notification with a 5-byte date-time', '0f 00000001 05 0102030405 00', 'BAD_LENGTH', 5],
    ['data-notification with a 4 GB date-time', '0f 00000001 84ffffffff', 'BAD_LENGTH', 5],
    ['event-notification with an empty time', 'c2 01 00 0001 0000600b00ff 02 00', 'BAD_LENGTH', 2],
    ['data-notification too deep', `0f 00000001 00 ${'0101'.repeat(MAX_DATA_DEPTH + 1)}00`, 'TOO_DEEP', 6 + 2 * MAX_DATA_DEPTH],
    ['exception-response cut in the invocation counter', 'd8 01 06 0000', 'TRUNCATED', 3],
    ['exception-response with trailing bytes', 'd8 01 02 00', 'TRAILING_BYTES', 3],
  ])('%s', (_name, bytesHex, code, offset, message) => {
    expectDlmsError(() => decodeApdu(hex(bytesHex)), code, offset, message);
  });
});

describe('APDU encoding validation', () => {
  const get: XdlmsApdu = { type: 'get-request', invokeIdAndPriority: 0xc1, descriptor: CLOCK };
  it.each<[string, unknown]>([
    ['bad OBIS text', { ...get, descriptor: { ...CLOCK, instanceId: '0.0.1.0.0' } }],
    ['class-id above 65535', { ...get, descriptor: { ...CLOCK, classId: 70000 } }],
    ['attribute-id above 127', { ...get, descriptor: { ...CLOCK, attributeId: 128 } }],
    ['invoke-id above 255', { ...get, invokeIdAndPriority: 256 }],
    ['invocation-counter-error without the counter', { type: 'exception-response', stateError: 1, serviceError: 6 }],
    ['a counter without invocation-counter-error', { type: 'exception-response', stateError: 1, serviceError: 2, invocationCounter: 1 }],
    ['Get-Data-Result with neither field', { type: 'get-response', invokeIdAndPriority: 1, result: {} }],
    ['unknown APDU type', { type: 'initiate-request' }],
    ['not an object', null],
  ])('%s is BAD_VALUE', (_name, apdu) => {
    expectDlmsError(() => encodeApdu(apdu as XdlmsApdu), 'BAD_VALUE');
  });
});

describe('describeApdu', () => {
  it('gives a JSON-safe object with names, hex, ISO times and safe numbers', () => {
    const apdu: XdlmsApdu = {
      type: 'data-notification',
      longInvokeIdAndPriority: 0xc0000007,
      dateTime: DT,
      body: {
        type: 'structure',
        items: [
          { type: 'octet-string', value: hex('0100010800ff') },
          { type: 'long64-unsigned', value: 2n ** 64n - 1n },
          { type: 'long64', value: -5n },
          { type: 'float64', value: Number.POSITIVE_INFINITY },
        ],
      },
    };
    const described = describeApdu(apdu);
    expect(JSON.parse(JSON.stringify(described))).toEqual(described);
    expect(described).toMatchObject({
      type: 'data-notification',
      invokeId: 7,
      confirmed: true,
      highPriority: true,
      dateTime: { iso: '2024-03-15T11:00:00.000Z', local: '2024-03-15T12:00:00.00', deviation: -60 },
      body: {
        type: 'structure',
        items: [
          { type: 'octet-string', value: '0100010800ff' },
          { type: 'long64-unsigned', value: '18446744073709551615' },
          { type: 'long64', value: -5 },
          { type: 'float64', value: 'Infinity' },
        ],
      },
    });
  });

  it('names results and errors', () => {
    expect(describeApdu({ type: 'get-response', invokeIdAndPriority: 0xc1, result: { dataAccessResult: 3 } })).toEqual({
      type: 'get-response',
      invokeIdAndPriority: 0xc1,
      invokeId: 1,
      confirmed: true,
      highPriority: true,
      result: { dataAccessResult: 3, dataAccessResultName: 'read-write-denied' },
    });
    expect(describeApdu({ type: 'action-response', invokeIdAndPriority: 1, result: 250 })).toMatchObject({
      resultName: 'other-reason',
    });
    expect(describeApdu({ type: 'exception-response', stateError: 1, serviceError: 6, invocationCounter: 9 })).toMatchObject({
      stateErrorName: 'service-not-allowed',
      serviceErrorName: 'invocation-counter-error',
      invocationCounter: 9,
    });
    expect(describeApdu({ type: 'set-response', invokeIdAndPriority: 1, result: 42 })).toMatchObject({
      resultName: 'unknown(42)',
    });
    expect(describeApdu(decodeApdu(hex('c0 01 c1 0008 0000010000ff 02 00')))).toMatchObject({
      descriptor: { classId: 8, instanceId: '0.0.1.0.0.255', attributeId: 2 },
    });
    expect(DATA_ACCESS_RESULT[0]).toBe('success');
    expect(DATA_ACCESS_RESULT[250]).toBe('other-reason');
    expect(ACTION_RESULT[15]).toBe('long-action-aborted');
  });
});

describe('UDP wrapper', () => {
  const apdu = hex('c0 01 c1 0008 0000010000ff 02 00');

  it('frames and unframes an APDU', () => {
    const frame = encodeWrapper({ sourceWPort: WPORT_PUBLIC_CLIENT, destinationWPort: WPORT_SERVER_MANAGEMENT_LOGICAL_DEVICE, apdu });
    expect(toHex(frame)).toBe(`0001 0010 0001 000d ${toHex(apdu)}`.replace(/\s+/g, ''));
    expect(looksLikeWrapper(frame)).toBe(true);
    expect(looksLikeWrapper(apdu)).toBe(false);
    const decoded = decodeWrapper(frame);
    expect(decoded).toEqual({ version: 1, sourceWPort: 0x10, destinationWPort: 1, apdu: new Uint8Array(apdu) });
    expect(decodeApdu(decoded.apdu)).toEqual(apduVectors[0]?.[2]);
    expect(DLMS_UDP_PORT).toBe(4059);
  });

  it.each<[string, string, DlmsErrorCode, number]>([
    ['empty', '', 'TRUNCATED', 0],
    ['cut in the source wPort', '0001 00', 'TRUNCATED', 2],
    ['cut in the length', '0001 0010 0001 00', 'TRUNCATED', 6],
    ['another version', '0002 0010 0001 0001 c5', 'BAD_VALUE', 0],
    ['zero length', '0001 0010 0001 0000', 'BAD_LENGTH', 6],
    ['length beyond the datagram', '0001 0010 0001 0005 c50101', 'TRUNCATED', 6],
    ['bytes after the APDU', '0001 0010 0001 0002 c501 00', 'TRAILING_BYTES', 10],
  ])('%s', (_name, bytesHex, code, offset) => {
    expectDlmsError(() => decodeWrapper(hex(bytesHex)), code, offset);
  });

  it('refuses to frame what it could not unframe', () => {
    expectDlmsError(() => encodeWrapper({ sourceWPort: 1, destinationWPort: 1, apdu: new Uint8Array() }), 'BAD_LENGTH');
    expectDlmsError(() => encodeWrapper({ sourceWPort: 1, destinationWPort: 1, apdu: new Uint8Array(65536) }), 'BAD_LENGTH');
    expectDlmsError(() => encodeWrapper({ sourceWPort: 65536, destinationWPort: 1, apdu }), 'BAD_VALUE');
    expectDlmsError(() => encodeWrapper({ version: 2, sourceWPort: 1, destinationWPort: 1, apdu }), 'BAD_VALUE');
  });
});
