import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HesSimulator } from '../../src/sim/hes.js';
import { acquireDatabase } from '../../src/store/database.js';
import { Outbox } from '../../src/store/outbox.js';
import { HesUplink, DEFAULT_UPLINK_OPTIONS } from '../../src/hes/uplink.js';
import { OutboxDrain, outboxEntryFor } from '../../src/hes/drain.js';
import type { HesFailoverOptions, SiteSwitch } from '../../src/hes/sites.js';
import type { HesRecord } from '../../src/hes/contract.js';

/**
 * Failover between two real HES simulators over loopback CoAP, through the
 * real outbox and drain. Small budgets and intervals stand in for the
 * production ones (2 s budget, 5 s probes, 60 s hold).
 */
const FAILOVER: Partial<HesFailoverOptions> = { latencyBudgetMs: 200, probeIntervalMs: 50, probeTimeoutMs: 500, failbackHoldMs: 800, minDwellMs: 200 };

let tmpRoot: string;
const cleanups: Array<() => Promise<void> | void> = [];
beforeAll(() => {
  tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'hes-failover-'));
});
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function simulator(port = 0): Promise<HesSimulator> {
  const hes = new HesSimulator({ port, bind: '::1' });
  await hes.start();
  cleanups.push(() => hes.stop());
  return hes;
}

async function gateway(sites: string[], options: { failover?: Partial<HesFailoverOptions>; maxBatch?: number; requestTimeoutMs?: number } = {}) {
  const lease = await acquireDatabase(mkdtempSync(path.join(tmpRoot, 'store-')));
  const outbox = await Outbox.open(lease.db, { maxBytes: 1e8, ttlMs: { alarm: 1e9, event: 1e9, metrology: 1e9 } });
  const log: string[] = [];
  const uplink = new HesUplink({
    ...DEFAULT_UPLINK_OPTIONS,
    requestTimeoutMs: options.requestTimeoutMs ?? 3000,
    gateway: 'gw-failover',
    endpoints: sites,
    failover: options.failover ?? FAILOVER,
    log: { warn: (m) => log.push(`warn ${m}`), info: (m) => log.push(`info ${m}`) },
  });
  const switches: Array<SiteSwitch & { at: number }> = [];
  uplink.on('switch', (change) => switches.push({ ...change, at: Date.now() }));
  const drain = new OutboxDrain(outbox, uplink, { retryInitialMs: 50, retryMaxMs: 200, maxBatch: options.maxBatch ?? 64 });
  cleanups.push(async () => {
    await uplink.close();
    await drain.stop();
    await outbox.close();
    await lease.release();
  });
  drain.start();
  let next = 0;
  /** Appends `count` new records; resolves with their keys once they are on disk. */
  const append = async (count: number): Promise<string[]> => {
    const keys: string[] = [];
    for (let i = 0; i < count; i++) {
      const n = next++;
      const record: HesRecord = { key: `m${n % 5}/${n}`, kind: 'reading', meter: `m${n % 5}`, ts: 1_700_000_000_000 + n, body: { n } };
      await outbox.append(outboxEntryFor(record));
      keys.push(record.key);
    }
    drain.wake();
    return keys;
  };
  /**
   * Resolves once `hes` stored every key and the gateway heard so: the
   * simulator stores a record before it answers, so storing alone does not
   * mean the gateway has taken note of the answer yet.
   */
  const delivered = async (hes: HesSimulator, keys: string[]): Promise<void> => {
    await storedAll(hes, keys);
    while (outbox.depth > 0) await once(drain, 'drained');
  };
  return { outbox, uplink, drain, log, switches, append, delivered };
}

/** Resolves once every key is stored by `hes`. */
function storedAll(hes: HesSimulator, keys: string[]): Promise<void> {
  return new Promise((resolve) => {
    const missing = new Set(keys.filter((key) => !hes.has(key)));
    if (missing.size === 0) return resolve();
    const stop = hes.onStored((key) => {
      missing.delete(key);
      if (missing.size === 0) {
        stop();
        resolve();
      }
    });
  });
}

function nextSwitch(uplink: HesUplink, reason: SiteSwitch['reason']): Promise<SiteSwitch> {
  return new Promise((resolve) => {
    const listener = (change: SiteSwitch): void => {
      if (change.reason !== reason) return;
      uplink.off('switch', listener);
      resolve(change);
    };
    uplink.on('switch', listener);
  });
}

describe('HES failover', () => {
  it('fails over within the budget when the primary answers probes but not batches, logs COORDINATOR_TIMEOUT_EXCEEDED, and fails back once after the hold', async () => {
    const primary = await simulator();
    const secondary = await simulator();
    const gw = await gateway([primary.url, secondary.url]);
    await gw.delivered(primary, await gw.append(10));

    // Gray: the health resource answers at once, batches only after 10 s.
    primary.setResponseDelay(10_000);
    const gray = once(gw.uplink, 'gray');
    const grayAt = Date.now();
    const keys = await gw.append(10);
    await gw.delivered(secondary, keys);
    const failoverMs = Date.now() - grayAt;
    await gray;
    // The batch is abandoned at budget × 2 (400 ms) rather than the 3 s request timeout; generous bound.
    expect(failoverMs).toBeLessThan(2500);
    expect(gw.switches).toMatchObject([{ from: primary.url, to: secondary.url, reason: 'failover' }]);
    const grayLine = gw.log.find((line) => line.includes('COORDINATOR_TIMEOUT_EXCEEDED'));
    expect(grayLine).toBeDefined();
    expect(grayLine).toContain(`site=${primary.url}`);
    expect(grayLine).toMatch(/latencyMs=\d+ budgetMs=200/);
    let status = gw.uplink.status();
    expect(status.activeSite).toBe(secondary.url);
    expect(status.failovers).toBe(1);
    expect(status.lastGrayFailure).toMatchObject({ site: primary.url, budgetMs: 200 });
    expect(status.lastGrayFailure?.latencyMs).toBeGreaterThanOrEqual(200);
    expect(status.sites[0]).toMatchObject({ role: 'primary', state: 'gray' });

    // Still slow: trials keep it out of service, records keep going to the secondary.
    await gw.delivered(secondary, await gw.append(5));
    expect(gw.uplink.activeEndpoint).toBe(secondary.url);

    // Fast again: back to the primary, once, no sooner than the hold.
    const failback = nextSwitch(gw.uplink, 'failback');
    const fastAt = Date.now();
    primary.setResponseDelay(0);
    expect(await failback).toMatchObject({ from: secondary.url, to: primary.url });
    expect(Date.now() - fastAt).toBeGreaterThanOrEqual(FAILOVER.failbackHoldMs as number);
    await gw.delivered(primary, await gw.append(10));

    // Records keep flowing to the primary for two more holds: no further switch.
    const until = Date.now() + 2 * (FAILOVER.failbackHoldMs as number);
    while (Date.now() < until) await gw.delivered(primary, await gw.append(3));
    status = gw.uplink.status();
    expect(status).toMatchObject({ activeSite: primary.url, failovers: 1, failbacks: 1 });
    expect(gw.switches).toHaveLength(2);
  });

  it('counts a batch over the budget that still succeeds: two of the last three make a gray failure', async () => {
    const primary = await simulator();
    const secondary = await simulator();
    const gw = await gateway([primary.url, secondary.url], { maxBatch: 5 });
    await gw.delivered(primary, await gw.append(5));
    // Over the 200 ms budget, under the 400 ms at which a batch is abandoned.
    primary.setResponseDelay(300);
    const slowBatches: number[] = [];
    gw.uplink.on('delivered', (records, endpoint) => {
      if (endpoint === primary.url) slowBatches.push(records.length);
    });
    const gray = once(gw.uplink, 'gray');
    const keys = await gw.append(25);
    await gw.delivered(secondary, keys.slice(-5));
    while (gw.outbox.depth > 0) await once(gw.drain, 'drained');
    // The slow batches were delivered where they were sent; everything after them went to the secondary.
    const onPrimary = keys.filter((key) => primary.has(key));
    // Two slow batches, then the failover (the first, fast batch was the third of the window).
    expect(slowBatches).toHaveLength(2);
    expect(onPrimary).toHaveLength(slowBatches[0]! + slowBatches[1]!);
    expect(keys.slice(0, onPrimary.length)).toEqual(onPrimary);
    expect(keys.slice(onPrimary.length).every((key) => secondary.has(key))).toBe(true);
    await gray;
    expect(gw.log.find((line) => line.includes('COORDINATOR_TIMEOUT_EXCEEDED'))).toMatch(/2 of its last 3 batches/);
    expect(gw.uplink.status()).toMatchObject({ activeSite: secondary.url, failovers: 1, failbacks: 0 });
    expect(primary.stats.duplicates + secondary.stats.duplicates).toBe(0);
  });

  it('does not flap while the primary alternates between slow and fast faster than the hold', async () => {
    const primary = await simulator();
    const secondary = await simulator();
    const gw = await gateway([primary.url, secondary.url]);
    await gw.delivered(primary, await gw.append(5));
    primary.setDropRecords(true);
    await gw.delivered(secondary, await gw.append(5));
    expect(gw.switches).toHaveLength(1);

    // 150 ms fast, 150 ms unanswered, for 3 s (almost four holds).
    primary.setDropRecords(false);
    let slow = false;
    const flapping = setInterval(() => {
      slow = !slow;
      primary.setDropRecords(slow);
    }, 150);
    const until = Date.now() + 3000;
    while (Date.now() < until) await gw.delivered(secondary, await gw.append(2));
    clearInterval(flapping);
    expect(gw.switches).toHaveLength(1);
    expect(gw.uplink.status()).toMatchObject({ activeSite: secondary.url, failovers: 1, failbacks: 0 });

    // Steady again: exactly one failback.
    primary.setDropRecords(false);
    await nextSwitch(gw.uplink, 'failback');
    await gw.delivered(primary, await gw.append(5));
    expect(gw.uplink.status()).toMatchObject({ activeSite: primary.url, failovers: 1, failbacks: 1 });
  });

  it('takes the secondary when the primary stops, without calling it a gray failure, and returns after the hold when it is back', async () => {
    const primary = await simulator();
    const port = primary.port;
    const secondary = await simulator();
    const gw = await gateway([primary.url, secondary.url]);
    await gw.delivered(primary, await gw.append(5));
    await primary.stop();
    const keys = await gw.append(10);
    await gw.delivered(secondary, keys);
    expect(gw.switches).toMatchObject([{ from: primary.url, to: secondary.url, reason: 'failover' }]);
    // Its probes fail too: it is down, not gray.
    while (gw.uplink.status().sites[0]?.state !== 'down') await once(gw.uplink.sites, 'probed');
    expect(gw.log.some((line) => line.includes('COORDINATOR_TIMEOUT_EXCEEDED'))).toBe(false);
    expect(gw.uplink.status().lastGrayFailure).toBeNull();

    const failback = nextSwitch(gw.uplink, 'failback');
    const backAt = Date.now();
    const back = await simulator(port);
    await failback;
    expect(Date.now() - backAt).toBeGreaterThanOrEqual(FAILOVER.failbackHoldMs as number);
    await gw.delivered(back, await gw.append(5));
    expect(gw.uplink.status()).toMatchObject({ activeSite: primary.url, failovers: 1, failbacks: 1 });
  });

  it('fails over on probes alone when the primary stops while nothing is sent', async () => {
    const primary = await simulator();
    const secondary = await simulator();
    const gw = await gateway([primary.url, secondary.url]);
    await gw.delivered(primary, await gw.append(1));
    const failover = nextSwitch(gw.uplink, 'failover');
    await primary.stop();
    expect(await failover).toMatchObject({ from: primary.url, to: secondary.url });
    expect(gw.uplink.status().sites[0]?.state).toBe('down');
  });

  it('keeps the records while both sites are down and delivers them when one is back', async () => {
    const primary = await simulator();
    const secondary = await simulator();
    const secondaryPort = secondary.port;
    const gw = await gateway([primary.url, secondary.url], { requestTimeoutMs: 600 });
    await gw.delivered(primary, await gw.append(2));
    await primary.stop();
    await secondary.stop();
    const keys = await gw.append(20);
    for (let failures = 0; failures < 2; failures++) await once(gw.drain, 'failed');
    expect(gw.outbox.depth).toBe(20);
    const back = await simulator(secondaryPort);
    await gw.delivered(back, keys);
    while (gw.outbox.depth > 0) await once(gw.drain, 'drained');
    expect(back.stats.duplicates).toBe(0);
  });
});
