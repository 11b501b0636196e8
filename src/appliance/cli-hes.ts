import { parseArgs } from 'node:util';
import type { HesSitesStatus } from '../hes/sites.js';
import { bearerToken, KeysUsageError } from './cli-keys.js';

/**
 * `ami-gateway hes status`: the running gateway's HES sites (GET
 * /ami/hes/status): the active site, each site's state, batch latency and
 * last probe, failovers, failbacks and the last gray failure.
 */
export class HesUsageError extends Error {
  override readonly name = 'HesUsageError';
}

/** One HES endpoint as GET /ami/hes/status lists it (nodes/shared/hes-route.ts). */
interface EndpointRow {
  id: string;
  name: string;
  problem: string | null;
  uplink: HesSitesStatus | null;
}

/** Exit codes: 0 every endpoint sends to a healthy site, 1 degraded (or none deployed), 3 unreachable. */
export async function hesCommand(args: string[], httpPort: number): Promise<{ exitCode: number; output: string }> {
  const [action, ...rest] = args;
  if (action !== 'status') throw new HesUsageError(`unknown hes command "${action ?? ''}": expected status`);
  const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean' }, url: { type: 'string' }, user: { type: 'string' } }, strict: true });
  const base = (values.url ?? `http://127.0.0.1:${httpPort}`).replace(/\/+$/, '');
  let body: { endpoints?: unknown };
  try {
    const token = await bearerToken(base, values.user);
    const response = await fetch(`${base}/ami/hes/status`, {
      headers: { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      signal: AbortSignal.timeout(10_000),
    });
    if (response.status === 401 || response.status === 403) {
      return { exitCode: 3, output: `ami-gateway: ${base} refused the request (HTTP ${response.status}): set AMI_ADMIN_TOKEN or --user` };
    }
    if (!response.ok) return { exitCode: 3, output: `ami-gateway: ${base} answered HTTP ${response.status}` };
    body = (await response.json()) as typeof body;
  } catch (err) {
    if (err instanceof KeysUsageError) throw new HesUsageError(err.message);
    return { exitCode: 3, output: `ami-gateway: cannot reach ${base}: ${(err as Error).message}` };
  }
  if (!Array.isArray(body.endpoints)) return { exitCode: 3, output: 'ami-gateway: the reply is not a HES status report' };
  const endpoints = body.endpoints as EndpointRow[];
  const degraded = endpoints.length === 0 || endpoints.some((e) => e.problem !== null || !e.uplink || e.uplink.activeState !== 'healthy' || !e.uplink.linkUp);
  const exitCode = degraded ? 1 : 0;
  if (values.json) return { exitCode, output: JSON.stringify(body, null, 2) };
  if (endpoints.length === 0) return { exitCode, output: 'no HES endpoint is deployed' };
  return { exitCode, output: endpoints.map(describe).join('\n\n') };
}

function ms(value: number | null | undefined): string {
  return value === null || value === undefined ? '-' : `${value} ms`;
}

function describe(endpoint: EndpointRow): string {
  const title = `HES endpoint ${endpoint.name || endpoint.id}`;
  const status = endpoint.uplink;
  if (!status) return [title, `  problem     ${endpoint.problem ?? 'not open'}`].join('\n');
  const active = status.sites.find((site) => site.active);
  const gray = status.lastGrayFailure;
  const change = status.lastSwitch;
  const lines = [
    title,
    `  active      ${status.activeSite} (${active?.role ?? '?'}, ${status.activeState})`,
    `  backhaul    ${status.linkUp ? 'up' : 'DOWN (probes paused, nothing sent)'}`,
    `  failovers   ${status.failovers}, failbacks ${status.failbacks}, gray failures ${status.grayFailures} (latency budget ${status.latencyBudgetMs} ms)`,
    `  last gray   ${gray ? `${gray.at} ${gray.site}: ${gray.latencyMs} ms, budget ${gray.budgetMs} ms (${gray.reason})` : 'none'}`,
    `  last switch ${change ? `${change.at} ${change.reason} ${change.from} -> ${change.to} (${change.why})` : 'none'}`,
    `  site        ${'role'.padEnd(10)} ${'state'.padEnd(8)} ${'p50'.padStart(9)} ${'p95'.padStart(9)}  last probe`,
    ...status.sites.map((site) => {
      const probe = site.lastProbe ? `${site.lastProbe.ok ? `ok in ${site.lastProbe.latencyMs} ms` : `FAILED (${site.lastProbe.error ?? '?'})`} at ${site.lastProbe.at}` : 'none yet';
      const trial = site.lastTrial ? `; trial ${site.lastTrial.ok ? `${site.lastTrial.latencyMs} ms` : 'failed'}` : '';
      return `  ${site.active ? '*' : ' '} ${site.url}\n              ${site.role.padEnd(10)} ${site.state.padEnd(8)} ${ms(site.latency.p50).padStart(9)} ${ms(site.latency.p95).padStart(9)}  ${probe}${trial}`;
    }),
  ];
  if (endpoint.problem) lines.push(`  problem     ${endpoint.problem}`);
  return lines.join('\n');
}
