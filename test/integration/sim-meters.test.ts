import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { meterRadioProfile } from '../../src/sim/mesh-meter.js';
import { CLI, REPO_ROOT, startApplianceProcess, type ApplianceProcess } from '../helpers/appliance.js';

const running: ApplianceProcess[] = [];
const children: ChildProcess[] = [];

afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  }
  for (const appliance of running.splice(0)) {
    await appliance.stop();
    appliance.cleanup();
  }
});

interface ListedMeter {
  endpoint: string;
  base?: string;
  lifetimeSeconds: number;
  address: { address: string; port: number };
  metrics: { rssi?: number; snr?: number; lqi?: number; hops?: number };
  firmware: { comm?: string; metro?: string };
  resources: { target: string }[];
}

function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env, encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err && typeof (err as { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

/** `ami-gateway mesh meters --json` against the appliance, polled until `predicate` holds (another process: no event to await). */
async function meshMetersUntil(appliance: ApplianceProcess, predicate: (meters: ListedMeter[]) => boolean, timeoutMs = 30_000): Promise<ListedMeter[]> {
  const env = { ...process.env, AMI_HTTP_PORT: String(appliance.httpPort) };
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const listed = await run(['mesh', 'meters', '--json'], env);
    last = listed.out;
    if (listed.code === 0) {
      const meters = JSON.parse(listed.out) as ListedMeter[];
      if (predicate(meters)) return meters;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`mesh meters did not get there within ${timeoutMs} ms; last:\n${last}`);
}

function startCli(args: string[], ready: RegExp): Promise<ChildProcess> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let output = '';
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`${args.join(' ')} exited with ${code}:\n${output}`));
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      if (!ready.test(output)) return;
      // Ready: stop collecting (the pipes keep flowing, so the child never blocks on a full one).
      child.stdout?.off('data', onData).resume();
      child.stderr?.off('data', onData).resume();
      child.off('exit', onExit);
      resolve(child);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
  });
}

describe('simulated meters in the resource directory of a running gateway', () => {
  it("the appliance's own simulated meters register, and mesh meters lists them with their metrics and base", async () => {
    const appliance = await startApplianceProcess({ AMI_SIM_METERS: '4', AMI_SIM_PROTOCOL: 'plain' });
    running.push(appliance);
    const meters = await meshMetersUntil(appliance, (listed) => listed.length === 4);
    expect(meters.map((m) => m.endpoint).sort()).toEqual(['mtr-000001', 'mtr-000002', 'mtr-000003', 'mtr-000004']);
    for (const meter of meters) {
      const profile = meterRadioProfile(meter.endpoint);
      expect(meter.base).toBe(`coap://[::1]:${meter.address.port}`);
      expect(meter.metrics.hops).toBe(profile.hops);
      expect(meter.firmware).toEqual({ comm: profile.fwComm, metro: profile.fwMetro });
      expect(meter.resources.map((link) => link.target)).toContain('/lp');
    }
    // Registered meters also report: readings reach the gateway.
    await appliance.waitForHealth((h) => h.meshReceived > 0);
  });

  it('sim meters registers with --lifetime, and --no-register --no-serve meters stay out of the directory but still report', async () => {
    const appliance = await startApplianceProcess({ AMI_SIM_METERS: '0' });
    running.push(appliance);
    await appliance.waitForHealth((h) => h.hesEndpoint !== null);
    const gateway = `coap://[::1]:${appliance.meshPort}`;
    // Plain readings: the embedded HES simulator holds keys for the appliance's own meters only.
    const common = ['--gateway', gateway, '--interval', '1', '--protocol', 'plain'];
    await startCli(['sim', 'meters', '--count', '3', ...common, '--prefix', 'cli-reg-', '--lifetime', '120'], /meters posting/);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-it-sim-'));
    const record = path.join(dir, 'bare.jsonl');
    try {
      await startCli(['sim', 'meters', '--count', '2', ...common, '--prefix', 'cli-bare-', '--no-register', '--no-serve', '--record', record], /meters posting/);
      const meters = await meshMetersUntil(appliance, (listed) => listed.length === 3);
      expect(meters.map((m) => m.endpoint).sort()).toEqual(['cli-reg-000001', 'cli-reg-000002', 'cli-reg-000003']);
      expect(meters.every((m) => m.lifetimeSeconds === 120)).toBe(true);
      // The unregistered meters report all the same: the gateway acknowledges their readings (polled: another process).
      const deadline = Date.now() + 30_000;
      const acknowledged = (): string[] => (existsSync(record) ? readFileSync(record, 'utf8').split('\n').filter((line) => line.includes('cli-bare-')) : []);
      while (acknowledged().length < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 250));
      expect(acknowledged().length).toBeGreaterThanOrEqual(2);
      expect((await meshMetersUntil(appliance, () => true)).map((m) => m.endpoint)).not.toContain('cli-bare-000001');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a lifetime the directory would refuse, with exit code 2', async () => {
    const result = await run(['sim', 'meters', '--count', '1', '--gateway', 'coap://[::1]:5683', '--lifetime', '30'], process.env);
    expect(result.code).toBe(2);
    expect(result.out).toContain('--lifetime');
  });
});
