import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import type { NextFunction, Request, Response } from 'express';
import type { NodeAPI } from 'node-red';
import { afterEach, describe, expect, it } from 'vitest';
import { HesSimulator } from '../../src/sim/hes.js';
import { HesUplink, DEFAULT_UPLINK_OPTIONS } from '../../src/hes/uplink.js';
import type { HesRecord } from '../../src/hes/contract.js';
import type { SiteSwitch } from '../../src/hes/sites.js';
import { hesCommand, HesUsageError } from '../../src/appliance/cli-hes.js';
import { HealthRegistry } from '../../src/appliance/health.js';
import { addHesStatusSource, registerHesStatusRoute } from '../../nodes/shared/hes-route.js';
import { coapCall } from '../../src/coap/request.js';
import { cborEncode } from '../../src/coap/cbor.js';
import { SIM_GRAY_PATH } from '../../src/sim/hes.js';
import { ConfigError, loadConfig } from '../../src/appliance/config.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function simulator(): Promise<HesSimulator> {
  const hes = new HesSimulator({ port: 0, bind: '::1' });
  await hes.start();
  cleanups.push(() => hes.stop());
  return hes;
}

/**
 * The admin route on a real express app on loopback, with Node-RED's
 * permission check replaced by `allow` (Node-RED itself is not started here).
 */
async function adminApp(allow: boolean): Promise<string> {
  const app = express();
  const permissions: string[] = [];
  const red = {
    httpAdmin: app,
    auth: {
      needsPermission: (permission: string) => {
        permissions.push(permission);
        return (_req: Request, res: Response, next: NextFunction) => (allow ? next() : res.status(401).end());
      },
    },
  } as unknown as NodeAPI; // Only the two members the route uses.
  registerHesStatusRoute(red);
  expect(permissions).toEqual(['ami-hes-endpoint.read']);
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function record(n: number): HesRecord {
  return { key: `m/${n}`, kind: 'reading', meter: 'm', ts: n, body: { n } };
}

describe('ami-gateway hes status', () => {
  it('shows the failover a gray primary caused, switched from loopback through the simulator control resource', async () => {
    const primary = await simulator();
    const secondary = await simulator();
    const link = new HesUplink({
      ...DEFAULT_UPLINK_OPTIONS,
      gateway: 'gw-status',
      endpoints: [primary.url, secondary.url],
      requestTimeoutMs: 3000,
      failover: { latencyBudgetMs: 200, probeIntervalMs: 50, probeTimeoutMs: 300, failbackHoldMs: 60_000 },
    });
    cleanups.push(() => link.close());
    const health = new HealthRegistry('test');
    cleanups.push(health.addHesSource(() => link.status()));
    cleanups.push(addHesStatusSource('hes-1', () => ({ id: 'hes-1', name: 'Head-End System', problem: null, uplink: link.status() })));
    const base = await adminApp(true);

    await link.submit(record(1));
    expect(primary.has('m/1')).toBe(true);
    // What `ami-gateway sim hes` exposes: gray mode switched over CoAP from loopback.
    const control = await coapCall(`${primary.url}${SIM_GRAY_PATH}`, { method: 'PUT', payload: cborEncode({ dropRecords: true }), timeoutMs: 2000 });
    expect(control.code).toBe('2.04');
    const switched = new Promise<SiteSwitch>((resolve) => link.once('switch', resolve));
    const gray = once(link, 'gray');
    await link.submit(record(2));
    expect(secondary.has('m/2')).toBe(true);
    expect(await switched).toMatchObject({ reason: 'failover', to: secondary.url });
    await gray;

    const human = await hesCommand(['status', '--url', base], 1880);
    expect(human.exitCode).toBe(0);
    expect(human.output).toContain('HES endpoint Head-End System');
    expect(human.output).toContain(`active      ${secondary.url} (secondary, healthy)`);
    expect(human.output).toMatch(/failovers   1, failbacks 0, gray failures 1/);
    expect(human.output).toContain(`last gray   `);
    expect(human.output).toMatch(new RegExp(`${primary.url.replace(/[[\]]/g, '\\$&')}: \\d+ ms, budget 200 ms`));

    const json = await hesCommand(['status', '--json', '--url', base], 1880);
    expect(json.exitCode).toBe(0);
    const report = JSON.parse(json.output) as { endpoints: Array<{ uplink: ReturnType<HesUplink['status']> }> };
    const sites = report.endpoints[0]?.uplink.sites ?? [];
    expect(sites.map((site) => [site.role, site.state, site.active])).toEqual([
      ['primary', 'gray', false],
      ['secondary', 'healthy', true],
    ]);
    expect(sites[1]?.latency.samples).toBe(1);
    expect(sites[0]?.lastProbe?.ok).toBe(true);

    const snapshot = health.snapshot();
    expect(snapshot).toMatchObject({ hesActiveState: 'healthy', hesFailovers: 1, hesFailbacks: 0 });
    expect(snapshot.hesLastGrayFailure).toMatchObject({ site: primary.url, budgetMs: 200 });

    // Both sites gone: the active site is down, the command says degraded.
    await primary.stop();
    await secondary.stop();
    while (link.status().activeState !== 'down') await new Promise((resolve) => link.sites.once('probed', resolve));
    const degraded = await hesCommand(['status', '--url', base], 1880);
    expect(degraded.exitCode).toBe(1);
    expect(degraded.output).toContain('(secondary, down)');
  });

  it('checks what the simulator\'s gray-mode control resource is sent', async () => {
    const hes = await simulator();
    const bad = await coapCall(`${hes.url}${SIM_GRAY_PATH}`, { method: 'PUT', payload: cborEncode({ delayMs: -1 }), timeoutMs: 2000 });
    expect(bad.code).toBe('4.00');
    const slow = await coapCall(`${hes.url}${SIM_GRAY_PATH}`, { method: 'PUT', payload: cborEncode({ delayMs: 50 }), timeoutMs: 2000 });
    expect(slow.code).toBe('2.04');
  });

  it('exits 3 when the gateway is unreachable or refuses the request, 1 when no HES endpoint is deployed', async () => {
    expect((await hesCommand(['status', '--url', 'http://127.0.0.1:9'], 1880)).exitCode).toBe(3);
    const refusing = await adminApp(false);
    const refused = await hesCommand(['status', '--url', refusing], 1880);
    expect(refused.exitCode).toBe(3);
    expect(refused.output).toContain('HTTP 401');
    await expect(hesCommand(['stats'], 1880)).rejects.toBeInstanceOf(HesUsageError);
    const empty = await hesCommand(['status', '--url', await adminApp(true)], 1880);
    expect(empty).toEqual({ exitCode: 1, output: 'no HES endpoint is deployed' });
  });
});

describe('failover settings from the environment', () => {
  it('reads AMI_HES_LATENCY_BUDGET_MS, AMI_HES_PROBE_INTERVAL_MS and AMI_HES_FAILBACK_HOLD_MS, and names the one that is wrong', () => {
    const config = loadConfig({ AMI_HES_LATENCY_BUDGET_MS: '1500', AMI_HES_PROBE_INTERVAL_MS: '0', AMI_HES_FAILBACK_HOLD_MS: '120000' }, '/tmp');
    expect(config).toMatchObject({ hesLatencyBudgetMs: 1500, hesProbeIntervalMs: 0, hesFailbackHoldMs: 120_000 });
    expect(loadConfig({}, '/tmp')).toMatchObject({ hesLatencyBudgetMs: undefined, hesProbeIntervalMs: undefined, hesFailbackHoldMs: undefined });
    expect(() => loadConfig({ AMI_HES_LATENCY_BUDGET_MS: '10' }, '/tmp')).toThrow(ConfigError);
    expect(() => loadConfig({ AMI_HES_FAILBACK_HOLD_MS: 'a minute' }, '/tmp')).toThrow(/AMI_HES_FAILBACK_HOLD_MS/);
  });
});
