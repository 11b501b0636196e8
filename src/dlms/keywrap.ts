import { createCipheriv, createDecipheriv } from 'node:crypto';
import { DlmsError } from './errors.js';

/**
 * AES key wrap (RFC 3394) with the default initial value A6A6A6A6A6A6A6A6, as
 * DLMS uses it for the global key transfer (Security setup method 2) and as
 * key bundles use it for meter keys. OpenSSL implements it (`id-aesNNN-wrap`),
 * so node:crypto does the work.
 */
const DEFAULT_IV = Buffer.from('a6a6a6a6a6a6a6a6', 'hex');

function algorithm(kek: Uint8Array): string {
  switch (kek.length) {
    case 16:
      return 'id-aes128-wrap';
    case 24:
      return 'id-aes192-wrap';
    case 32:
      return 'id-aes256-wrap';
    default:
      throw new DlmsError('BAD_KEY', `key-encryption key must be 16, 24 or 32 bytes, not ${kek.length}`);
  }
}

/** Wraps `key` (a multiple of 8 bytes, at least 16) under `kek`. */
export function wrapKey(kek: Uint8Array, key: Uint8Array): Buffer {
  if (key.length < 16 || key.length % 8 !== 0) {
    throw new DlmsError('BAD_KEY', `a wrapped key must be a multiple of 8 bytes and at least 16, not ${key.length}`);
  }
  const cipher = createCipheriv(algorithm(kek), kek, DEFAULT_IV);
  return Buffer.concat([cipher.update(key), cipher.final()]);
}

/** Unwraps and checks the integrity value; a wrong KEK or altered input is BAD_KEY. */
export function unwrapKey(kek: Uint8Array, wrapped: Uint8Array): Buffer {
  if (wrapped.length < 24 || wrapped.length % 8 !== 0) {
    throw new DlmsError('BAD_KEY', `a wrapped key must be a multiple of 8 bytes and at least 24, not ${wrapped.length}`);
  }
  const decipher = createDecipheriv(algorithm(kek), kek, DEFAULT_IV);
  try {
    return Buffer.concat([decipher.update(wrapped), decipher.final()]);
  } catch {
    throw new DlmsError('BAD_KEY', 'key unwrap failed: wrong key-encryption key or altered wrapped key');
  }
}
