#!/usr/bin/env node
// Signs firmware images for the gateway: writes an image folder
// (manifest.json, manifest.sig, signer.pem, image.bin) in the format of
// firmware-images/README.md. Self-contained (node:crypto and node-forge), so
// it runs from a checkout without a build; the gateway's reader is
// src/firmware/, and test/unit/firmware-verify.test.ts checks that what this
// script writes verifies there. Keep the manifest rules below in step with
// src/firmware/manifest.ts.
//
//   node scripts/sign-firmware.mjs --image FILE --vendor NAME --target comm|metro \
//     --version V --models M1,M2 --compatible-with V1,V2 \
//     --key KEY.pem --cert CERT.pem [--chain INTERMEDIATE.pem ...] \
//     [--description TEXT] --out DIR
//
//   node scripts/sign-firmware.mjs --make-test-ca DIR
//       A new TEST ONLY root CA and firmware-signing certificate (and its key)
//       in DIR. The root's private key is not kept.
//
//   node scripts/sign-firmware.mjs --make-test-images DIR
//       (Re)creates the deterministic test images under DIR/test-images,
//       signed with DIR/test-ca.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import forge from 'node-forge';

const MANIFEST_FORMAT = 'ami-firmware-manifest/1';
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const VERSION_RE = /^[0-9]{1,6}(?:\.[0-9]{1,6}){1,3}$/;
const PRINTABLE_ASCII_RE = /^[\x20-\x7e]*$/;
const OID_KP_CODE_SIGNING = '1.3.6.1.5.5.7.3.3';
const DAY_MS = 24 * 60 * 60 * 1000;
const TEST_ONLY_BANNER = [
  'TEST ONLY - NOT FOR METERS. Test PKI of the ami-gateway repository (firmware-images/test-ca).',
  'Its keys are public: anything signed with them proves nothing. Never configure this root on a gateway in the field.',
].join('\n');

class UsageError extends Error {}

function fail(message, code = 1) {
  console.error(`sign-firmware: ${message}`);
  process.exit(code);
}

// ---------------------------------------------------------------------------
// Manifest (mirrors src/firmware/manifest.ts)

function compareVersions(a, b) {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

function uniqueList(items, what, check) {
  if (items.length === 0) throw new UsageError(`${what}: give at least one`);
  const seen = new Set();
  for (const item of items) {
    if (!check(item)) throw new UsageError(`${what}: ${JSON.stringify(item)} is not allowed`);
    if (seen.has(item)) throw new UsageError(`${what}: ${JSON.stringify(item)} is given twice`);
    seen.add(item);
  }
  return items;
}

function buildManifest({ vendor, target, models, version, compatibleWith, description }, image) {
  if (!NAME_RE.test(vendor)) throw new UsageError('--vendor: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit');
  if (target !== 'comm' && target !== 'metro') throw new UsageError('--target must be comm or metro');
  if (!VERSION_RE.test(version)) throw new UsageError('--version: 2 to 4 dot-separated numbers, e.g. 2.1.0');
  if (image.length === 0) throw new UsageError('--image is empty');
  const other = target === 'comm' ? 'metro' : 'comm';
  const manifest = {
    format: MANIFEST_FORMAT,
    vendor,
    target,
    models: [...uniqueList(models, '--models', (m) => NAME_RE.test(m))].sort(),
    version,
    size: image.length,
    sha256: createHash('sha256').update(image).digest('hex'),
    compatibleWith: { [other]: [...uniqueList(compatibleWith, '--compatible-with', (v) => VERSION_RE.test(v))].sort(compareVersions) },
  };
  if (description !== undefined) {
    if (description.length > 1024 || !PRINTABLE_ASCII_RE.test(description)) throw new UsageError('--description: printable ASCII, at most 1024 characters');
    manifest.description = description;
  }
  return manifest;
}

function sortKeysDeep(value) {
  if (Array.isArray(value)) return value.map(sortKeysDeep);
  if (typeof value === 'object' && value !== null) {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = sortKeysDeep(value[key]);
    return out;
  }
  return value;
}

/** Keys sorted, two-space indentation, final newline: the bytes the signature covers. */
function canonicalBytes(manifest) {
  return Buffer.from(`${JSON.stringify(sortKeysDeep(manifest), null, 2)}\n`, 'utf8');
}

// ---------------------------------------------------------------------------
// Signing

function pemCertificates(text, what) {
  const blocks = forge.pem.decode(text).filter((b) => b.type === 'CERTIFICATE');
  if (blocks.length === 0) throw new UsageError(`${what} holds no PEM certificate`);
  return blocks.map((b) => forge.pem.encode({ type: 'CERTIFICATE', body: b.body }, { maxline: 64 }).replace(/\r\n/g, '\n'));
}

function hasCodeSigning(certPem) {
  const cert = forge.pki.certificateFromPem(certPem);
  const eku = cert.getExtension('extKeyUsage');
  return eku !== null && eku !== undefined && eku.codeSigning === true;
}

/**
 * Writes one image folder and checks the signature it wrote with the
 * certificate's key (so a key that does not belong to the certificate is
 * caught here, not on the gateway).
 */
function signImageFolder({ imageBytes, fields, keyPem, certPem, chainPems, outDir }) {
  const manifest = buildManifest(fields, imageBytes);
  const manifestBytes = canonicalBytes(manifest);
  const [leafPem, ...extra] = pemCertificates(certPem, '--cert');
  if (extra.length > 0) throw new UsageError('--cert must hold the signer certificate only; give intermediates with --chain');
  const intermediates = chainPems.flatMap((pem, i) => pemCertificates(pem, `--chain ${i + 1}`));
  if (1 + intermediates.length > 4) throw new UsageError('at most 3 intermediates');
  const key = createPrivateKey(keyPem);
  if (key.asymmetricKeyType !== 'rsa') throw new UsageError('--key must be an RSA private key');
  const signature = sign('sha256', manifestBytes, key);
  const certKey = createPublicKey(forge.pki.publicKeyToPem(forge.pki.certificateFromPem(leafPem).publicKey));
  if (!verify('sha256', manifestBytes, certKey, signature)) throw new UsageError('--key is not the private key of --cert');
  if (!hasCodeSigning(leafPem)) {
    console.error('sign-firmware: warning: the certificate has no codeSigning extended key usage; the gateway will refuse it (BAD_KEY_USAGE)');
  }
  mkdirSync(outDir, { recursive: true });
  writeFileSync(path.join(outDir, 'manifest.json'), manifestBytes);
  writeFileSync(path.join(outDir, 'manifest.sig'), signature);
  writeFileSync(path.join(outDir, 'signer.pem'), [leafPem, ...intermediates].join(''));
  writeFileSync(path.join(outDir, 'image.bin'), imageBytes);
  return manifest;
}

// ---------------------------------------------------------------------------
// Test CA

function issue({ subjectCN, publicKeyPem, issuerCert, issuerKeyPem, notBefore, notAfter, ca, keyUsage, codeSigning }) {
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKeyPem);
  const serial = randomBytes(16);
  serial[0] = (serial[0] & 0x7f) | 0x40; // positive, minimal DER
  cert.serialNumber = serial.toString('hex');
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = notAfter;
  const subject = [
    { name: 'commonName', value: subjectCN },
    { name: 'organizationName', value: 'ami-gateway TEST PKI - NOT FOR METERS' },
  ];
  cert.setSubject(subject);
  cert.setIssuer(issuerCert === undefined ? subject : issuerCert.subject.attributes);
  const exts = [
    { name: 'basicConstraints', critical: true, cA: ca },
    { name: 'keyUsage', critical: true, ...keyUsage },
  ];
  if (codeSigning) exts.push({ name: 'extKeyUsage', codeSigning: true });
  exts.push({ name: 'subjectKeyIdentifier' });
  exts.push({ name: 'authorityKeyIdentifier', keyIdentifier: (issuerCert ?? cert).generateSubjectKeyIdentifier().getBytes() });
  cert.setExtensions(exts);
  cert.sign(forge.pki.privateKeyFromPem(issuerKeyPem), forge.md.sha256.create());
  return { cert, pem: forge.pki.certificateToPem(cert).replace(/\r\n/g, '\n') };
}

function rsaKeyPair() {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/**
 * A root valid for 30 years and a firmware signer (codeSigning,
 * digitalSignature, not a CA) valid for 20, both from a day ago: long enough
 * that the shipped test images do not start failing tests. A real signer
 * certificate should live a year or two.
 */
function makeTestCa(dir) {
  const now = Date.now();
  const notBefore = new Date(now - DAY_MS);
  const root = rsaKeyPair();
  const signer = rsaKeyPair();
  const rootCert = issue({
    subjectCN: 'ami-gateway TEST ONLY Firmware Root CA',
    publicKeyPem: root.publicKeyPem,
    issuerKeyPem: root.privateKeyPem,
    notBefore,
    notAfter: new Date(now + 30 * 365 * DAY_MS),
    ca: true,
    keyUsage: { keyCertSign: true, cRLSign: true },
    codeSigning: false,
  });
  const signerCert = issue({
    subjectCN: 'ami-gateway TEST ONLY Firmware Signing',
    publicKeyPem: signer.publicKeyPem,
    issuerCert: rootCert.cert,
    issuerKeyPem: root.privateKeyPem,
    notBefore,
    notAfter: new Date(now + 20 * 365 * DAY_MS),
    ca: false,
    keyUsage: { digitalSignature: true },
    codeSigning: true,
  });
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'root-ca.pem'), `${TEST_ONLY_BANNER}\n${rootCert.pem}`);
  writeFileSync(path.join(dir, 'firmware-signing.pem'), `${TEST_ONLY_BANNER}\n${signerCert.pem}`);
  writeFileSync(path.join(dir, 'firmware-signing.key.pem'), `${TEST_ONLY_BANNER}\n${signer.privateKeyPem}`);
  // The root key is dropped: a new signer means a new test CA and re-signed test images.
  console.log(`sign-firmware: TEST ONLY CA written to ${dir} (root-ca.pem, firmware-signing.pem, firmware-signing.key.pem)`);
}

// ---------------------------------------------------------------------------
// Test images

/**
 * The shipped test images: comm 2.1.0 and 2.2.0, metro 5.0.0 and 5.1.0.
 * comm 2.1.0 with metro 5.1.0 is incompatible (both manifests say so), so
 * taking a meter from 2.1.0/5.0.0 to 2.2.0/5.1.0 must update comm first.
 */
const TEST_IMAGES = [
  { target: 'comm', version: '2.1.0', size: 4096, compatibleWith: ['5.0.0'] },
  { target: 'comm', version: '2.2.0', size: 5120, compatibleWith: ['5.0.0', '5.1.0'] },
  { target: 'metro', version: '5.0.0', size: 3072, compatibleWith: ['2.1.0', '2.2.0'] },
  { target: 'metro', version: '5.1.0', size: 3584, compatibleWith: ['2.2.0'] },
];
const TEST_VENDOR = 'acme';
const TEST_MODELS = ['AMX-100', 'AMX-200'];

/** Deterministic bytes: a header naming the image, then a SHA-256 counter stream. */
function testImageBytes(target, version, size) {
  const header = Buffer.from(`AMI-GATEWAY TEST FIRMWARE ${target} ${version} - NOT FOR METERS\n`, 'ascii');
  const chunks = [header];
  let length = header.length;
  for (let i = 0; length < size; i++) {
    const block = createHash('sha256').update(`${target}-${version}:${i}`).digest();
    chunks.push(block);
    length += block.length;
  }
  return Buffer.concat(chunks).subarray(0, size);
}

function makeTestImages(dir) {
  const ca = path.join(dir, 'test-ca');
  const keyPem = readFileSync(path.join(ca, 'firmware-signing.key.pem'), 'utf8');
  const certPem = readFileSync(path.join(ca, 'firmware-signing.pem'), 'utf8');
  for (const image of TEST_IMAGES) {
    const outDir = path.join(dir, 'test-images', TEST_VENDOR, `${image.target}-${image.version}`);
    signImageFolder({
      imageBytes: testImageBytes(image.target, image.version, image.size),
      fields: {
        vendor: TEST_VENDOR,
        target: image.target,
        models: TEST_MODELS,
        version: image.version,
        compatibleWith: image.compatibleWith,
        description: 'TEST ONLY image for the gateway tests; not firmware, never send it to a meter',
      },
      keyPem,
      certPem,
      chainPems: [],
      outDir,
    });
    console.log(`sign-firmware: ${path.relative(process.cwd(), outDir) || outDir}`);
  }
}

// ---------------------------------------------------------------------------

function list(value) {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function main(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      image: { type: 'string' },
      vendor: { type: 'string' },
      target: { type: 'string' },
      version: { type: 'string' },
      models: { type: 'string' },
      'compatible-with': { type: 'string' },
      description: { type: 'string' },
      key: { type: 'string' },
      cert: { type: 'string' },
      chain: { type: 'string', multiple: true },
      out: { type: 'string' },
      'make-test-ca': { type: 'string' },
      'make-test-images': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(readFileSync(new URL(import.meta.url), 'utf8').split('\n').slice(1, 21).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
    return;
  }
  if (values['make-test-ca'] !== undefined) return makeTestCa(path.resolve(values['make-test-ca']));
  if (values['make-test-images'] !== undefined) return makeTestImages(path.resolve(values['make-test-images']));
  for (const option of ['image', 'vendor', 'target', 'version', 'models', 'compatible-with', 'key', 'cert', 'out']) {
    if (values[option] === undefined) throw new UsageError(`--${option} is required (--help for usage)`);
  }
  const manifest = signImageFolder({
    imageBytes: readFileSync(values.image),
    fields: {
      vendor: values.vendor,
      target: values.target,
      models: list(values.models),
      version: values.version,
      compatibleWith: list(values['compatible-with']),
      description: values.description,
    },
    keyPem: readFileSync(values.key, 'utf8'),
    certPem: readFileSync(values.cert, 'utf8'),
    chainPems: (values.chain ?? []).map((file) => readFileSync(file, 'utf8')),
    outDir: path.resolve(values.out),
  });
  console.log(`sign-firmware: ${manifest.target} ${manifest.version} (${manifest.size} bytes, sha256 ${manifest.sha256}) signed into ${values.out}`);
}

try {
  main(process.argv.slice(2));
} catch (err) {
  if (err instanceof UsageError || err?.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || err?.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') fail(err.message, 2);
  if (err?.code === 'ENOENT') fail(`${err.path}: no such file`);
  fail(err instanceof Error ? err.message : String(err));
}
