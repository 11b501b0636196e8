import { DlmsError } from './errors.js';

/**
 * A-XDR (IEC 61334-6) as DLMS/COSEM uses it: the `Data` CHOICE of the Green
 * Book, its length encoding, and a bounds-checked reader and writer the APDU
 * codec builds on. Decoding never trusts a length: every length and element
 * count is checked against the bytes that are left before anything is
 * allocated, nesting is capped, and every failure is a DlmsError carrying the
 * offset (relative to the start of the array given to the public function).
 */

/** Containers (array/structure) nested deeper than this are TOO_DEEP, decoding and encoding. */
export const MAX_DATA_DEPTH = 16;

/** The "not specified" value of the one-byte date and time fields. */
export const NOT_SPECIFIED = 0xff;
/** The "not specified" year. */
export const YEAR_NOT_SPECIFIED = 0xffff;
/** The "not specified" deviation (0x8000 read as int16). */
export const DEVIATION_NOT_SPECIFIED = -0x8000;
/** month: daylight saving ends / begins; dayOfMonth: second-to-last / last day of the month. */
export const MONTH_DST_END = 0xfd;
export const MONTH_DST_BEGIN = 0xfe;
export const DAY_SECOND_LAST = 0xfd;
export const DAY_LAST = 0xfe;

/** COSEM `date` (5 bytes): fields as on the wire, 0xFF (year 0xFFFF) = not specified. */
export interface CosemDate {
  year: number;
  month: number;
  dayOfMonth: number;
  /** 1 = Monday ... 7 = Sunday. */
  dayOfWeek: number;
}

/** COSEM `time` (4 bytes). */
export interface CosemTime {
  hour: number;
  minute: number;
  second: number;
  hundredths: number;
}

/** COSEM `date-time` (12 bytes). */
export interface CosemDateTime extends CosemDate, CosemTime {
  /**
   * Minutes from local time to UTC as the Blue Book defines it (UTC = local +
   * deviation, so Central European winter time is -60); -32768 = not specified.
   */
  deviation: number;
  /** Clock status bits (0 invalid, 1 doubtful, 2 different base, 3 invalid status, 7 DST active); 0xFF = not specified. */
  clockStatus: number;
}

export type DlmsIntegerType =
  | 'integer'
  | 'long'
  | 'unsigned'
  | 'long-unsigned'
  | 'double-long'
  | 'double-long-unsigned'
  | 'enum';

export type DlmsData =
  | { type: 'null' }
  | { type: 'dont-care' }
  | { type: 'boolean'; value: boolean }
  | { type: DlmsIntegerType; value: number }
  | { type: 'long64' | 'long64-unsigned'; value: bigint }
  | { type: 'float32' | 'float64'; value: number }
  | { type: 'octet-string'; value: Uint8Array }
  | { type: 'visible-string' | 'utf8-string'; value: string }
  /** Bits as '0'/'1' characters, the first bit on the wire (the MSB of the first byte) first. */
  | { type: 'bit-string'; bits: string }
  /** One byte holding two decimal digits: the value 0..99. */
  | { type: 'bcd'; value: number }
  | { type: 'date-time'; value: CosemDateTime }
  | { type: 'date'; value: CosemDate }
  | { type: 'time'; value: CosemTime }
  | { type: 'array' | 'structure'; items: DlmsData[] };

export type DlmsDataType = DlmsData['type'];

/** The CHOICE tag of each Data alternative. */
export const DATA_TAG = {
  null: 0,
  array: 1,
  structure: 2,
  boolean: 3,
  'bit-string': 4,
  'double-long': 5,
  'double-long-unsigned': 6,
  'octet-string': 9,
  'visible-string': 10,
  'utf8-string': 12,
  bcd: 13,
  integer: 15,
  long: 16,
  unsigned: 17,
  'long-unsigned': 18,
  long64: 20,
  'long64-unsigned': 21,
  enum: 22,
  float32: 23,
  float64: 24,
  'date-time': 25,
  date: 26,
  time: 27,
  'dont-care': 255,
} as const satisfies Record<DlmsDataType, number>;

const TYPE_OF_TAG = new Map<number, DlmsDataType>(
  (Object.entries(DATA_TAG) as [DlmsDataType, number][]).map(([type, tag]) => [tag, type]),
);

/** compact-array (19) is valid DLMS the codec does not implement. */
const TAG_COMPACT_ARRAY = 19;

/** Inclusive ranges of the fixed-size integer types. */
const INT_RANGE: Record<DlmsIntegerType, readonly [number, number]> = {
  integer: [-0x80, 0x7f],
  long: [-0x8000, 0x7fff],
  unsigned: [0, 0xff],
  'long-unsigned': [0, 0xffff],
  'double-long': [-0x80000000, 0x7fffffff],
  'double-long-unsigned': [0, 0xffffffff],
  enum: [0, 0xff],
};

const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;

// ---------------------------------------------------------------------------
// Reading

/**
 * A cursor over bytes that checks every read. `pos` is an index into `bytes`,
 * so the offsets in its errors are relative to the array it was given.
 */
export class AxdrReader {
  readonly bytes: Uint8Array;
  pos: number;
  private dataView: DataView | undefined;

  constructor(bytes: Uint8Array, pos = 0) {
    if (!Number.isInteger(pos) || pos < 0 || pos > bytes.length) {
      throw new DlmsError('BAD_VALUE', `start offset ${pos} is outside the ${bytes.length}-byte input`, 0);
    }
    this.bytes = bytes;
    this.pos = pos;
  }

  /** Only 64-bit integers and floats need a DataView; most frames never create one. */
  private get view(): DataView {
    this.dataView ??= new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    return this.dataView;
  }

  get remaining(): number {
    return this.bytes.length - this.pos;
  }

  /** Throws TRUNCATED (at the field's first byte) unless `n` bytes are left. */
  need(n: number, what: string): void {
    if (n > this.bytes.length - this.pos) {
      throw new DlmsError('TRUNCATED', `input ends inside ${what}: ${n} bytes needed, ${this.remaining} left`, this.pos);
    }
  }

  /** The byte at `pos + i`, after need() has vouched for it. */
  private at(i: number): number {
    return this.bytes[this.pos + i] ?? 0;
  }

  u8(what: string): number {
    this.need(1, what);
    return this.bytes[this.pos++] ?? 0;
  }

  i8(what: string): number {
    return (this.u8(what) << 24) >> 24;
  }

  u16(what: string): number {
    this.need(2, what);
    const v = (this.at(0) << 8) | this.at(1);
    this.pos += 2;
    return v;
  }

  i16(what: string): number {
    return (this.u16(what) << 16) >> 16;
  }

  u32(what: string): number {
    return this.i32(what) >>> 0;
  }

  i32(what: string): number {
    this.need(4, what);
    const v = (this.at(0) << 24) | (this.at(1) << 16) | (this.at(2) << 8) | this.at(3);
    this.pos += 4;
    return v;
  }

  u64(what: string): bigint {
    this.need(8, what);
    const v = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return v;
  }

  i64(what: string): bigint {
    this.need(8, what);
    const v = this.view.getBigInt64(this.pos);
    this.pos += 8;
    return v;
  }

  f32(what: string): number {
    this.need(4, what);
    const v = this.view.getFloat32(this.pos);
    this.pos += 4;
    return v;
  }

  f64(what: string): number {
    this.need(8, what);
    const v = this.view.getFloat64(this.pos);
    this.pos += 8;
    return v;
  }

  /** A copy (a plain Uint8Array, never a view into the input) of the next `n` bytes. */
  take(n: number, what: string): Uint8Array {
    this.need(n, what);
    const out = new Uint8Array(n);
    if (n <= 16) for (let i = 0; i < n; i++) out[i] = this.at(i);
    else out.set(this.bytes.subarray(this.pos, this.pos + n));
    this.pos += n;
    return out;
  }

  /**
   * An A-XDR length: one byte below 0x80, or 0x81..0x84 followed by that many
   * big-endian bytes. A length over `max` (by default the bytes left after the
   * length field) is BAD_LENGTH at the length field.
   */
  length(what: string, max?: number): number {
    const start = this.pos;
    const first = this.u8(what);
    let value: number;
    if (first < 0x80) {
      value = first;
    } else if (first >= 0x81 && first <= 0x84) {
      const count = first - 0x80;
      this.pos = start;
      this.need(1 + count, what);
      value = 0;
      for (let i = 1; i <= count; i++) value = value * 256 + this.at(i);
      this.pos = start + 1 + count;
    } else {
      throw new DlmsError('BAD_LENGTH', `invalid length prefix 0x${hex2(first)} for ${what}`, start);
    }
    const limit = max ?? this.remaining;
    if (value > limit) {
      throw new DlmsError('BAD_LENGTH', `${what} claims ${value}, but only ${limit} fit in the input`, start);
    }
    return value;
  }

  /** A-XDR OPTIONAL / BOOLEAN presence flag: zero is absent, anything else present. */
  flag(what: string): boolean {
    return this.u8(what) !== 0;
  }

  /** Throws TRAILING_BYTES unless the input is used up. */
  end(what: string): void {
    if (this.remaining > 0) {
      throw new DlmsError('TRAILING_BYTES', `${this.remaining} bytes left over after ${what}`, this.pos);
    }
  }

  /** One Data value. `depth` is the number of containers around it. */
  data(depth = 0): DlmsData {
    const start = this.pos;
    const tag = this.u8('a Data tag');
    const type = TYPE_OF_TAG.get(tag);
    if (type === undefined) {
      if (tag === TAG_COMPACT_ARRAY) throw new DlmsError('UNSUPPORTED', 'compact-array is not supported', start);
      throw new DlmsError('BAD_TAG', `unknown Data tag ${tag}`, start);
    }
    switch (type) {
      case 'null':
      case 'dont-care':
        return { type };
      case 'array':
      case 'structure': {
        if (depth >= MAX_DATA_DEPTH) {
          throw new DlmsError('TOO_DEEP', `Data nested deeper than ${MAX_DATA_DEPTH} containers`, start);
        }
        // Each element takes at least one byte, so the count cannot exceed what is left.
        const count = this.length(type === 'array' ? 'an array element count' : 'a structure element count');
        const items: DlmsData[] = [];
        for (let i = 0; i < count; i++) items.push(this.data(depth + 1));
        return { type, items };
      }
      case 'boolean':
        return { type, value: this.u8('a boolean') !== 0 };
      case 'bit-string': {
        const lengthAt = this.pos;
        const bitCount = this.length('a bit-string', this.remaining * 8);
        const byteCount = Math.ceil(bitCount / 8);
        if (byteCount > this.remaining) {
          throw new DlmsError('BAD_LENGTH', `bit-string of ${bitCount} bits does not fit in the input`, lengthAt);
        }
        let bits = '';
        for (let i = 0; i < bitCount; i++) {
          const byte = this.bytes[this.pos + (i >> 3)] ?? 0;
          bits += (byte >> (7 - (i & 7))) & 1 ? '1' : '0';
        }
        this.pos += byteCount;
        return { type, bits };
      }
      case 'double-long':
        return { type, value: this.i32('a double-long') };
      case 'double-long-unsigned':
        return { type, value: this.u32('a double-long-unsigned') };
      case 'octet-string':
        return { type, value: this.take(this.length('an octet-string'), 'an octet-string') };
      case 'visible-string': {
        const n = this.length('a visible-string');
        const raw = this.bytes.subarray(this.pos, this.pos + n);
        this.pos += n;
        return { type, value: Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('latin1') };
      }
      case 'utf8-string': {
        const at = this.pos;
        const n = this.length('a utf8-string');
        const raw = this.bytes.subarray(this.pos, this.pos + n);
        let value: string;
        try {
          value = utf8Decoder.decode(raw);
        } catch {
          throw new DlmsError('BAD_VALUE', 'utf8-string is not valid UTF-8', at);
        }
        this.pos += n;
        return { type, value };
      }
      case 'bcd': {
        const at = this.pos;
        const byte = this.u8('a bcd');
        const hi = byte >> 4;
        const lo = byte & 0x0f;
        if (hi > 9 || lo > 9) throw new DlmsError('BAD_VALUE', `0x${hex2(byte)} is not two BCD digits`, at);
        return { type, value: hi * 10 + lo };
      }
      case 'integer':
        return { type, value: this.i8('an integer') };
      case 'long':
        return { type, value: this.i16('a long') };
      case 'unsigned':
        return { type, value: this.u8('an unsigned') };
      case 'long-unsigned':
        return { type, value: this.u16('a long-unsigned') };
      case 'enum':
        return { type, value: this.u8('an enum') };
      case 'long64':
        return { type, value: this.i64('a long64') };
      case 'long64-unsigned':
        return { type, value: this.u64('a long64-unsigned') };
      case 'float32':
        return { type, value: this.f32('a float32') };
      case 'float64':
        return { type, value: this.f64('a float64') };
      case 'date-time':
        return { type, value: this.dateTime() };
      case 'date':
        return { type, value: this.date() };
      case 'time':
        return { type, value: this.time() };
    }
  }

  /** The 12 bytes of a date-time (no tag, no length). */
  dateTime(): CosemDateTime {
    this.need(12, 'a date-time');
    // Built field by field: spreading the date and time objects cost most of a push frame's decode time.
    const p = this.pos;
    const b = this.bytes;
    const value: CosemDateTime = {
      year: ((b[p] ?? 0) << 8) | (b[p + 1] ?? 0),
      month: b[p + 2] ?? 0,
      dayOfMonth: b[p + 3] ?? 0,
      dayOfWeek: b[p + 4] ?? 0,
      hour: b[p + 5] ?? 0,
      minute: b[p + 6] ?? 0,
      second: b[p + 7] ?? 0,
      hundredths: b[p + 8] ?? 0,
      deviation: ((((b[p + 9] ?? 0) << 8) | (b[p + 10] ?? 0)) << 16) >> 16,
      clockStatus: b[p + 11] ?? 0,
    };
    this.pos = p + 12;
    return value;
  }

  /** The 5 bytes of a date. */
  date(): CosemDate {
    this.need(5, 'a date');
    return {
      year: this.u16('a year'),
      month: this.u8('a month'),
      dayOfMonth: this.u8('a day of month'),
      dayOfWeek: this.u8('a day of week'),
    };
  }

  /** The 4 bytes of a time. */
  time(): CosemTime {
    this.need(4, 'a time');
    return {
      hour: this.u8('an hour'),
      minute: this.u8('a minute'),
      second: this.u8('a second'),
      hundredths: this.u8('hundredths'),
    };
  }
}

/**
 * Reads an A-XDR length at `offset`. `maxLength` defaults to the bytes left
 * after the length field; a larger value is BAD_LENGTH.
 */
export function decodeLength(bytes: Uint8Array, offset = 0, maxLength?: number): { length: number; next: number } {
  const reader = new AxdrReader(bytes, offset);
  const length = reader.length('a length', maxLength);
  return { length, next: reader.pos };
}

/** Decodes one Data value at `offset`; `next` is the offset just past it. */
export function decodeData(bytes: Uint8Array, offset = 0): { value: DlmsData; next: number } {
  const reader = new AxdrReader(bytes, offset);
  const value = reader.data();
  return { value, next: reader.pos };
}

// ---------------------------------------------------------------------------
// Writing

/** Collects encoded fields; every write checks its value first (BAD_VALUE). */
export class AxdrWriter {
  private readonly chunks: Uint8Array[] = [];

  bytes(b: Uint8Array): this {
    this.chunks.push(b);
    return this;
  }

  u8(v: number, what: string): this {
    checkInt(v, 0, 0xff, what);
    this.chunks.push(Uint8Array.of(v));
    return this;
  }

  i8(v: number, what: string): this {
    checkInt(v, -0x80, 0x7f, what);
    this.chunks.push(Uint8Array.of(v & 0xff));
    return this;
  }

  u16(v: number, what: string): this {
    checkInt(v, 0, 0xffff, what);
    this.chunks.push(Uint8Array.of(v >> 8, v & 0xff));
    return this;
  }

  i16(v: number, what: string): this {
    checkInt(v, -0x8000, 0x7fff, what);
    return this.u16(v & 0xffff, what);
  }

  u32(v: number, what: string): this {
    checkInt(v, 0, 0xffffffff, what);
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    this.chunks.push(b);
    return this;
  }

  i32(v: number, what: string): this {
    checkInt(v, -0x80000000, 0x7fffffff, what);
    const b = Buffer.alloc(4);
    b.writeInt32BE(v);
    this.chunks.push(b);
    return this;
  }

  length(n: number): this {
    this.chunks.push(encodeLength(n));
    return this;
  }

  /** A-XDR length-prefixed octet-string (no Data tag). */
  octets(b: unknown, what: string): this {
    if (!(b instanceof Uint8Array)) throw new DlmsError('BAD_VALUE', `${what} must be a Uint8Array`);
    return this.length(b.length).bytes(b);
  }

  flag(present: boolean): this {
    this.chunks.push(Uint8Array.of(present ? 1 : 0));
    return this;
  }

  data(value: DlmsData, depth = 0): this {
    writeData(this, value, depth);
    return this;
  }

  dateTime(v: CosemDateTime): this {
    checkObject(v, 'a date-time');
    return this.date(v).time(v).i16(v.deviation, 'deviation').u8(v.clockStatus, 'clockStatus');
  }

  date(v: CosemDate): this {
    checkObject(v, 'a date');
    return this.u16(v.year, 'year').u8(v.month, 'month').u8(v.dayOfMonth, 'dayOfMonth').u8(v.dayOfWeek, 'dayOfWeek');
  }

  time(v: CosemTime): this {
    checkObject(v, 'a time');
    return this.u8(v.hour, 'hour').u8(v.minute, 'minute').u8(v.second, 'second').u8(v.hundredths, 'hundredths');
  }

  finish(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** The A-XDR length encoding of `n` (0 .. 2^32-1): short form below 0x80, else 0x81..0x84 + big-endian bytes. */
export function encodeLength(n: number): Buffer {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new DlmsError('BAD_LENGTH', `a length must be an integer 0..4294967295, not ${String(n)}`);
  }
  if (n < 0x80) return Buffer.of(n);
  const body: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) body.unshift(v % 256);
  return Buffer.from([0x80 + body.length, ...body]);
}

/** Encodes one Data value, tag included. Out-of-range or ill-typed values are BAD_VALUE. */
export function encodeData(value: DlmsData): Buffer {
  return new AxdrWriter().data(value).finish();
}

function writeData(w: AxdrWriter, d: DlmsData, depth: number): void {
  checkObject(d, 'a Data value');
  const tag = Object.hasOwn(DATA_TAG, d.type) ? (DATA_TAG as Record<string, number>)[d.type] : undefined;
  if (tag === undefined) throw new DlmsError('BAD_VALUE', `unknown Data type ${JSON.stringify(d.type)}`);
  w.u8(tag, 'tag');
  switch (d.type) {
    case 'null':
    case 'dont-care':
      return;
    case 'array':
    case 'structure': {
      if (depth >= MAX_DATA_DEPTH) throw new DlmsError('TOO_DEEP', `Data nested deeper than ${MAX_DATA_DEPTH} containers`);
      if (!Array.isArray(d.items)) throw new DlmsError('BAD_VALUE', `${d.type} items must be an array`);
      w.length(d.items.length);
      for (const item of d.items) writeData(w, item, depth + 1);
      return;
    }
    case 'boolean':
      if (typeof d.value !== 'boolean') throw new DlmsError('BAD_VALUE', 'a boolean value must be true or false');
      w.u8(d.value ? 1 : 0, 'boolean');
      return;
    case 'bit-string': {
      if (typeof d.bits !== 'string' || !/^[01]*$/.test(d.bits)) {
        throw new DlmsError('BAD_VALUE', "bit-string bits must be a string of '0' and '1'");
      }
      const out = new Uint8Array(Math.ceil(d.bits.length / 8));
      for (let i = 0; i < d.bits.length; i++) {
        if (d.bits.charCodeAt(i) === 0x31) out[i >> 3] = (out[i >> 3] ?? 0) | (0x80 >> (i & 7));
      }
      w.length(d.bits.length).bytes(out);
      return;
    }
    case 'integer':
      w.i8(d.value, d.type);
      return;
    case 'long':
      w.i16(d.value, d.type);
      return;
    case 'unsigned':
    case 'enum':
      w.u8(d.value, d.type);
      return;
    case 'long-unsigned':
      w.u16(d.value, d.type);
      return;
    case 'double-long':
      w.i32(d.value, d.type);
      return;
    case 'double-long-unsigned':
      w.u32(d.value, d.type);
      return;
    case 'long64':
    case 'long64-unsigned': {
      const signed = d.type === 'long64';
      const v = d.value;
      const min = signed ? -(1n << 63n) : 0n;
      const max = signed ? (1n << 63n) - 1n : (1n << 64n) - 1n;
      if (typeof v !== 'bigint' || v < min || v > max) {
        throw new DlmsError('BAD_VALUE', `${d.type} must be a bigint in ${min}..${max}`);
      }
      const b = Buffer.alloc(8);
      if (signed) b.writeBigInt64BE(v);
      else b.writeBigUInt64BE(v);
      w.bytes(b);
      return;
    }
    case 'float32':
    case 'float64': {
      const { type, value } = d;
      if (typeof value !== 'number') throw new DlmsError('BAD_VALUE', `${type} must be a number`);
      const b = Buffer.alloc(type === 'float32' ? 4 : 8);
      if (type === 'float32') b.writeFloatBE(value);
      else b.writeDoubleBE(value);
      w.bytes(b);
      return;
    }
    case 'octet-string':
      w.octets(d.value, 'an octet-string value');
      return;
    case 'visible-string':
      if (typeof d.value !== 'string' || !PRINTABLE_ASCII.test(d.value)) {
        throw new DlmsError('BAD_VALUE', 'a visible-string must be printable ASCII (0x20..0x7E)');
      }
      w.octets(Buffer.from(d.value, 'latin1'), 'a visible-string');
      return;
    case 'utf8-string':
      if (typeof d.value !== 'string' || LONE_SURROGATE.test(d.value)) {
        throw new DlmsError('BAD_VALUE', 'a utf8-string must be a well-formed string');
      }
      w.octets(Buffer.from(d.value, 'utf8'), 'a utf8-string');
      return;
    case 'bcd':
      checkInt(d.value, 0, 99, 'bcd');
      w.u8(Math.floor(d.value / 10) * 16 + (d.value % 10), 'bcd');
      return;
    case 'date-time':
      w.dateTime(d.value);
      return;
    case 'date':
      w.date(d.value);
      return;
    case 'time':
      w.time(d.value);
      return;
  }
}

function checkInt(v: unknown, min: number, max: number, what: string): asserts v is number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new DlmsError('BAD_VALUE', `${what} must be an integer ${min}..${max}, not ${String(v)}`);
  }
}

function checkObject(v: unknown, what: string): void {
  if (typeof v !== 'object' || v === null) throw new DlmsError('BAD_VALUE', `${what} must be an object`);
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/** The inclusive value range of a fixed-size integer type. */
export function integerRange(type: DlmsIntegerType): readonly [number, number] {
  return INT_RANGE[type];
}

// ---------------------------------------------------------------------------
// Date and time

const MS_PER_MINUTE = 60_000;

/**
 * The instant a date-time names, or undefined when it names none: a field
 * (year, month, day, hour, minute, second) not specified or out of range, a
 * day that does not exist, or a deviation outside -720..720. Hundredths not
 * specified count as 0. When the deviation is not specified the local time
 * cannot be placed in UTC: pass the meter's deviation as `fallbackDeviation`
 * (same sign convention), or get undefined.
 */
export function dateTimeToDate(dt: CosemDateTime, fallbackDeviation?: number): Date | undefined {
  const local = localMillis(dt);
  if (local === undefined) return undefined;
  const deviation = dt.deviation === DEVIATION_NOT_SPECIFIED ? fallbackDeviation : dt.deviation;
  if (deviation === undefined || !Number.isInteger(deviation) || deviation < -720 || deviation > 720) return undefined;
  return new Date(local + deviation * MS_PER_MINUTE);
}

/**
 * The local wall-clock time a date-time names, without any zone, as
 * `YYYY-MM-DDTHH:MM:SS.ss`; undefined under the same rules as dateTimeToDate
 * (the deviation aside).
 */
export function dateTimeToLocalString(dt: CosemDateTime): string | undefined {
  if (localMillis(dt) === undefined) return undefined;
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  const hundredths = dt.hundredths === NOT_SPECIFIED ? 0 : dt.hundredths;
  return `${p(dt.year, 4)}-${p(dt.month)}-${p(dt.dayOfMonth)}T${p(dt.hour)}:${p(dt.minute)}:${p(dt.second)}.${p(hundredths)}`;
}

/** Milliseconds since the epoch of the wall-clock fields read as if they were UTC. */
function localMillis(dt: CosemDateTime): number | undefined {
  const { year, month, dayOfMonth, hour, minute, second, hundredths } = dt;
  if (year === YEAR_NOT_SPECIFIED || month < 1 || month > 12 || dayOfMonth < 1 || dayOfMonth > 31) return undefined;
  if (hour > 23 || minute > 59 || second > 59) return undefined;
  if (hundredths > 99 && hundredths !== NOT_SPECIFIED) return undefined;
  const ms = hundredths === NOT_SPECIFIED ? 0 : hundredths * 10;
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, dayOfMonth);
  d.setUTCHours(hour, minute, second, ms);
  if (d.getUTCDate() !== dayOfMonth || d.getUTCMonth() !== month - 1) return undefined;
  return d.getTime();
}

/**
 * The date-time of an instant, in the local time of a clock whose deviation is
 * `deviationMinutes` (Blue Book sign: UTC = local + deviation; 0 = UTC, -60 =
 * Central European winter time), with the day of week filled in.
 */
export function dateTimeFromDate(d: Date, deviationMinutes = 0, clockStatus = 0): CosemDateTime {
  if (!(d instanceof Date) || Number.isNaN(d.getTime())) throw new DlmsError('BAD_VALUE', 'not a valid Date');
  checkInt(deviationMinutes, -720, 720, 'deviation');
  checkInt(clockStatus, 0, 0xff, 'clockStatus');
  const local = new Date(d.getTime() - deviationMinutes * MS_PER_MINUTE);
  const year = local.getUTCFullYear();
  if (year < 0 || year >= YEAR_NOT_SPECIFIED) throw new DlmsError('BAD_VALUE', `year ${year} does not fit a date-time`);
  const weekday = local.getUTCDay();
  return {
    year,
    month: local.getUTCMonth() + 1,
    dayOfMonth: local.getUTCDate(),
    dayOfWeek: weekday === 0 ? 7 : weekday,
    hour: local.getUTCHours(),
    minute: local.getUTCMinutes(),
    second: local.getUTCSeconds(),
    hundredths: Math.floor(local.getUTCMilliseconds() / 10),
    deviation: deviationMinutes,
    clockStatus,
  };
}
