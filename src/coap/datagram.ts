/**
 * A strict look at a CoAP datagram's framing (RFC 7252 section 3), before the
 * coap library parses it. The library's parser is lenient (it takes token
 * lengths 9-12, a payload marker with nothing after it) and, when it does
 * throw, the library answers 5.00 to the loopback address at the sender's
 * port instead of to the sender. Everything from the mesh may be hostile, so
 * the endpoint only hands the library datagrams that pass this check; what
 * fails is a message format error, counted and never parsed further.
 */

import { generate } from 'coap-packet';

export type CoapMessageType = 'CON' | 'NON' | 'ACK' | 'RST';

const TYPES: readonly CoapMessageType[] = ['CON', 'NON', 'ACK', 'RST'];

/** Why a datagram is not a well-formed CoAP message. */
export type MalformedReason =
  /** Fewer than the 4 bytes of the fixed header. */
  | 'TOO_SHORT'
  /** Version other than 1: RFC 7252 says to ignore it silently. */
  | 'BAD_VERSION'
  /** Token length 9-15 (reserved, section 3). */
  | 'BAD_TOKEN_LENGTH'
  /** An option's delta or length nibble is 15 without being the payload marker (section 3.1). */
  | 'BAD_OPTION'
  /** The token, an option's extended delta or length, or its value runs past the end. */
  | 'TRUNCATED'
  /** A payload marker followed by nothing (section 3). */
  | 'EMPTY_PAYLOAD'
  /** Code 0.00 with a token, options or payload (section 4.1). */
  | 'BAD_EMPTY'
  /** An Empty NON (section 4.3), or an ACK or RST carrying a request (section 4.2). */
  | 'BAD_TYPE'
  /** Code class 1, 6 or 7 (reserved, section 12.1). */
  | 'RESERVED_CODE'
  /** Well framed, but the coap library could not process it (a Block1 option of 0 or 4 bytes, say). */
  | 'UNPROCESSABLE';

export interface CoapFrame {
  ok: true;
  type: CoapMessageType;
  /** Code class (0 requests, 2-5 responses) and detail. */
  codeClass: number;
  codeDetail: number;
  messageId: number;
  /** Code 0.01-0.31: a request. */
  isRequest: boolean;
  /** Code 0.00: an Empty message (a CON one is a "CoAP ping"). */
  isEmpty: boolean;
  /** The first Uri-Path segment of a request (raw bytes as latin1), '' when it has none. */
  firstPathSegment: string;
  /** A view of the token's bytes in the datagram. */
  token: Buffer;
}

export interface MalformedFrame {
  ok: false;
  reason: MalformedReason;
  /**
   * Set when the header was readable (4 bytes, version 1): a malformed CON is
   * rejected with a Reset carrying this message id (section 4.2).
   */
  type?: CoapMessageType;
  messageId?: number;
}

export type FrameInspection = CoapFrame | MalformedFrame;

const URI_PATH = 11;
const PAYLOAD_MARKER = 0xff;
const EMPTY = Buffer.alloc(0);

/** Checks the framing of one datagram; never throws. */
export function inspectDatagram(datagram: Uint8Array): FrameInspection {
  if (datagram.length < 4) return { ok: false, reason: 'TOO_SHORT' };
  const header = datagramHeader(datagram);
  if (!header) return { ok: false, reason: 'BAD_VERSION' };
  const { type, messageId } = header;
  const malformed = (reason: MalformedReason): MalformedFrame => ({ ok: false, reason, type, messageId });
  const tokenLength = datagram[0]! & 0x0f;
  if (tokenLength > 8) return malformed('BAD_TOKEN_LENGTH');
  const code = datagram[1]!;
  const codeClass = code >> 5;
  const codeDetail = code & 0x1f;
  if (code === 0) {
    if (datagram.length !== 4 || tokenLength !== 0) return malformed('BAD_EMPTY');
    if (type === 'NON') return malformed('BAD_TYPE');
    return { ok: true, type, codeClass, codeDetail, messageId, isRequest: false, isEmpty: true, firstPathSegment: '', token: EMPTY };
  }
  if (codeClass === 1 || codeClass >= 6) return malformed('RESERVED_CODE');
  const isRequest = codeClass === 0;
  if (isRequest && (type === 'ACK' || type === 'RST')) return malformed('BAD_TYPE');
  let index = 4 + tokenLength;
  if (index > datagram.length) return malformed('TRUNCATED');
  let option = 0;
  let firstPathSegment: string | undefined;
  while (index < datagram.length) {
    const byte = datagram[index]!;
    if (byte === PAYLOAD_MARKER) {
      if (index + 1 === datagram.length) return malformed('EMPTY_PAYLOAD');
      break;
    }
    index += 1;
    let delta = byte >> 4;
    let length = byte & 0x0f;
    if (delta === 15 || length === 15) return malformed('BAD_OPTION');
    if (delta === 13) {
      if (index + 1 > datagram.length) return malformed('TRUNCATED');
      delta = datagram[index]! + 13;
      index += 1;
    } else if (delta === 14) {
      if (index + 2 > datagram.length) return malformed('TRUNCATED');
      delta = ((datagram[index]! << 8) | datagram[index + 1]!) + 269;
      index += 2;
    }
    if (length === 13) {
      if (index + 1 > datagram.length) return malformed('TRUNCATED');
      length = datagram[index]! + 13;
      index += 1;
    } else if (length === 14) {
      if (index + 2 > datagram.length) return malformed('TRUNCATED');
      length = ((datagram[index]! << 8) | datagram[index + 1]!) + 269;
      index += 2;
    }
    if (index + length > datagram.length) return malformed('TRUNCATED');
    option += delta;
    if (option === URI_PATH && firstPathSegment === undefined) {
      firstPathSegment = Buffer.from(datagram.buffer, datagram.byteOffset + index, length).toString('latin1');
    }
    index += length;
  }
  const token = Buffer.from(datagram.buffer, datagram.byteOffset + 4, tokenLength);
  return { ok: true, type, codeClass, codeDetail, messageId, isRequest, isEmpty: false, firstPathSegment: firstPathSegment ?? '', token };
}

/** The Reset message (RFC 7252 section 4.2) that rejects message `messageId`: 4 bytes, no token. */
export function resetMessage(messageId: number): Buffer {
  return generate({ code: '0.00', reset: true, messageId, token: EMPTY });
}

/** Type and message id of a datagram (incoming, or outgoing as the library sends it), when it has a version-1 CoAP header. */
export function datagramHeader(datagram: Uint8Array): { type: CoapMessageType; messageId: number } | undefined {
  if (datagram.length < 4 || datagram[0]! >> 6 !== 1) return undefined;
  return { type: TYPES[(datagram[0]! >> 4) & 0x03]!, messageId: (datagram[2]! << 8) | datagram[3]! };
}
