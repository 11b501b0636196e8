import { parseArgs } from 'node:util';
import {
  MAX_CONCURRENCY,
  MAX_METERS_PER_REQUEST,
  MAX_VALID_SECONDS,
  parseGroupSelector,
  RelayApiRequestError,
  type RelayApiAlarmResetRequest,
  type RelayApiAlarmResetResponse,
  type RelayApiAlarmsResponse,
  type RelayApiCommandRequest,
  type RelayApiCommandResponse,
  type RelayApiError,
  type RelayApiStatusResponse,
  type RelayGroupSelector,
  type RelayStatusEntry,
} from '../relay/api.js';
import { RELAY_ALARM_CODES, type RelayAction, type RelayAlarm, type RelayAlarmCode, type RelayResult } from '../relay/types.js';
import { adminRequest, AdminRequestTimeoutError, networkErrorText } from './admin-http.js';
import { bearerToken, KeysUsageError } from './cli-keys.js';

/**
 * `ami-gateway relay disconnect|reconnect|status` and `ami-gateway alarms
 * list|reset`: clients of the running gateway's admin API (src/relay/api.ts:
 * POST /ami/relay/commands, GET /ami/relay/status, GET /ami/alarms, POST
 * /ami/alarms/reset). --user / AMI_ADMIN_TOKEN as for `keys`. The operator's
 * TOTP code is sent in the request body and never printed.
 */
export class RelayUsageError extends Error {
  override readonly name = 'RelayUsageError';
}

export interface RelayCommandResult {
  exitCode: number;
  output: string;
}

/** Exit codes of `relay` and `alarms`. */
export const RELAY_EXIT = { ok: 0, failed: 1, usage: 2, unreachable: 3, waiting: 4 } as const;

/** A disconnect of a whole feeder runs meter after meter: the answer may take long. */
const COMMAND_TIMEOUT_MS = 15 * 60_000;
const QUERY_TIMEOUT_MS = 30_000;
const NAME = /^[\x21-\x7e]{1,128}$/;
const ID = /^[\x21-\x7e]{1,100}$/;
const TOTP = /^\d{6,8}$/;
const WAITING_CODES: readonly string[] = ['DEFERRED', 'COMM_TIMEOUT_ERR'];

type Values = Partial<Record<string, string | boolean>>;

const OPTIONS = {
  meter: { type: 'string' },
  meters: { type: 'string' },
  group: { type: 'string' },
  command: { type: 'string' },
  run: { type: 'string' },
  operator: { type: 'string' },
  totp: { type: 'string' },
  code: { type: 'string' },
  id: { type: 'string' },
  valid: { type: 'string' },
  concurrency: { type: 'string' },
  json: { type: 'boolean' },
  url: { type: 'string' },
  user: { type: 'string' },
} as const;

const COMMON = ['json', 'url', 'user'];
const RELAY_ALLOWED: Record<'disconnect' | 'reconnect' | 'status', readonly string[]> = {
  disconnect: ['meter', 'meters', 'group', 'operator', 'totp', 'id', 'valid', 'concurrency', ...COMMON],
  reconnect: ['meter', 'meters', 'group', 'operator', 'totp', 'id', 'valid', 'concurrency', ...COMMON],
  status: ['meter', 'command', 'run', 'group', ...COMMON],
};
const ALARMS_ALLOWED: Record<'list' | 'reset', readonly string[]> = {
  list: ['meter', ...COMMON],
  reset: ['meter', 'code', 'operator', 'totp', ...COMMON],
};

/**
 * `relay disconnect|reconnect|status ...`. Exit codes: 0 every meter
 * RELAY_OP_SUCCESS (status: shown), 1 a final failure or a refusal (operator,
 * no relay service, ...), 2 usage (RelayUsageError is thrown, before any
 * request), 3 unreachable or the admin API's authentication refused,
 * 4 nothing failed but some commands wait (DEFERRED, COMM_TIMEOUT_ERR: the
 * gateway keeps them and runs them later).
 */
export async function relayCommand(args: string[], httpPort: number): Promise<RelayCommandResult> {
  const [action, ...rest] = args;
  if (action !== 'disconnect' && action !== 'reconnect' && action !== 'status') {
    throw new RelayUsageError(`unknown relay command "${action ?? ''}": expected disconnect, reconnect or status`);
  }
  const values = parse(rest, RELAY_ALLOWED[action], `relay ${action}`);
  const base = baseUrl(values, httpPort);
  if (action === 'status') {
    const query = statusQuery(values);
    const reply = await call(base, values, 'GET', `/ami/relay/status?${query.toString()}`, undefined, QUERY_TIMEOUT_MS);
    if ('exitCode' in reply) return reply;
    const body = reply.body as RelayApiStatusResponse;
    if (!Array.isArray(body?.entries) || !Array.isArray(body.alarms)) return notAReport('relay status');
    if (values.json === true) return { exitCode: RELAY_EXIT.ok, output: JSON.stringify(body, null, 2) };
    return { exitCode: RELAY_EXIT.ok, output: formatStatus(body, describeQuery(query)) };
  }
  const request = commandRequest(action, values);
  const reply = await call(base, values, 'POST', '/ami/relay/commands', request, COMMAND_TIMEOUT_MS, request.totp, () => statusHint(request));
  if ('exitCode' in reply) return reply;
  const body = reply.body as RelayApiCommandResponse;
  if (typeof body?.id !== 'string' || !Array.isArray(body.results)) return notAReport('relay command');
  const exitCode = commandExitCode(body.results);
  if (values.json === true) return { exitCode, output: JSON.stringify(body, null, 2) };
  return { exitCode, output: formatCommandResponse(request, body) };
}

/**
 * `alarms list|reset ...`. Exit codes: 0 listed / cleared, 1 refused (operator),
 * no such alarm, the meter's register could not be cleared, no relay service;
 * 2 usage (thrown), 3 unreachable or the admin API's authentication refused.
 */
export async function alarmsCommand(args: string[], httpPort: number): Promise<RelayCommandResult> {
  const [action, ...rest] = args;
  if (action !== 'list' && action !== 'reset') throw new RelayUsageError(`unknown alarms command "${action ?? ''}": expected list or reset`);
  const values = parse(rest, ALARMS_ALLOWED[action], `alarms ${action}`);
  const base = baseUrl(values, httpPort);
  if (action === 'list') {
    const given = str(values, 'meter');
    const meter = given === undefined ? undefined : meterName('--meter', given);
    const reply = await call(base, values, 'GET', `/ami/alarms${meter === undefined ? '' : `?${new URLSearchParams({ meter }).toString()}`}`, undefined, QUERY_TIMEOUT_MS);
    if ('exitCode' in reply) return reply;
    const body = reply.body as RelayApiAlarmsResponse;
    if (!Array.isArray(body?.alarms)) return notAReport('alarm list');
    if (values.json === true) return { exitCode: RELAY_EXIT.ok, output: JSON.stringify(body, null, 2) };
    return { exitCode: RELAY_EXIT.ok, output: body.alarms.length === 0 ? `no standing alarms${meter === undefined ? '' : ` on ${meter}`}` : formatAlarms(body.alarms) };
  }
  const given = str(values, 'meter');
  if (given === undefined) throw new RelayUsageError('--meter is required');
  const meter = meterName('--meter', given);
  const code = str(values, 'code');
  if (code === undefined) throw new RelayUsageError(`--code is required (${RELAY_ALARM_CODES.join(' or ')})`);
  if (!(RELAY_ALARM_CODES as readonly string[]).includes(code)) throw new RelayUsageError(`--code must be ${RELAY_ALARM_CODES.join(' or ')}, got "${code}"`);
  const request: RelayApiAlarmResetRequest = { meter, code: code as RelayAlarmCode, ...credentials(values) };
  const reply = await call(base, values, 'POST', '/ami/alarms/reset', request, QUERY_TIMEOUT_MS, request.totp);
  if ('exitCode' in reply) return reply;
  const body = reply.body as RelayApiAlarmResetResponse;
  if (typeof body?.cleared !== 'object' || body.cleared === null) return notAReport('alarm reset');
  if (values.json === true) return { exitCode: RELAY_EXIT.ok, output: JSON.stringify(body, null, 2) };
  const c = body.cleared;
  const register =
    c.code === 'TAMPER'
      ? body.meterCleared
        ? "the meter's alarm register was cleared too"
        : "the meter's own alarm register was not cleared (the meter port cannot)"
      : undefined;
  return {
    exitCode: RELAY_EXIT.ok,
    output: [`cleared ${c.code} on ${c.meter} (raised ${isoTime(c.raisedAt)}, ${c.source}: ${c.detail})`, ...(register ? [register] : [])].join('\n'),
  };
}

// ---------------------------------------------------------------------------
// Arguments

function parse(args: string[], allowed: readonly string[], what: string): Values {
  let parsed;
  try {
    parsed = parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: true });
  } catch (err) {
    // Node's messages quote the offending argument: never let it be the TOTP code.
    throw new RelayUsageError(redact((err as Error).message, totpIn(args)));
  }
  const { values, positionals } = parsed;
  const [extra] = positionals;
  if (extra !== undefined) {
    // Digits alone are probably a code given without --totp: not quoted either.
    throw new RelayUsageError(TOTP.test(extra) ? 'unexpected argument (a code? give it as --totp CODE)' : redact(`unexpected argument "${extra}"`, totpIn(args)));
  }
  for (const option of Object.keys(values)) {
    if (!allowed.includes(option)) throw new RelayUsageError(`${what} takes no --${option}`);
  }
  return values as Values;
}

/** The value given to --totp, whatever the rest of the arguments (for redaction). */
function totpIn(args: string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--totp') return args[i + 1];
    if (arg.startsWith('--totp=')) return arg.slice('--totp='.length);
  }
  return undefined;
}

function redact(text: string, secret: string | undefined): string {
  if (!secret) return text;
  return text.split(secret).join('<totp>');
}

function str(values: Values, key: string): string | undefined {
  const value = values[key];
  return typeof value === 'string' ? value : undefined;
}

function baseUrl(values: Values, httpPort: number): string {
  const url = str(values, 'url');
  if (url !== undefined && !/^https?:\/\/[^/]/i.test(url)) throw new RelayUsageError(`--url must be http://HOST:PORT or https://..., got "${url}"`);
  return (url ?? `http://127.0.0.1:${httpPort}`).replace(/\/+$/, '');
}

function meterName(option: string, value: string): string {
  if (!NAME.test(value)) throw new RelayUsageError(`${option}: "${value}" is not an endpoint name (1-128 printable characters, no spaces)`);
  return value;
}

function group(value: string): RelayGroupSelector {
  try {
    return parseGroupSelector(value);
  } catch (err) {
    if (err instanceof RelayApiRequestError) throw new RelayUsageError(`--group: ${err.message}`);
    throw err;
  }
}

function wholeNumber(option: string, value: string | undefined, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > max) throw new RelayUsageError(`${option} must be a whole number 1-${max}, got "${value}"`);
  return Number(value);
}

function credentials(values: Values): { operator: string; totp: string } {
  const operator = str(values, 'operator');
  if (operator === undefined || operator.trim() === '') throw new RelayUsageError('--operator is required (a local operator: ami-gateway operators add)');
  if (operator.length > 128) throw new RelayUsageError('--operator: at most 128 characters');
  const totp = str(values, 'totp');
  if (totp === undefined || totp === '') throw new RelayUsageError("--totp is required (the operator's current code)");
  // Not quoted: the code is a credential.
  if (!TOTP.test(totp)) throw new RelayUsageError("--totp must be the operator's current code: 6 to 8 digits");
  return { operator, totp };
}

function commandRequest(action: RelayAction, values: Values): RelayApiCommandRequest {
  const targets = ['meter', 'meters', 'group'].filter((k) => values[k] !== undefined);
  if (targets.length !== 1) {
    throw new RelayUsageError(
      targets.length === 0 ? 'give the meters: --meter ID, --meters ID,ID,... or --group TAG=VALUE' : `give one of --meter, --meters, --group, not ${targets.map((t) => `--${t}`).join(' and ')}`,
    );
  }
  const request: RelayApiCommandRequest = { action, operator: '', totp: '' };
  const meter = str(values, 'meter');
  const meters = str(values, 'meters');
  const groupText = str(values, 'group');
  if (meter !== undefined) request.meter = meterName('--meter', meter);
  if (meters !== undefined) {
    const list = meters.split(',').map((m) => m.trim());
    if (list.some((m) => m === '')) throw new RelayUsageError('--meters: a comma-separated list of endpoint names, without empty entries');
    for (const m of list) meterName('--meters', m);
    const unique = [...new Set(list)];
    if (unique.length > MAX_METERS_PER_REQUEST) throw new RelayUsageError(`--meters: at most ${MAX_METERS_PER_REQUEST} meters (use --group)`);
    request.meters = unique;
  }
  if (groupText !== undefined) request.group = group(groupText);
  const id = str(values, 'id');
  if (id !== undefined && !ID.test(id)) throw new RelayUsageError('--id must be 1-100 printable characters without spaces');
  const validSeconds = wholeNumber('--valid', str(values, 'valid'), MAX_VALID_SECONDS);
  const concurrency = wholeNumber('--concurrency', str(values, 'concurrency'), MAX_CONCURRENCY);
  Object.assign(request, credentials(values));
  if (id !== undefined) request.id = id;
  if (validSeconds !== undefined) request.validSeconds = validSeconds;
  if (concurrency !== undefined) request.concurrency = concurrency;
  return request;
}

function statusQuery(values: Values): URLSearchParams {
  const given = ['meter', 'command', 'run', 'group'].filter((k) => values[k] !== undefined);
  if (given.length !== 1) {
    throw new RelayUsageError(
      given.length === 0 ? 'give one of --meter ID, --command ID, --run ID, --group TAG=VALUE' : `give one of --meter, --command, --run, --group, not ${given.map((t) => `--${t}`).join(' and ')}`,
    );
  }
  const key = given[0]!;
  const value = str(values, key)!;
  if (key === 'meter') return new URLSearchParams({ meter: meterName('--meter', value) });
  if (key === 'group') {
    const g = group(value);
    return new URLSearchParams({ group: `${g.tag}=${g.value}` });
  }
  if (!NAME.test(value)) throw new RelayUsageError(`--${key} must be 1-128 printable characters without spaces`);
  return new URLSearchParams({ [key]: value });
}

function describeQuery(query: URLSearchParams): string {
  const [entry] = [...query.entries()];
  return entry ? `${entry[0]} ${entry[1]}` : '';
}

function statusHint(request: RelayApiCommandRequest): string {
  if (request.id !== undefined) return `ami-gateway relay status --${request.meter !== undefined ? 'command' : 'run'} ${request.id}`;
  if (request.meter !== undefined) return `ami-gateway relay status --meter ${request.meter}`;
  if (request.group !== undefined) return `ami-gateway relay status --group ${request.group.tag}=${request.group.value}`;
  return 'ami-gateway relay status --meter ID';
}

// ---------------------------------------------------------------------------
// HTTP

interface Reply {
  status: number;
  body: unknown;
}

/**
 * One request to the admin API (adminRequest: not fetch, a group's
 * disconnect may answer after more than 300 s). Resolves with the parsed
 * JSON body of a 2xx answer, or with the command's result for anything else.
 */
async function call(
  base: string,
  values: Values,
  method: 'GET' | 'POST',
  route: string,
  body: unknown,
  timeoutMs: number,
  totp?: string,
  hint?: () => string,
): Promise<Reply | RelayCommandResult> {
  let token: string | undefined;
  try {
    token = await bearerToken(base, str(values, 'user'));
  } catch (err) {
    if (err instanceof KeysUsageError) throw new RelayUsageError(err.message);
    return { exitCode: RELAY_EXIT.unreachable, output: `ami-gateway: cannot reach ${base}: ${networkErrorText(err)}` };
  }
  let reply: { status: number; text: string };
  try {
    reply = await adminRequest(`${base}${route}`, method, token, body === undefined ? undefined : JSON.stringify(body), timeoutMs);
  } catch (err) {
    if (err instanceof AdminRequestTimeoutError && hint) {
      return { exitCode: RELAY_EXIT.unreachable, output: `ami-gateway: ${base}: ${err.message}; the gateway keeps the commands it accepted: see ${hint()}` };
    }
    return { exitCode: RELAY_EXIT.unreachable, output: `ami-gateway: cannot reach ${base}: ${networkErrorText(err)}` };
  }
  let json: unknown;
  try {
    json = reply.text === '' ? undefined : JSON.parse(reply.text);
  } catch {
    json = undefined;
  }
  if (reply.status >= 200 && reply.status < 300) {
    if (json === undefined) return { exitCode: RELAY_EXIT.unreachable, output: `ami-gateway: ${base} did not answer with JSON (HTTP ${reply.status})` };
    return { status: reply.status, body: json };
  }
  return errorResult(base, route, reply.status, json, totp);
}

function errorResult(base: string, route: string, status: number, json: unknown, totp: string | undefined): RelayCommandResult {
  const error = typeof json === 'object' && json !== null ? (json as Partial<RelayApiError>) : undefined;
  const code = typeof error?.code === 'string' ? error.code : undefined;
  const message = typeof error?.error === 'string' ? redact(error.error, totp) : undefined;
  const failed = (text: string): RelayCommandResult => ({ exitCode: RELAY_EXIT.failed, output: `ami-gateway: ${text}` });
  if (code === 'OPERATOR_REFUSED') return failed(`operator refused: ${message ?? `HTTP ${status}`}`);
  if (status === 401 || status === 403) {
    return { exitCode: RELAY_EXIT.unreachable, output: `ami-gateway: ${base} refused the request (HTTP ${status}): set AMI_ADMIN_TOKEN or --user` };
  }
  if (code === 'NO_RELAY') return failed(`${base} has no relay service deployed (an ami-relay config node)${message ? `: ${message}` : ''}`);
  if (status === 404 && code === undefined) {
    return { exitCode: RELAY_EXIT.unreachable, output: `ami-gateway: ${base} has no ${route.split('?')[0]} (not an ami-gateway, or an older version)` };
  }
  return failed(`${base} answered HTTP ${status}${code ? ` ${code}` : ''}${message ? `: ${message}` : ''}`);
}

function notAReport(what: string): RelayCommandResult {
  return { exitCode: RELAY_EXIT.unreachable, output: `ami-gateway: the reply is not a ${what} report` };
}

// ---------------------------------------------------------------------------
// Output

export function commandExitCode(results: RelayResult[]): number {
  if (results.length === 0) return RELAY_EXIT.failed;
  if (results.every((r) => r.code === 'RELAY_OP_SUCCESS')) return RELAY_EXIT.ok;
  if (results.some((r) => r.code !== 'RELAY_OP_SUCCESS' && !WAITING_CODES.includes(r.code))) return RELAY_EXIT.failed;
  return RELAY_EXIT.waiting;
}

/** What happened to one meter, in words. */
export function resultDetail(r: RelayResult): string {
  const extra = (text: string | undefined): string => (text ? `: ${text}` : '');
  switch (r.code) {
    case 'RELAY_OP_SUCCESS': {
      if (r.idempotent) return 'confirmed without actuation';
      const done = r.action === 'disconnect' ? 'disconnected' : 'reconnected';
      const attempts = (r.attempts ?? 1) > 1 ? ` after ${r.attempts} invokes` : '';
      return `${done}${attempts}${r.resumed ? ' (resumed after a restart)' : ''}`;
    }
    case 'DEFERRED': {
      const until = r.retryAt === undefined ? '' : ` until ${isoTime(r.retryAt)}`;
      return `deferred (${r.reason ?? 'unknown reason'})${until}${extra(r.detail)}`;
    }
    case 'COMM_TIMEOUT_ERR':
      return `no answer from the meter, tried again when it is back${extra(r.detail)}`;
    case 'RELAY_WELD_DETECTED': {
      const volts = r.loadVoltage === undefined ? '' : ` (${r.loadVoltage} V on the load side)`;
      return `relay welded${volts}: alarm raised, needs a site visit${extra(r.detail)}`;
    }
    default:
      return r.detail ?? r.code;
  }
}

function formatCommandResponse(request: RelayApiCommandRequest, body: RelayApiCommandResponse): string {
  const one = request.meter !== undefined;
  const lines = [`${request.action} ${one ? 'command' : 'run'} ${body.id}: ${body.results.length} meter${body.results.length === 1 ? '' : 's'}`];
  const meterWidth = Math.max(5, ...body.results.map((r) => r.meter.length));
  const codeWidth = Math.max(4, ...body.results.map((r) => r.code.length));
  for (const r of body.results) lines.push(`${r.meter.padEnd(meterWidth)}  ${r.code.padEnd(codeWidth)}  ${resultDetail(r)}`);
  const byCode = body.byCode && typeof body.byCode === 'object' ? body.byCode : countByCode(body.results);
  lines.push(`summary: ${formatByCode(byCode)}`);
  const waiting = body.results.filter((r) => WAITING_CODES.includes(r.code)).length;
  if (waiting > 0) {
    lines.push(`${waiting} waiting: the gateway keeps ${waiting === 1 ? 'it' : 'them'} and runs ${waiting === 1 ? 'it' : 'them'} later (ami-gateway relay status --${one ? 'command' : 'run'} ${body.id})`);
  }
  return lines.join('\n');
}

function countByCode(results: RelayResult[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of results) out[r.code] = (out[r.code] ?? 0) + 1;
  return out;
}

function formatByCode(byCode: Record<string, number>): string {
  const entries = Object.entries(byCode).filter(([, n]) => n > 0);
  return entries.length === 0 ? 'none' : entries.map(([code, n]) => `${code} ${n}`).join(', ');
}

function formatStatus(body: RelayApiStatusResponse, what: string): string {
  const lines: string[] = [];
  if (body.run) {
    lines.push(`run ${body.run.id}: ${body.run.total} meters, ${body.run.finished ? 'finished' : 'in progress'}; ${formatByCode(body.run.byCode)}`);
  }
  if (body.entries.length === 0) lines.push(`no relay commands for ${what}`);
  else lines.push(...table(['id', 'meter', 'action', 'phase', 'code', 'operator', 'updated'], body.entries.map(statusRow)));
  lines.push('');
  lines.push(...(body.alarms.length === 0 ? ['no standing alarms'] : ['standing alarms:', formatAlarms(body.alarms)]));
  return lines.join('\n');
}

function statusRow(e: RelayStatusEntry): string[] {
  const code = e.code === 'DEFERRED' && e.reason ? `DEFERRED (${e.reason})` : (e.code ?? '-');
  return [e.id, e.meter, e.action, e.phase, code, e.operator, isoTime(e.updatedAt)];
}

function formatAlarms(alarms: RelayAlarm[]): string {
  return table(
    ['meter', 'code', 'raised', 'source', 'detail'],
    alarms.map((a) => [a.meter, a.code, isoTime(a.raisedAt), a.source, `${a.detail}${a.commandId ? ` (command ${a.commandId})` : ''}`]),
  ).join('\n');
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

function isoTime(ms: number): string {
  return Number.isFinite(ms) ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : '-';
}
