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

/** What the drain needs of the outbox (src/store/outbox.ts). */
export type DrainOutbox = Pick<Outbox, 'take' | 'ack' | 'release' | 'quarantine'>;

export interface OutboxDrainOptions {
  /** Records sent per second at most, so a HES coming back is not flattened by the backlog. */
  maxRecordsPerSecond: number;
  /** First wait after a failed batch; doubled (with jitter) up to retryMaxMs. */
  retryInitialMs: number;
  retryMaxMs: number;
  maxBatch: number;
  /**
   * A record the HES leaves out of its acknowledgement this many times in a
   * row, while accepting others of the same batch, is quarantined.
   */
  maxRefusals: number;
  random?: () => number;
}

export const DEFAULT_DRAIN_OPTIONS: OutboxDrainOptions = { maxRecordsPerSecond: 2000, retryInitialMs: 1000, retryMaxMs: 60_000, maxBatch: 64, maxRefusals: 3 };

export interface OutboxDrainEvents {
  drained: [count: number, endpoint: string];
  failed: [err: HesUplinkError, count: number, retryInMs: number];
  /** A record in the outbox that is not a HES record (written by something else): removed. */
  unreadable: [key: string];
  /** Records the HES refuses on their own, moved to the outbox's dead letters. */
  quarantined: [keys: string[], reason: string];
  /** The backhaul was reported down or up (setLinkUp). */
  link: [up: boolean, reason: string | undefined];
  /** The drain waits for the backhaul to come back before it sends anything. */
  'waiting-for-link': [];
}

type PauseKind = 'idle' | 'rate' | 'backoff' | 'link';

/**
 * Sends what waits in the outbox to the HES, one batch at a time, oldest and
 * most urgent first: only the records the HES accepted leave the outbox; the
 * rest are sent again. After a failure it waits (exponential backoff with
 * jitter); while the HES keeps up it sends at most maxRecordsPerSecond. The
 * site each batch goes to is the uplink's choice (failover, failback).
 *
 * Poison records: when the HES refuses a whole batch (4.xx), the batch is cut
 * in halves, and those again, until the records it refuses on their own are
 * found; they go to the outbox's dead letters (quarantine) and the rest is
 * delivered. When it refuses every record of the batch, one by one, the fault
 * is not in the records (a gateway id it does not know, a HES bug): nothing
 * is quarantined, and the batch is retried after the backoff.
 *
 * While the backhaul is down (setLinkUp(false)) it sends nothing and its
 * backoff does not grow; when the link comes back it drains at once.
 */
export class OutboxDrain extends EventEmitter<OutboxDrainEvents> {
  private running: Promise<void> | undefined;
  private stopped = false;
  private wakeUp: (() => void) | undefined;
  private backoffMs = 0;
  /** What the loop waits for right now, if it waits. */
  private pausing: PauseKind | undefined;
  /** Set by every append: one that came while the outbox was being read is not missed. */
  private woken = false;
  private linkUp = true;
  /** Records the HES answered for without listing them, and how many times in a row. */
  private readonly refusals = new Map<string, number>();
  private readonly options: OutboxDrainOptions;
  private readonly random: () => number;

  constructor(
    private readonly outbox: DrainOutbox,
    private readonly uplink: HesUplink,
    options: Partial<OutboxDrainOptions> = {},
  ) {
    super();
    this.options = { ...DEFAULT_DRAIN_OPTIONS, ...options, maxBatch: Math.min(options.maxBatch ?? DEFAULT_DRAIN_OPTIONS.maxBatch, MAX_BATCH_RECORDS) };
    this.random = options.random ?? Math.random;
  }

  get backhaulUp(): boolean {
    return this.linkUp;
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
    if (this.pausing === 'idle') this.interrupt();
  }

  /**
   * The backhaul (the VPN to the HES) went down or came back. Down: nothing
   * is sent, the backoff stays where it is, the uplink's probes pause. Up:
   * the backoff starts over and the outbox drains at once.
   */
  setLinkUp(up: boolean, reason?: string): void {
    if (up === this.linkUp) return;
    this.linkUp = up;
    this.uplink.setLinkUp(up);
    this.emit('link', up, reason);
    if (up) {
      this.backoffMs = 0;
      if (this.pausing === 'link' || this.pausing === 'backoff') this.interrupt();
    }
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
  private pause(kind: PauseKind, ms: number | undefined): Promise<void> {
    // stop() may have come while the loop was reading the outbox, before there was a pause to end.
    if (this.stopped) return Promise.resolve();
    this.pausing = kind;
    return new Promise<void>((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(() => this.interrupt(), ms);
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    }).finally(() => {
      this.pausing = undefined;
    });
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      if (!this.linkUp) {
        this.emit('waiting-for-link');
        await this.pause('link', undefined);
        continue;
      }
      this.woken = false;
      const taken = await this.outbox.take(this.options.maxBatch);
      if (taken.length === 0) {
        if (this.woken) continue;
        await this.pause('idle', undefined);
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
        const { delivered, sent } = await this.send(batch);
        if (delivered === 0) throw new HesUplinkError('REJECTED', `the HES accepted none of ${batch.length} records`);
        this.backoffMs = 0;
        // Rate limit: what was sent may not have taken less than its share of a second.
        const share = (sent / this.options.maxRecordsPerSecond) * 1000;
        const spent = Date.now() - started;
        if (share > spent && !this.stopped) await this.pause('rate', share - spent);
      } catch (err) {
        this.outbox.release(batch.map((record) => record.key));
        if (this.stopped) break;
        const error = err instanceof HesUplinkError ? err : new HesUplinkError('UNAVAILABLE', (err as Error).message);
        if (error.code === 'CLOSED') break;
        // The backhaul went down meanwhile: the HES is not at fault, and the loop now waits for the link.
        if (!this.linkUp) continue;
        this.backoffMs = this.backoffMs === 0 ? this.options.retryInitialMs : Math.min(this.options.retryMaxMs, this.backoffMs * 2);
        const wait = Math.round(this.backoffMs * (0.75 + this.random() * 0.5));
        this.emit('failed', error, batch.length, wait);
        await this.pause('backoff', wait);
      }
    }
  }

  /**
   * Sends `batch`, cutting it in halves while the HES refuses a part as a
   * whole (4.xx), and quarantines the single records it refuses. Resolves with
   * the records delivered (and quarantined: they are settled too) and the
   * records sent, retries included; rejects when a part could not be
   * delivered (no site answered) or when every record was refused.
   */
  private async send(batch: HesRecord[]): Promise<{ delivered: number; sent: number }> {
    const parts: HesRecord[][] = [batch];
    const refusedAlone: Array<{ key: string; reason: string }> = [];
    let delivered = 0;
    let sent = 0;
    let lastRefusal: HesUplinkError | undefined;
    while (parts.length > 0) {
      const part = parts.shift() as HesRecord[];
      sent += part.length;
      let outcome: { accepted: Set<string>; endpoint: string };
      try {
        // The whole batch's refusal is reported once; its parts, sent to find the poison, are not.
        outcome = await this.uplink.postBatch(part, { reportRefusal: part === batch });
      } catch (err) {
        if (err instanceof HesUplinkError && err.code === 'REJECTED' && err.responseCode !== undefined) {
          lastRefusal = err;
          if (part.length === 1) refusedAlone.push({ key: (part[0] as HesRecord).key, reason: err.message });
          else {
            const half = Math.ceil(part.length / 2);
            parts.unshift(part.slice(0, half), part.slice(half));
          }
          continue;
        }
        throw err;
      }
      delivered += await this.settle(part, outcome);
    }
    if (refusedAlone.length > 0) {
      if (refusedAlone.length === batch.length && batch.length > 0) {
        // Every record, alone, refused: not the records' fault. Retried after the backoff.
        throw lastRefusal ?? new HesUplinkError('REJECTED', 'the HES refused every record');
      }
      for (const { key, reason } of refusedAlone) await this.quarantine([key], `refused by the HES on its own: ${reason}`);
      delivered += refusedAlone.length;
    }
    return { delivered, sent };
  }

  /** Acknowledges what the HES accepted of `part`; counts refusals of the rest. Returns how many left the outbox. */
  private async settle(part: HesRecord[], outcome: { accepted: Set<string>; endpoint: string }): Promise<number> {
    const keys = part.map((record) => record.key);
    const accepted = keys.filter((key) => outcome.accepted.has(key));
    const refused = keys.filter((key) => !outcome.accepted.has(key));
    await this.outbox.ack(accepted);
    for (const key of accepted) this.refusals.delete(key);
    this.emit('drained', accepted.length, outcome.endpoint);
    const poison: string[] = [];
    // A record counts as refused only when the HES accepted others of the same batch: an
    // acknowledgement listing nothing says more about the HES than about the records.
    if (accepted.length > 0) {
      for (const key of refused) {
        const times = (this.refusals.get(key) ?? 0) + 1;
        if (times >= this.options.maxRefusals) {
          this.refusals.delete(key);
          poison.push(key);
        } else this.refusals.set(key, times);
      }
    }
    this.outbox.release(refused.filter((key) => !poison.includes(key)));
    if (poison.length > 0) await this.quarantine(poison, `not accepted by the HES in ${this.options.maxRefusals} batches in a row`);
    // The memory of refusals is bounded by what can be in flight; forget the oldest beyond that.
    while (this.refusals.size > 4 * MAX_BATCH_RECORDS) this.refusals.delete(this.refusals.keys().next().value as string);
    return accepted.length + poison.length;
  }

  private async quarantine(keys: string[], reason: string): Promise<void> {
    await this.outbox.quarantine(keys, reason);
    this.emit('quarantined', keys, reason);
  }
}
