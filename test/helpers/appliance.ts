import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freeTcpPort, freeUdpPort } from './ports.js';
import type { HealthSnapshot } from '../../src/appliance/health.js';
import { APPLIANCE_NODE_FLAGS } from '../../src/appliance/node-flags.js';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const CLI = path.join(REPO_ROOT, 'bin', 'ami-gateway.js');

export interface ApplianceProcess {
  child: ChildProcess;
  dataDir: string;
  httpPort: number;
  meshPort: number;
  baseUrl: string;
  /** Everything the process printed so far. */
  output(): string;
  health(): Promise<HealthSnapshot>;
  /** Resolves once `predicate` holds for /ami/health, polling as the process runs. */
  waitForHealth(predicate: (h: HealthSnapshot) => boolean, timeoutMs?: number): Promise<HealthSnapshot>;
  /** Sends SIGKILL (a crash: nothing is flushed) and resolves once the process is gone. */
  kill(): Promise<void>;
  /** Sends SIGTERM and resolves with the exit code and how long the exit took. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>;
  cleanup(): void;
}

/**
 * Starts `ami-gateway start` as a child process on free ports with its own
 * data directory. `env` adds to (or overrides) the appliance's environment.
 */
export async function startApplianceProcess(
  env: Record<string, string> = {},
  /** A previous run's data directory and ports: a restart of the same appliance. */
  reuse: { dataDir?: string; httpPort?: number; meshPort?: number } = {},
): Promise<ApplianceProcess> {
  const dataDir = reuse.dataDir ?? mkdtempSync(path.join(os.tmpdir(), 'ami-gw-'));
  const httpPort = reuse.httpPort ?? (await freeTcpPort());
  const meshPort = reuse.meshPort ?? (await freeUdpPort());
  // With the heap settings npm start and the systemd unit use.
  const child = spawn(process.execPath, [...APPLIANCE_NODE_FLAGS, CLI, 'start'], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      AMI_DATA_DIR: dataDir,
      AMI_HTTP_PORT: String(httpPort),
      AMI_MESH_PORT: String(meshPort),
      AMI_SIM_METERS: '5',
      AMI_SIM_INTERVAL: '1',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const baseUrl = `http://127.0.0.1:${httpPort}`;
  const health = async (): Promise<HealthSnapshot> => {
    const response = await fetch(`${baseUrl}/ami/health`, { signal: AbortSignal.timeout(2000) });
    if (!response.ok) throw new Error(`health answered ${response.status}`);
    return (await response.json()) as HealthSnapshot;
  };
  const handle: ApplianceProcess = {
    child,
    dataDir,
    httpPort,
    meshPort,
    baseUrl,
    output: () => output,
    health,
    async waitForHealth(predicate, timeoutMs = 45_000) {
      const deadline = Date.now() + timeoutMs;
      let last: unknown;
      while (Date.now() < deadline) {
        if (child.exitCode !== null) throw new Error(`appliance exited with ${child.exitCode}:\n${output}`);
        try {
          const snapshot = await health();
          if (predicate(snapshot)) return snapshot;
          last = snapshot;
        } catch (err) {
          last = err;
        }
        // Polling an HTTP endpoint of another process: there is no event to await.
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      throw new Error(`health condition not met within ${timeoutMs} ms; last: ${JSON.stringify(last)}\n${output}`);
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    async stop() {
      const begun = Date.now();
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const result = await exited;
      return { ...result, ms: Date.now() - begun };
    },
    cleanup() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return handle;
}

/**
 * Resolves once `child` has printed something matching `ready` (stdout or
 * stderr), with a getter for everything it printed; rejects if it exits first.
 */
export function untilOutput(child: ChildProcess, ready: RegExp, what: string): Promise<() => string> {
  let output = '';
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      if (ready.test(output)) resolve(() => output);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${what} exited with ${code}:\n${output}`)));
  });
}
