import { createSocket, type Socket } from 'node:dgram';
import { setMaxListeners } from 'node:events';
import { isIP } from 'node:net';
import * as coap from 'coap';
import type { Agent } from 'coap';
import { coapCall, CoapRequestError } from '../coap/request.js';
import { CONTENT_FORMAT, encodeReading, readingKey, type MeterReading } from '../coap/reading.js';
import { DLMS_PATH, READINGS_PATH } from '../coap/endpoint.js';
import { dlmsRecordKey } from '../hes/records.js';
import { SimulatedCosemMeter } from './cosem-meter.js';
import { parseCipheredApdu } from '../dlms/security.js';
import { DEFAULT_SIM_KEY_SEED, simMeterKeys } from './meter-keys.js';
import { formatCoapUrl, parseCoapUrl } from '../coap/url.js';
import { MAX_LIFETIME_SECONDS, MIN_LIFETIME_SECONDS } from '../mesh/registry.js';
import { JsonLinesRecorder } from './recorder.js';
import type { SimLog } from './log.js';
import {
  DEFAULT_SIM_LIFETIME_SECONDS,
  DEFAULT_REFRESH_AT,
  jitter,
  MeterRegistrar,
  meterRadioProfile,
  type RegistrarContext,
  type RegistrationEvent,
  type RegistrationStats,
} from './mesh-meter.js';
import { MeterCoapServer } from './meter-server.js';
import { SimulatedMeterFirmware, type FirmwareDownloadPolicy } from './meter-firmware.js';
import { faultsFor, type FaultAssignment, type RelayOptions, type RelayStats, type SimulatedRelay } from './relay.js';

export interface MeterFleetOptions {
  count: number;
  /** The gateway's mesh endpoint, e.g. coap://[::1]:5683 */
  gateway: string;
  /** Milliseconds between two readings of one meter. */
  intervalMs: number;
  /** JSON-lines file receiving one line per reading the gateway acknowledged. */
  recordFile?: string;
  /** Endpoint name prefix; meter i is `${prefix}${i}` zero-padded to six digits. */
  prefix?: string;
  log?: SimLog;
  summaryEverySeconds?: number;
  /** Readings a meter keeps while the gateway does not acknowledge; the oldest is dropped past this. */
  storedReadingsLimit?: number;
  /**
   * 'plain': CBOR readings to /readings. 'dlms': each reading as a
   * data-notification, glo-ciphered with the meter's keys (derived from
   * `keySeed`, as the HES simulator's key management derives them), to /dlms.
   */
  protocol?: 'plain' | 'dlms';
  keySeed?: string;
  /** Generate and push readings (default true); false: the meters only register and serve. */
  readings?: boolean;
  /**
   * Register with the gateway's resource directory (RFC 9176) and keep the
   * registration fresh; readings wait until the meter is registered, as a
   * real meter joins before it reports. Default false (`sim meters` and the
   * appliance turn it on).
   */
  register?: boolean;
  /** Registration lifetime (`lt`), 60..2^32-1 seconds; default 3600. */
  lifetimeSeconds?: number;
  /** Fractions of the lifetime between which a refresh is due; default [0.75, 0.9]. */
  refreshAt?: readonly [number, number];
  /** Serve /status (observable), /lp (Block2), /fw (Block1), /relay on each meter's socket. Default false. */
  serve?: boolean;
  /** Address the meters' sockets bind to; by default loopback of the gateway's family when the gateway is on loopback, else any. */
  bind?: string;
  /** Milliseconds between periodic /status notifications; default 30 000. */
  statusIntervalMs?: number;
  /** First readings and registrations are spread over this many ms; default min(intervalMs, 2000). 0: all at once. */
  startSpreadMs?: number;
  /**
   * Relay faults per meter (relay.ts; `--faults weld:ID,...`, see parseFaultSpec).
   * A DLMS meter that serves answers POST /dlms (the relay's objects among
   * others); `offline` meters answer nothing.
   */
  faults?: readonly FaultAssignment[];
  /** Fraction (0..1) of requests to the meters' servers dropped, and of answers dropped (`--loss`). */
  lossRate?: number;
  /**
   * Fraction (0..1) of datagrams lost on each meter's radio link, both ways:
   * every datagram its socket sends (its own requests, its answers, ACKs)
   * and every one sent to it is dropped with this probability. Unlike
   * `lossRate` it also hits what the meter asks of the gateway (readings,
   * registrations, firmware downloads) and the gateway's answers to it.
   */
  linkLossRate?: number;
  /**
   * The model and running firmware of meter `name` (the index-th, from 0),
   * for serving meters (GET /fw/state, POST /fw/update). Default: model
   * AMX-100 and the versions of meterRadioProfile(name).
   */
  firmware?: (name: string, index: number) => { model: string; comm: string; metro: string };
  /** Block2 size a meter downloads firmware in (16..1024, default 256). */
  firmwareBlockSize?: number;
  /** How long a meter stays 'updating' before it runs a downloaded image (default 200 ms). */
  firmwareInstallMs?: number;
  /** Timeouts, retries and backoff of firmware downloads (see meter-firmware.ts). */
  firmwareDownload?: FirmwareDownloadPolicy;
  /** Options of every meter's relay (e.g. rechargeMs, controlMode); faults come from `faults`. */
  relay?: Omit<RelayOptions, 'faults'>;
  /** [0, 1) random source of the loss (`lossRate` and `linkLossRate`); Math.random by default. */
  random?: () => number;
}

/** The model a simulated meter reports when `firmware` does not say. */
export const DEFAULT_SIM_METER_MODEL = 'AMX-100';

/** One meter's relay as the simulator sees it (for tests: actuation counts prove nothing moved twice). */
export interface SimRelayInfo {
  name: string;
  controlState: number;
  loadVoltage: number;
  supplyOn: boolean;
  tampered: boolean;
  faults: string[];
  stats: RelayStats;
}

export interface MeterFleetStats extends RegistrationStats {
  generated: number;
  acknowledged: number;
  deferred: number;
  failed: number;
  refused: number;
  droppedOldest: number;
  /** Datagrams the meters' sockets did not send (`linkLossRate`). */
  linkDroppedSent: number;
  /** Datagrams that reached the meters' sockets and were not delivered (`linkLossRate`). */
  linkDroppedReceived: number;
}

/** One simulated meter as seen from outside: where it is and whether it is registered. */
export interface SimMeterInfo {
  name: string;
  address: { address: string; port: number };
  /** Its CoAP server (coap://[addr]:port), when serving. */
  base: string | undefined;
  registered: boolean;
  /** The registration's Location at the gateway, e.g. /rd/Ab3x. */
  location: string | undefined;
  server: MeterCoapServer | undefined;
}

const MAX_BACKOFF_MS = 60_000;
const CONTENT_FORMAT_OCTET_STREAM = 42;
const REQUEST_TIMEOUT_MS = 30_000;
const DEFAULT_STATUS_INTERVAL_MS = 30_000;

/** Where meters bind when not told: next to a gateway on loopback, else on every address of its family. */
export function defaultMeterBind(gatewayHost: string): string {
  const family = isIP(gatewayHost);
  if (family === 6) return gatewayHost === '::1' ? '::1' : '::';
  if (family === 4) return gatewayHost.startsWith('127.') ? '127.0.0.1' : '0.0.0.0';
  // A host name: IPv4 unless it looks like an IPv6 literal, as the agents have always done.
  return gatewayHost.includes(':') ? '::' : '0.0.0.0';
}

function isUnspecified(address: string): boolean {
  return address === '::' || address === '0.0.0.0';
}

function bindSocket(bind: string): Promise<Socket> {
  const socket = createSocket({ type: isIP(bind) === 6 ? 'udp6' : 'udp4' });
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, bind, () => {
      socket.off('error', reject);
      resolve(socket);
    });
  });
}

class SimulatedMeter {
  readonly backlog: MeterReading[] = [];
  private sequence = 0;
  private energyWh = Math.floor(Math.random() * 10_000_000);
  private sending = false;
  private failures = 0;
  private retryAt = 0;

  /** The frame each DLMS reading went out as: a retry resends the same bytes, so the gateway sees a repeat, not a new record. */
  private readonly frames = new WeakMap<MeterReading, { frame: Buffer; key: string }>();

  registrar: MeterRegistrar | undefined;
  server: MeterCoapServer | undefined;
  /** Its firmware and update state machine (serving meters). */
  firmware: SimulatedMeterFirmware | undefined;
  /** Answers nothing while true (the `offline` fault, or setOffline). */
  offline = false;

  constructor(
    readonly name: string,
    /** The meter's one UDP socket: its requests leave from it and its server answers on it. */
    readonly socket: Socket,
    readonly agent: Agent,
    private readonly bootId: string,
    readonly cosem?: SimulatedCosemMeter,
  ) {}

  get energyRegisterWh(): number {
    return this.energyWh;
  }

  /** The DLMS frame for a reading, sealed at its first attempt. */
  frameFor(reading: MeterReading): { frame: Buffer; key: string } {
    let sealed = this.frames.get(reading);
    if (!sealed && this.cosem) {
      const frame = this.cosem.pushFrame(
        reading.values.map((v) => ({ obis: v.obis, value: v.unit === 'V' ? Math.round(v.value * 10) : v.value, scaler: v.unit === 'V' ? -1 : 0, ...(v.unit ? { unit: v.unit } : {}) })),
        new Date(reading.ts),
      );
      const counter = parseCipheredApdu(frame).invocationCounter;
      sealed = { frame, key: dlmsRecordKey(this.cosem.systemTitle, this.cosem.currentKeys.epoch, counter) };
      this.frames.set(reading, sealed);
    }
    if (!sealed) throw new Error(`${this.name} does not speak DLMS`);
    return sealed;
  }

  nextReading(now: number): MeterReading {
    this.sequence += 1;
    this.energyWh += Math.floor(Math.random() * 500);
    return {
      id: `${this.bootId}-${this.sequence}`,
      meter: this.name,
      ts: now,
      values: [
        { obis: '1.0.1.8.0.255', value: this.energyWh, unit: 'Wh' },
        { obis: '1.0.32.7.0.255', value: Math.round((230 + (Math.random() - 0.5) * 8) * 10) / 10, unit: 'V' },
      ],
    };
  }

  canSend(now: number): boolean {
    return !this.sending && this.backlog.length > 0 && now >= this.retryAt;
  }

  begin(): MeterReading {
    this.sending = true;
    return this.backlog[0] as MeterReading;
  }

  succeeded(): void {
    this.sending = false;
    this.failures = 0;
    this.backlog.shift();
  }

  /** Waits `delayMs` before trying the same reading again. */
  retryLater(now: number, delayMs: number): void {
    this.sending = false;
    this.retryAt = now + delayMs;
  }

  failedBackoffMs(): number {
    this.failures += 1;
    return jitter(Math.min(MAX_BACKOFF_MS, 2000 * 2 ** (this.failures - 1)));
  }

  dropped(): void {
    this.sending = false;
    this.backlog.shift();
  }
}

/**
 * A fleet of meters posting readings to the gateway over CoAP, each from its
 * own UDP socket as real meters would. A meter sends one reading at a time,
 * keeps unacknowledged readings and honours Max-Age (with jitter) when the
 * gateway answers 5.03, so nothing it recorded as acknowledged is lost.
 * With `register` each meter first joins the gateway's resource directory
 * (see mesh-meter.ts); with `serve` it answers CoAP requests on the same
 * socket (see meter-server.ts).
 */
export class MeterFleet {
  private readonly meterList: SimulatedMeter[] = [];
  private recorder: JsonLinesRecorder | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly inFlight = new Set<Promise<void>>();
  private stopped = false;
  private readonly abort = new AbortController();
  readonly stats: MeterFleetStats = {
    generated: 0,
    acknowledged: 0,
    deferred: 0,
    failed: 0,
    refused: 0,
    droppedOldest: 0,
    registered: 0,
    registrationDeferred: 0,
    registrationRetries: 0,
    registrationFailed: 0,
    linkDroppedSent: 0,
    linkDroppedReceived: 0,
  };
  private readonly ackListeners = new Set<(reading: MeterReading) => void>();
  private readonly registrationListeners = new Set<(event: RegistrationEvent) => void>();
  private readonly warnedAbout = new Set<string>();
  private readonly bind: string;
  private readonly lifetimeSeconds: number;
  private readonly refreshAt: readonly [number, number];

  constructor(readonly options: MeterFleetOptions) {
    // Every request of every meter listens on the fleet's abort signal (to stop them all at once).
    setMaxListeners(0, this.abort.signal);
    const target = parseCoapUrl(options.gateway);
    this.bind = options.bind ?? defaultMeterBind(target.host);
    if (isIP(this.bind) === 0) throw new Error(`bind must be an IP address, got "${this.bind}"`);
    this.lifetimeSeconds = options.lifetimeSeconds ?? DEFAULT_SIM_LIFETIME_SECONDS;
    if (!Number.isInteger(this.lifetimeSeconds) || this.lifetimeSeconds < MIN_LIFETIME_SECONDS || this.lifetimeSeconds > MAX_LIFETIME_SECONDS) {
      throw new Error(`lifetimeSeconds must be an integer from ${MIN_LIFETIME_SECONDS} to ${MAX_LIFETIME_SECONDS}`);
    }
    this.refreshAt = options.refreshAt ?? DEFAULT_REFRESH_AT;
    const [from, to] = this.refreshAt;
    if (!(from > 0 && from <= to && to < 1)) throw new Error('refreshAt must be two fractions 0 < from <= to < 1');
  }

  onAcknowledged(listener: (reading: MeterReading) => void): () => void {
    this.ackListeners.add(listener);
    return () => this.ackListeners.delete(listener);
  }

  /** Registration attempts and their outcomes, as they happen. */
  onRegistration(listener: (event: RegistrationEvent) => void): () => void {
    this.registrationListeners.add(listener);
    return () => this.registrationListeners.delete(listener);
  }

  meters(): SimMeterInfo[] {
    return this.meterList.map((meter) => {
      const address = meter.socket.address();
      return {
        name: meter.name,
        address: { address: address.address, port: address.port },
        base: meter.server ? this.baseOf(meter.socket) : undefined,
        registered: meter.registrar?.registered ?? false,
        location: meter.registrar?.location,
        server: meter.server,
      };
    });
  }

  private baseOf(socket: Socket): string | undefined {
    const address = socket.address();
    // Bound to every address, the meter cannot name one: the gateway then uses the source address (RFC 9176 section 5).
    return isUnspecified(address.address) ? undefined : formatCoapUrl(address.address, address.port);
  }

  async start(): Promise<void> {
    if (this.options.recordFile) {
      this.recorder = new JsonLinesRecorder(this.options.recordFile);
      await this.recorder.open();
    }
    const target = parseCoapUrl(this.options.gateway);
    const bootId = Date.now().toString(36);
    const prefix = this.options.prefix ?? 'mtr-';
    const names = Array.from({ length: this.options.count }, (_, i) => `${prefix}${String(i + 1).padStart(6, '0')}`);
    const opened = await Promise.allSettled(names.map(() => bindSocket(this.bind)));
    const failure = opened.find((result) => result.status === 'rejected');
    if (failure) {
      for (const result of opened) if (result.status === 'fulfilled') result.value.close();
      await this.recorder?.close();
      throw (failure as PromiseRejectedResult).reason;
    }
    const context: RegistrarContext = {
      gateway: target,
      lifetimeSeconds: this.lifetimeSeconds,
      refreshAt: this.refreshAt,
      timeoutMs: REQUEST_TIMEOUT_MS,
      signal: this.abort.signal,
      stats: this.stats,
      later: (delayMs, action) => this.later(delayMs, action),
      track: (work) => this.track(work),
      emit: (event) => {
        for (const listener of this.registrationListeners) listener(event);
      },
      warnOnce: (topic, message) => {
        if (this.warnedAbout.has(topic)) return;
        this.warnedAbout.add(topic);
        this.options.log?.warn(message);
      },
    };
    const linkLossRate = this.options.linkLossRate ?? 0;
    for (const [i, name] of names.entries()) {
      const socket = (opened[i] as PromiseFulfilledResult<Socket>).value;
      // The socket's owner: a socket error must not end the process; requests on it time out and are retried.
      socket.on('error', () => undefined);
      // Before the agent and the server use the socket: both see the lossy link.
      if (linkLossRate > 0) this.loseOnLink(socket, linkLossRate);
      const faults = faultsFor(this.options.faults ?? [], name, i + 1);
      const cosem =
        this.options.protocol === 'dlms'
          ? new SimulatedCosemMeter(simMeterKeys(this.options.keySeed ?? DEFAULT_SIM_KEY_SEED, name, 1), {
              invocationCounter: Math.floor(Date.now() / 1000),
              relay: { ...this.options.relay, faults },
              // /status and GET /relay follow the relay.
              onRelayOperation: () => {
                if (!meter.server || !meter.cosem) return;
                const relay = meter.cosem.relay.outputState ? 'connected' : 'disconnected';
                if (meter.server.relay === relay) return;
                meter.server.relay = relay;
                meter.server.notify();
              },
            })
          : undefined;
      const agent = new coap.Agent({ socket });
      agent.on('error', () => undefined);
      const meter = new SimulatedMeter(name, socket, agent, bootId, cosem);
      meter.offline = faults.includes('offline');
      if (this.options.serve) {
        const profile = meterRadioProfile(name);
        const installed = this.options.firmware?.(name, i) ?? { model: DEFAULT_SIM_METER_MODEL, comm: profile.fwComm, metro: profile.fwMetro };
        const firmware = new SimulatedMeterFirmware({
          name,
          ...installed,
          agent,
          gateway: target,
          ...(this.options.firmwareBlockSize !== undefined ? { blockSize: this.options.firmwareBlockSize } : {}),
          ...(this.options.firmwareInstallMs !== undefined ? { installMs: this.options.firmwareInstallMs } : {}),
          ...(this.options.firmwareDownload ? { download: this.options.firmwareDownload } : {}),
          signal: this.abort.signal,
          track: (work) => this.track(work),
          // A new firmware runs after a reboot: the meter joins the directory again, with its new versions.
          reboot: () => meter.registrar?.reboot(),
        });
        meter.firmware = firmware;
        const server = new MeterCoapServer({
          name,
          energyWh: () => meter.energyRegisterWh,
          statusIntervalMs: this.options.statusIntervalMs ?? DEFAULT_STATUS_INTERVAL_MS,
          ...(cosem ? { dlms: (request: { payload: Buffer; query: string }) => serveDlms(cosem, request) } : {}),
          firmware,
          faults: { offline: () => meter.offline, lossRate: this.options.lossRate ?? 0, ...(this.options.random ? { random: this.options.random } : {}) },
        });
        await server.listen(socket);
        meter.server = server;
      }
      if (this.options.register) {
        const firmware = meter.firmware;
        const registrar = new MeterRegistrar(
          name,
          agent,
          context,
          meterRadioProfile(name),
          meter.server ? this.baseOf(socket) : undefined,
          meter.server ? meter.server.links : [],
          firmware ? () => firmware.versions() : undefined,
        );
        registrar.onRegistered = () => this.pump(meter);
        meter.registrar = registrar;
      }
      this.meterList.push(meter);
    }
    const spreadMs = this.options.startSpreadMs ?? Math.min(this.options.intervalMs, 2000);
    for (const meter of this.meterList) {
      // Spread the fleet's first readings and registrations (unless told to start all at once, as after an outage).
      meter.registrar?.start(Math.random() * spreadMs);
      if (this.options.readings !== false) this.every(meter, Math.random() * spreadMs);
    }
    const what = this.options.readings === false ? 'no readings' : `${this.options.protocol === 'dlms' ? 'ciphered DLMS frames' : 'readings'} to ${this.options.gateway}${this.options.protocol === 'dlms' ? DLMS_PATH : READINGS_PATH} every ${this.options.intervalMs / 1000}s`;
    const joining = this.options.register ? `, registering (lt=${this.lifetimeSeconds}s) with ${this.options.gateway}/rd first` : '';
    const dlmsServed = this.options.protocol === 'dlms' ? ' /dlms' : '';
    const faultNote = (this.options.faults?.length ?? 0) > 0 ? `; relay faults ${this.options.faults?.map((f) => `${f.fault}:${f.meter}`).join(',')}` : '';
    const lossNote = (this.options.lossRate ?? 0) > 0 ? `; ${(this.options.lossRate ?? 0) * 100}% loss` : '';
    const linkNote = linkLossRate > 0 ? `; ${linkLossRate * 100}% datagram loss on every meter's link` : '';
    const serving = this.options.serve ? `, each serving /status /lp /fw /fw/state /fw/update /relay${dlmsServed} on its own port (${this.bind})${faultNote}${lossNote}` : '';
    this.options.log?.info(`sim-meters: ${this.options.count} meters posting ${what}${joining}${serving}${linkNote}`);
    const summaryEvery = this.options.summaryEverySeconds ?? 0;
    if (summaryEvery > 0) {
      let last = 0;
      const timer = setInterval(() => {
        const s = this.stats;
        this.options.log?.info(
          `sim-meters: ${s.acknowledged - last} readings acknowledged in ${summaryEvery}s (total ${s.acknowledged}, deferred ${s.deferred}, failed ${s.failed}, backlog ${this.backlog()})` +
            (this.options.register ? `; registered ${s.registered}/${this.meterList.length} (deferred ${s.registrationDeferred}, retries ${s.registrationRetries}, failed ${s.registrationFailed})` : ''),
        );
        last = s.acknowledged;
      }, summaryEvery * 1000);
      timer.unref();
      this.timers.add(timer);
    }
  }

  /** The relay of meter `name` (DLMS meters only). */
  relay(name: string): SimulatedRelay | undefined {
    return this.meterList.find((meter) => meter.name === name)?.cosem?.relay;
  }

  /** The COSEM application layer of meter `name` (DLMS meters only). */
  cosem(name: string): SimulatedCosemMeter | undefined {
    return this.meterList.find((meter) => meter.name === name)?.cosem;
  }

  /** Every DLMS meter's relay: state, load voltage and actuation counts. */
  relayStats(): SimRelayInfo[] {
    const out: SimRelayInfo[] = [];
    for (const meter of this.meterList) {
      const relay = meter.cosem?.relay;
      if (!relay) continue;
      out.push({
        name: meter.name,
        controlState: relay.controlState,
        loadVoltage: relay.loadVoltage,
        supplyOn: relay.supplyOn,
        tampered: relay.tampered,
        faults: [...relay.faults],
        stats: { ...relay.stats },
      });
    }
    return out;
  }

  /** The firmware and update state machine of meter `name` (serving meters only). */
  firmwareOf(name: string): SimulatedMeterFirmware | undefined {
    return this.meterList.find((meter) => meter.name === name)?.firmware;
  }

  /** Takes meter `name` off the mesh (it answers nothing) or back. */
  setOffline(name: string, offline: boolean): void {
    const meter = this.meterList.find((m) => m.name === name);
    if (!meter) throw new Error(`no meter ${name}`);
    meter.offline = offline;
  }

  /** Readings generated and not yet acknowledged, across the fleet. */
  backlog(): number {
    return this.meterList.reduce((sum, meter) => sum + meter.backlog.length, 0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.abort.abort();
    await Promise.allSettled([...this.inFlight]);
    for (const meter of this.meterList) {
      // Server first (ends observations, stops its retransmissions), then the agent, then the socket they share.
      meter.server?.close();
      meter.agent.close();
      meter.socket.close();
    }
    await this.recorder?.close();
  }

  /**
   * Makes `socket` a lossy radio link: each datagram sent or received is
   * dropped with probability `rate`. A dropped send still calls back as sent
   * (the coap library counts datagrams in flight until their callback).
   */
  private loseOnLink(socket: Socket, rate: number): void {
    const random = this.options.random ?? Math.random;
    const send = socket.send.bind(socket) as (...args: unknown[]) => void;
    const sendOrLose = (...args: unknown[]): void => {
      if (random() < rate) {
        this.stats.linkDroppedSent += 1;
        const callback = args[args.length - 1];
        if (typeof callback === 'function') process.nextTick(callback, null, 0);
        return;
      }
      send(...args);
    };
    socket.send = sendOrLose as Socket['send'];
    const emit = socket.emit.bind(socket) as (event: string | symbol, ...args: unknown[]) => boolean;
    const emitOrLose = (event: string | symbol, ...args: unknown[]): boolean => {
      if (event === 'message' && random() < rate) {
        this.stats.linkDroppedReceived += 1;
        return false;
      }
      return emit(event, ...args);
    };
    socket.emit = emitOrLose as Socket['emit'];
  }

  private track(work: Promise<void>): void {
    const tracked = work.catch(() => undefined).finally(() => this.inFlight.delete(tracked));
    this.inFlight.add(tracked);
  }

  private every(meter: SimulatedMeter, delayMs: number): void {
    this.later(delayMs, () => {
      const limit = this.options.storedReadingsLimit ?? 10_000;
      meter.backlog.push(meter.nextReading(Date.now()));
      this.stats.generated++;
      if (meter.backlog.length > limit) {
        // Never drop the head while it is being sent: drop the next-oldest.
        meter.backlog.splice(1, 1);
        this.stats.droppedOldest++;
      }
      // The register moved: observers of /status hear of it.
      meter.server?.notify();
      this.pump(meter);
      this.every(meter, jitter(this.options.intervalMs, 0.1));
    });
  }

  private later(delayMs: number, action: () => void): void {
    if (this.stopped) return;
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.stopped) action();
    }, delayMs);
    this.timers.add(timer);
  }

  private pump(meter: SimulatedMeter): void {
    const now = Date.now();
    if (this.stopped || !meter.canSend(now)) return;
    // A meter that registers reports only once it has joined.
    if (meter.registrar && !meter.registrar.registered) return;
    this.track(this.send(meter, meter.begin()));
  }

  private async send(meter: SimulatedMeter, reading: MeterReading): Promise<void> {
    try {
      const dlms = meter.cosem ? meter.frameFor(reading) : undefined;
      const base = this.options.gateway.replace(/\/+$/, '');
      const response = await coapCall(dlms ? `${base}${DLMS_PATH}?ep=${encodeURIComponent(meter.name)}` : base + READINGS_PATH, {
        method: 'POST',
        payload: dlms ? dlms.frame : encodeReading(reading),
        contentFormat: dlms ? CONTENT_FORMAT_OCTET_STREAM : CONTENT_FORMAT.cbor,
        timeoutMs: REQUEST_TIMEOUT_MS,
        agent: meter.agent,
        signal: this.abort.signal,
      });
      if (response.code.startsWith('2.')) {
        meter.succeeded();
        this.stats.acknowledged++;
        // `key` is the record key the HES stores: for DLMS, the frame's system title, key epoch and counter.
        this.recorder?.write({
          id: reading.id,
          key: dlms ? dlms.key : readingKey(reading.meter, reading.id),
          meter: reading.meter,
          ts: reading.ts,
          ackedAt: Date.now(),
        });
        for (const listener of this.ackListeners) listener(reading);
      } else if (response.code === '5.03') {
        this.stats.deferred++;
        const delay = jitter((response.maxAge ?? 60) * 1000);
        meter.retryLater(Date.now(), delay);
        this.later(delay + 1, () => this.pump(meter));
        return;
      } else if (response.code.startsWith('4.')) {
        // The gateway will never take this reading as it is; keeping it would block the meter.
        this.stats.refused++;
        this.options.log?.warn(
          `sim-meters: ${meter.name} reading ${reading.id} refused with ${response.code}: ${response.payload.toString('utf8')}`,
        );
        meter.dropped();
      } else {
        throw new CoapRequestError('NETWORK', `unexpected ${response.code}`);
      }
    } catch {
      if (this.stopped) return;
      this.stats.failed++;
      const backoff = meter.failedBackoffMs();
      meter.retryLater(Date.now(), backoff);
      this.later(backoff + 1, () => this.pump(meter));
      return;
    }
    this.pump(meter);
  }
}

/** POST /dlms of a meter: 2.04 with the ciphered answer; 4.01 / 4.00 with the exception-response the meter refuses with. */
function serveDlms(cosem: SimulatedCosemMeter, request: { payload: Buffer; query: string }): { code: string; payload: Buffer } {
  const st = new URLSearchParams(request.query).get('st') ?? undefined;
  const clientSystemTitle = st !== undefined && /^[0-9a-fA-F]{16}$/.test(st) ? st : undefined;
  const result = cosem.serve(request.payload, clientSystemTitle);
  if (result.ok) return { code: '2.04', payload: result.response };
  return { code: result.kind === 'security' ? '4.01' : '4.00', payload: result.exception };
}
