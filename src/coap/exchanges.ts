/**
 * Pending uplink exchanges, by id. A mesh endpoint registers each reading it
 * waits on, with the key of the record it carries; whichever node takes
 * responsibility for the reading (the HES uplink today, the durable outbox
 * later) settles it by id and key. Node-RED clones messages between nodes, so
 * a plain string id in the message is what survives the trip, not a callback.
 * The key check means a flow that rewrote or split the message cannot get a
 * meter acknowledged for a record other than the one it sent.
 */
export type ExchangeOutcome = { accepted: true } | { accepted: false; reason: string };
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
