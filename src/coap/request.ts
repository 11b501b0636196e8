import * as coap from 'coap';
import type { Agent, IncomingMessage } from 'coap';
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { parseCoapUrl } from './url.js';
import { uintOption } from './options.js';

export interface CoapResponse {
  code: string;
  payload: Buffer;
  /** Max-Age option in seconds, when the peer sent one. */
  maxAge: number | undefined;
}

/** Block size exponent 6: 2^(4+6) = 1024 bytes, the largest RFC 7959 allows. */
const BLOCK_SZX = 6;
export const BLOCK_BYTES = 1024;

export class CoapRequestError extends Error {
  override readonly name = 'CoapRequestError';
  constructor(
    readonly code: 'TIMEOUT' | 'NETWORK' | 'ABORTED',
    message: string,
  ) {
    super(message);
  }
}

export interface CoapCallOptions {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  payload?: Uint8Array;
  contentFormat?: number;
  accept?: number;
  /** Overall deadline; CoAP's own retransmission runs inside it. */
  timeoutMs: number;
  agent?: Agent;
  /** Aborting stops retransmissions and rejects with code ABORTED. */
  signal?: AbortSignal;
  /** Resolves a host name (DNS by default); used when the URL names a host rather than an address. */
  lookup?: (host: string) => Promise<{ address: string }>;
}

const defaultLookup = (host: string): Promise<{ address: string }> => dnsLookup(host);

/**
 * One confirmable CoAP request, as a promise. Resolves with whatever response
 * code arrives (the caller decides what a 4.xx or 5.xx means) and rejects only
 * on timeout or a socket failure.
 */
export async function coapCall(url: string, options: CoapCallOptions): Promise<CoapResponse> {
  const target = parseCoapUrl(url);
  if (isIP(target.host) === 0 && !options.agent) {
    // A UDP socket only sends to its own address family: resolve the name
    // first, so a HES with only an AAAA record is reached over IPv6.
    try {
      target.host = (await (options.lookup ?? defaultLookup)(target.host)).address;
    } catch (err) {
      throw new CoapRequestError('NETWORK', `${url}: cannot resolve ${target.host}: ${(err as Error).message}`);
    }
  }
  return new Promise<CoapResponse>((resolve, reject) => {
    let finished = false;
    const finish = (action: () => void): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      action();
    };
    const onAbort = (): void => {
      finish(() => reject(new CoapRequestError('ABORTED', `request to ${url} aborted`)));
      agent.abort(req);
    };
    const agent = options.agent ?? (isIP(target.host) === 6 ? coap.globalAgentIPv6 : coap.globalAgent);
    const req = coap.request({
      hostname: target.host,
      port: target.port,
      pathname: target.pathname,
      ...(target.query !== '' ? { query: target.query } : {}),
      method: options.method,
      confirmable: true,
      agent,
    });
    if (options.contentFormat !== undefined) req.setOption('Content-Format', options.contentFormat);
    if (options.payload !== undefined && options.payload.length > BLOCK_BYTES) {
      // RFC 7959 Block1: payloads larger than one block go in 1024-byte blocks.
      req.setOption('Block1', Buffer.of(BLOCK_SZX));
    }
    if (options.accept !== undefined) req.setOption('Accept', options.accept);
    const timer = setTimeout(() => {
      finish(() => reject(new CoapRequestError('TIMEOUT', `no response from ${url} within ${options.timeoutMs} ms`)));
      // Stop the library retransmitting a request nobody waits for any more.
      agent.abort(req);
    }, options.timeoutMs);
    if (options.signal?.aborted) {
      onAbort();
      return;
    }
    options.signal?.addEventListener('abort', onAbort);
    req.on('response', (res: IncomingMessage) => {
      const maxAge = uintOption(res, 'Max-Age');
      finish(() => resolve({ code: res.code, payload: res.payload, maxAge }));
    });
    req.on('timeout', () =>
      finish(() => reject(new CoapRequestError('TIMEOUT', `${url} did not acknowledge (CoAP retransmissions exhausted)`))),
    );
    req.on('error', (err: Error) => finish(() => reject(new CoapRequestError('NETWORK', `${url}: ${err.message}`))));
    req.end(options.payload === undefined ? undefined : Buffer.from(options.payload));
  });
}

/**
 * Closes a coap Agent, aborting what it still has in flight. The library calls
 * close()'s callback only if the agent still has a socket (it drops its socket
 * whenever it goes idle), so wait for its 'close' event instead, or for nothing.
 */
export function closeAgent(agent: Agent): Promise<void> {
  const socket = (agent as unknown as { _sock?: unknown })._sock;
  if (socket === null || socket === undefined) {
    agent.close();
    return Promise.resolve();
  }
  return new Promise<void>((resolve) => {
    agent.once('close', () => resolve());
    agent.close();
  });
}
