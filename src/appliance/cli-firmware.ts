import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import {
  FirmwareApiRequestError,
  parseGroupSelector,
  parseRolloutId,
  parseRolloutRequest,
  type FirmwareApiError,
  type FirmwareApiRolloutRequest,
  type FirmwareApiRolloutResponse,
  type FirmwareApiRolloutsResponse,
  type FirmwareApiRolloutStatusResponse,
} from '../firmware/api.js';
import { FirmwareError } from '../firmware/errors.js';
import { compatibleVersions, otherTarget, type FirmwareManifest } from '../firmware/manifest.js';
import { FirmwareRepository, type FirmwareImage } from '../firmware/repository.js';
import { FIRMWARE_FINAL_CODES, type FirmwareFinalCode, type MeterRolloutEntry, type MeterRolloutPhase, type RolloutSummary } from '../firmware/rollout-types.js';
import { adminRequest, AdminRequestTimeoutError, networkErrorText } from './admin-http.js';
import { bearerToken, KeysUsageError } from './cli-keys.js';

/**
 * `ami-gateway firmware list|verify`: reads and verifies the images folder
 * itself, the same way the gateway does when it loads it (src/firmware), so
 * an operator can check an image before the gateway ever offers it.
 *
 * Exit codes: 0 ok; 1 an image is quarantined (verify), the image asked for
 * does not exist, or the images folder cannot be read; 2 usage.
 * `list` exits 0 whatever the images' status: it reports, verify judges.
 *
 * `ami-gateway firmware rollout|status`: clients of the running gateway's
 * admin API (src/firmware/api.ts), see firmwareGatewayCommand below.
 */
export class FirmwareUsageError extends Error {
  override readonly name = 'FirmwareUsageError';
}

export interface FirmwareCommandContext {
  /** The images folder, unless --images names another. */
  imagesDir: string;
  /** The utility's firmware root CA certificates (PEM texts). */
  trustAnchorsPem: readonly string[];
  /** The clock for certificate validity (tests); default the system clock. */
  now?: () => Date;
}

export interface FirmwareCommandResult {
  exitCode: number;
  output: string;
}

export const FIRMWARE_ACTIONS = ['list', 'verify'] as const;
type Action = (typeof FIRMWARE_ACTIONS)[number];

/** One image as `--json` reports it. */
interface ImageReport {
  id: string;
  status: 'good' | 'quarantined';
  /** false: the fields below are what a quarantined image's manifest claims, unverified. */
  verified: boolean;
  vendor?: string;
  target?: string;
  models?: string[];
  version?: string;
  size?: number;
  sha256?: string;
  compatibleWith?: Record<string, string[]>;
  signer?: { subject: string; serial: string; fingerprint: string; notAfter: string };
  code?: string;
  reason?: string;
}

export async function firmwareCommand(args: readonly string[], context: FirmwareCommandContext): Promise<FirmwareCommandResult> {
  const [action, ...rest] = args;
  if (!FIRMWARE_ACTIONS.includes(action as Action)) {
    throw unknownAction(action);
  }
  let values: { json?: boolean; image?: string; images?: string };
  try {
    ({ values } = parseArgs({ args: [...rest], options: { json: { type: 'boolean' }, image: { type: 'string' }, images: { type: 'string' } }, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new FirmwareUsageError((err as Error).message);
  }
  if (action === 'list' && values.image !== undefined) throw new FirmwareUsageError('--image applies to "firmware verify" only');
  if (values.image === '') throw new FirmwareUsageError('--image needs an image id (as "firmware list" shows it)');

  if (values.images === '') throw new FirmwareUsageError('--images needs the images folder');
  const repository = new FirmwareRepository({ root: values.images !== undefined ? path.resolve(values.images) : context.imagesDir, trustAnchorsPem: context.trustAnchorsPem, ...(context.now ? { now: context.now } : {}) });
  let images: readonly FirmwareImage[];
  try {
    images = await repository.load();
  } catch (err) {
    if (err instanceof FirmwareError) return { exitCode: 1, output: `ami-gateway: ${err.code}: ${err.message}` };
    throw err;
  }

  if (action === 'list') {
    const reports = images.map(report);
    if (values.json) return { exitCode: 0, output: JSON.stringify(summary(repository.root, reports), null, 2) };
    return { exitCode: 0, output: listText(repository.root, reports) };
  }

  let chosen = images;
  if (values.image !== undefined) {
    const id = values.image.replace(/\\/g, '/').replace(/^\/+|\/+$/g, '');
    const image = repository.get(id);
    if (image === undefined) {
      const known = images.map((i) => i.id).join(', ') || 'none';
      return { exitCode: 1, output: `ami-gateway: no image ${JSON.stringify(values.image)} in ${repository.root} (images: ${known})` };
    }
    chosen = [image];
  }
  const reports = chosen.map(report);
  const exitCode = reports.some((r) => r.status === 'quarantined') ? 1 : 0;
  if (values.json) return { exitCode, output: JSON.stringify(summary(repository.root, reports), null, 2) };
  return { exitCode, output: verifyText(repository.root, reports) };
}

function manifestFields(manifest: FirmwareManifest): Pick<ImageReport, 'vendor' | 'target' | 'models' | 'version' | 'size' | 'sha256' | 'compatibleWith'> {
  return {
    vendor: manifest.vendor,
    target: manifest.target,
    models: [...manifest.models],
    version: manifest.version,
    size: manifest.size,
    sha256: manifest.sha256,
    compatibleWith: { [otherTarget(manifest.target)]: [...compatibleVersions(manifest)] },
  };
}

function report(image: FirmwareImage): ImageReport {
  if (image.status === 'good') {
    return { id: image.id, status: 'good', verified: true, ...manifestFields(image.manifest), signer: { ...image.signer } };
  }
  return {
    id: image.id,
    status: 'quarantined',
    verified: false,
    ...(image.claimed === undefined ? {} : manifestFields(image.claimed)),
    code: image.code,
    reason: image.reason,
  };
}

function summary(root: string, reports: ImageReport[]): { imagesDir: string; good: number; quarantined: number; images: ImageReport[] } {
  const good = reports.filter((r) => r.status === 'good').length;
  return { imagesDir: root, good, quarantined: reports.length - good, images: reports };
}

function counts(reports: ImageReport[]): string {
  const good = reports.filter((r) => r.status === 'good').length;
  return `${good} good, ${reports.length - good} quarantined`;
}

/** A plain table: columns padded to their widest cell. */
function table(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  '));
}

function listText(root: string, reports: ImageReport[]): string {
  if (reports.length === 0) return `no firmware images in ${root}`;
  const rows = [['ID', 'STATUS', 'TARGET', 'VERSION', 'MODELS', 'SIZE', 'SHA-256']];
  for (const r of reports) {
    // A quarantined image's fields are what its manifest claims: marked with '?'.
    const mark = r.verified ? '' : '?';
    const cell = (value: string | undefined): string => (value === undefined ? '-' : `${value}${mark}`);
    rows.push([r.id, r.status, cell(r.target), cell(r.version), cell(r.models?.join(',')), cell(r.size?.toString()), cell(r.sha256)]);
  }
  const lines = [`firmware images in ${root} (${counts(reports)})`, ...table(rows)];
  const quarantined = reports.filter((r) => r.status === 'quarantined');
  if (quarantined.length > 0) {
    lines.push('', 'quarantined (never offered; "?" marks what an unverified manifest claims):');
    for (const r of quarantined) lines.push(`  ${r.id}: ${r.code ?? ''}: ${r.reason ?? ''}`);
  }
  return lines.join('\n');
}

function verifyText(root: string, reports: ImageReport[]): string {
  if (reports.length === 0) return `no firmware images in ${root}`;
  const lines = reports.map((r) =>
    r.status === 'good'
      ? `ok    ${r.id}: ${r.target ?? ''} ${r.version ?? ''}, ${r.size ?? 0} bytes, signed by ${JSON.stringify(r.signer?.subject ?? '')} (certificate valid until ${r.signer?.notAfter ?? '?'})`
      : `FAIL  ${r.id}: ${r.code ?? ''}: ${r.reason ?? ''}`,
  );
  lines.push(`${counts(reports)} in ${root}`);
  return lines.join('\n');
}

// ---------------------------------------------------------------------------
// `firmware rollout` and `firmware status`: through the running gateway

export const FIRMWARE_GATEWAY_ACTIONS = ['rollout', 'status'] as const;

/**
 * Exit codes of `firmware rollout|status`: 0 every meter runs the wanted
 * versions (FW_UPDATE_SUCCESS, FW_ALREADY_CURRENT) or, without --wait, the
 * rollout was accepted and nothing has failed yet (status: shown); 1 a meter
 * failed or was refused, or the gateway refused the request (no firmware
 * service, an empty group, no such rollout); 2 usage (FirmwareUsageError is
 * thrown, before any request); 3 unreachable, or the admin API's
 * authentication refused.
 */
export const FIRMWARE_EXIT = { ok: 0, failed: 1, usage: 2, unreachable: 3 } as const;

/** Outcomes after which the meter runs the wanted versions. */
const SUCCESS_CODES: readonly string[] = ['FW_UPDATE_SUCCESS', 'FW_ALREADY_CURRENT'] satisfies FirmwareFinalCode[];
const PHASES: readonly MeterRolloutPhase[] = ['queued', 'checking', 'offering', 'downloading', 'updating', 'verifying', 'done'];
/** The gateway journals every meter of the rollout before it answers: 100 000 meters take a while. */
const START_TIMEOUT_MS = 5 * 60_000;
const QUERY_TIMEOUT_MS = 30_000;
export const DEFAULT_POLL_INTERVAL_MS = 1000;
/** How long --wait keeps asking a gateway it lost: a restarted gateway resumes the rollout from its journal. */
export const DEFAULT_RECONNECT_GRACE_MS = 60_000;

export interface FirmwareGatewayContext {
  /** The admin API's port on this host, unless --url names another gateway. */
  httpPort: number;
  /**
   * Where --wait prints its progress lines as they happen: stdout, or
   * stderr with --json so that stdout stays one JSON document.
   */
  writeLine?: (stream: 'stdout' | 'stderr', line: string) => void;
  /** Between two status requests of --wait. */
  pollIntervalMs?: number;
  reconnectGraceMs?: number;
  now?: () => number;
}

/** `firmware rollout` as parsed: the request body exactly as it is sent. */
export interface RolloutArguments {
  request: FirmwareApiRolloutRequest;
  wait: boolean;
  json: boolean;
  url?: string;
  user?: string;
}

export interface StatusArguments {
  /** One rollout's meters; all rollouts without. */
  rolloutId?: string;
  json: boolean;
  url?: string;
  user?: string;
}

const ROLLOUT_OPTIONS = {
  comm: { type: 'string' },
  metro: { type: 'string' },
  meter: { type: 'string' },
  meters: { type: 'string' },
  group: { type: 'string' },
  concurrency: { type: 'string' },
  id: { type: 'string' },
  wait: { type: 'boolean' },
  json: { type: 'boolean' },
  url: { type: 'string' },
  user: { type: 'string' },
} as const;
const STATUS_OPTIONS = { json: { type: 'boolean' }, url: { type: 'string' }, user: { type: 'string' } } as const;

/** An API refusal in the CLI's terms: the request fields are the options of the same names. */
function usageFromApi(err: FirmwareApiRequestError): FirmwareUsageError {
  return new FirmwareUsageError(err.fields.length === 0 ? err.message : `${err.fields.map((field) => `--${field}`).join(', ')}: ${err.reason}`);
}

function checkUrl(url: string | undefined): string | undefined {
  if (url !== undefined && !/^https?:\/\/[^/]/i.test(url)) throw new FirmwareUsageError(`--url must be http://HOST:PORT or https://..., got "${url}"`);
  return url;
}

/** Parses `firmware rollout` arguments with the API's own validation; throws FirmwareUsageError. */
export function parseRolloutArguments(args: readonly string[]): RolloutArguments {
  let values;
  try {
    ({ values } = parseArgs({ args: [...args], options: ROLLOUT_OPTIONS, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new FirmwareUsageError((err as Error).message);
  }
  if (values.comm === undefined && values.metro === undefined) throw new FirmwareUsageError('give the wanted version: --comm V, --metro V or both');
  const targets = (['meter', 'meters', 'group'] as const).filter((key) => values[key] !== undefined);
  if (targets.length !== 1) {
    throw new FirmwareUsageError(
      targets.length === 0 ? 'give the meters: --meter ID, --meters ID,ID,... or --group TAG=VALUE' : `give one of --meter, --meters, --group, not ${targets.map((t) => `--${t}`).join(' and ')}`,
    );
  }
  // Built as the JSON body and checked by the parser the gateway uses, so the CLI refuses exactly what the gateway would.
  const body: Record<string, unknown> = {};
  if (values.comm !== undefined) body.comm = values.comm;
  if (values.metro !== undefined) body.metro = values.metro;
  if (values.meter !== undefined) body.meter = values.meter;
  if (values.meters !== undefined) {
    const meters = values.meters.split(',').map((name) => name.trim());
    if (meters.some((name) => name === '')) throw new FirmwareUsageError('--meters: a comma-separated list of meter names, without empty entries');
    body.meters = meters;
  }
  if (values.group !== undefined) body.group = values.group;
  if (values.concurrency !== undefined) {
    if (!/^\d{1,6}$/.test(values.concurrency)) throw new FirmwareUsageError(`--concurrency must be a whole number, got "${values.concurrency}"`);
    body.concurrency = Number(values.concurrency);
  }
  if (values.id !== undefined) body.id = values.id;
  let request: FirmwareApiRolloutRequest;
  try {
    request = parseRolloutRequest(body);
  } catch (err) {
    if (err instanceof FirmwareApiRequestError) throw usageFromApi(err);
    throw err;
  }
  const parsed: RolloutArguments = { request, wait: values.wait === true, json: values.json === true };
  const url = checkUrl(values.url);
  if (url !== undefined) parsed.url = url;
  if (values.user !== undefined) parsed.user = values.user;
  return parsed;
}

/** Parses `firmware status [ROLLOUT_ID]` arguments; throws FirmwareUsageError. */
export function parseStatusArguments(args: readonly string[]): StatusArguments {
  let parsed;
  try {
    parsed = parseArgs({ args: [...args], options: STATUS_OPTIONS, strict: true, allowPositionals: true });
  } catch (err) {
    throw new FirmwareUsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (positionals.length > 1) throw new FirmwareUsageError(`firmware status takes one rollout id, got ${positionals.length} arguments`);
  const out: StatusArguments = { json: values.json === true };
  const [id] = positionals;
  if (id !== undefined) {
    try {
      out.rolloutId = parseRolloutId(id);
    } catch (err) {
      if (err instanceof FirmwareApiRequestError) throw new FirmwareUsageError(`ROLLOUT_ID ${err.reason}`);
      throw err;
    }
  }
  const url = checkUrl(values.url);
  if (url !== undefined) out.url = url;
  if (values.user !== undefined) out.user = values.user;
  return out;
}

/** `firmware rollout ...` or `firmware status ...` (exit codes: FIRMWARE_EXIT). */
export async function firmwareGatewayCommand(args: readonly string[], context: FirmwareGatewayContext): Promise<FirmwareCommandResult> {
  const [action, ...rest] = args;
  if (action === 'rollout') return rolloutCommand(parseRolloutArguments(rest), context);
  if (action === 'status') return statusCommand(parseStatusArguments(rest), context);
  throw unknownAction(action);
}

function unknownAction(action: string | undefined): FirmwareUsageError {
  return new FirmwareUsageError(`unknown firmware command "${action ?? ''}": expected ${FIRMWARE_ACTIONS.join(' or ')} (the images folder), ${FIRMWARE_GATEWAY_ACTIONS.join(' or ')} (the running gateway)`);
}

async function rolloutCommand(args: RolloutArguments, context: FirmwareGatewayContext): Promise<FirmwareCommandResult> {
  const base = baseUrl(args.url, context.httpPort);
  const token = await login(base, args.user);
  if (typeof token === 'object') return token;
  const started = await callGateway(base, token, 'POST', '/ami/firmware/rollouts', args.request, START_TIMEOUT_MS);
  if (started.kind === 'failure') return started.result;
  const body = started.body as Partial<FirmwareApiRolloutResponse> | undefined;
  if (!isRolloutSummary(body?.rollout)) return notAReport('rollout');
  const rollout = body.rollout;
  if (!args.wait) {
    if (args.json) return { exitCode: rolloutExitCode(rollout), output: JSON.stringify(body, null, 2) };
    return { exitCode: rolloutExitCode(rollout), output: formatStarted(rollout) };
  }
  const stream = args.json ? 'stderr' : 'stdout';
  context.writeLine?.(stream, `rollout ${cell(rollout.rolloutId)}: ${describeWant(rollout.want)} for ${plural(rollout.total, 'meter')}; waiting for it to finish (Ctrl-C stops waiting, not the rollout)`);
  const final = await waitForRollout(base, token, rollout.rolloutId, stream, context);
  if ('exitCode' in final) return final;
  return { exitCode: rolloutExitCode(final.rollout), output: args.json ? JSON.stringify(final, null, 2) : formatRolloutStatus(final) };
}

async function statusCommand(args: StatusArguments, context: FirmwareGatewayContext): Promise<FirmwareCommandResult> {
  const base = baseUrl(args.url, context.httpPort);
  const token = await login(base, args.user);
  if (typeof token === 'object') return token;
  if (args.rolloutId === undefined) {
    const answer = await callGateway(base, token, 'GET', '/ami/firmware/rollouts', undefined, QUERY_TIMEOUT_MS);
    if (answer.kind === 'failure') return answer.result;
    const body = answer.body as Partial<FirmwareApiRolloutsResponse> | undefined;
    if (!Array.isArray(body?.rollouts) || !body.rollouts.every(isRolloutSummary)) return notAReport('rollout list');
    return { exitCode: FIRMWARE_EXIT.ok, output: args.json ? JSON.stringify(body, null, 2) : formatRolloutList(body.rollouts) };
  }
  const answer = await callGateway(base, token, 'GET', statusRoute(args.rolloutId), undefined, QUERY_TIMEOUT_MS);
  if (answer.kind === 'failure') return answer.result;
  if (!isStatusResponse(answer.body)) return notAReport('rollout status');
  return { exitCode: FIRMWARE_EXIT.ok, output: args.json ? JSON.stringify(answer.body, null, 2) : formatRolloutStatus(answer.body) };
}

/**
 * Asks for the rollout's status every poll interval (sleeping in between)
 * until it is finished, printing a progress line whenever its counts
 * change. A gateway that stops answering, or answers that it is starting,
 * is asked again for the grace period: a restarted gateway resumes the
 * rollout from its journal.
 */
async function waitForRollout(
  base: string,
  token: string | undefined,
  rolloutId: string,
  stream: 'stdout' | 'stderr',
  context: FirmwareGatewayContext,
): Promise<FirmwareApiRolloutStatusResponse | FirmwareCommandResult> {
  const interval = context.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
  const grace = context.reconnectGraceMs ?? DEFAULT_RECONNECT_GRACE_MS;
  const now = context.now ?? Date.now;
  const goesOn = `the rollout goes on in the gateway: ami-gateway firmware status ${rolloutId}`;
  let shown: string | undefined;
  let lostSince: number | undefined;
  for (;;) {
    const answer = await callGateway(base, token, 'GET', statusRoute(rolloutId), undefined, QUERY_TIMEOUT_MS);
    if (answer.kind === 'failure') {
      // This gateway answered for the rollout before: a bare 404 now is Node-RED up but its flows not
      // yet (a restart), worth waiting for like a 503.
      const starting = answer.status === 404 && answer.code === undefined;
      if (!answer.transient && !starting) return answer.result;
      if (lostSince === undefined) {
        lostSince = now();
        context.writeLine?.(stream, `${isoTime(now())}  ${answer.result.output.replace(/^ami-gateway: /, '')}; asking again for ${Math.round(grace / 1000)} s`);
      } else if (now() - lostSince >= grace) {
        return { ...answer.result, output: `${answer.result.output}; ${goesOn}` };
      }
    } else {
      lostSince = undefined;
      if (!isStatusResponse(answer.body)) return notAReport('rollout status');
      const counts = progressCounts(answer.body.rollout);
      if (counts !== shown) {
        context.writeLine?.(stream, `${isoTime(now())}  ${counts}`);
        shown = counts;
      }
      if (answer.body.rollout.finished) return answer.body;
    }
    await sleep(interval);
  }
}

function statusRoute(rolloutId: string): string {
  return `/ami/firmware/rollouts/${encodeURIComponent(rolloutId)}`;
}

// HTTP

function baseUrl(url: string | undefined, httpPort: number): string {
  return (url ?? `http://127.0.0.1:${httpPort}`).replace(/\/+$/, '');
}

type GatewayAnswer =
  | { kind: 'answer'; status: number; body: unknown }
  /**
   * transient: no answer at all (network, timeout), or a gateway that is
   * starting or redeploying (503 NOT_READY, 404 NO_FIRMWARE): worth asking
   * again while waiting, unlike a refusal of the request itself.
   */
  | { kind: 'failure'; result: FirmwareCommandResult; transient: boolean; /** HTTP status, when there was an answer */ status?: number; /** The API's error code, when the answer had one. */ code?: string };

/** The admin API token (AMI_ADMIN_TOKEN, or a login with --user), once per command; or the command's result when that fails. */
async function login(base: string, user: string | undefined): Promise<string | undefined | FirmwareCommandResult> {
  try {
    return await bearerToken(base, user);
  } catch (err) {
    if (err instanceof KeysUsageError) throw new FirmwareUsageError(err.message);
    return { exitCode: FIRMWARE_EXIT.unreachable, output: `ami-gateway: cannot reach ${base}: ${networkErrorText(err)}` };
  }
}

async function callGateway(base: string, token: string | undefined, method: 'GET' | 'POST', route: string, body: unknown, timeoutMs: number): Promise<GatewayAnswer> {
  let reply;
  try {
    reply = await adminRequest(`${base}${route}`, method, token, body === undefined ? undefined : JSON.stringify(body), timeoutMs);
  } catch (err) {
    const why = err instanceof AdminRequestTimeoutError ? `${base}: ${err.message}` : `cannot reach ${base}: ${networkErrorText(err)}`;
    return { kind: 'failure', transient: true, result: { exitCode: FIRMWARE_EXIT.unreachable, output: `ami-gateway: ${why}` } };
  }
  let json: unknown;
  try {
    json = reply.text === '' ? undefined : JSON.parse(reply.text);
  } catch {
    json = undefined;
  }
  if (reply.status >= 200 && reply.status < 300) {
    if (json === undefined) return { kind: 'failure', transient: false, result: { exitCode: FIRMWARE_EXIT.unreachable, output: `ami-gateway: ${base} did not answer with JSON (HTTP ${reply.status})` } };
    return { kind: 'answer', status: reply.status, body: json };
  }
  const code = typeof json === 'object' && json !== null ? (json as Partial<FirmwareApiError>).code : undefined;
  const transient = reply.status === 503 || code === 'NO_FIRMWARE';
  return { kind: 'failure', transient, status: reply.status, ...(typeof code === 'string' ? { code } : {}), result: errorResult(base, route, reply.status, json) };
}

function errorResult(base: string, route: string, status: number, json: unknown): FirmwareCommandResult {
  const error = typeof json === 'object' && json !== null ? (json as Partial<FirmwareApiError>) : undefined;
  const code = typeof error?.code === 'string' ? error.code : undefined;
  const message = typeof error?.error === 'string' ? error.error : undefined;
  const failed = (text: string): FirmwareCommandResult => ({ exitCode: FIRMWARE_EXIT.failed, output: `ami-gateway: ${text}` });
  if (code === undefined && (status === 401 || status === 403)) {
    return { exitCode: FIRMWARE_EXIT.unreachable, output: `ami-gateway: ${base} refused the request (HTTP ${status}): set AMI_ADMIN_TOKEN or --user` };
  }
  if (code === 'NO_FIRMWARE') return failed(`${base} has no firmware service deployed (an ami-firmware config node)${message ? `: ${message}` : ''}`);
  if (status === 404 && code === undefined) {
    return { exitCode: FIRMWARE_EXIT.unreachable, output: `ami-gateway: ${base} has no ${route.split('?')[0]} (not an ami-gateway, or an older version)` };
  }
  return failed(`${base} answered HTTP ${status}${code ? ` ${code}` : ''}${message ? `: ${cell(message)}` : ''}`);
}

function notAReport(what: string): FirmwareCommandResult {
  return { exitCode: FIRMWARE_EXIT.unreachable, output: `ami-gateway: the reply is not a ${what}` };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Enough of a RolloutSummary to print it and judge it. */
function isRolloutSummary(value: unknown): value is RolloutSummary {
  return (
    isRecord(value) &&
    typeof value.rolloutId === 'string' &&
    isRecord(value.want) &&
    typeof value.total === 'number' &&
    typeof value.done === 'number' &&
    typeof value.finished === 'boolean' &&
    isRecord(value.byCode) &&
    isRecord(value.byPhase)
  );
}

function isStatusResponse(value: unknown): value is FirmwareApiRolloutStatusResponse {
  return isRecord(value) && isRolloutSummary(value.rollout) && Array.isArray(value.meters) && value.meters.every((m) => isRecord(m) && typeof m.meter === 'string' && typeof m.phase === 'string');
}

// Output

/** 0 when no meter failed (and, once finished, every meter runs the wanted versions), else 1. */
export function rolloutExitCode(summary: RolloutSummary): number {
  const counted = Object.entries(summary.byCode) as [string, number | undefined][];
  if (counted.some(([code, n]) => !SUCCESS_CODES.includes(code) && (n ?? 0) > 0)) return FIRMWARE_EXIT.failed;
  if (!summary.finished) return FIRMWARE_EXIT.ok;
  const succeeded = counted.reduce((sum, [, n]) => sum + (n ?? 0), 0);
  // A finished rollout whose outcomes do not cover its meters is not a success.
  return summary.total > 0 && succeeded === summary.total ? FIRMWARE_EXIT.ok : FIRMWARE_EXIT.failed;
}

export function describeWant(want: RolloutSummary['want']): string {
  const parts = (['comm', 'metro'] as const).filter((target) => typeof want[target] === 'string').map((target) => `${target} ${cell(want[target]!)}`);
  return parts.length === 0 ? 'nothing' : parts.join(', ');
}

/** Counts in a fixed order (the order codes and phases are defined in), whatever order the JSON has them in. */
function ordered<K extends string>(counts: Partial<Record<string, number>>, order: readonly K[]): [string, number][] {
  const known = order.filter((key) => (counts[key] ?? 0) > 0).map((key): [string, number] => [key, counts[key]!]);
  const others = Object.keys(counts)
    .filter((key) => !(order as readonly string[]).includes(key) && (counts[key] ?? 0) > 0)
    .sort()
    .map((key): [string, number] => [cell(key), counts[key]!]);
  return [...known, ...others];
}

/**
 * The rollout's counts in one line: meters done, meters in each phase
 * before done, and outcomes by code. --wait prints it when it changes.
 */
export function progressCounts(summary: RolloutSummary): string {
  const phases = ordered(summary.byPhase, PHASES).filter(([phase]) => phase !== 'done');
  const codes = ordered(summary.byCode, FIRMWARE_FINAL_CODES);
  const parts = [`${summary.done}/${summary.total} done`];
  if (phases.length > 0) parts.push(phases.map(([phase, n]) => `${phase} ${n}`).join(', '));
  if (codes.length > 0) parts.push(codes.map(([code, n]) => `${code} ${n}`).join(', '));
  return parts.join('; ');
}

/** The `step` column: the step under way of the meter's plan, 1-based ('-' before the plan is made). */
export function stepColumn(entry: MeterRolloutEntry): string {
  if (!Array.isArray(entry.steps)) return '-';
  const total = entry.steps.length;
  if (total === 0) return '0/0';
  const current = Math.min(Math.max((entry.step ?? 0) + 1, 1), total);
  return `${current}/${total}`;
}

/** The `progress` column: the share of the current image the meter holds, rounded down ('-' when unknown). */
export function progressColumn(entry: MeterRolloutEntry): string {
  const { received, size } = entry;
  if (typeof received !== 'number' || typeof size !== 'number' || !(size > 0) || !(received >= 0)) return '-';
  return `${Math.min(100, Math.floor((received * 100) / size))}%`;
}

/** One row of the per-meter table: meter, phase, step, progress, outcome, reason. */
export function meterRow(entry: MeterRolloutEntry): string[] {
  const reason = entry.outcome?.reason ?? entry.lastProblem ?? '';
  return [cell(entry.meter), cell(entry.phase), stepColumn(entry), progressColumn(entry), cell(entry.outcome?.code ?? '-'), cell(reason)];
}

export function formatRolloutStatus(status: FirmwareApiRolloutStatusResponse): string {
  const r = status.rollout;
  const by = r.requestedBy === undefined ? '' : ` by ${cell(r.requestedBy)}`;
  const lines = [
    `rollout ${cell(r.rolloutId)}: ${describeWant(r.want)} for ${plural(r.total, 'meter')}, ${r.finished ? 'finished' : 'in progress'} (started ${isoTime(r.createdAt)}${by})`,
    progressCounts(r),
  ];
  if (status.meters.length > 0) lines.push('', ...table([['METER', 'PHASE', 'STEP', 'PROGRESS', 'OUTCOME', 'REASON'], ...status.meters.map(meterRow)]).map((line) => line.trimEnd()));
  return lines.join('\n');
}

export function formatRolloutList(rollouts: readonly RolloutSummary[]): string {
  if (rollouts.length === 0) return 'no firmware rollouts';
  const rows = [['ROLLOUT', 'STARTED', 'WANTED', 'DONE', 'STATE', 'OUTCOMES']];
  for (const r of rollouts) {
    const outcomes = ordered(r.byCode, FIRMWARE_FINAL_CODES).map(([code, n]) => `${code} ${n}`).join(', ');
    rows.push([cell(r.rolloutId), isoTime(r.createdAt), describeWant(r.want), `${r.done}/${r.total}`, r.finished ? 'finished' : 'running', outcomes || '-']);
  }
  return table(rows)
    .map((line) => line.trimEnd())
    .join('\n');
}

function formatStarted(r: RolloutSummary): string {
  if (r.finished) {
    return [`rollout ${cell(r.rolloutId)} (already finished): ${describeWant(r.want)} for ${plural(r.total, 'meter')}`, progressCounts(r), `the meters: ami-gateway firmware status ${cell(r.rolloutId)}`].join('\n');
  }
  return [
    `rollout ${cell(r.rolloutId)} started: ${describeWant(r.want)} for ${plural(r.total, 'meter')}`,
    progressCounts(r),
    `follow it: ami-gateway firmware status ${cell(r.rolloutId)} (or start it with --wait)`,
  ].join('\n');
}

/** Text from the gateway (a meter's failure result, say) on one line and without terminal escapes. */
function cell(text: string): string {
  return String(text).replace(/\p{Cc}/gu, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function isoTime(ms: number): string {
  return Number.isFinite(ms) ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : '-';
}
