import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { BackhaulError } from '../backhaul/errors.js';
import { formatManagementAddress, parseManagementAddress, type ManagementAddress } from '../backhaul/address.js';
import { BackhaulMonitor, bytesFromStatus, type BackhaulSnapshot } from '../backhaul/monitor.js';
import { bearerToken, KeysUsageError } from './cli-keys.js';

/**
 * `ami-gateway backhaul status|hold-release|restart`: asks OpenVPN's
 * management interface directly. OpenVPN serves one management client at a
 * time; when another holds it (the running gateway's `ami-backhaul` node) or
 * this user cannot open the socket, the command goes through the running
 * gateway's admin API instead (GET /ami/backhaul, POST
 * /ami/backhaul/:id/hold-release|restart).
 *
 * Exit codes: 0 up (or done), 1 down (or OpenVPN refused), 2 usage,
 * 3 the management interface cannot be reached (directly or through the gateway).
 */
export class BackhaulUsageError extends Error {
  override readonly name = 'BackhaulUsageError';
}

export interface BackhaulCommandContext {
  /** The management address when --mgmt is not given (AMI_BACKHAUL_MGMT, or the default). */
  defaultMgmt: string;
  /** The gateway's admin port, for the fallback through the running gateway. */
  httpPort: number;
}

export interface BackhaulCommandResult {
  exitCode: number;
  output: string;
}

const ACTIONS = ['status', 'hold-release', 'restart'] as const;
type Action = (typeof ACTIONS)[number];
const DEFAULT_TIMEOUT_SECONDS = 5;
/** Failures that another way in may get past: OpenVPN busy with another client, or the socket closed to this user. */
const TRY_THE_GATEWAY = new Set(['NO_GREETING', 'UNREACHABLE', 'NOT_CONNECTED']);

interface Request {
  action: Action;
  kind: 'soft' | 'hard';
  address: ManagementAddress;
  password: string | undefined;
  timeoutMs: number;
  json: boolean;
  gateway: string;
  user: string | undefined;
}

export async function backhaulCommand(args: string[], context: BackhaulCommandContext): Promise<BackhaulCommandResult> {
  const request = parseRequest(args, context);
  const direct = await viaManagement(request);
  if (!(direct instanceof BackhaulError)) return direct;
  if (!TRY_THE_GATEWAY.has(direct.code)) return failed(request, direct);
  const throughGateway = await viaGateway(request);
  if (throughGateway) return throughGateway;
  return {
    exitCode: 3,
    output: `ami-gateway: cannot reach the OpenVPN management interface at ${formatManagementAddress(request.address)}: ${direct.code}: ${direct.message}; no running gateway at ${request.gateway} monitors it either`,
  };
}

function parseRequest(args: string[], context: BackhaulCommandContext): Request {
  const [action, ...rest] = args;
  if (!ACTIONS.includes(action as Action)) throw new BackhaulUsageError(`unknown backhaul command "${action ?? ''}": expected status, hold-release or restart`);
  const { values, positionals } = parseArgs({
    args: rest,
    options: {
      mgmt: { type: 'string' },
      'password-file': { type: 'string' },
      json: { type: 'boolean' },
      timeout: { type: 'string' },
      url: { type: 'string' },
      user: { type: 'string' },
    },
    allowPositionals: true,
    strict: true,
  });
  let kind: 'soft' | 'hard' = 'soft';
  if (action === 'restart') {
    const [given, ...extra] = positionals;
    if (extra.length > 0 || (given !== undefined && given !== 'soft' && given !== 'hard')) throw new BackhaulUsageError('restart takes soft (the default) or hard');
    kind = given === 'hard' ? 'hard' : 'soft';
  } else if (positionals.length > 0) {
    throw new BackhaulUsageError(`backhaul ${action} takes no argument "${positionals[0] ?? ''}"`);
  }
  let address: ManagementAddress;
  try {
    address = parseManagementAddress(values.mgmt ?? context.defaultMgmt);
  } catch (err) {
    throw new BackhaulUsageError(`${values.mgmt === undefined ? 'AMI_BACKHAUL_MGMT' : '--mgmt'}: ${(err as Error).message}`);
  }
  let password: string | undefined;
  if (values['password-file'] !== undefined) {
    try {
      // As OpenVPN reads its own password file: the first line.
      password = readFileSync(values['password-file'], 'utf8').split(/\r?\n/)[0] ?? '';
    } catch (err) {
      throw new BackhaulUsageError(`--password-file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}: cannot read ${values['password-file']}`);
    }
  }
  const timeoutText = values.timeout ?? String(DEFAULT_TIMEOUT_SECONDS);
  const timeout = Number(timeoutText);
  if (!/^\d+$/.test(timeoutText) || timeout < 1 || timeout > 300) throw new BackhaulUsageError(`--timeout must be whole seconds from 1 to 300, got "${timeoutText}"`);
  return {
    action: action as Action,
    kind,
    address,
    password,
    timeoutMs: timeout * 1000,
    json: values.json === true,
    gateway: (values.url ?? `http://127.0.0.1:${context.httpPort}`).replace(/\/+$/, ''),
    user: values.user,
  };
}

/** Connects once, reads the state, acts; resolves with the result, or the BackhaulError that kept it from the interface. */
async function viaManagement(request: Request): Promise<BackhaulCommandResult | BackhaulError> {
  const monitor = new BackhaulMonitor({
    address: request.address,
    ...(request.password ? { password: request.password } : {}),
    reconnect: false,
    connectTimeoutMs: request.timeoutMs,
    commandTimeoutMs: request.timeoutMs,
    // Read-only: OpenVPN keeps the interval after we leave, for whoever comes next.
    bytecountIntervalSeconds: null,
  });
  try {
    const before = await new Promise<BackhaulSnapshot>((resolve, reject) => {
      monitor.once('synced', resolve);
      monitor.once('disconnected', reject);
      monitor.once('problem', reject);
      monitor.start();
    });
    const source = `connected to ${formatManagementAddress(request.address)}`;
    if (request.action === 'status') {
      const traffic = await monitor.command('status').then(bytesFromStatus, () => undefined);
      return statusResult(request, monitor.snapshot(), source, traffic ?? null);
    }
    try {
      if (request.action === 'hold-release') await monitor.holdRelease();
      else await monitor.restart(request.kind);
    } catch (err) {
      return failed(request, err as BackhaulError);
    }
    return actionResult(request, before, source);
  } catch (err) {
    return err instanceof BackhaulError ? err : new BackhaulError('UNREACHABLE', (err as Error).message);
  } finally {
    await monitor.stop();
  }
}

interface GatewayBackhaul {
  id: string;
  address: string;
  monitoring: boolean;
  snapshot: BackhaulSnapshot;
}

/** Through the running gateway's admin API; undefined when no gateway there monitors this address. */
async function viaGateway(request: Request): Promise<BackhaulCommandResult | undefined> {
  const wanted = formatManagementAddress(request.address);
  const source = `via the gateway at ${request.gateway}, which holds the management connection`;
  try {
    const token = await bearerToken(request.gateway, request.user);
    const headers: Record<string, string> = { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) };
    const listing = await fetch(`${request.gateway}/ami/backhaul`, { headers, signal: AbortSignal.timeout(request.timeoutMs) });
    if (!listing.ok) return undefined;
    const body = (await listing.json()) as { backhauls?: GatewayBackhaul[] };
    const found = body.backhauls?.find((entry) => entry.monitoring && sameAddress(entry.address, wanted));
    if (!found) return undefined;
    if (request.action === 'status') {
      if (!found.snapshot.managementConnected) return undefined;
      return statusResult(request, found.snapshot, source, null);
    }
    const path = request.action === 'hold-release' ? 'hold-release' : 'restart';
    const response = await fetch(`${request.gateway}/ami/backhaul/${encodeURIComponent(found.id)}/${path}`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ kind: request.kind }),
      signal: AbortSignal.timeout(request.timeoutMs * 2),
    });
    const answer = (await response.json().catch(() => ({}))) as { code?: string; error?: string };
    if (response.status === 401 || response.status === 403) return { exitCode: 3, output: `ami-gateway: ${request.gateway} refused the request (HTTP ${response.status}): set AMI_ADMIN_TOKEN or --user` };
    if (!response.ok) return failed(request, { code: answer.code ?? 'INTERNAL', message: `${answer.error ?? `HTTP ${response.status}`} (${source})` });
    return actionResult(request, found.snapshot, source);
  } catch (err) {
    if (err instanceof KeysUsageError) throw new BackhaulUsageError(err.message);
    return undefined;
  }
}

function sameAddress(a: string, b: string): boolean {
  try {
    return formatManagementAddress(parseManagementAddress(a)) === formatManagementAddress(parseManagementAddress(b));
  } catch {
    return false;
  }
}

/** Exit 1 when OpenVPN refused (COMMAND_FAILED and the like), 3 when it could not be asked at all. */
function failed(request: Request, error: { code: string; message: string }): BackhaulCommandResult {
  const unreachable = TRY_THE_GATEWAY.has(error.code) || ['BAD_PASSWORD', 'PASSWORD_REQUIRED', 'TIMEOUT', 'CLOSED'].includes(error.code);
  const what = request.action === 'status' ? 'read the backhaul state' : request.action === 'restart' ? `restart OpenVPN (${request.kind})` : 'release the hold';
  return { exitCode: unreachable ? 3 : 1, output: `ami-gateway: cannot ${what}: ${error.code}: ${error.message}` };
}

function statusResult(request: Request, snapshot: BackhaulSnapshot, source: string, traffic: { bytesIn: number; bytesOut: number } | null): BackhaulCommandResult {
  const exitCode = !snapshot.managementConnected ? 3 : snapshot.up ? 0 : 1;
  if (request.json) {
    const report = { management: formatManagementAddress(request.address), source, ...snapshot, tunnelBytesIn: traffic?.bytesIn ?? null, tunnelBytesOut: traffic?.bytesOut ?? null };
    return { exitCode, output: JSON.stringify(report, null, 2) };
  }
  const at = (ms: number | null): string => (ms === null ? '' : ` at ${new Date(ms).toISOString()}`);
  const lines = [
    `backhaul      ${snapshot.up ? 'up' : `down (${snapshot.phase}): ${snapshot.reason ?? ''}`} since ${new Date(snapshot.since).toISOString()}`,
    `openvpn       ${snapshot.state === null ? 'no state reported' : `${snapshot.state}${snapshot.description ? ` (${snapshot.description})` : ''}${at(snapshot.stateTime)}`}`,
    `tunnel        ${snapshot.localIp ?? 'no address'}${snapshot.localIpv6 ? ` and ${snapshot.localIpv6}` : ''}${snapshot.remoteIp ? `, server ${snapshot.remoteIp}:${snapshot.remotePort ?? '?'}` : ''}`,
    traffic
      ? `traffic       in ${traffic.bytesIn} B, out ${traffic.bytesOut} B since the tunnel (re)started`
      : `traffic       in ${snapshot.bytesIn} B, out ${snapshot.bytesOut} B since OpenVPN started (as last reported)`,
    `hold          ${snapshot.holding ? 'yes: OpenVPN waits for a hold release (ami-gateway backhaul hold-release)' : 'no'}`,
    `last fatal    ${snapshot.lastFatal ?? 'none'}`,
    `management    ${formatManagementAddress(request.address)}, ${source}`,
  ];
  return { exitCode, output: lines.join('\n') };
}

function actionResult(request: Request, before: BackhaulSnapshot, source: string): BackhaulCommandResult {
  const done =
    request.action === 'hold-release'
      ? before.holding
        ? 'hold released: OpenVPN is starting the tunnel'
        : 'OpenVPN was not holding; nothing to release'
      : `OpenVPN is restarting the tunnel (${request.kind}: ${request.kind === 'soft' ? 'SIGUSR1' : 'SIGHUP'})`;
  if (request.json) return { exitCode: 0, output: JSON.stringify({ ok: true, action: request.action, ...(request.action === 'restart' ? { kind: request.kind } : {}), result: done, source }, null, 2) };
  return { exitCode: 0, output: `${done} (${source})` };
}
