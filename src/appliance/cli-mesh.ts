import { parseArgs } from 'node:util';
import type { MeterSnapshot } from '../mesh/events.js';
import { bearerToken, KeysUsageError } from './cli-keys.js';

/**
 * `ami-gateway mesh meters|topology`: the running gateway's meter registry
 * (GET /ami/mesh/meters), as a field engineer's mesh map tool shows it.
 */
export class MeshUsageError extends Error {
  override readonly name = 'MeshUsageError';
}

/** Thresholds field engineers use: beyond 8 hops or below -85 dBm a meter is at risk. */
export const MAX_HOPS = 8;
export const MIN_RSSI_DBM = -85;

/** What the CLI reads of each meter GET /ami/mesh/meters lists. */
type MeterRow = Pick<MeterSnapshot, 'id' | 'endpoint' | 'sector' | 'address' | 'lastSeen' | 'expiresAt' | 'metrics' | 'firmware' | 'tags'>;

export async function meshCommand(args: string[], httpPort: number): Promise<{ exitCode: number; output: string }> {
  const [action, ...rest] = args;
  if (action !== 'meters' && action !== 'topology') throw new MeshUsageError(`unknown mesh command "${action ?? ''}": expected meters or topology`);
  const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean' }, url: { type: 'string' }, user: { type: 'string' } }, strict: true });
  const base = (values.url ?? `http://127.0.0.1:${httpPort}`).replace(/\/+$/, '');
  let body: { endpoints?: Array<{ name: string; registry: boolean; meters: MeterRow[] }> };
  try {
    const token = await bearerToken(base, values.user);
    const response = await fetch(`${base}/ami/mesh/meters`, {
      headers: { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      signal: AbortSignal.timeout(10_000),
    });
    if (!response.ok) return { exitCode: 3, output: `ami-gateway: ${base} answered HTTP ${response.status}` };
    body = (await response.json()) as typeof body;
  } catch (err) {
    if (err instanceof KeysUsageError) throw new MeshUsageError(err.message);
    return { exitCode: 3, output: `ami-gateway: cannot reach ${base}: ${(err as Error).message}` };
  }
  if (!Array.isArray(body.endpoints)) return { exitCode: 3, output: 'ami-gateway: the reply is not a meter list' };
  const meters = body.endpoints.flatMap((endpoint) => endpoint.meters);
  if (values.json) return { exitCode: 0, output: JSON.stringify(action === 'meters' ? meters : topology(meters), null, 2) };
  if (!body.endpoints.some((endpoint) => endpoint.registry)) return { exitCode: 1, output: 'no mesh endpoint has a registry (set its Registry store)' };
  if (action === 'meters') {
    const header = 'endpoint             address                                  rssi   snr  hops  fw comm/metro      last seen';
    const lines = meters
      .sort((a, b) => a.endpoint.localeCompare(b.endpoint))
      .map((m) =>
        [
          m.endpoint.padEnd(20),
          `[${m.address.address}]:${m.address.port}`.padEnd(40),
          String(m.metrics.rssi ?? '-').padStart(5),
          String(m.metrics.snr ?? '-').padStart(5),
          String(m.metrics.hops ?? '-').padStart(5),
          ` ${m.firmware.comm ?? '-'}/${m.firmware.metro ?? '-'}`.padEnd(18),
          new Date(m.lastSeen).toISOString(),
        ].join(' '),
      );
    return { exitCode: 0, output: [`${meters.length} registered meters`, header, ...lines].join('\n') };
  }
  const report = topology(meters);
  const lines = [
    `${meters.length} meters; by hop count: ${Object.entries(report.byHops).map(([hops, count]) => `${hops}: ${count}`).join(', ') || 'no hop counts reported'}`,
    ...report.atRisk.map((m) => `  AT RISK ${m.endpoint}: ${m.reasons.join(', ')}`),
  ];
  if (report.atRisk.length === 0) lines.push(`no meter beyond ${MAX_HOPS} hops or below ${MIN_RSSI_DBM} dBm`);
  return { exitCode: 0, output: lines.join('\n') };
}

export function topology(meters: MeterRow[]): { byHops: Record<string, number>; atRisk: Array<{ endpoint: string; reasons: string[] }> } {
  const byHops: Record<string, number> = {};
  const atRisk: Array<{ endpoint: string; reasons: string[] }> = [];
  for (const meter of meters) {
    const hops = meter.metrics.hops;
    const key = hops === undefined ? 'unknown' : String(hops);
    byHops[key] = (byHops[key] ?? 0) + 1;
    const reasons: string[] = [];
    if (hops !== undefined && hops > MAX_HOPS) reasons.push(`${hops} hops (more than ${MAX_HOPS})`);
    if (meter.metrics.rssi !== undefined && meter.metrics.rssi < MIN_RSSI_DBM) reasons.push(`RSSI ${meter.metrics.rssi} dBm (below ${MIN_RSSI_DBM})`);
    if (reasons.length > 0) atRisk.push({ endpoint: meter.endpoint, reasons });
  }
  return { byHops, atRisk };
}
