import { EventEmitter } from 'node:events';
import { createHash, randomUUID } from 'node:crypto';
import type { Socket } from 'node:dgram';
import type { AddressInfo } from 'node:net';
import type { IncomingMessage, OutgoingMessage, Server } from 'coap';
import { uintOption } from './options.js';
import { closeQuietly, createCoapServer, forgetCachedAnswer, listenCoapServer, observeOutgoing, sizeReceiveBuffer } from './server.js';
import { decodeReading, readingKey, ReadingFormatError, type MeterReading } from './reading.js';
import { forgetExchange, registerExchange, type ExchangeOutcome } from './exchanges.js';
import { datagramHeader, inspectDatagram, resetMessage, type MalformedReason } from './datagram.js';
import { MessageDeduplicator, type DeduplicatorOptions } from './deduplicator.js';
import { Block1Assembler } from './block1.js';
import type { CoapPacket } from 'coap';

const CONTENT_FORMAT_OCTET_STREAM = 42;

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
 *
 * Every datagram passes a screen before the coap library sees it: the
 * allowlist of mesh prefixes, a strict check of its CoAP framing (malformed
 * ones are counted and dropped; a confirmable one gets a Reset), "registered
 * meters only" when configured, and duplicate detection over the exchange
 * lifetime (RFC 7252 section 4.5), so that a retransmitted request is
 * processed once and every copy gets the first one's acknowledgement.
 */
export interface MeshEndpointOptions {
  bind: string;
  port: number;
  /**
   * Another datagram transport than a UDP socket: the 6LoWPAN radio's
   * (src/mesh/lowpan-transport.ts). Called at each start; the endpoint closes
   * what it returns at stop. `bind` then only names the address family.
   */
  socket?: () => Socket;
  /** How long a reading may wait for acceptance before the meter is told to retry. */
  acceptTimeoutMs: number;
  /** Max-Age sent with 5.03: the meter waits at least this long before retrying. */
  retryAfterSeconds: number;
  /** Sources allowed to reach the endpoint; others are dropped unanswered. Everyone when absent. */
  allowSource?: (address: string) => boolean;
  /** Socket receive buffer to ask for (default RECEIVE_BUFFER_BYTES). */
  receiveBufferBytes?: number;
  /**
   * "Registered meters only": with this, requests from a source it refuses
   * are dropped unanswered unless they go to the resource directory (or to
   * /.well-known, where it is discovered), so that a meter can still join.
   */
  isRegisteredSource?: (address: string) => boolean;
  /** Lifetimes and caps of duplicate detection; RFC 7252's defaults otherwise (tests shorten them). */
  deduplication?: DeduplicatorOptions;
}

/**
 * First Uri-Path segments a source that has not registered may reach under
 * "registered meters only": the resource directory (RFC 9176) and its
 * discovery. Everything else needs a registration from the same IP.
 */
const OPEN_TO_UNREGISTERED = new Set(['rd', '.well-known']);

/** Enough for a burst of a few thousand uplinks of a few hundred bytes each. */
export const RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024;

/** Longer than the HES uplink needs to try both sites (2 x 5 s): acceptance waits for the HES. */
export const DEFAULT_ACCEPT_TIMEOUT_MS = 15_000;
export const DEFAULT_RETRY_AFTER_SECONDS = 30;
export const READINGS_PATH = '/readings';
/**
 * DLMS/COSEM frames from meters: the payload is one xDLMS APDU (usually
 * ciphered), optionally inside the DLMS/COSEM UDP wrapper; `?ep=NAME` names
 * the meter when the frame does not carry its system title.
 */
export const DLMS_PATH = '/dlms';
/** Larger than any APDU a meter pushes (the DLMS max PDU size is at most 65535; meters use 1-2 KiB). */
export const MAX_DLMS_FRAME_BYTES = 4096;

export interface Uplink {
  exchangeId: string;
  reading: MeterReading;
  peer: { address: string; port: number };
}

/** A DLMS frame as received: nothing is decrypted or trusted yet. */
export interface DlmsUplink {
  exchangeId: string;
  frame: Buffer;
  /** The meter's endpoint name from `?ep=`, if it gave one. */
  meter?: string;
  /** The exchange key the frame was registered under: see dlmsFrameKey. */
  frameKey: string;
  peer: { address: string; port: number };
}

/** A further resource served on the mesh endpoint (the resource directory, later others). */
export interface MeshResource {
  matches(path: string): boolean;
  /**
   * Must answer `res`; a throw is reported as an 'error' event and answered 5.00.
   * `block2` is the request's Block2 option for a resource that cuts its own blocks.
   */
  handle(req: IncomingMessage, res: OutgoingMessage, path: string, query: string, block2?: Buffer): void;
  /**
   * True for the paths whose Block2 requests the resource answers itself,
   * one block per answer with its own Block2 and ETag options. The endpoint
   * then keeps the request's Block2 option from the coap library, which
   * would otherwise cut the answer itself, replace the ETag with a 2-byte
   * digest and cache the whole body for every block's token.
   */
  ownBlock2?(path: string): boolean;
}

export type UplinkListener = (uplink: Uplink) => void;
export type DlmsUplinkListener = (uplink: DlmsUplink) => void;
export type AnyUplink = Uplink | DlmsUplink;

/**
 * The exchange key of a DLMS frame before it is decrypted: a digest of its
 * bytes, so a retransmission joins the first and the node that authenticates
 * the frame can re-key the exchange to the record key (system title and
 * invocation counter) only for the very bytes it checked.
 */
export function dlmsFrameKey(frame: Uint8Array): string {
  return `frame/${createHash('sha256').update(frame).digest('hex').slice(0, 32)}`;
}

/** Why a request was refused, as counted and logged. */
export type MeshRejectReason = ReadingFormatError['code'] | 'NOT_FOUND' | 'METHOD_NOT_ALLOWED' | 'EMPTY_FRAME' | 'REFUSED_BY_FLOW' | 'BLOCKWISE';

/** Larger than any reading or DLMS frame a meter sends block-wise (DLMS frames stop at 4 KiB). */
export const MAX_BLOCKWISE_BODY_BYTES = 16 * 1024;

export interface MeshEndpointEvents {
  listening: [address: { address: string; port: number; receiveBufferBytes?: number }];
  received: [uplink: AnyUplink];
  accepted: [uplink: AnyUplink];
  deferred: [uplink: AnyUplink | undefined, reason: string];
  rejected: [reason: MeshRejectReason, message: string, peer: { address: string; port: number }];
  /** A datagram from a source outside the allowlist, dropped before CoAP parsing. */
  dropped: [peer: { address: string; port: number }];
  /** A request for anything but the resource directory from a source no registered meter has, dropped unanswered. */
  unregistered: [peer: { address: string; port: number }, path: string];
  /**
   * A copy of a request already being or been processed (same source and
   * message id, same bytes), not processed again. `answered` when the copy
   * got the first one's ACK at once, false when it gets it once that exists
   * (CON) or is ignored (NON).
   */
  duplicate: [peer: { address: string; port: number }, messageId: number, answered: boolean];
  /** A datagram that is not well-formed CoAP, dropped (a malformed CON is rejected with a Reset). */
  malformed: [peer: { address: string; port: number }, reason: MalformedReason];
  error: [err: Error];
}

interface PendingReading {
  key: string;
  uplink: AnyUplink;
  responses: OutgoingMessage[];
  timer: NodeJS.Timeout;
}

const ENDPOINT_NAME = /^[\x21-\x7e]{1,64}$/;

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
  /** A socket from options.socket, which the endpoint closes itself. */
  private ownSocket: Socket | undefined;
  private readonly uplinkListeners = new Set<UplinkListener>();
  private readonly dlmsListeners = new Set<DlmsUplinkListener>();
  private readonly resources = new Set<MeshResource>();
  /** Readings waiting for acceptance, by meter and reading id, so a repeat joins the first. */
  private readonly pending = new Map<string, PendingReading>();
  /** Block1 options taken off requests before the library saw them: the endpoint reassembles bodies itself. */
  private readonly block1Options = new WeakMap<CoapPacket, Buffer>();
  /** Block2 options taken off requests for resources that cut their own blocks (MeshResource.ownBlock2). */
  private readonly block2Options = new WeakMap<CoapPacket, Buffer>();
  private readonly block1 = new Block1Assembler({ maxBodyBytes: MAX_BLOCKWISE_BODY_BYTES, maxUploads: 1000, idleMs: 60_000 });
  private boundPort: number | undefined;
  /** Datagrams dropped by the allowlist. */
  dropped = 0;
  /** Requests dropped because no registered meter has their source address ("registered meters only"). */
  droppedUnregistered = 0;
  /** Copies of requests not processed again (RFC 7252 section 4.5). */
  duplicates = 0;
  /** Datagrams that are not well-formed CoAP. */
  malformed = 0;
  /** Duplicate detection; emptied when the endpoint stops. */
  private readonly deduplicator: MessageDeduplicator;
  /** The receive buffer the kernel granted (Linux reports twice what it keeps). */
  receiveBufferBytes: number | undefined;
  private starting: Promise<void> | undefined;
  private stopped = false;

  constructor(readonly options: MeshEndpointOptions) {
    super();
    this.deduplicator = new MessageDeduplicator(options.deduplication);
  }

  get port(): number | undefined {
    return this.boundPort;
  }

  /** Adds a consumer of readings; returns the function that removes it. */
  onUplink(listener: UplinkListener): () => void {
    this.uplinkListeners.add(listener);
    return () => this.uplinkListeners.delete(listener);
  }

  /** Serves a further resource; returns the function that removes it. */
  addResource(resource: MeshResource): () => void {
    this.resources.add(resource);
    return () => this.resources.delete(resource);
  }

  /** Adds a consumer of DLMS frames; returns the function that removes it. */
  onDlmsUplink(listener: DlmsUplinkListener): () => void {
    this.dlmsListeners.add(listener);
    return () => this.dlmsListeners.delete(listener);
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
    const server = createCoapServer(
      this.options.bind,
      { piggybackReplyMs: piggybackWindowMs(this.options.acceptTimeoutMs) },
      {
        onRequestFailure: (peer) => {
          this.malformed += 1;
          this.emit('malformed', peer, 'UNPROCESSABLE');
        },
        // screen() answers every copy from the deduplicator before the library sees it.
        copiesAnsweredInFront: true,
      },
    );
    // The library would reassemble Block1 bodies by token, which fails for clients that change the
    // token per block (libcoap): the option is taken off here and the endpoint reassembles by peer and
    // path. Observe goes too: nothing here is observable, and the library would otherwise keep an
    // observer stream open for each such request (RFC 7641 section 4.1: the option is then ignored).
    const handlePacket = server._handle.bind(server);
    server._handle = (packet: CoapPacket, rsinfo: AddressInfo) => {
      if (typeof packet.code === 'string' && packet.code.startsWith('0.') && packet.options) {
        const block1 = packet.options.find((option) => option.name === 'Block1');
        if (block1 && Buffer.isBuffer(block1.value)) this.block1Options.set(packet, block1.value);
        const block2 = packet.options.find((option) => option.name === 'Block2');
        const ownBlock2 = block2 !== undefined && Buffer.isBuffer(block2.value) && this.ownsBlock2(packet);
        if (ownBlock2) this.block2Options.set(packet, block2.value as Buffer);
        packet.options = packet.options.filter(
          (option) => option.name !== 'Block1' && option.name !== 'Observe' && !(ownBlock2 && option.name === 'Block2'),
        );
      }
      handlePacket(packet, rsinfo);
    };
    // Answers the library sends are seen once the socket exists (after listen); until then nothing is sent.
    let sendRaw: ((datagram: Buffer, port: number, address: string) => void) | undefined;
    // The screen sits in front of the library's datagram handler (installed by listen()), so a
    // dropped datagram gets nothing at all: no ACK, no reset, no parsing by the library.
    const handleDatagram = server.handleRequest.bind(server);
    server.handleRequest = () => {
      const handle = handleDatagram();
      return (message, rsinfo) => this.screen(message, rsinfo, handle, sendRaw, server);
    };
    server.on('request', (req: IncomingMessage, res: OutgoingMessage) => this.handle(req, res));
    const socket = this.options.socket?.();
    const port = await listenCoapServer(server, this.options.port, this.options.bind, socket);
    if (this.stopped) {
      // stop() was called while the socket was opening.
      closeQuietly(server);
      socket?.close();
      return;
    }
    this.ownSocket = socket;
    // Forwarded only once listening: a bind failure is start()'s rejection, not an event.
    server.on('error', (err: Error) => this.emit('error', err));
    // Every ACK or RST the library sends is the answer to a request's message id: kept for its copies.
    sendRaw = observeOutgoing(server, (datagram, peerAddress, peerPort) => {
      const header = datagramHeader(datagram);
      if (!header || (header.type !== 'ACK' && header.type !== 'RST')) return;
      const owed = this.deduplicator.answered(peerAddress, peerPort, header.messageId, datagram);
      for (let i = 0; i < owed; i++) sendRaw?.(datagram, peerPort, peerAddress);
    });
    this.server = server;
    this.boundPort = port;
    // Only a kernel socket has a receive buffer to size; another transport (the radio's) paces itself.
    this.receiveBufferBytes = socket ? undefined : sizeReceiveBuffer(server, this.options.receiveBufferBytes ?? RECEIVE_BUFFER_BYTES);
    this.emit('listening', {
      address: this.options.bind,
      port: this.boundPort,
      ...(this.receiveBufferBytes !== undefined ? { receiveBufferBytes: this.receiveBufferBytes } : {}),
    });
  }

  /** Tells every waiting meter to retry later (5.03), then closes the socket. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.starting) await this.starting.catch(() => undefined);
    const server = this.server;
    this.server = undefined;
    this.deduplicator.clear();
    this.block1.clear();
    for (const entry of [...this.pending.values()]) {
      this.settle(entry, { accepted: false, reason: 'gateway shutting down' });
    }
    if (!server) return;
    // Let the 5.03 answers leave the socket before it closes.
    await new Promise<void>((resolve) => setImmediate(resolve));
    // The library closes only sockets it made itself. A socket of our own closes first, so no datagram
    // reaches the library after it has let go of its socket.
    const socket = this.ownSocket;
    this.ownSocket = undefined;
    socket?.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /**
   * What happens to a datagram before the library sees it: the allowlist,
   * the framing check, "registered meters only", then duplicate detection.
   */
  private screen(
    message: Buffer,
    rsinfo: AddressInfo,
    handle: (message: Buffer, rsinfo: AddressInfo) => void,
    sendRaw: ((datagram: Buffer, port: number, address: string) => void) | undefined,
    server: Server,
  ): void {
    // The peer object is made only for an event: most datagrams pass without one.
    const allowSource = this.options.allowSource;
    if (allowSource && !allowSource(rsinfo.address)) {
      this.dropped += 1;
      this.emit('dropped', { address: rsinfo.address, port: rsinfo.port });
      return;
    }
    const frame = inspectDatagram(message);
    if (!frame.ok) {
      this.malformed += 1;
      // RFC 7252 section 4.2: a Confirmable message with a format error is rejected with a Reset
      // (4 bytes, never more than what came in); anything else, or an unknown version, is ignored.
      if (frame.type === 'CON' && frame.messageId !== undefined) sendRaw?.(resetMessage(frame.messageId), rsinfo.port, rsinfo.address);
      this.emit('malformed', { address: rsinfo.address, port: rsinfo.port }, frame.reason);
      return;
    }
    if (frame.isEmpty && frame.type === 'CON') {
      // A "CoAP ping" (section 4.3) is answered with a Reset; the library would take it for a request.
      sendRaw?.(resetMessage(frame.messageId), rsinfo.port, rsinfo.address);
      return;
    }
    if (!frame.isRequest) {
      // ACKs and Resets of the library's separate responses, or responses to it.
      handle(message, rsinfo);
      return;
    }
    const isRegisteredSource = this.options.isRegisteredSource;
    if (isRegisteredSource && !OPEN_TO_UNREGISTERED.has(frame.firstPathSegment) && !isRegisteredSource(rsinfo.address)) {
      this.droppedUnregistered += 1;
      this.emit('unregistered', { address: rsinfo.address, port: rsinfo.port }, `/${frame.firstPathSegment}`);
      return;
    }
    const verdict = this.deduplicator.check(rsinfo.address, rsinfo.port, frame.messageId, frame.type === 'CON', message);
    if (verdict.duplicate) {
      this.duplicates += 1;
      if (verdict.answer) sendRaw?.(verdict.answer, rsinfo.port, rsinfo.address);
      this.emit('duplicate', { address: rsinfo.address, port: rsinfo.port }, frame.messageId, verdict.answer !== undefined);
      return;
    }
    // This table alone decides what is a copy. The library would answer a new request from its own
    // cache when an old one had the same message id and token (a meter that restarted its counters
    // within the exchange lifetime), so its entry goes.
    forgetCachedAnswer(server, rsinfo.address, rsinfo.port, frame.messageId, frame.token);
    handle(message, rsinfo);
  }

  /** Whether the request's path belongs to a resource that cuts its own Block2 blocks there. */
  private ownsBlock2(packet: CoapPacket): boolean {
    let any = false;
    for (const resource of this.resources) if (resource.ownBlock2) any = true;
    if (!any) return false;
    const segments = (packet.options ?? []).filter((option) => option.name === 'Uri-Path').map((option) => String(option.value));
    const path = `/${segments.join('/')}`;
    for (const resource of this.resources) if (resource.matches(path)) return resource.ownBlock2?.(path) === true;
    return false;
  }

  private handle(req: IncomingMessage, res: OutgoingMessage): void {
    try {
      this.route(req, res);
    } catch (err) {
      // A bug of ours, not the peer's: reported, and answered without its text.
      this.emit('error', err as Error);
      if (!(res as OutgoingMessage & { writableEnded?: boolean }).writableEnded) {
        res.code = '5.00';
        res.end();
      }
    }
  }

  private route(req: IncomingMessage, res: OutgoingMessage): void {
    const peer = { address: req.rsinfo.address, port: req.rsinfo.port };
    const [path = '', query = ''] = req.url.split('?');
    const block1 = this.block1Options.get(req._packet);
    if (block1) {
      const result = this.block1.accept(`${peer.address}|${peer.port}|${req.method}|${path}`, block1, req.payload, uintOption(req, 'Size1'));
      if (result.kind === 'refused') {
        if (result.code === '5.03') res.setOption('Max-Age', this.options.retryAfterSeconds);
        this.refuse(res, result.code, result.code === '4.13' ? 'TOO_LARGE' : 'BLOCKWISE', result.message, peer);
        return;
      }
      res.setOption('Block1', result.block);
      if (result.kind === 'continue') {
        res.code = '2.31';
        res.end();
        return;
      }
      // The whole body: the request is handled as if it had come in one piece.
      (req as { payload: Buffer }).payload = result.body;
    }
    for (const resource of this.resources) {
      if (!resource.matches(path)) continue;
      // A throw is handle()'s to report and answer.
      resource.handle(req, res, path, query, resource.ownBlock2?.(path) ? this.block2Options.get(req._packet) : undefined);
      return;
    }
    if (path !== READINGS_PATH && path !== DLMS_PATH) {
      this.refuse(res, '4.04', 'NOT_FOUND', `no resource ${path}`, peer);
      return;
    }
    if (req.method !== 'POST') {
      this.refuse(res, '4.05', 'METHOD_NOT_ALLOWED', `${req.method} not allowed on ${path}`, peer);
      return;
    }
    if (path === DLMS_PATH) this.handleDlms(req, res, query, peer);
    else this.handleReading(req, res, peer);
  }

  private handleReading(req: IncomingMessage, res: OutgoingMessage, peer: { address: string; port: number }): void {
    let reading: MeterReading;
    try {
      reading = decodeReading(req.payload, uintOption(req, 'Content-Format'));
    } catch (err) {
      if (!(err instanceof ReadingFormatError)) throw err;
      const code = err.code === 'UNSUPPORTED_FORMAT' ? '4.15' : err.code === 'TOO_LARGE' ? '4.13' : '4.00';
      this.refuse(res, code, err.code, err.message, peer);
      return;
    }
    const key = readingKey(reading.meter, reading.id);
    this.admit(res, key, this.uplinkListeners.size, 'no flow consumes readings', (exchangeId) => ({ exchangeId, reading, peer }), (uplink) => {
      for (const listener of this.uplinkListeners) listener(uplink as Uplink);
    });
  }

  private handleDlms(req: IncomingMessage, res: OutgoingMessage, query: string, peer: { address: string; port: number }): void {
    const format = uintOption(req, 'Content-Format');
    if (format !== undefined && format !== CONTENT_FORMAT_OCTET_STREAM) {
      this.refuse(res, '4.15', 'UNSUPPORTED_FORMAT', `DLMS frames are application/octet-stream (42), not Content-Format ${format}`, peer);
      return;
    }
    const frame = Buffer.from(req.payload);
    if (frame.length === 0) {
      this.refuse(res, '4.00', 'EMPTY_FRAME', 'empty DLMS frame', peer);
      return;
    }
    if (frame.length > MAX_DLMS_FRAME_BYTES) {
      this.refuse(res, '4.13', 'TOO_LARGE', `DLMS frame of ${frame.length} bytes exceeds ${MAX_DLMS_FRAME_BYTES}`, peer);
      return;
    }
    const ep = new URLSearchParams(query).get('ep') ?? undefined;
    if (ep !== undefined && !ENDPOINT_NAME.test(ep)) {
      this.refuse(res, '4.00', 'BAD_SHAPE', 'ep must be 1-64 printable ASCII characters', peer);
      return;
    }
    const frameKey = dlmsFrameKey(frame);
    this.admit(
      res,
      frameKey,
      this.dlmsListeners.size,
      'no flow consumes DLMS frames',
      (exchangeId) => ({ exchangeId, frame, frameKey, peer, ...(ep !== undefined ? { meter: ep } : {}) }),
      (uplink) => {
        for (const listener of this.dlmsListeners) listener(uplink as DlmsUplink);
      },
    );
  }

  /** Holds the meter's answer until the uplink is accepted, joins repeats, or defers when nobody listens. */
  private admit(
    res: OutgoingMessage,
    key: string,
    listeners: number,
    noListenerReason: string,
    makeUplink: (exchangeId: string) => AnyUplink,
    deliver: (uplink: AnyUplink) => void,
  ): void {
    const inFlight = this.pending.get(key);
    if (inFlight) {
      inFlight.responses.push(res);
      return;
    }
    if (listeners === 0) {
      this.defer(res, undefined, noListenerReason);
      return;
    }
    const uplink = makeUplink(randomUUID());
    const entry: PendingReading = {
      key,
      uplink,
      responses: [res],
      timer: setTimeout(
        () => this.settle(entry, { accepted: false, reason: `not accepted within ${this.options.acceptTimeoutMs} ms` }),
        this.options.acceptTimeoutMs,
      ),
    };
    this.pending.set(key, entry);
    registerExchange(uplink.exchangeId, key, (outcome) => this.settle(entry, outcome));
    this.emit('received', uplink);
    try {
      deliver(uplink);
    } catch (err) {
      this.emit('error', err as Error);
    }
  }

  private settle(entry: PendingReading, outcome: ExchangeOutcome): void {
    if (this.pending.get(entry.key) !== entry) return;
    this.pending.delete(entry.key);
    clearTimeout(entry.timer);
    // Forgetting the exchange makes a late acceptance after a timeout a no-op.
    forgetExchange(entry.uplink.exchangeId);
    if (outcome.accepted) {
      for (const res of entry.responses) {
        res.code = '2.04';
        res.end();
      }
      this.emit('accepted', entry.uplink);
    } else if (outcome.refuseWith) {
      for (const res of entry.responses) this.refuse(res, outcome.refuseWith, 'REFUSED_BY_FLOW', outcome.reason, entry.uplink.peer);
    } else {
      for (const res of entry.responses) this.defer(res, entry.uplink, outcome.reason, outcome.retryAfterSeconds);
    }
  }

  private defer(res: OutgoingMessage, uplink: AnyUplink | undefined, reason: string, retryAfterSeconds?: number): void {
    res.code = '5.03';
    res.setOption('Max-Age', retryAfterSeconds ?? this.options.retryAfterSeconds);
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
