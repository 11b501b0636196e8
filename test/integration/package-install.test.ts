import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/appliance.js';
import { freeTcpPort } from '../helpers/ports.js';

/**
 * Installs the packed npm package into a plain Node-RED user directory, the
 * way `npm install node-red-contrib-ami-gateway` would, and checks what a
 * Node-RED user sees: our nodes registered, our flows under Import > Examples.
 * The user directory sits inside the repository so the package's own
 * dependencies resolve from the repository's node_modules without a download.
 */
let workDir: string;
let userDir: string;
let packedFiles: string[];
let nodeRed: ChildProcess | undefined;
let baseUrl: string;
let output = '';

beforeAll(async () => {
  workDir = mkdtempSync(path.join(REPO_ROOT, '.tmp-install-'));
  const pack = spawnSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', workDir], { cwd: REPO_ROOT, encoding: 'utf8' });
  expect(pack.status, pack.stderr).toBe(0);
  const [info] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as Array<{ filename: string; files: Array<{ path: string }> }>;
  packedFiles = info!.files.map((f) => f.path);
  userDir = path.join(workDir, 'userdir');
  const moduleDir = path.join(userDir, 'node_modules', 'node-red-contrib-ami-gateway');
  mkdirSync(moduleDir, { recursive: true });
  const untar = spawnSync('tar', ['xzf', path.join(workDir, path.basename(info!.filename)), '-C', moduleDir, '--strip-components=1']);
  expect(untar.status).toBe(0);
  const port = await freeTcpPort();
  baseUrl = `http://127.0.0.1:${port}`;
  writeFileSync(
    path.join(userDir, 'settings.js'),
    `module.exports = { uiHost: '127.0.0.1', uiPort: ${port}, flowFile: 'flows.json', credentialSecret: false, editorTheme: { tours: false } };\n`,
  );
  nodeRed = spawn(process.execPath, [path.join(REPO_ROOT, 'node_modules', 'node-red', 'red.js'), '--userDir', userDir], {
    cwd: userDir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  nodeRed.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  nodeRed.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  // Node-RED prints this once the editor listens and the flows are started.
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (/Started flows/.test(output)) resolve();
    };
    nodeRed!.stdout?.on('data', check);
    nodeRed!.once('exit', (code) => reject(new Error(`node-red exited with ${code}:\n${output}`)));
  });
});

afterAll(async () => {
  if (nodeRed && nodeRed.exitCode === null) {
    nodeRed.kill('SIGTERM');
    await once(nodeRed, 'exit');
  }
  rmSync(workDir, { recursive: true, force: true });
});

describe('the npm package installed into a plain Node-RED', () => {
  it('ships the compiled nodes with their editor files, the examples and the CLI, but no tests', () => {
    for (const node of ['ami-mesh-endpoint', 'ami-mesh-in', 'ami-hes-endpoint', 'ami-hes-out']) {
      expect(packedFiles).toContain(`dist/nodes/${node}/${node}.js`);
      expect(packedFiles).toContain(`dist/nodes/${node}/${node}.html`);
      expect(packedFiles).toContain(`dist/nodes/${node}/locales/en-US/${node}.json`);
      expect(packedFiles).toContain(`dist/nodes/${node}/locales/en-US/${node}.html`);
    }
    expect(packedFiles).toContain('dist/nodes/ami-mesh-in/icons/ami-mesh.svg');
    expect(packedFiles).toContain('examples/default-appliance.json');
    expect(packedFiles).toContain('bin/ami-gateway.js');
    expect(packedFiles.filter((file) => file.startsWith('test/'))).toEqual([]);
  });

  it('registers our twenty node types, enabled and without load errors', async () => {
    const response = await fetch(`${baseUrl}/nodes`, { headers: { accept: 'application/json' } });
    const sets = (await response.json()) as Array<{ module: string; types: string[]; enabled: boolean; err?: string }>;
    const ours = sets.filter((set) => set.module === 'node-red-contrib-ami-gateway');
    expect(ours.flatMap((set) => set.types).sort()).toEqual([
      'ami-allowlist',
      'ami-backhaul',
      'ami-backhaul-status',
      'ami-dlms-decode',
      'ami-dlms-encode',
      'ami-firewall',
      'ami-firmware',
      'ami-firmware-rollout',
      'ami-hes-commands',
      'ami-hes-endpoint',
      'ami-hes-out',
      'ami-keyring',
      'ami-mesh-endpoint',
      'ami-mesh-events',
      'ami-mesh-in',
      'ami-mesh-request',
      'ami-optical-read',
      'ami-relay',
      'ami-relay-command',
      'ami-store',
    ]);
    for (const set of ours) {
      expect(set.err, `${set.types.join(',')}: ${set.err}`).toBeUndefined();
      expect(set.enabled).toBe(true);
    }
  });

  it('lists every flow of flows/ under Import > Examples', async () => {
    const response = await fetch(`${baseUrl}/library/examples/flows/node-red-contrib-ami-gateway`);
    expect(response.status).toBe(200);
    // The examples library lists a module's flows as [{fn: name}], without the .json.
    const listing = (await response.json()) as Array<{ fn: string }>;
    const names = listing.map((entry) => entry.fn).sort();
    const expected = readdirSync(path.join(REPO_ROOT, 'flows'))
      .filter((file) => file.endsWith('.json'))
      .map((file) => file.replace(/\.json$/, ''))
      .sort();
    expect(names).toEqual(expected);
    const flow = await fetch(`${baseUrl}/library/examples/flows/node-red-contrib-ami-gateway/default-appliance`);
    expect(flow.status).toBe(200);
    const nodes = (await flow.json()) as Array<{ type: string }>;
    expect(nodes.map((n) => n.type)).toEqual(expect.arrayContaining(['ami-mesh-in', 'ami-hes-out']));
  });
});
