import { cborDecode, cborEncode } from './cbor.js';

/**
 * One metrology reading as a meter posts it to the gateway (`POST /readings`).
 * Later issues wrap readings in DLMS/COSEM APDUs; this plain form is what the
 * simulated fleet and the first data path speak.
 */
export interface MeterReading {
  /** Unique per meter and reading; the idempotency key of the record. */
  id: string;
  /** The meter's endpoint name. */
  meter: string;
  /** Capture time, milliseconds since the Unix epoch. */
  ts: number;
  values: ReadingValue[];
}

export interface ReadingValue {
  /** OBIS code in dotted form, e.g. 1.0.1.8.0.255. */
  obis: string;
  value: number;
  unit?: string;
}

/** CoAP Content-Format numbers (RFC 7252 section 12.3). */
export const CONTENT_FORMAT = { json: 50, cbor: 60, text: 0 } as const;

export type ReadingErrorCode = 'UNSUPPORTED_FORMAT' | 'TOO_LARGE' | 'BAD_ENCODING' | 'BAD_SHAPE';

export class ReadingFormatError extends Error {
  override readonly name = 'ReadingFormatError';
  constructor(
    readonly code: ReadingErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export const MAX_READING_BYTES = 4096;
const MAX_VALUES = 64;
const OBIS = /^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$/;
const NAME = /^[\x21-\x7e]{1,64}$/;
const RECORD_ID = /^[\x21-\x7e]{1,128}$/;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

function shape(message: string): ReadingFormatError {
  return new ReadingFormatError('BAD_SHAPE', message);
}

/** Checks a decoded value against the MeterReading shape; returns a clean copy. */
export function validateReading(input: unknown): MeterReading {
  if (!isRecord(input)) throw shape('reading must be a map');
  const { id, meter, ts, values } = input;
  if (typeof id !== 'string' || !RECORD_ID.test(id)) throw shape('id must be 1-128 printable ASCII characters');
  if (typeof meter !== 'string' || !NAME.test(meter)) throw shape('meter must be 1-64 printable ASCII characters');
  if (typeof ts !== 'number' || !Number.isSafeInteger(ts) || ts < 0) throw shape('ts must be a non-negative integer (ms)');
  if (!Array.isArray(values) || values.length === 0 || values.length > MAX_VALUES) {
    throw shape(`values must be an array of 1-${MAX_VALUES} entries`);
  }
  const clean: ReadingValue[] = values.map((entry: unknown, index) => {
    if (!isRecord(entry)) throw shape(`values[${index}] must be a map`);
    const { obis, value, unit } = entry;
    if (typeof obis !== 'string' || !OBIS.test(obis)) throw shape(`values[${index}].obis must be an OBIS code a.b.c.d.e.f`);
    if (typeof value !== 'number' || !Number.isFinite(value)) throw shape(`values[${index}].value must be a finite number`);
    if (unit !== undefined && (typeof unit !== 'string' || unit.length > 16)) {
      throw shape(`values[${index}].unit must be a string of at most 16 characters`);
    }
    return unit === undefined ? { obis, value } : { obis, value, unit };
  });
  return { id, meter, ts, values: clean };
}

/** Decodes a reading posted by a meter. Throws only ReadingFormatError. */
export function decodeReading(payload: Uint8Array, contentFormat: number | undefined): MeterReading {
  if (payload.length > MAX_READING_BYTES) {
    throw new ReadingFormatError('TOO_LARGE', `payload of ${payload.length} bytes exceeds ${MAX_READING_BYTES}`);
  }
  let decoded: unknown;
  if (contentFormat === CONTENT_FORMAT.cbor) {
    try {
      decoded = cborDecode(payload);
    } catch (err) {
      throw new ReadingFormatError('BAD_ENCODING', `invalid CBOR: ${(err as Error).message}`);
    }
  } else if (contentFormat === CONTENT_FORMAT.json) {
    try {
      decoded = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
    } catch (err) {
      throw new ReadingFormatError('BAD_ENCODING', `invalid JSON: ${(err as Error).message}`);
    }
  } else {
    throw new ReadingFormatError(
      'UNSUPPORTED_FORMAT',
      `Content-Format ${contentFormat === undefined ? 'absent' : Number.isNaN(contentFormat) ? 'not recognised' : contentFormat}; expected ${CONTENT_FORMAT.cbor} (CBOR) or ${CONTENT_FORMAT.json} (JSON)`,
    );
  }
  return validateReading(decoded);
}

/** The idempotency key of a plain reading: the meter plus the meter's reading id. */
export function readingKey(meter: string, id: string): string {
  return `${meter}/${id}`;
}

export function encodeReading(reading: MeterReading): Buffer {
  return cborEncode(reading);
}
