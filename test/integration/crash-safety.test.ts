import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, REPO_ROOT, startApplianceProcess, untilOutput, type ApplianceProcess } from '../helpers/appliance.js';
import { freeUdpPort } from '../helpers/ports.js';
import { outOfOrder, pollUntil, readJsonLines, type RecordLine } from '../helpers/records.js';

/**
 * The outbox's promise, tested the hard way: the gateway is killed with
 * SIGKILL at random moments while meters keep sending, and restarted on the
 * same data directory each time. Every reading a meter saw acknowledged must
 * reach the HES, and the HES must store each one once.
 */

const KILLS = 20;
const METERS = 12;

const children: ChildProcess[] = [];
let appliance: ApplianceProcess | undefined;
const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-crash-'));

afterAll(async () => {
  if (appliance) {
    await appliance.kill();
    appliance.cleanup();
  }
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

async function startCli(args: string[], ready: RegExp): Promise<ChildProcess> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  await untilOutput(child, ready, args.join(' '));
  return child;
}

/** Resolves once `file` has at least `count` JSON lines. */
function waitForLines(file: string, count: number, timeoutMs: number): Promise<RecordLine[]> {
  return pollUntil(`${file} has ${count} lines`, () => readJsonLines(file), (lines) => lines.length >= count, timeoutMs, 200);
}

describe('crash safety of the outbox (SIGKILL while meters send)', () => {
  it(`delivers every acknowledged reading exactly once across ${KILLS} kills at random moments`, async () => {
    const hesRecord = path.join(dir, 'hes.jsonl');
    const meterRecord = path.join(dir, 'meters.jsonl');
    const anchors = path.join(dir, 'hes-root-ca.pem');
    const hesPort = await freeUdpPort();
    await startCli(
      ['sim', 'hes', '--port', String(hesPort), '--record', hesRecord, '--meters', String(METERS), '--trust-anchor-out', anchors],
      /listening on/,
    );
    const env = { AMI_HES_PRIMARY: `coap://[::1]:${hesPort}`, AMI_KEYS_TRUST_ANCHORS: anchors, AMI_SIM_METERS: '0' };
    appliance = await startApplianceProcess(env);
    const reuse = { dataDir: appliance.dataDir, httpPort: appliance.httpPort, meshPort: appliance.meshPort };
    await appliance.waitForHealth((h) => h.hesEndpoint !== null && h.keys !== null && h.keys.meters >= METERS);

    const meters = await startCli(
      ['sim', 'meters', '--count', String(METERS), '--gateway', `coap://[::1]:${appliance.meshPort}`, '--interval', '1', '--record', meterRecord],
      /meters posting/,
    );

    const killedAt: number[] = [];
    for (let kill = 0; kill < KILLS; kill++) {
      // Wait for fresh acknowledgements, so each kill lands while readings flow, then a random moment more.
      const seen = readJsonLines(meterRecord).length;
      await waitForLines(meterRecord, seen + 1 + Math.floor(Math.random() * METERS), 60_000);
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 700));
      killedAt.push(readJsonLines(meterRecord).length);
      await appliance.kill();
      appliance = await startApplianceProcess(env, reuse);
      await appliance.waitForHealth((h) => h.hesEndpoint !== null, 60_000);
    }

    meters.kill('SIGTERM');
    const [code] = (await once(meters, 'exit')) as [number | null];
    expect(code).toBe(0);
    const acknowledged = readJsonLines(meterRecord);
    expect(killedAt).toHaveLength(KILLS);
    expect(acknowledged.length).toBeGreaterThan(KILLS);
    // The restarted gateway drains its outbox: wait until the HES holds every acknowledged key.
    const wanted = new Set(acknowledged.map((line) => String(line.key)));
    await appliance.waitForHealth((h) => h.outboxDepth === 0, 120_000);
    // Read once more after that: the simulator records a key before it answers, so this settles at once unless one is missing.
    const stored = await pollUntil(
      'the HES holds every acknowledged reading',
      () => readJsonLines(hesRecord),
      (lines) => {
        const ids = new Set(lines.map((line) => line.id));
        return [...wanted].every((key) => ids.has(key));
      },
      60_000,
    ).catch(() => readJsonLines(hesRecord));

    const storedIds = stored.map((line) => String(line.id));
    const missing = [...wanted].filter((key) => !storedIds.includes(key));
    expect(missing).toEqual([]);
    // The HES simulator records a key the first time it stores it: a key twice would be a double delivery.
    expect(storedIds.length).toBe(new Set(storedIds).size);
    // Nothing the HES holds was invented: each is a reading some meter sent.
    expect(stored.every((line) => line.id?.startsWith('dlms/'))).toBe(true);
    // Per meter, the HES stored readings in the order the meter took them.
    expect(outOfOrder(stored)).toEqual([]);
  }, 600_000);
});
