import { BackhaulError, excerpt } from './errors.js';

/**
 * How OpenVPN 2.6 answers a command (checked against a real openvpn):
 * - `line`: one line, `SUCCESS: ...` or `ERROR: ...` (hold, hold release,
 *   bytecount N, signal SIG..., state on|off, pid, verb, ...);
 * - `block`: lines ending with `END`, or a single `ERROR: ...` (status,
 *   state, state all, state N, log all, version, help, ...);
 * - `line+block`: `SUCCESS: ...` and then lines ending with `END`
 *   (`state on all`: "real-time state notification set to ON", then the
 *   history), or a single `ERROR: ...`.
 */
export type ReplyShape = 'line' | 'block' | 'line+block';

/** What a command got back. */
export interface ManagementReply {
  command: string;
  /** The text after `SUCCESS: `, for shapes that start with that line. */
  success: string | null;
  /** The lines before `END`, for shapes that have them. */
  lines: string[];
}

const HISTORY_COMMANDS = new Set(['state', 'log', 'echo']);
const BLOCK_COMMANDS = new Set(['status', 'help', 'remote-entry-get', 'load-stats-all']);

/** The shape of the reply to `command` (see ReplyShape). */
export function replyShapeOf(command: string): ReplyShape {
  const [verb = '', ...args] = command.trim().split(/\s+/);
  if (BLOCK_COMMANDS.has(verb)) return 'block';
  if (verb === 'version') return args.length === 0 ? 'block' : 'line';
  if (HISTORY_COMMANDS.has(verb)) {
    // `state [on|off] [N|all]`: a switch answers a line, a history a block; both: the line, then the block.
    const toggles = args.length > 0 && (args[0] === 'on' || args[0] === 'off');
    const history = toggles ? args.length > 1 : true;
    if (toggles && history) return 'line+block';
    return toggles ? 'line' : 'block';
  }
  return 'line';
}

/** The most lines one reply may have; beyond that the reply is refused (and the connection reset). */
export const MAX_REPLY_LINES = 100_000;

export type ReplyProgress = { done: false } | { done: true; reply: ManagementReply } | { done: true; error: BackhaulError };

/**
 * Collects the reply to one command from the non-notification lines that
 * follow it. Pure: the client feeds it lines and acts on the result.
 */
export class ReplyReader {
  private success: string | null = null;
  private readonly lines: string[] = [];
  private started = false;

  constructor(
    readonly command: string,
    readonly shape: ReplyShape = replyShapeOf(command),
  ) {}

  accept(line: string): ReplyProgress {
    const first = !this.started;
    this.started = true;
    if (first && line.startsWith('ERROR:')) {
      return { done: true, error: new BackhaulError('COMMAND_FAILED', `${this.command}: ${line.slice('ERROR:'.length).trim()}`, excerpt(line)) };
    }
    if (this.shape !== 'block' && first) {
      if (!line.startsWith('SUCCESS:')) return this.unexpected(line, 'SUCCESS: or ERROR:');
      this.success = line.slice('SUCCESS:'.length).trim();
      return this.shape === 'line' ? this.finish() : { done: false };
    }
    if (line === 'END') return this.finish();
    if (this.lines.length >= MAX_REPLY_LINES) return this.unexpected(line, `END within ${MAX_REPLY_LINES} lines`);
    this.lines.push(line);
    return { done: false };
  }

  private finish(): ReplyProgress {
    return { done: true, reply: { command: this.command, success: this.success, lines: this.lines } };
  }

  private unexpected(line: string, expected: string): ReplyProgress {
    return { done: true, error: new BackhaulError('UNEXPECTED_REPLY', `${this.command}: expected ${expected}, got "${excerpt(line)}"`, excerpt(line)) };
  }
}
