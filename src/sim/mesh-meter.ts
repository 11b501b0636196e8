import { createHash } from 'node:crypto';
import * as coap from 'coap';
import type { Agent, IncomingMessage } from 'coap';
import { formatLinkFormat, type Link } from '../mesh/linkformat.js';
import { uintOption } from '../coap/options.js';
import type { CoapTarget } from '../coap/url.js';

/**
 * How a simulated meter joins the gateway's resource directory (RFC 9176):
 *
 * - registers with `POST /rd?ep=..&lt=..[&base=..]` plus its link metrics and
 *   firmware versions, and the links it serves as the payload;
 * - refreshes with `POST /rd/<id>` at 75-90 % of the lifetime (jittered, so a
 *   fleet registered in one storm does not refresh in one);
 * - registers from scratch when the refresh gets 4.04 (the gateway forgot it);
 * - on 5.03 waits Max-Age (60 s when absent, RFC 7252 section 5.10.5) times a
 *   random factor of 1-1.5 before trying again, so a deferred storm spreads;
 * - on timeouts and other errors backs off exponentially, with jitter.
 */

/** Link metrics and versions a simulated meter reports; fixed per meter name. */
export interface MeterRadioProfile {
  rssi: number;
  snr: number;
  lqi: number;
  hops: number;
  fwComm: string;
  fwMetro: string;
  feeder: string;
}

export type RegistrationEvent =
  | { kind: 'attempt'; meter: string; at: number; refresh: boolean }
  | { kind: 'registered'; meter: string; at: number; location: string; latencyMs: number; attempts: number }
  | { kind: 'refreshed'; meter: string; at: number }
  | { kind: 'deferred'; meter: string; at: number; refresh: boolean; maxAgeSeconds: number; waitMs: number }
  | { kind: 'failed'; meter: string; at: number; refresh: boolean; reason: string; waitMs: number }
  /** A refresh answered 4.04 (or the registration expired unrefreshed): the meter registers again. */
  | { kind: 'lost'; meter: string; at: number };

export interface RegistrationStats {
  /** Meters registered now. */
  registered: number;
  /** 5.03 answers to registrations and refreshes. */
  registrationDeferred: number;
  /** Attempts made again after a deferral or a failure. */
  registrationRetries: number;
  /** Attempts that timed out, failed on the network, or got an error other than 5.03. */
  registrationFailed: number;
}

/** What the meters of one fleet share. */
export interface RegistrarContext {
  gateway: CoapTarget;
  lifetimeSeconds: number;
  /** Fractions of the lifetime between which a refresh is due, e.g. [0.75, 0.9]. */
  refreshAt: readonly [number, number];
  timeoutMs: number;
  signal: AbortSignal;
  stats: RegistrationStats;
  later(delayMs: number, action: () => void): void;
  /** Tracks a request so that stopping can wait for it. */
  track(work: Promise<void>): void;
  emit(event: RegistrationEvent): void;
  /** Logs a warning once per fleet and `topic`: a thousand meters hitting the same problem say it once. */
  warnOnce(topic: string, message: string): void;
}

/** Lifetime simulated meters register with: short enough to see refreshes, long enough to be no load. */
export const DEFAULT_SIM_LIFETIME_SECONDS = 3600;
export const DEFAULT_REFRESH_AT: readonly [number, number] = [0.75, 0.9];
/** RFC 7252 section 5.10.5: Max-Age when the option is absent. */
const DEFAULT_MAX_AGE_SECONDS = 60;
const FIRST_BACKOFF_MS = 2000;
const MAX_BACKOFF_MS = 60_000;
/** setTimeout's longest delay: a refresh due later is simply made earlier. */
const MAX_TIMER_MS = 0x7fff_ffff;
const CONTENT_FORMAT_LINK_FORMAT = 40;

/** `ms` stretched by a random factor in [1, 1 + spread]. */
export function jitter(ms: number, spread = 0.5): number {
  return Math.round(ms * (1 + Math.random() * spread));
}

function seededRandom(seed: Buffer): () => number {
  let state = seed.readUInt32BE(0);
  // mulberry32: small, fast, and good enough to scatter a simulated fleet.
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

function pick<T>(random: () => number, choices: readonly [T, number][]): T {
  let u = random();
  for (const [value, weight] of choices) {
    if (u < weight) return value;
    u -= weight;
  }
  return choices[choices.length - 1]![0];
}

/**
 * Link metrics of a meter in a RPL mesh, derived from its name so they stay
 * the same across restarts: hop counts mostly 1-4 with a tail (about 5 % are
 * beyond 8 hops), RSSI falling with hops with ±7 dB of spread (a few percent
 * below -85 dBm), SNR and LQI following RSSI.
 */
export function meterRadioProfile(name: string): MeterRadioProfile {
  const random = seededRandom(createHash('sha256').update(`radio/${name}`).digest());
  const hops = Math.min(15, 1 + Math.floor(-Math.log(1 - random()) * 2.6));
  // Box-Muller: a normal spread around the path loss of `hops` hops.
  const normal = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  const rssi = Math.round(Math.max(-105, Math.min(-40, -50 - 3.2 * hops + 7 * normal)));
  // Noise and interference about -95 dBm in a town, with a little spread; receivers report at most ~30 dB.
  const snr = Math.round(Math.max(-5, Math.min(30, rssi + 95 + (random() - 0.5) * 4)) * 10) / 10;
  const lqi = Math.round(Math.max(0, Math.min(255, ((snr + 5) / 35) * 255)));
  const fwComm = pick(random, [
    ['2.1.0', 0.2],
    ['2.1.3', 0.5],
    ['2.2.0', 0.3],
  ]);
  const fwMetro = pick(random, [
    ['1.4.2', 0.4],
    ['1.5.0', 0.6],
  ]);
  const feeder = `F${1 + Math.floor(random() * 8)}`;
  return { rssi, snr, lqi, hops, fwComm, fwMetro, feeder };
}

export interface RdAnswer {
  code: string;
  maxAge: number | undefined;
  /** Location-Path segments joined, with a leading '/': '/rd/abc'. */
  location: string | undefined;
}

/**
 * One confirmable request to the resource directory. Like coapCall, but it
 * also hands back Location-Path, which a registration needs to refresh.
 * Rejects on timeout, socket failure or abort.
 */
export function rdRequest(
  agent: Agent,
  target: CoapTarget,
  request: { method: 'POST' | 'DELETE'; pathname: string; query: string; payload?: Buffer; timeoutMs: number; signal: AbortSignal },
): Promise<RdAnswer> {
  return new Promise<RdAnswer>((resolve, reject) => {
    let finished = false;
    const finish = (action: () => void): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      request.signal.removeEventListener('abort', onAbort);
      action();
    };
    const req = coap.request({
      hostname: target.host,
      port: target.port,
      pathname: request.pathname,
      ...(request.query !== '' ? { query: request.query } : {}),
      method: request.method,
      confirmable: true,
      agent,
    });
    const onAbort = (): void => {
      finish(() => reject(new Error('aborted')));
      agent.abort(req);
    };
    const timer = setTimeout(() => {
      finish(() => reject(new Error(`no answer within ${request.timeoutMs} ms`)));
      // Stop the library retransmitting a request nobody waits for any more.
      agent.abort(req);
    }, request.timeoutMs);
    if (request.signal.aborted) {
      onAbort();
      return;
    }
    request.signal.addEventListener('abort', onAbort);
    if (request.payload && request.payload.length > 0) req.setOption('Content-Format', CONTENT_FORMAT_LINK_FORMAT);
    req.on('response', (res: IncomingMessage) => {
      const segments = (res._packet.options ?? [])
        .filter((option) => option.name === 'Location-Path')
        .map((option) => {
          const value: unknown = option.value;
          return Buffer.isBuffer(value) ? value.toString('utf8') : String(value);
        });
      finish(() => resolve({ code: res.code, maxAge: uintOption(res, 'Max-Age'), location: segments.length > 0 ? `/${segments.join('/')}` : undefined }));
    });
    req.on('timeout', () => finish(() => reject(new Error('CoAP retransmissions exhausted'))));
    req.on('error', (err: Error) => finish(() => reject(err)));
    req.end(request.payload);
  });
}

/**
 * A Location the meter accepts (RFC 9176 leaves its form to the directory):
 * up to 8 path segments of URI path characters, no dot segments. Anything
 * else is a malformed answer, and the meter tries again later.
 */
const LOCATION_RE = /^(\/(?!\.\.?(?:\/|$))[A-Za-z0-9._~!$&'()*+,;=:@%-]{1,64}){1,8}$/;

/**
 * The registration of one meter. Holds only what the meter must remember:
 * its Location, when it was registered, and its retry state.
 */
export class MeterRegistrar {
  registered = false;
  location: string | undefined;
  private expiresAt = 0;
  /** When the current registration episode began (first attempt after start or loss). */
  private episodeStartedAt: number | undefined;
  private attempts = 0;
  private failures = 0;
  private busy = false;
  /**
   * Bumped by reboot(): timers and answers of the registration before it
   * belong to a meter that no longer exists and are ignored.
   */
  private generation = 0;
  /** Aborts the registration request in flight (a reboot forgets it). */
  private inFlight: AbortController | undefined;
  /** Called each time the meter becomes registered. */
  onRegistered: () => void = () => undefined;

  constructor(
    readonly name: string,
    private readonly agent: Agent,
    private readonly context: RegistrarContext,
    private readonly profile: MeterRadioProfile,
    /** Its own CoAP server's URI, when it serves. */
    private readonly base: string | undefined,
    private readonly links: readonly Link[],
    /** The firmware versions the meter runs now; the profile's fixed ones when absent. */
    private readonly firmware?: () => { comm: string; metro: string },
  ) {}

  start(delayMs: number): void {
    this.later(delayMs, () => this.register());
  }

  /**
   * Registers again from scratch, as a meter does after a reboot (a firmware
   * update): what the previous registration was doing is forgotten, and the
   * new registration carries the versions the meter runs now.
   */
  reboot(): void {
    if (this.context.signal.aborted) return;
    this.generation += 1;
    // A rebooted meter has forgotten the request it had in flight: it retransmits it no more (a copy
    // arriving late would register the old versions again), and an answer to it is ignored.
    this.inFlight?.abort();
    this.inFlight = undefined;
    this.busy = false;
    this.forget();
    this.register();
  }

  /** context.later, dropped when the meter has rebooted in between. */
  private later(delayMs: number, action: () => void): void {
    const generation = this.generation;
    this.context.later(delayMs, () => {
      if (generation === this.generation) action();
    });
  }

  private registrationQuery(): string {
    const p = this.profile;
    const firmware = this.firmware?.() ?? { comm: p.fwComm, metro: p.fwMetro };
    const parts = [
      `ep=${encodeURIComponent(this.name)}`,
      `lt=${this.context.lifetimeSeconds}`,
      ...(this.base ? [`base=${encodeURIComponent(this.base)}`] : []),
      this.metricsQuery(),
      `fw_comm=${encodeURIComponent(firmware.comm)}`,
      `fw_metro=${encodeURIComponent(firmware.metro)}`,
      `feeder=${p.feeder}`,
    ];
    return parts.join('&');
  }

  /** Current metrics: the meter's own, with the few dB a radio link varies between reports. */
  private metricsQuery(): string {
    const wobble = Math.round((Math.random() - 0.5) * 4);
    const rssi = Math.max(-105, this.profile.rssi + wobble);
    const snr = Math.round(Math.max(-5, Math.min(30, this.profile.snr + wobble)) * 10) / 10;
    return `rssi=${rssi}&snr=${snr}&lqi=${this.profile.lqi}&hops=${this.profile.hops}`;
  }

  private register(): void {
    this.attempt(false);
  }

  private refresh(): void {
    if (!this.registered) return;
    if (Date.now() >= this.expiresAt) {
      // Retries ran past the lifetime: the gateway has dropped the registration, so start over.
      this.lose(Date.now());
      this.register();
      return;
    }
    this.attempt(true);
  }

  private attempt(refresh: boolean): void {
    if (this.busy || this.context.signal.aborted) return;
    this.busy = true;
    const now = Date.now();
    if (!refresh) this.episodeStartedAt ??= now;
    if (this.attempts > 0) this.context.stats.registrationRetries += 1;
    this.attempts += 1;
    this.context.emit({ kind: 'attempt', meter: this.name, at: now, refresh });
    const request = refresh
      ? { method: 'POST' as const, pathname: this.location ?? '', query: `lt=${this.context.lifetimeSeconds}&${this.metricsQuery()}` }
      : {
          method: 'POST' as const,
          pathname: '/rd',
          query: this.registrationQuery(),
          ...(this.links.length > 0 ? { payload: Buffer.from(formatLinkFormat(this.links)) } : {}),
        };
    const generation = this.generation;
    const inFlight = new AbortController();
    this.inFlight = inFlight;
    const stop = (): void => inFlight.abort();
    this.context.signal.addEventListener('abort', stop, { once: true });
    // Not busy any more before the answer is acted on: acting on it may start the next attempt.
    const work = rdRequest(this.agent, this.context.gateway, { ...request, timeoutMs: this.context.timeoutMs, signal: inFlight.signal })
      .finally(() => this.context.signal.removeEventListener('abort', stop))
      .then(
      (answer) => {
        if (generation !== this.generation) return;
        this.busy = false;
        this.answered(refresh, answer);
      },
      (err: Error) => {
        if (generation !== this.generation) return;
        this.busy = false;
        this.failed(refresh, err.message);
      },
    );
    this.context.track(work);
  }

  private answered(refresh: boolean, answer: RdAnswer): void {
    if (this.context.signal.aborted) return;
    const now = Date.now();
    if (answer.code === '5.03') {
      this.context.stats.registrationDeferred += 1;
      const maxAgeSeconds = answer.maxAge ?? DEFAULT_MAX_AGE_SECONDS;
      const waitMs = jitter(maxAgeSeconds * 1000);
      this.context.emit({ kind: 'deferred', meter: this.name, at: now, refresh, maxAgeSeconds, waitMs });
      this.retry(refresh, waitMs);
      return;
    }
    if (refresh) {
      if (answer.code === '2.04') {
        this.succeeded(now, this.location ?? '');
        this.context.emit({ kind: 'refreshed', meter: this.name, at: now });
        return;
      }
      // 4.04: the gateway no longer knows this registration (expired, deleted, or its registry was
      // reset): register again at once. Any other answer: register again after a backoff, since
      // refreshing what the gateway will not refresh cannot succeed.
      this.lose(now);
      if (answer.code === '4.04') this.register();
      else this.failed(false, `refresh answered ${answer.code}`);
      return;
    }
    if ((answer.code === '2.01' || answer.code === '2.04') && answer.location !== undefined && LOCATION_RE.test(answer.location)) {
      const latencyMs = now - (this.episodeStartedAt ?? now);
      const attempts = this.attempts;
      this.succeeded(now, answer.location);
      this.context.emit({ kind: 'registered', meter: this.name, at: now, location: answer.location, latencyMs, attempts });
      this.onRegistered();
      return;
    }
    if (answer.code === '4.04') {
      // The directory is not up yet (the gateway loads its registry first), or the gateway has none.
      if (this.failures >= 2) {
        this.context.warnOnce(
          'no-rd',
          `sim-meters: ${this.context.gateway.host} answers 4.04 to /rd: readings wait until the meters are registered (a gateway without a resource directory needs meters started with --no-register)`,
        );
      }
    } else {
      this.context.warnOnce(`rd-${answer.code}`, `sim-meters: registration answered ${answer.code} (${this.name} and perhaps others); retrying with backoff`);
    }
    this.failed(false, `registration answered ${answer.code}${answer.code === '2.01' ? ' without a usable Location-Path' : ''}`);
  }

  private succeeded(now: number, location: string): void {
    if (!this.registered) this.context.stats.registered += 1;
    this.registered = true;
    this.location = location;
    this.expiresAt = now + this.context.lifetimeSeconds * 1000;
    this.episodeStartedAt = undefined;
    this.attempts = 0;
    this.failures = 0;
    const [from, to] = this.context.refreshAt;
    const fraction = from + Math.random() * (to - from);
    this.later(Math.min(MAX_TIMER_MS, Math.round(this.context.lifetimeSeconds * 1000 * fraction)), () => this.refresh());
  }

  private lose(now: number): void {
    this.forget();
    this.context.emit({ kind: 'lost', meter: this.name, at: now });
  }

  private forget(): void {
    if (this.registered) this.context.stats.registered -= 1;
    this.registered = false;
    this.location = undefined;
    this.episodeStartedAt = undefined;
    this.attempts = 0;
    this.failures = 0;
  }

  private failed(refresh: boolean, reason: string): void {
    if (this.context.signal.aborted) return;
    this.context.stats.registrationFailed += 1;
    this.failures += 1;
    const waitMs = jitter(Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (this.failures - 1)));
    this.context.emit({ kind: 'failed', meter: this.name, at: Date.now(), refresh, reason, waitMs });
    this.retry(refresh, waitMs);
  }

  private retry(refresh: boolean, waitMs: number): void {
    this.later(waitMs, () => (refresh ? this.refresh() : this.register()));
  }
}
