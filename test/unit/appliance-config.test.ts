import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import bcrypt from 'bcryptjs';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/appliance/config.js';
import { ensureCredentialSecret } from '../../src/appliance/secrets.js';
import { loadAdminUsers } from '../../src/appliance/admin-users.js';
import { buildNodeRedSettings, editorBindAddress } from '../../src/appliance/settings.js';
import { ApplianceLog } from '../../src/appliance/log.js';
import { HealthRegistry } from '../../src/appliance/health.js';
import { meshTargetHost } from '../../src/appliance/runtime.js';

const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-unit-'));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('loadConfig', () => {
  it('runs on documented defaults with an empty environment', () => {
    const config = loadConfig({}, '/srv/gw');
    expect(config).toMatchObject({
      dataDir: '/srv/gw/data',
      httpPort: 1880,
      meshPort: 5683,
      meshBind: '::1',
      simMeters: 50,
      hesPrimary: undefined,
      hesSecondary: undefined,
      logLevel: 'info',
      settingsFile: '/srv/gw/data/ami-settings.json',
      // npm start on a workstation never changes its firewall.
      firewall: 'off',
    });
  });

  it('reads the serial radio settings when AMI_MESH_TRANSPORT=radio, and refuses incomplete ones naming the variable', () => {
    expect(loadConfig({}, '/srv/gw')).toMatchObject({ meshTransport: 'udp', radio: undefined });
    const radio = { AMI_MESH_TRANSPORT: 'radio', AMI_RADIO_PORT: '/dev/serial/by-id/usb-radio', AMI_RADIO_MAC: '00:12:4B:00:00:00:00:01', AMI_RADIO_PAN: '0xABCD' };
    expect(loadConfig(radio, '/srv/gw')).toMatchObject({
      meshTransport: 'radio',
      radio: { path: '/dev/serial/by-id/usb-radio', baudRate: 115_200, metadata: 'none', mac: '00124b0000000001', panId: 0xabcd, contexts: [] },
    });
    expect(loadConfig({ ...radio, AMI_RADIO_BAUD: '230400', AMI_RADIO_METADATA: 'rssi-lqi', AMI_RADIO_CONTEXTS: '2001:db8:1::/64' }, '/srv/gw').radio).toMatchObject({
      baudRate: 230_400,
      metadata: 'rssi-lqi',
      contexts: ['2001:db8:1::/64'],
    });
    expect(() => loadConfig({ AMI_MESH_TRANSPORT: 'zigbee' }, '/srv/gw')).toThrow(/^AMI_MESH_TRANSPORT: expected udp or radio/);
    expect(() => loadConfig({ ...radio, AMI_RADIO_PORT: '' }, '/srv/gw')).toThrow(/^AMI_RADIO_PORT: /);
    expect(() => loadConfig({ ...radio, AMI_RADIO_MAC: '1234' }, '/srv/gw')).toThrow(/^AMI_RADIO_MAC: /);
    expect(() => loadConfig({ ...radio, AMI_RADIO_PAN: 'ffff' }, '/srv/gw')).toThrow(/^AMI_RADIO_PAN: /);
    expect(() => loadConfig({ ...radio, AMI_RADIO_METADATA: 'rssi' }, '/srv/gw')).toThrow(/^AMI_RADIO_METADATA: /);
    expect(() => loadConfig({ ...radio, AMI_RADIO_BAUD: '12' }, '/srv/gw')).toThrow(/AMI_RADIO_BAUD/);
    expect(() => loadConfig({ ...radio, AMI_RADIO_CONTEXTS: '2001:db8:1::/64;fd00::/64' }, '/srv/gw')).toThrow(/^AMI_RADIO_CONTEXTS: /);
  });

  it('reads AMI_FIREWALL as off or enforce and refuses anything else', () => {
    expect(loadConfig({ AMI_FIREWALL: 'enforce' }, '/srv/gw').firewall).toBe('enforce');
    expect(loadConfig({ AMI_FIREWALL: ' off ' }, '/srv/gw').firewall).toBe('off');
    expect(() => loadConfig({ AMI_FIREWALL: 'on' }, '/srv/gw')).toThrow(new ConfigError('AMI_FIREWALL', 'expected off or enforce, got "on"'));
  });

  it('reads every variable', () => {
    const config = loadConfig(
      {
        AMI_DATA_DIR: '/var/lib/ami',
        AMI_HTTP_PORT: '8080',
        AMI_MESH_PORT: '5700',
        AMI_MESH_BIND: '::',
        AMI_SIM_METERS: '0',
        AMI_SIM_INTERVAL: '3',
        AMI_HES_PRIMARY: 'coap://[2001:db8::1]:5683',
        AMI_HES_SECONDARY: 'coap://hes-b.example',
        AMI_CREDENTIAL_SECRET: 's3cret-s3cret-s3cret',
        AMI_LOG_LEVEL: 'debug',
      },
      '/x',
    );
    expect(config).toMatchObject({
      dataDir: '/var/lib/ami',
      httpPort: 8080,
      meshPort: 5700,
      meshBind: '::',
      simMeters: 0,
      simIntervalSeconds: 3,
      hesPrimary: 'coap://[2001:db8::1]:5683',
      hesSecondary: 'coap://hes-b.example',
      credentialSecret: 's3cret-s3cret-s3cret',
      logLevel: 'debug',
    });
  });

  it.each([
    ['AMI_HTTP_PORT', '0'],
    ['AMI_HTTP_PORT', '70000'],
    ['AMI_MESH_PORT', '12ab'],
    ['AMI_SIM_METERS', '-1'],
    ['AMI_HES_PRIMARY', 'http://hes.example'],
    ['AMI_LOG_LEVEL', 'chatty'],
    ['AMI_MESH_BIND', 'eth0'],
    ['AMI_HTTP_BIND', 'localhost'],
  ])('refuses %s=%s with a ConfigError naming the variable', (name, value) => {
    try {
      loadConfig({ [name]: value });
      throw new Error('expected a ConfigError');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).variable).toBe(name);
      expect((err as Error).message.startsWith(`${name}: `)).toBe(true);
    }
  });
});

describe('credential secret', () => {
  it('is generated once with mode 0600 and reused', () => {
    const dir = tempDir();
    const first = ensureCredentialSecret(dir, undefined);
    expect(first.source).toBe('created');
    expect(first.secret).toMatch(/^[0-9a-f]{64}$/);
    expect(statSync(path.join(dir, '.credential-secret')).mode & 0o777).toBe(0o600);
    const second = ensureCredentialSecret(dir, undefined);
    expect(second).toMatchObject({ source: 'file', secret: first.secret, tightened: false });
  });

  it('tightens a secret file others can read', () => {
    const dir = tempDir();
    const file = path.join(dir, '.credential-secret');
    writeFileSync(file, 'a-secret-that-is-long-enough\n');
    chmodSync(file, 0o644);
    expect(ensureCredentialSecret(dir, undefined)).toMatchObject({ source: 'file', tightened: true, secret: 'a-secret-that-is-long-enough' });
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('prefers AMI_CREDENTIAL_SECRET and writes nothing', () => {
    const dir = tempDir();
    expect(ensureCredentialSecret(dir, 'from-env')).toEqual({ secret: 'from-env', source: 'environment' });
    expect(() => statSync(path.join(dir, '.credential-secret'))).toThrow();
  });
});

describe('admin users and editor binding', () => {
  it('has no users, and binds the editor to loopback, without a settings file', () => {
    const dir = tempDir();
    const config = loadConfig({ AMI_DATA_DIR: dir, AMI_HTTP_BIND: '0.0.0.0' });
    const users = loadAdminUsers(config.settingsFile);
    expect(users).toEqual([]);
    expect(editorBindAddress(config, users)).toBe('127.0.0.1');
    const settings = buildNodeRedSettings({ config, credentialSecret: 'x', adminUsers: users, packageRoot: '/pkg', log: new ApplianceLog({ level: 'info', stdout: () => undefined }) });
    expect(settings.adminAuth).toBeUndefined();
    expect(settings.uiHost).toBe('127.0.0.1');
  });

  it('enforces adminAuth with bcrypt users and opens the editor to the configured address', () => {
    const dir = tempDir();
    const hash = bcrypt.hashSync('correct horse', 4);
    writeFileSync(path.join(dir, 'ami-settings.json'), JSON.stringify({ adminUsers: [{ username: 'ops', password: hash, permissions: '*' }] }));
    const config = loadConfig({ AMI_DATA_DIR: dir });
    const users = loadAdminUsers(config.settingsFile);
    expect(users).toEqual([{ username: 'ops', password: hash, permissions: '*' }]);
    expect(editorBindAddress(config, users)).toBe('0.0.0.0');
    const settings = buildNodeRedSettings({ config, credentialSecret: 'x', adminUsers: users, packageRoot: '/pkg', log: new ApplianceLog({ level: 'info', stdout: () => undefined }) });
    expect(settings.adminAuth).toEqual({ type: 'credentials', users: [{ username: 'ops', password: hash, permissions: '*' }] });
    expect(settings.nodesDir).toEqual(['/pkg']);
    expect(settings.credentialSecret).toBe('x');
  });

  it.each([
    ['not json', /not valid JSON/],
    [JSON.stringify({ adminUsers: {} }), /must be an array/],
    [JSON.stringify({ adminUsers: [{ username: 'ops', password: 'plain-text' }] }), /bcrypt hash/],
    [JSON.stringify({ adminUsers: [{ username: '', password: '$2b$10$' + 'a'.repeat(53) }] }), /username/],
    [JSON.stringify({ adminUsers: [{ username: 'ops', password: '$2b$10$' + 'a'.repeat(53), permissions: 'root' }] }), /permissions/],
  ])('refuses to start with a broken settings file (%s)', (content, message) => {
    const dir = tempDir();
    const file = path.join(dir, 'ami-settings.json');
    writeFileSync(file, content);
    expect(() => loadAdminUsers(file)).toThrow(message);
  });
});

describe('ApplianceLog', () => {
  it('writes level-filtered lines to stdout and a file, and rotates the file', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'logs', 'gw.log');
    const printed: string[] = [];
    const log = new ApplianceLog({ level: 'info', file, maxFileBytes: 200, keepFiles: 2, stdout: (line) => printed.push(line) });
    const component = log.component('test');
    component.debug('hidden');
    for (let i = 0; i < 6; i++) component.info(`line ${i} ${'x'.repeat(40)}`);
    log.nodeRedHandler()()({ level: 30, msg: 'from node-red', type: 'ami-mesh-in', name: 'Readings' });
    await log.close();
    expect(printed.some((line) => line.includes('hidden'))).toBe(false);
    expect(printed.at(-1)).toMatch(/warn  \[ami-mesh-in:Readings\] from node-red\n$/);
    const current = readFileSync(file, 'utf8');
    const rotated = readFileSync(`${file}.1`, 'utf8');
    expect(current + rotated).toContain('from node-red');
    expect(() => statSync(`${file}.3`)).toThrow();
  });
});

describe('HealthRegistry', () => {
  it('sums depth sources, reports the first endpoint and turns degraded on problems', () => {
    const health = new HealthRegistry('1.2.3');
    health.increment('meshReceived', 3);
    const removeA = health.addDepthSource(() => 2);
    health.addDepthSource(() => 5);
    health.addEndpointSource(() => undefined);
    health.addEndpointSource(() => 'coap://[::1]:1');
    expect(health.snapshot()).toMatchObject({ status: 'ok', meshReceived: 3, outboxDepth: 7, hesEndpoint: 'coap://[::1]:1', version: '1.2.3' });
    health.setProblem('hes', 'down');
    removeA();
    expect(health.snapshot()).toMatchObject({ status: 'degraded', problems: ['hes: down'], outboxDepth: 5 });
    health.setProblem('hes', undefined);
    expect(health.snapshot().status).toBe('ok');
  });
});

describe('meshTargetHost', () => {
  it('maps wildcard binds to loopback for the embedded fleet', () => {
    expect(meshTargetHost('::')).toBe('::1');
    expect(meshTargetHost('0.0.0.0')).toBe('127.0.0.1');
    expect(meshTargetHost('fd00::1')).toBe('fd00::1');
  });
});
