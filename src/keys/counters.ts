import { openSublevel, type GatewayDatabase, type GatewaySublevel } from '../store/database.js';
import type { GroupCommitter } from '../store/group-commit.js';

const MAX_INVOCATION_COUNTER = 0xffff_ffff;

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
 * accepted from each system title, with a digest of that frame, in the
 * `ic-in` sublevel.
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
 * on disk: callers pass a frame on only then, so a replay after a crash and
 * restart is refused too.
 */
export type ReplayVerdict = 'fresh' | 'repeat' | 'replay';

const DIGEST_BYTES = 16;

interface LastFrame {
  counter: number;
  digest: Buffer;
}

export class ReplayGuard {
  private readonly last = new Map<string, LastFrame>();

  private constructor(
    private readonly counters: GatewaySublevel,
    private readonly committer: GroupCommitter,
  ) {}

  static async open(db: GatewayDatabase, committer: GroupCommitter): Promise<ReplayGuard> {
    const guard = new ReplayGuard(openSublevel(db, 'ic-in'), committer);
    for await (const [systemTitle, value] of guard.counters.iterator()) {
      if (value.length !== 4 + DIGEST_BYTES) continue;
      const bytes = Buffer.from(value);
      guard.last.set(systemTitle, { counter: bytes.readUInt32BE(0), digest: bytes.subarray(4) });
    }
    return guard;
  }

  lastAccepted(systemTitle: string): number | undefined {
    return this.last.get(systemTitle)?.counter;
  }

  check(systemTitle: string, invocationCounter: number, digest: Uint8Array): ReplayVerdict {
    const last = this.last.get(systemTitle);
    if (last === undefined || invocationCounter > last.counter) return 'fresh';
    if (invocationCounter === last.counter && last.digest.equals(digest.subarray(0, DIGEST_BYTES))) return 'repeat';
    return 'replay';
  }

  /** Records an authenticated frame's counter; resolves when it is durable. */
  accept(systemTitle: string, invocationCounter: number, digest: Uint8Array): Promise<void> {
    const last = this.last.get(systemTitle);
    if (last !== undefined && invocationCounter <= last.counter) return Promise.resolve();
    const frameDigest = Buffer.from(digest.subarray(0, DIGEST_BYTES));
    this.last.set(systemTitle, { counter: invocationCounter, digest: frameDigest });
    return this.committer.write([
      { type: 'put', sublevel: this.counters, key: systemTitle, value: Buffer.concat([encodeCounter(invocationCounter), frameDigest]) },
    ]);
  }

  /** New keys restart a meter's invocation counter (DLMS ties the counter to the key). */
  async reset(systemTitles: string[]): Promise<void> {
    if (systemTitles.length === 0) return;
    for (const systemTitle of systemTitles) this.last.delete(systemTitle);
    await this.committer.write(systemTitles.map((key) => ({ type: 'del' as const, sublevel: this.counters, key })));
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
