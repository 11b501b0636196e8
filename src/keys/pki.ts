/**
 * A small PKI for the HES simulator and tests: a root CA, the HES
 * key-management signing certificate, and a lower-level issuer for odd
 * certificates (expired, foreign root, missing key usage, intermediates).
 * Not for production: keys are returned as unencrypted PEM.
 *
 * RSA keys come from node:crypto (OpenSSL); node-forge, whose key generation
 * is pure JavaScript and slow, only builds and signs the certificates.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import forge from 'node-forge';

export interface RsaKeyPairPem {
  /** PKCS#8 PEM. */
  privateKeyPem: string;
  /** SPKI PEM. */
  publicKeyPem: string;
}

/** A fresh RSA key pair (2048 bits unless told otherwise), via node:crypto. */
export function generateRsaKeyPair(modulusLength = 2048): RsaKeyPairPem {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/** The gateway's key pair, to which key bundles are encrypted (RSA 2048). */
export function generateGatewayKeyPair(): RsaKeyPairPem {
  return generateRsaKeyPair(2048);
}

export interface KeyUsageFlags {
  digitalSignature?: boolean;
  nonRepudiation?: boolean;
  keyEncipherment?: boolean;
  dataEncipherment?: boolean;
  keyAgreement?: boolean;
  keyCertSign?: boolean;
  cRLSign?: boolean;
}

export interface IssueCertificateOptions {
  subjectCN: string;
  /** Optional organisation (O) in the subject. */
  subjectO?: string;
  /** The subject's public key (SPKI PEM). */
  publicKeyPem: string;
  /** The issuer's certificate; omit for a self-signed certificate. */
  issuerCertPem?: string;
  /** The issuer's private key (for a self-signed certificate, the subject's own). */
  issuerKeyPem: string;
  notBefore: Date;
  notAfter: Date;
  /** basicConstraints cA (the extension is critical). */
  ca: boolean;
  /** pathLenConstraint for a CA; omitted means none. */
  pathLen?: number;
  /** false leaves out basicConstraints altogether (then `ca` is not written). Default true. */
  basicConstraints?: boolean;
  /** keyUsage flags (critical extension); null leaves the extension out. */
  keyUsage: KeyUsageFlags | null;
  /** extendedKeyUsage purposes as OIDs, e.g. '1.3.6.1.5.5.7.3.3' (codeSigning). */
  extKeyUsage?: { oids: string[]; critical?: boolean };
  /** Serial number in hex; random (positive, 16 bytes) when omitted. */
  serial?: string;
}

/** Issues one certificate, signed with SHA-256 and RSA PKCS#1 v1.5. Returns PEM. */
export function issueCertificate(opts: IssueCertificateOptions): string {
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(opts.publicKeyPem);
  cert.serialNumber = serialHex(opts.serial);
  cert.validity.notBefore = opts.notBefore;
  cert.validity.notAfter = opts.notAfter;

  const subject: forge.pki.CertificateField[] = [{ name: 'commonName', value: opts.subjectCN }];
  if (opts.subjectO !== undefined) subject.push({ name: 'organizationName', value: opts.subjectO });
  cert.setSubject(subject);
  const issuerCert = opts.issuerCertPem === undefined ? undefined : forge.pki.certificateFromPem(opts.issuerCertPem);
  if (issuerCert === undefined) {
    cert.setIssuer(subject);
  } else {
    cert.setIssuer(issuerCert.subject.attributes);
  }

  // Extension objects are forge's loosely typed descriptors (any[] in @types/node-forge).
  const exts: Record<string, unknown>[] = [];
  if (opts.basicConstraints !== false) {
    const bc: Record<string, unknown> = { name: 'basicConstraints', critical: true, cA: opts.ca };
    if (opts.ca && opts.pathLen !== undefined) bc.pathLenConstraint = opts.pathLen;
    exts.push(bc);
  }
  if (opts.keyUsage !== null) {
    exts.push({ name: 'keyUsage', critical: true, ...opts.keyUsage });
  }
  if (opts.extKeyUsage !== undefined) {
    const eku: Record<string, unknown> = { name: 'extKeyUsage', critical: opts.extKeyUsage.critical === true };
    // forge writes each true-valued key as a purpose: a name it knows
    // ('codeSigning'), or else a dotted OID. A dotted OID it knows must be
    // given by its name, or forge tries to encode the name as an OID.
    for (const oid of opts.extKeyUsage.oids) eku[forge.pki.oids[oid] ?? oid] = true;
    exts.push(eku);
  }
  exts.push({ name: 'subjectKeyIdentifier' });
  const authorityKeyId = (issuerCert ?? cert).generateSubjectKeyIdentifier().getBytes();
  exts.push({ name: 'authorityKeyIdentifier', keyIdentifier: authorityKeyId });
  cert.setExtensions(exts);

  cert.sign(forge.pki.privateKeyFromPem(opts.issuerKeyPem), forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

function serialHex(serial: string | undefined): string {
  if (serial === undefined) {
    const bytes = randomBytes(16);
    // Positive, and no leading zero byte (DER INTEGER minimal encoding).
    bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x40;
    return bytes.toString('hex');
  }
  if (!/^([0-9a-fA-F]{2})+$/.test(serial)) throw new TypeError('serial must be an even number of hex digits');
  const hex = serial.toLowerCase().replace(/^(00)+(?=[0-7])/, '') || '00';
  // A leading byte of 0x80 or more would make the INTEGER negative.
  return /^[89a-f]/.test(hex) ? `00${hex}` : hex;
}

export interface TestPki {
  rootCertPem: string;
  rootKeyPem: string;
  /** HES key-management signing certificate: issued by the root, keyUsage digitalSignature, CA false. */
  kmCertPem: string;
  kmKeyPem: string;
}

export interface TestPkiOptions {
  /** Reference time; default now. */
  now?: Date;
  /** Validity of the key-management certificate from `now`; default 365 days. The root gets ten times that. */
  validDays?: number;
  /** Prefix of the common names (and the organisation); default 'AMI Test'. */
  commonNamePrefix?: string;
}

const DAY_MS = 24 * 60 * 60 * 1000;
const HOUR_MS = 60 * 60 * 1000;

/**
 * A root CA and a key-management signing certificate issued by it. Both are
 * valid from a day (root) or an hour (signer) before `now`, to allow for
 * clock skew.
 */
export function createTestPki(opts: TestPkiOptions = {}): TestPki {
  const now = opts.now ?? new Date();
  const validDays = opts.validDays ?? 365;
  const prefix = opts.commonNamePrefix ?? 'AMI Test';
  const root = generateRsaKeyPair();
  const km = generateRsaKeyPair();
  const rootCertPem = issueCertificate({
    subjectCN: `${prefix} Root CA`,
    subjectO: prefix,
    publicKeyPem: root.publicKeyPem,
    issuerKeyPem: root.privateKeyPem,
    notBefore: new Date(now.getTime() - DAY_MS),
    notAfter: new Date(now.getTime() + 10 * validDays * DAY_MS),
    ca: true,
    keyUsage: { keyCertSign: true, cRLSign: true },
  });
  const kmCertPem = issueCertificate({
    subjectCN: `${prefix} HES Key Management`,
    subjectO: prefix,
    publicKeyPem: km.publicKeyPem,
    issuerCertPem: rootCertPem,
    issuerKeyPem: root.privateKeyPem,
    notBefore: new Date(now.getTime() - HOUR_MS),
    notAfter: new Date(now.getTime() + validDays * DAY_MS),
    ca: false,
    keyUsage: { digitalSignature: true },
  });
  return { rootCertPem, rootKeyPem: root.privateKeyPem, kmCertPem, kmKeyPem: km.privateKeyPem };
}
