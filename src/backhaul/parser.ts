import { isIP } from 'node:net';
import { BackhaulError, excerpt } from './errors.js';

/**
 * The line layer of OpenVPN's management protocol (doc/management-notes.txt
 * in OpenVPN's sources), as a pure parser over the bytes a socket delivers.
 *
 * What OpenVPN 2.6 sends (seen on the wire, lines end with CRLF):
 * - on connect, with a password configured, `ENTER PASSWORD:` with no line
 *   break after it; then `SUCCESS: password is correct`, or the prompt again;
 * - the greeting `>INFO:OpenVPN Management Interface Version 5 -- ...`;
 * - replies: one line `SUCCESS: ...` or `ERROR: ...`, or lines ending with
 *   `END` (see reply.ts);
 * - real-time notifications `>NAME:...`, which may come between any two
 *   lines, also inside a multi-line reply.
 */

/** One record of OpenVPN's state: a `>STATE:` notification, or a line of `state` history. */
export interface OpenVpnState {
  /** When OpenVPN entered the state, in seconds since the epoch. */
  time: number;
  /** CONNECTING, WAIT, AUTH, GET_CONFIG, ASSIGN_IP, ADD_ROUTES, CONNECTED, RECONNECTING, EXITING, RESOLVE, TCP_CONNECT, AUTH_PENDING. */
  name: string;
  /** SUCCESS or ERROR for CONNECTED; the reason for RECONNECTING and EXITING (ping-restart, SIGUSR1, SIGTERM...). */
  description: string;
  /** The tunnel's local IPv4 address ('' before one is assigned). */
  localIp: string;
  /** The VPN server's address. */
  remoteIp: string;
  remotePort: number | null;
  /** The local end of the transport (TCP only, or when bound). */
  localAddress: string;
  localPort: number | null;
  /** The tunnel's local IPv6 address, when it has one. */
  localIpv6: string;
}

export type ManagementNotification =
  | { type: 'STATE'; raw: string; state: OpenVpnState }
  | { type: 'BYTECOUNT'; raw: string; bytesIn: number; bytesOut: number }
  | { type: 'FATAL'; raw: string; message: string }
  /** `>HOLD:Waiting for hold release:N`: OpenVPN waits for `hold release` (N: seconds it would wait anyway). */
  | { type: 'HOLD'; raw: string; message: string; waitSeconds: number | null }
  | { type: 'LOG'; raw: string; time: number; flags: string; message: string }
  | { type: 'INFO'; raw: string; message: string }
  /** Any other notification (PASSWORD, NEED-OK, CLIENT, BYTECOUNT_CLI, ...), passed through unparsed. */
  | { type: 'OTHER'; raw: string; name: string; body: string };

export type ManagementItem =
  | { kind: 'notification'; notification: ManagementNotification }
  /** Any other line: a reply line (SUCCESS:, ERROR:, a block line, END). */
  | { kind: 'line'; text: string }
  | { kind: 'password-prompt' }
  | { kind: 'malformed'; error: BackhaulError };

export const PASSWORD_PROMPT = 'ENTER PASSWORD:';
const PROMPT_BYTES = Buffer.from(PASSWORD_PROMPT, 'latin1');
const NEWLINE = 0x0a;
/** Management lines are short; the longest (>CLIENT:ENV, certificates) stay well below this. */
export const DEFAULT_MAX_LINE_BYTES = 64 * 1024;
/** Control characters other than tab: never in a management line, and not to be echoed into logs or terminals. */
const CONTROL_CHARACTERS = /[\u0000-\u0008\u000a-\u001f\u007f]/;
const NOTIFICATION = /^>([A-Z][A-Z0-9_-]*):(.*)$/s;
const STATE_NAME = /^[A-Z][A-Z_]*$/;
const DIGITS = /^\d+$/;

function malformed(message: string, line: string): BackhaulError {
  return new BackhaulError('MALFORMED_LINE', message, excerpt(line));
}

function wholeNumber(text: string, what: string, line: string): number {
  const value = Number(text);
  if (!DIGITS.test(text) || !Number.isSafeInteger(value)) throw malformed(`${what} is not a whole number: "${excerpt(text)}"`, line);
  return value;
}

function port(text: string | undefined, what: string, line: string): number | null {
  if (text === undefined || text === '') return null;
  const value = wholeNumber(text, what, line);
  if (value < 1 || value > 65535) throw malformed(`${what} ${value} is not between 1 and 65535`, line);
  return value;
}

function address(text: string | undefined, what: string, line: string, family?: 4 | 6): string {
  if (text === undefined || text === '') return '';
  const found = isIP(text);
  if (found === 0 || (family !== undefined && found !== family)) throw malformed(`${what} "${excerpt(text)}" is not an IP${family ? `v${family}` : ''} address`, line);
  return text;
}

/**
 * The fields of a state record, `time,name,description,localIp,remoteIp,
 * remotePort,localAddress,localPort,localIpv6` (the trailing ones may be
 * missing; fields beyond these, from a later OpenVPN, are ignored). Throws a
 * BackhaulError (MALFORMED_LINE).
 */
export function parseStateFields(body: string, line = body): OpenVpnState {
  const fields = body.split(',');
  if (fields.length < 2) throw malformed('a state record needs at least a time and a state name', line);
  const [time = '', name = '', description = '', localIp, remoteIp, remotePort, localAddress, localPort, localIpv6] = fields;
  if (!STATE_NAME.test(name)) throw malformed(`"${excerpt(name)}" is not a state name`, line);
  return {
    time: wholeNumber(time, 'the state time', line),
    name,
    description,
    localIp: address(localIp, 'the tunnel address', line, 4),
    remoteIp: address(remoteIp, 'the remote address', line),
    remotePort: port(remotePort, 'the remote port', line),
    localAddress: address(localAddress, 'the local address', line),
    localPort: port(localPort, 'the local port', line),
    localIpv6: address(localIpv6, 'the tunnel IPv6 address', line, 6),
  };
}

/** Parses one `>NAME:...` line. Throws a BackhaulError (MALFORMED_LINE). */
export function parseNotification(line: string): ManagementNotification {
  const match = NOTIFICATION.exec(line);
  if (!match) throw malformed('a line starting with ">" is not a notification (>NAME:...)', line);
  const name = match[1] ?? '';
  const body = match[2] ?? '';
  switch (name) {
    case 'STATE':
      return { type: 'STATE', raw: line, state: parseStateFields(body, line) };
    case 'BYTECOUNT': {
      const counts = /^(\d+),(\d+)$/.exec(body);
      if (!counts) throw malformed('BYTECOUNT needs two byte counts, "in,out"', line);
      return { type: 'BYTECOUNT', raw: line, bytesIn: wholeNumber(counts[1] ?? '', 'bytes in', line), bytesOut: wholeNumber(counts[2] ?? '', 'bytes out', line) };
    }
    case 'FATAL':
      return { type: 'FATAL', raw: line, message: body };
    case 'HOLD': {
      const wait = /:(\d+)$/.exec(body);
      return { type: 'HOLD', raw: line, message: body, waitSeconds: wait ? wholeNumber(wait[1] ?? '', 'the hold time', line) : null };
    }
    case 'LOG': {
      // The message may itself contain commas: only the first two separate fields.
      const log = /^(\d+),([A-Z]*),(.*)$/s.exec(body);
      if (!log) throw malformed('LOG needs "time,flags,message"', line);
      return { type: 'LOG', raw: line, time: wholeNumber(log[1] ?? '', 'the log time', line), flags: log[2] ?? '', message: log[3] ?? '' };
    }
    case 'INFO':
      return { type: 'INFO', raw: line, message: body };
    default:
      return { type: 'OTHER', raw: line, name, body };
  }
}

/**
 * Splits the byte stream into lines (LF or CRLF; a line may be split across
 * any number of chunks, also inside a UTF-8 sequence) and classifies each.
 * Never throws: whatever is wrong with a line becomes a `malformed` item with
 * a typed error, and parsing goes on with the next line. Empty lines carry
 * nothing and are skipped.
 */
export class ManagementParser {
  private buffer: Buffer = Buffer.alloc(0);
  /** After an overlong line: drop bytes until its line break. */
  private discarding = false;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });
  /** Lines that were malformed or too long, since construction. */
  malformedLines = 0;

  constructor(private readonly maxLineBytes = DEFAULT_MAX_LINE_BYTES) {}

  push(chunk: Buffer | string): ManagementItem[] {
    const items: ManagementItem[] = [];
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    this.buffer = this.buffer.length === 0 ? bytes : Buffer.concat([this.buffer, bytes]);
    for (;;) {
      if (!this.discarding && this.buffer.length > 0) {
        // The prompt has no line break after it: recognise it at the start of a line as soon as it is complete.
        const compared = Math.min(this.buffer.length, PROMPT_BYTES.length);
        if (this.buffer.subarray(0, compared).equals(PROMPT_BYTES.subarray(0, compared))) {
          if (compared < PROMPT_BYTES.length) break;
          items.push({ kind: 'password-prompt' });
          this.buffer = this.buffer.subarray(PROMPT_BYTES.length);
          continue;
        }
      }
      const end = this.buffer.indexOf(NEWLINE);
      if (end < 0) {
        if (this.discarding) this.buffer = Buffer.alloc(0);
        else if (this.buffer.length > this.maxLineBytes) {
          items.push(this.tooLong(this.buffer));
          this.buffer = Buffer.alloc(0);
          this.discarding = true;
        }
        break;
      }
      const line = this.buffer.subarray(0, end);
      this.buffer = this.buffer.subarray(end + 1);
      if (this.discarding) {
        this.discarding = false;
        continue;
      }
      const item = line.length > this.maxLineBytes ? this.tooLong(line) : this.classify(line);
      if (item) items.push(item);
    }
    // Keep a copy of the unfinished line, not a view that pins the whole chunk.
    if (this.buffer.length > 0 && this.buffer.buffer === bytes.buffer) this.buffer = Buffer.from(this.buffer);
    return items;
  }

  /** Forgets an unfinished line (the connection closed). */
  reset(): void {
    this.buffer = Buffer.alloc(0);
    this.discarding = false;
  }

  private tooLong(start: Buffer): ManagementItem {
    this.malformedLines += 1;
    const error = new BackhaulError(
      'LINE_TOO_LONG',
      `a line longer than ${this.maxLineBytes} bytes was dropped`,
      excerpt(start.subarray(0, 256).toString('latin1')),
    );
    return { kind: 'malformed', error };
  }

  private classify(bytes: Buffer): ManagementItem | undefined {
    const withoutCr = bytes.length > 0 && bytes[bytes.length - 1] === 0x0d ? bytes.subarray(0, bytes.length - 1) : bytes;
    let line: string;
    try {
      line = this.decoder.decode(withoutCr);
    } catch {
      this.malformedLines += 1;
      return { kind: 'malformed', error: malformed('the line is not UTF-8', withoutCr.toString('latin1')) };
    }
    if (line === '') return undefined;
    if (CONTROL_CHARACTERS.test(line)) {
      this.malformedLines += 1;
      return { kind: 'malformed', error: malformed('the line contains control characters', JSON.stringify(line)) };
    }
    if (!line.startsWith('>')) return { kind: 'line', text: line };
    try {
      return { kind: 'notification', notification: parseNotification(line) };
    } catch (err) {
      this.malformedLines += 1;
      return { kind: 'malformed', error: err as BackhaulError };
    }
  }
}
