/**
 * Firmware distribution through the whole appliance (issue 9): `ami-gateway
 * start` with AMI_FIRMWARE_DIR and AMI_FIRMWARE_TRUST_ANCHORS (the default
 * flow's firmware node), simulated meters registering with it over CoAP, and
 * `ami-gateway firmware rollout --wait` as an operator runs it. The gateway
 * is killed (SIGKILL: nothing flushed) in the middle of the rollout and
 * started again on the same data directory and ports; the CLI keeps waiting
 * through the outage, and the rollout finishes from its journal.
 */
import { spawn } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkPair, openFirmwareRepository } from '../../src/firmware/index.js';
import type { RolloutSummary } from '../../src/firmware/rollout-types.js';
import { MeterFleet } from '../../src/sim/meters.js';
import { CLI, REPO_ROOT, startApplianceProcess, type ApplianceProcess } from '../helpers/appliance.js';

const METERS = 20;
const WANT = { comm: '2.2.0', metro: '5.1.0' };
const ROOT_CA = path.join(REPO_ROOT, 'firmware-images', 'test-ca', 'root-ca.pem');

const scratch = mkdtempSync(path.join(os.tmpdir(), 'ami-fw-appliance-'));
let appliance: ApplianceProcess | undefined;
let fleet: MeterFleet | undefined;

afterAll(async () => {
  await fleet?.stop().catch(() => undefined);
  await appliance?.stop().catch(() => undefined);
  appliance?.cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

/** Runs the CLI to its end; resolves with its exit code and output. */
function cli(args: string[], env: NodeJS.ProcessEnv): { done: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return { done: new Promise((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr }))) };
}

describe('firmware rollout through ami-gateway start and the CLI', () => {
  it(`updates ${METERS} meters to comm 2.2.0 + metro 5.1.0 although the gateway is killed in the middle`, async () => {
    cpSync(path.join(REPO_ROOT, 'firmware-images', 'test-images'), path.join(scratch, 'images'), { recursive: true });
    const env = { AMI_SIM_METERS: '0', AMI_FIRMWARE_DIR: path.join(scratch, 'images'), AMI_FIRMWARE_TRUST_ANCHORS: ROOT_CA };
    appliance = await startApplianceProcess(env);
    await appliance.waitForHealth((h) => h.hesEndpoint !== null);

    fleet = new MeterFleet({
      count: METERS,
      prefix: 'fwa-',
      gateway: `coap://[::1]:${appliance.meshPort}`,
      intervalMs: 3_600_000,
      readings: false,
      register: true,
      serve: true,
      startSpreadMs: 500,
      firmwareInstallMs: 100,
      firmware: () => ({ model: 'AMX-100', comm: '2.1.0', metro: '5.0.0' }),
    });
    const names = Array.from({ length: METERS }, (_, i) => `fwa-${String(i + 1).padStart(6, '0')}`);
    const registered = new Promise<void>((resolve) => {
      const seen = new Set<string>();
      const stopListening = fleet!.onRegistration((event) => {
        if (event.kind !== 'registered') return;
        seen.add(event.meter);
        if (seen.size === METERS) {
          stopListening();
          resolve();
        }
      });
    });
    await fleet.start();
    expect(fleet.meters().map((m) => m.name)).toEqual(names);
    await registered;

    // Killed once a quarter of the meters run both new versions.
    let both = 0;
    const quarterDone = new Promise<void>((resolve) => {
      for (const name of names) {
        fleet!.firmwareOf(name)!.on('reboot', (versions: { comm: string; metro: string }) => {
          if (versions.comm === WANT.comm && versions.metro === WANT.metro && ++both === METERS / 4) resolve();
        });
      }
    });

    const cliEnv = { ...process.env, AMI_HTTP_PORT: String(appliance.httpPort) };
    const rollout = cli(['firmware', 'rollout', '--comm', WANT.comm, '--metro', WANT.metro, '--meters', names.join(','), '--id', 'field-1', '--concurrency', '5', '--wait', '--json'], cliEnv);

    await quarterDone;
    const doneAtKill = both;
    const before = appliance.output();
    const { dataDir, httpPort, meshPort } = appliance;
    await appliance.kill();
    appliance = await startApplianceProcess(env, { dataDir, httpPort, meshPort });

    const result = await rollout.done;
    expect(result.code, `${result.stdout}${result.stderr}\n--- gateway before the kill:\n${before.slice(-3000)}\n--- after:\n${appliance.output().slice(-3000)}`).toBe(0);
    // The kill came with most meters still to go, and the CLI waited through the outage.
    expect(doneAtKill).toBeLessThan(METERS);
    expect(result.stderr).toMatch(/asking again for 60 s/);
    const answer = JSON.parse(result.stdout) as { rollout: RolloutSummary };
    expect(answer.rollout).toMatchObject({ rolloutId: 'field-1', total: METERS, done: METERS, finished: true, byCode: { FW_UPDATE_SUCCESS: METERS } });

    const repository = await openFirmwareRepository({ root: path.join(scratch, 'images'), trustAnchorsPem: [readFileSync(ROOT_CA, 'utf8')] });
    for (const name of names) {
      const meter = fleet.firmwareOf(name)!;
      expect(meter.versions(), name).toEqual(WANT);
      expect(meter.stats.installs, name).toBe(2);
      for (const pair of meter.ranPairs) expect(checkPair(pair, repository).compatible, `${name} ran ${pair.comm}/${pair.metro}`).toBe(true);
    }

    // The status command reads the same journal after the restart.
    const status = await cli(['firmware', 'status', 'field-1'], cliEnv).done;
    expect(status.code).toBe(0);
    expect(status.stdout).toContain('FW_UPDATE_SUCCESS');
  }, 240_000);
});
