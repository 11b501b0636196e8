import { BackhaulError } from './errors.js';

/** What a message to `backhaul status` asks for. */
export type BackhaulRequest = { action: 'status' } | { action: 'hold release' } | { action: 'restart'; kind: 'soft' | 'hard' };

function commandWord(value: unknown): 'status' | 'hold release' | 'restart' | undefined {
  if (typeof value !== 'string') return undefined;
  // "hold release", "hold-release" and "HOLD_RELEASE" are the same request.
  const word = value.trim().toLowerCase().replace(/[-_\s]+/g, ' ');
  return word === 'status' || word === 'hold release' || word === 'restart' ? word : undefined;
}

/**
 * Reads the request in a message: the command in `topic` (`status`,
 * `hold release`, or `restart` with `payload` `soft` or `hard`), or else in
 * `payload` (a restart asked for that way is soft). Throws a BackhaulError
 * (BAD_COMMAND) for anything else.
 */
export function backhaulRequest(message: { topic?: unknown; payload?: unknown }): BackhaulRequest {
  const fromTopic = commandWord(message.topic);
  const word = fromTopic ?? commandWord(message.payload);
  if (word === 'status') return { action: 'status' };
  if (word === 'hold release') return { action: 'hold release' };
  if (word === 'restart') {
    const kind = fromTopic ? message.payload : undefined;
    if (kind === undefined || kind === null || kind === '' || kind === 'soft' || commandWord(kind) === 'restart') return { action: 'restart', kind: 'soft' };
    if (kind === 'hard') return { action: 'restart', kind: 'hard' };
    throw new BackhaulError('BAD_COMMAND', `a restart is "soft" or "hard" (msg.payload), not ${JSON.stringify(kind) ?? String(kind)}`);
  }
  throw new BackhaulError('BAD_COMMAND', 'expected msg.topic (or msg.payload) "status", "hold release" or "restart"');
}
