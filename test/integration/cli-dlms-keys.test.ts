import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeWrapper } from '../../src/dlms/wrapper.js';
import { SimulatedCosemMeter } from '../../src/sim/cosem-meter.js';
import { DEFAULT_SIM_KEY_SEED, simMeterKeys, simMeterNames, simSystemTitle } from '../../src/sim/meter-keys.js';
import { CLI, REPO_ROOT, startApplianceProcess, type ApplianceProcess } from '../helpers/appliance.js';
import { freeTcpPort } from '../helpers/ports.js';

// DLMS UA 1000-2 (Green Book) Ed. 8, Table 40: glo-get-request for the clock
// (class 8, 0.0.1.0.0.255, attribute 2). Same vectors as test/unit/dlms-security.test.ts.
const GB = {
  ek: '000102030405060708090A0B0C0D0E0F',
  ak: 'D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF',
  systemTitle: '4D4D4D0000BC614E',
  invocationCounter: 0x01234567,
  plaintext: 'C0010000080000010000FF0200',
};
const GB_TABLE_40 = [
  { sc: 0x30, authentication: true, encryption: true, frame: 'C81E3001234567411312FF935A47566827C467BC7D825C3BE4A77C3FCC056B6B' },
  { sc: 0x10, authentication: true, encryption: false, frame: 'C81E1001234567C0010000080000010000FF020006725D910F9221D263877516' },
  { sc: 0x20, authentication: false, encryption: true, frame: 'C8122001234567411312FF935A47566827C467BC' },
] as const;
const GB_KEY_ARGS = ['--ek', GB.ek, '--ak', GB.ak, '--system-title', GB.systemTitle];

/** What `dlms decode --json` prints (the fields these tests read). */
interface DecodeReport {
  wrapper?: { version: number; sourceWPort: number; destinationWPort: number };
  securityControl?: number;
  security?: { authentication: boolean; encryption: boolean; broadcastKey: boolean; framing: string; tag: number };
  invocationCounter?: number;
  systemTitle?: string;
  plaintext?: string;
  apdu?: { type: string; descriptor?: { classId: number; instanceId: string; attributeId: number }; body?: unknown };
  values?: Array<{ obis: string; value: number; unit?: string }>;
}

interface KeysStatusReport {
  keyrings: Array<{
    id: string;
    meters?: number;
    epoch?: number;
    fingerprint?: string;
    outOfSync?: string[];
    lastError: string | null;
    sites?: {
      local: { fingerprint: string };
      sites: Array<{ site: string; fingerprint?: string; error?: string }>;
      sitesDisagree: boolean;
      inSync: boolean;
    };
  }>;
}

const running: ApplianceProcess[] = [];

afterEach(async () => {
  for (const appliance of running.splice(0)) {
    await appliance.stop();
    appliance.cleanup();
  }
});

function decode(args: string[]): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [CLI, 'dlms', 'decode', ...args], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 20_000 });
}

function decodeJson(args: string[]): DecodeReport {
  const result = decode([...args, '--json']);
  expect(result.stderr).toBe('');
  expect(result.status).toBe(0);
  return JSON.parse(result.stdout) as DecodeReport;
}

interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the CLI without blocking this process: the appliance is our child and
 * its output pipes must keep draining while the command talks to it.
 */
function runCli(args: string[], env: Record<string, string>): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

describe('ami-gateway dlms decode (offline)', () => {
  for (const vector of GB_TABLE_40) {
    it(`decrypts and decodes the Green Book glo-get-request with security control 0x${vector.sc.toString(16)}`, () => {
      const report = decodeJson(['--hex', vector.frame, ...GB_KEY_ARGS]);
      expect(report.securityControl).toBe(vector.sc);
      expect(report.security).toEqual({
        authentication: vector.authentication,
        encryption: vector.encryption,
        broadcastKey: false,
        framing: 'glo',
        tag: 0xc8,
      });
      expect(report.invocationCounter).toBe(GB.invocationCounter);
      expect(report.plaintext).toBe(GB.plaintext.toLowerCase());
      expect(report.apdu).toMatchObject({ type: 'get-request', descriptor: { classId: 8, instanceId: '0.0.1.0.0.255', attributeId: 2 } });
      // A glo frame carries no system title: the report does not invent one.
      expect(report.systemTitle).toBeUndefined();
    });
  }

  it('prints a human-readable report without --json, and accepts spaced, colon-separated and 0x-prefixed hex', () => {
    const spaced = GB_TABLE_40[0].frame.match(/../g)?.join(' ') ?? '';
    const result = decode(['--hex', `0x${spaced}`, '--ek', GB.ek.match(/../g)?.join(':') ?? '', '--ak', GB.ak, '--system-title', GB.systemTitle]);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/security control\s+0x30 \(authenticated \+ encrypted, glo, tag 0xc8\)/);
    expect(result.stdout).toMatch(/invocation counter\s+19088743/);
    expect(result.stdout).toMatch(/plaintext\s+c0010000080000010000ff0200/);
    expect(result.stdout).toContain('"instanceId": "0.0.1.0.0.255"');
  });

  it('decodes a meter push (general-glo-ciphering, in a UDP wrapper) with the system title it carries, and reads its values', () => {
    const keys = simMeterKeys('cli-test-seed', 'mtr-cli-1', 1);
    const meter = new SimulatedCosemMeter(keys, { invocationCounter: 41 });
    const apdu = meter.pushFrame(
      [
        { obis: '1.0.1.8.0.255', value: 123456, unit: 'Wh' },
        { obis: '1.0.32.7.0.255', value: 2301, scaler: -1, unit: 'V' },
        { obis: '1.0.14.7.0.255', value: 49.98, unit: 'Hz' },
      ],
      new Date('2026-03-01T12:00:00Z'),
    );
    const keyArgs = ['--ek', keys.ek.toString('hex'), '--ak', keys.ak.toString('hex')];

    const report = decodeJson(['--hex', apdu.toString('hex'), ...keyArgs]);
    expect(report.securityControl).toBe(0x30);
    expect(report.security).toMatchObject({ framing: 'general-glo', tag: 0xdb, authentication: true, encryption: true });
    expect(report.invocationCounter).toBe(42);
    expect(report.systemTitle).toBe(simSystemTitle('mtr-cli-1'));
    expect(report.systemTitle).toBe(keys.systemTitle);
    expect(report.wrapper).toBeUndefined();
    expect(report.apdu?.type).toBe('data-notification');
    expect(report.plaintext).toMatch(/^0f/);
    expect(report.values).toEqual([
      { obis: '1.0.1.8.0.255', value: 123456, unit: 'Wh' },
      { obis: '1.0.32.7.0.255', value: 230.1, unit: 'V' },
      { obis: '1.0.14.7.0.255', value: 49.98, unit: 'Hz' },
    ]);

    // The same APDU as it arrives over UDP: the wrapper is reported, the rest is the same.
    const wrapped = encodeWrapper({ sourceWPort: 1, destinationWPort: 1, apdu });
    const inWrapper = decodeJson(['--hex', wrapped.toString('hex'), ...keyArgs]);
    expect(inWrapper.wrapper).toEqual({ version: 1, sourceWPort: 1, destinationWPort: 1 });
    expect(inWrapper.values).toEqual(report.values);
    expect(inWrapper.plaintext).toBe(report.plaintext);

    // The frame's own system title wins over --system-title.
    expect(decodeJson(['--hex', apdu.toString('hex'), ...keyArgs, '--system-title', GB.systemTitle]).values).toEqual(report.values);

    const human = decode(['--hex', apdu.toString('hex'), ...keyArgs]);
    expect(human.status).toBe(0);
    expect(human.stdout).toMatch(new RegExp(`system title\\s+${keys.systemTitle}`));
    expect(human.stdout).toContain('"obis":"1.0.32.7.0.255","value":230.1,"unit":"V"');
  });

  it('refuses a frame whose tag does not match (wrong --ak, wrong --system-title, altered byte) with exit 1 and no plaintext', () => {
    const frame = GB_TABLE_40[0].frame;
    const wrongAk = `${GB.ak.slice(0, -2)}DE`;
    const altered = `${frame.slice(0, 20)}${((parseInt(frame.slice(20, 22), 16) ^ 0x01) & 0xff).toString(16).padStart(2, '0')}${frame.slice(22)}`;
    const cases: Array<[string, string[]]> = [
      ['wrong --ak', ['--hex', frame, '--ek', GB.ek, '--ak', wrongAk, '--system-title', GB.systemTitle]],
      ['wrong --system-title', ['--hex', frame, '--ek', GB.ek, '--ak', GB.ak, '--system-title', '4D4D4D0000BC614F']],
      ['altered ciphertext', ['--hex', altered, ...GB_KEY_ARGS]],
    ];
    for (const [what, args] of cases) {
      for (const json of [true, false]) {
        const result = decode(json ? [...args, '--json'] : args);
        expect(result.status, what).toBe(1);
        expect(result.stderr, what).toContain('MIC_FAILURE');
        expect(result.stderr, what).toContain('tag mismatch');
        expect(result.stdout, what).not.toMatch(/plaintext/i);
        expect(result.stdout.toLowerCase(), what).not.toContain(GB.plaintext.toLowerCase());
        if (json) {
          // The header is still shown (it is not secret); nothing past it.
          const report = JSON.parse(result.stdout) as DecodeReport;
          expect(report).toMatchObject({ securityControl: 0x30, invocationCounter: GB.invocationCounter });
          expect(report.apdu).toBeUndefined();
        }
      }
    }
  });

  it('asks for --ek and --ak when a ciphered frame comes without keys, and for --system-title when a glo frame has none', () => {
    for (const args of [[], ['--ek', GB.ek], ['--ak', GB.ak]]) {
      const result = decode(['--hex', GB_TABLE_40[0].frame, ...args]);
      expect(result.status).toBe(1);
      expect(result.stderr).toContain('--ek');
      expect(result.stderr).toContain('--ak');
      expect(result.stdout).not.toMatch(/plaintext/);
    }
    const noTitle = decode(['--hex', GB_TABLE_40[0].frame, '--ek', GB.ek, '--ak', GB.ak]);
    expect(noTitle.status).toBe(1);
    expect(noTitle.stderr).toContain('NO_SYSTEM_TITLE');
    expect(noTitle.stderr).toContain('--system-title');
  });

  it('exits 2 (usage) for bad hex, odd-length hex, a missing --hex, a key of the wrong length and an unknown option', () => {
    const frame = GB_TABLE_40[0].frame;
    const cases: Array<[string[], RegExp]> = [
      [['--hex', 'zz12'], /--hex must be hex digits/],
      [['--hex', frame.slice(0, -1)], /--hex must be hex digits/],
      [['--hex', ''], /--hex must be hex digits/],
      [[], /--hex is required/],
      [['--hex', frame, '--ek', '0001', '--ak', GB.ak], /--ek must be 16 bytes/],
      [['--hex', frame, ...GB_KEY_ARGS.slice(0, 4), '--system-title', '4D4D'], /--system-title must be 8 bytes/],
      [['--hex', frame, '--bogus'], /--bogus/],
    ];
    for (const [args, message] of cases) {
      const result = decode(args);
      expect(result.status, args.join(' ')).toBe(2);
      expect(result.stderr, args.join(' ')).toMatch(message);
      expect(result.stderr).toContain('--help');
      expect(result.stdout).toBe('');
    }
  });

  it('exits 1 for a truncated frame and names the decoder error code', () => {
    const frame = GB_TABLE_40[0].frame;
    const cases: Array<[string, RegExp]> = [
      // The length byte promises 30 bytes, fewer follow.
      [frame.slice(0, 30), /BAD_LENGTH|TRUNCATED/],
      [frame.slice(0, -2), /BAD_LENGTH|TRUNCATED/],
      // Only the tag: the length field itself is missing.
      ['C8', /TRUNCATED/],
      // A UDP wrapper announcing more APDU bytes than follow.
      [`000100010001${(0x20).toString(16).padStart(4, '0')}${frame.slice(0, 20)}`, /TRUNCATED/],
      // A plain get-request cut inside its attribute descriptor.
      [GB.plaintext.slice(0, 8), /TRUNCATED/],
    ];
    for (const [hex, code] of cases) {
      const result = decode(['--hex', hex, ...GB_KEY_ARGS]);
      expect(result.status, hex).toBe(1);
      expect(result.stderr, hex).toMatch(code);
      expect(result.stderr, hex).toMatch(/^ami-gateway: [A-Z_]+: /);
    }
  });
});

describe('ami-gateway keys (against a running appliance)', () => {
  it('reports and syncs the key store of the appliance on embedded defaults without ever printing or storing a key in the clear', async () => {
    // AMI_SIM_KEY_SEED empty: the simulators use DEFAULT_SIM_KEY_SEED, whatever the caller's environment says.
    const appliance = await startApplianceProcess({ AMI_SIM_METERS: '5', AMI_SIM_KEY_SEED: '' });
    running.push(appliance);
    // dlmsDecoded > 0: the gateway opened a meter's frame, so the keys it holds are the ones derived below.
    const health = await appliance.waitForHealth((h) => h.keys !== null && h.keys !== undefined && h.keys.meters >= 5 && h.dlmsDecoded > 0);
    expect(health.keys?.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    const env = { AMI_HTTP_PORT: String(appliance.httpPort) };

    const statusJson = await runCli(['keys', 'status', '--json'], env);
    expect(statusJson.stderr).toBe('');
    expect(statusJson.status).toBe(0);
    const report = JSON.parse(statusJson.stdout) as KeysStatusReport;
    expect(report.keyrings).toHaveLength(1);
    const [keyring] = report.keyrings;
    expect(keyring?.meters).toBeGreaterThanOrEqual(5);
    expect(keyring?.epoch).toBe(1);
    expect(keyring?.lastError).toBeNull();
    expect(keyring?.outOfSync).toEqual([]);
    const fingerprint = keyring?.fingerprint ?? '';
    expect(fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(fingerprint).toBe(health.keys?.fingerprint);
    // The startup sync compared our store with the (one) HES site: same keys.
    expect(keyring?.sites?.sitesDisagree).toBe(false);
    expect(keyring?.sites?.local.fingerprint).toBe(fingerprint);
    expect(keyring?.sites?.sites.length).toBeGreaterThanOrEqual(1);
    for (const site of keyring?.sites?.sites ?? []) {
      expect(site.site).toBe(health.hesEndpoint);
      expect(site.fingerprint).toBe(fingerprint);
    }

    const statusHuman = await runCli(['keys', 'status'], env);
    expect(statusHuman.status).toBe(0);
    expect(statusHuman.stdout).toContain('fingerprint');
    expect(statusHuman.stdout).toContain(fingerprint);
    expect(statusHuman.stdout).toMatch(/meters\s+5 \(epoch 1/);
    expect(statusHuman.stdout).toContain('(same)');

    const sync = await runCli(['keys', 'sync', '--force'], env);
    expect(sync.stderr).toBe('');
    expect(sync.status).toBe(0);
    expect(sync.stdout).toContain('synced');
    expect(sync.stdout).toContain('(full)');
    expect(sync.stdout).toContain(health.hesEndpoint ?? 'no endpoint');

    const syncJson = await runCli(['keys', 'sync', '--json'], env);
    expect(syncJson.status).toBe(0);
    const syncReport = JSON.parse(syncJson.stdout) as {
      results: Array<{ ok: boolean; result?: { site: string; epoch: number; meters: number; full: boolean; changes: { added: number; updated: number; removed: number; rekeyed: string[] } } }>;
    };
    expect(syncReport.results).toHaveLength(1);
    // Nothing changed at the HES since the full resync: an incremental sync with an empty delta.
    expect(syncReport.results[0]).toMatchObject({
      ok: true,
      result: { site: health.hesEndpoint, epoch: 1, full: false, changes: { added: 0, updated: 0, removed: 0, rekeyed: [] } },
    });

    // Neither sync changed the keys.
    const after = await runCli(['keys', 'status', '--json'], env);
    expect(after.status).toBe(0);
    expect((JSON.parse(after.stdout) as KeysStatusReport).keyrings[0]?.fingerprint).toBe(fingerprint);

    // --force belongs to sync only.
    const misuse = await runCli(['keys', 'status', '--force'], env);
    expect(misuse.status).toBe(2);
    expect(misuse.stderr).toContain('--force');

    // Secrets at rest are private to the service user.
    const secretsDir = path.join(appliance.dataDir, 'keyring');
    for (const file of ['master.key', 'gateway-key.pem']) {
      expect(statSync(path.join(secretsDir, file)).mode & 0o777, file).toBe(0o600);
    }
    const masterKey = readFileSync(path.join(secretsDir, 'master.key'), 'utf8').trim();
    expect(masterKey.length).toBeGreaterThanOrEqual(32);

    const exit = await appliance.stop();
    expect(exit.code).toBe(0);

    // No meter key (EK, AK, KEK of the 5 simulated meters) and not the master key
    // appears in anything the CLI printed, the flow file or the logs.
    const keyBytes = simMeterNames(5).flatMap((meter) => {
      const keys = simMeterKeys(DEFAULT_SIM_KEY_SEED, meter, 1);
      return [keys.ek, keys.ak, keys.kek];
    });
    // Hex in either case, and base64 (how a JSON dump of a Buffer-ish value might show it).
    const hexSecrets = [...keyBytes.map((key) => key.toString('hex')), masterKey.toLowerCase()];
    const base64Secrets = keyBytes.map((key) => key.toString('base64'));
    const logsDir = path.join(appliance.dataDir, 'logs');
    const logFiles = readdirSync(logsDir).filter((name) => name.endsWith('.log'));
    expect(logFiles.length).toBeGreaterThan(0);
    const places: Array<[string, string]> = [
      ['keys status --json', statusJson.stdout + statusJson.stderr],
      ['keys status', statusHuman.stdout + statusHuman.stderr],
      ['keys sync --force', sync.stdout + sync.stderr],
      ['keys sync --json', syncJson.stdout + syncJson.stderr],
      ['appliance output', appliance.output()],
      ['flows.json', readFileSync(path.join(appliance.dataDir, 'flows.json'), 'utf8')],
      ...logFiles.map((name): [string, string] => [`logs/${name}`, readFileSync(path.join(logsDir, name), 'utf8')]),
    ];
    for (const [where, text] of places) {
      const lower = text.toLowerCase();
      for (const secret of hexSecrets) expect(lower.includes(secret), `${where} contains key material (hex)`).toBe(false);
      for (const secret of base64Secrets) expect(text.includes(secret), `${where} contains key material (base64)`).toBe(false);
    }
  });

  it('exits 3 when no gateway listens on the port', async () => {
    const port = await freeTcpPort();
    const viaPort = await runCli(['keys', 'status'], { AMI_HTTP_PORT: String(port) });
    expect(viaPort.status).toBe(3);
    expect(viaPort.stderr).toContain(`cannot reach http://127.0.0.1:${port}`);
    expect(viaPort.stdout).toBe('');
    const viaUrl = await runCli(['keys', 'sync', '--url', `http://127.0.0.1:${port}/`], {});
    expect(viaUrl.status).toBe(3);
    expect(viaUrl.stderr).toContain('cannot reach');
  });
});
