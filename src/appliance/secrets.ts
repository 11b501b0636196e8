import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const CREDENTIAL_SECRET_FILE = '.credential-secret';

export interface CredentialSecret {
  secret: string;
  source: 'environment' | 'created' | 'file';
  /** Set when an existing file was readable by others and was tightened to 0600. */
  tightened?: boolean;
}

/**
 * The key Node-RED encrypts flow credentials with: AMI_CREDENTIAL_SECRET, or
 * a random secret generated on first start and kept in a 0600 file in the
 * data directory (so credentials survive restarts without being in the clear).
 */
export function ensureCredentialSecret(dataDir: string, fromEnvironment: string | undefined): CredentialSecret {
  if (fromEnvironment !== undefined) return { secret: fromEnvironment, source: 'environment' };
  const file = path.join(dataDir, CREDENTIAL_SECRET_FILE);
  try {
    // 'wx' fails if the file exists: two starts racing never overwrite each other's secret.
    const secret = randomBytes(32).toString('hex');
    writeFileSync(file, `${secret}\n`, { mode: 0o600, flag: 'wx' });
    return { secret, source: 'created' };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  let tightened = false;
  if ((statSync(file).mode & 0o077) !== 0) {
    chmodSync(file, 0o600);
    tightened = true;
  }
  const secret = readFileSync(file, 'utf8').trim();
  if (secret.length < 16) throw new Error(`${file} holds no usable credential secret (shorter than 16 characters)`);
  return { secret, source: 'file', tightened };
}
