import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { acquireDatabase, StoreError } from '../store/database.js';
import { MAX_PEEK, Outbox, OUTBOX_CLASSES, type OutboxClass, type OutboxPeekEntry, type OutboxPeekOptions, type OutboxStats } from '../store/outbox.js';
import { bearerToken, KeysUsageError } from './cli-keys.js';

/**
 * `ami-gateway queue stats|peek`: the durable outbox of the HES endpoints,
 * from the running gateway's admin API (GET /ami/queue/stats and
 * /ami/queue/peek), or with --store from the LevelDB directory itself while
 * the gateway is stopped (field work on a gateway that does not start).
 */
export class QueueUsageError extends Error {
  override readonly name = 'QueueUsageError';
}

export interface QueueCommandResult {
  exitCode: number;
  output: string;
}

interface OutboxStatsRow {
  id: string;
  name: string;
  stats: OutboxStats;
}

interface OutboxPeekRow {
  id: string;
  name: string;
  entries: OutboxPeekEntry[];
}

const DEFAULT_LIMIT = 20;
/** Nothing to tell the budget from when the database is opened directly: the node's setting is not in it. */
const UNKNOWN_BUDGET = Number.MAX_SAFE_INTEGER;
const FAR_TTL = { alarm: UNKNOWN_BUDGET, event: UNKNOWN_BUDGET, metrology: UNKNOWN_BUDGET };

/** Exit codes: 0 ok, 1 a problem (no outbox, a storage fault, the store is locked or missing), 2 usage, 3 unreachable. */
export async function queueCommand(args: string[], httpPort: number): Promise<QueueCommandResult> {
  const [action, ...rest] = args;
  if (action !== 'stats' && action !== 'peek') throw new QueueUsageError(`unknown queue command "${action ?? ''}": expected stats or peek`);
  const { values } = parseArgs({
    args: rest,
    options: {
      limit: { type: 'string' },
      class: { type: 'string' },
      meter: { type: 'string' },
      dead: { type: 'boolean' },
      json: { type: 'boolean' },
      url: { type: 'string' },
      user: { type: 'string' },
      store: { type: 'string' },
    },
    strict: true,
  });
  if (action === 'stats' && (values.limit !== undefined || values.class !== undefined || values.meter !== undefined || values.dead)) {
    throw new QueueUsageError('--limit, --class, --meter and --dead apply to "queue peek" only');
  }
  if (values.store !== undefined && (values.url !== undefined || values.user !== undefined)) {
    throw new QueueUsageError('--store reads the database directly: it takes no --url or --user');
  }
  const peekOptions = action === 'peek' ? peekOptionsFrom(values) : undefined;
  if (values.store !== undefined) return fromStore(path.resolve(values.store), action, peekOptions, values.json === true);
  const base = (values.url ?? `http://127.0.0.1:${httpPort}`).replace(/\/+$/, '');
  const query = peekOptions ? `?${peekQuery(peekOptions)}` : '';
  let body: unknown;
  try {
    const token = await bearerToken(base, values.user);
    const response = await fetch(`${base}/ami/queue/${action}${query}`, {
      headers: { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      signal: AbortSignal.timeout(30_000),
    });
    if (response.status === 401 || response.status === 403) {
      return { exitCode: 3, output: `ami-gateway: ${base} refused the request (HTTP ${response.status}): set AMI_ADMIN_TOKEN or --user` };
    }
    if (response.status === 404) {
      return { exitCode: 3, output: `ami-gateway: ${base} has no /ami/queue (not an ami-gateway, or one without an HES endpoint node)` };
    }
    body = await response.json().catch(() => undefined);
    if (!response.ok) {
      const error = (body as { error?: unknown } | undefined)?.error;
      return { exitCode: 1, output: `ami-gateway: ${base} answered HTTP ${response.status}${typeof error === 'string' ? `: ${error}` : ''}` };
    }
  } catch (err) {
    if (err instanceof KeysUsageError) throw new QueueUsageError(err.message);
    return { exitCode: 3, output: `ami-gateway: cannot reach ${base}: ${(err as Error).message}` };
  }
  const rows = (body as { outboxes?: unknown } | undefined)?.outboxes;
  if (!Array.isArray(rows)) return { exitCode: 3, output: 'ami-gateway: the reply is not an outbox report' };
  if (action === 'stats') return statsResult(rows as OutboxStatsRow[], values.json === true, true);
  return peekResult(rows as OutboxPeekRow[], values.json === true, peekOptions!);
}

function peekOptionsFrom(values: { limit?: string; class?: string; meter?: string; dead?: boolean }): OutboxPeekOptions {
  let limit = DEFAULT_LIMIT;
  if (values.limit !== undefined) {
    if (!/^\d+$/.test(values.limit) || Number(values.limit) < 1 || Number(values.limit) > MAX_PEEK) {
      throw new QueueUsageError(`--limit must be an integer 1-${MAX_PEEK}`);
    }
    limit = Number(values.limit);
  }
  if (values.class !== undefined && !OUTBOX_CLASSES.includes(values.class as OutboxClass)) {
    throw new QueueUsageError(`--class must be one of ${OUTBOX_CLASSES.join(', ')}`);
  }
  return {
    limit,
    ...(values.class !== undefined ? { recordClass: values.class as OutboxClass } : {}),
    ...(values.meter !== undefined ? { meter: values.meter } : {}),
    ...(values.dead ? { dead: true } : {}),
  };
}

function peekQuery(options: OutboxPeekOptions): string {
  const query = new URLSearchParams({ limit: String(options.limit) });
  if (options.recordClass) query.set('class', options.recordClass);
  if (options.meter !== undefined) query.set('meter', options.meter);
  if (options.dead) query.set('dead', 'true');
  return query.toString();
}

/** Opens the outbox in the LevelDB directory `location` (read only: nothing is written) and reports. */
async function fromStore(location: string, action: 'stats' | 'peek', peekOptions: OutboxPeekOptions | undefined, json: boolean): Promise<QueueCommandResult> {
  // acquireDatabase would create an empty database where there is none: look first.
  if (!existsSync(path.join(location, 'CURRENT'))) return { exitCode: 1, output: `ami-gateway: no LevelDB database in ${location} (the store is <data dir>/ami-store by default)` };
  let lease;
  try {
    lease = await acquireDatabase(location);
  } catch (err) {
    if (err instanceof StoreError && err.code === 'LOCKED') {
      return { exitCode: 1, output: `ami-gateway: the gateway is running (it holds the lock on ${location}): omit --store to ask it` };
    }
    return { exitCode: 1, output: `ami-gateway: ${(err as Error).message}` };
  }
  try {
    const outbox = await Outbox.open(lease.db, { maxBytes: UNKNOWN_BUDGET, ttlMs: FAR_TTL });
    try {
      const row = { id: 'store', name: location };
      if (action === 'stats') return statsResult([{ ...row, stats: await outbox.stats() }], json, false);
      return peekResult([{ ...row, entries: await outbox.peek(peekOptions!) }], json, peekOptions!);
    } finally {
      await outbox.close();
    }
  } catch (err) {
    return { exitCode: 1, output: `ami-gateway: cannot read the outbox in ${location}: ${(err as Error).message}` };
  } finally {
    await lease.release();
  }
}

function statsResult(rows: OutboxStatsRow[], json: boolean, budgetKnown: boolean): QueueCommandResult {
  const faulty = rows.some((row) => row.stats.storageError !== undefined);
  const exitCode = rows.length === 0 || faulty ? 1 : 0;
  if (json) {
    // Opened directly, the budget is not known: say so rather than print a made-up number.
    const shown = budgetKnown ? rows : rows.map((row) => ({ ...row, stats: { ...row.stats, maxBytes: null } }));
    return { exitCode, output: JSON.stringify({ outboxes: shown }, null, 2) };
  }
  if (rows.length === 0) return { exitCode, output: 'no HES endpoint with an outbox (a store) is deployed' };
  return { exitCode, output: rows.map((row) => formatStats(row, budgetKnown)).join('\n\n') };
}

export function formatStats(row: OutboxStatsRow, budgetKnown: boolean): string {
  const s = row.stats;
  const header = `${'class'.padEnd(10)} ${'records'.padStart(10)} ${'bytes'.padStart(10)}  ${'oldest'.padEnd(9)} ${'dropped'.padStart(9)} ${'expired'.padStart(9)} ${'dead'.padStart(7)}`;
  const line = (label: string, c: { records: number; bytes: number; oldestAgeMs?: number | undefined; dropped: number; expired: number; quarantined: number }): string =>
    `${label.padEnd(10)} ${String(c.records).padStart(10)} ${formatBytes(c.bytes).padStart(10)}  ${(c.oldestAgeMs === undefined ? '-' : formatAge(c.oldestAgeMs)).padEnd(9)} ${String(c.dropped).padStart(9)} ${String(c.expired).padStart(9)} ${String(c.quarantined).padStart(7)}`;
  const oldest = OUTBOX_CLASSES.map((c) => s[c].oldestAgeMs).filter((age): age is number => age !== undefined);
  const used = s.totals.bytes + s.totals.quarantinedBytes;
  const lines = [
    `outbox ${row.name || row.id}${row.name && row.id !== 'store' ? ` (node ${row.id})` : ''}`,
    header,
    ...OUTBOX_CLASSES.map((c) => line(c, s[c])),
    line('total', { ...s.totals, oldestAgeMs: oldest.length ? Math.max(...oldest) : undefined }),
    `disk budget ${formatBytes(used)} used${budgetKnown ? ` of ${formatBytes(s.maxBytes)} (${((100 * used) / s.maxBytes).toFixed(1)}%)` : ' (budget unknown: read from the store directly)'}, dead letters ${formatBytes(s.totals.quarantinedBytes)}; in flight ${s.inFlight}`,
    'dropped: for the disk budget (oldest metrology only); expired: past the class TTL; dead: quarantined, kept until requeued',
  ];
  if (s.storageError !== undefined) lines.push(`STORAGE PROBLEM  ${s.storageError}`);
  return lines.join('\n');
}

function peekResult(rows: OutboxPeekRow[], json: boolean, options: OutboxPeekOptions): QueueCommandResult {
  const exitCode = rows.length === 0 ? 1 : 0;
  if (json) return { exitCode, output: JSON.stringify({ outboxes: rows }, null, 2) };
  if (rows.length === 0) return { exitCode, output: 'no HES endpoint with an outbox (a store) is deployed' };
  const now = Date.now();
  return {
    exitCode,
    output: rows
      .map((row) => {
        const what = options.dead ? 'dead letters' : 'next records to send';
        const lines = [`outbox ${row.name || row.id}: ${row.entries.length} ${what}${row.entries.length === options.limit ? ` (first ${options.limit})` : ''}`];
        if (row.entries.length > 0) {
          lines.push(`${'class'.padEnd(10)} ${'meter'.padEnd(20)} ${'age'.padEnd(9)} ${'bytes'.padStart(6)}  key`);
          for (const e of row.entries) {
            const flag = e.dead ? `  dead ${e.quarantinedAt === undefined ? '' : `${formatAge(now - e.quarantinedAt)} ago`}: ${e.reason ?? ''}` : e.inFlight ? '  (in flight)' : '';
            lines.push(`${e.recordClass.padEnd(10)} ${e.meter.padEnd(20)} ${formatAge(now - e.enqueuedAt).padEnd(9)} ${String(e.size).padStart(6)}  ${e.key}${flag}`);
          }
        }
        return lines.join('\n');
      })
      .join('\n\n'),
  };
}

export function formatAge(ms: number): string {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(seconds % 60).padStart(2, '0')}s`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(seconds / 86_400)}d${String(Math.floor((seconds % 86_400) / 3600)).padStart(2, '0')}h`;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 * 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  return `${(bytes / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}
