import { EventEmitter } from 'node:events';
import { NftRunner } from './nft.js';
import { CHAIN_NAME, compareWithNftJson, expectedState, FirewallError, renderRuleset, TABLE_FAMILY, TABLE_NAME, type CompareResult, type FirewallConfig } from './ruleset.js';

/**
 * Drives the gateway's nftables table (issue 7): apply in one transaction,
 * read back and compare, roll back to the last good ruleset when the read-back
 * differs, watch for drift on a timer, read the drop counters, remove the
 * table on uninstall. nft itself is run by an NftRunner (nft.ts).
 *
 * The manager's current configuration is the one it keeps in force: the
 * constructor's, replaced by every apply(config) that succeeds. An apply that
 * fails leaves both the kernel's ruleset and the current configuration as they
 * were, so verify() and the drift watch keep comparing with what is actually
 * meant to be in force.
 *
 * apply, verify, remove and the drift checks run one at a time (a queue), so a
 * drift check never reads the table in the middle of an apply.
 */

export interface ApplyReport {
  ok: boolean;
  /** `sha256:...` of the configuration applied (as in the ruleset's first line). */
  hash: string;
  /** Number of allowlist entries of each list (after normalisation). */
  entries: { hes: number; mesh: number; mgmt: number };
  /** Time nft took to apply the script. */
  applyMs: number;
  /** Time to read the table back and compare it (0 when nothing was applied). */
  verifyMs: number;
  /**
   * Present when the script applied but the table read back differed: true
   * when the last good ruleset was re-applied and verified, false when there
   * was none or that failed too.
   */
  rolledBack?: boolean;
  error?: FirewallError;
}

export interface DriftReport {
  /** What differed from the current configuration (compareWithNftJson's differences). */
  differences: string[];
  /** The current configuration was re-applied and verified. */
  repaired: boolean;
  /** Date.now() of the detection. */
  at: number;
  /** Why the repair failed. */
  error?: FirewallError;
}

/** Packets and bytes of each counted drop rule, by its comment ("drop-mesh", "drop-admin", ...). */
export interface DropCounters {
  [dropComment: string]: { packets: number; bytes: number };
}

export interface FirewallManagerEvents {
  /** Every ApplyReport, of apply() and of a drift repair, ok or not. */
  applied: [ApplyReport];
  /** The drift watch found the table differing from the current configuration (and tried to repair it). */
  drift: [DriftReport];
  /** A drift check could not run (NO_NFT, NO_PERMISSION, TIMEOUT, BAD_NFT_OUTPUT, ...). Only emitted when someone listens. */
  error: [FirewallError];
}

export interface FirewallManagerOptions {
  config: FirewallConfig;
  /** Default: a plain `nft` with a 30 s timeout. */
  runner?: NftRunner;
  /** Period of the drift watch; default 60 s. */
  driftIntervalMs?: number;
}

export const DEFAULT_DRIFT_INTERVAL_MS = 60_000;

const MISSING_TABLE = `table ${TABLE_FAMILY} ${TABLE_NAME} is missing`;

/** Errors apply() rejects with instead of reporting: nft cannot be used at all. */
function isFatal(err: unknown): boolean {
  return !(err instanceof FirewallError) || err.code === 'NO_NFT' || err.code === 'NO_PERMISSION';
}

function elapsed(since: number): number {
  return Math.round((performance.now() - since) * 10) / 10;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function asFirewallError(err: unknown, context: string): FirewallError {
  if (err instanceof FirewallError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new FirewallError('APPLY_FAILED', `${context}: ${message}`, { cause: err });
}

export class FirewallManager extends EventEmitter<FirewallManagerEvents> {
  readonly runner: NftRunner;
  readonly driftIntervalMs: number;
  private current: FirewallConfig;
  private lastGood: FirewallConfig | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private watching = false;
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<void> | undefined;

  constructor(options: FirewallManagerOptions) {
    super();
    this.current = options.config;
    this.runner = options.runner ?? new NftRunner();
    const interval = options.driftIntervalMs ?? DEFAULT_DRIFT_INTERVAL_MS;
    if (!Number.isFinite(interval) || interval <= 0) throw new RangeError(`driftIntervalMs must be a positive number, not ${interval}`);
    this.driftIntervalMs = interval;
  }

  /** The configuration kept in force (the constructor's, or that of the last successful apply). */
  get config(): FirewallConfig {
    return this.current;
  }

  /** The configuration of the last apply that verified, if any: the rollback target. */
  get lastGoodConfig(): FirewallConfig | undefined {
    return this.lastGood;
  }

  /** Whether the drift watch is running. */
  get watchingDrift(): boolean {
    return this.watching;
  }

  /** Dry run: the script apply would send to `nft -f -`. */
  render(config?: FirewallConfig): string {
    return renderRuleset(config ?? this.current);
  }

  /**
   * Renders `config` (default: the current one), applies it in one nft
   * transaction, reads the table back and compares. On success it becomes the
   * current and last good configuration. When nft refuses the script (or
   * times out) nothing changed: ok false with the error. When it applied but
   * reads back differently, the last good configuration is re-applied
   * (rolledBack). Rejects with the FirewallError when nft cannot be used at
   * all (NO_NFT, NO_PERMISSION), or BAD_CONFIG for an invalid configuration.
   */
  async apply(config?: FirewallConfig): Promise<ApplyReport> {
    const report = await this.exclusive(() => this.applyNow(config ?? this.current));
    this.emit('applied', report);
    return report;
  }

  /** Compares the table in the kernel with the current configuration; a missing table is a difference. */
  verify(): Promise<CompareResult> {
    return this.exclusive(() => this.readBack(this.current));
  }

  /** Packets and bytes of the counted rules of our chain, by their comment; {} when the table does not exist. */
  async counters(): Promise<DropCounters> {
    const doc = await this.runner.listTable();
    const counters: DropCounters = {};
    if (doc === undefined) return counters;
    if (!isRecord(doc) || !Array.isArray(doc.nftables)) throw new FirewallError('BAD_NFT_OUTPUT', 'nft output has no "nftables" array');
    for (const entry of doc.nftables as unknown[]) {
      if (!isRecord(entry) || !isRecord(entry.rule)) continue;
      const rule = entry.rule;
      if (rule.family !== TABLE_FAMILY || rule.table !== TABLE_NAME || rule.chain !== CHAIN_NAME || typeof rule.comment !== 'string') continue;
      const exprs = Array.isArray(rule.expr) ? (rule.expr as unknown[]) : [];
      for (const expr of exprs) {
        if (!isRecord(expr) || !isRecord(expr.counter)) continue;
        const { packets, bytes } = expr.counter;
        if (typeof packets !== 'number' || typeof bytes !== 'number') throw new FirewallError('BAD_NFT_OUTPUT', `counter of rule "${rule.comment}" is not numeric`);
        counters[rule.comment] = { packets, bytes };
      }
    }
    return counters;
  }

  /**
   * Every driftIntervalMs: compares the table with the current configuration;
   * on a difference re-applies it and emits 'drift' (and 'applied'). A check
   * that cannot run emits 'error'. Checks never overlap (the next one is
   * scheduled when the previous ends) and the timer does not keep the process
   * alive. Calling it again while watching does nothing.
   */
  startDriftWatch(): void {
    if (this.watching) return;
    this.watching = true;
    this.schedule();
  }

  /** Stops the drift watch and waits for a check in progress. */
  async stop(): Promise<void> {
    this.watching = false;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    await this.checking;
  }

  /** Uninstall: stops the drift watch and deletes our table (no other). False when it did not exist. */
  async remove(): Promise<boolean> {
    await this.stop();
    return this.exclusive(async () => {
      const removed = await this.runner.deleteTable();
      this.lastGood = undefined;
      return removed;
    });
  }

  // -------------------------------------------------------------------------

  /** Runs `task` after every task queued before it (whether those succeeded or not). */
  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async readBack(config: FirewallConfig): Promise<CompareResult> {
    const doc = await this.runner.listTable();
    if (doc === undefined) return { ok: false, differences: [MISSING_TABLE] };
    return compareWithNftJson(config, doc);
  }

  private async applyNow(config: FirewallConfig): Promise<ApplyReport> {
    const script = renderRuleset(config);
    const base = {
      hash: expectedState(config).hash,
      entries: { hes: config.hes.length, mesh: config.mesh.length, mgmt: config.mgmt.length },
    };
    const applyStart = performance.now();
    try {
      await this.runner.apply(script);
    } catch (err) {
      if (isFatal(err)) throw err;
      // nft refused the script (or timed out): its transaction did not commit.
      return { ok: false, ...base, applyMs: elapsed(applyStart), verifyMs: 0, error: err as FirewallError };
    }
    const applyMs = elapsed(applyStart);

    const verifyStart = performance.now();
    let mismatch: FirewallError;
    try {
      const result = await this.readBack(config);
      if (result.ok) {
        this.current = config;
        this.lastGood = config;
        return { ok: true, ...base, applyMs, verifyMs: elapsed(verifyStart) };
      }
      mismatch = new FirewallError('APPLY_FAILED', `the table read back after the apply differs from the ruleset applied: ${result.differences.join('; ')}`);
    } catch (err) {
      if (isFatal(err)) throw err;
      mismatch = err as FirewallError;
    }
    const verifyMs = elapsed(verifyStart);
    const report: ApplyReport = { ok: false, ...base, applyMs, verifyMs, rolledBack: false, error: mismatch };
    const lastGood = this.lastGood;
    if (lastGood === undefined) {
      report.error = new FirewallError(mismatch.code, `${mismatch.message} (no earlier good ruleset to roll back to)`, { cause: mismatch });
      return report;
    }
    try {
      await this.runner.apply(renderRuleset(lastGood));
      const back = await this.readBack(lastGood);
      if (back.ok) {
        report.rolledBack = true;
        report.error = new FirewallError(mismatch.code, `${mismatch.message} (rolled back to the last good ruleset)`, { cause: mismatch });
      } else {
        report.error = new FirewallError(mismatch.code, `${mismatch.message}; the rollback to the last good ruleset does not verify either: ${back.differences.join('; ')}`, {
          cause: mismatch,
        });
      }
    } catch (err) {
      const failed = asFirewallError(err, 'rollback');
      report.error = new FirewallError(mismatch.code, `${mismatch.message}; the rollback to the last good ruleset failed: ${failed.message}`, { cause: failed });
    }
    return report;
  }

  private schedule(): void {
    if (!this.watching || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.watching) return;
      this.checking = this.driftCheck().finally(() => {
        this.checking = undefined;
        this.schedule();
      });
    }, this.driftIntervalMs);
    this.timer.unref();
  }

  /** One drift check; never rejects. */
  private async driftCheck(): Promise<void> {
    try {
      const outcome = await this.exclusive(async () => {
        const result = await this.readBack(this.current);
        if (result.ok) return undefined;
        return { differences: result.differences, at: Date.now(), report: await this.applyNow(this.current) };
      });
      if (outcome === undefined) return;
      const { differences, at, report } = outcome;
      const drift: DriftReport = { differences, repaired: report.ok, at };
      if (report.error) drift.error = report.error;
      this.emit('applied', report);
      this.emit('drift', drift);
    } catch (err) {
      this.emitError(asFirewallError(err, 'drift check'));
    }
  }

  private emitError(error: FirewallError): void {
    if (this.listenerCount('error') === 0) return;
    try {
      this.emit('error', error);
    } catch {
      // A throwing 'error' listener must not escape the timer.
    }
  }
}
