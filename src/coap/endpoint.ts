import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, OutgoingMessage, Server } from 'coap';
import { uintOption } from './options.js';
import { closeQuietly, createCoapServer, listenCoapServer } from './server.js';
import { decodeReading, readingKey, ReadingFormatError, type MeterReading } from './reading.js';
import { forgetExchange, registerExchange, type ExchangeOutcome } from './exchanges.js';

/**
 * The gateway's mesh-facing CoAP endpoint.
 *
 * Acknowledgement contract: a meter's `POST /readings` is answered 2.04 only
 * after a listener has accepted the reading (for now: the HES confirmed it;
 * with the durable outbox: it is on disk). If nobody accepts it within
 * `acceptTimeoutMs`, or a listener rejects it, the meter gets 5.03 Service
 * Unavailable with Max-Age, so it keeps the reading and retries later. The
 * answer is held back as a piggybacked ACK, so the meter's acknowledgement
 * and the gateway's acceptance are the same event; when acceptance takes
 * longer than the piggyback window, the meter gets an empty ACK first and the
 * answer as a separate confirmable response.
 */
export interface MeshEndpointOptions {
  bind: string;
  port: number;
  /** How long a reading may wait for acceptance before the meter is told to retry. */
  acceptTimeoutMs: number;
  /** Max-Age sent with 5.03: the meter waits at least this long before retrying. */
  retryAfterSeconds: number;
}

/** Longer than the HES uplink needs to try both sites (2 x 5 s): acceptance waits for the HES. */
export const DEFAULT_ACCEPT_TIMEOUT_MS = 15_000;
export const DEFAULT_RETRY_AFTER_SECONDS = 30;
export const READINGS_PATH = '/readings';

export interface Uplink {
  exchangeId: string;
  reading: MeterReading;
  peer: { address: string; port: number };
}

export type UplinkListener = (uplink: Uplink) => void;

/** Why a request was refused, as counted and logged. */
export type MeshRejectReason = ReadingFormatError['code'] | 'NOT_FOUND' | 'METHOD_NOT_ALLOWED';

export interface MeshEndpointEvents {
  listening: [address: { address: string; port: number }];
  received: [uplink: Uplink];
  accepted: [uplink: Uplink];
  deferred: [uplink: Uplink | undefined, reason: string];
  rejected: [reason: MeshRejectReason, message: string, peer: { address: string; port: number }];
  error: [err: Error];
}

interface PendingReading {
  uplink: Uplink;
  responses: OutgoingMessage[];
  timer: NodeJS.Timeout;
}

/**
 * How long the answer to a meter is held back so that it can ride on the ACK.
 * It stays well below ACK_TIMEOUT (2 s, RFC 7252 section 4.8): a meter that
 * hears nothing for that long retransmits. Acceptance that takes longer gets
 * an empty ACK at once and a separate response later (section 5.2.2).
 */
export function piggybackWindowMs(acceptTimeoutMs: number): number {
  return Math.min(acceptTimeoutMs, 1000);
}


export class MeshEndpoint extends EventEmitter<MeshEndpointEvents> {
  private server: Server | undefined;
  private readonly uplinkListeners = new Set<UplinkListener>();
  /** Readings waiting for acceptance, by meter and reading id, so a repeat joins the first. */
  private readonly pending = new Map<string, PendingReading>();
  private boundPort: number | undefined;
  private starting: Promise<void> | undefined;
  private stopped = false;

  constructor(readonly options: MeshEndpointOptions) {
    super();
  }

  get port(): number | undefined {
    return this.boundPort;
  }

  /** Adds a consumer of readings; returns the function that removes it. */
  onUplink(listener: UplinkListener): () => void {
    this.uplinkListeners.add(listener);
    return () => this.uplinkListeners.delete(listener);
  }

  /** Opens the UDP socket. Rejects (EADDRINUSE, EINVAL, ...) without leaving anything open. */
  start(): Promise<void> {
    this.starting ??= this.open().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  private async open(): Promise<void> {
    if (this.server) return;
    this.stopped = false;
    const server = createCoapServer(this.options.bind, { piggybackReplyMs: piggybackWindowMs(this.options.acceptTimeoutMs) });
    server.on('request', (req: IncomingMessage, res: OutgoingMessage) => this.handle(req, res));
    const port = await listenCoapServer(server, this.options.port, this.options.bind);
    if (this.stopped) {
      // stop() was called while the socket was opening.
      closeQuietly(server);
      return;
    }
    // Forwarded only once listening: a bind failure is start()'s rejection, not an event.
    server.on('error', (err: Error) => this.emit('error', err));
    this.server = server;
    this.boundPort = port;
    this.emit('listening', { address: this.options.bind, port: this.boundPort });
  }

  /** Tells every waiting meter to retry later (5.03), then closes the socket. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.starting) await this.starting.catch(() => undefined);
    const server = this.server;
    this.server = undefined;
    for (const entry of [...this.pending.values()]) {
      this.settle(entry, { accepted: false, reason: 'gateway shutting down' });
    }
    if (!server) return;
    // Let the 5.03 answers leave the socket before it closes.
    await new Promise<void>((resolve) => setImmediate(resolve));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private handle(req: IncomingMessage, res: OutgoingMessage): void {
    const peer = { address: req.rsinfo.address, port: req.rsinfo.port };
    const path = req.url.split('?')[0];
    if (path !== READINGS_PATH) {
      this.refuse(res, '4.04', 'NOT_FOUND', `no resource ${path}`, peer);
      return;
    }
    if (req.method !== 'POST') {
      this.refuse(res, '4.05', 'METHOD_NOT_ALLOWED', `${req.method} not allowed on ${READINGS_PATH}`, peer);
      return;
    }
    let reading: MeterReading;
    try {
      reading = decodeReading(req.payload, uintOption(req, 'Content-Format'));
    } catch (err) {
      if (!(err instanceof ReadingFormatError)) throw err;
      const code = err.code === 'UNSUPPORTED_FORMAT' ? '4.15' : err.code === 'TOO_LARGE' ? '4.13' : '4.00';
      this.refuse(res, code, err.code, err.message, peer);
      return;
    }
    const key = `${reading.meter}\u0000${reading.id}`;
    const inFlight = this.pending.get(key);
    if (inFlight) {
      inFlight.responses.push(res);
      return;
    }
    if (this.uplinkListeners.size === 0) {
      this.defer(res, undefined, 'no flow consumes readings');
      return;
    }
    const uplink: Uplink = { exchangeId: randomUUID(), reading, peer };
    const entry: PendingReading = {
      uplink,
      responses: [res],
      timer: setTimeout(
        () => this.settle(entry, { accepted: false, reason: `not accepted within ${this.options.acceptTimeoutMs} ms` }),
        this.options.acceptTimeoutMs,
      ),
    };
    this.pending.set(key, entry);
    registerExchange(uplink.exchangeId, readingKey(reading.meter, reading.id), (outcome) => this.settle(entry, outcome));
    this.emit('received', uplink);
    for (const listener of this.uplinkListeners) {
      try {
        listener(uplink);
      } catch (err) {
        this.emit('error', err as Error);
      }
    }
  }

  private settle(entry: PendingReading, outcome: ExchangeOutcome): void {
    const key = `${entry.uplink.reading.meter}\u0000${entry.uplink.reading.id}`;
    if (this.pending.get(key) !== entry) return;
    this.pending.delete(key);
    clearTimeout(entry.timer);
    // Forgetting the exchange makes a late acceptance after a timeout a no-op.
    forgetExchange(entry.uplink.exchangeId);
    if (outcome.accepted) {
      for (const res of entry.responses) {
        res.code = '2.04';
        res.end();
      }
      this.emit('accepted', entry.uplink);
    } else {
      for (const res of entry.responses) this.defer(res, entry.uplink, outcome.reason);
    }
  }

  private defer(res: OutgoingMessage, uplink: Uplink | undefined, reason: string): void {
    res.code = '5.03';
    res.setOption('Max-Age', this.options.retryAfterSeconds);
    res.setOption('Content-Format', 'text/plain');
    res.end(reason);
    this.emit('deferred', uplink, reason);
  }

  private refuse(
    res: OutgoingMessage,
    code: string,
    reason: MeshRejectReason,
    message: string,
    peer: { address: string; port: number },
  ): void {
    res.code = code;
    res.setOption('Content-Format', 'text/plain');
    // The diagnostic payload helps a field engineer with a CoAP client see what was wrong.
    res.end(message.slice(0, 200));
    this.emit('rejected', reason, message, peer);
  }
}
