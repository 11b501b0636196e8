import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI, REPO_ROOT, startApplianceProcess, untilOutput, type ApplianceProcess } from '../helpers/appliance.js';
import { readJsonLines } from '../helpers/records.js';
import { freeUdpPort } from '../helpers/ports.js';

const running: ApplianceProcess[] = [];
const children: ChildProcess[] = [];
const tempDirs: string[] = [];

afterEach(async () => {
  for (const appliance of running.splice(0)) {
    await appliance.stop();
    appliance.cleanup();
  }
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  }
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-it-'));
  tempDirs.push(dir);
  return dir;
}

/** Starts a CLI subcommand as a child and resolves once it printed `ready`. */
async function startCli(args: string[], ready: RegExp): Promise<{ child: ChildProcess; output: () => string }> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  return { child, output: await untilOutput(child, ready, args.join(' ')) };
}

describe('ami-gateway start (headless appliance)', () => {
  it('runs on embedded defaults: meters reach the HES simulator, health and status report it, SIGTERM exits 0', async () => {
    const appliance = await startApplianceProcess();
    running.push(appliance);

    const health = await appliance.waitForHealth((h) => h.hesDelivered > 0);
    expect(health.status).toBe('ok');
    expect(health.meshReceived).toBeGreaterThan(0);
    expect(health.hesEndpoint).toMatch(/^coap:\/\/\[::1\]:\d+$/);
    expect(health.outboxDepth).toBeGreaterThanOrEqual(0);

    const status = spawnSync(process.execPath, [CLI, 'status', '--json'], {
      cwd: REPO_ROOT,
      env: { ...process.env, AMI_HTTP_PORT: String(appliance.httpPort) },
      encoding: 'utf8',
    });
    expect(status.status).toBe(0);
    const printed = JSON.parse(status.stdout) as Record<string, unknown>;
    expect(printed).toMatchObject({ status: 'ok', hesEndpoint: health.hesEndpoint });
    expect(printed.hesDelivered).toBeGreaterThanOrEqual(health.hesDelivered);

    // The credential secret was generated once, private to the service user.
    const secretFile = path.join(appliance.dataDir, '.credential-secret');
    expect(statSync(secretFile).mode & 0o777).toBe(0o600);
    expect(existsSync(path.join(appliance.dataDir, 'flows.json'))).toBe(true);

    const exit = await appliance.stop();
    expect(exit.code).toBe(0);
    expect(exit.ms).toBeLessThan(15_000);
    const log = readFileSync(path.join(appliance.dataDir, 'logs', 'ami-gateway.log'), 'utf8');
    expect(log).toContain('using the embedded HES simulator');
    expect(log).toContain('hes-sim: first record received');
    expect(log).toContain('editor is bound to loopback only');
    expect(log).toMatch(/\[appliance\] stopped\n/);
  });

  it('delivers every reading a standalone meter fleet recorded as acknowledged to a standalone HES simulator', async () => {
    const dir = tempDir();
    const hesPort = await freeUdpPort();
    const hesRecord = path.join(dir, 'hes.jsonl');
    const meterRecord = path.join(dir, 'meters.jsonl');
    const anchors = path.join(dir, 'hes-root-ca.pem');
    // The standalone HES simulator also plays the key management for the fleet's 10 meters.
    await startCli(['sim', 'hes', '--port', String(hesPort), '--record', hesRecord, '--meters', '10', '--trust-anchor-out', anchors], /listening on/);
    const appliance = await startApplianceProcess({
      AMI_HES_PRIMARY: `coap://[::1]:${hesPort}`,
      AMI_KEYS_TRUST_ANCHORS: anchors,
      AMI_SIM_METERS: '0',
    });
    running.push(appliance);
    await appliance.waitForHealth((h) => h.hesEndpoint === `coap://[::1]:${hesPort}`);

    const meters = await startCli(
      ['sim', 'meters', '--count', '10', '--gateway', `coap://[::1]:${appliance.meshPort}`, '--interval', '1', '--record', meterRecord],
      /meters posting/,
    );
    await appliance.waitForHealth((h) => h.hesDelivered >= 30);
    meters.child.kill('SIGTERM');
    const [code] = (await once(meters.child, 'exit')) as [number | null];
    expect(code).toBe(0);

    const acknowledged = readJsonLines(meterRecord);
    const stored = new Set(readJsonLines(hesRecord).map((line) => line.id));
    expect(acknowledged.length).toBeGreaterThanOrEqual(20);
    // Ciphered DLMS frames: the HES stores each under the meter's system title and invocation counter.
    expect(acknowledged.every((line) => String(line.key).startsWith('dlms/'))).toBe(true);
    const missing = acknowledged.filter((line) => !stored.has(String(line.key)));
    expect(missing).toEqual([]);
  });

  it('keeps readings in the outbox on disk while the HES is unreachable (meters acknowledged), and reports itself degraded', async () => {
    const deadHesPort = await freeUdpPort();
    const appliance = await startApplianceProcess({
      AMI_HES_PRIMARY: `coap://[::1]:${deadHesPort}`,
      AMI_SIM_METERS: '3',
      // Plain readings: this test is about the HES being down, not about keys (which it would also hold).
      AMI_SIM_PROTOCOL: 'plain',
    });
    running.push(appliance);
    const health = await appliance.waitForHealth(
      (h) => h.outboxDepth >= 3 && h.status === 'degraded' && h.problems.some((p) => /no HES accepted the batch/.test(p)),
    );
    expect(health.hesDelivered).toBe(0);
    // The meters were told their readings are safe: they are, in the outbox.
    expect(health.meshDeferred).toBe(0);
    expect(health.problems.join(' ')).toMatch(/no HES accepted the batch/);
    const status = spawnSync(process.execPath, [CLI, 'status'], {
      cwd: REPO_ROOT,
      env: { ...process.env, AMI_HTTP_PORT: String(appliance.httpPort) },
      encoding: 'utf8',
    });
    expect(status.status).toBe(1);
    expect(status.stdout).toContain('degraded');
  });

  it('refuses a bad configuration value with exit code 2 and names the variable', () => {
    const result = spawnSync(process.execPath, [CLI, 'start'], {
      cwd: REPO_ROOT,
      env: { ...process.env, AMI_DATA_DIR: tempDir(), AMI_MESH_PORT: 'fifty' },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('AMI_MESH_PORT');
  });

  it('reports an unreachable gateway with exit code 3', () => {
    const result = spawnSync(process.execPath, [CLI, 'status', '--url', 'http://127.0.0.1:9/ami/health'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(result.status).toBe(3);
    expect(result.stderr).toContain('cannot read');
  });
});

describe('ami-gateway start with admin users', () => {
  it('enforces Node-RED adminAuth from the settings file and binds where AMI_HTTP_BIND says', async () => {
    const dataDir = tempDir();
    const hash = spawnSync(process.execPath, [CLI, 'hash-password'], { cwd: REPO_ROOT, input: 'field-engineer-pass\n', encoding: 'utf8' });
    expect(hash.status).toBe(0);
    const passwordHash = hash.stdout.trim();
    expect(passwordHash).toMatch(/^\$2[aby]\$10\$/);
    writeFileSync(path.join(dataDir, 'ami-settings.json'), JSON.stringify({ adminUsers: [{ username: 'ops', password: passwordHash, permissions: '*' }] }));

    // Tests stay on loopback: the operator's AMI_HTTP_BIND decides where an authenticated editor listens.
    const appliance = await startApplianceProcess({ AMI_DATA_DIR: dataDir, AMI_HTTP_BIND: '127.0.0.1', AMI_SIM_METERS: '0' });
    running.push(appliance);
    await appliance.waitForHealth((h) => h.hesEndpoint !== null);

    const anonymous = await fetch(`${appliance.baseUrl}/flows`);
    expect(anonymous.status).toBe(401);
    const wrong = await fetch(`${appliance.baseUrl}/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: 'ops', password: 'nope' }),
    });
    expect(wrong.status).toBe(403);
    const login = await fetch(`${appliance.baseUrl}/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: 'ops', password: 'field-engineer-pass' }),
    });
    expect(login.status).toBe(200);
    const { access_token: token } = (await login.json()) as { access_token: string };
    const flows = await fetch(`${appliance.baseUrl}/flows`, { headers: { authorization: `Bearer ${token}` } });
    expect(flows.status).toBe(200);
    expect(appliance.output()).toContain('adminAuth enforced for 1 user(s)');
  });
});
