/**
 * X.509 signer chains for signed objects from the HES: parse the DER
 * certificates a signed envelope carries, check that they lead to one of the
 * gateway's trust anchors (the utility root CA), that every certificate is
 * within its validity period, and that the signer may sign this kind of
 * object.
 *
 * The rules are those of the key bundles (docs/key-bundles.md,
 * "Certificates"), written once here so that other signed objects (HES
 * commands, docs/hes-commands.md) share them; the caller says which extended
 * key usages its signer may carry. src/keys/bundle.ts and src/hes/commands.ts
 * both check their signers here.
 *
 * node-forge parses the certificates and verifies the chain (signatures,
 * names, validity, basicConstraints, pathLen, name constraints); node:crypto
 * reads the keys.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import forge from 'node-forge';

export type CertificateChainErrorCode =
  /** A chain entry is not a DER X.509 certificate with an RSA key. */
  | 'BAD_CERTIFICATE'
  | 'UNTRUSTED_CHAIN'
  | 'CERT_EXPIRED'
  | 'CERT_NOT_YET_VALID'
  | 'BAD_KEY_USAGE';

export class CertificateChainError extends Error {
  override readonly name = 'CertificateChainError';
  constructor(
    readonly code: CertificateChainErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Certificate signature algorithms accepted anywhere in the chain (no MD5, no SHA-1). */
const ACCEPTED_CERT_SIGNATURE_OIDS = new Set([
  '1.2.840.113549.1.1.10', // RSASSA-PSS
  '1.2.840.113549.1.1.11', // sha256WithRSAEncryption
  '1.2.840.113549.1.1.12', // sha384WithRSAEncryption
  '1.2.840.113549.1.1.13', // sha512WithRSAEncryption
]);

export const OID_ANY_EXTENDED_KEY_USAGE = '2.5.29.37.0';
export const OID_KP_CODE_SIGNING = '1.3.6.1.5.5.7.3.3';
export const OID_KP_DOCUMENT_SIGNING = '1.3.6.1.5.5.7.3.36';

const OID_EXT_KEY_USAGE = '2.5.29.37';
const OID_KEY_USAGE = '2.5.29.15';
const OID_BASIC_CONSTRAINTS = '2.5.29.19';

export const MIN_RSA_BITS = 2048;

// node-forge's certificateError value for a date failure (not in @types/node-forge).
const FORGE_CERT_EXPIRED = 'forge.pki.CertificateExpired';

export interface SignerPolicy {
  /**
   * Extended key usages that allow the signer to sign this kind of object.
   * A signer without the extension is accepted; one with it must list one of these.
   */
  signerPurposes: ReadonlySet<string>;
  /** What the signer is called in messages ('operator', 'signer'). */
  signerLabel: string;
  /** What the signer's extended key usage must allow, for messages ('signing key bundles'); defaults to 'this signature'. */
  purposeLabel?: string;
}

/** Parses one DER certificate (strict: no trailing bytes, same signature algorithm inside and out). */
export function parseCertificateDer(der: Uint8Array, what: string): forge.pki.Certificate {
  let asn1: forge.asn1.Asn1;
  let cert: forge.pki.Certificate;
  try {
    // forge works on "binary" strings; fromDer is strict and rejects trailing bytes.
    asn1 = forge.asn1.fromDer(Buffer.from(der).toString('binary'));
    cert = forge.pki.certificateFromAsn1(asn1);
  } catch {
    throw new CertificateChainError('BAD_CERTIFICATE', `${what} is not an X.509 certificate with an RSA key`);
  }
  if (!sameSignatureAlgorithm(asn1)) {
    throw new CertificateChainError('BAD_CERTIFICATE', `${what}: signatureAlgorithm differs from the signature field of tbsCertificate`);
  }
  return cert;
}

/** The DER bytes of a PEM holding exactly one certificate. */
export function certificateDerFromPem(pem: string, what: string): Buffer {
  let blocks: forge.pem.ObjectPEM[];
  try {
    blocks = forge.pem.decode(pem);
  } catch {
    blocks = [];
  }
  const block = blocks[0];
  if (blocks.length !== 1 || block === undefined || block.type !== 'CERTIFICATE') {
    throw new CertificateChainError('BAD_CERTIFICATE', `${what} must hold exactly one PEM certificate`);
  }
  return Buffer.from(block.body, 'binary');
}

/** Every CERTIFICATE block of the given PEM texts. Throws UNTRUSTED_CHAIN when none is usable. */
export function parseTrustAnchors(pems: readonly string[]): forge.pki.Certificate[] {
  const anchors: forge.pki.Certificate[] = [];
  pems.forEach((pem, i) => {
    try {
      const blocks = forge.pem.decode(pem).filter((b) => b.type === 'CERTIFICATE');
      for (const b of blocks) anchors.push(forge.pki.certificateFromAsn1(forge.asn1.fromDer(b.body)));
    } catch {
      throw new CertificateChainError('UNTRUSTED_CHAIN', `trust anchor ${i} is not a usable PEM certificate`);
    }
  });
  if (anchors.length === 0) throw new CertificateChainError('UNTRUSTED_CHAIN', 'no trust anchor is configured');
  return anchors;
}

/** The certificate's RSA key, as node:crypto's KeyObject. */
export function certificatePublicKey(cert: forge.pki.Certificate): KeyObject {
  return createPublicKey(forge.pki.publicKeyToPem(cert.publicKey));
}

/** The subject's common name exactly as written, undefined when there is none (or more than one). */
export function subjectCommonName(cert: forge.pki.Certificate): string | undefined {
  const names = cert.subject.attributes.filter((a) => a.shortName === 'CN' || a.name === 'commonName');
  if (names.length !== 1) return undefined;
  // forge types attribute values loosely (any); only a string is a name.
  const value: unknown = names[0]?.value;
  return typeof value === 'string' ? value : undefined;
}

/** Lower-case hex SHA-256 of the certificate's DER: how logs and reports name a certificate. */
export function certificateFingerprint(cert: forge.pki.Certificate): string {
  const der = forge.asn1.toDer(forge.pki.certificateToAsn1(cert)).getBytes();
  return createHash('sha256').update(Buffer.from(der, 'binary')).digest('hex');
}

/**
 * Checks a signer chain (signer first) against the anchors at `now`, in this
 * order: algorithms and key sizes; the chain leads to an anchor, without dates
 * (UNTRUSTED_CHAIN); the same with validity dates, anchor included
 * (CERT_EXPIRED, CERT_NOT_YET_VALID); then the key usage of the signer and of
 * the issuers (BAD_KEY_USAGE). Throws only CertificateChainError.
 */
export function verifySignerChain(chain: readonly forge.pki.Certificate[], anchors: readonly forge.pki.Certificate[], now: Date, policy: SignerPolicy): void {
  if (chain.length === 0) throw new CertificateChainError('UNTRUSTED_CHAIN', 'the certificate chain is empty');
  if (anchors.length === 0) throw new CertificateChainError('UNTRUSTED_CHAIN', 'no trust anchor is configured');
  try {
    verifyChainTrust(chain, anchors, now, policy);
    checkSignerUsage(chain[0] as forge.pki.Certificate, policy);
    chain.slice(1).forEach((cert, i) => checkIssuerUsage(cert, i + 1));
  } catch (err) {
    if (err instanceof CertificateChainError) throw err;
    // Fail closed on anything forge throws that is not foreseen above.
    throw new CertificateChainError('UNTRUSTED_CHAIN', `the certificate chain could not be verified (unexpected ${err instanceof Error ? err.name : typeof err})`);
  }
}

/** The fields of a parsed forge extension this module reads. */
interface ForgeExtension {
  id: string;
  critical?: boolean;
  /** DER of the extension value, as a forge binary string. */
  value: string;
  cA?: boolean;
  digitalSignature?: boolean;
  keyCertSign?: boolean;
}

function extensions(cert: forge.pki.Certificate): ForgeExtension[] {
  // @types/node-forge types `extensions` as any[]; the fields used are listed in ForgeExtension.
  return cert.extensions as ForgeExtension[];
}

function extension(cert: forge.pki.Certificate, oid: string): ForgeExtension | undefined {
  return extensions(cert).find((e) => e.id === oid);
}

function verifyChainTrust(chain: readonly forge.pki.Certificate[], anchors: readonly forge.pki.Certificate[], now: Date, policy: SignerPolicy): void {
  chain.forEach((cert, i) => {
    // The algorithm is named twice, inside the signed part and next to the signature.
    if (!ACCEPTED_CERT_SIGNATURE_OIDS.has(cert.siginfo.algorithmOid) || cert.signatureOid !== cert.siginfo.algorithmOid) {
      throw new CertificateChainError('UNTRUSTED_CHAIN', `chain[${i}] is signed with an unaccepted algorithm (${cert.siginfo.algorithmOid}); SHA-256 or better with RSA is required`);
    }
    const bits = certificatePublicKey(cert).asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) throw new CertificateChainError('UNTRUSTED_CHAIN', `chain[${i}] has a ${bits}-bit RSA key; at least ${MIN_RSA_BITS} is required`);
  });
  const leaf = chain[0] as forge.pki.Certificate;
  if (leaf.isIssuer(leaf)) throw new CertificateChainError('UNTRUSTED_CHAIN', `the ${policy.signerLabel} certificate is self-issued; it must be issued by a CA`);

  // forge rejects any critical extension it does not implement, and it does
  // not implement extendedKeyUsage. checkSignerUsage enforces the signer's
  // EKU, so a critical EKU on the signer is marked as handled on this parse
  // (a private object; signatures are verified over the DER captured when
  // parsing, which this does not touch). A critical EKU on a CA certificate
  // still fails the chain.
  for (const e of extensions(leaf)) {
    if (e.id === OID_EXT_KEY_USAGE) e.critical = false;
  }

  // Pass 1, without dates: does the chain lead to an anchor at all? Doing
  // this first means a certificate from elsewhere is reported as untrusted,
  // not as expired.
  try {
    forge.pki.verifyCertificateChain(forge.pki.createCaStore([...anchors]), [...chain], { validityCheckDate: null });
  } catch (err) {
    throw new CertificateChainError('UNTRUSTED_CHAIN', `certificate chain does not lead to a trust anchor: ${forgeMessage(err)}`);
  }

  // Pass 2, with validity dates at `now` for every chain certificate; anchors
  // outside their own validity period are left out of the store.
  const current = anchors.filter((a) => !outsideValidity(a, now));
  try {
    forge.pki.verifyCertificateChain(forge.pki.createCaStore(current), [...chain], { validityCheckDate: now });
  } catch (err) {
    if (isForgeError(err) && err.error === FORGE_CERT_EXPIRED) {
      // forge checks the chain from the signer up, as find() does here.
      const cert = chain.find((c) => outsideValidity(c, now));
      const notBefore = cert?.validity.notBefore ?? (err.notBefore instanceof Date ? err.notBefore : undefined);
      const who = cert === undefined ? 'a certificate in the chain' : `certificate ${JSON.stringify(displayName(cert))}`;
      if (notBefore !== undefined && now < notBefore) {
        throw new CertificateChainError('CERT_NOT_YET_VALID', `${who} is not valid before ${notBefore.toISOString()}`);
      }
      const notAfter = cert?.validity.notAfter ?? (err.notAfter instanceof Date ? err.notAfter : undefined);
      throw new CertificateChainError('CERT_EXPIRED', notAfter === undefined ? `${who} has expired` : `${who} expired at ${notAfter.toISOString()}`);
    }
    // Pass 1 succeeded, so the chain only fails now for want of a current
    // anchor: the anchor it leads to is outside its validity period.
    const top = chain[chain.length - 1] as forge.pki.Certificate;
    const stale = anchors.find((a) => outsideValidity(a, now) && issuedBy(top, a));
    if (stale !== undefined && now < stale.validity.notBefore) {
      throw new CertificateChainError('CERT_NOT_YET_VALID', `trust anchor ${JSON.stringify(displayName(stale))} is not valid before ${stale.validity.notBefore.toISOString()}`);
    }
    if (stale !== undefined) {
      throw new CertificateChainError('CERT_EXPIRED', `trust anchor ${JSON.stringify(displayName(stale))} expired at ${stale.validity.notAfter.toISOString()}`);
    }
    throw new CertificateChainError('UNTRUSTED_CHAIN', `certificate chain does not verify at ${now.toISOString()}: ${forgeMessage(err)}`);
  }
}

function displayName(cert: forge.pki.Certificate): string {
  return subjectCommonName(cert)?.slice(0, 64) ?? '(no common name)';
}

function outsideValidity(cert: forge.pki.Certificate, now: Date): boolean {
  return now < cert.validity.notBefore || now > cert.validity.notAfter;
}

function issuedBy(cert: forge.pki.Certificate, issuer: forge.pki.Certificate): boolean {
  if (cert.isIssuer(issuer)) {
    try {
      return issuer.verify(cert);
    } catch {
      return false;
    }
  }
  // The chain may end with the anchor itself.
  return forge.pki.certificateToPem(cert) === forge.pki.certificateToPem(issuer);
}

interface ForgeChainError {
  message?: unknown;
  error?: unknown;
  notBefore?: unknown;
  notAfter?: unknown;
}

function isForgeError(err: unknown): err is ForgeChainError {
  return typeof err === 'object' && err !== null;
}

function forgeMessage(err: unknown): string {
  if (typeof err === 'string') return err;
  if (isForgeError(err) && typeof err.message === 'string') return err.message;
  return 'verification failed';
}

/**
 * The signer must be an end-entity certificate (no basicConstraints cA) whose
 * keyUsage is present and asserts digitalSignature, and whose
 * extendedKeyUsage, if present, includes one of the policy's purposes.
 */
function checkSignerUsage(leaf: forge.pki.Certificate, policy: SignerPolicy): void {
  const label = policy.signerLabel;
  const bc = extension(leaf, OID_BASIC_CONSTRAINTS);
  if (bc?.cA === true) throw new CertificateChainError('BAD_KEY_USAGE', `the ${label} certificate is a CA certificate; an end-entity certificate is required`);
  const ku = extension(leaf, OID_KEY_USAGE);
  if (ku === undefined) throw new CertificateChainError('BAD_KEY_USAGE', `the ${label} certificate has no keyUsage extension`);
  if (ku.digitalSignature !== true) throw new CertificateChainError('BAD_KEY_USAGE', `the ${label} certificate keyUsage lacks digitalSignature`);
  const eku = extension(leaf, OID_EXT_KEY_USAGE);
  if (eku !== undefined) {
    const purposes = extKeyUsageOids(eku);
    if (!purposes.some((oid) => policy.signerPurposes.has(oid))) {
      throw new CertificateChainError('BAD_KEY_USAGE', `the ${label} certificate extendedKeyUsage (${purposes.join(', ')}) does not allow ${policy.purposeLabel ?? 'this signature'}`);
    }
  }
}

function extKeyUsageOids(ext: ForgeExtension): string[] {
  try {
    const seq = forge.asn1.fromDer(ext.value);
    if (!Array.isArray(seq.value)) return [];
    return seq.value.map((item) => (typeof item.value === 'string' ? forge.asn1.derToOid(item.value) : ''));
  } catch {
    return [];
  }
}

/**
 * Certificates after the signer issue certificates: forge has already required
 * basicConstraints cA (and keyCertSign when keyUsage is present); this also
 * requires keyUsage to be present and to assert keyCertSign (RFC 5280 4.2.1.3).
 */
function checkIssuerUsage(cert: forge.pki.Certificate, index: number): void {
  const ku = extension(cert, OID_KEY_USAGE);
  if (ku === undefined || ku.keyCertSign !== true) {
    throw new CertificateChainError('BAD_KEY_USAGE', `chain[${index}] is a CA certificate without keyUsage keyCertSign`);
  }
}

/**
 * RFC 5280 4.1.1.2: the AlgorithmIdentifier next to the signature must equal
 * the one inside tbsCertificate. forge compares only the OIDs; comparing the
 * whole encoding also closes the unsigned parameters to alteration.
 */
function sameSignatureAlgorithm(certAsn1: forge.asn1.Asn1): boolean {
  const top = certAsn1.value;
  if (!Array.isArray(top) || top.length !== 3) return false;
  const [tbs, outer] = top;
  if (tbs === undefined || outer === undefined || !Array.isArray(tbs.value)) return false;
  // tbsCertificate starts with the optional [0] version, then serialNumber, then signature.
  const first = tbs.value[0];
  const hasVersion = first !== undefined && first.tagClass === forge.asn1.Class.CONTEXT_SPECIFIC && first.type === 0;
  const inner = tbs.value[hasVersion ? 2 : 1];
  if (inner === undefined) return false;
  return forge.asn1.toDer(inner).getBytes() === forge.asn1.toDer(outer).getBytes();
}
