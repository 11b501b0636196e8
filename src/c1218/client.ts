import { C1218Error } from './errors.js';
import { C1218Link, type C1218LinkOptions } from './link.js';
import { MAX_PACKET_SIZE, PACKET_OVERHEAD } from './packet.js';
import {
  decodeIdentifyResponse,
  decodeNegotiateResponse,
  decodeOkResponse,
  decodeReadResponse,
  encodeRequest,
  passwordBytes,
  type C1218Request,
  type IdentifyResponse,
  type NegotiateResponse,
} from './services.js';
import type { C1218Stream } from './stream.js';

export interface C1218ClientOptions extends C1218LinkOptions {
  /**
   * Switches the local port to the baud rate the device agreed to in
   * negotiate, after the response was acknowledged. Default: the stream's own
   * setBaudRate; without either the baud stays (a pty, a socket).
   */
  setBaudRate?: (baudRate: number) => Promise<void>;
  /** The baud rate the port runs at when the session starts (default 9600, the C12.18 initial rate). */
  initialBaudRate?: number;
  /**
   * Quiet time after a baud switch before the next request (default 50 ms):
   * the device switches only once it has our ACK, and reconfiguring a UART
   * discards what it holds (serialport's update flushes both ways), so a
   * request sent at once can be lost and cost an acknowledgement timeout.
   */
  baudSwitchSettleMs?: number;
}

/** Default quiet time after a baud switch. */
export const BAUD_SWITCH_SETTLE_MS = 50;

export interface NegotiateOptions {
  /** Largest packet this side accepts (header and CRC included). */
  packetSize: number;
  /** Most packets in one transmission this side can buffer. */
  maxPackets: number;
  /** Baud rate to switch to; none keeps the current one. */
  baudRate?: number;
}

/**
 * A C12.18 client (the gateway's side of an optical port session): one method
 * per service, each sending the request through the link layer and decoding
 * the response; refusals come out as C1218Error with the response's code
 * (ISC, ONP, BSY...). Requests run one at a time, in call order.
 */
export class C1218Client {
  readonly link: C1218Link;
  /** The last identify response. */
  identification: IdentifyResponse | undefined;
  /** What the last negotiate agreed to. */
  negotiated: NegotiateResponse | undefined;
  baudRate: number;
  private readonly initialBaudRate: number;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly stream: C1218Stream,
    private readonly options: C1218ClientOptions = {},
  ) {
    this.link = new C1218Link(stream, options);
    this.baudRate = options.initialBaudRate ?? 9600;
    this.initialBaudRate = this.baudRate;
  }

  /** Sends any request's application data and returns the raw response (first byte the response code). */
  rawRequest(data: Uint8Array): Promise<Uint8Array> {
    const run = this.queue.then(() => this.link.request(data));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private send(request: C1218Request): Promise<Uint8Array> {
    return this.rawRequest(encodeRequest(request));
  }

  /** Identify (0x20): starts a session; the device's reference standard, version and revision. */
  async identify(): Promise<IdentifyResponse> {
    await this.queue;
    // A session starts afresh: the device's first packet is new whatever its toggle bit.
    this.link.forgetIncomingSequence();
    this.identification = decodeIdentifyResponse(await this.send({ service: 'identify' }));
    return this.identification;
  }

  /**
   * Negotiate (0x60-0x6B): agrees on packet size, packets per transmission and
   * baud rate. Both sides use the new packet size from the next packet; the
   * baud switches once the device's response is acknowledged, which the link
   * layer did before this resolves.
   */
  async negotiate(options: NegotiateOptions): Promise<NegotiateResponse> {
    if (!Number.isInteger(options.packetSize) || options.packetSize < PACKET_OVERHEAD + 1 || options.packetSize > MAX_PACKET_SIZE) {
      throw new C1218Error('BAD_ARGUMENT', `packet size must be from ${PACKET_OVERHEAD + 1} to ${MAX_PACKET_SIZE}, not ${options.packetSize}`);
    }
    const baudRates = options.baudRate === undefined ? [] : [options.baudRate];
    const response = decodeNegotiateResponse(await this.send({ service: 'negotiate', packetSize: options.packetSize, maxPackets: options.maxPackets, baudRates }));
    if (response.packetSize < PACKET_OVERHEAD + 1 || response.packetSize > options.packetSize) {
      throw new C1218Error('BAD_VALUE', `negotiate: the device chose packet size ${response.packetSize}, outside ${PACKET_OVERHEAD + 1}..${options.packetSize}`);
    }
    if (response.maxPackets < 1 || response.maxPackets > options.maxPackets) {
      throw new C1218Error('BAD_VALUE', `negotiate: the device chose ${response.maxPackets} packets per transmission, outside 1..${options.maxPackets}`);
    }
    this.link.packetSize = response.packetSize;
    this.link.maxPackets = response.maxPackets;
    this.negotiated = response;
    if (response.baudRate !== undefined && response.baudRate !== 0 && response.baudRate !== this.baudRate) await this.switchBaudRate(response.baudRate);
    return response;
  }

  private async switchBaudRate(baudRate: number): Promise<void> {
    const setBaudRate = this.options.setBaudRate ?? this.stream.setBaudRate?.bind(this.stream);
    if (setBaudRate) await setBaudRate(baudRate);
    this.baudRate = baudRate;
    const settleMs = this.options.baudSwitchSettleMs ?? BAUD_SWITCH_SETTLE_MS;
    if (settleMs > 0) await new Promise((resolve) => setTimeout(resolve, settleMs));
  }

  /** Wait (0x70): asks the device to keep the session for `seconds` of silence. */
  async wait(seconds: number): Promise<void> {
    decodeOkResponse(await this.send({ service: 'wait', seconds }), 'wait');
  }

  /** Logon (0x50): user id and a user name of up to 10 characters. */
  async logon(userId: number, user: string): Promise<void> {
    decodeOkResponse(await this.send({ service: 'logon', userId, user }), 'logon');
  }

  /** Security (0x51): the password, up to 20 bytes, padded with spaces. */
  async security(password: string | Uint8Array): Promise<void> {
    decodeOkResponse(await this.send({ service: 'security', password: passwordBytes(password) }), 'security');
  }

  /** Logoff (0x52): ends the logged-on session; the device stays identified. */
  async logoff(): Promise<void> {
    decodeOkResponse(await this.send({ service: 'logoff' }), 'logoff');
  }

  /** Terminate (0x21): returns the device to its base state (and its initial baud rate). */
  async terminate(): Promise<void> {
    decodeOkResponse(await this.send({ service: 'terminate' }), 'terminate');
    // The device is back at the initial baud rate; follow it.
    if (this.baudRate !== this.initialBaudRate) await this.switchBaudRate(this.initialBaudRate);
  }

  /** Full read (0x30): the whole table. */
  async fullRead(table: number): Promise<Uint8Array> {
    return decodeReadResponse(await this.send({ service: 'full-read', table }));
  }

  /** Partial read by offset (0x3F): `count` bytes from `offset`. */
  async partialRead(table: number, offset: number, count: number): Promise<Uint8Array> {
    return decodeReadResponse(await this.send({ service: 'partial-read', table, offset, count }));
  }

  /** Detaches from the stream (leaving it open). */
  detach(): void {
    this.link.detach();
  }
}
