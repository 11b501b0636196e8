/**
 * Every failure the DLMS/COSEM codec and security layer report is a DlmsError
 * with a stable code (counted, shown in node status, matched by catch flows)
 * and, for decoding failures, the byte offset where the input went wrong.
 */
export type DlmsErrorCode =
  /** The input ended before a field was complete. */
  | 'TRUNCATED'
  /** A length field is impossible (longer than the input, over a limit, or inconsistent). */
  | 'BAD_LENGTH'
  /** An unknown or unexpected tag or choice. */
  | 'BAD_TAG'
  /** A field holds a value outside its range. */
  | 'BAD_VALUE'
  /** Nesting deeper than the decoder allows (a hostile structure). */
  | 'TOO_DEEP'
  /** Bytes left over after a complete APDU. */
  | 'TRAILING_BYTES'
  /** Valid DLMS the gateway does not implement (another security suite, a block transfer, ...). */
  | 'UNSUPPORTED'
  /** The GCM authentication tag does not match: wrong key, or the frame was altered. */
  | 'MIC_FAILURE'
  /** The security header is inconsistent (no key for it, bad security control, ...). */
  | 'BAD_SECURITY'
  /** A glo-ciphered APDU, or a general-glo-ciphered one without a system title, and no system title is known. */
  | 'NO_SYSTEM_TITLE'
  /** A key of the wrong length, or missing. */
  | 'BAD_KEY'
  /** The invocation counter is not greater than the last one accepted from this system title. */
  | 'REPLAY'
  /** No keys are known for the frame's system title. */
  | 'NO_KEYS'
  /** An unciphered APDU where protection is required. */
  | 'UNPROTECTED';

export class DlmsError extends Error {
  override readonly name = 'DlmsError';
  constructor(
    readonly code: DlmsErrorCode,
    message: string,
    /** Byte offset in the input where decoding failed, when it applies. */
    readonly offset?: number,
  ) {
    super(offset === undefined ? message : `${message} (at byte ${offset})`);
  }
}

export function isDlmsError(err: unknown): err is DlmsError {
  return err instanceof DlmsError;
}
