import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { APPLIANCE_NODE_FLAGS, missingApplianceNodeFlags } from '../../src/appliance/node-flags.js';

const UNIT = path.resolve(__dirname, '..', '..', 'deploy', 'ami-gateway.service');

/** The unit's directives, by name, in order of appearance. */
function directives(): Map<string, string[]> {
  const result = new Map<string, string[]>();
  for (const line of readFileSync(UNIT, 'utf8').split('\n')) {
    const match = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (!match) continue;
    const [, name, value] = match as unknown as [string, string, string];
    result.set(name, [...(result.get(name) ?? []), value]);
  }
  return result;
}

const hasSystemdAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

describe('deploy/ami-gateway.service', () => {
  it('runs the gateway as a dedicated user with a hardened sandbox', () => {
    const d = directives();
    expect(d.get('User')).toEqual(['ami-gateway']);
    expect(d.get('ExecStart')?.[0]).toMatch(/bin\/ami-gateway\.js start$/);
    expect(d.get('NoNewPrivileges')).toEqual(['yes']);
    expect(d.get('ProtectSystem')).toEqual(['strict']);
    expect(d.get('ReadWritePaths')).toEqual(['/var/lib/ami-gateway']);
    expect(d.get('Environment')).toContain('AMI_DATA_DIR=/var/lib/ami-gateway');
    // The appliance enforces its allowlists in the kernel (the default flow's firewall node).
    expect(d.get('Environment')).toContain('AMI_FIREWALL=enforce');
    // Only the capability nftables needs, both bounded and granted.
    expect(d.get('CapabilityBoundingSet')).toEqual(['CAP_NET_ADMIN']);
    expect(d.get('AmbientCapabilities')).toEqual(['CAP_NET_ADMIN']);
    expect(d.get('KillSignal')).toEqual(['SIGTERM']);
  });

  it('starts node with the appliance heap settings, as npm start does', () => {
    const execStart = directives().get('ExecStart')?.[0] ?? '';
    const [node, ...args] = execStart.split(/\s+/);
    expect(node).toBe('/usr/bin/node');
    expect(args).toEqual([...APPLIANCE_NODE_FLAGS, '/opt/ami-gateway/bin/ami-gateway.js', 'start']);
    const pkg = JSON.parse(readFileSync(path.resolve(__dirname, '..', '..', 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start!.split(/\s+/)).toEqual(['node', ...APPLIANCE_NODE_FLAGS, 'bin/ami-gateway.js', 'start']);
    expect(missingApplianceNodeFlags(args, '')).toEqual([]);
    expect(missingApplianceNodeFlags(['--max-semi-space-size=4'], '')).toEqual(['--heap-growing-percent=30']);
    // Spelled with underscores, given another value, or in NODE_OPTIONS: the operator's choice stands.
    expect(missingApplianceNodeFlags(['--heap_growing_percent=50'], '--max-semi-space-size=8')).toEqual([]);
    expect(missingApplianceNodeFlags([], '')).toEqual([...APPLIANCE_NODE_FLAGS]);
  });

  it('has heap settings this node accepts', () => {
    const result = spawnSync(process.execPath, [...APPLIANCE_NODE_FLAGS, '-e', 'process.stdout.write("ok")'], { encoding: 'utf8' });
    expect(result.stderr).toBe('');
    expect(result.stdout).toBe('ok');
  });

  it.skipIf(!hasSystemdAnalyze)('passes systemd-analyze verify', () => {
    const result = spawnSync('systemd-analyze', ['verify', UNIT], { encoding: 'utf8' });
    // verify warns about an ExecStart binary missing on this machine; any other complaint is a defect.
    const complaints = `${result.stdout}${result.stderr}`
      .split('\n')
      .filter((line) => line.trim() !== '' && !/is not executable|No such file or directory|Command .* is not/.test(line));
    expect(complaints).toEqual([]);
  });
});
