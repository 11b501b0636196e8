import { execFile } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { topology } from '../../src/appliance/cli-mesh.js';
import { CLI, REPO_ROOT, startApplianceProcess, type ApplianceProcess } from '../helpers/appliance.js';

const running: ApplianceProcess[] = [];

afterEach(async () => {
  for (const appliance of running.splice(0)) {
    await appliance.stop();
    appliance.cleanup();
  }
});

function run(file: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: REPO_ROOT, env, encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err && typeof (err as NodeJS.ErrnoException & { code?: unknown }).code === 'number' ? ((err as unknown as { code: number }).code) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

describe('ami-gateway mesh meters|topology', () => {
  it('lists meters registered with the running gateway and flags the ones at risk', async () => {
    const appliance = await startApplianceProcess({ AMI_SIM_METERS: '0' });
    running.push(appliance);
    await appliance.waitForHealth((h) => h.hesEndpoint !== null);
    const base = `coap://[::1]:${appliance.meshPort}`;
    // libcoap's client as two meters: one healthy, one far away and faint. Like a meter, it
    // registers again while the directory is not up yet (4.04 until the registry is loaded).
    const register = async (query: string): Promise<string> => {
      let out = '';
      for (let attempt = 0; attempt < 20 && !/c:2\.01/.test(out); attempt++) {
        out = (await run('/usr/bin/coap-client-notls', ['-m', 'post', '-t', '40', '-e', '</1/0/0>', '-v', '6', `${base}/rd?${query}`])).out;
      }
      return out;
    };
    expect(await register('ep=mtr-near&lt=600&rssi=-60&hops=2&feeder=F1')).toMatch(/c:2\.01/);
    expect(await register('ep=mtr-far&lt=600&rssi=-91&hops=11')).toMatch(/c:2\.01/);

    const env = { ...process.env, AMI_HTTP_PORT: String(appliance.httpPort) };
    const listed = await run(process.execPath, [CLI, 'mesh', 'meters', '--json'], env);
    expect(listed.code).toBe(0);
    const meters = JSON.parse(listed.out) as Array<{ endpoint: string; metrics: { rssi?: number; hops?: number }; tags: Record<string, string> }>;
    expect(meters.map((m) => m.endpoint).sort()).toEqual(['mtr-far', 'mtr-near']);
    expect(meters.find((m) => m.endpoint === 'mtr-near')).toMatchObject({ metrics: { rssi: -60, hops: 2 }, tags: { feeder: 'F1' } });

    const human = await run(process.execPath, [CLI, 'mesh', 'meters'], env);
    expect(human.out).toContain('2 registered meters');
    const map = await run(process.execPath, [CLI, 'mesh', 'topology'], env);
    expect(map.code).toBe(0);
    expect(map.out).toMatch(/AT RISK mtr-far: 11 hops \(more than 8\), RSSI -91 dBm \(below -85\)/);
    expect(map.out).not.toContain('AT RISK mtr-near');
  });

  it('reports an unreachable gateway with exit code 3', async () => {
    const result = await run(process.execPath, [CLI, 'mesh', 'meters', '--url', 'http://127.0.0.1:9'], process.env);
    expect(result.code).toBe(3);
  });

  it('groups meters by hop count and flags more than 8 hops or less than -85 dBm', () => {
    const meter = (endpoint: string, metrics: { rssi?: number; hops?: number }) => ({
      id: endpoint, endpoint, address: { address: '::1', port: 1 }, lastSeen: 0, expiresAt: 0, metrics, firmware: {}, tags: {},
    });
    const report = topology([meter('a', { hops: 8, rssi: -85 }), meter('b', { hops: 9 }), meter('c', {}), meter('d', { rssi: -86, hops: 1 })]);
    expect(report.byHops).toEqual({ '8': 1, '9': 1, unknown: 1, '1': 1 });
    expect(report.atRisk.map((m) => m.endpoint)).toEqual(['b', 'd']);
  });
});
