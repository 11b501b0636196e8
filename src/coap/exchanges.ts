/**
 * Pending uplink exchanges, by id. A mesh endpoint registers each reading it
 * waits on; whichever node takes responsibility for the reading (the HES
 * uplink today, the durable outbox later) settles it by id. Node-RED clones
 * messages between nodes, so a plain string id in the message is what
 * survives the trip, not a callback.
 */
export type ExchangeOutcome = { accepted: true } | { accepted: false; reason: string };
export type ExchangeSettler = (outcome: ExchangeOutcome) => void;

const pending = new Map<string, ExchangeSettler>();

/** Registers (or with `undefined`, forgets) the settler of an exchange. */
export function registerExchange(id: string, settle: ExchangeSettler | undefined): void {
  if (settle) pending.set(id, settle);
  else pending.delete(id);
}

/** Settles an exchange; returns false if it is unknown or already settled. */
export function settleExchange(id: string, outcome: ExchangeOutcome): boolean {
  const settle = pending.get(id);
  if (!settle) return false;
  pending.delete(id);
  settle(outcome);
  return true;
}

export function pendingExchangeCount(): number {
  return pending.size;
}
