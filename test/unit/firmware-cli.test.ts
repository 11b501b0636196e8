import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { firmwareCommand, FirmwareUsageError, type FirmwareCommandContext } from '../../src/appliance/cli-firmware.js';
import { createTestPki } from '../../src/keys/pki.js';

const SHIPPED = path.resolve('firmware-images');
const IMAGES = path.join(SHIPPED, 'test-images');
const ROOT_PEM = readFileSync(path.join(SHIPPED, 'test-ca/root-ca.pem'), 'utf8');
const context: FirmwareCommandContext = { imagesDir: IMAGES, trustAnchorsPem: [ROOT_PEM] };
const IDS = ['acme/comm-2.1.0', 'acme/comm-2.2.0', 'acme/metro-5.0.0', 'acme/metro-5.1.0'];

const temps: string[] = [];
afterAll(() => {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});

/** A copy of the test images with one byte of comm 2.1.0's image flipped. */
function tamperedCopy(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'ami-fw-cli-'));
  temps.push(dir);
  cpSync(IMAGES, dir, { recursive: true });
  const file = path.join(dir, 'acme/comm-2.1.0/image.bin');
  const bytes = readFileSync(file);
  bytes[10] = (bytes[10] ?? 0) ^ 0x80;
  writeFileSync(file, bytes);
  return dir;
}

interface JsonReport {
  imagesDir: string;
  good: number;
  quarantined: number;
  images: { id: string; status: string; verified: boolean; target?: string; version?: string; models?: string[]; size?: number; sha256?: string; code?: string; reason?: string; signer?: { subject: string } }[];
}

describe('ami-gateway firmware list', () => {
  it('lists the images with target, models, version, size and SHA-256', async () => {
    const result = await firmwareCommand(['list'], context);
    expect(result.exitCode).toBe(0);
    const lines = result.output.split('\n');
    expect(lines[0]).toBe(`firmware images in ${IMAGES} (4 good, 0 quarantined)`);
    expect(lines[1]).toMatch(/^ID\s+STATUS\s+TARGET\s+VERSION\s+MODELS\s+SIZE\s+SHA-256$/);
    const sha = JSON.parse(readFileSync(path.join(IMAGES, 'acme/comm-2.1.0/manifest.json'), 'utf8')).sha256 as string;
    expect(lines[2]).toMatch(new RegExp(`^acme/comm-2\\.1\\.0\\s+good\\s+comm\\s+2\\.1\\.0\\s+AMX-100,AMX-200\\s+4096\\s+${sha}$`));
    expect(lines).toHaveLength(6);
  });

  it('--json', async () => {
    const result = await firmwareCommand(['list', '--json'], context);
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.output) as JsonReport;
    expect(report).toMatchObject({ imagesDir: IMAGES, good: 4, quarantined: 0 });
    expect(report.images.map((i) => i.id)).toEqual(IDS);
    expect(report.images[3]).toMatchObject({ id: 'acme/metro-5.1.0', status: 'good', verified: true, target: 'metro', version: '5.1.0', size: 3584, compatibleWith: { comm: ['2.2.0'] } });
    expect(report.images[3]?.signer?.subject).toBe('ami-gateway TEST ONLY Firmware Signing');
  });

  it('shows a quarantined image with its reason, and still exits 0', async () => {
    const result = await firmwareCommand(['list'], { ...context, imagesDir: tamperedCopy() });
    expect(result.exitCode).toBe(0);
    expect(result.output).toMatch(/\(3 good, 1 quarantined\)/);
    expect(result.output).toMatch(/acme\/comm-2\.1\.0\s+quarantined\s+comm\?\s+2\.1\.0\?/);
    expect(result.output).toMatch(/quarantined \(never offered.*\n {2}acme\/comm-2\.1\.0: HASH_MISMATCH: image\.bin has SHA-256 [0-9a-f]{64}; the manifest says [0-9a-f]{64}$/);
  });

  it('an empty folder', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'ami-fw-cli-'));
    temps.push(dir);
    expect(await firmwareCommand(['list'], { ...context, imagesDir: dir })).toEqual({ exitCode: 0, output: `no firmware images in ${dir}` });
  });
});

describe('ami-gateway firmware verify', () => {
  it('exits 0 when every image verifies', async () => {
    const result = await firmwareCommand(['verify'], context);
    expect(result.exitCode).toBe(0);
    const lines = result.output.split('\n');
    expect(lines.slice(0, 4).every((l) => l.startsWith('ok    acme/'))).toBe(true);
    expect(lines[0]).toMatch(/^ok {4}acme\/comm-2\.1\.0: comm 2\.1\.0, 4096 bytes, signed by "ami-gateway TEST ONLY Firmware Signing" \(certificate valid until 20\d\d-/);
    expect(lines[4]).toBe(`4 good, 0 quarantined in ${IMAGES}`);
  });

  it('exits 1 when an image is quarantined, listing the reason', async () => {
    const dir = tamperedCopy();
    const result = await firmwareCommand(['verify'], { ...context, imagesDir: dir });
    expect(result.exitCode).toBe(1);
    expect(result.output).toMatch(/^FAIL {2}acme\/comm-2\.1\.0: HASH_MISMATCH: /m);
    const json = await firmwareCommand(['verify', '--json'], { ...context, imagesDir: dir });
    expect(json.exitCode).toBe(1);
    const report = JSON.parse(json.output) as JsonReport;
    expect(report.quarantined).toBe(1);
    expect(report.images[0]).toMatchObject({ id: 'acme/comm-2.1.0', status: 'quarantined', verified: false, code: 'HASH_MISMATCH', version: '2.1.0' });
  });

  it('--image verifies one image: the others do not count', async () => {
    const dir = tamperedCopy();
    const good = await firmwareCommand(['verify', '--image', 'acme/comm-2.2.0'], { ...context, imagesDir: dir });
    expect(good.exitCode).toBe(0);
    expect(good.output.split('\n')).toHaveLength(2);
    const bad = await firmwareCommand(['verify', '--image', 'acme/comm-2.1.0/'], { ...context, imagesDir: dir });
    expect(bad.exitCode).toBe(1);
    expect(bad.output).toMatch(/HASH_MISMATCH/);
  });

  it('--image that does not exist: exit 1, naming the images there are', async () => {
    const result = await firmwareCommand(['verify', '--image', 'acme/comm-9.0.0'], context);
    expect(result.exitCode).toBe(1);
    expect(result.output).toMatch(/no image "acme\/comm-9\.0\.0" in .*\(images: acme\/comm-2\.1\.0, acme\/comm-2\.2\.0, acme\/metro-5\.0\.0, acme\/metro-5\.1\.0\)/);
  });

  it('another root, or none: every image fails as untrusted', async () => {
    const other = createTestPki({ commonNamePrefix: 'Utility', validDays: 30 });
    const result = await firmwareCommand(['verify'], { ...context, trustAnchorsPem: [other.rootCertPem] });
    expect(result.exitCode).toBe(1);
    expect(result.output.match(/UNTRUSTED_CHAIN/g)).toHaveLength(4);
    const none = await firmwareCommand(['verify'], { ...context, trustAnchorsPem: [] });
    expect(none.exitCode).toBe(1);
    expect(none.output).toMatch(/no trust anchor is configured/);
  });

  it('a clock past the signer\'s validity: CERT_EXPIRED', async () => {
    const result = await firmwareCommand(['verify', '--image', 'acme/metro-5.0.0'], { ...context, now: () => new Date('2099-01-01T00:00:00Z') });
    expect(result.exitCode).toBe(1);
    expect(result.output).toMatch(/CERT_EXPIRED: certificate "ami-gateway TEST ONLY Firmware Signing" expired at/);
  });

  it('a missing images folder: exit 1', async () => {
    const result = await firmwareCommand(['verify'], { ...context, imagesDir: path.join(tmpdir(), 'ami-fw-does-not-exist') });
    expect(result.exitCode).toBe(1);
    expect(result.output).toMatch(/^ami-gateway: BAD_REPOSITORY: the images folder .* cannot be read \(ENOENT\)/);
  });
});

describe('usage', () => {
  it.each([
    [[], /unknown firmware command "": expected list or verify/],
    [['rollout'], /unknown firmware command "rollout"/],
    [['list', '--image', 'x'], /--image applies to "firmware verify" only/],
    [['verify', '--bogus'], /bogus/],
    [['verify', 'extra'], /extra/],
    [['verify', '--image', ''], /--image needs an image id/],
  ])('%j', async (args, message) => {
    await expect(firmwareCommand(args, context)).rejects.toThrow(FirmwareUsageError);
    await expect(firmwareCommand(args, context)).rejects.toThrow(message);
  });
});
