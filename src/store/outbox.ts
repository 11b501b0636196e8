import { statfs } from 'node:fs/promises';
import { cborDecode, cborEncode } from '../coap/cbor.js';
import { openSublevel, StoreError, type GatewayDatabase } from './database.js';
import { GroupCommitter, type BatchOperation } from './group-commit.js';

/**
 * The durable outbox for records on their way to the HES.
 *
 * Three priority classes: `alarm` (alarms and command results) before
 * `event` before `metrology`. Within a class records leave in the order they
 * came, so a meter's records stay in order.
 *
 * Everything lives in LevelDB, so a backlog of a million records costs disk,
 * not memory (what is kept in memory is bounded by the appends and the batch
 * in flight, whatever the backlog):
 *   outbox-q    <rank>!<seq>  the record (CBOR: idempotency key, meter, enqueue time, payload)
 *   outbox-k    <key>         <rank>!<seq> of the record with that idempotency key (queued or dead)
 *   outbox-dead <rank>!<seq>  a dead letter: the record, why and when it was quarantined
 *   outbox-meta meta          sequence, counts and bytes per class, dropped, expired and dead counts
 * An append is group-committed with others (a few milliseconds, one synced
 * batch) and resolves only once it is on disk: what a meter is told is safe is.
 *
 * Disk budget: past `maxBytes` the oldest metrology records are dropped (and
 * counted) to make room; alarms, command results and events are never
 * dropped for space, nor are dead letters (which count against the budget:
 * they are on the disk). When no metrology is left to drop, the append fails
 * with FULL, which the mesh turns into 5.03: back-pressure instead of loss.
 * Records older than their class's TTL are dropped by sweep() and counted.
 *
 * Write failures (disk full, database closed): the counters written with each
 * batch are computed when the batch is cut, from what is on disk plus that
 * batch, and the counters in memory are rolled back when it fails, so neither
 * drifts; every append waiting for that batch is rejected (STORAGE or
 * CLOSED). LevelDB's log is left with a torn record after a failed write, and
 * everything written after it in the same log would be lost at the next open,
 * so before writing again the outbox waits for free space and has LevelDB
 * start a new log (see prepareWrite).
 */
export type OutboxClass = 'alarm' | 'event' | 'metrology';
export const OUTBOX_CLASSES: readonly OutboxClass[] = ['alarm', 'event', 'metrology'];

export interface OutboxOptions {
  /** Disk budget for records and dead letters (payload plus key and meter), in bytes. */
  maxBytes: number;
  /** How long a record of each class may wait, in ms. */
  ttlMs: Record<OutboxClass, number>;
  now?: () => number;
  /** fsync each batch (default true). */
  sync?: boolean;
  /** Group commit window (default 2 ms). */
  lingerMs?: number;
  /**
   * After a failed write, free bytes the database's file system needs before
   * writing resumes (default 8 MiB: LevelDB's 4 MiB memtable goes to a table
   * file then, and a compaction failing for space stops LevelDB writing).
   */
  resumeFreeBytes?: number;
}

export interface OutboxEntry {
  key: string;
  meter: string;
  recordClass: OutboxClass;
  payload: Uint8Array;
  enqueuedAt: number;
}

export interface OutboxClassStats {
  /** Records waiting (in flight included). */
  records: number;
  bytes: number;
  /** Age of the oldest waiting record, ms (undefined when none). */
  oldestAgeMs: number | undefined;
  /** When the oldest waiting record was enqueued, ms since the epoch (undefined when none). */
  oldestEnqueuedAt: number | undefined;
  /** Dropped for space (the disk budget), since the outbox was created. */
  dropped: number;
  /** Dropped for age (the class TTL), since the outbox was created. */
  expired: number;
  /** Dead letters kept, and their bytes. */
  quarantined: number;
  quarantinedBytes: number;
}

export interface OutboxTotals {
  records: number;
  bytes: number;
  dropped: number;
  expired: number;
  quarantined: number;
  quarantinedBytes: number;
}

export type OutboxStats = Record<OutboxClass, OutboxClassStats> & {
  /** Bytes of waiting records (dead letters not included; see totals and maxBytes). */
  bytes: number;
  maxBytes: number;
  inFlight: number;
  totals: OutboxTotals;
  /** Why writing stopped, while it has (cleared by the next write that succeeds). */
  storageError?: string;
};

export interface OutboxPeekOptions {
  /** At most this many entries (1-10000). */
  limit: number;
  recordClass?: OutboxClass;
  meter?: string;
  /** Dead letters instead of the queue. */
  dead?: boolean;
}

export interface OutboxPeekEntry {
  key: string;
  meter: string;
  recordClass: OutboxClass;
  enqueuedAt: number;
  /** Bytes counted against the budget: payload, key and meter. */
  size: number;
  /** Handed to the drain and not yet acknowledged or released. */
  inFlight: boolean;
  dead: boolean;
  /** For dead letters: why, and when (ms since the epoch). */
  reason?: string;
  quarantinedAt?: number;
}

export const MAX_PEEK = 10_000;

export type OutboxErrorCode = 'FULL' | 'CLOSED' | 'BAD_RECORD' | 'STORAGE';

export class OutboxError extends Error {
  override readonly name = 'OutboxError';
  constructor(
    readonly code: OutboxErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

type PerClass = [number, number, number];

interface Counters {
  records: PerClass;
  bytes: PerClass;
  dropped: PerClass;
  expired: PerClass;
  /** Dead letters kept in outbox-dead, and their bytes, per class. */
  dead: PerClass;
  deadBytes: PerClass;
}

const COUNTERS: ReadonlyArray<keyof Counters> = ['records', 'bytes', 'dropped', 'expired', 'dead', 'deadBytes'];

interface Meta extends Counters {
  seq: number;
}

/** What one write changes: counters to add, and the sequence it needs (at least). */
type Delta = Meta;

function emptyMeta(): Meta {
  return { seq: 0, records: [0, 0, 0], bytes: [0, 0, 0], dropped: [0, 0, 0], expired: [0, 0, 0], dead: [0, 0, 0], deadBytes: [0, 0, 0] };
}

function copyMeta(meta: Meta): Meta {
  const copy = emptyMeta();
  copy.seq = meta.seq;
  for (const name of COUNTERS) copy[name] = [...meta[name]];
  return copy;
}

function addCounters(target: Counters, delta: Counters, sign: 1 | -1): void {
  for (const name of COUNTERS) {
    for (let rank = 0; rank < 3; rank += 1) target[name][rank]! += sign * delta[name][rank]!;
  }
}

interface StoredRecord {
  k: string;
  m: string;
  t: number;
  p: Uint8Array;
}

/** A dead letter: the record, why it was quarantined (r) and when (a). */
interface DeadRecord extends StoredRecord {
  r: string;
  a: number;
}

/** Key and meter text besides the payload: counted against the budget. */
const MAX_KEY_LENGTH = 256;
const MAX_REASON_LENGTH = 500;
const META_KEY = 'meta';
const DEFAULT_RESUME_FREE_BYTES = 8 * 1024 * 1024;

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

/** LevelDB's "database is not open", through abstract-level or our own StoreError. */
function isClosedError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'LEVEL_DATABASE_NOT_OPEN' || code === 'CLOSED' || (err instanceof StoreError && err.code === 'CLOSED');
}

/** Any failure of the database as a typed outbox error (CLOSED or STORAGE), the cause kept. */
function storageError(err: unknown, doing: string): OutboxError {
  if (err instanceof OutboxError) return err;
  const message = (err as Error | null)?.message ?? String(err);
  if (isClosedError(err)) return new OutboxError('CLOSED', `the outbox's database is closed (${doing})`, { cause: err });
  return new OutboxError('STORAGE', `the outbox could not ${doing}: ${message}`, { cause: err });
}

async function freeBytes(location: string): Promise<number | undefined> {
  try {
    const fs = await statfs(location);
    return fs.bavail * fs.bsize;
  } catch {
    return undefined;
  }
}

export class Outbox {
  private readonly queue;
  private readonly keys;
  private readonly metaStore;
  private readonly deadStore;
  private readonly committer: GroupCommitter<Delta>;
  private readonly now: () => number;
  /** What the meta record on disk says; `meta` is that plus the writes decided and not yet written. */
  private committed: Meta;
  /** The meta record of the batch being written, which becomes `committed` when it is on disk. */
  private writing: Meta | undefined;
  /** Appends called whose decision is not taken yet (see settle). */
  private deciding = 0;
  /** Key lookups of appends waiting to go to LevelDB together (see isStored). */
  private lookups: Array<{ key: string; resolve: (stored: boolean) => void; reject: (err: Error) => void }> = [];
  /** Keys appended but perhaps not yet on disk, with the write that carries them. */
  private readonly unsettled = new Map<string, Promise<void>>();
  /** Queue keys handed out by take() and not yet acknowledged or released. */
  private readonly inFlight = new Set<string>();
  /** The same records by idempotency key, with their size: an acknowledgement needs no read. */
  private readonly inFlightByKey = new Map<string, { queueId: string; size: number }>();
  /** How many of them per class: take() skips a class whose every record is handed out. */
  private readonly inFlightByRank: PerClass = [0, 0, 0];
  /**
   * Queue keys whose deletion (acknowledged, dropped, expired, quarantined) is
   * decided but not yet on disk: take(), sweep() and the budget must not count them again.
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
  /**
   * Where the budget looks for the oldest metrology to drop: every metrology
   * record before it is gone or was being removed (a failed removal rewinds
   * it), so a full outbox does not walk the tombstones of what it dropped.
   */
  private dropFrom = '2!';
  /** Reads running (see reading()), and removals written meanwhile, still marked as removing until they end. */
  private reads = 0;
  private forgetLater: string[] = [];
  /** take() runs one at a time: each continues where the previous one stopped. */
  private taking: Promise<unknown> = Promise.resolve();
  /** Appends run one after the other: each decides on the budget knowing what the previous did. */
  private appending: Promise<unknown> = Promise.resolve();
  /** Why the last write failed, until one succeeds; writing resumes only once prepareWrite() allows. */
  private fault: { message: string; closed: boolean; stuck: boolean } | undefined;
  /** prepareWrite() found room and started a new log: a failure now is not for want of space. */
  private resumed = false;
  private closed = false;

  private constructor(
    private readonly db: GatewayDatabase,
    private meta: Meta,
    private readonly options: OutboxOptions,
  ) {
    this.queue = openSublevel(db, 'outbox-q');
    this.keys = openSublevel(db, 'outbox-k');
    this.metaStore = openSublevel(db, 'outbox-meta');
    this.deadStore = openSublevel(db, 'outbox-dead');
    this.committed = copyMeta(meta);
    this.committer = new GroupCommitter<Delta>(
      db,
      { lingerMs: options.lingerMs ?? 2, maxOperations: 4000, sync: options.sync ?? true },
      {
        prepare: () => this.prepareWrite(),
        operations: (deltas) => {
          const next = copyMeta(this.committed);
          for (const delta of deltas) {
            addCounters(next, delta, 1);
            next.seq = Math.max(next.seq, delta.seq);
          }
          this.writing = next;
          return [{ type: 'put', key: META_KEY, value: cborEncode(next), sublevel: this.metaStore }];
        },
        written: () => {
          if (this.writing) this.committed = this.writing;
          this.writing = undefined;
          this.fault = undefined;
          this.resumed = false;
        },
        failed: (deltas, err) => {
          this.writing = undefined;
          // Nothing of the batch is on disk: what it changed in memory is undone (the sequence stays: gaps are harmless).
          for (const delta of deltas) addCounters(this.meta, delta, -1);
          if (err instanceof OutboxError) return; // prepareWrite refused: the fault is known
          const closed = isClosedError(err);
          this.fault = { message: (err as Error).message, closed, stuck: !closed && this.resumed };
          this.resumed = false;
        },
      },
    );
    this.now = options.now ?? Date.now;
  }

  /** Records waiting, all classes (in flight included, dead letters not). */
  get depth(): number {
    return this.meta.records[0] + this.meta.records[1] + this.meta.records[2];
  }

  static async open(db: GatewayDatabase, options: OutboxOptions): Promise<Outbox> {
    if (!(options.maxBytes > 0)) throw new RangeError('outbox maxBytes must be positive');
    let stored: Uint8Array | undefined;
    try {
      stored = await openSublevel(db, 'outbox-meta').get(META_KEY);
    } catch (err) {
      throw storageError(err, 'read its counters');
    }
    // Fields added later (dead letters) start at zero in an outbox written before them.
    const meta: Meta = { ...emptyMeta(), ...(stored ? (cborDecode(stored) as Partial<Meta>) : {}) };
    return new Outbox(db, meta, options);
  }

  /**
   * Appends a record; resolves once it is on disk (`duplicate` when a record
   * with that key is already waiting or kept as a dead letter, which is then
   * the one that counts). Throws OutboxError FULL when the budget is used up
   * by records that are never dropped for space, STORAGE when the database
   * cannot write (the record is then not stored, nor counted), CLOSED.
   */
  async append(entry: Omit<OutboxEntry, 'enqueuedAt'>): Promise<{ duplicate: boolean }> {
    if (this.closed) throw new OutboxError('CLOSED', 'the outbox is closed');
    if (typeof entry.key !== 'string' || entry.key === '' || entry.key.length > MAX_KEY_LENGTH) {
      throw new OutboxError('BAD_RECORD', `an idempotency key is 1-${MAX_KEY_LENGTH} characters`);
    }
    if (typeof entry.meter !== 'string' || !(entry.payload instanceof Uint8Array)) throw new OutboxError('BAD_RECORD', 'a record needs a meter and a payload');
    rankOf(entry.recordClass);
    // A resend of a record whose write is on its way: the same record, stored (or failed) with that write.
    const pending = this.unsettled.get(entry.key);
    if (pending) {
      await pending;
      return { duplicate: true };
    }
    // Looked up in parallel with other appends; the decision below re-checks what is being written.
    const lookup = this.isStored(entry.key);
    // Handled where it is awaited, perhaps only after earlier appends decided.
    lookup.catch(() => undefined);
    // The decisions (duplicate, budget, sequence) are taken one append at a time, in the order the
    // appends came (lookups finish in any order), each knowing what the previous one did; the wait
    // for the disk is not, so concurrent appends share a batch.
    this.deciding += 1;
    const decided = this.appending
      .then(async () => this.reading(async () => this.decide(entry, await lookup)))
      .finally(() => {
        this.deciding -= 1;
      });
    this.appending = decided.catch(() => undefined);
    const { duplicate, written } = await decided;
    await written;
    return { duplicate };
  }

  /**
   * Whether a record with this key is queued or dead. The lookups of the
   * appends that come in the same tick go to LevelDB as one getMany: one
   * trip through the thread pool for a burst instead of one each.
   */
  private isStored(key: string): Promise<boolean> {
    return new Promise((resolve, reject) => {
      this.lookups.push({ key, resolve, reject });
      if (this.lookups.length > 1) return;
      setImmediate(() => {
        const lookups = this.lookups;
        this.lookups = [];
        this.keys.getMany(lookups.map((l) => l.key)).then(
          (values) => lookups.forEach((l, i) => l.resolve(values[i] !== undefined)),
          (err: unknown) => {
            const error = storageError(err, 'look the key up');
            for (const l of lookups) l.reject(error);
          },
        );
      });
    });
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
    const delta = emptyMeta();
    const total = (): number => this.totalBytes();
    if (total() + size > this.options.maxBytes) {
      // Make room by dropping the oldest metrology, never anything else.
      let from = this.dropFrom;
      let firstSkipped: string | undefined;
      try {
        for await (const [queueId, value] of this.queue.iterator({ gte: from, lt: '2"' })) {
          if (total() + size <= this.options.maxBytes) break;
          if (!this.available(queueId)) {
            firstSkipped ??= queueId;
            continue;
          }
          const old = cborDecode(value) as StoredRecord;
          operations.push({ type: 'del', key: queueId, sublevel: this.queue }, { type: 'del', key: old.k, sublevel: this.keys });
          dropped.push(queueId);
          this.removing.add(queueId);
          from = nextQueueKey(queueId);
          this.count(delta, 'records', 2, -1);
          this.count(delta, 'bytes', 2, -storedSize(old));
          this.count(delta, 'dropped', 2, 1);
        }
      } catch (err) {
        // A failed read: the drops decided so far are not written; undo them.
        addCounters(this.meta, delta, -1);
        for (const queueId of dropped) this.removing.delete(queueId);
        throw storageError(err, 'read the queue');
      }
      this.dropFrom = firstSkipped ?? from;
      if (total() + size > this.options.maxBytes) {
        // The drops above are written all the same (they were needed and stay needed).
        if (operations.length > 0) await this.commit(operations, delta, dropped);
        throw new OutboxError('FULL', `the outbox budget of ${this.options.maxBytes} bytes is used by records that are never dropped; try again later`);
      }
    }
    const queueId = queueKey(rank, this.meta.seq);
    this.meta.seq += 1;
    delta.seq = this.meta.seq;
    this.count(delta, 'records', rank, 1);
    this.count(delta, 'bytes', rank, size);
    const record: StoredRecord = { k: entry.key, m: entry.meter, t: this.now(), p: entry.payload };
    operations.push(
      { type: 'put', key: queueId, value: cborEncode(record), sublevel: this.queue },
      { type: 'put', key: entry.key, value: Buffer.from(queueId), sublevel: this.keys },
    );
    const settled = this.commit(operations, delta, dropped).finally(() => this.settle(entry.key));
    // A duplicate arriving meanwhile waits for this write, and fails with it.
    this.unsettled.set(entry.key, settled);
    return { duplicate: false, written: settled };
  }

  /**
   * The write of `key` is done (or failed): a later append of it looks it up
   * on disk. One that was called earlier may have looked before the write
   * landed and decide only now: it must still find the key unsettled, so
   * then the key is forgotten in turn with the decisions, after theirs.
   */
  private settle(key: string): void {
    if (this.deciding === 0) {
      this.unsettled.delete(key);
      return;
    }
    this.appending = this.appending.then(() => {
      this.unsettled.delete(key);
    });
  }

  /**
   * Up to `limit` waiting records, highest class first and oldest first,
   * not already handed out. They stay in the outbox until ack() (delivered)
   * or release() (to be tried again).
   */
  take(limit: number): Promise<OutboxEntry[]> {
    const taken = this.taking.then(() => this.reading(() => this.takeNow(limit)));
    this.taking = taken.catch(() => undefined);
    return taken;
  }

  private async takeNow(limit: number): Promise<OutboxEntry[]> {
    const out: OutboxEntry[] = [];
    for (const [rank, recordClass] of OUTBOX_CLASSES.entries()) {
      if (out.length >= limit) break;
      // Everything of this class is handed out already (or nothing waits): no need to look.
      if (this.meta.records[rank]! - this.inFlightByRank[rank]! <= 0) continue;
      const rewind = this.rewindTo[rank];
      this.rewindTo[rank] = undefined;
      let from = rewind !== undefined && rewind < this.takeFrom[rank]! ? rewind : this.takeFrom[rank]!;
      const iterator = this.queue.iterator({ gte: from, lt: `${rank}"` });
      try {
        // In chunks (nextv): one trip to LevelDB's thread pool for many records.
        chunks: while (out.length < limit) {
          const chunk = await iterator.nextv(Math.max(16, limit - out.length));
          if (chunk.length === 0) break;
          for (const [queueId, value] of chunk) {
            if (out.length >= limit) break chunks;
            from = nextQueueKey(queueId);
            if (!this.available(queueId)) continue;
            const record = cborDecode(value) as StoredRecord;
            this.handOut(queueId, record.k, storedSize(record));
            out.push({ key: record.k, meter: record.m, recordClass, payload: record.p, enqueuedAt: record.t });
          }
        }
      } catch (err) {
        // What was handed out so far stays handed out by this call's caller; the rest is read next time.
        this.takeFrom[rank] = from;
        await iterator.close().catch(() => undefined);
        if (out.length > 0) return out;
        throw storageError(err, 'read the queue');
      }
      this.takeFrom[rank] = from;
      await iterator.close().catch(() => undefined);
    }
    return out;
  }

  private handOut(queueId: string, key: string, size: number): void {
    this.inFlight.add(queueId);
    this.inFlightByKey.set(key, { queueId, size });
    this.inFlightByRank[rankOfQueueKey(queueId)]! += 1;
  }

  /** No longer handed out (acknowledged, released, quarantined); returns whether it was. */
  private takeBack(key: string): { queueId: string; size: number } | undefined {
    const held = this.inFlightByKey.get(key);
    if (held === undefined) return undefined;
    this.inFlightByKey.delete(key);
    this.inFlight.delete(held.queueId);
    this.inFlightByRank[rankOfQueueKey(held.queueId)]! -= 1;
    return held;
  }

  /** Removes delivered records (by idempotency key); resolves once that is on disk. */
  ack(keys: readonly string[]): Promise<number> {
    return this.reading(() => this.ackNow(keys));
  }

  private async ackNow(keys: readonly string[]): Promise<number> {
    const operations: BatchOperation[] = [];
    const acknowledged: string[] = [];
    const delta = emptyMeta();
    for (const key of keys) {
      const held = this.inFlightByKey.get(key) ?? (await this.lookUp(key));
      if (held === undefined) continue;
      this.takeBack(key);
      acknowledged.push(held.queueId);
      this.removing.add(held.queueId);
      const rank = rankOfQueueKey(held.queueId);
      operations.push({ type: 'del', key, sublevel: this.keys }, { type: 'del', key: held.queueId, sublevel: this.queue });
      this.count(delta, 'records', rank, -1);
      this.count(delta, 'bytes', rank, -held.size);
    }
    // The drain waits for this before its next batch: written at once, not after the linger time.
    if (operations.length > 0) await this.commit(operations, delta, acknowledged, true);
    return acknowledged.length;
  }

  /** A record not handed out by this process (acknowledged after a restart, say); undefined when gone, dead or on its way out. */
  private async lookUp(key: string): Promise<{ queueId: string; size: number } | undefined> {
    let queueId: string;
    let value: Uint8Array | undefined;
    try {
      const stored = await this.keys.get(key);
      if (stored === undefined) return undefined;
      queueId = Buffer.from(stored).toString();
      value = await this.queue.get(queueId);
    } catch (err) {
      throw storageError(err, 'look the key up');
    }
    // Looked at after the reads: it may have been handed out, acknowledged or expired meanwhile.
    const held = this.inFlightByKey.get(key);
    if (held !== undefined) return held;
    if (value === undefined || this.removing.has(queueId)) return undefined;
    return { queueId, size: storedSize(cborDecode(value) as StoredRecord) };
  }

  /** Hands records out again (delivery failed or was only partly accepted). */
  release(keys: readonly string[]): void {
    for (const key of keys) {
      const held = this.takeBack(key);
      if (held !== undefined) this.rewind(held.queueId);
    }
  }

  /** Drops records older than their class's TTL; returns how many. */
  sweep(): Promise<number> {
    return this.reading(() => this.sweepNow());
  }

  private async sweepNow(): Promise<number> {
    const now = this.now();
    const operations: BatchOperation[] = [];
    const expired: string[] = [];
    const delta = emptyMeta();
    try {
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
          this.count(delta, 'records', rank, -1);
          this.count(delta, 'bytes', rank, -storedSize(record));
          this.count(delta, 'expired', rank, 1);
        }
      }
    } catch (err) {
      addCounters(this.meta, delta, -1);
      for (const queueId of expired) this.removing.delete(queueId);
      throw storageError(err, 'read the queue');
    }
    if (operations.length > 0) await this.commit(operations, delta, expired);
    return expired.length;
  }

  /**
   * Moves records (by idempotency key) from the queue to the dead letters,
   * with `reason` and the time, in one synced batch: the drain no longer
   * sends them, nothing deletes them (they are counted in stats() and listed
   * by peek({dead: true})), and requeue() puts them back. Keys in flight are
   * taken back from the drain (its later ack or release of them does
   * nothing); keys already gone, dead or on their way out are skipped.
   * Rejects (and moves nothing) when the batch cannot be written.
   */
  async quarantine(keys: readonly string[], reason: string): Promise<void> {
    if (this.closed) throw new OutboxError('CLOSED', 'the outbox is closed');
    return this.reading(() => this.quarantineNow(keys, reason));
  }

  private async quarantineNow(keys: readonly string[], reason: string): Promise<void> {
    const operations: BatchOperation[] = [];
    const moved: string[] = [];
    const delta = emptyMeta();
    const at = this.now();
    const why = String(reason).slice(0, MAX_REASON_LENGTH);
    const takenBack: Array<[string, { queueId: string; size: number }]> = [];
    for (const key of new Set(keys)) {
      let queueId: string;
      let value: Uint8Array | undefined;
      try {
        const stored = await this.keys.get(key);
        if (stored === undefined) continue;
        queueId = Buffer.from(stored).toString();
        if (this.removing.has(queueId)) continue;
        value = await this.queue.get(queueId);
      } catch (err) {
        // Nothing is written: what this call decided so far is undone.
        this.undo(delta, moved, takenBack);
        throw storageError(err, 'look the key up');
      }
      // Looked at after the reads: it may have been acknowledged, expired or quarantined meanwhile.
      if (value === undefined || this.removing.has(queueId)) continue;
      const record = cborDecode(value) as StoredRecord;
      const held = this.takeBack(key);
      if (held !== undefined) takenBack.push([key, held]);
      const rank = rankOfQueueKey(queueId);
      const size = storedSize(record);
      const dead: DeadRecord = { ...record, r: why, a: at };
      operations.push({ type: 'del', key: queueId, sublevel: this.queue }, { type: 'put', key: queueId, value: cborEncode(dead), sublevel: this.deadStore });
      moved.push(queueId);
      this.removing.add(queueId);
      this.count(delta, 'records', rank, -1);
      this.count(delta, 'bytes', rank, -size);
      this.count(delta, 'dead', rank, 1);
      this.count(delta, 'deadBytes', rank, size);
    }
    if (operations.length > 0) await this.commit(operations, delta, moved, true);
  }

  /**
   * Puts dead letters (by idempotency key) back in the queue; returns how
   * many. A requeued record goes to the end of its class, as enqueued now
   * (its class's TTL starts again). Keys that are not dead letters are skipped.
   */
  async requeue(keys: readonly string[]): Promise<number> {
    if (this.closed) throw new OutboxError('CLOSED', 'the outbox is closed');
    // Sequence numbers are taken with the appends' decisions, one at a time.
    const decided = this.appending.then(() => this.reading(() => this.requeueNow(keys)));
    this.appending = decided.catch(() => undefined);
    const { count, written } = await decided;
    await written;
    return count;
  }

  private async requeueNow(keys: readonly string[]): Promise<{ count: number; written: Promise<void> }> {
    const operations: BatchOperation[] = [];
    const back: string[] = [];
    const delta = emptyMeta();
    const now = this.now();
    for (const key of new Set(keys)) {
      let deadId: string;
      let value: Uint8Array | undefined;
      try {
        const stored = await this.keys.get(key);
        if (stored === undefined) continue;
        deadId = Buffer.from(stored).toString();
        value = await this.deadStore.get(deadId);
      } catch (err) {
        this.undo(delta, back, []);
        throw storageError(err, 'look the key up');
      }
      if (value === undefined || this.removing.has(deadId)) continue;
      const dead = cborDecode(value) as DeadRecord;
      const record: StoredRecord = { k: dead.k, m: dead.m, t: now, p: dead.p };
      const rank = rankOfQueueKey(deadId);
      const size = storedSize(record);
      const queueId = queueKey(rank, this.meta.seq);
      this.meta.seq += 1;
      delta.seq = this.meta.seq;
      operations.push(
        { type: 'del', key: deadId, sublevel: this.deadStore },
        { type: 'put', key: queueId, value: cborEncode(record), sublevel: this.queue },
        { type: 'put', key: record.k, value: Buffer.from(queueId), sublevel: this.keys },
      );
      back.push(deadId);
      this.removing.add(deadId);
      this.count(delta, 'records', rank, 1);
      this.count(delta, 'bytes', rank, size);
      this.count(delta, 'dead', rank, -1);
      this.count(delta, 'deadBytes', rank, -size);
    }
    if (operations.length === 0) return { count: 0, written: Promise.resolve() };
    // The dead ids are not queue ids: nothing to hand out again if this fails.
    const write = this.committer.write(operations, delta, true);
    const written = write.then(
      () => this.forget(back),
      (err: unknown) => {
        this.forgetNow(back);
        throw storageError(err, 'write the requeued records');
      },
    );
    return { count: back.length, written };
  }

  /**
   * Entries in drain order (alarms, events, metrology; oldest first), or the
   * dead letters, without taking them. `meter` filters by meter (the queue is
   * read until `limit` entries match).
   */
  async peek(options: OutboxPeekOptions): Promise<OutboxPeekEntry[]> {
    const limit = Math.max(0, Math.min(MAX_PEEK, Math.floor(options.limit)));
    const ranks = options.recordClass === undefined ? [0, 1, 2] : [rankOf(options.recordClass)];
    const dead = options.dead === true;
    const store = dead ? this.deadStore : this.queue;
    const out: OutboxPeekEntry[] = [];
    try {
      for (const rank of ranks) {
        if (out.length >= limit) break;
        for await (const [queueId, value] of store.iterator({ gte: `${rank}!`, lt: `${rank}"` })) {
          if (out.length >= limit) break;
          if (this.removing.has(queueId)) continue;
          const record = cborDecode(value) as DeadRecord;
          if (options.meter !== undefined && record.m !== options.meter) continue;
          out.push({
            key: record.k,
            meter: record.m,
            recordClass: OUTBOX_CLASSES[rank]!,
            enqueuedAt: record.t,
            size: storedSize(record),
            inFlight: !dead && this.inFlight.has(queueId),
            dead,
            ...(dead ? { reason: record.r, quarantinedAt: record.a } : {}),
          });
        }
      }
    } catch (err) {
      throw storageError(err, 'read the queue');
    }
    return out;
  }

  async stats(): Promise<OutboxStats> {
    const now = this.now();
    // The oldest record of each class, the three looked up at once.
    let oldest: Array<number | undefined>;
    try {
      oldest = await Promise.all(
        OUTBOX_CLASSES.map(async (_, rank) => {
          const [value] = await this.queue.values({ gte: `${rank}!`, lt: `${rank}"`, limit: 1 }).all();
          return value === undefined ? undefined : (cborDecode(value) as StoredRecord).t;
        }),
      );
    } catch (err) {
      throw storageError(err, 'read the queue');
    }
    const perClass = {} as Record<OutboxClass, OutboxClassStats>;
    const totals: OutboxTotals = { records: 0, bytes: 0, dropped: 0, expired: 0, quarantined: 0, quarantinedBytes: 0 };
    for (const [rank, recordClass] of OUTBOX_CLASSES.entries()) {
      const enqueuedAt = oldest[rank];
      const row: OutboxClassStats = {
        records: this.meta.records[rank]!,
        bytes: this.meta.bytes[rank]!,
        oldestAgeMs: enqueuedAt === undefined ? undefined : now - enqueuedAt,
        oldestEnqueuedAt: enqueuedAt,
        dropped: this.meta.dropped[rank]!,
        expired: this.meta.expired[rank]!,
        quarantined: this.meta.dead[rank]!,
        quarantinedBytes: this.meta.deadBytes[rank]!,
      };
      perClass[recordClass] = row;
      totals.records += row.records;
      totals.bytes += row.bytes;
      totals.dropped += row.dropped;
      totals.expired += row.expired;
      totals.quarantined += row.quarantined;
      totals.quarantinedBytes += row.quarantinedBytes;
    }
    return {
      ...perClass,
      bytes: totals.bytes,
      maxBytes: this.options.maxBytes,
      inFlight: this.inFlight.size,
      totals,
      ...(this.fault ? { storageError: this.faultMessage() } : {}),
    };
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

  /** Records and dead letters, against the budget. */
  private totalBytes(): number {
    const m = this.meta;
    return m.bytes[0] + m.bytes[1] + m.bytes[2] + m.deadBytes[0] + m.deadBytes[1] + m.deadBytes[2];
  }

  /** Changes a counter in memory at once and in the write's delta (undone if the write fails). */
  private count(delta: Delta, name: keyof Counters, rank: number, amount: number): void {
    this.meta[name][rank]! += amount;
    delta[name][rank]! += amount;
  }

  /** Undoes what a quarantine or requeue decided before a read failed (nothing was written). */
  private undo(delta: Delta, ids: readonly string[], takenBack: ReadonlyArray<[string, { queueId: string; size: number }]>): void {
    addCounters(this.meta, delta, -1);
    this.forgetNow(ids);
    for (const [key, held] of takenBack) this.handOut(held.queueId, key, held.size);
  }

  /**
   * Runs `read` (LevelDB reads, then decisions on what they found) as a
   * read: until every read running has finished, records whose removal is
   * written stay marked as removing. A LevelDB iterator reads a snapshot
   * taken when it was opened, and a get may return just before a removal
   * lands: without this, a record acknowledged meanwhile would look present
   * and not removing, and be dropped, expired or handed out a second time
   * (counted twice).
   */
  private async reading<T>(read: () => Promise<T>): Promise<T> {
    this.reads += 1;
    try {
      return await read();
    } finally {
      this.reads -= 1;
      if (this.reads === 0 && this.forgetLater.length > 0) this.forgetNow(this.forgetLater.splice(0));
    }
  }

  /** Removals that are on disk: no longer marked once no read that may have missed them runs. */
  private forget(queueIds: readonly string[]): void {
    if (this.reads === 0) this.forgetNow(queueIds);
    else for (const queueId of queueIds) this.forgetLater.push(queueId);
  }

  /** Removals that failed (the records are there, for every read) or were never written. */
  private forgetNow(queueIds: readonly string[]): void {
    for (const queueId of queueIds) this.removing.delete(queueId);
  }

  /**
   * Writes a batch for queue records `queueIds` being removed; they count as
   * removing until it is done. If it fails they are in the queue as before
   * (counters rolled back by the committer) and take() and the budget go
   * back for them; the caller gets a typed error.
   */
  private commit(operations: BatchOperation[], delta: Delta, queueIds: readonly string[], soon = false): Promise<void> {
    return this.committer.write(operations, delta, soon).then(
      () => this.forget(queueIds),
      (err: unknown) => {
        this.forgetNow(queueIds);
        for (const queueId of queueIds) this.rewind(queueId);
        throw storageError(err, 'write to its database');
      },
    );
  }

  /** The next take() (and for metrology the budget) goes back for this record. */
  private rewind(queueId: string): void {
    const rank = rankOfQueueKey(queueId);
    const rewind = this.rewindTo[rank];
    if (rewind === undefined || queueId < rewind) this.rewindTo[rank] = queueId;
    if (rank === 2 && queueId < this.dropFrom) this.dropFrom = queueId;
  }

  private faultMessage(): string {
    const fault = this.fault;
    if (!fault) return '';
    if (fault.stuck) {
      return `${fault.message} (LevelDB still refuses to write although the disk has room again: it stops writing after a failed background write; restart the gateway to reopen the database)`;
    }
    return fault.message;
  }

  /**
   * Before each batch, after a write failed: LevelDB's log now ends in a torn
   * record, and records written after it in that log would be skipped when
   * the database is next opened (acknowledged, then lost). Once the disk has
   * room again, a compaction of an empty range makes LevelDB write its
   * memtable to a table file and start a new log; only then does writing
   * resume. Attempted while the disk is still full, that compaction would
   * fail and stop LevelDB writing until it is reopened, hence the wait for
   * room.
   */
  private async prepareWrite(): Promise<void> {
    const fault = this.fault;
    if (!fault) return;
    if (fault.closed) {
      // The database itself may be open again (a shared handle reopened); the write decides.
      return;
    }
    const needed = this.options.resumeFreeBytes ?? DEFAULT_RESUME_FREE_BYTES;
    const free = await freeBytes(this.db.location);
    if (free !== undefined && free < needed) {
      throw new OutboxError('STORAGE', `the outbox's disk is still full (${free} bytes free, ${needed} needed to resume writing; last error: ${fault.message})`);
    }
    // `level`'s type is the browser-or-Node union; on Node it is classic-level, which has compactRange.
    const db = this.db as GatewayDatabase & { compactRange?: (start: string, end: string) => Promise<void> };
    try {
      if (typeof db.compactRange !== 'function') throw new Error('this LevelDB binding cannot compact');
      await db.compactRange('\u0000', '\u0000');
    } catch (err) {
      throw new OutboxError('STORAGE', `the outbox could not restart LevelDB's log after a failed write: ${(err as Error).message}`, { cause: err });
    }
    this.resumed = true;
  }
}
