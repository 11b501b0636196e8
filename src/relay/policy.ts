/**
 * Pure decisions of the lifecycle: link gating and wear/thermal protection,
 * plus the scheduler and the concurrency limiter it runs on.
 */
import type { LinkMetrics } from '../mesh/registry.js';

// ---------------------------------------------------------------------------
// Link gating

export interface LinkThresholds {
  /** dBm; default -85. */
  minRssi: number;
  /** dB; default 5. */
  minSnr: number;
  /**
   * A metric the meter never reported: 'dispatch' (default) checks only the
   * metrics that are known, so meters that report none are not locked out
   * (the command is verified by read-back anyway); 'defer' treats an unknown
   * metric as failing.
   */
  unknown: 'dispatch' | 'defer';
}

export const DEFAULT_LINK_THRESHOLDS: Readonly<LinkThresholds> = Object.freeze({ minRssi: -85, minSnr: 5, unknown: 'dispatch' });

/** undefined when the link allows dispatch; otherwise why not. */
export function linkProblem(metrics: Readonly<LinkMetrics> | undefined, thresholds: LinkThresholds): string | undefined {
  const problems: string[] = [];
  const rssi = metrics?.rssi;
  const snr = metrics?.snr;
  if (rssi === undefined) {
    if (thresholds.unknown === 'defer') problems.push('RSSI unknown');
  } else if (rssi < thresholds.minRssi) problems.push(`RSSI ${rssi} dBm below ${thresholds.minRssi} dBm`);
  if (snr === undefined) {
    if (thresholds.unknown === 'defer') problems.push('SNR unknown');
  } else if (snr < thresholds.minSnr) problems.push(`SNR ${snr} dB below ${thresholds.minSnr} dB`);
  return problems.length === 0 ? undefined : problems.join(', ');
}

export function describeLink(metrics: Readonly<LinkMetrics> | undefined): string {
  const rssi = metrics?.rssi === undefined ? 'unknown' : `${metrics.rssi}dBm`;
  const snr = metrics?.snr === undefined ? 'unknown' : `${metrics.snr}dB`;
  return `rssi=${rssi} snr=${snr}`;
}

// ---------------------------------------------------------------------------
// Wear and thermal protection

export interface WearLimits {
  /** Minimum time between two actuations of one relay, ms (default 60 s). */
  minIntervalMs: number;
  /** At most this many actuations per sliding hour (default 6). */
  maxPerHour: number;
}

export const DEFAULT_WEAR_LIMITS: Readonly<WearLimits> = Object.freeze({ minIntervalMs: 60_000, maxPerHour: 6 });
export const HOUR_MS = 3_600_000;

/** Actuation times still relevant to the limits (the last hour), ascending. */
export function pruneWear(times: readonly number[], now: number): number[] {
  return times.filter((t) => t > now - HOUR_MS).sort((a, b) => a - b);
}

/** undefined when the relay may operate now; otherwise when it may (ms) and why not. */
export function wearDeferral(times: readonly number[], now: number, limits: WearLimits): { until: number; detail: string } | undefined {
  const recent = pruneWear(times, now);
  let until = now;
  const why: string[] = [];
  const last = recent[recent.length - 1];
  if (last !== undefined && now < last + limits.minIntervalMs) {
    until = Math.max(until, last + limits.minIntervalMs);
    why.push(`last operation ${Math.round((now - last) / 1000)} s ago, minimum interval ${Math.round(limits.minIntervalMs / 1000)} s`);
  }
  if (recent.length >= limits.maxPerHour) {
    // The oldest operations that must leave the window for one more to fit.
    const leaving = recent[recent.length - limits.maxPerHour];
    if (leaving !== undefined) until = Math.max(until, leaving + HOUR_MS);
    why.push(`${recent.length} operations in the last hour, cap ${limits.maxPerHour}`);
  }
  return why.length === 0 ? undefined : { until, detail: why.join('; ') };
}

// ---------------------------------------------------------------------------
// Scheduler and limiter

/** Runs a task at a time of the service clock; returns a cancel function. Injectable for tests. */
export interface RelayScheduler {
  at(time: number, task: () => void): () => void;
}

/** setTimeout-based scheduler (timers unref'd: a pending retry does not keep the process alive). */
export function timerScheduler(now: () => number = Date.now): RelayScheduler {
  return {
    at(time, task) {
      // setTimeout's range is 2^31-1 ms; longer waits re-arm.
      const MAX = 2 ** 31 - 1;
      let timer: NodeJS.Timeout | undefined;
      const arm = () => {
        const delay = Math.max(0, time - now());
        timer = setTimeout(delay > MAX ? arm : task, Math.min(delay, MAX));
        timer.unref();
      };
      arm();
      return () => clearTimeout(timer);
    },
  };
}

/** At most `limit` tasks at once, started in FIFO order. */
export class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError('limit must be a positive integer');
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.active += 1;
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active -= 1;
    }
  }
}
