import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { coapCall, CoapRequestError } from '../coap/request.js';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { decodeAck, encodeBatch, HEALTH_PATH, RECORDS_PATH } from './contract.js';

/**
 * Health of the HES sites and the choice of the one records go to
 * (docs/hes-uplink.md, "Failover"):
 *
 * - healthy: answers its health probe, and real batches within the latency budget;
 * - gray: answers its health probe, but real batches exceed the budget (2 of the
 *   last 3) or get no answer at all. Logged as COORDINATOR_TIMEOUT_EXCEEDED, the
 *   token HES operators know, and records go to the next healthy site;
 * - down: does not answer its probes (2 in a row), or answered the last batch
 *   with 5.03 or not at all and has not answered a probe since;
 * - unknown: not probed yet.
 *
 * A failover away from a failing site happens at once. The way back to a more
 * preferred site (failback) waits until that site has been healthy without a
 * break for the failback hold, and never comes sooner than the minimum dwell
 * after the previous switch. A site that had a gray failure must also answer a
 * trial (an empty batch, which exercises the records path its health probe does
 * not) within the budget at every probe during the hold. A site that fails again
 * soon after the gateway returned to it doubles its next hold, so a site that
 * alternates between slow and fast cannot make the gateway flap.
 */
export type SiteState = 'unknown' | 'healthy' | 'gray' | 'down';

export interface HesFailoverOptions {
  /** A batch answered later than this is slow; 2 slow batches of the last 3 make a gray failure. */
  latencyBudgetMs: number;
  /** Health probe (GET /ami/v1/health) of every site this often; 0 for none. */
  probeIntervalMs: number;
  probeTimeoutMs: number;
  /** How long a more preferred site must have been healthy without a break before records go back to it. */
  failbackHoldMs: number;
  /** No failback sooner than this after the previous switch (a failover from a failing site is never held back). */
  minDwellMs: number;
  /**
   * While another site is usable, a batch still unanswered after
   * latencyBudgetMs × abortFactor is abandoned and sent there instead (a gray
   * failure); with no usable alternative it gets the full request timeout.
   */
  abortFactor: number;
}

export const DEFAULT_FAILOVER_OPTIONS: HesFailoverOptions = {
  latencyBudgetMs: 2000,
  probeIntervalMs: 5000,
  probeTimeoutMs: 2000,
  failbackHoldMs: 60_000,
  minDwellMs: 30_000,
  abortFactor: 2,
};

/** The hold of a site that keeps failing soon after failbacks grows to at most this multiple. */
export const MAX_HOLD_MULTIPLIER = 32;
/** A site that served this many base holds without failing has its hold back at the base. */
const HOLD_RESET_AFTER_HOLDS = 10;
/** Batches remembered per site for the gray decision, and how many of them slow make it gray. */
const GRAY_WINDOW = 3;
const GRAY_SLOW = 2;
/** Batch latencies kept per site for p50/p95. */
const LATENCY_SAMPLES = 100;
/** Consecutive failed probes that make a site down. */
const PROBES_FOR_DOWN = 2;

export interface GrayFailure {
  site: string;
  at: string;
  latencyMs: number;
  budgetMs: number;
  reason: string;
}

export interface SiteSwitch {
  from: string;
  to: string;
  reason: 'failover' | 'failback';
  /** Why: the state of the site left behind, or the hold that passed. */
  why: string;
}

export interface ProbeOutcome {
  ok: boolean;
  latencyMs: number;
  error?: string;
}

/** How a site is asked whether it is healthy; the CoAP one by default, replaceable in tests of the state machine. */
export interface SiteProber {
  /** GET /ami/v1/health: ok on 2.05. */
  health(url: string, timeoutMs: number, signal: AbortSignal): Promise<ProbeOutcome>;
  /** An empty batch, POST /ami/v1/records with no records: ok on 2.04 with a readable acknowledgement. */
  trial(url: string, timeoutMs: number, signal: AbortSignal): Promise<ProbeOutcome>;
}

export interface SiteLog {
  warn(message: string): void;
  info(message: string): void;
}

export interface HesSiteStatus {
  url: string;
  /** primary, secondary, then site 3, site 4… */
  role: string;
  state: SiteState;
  active: boolean;
  /** Latency of real batches (and abandoned ones, counted at the time they were abandoned), ms. */
  latency: { p50: number | null; p95: number | null; samples: number };
  lastProbe: { at: string; ok: boolean; latencyMs: number; error?: string } | null;
  /** The last trial batch (sent only to a site recovering from a gray failure). */
  lastTrial: { at: string; ok: boolean; latencyMs: number; error?: string } | null;
  /** Start of the unbroken stretch of good probes (and trials), null when the last one was bad. */
  healthySince: string | null;
  /** The hold before a failback to this site, ms (the base hold, or more after failures soon after failbacks). */
  failbackHoldMs: number;
}

export interface HesSitesStatus {
  activeSite: string;
  activeState: SiteState;
  /** False while the backhaul is reported down: no probes, nothing judged. */
  linkUp: boolean;
  latencyBudgetMs: number;
  failovers: number;
  failbacks: number;
  grayFailures: number;
  lastGrayFailure: GrayFailure | null;
  lastSwitch: (SiteSwitch & { at: string }) | null;
  sites: HesSiteStatus[];
}

export interface HesSitesEvents {
  switch: [change: SiteSwitch];
  gray: [failure: GrayFailure];
  /** A health probe of a site came back (after its state was updated). */
  probed: [url: string, outcome: ProbeOutcome];
}

interface Site {
  readonly url: string;
  readonly index: number;
  lastProbe: { at: number; ok: boolean; latencyMs: number; error?: string } | undefined;
  lastTrial: { at: number; ok: boolean; latencyMs: number; error?: string } | undefined;
  probeFailures: number;
  probing: boolean;
  /** The last batches it answered: slow (over the budget) or not. */
  recent: boolean[];
  latencies: number[];
  /** Real batches too slow or unanswered while the probe answers. */
  gray: boolean;
  /** Had a gray failure and has not served since: every probe comes with a trial batch. */
  needsTrial: boolean;
  /** Its last batch got 5.03, a network error or an unreadable answer, and no probe answered since. */
  unavailable: boolean;
  healthySince: number | undefined;
  holdMultiplier: number;
  activeSince: number;
  cameBy: 'start' | 'failover' | 'failback';
  batches: number;
}

/** The health probe and trial batch over CoAP, as the uplink sends them. */
export function coapSiteProber(gateway: string): SiteProber {
  const measure = async (call: () => Promise<boolean | string>): Promise<ProbeOutcome> => {
    const started = performance.now();
    try {
      const result = await call();
      const latencyMs = Math.round(performance.now() - started);
      return result === true ? { ok: true, latencyMs } : { ok: false, latencyMs, error: String(result) };
    } catch (err) {
      return { ok: false, latencyMs: Math.round(performance.now() - started), error: (err as Error).message };
    }
  };
  const trialPayload = encodeBatch({ gateway, records: [] });
  return {
    health: (url, timeoutMs, signal) =>
      measure(async () => {
        const response = await coapCall(joinUrl(url, HEALTH_PATH), { method: 'GET', accept: CONTENT_FORMAT.cbor, timeoutMs, signal });
        return response.code === '2.05' || `answered ${response.code}`;
      }),
    trial: (url, timeoutMs, signal) =>
      measure(async () => {
        const response = await coapCall(joinUrl(url, RECORDS_PATH), {
          method: 'POST',
          payload: trialPayload,
          contentFormat: CONTENT_FORMAT.cbor,
          accept: CONTENT_FORMAT.cbor,
          timeoutMs,
          signal,
        });
        if (response.code !== '2.04' && response.code !== '2.01') return `answered ${response.code}`;
        decodeAck(response.payload);
        return true;
      }),
  };
}

function joinUrl(base: string, resource: string): string {
  return base.replace(/\/+$/, '') + resource;
}

function percentile(samples: readonly number[], p: number): number | null {
  if (samples.length === 0) return null;
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

function roleOf(index: number): string {
  return index === 0 ? 'primary' : index === 1 ? 'secondary' : `site ${index + 1}`;
}

/**
 * The HES sites in order of preference, their health, and the active one.
 * HesUplink feeds it the outcome of every batch and asks it which site to
 * try; it probes the sites itself.
 */
export class HesSites extends EventEmitter<HesSitesEvents> {
  private readonly sites: Site[];
  private activeIndex = 0;
  private lastSwitch: (SiteSwitch & { at: number }) | undefined;
  private lastSwitchAt: number;
  private failovers = 0;
  private failbacks = 0;
  private grayFailures = 0;
  private lastGray: GrayFailure | undefined;
  private timer: NodeJS.Timeout | undefined;
  private probeAbort = new AbortController();
  private running = false;
  private up = true;
  readonly options: HesFailoverOptions;
  private readonly now: () => number;

  constructor(
    urls: readonly string[],
    options: Partial<HesFailoverOptions>,
    private readonly prober: SiteProber,
    private readonly log?: SiteLog,
    now: () => number = Date.now,
  ) {
    super();
    if (urls.length === 0) throw new RangeError('no HES site');
    const defaults = DEFAULT_FAILOVER_OPTIONS;
    const failbackHoldMs = options.failbackHoldMs ?? defaults.failbackHoldMs;
    this.options = {
      latencyBudgetMs: options.latencyBudgetMs ?? defaults.latencyBudgetMs,
      probeIntervalMs: options.probeIntervalMs ?? defaults.probeIntervalMs,
      probeTimeoutMs: options.probeTimeoutMs ?? defaults.probeTimeoutMs,
      failbackHoldMs,
      // The default dwell never exceeds a shorter hold.
      minDwellMs: options.minDwellMs ?? Math.min(defaults.minDwellMs, failbackHoldMs),
      abortFactor: options.abortFactor ?? defaults.abortFactor,
    };
    if (!(this.options.latencyBudgetMs > 0) || !(this.options.abortFactor >= 1)) {
      throw new RangeError('latencyBudgetMs must be positive and abortFactor at least 1');
    }
    this.now = now;
    const started = now();
    this.lastSwitchAt = started;
    this.sites = urls.map((url, index) => ({
      url,
      index,
      lastProbe: undefined,
      lastTrial: undefined,
      probeFailures: 0,
      probing: false,
      recent: [],
      latencies: [],
      gray: false,
      needsTrial: false,
      unavailable: false,
      healthySince: undefined,
      holdMultiplier: 1,
      activeSince: started,
      cameBy: 'start',
      batches: 0,
    }));
  }

  get active(): number {
    return this.activeIndex;
  }

  get activeUrl(): string {
    return this.site(this.activeIndex).url;
  }

  get linkUp(): boolean {
    return this.up;
  }

  url(index: number): string {
    return this.site(index).url;
  }

  state(index: number): SiteState {
    return this.stateOf(this.site(index));
  }

  /** How long a batch to `index` may wait before it is abandoned for another site, given the sites already tried. */
  abortAfterMs(index: number, tried: ReadonlySet<number>): number | undefined {
    const alternative = this.sites.some((site) => site.index !== index && !tried.has(site.index) && this.usable(site));
    return alternative ? this.options.latencyBudgetMs * this.options.abortFactor : undefined;
  }

  /**
   * The next site to try for a batch: the active one first, then the others,
   * usable ones (healthy or not yet probed) before gray ones before down ones,
   * each group in order of preference. Every site is tried as a last resort.
   */
  nextCandidate(tried: ReadonlySet<number>): number | undefined {
    if (!tried.has(this.activeIndex)) return this.activeIndex;
    const rank = (site: Site): number => ({ unknown: 0, healthy: 0, gray: 1, down: 2 })[this.stateOf(site)];
    const rest = this.sites.filter((site) => !tried.has(site.index)).sort((a, b) => rank(a) - rank(b) || a.index - b.index);
    return rest[0]?.index;
  }

  /** Starts probing (at once, then every probeIntervalMs). */
  start(): void {
    this.running = true;
    this.schedule();
  }

  stop(): void {
    this.running = false;
    clearInterval(this.timer);
    this.timer = undefined;
    this.probeAbort.abort();
  }

  /**
   * The backhaul went down or came back. While it is down nothing is probed
   * and no batch outcome is held against a site (the sites are not at fault);
   * when it comes back every site starts a new healthy stretch, since nobody
   * watched them meanwhile.
   */
  setLinkUp(up: boolean): void {
    if (up === this.up) return;
    this.up = up;
    if (!up) {
      clearInterval(this.timer);
      this.timer = undefined;
      this.probeAbort.abort();
      for (const site of this.sites) site.healthySince = undefined;
    } else {
      this.probeAbort = new AbortController();
      this.schedule();
    }
  }

  /** A site answered a batch (2.04, or 4.xx: it answered) after `latencyMs`. */
  recordAnswer(index: number, latencyMs: number): void {
    if (!this.up) return;
    const site = this.site(index);
    site.batches += 1;
    this.remember(site, latencyMs);
    site.unavailable = false;
    const slow = latencyMs > this.options.latencyBudgetMs;
    site.recent = [...site.recent, slow].slice(-GRAY_WINDOW);
    if (slow) site.healthySince = undefined;
    if (site.recent.filter(Boolean).length >= GRAY_SLOW) {
      this.grayFailure(site, latencyMs, `${GRAY_SLOW} of its last ${GRAY_WINDOW} batches took longer than the budget`);
    } else if (site.gray && site.recent.length === GRAY_WINDOW && !site.recent.some(Boolean)) {
      // The active site with nowhere else to go: its own batches show it recovered.
      site.gray = false;
    }
    this.evaluate();
  }

  /**
   * A batch to the site got no answer within `waitedMs` (abandoned at the
   * abort threshold, or the request timeout). An immediate probe tells a gray
   * failure (the site still answers its probe) from a site that is down.
   */
  recordTimeout(index: number, waitedMs: number): void {
    if (!this.up) return;
    const site = this.site(index);
    site.batches += 1;
    this.remember(site, waitedMs);
    site.healthySince = undefined;
    const signal = this.probeAbort.signal;
    void this.prober.health(site.url, this.options.probeTimeoutMs, signal).then((outcome) => {
      if (signal.aborted || !this.up) return;
      this.noteProbe(site, outcome);
      if (outcome.ok) this.grayFailure(site, waitedMs, `a batch got no answer within ${waitedMs} ms while the site answers its health probe`);
      else {
        site.unavailable = true;
        this.log?.warn(`HES site ${site.url} does not answer batches nor its health probe (${outcome.error ?? 'no answer'}): down`);
      }
      this.evaluate();
    });
  }

  /** The site answered 5.03, an unreadable acknowledgement, or the request failed at once. */
  recordUnavailable(index: number): void {
    if (!this.up) return;
    const site = this.site(index);
    site.batches += 1;
    site.unavailable = true;
    site.healthySince = undefined;
    this.evaluate();
  }

  /**
   * `index` answered a batch after the active site failed it: records go
   * there now (a failover, counted), unless the active site is still the
   * better choice (it is not: it just failed).
   */
  answeredInstead(index: number): void {
    if (index === this.activeIndex) return;
    const from = this.site(this.activeIndex);
    this.switchTo(this.site(index), 'failover', `${from.url} failed a batch (${this.stateOf(from)})`);
  }

  status(): HesSitesStatus {
    const iso = (at: number | undefined): string | null => (at === undefined ? null : new Date(at).toISOString());
    const active = this.site(this.activeIndex);
    return {
      activeSite: active.url,
      activeState: this.stateOf(active),
      linkUp: this.up,
      latencyBudgetMs: this.options.latencyBudgetMs,
      failovers: this.failovers,
      failbacks: this.failbacks,
      grayFailures: this.grayFailures,
      lastGrayFailure: this.lastGray ?? null,
      lastSwitch: this.lastSwitch ? { ...this.lastSwitch, at: new Date(this.lastSwitch.at).toISOString() } : null,
      sites: this.sites.map((site) => ({
        url: site.url,
        role: roleOf(site.index),
        state: this.stateOf(site),
        active: site.index === this.activeIndex,
        latency: { p50: percentile(site.latencies, 50), p95: percentile(site.latencies, 95), samples: site.latencies.length },
        lastProbe: site.lastProbe ? { ...site.lastProbe, at: iso(site.lastProbe.at) as string } : null,
        lastTrial: site.lastTrial ? { ...site.lastTrial, at: iso(site.lastTrial.at) as string } : null,
        healthySince: iso(site.healthySince),
        failbackHoldMs: this.holdOf(site),
      })),
    };
  }

  private site(index: number): Site {
    const site = this.sites[index];
    if (!site) throw new RangeError(`no HES site ${index}`);
    return site;
  }

  private stateOf(site: Site): SiteState {
    if (site.unavailable || site.probeFailures >= PROBES_FOR_DOWN) return 'down';
    if (site.gray) return 'gray';
    if (site.lastProbe === undefined && site.batches === 0) return 'unknown';
    return 'healthy';
  }

  private usable(site: Site): boolean {
    const state = this.stateOf(site);
    return state === 'healthy' || state === 'unknown';
  }

  private holdOf(site: Site): number {
    return this.options.failbackHoldMs * site.holdMultiplier;
  }

  private remember(site: Site, latencyMs: number): void {
    site.latencies.push(Math.round(latencyMs));
    if (site.latencies.length > LATENCY_SAMPLES) site.latencies.shift();
  }

  private schedule(): void {
    if (!this.running || !this.up || this.options.probeIntervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => this.probeAll(), this.options.probeIntervalMs);
    this.timer.unref();
    this.probeAll();
  }

  private probeAll(): void {
    for (const site of this.sites) if (!site.probing) void this.probe(site);
  }

  private async probe(site: Site): Promise<void> {
    site.probing = true;
    const signal = this.probeAbort.signal;
    try {
      const outcome = await this.prober.health(site.url, this.options.probeTimeoutMs, signal);
      if (signal.aborted || !this.up) return;
      this.noteProbe(site, outcome);
      let good = outcome.ok && outcome.latencyMs <= this.options.latencyBudgetMs;
      if (good && site.needsTrial && site.index !== this.activeIndex) {
        // Its health resource answers; whether its records path does is what matters.
        const trial = await this.prober.trial(site.url, this.options.latencyBudgetMs * this.options.abortFactor, signal);
        if (signal.aborted || !this.up) return;
        site.lastTrial = { at: this.now(), ok: trial.ok, latencyMs: trial.latencyMs, ...(trial.error ? { error: trial.error } : {}) };
        good = trial.ok && trial.latencyMs <= this.options.latencyBudgetMs;
        if (good) site.gray = false;
      }
      if (good) site.healthySince ??= this.now();
      else site.healthySince = undefined;
      this.evaluate();
      this.emit('probed', site.url, outcome);
    } finally {
      site.probing = false;
    }
  }

  private noteProbe(site: Site, outcome: ProbeOutcome): void {
    site.lastProbe = { at: this.now(), ok: outcome.ok, latencyMs: outcome.latencyMs, ...(outcome.error ? { error: outcome.error } : {}) };
    if (outcome.ok) {
      site.probeFailures = 0;
      site.unavailable = false;
    } else {
      site.probeFailures += 1;
      site.healthySince = undefined;
    }
  }

  private grayFailure(site: Site, latencyMs: number, reason: string): void {
    if (site.gray) {
      // Still gray (the active site with nowhere to go): logged once per episode; fail over if somewhere opened up.
      site.recent = [];
      this.evaluate();
      return;
    }
    site.gray = true;
    site.needsTrial = true;
    site.recent = [];
    site.healthySince = undefined;
    const failure: GrayFailure = {
      site: site.url,
      at: new Date(this.now()).toISOString(),
      latencyMs: Math.round(latencyMs),
      budgetMs: this.options.latencyBudgetMs,
      reason,
    };
    this.grayFailures += 1;
    this.lastGray = failure;
    const target = site.index === this.activeIndex ? this.bestUsable(site) : undefined;
    const next =
      site.index !== this.activeIndex
        ? `records already go to ${this.activeUrl}`
        : target
          ? `failing over to ${target.url}`
          : 'no other healthy site: staying';
    this.log?.warn(
      `COORDINATOR_TIMEOUT_EXCEEDED site=${site.url} latencyMs=${failure.latencyMs} budgetMs=${failure.budgetMs}: ${reason}; ${next}`,
    );
    this.emit('gray', failure);
    if (target) this.switchTo(target, 'failover', `gray failure of ${site.url}`);
  }

  /** The most preferred usable site other than `except`. */
  private bestUsable(except: Site): Site | undefined {
    return this.sites.find((site) => site !== except && this.usable(site));
  }

  /** Fails over from a failing active site; fails back once a preferred site has held up. */
  private evaluate(): void {
    if (!this.up) return;
    const now = this.now();
    const active = this.site(this.activeIndex);
    const state = this.stateOf(active);
    if (state === 'down' || state === 'gray') {
      const target = this.bestUsable(active);
      if (target) {
        if (state === 'down') this.log?.warn(`HES site ${active.url} is down: failing over to ${target.url}`);
        this.switchTo(target, 'failover', `${active.url} is ${state}`);
      }
      return;
    }
    if (active.holdMultiplier > 1 && now - active.activeSince >= HOLD_RESET_AFTER_HOLDS * this.options.failbackHoldMs) active.holdMultiplier = 1;
    if (now - this.lastSwitchAt < this.options.minDwellMs) return;
    for (const site of this.sites) {
      if (site.index >= this.activeIndex) break;
      if (this.stateOf(site) !== 'healthy' || site.healthySince === undefined) continue;
      const held = now - site.healthySince;
      if (held >= this.holdOf(site)) {
        this.log?.info(`HES site ${site.url} has been healthy for ${Math.round(held / 1000)} s: failing back from ${active.url}`);
        this.switchTo(site, 'failback', `healthy for ${held} ms (hold ${this.holdOf(site)} ms)`);
        return;
      }
    }
  }

  private switchTo(target: Site, reason: 'failover' | 'failback', why: string): void {
    if (target.index === this.activeIndex) return;
    const now = this.now();
    const from = this.site(this.activeIndex);
    if (reason === 'failover') {
      this.failovers += 1;
      // Failed again within one hold of the gateway coming back to it: wait longer next time.
      if (from.cameBy === 'failback' && now - from.activeSince < this.holdOf(from)) {
        from.holdMultiplier = Math.min(MAX_HOLD_MULTIPLIER, from.holdMultiplier * 2);
      }
    } else {
      this.failbacks += 1;
    }
    from.healthySince = reason === 'failover' ? undefined : from.healthySince;
    this.activeIndex = target.index;
    target.activeSince = now;
    target.cameBy = reason;
    // Real batches judge the active site from now on.
    target.needsTrial = false;
    target.recent = [];
    this.lastSwitchAt = now;
    const change: SiteSwitch = { from: from.url, to: target.url, reason, why };
    this.lastSwitch = { ...change, at: now };
    this.emit('switch', change);
  }
}

/** True for the error coapCall gives when a request was abandoned at its deadline. */
export function isTimeout(err: unknown): boolean {
  return err instanceof CoapRequestError && err.code === 'TIMEOUT';
}
