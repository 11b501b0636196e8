import type { HesRecord, RecordKind } from './contract.js';

/**
 * How an authenticated DLMS frame becomes an uplink record. The idempotency
 * key is the sender's system title, the epoch of the keys the frame
 * authenticated under, and its invocation counter: the counter is unique per
 * key (replay protection refuses a repeat) and restarts with new keys, so a
 * frame the meter retransmits, or the gateway resends after a crash, is
 * stored once, and frames under new keys never collide with old ones.
 */
export interface DlmsRecordSource {
  meter: string;
  systemTitle: string;
  invocationCounter: number;
  /** Epoch of the keys the frame authenticated under. */
  keyEpoch: number;
  /** Capture time, ms since the epoch. */
  ts: number;
  apdu: { type: string; [field: string]: unknown };
}

export class DlmsRecordError extends Error {
  override readonly name = 'DlmsRecordError';
  readonly code = 'BAD_SHAPE';
}

export function dlmsRecordKey(systemTitle: string, keyEpoch: number, invocationCounter: number): string {
  return `dlms/${systemTitle}/${keyEpoch}/${invocationCounter}`;
}

/** Alarm registers (Blue Book: 0.0.97.98.0.255 and following) make an event an alarm. */
const ALARM_OBIS = /^0\.\d+\.97\.98\.\d+\.255$/;

export function dlmsRecordKind(apdu: DlmsRecordSource['apdu']): RecordKind {
  switch (apdu.type) {
    case 'data-notification':
      return 'reading';
    case 'event-notification-request': {
      const descriptor = apdu.cosemAttributeDescriptor as { instanceId?: unknown } | undefined;
      return typeof descriptor?.instanceId === 'string' && ALARM_OBIS.test(descriptor.instanceId) ? 'alarm' : 'event';
    }
    default:
      return 'result';
  }
}

export function isDlmsRecordSource(value: unknown): value is DlmsRecordSource {
  if (typeof value !== 'object' || value === null) return false;
  const candidate = value as Record<string, unknown>;
  return (
    typeof candidate.systemTitle === 'string' &&
    typeof candidate.invocationCounter === 'number' &&
    typeof candidate.keyEpoch === 'number' &&
    typeof candidate.apdu === 'object'
  );
}

export function recordFromDlms(source: DlmsRecordSource): HesRecord {
  if (!/^[0-9a-f]{16}$/.test(source.systemTitle)) throw new DlmsRecordError('systemTitle must be 16 lower-case hex characters');
  if (!Number.isSafeInteger(source.invocationCounter) || source.invocationCounter < 0 || source.invocationCounter > 0xffff_ffff) {
    throw new DlmsRecordError('invocationCounter must be a 32-bit unsigned integer');
  }
  if (!Number.isSafeInteger(source.keyEpoch) || source.keyEpoch < 0) throw new DlmsRecordError('keyEpoch must be a non-negative integer');
  if (typeof source.meter !== 'string' || source.meter.length === 0 || source.meter.length > 64) {
    throw new DlmsRecordError('meter must be 1-64 characters');
  }
  if (typeof source.apdu?.type !== 'string') throw new DlmsRecordError('apdu.type is missing');
  const ts = Number.isSafeInteger(source.ts) && source.ts >= 0 ? source.ts : Date.now();
  return {
    key: dlmsRecordKey(source.systemTitle, source.keyEpoch, source.invocationCounter),
    kind: dlmsRecordKind(source.apdu),
    meter: source.meter,
    ts,
    body: source,
  };
}
