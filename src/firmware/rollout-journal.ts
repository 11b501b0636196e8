/**
 * The durable journal of firmware rollouts: sublevel `firmware-rollouts` of
 * the gateway's LevelDB.
 *
 *   r!<rollout id>            the rollout: what is wanted, its meters, its concurrency
 *   m!<rollout id>!<meter>    one meter's progress and, once done, its outcome
 *   u!<seq>!<key>             a result for the HES not yet handed to the
 *                             outbox (JournalReporter), written in the same
 *                             batch as the outcome it reports
 *
 * Every write is synced and group-committed with those of the other meters
 * under way: put() resolves once the entry is on disk. A meter's entry is
 * written before each offer, so after a restart the rollout knows which
 * image the meter may be fetching and asks it before offering again.
 */
import { cborDecode, cborEncode } from '../coap/cbor.js';
import { JournalReportQueue, withoutUndefined, type QueuedReport, type ReportJournal } from '../hes/journal-reporter.js';
import { openSublevel, type GatewayDatabase } from '../store/database.js';
import { GroupCommitter, type BatchOperation } from '../store/group-commit.js';
import type { MeterRolloutEntry, RolloutRecord } from './rollout-types.js';

export const ROLLOUT_SUBLEVEL = 'firmware-rollouts';

/** A per-meter result for the HES (structurally a src/hes/contract.ts HesRecord). */
export interface FirmwareReport {
  /** Idempotency key at the HES: `firmware-result:<rollout>:<meter>`. */
  key: string;
  kind: 'result';
  meter: string;
  ts: number;
  body: Record<string, unknown>;
}

export interface RolloutJournalOptions {
  /** fsync each batch (default true). */
  sync?: boolean;
}

export class RolloutJournal implements ReportJournal<FirmwareReport> {
  private readonly sublevel;
  private readonly committer: GroupCommitter;
  private closed = false;
  private readonly queue: JournalReportQueue<FirmwareReport>;
  /** Records that could not be decoded (skipped), since open. */
  unreadable = 0;

  constructor(db: GatewayDatabase, options: RolloutJournalOptions = {}) {
    this.sublevel = openSublevel(db, ROLLOUT_SUBLEVEL);
    this.committer = new GroupCommitter(db, { lingerMs: 0, maxOperations: 1000, sync: options.sync ?? true });
    this.queue = new JournalReportQueue(this.sublevel, this.committer, {
      undecodable: { key: '', kind: 'result', meter: '', ts: 0, body: {} },
      decode: (value) => this.decode<FirmwareReport>(value),
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Writes the rollout and its meters' first entries atomically. */
  putRollout(rollout: RolloutRecord, entries: readonly MeterRolloutEntry[] = []): Promise<void> {
    const operations: BatchOperation[] = [{ type: 'put', key: rolloutKey(rollout.rolloutId), value: cborEncode(withoutUndefined(rollout)), sublevel: this.sublevel }];
    for (const entry of entries) operations.push(this.entryOperation(entry));
    return this.committer.write(operations, undefined, true);
  }

  async rollout(rolloutId: string): Promise<RolloutRecord | undefined> {
    const value = await this.sublevel.get(rolloutKey(rolloutId));
    return value === undefined ? undefined : this.decode<RolloutRecord>(value);
  }

  async rollouts(): Promise<RolloutRecord[]> {
    const out: RolloutRecord[] = [];
    for await (const value of this.sublevel.values({ gte: 'r!', lt: 'r"' })) {
      const rollout = this.decode<RolloutRecord>(value);
      if (rollout !== undefined) out.push(rollout);
    }
    return out;
  }

  /** Writes a meter's entry, and the report of its outcome in the same batch when given; resolves once on disk. */
  put(entry: MeterRolloutEntry, report?: FirmwareReport): Promise<void> {
    const operations = [this.entryOperation(entry)];
    if (report) operations.push(this.queue.operation(report));
    return this.committer.write(operations, undefined, true);
  }

  async entry(rolloutId: string, meter: string): Promise<MeterRolloutEntry | undefined> {
    const value = await this.sublevel.get(entryKey(rolloutId, meter));
    return value === undefined ? undefined : this.decode<MeterRolloutEntry>(value);
  }

  /** The meters of a rollout, in meter-name order. */
  async entries(rolloutId: string): Promise<MeterRolloutEntry[]> {
    const out: MeterRolloutEntry[] = [];
    // Every key of the rollout sorts between `m!<id>!` and `m!<id>"` ('"' follows '!'), whatever the meter's name.
    for await (const value of this.sublevel.values({ gte: entryKey(rolloutId, ''), lt: `m!${rolloutId}"` })) {
      const entry = this.decode<MeterRolloutEntry>(value);
      if (entry !== undefined) out.push(entry);
    }
    return out;
  }

  reports(limit = 100): Promise<QueuedReport<FirmwareReport>[]> {
    return this.queue.read(limit);
  }

  removeReports(journalKeys: readonly string[]): Promise<void> {
    return this.queue.remove(journalKeys);
  }

  /** Writes what is queued and refuses further writes (the database belongs to the caller). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.committer.close();
  }

  private entryOperation(entry: MeterRolloutEntry): BatchOperation {
    return { type: 'put', key: entryKey(entry.rolloutId, entry.meter), value: cborEncode(withoutUndefined(entry)), sublevel: this.sublevel };
  }

  private decode<T>(value: Uint8Array): T | undefined {
    try {
      const decoded = cborDecode(value) as T;
      if (typeof decoded === 'object' && decoded !== null) return decoded;
    } catch {
      // counted below
    }
    this.unreadable += 1;
    return undefined;
  }
}

function rolloutKey(rolloutId: string): string {
  return `r!${rolloutId}`;
}

/** Rollout ids are [A-Za-z0-9._:-] (no '!'), so the prefix `m!<id>!` is the rollout's alone. */
function entryKey(rolloutId: string, meter: string): string {
  return `m!${rolloutId}!${meter}`;
}
