import type { AbstractBatchOperation } from 'abstract-level';
import { StoreError, type GatewayDatabase } from './database.js';

export type BatchOperation = AbstractBatchOperation<GatewayDatabase, string, Uint8Array>;

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * What a writer adds to each batch it has writes in, computed when the batch
 * is cut rather than when each write is queued: a summary record (counters)
 * written with a batch then says exactly what that batch and the ones before
 * it did, also when an earlier batch failed.
 */
export interface BatchSummary<T> {
  /** Runs before each batch is written, after the previous one settled; a throw fails the batch. */
  prepare?(): Promise<void>;
  /** Operations written last in the batch, from the tags of the writes in it. */
  operations(tags: readonly T[]): BatchOperation[];
  /** The batch is on disk. */
  written?(tags: readonly T[]): void;
  /** The batch was not written (nothing of it is on disk); every waiter is rejected with `err`. */
  failed?(tags: readonly T[], err: Error): void;
}

export interface GroupCommitOptions {
  lingerMs: number;
  maxOperations: number;
  sync: boolean;
}

/**
 * Group commit: writes queued within `lingerMs` (or until `maxOperations`)
 * go to LevelDB as one batch with `sync: true`, so a thousand writers pay for
 * one fsync, and each writer learns when its write is on disk.
 */
export class GroupCommitter<T = never> {
  private queue: BatchOperation[] = [];
  private waiters: Waiter[] = [];
  private tags: T[] = [];
  private timer: NodeJS.Timeout | undefined;
  /** A flush due at once: setImmediate, as setTimeout(0) waits a millisecond or more. */
  private immediate: NodeJS.Immediate | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;
  /** Batches written, for metrics and tests. */
  batches = 0;

  constructor(
    private readonly db: GatewayDatabase,
    private readonly options: GroupCommitOptions = { lingerMs: 2, maxOperations: 1000, sync: true },
    private readonly summary?: BatchSummary<T>,
  ) {}

  /**
   * Queues operations; resolves once they are durably written, rejects (and
   * nothing of the batch is on disk) when the batch could not be written.
   * `tag` goes to the summary of the batch that carries them. `soon`: cut
   * the batch now rather than after the linger time (for a lone writer that
   * waits on it, like a drain acknowledging what the HES took, lingering
   * only adds latency); what others queued goes with it.
   */
  write(operations: BatchOperation[], tag?: T, soon = false): Promise<void> {
    if (this.closed) return Promise.reject(new StoreError('CLOSED', 'store is closed'));
    for (const operation of operations) this.queue.push(operation);
    if (tag !== undefined) this.tags.push(tag);
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (soon || this.queue.length >= this.options.maxOperations) this.flushSoon(0);
    else this.flushSoon(this.options.lingerMs);
    return done;
  }

  private flushSoon(delayMs: number): void {
    if (this.immediate) return;
    if (delayMs > 0) {
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        void this.flush();
      }, delayMs);
      return;
    }
    clearTimeout(this.timer);
    this.timer = undefined;
    this.immediate = setImmediate(() => {
      this.immediate = undefined;
      void this.flush();
    });
  }

  /** Writes whatever is queued now; resolves when it (and earlier batches) are on disk. */
  flush(): Promise<void> {
    const operations = this.queue;
    const waiters = this.waiters;
    const tags = this.tags;
    this.queue = [];
    this.waiters = [];
    this.tags = [];
    // Batches are chained so they reach the disk in the order they were queued.
    this.flushing = this.flushing.then(async () => {
      if (operations.length === 0 && waiters.length === 0) return;
      try {
        await this.summary?.prepare?.();
        if (this.summary) operations.push(...this.summary.operations(tags));
        await writeBatch(this.db, operations, this.options.sync);
      } catch (err) {
        this.summary?.failed?.(tags, err as Error);
        for (const waiter of waiters) waiter.reject(err as Error);
        return;
      }
      this.batches += 1;
      this.summary?.written?.(tags);
      for (const waiter of waiters) waiter.resolve();
    });
    return this.flushing;
  }

  /** Flushes what is queued and refuses further writes. */
  async close(): Promise<void> {
    clearTimeout(this.timer);
    clearImmediate(this.immediate);
    this.timer = undefined;
    this.immediate = undefined;
    await this.flush();
    this.closed = true;
  }
}

/**
 * Writes operations as one atomic LevelDB batch. The chained form: abstract-level's
 * array form costs about six times as much per operation (it clones and checks each).
 */
export async function writeBatch(db: GatewayDatabase, operations: readonly BatchOperation[], sync: boolean): Promise<void> {
  const batch = db.batch();
  for (const op of operations) {
    const options = op.sublevel ? { sublevel: op.sublevel } : {};
    if (op.type === 'put') batch.put(op.key, op.value, options);
    else batch.del(op.key, options);
  }
  await batch.write({ sync });
}
