import { MAX_INVOCATION_COUNTER } from '../dlms/security.js';
import { openSublevel, type GatewayDatabase, type GatewaySublevel } from '../store/database.js';
import { writeBatch, type BatchOperation } from '../store/group-commit.js';

function encodeCounter(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value);
  return bytes;
}

function decodeCounter(bytes: Uint8Array): number | undefined {
  return bytes.length === 4 ? Buffer.from(bytes).readUInt32BE(0) : undefined;
}

/**
 * Replay protection for received frames: the last invocation counter
 * accepted from each system title, with a digest of that frame, persisted in
 * the `ic-in` sublevel.
 *
 * A frame whose counter is greater is fresh. A frame with the last counter
 * and the same digest is the meter sending its last frame again because it
 * never heard the gateway's answer (a 5.03, a lost ACK): it is passed on as a
 * repeat, and the HES stores its key once. Anything else is a replay.
 *
 * `check` is a pure look-up, so a frame whose authentication tag fails can
 * never move the counter (a forged frame with a huge counter would otherwise
 * lock the meter out). `accept` advances it in memory at once, so a replay
 * racing the disk write is still refused, and resolves when the new value is
 * written: callers pass a frame on only then, so a replay after a crash and
 * restart is refused too.
 *
 * Storage is a journal with snapshots, because a LevelDB operation per frame
 * costs as much as decrypting it: every `lingerMs` the counters accepted since
 * the last write go out as one packed journal record (`j/<sequence>`); every
 * SNAPSHOT_EVERY records, one packed `snapshot` of all counters replaces the
 * journal, in the same atomic batch. Opening reads the snapshot, then the
 * journal in order.
 */
export type ReplayVerdict = 'fresh' | 'repeat' | 'replay';

const DIGEST_BYTES = 16;
const KEY_ID_BYTES = 4;
/** system title (8) + key id (4) + counter (4) + digest (16) */
const ENTRY_BYTES = 8 + KEY_ID_BYTES + 4 + DIGEST_BYTES;
const NO_KEY_ID = Buffer.alloc(KEY_ID_BYTES);
const SNAPSHOT_KEY = 'snapshot';
const JOURNAL_PREFIX = 'j/';
/** Journal records between two snapshots. */
const SNAPSHOT_EVERY = 256;

interface LastFrame {
  counter: number;
  digest: Buffer;
  /**
   * Which keys the counter belongs to (4 bytes of a digest of EK and AK):
   * DLMS ties the invocation counter to the key, so a frame under other keys
   * starts afresh, however the keys changed (transfer, sync, a meter removed
   * and re-added), and a counter is never reset for keys that did not change.
   */
  keyId: Buffer;
}

function keyIdOf(keyId: Uint8Array | undefined): Buffer {
  if (!keyId) return NO_KEY_ID;
  // The keyring hands in a cached 4-byte Buffer per key: no copy per frame.
  if (Buffer.isBuffer(keyId) && keyId.length === KEY_ID_BYTES) return keyId;
  const id = Buffer.alloc(KEY_ID_BYTES);
  id.set(keyId.subarray(0, KEY_ID_BYTES));
  return id;
}

/** The stored form of a frame's identity: its first 16 bytes, zero-padded (a 12-byte GCM tag fits). */
function frameDigest(digest: Uint8Array): Buffer {
  const stored = Buffer.alloc(DIGEST_BYTES);
  stored.set(digest.subarray(0, DIGEST_BYTES));
  return stored;
}

function journalKey(sequence: number): string {
  return `${JOURNAL_PREFIX}${sequence.toString().padStart(15, '0')}`;
}

export class ReplayGuard {
  private readonly last = new Map<string, LastFrame>();
  private readonly dirty = new Set<string>();
  private nextFlush: { promise: Promise<void>; resolve: () => void; reject: (err: Error) => void } | undefined;
  private writing: Promise<void> = Promise.resolve();
  private lastBatch: Promise<void> = Promise.resolve();
  private sequence = 0;
  private journalRecords = 0;

  private constructor(
    private readonly db: GatewayDatabase,
    private readonly counters: GatewaySublevel,
    private readonly lingerMs: number,
    private readonly sync: boolean,
  ) {}

  /**
   * `sync: false` (the keyring's choice) writes counters to LevelDB's log
   * without an fsync: they survive a crash or restart of the process, not a
   * power cut in the last milliseconds, where the HES's deduplication by
   * system title and counter still stops a replayed frame being stored twice.
   */
  static async open(db: GatewayDatabase, options: { lingerMs?: number; sync?: boolean } = {}): Promise<ReplayGuard> {
    const guard = new ReplayGuard(db, openSublevel(db, 'ic-in'), options.lingerMs ?? 2, options.sync ?? true);
    const snapshot = await guard.counters.get(SNAPSHOT_KEY);
    if (snapshot) guard.load(snapshot);
    // Journal keys sort by sequence: later records override earlier ones.
    for await (const [key, value] of guard.counters.iterator({ gt: JOURNAL_PREFIX, lt: `${JOURNAL_PREFIX}~` })) {
      guard.load(value);
      guard.sequence = Math.max(guard.sequence, Number(key.slice(JOURNAL_PREFIX.length)) + 1);
      guard.journalRecords += 1;
    }
    return guard;
  }

  private load(packed: Uint8Array): void {
    const bytes = Buffer.from(packed.buffer, packed.byteOffset, packed.byteLength);
    for (let at = 0; at + ENTRY_BYTES <= bytes.length; at += ENTRY_BYTES) {
      const systemTitle = bytes.toString('hex', at, at + 8);
      const keyId = Buffer.from(bytes.subarray(at + 8, at + 12));
      const counter = bytes.readUInt32BE(at + 12);
      // An all-zero entry marks a reset.
      const digest = Buffer.from(bytes.subarray(at + 16, at + ENTRY_BYTES));
      if (counter === 0 && digest.every((b) => b === 0) && keyId.equals(NO_KEY_ID)) this.last.delete(systemTitle);
      else this.last.set(systemTitle, { counter, digest, keyId });
    }
  }

  private pack(titles: Iterable<string>): Buffer {
    const list = [...titles];
    const packed = Buffer.alloc(list.length * ENTRY_BYTES);
    list.forEach((systemTitle, i) => {
      const at = i * ENTRY_BYTES;
      packed.write(systemTitle, at, 8, 'hex');
      const entry = this.last.get(systemTitle);
      if (entry) {
        entry.keyId.copy(packed, at + 8);
        packed.writeUInt32BE(entry.counter, at + 12);
        entry.digest.copy(packed, at + 16, 0, DIGEST_BYTES);
      }
    });
    return packed;
  }

  lastAccepted(systemTitle: string): number | undefined {
    return this.last.get(systemTitle)?.counter;
  }

  check(systemTitle: string, invocationCounter: number, digest: Uint8Array, keyId?: Uint8Array): ReplayVerdict {
    const last = this.last.get(systemTitle);
    if (last === undefined || invocationCounter > last.counter || !last.keyId.equals(keyIdOf(keyId))) return 'fresh';
    if (invocationCounter === last.counter && last.digest.equals(frameDigest(digest))) return 'repeat';
    return 'replay';
  }

  /** Records an authenticated frame's counter; resolves when it is written. */
  accept(systemTitle: string, invocationCounter: number, digest: Uint8Array, keyId?: Uint8Array): Promise<void> {
    const last = this.last.get(systemTitle);
    const id = keyIdOf(keyId);
    if (last !== undefined && invocationCounter <= last.counter && last.keyId.equals(id)) return Promise.resolve();
    this.last.set(systemTitle, { counter: invocationCounter, digest: frameDigest(digest), keyId: id });
    this.dirty.add(systemTitle);
    return this.scheduleFlush();
  }

  private scheduleFlush(): Promise<void> {
    if (!this.nextFlush) {
      let settle!: { resolve: () => void; reject: (err: Error) => void };
      const promise = new Promise<void>((resolve, reject) => {
        settle = { resolve, reject };
      });
      this.nextFlush = { promise, ...settle };
      // lingerMs 0: flush once the event loop has run what is ready now (natural group commit).
      if (this.lingerMs > 0) setTimeout(() => this.flush(), this.lingerMs);
      else setImmediate(() => this.flush());
    }
    return this.nextFlush.promise;
  }

  private flush(): void {
    const batch = this.nextFlush;
    this.nextFlush = undefined;
    if (!batch) return;
    this.lastBatch = batch.promise;
    // Reset titles are packed with a zero entry (this.last no longer has them).
    const record = this.pack(this.dirty);
    this.dirty.clear();
    const operations: BatchOperation[] = [];
    if (this.journalRecords + 1 >= SNAPSHOT_EVERY) {
      // The snapshot holds everything, so the journal so far can go in the same atomic batch.
      operations.push({ type: 'put', sublevel: this.counters, key: SNAPSHOT_KEY, value: this.pack(this.last.keys()) });
      for (let sequence = this.sequence - this.journalRecords; sequence < this.sequence; sequence++) {
        operations.push({ type: 'del', sublevel: this.counters, key: journalKey(sequence) });
      }
      this.journalRecords = 0;
    } else {
      operations.push({ type: 'put', sublevel: this.counters, key: journalKey(this.sequence), value: record });
      this.sequence += 1;
      this.journalRecords += 1;
    }
    // Chained so records reach the disk in order: a later counter never lands before an earlier one.
    this.writing = this.writing.then(() => writeBatch(this.db, operations, this.sync)).then(batch.resolve, batch.reject);
  }

  /** Resolves when every counter accepted so far is written (rejects if that write failed). */
  settled(): Promise<void> {
    return this.nextFlush?.promise ?? this.lastBatch;
  }

  /** Writes what is pending now (used on close). */
  async drain(): Promise<void> {
    this.flush();
    await this.writing;
  }

  /** New keys restart a meter's invocation counter (DLMS ties the counter to the key). */
  async reset(systemTitles: string[]): Promise<void> {
    if (systemTitles.length === 0) return;
    for (const systemTitle of systemTitles) {
      this.last.delete(systemTitle);
      this.dirty.add(systemTitle);
    }
    await this.scheduleFlush();
  }

  get size(): number {
    return this.last.size;
  }
}

/**
 * The gateway's own invocation counter for frames it sends. GCM must never
 * see the same IV twice under one key, so counters are handed out from a
 * block reserved on disk first: after a crash the gateway starts above
 * everything it might have used, skipping at most one block.
 */
export class OutgoingCounter {
  private next = 0;
  private reservedUpTo = 0;
  private reserving: Promise<void> | undefined;

  private constructor(
    private readonly db: GatewayDatabase,
    private readonly counters: GatewaySublevel,
    private readonly systemTitle: string,
    private readonly blockSize: number,
  ) {}

  static async open(db: GatewayDatabase, systemTitle: string, blockSize = 1000): Promise<OutgoingCounter> {
    const counter = new OutgoingCounter(db, openSublevel(db, 'ic-out'), systemTitle, blockSize);
    const stored = await counter.counters.get(systemTitle);
    const reserved = stored === undefined ? 0 : (decodeCounter(stored) ?? 0);
    counter.next = reserved;
    counter.reservedUpTo = reserved;
    return counter;
  }

  /** The next unused invocation counter. Throws when the 32-bit space is used up (the keys must change). */
  async take(): Promise<number> {
    while (this.next >= this.reservedUpTo) {
      this.reserving ??= this.reserve().finally(() => {
        this.reserving = undefined;
      });
      await this.reserving;
    }
    const value = this.next;
    this.next += 1;
    return value;
  }

  private async reserve(): Promise<void> {
    const upTo = Math.min(this.reservedUpTo + this.blockSize, MAX_INVOCATION_COUNTER);
    if (upTo <= this.next) throw new Error('the invocation counter is exhausted: new keys are needed');
    await this.db.batch([{ type: 'put', sublevel: this.counters, key: this.systemTitle, value: encodeCounter(upTo) }], { sync: true });
    this.reservedUpTo = upTo;
  }
}

/**
 * Consecutive MIC failures per meter. Reaching the threshold reports the
 * meter once (until a frame authenticates again or its keys change), so one
 * resync request is made per episode, not one per frame.
 */
export class MicFailureTracker {
  private readonly streaks = new Map<string, number>();
  private readonly totals = new Map<string, number>();
  private readonly reported = new Set<string>();

  constructor(public threshold: number) {}

  /** Counts a failure; returns true exactly when this failure reaches the threshold. */
  fail(systemTitle: string): boolean {
    const streak = (this.streaks.get(systemTitle) ?? 0) + 1;
    this.streaks.set(systemTitle, streak);
    this.totals.set(systemTitle, (this.totals.get(systemTitle) ?? 0) + 1);
    if (streak >= this.threshold && !this.reported.has(systemTitle)) {
      this.reported.add(systemTitle);
      return true;
    }
    return false;
  }

  succeed(systemTitle: string): void {
    this.streaks.delete(systemTitle);
    this.reported.delete(systemTitle);
  }

  /** New keys: start counting afresh. */
  reset(systemTitle: string): void {
    this.succeed(systemTitle);
  }

  streak(systemTitle: string): number {
    return this.streaks.get(systemTitle) ?? 0;
  }

  total(systemTitle: string): number {
    return this.totals.get(systemTitle) ?? 0;
  }

  /** Meters currently at or over the threshold. */
  outOfSync(): string[] {
    return [...this.reported];
  }
}
