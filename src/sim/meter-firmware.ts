import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as coap from 'coap';
import type { Agent, IncomingMessage } from 'coap';
import { cborDecode } from '../coap/cbor.js';
import { blockBytes, blockSzx, decodeBlock, encodeBlock, type BlockOption } from '../coap/client/options.js';
import { uintOption } from '../coap/options.js';
import type { CoapTarget } from '../coap/url.js';
import type { FirmwarePair } from '../firmware/compatibility.js';
import type { FirmwareOffer, MeterFirmwareReport } from '../firmware/rollout-types.js';
import { jitter } from './mesh-meter.js';
import { MAX_FIRMWARE_BYTES, type MeterFirmwareService } from './meter-server.js';

/**
 * The firmware of one simulated meter and its side of the update protocol
 * of issue 9 (the pull model: the gateway offers, the meter downloads):
 *
 *   GET  /fw/state    its model, running versions and update state
 *   POST /fw/update   an offer {path, target, version, sha256, size}:
 *                     2.04 accepted (or nothing to do, or already working
 *                     on that very image), 4.00 malformed, 4.13 larger than
 *                     its flash slot, 4.09 busy with another image
 *
 * An accepted offer is downloaded from the gateway the meter registers with,
 * from the meter's own socket (its coap Agent), one Block2 block at a time
 * in `blockSize`: each block request has a deadline (inside which the
 * library retransmits the confirmable request) and is asked again after a
 * timeout, with exponential backoff and jitter; 5.03 waits Max-Age (60 s
 * when absent) with jitter and does not count as a failure; 4.04 ends in
 * 'failed' IMAGE_GONE, any other 4.xx or `maxFailures` failures in a row in
 * 'failed' DOWNLOAD_FAILED. The bytes held survive a failure: the same
 * sha256 offered again resumes after them. A block whose ETag differs from
 * the one the held bytes came with means the image changed on the gateway:
 * the download starts again from byte 0. A complete image whose size or
 * SHA-256 differs from the offer is discarded ('failed' HASH_MISMATCH);
 * a good one is installed: 'updating' for `installMs`, then the target runs
 * the new version, the state is 'idle' and the meter reboots (`reboot`: the
 * fleet makes it register again, with the new versions).
 *
 * While 'updating' and while it re-registers, /fw/state answers as usual:
 * 'updating' with the old versions during the install, 'idle' with the new
 * ones from the moment it is done (a real meter would be silent for its
 * reboot; a rollout has to cope with both).
 *
 * For tests and proofs it keeps every offer (`offers`), every pair of
 * versions it has run (`ranPairs`), counters (`stats`), and emits 'state'
 * on each state change, 'offer', 'block' and 'reboot', so a test awaits
 * events instead of sleeping.
 */

export type FirmwareUpdateState = MeterFirmwareReport['state'];
export type FirmwareFailure = 'HASH_MISMATCH' | 'DOWNLOAD_FAILED' | 'IMAGE_GONE';

export interface FirmwareDownloadPolicy {
  /** Deadline of one block request, the library's CoAP retransmissions included (default 15 s: two retransmissions). */
  requestTimeoutMs?: number;
  /** Failed block requests in a row (timeouts, 5.xx other than 5.03, malformed answers) before 'failed' DOWNLOAD_FAILED (default 5). */
  maxFailures?: number;
  /** Wait after the first failure, doubled after each further one, jittered (default 1 s). */
  firstBackoffMs?: number;
  /** Longest wait between two attempts (default 30 s). */
  maxBackoffMs?: number;
}

export interface SimulatedMeterFirmwareOptions {
  /** The meter's endpoint name, for messages. */
  name: string;
  model: string;
  comm: string;
  metro: string;
  /** The meter's coap Agent: downloads leave from its one socket, like its other requests. */
  agent: Agent;
  /** The gateway it registers with; images come from there. */
  gateway: CoapTarget;
  /** Block2 size it asks for, 16..1024, a power of two (default 256). */
  blockSize?: number;
  /** How long it stays 'updating' before it runs the new version (default 200 ms). */
  installMs?: number;
  download?: FirmwareDownloadPolicy;
  /** Stops downloads and installs (the fleet's stop). */
  signal?: AbortSignal;
  /** Hands each download to its owner, so that stopping can wait for it. */
  track?: (work: Promise<void>) => void;
  /** Called after an install: the meter "reboots" (registers again with its new versions). */
  reboot?: () => void;
  now?: () => number;
}

/** One offer as the meter received it; `offer` is absent when it was malformed. */
export interface FirmwareOfferRecord {
  at: number;
  offer?: FirmwareOffer;
  accepted: boolean;
  /** The answer: 2.04, 4.00, 4.09 or 4.13. */
  code: string;
  /** Why it was refused, or what an accepted offer did: 'download', 'resume', 'already-running', 'in-progress'. */
  note: string;
}

export interface FirmwareBlockEvent {
  /** Block number in the block size the gateway answered with. */
  num: number;
  /** Byte offset of the block in the image. */
  offset: number;
  bytes: number;
  /** Bytes of the image held after it. */
  received: number;
  size: number;
}

export interface MeterFirmwareEvents {
  state: [report: MeterFirmwareReport];
  offer: [record: FirmwareOfferRecord];
  block: [block: FirmwareBlockEvent];
  reboot: [versions: FirmwarePair];
}

export interface MeterFirmwareStats {
  /** Downloads started or resumed by an accepted offer (a meter's own retries within one are not counted). */
  downloads: number;
  /** Block requests sent, retries included. */
  blockRequests: number;
  /** Blocks received and kept. */
  blocksFetched: number;
  /** 5.03 answers waited out. */
  deferrals: number;
  /** Downloads started again from byte 0 because the ETag changed. */
  restarts: number;
  installs: number;
}

const DEFAULT_BLOCK_SIZE = 256;
const DEFAULT_INSTALL_MS = 200;
const DEFAULT_REQUEST_TIMEOUT_MS = 15_000;
const DEFAULT_MAX_FAILURES = 5;
const DEFAULT_FIRST_BACKOFF_MS = 1000;
const DEFAULT_MAX_BACKOFF_MS = 30_000;
/** Restarts from byte 0 (the ETag changed) one download may make before it gives up. */
const MAX_RESTARTS = 3;
/** RFC 7252 section 5.10.5: Max-Age when the option is absent. */
const DEFAULT_MAX_AGE_SECONDS = 60;
/** Versions are short text in the registration query (fw_comm=...): the registry takes at most this. */
const MAX_VERSION_LENGTH = 64;
const MAX_PATH_LENGTH = 255;
const SHA256_HEX = /^[0-9a-fA-F]{64}$/;

/** The image the meter holds bytes of: what survives a failed download, so the same offer resumes. */
interface HeldImage {
  sha256: string;
  size: number;
  /** The ETag the held bytes came with; a block with another one means the image changed. */
  etag: Buffer | undefined;
  chunks: Buffer[];
  bytes: number;
}

type OfferCheck = { ok: true; offer: FirmwareOffer } | { ok: false; code: '4.00' | '4.13'; message: string };

/** Parses and checks an offer's CBOR payload; the first problem found is the answer. Keys it does not know are ignored. */
export function parseFirmwareOffer(payload: Buffer): OfferCheck {
  let value: unknown;
  try {
    value = cborDecode(payload);
  } catch {
    return { ok: false, code: '4.00', message: 'the offer is not CBOR' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value) || Buffer.isBuffer(value) || value instanceof Map || value instanceof Uint8Array) {
    return { ok: false, code: '4.00', message: 'the offer must be a CBOR map' };
  }
  const { path, target, version, sha256, size } = value as Record<string, unknown>;
  if (typeof path !== 'string' || !path.startsWith('/fw/') || path.length > MAX_PATH_LENGTH || !isImagePath(path)) {
    return { ok: false, code: '4.00', message: 'path must be /fw/<image id>' };
  }
  if (target !== 'comm' && target !== 'metro') return { ok: false, code: '4.00', message: "target must be 'comm' or 'metro'" };
  if (typeof version !== 'string' || version.length === 0 || version.length > MAX_VERSION_LENGTH || !/^[\x21-\x7e]+$/.test(version)) {
    return { ok: false, code: '4.00', message: 'version must be printable text' };
  }
  if (typeof sha256 !== 'string' || !SHA256_HEX.test(sha256)) return { ok: false, code: '4.00', message: 'sha256 must be 64 hex digits' };
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0) return { ok: false, code: '4.00', message: 'size must be a positive integer' };
  if (size > MAX_FIRMWARE_BYTES) return { ok: false, code: '4.13', message: `images are at most ${MAX_FIRMWARE_BYTES} bytes` };
  return { ok: true, offer: { path, target, version, sha256: sha256.toLowerCase(), size } };
}

/** '/fw/a/b': non-empty segments, no dot segments, valid percent-encoding, nothing but a path. */
function isImagePath(path: string): boolean {
  if (/[?#\s]/.test(path)) return false;
  const segments = path.slice('/fw/'.length).split('/');
  return segments.every((segment) => {
    if (segment === '' || segment === '.' || segment === '..') return false;
    try {
      decodeURIComponent(segment);
      return true;
    } catch {
      return false;
    }
  });
}

export class SimulatedMeterFirmware extends EventEmitter<MeterFirmwareEvents> implements MeterFirmwareService {
  readonly model: string;
  comm: string;
  metro: string;
  private updateState: FirmwareUpdateState = 'idle';
  /** The offer being worked on, or the last one that failed. */
  private image: FirmwareOffer | undefined;
  private result: FirmwareFailure | undefined;
  private held: HeldImage | undefined;
  private szx: number;
  private readonly installMs: number;
  private readonly policy: Required<FirmwareDownloadPolicy>;
  private readonly signal: AbortSignal;
  private readonly now: () => number;
  /** Every offer received, in order. */
  readonly offers: FirmwareOfferRecord[] = [];
  /** Every pair of versions the meter has run, the one it started with first. */
  readonly ranPairs: FirmwarePair[] = [];
  readonly stats: MeterFirmwareStats = { downloads: 0, blockRequests: 0, blocksFetched: 0, deferrals: 0, restarts: 0, installs: 0 };

  constructor(private readonly options: SimulatedMeterFirmwareOptions) {
    super();
    this.model = options.model;
    this.comm = options.comm;
    this.metro = options.metro;
    this.ranPairs.push({ comm: this.comm, metro: this.metro });
    this.szx = blockSzx(options.blockSize ?? DEFAULT_BLOCK_SIZE);
    this.installMs = options.installMs ?? DEFAULT_INSTALL_MS;
    this.policy = {
      requestTimeoutMs: options.download?.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      maxFailures: options.download?.maxFailures ?? DEFAULT_MAX_FAILURES,
      firstBackoffMs: options.download?.firstBackoffMs ?? DEFAULT_FIRST_BACKOFF_MS,
      maxBackoffMs: options.download?.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS,
    };
    this.signal = options.signal ?? new AbortController().signal;
    this.now = options.now ?? Date.now;
  }

  /** The running versions. */
  versions(): FirmwarePair {
    return { comm: this.comm, metro: this.metro };
  }

  /** GET /fw/state: what the meter says of its firmware. */
  state(): MeterFirmwareReport {
    const report: MeterFirmwareReport = { model: this.model, comm: this.comm, metro: this.metro, state: this.updateState };
    if (this.image) {
      report.image = { target: this.image.target, version: this.image.version, sha256: this.image.sha256 };
      report.received = this.held?.sha256 === this.image.sha256 ? this.held.bytes : 0;
      report.size = this.image.size;
    }
    if (this.updateState === 'failed' && this.result) report.result = this.result;
    return report;
  }

  /** POST /fw/update. */
  offer(payload: Buffer): { code: string; message?: string } {
    const at = this.now();
    const checked = parseFirmwareOffer(payload);
    if (!checked.ok) {
      this.record({ at, accepted: false, code: checked.code, note: checked.message });
      return { code: checked.code, message: checked.message };
    }
    const offer = checked.offer;
    if ((offer.target === 'comm' ? this.comm : this.metro) === offer.version) {
      this.record({ at, offer, accepted: true, code: '2.04', note: 'already-running' });
      return { code: '2.04' };
    }
    if (this.updateState === 'downloading' || this.updateState === 'updating') {
      if (this.image?.sha256 === offer.sha256) {
        this.record({ at, offer, accepted: true, code: '2.04', note: 'in-progress' });
        return { code: '2.04' };
      }
      const message = `busy with ${this.image?.target ?? '?'} ${this.image?.version ?? '?'}`;
      this.record({ at, offer, accepted: false, code: '4.09', note: message });
      return { code: '4.09', message };
    }
    // Idle or failed: download, after the bytes held when they are of this very image.
    const resume = this.held !== undefined && this.held.sha256 === offer.sha256 && this.held.size === offer.size && this.held.bytes > 0;
    if (!resume) this.held = { sha256: offer.sha256, size: offer.size, etag: undefined, chunks: [], bytes: 0 };
    this.image = offer;
    this.result = undefined;
    this.stats.downloads += 1;
    this.record({ at, offer, accepted: true, code: '2.04', note: resume ? 'resume' : 'download' });
    this.enter('downloading');
    const work = this.download(offer);
    this.options.track?.(work);
    return { code: '2.04' };
  }

  private record(entry: FirmwareOfferRecord): void {
    this.offers.push(entry);
    this.emit('offer', entry);
  }

  private enter(state: FirmwareUpdateState): void {
    this.updateState = state;
    this.emit('state', this.state());
  }

  private fail(result: FirmwareFailure): void {
    this.result = result;
    this.enter('failed');
  }

  /** Fetches the rest of `offer` block by block, then checks and installs it. Never rejects. */
  private async download(offer: FirmwareOffer): Promise<void> {
    let failures = 0;
    const restartsBefore = this.stats.restarts;
    // A failed attempt counts, then waits; true when the download must give up.
    const failed = async (): Promise<boolean> => {
      failures += 1;
      if (failures >= this.policy.maxFailures) {
        this.fail('DOWNLOAD_FAILED');
        return true;
      }
      await pause(jitter(Math.min(this.policy.maxBackoffMs, this.policy.firstBackoffMs * 2 ** (failures - 1))), this.signal);
      return false;
    };
    try {
      for (;;) {
        if (this.signal.aborted) return;
        const held = this.held;
        if (!held || held.sha256 !== offer.sha256) return;
        if (held.bytes >= offer.size) break;
        const size = blockBytes(this.szx);
        if (held.bytes % size !== 0) {
          // Blocks only ever get smaller (take()), so held bytes end on a block; if not, they cannot be trusted.
          this.discardHeld(held);
          continue;
        }
        const block = { num: held.bytes / size, more: false, szx: this.szx };
        this.stats.blockRequests += 1;
        let answer: BlockAnswer;
        try {
          answer = await requestBlock(this.options.agent, this.options.gateway, offer.path, block, this.policy.requestTimeoutMs, this.signal);
        } catch {
          if (this.signal.aborted || (await failed())) return;
          continue;
        }
        if (answer.code === '5.03') {
          // The gateway has control traffic to send first: come back after Max-Age, spread out.
          this.stats.deferrals += 1;
          await pause(jitter((answer.maxAge ?? DEFAULT_MAX_AGE_SECONDS) * 1000), this.signal);
          continue;
        }
        if (answer.code === '4.04') return this.fail('IMAGE_GONE');
        if (answer.code.startsWith('4.')) return this.fail('DOWNLOAD_FAILED');
        if (answer.code !== '2.05') {
          if (await failed()) return;
          continue;
        }
        const taken = this.take(held, offer, block, answer);
        if (taken === 'bad') {
          if (await failed()) return;
          continue;
        }
        if (taken === 'restart') {
          // A gateway whose ETag keeps changing would have the meter start over forever.
          if (this.stats.restarts - restartsBefore > MAX_RESTARTS) return this.fail('DOWNLOAD_FAILED');
          continue;
        }
        failures = 0;
        if (taken === 'last' || taken === 'too-long') break;
      }
      await this.finish(offer);
    } catch {
      // A bug of ours must not take the simulator down; the meter gives the download up.
      if (!this.signal.aborted) this.fail('DOWNLOAD_FAILED');
    }
  }

  /**
   * Keeps the block of a 2.05 answer. 'more': ask for the next one; 'last':
   * the gateway has no more; 'too-long': more bytes than offered (the image
   * cannot match); 'restart': the ETag changed and the held bytes are gone;
   * 'bad': an answer that does not fit (counted as a failure).
   */
  private take(held: HeldImage, offer: FirmwareOffer, asked: BlockOption, answer: BlockAnswer): 'more' | 'last' | 'too-long' | 'restart' | 'bad' {
    if (held.etag && answer.etag && !held.etag.equals(answer.etag)) {
      // Another image under this path now: what is held belongs to the old one.
      this.stats.restarts += 1;
      this.discardHeld(held);
      if (answer.block2 !== undefined && answer.block2.num !== 0) return 'restart';
    }
    if (answer.block2 === undefined) {
      // The whole image in one answer (a gateway that ignores Block2): it replaces what is held.
      held.chunks = [answer.payload];
      held.bytes = answer.payload.length;
      held.etag = answer.etag;
      this.stats.blocksFetched += 1;
      this.emit('block', { num: 0, offset: 0, bytes: answer.payload.length, received: held.bytes, size: offer.size });
      return held.bytes > offer.size ? 'too-long' : 'last';
    }
    const answered = answer.block2;
    // RFC 7959 section 2.4: the server may answer in a smaller block, never in a larger one.
    if (answered.szx > asked.szx) return 'bad';
    const size = blockBytes(answered.szx);
    const offset = answered.num * size;
    if (offset !== held.bytes) return 'bad';
    if (answered.more && answer.payload.length !== size) return 'bad';
    if (!answered.more && answer.payload.length > size) return 'bad';
    held.etag ??= answer.etag;
    held.chunks.push(answer.payload);
    held.bytes += answer.payload.length;
    this.szx = answered.szx;
    this.stats.blocksFetched += 1;
    this.emit('block', { num: answered.num, offset, bytes: answer.payload.length, received: held.bytes, size: offer.size });
    if (held.bytes > offer.size) return 'too-long';
    return answered.more ? 'more' : 'last';
  }

  private discardHeld(held: HeldImage): void {
    held.chunks = [];
    held.bytes = 0;
    held.etag = undefined;
  }

  /** The whole image is there: checked against the offer, then installed. */
  private async finish(offer: FirmwareOffer): Promise<void> {
    const held = this.held;
    if (!held) return;
    const bytes = Buffer.concat(held.chunks);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    if (bytes.length !== offer.size || sha256 !== offer.sha256) {
      this.held = undefined;
      this.fail('HASH_MISMATCH');
      return;
    }
    this.enter('updating');
    await pause(this.installMs, this.signal);
    if (this.signal.aborted) return;
    if (offer.target === 'comm') this.comm = offer.version;
    else this.metro = offer.version;
    this.held = undefined;
    this.image = undefined;
    this.result = undefined;
    this.stats.installs += 1;
    this.ranPairs.push(this.versions());
    this.enter('idle');
    this.emit('reboot', this.versions());
    this.options.reboot?.();
  }
}

interface BlockAnswer {
  code: string;
  payload: Buffer;
  /** The answer's Block2, undefined when it had none; a malformed one makes requestBlock reject. */
  block2: BlockOption | undefined;
  etag: Buffer | undefined;
  maxAge: number | undefined;
}

/** What the tap below keeps of a block request's answer, as the bytes that came. */
interface AnswerOptions {
  block2?: Buffer;
  etag?: Buffer;
}

/** Per agent: the tokens of block requests whose answers' Block2 the agent must not act on. */
const singleBlockRequests = new WeakMap<Agent, Map<string, AnswerOptions>>();

/**
 * The coap library's Agent follows Block2 by itself: an answer with the M
 * bit set makes it ask for the next block at once, until the last, and it
 * hands over only the whole body. A meter that must time each block, keep
 * what it has and resume needs one block per request, so for the requests
 * registered here the Block2 option is taken off the answer before the
 * agent sees it (and given to the request instead): the agent then treats
 * it as a plain answer. The ETag is kept here too: the library hands it on
 * as UTF-8 text, which mangles binary ETags. Installed once per agent.
 */
function blockRequestsOf(agent: Agent): Map<string, AnswerOptions> {
  let requests = singleBlockRequests.get(agent);
  if (requests) return requests;
  const pending = new Map<string, AnswerOptions>();
  requests = pending;
  singleBlockRequests.set(agent, pending);
  const handle = agent._handle.bind(agent);
  agent._handle = (packet, rsinfo, outSocket) => {
    const slot = packet.token && packet.token.length > 0 ? pending.get(packet.token.toString('hex')) : undefined;
    if (slot && packet.options) {
      const block2 = packet.options.find((option) => option.name === 'Block2');
      if (block2) {
        slot.block2 = block2.value;
        packet.options = packet.options.filter((option) => option !== block2);
      }
      const etag = packet.options.find((option) => option.name === 'ETag')?.value;
      if (Buffer.isBuffer(etag)) slot.etag = Buffer.from(etag);
    }
    handle(packet, rsinfo, outSocket);
  };
  return pending;
}

/** Block2 option bytes; block 0 of 16-byte blocks is sent as one zero byte, which the library's server reads (it misreads an empty value). */
function block2Value(block: BlockOption): Buffer {
  const value = encodeBlock(block);
  return value.length > 0 ? value : Buffer.of(0);
}

/** One confirmable GET of one block of `path` on the gateway. Rejects on timeout, socket failure, malformed Block2 or abort. */
function requestBlock(agent: Agent, gateway: CoapTarget, path: string, block: BlockOption, timeoutMs: number, signal: AbortSignal): Promise<BlockAnswer> {
  const requests = blockRequestsOf(agent);
  const token = randomBytes(8);
  const key = token.toString('hex');
  const slot: AnswerOptions = {};
  requests.set(key, slot);
  return new Promise<BlockAnswer>((resolve, reject) => {
    let finished = false;
    const finish = (action: () => void): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      requests.delete(key);
      signal.removeEventListener('abort', onAbort);
      action();
    };
    const req = coap.request({ hostname: gateway.host, port: gateway.port, method: 'GET', confirmable: true, token, agent });
    // Uri-Path carries each segment percent-decoded (RFC 7252 section 6.4), as libcoap's client sends it.
    req.setOption(
      'Uri-Path',
      path
        .split('/')
        .filter((segment) => segment !== '')
        .map((segment) => Buffer.from(decodeURIComponent(segment), 'utf8')),
    );
    req.setOption('Block2', block2Value(block));
    const onAbort = (): void => {
      finish(() => reject(new Error('aborted')));
      agent.abort(req);
    };
    const timer = setTimeout(() => {
      finish(() => reject(new Error(`no answer within ${timeoutMs} ms`)));
      // Stop the library retransmitting a request nobody waits for any more.
      agent.abort(req);
    }, timeoutMs);
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener('abort', onAbort);
    req.on('response', (res: IncomingMessage) => {
      const block2 = slot.block2 === undefined ? undefined : decodeBlock(slot.block2);
      if (slot.block2 !== undefined && block2 === undefined) {
        finish(() => reject(new Error('malformed Block2 in the answer')));
        return;
      }
      finish(() =>
        resolve({
          code: res.code,
          payload: res.payload,
          block2,
          etag: slot.etag,
          maxAge: uintOption(res, 'Max-Age'),
        }),
      );
    });
    req.on('timeout', () => finish(() => reject(new Error('CoAP retransmissions exhausted'))));
    req.on('error', (err: Error) => finish(() => reject(err)));
    req.end();
  });
}

/** Waits `ms`, or less when `signal` aborts (never rejects). */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done);
  });
}
