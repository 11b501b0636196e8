import { EventEmitter } from 'node:events';
import { cborDecode, cborEncode } from '../coap/cbor.js';
import type { Outbox, OutboxClass, OutboxEntry } from '../store/outbox.js';
import { MAX_BATCH_RECORDS, type HesRecord, type RecordKind } from './contract.js';
import { batchLength, HesUplinkError, type HesUplink } from './uplink.js';

/** Alarms and command results first, events next, metrology last. */
export function outboxClassOf(kind: RecordKind): OutboxClass {
  return kind === 'alarm' || kind === 'result' ? 'alarm' : kind === 'event' ? 'event' : 'metrology';
}

/** A HES record as the outbox keeps it. */
export function outboxEntryFor(record: HesRecord): Omit<OutboxEntry, 'enqueuedAt'> {
  return { key: record.key, meter: record.meter, recordClass: outboxClassOf(record.kind), payload: cborEncode(record) };
}

export interface OutboxDrainOptions {
  /** Records sent per second at most, so a HES coming back is not flattened by the backlog. */
  maxRecordsPerSecond: number;
  /** First wait after a failed batch; doubled (with jitter) up to retryMaxMs. */
  retryInitialMs: number;
  retryMaxMs: number;
  maxBatch: number;
  random?: () => number;
}

export const DEFAULT_DRAIN_OPTIONS: OutboxDrainOptions = { maxRecordsPerSecond: 2000, retryInitialMs: 1000, retryMaxMs: 60_000, maxBatch: 64 };

export interface OutboxDrainEvents {
  drained: [count: number, endpoint: string];
  failed: [err: HesUplinkError, count: number, retryInMs: number];
  /** A record in the outbox that is not a HES record (written by something else): removed. */
  unreadable: [key: string];
}

/**
 * Sends what waits in the outbox to the HES, one batch at a time, oldest and
 * most urgent first: only the records the HES accepted leave the outbox; the
 * rest are sent again. After a failure it waits (exponential backoff with
 * jitter); while the HES keeps up it sends at most maxRecordsPerSecond.
 */
export class OutboxDrain extends EventEmitter<OutboxDrainEvents> {
  private running: Promise<void> | undefined;
  private stopped = false;
  private wakeUp: (() => void) | undefined;
  private backoffMs = 0;
  /** Waiting for records (not backing off, not rate limiting): only then does an append wake it. */
  private idle = false;
  /** Set by every append: one that came while the outbox was being read is not missed. */
  private woken = false;
  private readonly options: OutboxDrainOptions;
  private readonly random: () => number;

  constructor(
    private readonly outbox: Outbox,
    private readonly uplink: HesUplink,
    options: Partial<OutboxDrainOptions> = {},
  ) {
    super();
    this.options = { ...DEFAULT_DRAIN_OPTIONS, ...options, maxBatch: Math.min(options.maxBatch ?? DEFAULT_DRAIN_OPTIONS.maxBatch, MAX_BATCH_RECORDS) };
    this.random = options.random ?? Math.random;
  }

  start(): void {
    this.stopped = false;
    this.running ??= this.run().finally(() => {
      this.running = undefined;
    });
  }

  /** Something was appended: send it now if the drain is idle (not while it backs off or keeps to its rate). */
  wake(): void {
    this.woken = true;
    if (this.idle) this.interrupt();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.interrupt();
    await this.running;
  }

  private interrupt(): void {
    const wake = this.wakeUp;
    this.wakeUp = undefined;
    wake?.();
  }

  /** Waits `ms` (forever when undefined) or until woken or stopped. */
  private pause(ms: number | undefined): Promise<void> {
    // stop() may have come while the loop was reading the outbox, before there was a pause to end.
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(() => this.interrupt(), ms);
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      this.woken = false;
      const taken = await this.outbox.take(this.options.maxBatch);
      if (taken.length === 0) {
        if (this.woken) continue;
        this.idle = true;
        await this.pause(undefined);
        this.idle = false;
        continue;
      }
      const records: HesRecord[] = [];
      const entries: OutboxEntry[] = [];
      const unreadable: string[] = [];
      for (const entry of taken) {
        try {
          records.push(cborDecode(entry.payload) as HesRecord);
          entries.push(entry);
        } catch {
          this.emit('unreadable', entry.key);
          unreadable.push(entry.key);
        }
      }
      if (unreadable.length > 0) await this.outbox.ack(unreadable);
      // The HES's acknowledgement must fit one CoAP block: the batch may be cut shorter.
      const count = batchLength(records.map((record) => ({ record })), this.options.maxBatch);
      this.outbox.release(entries.slice(count).map((e) => e.key));
      const batch = records.slice(0, count);
      if (batch.length === 0) continue;
      const started = Date.now();
      try {
        const { accepted, endpoint } = await this.uplink.postBatch(batch);
        const keys = batch.map((record) => record.key);
        const delivered = keys.filter((key) => accepted.has(key));
        await this.outbox.ack(delivered);
        this.outbox.release(keys.filter((key) => !accepted.has(key)));
        this.emit('drained', delivered.length, endpoint);
        if (delivered.length === 0) throw new HesUplinkError('REJECTED', `the HES accepted none of ${keys.length} records`);
        this.backoffMs = 0;
        // Rate limit: this batch may not have taken less than its share of a second.
        const share = (batch.length / this.options.maxRecordsPerSecond) * 1000;
        const spent = Date.now() - started;
        if (share > spent && !this.stopped) await this.pause(share - spent);
      } catch (err) {
        this.outbox.release(batch.map((record) => record.key));
        if (this.stopped) break;
        const error = err instanceof HesUplinkError ? err : new HesUplinkError('UNAVAILABLE', (err as Error).message);
        if (error.code === 'CLOSED') break;
        this.backoffMs = this.backoffMs === 0 ? this.options.retryInitialMs : Math.min(this.options.retryMaxMs, this.backoffMs * 2);
        const wait = Math.round(this.backoffMs * (0.75 + this.random() * 0.5));
        this.emit('failed', error, batch.length, wait);
        await this.pause(wait);
      }
    }
  }
}
