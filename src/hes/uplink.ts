import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { coapCall, CoapRequestError, type CoapResponse } from '../coap/request.js';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { decodeAck, encodeBatch, HesContractError, MAX_BATCH_RECORDS, RECORDS_PATH, type HesRecord } from './contract.js';
import {
  coapSiteProber,
  HesSites,
  isTimeout,
  type GrayFailure,
  type HesFailoverOptions,
  type HesSitesStatus,
  type SiteLog,
  type SiteProber,
  type SiteSwitch,
} from './sites.js';

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
  /** Latency budget, probes, failback hold (src/hes/sites.ts); defaults from DEFAULT_FAILOVER_OPTIONS. */
  failover?: Partial<HesFailoverOptions>;
  /** Where gray failures (COORDINATOR_TIMEOUT_EXCEEDED), failovers and failbacks are logged. */
  log?: SiteLog;
  /** How sites are probed; CoAP by default. */
  prober?: SiteProber;
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
    /** For REJECTED from the HES: the 4.xx it answered (the batch as a whole was refused). */
    readonly responseCode?: string,
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
  /** Records go to another site now (a failover or a failback). */
  endpoint: [endpoint: string];
  /** The same switch, with its reason. */
  switch: [change: SiteSwitch];
  /** A site answers probes but not batches within the latency budget. */
  gray: [failure: GrayFailure];
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
 * once. Which site a batch goes to is HesSites' choice (src/hes/sites.ts):
 * the active one, then the others when it fails; health probes, gray-failure
 * detection and failback with hysteresis live there.
 */
export class HesUplink extends EventEmitter<HesUplinkEvents> {
  private readonly queue: Queued[] = [];
  private inFlight = 0;
  private sending = false;
  private lingerTimer: NodeJS.Timeout | undefined;
  /** The sites, their health and the active one. */
  readonly sites: HesSites;
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
    this.sites = new HesSites(options.endpoints, options.failover ?? {}, options.prober ?? coapSiteProber(options.gateway), options.log);
    this.sites.on('switch', (change) => {
      this.emit('endpoint', change.to);
      this.emit('switch', change);
    });
    this.sites.on('gray', (failure) => this.emit('gray', failure));
    this.sites.start();
  }

  /** Records accepted from the mesh and not yet confirmed by the HES. */
  get depth(): number {
    return this.queue.length + this.inFlight;
  }

  get activeEndpoint(): string {
    return this.sites.activeUrl;
  }

  /** Sites, their state and latency, the active one, failover and failback counters. */
  status(): HesSitesStatus {
    return this.sites.status();
  }

  /**
   * The backhaul went down (or came back): probes pause, and batches failing
   * meanwhile are not held against the sites.
   */
  setLinkUp(up: boolean): void {
    this.sites.setLinkUp(up);
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
    this.sites.stop();
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
   * MAX_ACK_BYTES: see batchLength) to the active HES site, then to the others
   * as HesSites orders them, and resolves with the keys the HES accepted.
   * Rejects with UNAVAILABLE when no site answered, REJECTED when one refused
   * the batch (4.xx, in `responseCode`), CLOSED when the uplink closed
   * meanwhile. Emits 'delivered' and 'failed' as a submitted batch does
   * ('failed' for a refusal only with `reportRefusal`, true by default: the
   * drain's search for poison records sends parts of a refused batch again).
   */
  async postBatch(records: HesRecord[], { reportRefusal = true }: { reportRefusal?: boolean } = {}): Promise<{ accepted: Set<string>; endpoint: string }> {
    if (this.closed) throw new HesUplinkError('CLOSED', 'HES uplink is closed');
    const payload = encodeBatch({ gateway: this.options.gateway, records });
    const failures: string[] = [];
    const tried = new Set<number>();
    for (let index = this.sites.nextCandidate(tried); index !== undefined && !this.closed; index = this.sites.nextCandidate(tried)) {
      tried.add(index);
      try {
        return await this.deliverTo(index, payload, records, tried, reportRefusal);
      } catch (err) {
        if (err instanceof HesUplinkError) throw err;
        if (this.closed) break;
        failures.push(`${this.sites.url(index)}: ${(err as Error).message}`);
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

  /**
   * The accepted keys when this site gave a final answer; throws (plain Error)
   * to try the next site. While another usable site is left to try, a batch
   * unanswered after the latency budget × abortFactor is abandoned for it.
   */
  private async deliverTo(
    index: number,
    payload: Buffer,
    records: HesRecord[],
    tried: ReadonlySet<number>,
    reportRefusal: boolean,
  ): Promise<{ accepted: Set<string>; endpoint: string }> {
    const endpoint = this.sites.url(index);
    const abortAfter = this.sites.abortAfterMs(index, tried);
    const timeoutMs = abortAfter === undefined ? this.options.requestTimeoutMs : Math.min(this.options.requestTimeoutMs, abortAfter);
    const started = performance.now();
    let response: CoapResponse;
    try {
      response = await coapCall(hesResourceUrl(endpoint, RECORDS_PATH), {
        method: 'POST',
        payload,
        contentFormat: CONTENT_FORMAT.cbor,
        accept: CONTENT_FORMAT.cbor,
        timeoutMs,
        signal: this.abort.signal,
      });
    } catch (err) {
      if (!this.closed) {
        if (isTimeout(err)) this.sites.recordTimeout(index, timeoutMs);
        else if (!(err instanceof CoapRequestError && err.code === 'ABORTED')) this.sites.recordUnavailable(index);
      }
      throw err;
    }
    const latencyMs = performance.now() - started;
    if (response.code === '2.04' || response.code === '2.01') {
      let accepted: Set<string>;
      try {
        accepted = new Set(decodeAck(response.payload).accepted);
      } catch (err) {
        this.sites.recordUnavailable(index);
        if (err instanceof HesContractError) throw new Error(`unreadable acknowledgement: ${err.message}`);
        throw err;
      }
      // Before anyone hears of the outcome: a site that answered after another failed this batch is
      // where records go now. (The first site tried may no longer be the active one: a failback can
      // come while its batch is in flight, and that batch's answer must not undo it.)
      if (tried.size > 1) this.sites.answeredInstead(index);
      this.sites.recordAnswer(index, latencyMs);
      this.emit('delivered', records.filter((record) => accepted.has(record.key)), endpoint);
      return { accepted, endpoint };
    }
    if (response.code.startsWith('4.')) {
      const error = new HesUplinkError(
        'REJECTED',
        `HES refused the batch with ${response.code}: ${response.payload.toString('utf8').slice(0, 200)}`,
        response.code,
      );
      if (tried.size > 1) this.sites.answeredInstead(index);
      this.sites.recordAnswer(index, latencyMs);
      if (reportRefusal) this.emit('failed', error, records.length);
      throw error;
    }
    this.sites.recordUnavailable(index);
    throw new Error(`answered ${response.code}${response.maxAge === undefined ? '' : ` (Max-Age ${response.maxAge})`}`);
  }
}
