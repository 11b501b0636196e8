import type { Socket } from 'node:dgram';
import { isIPv4, isIPv6 } from 'node:net';
import * as coap from 'coap';
import { generate } from 'coap-packet';
import type { CoapServerOptions, Server } from 'coap';

/**
 * A coap Server on the socket family of `bind`, which does not share its port:
 * the library's default (reuseAddr) lets another process bind the same port
 * and silently take part of the traffic.
 */
export function createCoapServer(
  bind: string,
  options: Omit<CoapServerOptions, 'type' | 'reuseAddr'> = {},
  hooks: CoapServerHooks = {},
): Server {
  const server = coap.createServer({ ...options, type: isIPv4(bind) ? 'udp4' : 'udp6', reuseAddr: false });
  answerErrorsToSender(server, hooks.onRequestFailure);
  releaseAnsweredExchanges(server, hooks.copiesAnsweredInFront === true);
  return server;
}

export interface CoapServerHooks {
  /** Hears of each request the library failed on (see answerErrorsToSender). */
  onRequestFailure?: (peer: { address: string; port: number }) => void;
  /**
   * The caller answers copies of requests itself, before the library sees
   * them (MessageDeduplicator): the library then keeps no answer it will not
   * retransmit. Without this, its cache is what answers a retransmitted request.
   */
  copiesAnsweredInFront?: boolean;
}

/** What the library hangs on a cached answer: the sender that transmitted it. */
interface CachedAnswerSender {
  _timer?: NodeJS.Timeout;
  _bOffTimer?: NodeJS.Timeout;
  removeAllListeners(): void;
}

/**
 * The library keeps each answer in its LRU for the exchange lifetime (so a
 * retransmitted request is answered again) together with the sender object
 * that transmitted it. For an answer that is never retransmitted (a
 * piggybacked ACK, a reset, a non-confirmable response) that sender still
 * arms a 202 s timer whose only effect is an event nobody listens to, and
 * its listeners hold the whole request and response: about 7 KiB per
 * exchange, 90 MB after a reconnect storm of 10,000 meters.
 *
 * Once such an answer is sent, its timer and listeners go. Where copies are
 * answered in front of the library (`dropAnswers`), the whole entry goes:
 * even stripped, the sender, its emptied listener table, its timer object and
 * the answer's buffer are some 700 bytes an exchange that only the library's
 * own duplicate handling would read. Confirmable separate responses keep
 * theirs either way: the sender retransmits them until the ACK, which the
 * library finds through this entry.
 */
function releaseAnsweredExchanges(server: Server, dropAnswers: boolean): void {
  const cache = server._lru as unknown as { set(key: string, value: unknown): unknown; peek(key: string): unknown; delete(key: string): unknown };
  const set = cache.set.bind(cache);
  cache.set = (key, value) => {
    const result = set(key, value);
    // The library attaches the sender and sends right after caching, in the same turn.
    queueMicrotask(() => {
      const sender = (value as { sender?: CachedAnswerSender }).sender;
      if (!sender || sender._bOffTimer !== undefined) return;
      if (dropAnswers) {
        // Only this answer: another sent in the same turn may have taken its key. The cache's dispose
        // resets the sender (both timers).
        if (cache.peek(key) === value) cache.delete(key);
        return;
      }
      clearTimeout(sender._timer);
      sender.removeAllListeners();
    });
    return result;
  };
}

/**
 * The library answers a request it failed on (a parse error, a bad Block1
 * option, a listener that threw) with 5.00 sent to the port the request came
 * from but at no address, which the socket turns into the loopback address:
 * a remote peer could make the gateway send datagrams to any local UDP
 * service. This replacement answers the sender itself, as an ACK when the
 * request was confirmable (so it ends the sender's retransmissions), without
 * the error's text (it may describe the gateway's internals), and not at all
 * when the library has no parsed request to answer: such an answer would
 * carry neither the request's message id nor its token, and no client could
 * match it. `onFailure` hears of each such request.
 */
function answerErrorsToSender(server: Server, onFailure?: (peer: { address: string; port: number }) => void): void {
  server._sendError = (_payload, rsinfo, packet, code = '5.00') => {
    onFailure?.({ address: rsinfo.address, port: rsinfo.port });
    const socket = serverSocket(server);
    if (!packet || packet.messageId === undefined || !socket) return;
    socket.send(errorAnswer(code, packet.messageId, packet.token, packet.confirmable === true), rsinfo.port, rsinfo.address);
  };
}

/** A header-only CoAP answer (no options, no payload): ACK to a CON request, NON otherwise. */
function errorAnswer(code: string, messageId: number, token: Buffer | undefined, ack: boolean): Buffer {
  return generate({ code, ack, messageId, token: token && token.length <= 8 ? token : Buffer.alloc(0) });
}

/** coap's Server keeps its socket private; every reach for it goes through here. */
function serverSocket(server: Server): Socket | undefined {
  const socket = (server as unknown as { _sock?: unknown })._sock;
  return socket && typeof (socket as Socket).send === 'function' && typeof (socket as Socket).address === 'function' ? (socket as Socket) : undefined;
}

/**
 * Forgets the answer the library cached for a request (its LRU key: the
 * default client identifier "address:port", "/", message id, token in hex),
 * so that a new request reusing the message id and token of an old one is
 * processed instead of being answered from the old exchange.
 */
export function forgetCachedAnswer(server: Server, address: string, port: number, messageId: number, token: Buffer): void {
  server._lru.delete(`${address}:${port}/${messageId}${token.toString('hex')}`);
}

/** An outgoing datagram, as the library hands it to the socket. */
export type OutgoingObserver = (datagram: Buffer, address: string, port: number) => void;

/**
 * Shows `observe` every datagram the listening server sends (answers, empty
 * ACKs, separate responses, retransmissions) and returns a function that
 * sends a datagram past the observer. Must be called after listen().
 */
export function observeOutgoing(server: Server, observe: OutgoingObserver): ((datagram: Buffer, port: number, address: string) => void) | undefined {
  const socket = serverSocket(server);
  if (!socket) return undefined;
  const send = socket.send.bind(socket);
  // The library calls both send(msg, offset, length, port, address, cb) and send(msg, port, address, cb).
  const observed = (...args: unknown[]): void => {
    const [message, second, third, fourth, fifth] = args;
    if (Buffer.isBuffer(message)) {
      if (typeof second === 'number' && typeof third === 'number' && typeof fourth === 'number') {
        if (typeof fifth === 'string') observe(message.subarray(second, second + third), fifth, fourth);
      } else if (typeof second === 'number' && typeof third === 'string') {
        observe(message, third, second);
      }
    }
    sendWhileOpen(send, args);
  };
  socket.send = observed as Socket['send'];
  return (datagram, port, address) => sendWhileOpen(send, [datagram, port, address]);
}

/**
 * The library's timers (the piggyback window's empty ACK, retransmissions of
 * separate responses) may fire after the socket closed; dgram throws
 * ERR_SOCKET_DGRAM_NOT_RUNNING from a timer then, which would take the whole
 * process down. A datagram for a closed socket has nowhere to go: drop it.
 */
function sendWhileOpen(send: Socket['send'], args: unknown[]): void {
  try {
    (send as (...sendArgs: unknown[]) => void)(...args);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_SOCKET_DGRAM_NOT_RUNNING') throw err;
  }
}

/**
 * Listens on `bind`:`port` (or on `socket`, already open) and resolves with the bound port (the one the
 * system chose when `port` is 0). On failure (EADDRINUSE, EINVAL, ...) the
 * server is closed and the error rejected; nothing is left open.
 */
export async function listenCoapServer(server: Server, port: number, bind: string, socket?: Socket): Promise<number> {
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = (err?: Error): void => {
        server.off('error', reject);
        if (err) reject(err);
        else resolve();
      };
      // The library listens on any EventEmitter it is given (the radio transport's socket).
      if (socket) server.listen(socket, done);
      else server.listen(port, bind, done);
    });
  } catch (err) {
    closeQuietly(server);
    throw err;
  }
  // Its socket's address tells the port when 0 was asked for.
  return serverSocket(server)?.address().port ?? port;
}

export function closeQuietly(server: Server): void {
  try {
    server.close();
  } catch {
    // The socket never opened; there is nothing more to release.
  }
}

/**
 * Asks for a larger receive buffer on the server's socket and returns what
 * the kernel granted. The default (about 208 KiB on Linux) drops datagrams
 * when a few hundred meters send at once; Linux caps the request at
 * net.core.rmem_max (and reports twice what it keeps, for its bookkeeping).
 */
export function sizeReceiveBuffer(server: Server, bytes: number): number | undefined {
  const socket = serverSocket(server);
  if (!socket) return undefined;
  try {
    socket.setRecvBufferSize(bytes);
  } catch {
    // EPERM or EINVAL: keep whatever the socket has.
  }
  try {
    return socket.getRecvBufferSize();
  } catch {
    return undefined;
  }
}

/**
 * What an operator should read when the socket cannot be opened, for the
 * errors whose code alone does not say what to do.
 */
export function explainListenError(err: NodeJS.ErrnoException, bind: string): string {
  const where = isIPv6(bind) ? `[${bind}]` : bind;
  switch (err.code) {
    case 'EAFNOSUPPORT':
      return `IPv6 is not available on this system (the kernel has it disabled): bind to an IPv4 address such as 0.0.0.0 instead of ${where}`;
    case 'EADDRNOTAVAIL':
      return isIPv6(bind)
        ? `${where} is not an address of this host, or IPv6 is disabled on its interfaces (net.ipv6.conf.*.disable_ipv6): assign the address, bind to :: or, without IPv6, to 0.0.0.0`
        : `${where} is not an address of this host: assign it to an interface or bind to 0.0.0.0`;
    case 'EADDRINUSE':
      return 'the port is already in use by another process';
    case 'EACCES':
      return 'not permitted (ports below 1024 need CAP_NET_BIND_SERVICE)';
    default:
      return err.message;
  }
}
