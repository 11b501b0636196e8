import { C1218Client, type C1218ClientOptions } from './client.js';
import { C1218Error } from './errors.js';
import type { IdentifyResponse, NegotiateResponse } from './services.js';
import type { C1218Stream } from './stream.js';

export interface C1218SessionOptions extends C1218ClientOptions {
  /** User id of the logon service (default 0). */
  userId?: number;
  /** User name of the logon service, up to 10 characters (default empty). */
  user?: string;
  /** Password of the security service; without it no security request is sent. */
  password?: string | Uint8Array;
  /** Baud rate to negotiate; without it the session stays at the initial rate. */
  baudRate?: number;
  /** Largest packet to negotiate (default 1024; the device may choose less). */
  packetSize?: number;
  /** Packets per transmission to negotiate (default 8). */
  maxPackets?: number;
}

export interface C1218SessionInfo {
  identification: IdentifyResponse;
  /** Absent when the device does not support negotiate (SNS) and the defaults stay. */
  negotiated?: NegotiateResponse;
}

/** Failures that mean nothing was heard from the device. */
const LINK_FAILURES: ReadonlySet<string> = new Set(['TIMEOUT', 'NAK_LIMIT', 'CLOSED']);

export const DEFAULT_SESSION_PACKET_SIZE = 1024;
export const DEFAULT_SESSION_MAX_PACKETS = 8;

/**
 * Runs `body` inside a full C12.18 session: identify → negotiate → logon →
 * security (if a password is given) → body → logoff → terminate. Whatever
 * fails after the device first answered, a terminate is still attempted (its
 * own failure is swallowed) so the device is not left in a session until its
 * channel traffic timeout; the original error is rethrown.
 */
export async function withC1218Session<T>(
  stream: C1218Stream,
  options: C1218SessionOptions,
  body: (client: C1218Client, session: C1218SessionInfo) => Promise<T>,
): Promise<T> {
  const client = new C1218Client(stream, options);
  let deviceAnswered = false;
  try {
    let identification: IdentifyResponse;
    try {
      identification = await client.identify();
    } catch (err) {
      // A refusal (BSY, ISSS...) or a malformed response is an answer too: the device is there to be terminated.
      deviceAnswered = err instanceof C1218Error && !LINK_FAILURES.has(err.code);
      throw err;
    }
    deviceAnswered = true;
    const session: C1218SessionInfo = { identification };
    try {
      session.negotiated = await client.negotiate({
        packetSize: options.packetSize ?? DEFAULT_SESSION_PACKET_SIZE,
        maxPackets: options.maxPackets ?? DEFAULT_SESSION_MAX_PACKETS,
        baudRate: options.baudRate,
      });
    } catch (err) {
      if (!(err instanceof C1218Error && err.code === 'SNS')) throw err;
    }
    await client.logon(options.userId ?? 0, options.user ?? '');
    if (options.password !== undefined) await client.security(options.password);
    const result = await body(client, session);
    await client.logoff();
    deviceAnswered = false;
    await client.terminate();
    return result;
  } catch (err) {
    if (deviceAnswered && !(err instanceof C1218Error && err.code === 'CLOSED')) {
      try {
        await client.terminate();
      } catch {
        // The original error is what the caller needs; the device ends the session on its own timeout.
      }
    }
    throw err;
  } finally {
    client.detach();
  }
}

export interface ReadTableOptions extends C1218SessionOptions {
  table: number;
  /** With count: a partial read by offset; without both, a full read. */
  offset?: number;
  count?: number;
}

export interface ReadTableResult extends C1218SessionInfo {
  table: number;
  data: Uint8Array;
}

/** One table (or part of one) read in a session of its own. */
export async function readTable(stream: C1218Stream, options: ReadTableOptions): Promise<ReadTableResult> {
  if ((options.offset === undefined) !== (options.count === undefined)) throw new C1218Error('BAD_ARGUMENT', 'a partial read needs both offset and count');
  return withC1218Session(stream, options, async (client, session) => {
    const data =
      options.offset !== undefined && options.count !== undefined
        ? await client.partialRead(options.table, options.offset, options.count)
        : await client.fullRead(options.table);
    return { ...session, table: options.table, data };
  });
}
