import { generate, parse, type ParsedPacket } from 'coap-packet';
import { MeshRequestError } from './errors.js';
import { Fifo } from './fifo.js';
import type { MessageOption } from './options.js';
import type { TransmissionParameters } from './parameters.js';
import { peerKey, type DatagramTransport, type PeerAddress } from './transport.js';

/** A response as received: piggybacked on an ACK, or a separate CON/NON message (also a notification). */
export interface ReceivedResponse {
  code: string;
  token: Buffer;
  options: ParsedPacket['options'];
  payload: Buffer;
  peer: PeerAddress;
}

export interface OutgoingRequest {
  code: string;
  token: Buffer;
  options: MessageOption[];
  payload?: Buffer;
}

export interface ExchangeResult {
  response: ReceivedResponse;
  /** Transmissions beyond the first. */
  retransmissions: number;
}

export interface MessageLayerCounters {
  /** Confirmable requests sent (first transmissions). */
  sent: number;
  retransmissions: number;
  /** Exchanges given up after the retransmissions or a missing separate response. */
  timeouts: number;
  /** Resets received in answer to our requests. */
  resets: number;
  /** Received messages already seen within the exchange lifetime, answered again but not processed. */
  duplicates: number;
  /** Datagrams that are not CoAP. */
  malformed: number;
  /** Responses nobody waits for (late, or for a cancelled observation): answered with Reset. */
  unexpected: number;
}

type ResponseHandler = (response: ReceivedResponse) => void;

interface AwaitingAck {
  onAck: (response: ReceivedResponse | undefined) => void;
  onReset: () => void;
}

/** A received confirmable or non-confirmable message, with the answer sent (if any). */
interface SeenMessage {
  key: string;
  at: number;
  reply: Buffer | undefined;
}

interface TokenListeners {
  peer: string;
  /** The request exchange waiting for its (separate) response: it takes precedence. */
  exchange?: ResponseHandler;
  /** A standing observation: notifications after the exchange is over. */
  observer?: ResponseHandler;
}

/** How many received message ids are remembered for duplicate detection; the oldest go first beyond it. */
const MAX_REMEMBERED_MESSAGES = 100_000;

/**
 * The message layer of the gateway's CoAP client (RFC 7252 sections 4 and 5):
 * message ids, retransmission of confirmable messages with exponential
 * backoff and randomisation, matching of ACK and Reset by message id and of
 * responses by token, acknowledgement of confirmable responses, and duplicate
 * detection of what meters send over the exchange lifetime. Congestion
 * control (how many exchanges run at once) is the scheduler's job above.
 */
export class MessageLayer {
  readonly counters: MessageLayerCounters = { sent: 0, retransmissions: 0, timeouts: 0, resets: 0, duplicates: 0, malformed: 0, unexpected: 0 };
  private readonly awaitingAck = new Map<string, AwaitingAck>();
  private readonly tokens = new Map<string, TokenListeners>();
  private readonly nextMessageId = new Map<string, number>();
  /** Received confirmable and non-confirmable messages by peer and id. */
  private readonly seen = new Map<string, SeenMessage>();
  /**
   * The same messages in arrival order, oldest first, to forget them in O(1):
   * walking the Map from its front instead costs a step per entry deleted
   * since V8 last rehashed it, tens of thousands per datagram at the cap.
   */
  private readonly seenOrder = new Fifo<SeenMessage>();
  private readonly unsubscribe: () => void;
  private readonly closing = new Set<() => void>();
  private closed = false;

  constructor(
    private readonly transport: DatagramTransport,
    private readonly parameters: TransmissionParameters,
    private readonly random: () => number = Math.random,
    private readonly now: () => number = Date.now,
  ) {
    this.unsubscribe = transport.onDatagram((datagram, peer) => this.receive(datagram, peer));
  }

  /** True while some exchange or observation uses `token`. */
  tokenInUse(token: Buffer): boolean {
    return this.tokens.has(token.toString('hex'));
  }

  /**
   * Sends one confirmable request and resolves with its response: piggybacked
   * on the ACK, or separate after an empty ACK. Rejects with
   * COMM_TIMEOUT_ERR after MAX_RETRANSMIT retransmissions without an ACK (or
   * no separate response in time), RESET when the meter resets the message,
   * ABORTED when `signal` aborts.
   */
  exchange(peer: PeerAddress, request: OutgoingRequest, signal?: AbortSignal): Promise<ExchangeResult> {
    if (this.closed) return Promise.reject(new MeshRequestError('CLOSED', 'the mesh client is closed', peer));
    const key = peerKey(peer);
    const messageId = this.allocateMessageId(key);
    let datagram: Buffer;
    try {
      datagram = generate(
        { code: request.code, confirmable: true, messageId, token: request.token, options: request.options, ...(request.payload ? { payload: request.payload } : {}) },
        // A single block is at most 1024 bytes plus options; the mesh MTU (1280) is the wire limit.
        1280,
      );
    } catch (err) {
      return Promise.reject(new MeshRequestError('BAD_REQUEST', `cannot encode the request: ${(err as Error).message}`, peer));
    }
    const ackKey = `${key}#${messageId}`;
    const tokenHex = request.token.toString('hex');
    return new Promise<ExchangeResult>((resolve, reject) => {
      let retransmissions = 0;
      let timeoutMs = this.parameters.ackTimeoutMs * (1 + this.random() * (this.parameters.ackRandomFactor - 1));
      let timer: NodeJS.Timeout | undefined;
      let done = false;
      const finish = (outcome: () => void): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.awaitingAck.delete(ackKey);
        const listeners = this.tokens.get(tokenHex);
        if (listeners?.exchange === onResponse) {
          delete listeners.exchange;
          if (!listeners.observer) this.tokens.delete(tokenHex);
        }
        signal?.removeEventListener('abort', onAbort);
        this.closing.delete(onClose);
        outcome();
      };
      const onResponse: ResponseHandler = (response) => finish(() => resolve({ response, retransmissions }));
      const onAbort = (): void => finish(() => reject(new MeshRequestError('ABORTED', 'request aborted', peer)));
      const onClose = (): void => finish(() => reject(new MeshRequestError('CLOSED', 'the mesh client closed', peer)));
      const giveUp = (why: string): void => {
        this.counters.timeouts += 1;
        finish(() => reject(new MeshRequestError('COMM_TIMEOUT_ERR', why, peer)));
      };
      const transmit = (): void => {
        this.transport.send(datagram, peer);
        timer = setTimeout(() => {
          if (retransmissions >= this.parameters.maxRetransmit) {
            giveUp(`[${peer.address}]:${peer.port} did not acknowledge after ${retransmissions + 1} transmissions (RFC 7252 retransmissions exhausted)`);
            return;
          }
          retransmissions += 1;
          this.counters.retransmissions += 1;
          timeoutMs *= 2;
          transmit();
        }, timeoutMs);
      };
      this.awaitingAck.set(ackKey, {
        onAck: (response) => {
          if (response) {
            onResponse(response);
            return;
          }
          // Empty ACK: the meter will send the response separately (section 5.2.2).
          this.awaitingAck.delete(ackKey);
          clearTimeout(timer);
          timer = setTimeout(
            () => giveUp(`[${peer.address}]:${peer.port} acknowledged but sent no response within ${this.parameters.separateResponseTimeoutMs} ms`),
            this.parameters.separateResponseTimeoutMs,
          );
        },
        onReset: () => {
          this.counters.resets += 1;
          finish(() => reject(new MeshRequestError('RESET', `[${peer.address}]:${peer.port} rejected the request with a Reset`, peer)));
        },
      });
      const listeners = this.tokens.get(tokenHex) ?? { peer: key };
      listeners.exchange = onResponse;
      this.tokens.set(tokenHex, listeners);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.closing.add(onClose);
      this.counters.sent += 1;
      transmit();
    });
  }

  /** Delivers responses for `token` from `peer` that no exchange waits for (observe notifications). */
  listen(token: Buffer, peer: PeerAddress, handler: ResponseHandler): () => void {
    const tokenHex = token.toString('hex');
    const listeners = this.tokens.get(tokenHex) ?? { peer: peerKey(peer) };
    listeners.observer = handler;
    this.tokens.set(tokenHex, listeners);
    return () => {
      const current = this.tokens.get(tokenHex);
      if (current?.observer !== handler) return;
      delete current.observer;
      if (!current.exchange) this.tokens.delete(tokenHex);
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe();
    for (const onClose of [...this.closing]) onClose();
    this.tokens.clear();
  }

  private allocateMessageId(key: string): number {
    // A random start per peer, then sequential: ids are not reused within
    // EXCHANGE_LIFETIME unless a meter is sent 65536 messages in that time.
    const id = this.nextMessageId.get(key) ?? Math.floor(this.random() * 0x10000);
    this.nextMessageId.set(key, (id + 1) & 0xffff);
    return id;
  }

  private receive(datagram: Buffer, peer: PeerAddress): void {
    let packet: ParsedPacket;
    try {
      packet = parse(datagram);
    } catch {
      this.counters.malformed += 1;
      return;
    }
    const key = peerKey(peer);
    if (packet.reset) {
      this.awaitingAck.get(`${key}#${packet.messageId}`)?.onReset();
      return;
    }
    if (packet.ack) {
      const waiting = this.awaitingAck.get(`${key}#${packet.messageId}`);
      if (!waiting) return; // A late or duplicated ACK: the exchange is over.
      waiting.onAck(packet.code === '0.00' ? undefined : this.toResponse(packet, peer));
      return;
    }
    // A confirmable or non-confirmable message from the meter.
    const seenKey = `${key}#${packet.messageId}`;
    const seen = this.seen.get(seenKey);
    if (seen && this.now() - seen.at < this.parameters.exchangeLifetimeMs) {
      this.counters.duplicates += 1;
      if (seen.reply) this.transport.send(seen.reply, peer);
      return;
    }
    const isRequest = packet.code.startsWith('0.') && packet.code !== '0.00';
    const isPing = packet.code === '0.00';
    let reply: Buffer | undefined;
    let handler: ResponseHandler | undefined;
    if (!isRequest && !isPing) {
      const listeners = this.tokens.get(packet.token.toString('hex'));
      if (listeners && listeners.peer === key) handler = listeners.exchange ?? listeners.observer;
    }
    if (handler) {
      if (packet.confirmable) reply = generate({ code: '0.00', ack: true, messageId: packet.messageId, token: Buffer.alloc(0) });
    } else {
      // A request (the client serves nothing), a CoAP ping, or a response nobody waits for: Reset (section 4.2/4.3).
      if (!isRequest && !isPing) this.counters.unexpected += 1;
      reply = generate({ code: '0.00', reset: true, messageId: packet.messageId, token: Buffer.alloc(0) });
    }
    this.remember(seenKey, reply);
    if (reply) this.transport.send(reply, peer);
    handler?.(this.toResponse(packet, peer));
  }

  private remember(key: string, reply: Buffer | undefined): void {
    const now = this.now();
    // Arrival order is expiry order, so the expired entries are at the front.
    for (let oldest = this.seenOrder.peek(); oldest; oldest = this.seenOrder.peek()) {
      if (now - oldest.at < this.parameters.exchangeLifetimeMs && this.seen.size < MAX_REMEMBERED_MESSAGES) break;
      this.seenOrder.shift();
      if (this.seen.get(oldest.key) === oldest) this.seen.delete(oldest.key);
    }
    const entry: SeenMessage = { key, at: now, reply };
    this.seen.set(key, entry);
    this.seenOrder.push(entry);
  }

  private toResponse(packet: ParsedPacket, peer: PeerAddress): ReceivedResponse {
    return { code: packet.code, token: packet.token, options: packet.options, payload: packet.payload, peer };
  }
}
