/**
 * The firmware part of the gateway's admin API (issue 9), shared by the
 * server (nodes/shared/firmware-route.ts, for the `ami-firmware` config node)
 * and its client (`ami-gateway firmware rollout|status`). Pure: types and
 * request validation.
 *
 *   GET  /ami/firmware/images          -> FirmwareApiImagesResponse
 *   POST /ami/firmware/rollouts        FirmwareApiRolloutRequest -> 202 FirmwareApiRolloutResponse
 *   GET  /ami/firmware/rollouts        -> FirmwareApiRolloutsResponse (newest first)
 *   GET  /ami/firmware/rollouts/:id    -> FirmwareApiRolloutStatusResponse
 *
 * Errors are JSON `{ error, code }` (FirmwareApiErrorCode): 400 BAD_REQUEST /
 * EMPTY_TARGET (a group no registered meter is in), 404 NO_FIRMWARE (no
 * `ami-firmware` node deployed) / UNKNOWN (no such rollout), 503 NOT_READY
 * (the service is still opening or failed to: the message says why). A
 * 401/403 without one of these codes is the admin API's own authentication.
 */
import { isFirmwareVersion, type FirmwareTarget } from './manifest.js';
import type { FirmwareImage } from './repository.js';
import {
  MAX_ROLLOUT_CONCURRENCY,
  MAX_ROLLOUT_ID_CHARS,
  MAX_ROLLOUT_METERS,
  meterNameProblem,
  ROLLOUT_ID_PATTERN,
  showValue,
  type MeterRolloutEntry,
  type RolloutSummary,
} from './rollout-types.js';
import { parseGroupSelector as parseRelayGroupSelector, RelayApiRequestError, type RelayGroupSelector } from '../relay/api.js';

export type FirmwareApiErrorCode = 'BAD_REQUEST' | 'EMPTY_TARGET' | 'NO_FIRMWARE' | 'UNKNOWN' | 'NOT_READY';

export interface FirmwareApiError {
  error: string;
  code: FirmwareApiErrorCode;
}

/** A group of meters: registry tag `tag` (feeder, cell, ...) equal to `value`; the same selector as the relay API's. */
export type FirmwareGroupSelector = RelayGroupSelector;

export interface FirmwareApiRolloutRequest {
  /** The wanted versions: at least one of comm and metro. */
  comm?: string;
  metro?: string;
  /** Exactly one of meter, meters, group. */
  meter?: string;
  /** Without repeats (the parser drops them, keeping the first). */
  meters?: string[];
  group?: FirmwareGroupSelector;
  /** Meters updating at once in this rollout (the service caps it service-wide). */
  concurrency?: number;
  /** The rollout id; generated when absent. Starting the same id again returns the existing rollout. */
  id?: string;
}

export interface FirmwareApiRolloutResponse {
  rollout: RolloutSummary;
}

export interface FirmwareApiRolloutsResponse {
  /** Newest first. */
  rollouts: RolloutSummary[];
}

export interface FirmwareApiRolloutStatusResponse {
  rollout: RolloutSummary;
  meters: MeterRolloutEntry[];
}

/** A verified image, as the images route lists it. */
export interface FirmwareApiImage {
  id: string;
  target: FirmwareTarget;
  version: string;
  models: string[];
  size: number;
  sha256: string;
  vendor: string;
}

/** An image that is never offered, and why. */
export interface FirmwareApiQuarantinedImage {
  id: string;
  code: string;
  reason: string;
}

export interface FirmwareApiImagesResponse {
  images: FirmwareApiImage[];
  quarantined: FirmwareApiQuarantinedImage[];
}

/**
 * A request the API refuses. `fields` are the request fields the refusal is
 * about (a client maps them to its own option names); the message starts
 * with them.
 */
export class FirmwareApiRequestError extends Error {
  override readonly name = 'FirmwareApiRequestError';
  constructor(
    readonly code: FirmwareApiErrorCode,
    readonly fields: readonly string[],
    /** The refusal without the field names, e.g. 'must be a firmware version like 2.1.0, got "x"'. */
    readonly reason: string,
  ) {
    super(fields.length === 0 ? reason : `${fields.join(', ')}: ${reason}`);
  }
}

export { MAX_METER_NAME_CHARS, MAX_ROLLOUT_CONCURRENCY, MAX_ROLLOUT_ID_CHARS, MAX_ROLLOUT_METERS, meterNameProblem } from './rollout-types.js';
const REQUEST_FIELDS: readonly string[] = ['comm', 'metro', 'meter', 'meters', 'group', 'concurrency', 'id'];
const TARGET_FIELDS = ['meter', 'meters', 'group'] as const;

function refuse(fields: string | readonly string[], reason: string): never {
  throw new FirmwareApiRequestError('BAD_REQUEST', typeof fields === 'string' ? [fields] : fields, reason);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Validates a rollout id (the :id of GET /ami/firmware/rollouts/:id, or a request's `id`); throws BAD_REQUEST naming `id`. */
export function parseRolloutId(value: unknown): string {
  if (typeof value !== 'string' || !ROLLOUT_ID_PATTERN.test(value)) {
    refuse('id', `must be 1-${MAX_ROLLOUT_ID_CHARS} characters of A-Z a-z 0-9 . _ : -, got ${showValue(value)}`);
  }
  return value;
}

/**
 * Parses `feeder=F3` (or `cell=C1`, `tag.x=...`) into a group selector with
 * the relay API's rules (a gateway has one notion of a group); throws
 * FirmwareApiRequestError BAD_REQUEST naming `group`.
 */
export function parseGroupSelector(text: string): FirmwareGroupSelector {
  try {
    return parseRelayGroupSelector(text);
  } catch (err) {
    if (err instanceof RelayApiRequestError) refuse('group', err.message.replace(/^group /, ''));
    throw err;
  }
}

function parseGroup(value: unknown): FirmwareGroupSelector {
  if (typeof value === 'string') return parseGroupSelector(value);
  if (!isPlainObject(value) || typeof value.tag !== 'string' || typeof value.value !== 'string') {
    refuse('group', `must be {tag, value} or "TAG=VALUE", got ${showValue(value)}`);
  }
  const extra = Object.keys(value).filter((key) => key !== 'tag' && key !== 'value');
  if (extra.length > 0) refuse('group', `has unknown field ${showValue(extra[0])}`);
  if (value.tag.includes('=')) refuse('group', `tag ${showValue(value.tag)} is not a tag name`);
  return parseGroupSelector(`${value.tag}=${value.value}`);
}

function parseVersion(body: Record<string, unknown>, target: FirmwareTarget): string | undefined {
  const value = body[target];
  if (value === undefined) return undefined;
  if (!isFirmwareVersion(value)) refuse(target, `must be a firmware version like 2.1.0 (2-4 dot-separated numbers), got ${showValue(value)}`);
  return value;
}

function parseMeters(value: unknown): string[] {
  if (!Array.isArray(value)) refuse('meters', `must be a list of meter names, got ${showValue(value)}`);
  if (value.length === 0) refuse('meters', 'must name at least one meter');
  if (value.length > MAX_ROLLOUT_METERS) refuse('meters', `at most ${MAX_ROLLOUT_METERS} meters in one rollout, got ${value.length}`);
  const meters = new Set<string>();
  for (let index = 0; index < value.length; index++) {
    const name: unknown = value[index];
    const problem = meterNameProblem(name);
    if (problem !== undefined) refuse('meters', `entry ${index} ${problem}`);
    meters.add(name as string);
  }
  return [...meters];
}

/**
 * Validates a POST /ami/firmware/rollouts body: a JSON object with only the
 * fields of FirmwareApiRolloutRequest (a misspelt option is refused rather
 * than silently dropped from a firmware rollout), at least one of comm and
 * metro, exactly one of meter, meters and group. Throws
 * FirmwareApiRequestError BAD_REQUEST whose message names the field.
 */
export function parseRolloutRequest(body: unknown): FirmwareApiRolloutRequest {
  if (!isPlainObject(body)) refuse([], `the body must be a JSON object, got ${Array.isArray(body) ? 'a list' : showValue(body)}`);
  const unknown = Object.keys(body).find((key) => !REQUEST_FIELDS.includes(key));
  if (unknown !== undefined) refuse(unknown, `is not a field of a rollout request (${REQUEST_FIELDS.join(', ')})`);

  const request: FirmwareApiRolloutRequest = {};
  const comm = parseVersion(body, 'comm');
  const metro = parseVersion(body, 'metro');
  if (comm === undefined && metro === undefined) refuse(['comm', 'metro'], 'give the wanted version of comm, metro or both');
  if (comm !== undefined) request.comm = comm;
  if (metro !== undefined) request.metro = metro;

  const targets = TARGET_FIELDS.filter((key) => body[key] !== undefined);
  if (targets.length !== 1) {
    refuse(targets.length === 0 ? TARGET_FIELDS : targets, targets.length === 0 ? 'give the meters: one of meter, meters, group' : 'give only one of meter, meters, group');
  }
  if (body.meter !== undefined) {
    const problem = meterNameProblem(body.meter);
    if (problem !== undefined) refuse('meter', problem);
    request.meter = body.meter as string;
  }
  if (body.meters !== undefined) request.meters = parseMeters(body.meters);
  if (body.group !== undefined) request.group = parseGroup(body.group);

  if (body.concurrency !== undefined) {
    const value = body.concurrency;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_ROLLOUT_CONCURRENCY) {
      refuse('concurrency', `must be a whole number 1-${MAX_ROLLOUT_CONCURRENCY}, got ${showValue(value)}`);
    }
    request.concurrency = value;
  }
  if (body.id !== undefined) request.id = parseRolloutId(body.id);
  return request;
}

/** The images route's answer for a repository's images (good ones by their verified manifest, quarantined ones with the reason). */
export function imagesResponse(images: readonly FirmwareImage[]): FirmwareApiImagesResponse {
  const response: FirmwareApiImagesResponse = { images: [], quarantined: [] };
  for (const image of images) {
    if (image.status === 'good') {
      const m = image.manifest;
      response.images.push({ id: image.id, target: m.target, version: m.version, models: [...m.models], size: m.size, sha256: m.sha256, vendor: m.vendor });
    } else {
      response.quarantined.push({ id: image.id, code: image.code, reason: image.reason });
    }
  }
  return response;
}
