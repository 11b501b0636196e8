/**
 * A simulated SLIP 802.15.4 radio: the far end of the gateway's serial radio
 * line, for tests and the simulator. It opens a serial path (one end of a pty
 * pair in tests), hands the MAC frames the host sends to whoever listens, and
 * sends MAC frames to the host, with the RSSI/LQI trailer when configured in
 * 'rssi-lqi' mode (docs/serial-radio.md).
 *
 * It knows nothing of what is inside a frame: the simulated meters behind it
 * build and parse 802.15.4/6LoWPAN themselves.
 *
 * Fault injection, to test the host's side:
 * - dropNextFromHost(n): the next n frames from the host vanish (the radio
 *   failed to transmit them);
 * - dropNextToHost(n): the next n frames to the host are not sent (lost in
 *   the air);
 * - corruptNextToHost(): the next frame to the host goes out with a bad SLIP
 *   escape, so the host's decoder must drop it and resynchronise;
 * - sendRaw(bytes): anything at all on the line.
 */
import { EventEmitter } from 'node:events';
import { DEFAULT_MAX_SLIP_FRAME_BYTES, SLIP_ESC, SlipDecoder, encodeSlip } from '../lowpan/slip.js';
import {
  appendRadioMetadata,
  openSerialPort,
  type RadioMetadata,
  type RadioMetadataMode,
  type RadioPort,
  type RadioPortOpener,
} from '../mesh/radio-link.js';

export interface SimulatedRadioOptions {
  path: string;
  /** Default 115200. */
  baudRate?: number;
  /** What the radio appends to frames for the host. Default 'none'. */
  metadata?: RadioMetadataMode;
  /** RSSI (dBm) put on frames to the host in 'rssi-lqi' mode unless send() gives one. Default -60. */
  rssi?: number;
  /** LQI put on frames to the host in 'rssi-lqi' mode unless send() gives one. Default 200. */
  lqi?: number;
  /** Longest frame accepted from the host. Default 2,048. */
  maxFrameBytes?: number;
  /** Default: serialport's SerialPort. */
  openPort?: RadioPortOpener;
}

export interface SimulatedRadioStats {
  /** Frames from the host handed on as 'frame' events. */
  framesFromHost: number;
  /** Frames from the host dropped by dropNextFromHost(). */
  droppedFromHost: number;
  /** Frames from the host the decoder rejected (bad escape, too long). */
  badFramesFromHost: number;
  /** Frames written to the host (corrupted ones included). */
  framesToHost: number;
  /** Frames to the host dropped by dropNextToHost(). */
  droppedToHost: number;
  /** Frames to the host sent with a bad escape by corruptNextToHost(). */
  corruptedToHost: number;
}

export interface SimulatedRadioEvents {
  /** A MAC frame the host sent. */
  frame: [Buffer];
  /** The port closed: close() was called, or the line went away (pty gone). */
  close: [{ reason: string }];
  /** Only emitted when someone listens. */
  error: [Error];
}

export class SimulatedRadio extends EventEmitter<SimulatedRadioEvents> {
  readonly path: string;
  readonly metadata: RadioMetadataMode;
  private readonly port: RadioPort;
  private readonly decoder: SlipDecoder;
  private readonly defaultMetadata: RadioMetadata;
  private readonly counts: SimulatedRadioStats = {
    framesFromHost: 0,
    droppedFromHost: 0,
    badFramesFromHost: 0,
    framesToHost: 0,
    droppedToHost: 0,
    corruptedToHost: 0,
  };
  private dropFromHost = 0;
  private dropToHost = 0;
  private corruptToHost = 0;
  private closed = false;

  /** Opens `options.path` and starts listening. */
  static async open(options: SimulatedRadioOptions): Promise<SimulatedRadio> {
    const openPort = options.openPort ?? openSerialPort;
    const port = await openPort({ path: options.path, baudRate: options.baudRate ?? 115_200 });
    return new SimulatedRadio(options, port);
  }

  private constructor(options: SimulatedRadioOptions, port: RadioPort) {
    super();
    this.path = options.path;
    this.metadata = options.metadata ?? 'none';
    this.defaultMetadata = { rssi: options.rssi ?? -60, lqi: options.lqi ?? 200 };
    this.port = port;
    this.decoder = new SlipDecoder({
      maxFrameBytes: options.maxFrameBytes ?? DEFAULT_MAX_SLIP_FRAME_BYTES,
      onError: () => {
        this.counts.badFramesFromHost++;
      },
    });
    port.on('data', (chunk) => this.received(chunk));
    port.on('close', (error) => this.ended(error ? `port closed: ${error.message}` : 'port closed'));
    port.on('error', (error) => {
      if (this.listenerCount('error') > 0) this.emit('error', error);
    });
  }

  get stats(): SimulatedRadioStats {
    return { ...this.counts };
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** The next `count` frames from the host are silently dropped. */
  dropNextFromHost(count: number): void {
    this.dropFromHost += count;
  }

  /** The next `count` frames to the host are silently not sent (send() still resolves). */
  dropNextToHost(count: number): void {
    this.dropToHost += count;
  }

  /** The next frame to the host goes out with an invalid SLIP escape. */
  corruptNextToHost(count = 1): void {
    this.corruptToHost += count;
  }

  /**
   * Sends a MAC frame to the host as the radio would after receiving it from
   * the air; in 'rssi-lqi' mode with the trailer (from `metadata`, else the
   * configured defaults).
   */
  async send(macFrame: Uint8Array, metadata: Partial<RadioMetadata> = {}): Promise<void> {
    if (this.dropToHost > 0) {
      this.dropToHost--;
      this.counts.droppedToHost++;
      return;
    }
    const payload =
      this.metadata === 'rssi-lqi'
        ? appendRadioMetadata(macFrame, { rssi: metadata.rssi ?? this.defaultMetadata.rssi, lqi: metadata.lqi ?? this.defaultMetadata.lqi })
        : Buffer.from(macFrame);
    let encoded = encodeSlip(payload);
    if (this.corruptToHost > 0) {
      this.corruptToHost--;
      this.counts.corruptedToHost++;
      encoded = corruptEscape(encoded);
    }
    await this.sendRaw(encoded);
    this.counts.framesToHost++;
  }

  /** Writes bytes to the host as they are: noise, half frames, hand-made escapes. */
  sendRaw(bytes: Uint8Array): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`the simulated radio on ${this.path} is closed`));
    return new Promise<void>((resolve, reject) => {
      this.port.write(Buffer.from(bytes), (error) => (error ? reject(error) : resolve()));
    });
  }

  /**
   * The frames from the host from now on, as an async iterator that ends when
   * the radio closes. Frames arriving while the consumer is busy are queued.
   */
  frames(): AsyncIterableIterator<Buffer> {
    const queue: Buffer[] = [];
    const waiting: Array<(result: IteratorResult<Buffer>) => void> = [];
    let done = this.closed;
    const onFrame = (frame: Buffer): void => {
      const next = waiting.shift();
      if (next) next({ value: frame, done: false });
      else queue.push(frame);
    };
    const finish = (): void => {
      done = true;
      this.off('frame', onFrame);
      this.off('close', finish);
      for (const next of waiting.splice(0)) next({ value: undefined, done: true });
    };
    if (!done) {
      this.on('frame', onFrame);
      this.on('close', finish);
    }
    const iterator: AsyncIterableIterator<Buffer> = {
      next: () => {
        const frame = queue.shift();
        if (frame !== undefined) return Promise.resolve({ value: frame, done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => waiting.push(resolve));
      },
      return: () => {
        finish();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  /** Closes the port. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.port.isOpen) {
      await new Promise<void>((resolve) => this.port.close(() => resolve()));
    }
    this.ended('closed');
  }

  private received(chunk: Buffer): void {
    for (const frame of this.decoder.push(chunk)) {
      if (this.dropFromHost > 0) {
        this.dropFromHost--;
        this.counts.droppedFromHost++;
        continue;
      }
      this.counts.framesFromHost++;
      this.emit('frame', frame);
    }
  }

  private ended(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('close', { reason });
  }
}

/**
 * Makes the first escape sequence of an encoded frame invalid (ESC ESC_END
 * becomes ESC 0x00); a frame without one gets ESC 0x00 inserted in its
 * middle. Either way a correct decoder drops the frame.
 */
function corruptEscape(encoded: Buffer): Buffer {
  // Skip the leading END; the last byte is the closing END.
  for (let at = 1; at < encoded.length - 2; at++) {
    if (encoded[at] === SLIP_ESC) {
      const out = Buffer.from(encoded);
      out[at + 1] = 0x00;
      return out;
    }
  }
  const middle = Math.max(1, Math.floor(encoded.length / 2));
  return Buffer.concat([encoded.subarray(0, middle), Buffer.from([SLIP_ESC, 0x00]), encoded.subarray(middle)]);
}

/**
 * The far side of the air for a simulated meter behind the radio: frames the
 * host (the gateway) sent arrive as received frames, and what the meter sends
 * goes to the host as the radio would deliver it. A LowpanTransport on it is a
 * meter's 6LoWPAN stack.
 */
export function meterSideOf(radio: SimulatedRadio): {
  send(frame: Uint8Array): Promise<void>;
  on(event: 'frame', listener: (received: { frame: Buffer }) => void): unknown;
  off(event: 'frame', listener: (received: { frame: Buffer }) => void): unknown;
} {
  const adapters = new Map<(received: { frame: Buffer }) => void, (frame: Buffer) => void>();
  return {
    send: (frame) => radio.send(frame),
    on(_event, listener) {
      const adapter = (frame: Buffer): void => listener({ frame });
      adapters.set(listener, adapter);
      radio.on('frame', adapter);
      return this;
    },
    off(_event, listener) {
      const adapter = adapters.get(listener);
      if (adapter) radio.off('frame', adapter);
      adapters.delete(listener);
      return this;
    },
  };
}
