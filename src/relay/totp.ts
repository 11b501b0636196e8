import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * TOTP (RFC 6238) over HOTP (RFC 4226), with base32 (RFC 4648) secrets as
 * authenticator apps take them. node:crypto only.
 *
 * Defaults are what every authenticator app understands: HMAC-SHA1, a 30 s
 * step from the Unix epoch, 6 digits. SHA-256, SHA-512 and 8 digits are here
 * for the RFC's test vectors and for apps that support them.
 */

export type TotpAlgorithm = 'sha1' | 'sha256' | 'sha512';

export interface TotpOptions {
  /** HMAC hash; 'sha1' by default. */
  algorithm?: TotpAlgorithm;
  /** Code length, 6 (default) to 8 digits. */
  digits?: number;
  /** Time step X in seconds; 30 by default. */
  period?: number;
  /** T0, the Unix time (seconds) steps count from; 0 by default. */
  t0?: number;
}

export type TotpErrorCode = 'BAD_BASE32' | 'BAD_OPTIONS';

export class TotpError extends Error {
  override readonly name = 'TotpError';
  constructor(
    readonly code: TotpErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export const TOTP_DEFAULTS = { algorithm: 'sha1', digits: 6, period: 30, t0: 0 } as const satisfies Required<TotpOptions>;

function resolve(options: TotpOptions = {}): Required<TotpOptions> {
  const o = { ...TOTP_DEFAULTS, ...options };
  if (o.algorithm !== 'sha1' && o.algorithm !== 'sha256' && o.algorithm !== 'sha512') throw new TotpError('BAD_OPTIONS', `unsupported algorithm "${String(o.algorithm)}"`);
  if (!Number.isInteger(o.digits) || o.digits < 6 || o.digits > 8) throw new TotpError('BAD_OPTIONS', 'digits must be 6, 7 or 8');
  if (!Number.isInteger(o.period) || o.period < 1) throw new TotpError('BAD_OPTIONS', 'period must be a positive whole number of seconds');
  if (!Number.isInteger(o.t0)) throw new TotpError('BAD_OPTIONS', 't0 must be a whole number of seconds');
  return o;
}

// ---------------------------------------------------------------------------
// base32 (RFC 4648 section 6)

const BASE32_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** Base32 with the RFC 4648 alphabet; `padding: false` drops the '=' (otpauth URIs omit it). */
export function base32Encode(bytes: Uint8Array, options: { padding?: boolean } = {}): string {
  let out = '';
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = ((buffer << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      out += BASE32_ALPHABET[(buffer >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32_ALPHABET[(buffer << (5 - bits)) & 31];
  if (options.padding !== false) while (out.length % 8 !== 0) out += '=';
  return out;
}

/**
 * Decodes base32, case-insensitive, ignoring spaces and hyphens (as people
 * type secrets) and optional trailing padding. Anything else is BAD_BASE32;
 * the message never repeats the input, which may be a secret.
 */
export function base32Decode(text: string): Buffer {
  const cleaned = text.replace(/[\s-]/g, '').toUpperCase().replace(/=+$/, '');
  const out: number[] = [];
  let buffer = 0;
  let bits = 0;
  for (const char of cleaned) {
    const value = BASE32_ALPHABET.indexOf(char);
    if (value < 0) throw new TotpError('BAD_BASE32', 'not base32 (RFC 4648: A-Z and 2-7)');
    buffer = ((buffer << 5) | value) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out.push((buffer >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  // Leftover bits must be zero padding and fewer than 5 (no whole unused character).
  if (bits >= 5 || (buffer & ((1 << bits) - 1)) !== 0) throw new TotpError('BAD_BASE32', 'not base32: trailing bits are not zero');
  return Buffer.from(out);
}

// ---------------------------------------------------------------------------
// HOTP / TOTP

/** HOTP (RFC 4226) value for a counter, as a zero-padded decimal string. */
export function hotp(secret: Uint8Array, counter: number | bigint, options: Pick<TotpOptions, 'algorithm' | 'digits'> = {}): string {
  const { algorithm, digits } = resolve(options);
  const c = BigInt(counter);
  if (c < 0n || c > 0xffff_ffff_ffff_ffffn) throw new TotpError('BAD_OPTIONS', 'the counter must fit in 64 bits');
  const message = Buffer.alloc(8);
  message.writeBigUInt64BE(c);
  const mac = createHmac(algorithm, secret).update(message).digest();
  const offset = mac[mac.length - 1]! & 0x0f;
  const binary = mac.readUInt32BE(offset) & 0x7fff_ffff;
  return String(binary % 10 ** digits).padStart(digits, '0');
}

/** The time step T = floor((unix seconds - T0) / X) for a time in milliseconds. */
export function totpStep(timeMs: number, options: Pick<TotpOptions, 'period' | 't0'> = {}): number {
  const { period, t0 } = resolve(options);
  return Math.floor((Math.floor(timeMs / 1000) - t0) / period);
}

/** The TOTP code at a time (milliseconds since the epoch). */
export function totp(secret: Uint8Array, timeMs: number, options: TotpOptions = {}): string {
  return hotp(secret, totpStep(timeMs, options), options);
}

export interface TotpVerifyOptions extends TotpOptions {
  /** Steps accepted either side of the current one; 1 by default (±30 s of clock drift). */
  window?: number;
  /**
   * The last step a code was accepted for (replay protection, RFC 6238
   * section 5.2): a code for this step or an earlier one is REPLAYED_CODE.
   */
  lastStep?: number | null;
}

export type TotpVerifyResult =
  | { ok: true; step: number; /** matched step minus current step: -window..window */ drift: number }
  | { ok: false; reason: 'BAD_CODE' | 'REPLAYED_CODE' };

/**
 * Checks a code against the steps in the window around `timeMs`. Every step
 * of the window is computed and compared in constant time, whatever matches,
 * so the time taken says nothing about the code. The accepted step is the
 * earliest one after `lastStep` that matches.
 */
export function verifyTotp(secret: Uint8Array, code: string, timeMs: number, options: TotpVerifyOptions = {}): TotpVerifyResult {
  const resolved = resolve(options);
  const window = options.window ?? 1;
  if (!Number.isInteger(window) || window < 0 || window > 10) throw new TotpError('BAD_OPTIONS', 'window must be 0 to 10 steps');
  const candidate = Buffer.from(code, 'utf8');
  const wellFormed = candidate.length === resolved.digits && /^\d+$/.test(code);
  // Compare against a same-length stand-in when malformed, so the work done does not depend on the input.
  const probe = wellFormed ? candidate : Buffer.alloc(resolved.digits, 0x78);
  const current = totpStep(timeMs, resolved);
  const lastStep = options.lastStep ?? null;
  let accepted: number | undefined;
  let replayed = false;
  for (let drift = -window; drift <= window; drift++) {
    const step = current + drift;
    if (step < 0) continue;
    const matches = timingSafeEqual(Buffer.from(hotp(secret, step, resolved), 'utf8'), probe) && wellFormed;
    if (!matches) continue;
    if (lastStep !== null && step <= lastStep) replayed = true;
    else if (accepted === undefined) accepted = step;
  }
  if (accepted !== undefined) return { ok: true, step: accepted, drift: accepted - current };
  return { ok: false, reason: replayed ? 'REPLAYED_CODE' : 'BAD_CODE' };
}

/** A fresh random secret; 20 bytes (160 bits, as RFC 4226 recommends for HMAC-SHA1) by default. */
export function generateTotpSecret(bytes = 20): Buffer {
  if (!Number.isInteger(bytes) || bytes < 16 || bytes > 64) throw new TotpError('BAD_OPTIONS', 'a TOTP secret must be 16 to 64 bytes');
  return randomBytes(bytes);
}

/**
 * The `otpauth://totp/ISSUER:ACCOUNT?secret=...` URI authenticator apps
 * import (usually as a QR code). It contains the secret: show it once, never log it.
 */
export function totpUri(params: { secret: Uint8Array; account: string; issuer: string } & TotpOptions): string {
  const { algorithm, digits, period } = resolve(params);
  const label = `${encodeURIComponent(params.issuer)}:${encodeURIComponent(params.account)}`;
  const query = [
    `secret=${base32Encode(params.secret, { padding: false })}`,
    `issuer=${encodeURIComponent(params.issuer)}`,
    `algorithm=${algorithm.toUpperCase()}`,
    `digits=${digits}`,
    `period=${period}`,
  ].join('&');
  return `otpauth://totp/${label}?${query}`;
}
