import { EventEmitter } from 'node:events';
import { coapCall } from '../coap/request.js';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { decodeAck, encodeBatch, HesContractError, MAX_BATCH_RECORDS, RECORDS_PATH, type HesRecord } from './contract.js';

export interface HesUplinkOptions {
  /** Identity sent with every batch. */
  gateway: string;
  /** HES base URLs in order of preference (primary first). */
  endpoints: string[];
  requestTimeoutMs: number;
  /** How long a record may wait for companions before its batch is sent. */
  lingerMs: number;
  maxBatch: number;
  /** Records held in memory waiting for the HES; past this, submit() refuses at once. */
  maxQueued: number;
}

export const DEFAULT_UPLINK_OPTIONS = {
  requestTimeoutMs: 5000,
  lingerMs: 5,
  maxBatch: 64,
  maxQueued: 10_000,
} as const;

export type HesUplinkErrorCode = 'QUEUE_FULL' | 'UNAVAILABLE' | 'REJECTED' | 'CLOSED';

export class HesUplinkError extends Error {
  override readonly name = 'HesUplinkError';
  constructor(
    readonly code: HesUplinkErrorCode,
    message: string,
  ) {
    super(message);
  }
}

interface Queued {
  record: HesRecord;
  resolve: () => void;
  reject: (err: HesUplinkError) => void;
}

export interface HesUplinkEvents {
  /** A batch left the queue for the HES. */
  sending: [records: number];
  delivered: [records: HesRecord[], endpoint: string];
  failed: [err: HesUplinkError, records: number];
  endpoint: [endpoint: string];
}

/**
 * The HES's acknowledgement lists the keys it accepted, so it grows with the
 * batch. Batches are cut so that it fits one 1024-byte CoAP block: CoAP
 * libraries (the coap package among them) answer the later blocks of a
 * block-wise response with 2.05 instead of the original code, which would
 * turn a delivered batch into a failed one.
 */
export const MAX_ACK_BYTES = 1000;

/** How many records from the head of the queue make one batch. */
export function batchLength(queue: ReadonlyArray<{ record: HesRecord }>, maxBatch: number): number {
  let ackBytes = 16; // map header, "accepted", array header
  let count = 0;
  for (const { record } of queue) {
    // A CBOR text string costs its UTF-8 bytes plus up to 3 header bytes.
    const cost = Buffer.byteLength(record.key) + 3;
    if (count >= maxBatch || (count > 0 && ackBytes + cost > MAX_ACK_BYTES)) break;
    ackBytes += cost;
    count += 1;
  }
  return count;
}

/** Joins a HES base URL and a resource path without doubling slashes. */
export function hesResourceUrl(base: string, resource: string): string {
  return base.replace(/\/+$/, '') + resource;
}

/**
 * Delivers records to the HES in CBOR batches and tells each submitter
 * whether the HES accepted its record. One batch is in flight at a time, so
 * a recovering HES sees a steady stream instead of every waiting meter at
 * once. Endpoints are tried in order; the one that answered last stays
 * active. (Health probes, gray-failure detection and failback come with the
 * north-side work.)
 */
export class HesUplink extends EventEmitter<HesUplinkEvents> {
  private readonly queue: Queued[] = [];
  private inFlight = 0;
  private sending = false;
  private lingerTimer: NodeJS.Timeout | undefined;
  private activeIndex = 0;
  private closed = false;
  private flushing: Promise<void> | undefined;
  private readonly abort = new AbortController();
  /** Each record waiting or in flight, by key: a resend joins the first submission. */
  private readonly byKey = new Map<string, Promise<void>>();
  private readonly options: HesUplinkOptions;

  constructor(options: HesUplinkOptions) {
    super();
    if (options.endpoints.length === 0) throw new HesUplinkError('UNAVAILABLE', 'no HES endpoint configured');
    this.options = { ...options, maxBatch: Math.min(options.maxBatch, MAX_BATCH_RECORDS) };
  }

  /** Records accepted from the mesh and not yet confirmed by the HES. */
  get depth(): number {
    return this.queue.length + this.inFlight;
  }

  get activeEndpoint(): string {
    return this.options.endpoints[this.activeIndex] as string;
  }

  /**
   * Resolves once the HES accepted the record. A record whose key is already
   * waiting (a meter resending after a 5.03) joins that submission instead of
   * queueing a second copy.
   */
  submit(record: HesRecord): Promise<void> {
    if (this.closed) return Promise.reject(new HesUplinkError('CLOSED', 'HES uplink is closed'));
    const joined = this.byKey.get(record.key);
    if (joined) return joined;
    if (this.depth >= this.options.maxQueued) {
      return Promise.reject(new HesUplinkError('QUEUE_FULL', `${this.depth} records already wait for the HES`));
    }
    const submission = new Promise<void>((resolve, reject) => {
      this.queue.push({ record, resolve, reject });
      this.schedule();
    });
    this.byKey.set(record.key, submission);
    // Joined callers get the outcome through `submission`; this only forgets the key.
    submission.then(
      () => this.byKey.delete(record.key),
      () => this.byKey.delete(record.key),
    );
    return submission;
  }

  /** Rejects what waits, aborts the batch in flight and resolves once it has settled. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.lingerTimer);
    this.abort.abort();
    for (const entry of this.queue.splice(0)) {
      entry.reject(new HesUplinkError('CLOSED', 'HES uplink closed before delivery'));
    }
    await this.flushing;
  }

  private schedule(): void {
    if (this.sending || this.queue.length === 0) return;
    if (this.queue.length >= this.options.maxBatch) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = undefined;
      this.flushing = this.flush();
    } else if (!this.lingerTimer) {
      this.lingerTimer = setTimeout(() => {
        this.lingerTimer = undefined;
        this.flushing = this.flush();
      }, this.options.lingerMs);
    }
  }

  private async flush(): Promise<void> {
    if (this.sending || this.queue.length === 0) return;
    this.sending = true;
    const batch = this.queue.splice(0, batchLength(this.queue, this.options.maxBatch));
    this.inFlight = batch.length;
    this.emit('sending', batch.length);
    try {
      await this.deliver(batch);
    } finally {
      this.inFlight = 0;
      this.sending = false;
      if (!this.closed) this.schedule();
    }
  }

  private async deliver(batch: Queued[]): Promise<void> {
    let outcome: { accepted: Set<string>; endpoint: string };
    try {
      outcome = await this.postBatch(batch.map((q) => q.record));
    } catch (err) {
      const error = err instanceof HesUplinkError ? err : new HesUplinkError('UNAVAILABLE', (err as Error).message);
      for (const entry of batch) this.settle(entry, error);
      return;
    }
    for (const entry of batch) {
      this.settle(
        entry,
        outcome.accepted.has(entry.record.key) ? undefined : new HesUplinkError('REJECTED', `HES did not accept record ${entry.record.key}`),
      );
    }
  }

  /**
   * Posts one batch (at most MAX_BATCH_RECORDS, its acknowledgement within
   * MAX_ACK_BYTES: see batchLength) to the HES sites in order, starting with
   * the active one, and resolves with the keys the HES accepted. Rejects with
   * UNAVAILABLE when no site answered, REJECTED when one refused the batch
   * (4.xx), CLOSED when the uplink closed meanwhile. Emits 'delivered' and
   * 'failed' as a submitted batch does.
   */
  async postBatch(records: HesRecord[]): Promise<{ accepted: Set<string>; endpoint: string }> {
    if (this.closed) throw new HesUplinkError('CLOSED', 'HES uplink is closed');
    const payload = encodeBatch({ gateway: this.options.gateway, records });
    const failures: string[] = [];
    const count = this.options.endpoints.length;
    for (let attempt = 0; attempt < count; attempt++) {
      const index = (this.activeIndex + attempt) % count;
      try {
        const outcome = await this.deliverTo(index, payload, records);
        if (outcome) return outcome;
      } catch (err) {
        if (err instanceof HesUplinkError) throw err;
        if (this.closed) break;
        failures.push(`${this.options.endpoints[index]}: ${(err as Error).message}`);
      }
    }
    if (this.closed) throw new HesUplinkError('CLOSED', 'HES uplink closed during delivery');
    const error = new HesUplinkError('UNAVAILABLE', `no HES accepted the batch (${failures.join('; ')})`);
    this.emit('failed', error, records.length);
    throw error;
  }

  /** Tells a submitter the outcome of its record; it no longer counts as waiting. */
  private settle(entry: Queued, error?: HesUplinkError): void {
    this.inFlight = Math.max(0, this.inFlight - 1);
    if (error) entry.reject(error);
    else entry.resolve();
  }

  /** The endpoint that just answered becomes the active one, before anyone hears of the outcome. */
  private activate(index: number): void {
    if (index === this.activeIndex) return;
    this.activeIndex = index;
    this.emit('endpoint', this.activeEndpoint);
  }

  /** The accepted keys when this site gave a final answer; throws (plain Error) to try the next site. */
  private async deliverTo(index: number, payload: Buffer, records: HesRecord[]): Promise<{ accepted: Set<string>; endpoint: string }> {
    const endpoint = this.options.endpoints[index] as string;
    const response = await coapCall(hesResourceUrl(endpoint, RECORDS_PATH), {
      method: 'POST',
      payload,
      contentFormat: CONTENT_FORMAT.cbor,
      accept: CONTENT_FORMAT.cbor,
      timeoutMs: this.options.requestTimeoutMs,
      signal: this.abort.signal,
    });
    if (response.code === '2.04' || response.code === '2.01') {
      let accepted: Set<string>;
      try {
        accepted = new Set(decodeAck(response.payload).accepted);
      } catch (err) {
        if (err instanceof HesContractError) throw new Error(`unreadable acknowledgement: ${err.message}`);
        throw err;
      }
      this.activate(index);
      this.emit('delivered', records.filter((record) => accepted.has(record.key)), endpoint);
      return { accepted, endpoint };
    }
    if (response.code.startsWith('4.')) {
      const error = new HesUplinkError(
        'REJECTED',
        `HES refused the batch with ${response.code}: ${response.payload.toString('utf8').slice(0, 200)}`,
      );
      this.activate(index);
      this.emit('failed', error, records.length);
      throw error;
    }
    throw new Error(`answered ${response.code}${response.maxAge === undefined ? '' : ` (Max-Age ${response.maxAge})`}`);
  }
}

