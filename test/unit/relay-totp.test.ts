import { describe, expect, it } from 'vitest';
import {
  base32Decode,
  base32Encode,
  generateTotpSecret,
  hotp,
  totp,
  totpStep,
  totpUri,
  TotpError,
  verifyTotp,
  type TotpAlgorithm,
} from '../../src/relay/totp.js';

// RFC 6238 Appendix B: the seeds are ASCII "1234567890" repeated to the hash's length.
const SEEDS: Record<TotpAlgorithm, Buffer> = {
  sha1: Buffer.from('12345678901234567890', 'ascii'),
  sha256: Buffer.from('12345678901234567890123456789012', 'ascii'),
  sha512: Buffer.from('1234567890123456789012345678901234567890123456789012345678901234', 'ascii'),
};

const VECTORS: Array<[seconds: number, step: string, codes: Record<TotpAlgorithm, string>]> = [
  [59, '0000000000000001', { sha1: '94287082', sha256: '46119246', sha512: '90693936' }],
  [1111111109, '00000000023523EC', { sha1: '07081804', sha256: '68084774', sha512: '25091201' }],
  [1111111111, '00000000023523ED', { sha1: '14050471', sha256: '67062674', sha512: '99943326' }],
  [1234567890, '000000000273EF07', { sha1: '89005924', sha256: '91819424', sha512: '93441116' }],
  [2000000000, '0000000003F940AA', { sha1: '69279037', sha256: '90698825', sha512: '38618901' }],
  [20000000000, '0000000027BC86AA', { sha1: '65353130', sha256: '77737706', sha512: '47863826' }],
];

describe('TOTP (RFC 6238 Appendix B)', () => {
  for (const [seconds, step, codes] of VECTORS) {
    for (const algorithm of ['sha1', 'sha256', 'sha512'] as const) {
      it(`T=${seconds} ${algorithm}: ${codes[algorithm]}`, () => {
        expect(totpStep(seconds * 1000)).toBe(parseInt(step, 16));
        expect(totp(SEEDS[algorithm], seconds * 1000, { algorithm, digits: 8 })).toBe(codes[algorithm]);
        // The 6-digit code is the same value modulo 10^6.
        expect(totp(SEEDS[algorithm], seconds * 1000, { algorithm })).toBe(codes[algorithm].slice(2));
      });
    }
  }

  it('HOTP matches RFC 4226 Appendix D', () => {
    const expected = ['755224', '287082', '359152', '969429', '338314', '254676', '287922', '162583', '399871', '520489'];
    expect(expected.map((_, counter) => hotp(SEEDS.sha1, counter))).toEqual(expected);
  });

  it('refuses unsupported options with a typed error', () => {
    expect(() => totp(SEEDS.sha1, 0, { digits: 4 })).toThrow(TotpError);
    expect(() => totp(SEEDS.sha1, 0, { period: 0 })).toThrow(expect.objectContaining({ code: 'BAD_OPTIONS' }));
  });
});

describe('verifyTotp', () => {
  const secret = SEEDS.sha1;
  const now = 1_700_000_015_000; // 15 s into a step
  const step = totpStep(now);
  const codeAt = (s: number): string => hotp(secret, s);

  it('accepts the current step and one step either side, not two', () => {
    expect(verifyTotp(secret, codeAt(step), now)).toEqual({ ok: true, step, drift: 0 });
    expect(verifyTotp(secret, codeAt(step - 1), now)).toEqual({ ok: true, step: step - 1, drift: -1 });
    expect(verifyTotp(secret, codeAt(step + 1), now)).toEqual({ ok: true, step: step + 1, drift: 1 });
    expect(verifyTotp(secret, codeAt(step - 2), now)).toEqual({ ok: false, reason: 'BAD_CODE' });
    expect(verifyTotp(secret, codeAt(step + 2), now)).toEqual({ ok: false, reason: 'BAD_CODE' });
    expect(verifyTotp(secret, codeAt(step + 1), now, { window: 0 })).toEqual({ ok: false, reason: 'BAD_CODE' });
  });

  it('refuses a code for a step at or before the last accepted one as replayed', () => {
    expect(verifyTotp(secret, codeAt(step), now, { lastStep: step })).toEqual({ ok: false, reason: 'REPLAYED_CODE' });
    expect(verifyTotp(secret, codeAt(step - 1), now, { lastStep: step })).toEqual({ ok: false, reason: 'REPLAYED_CODE' });
    expect(verifyTotp(secret, codeAt(step + 1), now, { lastStep: step })).toMatchObject({ ok: true, step: step + 1 });
  });

  it('refuses malformed codes', () => {
    const good = codeAt(step);
    for (const bad of ['', '12345', `${good}0`, ` ${good.slice(1)}`, 'abcdef', `${good.slice(0, 5)}\u0660`]) {
      expect(verifyTotp(secret, bad, now)).toEqual({ ok: false, reason: 'BAD_CODE' });
    }
  });
});

describe('base32 (RFC 4648 section 10)', () => {
  const vectors: Array<[string, string]> = [
    ['', ''],
    ['f', 'MY======'],
    ['fo', 'MZXQ===='],
    ['foo', 'MZXW6==='],
    ['foob', 'MZXW6YQ='],
    ['fooba', 'MZXW6YTB'],
    ['foobar', 'MZXW6YTBOI======'],
  ];
  for (const [plain, encoded] of vectors) {
    it(`"${plain}" <-> "${encoded}"`, () => {
      expect(base32Encode(Buffer.from(plain, 'ascii'))).toBe(encoded);
      expect(base32Encode(Buffer.from(plain, 'ascii'), { padding: false })).toBe(encoded.replace(/=+$/, ''));
      expect(base32Decode(encoded).toString('ascii')).toBe(plain);
      expect(base32Decode(encoded.replace(/=+$/, '').toLowerCase()).toString('ascii')).toBe(plain);
    });
  }

  it('round-trips random secrets, ignoring spaces as people type them', () => {
    for (let i = 0; i < 50; i++) {
      const secret = generateTotpSecret(16 + (i % 49));
      const text = base32Encode(secret, { padding: false });
      expect(base32Decode(text.replace(/(.{4})/g, '$1 '))).toEqual(secret);
    }
  });

  it('refuses characters outside the alphabet and non-zero trailing bits, without echoing the input', () => {
    expect(() => base32Decode('MZXW1===')).toThrow(expect.objectContaining({ code: 'BAD_BASE32' }));
    expect(base32Decode('MY').toString()).toBe('f');
    expect(() => base32Decode('MZ')).toThrow(expect.objectContaining({ code: 'BAD_BASE32' }));
    expect(() => base32Decode('MZXW6YTBO')).toThrow(expect.objectContaining({ code: 'BAD_BASE32' })); // a whole unused character
    let message = '';
    expect(() => {
      try {
        base32Decode('SECRET8VALUE');
      } catch (err) {
        message = (err as Error).message;
        throw err;
      }
    }).toThrow(TotpError);
    expect(message).not.toContain('SECRET');
  });
});

describe('otpauth URI', () => {
  it('carries the base32 secret, issuer, algorithm, digits and period', () => {
    const uri = totpUri({ secret: Buffer.from('foobar'), account: 'alice@site 1', issuer: 'ami-gateway' });
    expect(uri).toBe('otpauth://totp/ami-gateway:alice%40site%201?secret=MZXW6YTBOI&issuer=ami-gateway&algorithm=SHA1&digits=6&period=30');
    const url = new URL(uri);
    expect(base32Decode(url.searchParams.get('secret')!).toString()).toBe('foobar');
  });
});
