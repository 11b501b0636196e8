import type { AbstractBatchOperation } from 'abstract-level';
import type { GatewayDatabase } from './database.js';

export type BatchOperation = AbstractBatchOperation<GatewayDatabase, string, Uint8Array>;

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Group commit: writes queued within `lingerMs` (or until `maxOperations`)
 * go to LevelDB as one batch with `sync: true`, so a thousand writers pay for
 * one fsync, and each writer learns when its write is on disk.
 */
export class GroupCommitter {
  private queue: BatchOperation[] = [];
  private waiters: Waiter[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;
  /** Batches written, for metrics and tests. */
  batches = 0;

  constructor(
    private readonly db: GatewayDatabase,
    private readonly options: { lingerMs: number; maxOperations: number; sync: boolean } = {
      lingerMs: 2,
      maxOperations: 1000,
      sync: true,
    },
  ) {}

  /** Queues operations; resolves once they are durably written. */
  write(operations: BatchOperation[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error('store is closed'));
    this.queue.push(...operations);
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (this.queue.length >= this.options.maxOperations) this.flushSoon(0);
    else this.flushSoon(this.options.lingerMs);
    return done;
  }

  private flushSoon(delayMs: number): void {
    if (this.timer && delayMs > 0) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, delayMs);
  }

  /** Writes whatever is queued now; resolves when it (and earlier batches) are on disk. */
  flush(): Promise<void> {
    const operations = this.queue;
    const waiters = this.waiters;
    this.queue = [];
    this.waiters = [];
    // Batches are chained so they reach the disk in the order they were queued.
    this.flushing = this.flushing.then(async () => {
      if (operations.length === 0) return;
      try {
        await writeBatch(this.db, operations, this.options.sync);
        this.batches += 1;
        for (const waiter of waiters) waiter.resolve();
      } catch (err) {
        for (const waiter of waiters) waiter.reject(err as Error);
      }
    });
    return this.flushing;
  }

  /** Flushes what is queued and refuses further writes. */
  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
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
