import { createPublicKey, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, fsyncSync, linkSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import { generateGatewayKeyPair, type RsaKeyPairPem } from './pki.js';
import { KeyStoreError } from './keystore.js';

/**
 * Secrets the keyring keeps on disk when they are not given as Node-RED
 * credentials: the device master key (encrypts meter keys at rest) and the
 * gateway's RSA key pair (key bundles are encrypted to it). Each is created
 * once, with mode 0600, never overwritten ('wx'), and tightened if someone
 * loosened it.
 */
export const MASTER_KEY_FILE = 'master.key';
export const GATEWAY_KEY_FILE = 'gateway-key.pem';

/**
 * Creates the file atomically: written and synced under a temporary name,
 * then hard-linked into place, so a crash or a full disk never leaves an
 * empty key file behind, and a file that exists is never replaced.
 */
function readOrCreate(file: string, create: () => string): string {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  if (!existsSync(file)) {
    const temporary = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      const fd = openSync(temporary, 'wx', 0o600);
      try {
        writeSync(fd, create());
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      try {
        linkSync(temporary, file);
      } catch (err) {
        // Another start created it first: keep theirs.
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    } finally {
      rmSync(temporary, { force: true });
    }
  }
  if ((statSync(file).mode & 0o077) !== 0) chmodSync(file, 0o600);
  return readFileSync(file, 'utf8');
}

/** Parses a master key given as 64 hex characters. */
export function parseMasterKey(text: string): Buffer {
  const trimmed = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(trimmed)) throw new KeyStoreError('BAD_MASTER_KEY', 'the master key must be 64 hex characters');
  return Buffer.from(trimmed, 'hex');
}

export function ensureMasterKeyFile(directory: string): Buffer {
  const file = path.join(directory, MASTER_KEY_FILE);
  return parseMasterKey(readOrCreate(file, () => `${randomBytes(32).toString('hex')}\n`));
}

/** The gateway key pair from a PEM private key (credential or file). */
export function keyPairFromPrivatePem(privateKeyPem: string): RsaKeyPairPem {
  const publicKeyPem = createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString();
  return { privateKeyPem, publicKeyPem };
}

export function ensureGatewayKeyFile(directory: string): RsaKeyPairPem {
  const file = path.join(directory, GATEWAY_KEY_FILE);
  return keyPairFromPrivatePem(readOrCreate(file, () => generateGatewayKeyPair().privateKeyPem));
}

/** Reads PEM certificates from a file: every CERTIFICATE block in it. */
export function readTrustAnchors(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error(`${file} holds no PEM certificate`);
  return blocks;
}
