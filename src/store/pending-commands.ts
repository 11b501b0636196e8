import { cborDecode, cborEncode } from '../coap/cbor.js';
import { CommandError, DEFAULT_CLOCK_SKEW_MS, type Command, type VerifiedCommand } from '../hes/commands.js';
import { openSublevel, type GatewayDatabase } from './database.js';
import { writeBatch, type BatchOperation } from './group-commit.js';

/**
 * Signed HES commands the gateway accepted and has not finished, and the ids
 * of every command it accepted while a replay of it could still verify.
 *
 *   commands-pending/<id>  the command (CBOR: body, envelope digest, receive
 *                          time, signer; once finished, its outcome)
 *   commands-seen/<id>     {until, digest, acked}: the id was accepted; kept
 *                          until the command's notAfter plus the clock skew
 *                          and a margin, after which the command itself no
 *                          longer verifies (EXPIRED), so the entry can go
 *
 * Every write is one synced LevelDB batch: put() resolves once the command
 * is on disk, which is what allows the gateway to acknowledge it to the HES.
 * Writes run one at a time (commands are few; the decision "seen before?"
 * and the write that records it must not interleave).
 *
 * A command finishes in two steps, so that its result is neither lost nor
 * the command run twice: complete() records the outcome with the command,
 * the caller hands the result record to the outbox, then forget() removes
 * the command. A command found after a restart with an outcome only needs its
 * result sent again (the outbox and the HES deduplicate by key); one without
 * is handed to the orchestration again, marked as redelivered.
 */
export type PendingCommandErrorCode = 'UNKNOWN_COMMAND' | 'ALREADY_COMPLETED' | 'BAD_RESULT' | 'CLOSED';

export class PendingCommandError extends Error {
  override readonly name = 'PendingCommandError';
  constructor(
    readonly code: PendingCommandErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** `expired`: the gateway gave up on a command whose validity window passed before it was carried out. */
export type CommandStatus = 'succeeded' | 'failed' | 'expired';

export interface CommandOutcome {
  status: CommandStatus;
  /** What the orchestration reported (CBOR-encodable, at most MAX_RESULT_BYTES encoded). */
  result?: unknown;
  /** ms since the Unix epoch. */
  completedAt: number;
}

export interface PendingCommand {
  command: Command;
  /** SHA-256 of the envelope it came in, lower-case hex. */
  digest: string;
  /** ms since the Unix epoch. */
  receivedAt: number;
  signer: VerifiedCommand['signer'];
  /** Set by complete(): the command is finished and its result on its way. */
  outcome?: CommandOutcome;
}

export interface PendingCommandsOptions {
  now?: () => number;
  /**
   * How long after a command's notAfter its id is still refused as a replay.
   * Must cover the clock skew verification allows; the default adds an hour.
   */
  replayMarginMs?: number;
}

/** A result record carries the outcome to the HES in one CoAP message or a few blocks. */
export const MAX_RESULT_BYTES = 16 * 1024;
export const DEFAULT_REPLAY_MARGIN_MS = DEFAULT_CLOCK_SKEW_MS + 60 * 60_000;

interface StoredPending {
  c: Command;
  d: string;
  r: number;
  s: VerifiedCommand['signer'];
  o?: { st: CommandStatus; res?: unknown; at: number };
}

interface StoredSeen {
  /** Refused as a replay until then (ms). */
  u: number;
  d: string;
  /** The HES confirmed our acknowledgement: the same envelope again is a replay, not a lost acknowledgement. */
  a: boolean;
}

export class PendingCommands {
  private readonly pending;
  private readonly seen;
  private readonly now: () => number;
  private readonly replayMarginMs: number;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** Records that could not be decoded (left in place, skipped), since open. */
  unreadable = 0;

  private constructor(
    private readonly db: GatewayDatabase,
    private count: number,
    options: PendingCommandsOptions,
  ) {
    this.pending = openSublevel(db, 'commands-pending');
    this.seen = openSublevel(db, 'commands-seen');
    this.now = options.now ?? Date.now;
    this.replayMarginMs = options.replayMarginMs ?? DEFAULT_REPLAY_MARGIN_MS;
  }

  static async open(db: GatewayDatabase, options: PendingCommandsOptions = {}): Promise<PendingCommands> {
    let count = 0;
    for await (const _ of openSublevel(db, 'commands-pending').keys()) count += 1;
    return new PendingCommands(db, count, options);
  }

  /** Commands accepted and not yet forgotten (finished ones whose result is on its way included). */
  get size(): number {
    return this.count;
  }

  /**
   * Stores an accepted command; resolves once it is on disk. Resolves `known`
   * without writing when this very envelope was stored before and its
   * acknowledgement never reached the HES (so the HES sent it again). Throws
   * CommandError REPLAYED for any other command with an id seen before.
   */
  put(verified: VerifiedCommand, receivedAt = this.now()): Promise<'stored' | 'known'> {
    return this.serialised(async () => {
      const { command, digest } = verified;
      const seen = await this.readSeen(command.id);
      if (seen !== undefined) {
        if (seen.d === digest && !seen.a) return 'known';
        throw new CommandError(
          'REPLAYED',
          seen.d === digest
            ? `command ${command.id} was accepted and acknowledged before`
            : `command id ${command.id} was used before by another command`,
          { id: command.id, meter: command.meter, action: command.action, operator: command.operator.name, digest },
        );
      }
      const stored: StoredPending = { c: command, d: digest, r: receivedAt, s: verified.signer };
      const mark: StoredSeen = { u: command.notAfter + this.replayMarginMs, d: digest, a: false };
      await this.write([
        { type: 'put', key: command.id, value: cborEncode(stored), sublevel: this.pending },
        { type: 'put', key: command.id, value: cborEncode(mark), sublevel: this.seen },
      ]);
      this.count += 1;
      return 'stored';
    });
  }

  /** Notes that the HES confirmed the acknowledgement of these ids. */
  markAcknowledged(ids: readonly string[]): Promise<void> {
    return this.serialised(async () => {
      const operations: BatchOperation[] = [];
      for (const id of ids) {
        const seen = await this.readSeen(id);
        if (seen === undefined || seen.a) continue;
        operations.push({ type: 'put', key: id, value: cborEncode({ ...seen, a: true } satisfies StoredSeen), sublevel: this.seen });
      }
      if (operations.length > 0) await this.write(operations);
    });
  }

  async get(id: string): Promise<PendingCommand | undefined> {
    const value = await this.pending.get(id);
    return value === undefined ? undefined : this.decodePending(value);
  }

  /** Every stored command, in id order. */
  async list(): Promise<PendingCommand[]> {
    const out: PendingCommand[] = [];
    for await (const value of this.pending.values()) {
      const entry = this.decodePending(value);
      if (entry !== undefined) out.push(entry);
    }
    return out;
  }

  /**
   * Records the outcome of a pending command; resolves once it is on disk.
   * Throws PendingCommandError UNKNOWN_COMMAND (no such pending command),
   * ALREADY_COMPLETED, or BAD_RESULT (not CBOR-encodable, or too large).
   */
  complete(id: string, outcome: { status: CommandStatus; result?: unknown }): Promise<PendingCommand> {
    return this.serialised(async () => {
      if (outcome.status !== 'succeeded' && outcome.status !== 'failed' && outcome.status !== 'expired') {
        throw new PendingCommandError('BAD_RESULT', `status must be succeeded, failed or expired, not ${JSON.stringify(String(outcome.status)).slice(0, 40)}`);
      }
      const value = typeof id === 'string' && id !== '' ? await this.pending.get(id) : undefined;
      const entry = value === undefined ? undefined : this.decodePending(value);
      if (entry === undefined) throw new PendingCommandError('UNKNOWN_COMMAND', `no pending command ${JSON.stringify(String(id)).slice(0, 80)}`);
      if (entry.outcome !== undefined) throw new PendingCommandError('ALREADY_COMPLETED', `command ${id} was completed already (${entry.outcome.status})`);
      let encodedResult: Buffer;
      try {
        encodedResult = cborEncode(outcome.result ?? null);
      } catch {
        throw new PendingCommandError('BAD_RESULT', 'the result cannot be encoded as CBOR');
      }
      if (encodedResult.length > MAX_RESULT_BYTES) {
        throw new PendingCommandError('BAD_RESULT', `the result is ${encodedResult.length} bytes encoded, more than ${MAX_RESULT_BYTES}`);
      }
      const completedAt = this.now();
      // Stored as it will be read back, so what goes to the HES now is what would go after a restart.
      const result: unknown = outcome.result === undefined ? undefined : cborDecode(encodedResult);
      const stored: StoredPending = {
        c: entry.command,
        d: entry.digest,
        r: entry.receivedAt,
        s: entry.signer,
        o: { st: outcome.status, at: completedAt, ...(result !== undefined ? { res: result } : {}) },
      };
      await this.write([{ type: 'put', key: id, value: cborEncode(stored), sublevel: this.pending }]);
      return { ...entry, outcome: { status: outcome.status, completedAt, ...(result !== undefined ? { result } : {}) } };
    });
  }

  /** Removes a finished command (its result is in the outbox); its id stays refused as a replay. */
  forget(id: string): Promise<void> {
    return this.serialised(async () => {
      if ((await this.pending.get(id)) === undefined) return;
      await this.write([{ type: 'del', key: id, sublevel: this.pending }]);
      this.count -= 1;
    });
  }

  /** Drops replay entries whose command could no longer verify anyway; returns how many. */
  purgeExpired(): Promise<number> {
    return this.serialised(async () => {
      const now = this.now();
      const operations: BatchOperation[] = [];
      for await (const [id, value] of this.seen.iterator()) {
        const seen = decodeSeen(value);
        // An unreadable entry stays: dropping it could let a replay through.
        if (seen === undefined || seen.u >= now) continue;
        if ((await this.pending.get(id)) !== undefined) continue;
        operations.push({ type: 'del', key: id, sublevel: this.seen });
      }
      if (operations.length > 0) await this.write(operations);
      return operations.length;
    });
  }

  /** Waits for writes under way and refuses further ones. */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue.catch(() => undefined);
  }

  private serialised<T>(work: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new PendingCommandError('CLOSED', 'the pending-commands store is closed'));
    const run = this.queue.then(work);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private write(operations: BatchOperation[]): Promise<void> {
    return writeBatch(this.db, operations, true);
  }

  private async readSeen(id: string): Promise<StoredSeen | undefined> {
    const value = await this.seen.get(id);
    if (value === undefined) return undefined;
    const seen = decodeSeen(value);
    // Unreadable: treat the id as used with an unknown envelope, so nothing replays through a damaged record.
    return seen ?? { u: Number.MAX_SAFE_INTEGER, d: '', a: true };
  }

  private decodePending(value: Uint8Array): PendingCommand | undefined {
    let stored: StoredPending;
    try {
      stored = cborDecode(value) as StoredPending;
    } catch {
      this.unreadable += 1;
      return undefined;
    }
    if (typeof stored !== 'object' || stored === null || typeof stored.c !== 'object' || stored.c === null || typeof stored.d !== 'string') {
      this.unreadable += 1;
      return undefined;
    }
    const entry: PendingCommand = { command: stored.c, digest: stored.d, receivedAt: stored.r, signer: stored.s };
    if (stored.o !== undefined) {
      entry.outcome = { status: stored.o.st, completedAt: stored.o.at, ...(stored.o.res !== undefined ? { result: stored.o.res } : {}) };
    }
    return entry;
  }
}

function decodeSeen(value: Uint8Array): StoredSeen | undefined {
  try {
    const seen = cborDecode(value) as StoredSeen;
    if (typeof seen === 'object' && seen !== null && typeof seen.u === 'number' && typeof seen.d === 'string') return seen;
  } catch {
    // Unreadable.
  }
  return undefined;
}
