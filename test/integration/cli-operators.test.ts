import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { base32Decode, totp } from '../../src/relay/totp.js';
import { CLI, REPO_ROOT } from '../helpers/appliance.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDataDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-cli-operators-'));
  dirs.push(dir);
  return path.join(dir, 'data');
}

function cli(dataDir: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, AMI_DATA_DIR: dataDir };
  delete env.AMI_CREDENTIAL_SECRET;
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'operators', ...args], { cwd: REPO_ROOT, env, encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? Number((err as NodeJS.ErrnoException & { code?: unknown }).code) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('ami-gateway operators', () => {
  it('adds an operator (secret shown once), lists without it, verifies a code once', async () => {
    const dataDir = tempDataDir();
    const added = await cli(dataDir, ['add', '--name', 'alice', '--role', 'field-technician']);
    expect(added.code).toBe(0);
    const secretBase32 = /TOTP secret: ([A-Z2-7]+)/.exec(added.stdout)?.[1];
    expect(secretBase32).toBeDefined();
    expect(added.stdout).toContain(`otpauth://totp/ami-gateway:alice?secret=${secretBase32}&`);
    expect(added.stdout).toMatch(/shown this once/);

    const listed = await cli(dataDir, ['list']);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/alice\s+field-technician\s+enabled/);
    const listedJson = await cli(dataDir, ['list', '--json']);
    expect(JSON.parse(listedJson.stdout)).toEqual([expect.objectContaining({ name: 'alice', role: 'field-technician', disabled: false })]);
    const file = path.join(dataDir, 'operators.json');
    for (const text of [listed.stdout, listedJson.stdout, readFileSync(file, 'utf8')]) expect(text).not.toContain(secretBase32!);
    expect(statSync(file).mode & 0o777).toBe(0o600);

    const code = totp(base32Decode(secretBase32!), Date.now());
    const ok = await cli(dataDir, ['verify', '--name', 'alice', '--totp', code]);
    expect(ok).toMatchObject({ code: 0 });
    expect(ok.stdout).toMatch(/^ok: operator alice \(field-technician\)/);
    const again = await cli(dataDir, ['verify', '--name', 'alice', '--totp', code, '--json']);
    expect(again.code).toBe(1);
    expect(JSON.parse(again.stdout)).toEqual({ ok: false, code: 'REPLAYED_CODE', operator: 'alice' });
    for (const out of [ok, again]) expect(`${out.stdout}${out.stderr}`).not.toContain(code);

    const wrong = await cli(dataDir, ['verify', '--name', 'alice', '--totp', code === '000000' ? '111111' : '000000']);
    expect(wrong.code).toBe(1);
    expect(wrong.stdout).toMatch(/refused: (BAD_CODE|REPLAYED_CODE)/);
    const unknown = await cli(dataDir, ['verify', '--name', 'bob', '--totp', '123456']);
    expect(unknown.code).toBe(1);
    expect(unknown.stdout).toMatch(/refused: UNKNOWN_OPERATOR/);
  });

  it('prints JSON with the secret at add, refuses duplicates, disables and removes', async () => {
    const dataDir = tempDataDir();
    const added = await cli(dataDir, ['add', '--name', 'bob', '--role', 'utility-administrator', '--json']);
    expect(added.code).toBe(0);
    const body = JSON.parse(added.stdout) as { name: string; role: string; secretBase32: string; uri: string };
    expect(body).toMatchObject({ name: 'bob', role: 'utility-administrator', secretBase32: expect.stringMatching(/^[A-Z2-7]{32}$/) });
    expect(new URL(body.uri).searchParams.get('secret')).toBe(body.secretBase32);

    const duplicate = await cli(dataDir, ['add', '--name', 'bob', '--role', 'field-technician']);
    expect(duplicate.code).toBe(1);
    expect(duplicate.stderr).toMatch(/DUPLICATE/);

    expect((await cli(dataDir, ['disable', '--name', 'bob'])).code).toBe(0);
    const disabled = await cli(dataDir, ['verify', '--name', 'bob', '--totp', totp(base32Decode(body.secretBase32), Date.now())]);
    expect(disabled.code).toBe(1);
    expect(disabled.stdout).toMatch(/refused: DISABLED/);

    expect((await cli(dataDir, ['remove', '--name', 'bob'])).code).toBe(0);
    expect((await cli(dataDir, ['list'])).stdout).toMatch(/^no operators/);
    expect((await cli(dataDir, ['remove', '--name', 'bob'])).code).toBe(1);
  });

  it('exits 2 on usage errors', async () => {
    const dataDir = tempDataDir();
    for (const args of [
      ['add', '--name', 'carol', '--role', 'admin'],
      ['add', '--role', 'field-technician'],
      ['add', '--name', 'no spaces', '--role', 'field-technician'],
      ['verify', '--name', 'carol'],
      ['list', '--name', 'carol'],
      ['rename'],
      ['add', '--name', 'carol', '--role', 'field-technician', '--bogus'],
    ]) {
      const result = await cli(dataDir, args);
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr).toMatch(/^ami-gateway: /);
    }
  });
});
