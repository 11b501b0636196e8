import { EventEmitter } from 'node:events';
import { C1218Error } from '../c1218/errors.js';
import { C1218Link, type C1218LinkOptions, type C1218LinkStats } from '../c1218/link.js';
import { DEFAULT_PACKET_SIZE, PACKET_OVERHEAD } from '../c1218/packet.js';
import { openOpticalPort } from '../c1218/serial.js';
import {
  C1218_BAUD_RATES,
  decodeRequest,
  encodeIdentifyResponse,
  encodeNegotiateResponse,
  encodeOkResponse,
  encodeReadResponse,
  encodeRefusal,
  passwordBytes,
  type C1218Request,
  type NegotiateResponse,
  type RefusalName,
} from '../c1218/services.js';
import type { C1218Stream } from '../c1218/stream.js';
import {
  DEFAULT_TABLE_FORMAT,
  encodeDeviceIdentification,
  encodeGeneralConfiguration,
  encodeManufacturerIdentification,
  MANUFACTURER_TABLE_BASE,
  type ManufacturerIdentification,
} from '../c1218/tables.js';
import type { SimLog } from './log.js';

/**
 * A meter's ANSI C12.18 optical port, for tests and bench work without a
 * meter: it answers identify, negotiate, logon, security, logoff, terminate,
 * wait and full/partial reads over any C1218Stream (an in-memory pair, or a
 * serial port: `SimulatedC1218Meter.openSerial` on one end of a pty pair).
 *
 * It follows the C12.18 service sequence: base state (only identify, and terminate) →
 * identified (negotiate, logon) → session (reads, security, logoff); terminate
 * or the channel traffic timeout return it to the base state, the default
 * packet size and the initial baud rate. Refusals:
 *
 *   ISSS  a service out of sequence (a read before logon, negotiate in session)
 *   ERR   a wrong password, a malformed request
 *   SNS   a request code it does not serve (writes, index reads)
 *   ONP   a table it does not have, a response larger than negotiated
 *   IAR   a partial read beyond the end of the table
 *   ISC   a read of a protected table without the password
 *
 * Faults (`faults`, or `inject()`), each a count of occurrences still to come,
 * consumed as they happen so a test can see they did: lose or corrupt the
 * meter's next packets, lose or NAK the client's next packets, lose the
 * meter's ACKs or the client's ACKs (the meter then retransmits, and the
 * client must discard the duplicate), send a wrong table checksum, refuse the
 * next requests with given codes (BSY...), and delay every response.
 */

export interface C1218MeterTable {
  data: Uint8Array;
  /** A read needs the security service (the password) first. */
  protected?: boolean;
}

export interface C1218MeterFaults {
  /** The meter's next packets are lost on the way (the client sees nothing). */
  dropOutgoingPackets: number;
  /** The meter's next packets arrive with a flipped bit (bad CRC). */
  corruptOutgoingPackets: number;
  /** The client's next packets are lost before the meter sees them (no ACK). */
  dropIncomingPackets: number;
  /** The client's next good packets are answered with NAK. */
  nakIncomingPackets: number;
  /** The meter's next ACKs are lost. */
  dropOutgoingAcks: number;
  /** The client's next ACKs are lost: the meter retransmits the packet they acknowledged. */
  ignoreIncomingAcks: number;
  /** The next read responses carry a wrong table checksum. */
  badTableChecksum: number;
  /** The next requests are refused with these codes, in order, whatever they ask. */
  refusals: RefusalName[];
  /** Milliseconds before each response (0: at once). */
  responseDelayMs: number;
}

export type C1218MeterState = 'base' | 'identified' | 'session';

export interface C1218MeterOptions extends Pick<C1218LinkOptions, 'acknowledgementTimeoutMs' | 'interCharacterTimeoutMs' | 'channelTrafficTimeoutMs' | 'retries'> {
  /** Tables by id (manufacturer tables at 2048 + n); default defaultC1218MeterTables(). */
  tables?: Map<number, C1218MeterTable>;
  /** The security service's password (default "sim-password"). */
  password?: string | Uint8Array;
  /** What identify answers (default ANSI C12.18 version 1 revision 0, no features). */
  identification?: { standard: number; version: number; revision: number; features?: Uint8Array };
  /** Largest packet the meter accepts to negotiate (default 256). */
  maxPacketSize?: number;
  /** Most packets per transmission it accepts to negotiate (default 8). */
  maxPackets?: number;
  /** Baud rates it can switch to (default every C12.18 rate). */
  baudRates?: number[];
  /** The rate sessions start at (default 9600). */
  initialBaudRate?: number;
  faults?: Partial<C1218MeterFaults>;
  log?: SimLog;
}

export interface C1218MeterServed {
  request: C1218Request | undefined;
  /** 'OK' or the refusal sent. */
  response: 'OK' | RefusalName;
}

export const SIM_C1218_PASSWORD = 'sim-password';
/** The large table of the default set: 600 bytes, more than one packet at the meter's largest packet size. */
export const SIM_C1218_LARGE_TABLE = 64;

export interface DefaultC1218TablesOptions {
  manufacturer?: Partial<ManufacturerIdentification>;
  /** ST5 IDENTIFICATION (default "SIM-C1218-0001"). */
  identification?: string;
  /** Size of ST64 (default 600 bytes). */
  largeTableSize?: number;
}

/** Deterministic bytes for a simulated data table. */
export function simTableBytes(size: number, seed = 0): Uint8Array {
  return Uint8Array.from({ length: size }, (_, i) => (i * 7 + 3 + seed) & 0xff);
}

/**
 * ST0 (built from the table set), ST1, ST5 and a 600-byte ST64 (protected by
 * the password), all ISO 8859/1 strings, little-endian.
 */
export function defaultC1218MeterTables(options: DefaultC1218TablesOptions = {}): Map<number, C1218MeterTable> {
  const tables = new Map<number, C1218MeterTable>();
  const st1: ManufacturerIdentification = {
    manufacturer: 'AMIG',
    edModel: 'OPTSIM-1',
    hwVersionNumber: 1,
    hwRevisionNumber: 2,
    fwVersionNumber: 3,
    fwRevisionNumber: 4,
    mfgSerialNumber: 'SN00000000012345',
    ...options.manufacturer,
  };
  tables.set(1, { data: encodeManufacturerIdentification(st1, DEFAULT_TABLE_FORMAT) });
  tables.set(5, { data: encodeDeviceIdentification({ identification: options.identification ?? 'SIM-C1218-0001' }, DEFAULT_TABLE_FORMAT) });
  tables.set(SIM_C1218_LARGE_TABLE, { data: simTableBytes(options.largeTableSize ?? 600), protected: true });
  tables.set(0, { data: generalConfigurationFor([0, ...tables.keys()]) });
  return tables;
}

/** An ST0 declaring the given tables, ISO 8859/1 strings, string identifiers, little-endian. */
export function generalConfigurationFor(tableIds: number[]): Uint8Array {
  const standard = tableIds.filter((id) => id < MANUFACTURER_TABLE_BASE);
  const manufacturer = tableIds.filter((id) => id >= MANUFACTURER_TABLE_BASE).map((id) => id - MANUFACTURER_TABLE_BASE);
  const dim = (members: number[]): number => (members.length === 0 ? 0 : (Math.max(...members) >>> 3) + 1);
  return encodeGeneralConfiguration({
    formatControl1: { dataOrder: 'little-endian', charFormat: 2, modelSelect: 0 },
    formatControl2: { tmFormat: 2, dataAccessMethod: 1, idForm: 'string', intFormat: 0 },
    formatControl3: { niFormat1: 8, niFormat2: 8 },
    deviceClass: '414d4947',
    nameplateType: 2,
    defaultSetUsed: 0,
    maxProcParmLength: 32,
    maxRespDataLen: 32,
    stdVersionNo: 2,
    stdRevisionNo: 0,
    dimStdTblsUsed: dim(standard),
    dimMfgTblsUsed: dim(manufacturer),
    dimStdProcUsed: 0,
    dimMfgProcUsed: 0,
    dimMfgStatusUsed: 0,
    nbrPending: 0,
    stdTblsUsed: [...new Set(standard)].sort((a, b) => a - b),
    mfgTblsUsed: [...new Set(manufacturer)].sort((a, b) => a - b),
    stdProcUsed: [],
    mfgProcUsed: [],
    stdTblsWrite: [],
    mfgTblsWrite: [],
  });
}

function noFaults(): C1218MeterFaults {
  return {
    dropOutgoingPackets: 0,
    corruptOutgoingPackets: 0,
    dropIncomingPackets: 0,
    nakIncomingPackets: 0,
    dropOutgoingAcks: 0,
    ignoreIncomingAcks: 0,
    badTableChecksum: 0,
    refusals: [],
    responseDelayMs: 0,
  };
}

/** Consumes one occurrence of a counted fault; true if it applies now. */
function take(faults: C1218MeterFaults, name: Exclude<keyof C1218MeterFaults, 'refusals' | 'responseDelayMs'>): boolean {
  if (faults[name] <= 0) return false;
  faults[name]--;
  return true;
}

export class SimulatedC1218Meter extends EventEmitter {
  readonly tables: Map<number, C1218MeterTable>;
  readonly faults: C1218MeterFaults;
  state: C1218MeterState = 'base';
  /** The security service accepted the password in this session. */
  authorized = false;
  baudRate: number;
  /** Every request decoded, in order (undefined for those it could not decode). */
  readonly requests: Array<C1218Request | undefined> = [];
  /** Sessions started (identify answered). */
  sessions = 0;
  /** Returns to the base state because the channel was silent too long. */
  channelTrafficTimeouts = 0;
  private link: C1218Link | undefined;
  private stream: C1218Stream | undefined;
  private readonly password: Uint8Array;
  private trafficTimer: NodeJS.Timeout | undefined;
  /** A wait service's longer silence allowance, for the next gap only. */
  private waitAllowanceMs: number | undefined;
  private closed = false;
  private serving: Promise<void> | undefined;

  constructor(private readonly options: C1218MeterOptions = {}) {
    super();
    this.tables = options.tables ?? defaultC1218MeterTables();
    this.faults = { ...noFaults(), ...options.faults, refusals: [...(options.faults?.refusals ?? [])] };
    this.password = passwordBytes(options.password ?? SIM_C1218_PASSWORD);
    this.baudRate = options.initialBaudRate ?? 9600;
  }

  /** Opens a serial port (one end of a pty pair in tests) and serves on it. */
  static async openSerial(path: string, options: C1218MeterOptions = {}): Promise<SimulatedC1218Meter> {
    const stream = await openOpticalPort(path, { baudRate: options.initialBaudRate ?? 9600 });
    const meter = new SimulatedC1218Meter(options);
    meter.serve(stream, { ownsStream: true });
    return meter;
  }

  /** Link statistics of the stream served (retransmissions, duplicates discarded, NAKs...). */
  get linkStats(): C1218LinkStats | undefined {
    return this.link?.stats;
  }

  /** Adds faults to those pending (counts add up; refusals queue; a delay replaces the delay). */
  inject(faults: Partial<C1218MeterFaults>): void {
    for (const key of ['dropOutgoingPackets', 'corruptOutgoingPackets', 'dropIncomingPackets', 'nakIncomingPackets', 'dropOutgoingAcks', 'ignoreIncomingAcks', 'badTableChecksum'] as const) {
      this.faults[key] += faults[key] ?? 0;
    }
    this.faults.refusals.push(...(faults.refusals ?? []));
    if (faults.responseDelayMs !== undefined) this.faults.responseDelayMs = faults.responseDelayMs;
  }

  /** Serves C12.18 requests arriving on `stream` until it closes or close() is called. */
  serve(stream: C1218Stream, options: { ownsStream?: boolean } = {}): void {
    if (this.link) throw new Error('this simulated meter already serves a stream');
    this.stream = stream;
    this.ownsStream = options.ownsStream ?? false;
    const faults = this.faults;
    this.link = new C1218Link(stream, {
      acknowledgementTimeoutMs: this.options.acknowledgementTimeoutMs,
      interCharacterTimeoutMs: this.options.interCharacterTimeoutMs,
      channelTrafficTimeoutMs: this.options.channelTrafficTimeoutMs,
      retries: this.options.retries,
      packetSize: DEFAULT_PACKET_SIZE,
      onTraffic: () => this.restartTrafficTimer(),
      faults: {
        transmitPacket: (bytes) => {
          if (take(faults, 'dropOutgoingPackets')) return undefined;
          if (take(faults, 'corruptOutgoingPackets')) {
            const copy = Uint8Array.from(bytes);
            copy[6] = (copy[6] as number) ^ 0x01;
            return copy;
          }
          return bytes;
        },
        receivePacket: () => (take(faults, 'dropIncomingPackets') ? 'drop' : take(faults, 'nakIncomingPackets') ? 'nak' : 'accept'),
        transmitAck: () => !take(faults, 'dropOutgoingAcks'),
        receiveAck: () => !take(faults, 'ignoreIncomingAcks'),
      },
    });
    this.link.maxPackets = 1;
    this.serving = this.serveLoop(this.link);
  }

  private ownsStream = false;

  private async serveLoop(link: C1218Link): Promise<void> {
    for (;;) {
      let message: Uint8Array;
      try {
        message = await link.receiveMessage({ timeoutMs: Infinity });
      } catch (err) {
        if (err instanceof C1218Error && err.code === 'CLOSED') return;
        this.options.log?.warn(`c1218 meter: ${(err as Error).message}`);
        continue;
      }
      const { bytes, served, after } = this.handle(message);
      this.emit('request', served);
      if (this.faults.responseDelayMs > 0) {
        await this.delay(this.faults.responseDelayMs);
        if (this.closed) return;
      }
      try {
        await link.sendMessage(bytes);
      } catch (err) {
        if (err instanceof C1218Error && err.code === 'CLOSED') return;
        this.options.log?.warn(`c1218 meter: the response to ${served.request?.service ?? 'a request'} was not acknowledged: ${(err as Error).message}`);
        this.emit('response-failed', served, err);
        continue;
      }
      try {
        await after?.();
      } catch (err) {
        this.options.log?.warn(`c1218 meter: ${(err as Error).message}`);
      }
      this.emit('served', served);
    }
  }

  /** The response to one request, and what to do once it is acknowledged (baud switch, return to base state). */
  private handle(message: Uint8Array): { bytes: Uint8Array; served: C1218MeterServed; after?: () => Promise<void> } {
    let request: C1218Request | undefined;
    const refuse = (name: RefusalName): { bytes: Uint8Array; served: C1218MeterServed } => ({ bytes: encodeRefusal(name), served: { request, response: name } });
    const ok = (bytes: Uint8Array = encodeOkResponse()): { bytes: Uint8Array; served: C1218MeterServed } => ({ bytes, served: { request, response: 'OK' } });
    try {
      request = decodeRequest(message);
    } catch (err) {
      this.requests.push(undefined);
      return refuse(err instanceof C1218Error && err.code === 'UNSUPPORTED_SERVICE' ? 'SNS' : 'ERR');
    }
    this.requests.push(request);
    const refusal = this.faults.refusals.shift();
    if (refusal) return refuse(refusal);
    // Terminate is always accepted: it is how a client resets a meter whatever state it left it in.
    if (this.state === 'base' && request.service !== 'identify' && request.service !== 'terminate') return refuse('ISSS');
    switch (request.service) {
      case 'identify': {
        this.state = 'identified';
        this.authorized = false;
        this.sessions++;
        const id = this.options.identification ?? { standard: 0, version: 1, revision: 0 };
        return ok(encodeIdentifyResponse(id));
      }
      case 'negotiate': {
        if (this.state !== 'identified') return refuse('ISSS');
        if (request.packetSize <= PACKET_OVERHEAD || request.maxPackets < 1) return refuse('IAR');
        const supported = this.options.baudRates ?? C1218_BAUD_RATES;
        const agreed: NegotiateResponse = {
          packetSize: Math.min(request.packetSize, this.options.maxPacketSize ?? 256),
          maxPackets: Math.min(request.maxPackets, this.options.maxPackets ?? 8),
        };
        if (request.baudRates.length > 0) agreed.baudRate = request.baudRates.find((baud) => supported.includes(baud)) ?? this.baudRate;
        return {
          ...ok(encodeNegotiateResponse(agreed)),
          after: async () => {
            const link = this.link;
            if (!link) return;
            link.packetSize = agreed.packetSize;
            link.maxPackets = agreed.maxPackets;
            if (agreed.baudRate !== undefined && agreed.baudRate !== 0 && agreed.baudRate !== this.baudRate) await this.switchBaudRate(agreed.baudRate);
          },
        };
      }
      case 'logon':
        if (this.state !== 'identified') return refuse('ISSS');
        this.state = 'session';
        return ok();
      case 'security':
        if (this.state !== 'session') return refuse('ISSS');
        if (!request.password.every((byte, i) => byte === this.password[i])) return refuse('ERR');
        this.authorized = true;
        return ok();
      case 'logoff':
        if (this.state !== 'session') return refuse('ISSS');
        this.state = 'identified';
        this.authorized = false;
        return ok();
      case 'wait':
        this.waitAllowanceMs = request.seconds * 1000;
        return ok();
      case 'terminate':
        return { ...ok(), after: () => this.returnToBaseState() };
      case 'full-read':
      case 'partial-read': {
        if (this.state !== 'session') return refuse('ISSS');
        const table = this.tables.get(request.table);
        if (!table) return refuse('ONP');
        if (table.protected && !this.authorized) return refuse('ISC');
        let data = table.data;
        if (request.service === 'partial-read') {
          if (request.offset + request.count > data.length) return refuse('IAR');
          data = data.subarray(request.offset, request.offset + request.count);
        }
        const link = this.link;
        const room = link ? link.maxPackets * (link.packetSize - PACKET_OVERHEAD) : 0;
        if (data.length + 4 > room) return refuse('ONP');
        return ok(encodeReadResponse(data, { corruptChecksum: take(this.faults, 'badTableChecksum') }));
      }
    }
  }

  /** The response delay fault; close() cuts it short. */
  private delay(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.cancelDelay = undefined;
        resolve();
      }, ms);
      this.cancelDelay = () => {
        clearTimeout(timer);
        this.cancelDelay = undefined;
        resolve();
      };
    });
  }

  private cancelDelay: (() => void) | undefined;

  private async switchBaudRate(baudRate: number): Promise<void> {
    this.baudRate = baudRate;
    await this.stream?.setBaudRate?.(baudRate);
  }

  /** Terminate or channel silence: base state, default packet size, initial baud rate, toggle bits afresh. */
  private async returnToBaseState(): Promise<void> {
    this.state = 'base';
    this.authorized = false;
    this.waitAllowanceMs = undefined;
    if (this.trafficTimer) clearTimeout(this.trafficTimer);
    this.trafficTimer = undefined;
    const link = this.link;
    if (link) {
      link.packetSize = DEFAULT_PACKET_SIZE;
      link.maxPackets = 1;
      link.forgetIncomingSequence();
      link.resetOutgoingSequence();
    }
    const initial = this.options.initialBaudRate ?? 9600;
    if (this.baudRate !== initial) await this.switchBaudRate(initial);
    this.emit('state', this.state);
  }

  private restartTrafficTimer(): void {
    if (this.trafficTimer) clearTimeout(this.trafficTimer);
    this.trafficTimer = undefined;
    if (this.state === 'base' || this.closed) return;
    const timeoutMs = this.waitAllowanceMs ?? this.options.channelTrafficTimeoutMs ?? 6000;
    this.waitAllowanceMs = undefined;
    this.trafficTimer = setTimeout(() => {
      this.trafficTimer = undefined;
      this.channelTrafficTimeouts++;
      this.options.log?.info(`c1218 meter: no traffic for ${timeoutMs} ms, back to the base state`);
      void this.returnToBaseState();
    }, timeoutMs);
    // A meter left idle must not keep a process alive.
    this.trafficTimer.unref();
  }

  /** Stops serving; closes the stream if the meter opened it (openSerial). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.trafficTimer) clearTimeout(this.trafficTimer);
    this.trafficTimer = undefined;
    this.cancelDelay?.();
    this.link?.detach();
    if (this.ownsStream) await this.stream?.close();
    await this.serving;
  }
}
