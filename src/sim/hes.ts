import { createCoapServer, listenCoapServer } from '../coap/server.js';
import type { IncomingMessage, OutgoingMessage, Server } from 'coap';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { cborEncode } from '../coap/cbor.js';
import { formatCoapUrl } from '../coap/url.js';
import { decodeBatch, encodeAck, HEALTH_PATH, HesContractError, RECORDS_PATH } from '../hes/contract.js';
import { JsonLinesRecorder } from './recorder.js';
import type { SimLog } from './log.js';
import { SimKeyManagement, type SimKeyManagementOptions } from './key-service.js';

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
}

export interface HesSimulatorStats {
  batches: number;
  stored: number;
  duplicates: number;
  malformed: number;
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
  readonly stats: HesSimulatorStats = { batches: 0, stored: 0, duplicates: 0, malformed: 0 };
  private readonly listeners = new Set<(key: string) => void>();

  /** The key-management system, when the simulator serves keys. */
  readonly keyManagement: SimKeyManagement | undefined;

  constructor(readonly options: HesSimulatorOptions) {
    const km = options.keyManagement;
    this.keyManagement = km === undefined ? undefined : km instanceof SimKeyManagement ? km : new SimKeyManagement(km);
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

  /** Calls `listener` with each key stored for the first time; returns the remover. */
  onStored(listener: (key: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Delays every answer to a batch by `ms`, as a slow or distant HES would. */
  setResponseDelay(ms: number): void {
    this.responseDelayMs = ms;
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
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await this.recorder?.close();
  }

  private handle(req: IncomingMessage, res: OutgoingMessage): void {
    const path = req.url.split('?')[0];
    if (path === HEALTH_PATH && req.method === 'GET') {
      res.setOption('Content-Format', CONTENT_FORMAT.cbor);
      res.end(cborEncode({ status: 'ok' }));
      return;
    }
    if (this.keyManagement && path !== undefined && this.keyManagement.handle(path, req, res)) return;
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
    if (this.responseDelayMs > 0) setTimeout(answer, this.responseDelayMs);
    else answer();
  }
}
