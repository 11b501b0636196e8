import { cborDecode, cborEncode } from '../coap/cbor.js';
import { openSublevel, type GatewayDatabase } from './database.js';
import { GroupCommitter, type BatchOperation } from './group-commit.js';

/**
 * The durable outbox for records on their way to the HES.
 *
 * Three priority classes: `alarm` (alarms and command results) before
 * `event` before `metrology`. Within a class records leave in the order they
 * came, so a meter's records stay in order.
 *
 * Everything lives in LevelDB, so a backlog of a million records costs disk,
 * not memory:
 *   q/<rank>!<seq>   the record (CBOR: idempotency key, meter, enqueue time, payload)
 *   k/<key>          <rank>!<seq> of the record with that idempotency key
 *   meta             sequence, counts and bytes per class, dropped and expired counts
 * An append is group-committed with others (a few milliseconds, one synced
 * batch) and resolves only once it is on disk: what a meter is told is safe is.
 *
 * Disk budget: past `maxBytes` the oldest metrology records are dropped (and
 * counted) to make room; alarms, command results and events are never
 * dropped for space. When no metrology is left to drop, the append fails
 * with FULL, which the mesh turns into 5.03: back-pressure instead of loss.
 * Records older than their class's TTL are dropped by sweep() and counted.
 */
export type OutboxClass = 'alarm' | 'event' | 'metrology';
export const OUTBOX_CLASSES: readonly OutboxClass[] = ['alarm', 'event', 'metrology'];

export interface OutboxOptions {
  /** Disk budget for records (payload plus key and meter), in bytes. */
  maxBytes: number;
  /** How long a record of each class may wait, in ms. */
  ttlMs: Record<OutboxClass, number>;
  now?: () => number;
  /** fsync each batch (default true). */
  sync?: boolean;
  /** Group commit window (default 2 ms). */
  lingerMs?: number;
}

export interface OutboxEntry {
  key: string;
  meter: string;
  recordClass: OutboxClass;
  payload: Uint8Array;
  enqueuedAt: number;
}

export interface OutboxClassStats {
  records: number;
  bytes: number;
  /** Age of the oldest waiting record, ms (undefined when none). */
  oldestAgeMs: number | undefined;
  dropped: number;
  expired: number;
}

export type OutboxStats = Record<OutboxClass, OutboxClassStats> & { bytes: number; maxBytes: number; inFlight: number };

export type OutboxErrorCode = 'FULL' | 'CLOSED' | 'BAD_RECORD';

export class OutboxError extends Error {
  override readonly name = 'OutboxError';
  constructor(
    readonly code: OutboxErrorCode,
    message: string,
  ) {
    super(message);
  }
}

interface Meta {
  seq: number;
  records: [number, number, number];
  bytes: [number, number, number];
  dropped: [number, number, number];
  expired: [number, number, number];
}

interface StoredRecord {
  k: string;
  m: string;
  t: number;
  p: Uint8Array;
}

/** Key and meter text besides the payload: counted against the budget. */
const MAX_KEY_LENGTH = 256;
const META_KEY = 'meta';

function rankOf(recordClass: OutboxClass): 0 | 1 | 2 {
  const rank = OUTBOX_CLASSES.indexOf(recordClass);
  if (rank < 0) throw new OutboxError('BAD_RECORD', `unknown record class ${String(recordClass)}`);
  return rank as 0 | 1 | 2;
}

/** Sequence numbers as fixed-width hex, so LevelDB's byte order is queue order. */
function queueKey(rank: number, seq: number): string {
  return `${rank}!${seq.toString(16).padStart(13, '0')}`;
}

function sizeOf(entry: { key: string; meter: string; payload: Uint8Array }): number {
  return Buffer.byteLength(entry.key) + Buffer.byteLength(entry.meter) + entry.payload.length;
}

function storedSize(record: StoredRecord): number {
  return sizeOf({ key: record.k, meter: record.m, payload: record.p });
}

function rankOfQueueKey(queueId: string): 0 | 1 | 2 {
  return Number(queueId[0]) as 0 | 1 | 2;
}

/** The queue key right after `queueId` in its class. */
function nextQueueKey(queueId: string): string {
  return queueKey(rankOfQueueKey(queueId), parseInt(queueId.slice(2), 16) + 1);
}

export class Outbox {
  private readonly queue;
  private readonly keys;
  private readonly metaStore;
  private readonly committer: GroupCommitter;
  private readonly now: () => number;
  /** Keys appended but perhaps not yet on disk, with the write that carries them. */
  private readonly unsettled = new Map<string, Promise<void>>();
  /** Queue keys handed out by take() and not yet acknowledged or released. */
  private readonly inFlight = new Set<string>();
  /** The same records by idempotency key, with their size: an acknowledgement needs no read. */
  private readonly inFlightByKey = new Map<string, { queueId: string; size: number }>();
  /**
   * Queue keys whose deletion (acknowledged, dropped, expired) is decided but
   * not yet on disk: take(), sweep() and the budget must not count them again.
   */
  private readonly removing = new Set<string>();
  /**
   * Per class, where take() goes on reading: every record before it is in
   * flight or gone, so a take does not walk over what earlier ones handed
   * out (nor LevelDB's tombstones of what was acknowledged).
   */
  private readonly takeFrom: string[] = OUTBOX_CLASSES.map((_, rank) => `${rank}!`);
  /** Per class, the earliest record released since the last take: take() starts there. */
  private readonly rewindTo: Array<string | undefined> = OUTBOX_CLASSES.map(() => undefined);
  /** take() runs one at a time: each continues where the previous one stopped. */
  private taking: Promise<unknown> = Promise.resolve();
  /** Appends run one after the other: each decides on the budget knowing what the previous did. */
  private appending: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly db: GatewayDatabase,
    private readonly meta: Meta,
    private readonly options: OutboxOptions,
  ) {
    this.queue = openSublevel(db, 'outbox-q');
    this.keys = openSublevel(db, 'outbox-k');
    this.metaStore = openSublevel(db, 'outbox-meta');
    this.committer = new GroupCommitter(db, { lingerMs: options.lingerMs ?? 2, maxOperations: 4000, sync: options.sync ?? true });
    this.now = options.now ?? Date.now;
  }

  /** Records waiting, all classes (in flight included). */
  get depth(): number {
    return this.meta.records[0] + this.meta.records[1] + this.meta.records[2];
  }

  static async open(db: GatewayDatabase, options: OutboxOptions): Promise<Outbox> {
    if (!(options.maxBytes > 0)) throw new RangeError('outbox maxBytes must be positive');
    const stored = await openSublevel(db, 'outbox-meta').get(META_KEY);
    const meta: Meta = stored
      ? (cborDecode(stored) as Meta)
      : { seq: 0, records: [0, 0, 0], bytes: [0, 0, 0], dropped: [0, 0, 0], expired: [0, 0, 0] };
    return new Outbox(db, meta, options);
  }

  /**
   * Appends a record; resolves once it is on disk (`duplicate` when a record
   * with that key is already waiting, which is then the one that counts).
   * Throws OutboxError FULL when the budget is used up by records that are
   * never dropped for space.
   */
  async append(entry: Omit<OutboxEntry, 'enqueuedAt'>): Promise<{ duplicate: boolean }> {
    if (this.closed) throw new OutboxError('CLOSED', 'the outbox is closed');
    if (typeof entry.key !== 'string' || entry.key === '' || entry.key.length > MAX_KEY_LENGTH) {
      throw new OutboxError('BAD_RECORD', `an idempotency key is 1-${MAX_KEY_LENGTH} characters`);
    }
    if (typeof entry.meter !== 'string' || !(entry.payload instanceof Uint8Array)) throw new OutboxError('BAD_RECORD', 'a record needs a meter and a payload');
    rankOf(entry.recordClass);
    // Looked up in parallel with other appends; the decision below re-checks what is in flight.
    const stored = this.unsettled.has(entry.key) ? undefined : await this.keys.get(entry.key);
    // The decisions (duplicate, budget, sequence) are taken one append at a time, each knowing what
    // the previous one did; the wait for the disk is not, so concurrent appends share a batch.
    const decided = this.appending.then(() => this.decide(entry, stored !== undefined));
    this.appending = decided.catch(() => undefined);
    const { duplicate, written } = await decided;
    await written;
    return { duplicate };
  }

  private async decide(entry: Omit<OutboxEntry, 'enqueuedAt'>, storedAlready: boolean): Promise<{ duplicate: boolean; written: Promise<void> }> {
    if (this.closed) throw new OutboxError('CLOSED', 'the outbox is closed');
    const rank = rankOf(entry.recordClass);
    const pending = this.unsettled.get(entry.key);
    if (pending) return { duplicate: true, written: pending };
    if (storedAlready) return { duplicate: true, written: Promise.resolve() };
    const size = sizeOf(entry);
    const operations: BatchOperation[] = [];
    const dropped: string[] = [];
    const total = (): number => this.meta.bytes[0] + this.meta.bytes[1] + this.meta.bytes[2];
    if (total() + size > this.options.maxBytes) {
      // Make room by dropping the oldest metrology, never anything else.
      for await (const [queueId, value] of this.queue.iterator({ gte: '2!', lt: '2"' })) {
        if (total() + size <= this.options.maxBytes) break;
        if (!this.available(queueId)) continue;
        const old = cborDecode(value) as StoredRecord;
        operations.push({ type: 'del', key: queueId, sublevel: this.queue }, { type: 'del', key: old.k, sublevel: this.keys });
        dropped.push(queueId);
        this.removing.add(queueId);
        this.meta.records[2] -= 1;
        this.meta.bytes[2] -= storedSize(old);
        this.meta.dropped[2] += 1;
      }
      if (total() + size > this.options.maxBytes) {
        // Nothing dropped is undone in memory either: the drops above stay queued below, written or not.
        if (operations.length > 0) await this.removed(dropped, this.committer.write([...operations, this.metaOperation()]));
        throw new OutboxError('FULL', `the outbox budget of ${this.options.maxBytes} bytes is used by records that are never dropped; try again later`);
      }
    }
    const queueId = queueKey(rank, this.meta.seq);
    this.meta.seq += 1;
    this.meta.records[rank] += 1;
    this.meta.bytes[rank] += size;
    const record: StoredRecord = { k: entry.key, m: entry.meter, t: this.now(), p: entry.payload };
    operations.push(
      { type: 'put', key: queueId, value: cborEncode(record), sublevel: this.queue },
      { type: 'put', key: entry.key, value: Buffer.from(queueId), sublevel: this.keys },
      this.metaOperation(),
    );
    const written = this.removed(dropped, this.committer.write(operations));
    const settled = written.then(
      () => {
        this.unsettled.delete(entry.key);
      },
      (err: unknown) => {
        this.unsettled.delete(entry.key);
        throw err;
      },
    );
    // A duplicate arriving meanwhile waits for this write, and fails with it.
    this.unsettled.set(entry.key, settled);
    return { duplicate: false, written: settled };
  }

  /**
   * Up to `limit` waiting records, highest class first and oldest first,
   * not already handed out. They stay in the outbox until ack() (delivered)
   * or release() (to be tried again).
   */
  take(limit: number): Promise<OutboxEntry[]> {
    const taken = this.taking.then(() => this.takeNow(limit));
    this.taking = taken.catch(() => undefined);
    return taken;
  }

  private async takeNow(limit: number): Promise<OutboxEntry[]> {
    const out: OutboxEntry[] = [];
    for (const [rank, recordClass] of OUTBOX_CLASSES.entries()) {
      if (out.length >= limit) break;
      const rewind = this.rewindTo[rank];
      this.rewindTo[rank] = undefined;
      let from = rewind !== undefined && rewind < this.takeFrom[rank]! ? rewind : this.takeFrom[rank]!;
      for await (const [queueId, value] of this.queue.iterator({ gte: from, lt: `${rank}"` })) {
        if (out.length >= limit) break;
        from = nextQueueKey(queueId);
        if (!this.available(queueId)) continue;
        const record = cborDecode(value) as StoredRecord;
        this.inFlight.add(queueId);
        this.inFlightByKey.set(record.k, { queueId, size: storedSize(record) });
        out.push({ key: record.k, meter: record.m, recordClass, payload: record.p, enqueuedAt: record.t });
      }
      this.takeFrom[rank] = from;
    }
    return out;
  }

  /** Removes delivered records (by idempotency key); resolves once that is on disk. */
  async ack(keys: readonly string[]): Promise<number> {
    const operations: BatchOperation[] = [];
    const acknowledged: string[] = [];
    for (const key of keys) {
      const held = this.inFlightByKey.get(key) ?? (await this.lookUp(key));
      if (held === undefined) continue;
      this.inFlight.delete(held.queueId);
      this.inFlightByKey.delete(key);
      acknowledged.push(held.queueId);
      this.removing.add(held.queueId);
      const rank = rankOfQueueKey(held.queueId);
      operations.push({ type: 'del', key, sublevel: this.keys }, { type: 'del', key: held.queueId, sublevel: this.queue });
      this.meta.records[rank] -= 1;
      this.meta.bytes[rank] -= held.size;
    }
    if (operations.length > 0) await this.removed(acknowledged, this.committer.write([...operations, this.metaOperation()]));
    return acknowledged.length;
  }

  /** A record not handed out by this process (acknowledged after a restart, say); undefined when gone or on its way out. */
  private async lookUp(key: string): Promise<{ queueId: string; size: number } | undefined> {
    const stored = await this.keys.get(key);
    if (stored === undefined) return undefined;
    const queueId = Buffer.from(stored).toString();
    const value = await this.queue.get(queueId);
    // Looked at after the reads: it may have been handed out, acknowledged or expired meanwhile.
    const held = this.inFlightByKey.get(key);
    if (held !== undefined) return held;
    if (value === undefined || this.removing.has(queueId)) return undefined;
    return { queueId, size: storedSize(cborDecode(value) as StoredRecord) };
  }

  /** Hands records out again (delivery failed or was only partly accepted). */
  release(keys: readonly string[]): void {
    for (const key of keys) {
      const held = this.inFlightByKey.get(key);
      if (held === undefined) continue;
      this.inFlightByKey.delete(key);
      this.inFlight.delete(held.queueId);
      // The next take() goes back for it.
      const rank = rankOfQueueKey(held.queueId);
      const rewind = this.rewindTo[rank];
      if (rewind === undefined || held.queueId < rewind) this.rewindTo[rank] = held.queueId;
    }
  }

  /** Drops records older than their class's TTL; returns how many. */
  async sweep(): Promise<number> {
    const now = this.now();
    const operations: BatchOperation[] = [];
    const expired: string[] = [];
    for (const [index, recordClass] of OUTBOX_CLASSES.entries()) {
      const rank = index as 0 | 1 | 2;
      const ttl = this.options.ttlMs[recordClass];
      // Within a class, queue order is age order: stop at the first record still young enough.
      for await (const [queueId, value] of this.queue.iterator({ gte: `${rank}!`, lt: `${rank}"` })) {
        const record = cborDecode(value) as StoredRecord;
        if (now - record.t <= ttl) break;
        if (!this.available(queueId)) continue;
        operations.push({ type: 'del', key: queueId, sublevel: this.queue }, { type: 'del', key: record.k, sublevel: this.keys });
        expired.push(queueId);
        this.removing.add(queueId);
        this.meta.records[rank] -= 1;
        this.meta.bytes[rank] -= storedSize(record);
        this.meta.expired[rank] += 1;
      }
    }
    if (operations.length > 0) await this.removed(expired, this.committer.write([...operations, this.metaOperation()]));
    return expired.length;
  }

  async stats(): Promise<OutboxStats> {
    const now = this.now();
    // The oldest record of each class, the three looked up at once.
    const oldest = await Promise.all(
      OUTBOX_CLASSES.map(async (_, rank) => {
        const [value] = await this.queue.values({ gte: `${rank}!`, lt: `${rank}"`, limit: 1 }).all();
        return value === undefined ? undefined : now - (cborDecode(value) as StoredRecord).t;
      }),
    );
    const perClass = {} as Record<OutboxClass, OutboxClassStats>;
    for (const [rank, recordClass] of OUTBOX_CLASSES.entries()) {
      perClass[recordClass] = {
        records: this.meta.records[rank]!,
        bytes: this.meta.bytes[rank]!,
        oldestAgeMs: oldest[rank],
        dropped: this.meta.dropped[rank]!,
        expired: this.meta.expired[rank]!,
      };
    }
    return { ...perClass, bytes: this.meta.bytes[0] + this.meta.bytes[1] + this.meta.bytes[2], maxBytes: this.options.maxBytes, inFlight: this.inFlight.size };
  }

  /** Waits for queued writes and refuses further appends. */
  async close(): Promise<void> {
    this.closed = true;
    await this.appending;
    await this.committer.close();
  }

  /** Neither handed out nor on its way out. */
  private available(queueId: string): boolean {
    return !this.inFlight.has(queueId) && !this.removing.has(queueId);
  }

  /** `write` with `queueIds` counted as removing until it is done (written or failed). */
  private removed(queueIds: readonly string[], write: Promise<void>): Promise<void> {
    if (queueIds.length === 0) return write;
    return write.finally(() => {
      for (const queueId of queueIds) this.removing.delete(queueId);
    });
  }

  private metaOperation(): BatchOperation {
    return { type: 'put', key: META_KEY, value: cborEncode(this.meta), sublevel: this.metaStore };
  }
}
