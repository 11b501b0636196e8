import { cborDecode, cborEncode } from '../coap/cbor.js';

/**
 * The uplink contract between the gateway and a HES, over CoAP (documented
 * for HES vendors in docs/hes-uplink.md):
 *
 *   POST /ami/v1/records   Content-Format 60 (CBOR)   body: RecordBatch
 *     2.04 Changed, CBOR { accepted: [key, ...] }: these keys are stored
 *          (including keys the HES had already seen; it deduplicates by key)
 *     4.00 Bad Request: the batch is malformed; the gateway logs and does not retry it as-is
 *     5.03 Service Unavailable (+ Max-Age): try again later
 *   GET /ami/v1/health      2.05 Content, CBOR { status: "ok" }
 */
export const RECORDS_PATH = '/ami/v1/records';
export const HEALTH_PATH = '/ami/v1/health';

/**
 * Signed commands from the HES (docs/hes-commands.md), with `?gw=<gateway id>`:
 *   GET  /ami/v1/commands?gw=ID        2.05 CBOR [{id, envelope}, ...], the oldest waiting envelopes
 *   GET  /ami/v1/commands/state?gw=ID  2.05 CBOR {pending, version}, observable (RFC 7641)
 *   POST /ami/v1/commands/ack          CBOR {gateway, ids}: 2.04, the entries leave the queue
 */
export const COMMANDS_PATH = '/ami/v1/commands';
export const COMMANDS_STATE_PATH = '/ami/v1/commands/state';
export const COMMANDS_ACK_PATH = '/ami/v1/commands/ack';

export const RECORD_KINDS = ['alarm', 'result', 'event', 'reading'] as const;
export type RecordKind = (typeof RECORD_KINDS)[number];

export interface HesRecord {
  /** Idempotency key: the HES stores each key once. */
  key: string;
  kind: RecordKind;
  meter: string;
  /** Capture time, ms since the Unix epoch. */
  ts: number;
  body: unknown;
}

export interface RecordBatch {
  /** The sending gateway's identity. */
  gateway: string;
  records: HesRecord[];
}

export interface BatchAck {
  accepted: string[];
}

export class HesContractError extends Error {
  override readonly name = 'HesContractError';
  constructor(
    readonly code: 'BAD_ENCODING' | 'BAD_SHAPE',
    message: string,
  ) {
    super(message);
  }
}

export const MAX_BATCH_RECORDS = 256;

export { readingKey } from '../coap/reading.js';
const MAX_KEY_LENGTH = 256;

function isMap(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

function decodeOrThrow(bytes: Uint8Array): unknown {
  try {
    return cborDecode(bytes);
  } catch (err) {
    throw new HesContractError('BAD_ENCODING', `invalid CBOR: ${(err as Error).message}`);
  }
}

function isKey(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_KEY_LENGTH;
}

export function encodeBatch(batch: RecordBatch): Buffer {
  return cborEncode(batch);
}

/** Decodes and checks a batch as the HES receives it. Throws only HesContractError. */
export function decodeBatch(bytes: Uint8Array): RecordBatch {
  const value = decodeOrThrow(bytes);
  if (!isMap(value)) throw new HesContractError('BAD_SHAPE', 'batch must be a map');
  const { gateway, records } = value;
  if (typeof gateway !== 'string' || gateway.length === 0 || gateway.length > 128) {
    throw new HesContractError('BAD_SHAPE', 'gateway must be a string of 1-128 characters');
  }
  if (!Array.isArray(records) || records.length > MAX_BATCH_RECORDS) {
    throw new HesContractError('BAD_SHAPE', `records must be an array of at most ${MAX_BATCH_RECORDS}`);
  }
  const clean = records.map((record: unknown, index): HesRecord => {
    if (!isMap(record)) throw new HesContractError('BAD_SHAPE', `records[${index}] must be a map`);
    const { key, kind, meter, ts, body } = record;
    if (!isKey(key)) throw new HesContractError('BAD_SHAPE', `records[${index}].key must be a string of 1-${MAX_KEY_LENGTH}`);
    if (typeof kind !== 'string' || !(RECORD_KINDS as readonly string[]).includes(kind)) {
      throw new HesContractError('BAD_SHAPE', `records[${index}].kind must be one of ${RECORD_KINDS.join(', ')}`);
    }
    if (typeof meter !== 'string' || meter.length === 0 || meter.length > 64) {
      throw new HesContractError('BAD_SHAPE', `records[${index}].meter must be a string of 1-64`);
    }
    if (typeof ts !== 'number' || !Number.isSafeInteger(ts)) {
      throw new HesContractError('BAD_SHAPE', `records[${index}].ts must be an integer`);
    }
    return { key, kind: kind as RecordKind, meter, ts, body };
  });
  return { gateway, records: clean };
}

export function encodeAck(ack: BatchAck): Buffer {
  return cborEncode(ack);
}

/** Decodes the HES's answer to a batch. Throws only HesContractError. */
export function decodeAck(bytes: Uint8Array): BatchAck {
  const value = decodeOrThrow(bytes);
  if (!isMap(value) || !Array.isArray(value.accepted) || !value.accepted.every(isKey)) {
    throw new HesContractError('BAD_SHAPE', 'ack must be a map with accepted: [key, ...]');
  }
  return { accepted: value.accepted };
}
