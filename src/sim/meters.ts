import { setMaxListeners } from 'node:events';
import * as coap from 'coap';
import type { Agent } from 'coap';
import { closeAgent, coapCall, CoapRequestError } from '../coap/request.js';
import { CONTENT_FORMAT, encodeReading, readingKey, type MeterReading } from '../coap/reading.js';
import { DLMS_PATH, READINGS_PATH } from '../coap/endpoint.js';
import { dlmsRecordKey } from '../hes/records.js';
import { SimulatedCosemMeter } from './cosem-meter.js';
import { parseCipheredApdu } from '../dlms/security.js';
import { DEFAULT_SIM_KEY_SEED, simMeterKeys } from './meter-keys.js';
import { parseCoapUrl } from '../coap/url.js';
import { JsonLinesRecorder } from './recorder.js';
import type { SimLog } from './log.js';

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
}

export interface MeterFleetStats {
  generated: number;
  acknowledged: number;
  deferred: number;
  failed: number;
  refused: number;
  droppedOldest: number;
}

const MAX_BACKOFF_MS = 60_000;
const CONTENT_FORMAT_OCTET_STREAM = 42;
const REQUEST_TIMEOUT_MS = 30_000;

function jitter(ms: number, spread = 0.5): number {
  return Math.round(ms * (1 + Math.random() * spread));
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

  constructor(
    readonly name: string,
    readonly agent: Agent,
    private readonly bootId: string,
    readonly cosem?: SimulatedCosemMeter,
  ) {}

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
 */
export class MeterFleet {
  private readonly meters: SimulatedMeter[] = [];
  private recorder: JsonLinesRecorder | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly inFlight = new Set<Promise<void>>();
  private stopped = false;
  private readonly abort = new AbortController();
  readonly stats: MeterFleetStats = { generated: 0, acknowledged: 0, deferred: 0, failed: 0, refused: 0, droppedOldest: 0 };
  private readonly ackListeners = new Set<(reading: MeterReading) => void>();

  constructor(readonly options: MeterFleetOptions) {
    // Every request of every meter listens on the fleet's abort signal (to stop them all at once).
    setMaxListeners(0, this.abort.signal);
    parseCoapUrl(options.gateway);
  }

  onAcknowledged(listener: (reading: MeterReading) => void): () => void {
    this.ackListeners.add(listener);
    return () => this.ackListeners.delete(listener);
  }

  async start(): Promise<void> {
    if (this.options.recordFile) {
      this.recorder = new JsonLinesRecorder(this.options.recordFile);
      await this.recorder.open();
    }
    const target = parseCoapUrl(this.options.gateway);
    const type = target.host.includes(':') ? 'udp6' : 'udp4';
    const bootId = Date.now().toString(36);
    const prefix = this.options.prefix ?? 'mtr-';
    for (let i = 1; i <= this.options.count; i++) {
      const name = `${prefix}${String(i).padStart(6, '0')}`;
      const cosem =
        this.options.protocol === 'dlms' ? new SimulatedCosemMeter(simMeterKeys(this.options.keySeed ?? DEFAULT_SIM_KEY_SEED, name, 1), { invocationCounter: Math.floor(Date.now() / 1000) }) : undefined;
      this.meters.push(new SimulatedMeter(name, new coap.Agent({ type }), bootId, cosem));
    }
    for (const meter of this.meters) {
      // Spread the fleet's first readings over the first two seconds (or the interval, if shorter).
      this.every(meter, Math.random() * Math.min(this.options.intervalMs, 2000));
    }
    this.options.log?.info(
      `sim-meters: ${this.options.count} meters posting ${this.options.protocol === 'dlms' ? 'ciphered DLMS frames' : 'readings'} to ${this.options.gateway}${this.options.protocol === 'dlms' ? DLMS_PATH : READINGS_PATH} every ${this.options.intervalMs / 1000}s`,
    );
    const summaryEvery = this.options.summaryEverySeconds ?? 0;
    if (summaryEvery > 0) {
      let last = 0;
      const timer = setInterval(() => {
        const s = this.stats;
        this.options.log?.info(
          `sim-meters: ${s.acknowledged - last} readings acknowledged in ${summaryEvery}s (total ${s.acknowledged}, deferred ${s.deferred}, failed ${s.failed}, backlog ${this.backlog()})`,
        );
        last = s.acknowledged;
      }, summaryEvery * 1000);
      timer.unref();
      this.timers.add(timer);
    }
  }

  /** Readings generated and not yet acknowledged, across the fleet. */
  backlog(): number {
    return this.meters.reduce((sum, meter) => sum + meter.backlog.length, 0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.abort.abort();
    await Promise.allSettled([...this.inFlight]);
    await Promise.all(this.meters.map((meter) => closeAgent(meter.agent)));
    await this.recorder?.close();
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
    const reading = meter.begin();
    const attempt = this.send(meter, reading).finally(() => this.inFlight.delete(attempt));
    this.inFlight.add(attempt);
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
        // With DLMS the HES stores the frame under its system title and invocation counter.
        // `key` is the record key the HES stores: the frame's system title and counter for DLMS.
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
