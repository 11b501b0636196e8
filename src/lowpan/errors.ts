/**
 * Every failure the 6LoWPAN codecs report is a LowpanError with a stable code
 * (counted per meter link, shown in node status, matched by catch flows) and,
 * for decoding failures, the byte offset in the input where it went wrong, so
 * that a field engineer can point at the offending byte of a captured frame.
 */
export type LowpanErrorCode =
  /** The input ended before a field was complete. */
  | 'TRUNCATED'
  /** The first byte of a 6LoWPAN header is not a dispatch this decoder knows, or is not allowed where it stands. */
  | 'BAD_DISPATCH'
  /** A field holds a reserved or impossible value. */
  | 'BAD_VALUE'
  /** A length field disagrees with the bytes present or with another length. */
  | 'BAD_LENGTH'
  /** Valid on the air, but not implemented here (MAC security, HC1, extension-header NHC, ...). */
  | 'UNSUPPORTED'
  /** A context identifier names a context the configured table does not hold. */
  | 'BAD_CONTEXT'
  /** The datagram does not fit (over 2047 bytes for RFC 4944 fragmentation, or headers larger than a frame). */
  | 'TOO_LARGE'
  /** The 802.15.4 FCS or the UDP checksum does not match the bytes. */
  | 'BAD_CHECKSUM'
  /** An address, prefix or option given to an encoder is malformed. */
  | 'BAD_ADDRESS';

export class LowpanError extends Error {
  override readonly name = 'LowpanError';
  constructor(
    readonly code: LowpanErrorCode,
    /** What went wrong, without the offset (the CLI prints the two apart). */
    readonly detail: string,
    /** Byte offset in the decoded input where decoding failed; absent for encoder refusals. */
    readonly offset?: number,
  ) {
    super(offset === undefined ? detail : `${detail} (at byte ${offset})`);
  }
}

export function isLowpanError(err: unknown): err is LowpanError {
  return err instanceof LowpanError;
}
