/**
 * Signed commands from the HES: relay and configuration commands for the
 * meters behind this gateway, each signed by the HES operator who issued it.
 * The format, the checks and their order are specified for HES vendors in
 * docs/hes-commands.md; keep the two in step.
 *
 * An envelope is a CBOR map {v: 1, body, chain, sig}: `body` is the CBOR of
 * the command (kept as the exact bytes that were signed), `chain` the
 * operator's X.509 certificate and any intermediates (DER), `sig` an RSA
 * PKCS#1 v1.5 SHA-256 signature over `body` with the operator's key.
 *
 * signCommand is the HES side (the simulator and tests); verifyCommand the
 * gateway side. verifyCommand is a pure function of the bytes, the trust
 * anchors, the gateway id and the time: the replay check needs the store and
 * lives in src/store/pending-commands.ts.
 */
import { createHash, createPrivateKey, createPublicKey, sign, type KeyObject } from 'node:crypto';
import forge from 'node-forge';
import { cborDecode, cborEncode } from '../coap/cbor.js';
import {
  CertificateChainError,
  certificateDerFromPem,
  certificateFingerprint,
  certificatePublicKey,
  OID_ANY_EXTENDED_KEY_USAGE,
  OID_KP_DOCUMENT_SIGNING,
  parseCertificateDer,
  parseTrustAnchors,
  subjectCommonName,
  verifySignerChain,
  type SignerPolicy,
} from '../keys/certificate-chain.js';

// ---------------------------------------------------------------------------
// Vocabulary

export const COMMAND_ENVELOPE_VERSION = 1;
/** Signed `typ` of the body: binds the signature to this use and version. */
export const COMMAND_TYPE = 'ami-command/1';

export const COMMAND_ACTIONS = ['disconnect', 'reconnect', 'read-relay-state', 'configure'] as const;
export type CommandAction = (typeof COMMAND_ACTIONS)[number];

export const OPERATOR_ROLES = ['utility-administrator', 'field-technician'] as const;
export type OperatorRole = (typeof OPERATOR_ROLES)[number];

/** The relay actions: these go to the relay orchestration. */
export const RELAY_ACTIONS: readonly CommandAction[] = ['disconnect', 'reconnect', 'read-relay-state'];

/**
 * Who may issue what. Disconnecting or reconnecting a customer's supply needs
 * an operator who passed multi-factor authentication; reading the relay state
 * changes nothing and does not. Configuration is for administrators only.
 */
export const COMMAND_POLICY: Readonly<Record<CommandAction, { roles: readonly OperatorRole[]; mfa: boolean }>> = Object.freeze({
  disconnect: { roles: ['utility-administrator', 'field-technician'], mfa: true },
  reconnect: { roles: ['utility-administrator', 'field-technician'], mfa: true },
  'read-relay-state': { roles: ['utility-administrator', 'field-technician'], mfa: false },
  configure: { roles: ['utility-administrator'], mfa: true },
});

export interface CommandOperator {
  /** The operator's name: the subject common name of the signing certificate. */
  name: string;
  /** One of OPERATOR_ROLES for a command that can be accepted; any text in a parsed, refused one. */
  role: string;
  /** Whether the operator passed multi-factor authentication at the HES for this command. */
  mfa: boolean;
}

/** Settings of a `configure` command: name to text, integer or boolean. */
export type CommandParams = Record<string, string | number | boolean>;

export interface Command {
  /** Unique per HES, for ever: 1-64 of A-Z a-z 0-9 . _ : - (starting with a letter or digit). */
  id: string;
  /** The gateway the command is for. */
  gateway: string;
  /** The meter's endpoint name. */
  meter: string;
  action: CommandAction;
  /** Only for `configure` (required there); relay actions take none. */
  params?: CommandParams;
  /** Validity window, ms since the Unix epoch. */
  notBefore: number;
  notAfter: number;
  /** When the HES issued the command, ms since the Unix epoch. */
  issuedAt: number;
  operator: CommandOperator;
}

export type CommandErrorCode =
  | 'TOO_LARGE'
  | 'MALFORMED'
  | 'UNSIGNED'
  | 'UNTRUSTED_CHAIN'
  | 'CERT_EXPIRED'
  | 'CERT_NOT_YET_VALID'
  | 'BAD_KEY_USAGE'
  | 'BAD_SIGNATURE'
  | 'OPERATOR_MISMATCH'
  | 'WRONG_GATEWAY'
  | 'NOT_YET_VALID'
  | 'EXPIRED'
  | 'UNAUTHORIZED_ROLE'
  | 'MFA_REQUIRED'
  | 'REPLAYED';

export const COMMAND_ERROR_CODES: readonly CommandErrorCode[] = [
  'TOO_LARGE',
  'MALFORMED',
  'UNSIGNED',
  'UNTRUSTED_CHAIN',
  'CERT_EXPIRED',
  'CERT_NOT_YET_VALID',
  'BAD_KEY_USAGE',
  'BAD_SIGNATURE',
  'OPERATOR_MISMATCH',
  'WRONG_GATEWAY',
  'NOT_YET_VALID',
  'EXPIRED',
  'UNAUTHORIZED_ROLE',
  'MFA_REQUIRED',
  'REPLAYED',
];

/**
 * What an envelope said about itself, for reports. Before the signature is
 * checked (codes up to BAD_SIGNATURE) these are claims, not facts.
 */
export interface CommandErrorContext {
  id?: string;
  meter?: string;
  action?: string;
  operator?: string;
  /** SHA-256 of the envelope bytes, lower-case hex. */
  digest?: string;
}

/** The only error verifyCommand throws, and what the pending-commands store throws for a replay. */
export class CommandError extends Error {
  override readonly name = 'CommandError';
  constructor(
    readonly code: CommandErrorCode,
    message: string,
    readonly context: CommandErrorContext = {},
  ) {
    super(message);
  }
}

export interface VerifiedCommand {
  command: Command;
  /** SHA-256 of the envelope bytes, lower-case hex: tells a resend of these bytes from another envelope with the same id. */
  digest: string;
  /** The operator certificate. */
  signer: { name: string; serial: string; fingerprint: string };
}

export interface SignCommandOptions {
  /** PEM private key (PKCS#8 or PKCS#1) of the operator certificate. */
  signerKeyPem: string;
  /** The operator certificate first, then any intermediates (PEM, one certificate each). */
  signerChainPem: readonly string[];
}

export interface VerifyCommandOptions {
  /** The utility's root CA certificate(s); a string may hold several PEM blocks. */
  trustAnchorsPem: readonly string[];
  /** This gateway's id; the command must name it. */
  gateway: string;
  /** Current time, ms since the Unix epoch; defaults to now. */
  now?: number;
  /** Tolerated difference between the HES's clock and ours; DEFAULT_CLOCK_SKEW_MS by default. */
  clockSkewMs?: number;
  /** Largest accepted envelope; DEFAULT_MAX_ENVELOPE_BYTES by default. */
  maxBytes?: number;
}

/** An envelope is a few KiB (a body, one to four certificates, a signature). */
export const DEFAULT_MAX_ENVELOPE_BYTES = 16 * 1024;
/** Five minutes: the gateway's clock is NTP-synchronised, but a HES's may lag. */
export const DEFAULT_CLOCK_SKEW_MS = 5 * 60_000;
/** The longest validity window (notAfter - notBefore) accepted: a week. */
export const MAX_COMMAND_VALIDITY_MS = 7 * 24 * 60 * 60_000;
/** Operator certificate plus at most three more (intermediates, optionally the root). */
export const MAX_CHAIN_CERTS = 4;
export const MAX_CONFIGURE_PARAMS = 32;

const COMMAND_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
const PARAM_NAME = /^[A-Za-z][A-Za-z0-9._-]{0,63}$/;
const MAX_GATEWAY_CHARS = 128;
const MAX_METER_CHARS = 64;
const MAX_OPERATOR_CHARS = 128;
const MAX_ROLE_CHARS = 64;
const MAX_PARAM_TEXT = 256;

const ENVELOPE_KEYS = ['v', 'body', 'chain', 'sig'] as const;
const BODY_KEYS = ['typ', 'id', 'gateway', 'meter', 'action', 'params', 'notBefore', 'notAfter', 'issuedAt', 'operator'] as const;
const BODY_REQUIRED = BODY_KEYS.filter((k) => k !== 'params');
const OPERATOR_KEYS = ['name', 'role', 'mfa'] as const;

/**
 * Operator certificates may carry extendedKeyUsage; if they do, it must allow
 * signing documents (RFC 9336) or anything. A certificate for TLS or e-mail
 * only was not issued for signing commands.
 */
export const OPERATOR_SIGNER_POLICY: SignerPolicy = {
  signerPurposes: new Set([OID_KP_DOCUMENT_SIGNING, OID_ANY_EXTENDED_KEY_USAGE]),
  signerLabel: 'operator',
};

export function isCommandError(err: unknown): err is CommandError {
  return err instanceof CommandError;
}

/** Lower-case hex SHA-256 of an envelope's bytes. */
export function envelopeDigest(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

// ---------------------------------------------------------------------------
// HES side

/**
 * Encodes and signs a command (HES side: the simulator and tests). Checks the
 * command's shape as the gateway would and that the key matches the first
 * certificate; throws CommandError MALFORMED otherwise. It does not check the
 * policy: tests sign refused commands on purpose.
 */
export function signCommand(command: Command, opts: SignCommandOptions): Buffer {
  const body = encodeCommandBody(command);
  // The same shape checks as the gateway, so that what the HES side builds is what it parses.
  parseBody(body, {});
  if (opts.signerChainPem.length < 1 || opts.signerChainPem.length > MAX_CHAIN_CERTS) {
    throw new CommandError('MALFORMED', `signerChainPem must hold 1 to ${MAX_CHAIN_CERTS} certificates`);
  }
  let chain: Buffer[];
  try {
    chain = opts.signerChainPem.map((pem, i) => certificateDerFromPem(pem, `signerChainPem[${i}]`));
  } catch (err) {
    throw new CommandError('MALFORMED', (err as Error).message);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(opts.signerKeyPem);
  } catch {
    throw new CommandError('MALFORMED', 'the signer key is not a usable PEM private key');
  }
  if (key.asymmetricKeyType !== 'rsa') throw new CommandError('MALFORMED', 'the signer key must be an RSA key');
  let leaf: forge.pki.Certificate;
  try {
    leaf = parseCertificateDer(chain[0] as Buffer, 'signerChainPem[0]');
  } catch (err) {
    throw new CommandError('MALFORMED', (err as Error).message);
  }
  const leafSpki = certificatePublicKey(leaf).export({ type: 'spki', format: 'der' });
  if (!leafSpki.equals(createPublicKey(key).export({ type: 'spki', format: 'der' }))) {
    throw new CommandError('MALFORMED', 'the signer key does not match the first certificate of signerChainPem');
  }
  // node:crypto's default RSA padding is PKCS#1 v1.5.
  const sig = sign('sha256', body, key);
  return cborEncode({ v: COMMAND_ENVELOPE_VERSION, body, chain, sig });
}

/** The CBOR of a command body, fields in the documented order, as signed. */
export function encodeCommandBody(command: Command): Buffer {
  const body: Record<string, unknown> = {
    typ: COMMAND_TYPE,
    id: command.id,
    gateway: command.gateway,
    meter: command.meter,
    action: command.action,
  };
  if (command.params !== undefined) body.params = command.params;
  body.notBefore = uint(command.notBefore);
  body.notAfter = uint(command.notAfter);
  body.issuedAt = uint(command.issuedAt);
  body.operator = { name: command.operator?.name, role: command.operator?.role, mfa: command.operator?.mfa };
  return cborEncode(body);
}

// ---------------------------------------------------------------------------
// Gateway side

/**
 * Verifies an envelope. Checks, in this order (docs/hes-commands.md): size;
 * envelope and body shape; a signature present; the operator's chain up to a
 * trust anchor, then validity dates, then key usage; the signature over the
 * body; the operator name against the certificate; the gateway; the
 * command's validity window (with clock skew); the role and MFA policy.
 * Throws only CommandError.
 */
export function verifyCommand(bytes: Uint8Array, opts: VerifyCommandOptions): VerifiedCommand {
  const context: CommandErrorContext = {};
  try {
    return verifyChecked(bytes, opts, context);
  } catch (err) {
    if (err instanceof CommandError) throw err;
    if (err instanceof CertificateChainError) throw new CommandError(err.code === 'BAD_CERTIFICATE' ? 'MALFORMED' : err.code, err.message, context);
    // Fail closed on anything unforeseen; only the error's class name is kept.
    const name = err instanceof Error ? err.name : typeof err;
    throw new CommandError('MALFORMED', `command envelope could not be processed (unexpected ${name})`, context);
  }
}

function verifyChecked(bytes: Uint8Array, opts: VerifyCommandOptions, context: CommandErrorContext): VerifiedCommand {
  // 1. Size.
  if (!(bytes instanceof Uint8Array)) throw new CommandError('MALFORMED', 'a command envelope must be bytes');
  context.digest = envelopeDigest(bytes);
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_ENVELOPE_BYTES;
  if (bytes.length > maxBytes) {
    throw new CommandError('TOO_LARGE', `command envelope is ${bytes.length} bytes, more than the ${maxBytes} accepted`, context);
  }

  // 2. Envelope shape, a signature at all, then the body.
  const outer = decodeMap(bytes, 'command envelope', context);
  if (!Object.hasOwn(outer, 'body') && (Object.hasOwn(outer, 'id') || Object.hasOwn(outer, 'action'))) {
    noteContext(outer, context);
    throw new CommandError('UNSIGNED', 'a bare command, not a signed envelope', context);
  }
  if (!Object.hasOwn(outer, 'sig') || !Object.hasOwn(outer, 'chain')) {
    if (outer.body instanceof Uint8Array) tryNoteBody(outer.body, context);
    throw new CommandError('UNSIGNED', `the envelope has no ${Object.hasOwn(outer, 'sig') ? 'certificate chain' : 'signature'}`, context);
  }
  const emptySig = outer.sig instanceof Uint8Array && outer.sig.length === 0;
  const emptyChain = Array.isArray(outer.chain) && outer.chain.length === 0;
  if (emptySig || emptyChain) {
    if (outer.body instanceof Uint8Array) tryNoteBody(outer.body, context);
    throw new CommandError('UNSIGNED', `the envelope's ${emptySig ? 'signature' : 'certificate chain'} is empty`, context);
  }
  checkKeys(outer, ENVELOPE_KEYS, ENVELOPE_KEYS, 'command envelope', context);
  if (outer.v !== COMMAND_ENVELOPE_VERSION) throw new CommandError('MALFORMED', `unsupported envelope version ${describe(outer.v)}`, context);
  const bodyBytes = bytesField(outer.body, 'body', context);
  const sig = bytesField(outer.sig, 'sig', context);
  if (!Array.isArray(outer.chain) || outer.chain.length > MAX_CHAIN_CERTS) {
    throw new CommandError('MALFORMED', `chain must be an array of 1 to ${MAX_CHAIN_CERTS} certificates`, context);
  }
  const command = parseBody(bodyBytes, context);
  const chain = outer.chain.map((der: unknown, i) => parseCertificateDer(bytesField(der, `chain[${i}]`, context), `chain[${i}]`));
  const leaf = chain[0] as forge.pki.Certificate;

  // 3. The operator's certificate chain, its dates, its key usage.
  const now = opts.now ?? Date.now();
  verifySignerChain(chain, parseTrustAnchors(opts.trustAnchorsPem), new Date(now), OPERATOR_SIGNER_POLICY);

  // 4. The signature over the body (node-forge, RSASSA-PKCS1-v1_5 with SHA-256).
  if (!signatureVerifies(leaf, bodyBytes, sig)) {
    throw new CommandError('BAD_SIGNATURE', 'the signature does not verify over the command with the operator certificate', context);
  }

  // 5. The operator named in the command is the certificate's subject.
  const signerName = subjectCommonName(leaf);
  if (signerName === undefined || signerName !== command.operator.name) {
    throw new CommandError(
      'OPERATOR_MISMATCH',
      `the command names operator ${JSON.stringify(command.operator.name)} but is signed by ${signerName === undefined ? 'a certificate without one common name' : JSON.stringify(signerName)}`,
      context,
    );
  }

  // 6. This gateway.
  if (command.gateway !== opts.gateway) {
    throw new CommandError('WRONG_GATEWAY', `the command is for gateway ${JSON.stringify(command.gateway)}, not ${JSON.stringify(opts.gateway)}`, context);
  }

  // 7. The validity window, with clock skew either way.
  const skew = opts.clockSkewMs ?? DEFAULT_CLOCK_SKEW_MS;
  if (now + skew < command.notBefore) {
    throw new CommandError('NOT_YET_VALID', `the command is not valid before ${new Date(command.notBefore).toISOString()}`, context);
  }
  if (now - skew > command.notAfter) {
    throw new CommandError('EXPIRED', `the command expired at ${new Date(command.notAfter).toISOString()}`, context);
  }

  // 8. Role, then multi-factor authentication.
  checkPolicy(command, context);

  return {
    command,
    digest: context.digest,
    signer: { name: signerName, serial: leaf.serialNumber, fingerprint: certificateFingerprint(leaf) },
  };
}

/** Throws UNAUTHORIZED_ROLE or MFA_REQUIRED when the operator may not issue the command. */
export function checkPolicy(command: Command, context: CommandErrorContext = {}): void {
  const policy = COMMAND_POLICY[command.action];
  if (!(policy.roles as readonly string[]).includes(command.operator.role)) {
    throw new CommandError(
      'UNAUTHORIZED_ROLE',
      `role ${JSON.stringify(command.operator.role)} may not issue ${command.action}; allowed: ${policy.roles.join(', ')}`,
      context,
    );
  }
  if (policy.mfa && command.operator.mfa !== true) {
    throw new CommandError('MFA_REQUIRED', `${command.action} requires an operator who passed multi-factor authentication`, context);
  }
}

function signatureVerifies(leaf: forge.pki.Certificate, body: Uint8Array, sig: Uint8Array): boolean {
  const key = leaf.publicKey as forge.pki.rsa.PublicKey;
  // A PKCS#1 v1.5 signature is exactly as long as the modulus.
  if (sig.length !== Math.ceil(key.n.bitLength() / 8)) return false;
  const md = forge.md.sha256.create();
  md.update(Buffer.from(body).toString('binary'));
  try {
    return key.verify(md.digest().bytes(), Buffer.from(sig).toString('binary'), 'RSASSA-PKCS1-V1_5');
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Body parsing

function parseBody(bodyBytes: Uint8Array, context: CommandErrorContext): Command {
  const body = decodeMap(bodyBytes, 'command body', context);
  noteContext(body, context);
  checkKeys(body, BODY_KEYS, BODY_REQUIRED, 'command body', context);
  if (body.typ !== COMMAND_TYPE) throw new CommandError('MALFORMED', `command body typ must be ${COMMAND_TYPE}`, context);
  if (typeof body.id !== 'string' || !COMMAND_ID.test(body.id)) {
    throw new CommandError('MALFORMED', 'id must be 1-64 of A-Z a-z 0-9 . _ : - starting with a letter or digit', context);
  }
  const gateway = textField(body.gateway, MAX_GATEWAY_CHARS, 'gateway', context);
  const meter = textField(body.meter, MAX_METER_CHARS, 'meter', context);
  if (typeof body.action !== 'string' || !(COMMAND_ACTIONS as readonly string[]).includes(body.action)) {
    throw new CommandError('MALFORMED', `action must be one of ${COMMAND_ACTIONS.join(', ')}`, context);
  }
  const action = body.action as CommandAction;
  const notBefore = uintField(body.notBefore, 'notBefore', context);
  const notAfter = uintField(body.notAfter, 'notAfter', context);
  const issuedAt = uintField(body.issuedAt, 'issuedAt', context);
  if (notAfter < notBefore) throw new CommandError('MALFORMED', 'notAfter is before notBefore', context);
  if (notAfter - notBefore > MAX_COMMAND_VALIDITY_MS) {
    throw new CommandError('MALFORMED', `the validity window is longer than ${MAX_COMMAND_VALIDITY_MS / 3_600_000} hours`, context);
  }
  if (!isPlainMap(body.operator)) throw new CommandError('MALFORMED', 'operator must be a map', context);
  const op = body.operator;
  checkKeys(op, OPERATOR_KEYS, OPERATOR_KEYS, 'operator', context);
  const operator: CommandOperator = {
    name: textField(op.name, MAX_OPERATOR_CHARS, 'operator.name', context),
    role: textField(op.role, MAX_ROLE_CHARS, 'operator.role', context),
    mfa: booleanField(op.mfa, 'operator.mfa', context),
  };
  const command: Command = { id: body.id, gateway, meter, action, notBefore, notAfter, issuedAt, operator };
  if (action === 'configure') {
    command.params = paramsField(body.params, context);
  } else if (body.params !== undefined) {
    throw new CommandError('MALFORMED', `${action} takes no params`, context);
  }
  return command;
}

function paramsField(value: unknown, context: CommandErrorContext): CommandParams {
  if (!isPlainMap(value)) throw new CommandError('MALFORMED', 'configure needs params: a map of settings', context);
  const names = Object.keys(value);
  if (names.length === 0 || names.length > MAX_CONFIGURE_PARAMS) {
    throw new CommandError('MALFORMED', `params must hold 1 to ${MAX_CONFIGURE_PARAMS} settings`, context);
  }
  const params: CommandParams = {};
  for (const name of names) {
    if (!PARAM_NAME.test(name)) throw new CommandError('MALFORMED', `params: ${JSON.stringify(name.slice(0, 32))} is not a setting name`, context);
    const raw = value[name];
    if (typeof raw === 'boolean') params[name] = raw;
    else if (typeof raw === 'string' && raw.length <= MAX_PARAM_TEXT) params[name] = raw;
    else if (typeof raw === 'number' && Number.isSafeInteger(raw)) params[name] = raw;
    else if (typeof raw === 'bigint' && raw <= BigInt(Number.MAX_SAFE_INTEGER) && raw >= BigInt(Number.MIN_SAFE_INTEGER)) params[name] = Number(raw);
    else throw new CommandError('MALFORMED', `params.${name} must be text of at most ${MAX_PARAM_TEXT} characters, an integer or a boolean`, context);
  }
  return params;
}

/** Keeps what the map says of itself for the error report (claims until the signature is checked). */
function noteContext(map: Record<string, unknown>, context: CommandErrorContext): void {
  if (typeof map.id === 'string') context.id = map.id.slice(0, 64);
  if (typeof map.meter === 'string') context.meter = map.meter.slice(0, 64);
  if (typeof map.action === 'string') context.action = map.action.slice(0, 32);
  if (isPlainMap(map.operator) && typeof map.operator.name === 'string') context.operator = map.operator.name.slice(0, 128);
}

function tryNoteBody(bytes: Uint8Array, context: CommandErrorContext): void {
  try {
    const body = cborDecode(bytes);
    if (isPlainMap(body)) noteContext(body, context);
  } catch {
    // Only for the report: an unreadable body leaves the context as it is.
  }
}

function decodeMap(bytes: Uint8Array, what: string, context: CommandErrorContext): Record<string, unknown> {
  if (bytes.length === 0) throw new CommandError('MALFORMED', `${what} is empty`, context);
  let value: unknown;
  try {
    value = cborDecode(bytes);
  } catch {
    throw new CommandError('MALFORMED', `${what} is not one well-formed CBOR item`, context);
  }
  if (!isPlainMap(value)) throw new CommandError('MALFORMED', `${what} must be a CBOR map`, context);
  return value;
}

function isPlainMap(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function checkKeys(map: Record<string, unknown>, allowed: readonly string[], required: readonly string[], what: string, context: CommandErrorContext): void {
  for (const key of Object.keys(map)) {
    if (!allowed.includes(key)) throw new CommandError('MALFORMED', `${what} has unknown field ${JSON.stringify(key.slice(0, 32))}`, context);
  }
  for (const key of required) {
    if (!Object.hasOwn(map, key)) throw new CommandError('MALFORMED', `${what} lacks field ${key}`, context);
  }
}

function bytesField(value: unknown, what: string, context: CommandErrorContext): Uint8Array {
  if (!(value instanceof Uint8Array) || value.length === 0) throw new CommandError('MALFORMED', `${what} must be a non-empty byte string`, context);
  return value;
}

function textField(value: unknown, max: number, what: string, context: CommandErrorContext): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new CommandError('MALFORMED', `${what} must be text of 1 to ${max} characters`, context);
  }
  return value;
}

function booleanField(value: unknown, what: string, context: CommandErrorContext): boolean {
  if (typeof value !== 'boolean') throw new CommandError('MALFORMED', `${what} must be true or false`, context);
  return value;
}

/** CBOR unsigned integers: cbor-x gives a number, or a bigint for the 8-byte form. */
function uintField(value: unknown, what: string, context: CommandErrorContext): number {
  const n = typeof value === 'bigint' && value >= 0n && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw new CommandError('MALFORMED', `${what} must be an unsigned integer below 2^53 (ms since the Unix epoch)`, context);
  }
  return n;
}

/** cbor-x writes integers above 2^32 as floats unless given a bigint; the format says uint. */
function uint(n: number): number | bigint {
  return Number.isSafeInteger(n) && n > 0xffffffff ? BigInt(n) : n;
}

function describe(value: unknown): string {
  return typeof value === 'number' || typeof value === 'string' ? JSON.stringify(value) : typeof value;
}

// ---------------------------------------------------------------------------
// Transport (docs/hes-commands.md, "Transport")

/** One entry of the HES's answer to GET /ami/v1/commands: its queue id and the envelope. */
export interface QueuedEnvelope {
  /** The HES's id for the queue entry (the command id); what the gateway acknowledges. */
  id: string;
  envelope: Uint8Array;
}

/** An entry of the answer that is not a {id, envelope} map. */
export interface UnreadableEntry {
  index: number;
  reason: string;
  /** SHA-256 of the entry's CBOR, to recognise it when it comes again. */
  digest: string;
  /** The id, when the entry has a usable one: it can still be acknowledged. */
  id?: string;
}

export class CommandTransportError extends Error {
  override readonly name = 'CommandTransportError';
  readonly code = 'BAD_ANSWER';
}

/** The HES's queue answer: a CBOR array of {id, envelope}. */
export function encodeCommandQueue(entries: readonly QueuedEnvelope[]): Buffer {
  return cborEncode(entries.map((e) => ({ id: e.id, envelope: Buffer.from(e.envelope) })));
}

/**
 * Reads the HES's queue answer. A malformed answer as a whole throws
 * CommandTransportError; a malformed entry is returned as unreadable, so one
 * bad entry does not hold up the others.
 */
export function decodeCommandQueue(bytes: Uint8Array): { entries: QueuedEnvelope[]; unreadable: UnreadableEntry[] } {
  let value: unknown;
  try {
    value = cborDecode(bytes);
  } catch {
    throw new CommandTransportError('the command queue answer is not CBOR');
  }
  if (!Array.isArray(value)) throw new CommandTransportError('the command queue answer must be a CBOR array');
  const entries: QueuedEnvelope[] = [];
  const unreadable: UnreadableEntry[] = [];
  value.forEach((item: unknown, index) => {
    const id = isPlainMap(item) && typeof item.id === 'string' && COMMAND_ID.test(item.id) ? item.id : undefined;
    if (id !== undefined && isPlainMap(item) && item.envelope instanceof Uint8Array && Object.keys(item).length === 2) {
      entries.push({ id, envelope: item.envelope });
      return;
    }
    let digest: string;
    try {
      digest = envelopeDigest(cborEncode(item));
    } catch {
      digest = envelopeDigest(Buffer.from(`entry ${index}`));
    }
    unreadable.push({ index, reason: id === undefined ? 'entry without a usable id' : 'entry without an envelope byte string', digest, ...(id !== undefined ? { id } : {}) });
  });
  return { entries, unreadable };
}

/** POST /ami/v1/commands/ack: the queue entries the gateway is done with. */
export interface CommandAck {
  gateway: string;
  ids: string[];
}

export function encodeCommandAck(ack: CommandAck): Buffer {
  return cborEncode({ gateway: ack.gateway, ids: ack.ids });
}

export function decodeCommandAck(bytes: Uint8Array): CommandAck {
  let value: unknown;
  try {
    value = cborDecode(bytes);
  } catch {
    throw new CommandTransportError('the acknowledgement is not CBOR');
  }
  if (!isPlainMap(value) || typeof value.gateway !== 'string' || value.gateway.length === 0 || value.gateway.length > MAX_GATEWAY_CHARS) {
    throw new CommandTransportError('the acknowledgement must be a map with gateway (text 1-128)');
  }
  const ids = value.ids;
  if (!Array.isArray(ids) || ids.length > 1024 || !ids.every((id): id is string => typeof id === 'string' && id.length > 0 && id.length <= 64)) {
    throw new CommandTransportError('the acknowledgement ids must be an array of at most 1024 texts of 1-64 characters');
  }
  return { gateway: value.gateway, ids };
}

/** The observable state of a gateway's queue: how many entries wait, and a number that changes with every change. */
export interface CommandQueueState {
  pending: number;
  version: number;
}

export function encodeCommandQueueState(state: CommandQueueState): Buffer {
  return cborEncode({ pending: state.pending, version: state.version });
}

/** Undefined when the payload is not a state map (a notification is only a hint to fetch). */
export function decodeCommandQueueState(bytes: Uint8Array): CommandQueueState | undefined {
  try {
    const value = cborDecode(bytes);
    if (isPlainMap(value) && typeof value.pending === 'number' && typeof value.version === 'number') return { pending: value.pending, version: value.version };
  } catch {
    // Not CBOR: no state.
  }
  return undefined;
}
