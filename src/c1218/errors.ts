/**
 * Every failure of the C12.18 codecs, link layer and services is a C1218Error
 * with a stable code: the CLI prints it, tests match it, and a caller decides
 * from it whether to retry (BSY, DNR), re-authenticate (ISC) or give up.
 * Decoding failures also carry the byte offset where the input went wrong.
 */
export type C1218ErrorCode =
  // Response codes a device sends instead of <ok> (ANSI C12.18-2006 §5.3.3).
  /** err: rejected for a reason not covered by the other codes. */
  | 'ERR'
  /** sns: service not supported. */
  | 'SNS'
  /** isc: insufficient security clearance (wrong or missing password). */
  | 'ISC'
  /** onp: operation not possible (e.g. a table that does not exist). */
  | 'ONP'
  /** iar: inappropriate action requested (e.g. an offset beyond the table). */
  | 'IAR'
  /** bsy: device busy, try again later. */
  | 'BSY'
  /** dnr: data not ready. */
  | 'DNR'
  /** dlk: data locked. */
  | 'DLK'
  /** rno: renegotiate request. */
  | 'RNO'
  /** isss: invalid service sequence state (e.g. a read before logon). */
  | 'ISSS'
  /** A response code this implementation does not know (C12.22 codes, garbage). */
  | 'UNKNOWN_RESPONSE'
  // Link layer.
  /** No answer (ACK, NAK or packet) in time, after every retry. */
  | 'TIMEOUT'
  /** The peer kept answering NAK: every retransmission was refused. */
  | 'NAK_LIMIT'
  /** A packet's CRC does not match its bytes. */
  | 'BAD_CRC'
  /** Bytes outside any packet that are neither ACK, NAK nor a start of packet. */
  | 'GARBAGE'
  /** A packet stopped arriving in the middle (inter-character timeout). */
  | 'INTERCHAR_TIMEOUT'
  /** Multi-packet transmission out of order (missing first packet, sequence gap). */
  | 'BAD_SEQUENCE'
  /** The byte stream closed while a request was under way. */
  | 'CLOSED'
  /** The serial port could not be opened or configured. */
  | 'PORT_OPEN_FAILED'
  // Codecs.
  /** The input ended before a field was complete. */
  | 'TRUNCATED'
  /** A length field is impossible (zero, over the negotiated size, inconsistent). */
  | 'BAD_LENGTH'
  /** Bytes left over after a complete structure. */
  | 'TRAILING_BYTES'
  /** A field holds a value outside its range (a baud rate code, a BCD digit...). */
  | 'BAD_VALUE'
  /** A read response's data does not add up to its checksum. */
  | 'BAD_TABLE_CHECKSUM'
  /** A request code this implementation does not decode. */
  | 'UNSUPPORTED_SERVICE'
  /** Valid data in a form this implementation does not decode (UTF-16 tables...). */
  | 'UNSUPPORTED'
  /** An argument given to an encoder or to the client is out of range. */
  | 'BAD_ARGUMENT';

export class C1218Error extends Error {
  override readonly name = 'C1218Error';
  constructor(
    readonly code: C1218ErrorCode,
    message: string,
    /** Byte offset in the input where decoding failed, when it applies. */
    readonly offset?: number,
    /** The raw response code byte for device refusals (ERR..ISSS, UNKNOWN_RESPONSE). */
    readonly responseCode?: number,
  ) {
    super(offset === undefined ? message : `${message} (at byte ${offset})`);
  }
}

export function isC1218Error(err: unknown): err is C1218Error {
  return err instanceof C1218Error;
}
