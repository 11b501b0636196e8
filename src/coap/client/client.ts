import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { OptionName } from 'coap-packet';
import { MeshRequestError } from './errors.js';
import { MessageLayer, type MessageLayerCounters, type ReceivedResponse } from './message-layer.js';
import {
  blockBytes,
  blockSzx,
  decodeBlock,
  encodeBlock,
  encodeUint,
  findOption,
  pathOptions,
  queryOptions,
  uintOptionOf,
  type MessageOption,
} from './options.js';
import { checkTransmissionParameters, RFC7252_TRANSMISSION, type TransmissionParameters } from './parameters.js';
import { ExchangeScheduler, type RequestPriority } from './scheduler.js';
import { peerKey, UdpTransport, type DatagramTransport, type PeerAddress, type UdpTransportOptions } from './transport.js';

export type MeshMethod = 'GET' | 'POST' | 'PUT' | 'DELETE' | 'FETCH' | 'PATCH' | 'iPATCH';
const METHOD_CODES: Readonly<Record<MeshMethod, string>> = {
  GET: '0.01',
  POST: '0.02',
  PUT: '0.03',
  DELETE: '0.04',
  FETCH: '0.05',
  PATCH: '0.06',
  iPATCH: '0.07',
};
export const MESH_METHODS = Object.keys(METHOD_CODES) as readonly MeshMethod[];

export interface MeshClientOptions {
  transmission?: Partial<TransmissionParameters>;
  /** Outstanding exchanges across all meters (default 64). */
  maxConcurrent?: number;
  /** Requests allowed to wait for a slot (default 10,000). */
  maxQueued?: number;
  /**
   * Block size for requests larger than one block and the size asked for in
   * block-wise responses (default 512: two 6LoWPAN-fragmented datagrams rather
   * than the 1024 maximum, which a lossy mesh retransmits less gladly).
   */
  blockSize?: number;
  /** Largest response body assembled from blocks (default 1 MiB). */
  maxBodyBytes?: number;
  random?: () => number;
  now?: () => number;
}

export interface MeshRequest {
  peer: PeerAddress;
  method: MeshMethod;
  /** '/status', '/lp'; each segment one Uri-Path option (percent-decoded). */
  path: string;
  /** 'a=1&b=2' or ['a=1', 'b=2']: one Uri-Query option each. */
  query?: string | readonly string[];
  payload?: Uint8Array;
  contentFormat?: number;
  accept?: number;
  /** 'metrology' unless said otherwise; relay commands are 'control'. */
  priority?: RequestPriority;
  signal?: AbortSignal;
  /** Overrides the client's block size for this request. */
  blockSize?: number;
  maxBodyBytes?: number;
  /** Further options (ETag, If-Match, ...). */
  options?: readonly MessageOption[];
}

export interface MeshResponse {
  /** Response code, '2.05'. */
  code: string;
  /** The whole body, reassembled when it came in blocks. */
  payload: Buffer;
  contentFormat?: number;
  maxAge?: number;
  etag?: Buffer;
  /** Location-Path segments joined with '/', when present. */
  location?: string;
  /** The Observe option of a notification. */
  observe?: number;
  peer: PeerAddress;
  /** Message exchanges it took (one per block). */
  exchanges: number;
  retransmissions: number;
  /** From handing the request to the client to the last block, queueing included. */
  elapsedMs: number;
}

export interface MeshClientCounters extends MessageLayerCounters {
  requests: number;
  succeeded: number;
  failed: number;
  notifications: number;
  /** Notifications older than one already delivered (RFC 7641 section 3.4), dropped. */
  staleNotifications: number;
  /** Exchanges outstanding now. */
  inFlight: number;
  /** Requests waiting for their meter's or the gateway's slot now. */
  queued: number;
  /** Observations standing now. */
  observations: number;
}

const DEFAULT_MAX_CONCURRENT = 64;
const DEFAULT_MAX_QUEUED = 10_000;
const DEFAULT_BLOCK_SIZE = 512;
const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
/** RFC 7641 section 3.4: an Observe value is fresh when newer modulo 2^24, or after 128 s. */
const OBSERVE_WRAP = 2 ** 23;
const OBSERVE_FRESHNESS_MS = 128_000;
/** RFC 7252 section 5.10.5: Max-Age defaults to 60 s. */
const DEFAULT_MAX_AGE_SECONDS = 60;

/**
 * The gateway's congestion-controlled CoAP client towards meters (in the
 * layered style of Eclipse Californium):
 *
 *   MeshClient         request/observe API, block-wise transfer (RFC 7959), Observe (RFC 7641)
 *   ExchangeScheduler  NSTART per meter, gateway-wide cap, control before metrology
 *   MessageLayer       message ids, retransmission with backoff, ACK/RST/token matching, dedup
 *   DatagramTransport  UDP socket here; the serial 6LoWPAN radio presents the same interface
 *
 * Every block of a block-wise transfer is its own exchange and takes its own
 * slot, so a relay command for a meter that is downloading a firmware image
 * goes out between two blocks rather than after the whole image.
 */
export class MeshClient {
  private controlPending = 0;
  private readonly parameters: TransmissionParameters;
  private readonly messages: MessageLayer;
  private readonly scheduler: ExchangeScheduler;
  private readonly observations = new Set<Observation>();
  private readonly blockSize: number;
  private readonly maxBodyBytes: number;
  private readonly random: () => number;
  private readonly now: () => number;
  private readonly tally = { requests: 0, succeeded: 0, failed: 0, notifications: 0, staleNotifications: 0 };
  private closed = false;

  constructor(
    private readonly transport: DatagramTransport,
    options: MeshClientOptions = {},
  ) {
    this.parameters = { ...RFC7252_TRANSMISSION, ...options.transmission };
    checkTransmissionParameters(this.parameters);
    this.blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    blockSzx(this.blockSize);
    this.maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.random = options.random ?? Math.random;
    this.now = options.now ?? Date.now;
    this.messages = new MessageLayer(transport, this.parameters, this.random, this.now);
    this.scheduler = new ExchangeScheduler({
      nstart: this.parameters.nstart,
      maxConcurrent: options.maxConcurrent ?? DEFAULT_MAX_CONCURRENT,
      maxQueued: options.maxQueued ?? DEFAULT_MAX_QUEUED,
    });
  }

  /** A client on its own UDP socket. */
  static async open(transport: UdpTransportOptions, options: MeshClientOptions = {}): Promise<MeshClient> {
    return new MeshClient(await UdpTransport.open(transport), options);
  }

  get local(): PeerAddress {
    return this.transport.local;
  }

  /**
   * Control requests (relay commands) queued or under way now. The firmware
   * resource defers meters' block requests while there are any, so that
   * control traffic has the mesh to itself.
   */
  controlRequestsPending(): number {
    return this.controlPending;
  }

  counters(): MeshClientCounters {
    return {
      ...this.messages.counters,
      ...this.tally,
      inFlight: this.scheduler.inFlight,
      queued: this.scheduler.waiting,
      observations: this.observations.size,
    };
  }

  /**
   * One request to a meter, block-wise when the payload or the response is
   * larger than a block. Resolves with whatever response code the meter
   * gives (the caller decides what a 4.xx means); rejects with a
   * MeshRequestError (COMM_TIMEOUT_ERR, RESET, QUEUE_FULL, ...).
   */
  async request(request: MeshRequest): Promise<MeshResponse> {
    this.tally.requests += 1;
    const control = request.priority === 'control';
    if (control) this.controlPending += 1;
    try {
      const response = await this.run(request);
      this.tally.succeeded += 1;
      return response;
    } catch (err) {
      this.tally.failed += 1;
      throw err;
    } finally {
      if (control) this.controlPending -= 1;
    }
  }

  /**
   * Observes a resource (RFC 7641). Resolves once the meter answered the
   * registration; `onNotification` gets that first response and every
   * notification after it, in freshness order. If the meter answers without
   * an Observe option (it does not support observing that resource), the
   * observation is delivered once and ends at once.
   */
  async observe(request: Omit<MeshRequest, 'method'>, onNotification: (response: MeshResponse) => void): Promise<Observation> {
    if (this.closed) throw new MeshRequestError('CLOSED', 'the mesh client is closed', request.peer);
    const get: MeshRequest = { ...request, method: 'GET' };
    const observation = new Observation(this, get, requestOptions(get), onNotification, this.newToken());
    this.observations.add(observation);
    observation.once('end', () => this.observations.delete(observation));
    try {
      await observation.register();
    } catch (err) {
      observation.end(err as MeshRequestError);
      throw err;
    }
    return observation;
  }

  /** Fails queued and outstanding requests with CLOSED, ends observations, closes the transport. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const reason = new MeshRequestError('CLOSED', 'the mesh client closed');
    for (const observation of [...this.observations]) observation.end(reason);
    this.scheduler.close(reason);
    this.messages.close();
    await this.transport.close();
  }

  // ---- internals used by Observation ----

  /** @internal */
  listen(token: Buffer, peer: PeerAddress, handler: (response: ReceivedResponse) => void): () => void {
    return this.messages.listen(token, peer, handler);
  }

  /** @internal */
  noteNotification(fresh: boolean): void {
    if (fresh) this.tally.notifications += 1;
    else this.tally.staleNotifications += 1;
  }

  /** @internal */
  clock(): number {
    return this.now();
  }

  /** @internal: one exchange of `request` with its own slot, under a given token, with all its options. */
  async exchangeOnce(
    request: MeshRequest,
    token: Buffer,
    options: MessageOption[],
    payload?: Buffer,
  ): Promise<{ response: ReceivedResponse; retransmissions: number }> {
    const slot = await this.scheduler.acquire(peerKey(request.peer), request.priority ?? 'metrology', request.signal);
    try {
      return await this.messages.exchange(
        request.peer,
        { code: METHOD_CODES[request.method], token, options, ...(payload ? { payload } : {}) },
        request.signal,
      );
    } finally {
      slot.release();
    }
  }

  /**
   * @internal: fetches the blocks after `first` (RFC 7959 Block2) and builds
   * the response. `options` are the request's (see requestOptions).
   */
  async assemble(
    request: MeshRequest,
    options: readonly MessageOption[],
    first: ReceivedResponse,
    startedAt: number,
    exchanges: number,
    retransmissions: number,
  ): Promise<MeshResponse> {
    const maxBody = request.maxBodyBytes ?? this.maxBodyBytes;
    const firstBlock = blockOf(first, 'Block2');
    if (!firstBlock || !firstBlock.more || !first.code.startsWith('2.')) {
      if (first.payload.length > maxBody) throw new MeshRequestError('TOO_LARGE', `response of ${first.payload.length} bytes exceeds ${maxBody}`, request.peer);
      return this.toMeshResponse(first, first.payload, startedAt, exchanges, retransmissions);
    }
    if (request.method !== 'GET' && request.method !== 'FETCH') {
      throw new MeshRequestError('BLOCKWISE_ERR', `a block-wise response to ${request.method} is not supported; GET the resource instead`, request.peer);
    }
    if (firstBlock.num !== 0) throw new MeshRequestError('BLOCKWISE_ERR', `the first response is block ${firstBlock.num}, not 0`, request.peer);
    const etag = findOption(first, 'ETag');
    const parts = [first.payload];
    let received = first.payload.length;
    let block = firstBlock;
    // The rest of a notification's body is fetched with plain GETs (RFC 7959 section 2.6).
    const follow = options.filter((o) => o.name !== 'Observe');
    const payload = request.payload ? Buffer.from(request.payload) : undefined;
    while (block.more) {
      if (parts[parts.length - 1]!.length !== blockBytes(block.szx)) {
        throw new MeshRequestError('BLOCKWISE_ERR', `block ${block.num} has ${parts[parts.length - 1]!.length} bytes, not ${blockBytes(block.szx)}`, request.peer);
      }
      const wanted = { num: block.num + 1, more: false, szx: block.szx };
      const { response, retransmissions: again } = await this.exchangeOnce(request, this.newToken(), [...follow, { name: 'Block2', value: encodeBlock(wanted) }], payload);
      exchanges += 1;
      retransmissions += again;
      if (!response.code.startsWith('2.')) {
        throw new MeshRequestError('BLOCKWISE_ERR', `block ${wanted.num} answered ${response.code}`, request.peer);
      }
      const got = blockOf(response, 'Block2');
      if (!got || got.num !== wanted.num) {
        throw new MeshRequestError('BLOCKWISE_ERR', `asked for block ${wanted.num}, got ${got ? `block ${got.num}` : 'no Block2 option'}`, request.peer);
      }
      const blockEtag = findOption(response, 'ETag');
      if (etag && blockEtag && !etag.equals(blockEtag)) {
        throw new MeshRequestError('BLOCKWISE_ERR', 'the resource changed during the block-wise transfer (ETag differs)', request.peer);
      }
      received += response.payload.length;
      if (received > maxBody) throw new MeshRequestError('TOO_LARGE', `response exceeds ${maxBody} bytes`, request.peer);
      parts.push(response.payload);
      block = got;
    }
    return this.toMeshResponse(first, Buffer.concat(parts), startedAt, exchanges, retransmissions);
  }

  newToken(): Buffer {
    // 4 random bytes: unique among the client's live tokens (checked), short on a 6LoWPAN link.
    for (;;) {
      const token = randomBytes(4);
      if (!this.messages.tokenInUse(token)) return token;
    }
  }

  private async run(request: MeshRequest): Promise<MeshResponse> {
    if (this.closed) throw new MeshRequestError('CLOSED', 'the mesh client is closed', request.peer);
    const options = requestOptions(request);
    const startedAt = this.now();
    const payload = request.payload ? Buffer.from(request.payload) : undefined;
    const blockSize = request.blockSize ?? this.blockSize;
    if (!payload || payload.length <= blockSize) {
      const ask: MessageOption[] =
        (request.method === 'GET' || request.method === 'FETCH') && request.blockSize !== undefined
          ? [...options, { name: 'Block2', value: encodeBlock({ num: 0, more: false, szx: blockSzx(blockSize) }) }]
          : options;
      const { response, retransmissions } = await this.exchangeOnce(request, this.newToken(), ask, payload);
      return this.assemble(request, options, response, startedAt, 1, retransmissions);
    }
    return this.upload(request, options, payload, blockSzx(blockSize), startedAt);
  }

  /** RFC 7959 Block1: the payload in blocks, each acknowledged 2.31 Continue until the last. */
  private async upload(request: MeshRequest, options: readonly MessageOption[], payload: Buffer, startSzx: number, startedAt: number): Promise<MeshResponse> {
    let szx = startSzx;
    let offset = 0;
    let exchanges = 0;
    let retransmissions = 0;
    for (;;) {
      const size = blockBytes(szx);
      const num = offset / size;
      const chunk = payload.subarray(offset, offset + size);
      const more = offset + size < payload.length;
      const blockOptions: MessageOption[] = [...options, { name: 'Block1', value: encodeBlock({ num, more, szx }) }];
      // Size1 on the first block lets the meter refuse a body it cannot store before any is sent.
      if (num === 0) blockOptions.push({ name: 'Size1', value: encodeUint(payload.length) });
      const { response, retransmissions: again } = await this.exchangeOnce(request, this.newToken(), blockOptions, chunk);
      exchanges += 1;
      retransmissions += again;
      const answered = blockOf(response, 'Block1');
      if (!more) return this.assemble(request, options, response, startedAt, exchanges, retransmissions);
      if (response.code === '2.31') {
        if (answered && answered.num !== num) {
          throw new MeshRequestError('BLOCKWISE_ERR', `sent block ${num}, the meter acknowledged block ${answered.num}`, request.peer);
        }
        offset += size;
        // The meter may ask for smaller blocks from here on (RFC 7959 section 2.3).
        if (answered && answered.szx < szx) szx = answered.szx;
        continue;
      }
      if (response.code === '4.13' && num === 0 && answered && answered.szx < szx) {
        // Too large: start again with the block size the meter named.
        szx = answered.szx;
        continue;
      }
      // Any other answer ends the transfer; the caller sees it.
      return this.toMeshResponse(response, response.payload, startedAt, exchanges, retransmissions);
    }
  }

  private toMeshResponse(head: ReceivedResponse, payload: Buffer, startedAt: number, exchanges: number, retransmissions: number): MeshResponse {
    const contentFormat = uintOptionOf(head, 'Content-Format');
    const maxAge = uintOptionOf(head, 'Max-Age');
    const observe = uintOptionOf(head, 'Observe');
    const etag = findOption(head, 'ETag');
    const location = head.options.filter((o) => o.name === 'Location-Path').map((o) => o.value.toString('utf8'));
    return {
      code: head.code,
      payload,
      ...(contentFormat !== undefined ? { contentFormat } : {}),
      ...(maxAge !== undefined ? { maxAge } : {}),
      ...(etag ? { etag } : {}),
      ...(location.length > 0 ? { location: location.join('/') } : {}),
      ...(observe !== undefined ? { observe } : {}),
      peer: head.peer,
      exchanges,
      retransmissions,
      elapsedMs: this.now() - startedAt,
    };
  }
}

function blockOf(response: ReceivedResponse, name: 'Block1' | 'Block2'): ReturnType<typeof decodeBlock> {
  const value = findOption(response, name);
  return value === undefined ? undefined : decodeBlock(value);
}

const RESERVED_OPTIONS: ReadonlySet<OptionName> = new Set(['Uri-Path', 'Uri-Query', 'Block1', 'Block2', 'Size1']);

/**
 * Checks `request` and builds its options, once per request: every exchange
 * of it (one per block) sends these plus its block options.
 */
function requestOptions(request: MeshRequest): MessageOption[] {
  const bad = (message: string): never => {
    throw new MeshRequestError('BAD_REQUEST', message, request.peer);
  };
  if (!(request.method in METHOD_CODES)) bad(`unknown method ${String(request.method)}`);
  if (typeof request.path !== 'string' || !request.path.startsWith('/')) bad('path must start with /');
  if (Buffer.byteLength(request.path) > 255) bad('path longer than 255 bytes');
  let path: MessageOption[] = [];
  try {
    path = pathOptions(request.path);
  } catch {
    bad(`path ${request.path} has a malformed percent-encoding`);
  }
  if (!request.peer || typeof request.peer.address !== 'string' || !Number.isInteger(request.peer.port) || request.peer.port < 1 || request.peer.port > 65535) {
    bad('peer must have an address and a port 1..65535');
  }
  for (const option of request.options ?? []) {
    if (RESERVED_OPTIONS.has(option.name)) bad(`${option.name} is set by the client, not by the caller`);
  }
  if (request.blockSize !== undefined) {
    try {
      blockSzx(request.blockSize);
    } catch (err) {
      bad((err as Error).message);
    }
  }
  const options = [...path, ...queryOptions(request.query)];
  if (request.contentFormat !== undefined && request.payload !== undefined) options.push({ name: 'Content-Format', value: encodeUint(request.contentFormat) });
  if (request.accept !== undefined) options.push({ name: 'Accept', value: encodeUint(request.accept) });
  if (request.options) options.push(...request.options);
  return options;
}

export interface ObservationEvents {
  end: [reason: MeshRequestError | undefined];
}

/**
 * A standing observation of one resource on one meter. Notifications go to
 * the callback given to MeshClient.observe. It ends when the meter sends a
 * final response (no Observe option, or an error code), when re-registration
 * fails, or on cancel().
 *
 * If nothing arrives within the last notification's Max-Age (plus a margin),
 * the gateway registers again (RFC 7641 section 3.3.1): a meter that
 * rebooted and forgot its observers is picked up again.
 */
export class Observation extends EventEmitter<ObservationEvents> {
  private unlisten: (() => void) | undefined;
  private lastObserve: number | undefined;
  private lastAt = 0;
  private watchdog: NodeJS.Timeout | undefined;
  private watchdogMs = 0;
  private ended = false;
  /** The registration's options: the GET's with Observe 0. */
  private readonly registration: MessageOption[];

  /** @internal: made by MeshClient.observe; `options` are the GET's (see requestOptions). */
  constructor(
    private readonly client: MeshClient,
    private readonly request: MeshRequest,
    private readonly options: readonly MessageOption[],
    private readonly onNotification: (response: MeshResponse) => void,
    readonly token: Buffer,
  ) {
    super();
    this.registration = [...options, { name: 'Observe', value: encodeUint(0) }];
  }

  get active(): boolean {
    return !this.ended;
  }

  /** @internal */
  async register(): Promise<void> {
    const startedAt = this.client.clock();
    // The answer to a registration is always fresh, even from a meter that rebooted and counts from 0 again.
    this.lastObserve = undefined;
    // Listen before sending: a notification may overtake the piggybacked answer.
    this.unlisten ??= this.client.listen(this.token, this.request.peer, (response) => this.notified(response));
    const { response, retransmissions } = await this.client.exchangeOnce(this.request, this.token, this.registration);
    await this.deliver(response, startedAt, retransmissions);
  }

  /** Deregisters (RFC 7641 section 3.6: a GET with Observe 1) and ends the observation. */
  async cancel(): Promise<void> {
    if (this.ended) return;
    this.end(undefined);
    try {
      await this.client.exchangeOnce(this.request, this.token, [...this.options, { name: 'Observe', value: encodeUint(1) }]);
    } catch {
      // The meter is gone or reset the message: either way it no longer notifies us,
      // and a late notification is answered with Reset by the message layer.
    }
  }

  /** @internal */
  end(reason: MeshRequestError | undefined): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.watchdog);
    this.watchdog = undefined;
    this.unlisten?.();
    this.unlisten = undefined;
    this.emit('end', reason);
  }

  private notified(response: ReceivedResponse): void {
    if (this.ended) return;
    this.deliver(response, this.client.clock(), 0).catch((err: unknown) => {
      this.end(err instanceof MeshRequestError ? err : new MeshRequestError('BLOCKWISE_ERR', (err as Error).message, this.request.peer));
    });
  }

  private async deliver(response: ReceivedResponse, startedAt: number, retransmissions: number): Promise<void> {
    if (this.ended) return;
    const observe = uintOptionOf(response, 'Observe');
    const now = this.client.clock();
    if (observe !== undefined && this.lastObserve !== undefined && !isFresher(this.lastObserve, observe, now - this.lastAt)) {
      this.client.noteNotification(false);
      return;
    }
    if (observe !== undefined) {
      this.lastObserve = observe;
      this.lastAt = now;
    }
    const assembled = await this.client.assemble(this.request, this.registration, response, startedAt, 1, retransmissions);
    if (this.ended) return;
    this.client.noteNotification(true);
    this.onNotification(assembled);
    if (observe === undefined || !response.code.startsWith('2.')) {
      // A final response: the meter will not notify (any more).
      this.end(response.code.startsWith('2.') ? undefined : new MeshRequestError('BAD_REQUEST', `the meter ended the observation with ${response.code}`, this.request.peer));
      return;
    }
    this.armWatchdog(assembled.maxAge ?? DEFAULT_MAX_AGE_SECONDS);
  }

  private armWatchdog(maxAgeSeconds: number): void {
    // A margin beyond Max-Age so a notification sent just in time is not raced.
    const waitMs = maxAgeSeconds * 1000 + Math.max(2000, maxAgeSeconds * 100);
    if (this.watchdog && waitMs === this.watchdogMs) {
      // The usual case, a notification with the same Max-Age: restart the timer rather than make another.
      this.watchdog.refresh();
      return;
    }
    clearTimeout(this.watchdog);
    this.watchdogMs = waitMs;
    this.watchdog = setTimeout(() => {
      this.register().catch((err: unknown) => this.end(err instanceof MeshRequestError ? err : new MeshRequestError('COMM_TIMEOUT_ERR', String(err), this.request.peer)));
    }, waitMs);
    this.watchdog.unref();
  }
}

/** RFC 7641 section 3.4: is notification value `v2` newer than `v1`, `elapsedMs` after it? */
export function isFresher(v1: number, v2: number, elapsedMs: number): boolean {
  return (v1 < v2 && v2 - v1 < OBSERVE_WRAP) || (v1 > v2 && v1 - v2 > OBSERVE_WRAP) || elapsedMs > OBSERVE_FRESHNESS_MS;
}
