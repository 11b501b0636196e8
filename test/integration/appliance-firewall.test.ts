import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { CLI, REPO_ROOT, untilOutput } from '../helpers/appliance.js';
import { describeWithNft, nftIn, nftOkIn, nftSupport, useNamespace } from '../helpers/nft.js';

/**
 * The appliance and its firewall end to end, in a network namespace of the
 * test's own (so the host's ruleset is never touched):
 * - `ami-gateway start` with AMI_FIREWALL=enforce (as the systemd unit sets
 *   it) puts the allowlists into the kernel at start through the default
 *   flow's firewall node, and leaves them in force when it stops;
 * - `deploy/uninstall.sh` removes that table, and only that table, with the
 *   unit and the installed tree (systemctl is a recording stand-in: systemd
 *   does not run here).
 */
const problem = nftSupport('appliance-firewall');

describeWithNft(problem, 'appliance firewall: applied at start, removed on uninstall', () => {
  const the = useNamespace('appfw');
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'ami-appfw-'));
  const children: ChildProcess[] = [];

  afterAll(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    rmSync(scratch, { recursive: true, force: true });
  });

  function stop(child: ChildProcess): Promise<number | null> {
    return new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
      child.once('exit', (code) => resolve(code));
      child.kill('SIGTERM');
    });
  }

  it('ami-gateway start with AMI_FIREWALL=enforce applies the allowlists at start and leaves them in force after stopping', async () => {
    const child = the().spawn(process.execPath, [CLI, 'start'], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        AMI_DATA_DIR: path.join(scratch, 'data'),
        AMI_HTTP_PORT: '1880',
        AMI_MESH_PORT: '5683',
        AMI_SIM_METERS: '1',
        AMI_FIREWALL: 'enforce',
        AMI_ALLOW_MESH: 'fd00::/8',
        AMI_ALLOW_MGMT: '198.51.100.0/24',
        AMI_ALLOW_HES: '',
      },
    });
    children.push(child);
    const output = await untilOutput(child, /FIREWALL_APPLIED table=inet ami_gateway hash=\S+ hes=1 mesh=1 mgmt=1/, 'ami-gateway start');
    const listed = await nftOkIn(the(), ['list', 'table', 'inet', 'ami_gateway']);
    // The embedded HES simulator's address (from the HES endpoint), the mesh and management lists from the environment.
    expect(listed).toMatch(/set hes_v6 \{[^}]*elements = \{ ::1 \}/);
    expect(listed).toMatch(/set mesh_v6 \{[^}]*fd00::\/8/);
    expect(listed).toMatch(/set mgmt_v4 \{[^}]*198\.51\.100\.0\/24/);
    expect(listed).toContain('udp dport 5683 counter packets 0 bytes 0 drop comment "drop-mesh"');
    expect(listed).toContain('tcp dport 1880 counter packets 0 bytes 0 drop comment "drop-admin"');
    expect(await stop(child), output()).toBe(0);
    // Stopping (or restarting) the service keeps the meters' and the HES's protection in place.
    expect((await nftIn(the(), ['list', 'table', 'inet', 'ami_gateway'])).code).toBe(0);
  });

  it('deploy/uninstall.sh --purge stops the service, removes our table and no other, the unit, the tree, the data and the configuration', async () => {
    await nftOkIn(the(), ['-f', '-'], 'table inet someone_else {\n  chain input { type filter hook input priority 10; policy accept; }\n}\n');
    // The first test left our table in force; make sure of it whichever order the tests ran in.
    if ((await nftIn(the(), ['list', 'table', 'inet', 'ami_gateway'])).code !== 0) {
      const applied = await the().exec(process.execPath, [CLI, 'firewall', 'apply', '--allow-mesh', 'fd00::/8'], { timeoutMs: 60_000 });
      expect(applied.code, applied.stderr).toBe(0);
    }

    // An installed tree (its bin/ links to this checkout's), a unit, data and configuration directories.
    const installDir = path.join(scratch, 'opt', 'ami-gateway');
    mkdirSync(installDir, { recursive: true });
    symlinkSync(path.join(REPO_ROOT, 'bin'), path.join(installDir, 'bin'));
    writeFileSync(path.join(installDir, 'package.json'), readFileSync(path.join(REPO_ROOT, 'package.json')));
    const unitDir = path.join(scratch, 'systemd');
    mkdirSync(unitDir, { recursive: true });
    writeFileSync(path.join(unitDir, 'ami-gateway.service'), readFileSync(path.join(REPO_ROOT, 'deploy', 'ami-gateway.service')));
    const dataDir = path.join(scratch, 'var-lib');
    const configDir = path.join(scratch, 'etc');
    mkdirSync(dataDir, { recursive: true });
    mkdirSync(configDir, { recursive: true });
    // systemd does not run here: a stand-in that records how it was called.
    const stubDir = path.join(scratch, 'stub-bin');
    mkdirSync(stubDir, { recursive: true });
    const calls = path.join(scratch, 'systemctl-calls');
    writeFileSync(path.join(stubDir, 'systemctl'), `#!/bin/sh\necho "$*" >> ${calls}\n`);
    chmodSync(path.join(stubDir, 'systemctl'), 0o755);

    const result = await the().exec('sh', [path.join(REPO_ROOT, 'deploy', 'uninstall.sh'), '--purge'], {
      timeoutMs: 60_000,
      env: {
        ...process.env,
        PATH: `${stubDir}:${path.dirname(process.execPath)}:/usr/sbin:/usr/bin:/sbin:/bin`,
        AMI_INSTALL_DIR: installDir,
        AMI_SYSTEMD_DIR: unitDir,
        AMI_DATA_DIR: dataDir,
        AMI_CONFIG_DIR: configDir,
      },
    });
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(result.stdout).toContain('removed table inet ami_gateway');
    expect(readFileSync(calls, 'utf8').trim().split('\n')).toEqual(['disable --now ami-gateway.service', 'daemon-reload']);
    const tables = await nftOkIn(the(), ['list', 'tables']);
    expect(tables).not.toContain('ami_gateway');
    expect(tables).toContain('table inet someone_else');
    for (const gone of [installDir, path.join(unitDir, 'ami-gateway.service'), dataDir, configDir]) expect(existsSync(gone), gone).toBe(false);
    // The checkout the tree linked to is untouched.
    expect(existsSync(CLI)).toBe(true);
  });

  it('deploy/uninstall.sh refuses an unknown option, a relative path or a tree that is not ami-gateway, and removes nothing', () => {
    const uninstall = (args: string[], env: Record<string, string>) =>
      spawnSync('sh', [path.join(REPO_ROOT, 'deploy', 'uninstall.sh'), ...args], { encoding: 'utf8', env: { ...process.env, PATH: '/usr/bin:/bin', ...env } });
    const unknown = uninstall(['--everything'], { AMI_INSTALL_DIR: path.join(scratch, 'never') });
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain('unknown option --everything');
    // A mistyped install directory (here: a tree of something else) must not be removed.
    const other = path.join(scratch, 'other-tree');
    mkdirSync(other, { recursive: true });
    writeFileSync(path.join(other, 'package.json'), '{ "name": "something-else" }\n');
    const wrongTree = uninstall([], { AMI_INSTALL_DIR: other, AMI_SYSTEMD_DIR: path.join(scratch, 'no-unit') });
    expect(wrongTree.status).toBe(2);
    expect(wrongTree.stderr).toContain("is not ami-gateway's; nothing was removed");
    expect(existsSync(path.join(other, 'package.json'))).toBe(true);
    const relative = uninstall(['--purge'], { AMI_INSTALL_DIR: other, AMI_DATA_DIR: 'data' });
    expect(relative.status).toBe(2);
    expect(relative.stderr).toContain('"data" is not an absolute path');
    const root = uninstall([], { AMI_INSTALL_DIR: '/' });
    expect(root.status).toBe(2);
    expect(existsSync(other)).toBe(true);
  });
});
