/**
 * The types of firmware rollouts (issue 9): what a rollout asks for, what
 * it says about each meter, and the port through which it talks to meters.
 * The meter side of the exchange (GET /fw/state, POST /fw/update) is
 * described in docs/firmware.md; the CoAP port is src/mesh/firmware-port.ts.
 */
import type { FirmwareTarget } from './manifest.js';
import type { FirmwarePair, WantedFirmware } from './compatibility.js';

/** What a meter says of its firmware (GET /fw/state). */
export interface MeterFirmwareReport {
  /** The meter's hardware model, e.g. 'AMX-100'. */
  model?: string;
  comm: string;
  metro: string;
  state: 'idle' | 'downloading' | 'updating' | 'failed';
  /** The image being worked on, or the one that failed. */
  image?: { target: FirmwareTarget; version: string; sha256: string };
  /** Bytes of that image the meter holds. */
  received?: number;
  size?: number;
  /** With state 'failed': HASH_MISMATCH, DOWNLOAD_FAILED or IMAGE_GONE. */
  result?: string;
}

/** What the gateway offers a meter (POST /fw/update). */
export interface FirmwareOffer {
  /** The image's path on the gateway's mesh endpoint, '/fw/acme/comm-2.2.0'. */
  path: string;
  target: FirmwareTarget;
  version: string;
  sha256: string;
  size: number;
}

/**
 * How the rollout talks to meters: the CoAP port sends at metrology
 * priority through the mesh client, so relay commands go first. Errors
 * carry a `code` (COMM_TIMEOUT_ERR, METER_REFUSED, BAD_ANSWER, ...).
 */
export interface FirmwareMeterPort {
  readState(meter: string, signal: AbortSignal): Promise<MeterFirmwareReport>;
  /** Resolves when the meter accepted the offer (2.04); rejects with a typed error otherwise. */
  offer(meter: string, offer: FirmwareOffer, signal: AbortSignal): Promise<void>;
}

/** Final outcomes of one meter in a rollout. */
export type FirmwareFinalCode =
  /** The meter runs the wanted versions, read back after the last step. */
  | 'FW_UPDATE_SUCCESS'
  /** It already ran them: nothing was sent. */
  | 'FW_ALREADY_CURRENT'
  /** The plan would leave an incompatible pair (or passes through one): nothing was sent. */
  | 'FW_INCOMPATIBLE'
  /** No good image for the wanted version and the meter's model, or the model is needed and not known. */
  | 'FW_NO_IMAGE'
  /** The image failed verification before sending (quarantined, changed on disk). */
  | 'FW_IMAGE_REFUSED'
  /** The meter did not take the image after every attempt (its last result in `reason`). */
  | 'FW_UPDATE_FAILED'
  /** The meter was not reached within the attempts. */
  | 'COMM_TIMEOUT_ERR'
  /** After the steps, the meter reports other versions than wanted. */
  | 'FW_VERSION_MISMATCH'
  /** The meter is not registered (no address). */
  | 'FW_UNKNOWN_METER';

export const FIRMWARE_FINAL_CODES: readonly FirmwareFinalCode[] = [
  'FW_UPDATE_SUCCESS',
  'FW_ALREADY_CURRENT',
  'FW_INCOMPATIBLE',
  'FW_NO_IMAGE',
  'FW_IMAGE_REFUSED',
  'FW_UPDATE_FAILED',
  'COMM_TIMEOUT_ERR',
  'FW_VERSION_MISMATCH',
  'FW_UNKNOWN_METER',
];

/** Where one meter of a rollout is. */
export type MeterRolloutPhase = 'queued' | 'checking' | 'offering' | 'downloading' | 'updating' | 'verifying' | 'done';

export interface MeterRolloutStep {
  target: FirmwareTarget;
  from: string;
  to: string;
  imageId: string;
}

/** One meter of a rollout, as journaled. */
export interface MeterRolloutEntry {
  rolloutId: string;
  meter: string;
  phase: MeterRolloutPhase;
  /** The plan once checked. */
  steps?: MeterRolloutStep[];
  /** The step under way (index into steps). */
  step?: number;
  /** Offers made for the current step (resumes count as further attempts). */
  attempts: number;
  /** Versions read from the meter at the check. */
  from?: FirmwarePair;
  /** Bytes the meter reported holding of the current image, and its size. */
  received?: number;
  size?: number;
  /** The last problem (a meter's failure result, a timeout), while it retries. */
  lastProblem?: string;
  updatedAt: number;
  /** Set with phase 'done'. */
  outcome?: MeterRolloutOutcome;
}

export interface MeterRolloutOutcome {
  code: FirmwareFinalCode;
  /** Versions read back at the end (or at the check, when nothing was sent). */
  versions?: FirmwarePair;
  reason?: string;
  at: number;
}

/** A rollout as journaled. */
export interface RolloutRecord {
  rolloutId: string;
  want: WantedFirmware;
  meters: string[];
  concurrency: number;
  /** Who asked (operator name, 'hes', a flow node id), for the record. */
  requestedBy?: string;
  createdAt: number;
  finished: boolean;
}

export interface RolloutSummary {
  rolloutId: string;
  want: WantedFirmware;
  total: number;
  done: number;
  byCode: Partial<Record<FirmwareFinalCode, number>>;
  byPhase: Partial<Record<MeterRolloutPhase, number>>;
  finished: boolean;
  createdAt: number;
  requestedBy?: string;
}

export interface RolloutProgress {
  rolloutId: string;
  meter: string;
  entry: MeterRolloutEntry;
}

/**
 * Why a port call failed. Transient (the rollout asks again until the
 * step's deadline): COMM_TIMEOUT_ERR, NOT_REGISTERED (no address for the
 * meter, e.g. while it reboots), METER_BUSY (4.09, or 5.03), QUEUE_FULL.
 * Final for the meter: METER_REFUSED (another 4.xx to an offer, e.g. 4.13:
 * the image does not fit), BAD_ANSWER (not the protocol of docs/firmware.md).
 */
export type FirmwarePortErrorCode = 'COMM_TIMEOUT_ERR' | 'NOT_REGISTERED' | 'METER_BUSY' | 'QUEUE_FULL' | 'METER_REFUSED' | 'BAD_ANSWER' | 'ABORTED';

export class FirmwarePortError extends Error {
  override readonly name = 'FirmwarePortError';
  constructor(
    readonly code: FirmwarePortErrorCode,
    message: string,
  ) {
    super(message);
  }

  get transient(): boolean {
    return this.code === 'COMM_TIMEOUT_ERR' || this.code === 'NOT_REGISTERED' || this.code === 'METER_BUSY' || this.code === 'QUEUE_FULL';
  }
}

// ---------------------------------------------------------------------------
// The rules a rollout request follows, for the service and the admin API alike.

export const MAX_ROLLOUT_METERS = 100_000;
export const MAX_ROLLOUT_CONCURRENCY = 1024;
/** The registry's endpoint names are at most 63 characters (RFC 9176 leaves the limit to the directory). */
export const MAX_METER_NAME_CHARS = 63;
export const MAX_ROLLOUT_ID_CHARS = 128;
/** A rollout id: no '!' (the journal's key separator), nothing a URL path would need to escape. */
export const ROLLOUT_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
/** C0 and C1 control characters and DEL: they would corrupt tables, logs and the journal's keys. */
const CONTROL = /\p{Cc}/u;

/** A value for a message: short, and never the whole of something huge. */
export function showValue(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    // A BigInt, a cycle, an object without a prototype (no toString): its kind, then.
    text = Object.prototype.toString.call(value);
  }
  // Control characters are escaped by JSON.stringify; the cut keeps messages one short line.
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** Why `name` is not a meter name, or undefined when it is one. */
export function meterNameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string') return `must be a meter name (a string), got ${showValue(name)}`;
  if (name.length === 0) return 'must be a meter name, not empty';
  if (name.length > MAX_METER_NAME_CHARS) return `must be at most ${MAX_METER_NAME_CHARS} characters, got ${name.length}`;
  if (CONTROL.test(name)) return `${showValue(name)} contains a control character`;
  return undefined;
}
