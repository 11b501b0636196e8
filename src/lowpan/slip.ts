/**
 * SLIP (RFC 1055) framing for the serial line to the 802.15.4 radio.
 *
 * SLIP is what nearly every serial 802.15.4 radio firmware speaks (Contiki's
 * slip-radio, RIOT's ethos/slipdev, OpenThread's ot-rcp in raw mode), so the
 * gateway uses it unchanged: one raw MAC frame per SLIP frame, nothing added.
 *
 * Pure code: no serial port, no timers. The transport (src/mesh/radio-link.ts)
 * and the radio simulator (src/sim/radio.ts) feed it bytes.
 */

/** Ends a frame (and, sent first, flushes line noise into a frame of its own). */
export const SLIP_END = 0xc0;
/** Starts a two-byte escape sequence. */
export const SLIP_ESC = 0xdb;
/** After ESC: stands for a data byte 0xC0. */
export const SLIP_ESC_END = 0xdc;
/** After ESC: stands for a data byte 0xDB. */
export const SLIP_ESC_ESC = 0xdd;

/**
 * The largest decoded frame kept by default. An IEEE 802.15.4-2006 frame is at
 * most 127 bytes; the SUN PHYs of 802.15.4g (Wi-SUN meters) allow 2,047. The
 * limit is what keeps a line that never sends END (a wrong baud rate, a radio
 * printing a boot log) from growing memory without bound.
 */
export const DEFAULT_MAX_SLIP_FRAME_BYTES = 2048;

/**
 * Encodes one frame: END, the escaped bytes, END.
 *
 * The leading END is what RFC 1055 suggests: whatever noise the line picked up
 * since the last frame is terminated as a (bad) frame of its own instead of
 * being glued to the front of this one. Receivers ignore the empty frame it
 * makes between two back-to-back frames.
 */
export function encodeSlip(frame: Uint8Array): Buffer {
  let specials = 0;
  for (const byte of frame) {
    if (byte === SLIP_END || byte === SLIP_ESC) specials++;
  }
  const out = Buffer.allocUnsafe(frame.length + specials + 2);
  let at = 0;
  out[at++] = SLIP_END;
  for (const byte of frame) {
    if (byte === SLIP_END) {
      out[at++] = SLIP_ESC;
      out[at++] = SLIP_ESC_END;
    } else if (byte === SLIP_ESC) {
      out[at++] = SLIP_ESC;
      out[at++] = SLIP_ESC_ESC;
    } else {
      out[at++] = byte;
    }
  }
  out[at++] = SLIP_END;
  return out;
}

/** Why the decoder dropped a frame. */
export type SlipErrorCode =
  /** ESC followed by something other than ESC_END or ESC_ESC (or by END): the frame is corrupt. */
  | 'BAD_ESCAPE'
  /** The frame grew past the decoder's maximum before its END came. */
  | 'OVERSIZE';

export class SlipError extends Error {
  override readonly name = 'SlipError';
  constructor(
    readonly code: SlipErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface SlipDecoderOptions {
  /** Frames longer than this (decoded) are dropped and counted. Default 2,048. */
  maxFrameBytes?: number;
  /**
   * Told about every dropped frame, once per frame. The decoder never throws on
   * bad input: a serial line delivers garbage sometimes and that is not an
   * exception.
   */
  onError?: (error: SlipError) => void;
}

/** What the decoder has seen since it was made. */
export interface SlipDecoderStats {
  /** Complete, well-formed frames returned by push(). */
  frames: number;
  /** Frames dropped for a bad escape sequence. */
  badEscapes: number;
  /** Frames dropped for being longer than the maximum. */
  oversizeFrames: number;
}

/**
 * Incremental SLIP decoder: push() whatever chunk the serial port delivered,
 * get back the frames it completed.
 *
 * Memory is bounded: one buffer of `maxFrameBytes`, allocated once. A dropped
 * frame (bad escape, too long) puts the decoder in a discarding state until
 * the next END, where it resynchronises; nothing of the bad frame leaks into
 * the next one. Empty frames (END END) are not frames and are skipped.
 */
export class SlipDecoder {
  readonly maxFrameBytes: number;
  private readonly buffer: Buffer;
  private length = 0;
  /** The previous byte was ESC. */
  private escaping = false;
  /** The current frame was dropped; skip bytes until END. */
  private discarding = false;
  private readonly onError: ((error: SlipError) => void) | undefined;
  private readonly counts: SlipDecoderStats = { frames: 0, badEscapes: 0, oversizeFrames: 0 };

  constructor(options: SlipDecoderOptions = {}) {
    const max = options.maxFrameBytes ?? DEFAULT_MAX_SLIP_FRAME_BYTES;
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`maxFrameBytes must be a positive integer, got ${max}`);
    this.maxFrameBytes = max;
    this.buffer = Buffer.alloc(max);
    this.onError = options.onError;
  }

  /** A copy of the counters. */
  get stats(): SlipDecoderStats {
    return { ...this.counts };
  }

  /** Bytes of an unfinished frame held right now (at most `maxFrameBytes`). */
  get bufferedBytes(): number {
    return this.length;
  }

  /**
   * Forgets any unfinished frame. The transport calls it when the port is
   * opened again, so the half frame that was on the wire when the radio was
   * unplugged is not joined to the first frame after the replug.
   */
  reset(): void {
    this.length = 0;
    this.escaping = false;
    this.discarding = false;
  }

  /** Feeds bytes; returns the frames completed by them (each a fresh Buffer), in order. */
  push(chunk: Uint8Array): Buffer[] {
    const frames: Buffer[] = [];
    for (const byte of chunk) {
      if (byte === SLIP_END) {
        if (this.discarding) {
          // The dropped frame ends here: in sync again.
        } else if (this.escaping) {
          this.drop('BAD_ESCAPE', 'ESC followed by END: the frame was cut off mid-escape');
        } else if (this.length > 0) {
          frames.push(Buffer.from(this.buffer.subarray(0, this.length)));
          this.counts.frames++;
        }
        this.reset();
        continue;
      }
      if (this.discarding) continue;
      let data: number;
      if (this.escaping) {
        this.escaping = false;
        if (byte === SLIP_ESC_END) data = SLIP_END;
        else if (byte === SLIP_ESC_ESC) data = SLIP_ESC;
        else {
          this.drop('BAD_ESCAPE', `ESC followed by 0x${byte.toString(16).padStart(2, '0')}`);
          continue;
        }
      } else if (byte === SLIP_ESC) {
        this.escaping = true;
        continue;
      } else {
        data = byte;
      }
      if (this.length >= this.maxFrameBytes) {
        this.drop('OVERSIZE', `frame longer than ${this.maxFrameBytes} bytes`);
        continue;
      }
      this.buffer[this.length++] = data;
    }
    return frames;
  }

  private drop(code: SlipErrorCode, message: string): void {
    this.discarding = true;
    this.escaping = false;
    this.length = 0;
    if (code === 'BAD_ESCAPE') this.counts.badEscapes++;
    else this.counts.oversizeFrames++;
    this.onError?.(new SlipError(code, message));
  }
}
