/**
 * The durable operation journal of relay commands: sublevel `relay-ops` of
 * the gateway's LevelDB.
 *
 *   c!<command id>  the command, its phase, its last result and (once
 *                   finished) its outcome (CBOR)
 *   w!<meter>       actuation times of the meter's relay in the last hour
 *                   (wear and thermal protection; survives restarts)
 *   r!<run id>      a rolling run: its command template, meters, concurrency
 *   a!<meter>\0<code>  a standing alarm of the meter (TAMPER locks reconnects)
 *   u!<seq>!<key>   a report for the HES not yet handed to the outbox
 *                   (RelayReporter), written in the same batch as the
 *                   outcome or alarm it reports
 *
 * Every write is synced and group-committed with the writes of other
 * lifecycles under way (src/store GroupCommitter): put() resolves only once
 * the entry is on disk. The write that marks a command `actuating` carries
 * the relay's wear record in the same atomic batch, and the lifecycle sends
 * the invoke only after it resolved. After a crash, a command whose journal
 * says `actuating` (invokeMaybeSent + invokeUnanswered) is first read back:
 * finished without an invoke when the relay moved, invoked once more (a new
 * `actuating` record, attempts 2, written first) only when it is still in
 * `fromState`; see the header of service.ts for the full rule.
 */
import { cborDecode, cborEncode } from '../coap/cbor.js';
import { openSublevel, type GatewayDatabase } from '../store/database.js';
import { GroupCommitter, type BatchOperation } from '../store/group-commit.js';
import { JournalReportQueue, withoutUndefined, type QueuedReport } from '../hes/journal-reporter.js';
import type { ControlState, RelayAlarm, RelayAlarmCode, RelayCommand, RelayReport, RelayResult } from './types.js';

export const RELAY_SUBLEVEL = 'relay-ops';

/**
 * accepted: journaled, nothing sent; deferred / pending: waiting (see `last`);
 * actuating: the invoke (attempt `attempts`) may have been sent and its answer
 * is not recorded yet; done: finished (see `outcome`).
 */
export type RelayPhase = 'accepted' | 'deferred' | 'pending' | 'actuating' | 'done';

export interface RelayJournalEntry {
  command: RelayCommand;
  phase: RelayPhase;
  /**
   * The invoke may have reached the meter (set with `actuating`, before the
   * invoke is sent; cleared only when the meter said it did not actuate,
   * e.g. E001). While set, the relay is read back before anything else.
   */
  invokeMaybeSent: boolean;
  /**
   * The last invoke got no answer: written true with `actuating` (before the
   * invoke is sent) and kept when the invoke timed out (COMM_TIMEOUT_ERR) or
   * the gateway stopped; false once the meter answered it. Only such a
   * command may be invoked once more, and only if the read-back shows the
   * relay still in `fromState`. Absent in older entries: true when phase is
   * `actuating`.
   */
  invokeUnanswered?: boolean;
  /**
   * Invokes of this command that may have reached the meter (1 or 2; an
   * invoke the meter refused with E001 does not count). At most 2.
   */
  attempts?: number;
  /** control_state read just before the first invoke (the origin state). */
  fromState?: ControlState;
  /** When the (last) invoke was (about to be) sent, ms. */
  invokedAt?: number;
  /** The last result (waiting or final). */
  last?: RelayResult;
  /** Set when phase is done. */
  outcome?: RelayResult;
  /** When a waiting command is tried again by itself (deferrals with a time). */
  retryAt?: number;
  createdAt: number;
  updatedAt: number;
}

export interface RelayRunRecord {
  runId: string;
  template: Omit<RelayCommand, 'meter' | 'id' | 'runId'>;
  meters: string[];
  concurrency: number;
  createdAt: number;
  /** Every command of the run has a final outcome. */
  finished: boolean;
}

/** Alarm and report writes that go with an entry (or alone) in one atomic batch. */
export interface RelayJournalExtras {
  reports?: readonly RelayReport[];
  raise?: readonly RelayAlarm[];
  clear?: ReadonlyArray<{ meter: string; code: RelayAlarmCode }>;
}

/** A report waiting in the journal, with the journal key that removes it once delivered. */
export type QueuedRelayReport = QueuedReport<RelayReport>;

export interface RelayJournalOptions {
  /** fsync each batch (default true; tests on tmpfs may turn it off). */
  sync?: boolean;
}

export class RelayJournal {
  private readonly sublevel;
  private readonly committer: GroupCommitter;
  private closed = false;
  /** Entries that could not be decoded (skipped), since open. */
  unreadable = 0;
  private readonly queue: JournalReportQueue<RelayReport>;

  private constructor(db: GatewayDatabase, options: RelayJournalOptions) {
    this.sublevel = openSublevel(db, RELAY_SUBLEVEL);
    this.committer = new GroupCommitter(db, { lingerMs: 0, maxOperations: 1000, sync: options.sync ?? true });
    this.queue = new JournalReportQueue(this.sublevel, this.committer, {
      undecodable: { key: '', kind: 'event', meter: '', ts: 0, body: {} },
      decode: (value) => this.decode<RelayReport>(value),
    });
  }

  static async open(db: GatewayDatabase, options: RelayJournalOptions = {}): Promise<RelayJournal> {
    return new RelayJournal(db, options);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  async get(id: string): Promise<RelayJournalEntry | undefined> {
    const value = await this.sublevel.get(`c!${id}`);
    return value === undefined ? undefined : this.decode<RelayJournalEntry>(value);
  }

  /**
   * Writes the entry (and the meter's wear times, alarms raised or cleared,
   * reports for the HES, when given) atomically; resolves once on disk.
   */
  put(entry: RelayJournalEntry, wear?: { meter: string; times: readonly number[] }, extras?: RelayJournalExtras): Promise<void> {
    const operations: BatchOperation[] = [{ type: 'put', key: `c!${entry.command.id}`, value: cborEncode(withoutUndefined(entry)), sublevel: this.sublevel }];
    if (wear) operations.push({ type: 'put', key: `w!${wear.meter}`, value: cborEncode([...wear.times]), sublevel: this.sublevel });
    if (extras) operations.push(...this.extraOperations(extras));
    return this.committer.write(operations, undefined, true);
  }

  /** Writes alarm changes and reports without a command entry (an alarm from an event, an alarm cleared). */
  write(extras: RelayJournalExtras): Promise<void> {
    const operations = this.extraOperations(extras);
    if (operations.length === 0) return Promise.resolve();
    return this.committer.write(operations, undefined, true);
  }

  async alarm(meter: string, code: RelayAlarmCode): Promise<RelayAlarm | undefined> {
    const value = await this.sublevel.get(alarmKey(meter, code));
    return value === undefined ? undefined : this.decode<RelayAlarm>(value);
  }

  /** Standing alarms, of one meter or all, in meter order. */
  async alarms(meter?: string): Promise<RelayAlarm[]> {
    const range = meter === undefined ? { gte: 'a!', lt: 'a"' } : { gte: `a!${meter}\u0000`, lt: `a!${meter}\u0001` };
    const out: RelayAlarm[] = [];
    for await (const value of this.sublevel.values(range)) {
      const alarm = this.decode<RelayAlarm>(value);
      if (alarm !== undefined) out.push(alarm);
    }
    return out;
  }

  /** Reports not yet handed to the outbox, oldest first. */
  reports(limit = 100): Promise<QueuedRelayReport[]> {
    return this.queue.read(limit);
  }

  /** Removes delivered reports (synced). */
  removeReports(journalKeys: readonly string[]): Promise<void> {
    return this.queue.remove(journalKeys);
  }

  private extraOperations(extras: RelayJournalExtras): BatchOperation[] {
    const operations: BatchOperation[] = [];
    for (const alarm of extras.raise ?? []) {
      operations.push({ type: 'put', key: alarmKey(alarm.meter, alarm.code), value: cborEncode(withoutUndefined(alarm)), sublevel: this.sublevel });
    }
    for (const { meter, code } of extras.clear ?? []) operations.push({ type: 'del', key: alarmKey(meter, code), sublevel: this.sublevel });
    for (const report of extras.reports ?? []) {
      operations.push(this.queue.operation(report));
    }
    return operations;
  }

  async wear(meter: string): Promise<number[]> {
    const value = await this.sublevel.get(`w!${meter}`);
    if (value === undefined) return [];
    const times = this.decode<unknown>(value);
    return Array.isArray(times) ? times.filter((t): t is number => typeof t === 'number') : [];
  }

  /** Every command not finished, in id order. */
  async unfinished(): Promise<RelayJournalEntry[]> {
    const out: RelayJournalEntry[] = [];
    for await (const value of this.sublevel.values({ gte: 'c!', lt: 'c"' })) {
      const entry = this.decode<RelayJournalEntry>(value);
      if (entry !== undefined && entry.phase !== 'done') out.push(entry);
    }
    return out;
  }

  /** Every command entry (finished included), in id order. */
  async *entries(): AsyncGenerator<RelayJournalEntry> {
    for await (const value of this.sublevel.values({ gte: 'c!', lt: 'c"' })) {
      const entry = this.decode<RelayJournalEntry>(value);
      if (entry !== undefined) yield entry;
    }
  }

  putRun(run: RelayRunRecord): Promise<void> {
    return this.committer.write([{ type: 'put', key: `r!${run.runId}`, value: cborEncode(run), sublevel: this.sublevel }], undefined, true);
  }

  async getRun(runId: string): Promise<RelayRunRecord | undefined> {
    const value = await this.sublevel.get(`r!${runId}`);
    return value === undefined ? undefined : this.decode<RelayRunRecord>(value);
  }

  async runs(): Promise<RelayRunRecord[]> {
    const out: RelayRunRecord[] = [];
    for await (const value of this.sublevel.values({ gte: 'r!', lt: 'r"' })) {
      const run = this.decode<RelayRunRecord>(value);
      if (run !== undefined) out.push(run);
    }
    return out;
  }

  /**
   * Deletes finished commands whose outcome is older than `before` (ms) and
   * finished runs created before it; returns how many commands went. A
   * command id deleted here is no longer recognised as a repeat: keep
   * outcomes at least as long as the HES may resend (its notAfter).
   */
  async purgeFinished(before: number): Promise<number> {
    const operations: BatchOperation[] = [];
    let commands = 0;
    for await (const [key, value] of this.sublevel.iterator({ gte: 'c!', lt: 'c"' })) {
      const entry = this.decode<RelayJournalEntry>(value);
      if (entry?.phase === 'done' && entry.updatedAt < before && entry.command.notAfter < before) {
        operations.push({ type: 'del', key, sublevel: this.sublevel });
        commands += 1;
      }
    }
    for (const run of await this.runs()) {
      if (run.finished && run.createdAt < before) operations.push({ type: 'del', key: `r!${run.runId}`, sublevel: this.sublevel });
    }
    if (operations.length > 0) await this.committer.write(operations, undefined, true);
    return commands;
  }

  /** Writes what is queued and refuses further writes (the database itself belongs to the caller). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.committer.close();
  }

  private decode<T>(value: Uint8Array): T | undefined {
    try {
      const decoded = cborDecode(value) as T;
      if (typeof decoded === 'object' && decoded !== null) return decoded;
    } catch {
      // fall through
    }
    this.unreadable += 1;
    return undefined;
  }
}

function alarmKey(meter: string, code: RelayAlarmCode): string {
  return `a!${meter}\u0000${code}`;
}
