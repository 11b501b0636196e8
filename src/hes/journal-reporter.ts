/**
 * Takes a service's reports for the HES (relay outcomes and alarms,
 * firmware rollout results) from its journal to the HES outbox: the MDM
 * sync. A report is
 * journaled in the same synced write as what it reports, so none is lost
 * when the gateway stops; it leaves the journal only after `deliver`
 * resolved (the outbox has it on disk). A crash between the two delivers it
 * again under the same key, which the outbox and the HES take once.
 *
 * When delivery fails (outbox full: alarms and results are never dropped
 * there, it pushes back; HES endpoint not deployed) the reporter waits and
 * tries again, from 1 s doubling to 60 s, or at once when kicked.
 */
import { cborEncode } from '../coap/cbor.js';
import type { GatewaySublevel } from '../store/database.js';
import type { BatchOperation, GroupCommitter } from '../store/group-commit.js';

/** A report waiting in a journal; `key` is the HES record's idempotency key ('' for one that could not be decoded). */
export interface QueuedReport<R extends { key: string }> {
  journalKey: string;
  report: R;
}

/** The part of a service's journal that holds reports for the HES. */
export interface ReportJournal<R extends { key: string }> {
  readonly isClosed: boolean;
  /** Reports not yet handed to the outbox, oldest first. */
  reports(limit?: number): Promise<QueuedReport<R>[]>;
  /** Removes delivered reports (synced). */
  removeReports(journalKeys: readonly string[]): Promise<void>;
}

export interface JournalReporterOptions<R extends { key: string }> {
  journal: ReportJournal<R>;
  /** Resolves once the record is safe (in the outbox on disk); rejects to try later. */
  deliver: (report: R) => Promise<unknown>;
  /** Reports read per pass (default 100). */
  batch?: number;
  minRetryMs?: number;
  maxRetryMs?: number;
  /** Looks at the journal this often while idle even without a kick (default 30 s). */
  idlePollMs?: number;
  /** Told about the first failure of a streak and about the recovery. */
  onProblem?: (problem: string | undefined) => void;
}

export interface JournalReporterCounters {
  delivered: number;
  failures: number;
  /** Reports that could not be decoded, removed without delivery. */
  discarded: number;
  lastError?: string;
}

export class JournalReporter<R extends { key: string }> {
  readonly counters: JournalReporterCounters = { delivered: 0, failures: 0, discarded: 0 };
  private running: Promise<void> | undefined;
  private stopped = false;
  private kicked = false;
  private wake: (() => void) | undefined;
  private failing = false;
  private delivering = false;

  constructor(private readonly options: JournalReporterOptions<R>) {}

  /** Starts delivering what the journal holds now and whatever comes later (kick()). */
  start(): void {
    if (this.running || this.stopped) return;
    this.running = this.loop();
  }

  /** New reports were journaled: deliver them now (also ends a retry wait). */
  kick(): void {
    this.kicked = true;
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Resolves when the journal holds no report (or the reporter stopped). For tests and orderly shutdown. */
  async drained(): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      if ((await this.options.journal.reports(1)).length === 0) return;
      await new Promise<void>((resolve) => {
        const previous = this.idleWaiters;
        this.idleWaiters = () => {
          previous?.();
          resolve();
        };
        // The loop may have gone idle between the read above and now: make it look again.
        this.kick();
      });
    }
  }

  /**
   * Stops; undelivered reports stay in the journal for the next start. Does
   * not wait for a delivery in progress (the outbox may be closing too): if it
   * still lands, the next start delivers that report again under its key.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.kick();
    if (!this.delivering) await this.running;
    this.idleWaiters?.();
    this.idleWaiters = undefined;
  }

  private idleWaiters: (() => void) | undefined;

  private async loop(): Promise<void> {
    let retryMs = this.options.minRetryMs ?? 1000;
    const maxRetryMs = this.options.maxRetryMs ?? 60_000;
    while (!this.stopped) {
      this.kicked = false;
      let failed = false;
      try {
        const queued = await this.options.journal.reports(this.options.batch ?? 100);
        if (queued.length === 0) {
          this.notifyIdle();
          // A kick normally wakes it; the poll is a safety net should a kick ever be missed.
          if (!this.kicked) await this.sleep(this.options.idlePollMs ?? 30_000);
          continue;
        }
        const done: string[] = [];
        try {
          for (const { journalKey, report } of queued) {
            if (this.stopped) break;
            if (report.key === '') {
              this.counters.discarded += 1;
              done.push(journalKey);
              continue;
            }
            this.delivering = true;
            try {
              await this.options.deliver(report);
            } finally {
              this.delivering = false;
            }
            this.counters.delivered += 1;
            done.push(journalKey);
          }
        } finally {
          // What was delivered leaves the journal even when a later one failed.
          if (done.length > 0 && !this.options.journal.isClosed) await this.options.journal.removeReports(done);
        }
      } catch (err) {
        if (this.stopped) break;
        failed = true;
        this.counters.failures += 1;
        this.counters.lastError = (err as Error)?.message ?? String(err);
        if (!this.failing) this.options.onProblem?.(this.counters.lastError);
        this.failing = true;
      }
      if (failed) {
        if (!this.kicked) await this.sleep(retryMs);
        retryMs = Math.min(maxRetryMs, retryMs * 2);
      } else {
        if (this.failing) this.options.onProblem?.(undefined);
        this.failing = false;
        retryMs = this.options.minRetryMs ?? 1000;
      }
    }
    this.notifyIdle();
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = undefined;
    waiters?.();
  }

  /** Waits for a kick, or `ms` when given. */
  private sleep(ms: number | undefined): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(finish, ms);
      // Waiting for work must not keep a process alive that is otherwise done.
      timer?.unref();
      const self = this;
      function finish(): void {
        clearTimeout(timer);
        if (self.wake === finish) self.wake = undefined;
        resolve();
      }
      this.wake = finish;
    });
  }
}

/**
 * The reports part of a service's journal, stored in its LevelDB sublevel
 * under `u!<sequence>!<key>`: written in the same batch as what they report
 * (`operation()`), read oldest first, removed once delivered. The relay
 * journal and the firmware rollout journal keep theirs this way.
 */
export class JournalReportQueue<R extends { key: string }> {
  private sequence = 0;

  constructor(
    private readonly sublevel: GatewaySublevel,
    private readonly committer: GroupCommitter,
    private readonly options: {
      /** The report of a value that cannot be decoded: key '' (the reporter removes it undelivered). */
      undecodable: R;
      /** Decodes a stored value; undefined when it is not a report. */
      decode: (value: Uint8Array) => R | undefined;
    },
  ) {}

  /** The write that queues `report`, for the batch of what it reports. */
  operation(report: R): BatchOperation {
    return { type: 'put', key: `u!${this.nextSequence()}!${report.key}`, value: cborEncode(withoutUndefined(report)), sublevel: this.sublevel };
  }

  async read(limit = 100): Promise<QueuedReport<R>[]> {
    const out: QueuedReport<R>[] = [];
    for await (const [key, value] of this.sublevel.iterator({ gte: 'u!', lt: 'u"', limit })) {
      out.push({ journalKey: key, report: this.options.decode(value) ?? this.options.undecodable });
    }
    return out;
  }

  /** Removes delivered reports (synced). */
  remove(journalKeys: readonly string[]): Promise<void> {
    if (journalKeys.length === 0) return Promise.resolve();
    return this.committer.write(
      journalKeys.map((key) => ({ type: 'del' as const, key, sublevel: this.sublevel })),
      undefined,
      true,
    );
  }

  /** Sortable and increasing within this process, and after a restart (time-based). */
  private nextSequence(): string {
    const now = Date.now();
    this.sequence = now > this.sequence ? now : this.sequence + 1;
    return this.sequence.toString(36).padStart(10, '0');
  }
}

/** Drops undefined members (CBOR would keep them as `undefined`). */
export function withoutUndefined<T extends object>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}
