/**
 * The one error type of the firmware module. Every refusal, whether an image
 * that fails verification or an update that would leave a meter with an
 * incompatible pair, is a FirmwareError with a stable code, so that the CLI,
 * logs and (later) the rollout can act on the code and show the message.
 */
import { CertificateChainError } from '../keys/certificate-chain.js';

export type FirmwareErrorCode =
  // --- The image folder is incomplete.
  /** The folder holds image files but no manifest.json. */
  | 'NO_MANIFEST'
  /** manifest.sig or signer.pem is missing. */
  | 'NO_SIGNATURE'
  /** image.bin is missing. */
  | 'MISSING_IMAGE'
  // --- The manifest and its signature.
  /** manifest.json is not a well-formed, canonical manifest (docs: firmware-images/README.md). */
  | 'BAD_MANIFEST'
  /** signer.pem holds something other than 1 to 4 RSA X.509 certificates. */
  | 'BAD_CERTIFICATE'
  /** The signer chain does not lead to a configured trust anchor (or none is configured). */
  | 'UNTRUSTED_CHAIN'
  | 'CERT_EXPIRED'
  | 'CERT_NOT_YET_VALID'
  /** The signer may not sign firmware: no codeSigning extended key usage, no digitalSignature, or a CA certificate. */
  | 'BAD_KEY_USAGE'
  /** The signature does not verify over manifest.json with the signer's key. */
  | 'BAD_SIGNATURE'
  // --- The image against its manifest.
  | 'SIZE_MISMATCH'
  | 'HASH_MISMATCH'
  /** The image is larger than the repository accepts. */
  | 'TOO_LARGE'
  /** Two good images claim the same target and version for a common model. */
  | 'DUPLICATE_IMAGE'
  /** The manifest on disk is no longer the one verified at load time. */
  | 'CHANGED_ON_DISK'
  // --- Repository look-ups.
  /** The images folder cannot be read. */
  | 'BAD_REPOSITORY'
  | 'UNKNOWN_IMAGE'
  /** verifyBeforeSend on an image that is quarantined. */
  | 'QUARANTINED'
  // --- Update planning.
  /** The update would leave (or pass through) a pair of versions that the manifests do not declare compatible. */
  | 'INCOMPATIBLE'
  /** No good image for the wanted target and version (and the meter's model). */
  | 'NO_IMAGE'
  /** The meter's current firmware versions are not known, so no pair can be checked. */
  | 'UNKNOWN_FIRMWARE'
  /** Several images fit and only the meter's model would tell them apart. */
  | 'MODEL_UNKNOWN';

export class FirmwareError extends Error {
  override readonly name = 'FirmwareError';
  constructor(
    readonly code: FirmwareErrorCode,
    message: string,
    /** The image concerned, when there is one (its id in the repository). */
    readonly imageId?: string,
  ) {
    super(message);
  }
}

/**
 * The FirmwareError for a chain failure: the certificate-chain codes are kept
 * as they are, so a firmware signer is refused with the same words as a
 * key-bundle or command signer.
 */
export function firmwareErrorOfChain(err: CertificateChainError, imageId?: string): FirmwareError {
  return new FirmwareError(err.code, err.message, imageId);
}

/** `err` as a FirmwareError: FirmwareError and CertificateChainError keep their code; anything else becomes `fallback`, with only its class name. */
export function asFirmwareError(err: unknown, fallback: FirmwareErrorCode, what: string, imageId?: string): FirmwareError {
  if (err instanceof FirmwareError) {
    return err.imageId !== undefined || imageId === undefined ? err : new FirmwareError(err.code, err.message, imageId);
  }
  if (err instanceof CertificateChainError) return firmwareErrorOfChain(err, imageId);
  const kind = err instanceof Error ? err.name : typeof err;
  return new FirmwareError(fallback, `${what} failed (unexpected ${kind})`, imageId);
}
