import type { PeerAddress } from './transport.js';

/**
 * Why a request to a meter failed. COMM_TIMEOUT_ERR is the token operators
 * know from the field manuals: the meter did not answer within RFC 7252's
 * retransmissions (or did not send the response it promised).
 */
export type MeshRequestErrorCode =
  | 'COMM_TIMEOUT_ERR'
  /** The meter answered with a Reset: it could not process the message. */
  | 'RESET'
  | 'ABORTED'
  /** The gateway already has its maximum of requests waiting. */
  | 'QUEUE_FULL'
  | 'CLOSED'
  /** A block-wise transfer went wrong (block out of order, representation changed mid-transfer). */
  | 'BLOCKWISE_ERR'
  /** A response body larger than the caller allows. */
  | 'TOO_LARGE'
  /** The request itself is unusable (path, options, payload). */
  | 'BAD_REQUEST';

export class MeshRequestError extends Error {
  override readonly name = 'MeshRequestError';
  constructor(
    readonly code: MeshRequestErrorCode,
    message: string,
    readonly peer?: PeerAddress,
  ) {
    super(message);
  }
}
