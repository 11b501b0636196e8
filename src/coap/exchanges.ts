/**
 * Pending uplink exchanges, by id. A mesh endpoint registers each reading it
 * waits on, with the key of the record it carries; whichever node takes
 * responsibility for the reading (the HES uplink today, the durable outbox
 * later) settles it by id and key. Node-RED clones messages between nodes, so
 * a plain string id in the message is what survives the trip, not a callback.
 * The key check means a flow that rewrote or split the message cannot get a
 * meter acknowledged for a record other than the one it sent.
 */
/**
 * `refuseWith` answers the meter with a 4.xx code instead of 5.03: the
 * request will never succeed as sent (malformed, or a replayed frame), so
 * the meter should drop it rather than retry.
 */
export type ExchangeOutcome =
  | { accepted: true }
  | {
      accepted: false;
      reason: string;
      refuseWith?: '4.00' | '4.01' | '4.03';
      /** Max-Age for the meter's retry, when the consumer knows better than the endpoint's default. */
      retryAfterSeconds?: number;
    };
export type ExchangeSettler = (outcome: ExchangeOutcome) => void;

interface PendingExchange {
  key: string;
  settle: ExchangeSettler;
}

const pending = new Map<string, PendingExchange>();

export function registerExchange(id: string, key: string, settle: ExchangeSettler): void {
  pending.set(id, { key, settle });
}

export function forgetExchange(id: string): void {
  pending.delete(id);
}

export type SettleResult = 'settled' | 'unknown' | 'key-mismatch';

/**
 * Settles an exchange for the record `key`. 'unknown' when it was settled
 * already (for instance timed out); 'key-mismatch' when the exchange carries
 * another record, which leaves it pending.
 */
export function settleExchange(id: string, key: string, outcome: ExchangeOutcome): SettleResult {
  const exchange = pending.get(id);
  if (!exchange) return 'unknown';
  if (exchange.key !== key) return 'key-mismatch';
  pending.delete(id);
  exchange.settle(outcome);
  return 'settled';
}

export function pendingExchangeCount(): number {
  return pending.size;
}

/**
 * Moves a pending exchange from the key it was received under to the key of
 * the record it became (a DLMS frame's digest to its system title and
 * invocation counter), once a node has authenticated exactly that frame.
 * Returns 'key-mismatch' (and changes nothing) when `fromKey` is not the
 * exchange's key.
 */
export function rebindExchange(id: string, fromKey: string, toKey: string): SettleResult {
  const exchange = pending.get(id);
  if (!exchange) return 'unknown';
  if (exchange.key !== fromKey) return 'key-mismatch';
  exchange.key = toKey;
  return 'settled';
}
