/**
 * Making signed images: the manifest for an image, its signature, and the
 * image folder. Used by tests and simulators; the utility signs with
 * scripts/sign-firmware.mjs (the same format, written without this module
 * so that it runs without a build) or with its own tooling.
 */
import { createPrivateKey, sign } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { IMAGE_FILE, MANIFEST_FILE, SIGNATURE_FILE, SIGNER_FILE } from './layout.js';
import { canonicalManifestBytes, compareVersions, MANIFEST_FORMAT, otherTarget, validateManifest, type FirmwareManifest, type FirmwareTarget } from './manifest.js';
import { sha256Hex } from './verify.js';

export interface ManifestFields {
  vendor: string;
  target: FirmwareTarget;
  models: readonly string[];
  version: string;
  /** Versions of the other component. */
  compatibleWith: readonly string[];
  description?: string;
}

/**
 * The manifest of `image`: size and SHA-256 computed, models sorted by name
 * and compatible versions in version order (the order is content, and a
 * sorted list reads best). Throws BAD_MANIFEST for fields the format refuses.
 */
export function createManifest(fields: ManifestFields, image: Uint8Array): FirmwareManifest {
  const manifest: FirmwareManifest = {
    format: MANIFEST_FORMAT,
    vendor: fields.vendor,
    target: fields.target,
    models: [...fields.models].sort(),
    version: fields.version,
    size: image.length,
    sha256: sha256Hex(image),
    compatibleWith: { [otherTarget(fields.target)]: [...fields.compatibleWith] },
  };
  if (fields.description !== undefined) manifest.description = fields.description;
  const checked = validateManifest(manifest);
  checked.compatibleWith[otherTarget(fields.target)]?.sort(compareVersions);
  return checked;
}

/** RSASSA-PKCS1-v1_5 with SHA-256 over the manifest bytes. */
export function signManifestBytes(manifestBytes: Uint8Array, privateKeyPem: string): Buffer {
  return sign('sha256', manifestBytes, createPrivateKey(privateKeyPem));
}

export interface SignedImage {
  manifest: FirmwareManifest;
  /** The canonical manifest bytes: the content of manifest.json. */
  manifestBytes: Buffer;
  signature: Buffer;
  signerChainPem: string;
  image: Uint8Array;
}

export interface SignerCredentials {
  privateKeyPem: string;
  /** The signer certificate, then any intermediates (PEM). */
  signerChainPem: string;
}

export function signImage(fields: ManifestFields, image: Uint8Array, signer: SignerCredentials): SignedImage {
  const manifest = createManifest(fields, image);
  const manifestBytes = canonicalManifestBytes(manifest);
  return { manifest, manifestBytes, signature: signManifestBytes(manifestBytes, signer.privateKeyPem), signerChainPem: signer.signerChainPem, image };
}

/** Writes the four files of an image folder, creating the folder. */
export async function writeImageFolder(dir: string, signed: SignedImage): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, MANIFEST_FILE), signed.manifestBytes);
  await writeFile(path.join(dir, SIGNATURE_FILE), signed.signature);
  await writeFile(path.join(dir, SIGNER_FILE), signed.signerChainPem);
  await writeFile(path.join(dir, IMAGE_FILE), signed.image);
}
