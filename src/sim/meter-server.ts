import { createHash, type Hash } from 'node:crypto';
import type { Socket } from 'node:dgram';
import * as coap from 'coap';
import type { CoapPacket, IncomingMessage, ObserveWriteStream, OutgoingMessage, Server } from 'coap';
import { cborEncode } from '../coap/cbor.js';
import { blockBytes, decodeBlock, decodeUint, encodeBlock, type BlockOption } from '../coap/client/options.js';
import { formatLinkFormat, type Link } from '../mesh/linkformat.js';
import type { MeterFirmwareReport } from '../firmware/rollout-types.js';

/**
 * The CoAP server of one simulated meter, on the meter's own UDP socket (the
 * one it also registers and pushes readings from, as a constrained device has
 * one). It serves:
 *
 *   GET  /status     observable (RFC 7641): CBOR {power, relay, energyWh, ts};
 *                    notified on change and every `statusIntervalMs`
 *   GET  /lp         the last 24 h load profile, 96 quarter-hours in CBOR
 *                    (about 3.3 KiB, so a client needs Block2, RFC 7959)
 *   PUT  /fw         a firmware image, usually Block1-wise; answered 2.04 with
 *   POST /fw         the hex SHA-256 of the bytes received
 *   GET  /fw/state   (with the `firmware` option) the meter's firmware and the
 *                    state of its update, CBOR (issue 9, fw-protocol: the
 *                    meter pulls images from the gateway; meter-firmware.ts)
 *   POST /fw/update  (with the `firmware` option) a CBOR firmware offer;
 *                    answered 2.04, 4.00, 4.09 or 4.13 (with Size1)
 *   GET  /relay      'connected' or 'disconnected' (text)
 *   PUT  /relay      the same text: switches the relay (and notifies /status)
 *   POST /dlms       (with the `dlms` option) a ciphered xDLMS request, bare
 *                    or in the UDP wrapper, Content-Format 42; answered 2.04
 *                    with the ciphered response, or 4.01 / 4.00 with the
 *                    unciphered exception-response when the meter refuses it
 *                    (security / malformed); `?st=HEX` names the client's
 *                    system title for glo-ciphered requests
 *   GET  /.well-known/core   the links above (RFC 6690)
 *
 * Faults (`faults` option): an offline meter drops every request unseen (no
 * ACK, no answer); with a loss rate each request is dropped before it is
 * handled, or handled and its answer dropped, each with that probability.
 * A retransmission of a /dlms request whose answer was lost gets the same
 * answer without the meter acting twice (SimulatedCosemMeter.serve).
 *
 * The coap library segments /lp itself (Block2: it answers each block request
 * from the payload the handler gives, which is stable within a quarter-hour).
 * Block1 is reassembled here, not by the library: the library matches the
 * blocks of one upload by token, and clients that use a fresh token per block
 * (libcoap does; RFC 7959 allows it) would never complete. Blocks are matched
 * by peer and path (RFC 7959 section 2.5) and hashed as they arrive, so an
 * upload costs a hash state, not the image, whatever its size.
 */

export const STATUS_PATH = '/status';
export const LOAD_PROFILE_PATH = '/lp';
export const FIRMWARE_PATH = '/fw';
export const FIRMWARE_STATE_PATH = '/fw/state';
export const FIRMWARE_UPDATE_PATH = '/fw/update';
export const RELAY_PATH = '/relay';
export const METER_DLMS_PATH = '/dlms';
/** The link of /dlms, listed only by meters that serve it. */
const DLMS_LINK: Link = { target: METER_DLMS_PATH, attributes: { rt: 'ami.dlms', ct: '42' } };
export const WELL_KNOWN_CORE = '/.well-known/core';

/** The links a serving meter registers with and lists under /.well-known/core. */
const meterLinks: Link[] = [
  { target: STATUS_PATH, attributes: { rt: 'ami.status', obs: true, ct: '60' } },
  { target: LOAD_PROFILE_PATH, attributes: { rt: 'ami.loadprofile', ct: '60' } },
  { target: FIRMWARE_PATH, attributes: { rt: 'ami.firmware' } },
  { target: RELAY_PATH, attributes: { rt: 'ami.relay', ct: '0' } },
];
export const METER_LINKS: readonly Link[] = Object.freeze(meterLinks);
/** The links of the pull-model firmware update, listed by meters that serve it. */
export const FIRMWARE_UPDATE_LINKS: readonly Link[] = Object.freeze([
  { target: FIRMWARE_STATE_PATH, attributes: { rt: 'ami.firmware.state', ct: '60' } },
  { target: FIRMWARE_UPDATE_PATH, attributes: { rt: 'ami.firmware.update', ct: '60' } },
]);

/** Firmware images larger than this are refused (4.13): more than any meter's flash slot. */
export const MAX_FIRMWARE_BYTES = 4 * 1024 * 1024;
/** An upload with no block for this long is forgotten (RFC 7252 EXCHANGE_LIFETIME is about 247 s). */
const UPLOAD_IDLE_MS = 60_000;
/** Observers one meter keeps; a further one replaces the oldest. Real meters keep a handful. */
const MAX_OBSERVERS = 4;
const QUARTER_HOUR_MS = 15 * 60 * 1000;
const LOAD_PROFILE_INTERVALS = 96;
/** Mean consumption per quarter-hour in Wh (about 0.5 kW, a household). */
const MEAN_WH_PER_INTERVAL = 120;
/** Quarter-hours since the epoch at 2024-01-01T00:00Z: registers count from there. */
const REGISTER_ORIGIN_INTERVAL = Date.UTC(2024, 0, 1) / QUARTER_HOUR_MS;
const CONTENT_FORMAT_TEXT = 'text/plain';
const CONTENT_FORMAT_CBOR = 'application/cbor';
const CONTENT_FORMAT_LINK_FORMAT = 'application/link-format';

export type RelayState = 'connected' | 'disconnected';

export interface MeterStatus {
  power: 'on';
  relay: RelayState;
  energyWh: number;
  ts: number;
}

export interface MeterServerOptions {
  /** The meter's endpoint name; also seeds its load profile. */
  name: string;
  /** The meter's energy register now (Wh). */
  energyWh: () => number;
  /** Milliseconds between two periodic /status notifications. */
  statusIntervalMs: number;
  now?: () => number;
  /** Serves POST /dlms: the answer to a request's payload (and its query string). */
  dlms?: (request: { payload: Buffer; query: string }) => { code: string; payload: Buffer };
  /** Serves GET /fw/state and POST /fw/update (the meter pulls images from the gateway). */
  firmware?: MeterFirmwareService;
  faults?: MeterServerFaults;
}

/** The meter's side of the firmware update protocol, as its server needs it (meter-firmware.ts implements it). */
export interface MeterFirmwareService {
  /** GET /fw/state: sent as CBOR. */
  state(): MeterFirmwareReport;
  /** POST /fw/update with the request's payload: 2.04, 4.00, 4.09 or 4.13, and a diagnostic for refusals. */
  offer(payload: Buffer): { code: string; message?: string };
}

export interface MeterServerFaults {
  /** True while the meter answers nothing at all. */
  offline?: () => boolean;
  /** Fraction (0..1) of requests dropped, and of answers dropped. */
  lossRate?: number;
  /** [0, 1) random source; Math.random by default. */
  random?: () => number;
}

export interface FirmwareUpload {
  bytes: number;
  sha256: string;
  at: number;
}

interface Upload {
  peer: string;
  path: string;
  hash: Hash;
  bytes: number;
  /** Bytes of the last block taken, so a resent last block is answered again, not hashed twice. */
  lastBlockBytes: number;
  lastBlockAt: number;
}

/** A uint option as the library hands it: a number (options it knows) or the raw bytes. */
function uintValue(value: unknown): number | undefined {
  if (typeof value === 'number') return value;
  return Buffer.isBuffer(value) ? decodeUint(value) : undefined;
}

/** A deterministic number in [0, 1) for (seed, index): the same quarter-hour reads the same in every profile. */
function unitNoise(seed: number, index: number): number {
  let x = (seed ^ Math.imul(index, 0x9e3779b1)) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b) >>> 0;
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35) >>> 0;
  return ((x ^ (x >>> 16)) >>> 0) / 0x1_0000_0000;
}

/**
 * The import register at the end of quarter-hour `interval`: MEAN per interval
 * plus a wobble below MEAN, so it always rises (by 1..2*MEAN-1 Wh) and the
 * same interval has the same value whenever it is asked for.
 */
function importRegisterWh(seed: number, interval: number): number {
  return (interval - REGISTER_ORIGIN_INTERVAL) * MEAN_WH_PER_INTERVAL + Math.floor(unitNoise(seed, interval) * MEAN_WH_PER_INTERVAL);
}

/**
 * The meter's load profile of the 96 quarter-hours before `now`, CBOR: per
 * interval its end (s), the import and export registers (Wh), mean voltage
 * (0.1 V) and current (mA), and a status byte (0: valid). About 3.3 KiB.
 */
export function loadProfile(name: string, now: number): Buffer {
  const seed = createHash('sha256').update(`lp/${name}`).digest().readUInt32BE(0);
  const last = Math.floor(now / QUARTER_HOUR_MS);
  // Some meters have rooftop PV: their export register moves too.
  const exportShare = unitNoise(seed, 0) < 0.2 ? 0.3 : 0;
  const entries = [];
  for (let k = LOAD_PROFILE_INTERVALS - 1; k >= 0; k--) {
    const interval = last - k;
    const imported = importRegisterWh(seed, interval);
    const consumedWh = imported - importRegisterWh(seed, interval - 1);
    const decivolts = 2250 + Math.floor(unitNoise(seed ^ 0x5bd1e995, interval) * 100);
    // Mean current over the quarter-hour: P = E / 0.25 h, I = P / U.
    const milliamps = Math.round(((consumedWh * 4) / (decivolts / 10)) * 1000);
    entries.push({
      t: Math.floor((interval * QUARTER_HOUR_MS) / 1000),
      ai: imported,
      ae: Math.floor(imported * exportShare),
      v: decivolts,
      i: milliamps,
      st: 0,
    });
  }
  return cborEncode({
    meter: name,
    period: 900,
    obis: { ai: '1.0.1.8.0.255', ae: '1.0.2.8.0.255', v: '1.0.32.7.0.255', i: '1.0.31.7.0.255' },
    entries,
  });
}

function packetPath(packet: CoapPacket): string {
  const segments: string[] = [];
  for (const option of packet.options ?? []) {
    if (option.name !== 'Uri-Path') continue;
    const value: unknown = option.value;
    segments.push(Buffer.isBuffer(value) ? value.toString('utf8') : String(value));
  }
  return `/${segments.join('/')}`;
}

function packetQuery(packet: CoapPacket): string {
  const parts: string[] = [];
  for (const option of packet.options ?? []) {
    if (option.name !== 'Uri-Query') continue;
    const value: unknown = option.value;
    parts.push(Buffer.isBuffer(value) ? value.toString('utf8') : String(value));
  }
  return parts.join('&');
}

export class MeterCoapServer {
  private readonly server: Server;
  private readonly observers = new Map<string, ObserveWriteStream>();
  /** Block1 options taken off requests before the library saw them (see the class comment); null: malformed. */
  private readonly block1 = new WeakMap<CoapPacket, BlockOption | null>();
  private upload: Upload | undefined;
  private statusTimer: NodeJS.Timeout | undefined;
  private profile: { interval: number; payload: Buffer } | undefined;
  private readonly now: () => number;
  private closed = false;
  relay: RelayState = 'connected';
  /** The last completed firmware upload. */
  lastUpload: FirmwareUpload | undefined;
  /** Notifications sent to observers of /status. */
  notifications = 0;

  constructor(private readonly options: MeterServerOptions) {
    this.now = options.now ?? Date.now;
    // A meter's responses are small and few at a time: a small response cache (the library's default is 32 MiB).
    this.server = coap.createServer({ cacheSize: 64 * 1024 });
    const handle = this.server._handle.bind(this.server);
    this.server._handle = (packet: CoapPacket, rsinfo) => {
      if (this.lost(packet)) return;
      this.prepare(packet);
      handle(packet, rsinfo);
    };
    this.server.on('request', (req: IncomingMessage, res: OutgoingMessage) => {
      try {
        this.handle(req, res);
      } catch {
        // Whatever a malformed request did, the meter keeps serving.
        if (!(res as OutgoingMessage & { writableEnded?: boolean }).writableEnded) {
          res.code = '5.00';
          res.end();
        }
      }
    });
    // Errors on the shared socket belong to its owner; the server must not turn them into a crash.
    this.server.on('error', () => undefined);
  }

  /** Serves on `socket` (already bound; shared with the meter's client agent). */
  listen(socket: Socket): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.listen(socket, (err?: Error) => (err ? reject(err) : resolve()));
    });
  }

  /** The links this meter registers with: METER_LINKS, and /dlms when it serves DLMS. */
  get links(): readonly Link[] {
    return this.options.dlms ? [...METER_LINKS, DLMS_LINK] : METER_LINKS;
  }

  /**
   * The links under /.well-known/core: the registered ones and, when it
   * serves them, /fw/state and /fw/update. These two are not registered with
   * the resource directory (RFC 9176 lets an endpoint register a subset): the
   * gateway finds them by the protocol, not through the directory, and the
   * registrations stay as they were.
   */
  get wellKnownLinks(): readonly Link[] {
    return this.options.firmware ? [...this.links, ...FIRMWARE_UPDATE_LINKS] : this.links;
  }

  /** Requests dropped by the `faults` option (offline or lost), and answers lost after handling. */
  readonly dropped = { requests: 0, answers: 0 };

  /**
   * True when a request never gets an answer: the meter is offline, the
   * request is lost, or (for /dlms) it is handled and the answer is lost.
   */
  private lost(packet: CoapPacket): boolean {
    const faults = this.options.faults;
    if (!faults || this.closed) return false;
    if (typeof packet.code !== 'string' || !packet.code.startsWith('0.') || packet.code === '0.00') return false;
    if (faults.offline?.()) {
      this.dropped.requests += 1;
      return true;
    }
    const rate = faults.lossRate ?? 0;
    if (rate <= 0) return false;
    const random = faults.random ?? Math.random;
    if (random() < rate) {
      this.dropped.requests += 1;
      return true;
    }
    if (random() < rate && this.options.dlms && packet.code === '0.02' && packetPath(packet) === METER_DLMS_PATH) {
      // The meter acts on the request; its answer is lost on the way back.
      this.options.dlms({ payload: packet.payload ?? Buffer.alloc(0), query: packetQuery(packet) });
      this.dropped.answers += 1;
      return true;
    }
    return false;
  }

  get observerCount(): number {
    return this.observers.size;
  }

  status(): MeterStatus {
    return { power: 'on', relay: this.relay, energyWh: this.options.energyWh(), ts: this.now() };
  }

  /** Sends the current status to every observer of /status. */
  notify(): void {
    if (this.observers.size === 0) return;
    const payload = cborEncode(this.status());
    for (const [key, stream] of this.observers) {
      if (stream.writableEnded || stream.destroyed) {
        this.observers.delete(key);
        continue;
      }
      stream.write(payload);
      this.notifications += 1;
    }
  }

  /** Ends observations and stops answering. The socket stays open: it is the meter's. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.statusTimer);
    this.statusTimer = undefined;
    for (const stream of this.observers.values()) stream.end();
    this.observers.clear();
    this.upload = undefined;
    this.server.close();
  }

  /**
   * Runs before the library looks at a request: takes Block1 off (reassembled
   * here) and ignores Observe where nothing is observable (RFC 7641 section
   * 4.1: the server then answers as to a plain request).
   */
  private prepare(packet: CoapPacket): void {
    if (typeof packet.code !== 'string' || !packet.code.startsWith('0.') || packet.code === '0.00' || !packet.options) return;
    const path = packetPath(packet);
    const kept = [];
    for (const option of packet.options) {
      if (option.name === 'Block1') {
        // A malformed value is recorded as such and refused by the handler (4.00).
        this.block1.set(packet, (Buffer.isBuffer(option.value) ? decodeBlock(option.value) : undefined) ?? null);
        continue;
      }
      // Only a GET of /status is observable; on anything else Observe is ignored, so the library
      // answers with a plain response (with Block2 where needed) rather than an observe stream.
      if (option.name === 'Observe' && (path !== STATUS_PATH || packet.code !== '0.01')) continue;
      kept.push(option);
    }
    packet.options = kept;
  }

  private handle(req: IncomingMessage, res: OutgoingMessage): void {
    if (this.closed) return;
    const [path = ''] = req.url.split('?');
    const block1 = this.block1.get(req._packet);
    if (block1 !== undefined && path !== FIRMWARE_PATH) return this.answer(res, '4.02', `${path} takes no Block1 upload`);
    switch (path) {
      case STATUS_PATH:
        if (req.method !== 'GET') return this.answer(res, '4.05', 'GET only');
        return this.serveStatus(req, res);
      case LOAD_PROFILE_PATH:
        if (req.method !== 'GET') return this.answer(res, '4.05', 'GET only');
        res.setOption('Content-Format', CONTENT_FORMAT_CBOR);
        res.end(this.currentProfile());
        return;
      case FIRMWARE_PATH:
        if (req.method !== 'PUT' && req.method !== 'POST') return this.answer(res, '4.05', 'PUT or POST a firmware image');
        return this.firmware(req, res, block1);
      case FIRMWARE_STATE_PATH:
      case FIRMWARE_UPDATE_PATH:
        return this.serveFirmwareUpdate(req, res, path);
      case RELAY_PATH:
        return this.serveRelay(req, res);
      case METER_DLMS_PATH:
        return this.serveDlms(req, res);
      case WELL_KNOWN_CORE:
        if (req.method !== 'GET') return this.answer(res, '4.05', 'GET only');
        res.setOption('Content-Format', CONTENT_FORMAT_LINK_FORMAT);
        res.end(formatLinkFormat(this.wellKnownLinks));
        return;
      default:
        return this.answer(res, '4.04', `no resource ${path}`);
    }
  }

  private serveStatus(req: IncomingMessage, res: OutgoingMessage): void {
    const observe = uintValue(req.headers.Observe);
    const key = `${req.rsinfo.address}|${req.rsinfo.port}|${req._packet.token?.toString('hex') ?? ''}`;
    if (observe === 0) {
      // The library handed an observe stream for this request (Observe: 0 on a GET).
      const stream = res as unknown as ObserveWriteStream;
      // The same client and token registering again replaces its observation (RFC 7641 section 4.1).
      this.observers.get(key)?.end();
      this.observers.delete(key);
      if (this.observers.size >= MAX_OBSERVERS) {
        const [oldestKey, oldest] = this.observers.entries().next().value as [string, ObserveWriteStream];
        this.observers.delete(oldestKey);
        oldest.end();
      }
      stream.on('error', () => undefined);
      const forget = (): void => {
        if (this.observers.get(key) === stream) this.observers.delete(key);
        if (this.observers.size === 0) {
          clearInterval(this.statusTimer);
          this.statusTimer = undefined;
        }
      };
      // 'finish': the client reset a notification, or it went unacknowledged (the library ends the stream).
      stream.on('finish', forget);
      stream.on('close', forget);
      stream.setOption('Content-Format', CONTENT_FORMAT_CBOR);
      this.observers.set(key, stream);
      stream.write(cborEncode(this.status()));
      this.statusTimer ??= setInterval(() => this.notify(), this.options.statusIntervalMs);
      this.statusTimer.unref();
      return;
    }
    if (observe === 1) {
      // Deregistration (RFC 7641 section 3.6): a plain answer, and no more notifications.
      this.observers.get(key)?.end();
      this.observers.delete(key);
    }
    res.setOption('Content-Format', CONTENT_FORMAT_CBOR);
    res.end(cborEncode(this.status()));
  }

  private currentProfile(): Buffer {
    const interval = Math.floor(this.now() / QUARTER_HOUR_MS);
    // One payload per quarter-hour: every block of one transfer is cut from the same bytes.
    if (this.profile?.interval !== interval) this.profile = { interval, payload: loadProfile(this.options.name, this.now()) };
    return this.profile.payload;
  }

  private serveDlms(req: IncomingMessage, res: OutgoingMessage): void {
    const dlms = this.options.dlms;
    if (!dlms) return this.answer(res, '4.04', `no resource ${METER_DLMS_PATH}`);
    if (req.method !== 'POST') return this.answer(res, '4.05', 'POST a ciphered xDLMS request');
    const format = req.headers['Content-Format'];
    if (format !== undefined && format !== 'application/octet-stream' && format !== 42) return this.answer(res, '4.15', 'application/octet-stream only');
    const answer = dlms({ payload: req.payload, query: packetQuery(req._packet) });
    res.code = answer.code;
    res.setOption('Content-Format', 'application/octet-stream');
    res.end(answer.payload);
  }

  private serveFirmwareUpdate(req: IncomingMessage, res: OutgoingMessage, path: string): void {
    const service = this.options.firmware;
    if (!service) return this.answer(res, '4.04', `no resource ${path}`);
    if (path === FIRMWARE_STATE_PATH) {
      if (req.method !== 'GET') return this.answer(res, '4.05', 'GET only');
      res.setOption('Content-Format', CONTENT_FORMAT_CBOR);
      res.end(cborEncode(service.state()));
      return;
    }
    if (req.method !== 'POST') return this.answer(res, '4.05', 'POST a CBOR firmware offer');
    // The library names the formats it knows ('application/cbor') and leaves others as numbers.
    const format: unknown = req.headers['Content-Format'];
    if (format !== undefined && format !== CONTENT_FORMAT_CBOR && format !== 60) return this.answer(res, '4.00', 'an offer is application/cbor');
    const answer = service.offer(req.payload);
    if (answer.code === '2.04') {
      res.code = '2.04';
      res.end();
      return;
    }
    if (answer.code === '4.13') res.setOption('Size1', MAX_FIRMWARE_BYTES);
    this.answer(res, answer.code, answer.message ?? '');
  }

  private serveRelay(req: IncomingMessage, res: OutgoingMessage): void {
    if (req.method === 'GET') {
      res.setOption('Content-Format', CONTENT_FORMAT_TEXT);
      res.end(this.relay);
      return;
    }
    if (req.method !== 'PUT') return this.answer(res, '4.05', 'GET or PUT');
    const wanted = req.payload.toString('utf8').trim();
    if (wanted !== 'connected' && wanted !== 'disconnected') return this.answer(res, '4.00', 'expected connected or disconnected');
    const changed = wanted !== this.relay;
    this.relay = wanted;
    res.code = '2.04';
    res.end();
    if (changed) this.notify();
  }

  private firmware(req: IncomingMessage, res: OutgoingMessage, block: BlockOption | null | undefined): void {
    const peer = `${req.rsinfo.address}|${req.rsinfo.port}`;
    const now = this.now();
    const size1 = uintValue(req._packet.options?.find((option) => option.name === 'Size1')?.value);
    if (size1 !== undefined && size1 > MAX_FIRMWARE_BYTES) return this.tooLarge(res);
    if (block === null) return this.answer(res, '4.00', 'malformed Block1 option');
    if (block === undefined) {
      // The whole image in one request.
      this.complete(res, req.payload.length, createHash('sha256').update(req.payload), undefined);
      return;
    }
    const size = blockBytes(block.szx);
    if (block.more && req.payload.length !== size) return this.answer(res, '4.00', 'a block before the last must fill the block size');
    const offset = block.num * size;
    let upload = this.upload;
    if (upload && (upload.peer !== peer || upload.path !== FIRMWARE_PATH || now - upload.lastBlockAt > UPLOAD_IDLE_MS)) {
      // Another client's, or abandoned: a block that does not start an upload cannot continue it.
      if (offset !== 0) return this.answer(res, '4.08', 'no upload in progress: start at block 0');
      upload = undefined;
    }
    if (offset === 0) {
      upload = { peer, path: FIRMWARE_PATH, hash: createHash('sha256'), bytes: 0, lastBlockBytes: 0, lastBlockAt: now };
      this.upload = upload;
    }
    if (!upload) return this.answer(res, '4.08', 'no upload in progress: start at block 0');
    if (offset !== 0 && offset === upload.bytes - upload.lastBlockBytes && req.payload.length === upload.lastBlockBytes) {
      // The client sent the last block again as a new request (its answer was lost): answer it again.
      upload.lastBlockAt = now;
      return this.askForNextBlock(res, block);
    }
    if (offset !== upload.bytes) {
      this.upload = undefined;
      return this.answer(res, '4.08', `expected the block at byte ${upload.bytes}, got one at ${offset}`);
    }
    if (upload.bytes + req.payload.length > MAX_FIRMWARE_BYTES) {
      this.upload = undefined;
      return this.tooLarge(res);
    }
    upload.hash.update(req.payload);
    upload.bytes += req.payload.length;
    upload.lastBlockBytes = req.payload.length;
    upload.lastBlockAt = now;
    if (block.more) return this.askForNextBlock(res, block);
    this.upload = undefined;
    this.complete(res, upload.bytes, upload.hash, block);
  }

  private askForNextBlock(res: OutgoingMessage, block: BlockOption): void {
    res.code = '2.31';
    res.setOption('Block1', encodeBlock({ ...block, more: true }));
    res.end();
  }

  private complete(res: OutgoingMessage, bytes: number, hash: Hash, block: BlockOption | undefined): void {
    const sha256 = hash.digest('hex');
    this.lastUpload = { bytes, sha256, at: this.now() };
    res.code = '2.04';
    if (block) res.setOption('Block1', encodeBlock({ ...block, more: false }));
    res.setOption('Content-Format', CONTENT_FORMAT_TEXT);
    res.end(sha256);
  }

  private tooLarge(res: OutgoingMessage): void {
    res.setOption('Size1', MAX_FIRMWARE_BYTES);
    this.answer(res, '4.13', `firmware images are at most ${MAX_FIRMWARE_BYTES} bytes`);
  }

  private answer(res: OutgoingMessage, code: string, message: string): void {
    res.code = code;
    res.setOption('Content-Format', CONTENT_FORMAT_TEXT);
    res.end(message);
  }
}
