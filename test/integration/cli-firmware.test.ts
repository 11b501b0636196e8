import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, REPO_ROOT } from '../helpers/appliance.js';

/** `ami-gateway firmware list|verify` through the built CLI, on the shipped test images and test CA. */
const IMAGES = path.join(REPO_ROOT, 'firmware-images', 'test-images');
const ROOT_CA = path.join(REPO_ROOT, 'firmware-images', 'test-ca', 'root-ca.pem');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'ami-fw-cli-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function runCli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('AMI_')));
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'firmware', ...args], { cwd: REPO_ROOT, timeout: 30_000, env: { ...base, ...env } }, (error, stdout, stderr) => {
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe('ami-gateway firmware (built CLI)', () => {
  it('lists and verifies the shipped test images against the test CA', async () => {
    const env = { AMI_FIRMWARE_DIR: IMAGES, AMI_FIRMWARE_TRUST_ANCHORS: ROOT_CA };
    const listed = await runCli(['list', '--json'], env);
    expect(listed.code, listed.stderr).toBe(0);
    const images = JSON.parse(listed.stdout) as unknown;
    expect(JSON.stringify(images)).toContain('acme/comm-2.1.0');
    const verified = await runCli(['verify'], env);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
  });

  it('exits 1 naming the reason for a tampered image, and 2 without trust anchors', async () => {
    const copy = path.join(scratch, 'images');
    cpSync(IMAGES, copy, { recursive: true });
    const image = path.join(copy, 'acme', 'metro-5.0.0', 'image.bin');
    const bytes = readFileSync(image);
    bytes[10] = (bytes[10] ?? 0) ^ 0xff;
    writeFileSync(image, bytes);
    const verified = await runCli(['verify', '--images', copy], { AMI_FIRMWARE_TRUST_ANCHORS: ROOT_CA });
    expect(verified.code).toBe(1);
    expect(verified.stdout + verified.stderr).toMatch(/HASH_MISMATCH/);
    const untrusted = await runCli(['list'], { AMI_FIRMWARE_DIR: IMAGES });
    expect(untrusted.code).toBe(2);
    expect(untrusted.stderr).toContain('AMI_FIRMWARE_TRUST_ANCHORS');
  });
});
