import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { firewallCommand, FirewallUsageError, type FirewallDefaults } from '../../src/appliance/cli-firewall.js';
import { OPEN_MESH_WARNING, parseFirewallConfig, renderRuleset } from '../../src/firewall/ruleset.js';
import { CLI, REPO_ROOT } from '../helpers/appliance.js';
import type { CommandResult } from '../helpers/netns.js';
import { describeWithNft, nftOkIn, nftSupport, useNamespace } from '../helpers/nft.js';

/**
 * `ami-gateway firewall render|apply|verify|remove`. render and the usage
 * errors need no nft; apply/verify/remove run the built CLI against a fake
 * nft (a refused ruleset, no permission, no nft at all), and against the
 * real nft inside a fresh network namespace (`ip netns exec NS node
 * bin/ami-gateway.js ...`, so the whole process and its nft are in there and
 * the host's ruleset is never touched). The namespace tests need root and
 * nft; skipped elsewhere (the reason in the test name), failing under CI.
 */

/** A clean environment: the test runner's own AMI_* variables must not leak into the defaults. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('AMI_')) env[key] = value;
  return { ...env, ...extra };
}

function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'firewall', ...args], { cwd: REPO_ROOT, env, encoding: 'utf8', timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : null) : 0;
      resolve({ code, signal: null, stdout, stderr });
    });
  });
}

const defaults: FirewallDefaults = { meshPort: 5683, httpPort: 1880 };

describe('ami-gateway firewall render (no nft needed)', () => {
  it('renders the nft script from repeatable, comma-separated --allow-* options and port options', async () => {
    const result = await firewallCommand(
      [
        'render',
        '--allow-hes', '192.0.2.10',
        '--allow-hes', '2001:db8:100::/48,203.0.113.0/24',
        '--allow-mesh', 'fd00:1::/64, fd00:2::/64',
        '--allow-mgmt', '198.51.100.0/24',
        '--mesh-port', '5700',
        '--admin-port', '1999',
        '--backhaul-port', '5684',
        '--openvpn-mgmt-port', '7505',
      ],
      { ...defaults, allowMesh: 'fd99::/16', allowHes: '10.0.0.1' },
    );
    expect(result.exitCode).toBe(0);
    const expected = parseFirewallConfig({
      hes: ['192.0.2.10', '2001:db8:100::/48', '203.0.113.0/24'],
      mesh: ['fd00:1::/64', 'fd00:2::/64'],
      mgmt: ['198.51.100.0/24'],
      ports: { meshCoap: 5700, admin: 1999, dlms: 4059, backhaulCoap: 5684, openvpnMgmt: 7505 },
    });
    expect(result.output).toBe(renderRuleset(expected).trimEnd());
    expect(result.output).toContain('udp dport 5700 counter drop comment "drop-mesh"');
    expect(result.output).toContain('tcp dport 7505 counter drop comment "drop-openvpn-mgmt"');
    expect(result.output).not.toContain('fd99::');
  });

  it('takes the defaults from AMI_ALLOW_*, the HES URLs and the ports; an empty management list admits loopback only', async () => {
    const fromEnv: FirewallDefaults = {
      ...defaults,
      allowMesh: 'fd00::/8 10.0.0.0/8',
      hesPrimary: 'coap://[2001:db8::5]:5684/hes',
      hesSecondary: 'coap://192.0.2.7',
      meshPort: 6000,
      httpPort: 8080,
      backhaulMgmt: '127.0.0.1:7505',
    };
    const result = await firewallCommand(['render', '--json'], fromEnv);
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.output) as { ok: boolean; hash: string; entries: Record<string, number>; config: unknown; ruleset: string };
    expect(report.config).toEqual({
      hes: ['192.0.2.7', '2001:db8::5'],
      mesh: ['10.0.0.0/8', 'fd00::/8'],
      mgmt: [],
      ports: { meshCoap: 6000, dlms: 4059, admin: 8080, openvpnMgmt: 7505 },
    });
    expect(report.entries).toEqual({ hes: 2, mesh: 2, mgmt: 0 });
    expect(report.hash).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(report.ruleset).toContain('iif lo accept');
    expect(report.ruleset).toContain('tcp dport 8080 counter drop comment "drop-admin"');

    // AMI_ALLOW_HES, when set, replaces the HES URLs' hosts; a host name in a URL needs it.
    const explicit = JSON.parse((await firewallCommand(['render', '--json'], { ...fromEnv, allowHes: '198.51.100.1, 198.51.100.2' })).output) as { config: { hes: string[] } };
    expect(explicit.config.hes).toEqual(['198.51.100.1', '198.51.100.2']);
    await expect(firewallCommand(['render'], { ...fromEnv, hesPrimary: 'coap://hes.example:5684' })).rejects.toThrow(
      /AMI_HES_PRIMARY \(hes\.example\) names a host, not an IP address.*set AMI_ALLOW_HES or --allow-hes/,
    );
    expect((await firewallCommand(['render'], { ...fromEnv, hesPrimary: 'coap://hes.example:5684', allowHes: '192.0.2.1' })).exitCode).toBe(0);
  });

  it('refuses bad addresses and ports as usage errors naming their source', async () => {
    await expect(firewallCommand(['render', '--allow-mesh', 'fd00::/64', '--allow-hes', '192.0.2.1,bogus'], defaults)).rejects.toThrow(
      new FirewallUsageError('--allow-hes: hes[1] "bogus" is not an IPv4 or IPv6 address or prefix'),
    );
    await expect(firewallCommand(['render'], { ...defaults, allowMesh: 'fd00::/200' })).rejects.toThrow(/^AMI_ALLOW_MESH: mesh\[0\] "fd00::\/200" has a bad prefix length/);
    await expect(firewallCommand(['render', '--allow-mesh', 'fd00::/64', '--mesh-port', '70000'], defaults)).rejects.toThrow(/--mesh-port must be a port/);
    await expect(firewallCommand(['render', '--allow-mesh', 'fd00::/64', '--dlms-port', '5683'], defaults)).rejects.toThrow(/dlms-udp and mesh both use udp port 5683/);
    await expect(firewallCommand(['flush'], defaults)).rejects.toThrow(/unknown firewall command "flush"/);
  });

  it('reads an empty mesh list as every source, as the in-process allowlist does, and warns', async () => {
    const open = await firewallCommand(['render', '--json'], { ...defaults, allowMesh: '' });
    expect(open.exitCode).toBe(0);
    expect(open.warnings).toEqual([OPEN_MESH_WARNING]);
    const body = JSON.parse(open.output) as { config: { mesh: string[] }; warnings: string[] };
    expect(body.config.mesh).toEqual(['0.0.0.0/0', '::/0']);
    expect(body.warnings).toEqual([OPEN_MESH_WARNING]);
    const stated = await firewallCommand(['render'], { ...defaults, allowMesh: 'fd00::/8' });
    expect(stated.warnings).toBeUndefined();
    // Through the built CLI the warning goes to stderr, the ruleset to stdout.
    const cli = await runCli(['render'], cleanEnv({ AMI_ALLOW_HES: '192.0.2.10' }));
    expect(cli.code).toBe(0);
    expect(cli.stderr).toContain(`ami-gateway: warning: ${OPEN_MESH_WARNING}`);
    expect(cli.stdout).toMatch(/set mesh_v6 \{[^}]*::\/0/);
  });

  it('runs through the built CLI: render from the environment, exit 2 for a bad address or an unknown option', async () => {
    const env = cleanEnv({ AMI_ALLOW_MESH: 'fd00::/8', AMI_ALLOW_HES: '192.0.2.10', AMI_ALLOW_MGMT: '198.51.100.0/24', AMI_HTTP_PORT: '1990' });
    const rendered = await runCli(['render'], env);
    expect(rendered.stderr).toBe('');
    expect(rendered.code).toBe(0);
    expect(rendered.stdout).toContain('table inet ami_gateway {');
    expect(rendered.stdout).toMatch(/set mgmt_v4 \{[^}]*198\.51\.100\.0\/24/);
    expect(rendered.stdout).toContain('tcp dport 1990 counter drop comment "drop-admin"');

    const bad = await runCli(['render', '--allow-hes', '192.0.2.300'], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('ami-gateway: --allow-hes: hes[0] "192.0.2.300" is not an IPv4 or IPv6 address or prefix');
    expect(bad.stdout).toBe('');

    const unknown = await runCli(['apply', '--allow-everyone'], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/Unknown option '--allow-everyone'/);

    const badEnv = await runCli(['render'], { ...env, AMI_ALLOW_MGMT: 'not-an-address' });
    expect(badEnv.code).toBe(2);
    expect(badEnv.stderr).toContain('AMI_ALLOW_MGMT: mgmt[0] "not-an-address" is not an IPv4 or IPv6 address or prefix');
  });
});

describe('ami-gateway firewall apply|verify|remove against a fake nft', () => {
  let dir = '';
  const options = ['--allow-mesh', 'fd00::/8', '--allow-hes', '192.0.2.10'];

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'ami-fw-cli-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** A directory holding only a fake `nft` shell script; PATH is that directory alone, so the real nft is out of reach. */
  function fakeNft(name: string, body: string): NodeJS.ProcessEnv {
    const bin = path.join(dir, name);
    mkdirSync(bin, { recursive: true });
    const file = path.join(bin, 'nft');
    writeFileSync(file, `#!/bin/sh\n${body}\n`);
    chmodSync(file, 0o755);
    return cleanEnv({ PATH: bin });
  }

  it('exits 1 with nft\'s error when nft refuses the ruleset', async () => {
    const env = fakeNft(
      'refuses',
      [
        'for a in "$@"; do',
        '  if [ "$a" = "-f" ]; then echo "/dev/stdin:7:3-9: Error: Could not process rule: Invalid argument" >&2; exit 1; fi',
        'done',
        'echo "Error: No such file or directory" >&2; exit 1',
      ].join('\n'),
    );
    const result = await runCli(['apply', ...options], env);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^ami-gateway: firewall apply failed \(APPLY_FAILED\): .*/);
    expect(result.stderr).toContain('/dev/stdin:7:3-9: Error: Could not process rule: Invalid argument');

    const json = await runCli(['apply', ...options, '--json'], env);
    expect(json.code).toBe(1);
    const report = JSON.parse(json.stdout) as { ok: boolean; error: { code: string; message: string } };
    expect(report.ok).toBe(false);
    expect(report.error.code).toBe('APPLY_FAILED');
    expect(report.error.message).toContain('Invalid argument');
  });

  it('exits 3 with a clear message without permission (CAP_NET_ADMIN)', async () => {
    const env = fakeNft('eperm', 'echo "Error: Could not process rule: Operation not permitted" >&2; exit 1');
    for (const action of ['apply', 'verify', 'remove']) {
      const result = await runCli([action, ...options], env);
      expect(result.code, `${action}: ${result.stderr}`).toBe(3);
      expect(result.stderr).toContain('needs root or CAP_NET_ADMIN; the in-process allowlists keep working');
      expect(result.stderr).toContain('NO_PERMISSION');
    }
  });

  it('exits 3 with a clear message when nft is not installed', async () => {
    const env = cleanEnv({ PATH: path.join(dir, 'no-such-dir') });
    for (const action of ['apply', 'verify', 'remove']) {
      const result = await runCli([action, ...options], env);
      expect(result.code, `${action}: ${result.stderr}`).toBe(3);
      expect(result.stderr).toContain('NO_NFT');
      expect(result.stderr).toContain('needs root or CAP_NET_ADMIN; the in-process allowlists keep working');
    }
    const json = await runCli(['verify', ...options, '--json'], env);
    expect(json.code).toBe(3);
    expect(JSON.parse(json.stdout)).toMatchObject({ action: 'verify', ok: false, error: { code: 'NO_NFT' } });
  });
});

const problem = nftSupport('cli-firewall (namespace tests)');

describeWithNft(problem, 'ami-gateway firewall under real nftables in a network namespace', () => {
  const the = useNamespace('fwcli');
  const options = [
    '--allow-hes', '192.0.2.10,2001:db8:100::/48',
    '--allow-mesh', 'fd00:1::/64',
    '--allow-mesh', 'fd00:2::/64,10.20.0.0/16',
    '--allow-mgmt', '198.51.100.0/24',
  ];

  /** The whole CLI process inside the namespace, with a clean AMI_* environment. */
  function cli(args: string[], envExtra: string[] = []): Promise<CommandResult> {
    const env = Object.entries(cleanEnv()).map(([key, value]) => `${key}=${value ?? ''}`);
    return the().exec('/usr/bin/env', ['-i', ...env, ...envExtra, process.execPath, CLI, 'firewall', ...args], { timeoutMs: 60_000 });
  }

  /** nft in the namespace, rejecting with its message on failure (30 s limit, run()'s default). */
  const nft = (...args: string[]): Promise<string> => nftOkIn(the(), args, undefined, 30_000);

  it('apply, verify, drift on a flushed set (exit 1), repair, remove, and verify of a missing table', async () => {
    await the().exec('nft', ['-f', '-'], { input: 'table inet other { chain c { type filter hook input priority 0; }; }\n' });
    const other = await nft('list', 'table', 'inet', 'other');

    const applied = await cli(['apply', ...options]);
    expect(applied.stderr).toBe('');
    expect(applied.code).toBe(0);
    expect(applied.stdout).toMatch(/^applied and verified table inet ami_gateway \(sha256:[0-9a-f]{64}\)\nentries: hes 2, mesh 3, mgmt 1; apply \d+ ms, verify \d+ ms/);
    expect(await nft('list', 'set', 'inet', 'ami_gateway', 'mesh_v6')).toMatch(/fd00:1::\/64,\s+fd00:2::\/64/);

    const clean = await cli(['verify', ...options]);
    expect(clean.code).toBe(0);
    expect(clean.stdout).toMatch(/^table inet ami_gateway matches the configuration \(sha256:/);

    // A stricter configuration than the one applied is drift too.
    const stricter = await cli(['verify', ...options, '--allow-mgmt', '203.0.113.0/24']);
    expect(stricter.code).toBe(1);

    await nft('flush', 'set', 'inet', 'ami_gateway', 'mesh_v6');
    const drift = await cli(['verify', ...options]);
    expect(drift.code).toBe(1);
    expect(drift.stdout).toMatch(/^DRIFT: table inet ami_gateway differs from the configuration/);
    expect(drift.stdout).toMatch(/\n {2}- set mesh_v6 is empty, expected 2 element/);
    const driftJson = await cli(['verify', ...options, '--json']);
    expect(driftJson.code).toBe(1);
    expect(JSON.parse(driftJson.stdout)).toMatchObject({ action: 'verify', ok: false, differences: [expect.stringMatching(/^set mesh_v6 is empty/)] });

    const repaired = await cli(['apply', ...options, '--json']);
    expect(repaired.code).toBe(0);
    expect(JSON.parse(repaired.stdout)).toMatchObject({ action: 'apply', ok: true, entries: { hes: 2, mesh: 3, mgmt: 1 }, rolledBack: false });
    expect((await cli(['verify', ...options])).code).toBe(0);

    const removed = await cli(['remove']);
    expect(removed.code).toBe(0);
    expect(removed.stdout.trim()).toBe('removed table inet ami_gateway');
    const missing = await cli(['verify', ...options]);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toContain('- table inet ami_gateway is missing');
    const again = await cli(['remove', '--json']);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toEqual({ action: 'remove', ok: true, removed: false });
    const againText = await cli(['remove']);
    expect(againText.stdout.trim()).toBe('table inet ami_gateway was not there; nothing to remove');

    // Someone else's table lived through all of it.
    expect(await nft('list', 'table', 'inet', 'other')).toBe(other);
  });

  it('takes the allowlists and ports from AMI_* variables inside the namespace', async () => {
    const env = ['AMI_ALLOW_MESH=fd00:7::/64', 'AMI_HES_PRIMARY=coap://[2001:db8::9]:5684', 'AMI_ALLOW_MGMT=', 'AMI_MESH_PORT=5999', 'AMI_HTTP_PORT=8088'];
    const applied = await cli(['apply'], env);
    expect(applied.stderr).toBe('');
    expect(applied.code).toBe(0);
    expect(applied.stdout).toContain('entries: hes 1, mesh 1, mgmt 0');
    const chain = await nft('list', 'chain', 'inet', 'ami_gateway', 'input');
    expect(chain).toContain('udp dport 5999 counter packets 0 bytes 0 drop comment "drop-mesh"');
    expect(chain).toContain('tcp dport 8088 counter packets 0 bytes 0 drop comment "drop-admin"');
    expect(await nft('list', 'set', 'inet', 'ami_gateway', 'hes_v6')).toContain('2001:db8::9');
    expect((await cli(['verify'], env)).code).toBe(0);
    expect((await cli(['remove'], env)).code).toBe(0);
  });

  it('exits 3 NO_NFT when nft is not on PATH, and 3 NO_PERMISSION for an unprivileged user', async () => {
    const noNft = await cli(['apply', ...options], ['PATH=/nonexistent']);
    expect(noNft.code).toBe(3);
    expect(noNft.stderr).toContain('NO_NFT');
    expect(noNft.stderr).toContain('needs root or CAP_NET_ADMIN; the in-process allowlists keep working');

    // The gateway process stays root; only nft runs without privileges, through an `nft` on PATH that drops them
    // (node itself may live where an unprivileged user cannot execute it, as in the Node-RED 5 leg's toolchain).
    const wrapperDir = mkdtempSync(path.join(tmpdir(), 'ami-nft-unpriv-'));
    let unprivileged: CommandResult;
    try {
      writeFileSync(
        path.join(wrapperDir, 'nft'),
        '#!/bin/sh\nexec /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all /usr/sbin/nft "$@"\n',
      );
      chmodSync(path.join(wrapperDir, 'nft'), 0o755);
      unprivileged = await cli(['apply', ...options], [`PATH=${wrapperDir}:/usr/bin:/bin`]);
    } finally {
      rmSync(wrapperDir, { recursive: true, force: true });
    }
    expect(unprivileged.code, unprivileged.stderr).toBe(3);
    expect(unprivileged.stderr).toContain('NO_PERMISSION');
    expect(unprivileged.stderr).toContain('needs root or CAP_NET_ADMIN; the in-process allowlists keep working');
    expect((await the().exec('nft', ['list', 'tables'])).stdout).not.toContain('ami_gateway');
  });
});
