/**
 * Verification of a firmware image: the signer chain up to the utility's root
 * (node-forge, through src/keys/certificate-chain.ts, shared with key bundles
 * and HES commands), the detached signature over manifest.json (node:crypto),
 * then the manifest itself, then the image's size and SHA-256 against the
 * manifest.
 *
 * The signature is RSASSA-PKCS1-v1_5 with SHA-256 over the exact bytes of
 * manifest.json. PKCS#1 v1.5 rather than PSS because it is what code-signing
 * HSMs and `openssl dgst -sha256 -sign` produce without options, and because
 * it is deterministic: re-signing an unchanged manifest gives the same
 * manifest.sig, so a re-signed test image does not show up as a change.
 */
import { createHash, verify as verifySignature } from 'node:crypto';
import forge from 'node-forge';
import {
  certificateFingerprint,
  certificatePublicKey,
  OID_KP_CODE_SIGNING,
  parseCertificateDer,
  parseTrustAnchors,
  subjectCommonName,
  verifySignerChain,
  type SignerPolicy,
} from '../keys/certificate-chain.js';
import { asFirmwareError, FirmwareError } from './errors.js';
import { parseManifest, type FirmwareManifest } from './manifest.js';

/** The signer certificate plus intermediates; a longer chain is not a firmware PKI. */
export const MAX_SIGNER_CHAIN_CERTS = 4;

/** Only code signing: a certificate issued for TLS or for key bundles may not sign firmware. */
const FIRMWARE_SIGNER_POLICY: SignerPolicy = {
  signerPurposes: new Set([OID_KP_CODE_SIGNING]),
  signerLabel: 'firmware signer',
  purposeLabel: 'signing firmware (codeSigning, 1.3.6.1.5.5.7.3.3)',
};

const OID_EXT_KEY_USAGE = '2.5.29.37';

/** Who signed a manifest, for listings and logs. */
export interface FirmwareSigner {
  /** The signer certificate's subject common name ('(no common name)' when it has none). */
  subject: string;
  /** Lower-case hex serial number. */
  serial: string;
  /** SHA-256 of the signer certificate's DER, lower-case hex. */
  fingerprint: string;
  /** When the signer certificate expires: after that, the image is quarantined on the next verification. */
  notAfter: string;
}

export interface VerifiedManifest {
  manifest: FirmwareManifest;
  signer: FirmwareSigner;
}

export interface VerifyManifestOptions {
  /** The utility's root CA certificates (PEM texts; each may hold several). */
  trustAnchorsPem: readonly string[];
  /** The time at which the certificates must be valid. */
  now: Date;
}

/**
 * The certificates of signer.pem, signer first: every PEM block must be a
 * CERTIFICATE, and there must be 1 to MAX_SIGNER_CHAIN_CERTS of them.
 */
export function parseSignerChainPem(pem: string): forge.pki.Certificate[] {
  let blocks: forge.pem.ObjectPEM[];
  try {
    blocks = forge.pem.decode(pem);
  } catch {
    throw new FirmwareError('BAD_CERTIFICATE', 'signer.pem is not PEM');
  }
  if (blocks.length === 0) throw new FirmwareError('BAD_CERTIFICATE', 'signer.pem holds no certificate');
  if (blocks.length > MAX_SIGNER_CHAIN_CERTS) {
    throw new FirmwareError('BAD_CERTIFICATE', `signer.pem holds ${blocks.length} PEM blocks; at most ${MAX_SIGNER_CHAIN_CERTS} certificates (the signer, then intermediates)`);
  }
  return blocks.map((block, i) => {
    if (block.type !== 'CERTIFICATE') throw new FirmwareError('BAD_CERTIFICATE', `signer.pem block ${i} is a ${block.type.slice(0, 40)}, not a CERTIFICATE`);
    return parseCertificateDer(Buffer.from(block.body, 'binary'), `signer.pem certificate ${i}`);
  });
}

/**
 * Verifies a manifest and its detached signature. In this order: the signer
 * chain (BAD_CERTIFICATE; UNTRUSTED_CHAIN; CERT_EXPIRED, CERT_NOT_YET_VALID;
 * BAD_KEY_USAGE, including a signer without the codeSigning extended key
 * usage), the signature over the exact manifest bytes (BAD_SIGNATURE), then
 * the manifest (BAD_MANIFEST). The chain comes first so that a manifest from
 * an unknown signer is reported as untrusted rather than as whatever else is
 * wrong with it; the signature before the manifest so that any edit after
 * signing is reported as one. Throws only FirmwareError.
 */
export function verifyManifest(manifestBytes: Uint8Array, signature: Uint8Array, signerChainPem: string, opts: VerifyManifestOptions): VerifiedManifest {
  try {
    const chain = parseSignerChainPem(signerChainPem);
    verifySignerChain(chain, parseTrustAnchors(opts.trustAnchorsPem), opts.now, FIRMWARE_SIGNER_POLICY);
    const leaf = chain[0] as forge.pki.Certificate;
    // verifySignerChain accepts a signer without extendedKeyUsage; firmware
    // signers must say they are for code signing.
    if (!(leaf.extensions as { id?: unknown }[]).some((e) => e.id === OID_EXT_KEY_USAGE)) {
      throw new FirmwareError('BAD_KEY_USAGE', 'the firmware signer certificate has no extendedKeyUsage; it must carry codeSigning (1.3.6.1.5.5.7.3.3)');
    }
    let good = false;
    try {
      good = verifySignature('sha256', manifestBytes, certificatePublicKey(leaf), signature);
    } catch {
      good = false;
    }
    if (!good) throw new FirmwareError('BAD_SIGNATURE', 'manifest.sig does not verify over manifest.json with the signer certificate (edited after signing, or signed with another key)');
    const manifest = parseManifest(manifestBytes);
    return {
      manifest,
      signer: {
        subject: subjectCommonName(leaf) ?? '(no common name)',
        serial: leaf.serialNumber,
        fingerprint: certificateFingerprint(leaf),
        notAfter: leaf.validity.notAfter.toISOString(),
      },
    };
  } catch (err) {
    // Chain codes are kept; anything unforeseen from forge or node:crypto fails closed.
    throw asFirmwareError(err, 'BAD_SIGNATURE', 'manifest verification');
  }
}

/** Lower-case hex SHA-256. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * Checks an image against its (verified) manifest: size first, as it is
 * known without hashing, then SHA-256. Throws SIZE_MISMATCH or HASH_MISMATCH.
 */
export function verifyImage(manifest: FirmwareManifest, imageBytes: Uint8Array): void {
  if (imageBytes.length !== manifest.size) {
    throw new FirmwareError('SIZE_MISMATCH', `image.bin is ${imageBytes.length} bytes; the manifest says ${manifest.size}`);
  }
  const digest = sha256Hex(imageBytes);
  if (digest !== manifest.sha256) {
    throw new FirmwareError('HASH_MISMATCH', `image.bin has SHA-256 ${digest}; the manifest says ${manifest.sha256}`);
  }
}
