import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { C1218Error } from './errors.js';

/**
 * What the C12.18 link layer needs of a byte channel: an optical probe's
 * serial port in production (serial.ts), an in-memory pair in tests. Writes
 * resolve once the bytes are handed to the channel, in order.
 */
export interface C1218Stream {
  write(bytes: Uint8Array): Promise<void>;
  on(event: 'data', listener: (chunk: Uint8Array) => void): unknown;
  on(event: 'close', listener: () => void): unknown;
  off(event: 'data', listener: (chunk: Uint8Array) => void): unknown;
  off(event: 'close', listener: () => void): unknown;
  close(): Promise<void>;
  /**
   * Switches the channel's baud rate after what was written so far has gone
   * out (negotiate changes it once the response is acknowledged). Streams
   * without a baud rate leave it out.
   */
  setBaudRate?(baudRate: number): Promise<void>;
}

export interface MemoryStreamOptions {
  /**
   * Scramble bytes arriving at a baud rate other than the receiver's, as a
   * UART does, so tests see a missed baud switch (default true).
   */
  garbleOnBaudMismatch?: boolean;
  /** Both ends' baud rate at the start (default 9600, the C12.18 initial rate). */
  baudRate?: number;
}

/**
 * One end of an in-memory byte channel. Bytes are delivered on a later turn of
 * the event loop, in order, as a serial line would: never inside write().
 */
export class MemoryStream extends EventEmitter implements C1218Stream {
  peer: MemoryStream | undefined;
  baudRate: number;
  closed = false;
  /** Every chunk written by this end, for tests that look at the wire. */
  readonly written: Uint8Array[] = [];

  constructor(private readonly options: Required<MemoryStreamOptions>) {
    super();
    this.baudRate = options.baudRate;
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.closed) throw new C1218Error('CLOSED', 'the stream is closed');
    const copy = Uint8Array.from(bytes);
    this.written.push(copy);
    const peer = this.peer;
    const sentAt = this.baudRate;
    setImmediate(() => peer?.deliver(copy, sentAt));
  }

  private deliver(chunk: Uint8Array, sentAtBaud: number): void {
    if (this.closed) return;
    const garbled = this.options.garbleOnBaudMismatch && sentAtBaud !== this.baudRate;
    this.emit('data', garbled ? chunk.map((b) => b ^ 0x5a) : chunk);
  }

  async setBaudRate(baudRate: number): Promise<void> {
    this.baudRate = baudRate;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.emit('close');
    const peer = this.peer;
    if (peer && !peer.closed) setImmediate(() => void peer.close());
  }
}

/** Two connected in-memory streams: what one writes, the other receives. */
export function createMemoryStreamPair(options: MemoryStreamOptions = {}): [MemoryStream, MemoryStream] {
  const resolved: Required<MemoryStreamOptions> = { garbleOnBaudMismatch: options.garbleOnBaudMismatch ?? true, baudRate: options.baudRate ?? 9600 };
  const a = new MemoryStream(resolved);
  const b = new MemoryStream(resolved);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/**
 * A C1218Stream over a Node Duplex (a socket, a SerialPort): write resolves on
 * the write callback; the duplex's 'data' and 'close' pass through.
 */
export class DuplexC1218Stream extends EventEmitter implements C1218Stream {
  private closing: Promise<void> | undefined;

  constructor(
    readonly duplex: Duplex,
    private readonly hooks: { setBaudRate?: (baudRate: number) => Promise<void>; close?: () => Promise<void> } = {},
  ) {
    super();
    duplex.on('data', (chunk: Buffer) => this.emit('data', new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)));
    duplex.on('close', () => this.emit('close'));
    // A port error (unplugged probe) closes the channel: the link layer reports CLOSED.
    duplex.on('error', () => this.emit('close'));
    if (hooks.setBaudRate) this.setBaudRate = hooks.setBaudRate;
  }

  setBaudRate?: (baudRate: number) => Promise<void>;

  write(bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.duplex.destroyed || this.duplex.writableEnded) {
        reject(new C1218Error('CLOSED', 'the stream is closed'));
        return;
      }
      this.duplex.write(Buffer.from(bytes), (err) => (err ? reject(new C1218Error('CLOSED', `write failed: ${err.message}`)) : resolve()));
    });
  }

  close(): Promise<void> {
    this.closing ??= this.hooks.close
      ? this.hooks.close()
      : new Promise<void>((resolve) => {
          if (this.duplex.destroyed) {
            resolve();
            return;
          }
          this.duplex.once('close', () => resolve());
          this.duplex.destroy();
        });
    return this.closing;
  }
}
