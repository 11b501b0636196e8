/**
 * The relay part of the gateway's admin API, shared by the server (the
 * `ami-relay` config node's routes) and its client (`ami-gateway relay`,
 * `ami-gateway alarms`). Pure: types and request validation.
 *
 *   POST /ami/relay/commands   RelayApiCommandRequest  -> RelayApiCommandResponse
 *   GET  /ami/relay/status     ?meter=ID | ?command=ID | ?run=ID | ?group=TAG=VALUE
 *                                                      -> RelayApiStatusResponse
 *   GET  /ami/alarms           [?meter=ID]             -> RelayApiAlarmsResponse
 *   POST /ami/alarms/reset     RelayApiAlarmResetRequest -> RelayApiAlarmResetResponse
 *
 * Errors are JSON `{ error, code }` (RelayApiErrorCode) with these statuses:
 * 400 BAD_REQUEST / EMPTY_TARGET, 403 OPERATOR_REFUSED (unknown or disabled
 * operator, bad or reused TOTP code, role not allowed or no MFA), 404
 * NO_RELAY (no relay service deployed) / NO_SUCH_ALARM / UNKNOWN (no such
 * command or run for status), 409 ID_CONFLICT,
 * 502 METER_FAILED, 503 NOT_READY. A 401/403 without one of these codes is
 * the admin API's own authentication.
 */
import { RELAY_ACTIONS, RELAY_ALARM_CODES, type RelayAction, type RelayAlarm, type RelayAlarmCode, type RelayResult } from './types.js';

export type RelayApiErrorCode =
  | 'BAD_REQUEST'
  | 'EMPTY_TARGET'
  | 'OPERATOR_REFUSED'
  | 'NO_RELAY'
  | 'NO_SUCH_ALARM'
  | 'UNKNOWN'
  | 'ID_CONFLICT'
  | 'METER_FAILED'
  | 'NOT_READY';

export interface RelayApiError {
  error: string;
  code: RelayApiErrorCode;
}

/** A group of meters: registry tag `tag` (e.g. feeder, cell) equal to `value`. */
export interface RelayGroupSelector {
  tag: string;
  value: string;
}

export interface RelayApiCommandRequest {
  action: RelayAction;
  /** Exactly one of meter, meters, group. */
  meter?: string;
  meters?: string[];
  group?: RelayGroupSelector;
  /** The local operator (ami-gateway operators add) and the current TOTP code. */
  operator: string;
  totp: string;
  /** Command id (one meter) or run id (several); generated when absent. Repeating it repeats nothing. */
  id?: string;
  /** Seconds the command stays valid (default 3600, at most 7 days). */
  validSeconds?: number;
  /** Meters at once for a list or group (default: the relay service's concurrency). */
  concurrency?: number;
}

export interface RelayApiCommandResponse {
  /** The run id (several meters) or the command id (one). */
  id: string;
  /** One result per meter, in the order of the meters: final, or waiting (DEFERRED, COMM_TIMEOUT_ERR). */
  results: RelayResult[];
  byCode: Record<string, number>;
  /** Every command has a final outcome. */
  finished: boolean;
}

/** One command as the status route shows it (from the journal). */
export interface RelayStatusEntry {
  id: string;
  meter: string;
  action: RelayAction;
  phase: 'accepted' | 'deferred' | 'pending' | 'actuating' | 'done';
  operator: string;
  source: 'hes' | 'local';
  /** The last result's code (final or waiting), absent before the first. */
  code?: string;
  final: boolean;
  detail?: string;
  reason?: string;
  retryAt?: number;
  runId?: string;
  notAfter: number;
  createdAt: number;
  updatedAt: number;
}

export interface RelayApiStatusResponse {
  entries: RelayStatusEntry[];
  /** Standing alarms of the meters concerned. */
  alarms: RelayAlarm[];
  /** For ?run=: progress of the run. */
  run?: { id: string; total: number; finished: boolean; byCode: Record<string, number> };
}

export interface RelayApiAlarmsResponse {
  alarms: RelayAlarm[];
}

export interface RelayApiAlarmResetRequest {
  meter: string;
  code: RelayAlarmCode;
  operator: string;
  totp: string;
}

export interface RelayApiAlarmResetResponse {
  cleared: RelayAlarm;
  /**
   * Whether the meter's own alarm register was cleared too: true for TAMPER
   * when the meter port can write it (a failure is 502 METER_FAILED and the
   * alarm stays); false for alarms that live only in the gateway (a weld).
   */
  meterCleared: boolean;
}

export class RelayApiRequestError extends Error {
  override readonly name = 'RelayApiRequestError';
  constructor(
    readonly code: RelayApiErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export const DEFAULT_VALID_SECONDS = 3600;
export const MAX_VALID_SECONDS = 7 * 24 * 3600;
export const MAX_METERS_PER_REQUEST = 100_000;
export const MAX_CONCURRENCY = 1024;
const NAME = /^[\x21-\x7e]{1,128}$/;
const TAG_NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;

/** Parses `feeder=F12` (or `cell=...`, `tag.x=...`) into a group selector; throws RelayApiRequestError. */
export function parseGroupSelector(text: string): RelayGroupSelector {
  const at = text.indexOf('=');
  if (at <= 0 || at === text.length - 1) throw new RelayApiRequestError('BAD_REQUEST', `group must be TAG=VALUE (e.g. feeder=F12), got "${text}"`);
  const tag = text.slice(0, at).replace(/^tag\./, '');
  const value = text.slice(at + 1);
  if (!TAG_NAME.test(tag)) throw new RelayApiRequestError('BAD_REQUEST', `group tag "${tag}" is not a tag name`);
  if (value.length > 256) throw new RelayApiRequestError('BAD_REQUEST', 'group value too long');
  return { tag, value };
}

/** Validates a POST /ami/relay/commands body; throws RelayApiRequestError BAD_REQUEST. */
export function parseCommandRequest(body: unknown): RelayApiCommandRequest {
  const bad = (why: string): never => {
    throw new RelayApiRequestError('BAD_REQUEST', why);
  };
  if (typeof body !== 'object' || body === null || Array.isArray(body)) bad('the body must be a JSON object');
  const b = body as Record<string, unknown>;
  if (!RELAY_ACTIONS.includes(b.action as RelayAction)) bad('action must be disconnect or reconnect');
  const targets = ['meter', 'meters', 'group'].filter((k) => b[k] !== undefined);
  if (targets.length !== 1) bad('give exactly one of meter, meters, group');
  const out: RelayApiCommandRequest = { action: b.action as RelayAction, operator: '', totp: '' };
  if (b.meter !== undefined) {
    if (typeof b.meter !== 'string' || !NAME.test(b.meter)) bad('meter must be an endpoint name (1-128 printable characters)');
    out.meter = b.meter as string;
  }
  if (b.meters !== undefined) {
    if (!Array.isArray(b.meters) || b.meters.length === 0 || b.meters.length > MAX_METERS_PER_REQUEST) bad(`meters must be a list of 1-${MAX_METERS_PER_REQUEST} endpoint names`);
    for (const m of b.meters as unknown[]) if (typeof m !== 'string' || !NAME.test(m)) bad(`meters: "${String(m)}" is not an endpoint name`);
    out.meters = [...new Set(b.meters as string[])];
  }
  if (b.group !== undefined) {
    const g = b.group as Record<string, unknown>;
    if (typeof g === 'string') out.group = parseGroupSelector(g);
    else if (typeof g !== 'object' || g === null || typeof g.tag !== 'string' || typeof g.value !== 'string') bad('group must be {tag, value} or "TAG=VALUE"');
    else out.group = parseGroupSelector(`${g.tag}=${g.value}`);
  }
  if (typeof b.operator !== 'string' || b.operator.trim() === '' || b.operator.length > 128) bad('operator is required');
  if (typeof b.totp !== 'string' || !/^\d{6,8}$/.test(b.totp)) bad('totp must be the operator\'s current code (6-8 digits)');
  out.operator = b.operator as string;
  out.totp = b.totp as string;
  if (b.id !== undefined) {
    if (typeof b.id !== 'string' || !/^[\x21-\x7e]{1,100}$/.test(b.id)) bad('id must be 1-100 printable characters without spaces');
    out.id = b.id as string;
  }
  if (b.validSeconds !== undefined) {
    if (!Number.isInteger(b.validSeconds) || (b.validSeconds as number) < 1 || (b.validSeconds as number) > MAX_VALID_SECONDS) bad(`validSeconds must be a whole number 1-${MAX_VALID_SECONDS}`);
    out.validSeconds = b.validSeconds as number;
  }
  if (b.concurrency !== undefined) {
    if (!Number.isInteger(b.concurrency) || (b.concurrency as number) < 1 || (b.concurrency as number) > MAX_CONCURRENCY) bad(`concurrency must be a whole number 1-${MAX_CONCURRENCY}`);
    out.concurrency = b.concurrency as number;
  }
  return out;
}

/** Validates a POST /ami/alarms/reset body; throws RelayApiRequestError BAD_REQUEST. */
export function parseAlarmResetRequest(body: unknown): RelayApiAlarmResetRequest {
  const bad = (why: string): never => {
    throw new RelayApiRequestError('BAD_REQUEST', why);
  };
  if (typeof body !== 'object' || body === null || Array.isArray(body)) bad('the body must be a JSON object');
  const b = body as Record<string, unknown>;
  if (typeof b.meter !== 'string' || !NAME.test(b.meter)) bad('meter must be an endpoint name');
  if (!RELAY_ALARM_CODES.includes(b.code as RelayAlarmCode)) bad(`code must be one of ${RELAY_ALARM_CODES.join(', ')}`);
  if (typeof b.operator !== 'string' || b.operator.trim() === '' || b.operator.length > 128) bad('operator is required');
  if (typeof b.totp !== 'string' || !/^\d{6,8}$/.test(b.totp)) bad('totp must be the operator\'s current code (6-8 digits)');
  return { meter: b.meter as string, code: b.code as RelayAlarmCode, operator: b.operator as string, totp: b.totp as string };
}
