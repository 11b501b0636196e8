import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FirmwareError, type FirmwareErrorCode } from '../../src/firmware/errors.js';
import { canonicalManifestBytes, parseManifest, type FirmwareManifest } from '../../src/firmware/manifest.js';
import { FirmwareRepository, openFirmwareRepository, type QuarantinedFirmwareImage } from '../../src/firmware/repository.js';
import { signImage, signManifestBytes, writeImageFolder, type ManifestFields, type SignerCredentials } from '../../src/firmware/sign.js';
import { sha256Hex, verifyImage, verifyManifest } from '../../src/firmware/verify.js';
import { createTestPki, generateRsaKeyPair, issueCertificate, type RsaKeyPairPem, type TestPki } from '../../src/keys/pki.js';

const run = promisify(execFile);
const DAY = 24 * 60 * 60 * 1000;
const CODE_SIGNING = '1.3.6.1.5.5.7.3.3';
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

const SHIPPED = path.resolve('firmware-images');
const SHIPPED_IMAGES = path.join(SHIPPED, 'test-images');
const TEST_ROOT_PEM = readFileSync(path.join(SHIPPED, 'test-ca/root-ca.pem'), 'utf8');
const TEST_SIGNER: SignerCredentials = {
  privateKeyPem: readFileSync(path.join(SHIPPED, 'test-ca/firmware-signing.key.pem'), 'utf8'),
  signerChainPem: readFileSync(path.join(SHIPPED, 'test-ca/firmware-signing.pem'), 'utf8'),
};
const SHIPPED_IDS = ['acme/comm-2.1.0', 'acme/comm-2.2.0', 'acme/metro-5.0.0', 'acme/metro-5.1.0'];

const temps: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'ami-fw-'));
  temps.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});

/** A temporary copy of the shipped test images. */
function copyOfShipped(): string {
  const dir = tempDir();
  cpSync(SHIPPED_IMAGES, dir, { recursive: true });
  return dir;
}

function fields(overrides: Partial<ManifestFields> = {}): ManifestFields {
  return { vendor: 'acme', target: 'comm', models: ['AMX-100'], version: '3.0.0', compatibleWith: ['5.0.0'], ...overrides };
}

const IMAGE = Buffer.from(Array.from({ length: 2000 }, (_, i) => (i * 31) & 0xff));

async function load(root: string, anchors: readonly string[] = [TEST_ROOT_PEM], now?: () => Date): Promise<FirmwareRepository> {
  return openFirmwareRepository({ root, trustAnchorsPem: anchors, ...(now ? { now } : {}) });
}

function quarantineOf(repository: FirmwareRepository, id: string): QuarantinedFirmwareImage {
  const image = repository.get(id);
  if (image?.status !== 'quarantined') throw new Error(`${id} is ${image?.status ?? 'missing'}, not quarantined`);
  return image;
}

async function refusal(promise: Promise<unknown>): Promise<FirmwareError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof FirmwareError) return err;
    throw err;
  }
  throw new Error('expected a FirmwareError');
}

/** A PKI of its own, with firmware signers of several kinds. */
let pki: TestPki;
let signerKey: RsaKeyPairPem;
let otherPki: TestPki;

interface SignerOptions {
  issuer?: TestPki;
  notBefore?: Date;
  notAfter?: Date;
  eku?: string[] | null;
  ca?: boolean;
}

function firmwareSigner(opts: SignerOptions = {}): SignerCredentials {
  const issuer = opts.issuer ?? pki;
  const now = Date.now();
  const certPem = issueCertificate({
    subjectCN: 'Utility Firmware Signing',
    publicKeyPem: signerKey.publicKeyPem,
    issuerCertPem: issuer.rootCertPem,
    issuerKeyPem: issuer.rootKeyPem,
    notBefore: opts.notBefore ?? new Date(now - DAY),
    notAfter: opts.notAfter ?? new Date(now + 365 * DAY),
    ca: opts.ca ?? false,
    keyUsage: opts.ca ? { digitalSignature: true, keyCertSign: true } : { digitalSignature: true },
    ...(opts.eku === null ? {} : { extKeyUsage: { oids: opts.eku ?? [CODE_SIGNING] } }),
  });
  return { privateKeyPem: signerKey.privateKeyPem, signerChainPem: certPem };
}

beforeAll(() => {
  pki = createTestPki({ commonNamePrefix: 'Utility' });
  otherPki = createTestPki({ commonNamePrefix: 'Elsewhere' });
  signerKey = generateRsaKeyPair();
});

describe('shipped test images', () => {
  it('all four verify against the shipped test CA', async () => {
    const repository = await load(SHIPPED_IMAGES);
    expect(repository.list().map((i) => [i.id, i.status])).toEqual(SHIPPED_IDS.map((id) => [id, 'good']));
    for (const image of repository.goodImages()) {
      expect(image.signer.subject).toBe('ami-gateway TEST ONLY Firmware Signing');
      // Years of validity left, so that the shipped images do not start failing tests.
      expect(new Date(image.signer.notAfter).getTime() - Date.now()).toBeGreaterThan(10 * 365 * DAY);
    }
  });

  it('verifyManifest and verifyImage accept each one directly', () => {
    for (const id of SHIPPED_IDS) {
      const dir = path.join(SHIPPED_IMAGES, id);
      const { manifest } = verifyManifest(
        readFileSync(path.join(dir, 'manifest.json')),
        readFileSync(path.join(dir, 'manifest.sig')),
        readFileSync(path.join(dir, 'signer.pem'), 'utf8'),
        { trustAnchorsPem: [TEST_ROOT_PEM], now: new Date() },
      );
      const image = readFileSync(path.join(dir, 'image.bin'));
      expect(() => verifyImage(manifest, image)).not.toThrow();
      expect(image.subarray(0, 26).toString()).toBe('AMI-GATEWAY TEST FIRMWARE ');
    }
  });

  it('the images folder root is not an image, and the test CA folder is not mistaken for one', async () => {
    const repository = await load(SHIPPED);
    expect(repository.list().map((i) => i.id)).toEqual(SHIPPED_IDS.map((id) => `test-images/${id}`));
  });

  it('are quarantined as untrusted by a gateway that trusts another root', async () => {
    const repository = await load(SHIPPED_IMAGES, [pki.rootCertPem]);
    expect(repository.goodImages()).toEqual([]);
    expect(repository.quarantinedImages().map((i) => i.code)).toEqual(['UNTRUSTED_CHAIN', 'UNTRUSTED_CHAIN', 'UNTRUSTED_CHAIN', 'UNTRUSTED_CHAIN']);
  });

  it('are all quarantined when no trust anchor is configured', async () => {
    const repository = await load(SHIPPED_IMAGES, []);
    const image = quarantineOf(repository, 'acme/comm-2.1.0');
    expect(image.code).toBe('UNTRUSTED_CHAIN');
    expect(image.reason).toMatch(/no trust anchor/);
  });
});

describe('a tampered or incomplete image is quarantined with its reason', () => {
  it('one byte flipped in image.bin: HASH_MISMATCH', async () => {
    const root = copyOfShipped();
    const file = path.join(root, 'acme/comm-2.1.0/image.bin');
    const bytes = readFileSync(file);
    bytes[1000] = (bytes[1000] ?? 0) ^ 0x01;
    writeFileSync(file, bytes);
    const repository = await load(root);
    const image = quarantineOf(repository, 'acme/comm-2.1.0');
    expect(image.code).toBe('HASH_MISMATCH');
    expect(image.reason).toContain(sha256Hex(bytes));
    // What the manifest claims is kept for the listing, marked unverified by the status.
    expect(image.claimed?.version).toBe('2.1.0');
    expect(repository.goodImages().map((i) => i.id)).toEqual(SHIPPED_IDS.filter((id) => id !== 'acme/comm-2.1.0'));
  });

  it('a byte more or less: SIZE_MISMATCH', async () => {
    const root = copyOfShipped();
    const longer = path.join(root, 'acme/comm-2.2.0/image.bin');
    writeFileSync(longer, Buffer.concat([readFileSync(longer), Buffer.from([0])]));
    const shorter = path.join(root, 'acme/metro-5.0.0/image.bin');
    writeFileSync(shorter, readFileSync(shorter).subarray(1));
    const repository = await load(root);
    expect(quarantineOf(repository, 'acme/comm-2.2.0').code).toBe('SIZE_MISMATCH');
    expect(quarantineOf(repository, 'acme/comm-2.2.0').reason).toMatch(/the manifest says 5120/);
    expect(quarantineOf(repository, 'acme/metro-5.0.0').code).toBe('SIZE_MISMATCH');
    expect(quarantineOf(repository, 'acme/metro-5.0.0').reason).toBe('image.bin is 3071 bytes; the manifest says 3072');
  });

  it('a manifest edited after signing (still canonical): BAD_SIGNATURE', async () => {
    const root = copyOfShipped();
    const file = path.join(root, 'acme/metro-5.1.0/manifest.json');
    const edited = parseManifest(readFileSync(file));
    edited.compatibleWith = { comm: ['2.1.0', '2.2.0'] };
    writeFileSync(file, canonicalManifestBytes(edited));
    const repository = await load(root);
    const image = quarantineOf(repository, 'acme/metro-5.1.0');
    expect(image.code).toBe('BAD_SIGNATURE');
    expect(image.reason).toMatch(/edited after signing/);
  });

  it('a manifest reformatted after signing: BAD_SIGNATURE', async () => {
    const root = copyOfShipped();
    const file = path.join(root, 'acme/metro-5.1.0/manifest.json');
    writeFileSync(file, JSON.stringify(JSON.parse(readFileSync(file, 'utf8'))));
    expect(quarantineOf(await load(root), 'acme/metro-5.1.0').code).toBe('BAD_SIGNATURE');
  });

  it('a signature swapped from another image, or truncated: BAD_SIGNATURE', async () => {
    const root = copyOfShipped();
    cpSync(path.join(root, 'acme/comm-2.2.0/manifest.sig'), path.join(root, 'acme/comm-2.1.0/manifest.sig'));
    const sig = path.join(root, 'acme/metro-5.0.0/manifest.sig');
    writeFileSync(sig, readFileSync(sig).subarray(0, 100));
    const repository = await load(root);
    expect(quarantineOf(repository, 'acme/comm-2.1.0').code).toBe('BAD_SIGNATURE');
    expect(quarantineOf(repository, 'acme/metro-5.0.0').code).toBe('BAD_SIGNATURE');
  });

  it.each([
    ['manifest.json', 'NO_MANIFEST'],
    ['manifest.sig', 'NO_SIGNATURE'],
    ['signer.pem', 'NO_SIGNATURE'],
    ['image.bin', 'MISSING_IMAGE'],
  ] as const)('without %s: %s', async (file, expected) => {
    const root = copyOfShipped();
    rmSync(path.join(root, 'acme/comm-2.1.0', file));
    const image = quarantineOf(await load(root), 'acme/comm-2.1.0');
    expect(image.code).toBe(expected);
    expect(image.reason).toBe(`${file} is missing`);
  });

  it('signer.pem that is not a certificate: BAD_CERTIFICATE', async () => {
    const root = copyOfShipped();
    writeFileSync(path.join(root, 'acme/comm-2.1.0/signer.pem'), TEST_SIGNER.privateKeyPem);
    writeFileSync(path.join(root, 'acme/comm-2.2.0/signer.pem'), 'not PEM at all');
    const repository = await load(root);
    expect(quarantineOf(repository, 'acme/comm-2.1.0').code).toBe('BAD_CERTIFICATE');
    expect(quarantineOf(repository, 'acme/comm-2.2.0').code).toBe('BAD_CERTIFICATE');
  });

  it('an image larger than the repository accepts: TOO_LARGE, without reading it', async () => {
    const repository = await openFirmwareRepository({ root: SHIPPED_IMAGES, trustAnchorsPem: [TEST_ROOT_PEM], maxImageBytes: 4096 });
    expect(quarantineOf(repository, 'acme/comm-2.2.0').code).toBe('TOO_LARGE');
    expect(repository.get('acme/comm-2.1.0')?.status).toBe('good');
  });

  it('a missing images folder: BAD_REPOSITORY', async () => {
    const error = await refusal(load(path.join(tempDir(), 'nowhere')));
    expect(error.code).toBe('BAD_REPOSITORY');
  });
});

describe('the signer', () => {
  async function signedWith(signer: SignerCredentials, anchors: readonly string[] = [pki.rootCertPem], extra: Partial<ManifestFields> = {}): Promise<FirmwareRepository> {
    const root = tempDir();
    await writeImageFolder(path.join(root, 'acme/comm-3.0.0'), signImage(fields(extra), IMAGE, signer));
    return load(root, anchors);
  }

  it('a code-signing certificate from the configured root: good', async () => {
    const repository = await signedWith(firmwareSigner());
    const image = repository.get('acme/comm-3.0.0');
    expect(image?.status).toBe('good');
    if (image?.status === 'good') {
      expect(image.signer.subject).toBe('Utility Firmware Signing');
      expect(image.manifest.sha256).toBe(sha256Hex(IMAGE));
    }
  });

  it('a certificate from another CA: UNTRUSTED_CHAIN', async () => {
    const image = quarantineOf(await signedWith(firmwareSigner({ issuer: otherPki })), 'acme/comm-3.0.0');
    expect(image.code).toBe('UNTRUSTED_CHAIN');
  });

  it('the right root, but an expired signing certificate: CERT_EXPIRED', async () => {
    const now = Date.now();
    const image = quarantineOf(await signedWith(firmwareSigner({ notBefore: new Date(now - 400 * DAY), notAfter: new Date(now - DAY) })), 'acme/comm-3.0.0');
    expect(image.code).toBe('CERT_EXPIRED');
    expect(image.reason).toMatch(/Utility Firmware Signing.*expired at/);
  });

  it('a signing certificate not valid yet: CERT_NOT_YET_VALID', async () => {
    const now = Date.now();
    const image = quarantineOf(await signedWith(firmwareSigner({ notBefore: new Date(now + DAY), notAfter: new Date(now + 400 * DAY) })), 'acme/comm-3.0.0');
    expect(image.code).toBe('CERT_NOT_YET_VALID');
  });

  it('a certificate without extendedKeyUsage: BAD_KEY_USAGE', async () => {
    const image = quarantineOf(await signedWith(firmwareSigner({ eku: null })), 'acme/comm-3.0.0');
    expect(image.code).toBe('BAD_KEY_USAGE');
    expect(image.reason).toMatch(/codeSigning/);
  });

  it('the HES key-management certificate (no codeSigning): BAD_KEY_USAGE', async () => {
    const image = quarantineOf(await signedWith({ privateKeyPem: pki.kmKeyPem, signerChainPem: pki.kmCertPem }), 'acme/comm-3.0.0');
    expect(image.code).toBe('BAD_KEY_USAGE');
  });

  it('a TLS server certificate: BAD_KEY_USAGE', async () => {
    const image = quarantineOf(await signedWith(firmwareSigner({ eku: [SERVER_AUTH] })), 'acme/comm-3.0.0');
    expect(image.code).toBe('BAD_KEY_USAGE');
    expect(image.reason).toMatch(/does not allow signing firmware/);
  });

  it('a CA certificate as signer: BAD_KEY_USAGE', async () => {
    expect(quarantineOf(await signedWith(firmwareSigner({ ca: true })), 'acme/comm-3.0.0').code).toBe('BAD_KEY_USAGE');
  });

  it('signed with a key that is not the certificate\'s: BAD_SIGNATURE', async () => {
    const signer = { ...firmwareSigner(), privateKeyPem: generateRsaKeyPair().privateKeyPem };
    expect(quarantineOf(await signedWith(signer), 'acme/comm-3.0.0').code).toBe('BAD_SIGNATURE');
  });

  it('a chain through an intermediate CA in signer.pem: good', async () => {
    const now = Date.now();
    const intermediateKey = generateRsaKeyPair();
    const intermediatePem = issueCertificate({
      subjectCN: 'Utility Firmware Issuing CA',
      publicKeyPem: intermediateKey.publicKeyPem,
      issuerCertPem: pki.rootCertPem,
      issuerKeyPem: pki.rootKeyPem,
      notBefore: new Date(now - DAY),
      notAfter: new Date(now + 900 * DAY),
      ca: true,
      pathLen: 0,
      keyUsage: { keyCertSign: true },
    });
    const leafPem = issueCertificate({
      subjectCN: 'Utility Firmware Signing 2',
      publicKeyPem: signerKey.publicKeyPem,
      issuerCertPem: intermediatePem,
      issuerKeyPem: intermediateKey.privateKeyPem,
      notBefore: new Date(now - DAY),
      notAfter: new Date(now + 365 * DAY),
      ca: false,
      keyUsage: { digitalSignature: true },
      extKeyUsage: { oids: [CODE_SIGNING] },
    });
    const good = await signedWith({ privateKeyPem: signerKey.privateKeyPem, signerChainPem: leafPem + intermediatePem });
    expect(good.get('acme/comm-3.0.0')?.status).toBe('good');
    // Without the intermediate the chain does not reach the root.
    const partial = await signedWith({ privateKeyPem: signerKey.privateKeyPem, signerChainPem: leafPem });
    expect(quarantineOf(partial, 'acme/comm-3.0.0').code).toBe('UNTRUSTED_CHAIN');
  });

  it('checks the chain before the signature, and the signature before the manifest', () => {
    const signer = firmwareSigner({ issuer: otherPki });
    const signed = signImage(fields(), IMAGE, signer);
    const opts = { trustAnchorsPem: [pki.rootCertPem], now: new Date() };
    const codeOf = (f: () => unknown): FirmwareErrorCode | 'OK' => {
      try {
        f();
        return 'OK';
      } catch (err) {
        return (err as FirmwareError).code;
      }
    };
    // Untrusted signer and a bad signature: untrusted wins.
    expect(codeOf(() => verifyManifest(signed.manifestBytes, Buffer.alloc(256), signer.signerChainPem, opts))).toBe('UNTRUSTED_CHAIN');
    // A trusted signer: a manifest edited after signing is BAD_SIGNATURE, however malformed the edit.
    const trusted = firmwareSigner();
    const garbage = Buffer.from('{"not": "a manifest"}');
    const good = signImage(fields(), IMAGE, trusted);
    expect(codeOf(() => verifyManifest(garbage, good.signature, trusted.signerChainPem, opts))).toBe('BAD_SIGNATURE');
    // A malformed manifest that the trusted signer did sign: BAD_MANIFEST.
    expect(codeOf(() => verifyManifest(garbage, signManifestBytes(garbage, trusted.privateKeyPem), trusted.signerChainPem, opts))).toBe('BAD_MANIFEST');
  });

  it('fuzz: arbitrary signature and signer.pem bytes are refused with a FirmwareError', () => {
    const signed = signImage(fields(), IMAGE, firmwareSigner());
    const opts = { trustAnchorsPem: [pki.rootCertPem], now: new Date() };
    const pemLike = fc.oneof(
      fc.string({ maxLength: 300 }),
      fc.uint8Array({ maxLength: 300 }).map((b) => `-----BEGIN CERTIFICATE-----\n${Buffer.from(b).toString('base64')}\n-----END CERTIFICATE-----\n`),
      fc.constant(signed.signerChainPem),
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), pemLike, (sig, pem) => {
        try {
          verifyManifest(signed.manifestBytes, sig, pem, opts);
        } catch (err) {
          expect(err).toBeInstanceOf(FirmwareError);
          return;
        }
        throw new Error('an arbitrary signature verified');
      }),
      { numRuns: 300 },
    );
  });
});

describe('duplicates', () => {
  it('two good images for the same target, version and model are both quarantined', async () => {
    const root = tempDir();
    const signer = firmwareSigner();
    await writeImageFolder(path.join(root, 'a/comm-3.0.0'), signImage(fields({ models: ['AMX-100', 'AMX-200'] }), IMAGE, signer));
    await writeImageFolder(path.join(root, 'b/comm-3.0.0'), signImage(fields({ models: ['AMX-200'] }), IMAGE.subarray(1), signer));
    await writeImageFolder(path.join(root, 'c/comm-3.0.0'), signImage(fields({ models: ['AMX-300'] }), IMAGE, signer));
    const repository = await load(root, [pki.rootCertPem]);
    expect(quarantineOf(repository, 'a/comm-3.0.0').code).toBe('DUPLICATE_IMAGE');
    expect(quarantineOf(repository, 'a/comm-3.0.0').reason).toMatch(/also offered by b\/comm-3\.0\.0/);
    expect(quarantineOf(repository, 'b/comm-3.0.0').code).toBe('DUPLICATE_IMAGE');
    // Another model: no clash.
    expect(repository.get('c/comm-3.0.0')?.status).toBe('good');
  });
});

describe('verifyBeforeSend', () => {
  it('returns the verified bytes of a good image', async () => {
    const repository = await load(SHIPPED_IMAGES);
    const toSend = await repository.verifyBeforeSend('acme/metro-5.0.0');
    expect(toSend.bytes.equals(readFileSync(path.join(SHIPPED_IMAGES, 'acme/metro-5.0.0/image.bin')))).toBe(true);
    expect(toSend.manifest.version).toBe('5.0.0');
    expect(sha256Hex(toSend.bytes)).toBe(toSend.manifest.sha256);
  });

  it('refuses a quarantined image with its reason, and an unknown one', async () => {
    const root = copyOfShipped();
    const file = path.join(root, 'acme/comm-2.1.0/image.bin');
    writeFileSync(file, Buffer.alloc(4096));
    const repository = await load(root);
    const error = await refusal(repository.verifyBeforeSend('acme/comm-2.1.0'));
    expect(error.code).toBe('QUARANTINED');
    expect(error.message).toMatch(/HASH_MISMATCH/);
    expect(error.imageId).toBe('acme/comm-2.1.0');
    expect((await refusal(repository.verifyBeforeSend('acme/comm-9.9.9'))).code).toBe('UNKNOWN_IMAGE');
  });

  it('catches an image replaced on disk after load, and quarantines it', async () => {
    const root = copyOfShipped();
    const repository = await load(root);
    expect(repository.get('acme/comm-2.2.0')?.status).toBe('good');
    const file = path.join(root, 'acme/comm-2.2.0/image.bin');
    const bytes = readFileSync(file);
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 0xff;
    writeFileSync(file, bytes);
    const error = await refusal(repository.verifyBeforeSend('acme/comm-2.2.0'));
    expect(error.code).toBe('HASH_MISMATCH');
    expect(quarantineOf(repository, 'acme/comm-2.2.0').code).toBe('HASH_MISMATCH');
    expect(repository.goodImages().map((i) => i.id)).not.toContain('acme/comm-2.2.0');
    // A second attempt is refused as quarantined, until the next load.
    expect((await refusal(repository.verifyBeforeSend('acme/comm-2.2.0'))).code).toBe('QUARANTINED');
    writeFileSync(file, readFileSync(path.join(SHIPPED_IMAGES, 'acme/comm-2.2.0/image.bin')));
    await repository.load();
    expect((await repository.verifyBeforeSend('acme/comm-2.2.0')).manifest.version).toBe('2.2.0');
  });

  it('catches an image folder removed after load', async () => {
    const root = copyOfShipped();
    const repository = await load(root);
    rmSync(path.join(root, 'acme/metro-5.1.0/image.bin'));
    expect((await refusal(repository.verifyBeforeSend('acme/metro-5.1.0'))).code).toBe('MISSING_IMAGE');
  });

  it('refuses a manifest replaced after load, even by a validly signed one: CHANGED_ON_DISK', async () => {
    const root = copyOfShipped();
    const repository = await load(root);
    const dir = path.join(root, 'acme/comm-2.1.0');
    const old: FirmwareManifest = parseManifest(readFileSync(path.join(dir, 'manifest.json')));
    const resigned = signImage({ ...old, compatibleWith: ['5.0.0', '5.1.0'], description: 're-signed' }, readFileSync(path.join(dir, 'image.bin')), TEST_SIGNER);
    await writeImageFolder(dir, resigned);
    const error = await refusal(repository.verifyBeforeSend('acme/comm-2.1.0'));
    expect(error.code).toBe('CHANGED_ON_DISK');
    await repository.load();
    expect(repository.get('acme/comm-2.1.0')?.status).toBe('good');
  });

  it('checks the certificate at send time: a signer that expired since load is refused', async () => {
    const now = Date.now();
    const root = tempDir();
    await writeImageFolder(path.join(root, 'acme/comm-3.0.0'), signImage(fields(), IMAGE, firmwareSigner({ notAfter: new Date(now + 2 * DAY) })));
    let clock = new Date(now);
    const repository = await load(root, [pki.rootCertPem], () => clock);
    expect((await repository.verifyBeforeSend('acme/comm-3.0.0')).bytes.length).toBe(IMAGE.length);
    clock = new Date(now + 3 * DAY);
    expect((await refusal(repository.verifyBeforeSend('acme/comm-3.0.0'))).code).toBe('CERT_EXPIRED');
  });
});

describe('scripts/sign-firmware.mjs', () => {
  const script = path.resolve('scripts/sign-firmware.mjs');

  it('signs an image that the gateway verifies', async () => {
    const work = tempDir();
    const imageFile = path.join(work, 'build.bin');
    writeFileSync(imageFile, IMAGE);
    const out = path.join(work, 'images/acme/metro-5.2.0');
    await run(process.execPath, [
      script,
      ...['--image', imageFile, '--vendor', 'acme', '--target', 'metro', '--version', '5.2.0'],
      ...['--models', 'AMX-200,AMX-100', '--compatible-with', '2.2.0,2.10.0', '--description', 'Metrology 5.2.0'],
      ...['--key', path.join(SHIPPED, 'test-ca/firmware-signing.key.pem'), '--cert', path.join(SHIPPED, 'test-ca/firmware-signing.pem'), '--out', out],
    ]);
    const repository = await load(path.join(work, 'images'));
    const image = repository.get('acme/metro-5.2.0');
    expect(image?.status).toBe('good');
    if (image?.status === 'good') {
      expect(image.manifest).toEqual({
        format: 'ami-firmware-manifest/1',
        vendor: 'acme',
        target: 'metro',
        models: ['AMX-100', 'AMX-200'],
        version: '5.2.0',
        size: IMAGE.length,
        sha256: sha256Hex(IMAGE),
        compatibleWith: { comm: ['2.2.0', '2.10.0'] },
        description: 'Metrology 5.2.0',
      });
    }
    // The same manifest written by src/firmware/sign.ts: byte for byte.
    const ours = signImage({ vendor: 'acme', target: 'metro', models: ['AMX-200', 'AMX-100'], version: '5.2.0', compatibleWith: ['2.2.0', '2.10.0'], description: 'Metrology 5.2.0' }, IMAGE, TEST_SIGNER);
    expect(readFileSync(path.join(out, 'manifest.json')).equals(ours.manifestBytes)).toBe(true);
    // PKCS#1 v1.5 is deterministic: the same signature too.
    expect(readFileSync(path.join(out, 'manifest.sig')).equals(ours.signature)).toBe(true);
  });

  it('refuses bad arguments with exit code 2', async () => {
    const work = tempDir();
    const error = await run(process.execPath, [script, '--image', 'x', '--vendor', 'acme', '--target', 'radio']).then(
      () => undefined,
      (err: { code?: number; stderr?: string }) => err,
    );
    expect(error?.code).toBe(2);
    expect(error?.stderr).toMatch(/--version is required/);
    const imageFile = path.join(work, 'build.bin');
    writeFileSync(imageFile, IMAGE);
    const wrongKey = path.join(work, 'key.pem');
    writeFileSync(wrongKey, generateRsaKeyPair().privateKeyPem);
    const mismatch = await run(process.execPath, [
      script,
      ...['--image', imageFile, '--vendor', 'acme', '--target', 'comm', '--version', '2.3.0', '--models', 'AMX-100', '--compatible-with', '5.0.0'],
      ...['--key', wrongKey, '--cert', path.join(SHIPPED, 'test-ca/firmware-signing.pem'), '--out', path.join(work, 'out')],
    ]).then(
      () => undefined,
      (err: { code?: number; stderr?: string }) => err,
    );
    expect(mismatch?.code).toBe(2);
    expect(mismatch?.stderr).toMatch(/not the private key of --cert/);
  });

  it('--make-test-ca and --make-test-images regenerate a test tree that verifies', async () => {
    const work = tempDir();
    await run(process.execPath, [script, '--make-test-ca', path.join(work, 'test-ca')]);
    await run(process.execPath, [script, '--make-test-images', work]);
    const root = readFileSync(path.join(work, 'test-ca/root-ca.pem'), 'utf8');
    expect(root).toMatch(/^TEST ONLY - NOT FOR METERS/);
    const repository = await load(path.join(work, 'test-images'), [root]);
    expect(repository.list().map((i) => [i.id, i.status])).toEqual(SHIPPED_IDS.map((id) => [id, 'good']));
    // The images are deterministic: only the signature and signer differ from the shipped ones.
    for (const id of SHIPPED_IDS) {
      expect(readFileSync(path.join(work, 'test-images', id, 'image.bin')).equals(readFileSync(path.join(SHIPPED_IMAGES, id, 'image.bin')))).toBe(true);
      expect(readFileSync(path.join(work, 'test-images', id, 'manifest.json')).equals(readFileSync(path.join(SHIPPED_IMAGES, id, 'manifest.json')))).toBe(true);
    }
    // And the new CA does not vouch for the shipped images.
    expect((await load(SHIPPED_IMAGES, [root])).goodImages()).toEqual([]);
  });
});

it('FirmwareRepository.load can be called again and picks up new images', async () => {
  const root = tempDir();
  const repository = new FirmwareRepository({ root, trustAnchorsPem: [TEST_ROOT_PEM] });
  expect(await repository.load()).toEqual([]);
  await writeImageFolder(path.join(root, 'acme/comm-3.0.0'), signImage(fields(), IMAGE, TEST_SIGNER));
  expect((await repository.load()).map((i) => i.status)).toEqual(['good']);
});
