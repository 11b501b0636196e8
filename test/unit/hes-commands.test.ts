import { createSign } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import forge from 'node-forge';
import { beforeAll, describe, expect, it } from 'vitest';
import { cborDecode, cborEncode } from '../../src/coap/cbor.js';
import {
  COMMAND_ACTIONS,
  COMMAND_ERROR_CODES,
  COMMAND_POLICY,
  CommandError,
  CommandTransportError,
  decodeCommandAck,
  decodeCommandQueue,
  DEFAULT_CLOCK_SKEW_MS,
  encodeCommandBody,
  encodeCommandQueue,
  OPERATOR_ROLES,
  signCommand,
  verifyCommand,
  type Command,
  type CommandErrorCode,
  type VerifyCommandOptions,
} from '../../src/hes/commands.js';
import { generateRsaKeyPair, issueCertificate } from '../../src/keys/pki.js';
import { SimCommandService, type IssueCommandSpec, type SimOperator } from '../../src/sim/hes-commands.js';

const GATEWAY = 'gw-commands-test';
const DAY_MS = 24 * 60 * 60_000;

let service: SimCommandService;
let admin: SimOperator;
let tech: SimOperator;
let options: VerifyCommandOptions;

beforeAll(() => {
  service = new SimCommandService();
  admin = service.createOperator('Alice Administrator', 'utility-administrator');
  tech = service.createOperator('Tom Technician', 'field-technician');
  options = { trustAnchorsPem: [service.trustAnchorPem], gateway: GATEWAY };
});

function signed(spec: Partial<IssueCommandSpec> = {}, operator: SimOperator = admin, gateway = GATEWAY): { command: Command; envelope: Buffer } {
  return service.sign(gateway, { meter: 'mtr-1', action: 'disconnect', ...spec }, operator);
}

/** The CommandError verifyCommand throws for `bytes`; fails the test when it accepts them or throws anything else. */
function refusal(bytes: Uint8Array, opts: VerifyCommandOptions = options): CommandError {
  try {
    verifyCommand(bytes, opts);
  } catch (err) {
    if (err instanceof CommandError) return err;
    throw new Error(`expected a CommandError, got ${String(err)}`);
  }
  throw new Error('the envelope was accepted');
}

function expectRefused(bytes: Uint8Array, code: CommandErrorCode, reason?: RegExp, opts?: VerifyCommandOptions): CommandError {
  const err = refusal(bytes, opts);
  expect({ code: err.code, message: err.message }).toMatchObject({ code, ...(reason ? { message: expect.stringMatching(reason) } : {}) });
  return err;
}

/** The envelope as a map, for tampering; re-encode with cborEncode. */
function outer(envelope: Uint8Array): Record<string, unknown> {
  return cborDecode(envelope) as Record<string, unknown>;
}

describe('signed command envelope', () => {
  it('round-trips: a command signed by an administrator verifies, with the signer named', () => {
    const { command, envelope } = signed({ action: 'configure', params: { 'push-interval': 900, tariff: 'T2', enabled: true } });
    const verified = verifyCommand(envelope, options);
    expect(verified.command).toEqual(command);
    expect(verified.signer.name).toBe('Alice Administrator');
    expect(verified.signer.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(verified.digest).toMatch(/^[0-9a-f]{64}$/);
    // The envelope is plain CBOR: v, body (the signed bytes), chain, sig.
    expect(Object.keys(outer(envelope)).sort()).toEqual(['body', 'chain', 'sig', 'v']);
  });

  it('applies the role and MFA policy to every action, role and MFA state', () => {
    for (const action of COMMAND_ACTIONS) {
      for (const role of OPERATOR_ROLES) {
        for (const mfa of [true, false]) {
          const operator = role === 'utility-administrator' ? admin : tech;
          const { envelope } = signed({ action, mfa, ...(action === 'configure' ? { params: { 'push-interval': 60 } } : {}) }, operator);
          const policy = COMMAND_POLICY[action];
          const expected = !(policy.roles as readonly string[]).includes(role) ? 'UNAUTHORIZED_ROLE' : policy.mfa && !mfa ? 'MFA_REQUIRED' : 'accepted';
          let outcome: string;
          try {
            verifyCommand(envelope, options);
            outcome = 'accepted';
          } catch (err) {
            outcome = (err as CommandError).code;
          }
          expect(`${action}/${role}/mfa=${mfa}: ${outcome}`).toBe(`${action}/${role}/mfa=${mfa}: ${expected}`);
        }
      }
    }
    // The matrix as documented: relay changes need MFA, configuration needs an administrator.
    expect(COMMAND_POLICY.disconnect).toEqual({ roles: ['utility-administrator', 'field-technician'], mfa: true });
    expect(COMMAND_POLICY['read-relay-state'].mfa).toBe(false);
    expect(COMMAND_POLICY.configure.roles).toEqual(['utility-administrator']);
  });

  it('refuses an unknown role as UNAUTHORIZED_ROLE and a missing MFA as MFA_REQUIRED, with the reason', () => {
    expectRefused(signed({ role: 'guest' }).envelope, 'UNAUTHORIZED_ROLE', /role "guest" may not issue disconnect/);
    expectRefused(signed({ action: 'configure', params: { a: 1 } }, tech).envelope, 'UNAUTHORIZED_ROLE', /field-technician.*configure/);
    expectRefused(signed({ action: 'reconnect', mfa: false }, tech).envelope, 'MFA_REQUIRED', /multi-factor/);
  });

  it('refuses unsigned commands: a bare body, no signature, an empty signature or chain', () => {
    const { command, envelope } = signed();
    const bare = cborDecode(encodeCommandBody(command)) as Record<string, unknown>;
    expectRefused(cborEncode(bare), 'UNSIGNED', /bare command/);
    const { sig: _sig, ...withoutSig } = outer(envelope);
    const err = expectRefused(cborEncode(withoutSig), 'UNSIGNED', /no signature/);
    // What the envelope claimed is kept for the report.
    expect(err.context).toMatchObject({ id: command.id, meter: 'mtr-1', action: 'disconnect' });
    expectRefused(cborEncode({ ...outer(envelope), sig: Buffer.alloc(0) }), 'UNSIGNED', /signature is empty/);
    expectRefused(cborEncode({ ...outer(envelope), chain: [] }), 'UNSIGNED', /chain is empty/);
    const { chain: _chain, ...withoutChain } = outer(envelope);
    expectRefused(cborEncode(withoutChain), 'UNSIGNED', /no certificate chain/);
  });

  it('refuses a forged command: another body under the signature, or a signature by another key', () => {
    const original = signed({ meter: 'mtr-1' });
    const other = signed({ meter: 'mtr-2', id: original.command.id });
    // The body of one command with the signature of another.
    expectRefused(cborEncode({ ...outer(original.envelope), body: outer(other.envelope).body }), 'BAD_SIGNATURE', /does not verify/);
    // Signed with a key that is not the certificate's.
    const intruder = generateRsaKeyPair();
    // A technician signing, with their own certificate, a command in the administrator's name.
    const impersonation = signCommand(original.command, { signerKeyPem: tech.keyPem, signerChainPem: tech.chainPem });
    expectRefused(impersonation, 'OPERATOR_MISMATCH', /names operator "Alice Administrator" but is signed by "Tom Technician"/);
    // The same signature presented with the administrator's certificate.
    expectRefused(cborEncode({ ...outer(impersonation), chain: outer(original.envelope).chain }), 'BAD_SIGNATURE');
    const sig = createSign('sha256').update(outer(original.envelope).body as Buffer).sign(intruder.privateKeyPem);
    expectRefused(cborEncode({ ...outer(original.envelope), sig }), 'BAD_SIGNATURE');
    // A truncated signature.
    expectRefused(cborEncode({ ...outer(original.envelope), sig: (outer(original.envelope).sig as Buffer).subarray(1) }), 'BAD_SIGNATURE');
  });

  it('refuses a certificate that chains to another root, before looking at its dates', () => {
    const foreign = new SimCommandService();
    const stranger = foreign.createOperator('Alice Administrator', 'utility-administrator');
    expectRefused(signed({}, stranger).envelope, 'UNTRUSTED_CHAIN', /trust anchor/);
    const expiredStranger = foreign.createOperator('Old Stranger', 'utility-administrator', {
      notBefore: new Date(Date.now() - 400 * DAY_MS),
      notAfter: new Date(Date.now() - 30 * DAY_MS),
    });
    expectRefused(signed({ operatorName: 'Old Stranger' }, expiredStranger).envelope, 'UNTRUSTED_CHAIN');
    // Without any anchor nothing verifies.
    expectRefused(signed().envelope, 'UNTRUSTED_CHAIN', /no trust anchor/, { ...options, trustAnchorsPem: [] });
  });

  it('refuses expired and not yet valid operator certificates', () => {
    const expired = service.createOperator('Eve Expired', 'utility-administrator', {
      notBefore: new Date(Date.now() - 400 * DAY_MS),
      notAfter: new Date(Date.now() - DAY_MS),
    });
    expectRefused(signed({}, expired).envelope, 'CERT_EXPIRED', /"Eve Expired" expired at/);
    const future = service.createOperator('Fred Future', 'utility-administrator', { notBefore: new Date(Date.now() + DAY_MS) });
    expectRefused(signed({}, future).envelope, 'CERT_NOT_YET_VALID', /"Fred Future" is not valid before/);
  });

  it('refuses operator certificates not meant for signing', () => {
    const noSigning = service.createOperator('Kim Keys', 'utility-administrator', { keyUsage: { keyEncipherment: true } });
    expectRefused(signed({}, noSigning).envelope, 'BAD_KEY_USAGE', /digitalSignature/);
    const tlsOnly = service.createOperator('Tess Tls', 'utility-administrator', { extKeyUsage: ['1.3.6.1.5.5.7.3.1'] });
    expectRefused(signed({}, tlsOnly).envelope, 'BAD_KEY_USAGE', /extendedKeyUsage/);
    // Without extendedKeyUsage the certificate is fine.
    const plain = service.createOperator('Paul Plain', 'utility-administrator', { extKeyUsage: null });
    expect(verifyCommand(signed({}, plain).envelope, options).signer.name).toBe('Paul Plain');
  });

  it('accepts a chain through an intermediate CA', () => {
    const now = Date.now();
    const caKeys = generateRsaKeyPair();
    const intermediate = issueCertificate({
      subjectCN: 'AMI Simulator Operators CA',
      publicKeyPem: caKeys.publicKeyPem,
      issuerCertPem: service.pki.rootCertPem,
      issuerKeyPem: service.pki.rootKeyPem,
      notBefore: new Date(now - DAY_MS),
      notAfter: new Date(now + 30 * DAY_MS),
      ca: true,
      pathLen: 0,
      keyUsage: { keyCertSign: true, cRLSign: true },
    });
    const operator = service.createOperator('Ian Intermediate', 'field-technician', {
      issuer: { certPem: intermediate, keyPem: caKeys.privateKeyPem },
      intermediatesPem: [intermediate],
    });
    expect(verifyCommand(signed({ action: 'read-relay-state' }, operator).envelope, options).signer.name).toBe('Ian Intermediate');
    // Without the intermediate in the envelope the chain does not reach the root.
    const alone = signCommand(signed({ action: 'read-relay-state' }, operator).command, { signerKeyPem: operator.keyPem, signerChainPem: [operator.certPem] });
    expectRefused(alone, 'UNTRUSTED_CHAIN');
  });

  it('refuses an operator name the certificate does not carry', () => {
    expectRefused(signed({ operatorName: 'Alice Admin' }).envelope, 'OPERATOR_MISMATCH', /names operator "Alice Admin" but is signed by "Alice Administrator"/);
  });

  it('refuses a command for another gateway', () => {
    expectRefused(signed({}, admin, 'gw-elsewhere').envelope, 'WRONG_GATEWAY', /for gateway "gw-elsewhere", not "gw-commands-test"/);
  });

  it('refuses expired and not yet valid commands, allowing the clock skew either way', () => {
    const now = Date.now();
    const { envelope } = signed({ notBefore: now, notAfter: now + 60_000 });
    expect(verifyCommand(envelope, { ...options, now: now + 60_000 + DEFAULT_CLOCK_SKEW_MS }).command.notAfter).toBe(now + 60_000);
    expectRefused(envelope, 'EXPIRED', /expired at/, { ...options, now: now + 60_000 + DEFAULT_CLOCK_SKEW_MS + 1 });
    expect(verifyCommand(envelope, { ...options, now: now - DEFAULT_CLOCK_SKEW_MS }).command.notBefore).toBe(now);
    expectRefused(envelope, 'NOT_YET_VALID', /not valid before/, { ...options, now: now - DEFAULT_CLOCK_SKEW_MS - 1 });
    expectRefused(envelope, 'EXPIRED', undefined, { ...options, now: now + 120_000, clockSkewMs: 0 });
  });

  it('refuses malformed envelopes and bodies as MALFORMED, saying what is wrong', () => {
    const { command, envelope } = signed();
    const resign = (body: Record<string, unknown>): Buffer => {
      // A body of the wrong shape, validly signed: the shape check must refuse it, not the signature.
      const bytes = cborEncode(body);
      return cborEncode({ ...outer(envelope), body: bytes, sig: createSign('sha256').update(bytes).sign(admin.keyPem) });
    };
    const body = cborDecode(encodeCommandBody(command)) as Record<string, unknown>;
    const notBefore = Number(body.notBefore);
    const cases: Array<[Uint8Array, RegExp]> = [
      [Buffer.from('not cbor at all \xff'), /not one well-formed CBOR item|must be a CBOR map/],
      [Buffer.from([0xff]), /not one well-formed CBOR item/],
      [Buffer.alloc(0), /empty/],
      [cborEncode([1, 2, 3]), /must be a CBOR map/],
      [cborEncode({ ...outer(envelope), extra: 1 }), /unknown field "extra"/],
      [cborEncode({ ...outer(envelope), v: 2 }), /unsupported envelope version 2/],
      [cborEncode({ ...outer(envelope), body: 'text' }), /body must be a non-empty byte string/],
      [cborEncode({ ...outer(envelope), body: cborEncode([1]) }), /command body must be a CBOR map/],
      [cborEncode({ ...outer(envelope), chain: [Buffer.from('not a certificate')] }), /chain\[0\] is not an X.509 certificate/],
      [cborEncode({ ...outer(envelope), chain: 'x' }), /chain must be an array/],
      [resign({ ...body, typ: 'ami-key-bundle/1' }), /typ must be ami-command\/1/],
      [resign({ ...body, id: 'a/b' }), /id must be/],
      [resign({ ...body, action: 'explode' }), /action must be one of disconnect, reconnect, read-relay-state, configure/],
      [resign({ ...body, notAfter: notBefore - 1 }), /notAfter is before notBefore/],
      [resign({ ...body, notAfter: notBefore + 8 * DAY_MS }), /validity window is longer than 168 hours/],
      [resign({ ...body, notBefore: -5 }), /notBefore must be an unsigned integer/],
      [resign({ ...body, params: { a: 1 } }), /disconnect takes no params/],
      [resign({ ...body, action: 'configure' }), /configure needs params/],
      [resign({ ...body, action: 'configure', params: { a: { nested: 1 } } }), /params.a must be text/],
      [resign({ ...body, action: 'configure', params: {} }), /1 to 32 settings/],
      [resign({ ...body, operator: { name: 'Alice Administrator', role: 'utility-administrator' } }), /operator lacks field mfa/],
      [resign({ ...body, operator: { name: 'Alice Administrator', role: 'utility-administrator', mfa: 'yes' } }), /operator.mfa must be true or false/],
      [resign({ ...body, meter: '' }), /meter must be text of 1 to 64/],
      [resign({ ...body, colour: 'red' }), /unknown field "colour"/],
    ];
    for (const [bytes, reason] of cases) expectRefused(bytes, 'MALFORMED', reason);
  });

  it('refuses an oversized envelope before decoding it', () => {
    const { envelope } = signed();
    expectRefused(envelope, 'TOO_LARGE', /more than the 100 accepted/, { ...options, maxBytes: 100 });
    expectRefused(Buffer.alloc(17 * 1024, 0xa0), 'TOO_LARGE', /more than the 16384 accepted/);
  });

  it('HES side: refuses to sign with a key that does not match the certificate, or a malformed command', () => {
    const { command } = signed();
    expect(() => signCommand(command, { signerKeyPem: tech.keyPem, signerChainPem: admin.chainPem })).toThrow(/does not match/);
    expect(() => signCommand({ ...command, id: '' }, { signerKeyPem: admin.keyPem, signerChainPem: admin.chainPem })).toThrow(CommandError);
  });
});

describe('fuzzing the verifier', () => {
  const CODES = new Set<string>(COMMAND_ERROR_CODES);

  function onlyTypedErrors(bytes: Uint8Array, original?: Command): void {
    let result: ReturnType<typeof verifyCommand>;
    try {
      result = verifyCommand(bytes, options);
    } catch (err) {
      if (!(err instanceof CommandError) || !CODES.has(err.code)) throw new Error(`untyped failure: ${String(err)}`);
      return;
    }
    // Whatever still verifies is the command that was signed, unchanged.
    if (original === undefined) throw new Error('random bytes verified');
    expect(result.command).toEqual(original);
  }

  it('random bytes give nothing but a CommandError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), (bytes) => onlyTypedErrors(bytes)),
      { numRuns: 3000 },
    );
  });

  it('random CBOR values and maps shaped like envelopes give nothing but a CommandError', () => {
    const { command, envelope } = signed();
    const real = outer(envelope);
    fc.assert(
      fc.property(
        fc.anything({ withBigInt: true, withTypedArray: true, withNullPrototype: true, withDate: true, withMap: true, withSet: true }),
        fc.constantFrom('v', 'body', 'chain', 'sig'),
        (value, field) => {
          let bytes: Buffer;
          try {
            bytes = cborEncode(value);
          } catch {
            return;
          }
          onlyTypedErrors(bytes);
          // The generator can produce the field's own value (v: 1); that envelope is the original and must verify as it.
          const mutated = cborEncode({ ...real, [field]: value });
          onlyTypedErrors(mutated, isDeepStrictEqual(cborDecode(mutated), real) ? command : undefined);
        },
      ),
      { numRuns: 1500 },
    );
  });

  it('mutated envelopes (flipped, inserted, deleted bytes, truncation) never verify as anything but the original', () => {
    const { command, envelope } = signed({ action: 'configure', params: { 'push-interval': 900 } });
    fc.assert(
      fc.property(
        fc.array(
          fc.record({ kind: fc.constantFrom('flip', 'insert', 'delete', 'truncate'), at: fc.nat(), value: fc.integer({ min: 1, max: 255 }) }),
          { minLength: 1, maxLength: 4 },
        ),
        (mutations) => {
          let bytes = Buffer.from(envelope);
          for (const m of mutations) {
            const at = m.at % Math.max(1, bytes.length);
            if (m.kind === 'flip') bytes[at] = (bytes[at] ?? 0) ^ m.value;
            else if (m.kind === 'insert') bytes = Buffer.concat([bytes.subarray(0, at), Buffer.of(m.value), bytes.subarray(at)]);
            else if (m.kind === 'delete') bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1)]);
            else bytes = bytes.subarray(0, at);
          }
          onlyTypedErrors(bytes, command);
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe('command transport codec', () => {
  it('reads the queue answer, setting malformed entries apart with their id when they have one', () => {
    const { command, envelope } = signed();
    const answer = cborEncode([{ id: command.id, envelope }, { id: 'no-envelope' }, 'junk', { id: 'x/y', envelope }, { id: 'extra', envelope, more: 1 }]);
    const { entries, unreadable } = decodeCommandQueue(answer);
    expect(entries).toEqual([{ id: command.id, envelope }]);
    expect(unreadable.map((u) => [u.index, u.id])).toEqual([
      [1, 'no-envelope'],
      [2, undefined],
      [3, undefined],
      [4, 'extra'],
    ]);
    expect(decodeCommandQueue(encodeCommandQueue([{ id: 'a', envelope: Buffer.of(1) }])).entries).toEqual([{ id: 'a', envelope: Buffer.of(1) }]);
    expect(() => decodeCommandQueue(cborEncode({ not: 'an array' }))).toThrow(CommandTransportError);
    expect(() => decodeCommandQueue(Buffer.of(0xff))).toThrow(CommandTransportError);
  });

  it('checks acknowledgements', () => {
    expect(decodeCommandAck(cborEncode({ gateway: 'gw', ids: ['a', 'b'] }))).toEqual({ gateway: 'gw', ids: ['a', 'b'] });
    expect(() => decodeCommandAck(cborEncode({ gateway: 'gw', ids: [1] }))).toThrow(CommandTransportError);
    expect(() => decodeCommandAck(cborEncode({ ids: [] }))).toThrow(CommandTransportError);
  });
});

describe('the certificate is what the operator claims', () => {
  it('reads the common name from the certificate, not from the organisation', () => {
    const cert = forge.pki.certificateFromPem(admin.certPem);
    expect(cert.subject.getField('CN').value).toBe('Alice Administrator');
    expect(cert.subject.getField('O').value).toBe('AMI Simulator');
  });
});
