/**
 * RFC 7252 section 4.8 transmission parameters. The defaults are the RFC's;
 * section 4.8.1 allows changing them for a deployment (a slow, lossy mesh may
 * want a longer ACK_TIMEOUT), and tests shorten them.
 */
export interface TransmissionParameters {
  /** ACK_TIMEOUT: the initial retransmission timeout, before randomisation. */
  ackTimeoutMs: number;
  /** ACK_RANDOM_FACTOR: the initial timeout is drawn from [ACK_TIMEOUT, ACK_TIMEOUT x factor]. */
  ackRandomFactor: number;
  /** MAX_RETRANSMIT: retransmissions after the first transmission. */
  maxRetransmit: number;
  /** NSTART: outstanding interactions per meter. */
  nstart: number;
  /**
   * How long to wait for a separate response after the meter's empty ACK.
   * RFC 7252 leaves this open; a meter that promised a response and never
   * sends it must not hold its slot for ever.
   */
  separateResponseTimeoutMs: number;
  /** EXCHANGE_LIFETIME: how long a received message id is remembered for duplicate detection. */
  exchangeLifetimeMs: number;
}

export const RFC7252_TRANSMISSION: Readonly<TransmissionParameters> = Object.freeze({
  ackTimeoutMs: 2000,
  ackRandomFactor: 1.5,
  maxRetransmit: 4,
  nstart: 1,
  separateResponseTimeoutMs: 60_000,
  exchangeLifetimeMs: 247_000,
});

export function checkTransmissionParameters(p: TransmissionParameters): void {
  const bad = (what: string): never => {
    throw new RangeError(`transmission parameters: ${what}`);
  };
  if (!(p.ackTimeoutMs >= 1)) bad('ackTimeoutMs must be at least 1');
  if (!(p.ackRandomFactor >= 1)) bad('ackRandomFactor must be at least 1 (RFC 7252 section 4.8)');
  if (!Number.isInteger(p.maxRetransmit) || p.maxRetransmit < 0 || p.maxRetransmit > 20) bad('maxRetransmit must be an integer 0..20');
  if (!Number.isInteger(p.nstart) || p.nstart < 1) bad('nstart must be an integer of at least 1');
  if (!(p.separateResponseTimeoutMs >= 1)) bad('separateResponseTimeoutMs must be at least 1');
  if (!(p.exchangeLifetimeMs >= 1)) bad('exchangeLifetimeMs must be at least 1');
}
