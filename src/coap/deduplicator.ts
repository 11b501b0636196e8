import { createHash } from 'node:crypto';

/**
 * Message deduplication (RFC 7252 section 4.5): a request is processed once
 * per (source address, source port, message id) for as long as its sender may
 * retransmit it, and every further copy of a Confirmable request gets the very
 * Acknowledgement (or Reset) the first one got.
 *
 * The coap library caches a response only once it is sent, and keys a
 * piggybacked answer by message id and token but an empty ACK by message id
 * alone, so a copy arriving while the first is processed (the endpoint holds
 * answers until the flow accepts; registrations wait for LevelDB), after an
 * empty ACK, or after its LRU let go of the answer, would be processed again.
 * This table sits in front of the library and answers every duplicate itself.
 *
 * Memory: at most `maxExchanges` exchanges and `maxAnswerBytes` of stored
 * answers (an ACK is usually a dozen bytes: code, message id, token). Beyond
 * either cap the oldest exchanges are forgotten before their lifetime ends; a
 * late retransmission of one of them is then processed as a new request. That
 * is safe, only not free: readings and DLMS frames join the pending exchange
 * of the same record or are deduplicated by record key at the HES, and a
 * registration of the same endpoint name replaces itself under the same id.
 */

/** EXCHANGE_LIFETIME with the default transmission parameters (section 4.8.2): 247 s. */
export const EXCHANGE_LIFETIME_MS = 247_000;
/** NON_LIFETIME with the default transmission parameters (section 4.8.2): 145 s. */
export const NON_LIFETIME_MS = 145_000;
export const DEFAULT_MAX_EXCHANGES = 100_000;
export const DEFAULT_MAX_ANSWER_BYTES = 8 * 1024 * 1024;
/**
 * Copies of one request answered once its answer exists: a meter retransmits
 * at most MAX_RETRANSMIT (4) times, so more copies than this are a network
 * that duplicates heavily or someone trying to make the gateway send; those
 * are not answered (the next copy after the answer is).
 */
const MAX_HELD_COPIES = 8;

export interface DeduplicatorOptions {
  /** How long a CON request is remembered (default EXCHANGE_LIFETIME_MS). */
  exchangeLifetimeMs?: number;
  /** How long a NON request is remembered (default NON_LIFETIME_MS). */
  nonLifetimeMs?: number;
  maxExchanges?: number;
  maxAnswerBytes?: number;
  /** Clock in ms; Date.now by default (tests inject their own). */
  now?: () => number;
}

interface Exchange {
  /** A digest of the request datagram: a copy is byte for byte the same message. */
  digest: string;
  confirmable: boolean;
  expiresAt: number;
  /** The ACK or RST sent for the request, once sent. */
  answer?: Buffer;
  /** Copies that arrived before the answer existed; each gets it once it does. */
  held: number;
}

export type DeduplicationVerdict =
  /** Not seen (or seen longer ago than its lifetime): process it. */
  | { duplicate: false }
  /**
   * A copy of a request being or already processed: do not process it.
   * `answer` is what to send back now, when it exists; otherwise the copy is
   * answered when the first one is (`held`) or, for NON, not at all (section
   * 4.5: duplicated NON messages are silently ignored).
   */
  | { duplicate: true; answer?: Buffer; held: boolean };

export class MessageDeduplicator {
  private readonly exchanges = new Map<string, Exchange>();
  private answerBytes = 0;
  private readonly exchangeLifetimeMs: number;
  private readonly nonLifetimeMs: number;
  private readonly maxExchanges: number;
  private readonly maxAnswerBytes: number;
  private readonly now: () => number;
  /** Exchanges forgotten before their lifetime ended, to respect the caps. */
  forgottenEarly = 0;

  constructor(options: DeduplicatorOptions = {}) {
    this.exchangeLifetimeMs = options.exchangeLifetimeMs ?? EXCHANGE_LIFETIME_MS;
    this.nonLifetimeMs = options.nonLifetimeMs ?? NON_LIFETIME_MS;
    this.maxExchanges = Math.max(1, options.maxExchanges ?? DEFAULT_MAX_EXCHANGES);
    this.maxAnswerBytes = options.maxAnswerBytes ?? DEFAULT_MAX_ANSWER_BYTES;
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.exchanges.size;
  }

  /**
   * Looks up a request datagram (CON or NON) and remembers it when it is new.
   * A datagram under a remembered message id whose bytes differ is not a
   * copy: the peer reused the id (a meter that rebooted and restarted its
   * counter), so it is a new request and replaces the old exchange.
   */
  check(address: string, port: number, messageId: number, confirmable: boolean, datagram: Uint8Array): DeduplicationVerdict {
    const key = exchangeKey(address, port, messageId);
    const now = this.now();
    const digest = createHash('sha1').update(datagram).digest('base64');
    const known = this.exchanges.get(key);
    if (known && known.expiresAt > now && known.digest === digest) {
      if (!known.confirmable) return { duplicate: true, held: false };
      if (known.answer) return { duplicate: true, answer: known.answer, held: false };
      if (known.held >= MAX_HELD_COPIES) return { duplicate: true, held: false };
      known.held += 1;
      return { duplicate: true, held: true };
    }
    if (known) this.forget(key, known);
    this.sweep(now);
    this.exchanges.set(key, { digest, confirmable, expiresAt: now + (confirmable ? this.exchangeLifetimeMs : this.nonLifetimeMs), held: 0 });
    this.enforceCaps();
    return { duplicate: false };
  }

  /**
   * Records the ACK or RST sent to `address`:`port` for message `messageId`;
   * returns how many held copies are owed the same answer. The first answer
   * is kept (an empty ACK stays the answer after the separate response).
   */
  answered(address: string, port: number, messageId: number, answer: Uint8Array): number {
    const known = this.exchanges.get(exchangeKey(address, port, messageId));
    if (!known || !known.confirmable || known.answer) return 0;
    known.answer = Buffer.from(answer);
    this.answerBytes += known.answer.length;
    const held = known.held;
    known.held = 0;
    this.enforceCaps();
    return held;
  }

  clear(): void {
    this.exchanges.clear();
    this.answerBytes = 0;
  }

  private forget(key: string, exchange: Exchange): void {
    this.exchanges.delete(key);
    this.answerBytes -= exchange.answer?.length ?? 0;
  }

  /**
   * Drops expired exchanges from the oldest end. Map order is arrival order;
   * a NON exchange may expire before older CON ones and then waits behind
   * them (lookups check the expiry, so it is never mistaken for live).
   */
  private sweep(now: number): void {
    for (const [key, exchange] of this.exchanges) {
      if (exchange.expiresAt > now) return;
      this.forget(key, exchange);
    }
  }

  private enforceCaps(): void {
    for (const [key, exchange] of this.exchanges) {
      if (this.exchanges.size <= this.maxExchanges && this.answerBytes <= this.maxAnswerBytes) return;
      this.forget(key, exchange);
      this.forgottenEarly += 1;
    }
  }
}

function exchangeKey(address: string, port: number, messageId: number): string {
  return `${address}|${port}|${messageId}`;
}
