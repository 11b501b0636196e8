import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { cborDecode, cborEncode } from '../../src/coap/cbor.js';
import {
  createKeyBundle,
  KeyBundleError,
  keyStoreFingerprint,
  openKeyBundle,
  publicKeyFingerprint,
  type KeyBundle,
  type KeyBundleErrorCode,
  type MeterKeys,
} from '../../src/keys/bundle.js';
import { cborTagsIn } from '../helpers/cbor-tags.js';
import { createTestPki, generateGatewayKeyPair, generateRsaKeyPair, issueCertificate, type RsaKeyPairPem, type TestPki } from '../../src/keys/pki.js';

const DAY = 24 * 60 * 60 * 1000;
const NOW = new Date('2026-06-01T12:00:00Z');
const GATEWAY = 'gw-0042';
const CODE_SIGNING = '1.3.6.1.5.5.7.3.3';
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

function meter(i: number, epoch = 3): MeterKeys {
  return {
    systemTitle: `4d4d4d00000000${i.toString(16).padStart(2, '0')}`,
    meter: `meter-${i}`,
    epoch,
    ek: randomBytes(16),
    ak: randomBytes(16),
    kek: randomBytes(16),
  };
}

const bundle: KeyBundle = {
  gateway: GATEWAY,
  epoch: 7,
  since: 0,
  full: true,
  issuedAt: NOW.getTime(),
  meters: [meter(1), meter(2, 7), meter(3, 1)],
  removed: ['4d4d4d00000000ff'],
};

/** Every secret that must never appear in an error message. */
const secretHex = bundle.meters.flatMap((m) => [m.ek, m.ak, m.kek].map((k) => k.toString('hex')));

let pki: TestPki;
let gw: RsaKeyPairPem;
let otherGw: RsaKeyPairPem;
let spare: RsaKeyPairPem; // for intermediates and foreign roots: certificates may share a key
let good: Buffer;
let kmPublicPem: string;

function open(bytes: Uint8Array, overrides: Partial<Parameters<typeof openKeyBundle>[1]> = {}): KeyBundle {
  return openKeyBundle(bytes, {
    trustAnchorsPem: [pki.rootCertPem],
    gatewayPrivateKeyPem: gw.privateKeyPem,
    gateway: GATEWAY,
    now: NOW,
    ...overrides,
  });
}

const thrown: KeyBundleError[] = [];

/** Opens and asserts the rejection code; nothing may be returned. */
function expectRejected(code: KeyBundleErrorCode, bytes: Uint8Array, overrides: Partial<Parameters<typeof openKeyBundle>[1]> = {}): KeyBundleError {
  let result: KeyBundle | undefined;
  let error: unknown;
  try {
    result = open(bytes, overrides);
  } catch (err) {
    error = err;
  }
  expect(result).toBeUndefined();
  expect(error).toBeInstanceOf(KeyBundleError);
  const e = error as KeyBundleError;
  expect({ code: e.code, message: e.message }).toEqual({ code, message: expect.any(String) });
  thrown.push(e);
  return e;
}

function sealWith(signer: { certPem: string; keyPem: string; intermediates?: string[] }, recipientPublicKeyPem = gw.publicKeyPem, content: KeyBundle = bundle): Buffer {
  return createKeyBundle(content, {
    signerKeyPem: signer.keyPem,
    signerChainPem: [signer.certPem, ...(signer.intermediates ?? [])],
    recipientPublicKeyPem,
  });
}

/** A signing certificate under the test root, with the km key unless told otherwise. */
function kmCert(over: Partial<Parameters<typeof issueCertificate>[0]> = {}): string {
  return issueCertificate({
    subjectCN: 'HES Key Management (variant)',
    publicKeyPem: kmPublicPem,
    issuerCertPem: pki.rootCertPem,
    issuerKeyPem: pki.rootKeyPem,
    notBefore: new Date(NOW.getTime() - DAY),
    notAfter: new Date(NOW.getTime() + DAY),
    ca: false,
    keyUsage: { digitalSignature: true },
    ...over,
  });
}


type Outer = { v: number; body: Uint8Array; sig: Uint8Array; chain: Uint8Array[] };
function outerOf(bytes: Uint8Array): Outer {
  return cborDecode(bytes) as Outer;
}
function reencode(o: Outer): Buffer {
  return cborEncode({ v: o.v, body: Buffer.from(o.body), sig: Buffer.from(o.sig), chain: o.chain.map((c) => Buffer.from(c)) });
}

beforeAll(() => {
  pki = createTestPki({ now: NOW, commonNamePrefix: 'Utility' });
  gw = generateGatewayKeyPair();
  otherGw = generateGatewayKeyPair();
  spare = generateRsaKeyPair();
  kmPublicPem = createPublicKey(pki.kmKeyPem).export({ type: 'spki', format: 'pem' }).toString();
  good = sealWith({ certPem: pki.kmCertPem, keyPem: pki.kmKeyPem });
});

describe('key bundle round trip', () => {
  it('opens what was created, with the same keys', () => {
    const opened = open(good);
    expect(opened).toEqual(bundle);
    for (const [i, m] of opened.meters.entries()) {
      expect(Buffer.isBuffer(m.ek)).toBe(true);
      expect(m.ek.equals(bundle.meters[i]!.ek)).toBe(true);
    }
  });

  it('has the documented outer structure and plain byte strings', () => {
    const o = outerOf(good);
    expect(Object.keys(o).sort()).toEqual(['body', 'chain', 'sig', 'v']);
    expect(o.v).toBe(1);
    expect(o.chain).toHaveLength(1);
    expect(o.sig).toHaveLength(256);
    const body = cborDecode(o.body) as Record<string, unknown>;
    expect(body.typ).toBe('ami-key-bundle/1');
    expect(Buffer.from(body.recipient as Uint8Array).toString('hex')).toBe(publicKeyFingerprint(gw.publicKeyPem));
    expect(body.issuedAt).toBe(BigInt(NOW.getTime())); // written as a CBOR uint, not a float
    const m0 = (body.meters as Record<string, Uint8Array>[])[0]!;
    expect(m0.ek).toHaveLength(24);
    expect(Buffer.from(m0.systemTitle!).toString('hex')).toBe(bundle.meters[0]!.systemTitle);
    // No cbor-x typed-array tags (tag 64): byte strings are plain major type 2.
    expect(cborTagsIn(good)).toEqual([]);
    expect(cborTagsIn(o.body)).toEqual([]);
  });

  it('opens a delta bundle without removals', () => {
    const delta: KeyBundle = { gateway: GATEWAY, epoch: 9, since: 7, full: false, issuedAt: NOW.getTime(), meters: [meter(5, 9)] };
    const opened = open(sealWith({ certPem: pki.kmCertPem, keyPem: pki.kmKeyPem }, gw.publicKeyPem, delta));
    expect(opened).toEqual(delta);
    expect('removed' in opened).toBe(false);
  });

  it('accepts a chain through an intermediate CA', () => {
    const intermediate = issueCertificate({
      subjectCN: 'Utility Issuing CA',
      publicKeyPem: spare.publicKeyPem,
      issuerCertPem: pki.rootCertPem,
      issuerKeyPem: pki.rootKeyPem,
      notBefore: new Date(NOW.getTime() - DAY),
      notAfter: new Date(NOW.getTime() + 30 * DAY),
      ca: true,
      pathLen: 0,
      keyUsage: { keyCertSign: true, cRLSign: true },
    });
    const leaf = kmCert({ issuerCertPem: intermediate, issuerKeyPem: spare.privateKeyPem });
    expect(open(sealWith({ certPem: leaf, keyPem: pki.kmKeyPem, intermediates: [intermediate] })).meters).toHaveLength(3);
  });

  it('accepts any of several anchors, also several in one PEM string', () => {
    const other = createTestPki({ now: NOW, commonNamePrefix: 'Neighbour' });
    expect(open(good, { trustAnchorsPem: [other.rootCertPem, pki.rootCertPem] }).epoch).toBe(7);
    expect(open(good, { trustAnchorsPem: [other.rootCertPem + pki.rootCertPem] }).epoch).toBe(7);
    expectRejected('UNTRUSTED_CHAIN', good, { trustAnchorsPem: [other.rootCertPem] });
  });

  it('accepts a signer with a (critical) codeSigning extended key usage', () => {
    const leaf = kmCert({ extKeyUsage: { oids: [CODE_SIGNING], critical: true } });
    expect(open(sealWith({ certPem: leaf, keyPem: pki.kmKeyPem })).epoch).toBe(7);
  });
});

describe('key bundle rejections', () => {
  it('rejects a flipped byte in the body (BAD_SIGNATURE)', () => {
    const o = outerOf(good);
    const body = Buffer.from(o.body);
    // The body ends with the last removed system title: the body still parses.
    body[body.length - 3]! ^= 0x01;
    expectRejected('BAD_SIGNATURE', reencode({ ...o, body }));
  });

  it('rejects a flipped signature (BAD_SIGNATURE)', () => {
    const o = outerOf(good);
    const sig = Buffer.from(o.sig);
    sig[10]! ^= 0x80;
    expectRejected('BAD_SIGNATURE', reencode({ ...o, sig }));
  });

  it('rejects a bundle re-signed by a certificate key that is not the signer (BAD_SIGNATURE)', () => {
    // Signed with another key but carrying the genuine km certificate.
    const o = outerOf(sealWith({ certPem: kmCert({ publicKeyPem: spare.publicKeyPem }), keyPem: spare.privateKeyPem }));
    expectRejected('BAD_SIGNATURE', reencode({ ...o, chain: outerOf(good).chain }));
  });

  it('rejects a certificate whose unsigned signatureAlgorithm was altered (BAD_FORMAT)', () => {
    // forge reads only the OID next to the signature; the NULL parameters after it are not signed.
    const o = outerOf(good);
    const cert = Buffer.from(o.chain[0]!);
    const at = cert.lastIndexOf(Buffer.from('0500038201', 'hex'));
    expect(at).toBeGreaterThan(cert.length - 300);
    cert[at] = 0x04; // NULL -> empty OCTET STRING
    expectRejected('BAD_FORMAT', reencode({ ...o, chain: [cert] }));
  });

  it('rejects an expired signer (CERT_EXPIRED) and one not yet valid (CERT_NOT_YET_VALID)', () => {
    const expired = kmCert({ notBefore: new Date(NOW.getTime() - 10 * DAY), notAfter: new Date(NOW.getTime() - DAY) });
    expectRejected('CERT_EXPIRED', sealWith({ certPem: expired, keyPem: pki.kmKeyPem }));
    const early = kmCert({ notBefore: new Date(NOW.getTime() + DAY), notAfter: new Date(NOW.getTime() + 10 * DAY) });
    expectRejected('CERT_NOT_YET_VALID', sealWith({ certPem: early, keyPem: pki.kmKeyPem }));
    // The same bundles open at a time the certificates cover.
    expect(open(sealWith({ certPem: early, keyPem: pki.kmKeyPem }), { now: new Date(NOW.getTime() + 2 * DAY) }).gateway).toBe(GATEWAY);
  });

  it('rejects a good bundle once `now` is past the signer certificate (CERT_EXPIRED)', () => {
    expectRejected('CERT_EXPIRED', good, { now: new Date(NOW.getTime() + 400 * DAY) });
  });

  it('rejects a chain whose trust anchor is outside its validity (CERT_EXPIRED)', () => {
    const oldRoot = issueCertificate({
      subjectCN: 'Retired Root CA',
      publicKeyPem: spare.publicKeyPem,
      issuerKeyPem: spare.privateKeyPem,
      notBefore: new Date(NOW.getTime() - 30 * DAY),
      notAfter: new Date(NOW.getTime() - DAY),
      ca: true,
      keyUsage: { keyCertSign: true },
    });
    const leaf = kmCert({ issuerCertPem: oldRoot, issuerKeyPem: spare.privateKeyPem });
    const e = expectRejected('CERT_EXPIRED', sealWith({ certPem: leaf, keyPem: pki.kmKeyPem }), { trustAnchorsPem: [pki.rootCertPem, oldRoot] });
    expect(e.message).toContain('Retired Root CA');
  });

  it('rejects a signer from another root (UNTRUSTED_CHAIN), even one with the same name', () => {
    const otherRoot = issueCertificate({
      subjectCN: 'Other Root CA',
      publicKeyPem: spare.publicKeyPem,
      issuerKeyPem: spare.privateKeyPem,
      notBefore: new Date(NOW.getTime() - DAY),
      notAfter: new Date(NOW.getTime() + 30 * DAY),
      ca: true,
      keyUsage: { keyCertSign: true },
    });
    const foreign = kmCert({ issuerCertPem: otherRoot, issuerKeyPem: spare.privateKeyPem });
    expectRejected('UNTRUSTED_CHAIN', sealWith({ certPem: foreign, keyPem: pki.kmKeyPem }));
    // Including the foreign root in the chain does not help.
    expectRejected('UNTRUSTED_CHAIN', sealWith({ certPem: foreign, keyPem: pki.kmKeyPem, intermediates: [otherRoot] }));
    // A root impersonating the utility root's name: the signature check catches it.
    const lookalike = issueCertificate({
      subjectCN: 'Utility Root CA',
      subjectO: 'Utility',
      publicKeyPem: spare.publicKeyPem,
      issuerKeyPem: spare.privateKeyPem,
      notBefore: new Date(NOW.getTime() - DAY),
      notAfter: new Date(NOW.getTime() + 30 * DAY),
      ca: true,
      keyUsage: { keyCertSign: true },
    });
    const forged = kmCert({ issuerCertPem: lookalike, issuerKeyPem: spare.privateKeyPem });
    expectRejected('UNTRUSTED_CHAIN', sealWith({ certPem: forged, keyPem: pki.kmKeyPem }));
    // And an expired certificate from elsewhere is untrusted, not "expired".
    const foreignExpired = kmCert({ issuerCertPem: otherRoot, issuerKeyPem: spare.privateKeyPem, notAfter: new Date(NOW.getTime() - DAY), notBefore: new Date(NOW.getTime() - 2 * DAY) });
    expectRejected('UNTRUSTED_CHAIN', sealWith({ certPem: foreignExpired, keyPem: pki.kmKeyPem }));
  });

  it('rejects a signer without digitalSignature or with a non-signing EKU (BAD_KEY_USAGE)', () => {
    expectRejected('BAD_KEY_USAGE', sealWith({ certPem: kmCert({ keyUsage: { keyEncipherment: true } }), keyPem: pki.kmKeyPem }));
    expectRejected('BAD_KEY_USAGE', sealWith({ certPem: kmCert({ keyUsage: null }), keyPem: pki.kmKeyPem }));
    expectRejected('BAD_KEY_USAGE', sealWith({ certPem: kmCert({ extKeyUsage: { oids: [SERVER_AUTH] } }), keyPem: pki.kmKeyPem }));
  });

  it('rejects an intermediate without CA basicConstraints (UNTRUSTED_CHAIN) or without keyCertSign (BAD_KEY_USAGE)', () => {
    const intermediate = (over: Partial<Parameters<typeof issueCertificate>[0]>) =>
      issueCertificate({
        subjectCN: 'Utility Not-Quite CA',
        publicKeyPem: spare.publicKeyPem,
        issuerCertPem: pki.rootCertPem,
        issuerKeyPem: pki.rootKeyPem,
        notBefore: new Date(NOW.getTime() - DAY),
        notAfter: new Date(NOW.getTime() + 30 * DAY),
        ca: false,
        keyUsage: { keyCertSign: true, digitalSignature: true },
        ...over,
      });
    const via = (inter: string) =>
      sealWith({ certPem: kmCert({ issuerCertPem: inter, issuerKeyPem: spare.privateKeyPem }), keyPem: pki.kmKeyPem, intermediates: [inter] });
    expectRejected('UNTRUSTED_CHAIN', via(intermediate({ ca: false })));
    expectRejected('UNTRUSTED_CHAIN', via(intermediate({ basicConstraints: false, keyUsage: null })));
    expectRejected('BAD_KEY_USAGE', via(intermediate({ ca: true, keyUsage: null })));
  });

  it('rejects a bundle encrypted to another gateway key (WRONG_RECIPIENT)', () => {
    expectRejected('WRONG_RECIPIENT', sealWith({ certPem: pki.kmCertPem, keyPem: pki.kmKeyPem }, otherGw.publicKeyPem));
    expectRejected('WRONG_RECIPIENT', good, { gatewayPrivateKeyPem: otherGw.privateKeyPem });
  });

  it('rejects a bundle for another gateway id (WRONG_GATEWAY)', () => {
    expectRejected('WRONG_GATEWAY', good, { gateway: 'gw-0043' });
  });

  it('rejects garbage, truncated and malformed CBOR (BAD_FORMAT)', () => {
    expectRejected('BAD_FORMAT', new Uint8Array());
    expectRejected('BAD_FORMAT', Buffer.from('not cbor at all'));
    expectRejected('BAD_FORMAT', good.subarray(0, good.length - 1));
    expectRejected('BAD_FORMAT', good.subarray(0, 40));
    expectRejected('BAD_FORMAT', Buffer.concat([good, Buffer.from([0])]));
    const o = outerOf(good);
    expectRejected('BAD_FORMAT', reencode({ ...o, v: 2 }));
    expectRejected('BAD_FORMAT', reencode({ ...o, chain: [] }));
    expectRejected('BAD_FORMAT', reencode({ ...o, chain: [Buffer.from('not a certificate')] }));
    expectRejected('BAD_FORMAT', cborEncode({ ...o, extra: 1 }));
    expectRejected('BAD_FORMAT', reencode({ ...o, body: cborEncode([1, 2, 3]) }));
  });

  it('rejects an oversized bundle before decoding it (TOO_LARGE)', () => {
    expectRejected('TOO_LARGE', good, { maxBytes: good.length - 1 });
    expectRejected('TOO_LARGE', Buffer.alloc(4 * 1024 * 1024 + 1));
    expect(open(good, { maxBytes: good.length }).meters).toHaveLength(3);
  });

  it('throws only KeyBundleError for arbitrary bytes and for altered bundles', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        expect(() => open(bytes)).toThrow(KeyBundleError);
      }),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(fc.nat({ max: good.length - 1 }), fc.integer({ min: 1, max: 255 }), (at, mask) => {
        const bad = Buffer.from(good);
        bad[at]! ^= mask;
        try {
          open(bad);
        } catch (err) {
          expect(err).toBeInstanceOf(KeyBundleError);
          thrown.push(err as KeyBundleError);
          return;
        }
        // A flip that leaves the bundle valid can only be in an unsigned,
        // unchecked spot; there is none, so reaching here is a failure.
        expect.unreachable(`flip at ${at} was accepted`);
      }),
      { numRuns: 60 },
    );
  });

  it('never puts key material in error messages', () => {
    expect(thrown.length).toBeGreaterThan(20);
    for (const e of thrown) {
      for (const hex of secretHex) expect(e.message.toLowerCase()).not.toContain(hex);
    }
  });
});

describe('fingerprints', () => {
  const entries = bundle.meters.map(({ systemTitle, epoch, ek, ak, kek }) => ({ systemTitle, epoch, ek, ak, kek }));

  it('is independent of order', () => {
    const fp = keyStoreFingerprint(entries);
    expect(fp).toMatch(/^[0-9a-f]{64}$/);
    expect(keyStoreFingerprint([...entries].reverse())).toBe(fp);
    expect(keyStoreFingerprint([entries[1]!, entries[2]!, entries[0]!])).toBe(fp);
    // Upper-case system titles name the same meters.
    expect(keyStoreFingerprint(entries.map((e) => ({ ...e, systemTitle: e.systemTitle.toUpperCase() })))).toBe(fp);
  });

  it('changes when one key or one epoch changes', () => {
    const fp = keyStoreFingerprint(entries);
    const changed = (i: number, patch: Partial<(typeof entries)[number]>) => keyStoreFingerprint(entries.map((e, j) => (j === i ? { ...e, ...patch } : e)));
    const flipped = Buffer.from(entries[1]!.ak);
    flipped[15]! ^= 1;
    expect(changed(1, { ak: flipped })).not.toBe(fp);
    expect(changed(0, { kek: randomBytes(16) })).not.toBe(fp);
    expect(changed(2, { epoch: entries[2]!.epoch + 1 })).not.toBe(fp);
    expect(keyStoreFingerprint(entries.slice(1))).not.toBe(fp);
  });

  it('follows the documented byte layout', () => {
    const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');
    const e = entries[0]!;
    const line = `${e.systemTitle} ${e.epoch} ${sha(Buffer.concat([e.ek, e.ak, e.kek]))}\n`;
    expect(keyStoreFingerprint([e])).toBe(sha(line));
    expect(keyStoreFingerprint([])).toBe(sha(''));
  });

  it('matches the test vector in docs/key-bundles.md', () => {
    const zero = Buffer.alloc(16);
    const seq = Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex');
    const a = { systemTitle: '4d4d4d0000000001', epoch: 3, ek: zero, ak: zero, kek: zero };
    const b = { systemTitle: '4d4d4d0000000002', epoch: 10, ek: seq, ak: seq, kek: seq };
    expect(keyStoreFingerprint([a])).toBe('605be39a552c307fbb575ddf24a762fd24296f8c6685e9f3b2b4b0115bf17146');
    expect(keyStoreFingerprint([b, a])).toBe('3a77b1d8a65d7cea0e05b8f1e26b7e9a5039ad6c08eebcf6eef15a31f078da8f');
  });

  it('fingerprints a public key as SHA-256 of its SPKI DER, also from the private key', () => {
    const fp = publicKeyFingerprint(gw.publicKeyPem);
    expect(fp).toMatch(/^[0-9a-f]{64}$/);
    expect(publicKeyFingerprint(gw.privateKeyPem)).toBe(fp);
    expect(publicKeyFingerprint(otherGw.publicKeyPem)).not.toBe(fp);
  });
});
