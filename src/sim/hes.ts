import { createCoapServer, listenCoapServer } from '../coap/server.js';
import type { IncomingMessage, OutgoingMessage, Server } from 'coap';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { cborDecode, cborEncode } from '../coap/cbor.js';
import { formatCoapUrl } from '../coap/url.js';
import { decodeBatch, encodeAck, HEALTH_PATH, HesContractError, RECORDS_PATH } from '../hes/contract.js';
import { JsonLinesRecorder } from './recorder.js';
import type { SimLog } from './log.js';
import { SimKeyManagement, type SimKeyManagementOptions } from './key-service.js';
import { SimCommandService, type SimCommandServiceOptions } from './hes-commands.js';

export interface HesSimulatorOptions {
  port: number;
  bind: string;
  /** JSON-lines file receiving one line per record stored for the first time. */
  recordFile?: string;
  log?: SimLog;
  /** Seconds between summary log lines; 0 for none. */
  summaryEverySeconds?: number;
  /** Serve signed key bundles for these meters (the HES key management). */
  keyManagement?: SimKeyManagementOptions | SimKeyManagement;
  /** Serve signed commands (docs/hes-commands.md); operators' certificates come from the key management's PKI unless given. */
  commands?: SimCommandServiceOptions | SimCommandService;
}

export interface HesSimulatorStats {
  batches: number;
  stored: number;
  duplicates: number;
  malformed: number;
  /** GET /ami/v1/health requests answered (the gateway's probes). */
  healthRequests: number;
  /** Batches left unanswered in gray mode (setDropRecords). */
  dropped: number;
}

/**
 * Gray mode, switched at run time from loopback: `PUT /sim/gray` with CBOR
 * `{delayMs?: number, dropRecords?: boolean}` (2.04; 4.03 from elsewhere).
 * `ami-gateway sim hes --delay MS --drop-records` sets the same at start.
 */
export const SIM_GRAY_PATH = '/sim/gray';

/** The coap library's pending piggyback timer on a response (private to the library, hence this type). */
interface UnansweredResponse {
  _ackTimer?: NodeJS.Timeout | null;
}

/**
 * A Head-End System that implements the gateway uplink contract
 * (src/hes/contract.ts): it stores each record key once, acknowledges keys it
 * already has, and refuses malformed batches with 4.00.
 */
export class HesSimulator {
  private server: Server | undefined;
  private recorder: JsonLinesRecorder | undefined;
  private summaryTimer: NodeJS.Timeout | undefined;
  private readonly keys = new Set<string>();
  private boundPort: number | undefined;
  private unavailableFor = 0;
  private responseDelayMs = 0;
  private dropRecords = false;
  private readonly delayedAnswers = new Set<NodeJS.Timeout>();
  /** Requests left unanswered on purpose (dropped, or delayed), whose empty ACK the library may still have to send. */
  private readonly unanswered = new Set<UnansweredResponse>();
  readonly stats: HesSimulatorStats = { batches: 0, stored: 0, duplicates: 0, malformed: 0, healthRequests: 0, dropped: 0 };
  private readonly listeners = new Set<(key: string) => void>();

  /** The key-management system, when the simulator serves keys. */
  readonly keyManagement: SimKeyManagement | undefined;
  /** The command service, when the simulator issues signed commands. */
  readonly commands: SimCommandService | undefined;

  constructor(readonly options: HesSimulatorOptions) {
    const km = options.keyManagement;
    this.keyManagement = km === undefined ? undefined : km instanceof SimKeyManagement ? km : new SimKeyManagement(km);
    const commands = options.commands;
    this.commands =
      commands === undefined ? undefined : commands instanceof SimCommandService ? commands : new SimCommandService({ pki: this.keyManagement?.pki, log: options.log, ...commands });
  }

  get port(): number {
    if (this.boundPort === undefined) throw new Error('HES simulator is not running');
    return this.boundPort;
  }

  get url(): string {
    return formatCoapUrl(this.options.bind, this.port);
  }

  has(key: string): boolean {
    return this.keys.has(key);
  }

  /** Keys stored so far that start with `prefix` (all without one). */
  storedKeys(prefix = ''): string[] {
    return [...this.keys].filter((key) => key.startsWith(prefix));
  }

  /** Calls `listener` with each key stored for the first time; returns the remover. */
  onStored(listener: (key: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Delays every answer to a batch by `ms`, as a slow or distant HES would. */
  setResponseDelay(ms: number): void {
    this.responseDelayMs = ms;
  }

  /**
   * Gray failure: batches get no answer at all (and are not stored) while
   * the health resource still answers at once, as a HES whose collection
   * engine hangs behind a healthy front end.
   */
  setDropRecords(drop: boolean): void {
    this.dropRecords = drop;
  }

  /** Answers 5.03 to the next `count` batches, as an overloaded HES would. */
  refuseNext(count: number): void {
    this.unavailableFor = count;
  }

  async start(): Promise<void> {
    if (this.options.recordFile) {
      this.recorder = new JsonLinesRecorder(this.options.recordFile);
      await this.recorder.open();
    }
    const server = createCoapServer(this.options.bind);
    server.on('request', (req: IncomingMessage, res: OutgoingMessage) => this.handle(req, res));
    this.boundPort = await listenCoapServer(server, this.options.port, this.options.bind);
    this.server = server;
    this.options.log?.info(`hes-sim: listening on ${this.url}${this.options.recordFile ? `, recording to ${this.options.recordFile}` : ''}`);
    const every = this.options.summaryEverySeconds ?? 0;
    if (every > 0) {
      let last = 0;
      this.summaryTimer = setInterval(() => {
        if (this.stats.stored === last) return;
        this.options.log?.info(
          `hes-sim: ${this.stats.stored - last} new records in ${every}s (total ${this.stats.stored}, duplicates ${this.stats.duplicates}, malformed ${this.stats.malformed})`,
        );
        last = this.stats.stored;
      }, every * 1000);
      this.summaryTimer.unref();
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.summaryTimer);
    const server = this.server;
    this.server = undefined;
    // Observers are per server: a restarted HES has none until gateways register again.
    this.commands?.dropObservers();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    // Once closed (no request comes in any more): a delayed answer, or the library's timer
    // sending the empty ACK of a request left unanswered, would write to the closed socket.
    for (const timer of this.delayedAnswers) clearTimeout(timer);
    this.delayedAnswers.clear();
    for (const res of this.unanswered) clearTimeout(res._ackTimer ?? undefined);
    this.unanswered.clear();
    await this.recorder?.close();
  }

  /** PUT /sim/gray from loopback: switches the gray mode (see SIM_GRAY_PATH). */
  private control(req: IncomingMessage, res: OutgoingMessage): void {
    const from = req.rsinfo.address;
    if (from !== '::1' && from !== '127.0.0.1' && from !== '::ffff:127.0.0.1') {
      res.code = '4.03';
      res.end();
      return;
    }
    let body: unknown;
    try {
      body = cborDecode(req.payload);
    } catch {
      body = undefined;
    }
    const { delayMs, dropRecords } = (typeof body === 'object' && body !== null ? body : {}) as { delayMs?: unknown; dropRecords?: unknown };
    if ((delayMs !== undefined && (typeof delayMs !== 'number' || !Number.isSafeInteger(delayMs) || delayMs < 0)) || (dropRecords !== undefined && typeof dropRecords !== 'boolean')) {
      res.code = '4.00';
      res.end('expected CBOR {delayMs?: whole number >= 0, dropRecords?: boolean}');
      return;
    }
    if (delayMs !== undefined) this.setResponseDelay(delayMs);
    if (dropRecords !== undefined) this.setDropRecords(dropRecords);
    this.options.log?.info(`hes-sim: gray mode: batches answered after ${this.responseDelayMs} ms${this.dropRecords ? ', or not at all (dropped)' : ''}`);
    res.code = '2.04';
    res.end();
  }

  private handle(req: IncomingMessage, res: OutgoingMessage): void {
    const path = req.url.split('?')[0];
    if (path === HEALTH_PATH && req.method === 'GET') {
      this.stats.healthRequests++;
      res.setOption('Content-Format', CONTENT_FORMAT.cbor);
      res.end(cborEncode({ status: 'ok' }));
      return;
    }
    if (path === SIM_GRAY_PATH && req.method === 'PUT') {
      this.control(req, res);
      return;
    }
    if (this.keyManagement && path !== undefined && this.keyManagement.handle(path, req, res)) return;
    if (this.commands && path !== undefined && this.commands.handle(path, req, res)) return;
    if (path !== RECORDS_PATH) {
      res.code = '4.04';
      res.end();
      return;
    }
    if (req.method !== 'POST') {
      res.code = '4.05';
      res.end();
      return;
    }
    if (this.dropRecords) {
      // No answer at all: the gateway's request runs into its deadline.
      this.stats.dropped++;
      this.unanswered.add(res as unknown as UnansweredResponse);
      return;
    }
    if (this.unavailableFor > 0) {
      this.unavailableFor--;
      res.code = '5.03';
      res.setOption('Max-Age', 5);
      res.end();
      return;
    }
    let accepted: string[];
    try {
      const batch = decodeBatch(req.payload);
      accepted = batch.records.map((record) => {
        if (this.keys.has(record.key)) {
          this.stats.duplicates++;
        } else {
          this.keys.add(record.key);
          this.stats.stored++;
          if (this.stats.stored === 1) {
            this.options.log?.info(`hes-sim: first record received: ${record.key} from gateway ${batch.gateway}`);
          }
          this.recorder?.write({
            id: record.key,
            kind: record.kind,
            meter: record.meter,
            ts: record.ts,
            gateway: batch.gateway,
            receivedAt: Date.now(),
          });
          for (const listener of this.listeners) listener(record.key);
        }
        return record.key;
      });
      this.stats.batches++;
    } catch (err) {
      if (!(err instanceof HesContractError)) throw err;
      this.stats.malformed++;
      this.options.log?.warn(`hes-sim: refused a malformed batch from ${req.rsinfo.address}: ${err.message}`);
      res.code = '4.00';
      res.end(err.message.slice(0, 200));
      return;
    }
    const answer = (): void => {
      res.code = '2.04';
      res.setOption('Content-Format', CONTENT_FORMAT.cbor);
      res.end(encodeAck({ accepted }));
    };
    if (this.responseDelayMs > 0) {
      // A delayed answer due after stop() would write to a closed socket.
      const waiting = res as unknown as UnansweredResponse;
      const timer = setTimeout(() => {
        this.delayedAnswers.delete(timer);
        this.unanswered.delete(waiting);
        answer();
      }, this.responseDelayMs);
      this.delayedAnswers.add(timer);
      this.unanswered.add(waiting);
    } else answer();
  }
}
