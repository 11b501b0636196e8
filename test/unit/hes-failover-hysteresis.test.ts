import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { HesSites, type ProbeOutcome, type SiteProber, type SiteSwitch } from '../../src/hes/sites.js';

/**
 * The hysteresis of HesSites over hours of simulated time: no sockets here
 * (the prober answers from a table), so fake timers are reliable. The
 * socket-level behaviour is in hes-failover.test.ts.
 */
const BUDGET = 200;
const HOLD = 10_000;
const PROBE_EVERY = 1000;

interface Site {
  up: boolean;
  /** Latency of the trial batch (the records path); the health probe stays fast. */
  trialMs: number;
}

let sites: HesSites;
let table: Record<string, Site>;
let switches: SiteSwitch[];
let log: string[];

function prober(): SiteProber {
  const answer = (url: string, latencyMs: (site: Site) => number): Promise<ProbeOutcome> => {
    const site = table[url] as Site;
    return Promise.resolve(site.up ? { ok: true, latencyMs: latencyMs(site) } : { ok: false, latencyMs: 500, error: 'no answer' });
  };
  return { health: (url) => answer(url, () => 5), trial: (url) => answer(url, (site) => site.trialMs) };
}

function create(options: { minDwellMs?: number; failbackHoldMs?: number } = {}): HesSites {
  table = { p: { up: true, trialMs: 5 }, s: { up: true, trialMs: 5 } };
  switches = [];
  log = [];
  const created = new HesSites(
    ['p', 's'],
    { latencyBudgetMs: BUDGET, probeIntervalMs: PROBE_EVERY, probeTimeoutMs: 500, failbackHoldMs: options.failbackHoldMs ?? HOLD, minDwellMs: options.minDwellMs ?? 0 },
    prober(),
    { warn: (m) => log.push(m), info: (m) => log.push(m) },
  );
  created.on('switch', (change) => switches.push(change));
  created.start();
  return created;
}

/** Two batches over the budget on the primary: a gray failure. */
function slowBatches(): void {
  sites.recordAnswer(0, 3 * BUDGET);
  sites.recordAnswer(0, 3 * BUDGET);
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  sites.stop();
  vi.useRealTimers();
});

describe('failback hysteresis', () => {
  it('doubles the hold of a site that fails again soon after the gateway returned to it, so it cannot make the gateway flap', async () => {
    sites = create();
    await vi.advanceTimersByTimeAsync(0);
    const failbackAfter: number[] = [];
    for (let round = 0; round < 4; round++) {
      slowBatches();
      expect(sites.activeUrl).toBe('s');
      // The primary recovers at once; the time to the failback is the hold in force.
      const start = Date.now();
      while (sites.activeUrl !== 'p') await vi.advanceTimersByTimeAsync(PROBE_EVERY);
      failbackAfter.push(Date.now() - start);
    }
    // Each failure came right after a failback: 10 s, then 20, 40, 80 (give or take a probe interval).
    expect(failbackAfter[0]).toBeGreaterThanOrEqual(HOLD);
    for (let i = 1; i < failbackAfter.length; i++) {
      expect(failbackAfter[i]).toBeGreaterThanOrEqual(HOLD * 2 ** i);
      expect(failbackAfter[i]).toBeLessThanOrEqual(HOLD * 2 ** i + 2 * PROBE_EVERY);
    }
    expect(sites.status()).toMatchObject({ failovers: 4, failbacks: 4, grayFailures: 4 });
    expect(log.filter((line) => line.startsWith('COORDINATOR_TIMEOUT_EXCEEDED site=p latencyMs=600 budgetMs=200'))).toHaveLength(4);
  });

  it('returns a site that served well for ten holds to the base hold', async () => {
    sites = create();
    await vi.advanceTimersByTimeAsync(0);
    slowBatches();
    while (sites.activeUrl !== 'p') await vi.advanceTimersByTimeAsync(PROBE_EVERY);
    slowBatches();
    expect(sites.status().sites[0]?.failbackHoldMs).toBe(2 * HOLD);
    while (sites.activeUrl !== 'p') await vi.advanceTimersByTimeAsync(PROBE_EVERY);
    await vi.advanceTimersByTimeAsync(10 * HOLD + PROBE_EVERY);
    expect(sites.status().sites[0]?.failbackHoldMs).toBe(HOLD);
  });

  it('does not fail back while trials on the records path are slow, however fast the health probe answers', async () => {
    sites = create();
    await vi.advanceTimersByTimeAsync(0);
    slowBatches();
    table.p = { up: true, trialMs: 3 * BUDGET };
    await vi.advanceTimersByTimeAsync(10 * HOLD);
    expect(sites.activeUrl).toBe('s');
    expect(sites.status().sites[0]).toMatchObject({ state: 'gray', healthySince: null });
    expect(sites.status().sites[0]?.lastTrial?.latencyMs).toBe(3 * BUDGET);
    table.p = { up: true, trialMs: 5 };
    await vi.advanceTimersByTimeAsync(HOLD + 2 * PROBE_EVERY);
    expect(sites.activeUrl).toBe('p');
    expect(switches.map((change) => change.reason)).toEqual(['failover', 'failback']);
  });

  it('keeps the minimum dwell after a switch even when the hold is shorter', async () => {
    sites = create({ failbackHoldMs: 1000, minDwellMs: 30_000 });
    await vi.advanceTimersByTimeAsync(0);
    slowBatches();
    await vi.advanceTimersByTimeAsync(25_000);
    expect(sites.activeUrl).toBe('s');
    await vi.advanceTimersByTimeAsync(6000);
    expect(sites.activeUrl).toBe('p');
  });

  it('fails over at once from a site that stops answering its probes, dwell or not, and holds nothing against sites while the link is down', async () => {
    sites = create({ minDwellMs: 60_000 });
    await vi.advanceTimersByTimeAsync(0);
    sites.setLinkUp(false);
    slowBatches();
    table.p = { up: false, trialMs: 5 };
    await vi.advanceTimersByTimeAsync(5 * PROBE_EVERY);
    expect(sites.activeUrl).toBe('p');
    expect(sites.status()).toMatchObject({ linkUp: false, failovers: 0, grayFailures: 0 });
    sites.setLinkUp(true);
    // Two missed probes make it down.
    await vi.advanceTimersByTimeAsync(2 * PROBE_EVERY);
    expect(sites.activeUrl).toBe('s');
    expect(sites.status().sites[0]?.state).toBe('down');
    expect(log.some((line) => line.includes('COORDINATOR_TIMEOUT_EXCEEDED'))).toBe(false);
  });
});
