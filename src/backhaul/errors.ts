/**
 * Why something about the backhaul's OpenVPN management interface went wrong.
 * Codes are stable strings: nodes put them in `msg.error.code`, the CLI and
 * logs print them.
 */
export type BackhaulErrorCode =
  /** A management address that cannot be used (`host:port`, `[v6]:port`, `unix:/path` or a path). */
  | 'BAD_ADDRESS'
  /** A command that cannot be sent (empty, a line break in it, an unknown restart kind). */
  | 'BAD_COMMAND'
  /** A line from the management interface that does not follow the protocol. */
  | 'MALFORMED_LINE'
  /** A line longer than the parser keeps; the rest of it up to the next line break is dropped. */
  | 'LINE_TOO_LONG'
  /** A line nobody asked for: not a notification, and no command outstanding. */
  | 'UNEXPECTED_LINE'
  /** A reply that does not have the shape its command has (the connection is reset to resynchronise). */
  | 'UNEXPECTED_REPLY'
  /** OpenVPN answered `ERROR: ...`. */
  | 'COMMAND_FAILED'
  /** No reply within the command timeout (the connection is reset to resynchronise). */
  | 'TIMEOUT'
  /** No management connection at the moment (OpenVPN not running, restarting, or the socket not there yet). */
  | 'NOT_CONNECTED'
  /** The connection attempt failed (refused, no such socket, timed out). */
  | 'UNREACHABLE'
  /**
   * Connected, but OpenVPN sent no greeting in time. It serves one management
   * client at a time and keeps others waiting: usually another client holds it.
   */
  | 'NO_GREETING'
  /** OpenVPN asks for a password and none is configured. */
  | 'PASSWORD_REQUIRED'
  /** OpenVPN asked for the password again: the configured one is wrong. */
  | 'BAD_PASSWORD'
  /** The client or monitor was stopped. */
  | 'CLOSED';

export class BackhaulError extends Error {
  override readonly name = 'BackhaulError';
  constructor(
    readonly code: BackhaulErrorCode,
    message: string,
    /** The line (or the start of it) that caused a protocol error, for diagnostics. */
    readonly line?: string,
  ) {
    super(message);
  }
}

/** At most this much of an offending line goes into errors and logs. */
const LINE_EXCERPT_CHARS = 120;

export function excerpt(line: string): string {
  return line.length <= LINE_EXCERPT_CHARS ? line : `${line.slice(0, LINE_EXCERPT_CHARS)}…`;
}
