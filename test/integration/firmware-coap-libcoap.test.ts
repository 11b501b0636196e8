import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MeshEndpoint } from '../../src/coap/endpoint.js';
import { FirmwareError, openFirmwareRepository, type FirmwareRepository } from '../../src/firmware/index.js';
import { FirmwareResource } from '../../src/mesh/firmware-resource.js';
import { REPO_ROOT } from '../helpers/appliance.js';

/**
 * Firmware images served over the mesh (issue 9) to libcoap's
 * coap-client-notls, an independent CoAP peer: it downloads an image
 * block-wise (RFC 7959 Block2) in the block size it chooses, and the bytes it
 * wrote hash to the manifest's SHA-256. A quarantined image is never sent.
 * coap-client-notls exits 0 whatever happened, so the tests look at the file
 * it wrote and at what it printed.
 */
const hasLibcoap = spawnSync('which', ['coap-client-notls'], { stdio: 'ignore' }).status === 0;
if (!hasLibcoap && process.env.CI) throw new Error('firmware-coap-libcoap cannot run in CI: coap-client-notls (libcoap3-bin) is not installed');

const IMAGES = path.join(REPO_ROOT, 'firmware-images', 'test-images');
const ROOT_CA = readFileSync(path.join(REPO_ROOT, 'firmware-images', 'test-ca', 'root-ca.pem'), 'utf8');

function coapClient(args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('coap-client-notls', args, { timeout: 60_000 }, (_error, stdout, stderr) => resolve({ stdout, stderr }));
  });
}

describe.skipIf(!hasLibcoap)(`firmware over CoAP block-wise to libcoap${hasLibcoap ? '' : ' (SKIPPED: coap-client-notls is not installed)'}`, () => {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'ami-fw-coap-'));
  let endpoint: MeshEndpoint;
  let repository: FirmwareRepository;
  const refused: Array<[string, string]> = [];

  beforeAll(async () => {
    // A copy of the test images, one of them tampered with: it must be quarantined, never sent.
    cpSync(IMAGES, path.join(scratch, 'images'), { recursive: true });
    const tampered = path.join(scratch, 'images', 'acme', 'metro-5.1.0', 'image.bin');
    const bytes = readFileSync(tampered);
    bytes[0] = (bytes[0] ?? 0) ^ 0x01;
    writeFileSync(tampered, bytes);
    repository = await openFirmwareRepository({ root: path.join(scratch, 'images'), trustAnchorsPem: [ROOT_CA] });
    endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 2_000, retryAfterSeconds: 30 });
    endpoint.addResource(new FirmwareResource(repository, { onRefused: (id, err: FirmwareError) => refused.push([id, err.code]) }));
    await endpoint.start();
  });

  afterAll(async () => {
    await endpoint.stop();
    rmSync(scratch, { recursive: true, force: true });
  });

  const url = (p: string): string => `coap://[::1]:${endpoint.port}${p}`;

  it.each([64, 1024])('downloads an image in %i-byte blocks and its SHA-256 matches the manifest', async (blockSize) => {
    const image = repository.get('acme/comm-2.1.0');
    expect(image?.status).toBe('good');
    const out = path.join(scratch, `comm-2.1.0-${blockSize}.bin`);
    const run = await coapClient(['-m', 'get', '-b', String(blockSize), '-B', '30', '-o', out, url('/fw/acme/comm-2.1.0')]);
    expect(existsSync(out), `coap-client-notls wrote nothing: ${run.stdout}${run.stderr}`).toBe(true);
    const downloaded = readFileSync(out);
    expect(downloaded.length).toBe(image!.status === 'good' ? image!.manifest.size : -1);
    expect(createHash('sha256').update(downloaded).digest('hex')).toBe(image!.status === 'good' ? image!.manifest.sha256 : '');
    // More than one block really went over the wire.
    expect(downloaded.length).toBeGreaterThan(blockSize);
  });

  it('lists the good images in link format, and never sends the quarantined one', async () => {
    const listing = await coapClient(['-m', 'get', '-B', '10', url('/fw')]);
    expect(listing.stdout).toContain('</fw/acme/comm-2.1.0>;rt="firmware.comm";v="2.1.0"');
    expect(listing.stdout).not.toContain('metro-5.1.0');
    expect(repository.get('acme/metro-5.1.0')).toMatchObject({ status: 'quarantined', code: 'HASH_MISMATCH' });

    const out = path.join(scratch, 'metro-5.1.0.bin');
    const run = await coapClient(['-m', 'get', '-B', '10', '-o', out, url('/fw/acme/metro-5.1.0')]);
    expect(`${run.stdout}${run.stderr}`).toMatch(/4\.04/);
    expect(existsSync(out) ? readFileSync(out).length : 0).toBe(0);
    expect(refused).toContainEqual(['acme/metro-5.1.0', 'QUARANTINED']);
  });
});
