/**
 * Remote disconnect end to end with real components: the gateway as a child
 * process (`ami-gateway start`, its default flow with the relay service),
 * simulated DLMS meters with realistic relays registered with its resource
 * directory, the HES simulator (key management and the outbox's far end),
 * and the `ami-gateway operators` / `relay` / `alarms` CLI.
 *
 * The gateway is killed (SIGKILL) in the middle of a rolling disconnect and
 * started again: the run resumes by itself, and the simulator's counts show
 * that no relay operated twice and none was left out.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { base32Decode, totp } from '../../src/relay/totp.js';
import { HesSimulator } from '../../src/sim/hes.js';
import { simMeterNames } from '../../src/sim/meter-keys.js';
import { MeterFleet } from '../../src/sim/meters.js';
import { CLI, REPO_ROOT, startApplianceProcess, type ApplianceProcess } from '../helpers/appliance.js';
import { pollUntil } from '../helpers/records.js';

const SEED = 'relay-e2e';
const COUNT = 30;
const NAMES = simMeterNames(COUNT);
const WELDED = NAMES[7]!;
const RUN = 'e2e-rolling-1';

let hes: HesSimulator;
let fleet: MeterFleet | undefined;
let gateway: ApplianceProcess | undefined;
let tmp: string;
let anchors: string;

function gatewayEnv(): Record<string, string> {
  return {
    AMI_SIM_METERS: '0',
    AMI_HES_PRIMARY: hes.url,
    AMI_KEYS_TRUST_ANCHORS: anchors,
    AMI_COMMANDS_TRUST_ANCHORS: anchors,
    AMI_GATEWAY_ID: 'gw-relay-e2e',
    AMI_MESH_BIND: '::1',
    // The simulated meters' radio profiles must not decide this test (link gating has its own).
    AMI_RELAY_MIN_RSSI: '-150',
    AMI_RELAY_MIN_SNR: '-50',
    // One meter at a time: the run is still going when the gateway is killed.
    AMI_RELAY_CONCURRENCY: '1',
  };
}

function cli(args: string[], dataDir: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, AMI_DATA_DIR: dataDir };
  delete env.AMI_CREDENTIAL_SECRET;
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env, encoding: 'utf8', timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? Number((err as NodeJS.ErrnoException & { code?: unknown }).code) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Adds a local operator with the CLI and returns a function giving its current TOTP code. */
async function addOperator(name: string, role: string, dataDir: string): Promise<() => string> {
  const added = await cli(['operators', 'add', '--name', name, '--role', role, '--json'], dataDir);
  expect(added.code, added.stderr).toBe(0);
  const secret = (JSON.parse(added.stdout) as { secretBase32: string }).secretBase32;
  return () => totp(base32Decode(secret), Date.now());
}

function actuations(): Map<string, number> {
  return new Map(fleet!.relayStats().map((r) => [r.name, r.stats.actuations]));
}

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'ami-relay-e2e-'));
  hes = new HesSimulator({ port: 0, bind: '::1', keyManagement: { meters: NAMES, seed: SEED }, commands: {} });
  await hes.start();
  anchors = path.join(tmp, 'root-ca.pem');
  writeFileSync(anchors, hes.keyManagement!.trustAnchorPem);
});

afterAll(async () => {
  await gateway?.stop().catch(() => undefined);
  gateway?.cleanup();
  await fleet?.stop();
  await hes?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe('remote disconnect end to end', () => {
  it('a rolling disconnect survives a SIGKILL of the gateway: every relay opened exactly once, every outcome at the HES', async () => {
    gateway = await startApplianceProcess(gatewayEnv());
    await gateway.waitForHealth(() => true);
    const code = await addOperator('field-tech', 'field-technician', gateway.dataDir);

    fleet = new MeterFleet({
      count: COUNT,
      gateway: `coap://[::1]:${gateway.meshPort}`,
      bind: '::1',
      intervalMs: 3_600_000,
      protocol: 'dlms',
      keySeed: SEED,
      readings: false,
      register: true,
      serve: true,
      startSpreadMs: 0,
      faults: [{ meter: WELDED, fault: 'weld' }],
      relay: { rechargeMs: 60_000 },
    });
    await fleet.start();
    const base = gateway.baseUrl;
    // Every meter registered and its keys synced: the gateway's admin API tells.
    await pollUntil(
      'meters registered and keyed',
      async () => {
        const meters = (await (await fetch(`${base}/ami/mesh/meters`)).json()) as { endpoints: Array<{ meters?: unknown[] }> };
        const keys = (await (await fetch(`${base}/ami/keys`)).json()) as { keyrings: Array<{ meters?: number }> };
        return { registered: meters.endpoints[0]?.meters?.length ?? 0, keyed: keys.keyrings[0]?.meters ?? 0 };
      },
      (v) => v.registered >= COUNT && v.keyed >= COUNT,
      60_000,
    );

    // Refused without a valid code, and nothing moves.
    const refused = await cli(['relay', 'disconnect', '--meter', NAMES[0]!, '--operator', 'field-tech', '--totp', '000000', '--url', base], gateway.dataDir);
    expect(refused.code).toBe(1);
    expect(refused.stdout + refused.stderr).toMatch(/operator refused: .*wrong or expired TOTP code/);
    expect([...actuations().values()].every((n) => n === 0)).toBe(true);

    const running = spawn(
      process.execPath,
      [CLI, 'relay', 'disconnect', '--meters', NAMES.join(','), '--operator', 'field-tech', '--totp', code(), '--id', RUN, '--url', base, '--json'],
      { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const cliExit = new Promise<number | null>((resolve) => running.once('exit', (c) => resolve(c)));
    // Kill the gateway once a few relays have operated: the run is in the middle.
    await pollUntil('a few relays operated', () => [...actuations().values()].reduce((a, b) => a + b, 0), (n) => n >= 3, 60_000, 5);
    await gateway.kill();
    const atKill = [...actuations().values()].reduce((a, b) => a + b, 0);
    expect(atKill).toBeLessThan(COUNT);
    // The CLI lost its gateway: "unreachable".
    expect(await cliExit).toBe(3);

    gateway = await startApplianceProcess(gatewayEnv(), { dataDir: gateway.dataDir, httpPort: gateway.httpPort, meshPort: gateway.meshPort });
    await gateway.waitForHealth(() => true);
    // The journal's unfinished run resumes by itself.
    const status = await pollUntil(
      'the run finished after the restart',
      async () => {
        const out = await cli(['relay', 'status', '--run', RUN, '--json', '--url', base], gateway!.dataDir);
        return JSON.parse(out.stdout) as { run?: { finished: boolean; total: number; byCode: Record<string, number> } };
      },
      (s) => s.run?.finished === true,
      120_000,
      500,
    );
    expect(status.run).toMatchObject({ total: COUNT, byCode: { RELAY_OP_SUCCESS: COUNT - 1, RELAY_WELD_DETECTED: 1 } });

    // The simulator's count: every relay operated exactly once, across the crash.
    const counts = actuations();
    expect(NAMES.filter((name) => counts.get(name) !== 1)).toEqual([]);
    expect(fleet.relayStats().every((r) => r.controlState === 0)).toBe(true);

    // Every outcome reached the HES through the outbox, and the weld's alarm.
    await pollUntil('outcomes at the HES', () => NAMES.filter((name) => !hes.has(`relay-result:${RUN}:${name}`)), (missing) => missing.length === 0, 60_000);
    await pollUntil('the weld alarm at the HES', () => hes.storedKeys(`relay-alarm:${WELDED}:RELAY_WELD_DETECTED:`).length, (n) => n === 1, 60_000);

    // The same run again (another technician: a code works once) actuates nothing.
    const secondCode = await addOperator('second-tech', 'field-technician', gateway.dataDir);
    const again = await cli(['relay', 'disconnect', '--meters', NAMES.join(','), '--operator', 'second-tech', '--totp', secondCode(), '--id', RUN, '--url', base, '--json'], gateway.dataDir);
    expect(again.code, again.stderr).toBe(1);
    expect(JSON.parse(again.stdout)).toMatchObject({ id: RUN, finished: true });
    expect(NAMES.filter((name) => actuations().get(name) !== 1)).toEqual([]);

    // The weld alarm: listed, then cleared by an administrator.
    const listed = await cli(['alarms', 'list', '--json', '--url', base], gateway.dataDir);
    expect((JSON.parse(listed.stdout) as { alarms: Array<{ meter: string; code: string }> }).alarms).toEqual([expect.objectContaining({ meter: WELDED, code: 'RELAY_WELD_DETECTED' })]);
    const adminCode = await addOperator('admin', 'utility-administrator', gateway.dataDir);
    const reset = await cli(['alarms', 'reset', '--meter', WELDED, '--code', 'RELAY_WELD_DETECTED', '--operator', 'admin', '--totp', adminCode(), '--url', base], gateway.dataDir);
    expect(reset.code, reset.stdout + reset.stderr).toBe(0);
    const after = await cli(['alarms', 'list', '--json', '--url', base], gateway.dataDir);
    expect(JSON.parse(after.stdout)).toEqual({ alarms: [] });

    // The audit trail is in the data directory's logs folder.
    const actuator = readFileSync(path.join(gateway.dataDir, 'logs', 'actuator.log'), 'utf8');
    expect(actuator).toMatch(new RegExp(`cmd=${RUN}:${WELDED} operator=field-tech meter=${WELDED} step=outcome token=RELAY_WELD_DETECTED`));
    const daemon = readFileSync(path.join(gateway.dataDir, 'logs', 'relay_daemon.log'), 'utf8');
    expect(daemon).toMatch(/token=RECEIVED/);
  }, 300_000);
});
