import { createCipheriv, createDecipheriv } from 'node:crypto';
import { DlmsError } from './errors.js';
import { encodeLength } from './axdr.js';

/**
 * DLMS/COSEM security suite 0: AES-128-GCM with a 12-byte authentication tag,
 * applied to whole xDLMS APDUs ("ciphered APDUs", Green Book 9.2.7.2).
 *
 * Two framings carry a ciphered APDU:
 *
 *   service-specific glo-ciphering (tags 0xC8..0xCF):
 *     tag | length | SC | IC (4) | information | [tag (12) when authenticated]
 *
 *   general-glo-ciphering (tag 0xDB):
 *     0xDB | len(system-title) (8, or 0 when omitted) | system-title |
 *     length | SC | IC (4) | information | [tag (12) when authenticated]
 *
 * SC is the security control byte, IC the 32-bit invocation counter of the
 * sender. The GCM IV is the sender's system title followed by IC, big-endian.
 * What "information" holds, and what the tag covers, depends on SC:
 *
 *   authenticated + encrypted: information = GCM ciphertext of the APDU, AAD = SC || AK
 *   authenticated only:        information = the APDU in clear, AAD = SC || AK || APDU,
 *                              GCM over an empty plaintext (a GMAC)
 *   encrypted only:            information = GCM ciphertext of the APDU, no AAD, no tag
 *
 * The functions here are pure and work on bytes. No key, plaintext or tag is
 * ever logged or placed in an error message.
 */

/** Length of the security header: security control byte and invocation counter. */
export const SECURITY_HEADER_LENGTH = 5;
/** Suite 0 truncates the GCM tag to 12 bytes. */
export const AUTH_TAG_LENGTH = 12;
/** Suite 0 keys (EK and AK) are AES-128 keys. */
export const KEY_LENGTH = 16;
/** A system title is 8 bytes (Green Book 4.3.4). */
export const SYSTEM_TITLE_LENGTH = 8;
/** general-glo-ciphering [219]. */
export const GENERAL_GLO_CIPHERING_TAG = 0xdb;
/** The largest invocation counter (it is an unsigned 32-bit integer). */
export const MAX_INVOCATION_COUNTER = 0xffff_ffff;

const SC_SUITE_MASK = 0x0f;
const SC_AUTHENTICATION = 0x10;
const SC_ENCRYPTION = 0x20;
const SC_BROADCAST_KEY = 0x40;
const SC_COMPRESSION = 0x80;

/** The only security suite implemented: AES-GCM-128. */
const SUITE_0 = 0;

/** The decoded security control byte. */
export interface SecurityControl {
  /** Bits 0-3: security suite id. */
  suite: number;
  /** Bit 4: an authentication tag protects the APDU. */
  authentication: boolean;
  /** Bit 5: the APDU is encrypted. */
  encryption: boolean;
  /** Bit 6: the broadcast key set (GBEK) rather than the unicast one (GUEK). */
  broadcastKey: boolean;
  /** Bit 7: the APDU was compressed before ciphering. */
  compression: boolean;
}

/** The protection an encrypted APDU gets. */
export type SecurityPolicy = 'authenticated-encrypted' | 'authenticated' | 'encrypted';

/** The framing of a ciphered APDU. */
export type CipheredFraming = 'glo' | 'general-glo';

/** The two suite 0 keys: block cipher key (global unicast or broadcast) and authentication key. */
export interface SecurityKeys {
  ek: Uint8Array;
  ak: Uint8Array;
}

/** A ciphered APDU split into its fields; nothing is decrypted or verified yet. */
export interface CipheredApdu {
  kind: CipheredFraming;
  /** The first byte of the frame: a glo tag (0xC8..0xCF) or 0xDB. */
  tag: number;
  /** general-glo-ciphering only: the sender's system title, when the frame carries one. */
  systemTitle?: Buffer;
  /** The raw security control byte. */
  securityControl: number;
  /** The security control byte decoded. */
  security: SecurityControl;
  /** The sender's invocation counter (0 .. 2^32-1). */
  invocationCounter: number;
  /** The information field: ciphertext, or the clear APDU when only authenticated. */
  ciphertext: Buffer;
  /** The 12-byte GCM tag, present when `security.authentication`. */
  authTag?: Buffer;
}

export interface EncryptOptions {
  keys: SecurityKeys;
  /** The system title of the sender (this side). */
  systemTitle: Uint8Array;
  /** The sender's invocation counter for this APDU; the caller increments it. */
  invocationCounter: number;
  security: SecurityPolicy;
  framing: CipheredFraming;
  /** general-glo-ciphering: write the system title into the frame (default true). */
  includeSystemTitle?: boolean;
  /** Set the key-set bit: the APDU is ciphered with the broadcast key. */
  broadcastKey?: boolean;
}

// ---------------------------------------------------------------------------
// Tags

/** Plain xDLMS APDU tag -> its service-specific glo-ciphered tag (Green Book, xDLMS ASN.1). */
export const GLO_TAG_BY_PLAIN_TAG: ReadonlyMap<number, number> = new Map([
  [0xc0, 0xc8], // get-request -> glo-get-request
  [0xc1, 0xc9], // set-request -> glo-set-request
  [0xc2, 0xca], // event-notification-request -> glo-event-notification-request
  [0xc3, 0xcb], // action-request -> glo-action-request
  [0xc4, 0xcc], // get-response -> glo-get-response
  [0xc5, 0xcd], // set-response -> glo-set-response
  // 0xC6 and 0xCE are not assigned by the xDLMS ASN.1.
  [0xc7, 0xcf], // action-response -> glo-action-response
]);

/** glo-ciphered tag -> the plain APDU tag it must contain. */
export const PLAIN_TAG_BY_GLO_TAG: ReadonlyMap<number, number> = new Map(
  [...GLO_TAG_BY_PLAIN_TAG].map(([plain, glo]) => [glo, plain]),
);

/** The glo tag for a plain APDU tag, or undefined when the APDU has no glo form (it then needs general-glo-ciphering). */
export function gloTagFor(plainTag: number): number | undefined {
  return GLO_TAG_BY_PLAIN_TAG.get(plainTag);
}

/** The plain APDU tag a glo tag wraps, or undefined for anything that is not a glo tag. */
export function plainTagFor(gloTag: number): number | undefined {
  return PLAIN_TAG_BY_GLO_TAG.get(gloTag);
}

/** True when the bytes start with a glo-ciphered or general-glo-ciphering tag. Looks at the tag only. */
export function isCipheredApdu(bytes: Uint8Array): boolean {
  if (!(bytes instanceof Uint8Array) || bytes.length === 0) return false;
  const tag = bytes[0] as number;
  return tag === GENERAL_GLO_CIPHERING_TAG || PLAIN_TAG_BY_GLO_TAG.has(tag);
}

// ---------------------------------------------------------------------------
// Security control byte

function decodeSecurityControl(byte: number): SecurityControl {
  return {
    suite: byte & SC_SUITE_MASK,
    authentication: (byte & SC_AUTHENTICATION) !== 0,
    encryption: (byte & SC_ENCRYPTION) !== 0,
    broadcastKey: (byte & SC_BROADCAST_KEY) !== 0,
    compression: (byte & SC_COMPRESSION) !== 0,
  };
}

/** Throws unless the gateway can process this protection. */
function checkSecurityControl(sc: SecurityControl, offset?: number): void {
  if (sc.suite !== SUITE_0) {
    throw new DlmsError('UNSUPPORTED', `security suite ${sc.suite} is not supported (only suite 0, AES-GCM-128)`, offset);
  }
  if (sc.compression) {
    throw new DlmsError('UNSUPPORTED', 'compressed ciphered APDUs are not supported', offset);
  }
  if (!sc.authentication && !sc.encryption) {
    throw new DlmsError('BAD_SECURITY', 'security control byte applies neither authentication nor encryption', offset);
  }
}

/**
 * Decodes a security control byte and checks that it is one this gateway
 * handles: suite 0, no compression, authentication and/or encryption.
 */
export function parseSecurityControl(byte: number): SecurityControl {
  if (!Number.isInteger(byte) || byte < 0 || byte > 0xff) {
    throw new DlmsError('BAD_VALUE', 'a security control byte is an integer 0..255');
  }
  const sc = decodeSecurityControl(byte);
  checkSecurityControl(sc);
  return sc;
}

/** Encodes a security control byte; the same rules as parseSecurityControl apply. */
export function securityControlByte(sc: {
  suite?: number;
  authentication: boolean;
  encryption: boolean;
  broadcastKey?: boolean;
  compression?: boolean;
}): number {
  const suite = sc.suite ?? SUITE_0;
  if (!Number.isInteger(suite) || suite < 0 || suite > SC_SUITE_MASK) {
    throw new DlmsError('BAD_VALUE', 'a security suite id is an integer 0..15');
  }
  const full: SecurityControl = {
    suite,
    authentication: sc.authentication,
    encryption: sc.encryption,
    broadcastKey: sc.broadcastKey ?? false,
    compression: sc.compression ?? false,
  };
  checkSecurityControl(full);
  return (
    suite |
    (full.authentication ? SC_AUTHENTICATION : 0) |
    (full.encryption ? SC_ENCRYPTION : 0) |
    (full.broadcastKey ? SC_BROADCAST_KEY : 0) |
    (full.compression ? SC_COMPRESSION : 0)
  );
}

function policyFlags(policy: SecurityPolicy): { authentication: boolean; encryption: boolean } {
  switch (policy) {
    case 'authenticated-encrypted':
      return { authentication: true, encryption: true };
    case 'authenticated':
      return { authentication: true, encryption: false };
    case 'encrypted':
      return { authentication: false, encryption: true };
    default:
      throw new DlmsError('BAD_VALUE', 'security must be authenticated-encrypted, authenticated or encrypted');
  }
}

// ---------------------------------------------------------------------------
// A-XDR length (private: the codec proper lives elsewhere)

/** The longest length field accepted: 0x84 and four bytes, i.e. up to 2^32-1. */
const MAX_LENGTH_OF_LENGTH = 4;

/** Reads an A-XDR length at `offset`; returns the value and the offset after it. */
function readLength(bytes: Uint8Array, offset: number): { value: number; next: number } {
  if (offset >= bytes.length) throw new DlmsError('TRUNCATED', 'length field missing', offset);
  const first = bytes[offset] as number;
  if (first < 0x80) return { value: first, next: offset + 1 };
  const count = first & 0x7f;
  if (count === 0 || count > MAX_LENGTH_OF_LENGTH) {
    throw new DlmsError('BAD_LENGTH', `length field announces ${count} length bytes`, offset);
  }
  let value = 0;
  for (let i = 1; i <= count; i++) {
    const at = offset + i;
    if (at >= bytes.length) throw new DlmsError('TRUNCATED', 'length field cut short', at);
    value = value * 256 + (bytes[at] as number);
  }
  return { value, next: offset + 1 + count };
}


// ---------------------------------------------------------------------------
// Parsing

type CipheredContent = Pick<CipheredApdu, 'securityControl' | 'security' | 'invocationCounter' | 'ciphertext' | 'authTag'>;

/**
 * Splits the ciphered content (SC | IC | information | tag) that occupies
 * bytes[start, end). `lengthOffset` is where its length field starts, for errors.
 */
function parseContent(
  bytes: Uint8Array,
  start: number,
  end: number,
  lengthOffset: number,
  kind: CipheredFraming,
  tag: number,
): CipheredApdu {
  if (end - start < SECURITY_HEADER_LENGTH) {
    throw new DlmsError('BAD_LENGTH', `ciphered content of ${end - start} bytes is shorter than the security header`, lengthOffset);
  }
  const securityControl = bytes[start] as number;
  const security = decodeSecurityControl(securityControl);
  checkSecurityControl(security, start);
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const invocationCounter = view.readUInt32BE(start + 1);
  const infoStart = start + SECURITY_HEADER_LENGTH;
  const infoEnd = security.authentication ? end - AUTH_TAG_LENGTH : end;
  if (infoEnd - infoStart < 1) {
    throw new DlmsError(
      'BAD_LENGTH',
      security.authentication
        ? 'ciphered content too short for an APDU and a 12-byte authentication tag'
        : 'ciphered content holds no APDU',
      lengthOffset,
    );
  }
  // Copies, so the parsed frame does not change if the caller reuses its buffer.
  const ciphertext = Buffer.from(view.subarray(infoStart, infoEnd));
  // Built in one literal: spreading a parsed part into the result cost a tenth of a frame's work.
  const result: CipheredApdu = { kind, tag, securityControl, security, invocationCounter, ciphertext };
  if (security.authentication) result.authTag = Buffer.from(view.subarray(infoEnd, end));
  return result;
}

/**
 * Reads the framing and security header of a ciphered APDU without any
 * cryptography, so that the caller can choose keys and check the invocation
 * counter for replay before decrypting. Anything malformed is a DlmsError
 * carrying the byte offset; lengths are checked against the input.
 */
export function parseCipheredApdu(bytes: Uint8Array): CipheredApdu {
  if (!(bytes instanceof Uint8Array)) throw new DlmsError('BAD_VALUE', 'a ciphered APDU must be a byte array');
  if (bytes.length === 0) throw new DlmsError('TRUNCATED', 'empty input', 0);
  const tag = bytes[0] as number;

  if (PLAIN_TAG_BY_GLO_TAG.has(tag)) {
    const length = readLength(bytes, 1);
    const end = length.next + length.value;
    if (end > bytes.length) {
      throw new DlmsError('BAD_LENGTH', `length ${length.value} runs past the end of the input`, 1);
    }
    if (end < bytes.length) throw new DlmsError('TRAILING_BYTES', `${bytes.length - end} bytes after the ciphered APDU`, end);
    return parseContent(bytes, length.next, end, 1, 'glo', tag);
  }

  if (tag === GENERAL_GLO_CIPHERING_TAG) {
    const titleLength = readLength(bytes, 1);
    if (titleLength.value !== 0 && titleLength.value !== SYSTEM_TITLE_LENGTH) {
      throw new DlmsError('BAD_LENGTH', `system title of ${titleLength.value} bytes (must be 8, or 0 when omitted)`, 1);
    }
    const titleEnd = titleLength.next + titleLength.value;
    if (titleEnd > bytes.length) throw new DlmsError('BAD_LENGTH', 'system title runs past the end of the input', 1);
    const contentLengthOffset = titleEnd;
    const length = readLength(bytes, contentLengthOffset);
    const end = length.next + length.value;
    if (end > bytes.length) {
      throw new DlmsError('BAD_LENGTH', `length ${length.value} runs past the end of the input`, contentLengthOffset);
    }
    if (end < bytes.length) throw new DlmsError('TRAILING_BYTES', `${bytes.length - end} bytes after the ciphered APDU`, end);
    const frame = parseContent(bytes, length.next, end, contentLengthOffset, 'general-glo', tag);
    if (titleLength.value === SYSTEM_TITLE_LENGTH) {
      frame.systemTitle = Buffer.from(bytes.subarray(titleLength.next, titleEnd));
    }
    return frame;
  }

  throw new DlmsError('BAD_TAG', `tag 0x${tag.toString(16).padStart(2, '0')} is not a glo-ciphered or general-glo-ciphering APDU`, 0);
}

// ---------------------------------------------------------------------------
// Cryptography

function checkKey(key: unknown, name: string): asserts key is Uint8Array {
  if (!(key instanceof Uint8Array) || key.length !== KEY_LENGTH) {
    // The length only: never anything about the key's content.
    const what = key instanceof Uint8Array ? `${key.length} bytes` : 'missing';
    throw new DlmsError('BAD_KEY', `${name} must be ${KEY_LENGTH} bytes (suite 0), got ${what}`);
  }
}

function checkSystemTitle(title: unknown, whose: string): asserts title is Uint8Array {
  if (!(title instanceof Uint8Array) || title.length !== SYSTEM_TITLE_LENGTH) {
    const what = title instanceof Uint8Array ? `${title.length} bytes` : 'none';
    throw new DlmsError('NO_SYSTEM_TITLE', `${whose} system title must be ${SYSTEM_TITLE_LENGTH} bytes, got ${what}`);
  }
}

function checkInvocationCounter(ic: unknown): asserts ic is number {
  if (typeof ic !== 'number' || !Number.isInteger(ic) || ic < 0 || ic > MAX_INVOCATION_COUNTER) {
    throw new DlmsError('BAD_VALUE', 'the invocation counter must be an integer 0..2^32-1');
  }
}

function initializationVector(systemTitle: Uint8Array, invocationCounter: number): Buffer {
  const iv = Buffer.alloc(SYSTEM_TITLE_LENGTH + 4);
  iv.set(systemTitle, 0);
  iv.writeUInt32BE(invocationCounter, SYSTEM_TITLE_LENGTH);
  return iv;
}

interface Protected {
  information: Buffer;
  authTag?: Buffer;
}

/** Applies suite 0 protection to `plaintext` (not yet framed). */
function protect(plaintext: Uint8Array, sc: number, security: SecurityControl, keys: SecurityKeys, iv: Buffer): Protected {
  const cipher = createCipheriv('aes-128-gcm', keys.ek, iv, { authTagLength: AUTH_TAG_LENGTH });
  if (security.encryption) {
    if (security.authentication) cipher.setAAD(Buffer.concat([Buffer.of(sc), keys.ak]));
    const information = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    // Encryption only: the GCM ciphertext without its tag (GCM's CTR part).
    return security.authentication ? { information, authTag: cipher.getAuthTag() } : { information };
  }
  // Authentication only: a GMAC over SC || AK || APDU, the APDU travels in clear.
  cipher.setAAD(Buffer.concat([Buffer.of(sc), keys.ak, plaintext]));
  cipher.final();
  return { information: Buffer.from(plaintext), authTag: cipher.getAuthTag() };
}

/**
 * Verifies and decrypts a parsed ciphered APDU and returns the plain APDU.
 *
 * The IV uses the SENDER's system title: for general-glo-ciphering the one in
 * the frame when present, otherwise `systemTitle` (which the caller knows
 * from the association or the meter's registration); for glo-ciphering always
 * `systemTitle`. A wrong key, system title, invocation counter or an altered
 * frame is MIC_FAILURE when the frame is authenticated. An encrypted-only
 * frame has no tag, so such errors only show as a garbled APDU (for glo
 * framing, usually as BAD_TAG: the plain tag does not match the glo tag).
 * AK is only required when the frame is authenticated.
 */
export function decryptApdu(frame: CipheredApdu, keys: SecurityKeys, systemTitle?: Uint8Array): Buffer {
  if (typeof frame !== 'object' || frame === null) throw new DlmsError('BAD_VALUE', 'no ciphered APDU given');
  if (typeof keys !== 'object' || keys === null) throw new DlmsError('BAD_KEY', 'no keys given');
  const sc = frame.securityControl;
  if (typeof sc !== 'number' || !Number.isInteger(sc) || sc < 0 || sc > 0xff) {
    throw new DlmsError('BAD_SECURITY', 'the security control byte is not a byte');
  }
  // Trust the raw byte, not the decoded copy a caller might have edited.
  const security = decodeSecurityControl(sc);
  checkSecurityControl(security);
  checkInvocationCounter(frame.invocationCounter);
  if (!(frame.ciphertext instanceof Uint8Array) || frame.ciphertext.length === 0) {
    throw new DlmsError('BAD_LENGTH', 'the ciphered APDU holds no information field');
  }
  if (security.authentication) {
    if (!(frame.authTag instanceof Uint8Array) || frame.authTag.length !== AUTH_TAG_LENGTH) {
      throw new DlmsError('BAD_SECURITY', `an authenticated APDU needs a ${AUTH_TAG_LENGTH}-byte tag`);
    }
  } else if (frame.authTag !== undefined) {
    throw new DlmsError('BAD_SECURITY', 'an APDU that is not authenticated carries no tag');
  }

  let expectedPlainTag: number | undefined;
  let title: Uint8Array | undefined = systemTitle;
  if (frame.kind === 'glo') {
    expectedPlainTag = plainTagFor(frame.tag);
    if (expectedPlainTag === undefined) throw new DlmsError('BAD_TAG', 'frame tag is not a glo-ciphered tag');
  } else if (frame.kind === 'general-glo') {
    if (frame.tag !== GENERAL_GLO_CIPHERING_TAG) throw new DlmsError('BAD_TAG', 'frame tag is not general-glo-ciphering');
    if (frame.systemTitle !== undefined) title = frame.systemTitle;
  } else {
    throw new DlmsError('BAD_VALUE', 'frame kind must be glo or general-glo');
  }
  checkSystemTitle(title, "the sender's");
  checkKey(keys.ek, 'the encryption key (EK)');
  if (security.authentication) checkKey(keys.ak, 'the authentication key (AK)');

  const iv = initializationVector(title, frame.invocationCounter);
  let plaintext: Buffer;
  if (security.authentication) {
    const decipher = createDecipheriv('aes-128-gcm', keys.ek, iv, { authTagLength: AUTH_TAG_LENGTH });
    decipher.setAuthTag(frame.authTag as Uint8Array);
    try {
      if (security.encryption) {
        decipher.setAAD(Buffer.concat([Buffer.of(sc), keys.ak]));
        plaintext = Buffer.concat([decipher.update(frame.ciphertext), decipher.final()]);
      } else {
        decipher.setAAD(Buffer.concat([Buffer.of(sc), keys.ak, frame.ciphertext]));
        decipher.final();
        plaintext = Buffer.from(frame.ciphertext);
      }
    } catch {
      // OpenSSL's message says nothing useful; ours names the usual causes and no secrets.
      throw new DlmsError(
        'MIC_FAILURE',
        'authentication tag mismatch: wrong key, system title or invocation counter, or an altered frame',
      );
    }
  } else {
    // Encryption only: GCM without a tag is AES-CTR starting at counter block
    // IV || 00000002, and CTR is its own inverse, so running the GCM cipher
    // over the ciphertext yields the plaintext (the tag it computes is dropped).
    const cipher = createCipheriv('aes-128-gcm', keys.ek, iv, { authTagLength: AUTH_TAG_LENGTH });
    plaintext = Buffer.concat([cipher.update(frame.ciphertext), cipher.final()]);
  }

  if (expectedPlainTag !== undefined && plaintext[0] !== expectedPlainTag) {
    // The glo tag is outside the authenticated data; the APDU inside must match it.
    throw new DlmsError(
      'BAD_TAG',
      `glo tag 0x${frame.tag.toString(16)} must carry APDU 0x${expectedPlainTag.toString(16)}, found 0x${(plaintext[0] ?? 0).toString(16)}`,
    );
  }
  return plaintext;
}

/**
 * Protects a plain APDU with suite 0 and frames it.
 *
 * glo framing takes the glo tag from the APDU's own tag (0xC0 -> 0xC8, ...);
 * an APDU without a glo form (data-notification 0x0F, ...) must use
 * general-glo framing, otherwise BAD_TAG. The caller owns the invocation
 * counter and must never reuse one with the same key and system title.
 */
export function encryptApdu(plaintext: Uint8Array, opts: EncryptOptions): Buffer {
  if (!(plaintext instanceof Uint8Array) || plaintext.length === 0) {
    throw new DlmsError('BAD_LENGTH', 'the APDU to protect is empty');
  }
  if (typeof opts !== 'object' || opts === null) throw new DlmsError('BAD_VALUE', 'no options given');
  const flags = policyFlags(opts.security);
  const sc = securityControlByte({ ...flags, broadcastKey: opts.broadcastKey === true });
  const security = decodeSecurityControl(sc);
  checkInvocationCounter(opts.invocationCounter);
  checkSystemTitle(opts.systemTitle, 'the sender (own)');
  if (typeof opts.keys !== 'object' || opts.keys === null) throw new DlmsError('BAD_KEY', 'no keys given');
  checkKey(opts.keys.ek, 'the encryption key (EK)');
  if (security.authentication) checkKey(opts.keys.ak, 'the authentication key (AK)');

  let gloTag: number | undefined;
  if (opts.framing === 'glo') {
    gloTag = gloTagFor(plaintext[0] as number);
    if (gloTag === undefined) {
      throw new DlmsError(
        'BAD_TAG',
        `APDU tag 0x${(plaintext[0] as number).toString(16).padStart(2, '0')} has no glo-ciphered form; use general-glo framing`,
        0,
      );
    }
  } else if (opts.framing !== 'general-glo') {
    throw new DlmsError('BAD_VALUE', 'framing must be glo or general-glo');
  }

  const header = Buffer.alloc(SECURITY_HEADER_LENGTH);
  header[0] = sc;
  header.writeUInt32BE(opts.invocationCounter, 1);
  const { information, authTag } = protect(
    plaintext,
    sc,
    security,
    opts.keys,
    initializationVector(opts.systemTitle, opts.invocationCounter),
  );
  const content = authTag ? Buffer.concat([header, information, authTag]) : Buffer.concat([header, information]);

  if (gloTag !== undefined) return Buffer.concat([Buffer.of(gloTag), encodeLength(content.length), content]);
  const title = opts.includeSystemTitle === false ? Buffer.alloc(0) : Buffer.from(opts.systemTitle);
  return Buffer.concat([
    Buffer.of(GENERAL_GLO_CIPHERING_TAG, title.length),
    title,
    encodeLength(content.length),
    content,
  ]);
}
