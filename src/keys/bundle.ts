/**
 * Key bundles: the signed, encrypted container in which the HES key-management
 * system (KMS) hands per-meter DLMS keys to one gateway. The wire format,
 * the checks and their order are specified for HES vendors in
 * docs/key-bundles.md; keep the two in step.
 *
 * Division of labour: `certificate-chain.ts` parses the X.509 certificates and
 * checks the signer chain (with node-forge), shared with the signed HES
 * commands; node:crypto does the RSA work on the bundle itself (RSASSA-PSS,
 * RSA-OAEP) and hashing, and `dlms/keywrap.ts` does RFC 3394 through OpenSSL.
 */
import {
  constants,
  createHash,
  createPrivateKey,
  createPublicKey,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import type forge from 'node-forge';
import { cborDecode, cborEncode } from '../coap/cbor.js';
import { unwrapKey, wrapKey } from '../dlms/keywrap.js';
import {
  CertificateChainError,
  certificateDerFromPem,
  certificatePublicKey,
  MIN_RSA_BITS,
  OID_ANY_EXTENDED_KEY_USAGE,
  OID_KP_CODE_SIGNING,
  OID_KP_DOCUMENT_SIGNING,
  parseCertificateDer,
  parseTrustAnchors,
  verifySignerChain,
  type SignerPolicy,
} from './certificate-chain.js';

// ---------------------------------------------------------------------------
// Public types

export interface MeterKeys {
  /** The meter's DLMS system title: 16 lower-case hex characters (8 bytes). */
  systemTitle: string;
  /** The meter's endpoint name. */
  meter: string;
  /** Key epoch of this meter's keys. */
  epoch: number;
  /** Global unicast encryption key (16 bytes). */
  ek: Buffer;
  /** Authentication key (16 bytes). */
  ak: Buffer;
  /** Master key, the key-encryption key of the meter (16 bytes). */
  kek: Buffer;
}

export interface KeyBundle {
  gateway: string;
  /** Highest key epoch in the bundle (the KMS epoch the bundle brings the gateway to). */
  epoch: number;
  /** The epoch the gateway asked from; 0 for a full bundle. */
  since: number;
  full: boolean;
  /** When the KMS issued the bundle, milliseconds since the Unix epoch. */
  issuedAt: number;
  meters: MeterKeys[];
  /** System titles (lower-case hex) whose keys the gateway must drop. */
  removed?: string[];
}

export type KeyBundleErrorCode =
  | 'BAD_FORMAT'
  | 'TOO_LARGE'
  | 'UNTRUSTED_CHAIN'
  | 'CERT_EXPIRED'
  | 'CERT_NOT_YET_VALID'
  | 'BAD_KEY_USAGE'
  | 'BAD_SIGNATURE'
  | 'WRONG_RECIPIENT'
  | 'WRONG_GATEWAY'
  | 'UNWRAP_FAILED';

/** The only error `openKeyBundle` throws. Messages never carry key material. */
export class KeyBundleError extends Error {
  override readonly name = 'KeyBundleError';
  constructor(
    readonly code: KeyBundleErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export function isKeyBundleError(err: unknown): err is KeyBundleError {
  return err instanceof KeyBundleError;
}

export interface CreateKeyBundleOptions {
  /** PEM private key (PKCS#8 or PKCS#1) of the key-management signing certificate. */
  signerKeyPem: string;
  /** The signing certificate first, then any intermediates (PEM, one certificate each). */
  signerChainPem: string[];
  /** The gateway's RSA public key (SPKI PEM). */
  recipientPublicKeyPem: string;
}

export interface OpenKeyBundleOptions {
  /** The utility's root CA certificate(s); a string may hold several PEM blocks. */
  trustAnchorsPem: string[];
  /** The gateway's RSA private key (PEM). */
  gatewayPrivateKeyPem: string;
  /** This gateway's id; the bundle must name it. */
  gateway: string;
  /** Time at which certificate validity is checked; defaults to now. */
  now?: Date;
  /** Largest accepted encoded bundle; defaults to DEFAULT_MAX_BUNDLE_BYTES. */
  maxBytes?: number;
}

// ---------------------------------------------------------------------------
// Format constants

/** Outer `v`. A new version is needed for any change to fields or algorithms. */
export const KEY_BUNDLE_VERSION = 1;
/** Signed `typ` of the body: binds the signature to this use and version. */
export const KEY_BUNDLE_TYPE = 'ami-key-bundle/1';
/** Default `maxBytes`: about 28 000 meters at ~150 bytes each. */
export const DEFAULT_MAX_BUNDLE_BYTES = 4 * 1024 * 1024;
/** Signer certificate plus at most three more (intermediates, optionally the root). */
export const MAX_CHAIN_CERTS = 4;

const SYSTEM_TITLE_BYTES = 8;
const METER_KEY_BYTES = 16;
const WRAPPED_KEY_BYTES = 24;
const BUNDLE_KEY_BYTES = 16;
const FINGERPRINT_BYTES = 32;
const PSS_SALT_BYTES = 32;
const MAX_GATEWAY_CHARS = 128;
const MAX_METER_CHARS = 64;

const OUTER_KEYS = ['v', 'body', 'sig', 'chain'] as const;
const BODY_KEYS = ['typ', 'gateway', 'epoch', 'since', 'full', 'issuedAt', 'recipient', 'bundleKey', 'meters', 'removed'] as const;
const BODY_REQUIRED = BODY_KEYS.filter((k) => k !== 'removed');
const METER_KEYS = ['systemTitle', 'meter', 'epoch', 'ek', 'ak', 'kek'] as const;

// ---------------------------------------------------------------------------
// Fingerprints

/** Lower-case hex SHA-256 of the key's DER SubjectPublicKeyInfo. Accepts a private key PEM too. */
export function publicKeyFingerprint(publicKeyPem: string): string {
  return spkiSha256(createPublicKey(publicKeyPem)).toString('hex');
}

function spkiSha256(key: KeyObject): Buffer {
  return createHash('sha256').update(key.export({ type: 'spki', format: 'der' })).digest();
}

export interface KeyStoreFingerprintEntry {
  systemTitle: string;
  epoch: number;
  ek: Uint8Array;
  ak: Uint8Array;
  kek: Uint8Array;
}

/**
 * Fingerprint of a set of meter keys that two sites can compare without
 * revealing the keys. For every entry one ASCII line is formed:
 *
 *   <systemTitle: 16 lower-case hex> " " <epoch: decimal, no leading zeros> " "
 *   <SHA-256(ek || ak || kek): 64 lower-case hex> "\n"
 *
 * The lines are sorted in byte order, concatenated, and hashed with SHA-256;
 * the result is returned as 64 lower-case hex characters. An empty set gives
 * SHA-256 of the empty string. Throws KeyBundleError BAD_FORMAT on an entry
 * that is not a 16-hex system title, a non-negative safe-integer epoch and
 * three 16-byte keys.
 */
export function keyStoreFingerprint(entries: readonly KeyStoreFingerprintEntry[]): string {
  const lines = entries.map((entry, i) => {
    const title = normaliseSystemTitle(entry.systemTitle, `entry ${i}`);
    checkEpoch(entry.epoch, `entry ${i} epoch`);
    for (const name of ['ek', 'ak', 'kek'] as const) {
      if (!(entry[name] instanceof Uint8Array) || entry[name].length !== METER_KEY_BYTES) {
        throw new KeyBundleError('BAD_FORMAT', `entry ${i}: ${name} must be ${METER_KEY_BYTES} bytes`);
      }
    }
    const keysHash = createHash('sha256').update(entry.ek).update(entry.ak).update(entry.kek).digest('hex');
    return `${title} ${entry.epoch} ${keysHash}\n`;
  });
  // All lines are ASCII, so UTF-16 code-unit order is byte order.
  lines.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash('sha256').update(lines.join(''), 'ascii').digest('hex');
}

// ---------------------------------------------------------------------------
// HES side

/**
 * Builds a signed bundle of `bundle`'s keys, encrypted to the recipient
 * gateway key (HES side; used by the HES simulator and tests). Throws
 * KeyBundleError BAD_FORMAT when the bundle content or the options are
 * unusable (including a signer key that does not match the signer
 * certificate).
 */
export function createKeyBundle(bundle: KeyBundle, opts: CreateKeyBundleOptions): Buffer {
  checkText(bundle.gateway, MAX_GATEWAY_CHARS, 'gateway');
  checkEpoch(bundle.epoch, 'epoch');
  checkEpoch(bundle.since, 'since');
  checkEpoch(bundle.issuedAt, 'issuedAt');
  if (typeof bundle.full !== 'boolean') throw new KeyBundleError('BAD_FORMAT', 'full must be a boolean');
  checkEpochRelations(bundle.full, bundle.since);

  if (opts.signerChainPem.length < 1 || opts.signerChainPem.length > MAX_CHAIN_CERTS) {
    throw new KeyBundleError('BAD_FORMAT', `signerChainPem must hold 1 to ${MAX_CHAIN_CERTS} certificates`);
  }
  let chain: Buffer[];
  try {
    chain = opts.signerChainPem.map((pem, i) => certificateDerFromPem(pem, `signerChainPem[${i}]`));
  } catch (err) {
    throw err instanceof CertificateChainError ? keyBundleErrorOf(err) : err;
  }
  let signerKey: KeyObject;
  let recipientKey: KeyObject;
  try {
    signerKey = createPrivateKey(opts.signerKeyPem);
    recipientKey = createPublicKey(opts.recipientPublicKeyPem);
  } catch {
    throw new KeyBundleError('BAD_FORMAT', 'signer private key or recipient public key is not a usable PEM key');
  }
  if (signerKey.asymmetricKeyType !== 'rsa' || recipientKey.asymmetricKeyType !== 'rsa') {
    throw new KeyBundleError('BAD_FORMAT', 'signer and recipient keys must be RSA keys');
  }
  if ((recipientKey.asymmetricKeyDetails?.modulusLength ?? 0) < MIN_RSA_BITS) {
    throw new KeyBundleError('BAD_FORMAT', `the recipient key must have at least ${MIN_RSA_BITS} bits`);
  }
  let leaf: forge.pki.Certificate;
  try {
    leaf = parseCertificateDer(chain[0] as Buffer, 'chain[0]');
  } catch (err) {
    throw err instanceof CertificateChainError ? keyBundleErrorOf(err) : err;
  }
  if (!spkiSha256(certificatePublicKey(leaf)).equals(spkiSha256(createPublicKey(signerKey)))) {
    throw new KeyBundleError('BAD_FORMAT', 'signer private key does not match the first certificate of signerChainPem');
  }

  const bundleKey = randomBytes(BUNDLE_KEY_BYTES);
  try {
    const seen = new Set<string>();
    const meters = bundle.meters.map((m, i) => {
      const where = `meter ${i}`;
      const title = normaliseSystemTitle(m.systemTitle, where);
      if (seen.has(title)) throw new KeyBundleError('BAD_FORMAT', `${where}: system title ${title} appears twice`);
      seen.add(title);
      checkText(m.meter, MAX_METER_CHARS, `${where} meter`);
      checkEpoch(m.epoch, `${where} epoch`);
      if (m.epoch > bundle.epoch) throw new KeyBundleError('BAD_FORMAT', `${where}: epoch is above the bundle epoch`);
      const wrapped: Record<'ek' | 'ak' | 'kek', Buffer> = { ek: Buffer.alloc(0), ak: Buffer.alloc(0), kek: Buffer.alloc(0) };
      for (const name of ['ek', 'ak', 'kek'] as const) {
        if (!(m[name] instanceof Uint8Array) || m[name].length !== METER_KEY_BYTES) {
          throw new KeyBundleError('BAD_FORMAT', `${where}: ${name} must be ${METER_KEY_BYTES} bytes`);
        }
        wrapped[name] = wrapKey(bundleKey, m[name]);
      }
      return {
        systemTitle: Buffer.from(title, 'hex'),
        meter: m.meter,
        epoch: uint(m.epoch),
        ek: wrapped.ek,
        ak: wrapped.ak,
        kek: wrapped.kek,
      };
    });
    let removed: Buffer[] | undefined;
    if (bundle.removed !== undefined) {
      removed = bundle.removed.map((t, i) => {
        const title = normaliseSystemTitle(t, `removed ${i}`);
        if (seen.has(title)) throw new KeyBundleError('BAD_FORMAT', `removed ${i}: system title ${title} is also served or listed twice`);
        seen.add(title);
        return Buffer.from(title, 'hex');
      });
    }

    const body: Record<string, unknown> = {
      typ: KEY_BUNDLE_TYPE,
      gateway: bundle.gateway,
      epoch: uint(bundle.epoch),
      since: uint(bundle.since),
      full: bundle.full,
      issuedAt: uint(bundle.issuedAt),
      recipient: spkiSha256(recipientKey),
      bundleKey: publicEncrypt({ key: recipientKey, oaepHash: 'sha256', padding: constants.RSA_PKCS1_OAEP_PADDING }, bundleKey),
      meters,
    };
    if (removed !== undefined) body.removed = removed;
    const bodyBytes = cborEncode(body);
    const sig = sign('sha256', bodyBytes, { key: signerKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: PSS_SALT_BYTES });
    return cborEncode({ v: KEY_BUNDLE_VERSION, body: bodyBytes, sig, chain });
  } finally {
    bundleKey.fill(0);
  }
}

// ---------------------------------------------------------------------------
// Gateway side

/**
 * Verifies and decrypts a key bundle. Checks, in this order: size and format;
 * the certificate chain up to a trust anchor (node-forge), then validity
 * dates at `now`; key usage of the signer and the intermediates; the
 * signature over the body; the recipient key fingerprint; the gateway id;
 * then unwraps the keys. Throws only KeyBundleError.
 */
export function openKeyBundle(bytes: Uint8Array, opts: OpenKeyBundleOptions): KeyBundle {
  try {
    return openChecked(bytes, opts);
  } catch (err) {
    if (err instanceof KeyBundleError) throw err;
    if (err instanceof CertificateChainError) throw keyBundleErrorOf(err);
    // Fail closed on anything unforeseen; only the error's class name is kept,
    // so that no library message can carry key material into logs.
    const name = err instanceof Error ? err.name : typeof err;
    throw new KeyBundleError('BAD_FORMAT', `key bundle could not be processed (unexpected ${name})`);
  }
}

interface ParsedMeter {
  systemTitle: string;
  meter: string;
  epoch: number;
  ek: Uint8Array;
  ak: Uint8Array;
  kek: Uint8Array;
}

interface ParsedBody {
  gateway: string;
  epoch: number;
  since: number;
  full: boolean;
  issuedAt: number;
  recipient: Uint8Array;
  bundleKey: Uint8Array;
  meters: ParsedMeter[];
  removed?: string[];
}

function openChecked(bytes: Uint8Array, opts: OpenKeyBundleOptions): KeyBundle {
  // 1. Size and format.
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BUNDLE_BYTES;
  if (!(bytes instanceof Uint8Array)) throw new KeyBundleError('BAD_FORMAT', 'key bundle must be bytes');
  if (bytes.length > maxBytes) {
    throw new KeyBundleError('TOO_LARGE', `key bundle is ${bytes.length} bytes, more than the ${maxBytes} accepted`);
  }
  const outer = decodeMap(bytes, 'key bundle');
  checkKeys(outer, OUTER_KEYS, OUTER_KEYS, 'key bundle');
  if (outer.v !== KEY_BUNDLE_VERSION) throw new KeyBundleError('BAD_FORMAT', 'unsupported key bundle version');
  const bodyBytes = bytesField(outer.body, 'body');
  const sig = bytesField(outer.sig, 'sig');
  if (!Array.isArray(outer.chain) || outer.chain.length < 1 || outer.chain.length > MAX_CHAIN_CERTS) {
    throw new KeyBundleError('BAD_FORMAT', `chain must be an array of 1 to ${MAX_CHAIN_CERTS} certificates`);
  }
  const chain = outer.chain.map((der: unknown, i) => parseCertificateDer(bytesField(der, `chain[${i}]`), `chain[${i}]`));
  const body = parseBody(bodyBytes);
  const leaf = chain[0] as forge.pki.Certificate;

  // 2. Chain up to a trust anchor, then validity dates; 3. key usage
  // (certificate-chain.ts throws CertificateChainError, which openKeyBundle
  // turns into KeyBundleError).
  verifySignerChain(chain, parseTrustAnchors(opts.trustAnchorsPem), opts.now ?? new Date(), BUNDLE_SIGNER_POLICY);

  // 4. Signature over the body with the signer's key.
  const signerKey = certificatePublicKey(leaf);
  let good = false;
  try {
    good = verify('sha256', bodyBytes, { key: signerKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: PSS_SALT_BYTES }, sig);
  } catch {
    good = false;
  }
  if (!good) throw new KeyBundleError('BAD_SIGNATURE', 'key bundle signature does not verify with the signer certificate');

  // 5. Recipient: the bundle key must be encrypted to our key.
  let gatewayKey: KeyObject;
  try {
    gatewayKey = createPrivateKey(opts.gatewayPrivateKeyPem);
  } catch {
    throw new KeyBundleError('UNWRAP_FAILED', 'the gateway private key is not a usable PEM private key');
  }
  if (gatewayKey.asymmetricKeyType !== 'rsa') throw new KeyBundleError('UNWRAP_FAILED', 'the gateway private key is not an RSA key');
  const ours = spkiSha256(createPublicKey(gatewayKey));
  if (!ours.equals(body.recipient)) {
    throw new KeyBundleError('WRONG_RECIPIENT', `key bundle is encrypted to key ${Buffer.from(body.recipient).toString('hex')}, not to this gateway's key ${ours.toString('hex')}`);
  }

  // 6. Gateway id.
  if (body.gateway !== opts.gateway) {
    throw new KeyBundleError('WRONG_GATEWAY', `key bundle is for gateway ${JSON.stringify(body.gateway)}, not ${JSON.stringify(opts.gateway)}`);
  }

  // 7. Unwrap.
  let bundleKey: Buffer;
  try {
    bundleKey = privateDecrypt({ key: gatewayKey, oaepHash: 'sha256', padding: constants.RSA_PKCS1_OAEP_PADDING }, body.bundleKey);
  } catch {
    throw new KeyBundleError('UNWRAP_FAILED', 'the bundle key does not decrypt with the gateway private key');
  }
  try {
    if (bundleKey.length !== BUNDLE_KEY_BYTES) {
      throw new KeyBundleError('UNWRAP_FAILED', `the bundle key must be ${BUNDLE_KEY_BYTES} bytes`);
    }
    const meters = body.meters.map((m): MeterKeys => {
      const unwrap = (name: 'ek' | 'ak' | 'kek'): Buffer => {
        try {
          return unwrapKey(bundleKey, m[name]);
        } catch {
          throw new KeyBundleError('UNWRAP_FAILED', `${name} of meter ${m.systemTitle} does not unwrap under the bundle key`);
        }
      };
      return { systemTitle: m.systemTitle, meter: m.meter, epoch: m.epoch, ek: unwrap('ek'), ak: unwrap('ak'), kek: unwrap('kek') };
    });
    const result: KeyBundle = {
      gateway: body.gateway,
      epoch: body.epoch,
      since: body.since,
      full: body.full,
      issuedAt: body.issuedAt,
      meters,
    };
    if (body.removed !== undefined) result.removed = body.removed;
    return result;
  } finally {
    bundleKey.fill(0);
  }
}

// ---------------------------------------------------------------------------
// Body parsing

function parseBody(bodyBytes: Uint8Array): ParsedBody {
  const body = decodeMap(bodyBytes, 'body');
  checkKeys(body, BODY_KEYS, BODY_REQUIRED, 'body');
  if (body.typ !== KEY_BUNDLE_TYPE) throw new KeyBundleError('BAD_FORMAT', 'body typ is not ' + KEY_BUNDLE_TYPE);
  const gateway = textField(body.gateway, MAX_GATEWAY_CHARS, 'gateway');
  const epoch = uintField(body.epoch, 'epoch');
  const since = uintField(body.since, 'since');
  const issuedAt = uintField(body.issuedAt, 'issuedAt');
  if (typeof body.full !== 'boolean') throw new KeyBundleError('BAD_FORMAT', 'full must be a boolean');
  const full = body.full;
  checkEpochRelations(full, since);
  const recipient = bytesField(body.recipient, 'recipient', FINGERPRINT_BYTES);
  const bundleKey = bytesField(body.bundleKey, 'bundleKey');
  if (!Array.isArray(body.meters)) throw new KeyBundleError('BAD_FORMAT', 'meters must be an array');
  const seen = new Set<string>();
  const meters = body.meters.map((raw: unknown, i): ParsedMeter => {
    const where = `meters[${i}]`;
    if (!isPlainMap(raw)) throw new KeyBundleError('BAD_FORMAT', `${where} must be a map`);
    checkKeys(raw, METER_KEYS, METER_KEYS, where);
    const systemTitle = Buffer.from(bytesField(raw.systemTitle, `${where}.systemTitle`, SYSTEM_TITLE_BYTES)).toString('hex');
    if (seen.has(systemTitle)) throw new KeyBundleError('BAD_FORMAT', `${where}: system title ${systemTitle} appears twice`);
    seen.add(systemTitle);
    const meterEpoch = uintField(raw.epoch, `${where}.epoch`);
    if (meterEpoch > epoch) throw new KeyBundleError('BAD_FORMAT', `${where}: epoch is above the bundle epoch`);
    return {
      systemTitle,
      meter: textField(raw.meter, MAX_METER_CHARS, `${where}.meter`),
      epoch: meterEpoch,
      ek: bytesField(raw.ek, `${where}.ek`, WRAPPED_KEY_BYTES),
      ak: bytesField(raw.ak, `${where}.ak`, WRAPPED_KEY_BYTES),
      kek: bytesField(raw.kek, `${where}.kek`, WRAPPED_KEY_BYTES),
    };
  });
  const parsed: ParsedBody = { gateway, epoch, since, full, issuedAt, recipient, bundleKey, meters };
  if (body.removed !== undefined) {
    if (!Array.isArray(body.removed)) throw new KeyBundleError('BAD_FORMAT', 'removed must be an array');
    parsed.removed = body.removed.map((raw: unknown, i) => {
      const title = Buffer.from(bytesField(raw, `removed[${i}]`, SYSTEM_TITLE_BYTES)).toString('hex');
      if (seen.has(title)) throw new KeyBundleError('BAD_FORMAT', `removed[${i}]: system title ${title} is also served or listed twice`);
      seen.add(title);
      return title;
    });
  }
  return parsed;
}

function decodeMap(bytes: Uint8Array, what: string): Record<string, unknown> {
  if (bytes.length === 0) throw new KeyBundleError('BAD_FORMAT', `${what} is empty`);
  let value: unknown;
  try {
    value = cborDecode(bytes);
  } catch {
    throw new KeyBundleError('BAD_FORMAT', `${what} is not one well-formed CBOR item`);
  }
  if (!isPlainMap(value)) throw new KeyBundleError('BAD_FORMAT', `${what} must be a CBOR map`);
  return value;
}

function isPlainMap(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function checkKeys(map: Record<string, unknown>, allowed: readonly string[], required: readonly string[], what: string): void {
  for (const key of Object.keys(map)) {
    if (!allowed.includes(key)) throw new KeyBundleError('BAD_FORMAT', `${what} has unknown field ${JSON.stringify(key.slice(0, 32))}`);
  }
  for (const key of required) {
    if (!Object.hasOwn(map, key)) throw new KeyBundleError('BAD_FORMAT', `${what} lacks field ${key}`);
  }
}

function bytesField(value: unknown, what: string, size?: number): Uint8Array {
  if (!(value instanceof Uint8Array) || value.length === 0) throw new KeyBundleError('BAD_FORMAT', `${what} must be a non-empty byte string`);
  if (size !== undefined && value.length !== size) throw new KeyBundleError('BAD_FORMAT', `${what} must be ${size} bytes`);
  return value;
}

function textField(value: unknown, max: number, what: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new KeyBundleError('BAD_FORMAT', `${what} must be text of 1 to ${max} characters`);
  }
  return value;
}

/** CBOR unsigned integers: cbor-x gives a number, or a bigint for the 8-byte form. */
function uintField(value: unknown, what: string): number {
  const n = typeof value === 'bigint' && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw new KeyBundleError('BAD_FORMAT', `${what} must be an unsigned integer below 2^53`);
  }
  return n;
}

/** cbor-x writes integers above 2^32 as floats unless given a bigint; the format says uint. */
function uint(n: number): number | bigint {
  return n > 0xffffffff ? BigInt(n) : n;
}

function checkText(value: unknown, max: number, what: string): void {
  textField(value, max, what);
}

function checkEpoch(value: unknown, what: string): void {
  uintField(value, what);
}

function checkEpochRelations(full: boolean, since: number): void {
  if (full && since !== 0) throw new KeyBundleError('BAD_FORMAT', 'a full bundle must have since = 0');
}

function normaliseSystemTitle(value: unknown, what: string): string {
  if (typeof value !== 'string' || !/^[0-9a-fA-F]{16}$/.test(value)) {
    throw new KeyBundleError('BAD_FORMAT', `${what}: system title must be 16 hex characters`);
  }
  return value.toLowerCase();
}

// ---------------------------------------------------------------------------
// Certificates (checked by certificate-chain.ts)

/** Extended key usages that permit signing key bundles (see docs/key-bundles.md). */
const BUNDLE_SIGNER_POLICY: SignerPolicy = {
  signerPurposes: new Set([OID_ANY_EXTENDED_KEY_USAGE, OID_KP_CODE_SIGNING, OID_KP_DOCUMENT_SIGNING]),
  signerLabel: 'signer',
  purposeLabel: 'signing key bundles',
};

/** The KeyBundleError for a CertificateChainError: an unparsable certificate is BAD_FORMAT, the other codes are the same. */
function keyBundleErrorOf(err: CertificateChainError): KeyBundleError {
  return new KeyBundleError(err.code === 'BAD_CERTIFICATE' ? 'BAD_FORMAT' : err.code, err.message);
}
