/**
 * The serial line to the gateway's IEEE 802.15.4 radio module.
 *
 * One raw MAC frame (no FCS: the radio computes and checks it) per SLIP frame,
 * both ways, nothing added: any SLIP radio firmware works. Optionally
 * ('rssi-lqi') every frame from the radio carries a two-byte trailer with the
 * signal strength and link quality it was received with. docs/serial-radio.md
 * describes the wire format; this file is the transport that keeps the line
 * open across unplug and replug.
 */
import { EventEmitter } from 'node:events';
import { realpathSync } from 'node:fs';
import { readdir, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import type { SerialPort } from 'serialport';
import { DEFAULT_MAX_SLIP_FRAME_BYTES, SlipDecoder, encodeSlip, type SlipError } from '../lowpan/slip.js';
import { guardSerialPortHangup } from '../serial/index.js';

/** What the radio adds to the frames it passes to the host. */
export type RadioMetadataMode =
  /** Nothing: the SLIP payload is the MAC frame. */
  | 'none'
  /** Two trailer bytes after the MAC frame: RSSI (signed 8-bit, dBm), then LQI (0–255). */
  | 'rssi-lqi';

/** Bytes the 'rssi-lqi' extension adds after every frame from the radio. */
export const RADIO_METADATA_TRAILER_BYTES = 2;

export interface RadioMetadata {
  /** Received signal strength in dBm, -128 to 127. */
  rssi: number;
  /** Link quality indicator as the radio reports it, 0 to 255 (higher is better). */
  lqi: number;
}

/**
 * Appends the 'rssi-lqi' trailer to a MAC frame: the radio side of the
 * extension (the simulator uses it). Values outside the byte ranges saturate,
 * as a radio's would, instead of wrapping around to nonsense.
 */
export function appendRadioMetadata(frame: Uint8Array, metadata: RadioMetadata): Buffer {
  const out = Buffer.allocUnsafe(frame.length + RADIO_METADATA_TRAILER_BYTES);
  out.set(frame, 0);
  out.writeInt8(clampInteger(metadata.rssi, -128, 127), frame.length);
  out.writeUInt8(clampInteger(metadata.lqi, 0, 255), frame.length + 1);
  return out;
}

/**
 * Splits a SLIP payload from an 'rssi-lqi' radio into the MAC frame and its
 * metadata. Undefined when it is too short to hold a trailer and at least one
 * byte of frame. The frame is a view into `payload`, not a copy.
 */
export function splitRadioMetadata(payload: Buffer): ({ frame: Buffer } & RadioMetadata) | undefined {
  if (payload.length <= RADIO_METADATA_TRAILER_BYTES) return undefined;
  const end = payload.length - RADIO_METADATA_TRAILER_BYTES;
  return { frame: payload.subarray(0, end), rssi: payload.readInt8(end), lqi: payload.readUInt8(end + 1) };
}

function clampInteger(value: number, min: number, max: number): number {
  if (Number.isNaN(value)) return min;
  return Math.min(max, Math.max(min, Math.round(value)));
}

/** Why the radio link refused or reports something. Stable strings for logs and `msg.error.code`. */
export type RadioLinkErrorCode =
  /** send() while the port is not open (unplugged, reopening, not opened yet, or closed). Retransmission covers it. */
  | 'NOT_OPEN'
  /** send() of an empty frame: SLIP receivers ignore empty frames, so it would silently vanish. */
  | 'EMPTY_FRAME'
  /** send() of a frame longer than `maxFrameBytes`: the radio would drop it. */
  | 'FRAME_TOO_LARGE'
  /**
   * Opening the port failed for a reason other than the device not being there
   * (permission, busy, not a serial device); the link keeps retrying. A missing
   * device is no 'error': 'down' and 'retry' say it.
   */
  | 'OPEN_FAILED'
  /** Writing a frame to the port failed (usually: unplugged during the write). */
  | 'WRITE_FAILED'
  /** A frame from the radio with a bad SLIP escape; dropped. */
  | 'BAD_ESCAPE'
  /** In 'rssi-lqi' mode, a frame from the radio too short to hold the trailer; dropped. */
  | 'SHORT_FRAME'
  /** A frame from the radio longer than `maxFrameBytes`; dropped. */
  | 'OVERSIZE_FRAME'
  /** A 'frame', 'up', 'down' or 'retry' listener threw; the link goes on. */
  | 'LISTENER_FAILED';

export class RadioLinkError extends Error {
  override readonly name = 'RadioLinkError';
  constructor(
    readonly code: RadioLinkErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * The part of a serial port the link uses. serialport's SerialPort has it;
 * tests pass an in-memory fake. The opener resolves with an open port.
 */
export interface RadioPort {
  write(data: Buffer, callback: (error: Error | null | undefined) => void): unknown;
  /** Closes the port; the callback is told when it is closed (or failed to close). */
  close(callback?: (error: Error | null) => void): void;
  readonly isOpen: boolean;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  /** serialport passes a DisconnectedError when the device went away, null after close(). */
  on(event: 'close', listener: (error?: Error | null) => void): unknown;
  on(event: 'error', listener: (error: Error) => void): unknown;
  removeAllListeners(): unknown;
}

export interface RadioPortOpenOptions {
  path: string;
  baudRate: number;
}

/** Opens a port; rejects when it cannot (no such device, permission, busy). */
export type RadioPortOpener = (options: RadioPortOpenOptions) => Promise<RadioPort>;

/**
 * The production opener: serialport's SerialPort, 8N1, no flow control.
 * serialport is imported on first use, so code that only uses the SLIP and
 * metadata helpers (or a fake port) never loads the native binding.
 */
export const openSerialPort: RadioPortOpener = async ({ path, baudRate }) => {
  const { SerialPort: SerialPortClass } = await import('serialport');
  const port: SerialPort = new SerialPortClass({ path, baudRate, autoOpen: false });
  await new Promise<void>((resolve, reject) => port.open((error) => (error ? reject(error) : resolve())));
  // Before anything reads: nobody listens for 'data' yet, so no read is under way.
  guardSerialPortHangup(port.port);
  return port;
};

export interface SerialRadioLinkOptions {
  /** The port: `/dev/ttyUSB0`, or better a stable `/dev/serial/by-id/...` link (it survives renumbering on replug). */
  path: string;
  /** Default 115200. */
  baudRate?: number;
  /** Default 'none'. */
  metadata?: RadioMetadataMode;
  /** First delay before reopening after the port went away or failed to open; doubles per failure. Default 500 ms. */
  reopenDelayMs?: number;
  /** The longest delay between two open attempts. Default 10,000 ms. */
  maxReopenDelayMs?: number;
  /** Longest SLIP payload accepted either way (MAC frame, plus the trailer when received in 'rssi-lqi' mode). Default 2,048. */
  maxFrameBytes?: number;
  /** Default: serialport's SerialPort. */
  openPort?: RadioPortOpener;
  /** Wall clock for `receivedAt`. Default Date.now. */
  now?: () => number;
}

/** A frame from the radio. */
export interface RadioFrameEvent {
  /** The raw IEEE 802.15.4 MAC frame, without FCS. */
  frame: Buffer;
  /** Only in 'rssi-lqi' mode. */
  rssi?: number;
  /** Only in 'rssi-lqi' mode. */
  lqi?: number;
  /** When the host decoded it, ms since the epoch. */
  receivedAt: number;
}

export interface RadioLinkUpEvent {
  path: string;
  /** `path` with symlinks resolved (e.g. by-id → /dev/ttyACM0), for logs only; the link always opens `path`. */
  device: string;
  /** True when this is a reopen after the port went away, not the first open. */
  reopened: boolean;
}

export interface RadioLinkDownEvent {
  reason: string;
}

export interface RadioLinkRetryEvent {
  /** 1 for the first retry after the port went away (or the first open failed). */
  attempt: number;
  /** The delay before this attempt. */
  delayMs: number;
  /** Why the port is not open. */
  reason: string;
}

export interface SerialRadioLinkEvents {
  frame: [RadioFrameEvent];
  up: [RadioLinkUpEvent];
  down: [RadioLinkDownEvent];
  /** An attempt to open the port is scheduled. */
  retry: [RadioLinkRetryEvent];
  /**
   * Frames dropped (bad escape, too long, too short for the trailer), a throwing
   * 'frame' listener, an open failure other than a missing device. Emitted only
   * when someone listens: an unheard 'error' must not crash the gateway. Never
   * for an unplug or a missing device: 'down' and 'retry' say those, and an
   * 'error' would reject every pending once(link, 'up').
   */
  error: [RadioLinkError];
}

export interface SerialRadioLinkStats {
  /** Frames delivered as 'frame' events. */
  framesIn: number;
  /** Frames written to the port. */
  framesOut: number;
  /** Frames dropped for a bad SLIP escape, or too short for the metadata trailer. */
  badFrames: number;
  /** Frames dropped for being longer than `maxFrameBytes`. */
  oversizeFrames: number;
  /** Successful opens after the port had gone away. */
  reopens: number;
  /** Failed open attempts. */
  openFailures: number;
}

export type SerialRadioLinkState = 'idle' | 'opening' | 'up' | 'waiting' | 'closed';

/**
 * The transport to the radio. After open() it keeps the port open for as long
 * as it lives: when the port closes or fails (the radio was unplugged, its
 * USB bridge reset) it emits 'down', tries to open the same path again with a
 * backoff from `reopenDelayMs` doubling up to `maxReopenDelayMs`, and emits
 * 'up' when the device is back. Frames sent meanwhile are refused
 * ('NOT_OPEN') rather than queued: the CoAP layer above retransmits, and a
 * queue would deliver stale frames after a long outage.
 *
 * Nothing is thrown from port callbacks: problems are counters, and 'error'
 * events when anyone listens.
 */
export class SerialRadioLink extends EventEmitter<SerialRadioLinkEvents> {
  readonly path: string;
  readonly baudRate: number;
  readonly metadata: RadioMetadataMode;
  readonly maxFrameBytes: number;
  private readonly initialDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly openPort: RadioPortOpener;
  private readonly now: () => number;
  private readonly decoder: SlipDecoder;
  private readonly counts: SerialRadioLinkStats = {
    framesIn: 0,
    framesOut: 0,
    badFrames: 0,
    oversizeFrames: 0,
    reopens: 0,
    openFailures: 0,
  };
  private currentState: SerialRadioLinkState = 'idle';
  private port: RadioPort | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private everUp = false;
  /** The message of the last open failure reported, so a failure that persists (permission, busy) is reported once, not every retry. */
  private lastOpenFailure: string | undefined;
  /** The open attempt in flight, so close() can wait for it and close what it opened. */
  private opening: Promise<void> | undefined;

  constructor(options: SerialRadioLinkOptions) {
    super();
    if (typeof options.path !== 'string' || options.path === '') throw new TypeError('a serial port path is required');
    this.path = options.path;
    this.baudRate = positiveInteger('baudRate', options.baudRate ?? 115_200);
    this.metadata = options.metadata ?? 'none';
    if (this.metadata !== 'none' && this.metadata !== 'rssi-lqi') {
      throw new TypeError(`metadata must be 'none' or 'rssi-lqi', got ${String(this.metadata)}`);
    }
    this.initialDelayMs = positiveInteger('reopenDelayMs', options.reopenDelayMs ?? 500);
    this.maxDelayMs = Math.max(this.initialDelayMs, positiveInteger('maxReopenDelayMs', options.maxReopenDelayMs ?? 10_000));
    this.maxFrameBytes = positiveInteger('maxFrameBytes', options.maxFrameBytes ?? DEFAULT_MAX_SLIP_FRAME_BYTES);
    this.openPort = options.openPort ?? openSerialPort;
    this.now = options.now ?? Date.now;
    this.decoder = new SlipDecoder({ maxFrameBytes: this.maxFrameBytes, onError: (error) => this.slipError(error) });
  }

  get state(): SerialRadioLinkState {
    return this.currentState;
  }

  get isUp(): boolean {
    return this.currentState === 'up';
  }

  /** A copy of the counters. */
  get stats(): SerialRadioLinkStats {
    return { ...this.counts };
  }

  /**
   * Starts the link and resolves after the first open attempt: the link is up,
   * or it keeps retrying in the background ('retry' events; an 'OPEN_FAILED'
   * error too unless the device is simply not there). It never rejects: a
   * gateway that boots before its radio is plugged in must come up anyway.
   * Calling it again does nothing; a closed link stays closed.
   */
  async open(): Promise<void> {
    if (this.currentState !== 'idle') return this.opening;
    await this.tryOpen();
  }

  /** Writes one MAC frame (without FCS). Resolves once the port took it. */
  send(macFrame: Uint8Array): Promise<void> {
    const port = this.port;
    if (this.currentState !== 'up' || port === undefined) {
      return Promise.reject(new RadioLinkError('NOT_OPEN', `the radio port ${this.path} is not open (${this.currentState})`));
    }
    if (macFrame.length === 0) return Promise.reject(new RadioLinkError('EMPTY_FRAME', 'an empty frame cannot be sent over SLIP'));
    if (macFrame.length > this.maxFrameBytes) {
      return Promise.reject(new RadioLinkError('FRAME_TOO_LARGE', `frame of ${macFrame.length} bytes, at most ${this.maxFrameBytes}`));
    }
    const encoded = encodeSlip(macFrame);
    return new Promise<void>((resolve, reject) => {
      port.write(encoded, (error) => {
        if (error) {
          reject(new RadioLinkError('WRITE_FAILED', `writing to ${this.path} failed: ${error.message}`, { cause: error }));
        } else {
          this.counts.framesOut++;
          resolve();
        }
      });
    });
  }

  /** Stops retrying and closes the port. Idempotent. */
  async close(): Promise<void> {
    if (this.currentState === 'closed') return;
    const wasUp = this.currentState === 'up';
    this.currentState = 'closed';
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    // An open in flight finishes, sees 'closed' and closes what it opened.
    await this.opening;
    const port = this.port;
    this.port = undefined;
    if (port !== undefined) await closeQuietly(port);
    if (wasUp) this.notify('down', { reason: 'closed' });
  }

  private tryOpen(): Promise<void> {
    this.currentState = 'opening';
    const opening = this.openOnce().finally(() => {
      if (this.opening === opening) this.opening = undefined;
    });
    this.opening = opening;
    return opening;
  }

  private async openOnce(): Promise<void> {
    let port: RadioPort;
    try {
      port = await this.openPort({ path: this.path, baudRate: this.baudRate });
    } catch (error) {
      this.counts.openFailures++;
      const message = errorMessage(error);
      if (this.currentState === 'closed') return;
      // A device that is not there is what 'down' and 'retry' already say; anything else
      // (permission, busy, not a tty) needs someone's attention, once per outage and message.
      if (!isDeviceAbsent(error) && message !== this.lastOpenFailure) {
        this.lastOpenFailure = message;
        this.report(new RadioLinkError('OPEN_FAILED', `cannot open ${this.path}: ${message}`, { cause: error }));
      }
      this.scheduleRetry(message);
      return;
    }
    if (this.currentState === 'closed') {
      await closeQuietly(port);
      return;
    }
    // Synchronous on purpose: once per open, on a /dev path, and no await may come
    // between the open and attaching the listeners below.
    const device = resolvedPath(this.path);
    this.port = port;
    this.decoder.reset();
    port.on('data', (chunk) => {
      if (this.port === port) this.received(chunk);
    });
    port.on('close', (error) => this.lost(port, error ? `port closed: ${error.message}` : 'port closed'));
    // No 'error' event for this: the reason goes with 'down'. An 'error' here would also
    // reject everyone awaiting once(link, 'down') or once(link, 'up') (events.once does that).
    port.on('error', (error) => this.lost(port, `port error: ${error.message}`));
    const reopened = this.everUp;
    if (reopened) this.counts.reopens++;
    this.everUp = true;
    this.attempt = 0;
    this.lastOpenFailure = undefined;
    this.currentState = 'up';
    this.notify('up', { path: this.path, device, reopened });
  }

  /** The port went away (unplug, error, or it closed by itself). */
  private lost(port: RadioPort, reason: string): void {
    if (this.port !== port) return;
    this.port = undefined;
    if (port.isOpen) void closeQuietly(port);
    if (this.currentState === 'closed') return;
    this.notify('down', { reason });
    this.scheduleRetry(reason);
  }

  private scheduleRetry(reason: string): void {
    // A listener of 'down' or 'error' may have closed the link just now.
    if (this.currentState === 'closed') return;
    this.currentState = 'waiting';
    this.attempt++;
    const delayMs = Math.min(this.maxDelayMs, this.initialDelayMs * 2 ** Math.min(this.attempt - 1, 30));
    // The timer first: a 'retry' listener that calls close() then finds it and clears it.
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.currentState === 'waiting') void this.tryOpen();
    }, delayMs);
    this.notify('retry', { attempt: this.attempt, delayMs, reason });
  }

  private received(chunk: Buffer): void {
    for (const payload of this.decoder.push(chunk)) {
      // A frame listener may have closed the link.
      if (this.currentState !== 'up') return;
      let event: RadioFrameEvent;
      if (this.metadata === 'rssi-lqi') {
        const split = splitRadioMetadata(payload);
        if (split === undefined) {
          this.counts.badFrames++;
          this.report(new RadioLinkError('SHORT_FRAME', `a frame of ${payload.length} bytes cannot hold the RSSI/LQI trailer`));
          continue;
        }
        event = { frame: split.frame, rssi: split.rssi, lqi: split.lqi, receivedAt: this.now() };
      } else {
        event = { frame: payload, receivedAt: this.now() };
      }
      this.counts.framesIn++;
      this.notify('frame', event);
    }
  }

  /**
   * Emits to the link's listeners. One that throws must not unwind into
   * serialport's read loop, a timer or open(): it becomes a LISTENER_FAILED error.
   */
  private notify<K extends 'frame' | 'up' | 'down' | 'retry'>(event: K, ...args: SerialRadioLinkEvents[K]): void {
    try {
      // The cast: TypeScript does not relate a generic key's argument tuple to EventEmitter's emit signature.
      (this.emit as (event: K, ...args: SerialRadioLinkEvents[K]) => boolean)(event, ...args);
    } catch (error) {
      this.report(new RadioLinkError('LISTENER_FAILED', `a listener of '${event}' threw: ${errorMessage(error)}`, { cause: error }));
    }
  }

  private slipError(error: SlipError): void {
    if (error.code === 'OVERSIZE') {
      this.counts.oversizeFrames++;
      this.report(new RadioLinkError('OVERSIZE_FRAME', `dropped a frame from the radio: ${error.message}`, { cause: error }));
    } else {
      this.counts.badFrames++;
      this.report(new RadioLinkError('BAD_ESCAPE', `dropped a frame from the radio: ${error.message}`, { cause: error }));
    }
  }

  /** 'error' only with a listener: EventEmitter throws an unheard 'error', and that must not take the gateway down. */
  private report(error: RadioLinkError): void {
    if (this.listenerCount('error') === 0) return;
    try {
      this.emit('error', error);
    } catch {
      // An error listener that throws has nobody left to tell.
    }
  }
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new TypeError(`${name} must be a positive integer, got ${value}`);
  return value;
}

/** The device a by-id (or any) symlink points at, for logs; the path itself when it cannot be resolved. */
function resolvedPath(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/**
 * The device is not there (unplugged, not yet enumerated, pty gone). serialport's
 * open errors carry no errno code, only the strerror text, so the text decides.
 */
function isDeviceAbsent(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === 'ENOENT' || code === 'ENODEV' || code === 'ENXIO') return true;
  return /No such file or directory|No such device/i.test(errorMessage(error));
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function closeQuietly(port: RadioPort): Promise<void> {
  port.removeAllListeners();
  // A port that errors after we stopped listening must not become an unhandled 'error' event.
  port.on('error', () => undefined);
  if (!port.isOpen) return Promise.resolve();
  return new Promise<void>((resolve) => {
    try {
      port.close(() => resolve());
    } catch {
      resolve();
    }
  });
}

/** A serial port as listSerialPorts() reports it. */
export interface SerialPortInfo {
  /** The device path, e.g. /dev/ttyACM0. */
  path: string;
  /** The stable /dev/serial/by-id/... links pointing at it (configure one of these). */
  byId: string[];
  manufacturer?: string;
  serialNumber?: string;
  vendorId?: string;
  productId?: string;
  pnpId?: string;
  locationId?: string;
}

/** What serialport's list() yields per port. */
type ListedPort = Awaited<ReturnType<typeof SerialPort.list>>[number];

export interface ListSerialPortsOptions {
  /** Default: serialport's SerialPort.list (which runs `udevadm info -e` on Linux). */
  list?: () => Promise<ListedPort[]>;
  /** Default /dev/serial/by-id. */
  byIdDir?: string;
  /** Give up on the listing after this long. Default 5,000 ms. */
  timeoutMs?: number;
}

/**
 * The serial ports of this machine, with their /dev/serial/by-id names.
 *
 * On Linux serialport lists ports through udev (`udevadm`); in a container
 * without udev that fails. Then this says why, as `unavailable`, instead of
 * throwing: the port can still be configured by its path.
 */
export async function listSerialPorts(options: ListSerialPortsOptions = {}): Promise<{ ports: SerialPortInfo[] } | { unavailable: string }> {
  const list =
    options.list ??
    (async (): Promise<ListedPort[]> => {
      const { SerialPort: SerialPortClass } = await import('serialport');
      return SerialPortClass.list();
    });
  let listed: ListedPort[];
  let timer: NodeJS.Timeout | undefined;
  try {
    const timeoutMs = options.timeoutMs ?? 5000;
    listed = await Promise.race([
      list(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (error) {
    const message = errorMessage(error);
    const noUdev = /udevadm|ENOENT/.test(message);
    return {
      unavailable: noUdev
        ? `cannot list serial ports: udev is not available here (${message}); configure the port by its path, e.g. /dev/ttyUSB0`
        : `cannot list serial ports: ${message}; configure the port by its path, e.g. /dev/ttyUSB0`,
    };
  } finally {
    clearTimeout(timer);
  }

  const byIdDir = options.byIdDir ?? '/dev/serial/by-id';
  const byIdTargets = new Map<string, string[]>();
  const names = await readdir(byIdDir).catch(() => [] as string[]);
  for (const name of names.sort()) {
    const link = join(byIdDir, name);
    const target = await realpath(link).catch(() => undefined);
    if (target === undefined) continue;
    const links = byIdTargets.get(target) ?? [];
    links.push(link);
    byIdTargets.set(target, links);
  }

  const ports: SerialPortInfo[] = [];
  const seen = new Set<string>();
  for (const port of listed) {
    const device = await realpath(port.path).catch(() => port.path);
    seen.add(device);
    ports.push({
      path: port.path,
      byId: byIdTargets.get(device) ?? [],
      ...definedFields(port),
    });
  }
  // A by-id link whose device the listing missed is still a port someone can configure.
  for (const [device, links] of byIdTargets) {
    if (!seen.has(device)) ports.push({ path: device, byId: links });
  }
  return { ports };
}

function definedFields(port: ListedPort): Omit<SerialPortInfo, 'path' | 'byId'> {
  const out: Omit<SerialPortInfo, 'path' | 'byId'> = {};
  for (const key of ['manufacturer', 'serialNumber', 'vendorId', 'productId', 'pnpId', 'locationId'] as const) {
    const value = port[key];
    if (typeof value === 'string' && value !== '') out[key] = value;
  }
  return out;
}
