import { C1218Error } from './errors.js';
import {
  ACK,
  ctrlByte,
  DEFAULT_PACKET_SIZE,
  encodePacket,
  MAX_PACKET_SIZE,
  NAK,
  PACKET_OVERHEAD,
  PacketDecoder,
  packetFlags,
  type DecodedPacket,
  type LinkUnit,
} from './packet.js';
import type { C1218Stream } from './stream.js';

/** The link-layer timeouts of ANSI C12.18-2006, in milliseconds. */
export interface C1218Timeouts {
  /** How long a sender waits for ACK or NAK after a packet before retransmitting (2 s). */
  acknowledgementTimeoutMs: number;
  /** Longest silence between two bytes of one packet; then the partial packet is dropped and NAKed (500 ms). */
  interCharacterTimeoutMs: number;
  /** How long a requester waits for the response to an acknowledged request before NAKing to ask again (2 s). */
  responseTimeoutMs: number;
  /** Silence after which a device drops the session and returns to its base state (6 s). */
  channelTrafficTimeoutMs: number;
}

export const C1218_TIMEOUTS: Readonly<C1218Timeouts> = Object.freeze({
  acknowledgementTimeoutMs: 2000,
  interCharacterTimeoutMs: 500,
  responseTimeoutMs: 2000,
  channelTrafficTimeoutMs: 6000,
});

/** Retransmissions after the first attempt before a send (or a wait for a response) fails. */
export const C1218_DEFAULT_RETRIES = 3;

/**
 * Where a device simulator loses, breaks or refuses traffic on purpose. Each
 * hook sees one unit of traffic; without hooks the link is faithful.
 */
export interface LinkFaultHooks {
  /** A packet about to be written: the bytes to send instead, or undefined to lose it. */
  transmitPacket?(bytes: Uint8Array): Uint8Array | undefined;
  /** A valid incoming packet: handle it, act as if it never arrived ('drop'), or NAK it. */
  receivePacket?(packet: DecodedPacket): 'accept' | 'drop' | 'nak';
  /** Whether an ACK this side sends reaches the peer. */
  transmitAck?(): boolean;
  /** Whether an ACK from the peer is seen. */
  receiveAck?(): boolean;
}

export interface C1218LinkOptions extends Partial<C1218Timeouts> {
  /** Retransmissions after the first attempt (default 3). */
  retries?: number;
  /** <identity> of outgoing packets (0 on an optical port). */
  identity?: number;
  /** Largest packet sent until negotiate changes it (default 64, the C12.18 default). */
  packetSize?: number;
  /** Incoming packets claiming more are refused as BAD_LENGTH (default 8192). */
  maxIncomingPacketSize?: number;
  faults?: LinkFaultHooks;
  /** Called on every incoming byte chunk (a device restarts its channel traffic timer). */
  onTraffic?: () => void;
  /** Called for every link event, for logs and tests. */
  onEvent?: (event: LinkEvent) => void;
}

export type LinkEvent =
  | { type: 'packet-sent'; bytes: Uint8Array; retransmission: boolean }
  | { type: 'packet-lost'; retransmission: boolean }
  | { type: 'packet-received'; packet: DecodedPacket }
  | { type: 'duplicate-discarded'; packet: DecodedPacket }
  | { type: 'ack-sent' | 'nak-sent' | 'ack-received' | 'nak-received' }
  | { type: 'error'; error: C1218Error }
  | { type: 'timeout'; waitingFor: 'ack' | 'response' };

export interface C1218LinkStats {
  packetsSent: number;
  packetsReceived: number;
  retransmissions: number;
  acksSent: number;
  naksSent: number;
  naksReceived: number;
  duplicatesDiscarded: number;
  badCrc: number;
  badLength: number;
  garbageBytes: number;
  interCharacterTimeouts: number;
  timeouts: number;
}

type InboxItem = { kind: 'ack' } | { kind: 'nak' } | { kind: 'packet'; packet: DecodedPacket };

/**
 * The C12.18 data-link layer over a byte stream, for either side (one send or
 * receive at a time; C1218Client queues its requests): splits a
 * message into packets of the negotiated size, waits for each ACK and
 * retransmits on NAK or acknowledgement timeout; on the receiving side ACKs
 * good packets, NAKs broken ones, discards duplicates (same toggle bit and CRC
 * as the last packet accepted: a retransmission after a lost ACK) and
 * reassembles multi-packet transmissions.
 *
 * Two tolerances beyond the letter of the standard keep a session going when
 * an ACK is lost: a packet arriving while an ACK is awaited counts as that ACK
 * (the peer could only answer if it got our packet), and the packet is kept
 * for the next receive.
 */
export class C1218Link {
  readonly stats: C1218LinkStats = {
    packetsSent: 0,
    packetsReceived: 0,
    retransmissions: 0,
    acksSent: 0,
    naksSent: 0,
    naksReceived: 0,
    duplicatesDiscarded: 0,
    badCrc: 0,
    badLength: 0,
    garbageBytes: 0,
    interCharacterTimeouts: 0,
    timeouts: 0,
  };
  readonly timeouts: C1218Timeouts;
  retries: number;
  identity: number;
  /** Largest packet this side sends (header and CRC included). */
  packetSize: number;
  /** Most packets this side sends in one transmission (the peer's negotiated buffer). */
  maxPackets = 255;

  private readonly decoder: PacketDecoder;
  private readonly inbox: InboxItem[] = [];
  private wake: (() => void) | undefined;
  private interCharacterTimer: NodeJS.Timeout | undefined;
  private outgoingToggle = false;
  private lastAccepted: { toggle: boolean; crc: number } | undefined;
  private closedError: C1218Error | undefined;
  private readonly faults: LinkFaultHooks;

  constructor(
    private readonly stream: C1218Stream,
    private readonly options: C1218LinkOptions = {},
  ) {
    this.timeouts = {
      acknowledgementTimeoutMs: options.acknowledgementTimeoutMs ?? C1218_TIMEOUTS.acknowledgementTimeoutMs,
      interCharacterTimeoutMs: options.interCharacterTimeoutMs ?? C1218_TIMEOUTS.interCharacterTimeoutMs,
      responseTimeoutMs: options.responseTimeoutMs ?? C1218_TIMEOUTS.responseTimeoutMs,
      channelTrafficTimeoutMs: options.channelTrafficTimeoutMs ?? C1218_TIMEOUTS.channelTrafficTimeoutMs,
    };
    this.retries = options.retries ?? C1218_DEFAULT_RETRIES;
    this.identity = options.identity ?? 0;
    this.packetSize = options.packetSize ?? DEFAULT_PACKET_SIZE;
    this.faults = options.faults ?? {};
    this.decoder = new PacketDecoder({ maxPacketSize: options.maxIncomingPacketSize ?? MAX_PACKET_SIZE });
    stream.on('data', this.onData);
    stream.on('close', this.onClose);
  }

  /** Stops listening to the stream (which stays open) and fails whatever waits. */
  detach(): void {
    this.stream.off('data', this.onData);
    this.stream.off('close', this.onClose);
    this.fail(new C1218Error('CLOSED', 'the link was detached'));
  }

  /**
   * Forgets the toggle bit of the last packet accepted, so the next packet is
   * taken as new whatever its toggle bit: at a session start (identify), when
   * the peer may have started counting afresh.
   */
  forgetIncomingSequence(): void {
    this.lastAccepted = undefined;
  }

  /** Starts the outgoing toggle bit again at 0 (a device returning to its base state). */
  resetOutgoingSequence(): void {
    this.outgoingToggle = false;
  }

  /** Drops packets and control bytes received but not yet consumed. */
  clearInbox(): void {
    this.inbox.length = 0;
  }

  /** Sends one application-layer message, split into as many packets as the packet size needs. */
  async sendMessage(data: Uint8Array): Promise<void> {
    const chunk = this.packetSize - PACKET_OVERHEAD;
    if (chunk < 1) throw new C1218Error('BAD_ARGUMENT', `packet size ${this.packetSize} leaves no room for data`);
    const count = Math.max(1, Math.ceil(data.length / chunk));
    if (count > this.maxPackets || count > 256) {
      throw new C1218Error('BAD_LENGTH', `a ${data.length}-byte message needs ${count} packets; at most ${Math.min(this.maxPackets, 256)} allowed`);
    }
    for (let k = 0; k < count; k++) {
      const multiPacket = count > 1;
      const bytes = encodePacket({
        identity: this.identity,
        ctrl: ctrlByte({ multiPacket, firstPacket: multiPacket && k === 0, toggle: this.outgoingToggle }),
        sequence: count - 1 - k,
        data: data.subarray(k * chunk, Math.min(data.length, (k + 1) * chunk)),
      });
      await this.transmit(bytes);
      this.outgoingToggle = !this.outgoingToggle;
    }
  }

  /**
   * Waits for one application-layer message and returns its data.
   * `timeoutMs` bounds the wait for each packet; with `nakOnTimeout` a wait
   * that runs out sends NAK (a peer whose packet was lost retransmits it) up to
   * `retries` times before failing with TIMEOUT. A device waiting for the next
   * request passes Infinity.
   */
  async receiveMessage(options: { timeoutMs?: number; nakOnTimeout?: boolean } = {}): Promise<Uint8Array> {
    const timeoutMs = options.timeoutMs ?? this.timeouts.responseTimeoutMs;
    const parts: Uint8Array[] = [];
    let expected: number | undefined;
    let attempts = 0;
    let deadline = Date.now() + timeoutMs;
    for (;;) {
      const item = await this.nextItem(deadline);
      if (!item) {
        this.stats.timeouts++;
        this.options.onEvent?.({ type: 'timeout', waitingFor: 'response' });
        if (!options.nakOnTimeout || attempts >= this.retries) {
          throw new C1218Error('TIMEOUT', parts.length === 0 ? `no response within ${timeoutMs} ms` : `packet ${parts.length + 1} of a response did not arrive within ${timeoutMs} ms`);
        }
        attempts++;
        this.sendControl(NAK);
        deadline = Date.now() + timeoutMs;
        continue;
      }
      this.inbox.shift();
      if (item.kind !== 'packet') continue; // a late ACK or NAK from an earlier exchange
      const { packet } = item;
      const flags = packetFlags(packet.ctrl);
      if (expected === undefined) {
        if (flags.multiPacket && !flags.firstPacket) throw new C1218Error('BAD_SEQUENCE', 'a multi-packet transmission started without its first packet');
        if (!flags.multiPacket || packet.sequence === 0) return packet.data;
      } else if (!flags.multiPacket || flags.firstPacket || packet.sequence !== expected) {
        throw new C1218Error('BAD_SEQUENCE', `expected packet with seq-nbr ${expected}, got ${packet.sequence}${flags.firstPacket ? ' (a new first packet)' : ''}`);
      }
      parts.push(packet.data);
      if (packet.sequence === 0) return concat(parts);
      expected = packet.sequence - 1;
      attempts = 0;
      deadline = Date.now() + timeoutMs;
    }
  }

  /** Sends a request and waits for its response (NAKing on response timeout). */
  async request(data: Uint8Array): Promise<Uint8Array> {
    // Whatever arrived before the request (a late answer to a request that timed out) cannot answer it.
    this.clearInbox();
    await this.sendMessage(data);
    return this.receiveMessage({ timeoutMs: this.timeouts.responseTimeoutMs, nakOnTimeout: true });
  }

  /** Writes one packet and waits for its ACK, retransmitting on NAK or timeout. */
  private async transmit(bytes: Uint8Array): Promise<void> {
    let lastFailure: 'nak' | 'timeout' = 'timeout';
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      const retransmission = attempt > 0;
      if (retransmission) this.stats.retransmissions++;
      // An ACK or NAK already waiting answers an earlier packet, not this one.
      this.dropControlItems();
      const out = this.faults.transmitPacket ? this.faults.transmitPacket(bytes) : bytes;
      if (out) {
        this.stats.packetsSent++;
        this.options.onEvent?.({ type: 'packet-sent', bytes: out, retransmission });
        await this.writeOrFail(out);
      } else {
        this.options.onEvent?.({ type: 'packet-lost', retransmission });
      }
      const outcome = await this.awaitAcknowledgement();
      if (outcome === 'ack') return;
      lastFailure = outcome;
      if (outcome === 'timeout') {
        this.stats.timeouts++;
        this.options.onEvent?.({ type: 'timeout', waitingFor: 'ack' });
      }
    }
    throw lastFailure === 'nak'
      ? new C1218Error('NAK_LIMIT', `the peer refused the packet ${this.retries + 1} times (NAK)`)
      : new C1218Error('TIMEOUT', `no acknowledgement after ${this.retries + 1} attempts of ${this.timeouts.acknowledgementTimeoutMs} ms`);
  }

  private async awaitAcknowledgement(): Promise<'ack' | 'nak' | 'timeout'> {
    const deadline = Date.now() + this.timeouts.acknowledgementTimeoutMs;
    const item = await this.nextItem(deadline);
    if (!item) return 'timeout';
    if (item.kind === 'packet') return 'ack'; // the peer answered: it has our packet; keep its packet for receiveMessage
    this.inbox.shift();
    return item.kind;
  }

  private dropControlItems(): void {
    for (let i = this.inbox.length - 1; i >= 0; i--) if (this.inbox[i]?.kind !== 'packet') this.inbox.splice(i, 1);
  }

  /** The first inbox item, waiting until `deadline` (ms since epoch, Infinity for ever); undefined on timeout. */
  private async nextItem(deadline: number): Promise<InboxItem | undefined> {
    for (;;) {
      if (this.closedError && this.inbox.length === 0) throw this.closedError;
      const item = this.inbox[0];
      if (item) return item;
      const remaining = deadline - Date.now();
      if (remaining <= 0) return undefined;
      if (this.wake) throw new C1218Error('BAD_ARGUMENT', 'the link serves one send or receive at a time');
      const woken = await new Promise<boolean>((resolve) => {
        const timer = Number.isFinite(remaining) ? setTimeout(() => resolve(false), remaining) : undefined;
        this.wake = () => {
          if (timer) clearTimeout(timer);
          resolve(true);
        };
      });
      this.wake = undefined;
      if (!woken) return this.inbox[0];
    }
  }

  private notify(): void {
    this.wake?.();
  }

  private readonly onData = (chunk: Uint8Array): void => {
    this.options.onTraffic?.();
    this.handleUnits(this.decoder.push(chunk));
    this.armInterCharacterTimer();
  };

  /** While part of a packet waits for the rest, silence longer than the inter-character timeout drops it. */
  private armInterCharacterTimer(): void {
    if (this.interCharacterTimer) clearTimeout(this.interCharacterTimer);
    this.interCharacterTimer = undefined;
    if (this.decoder.pendingBytes === 0 || this.closedError) return;
    this.interCharacterTimer = setTimeout(() => {
      this.interCharacterTimer = undefined;
      this.handleUnits(this.decoder.flushPending());
      // What followed the dropped bytes may be an incomplete packet too.
      this.armInterCharacterTimer();
    }, this.timeouts.interCharacterTimeoutMs);
  }

  private readonly onClose = (): void => {
    this.fail(new C1218Error('CLOSED', 'the stream closed'));
  };

  private fail(error: C1218Error): void {
    if (this.interCharacterTimer) clearTimeout(this.interCharacterTimer);
    this.interCharacterTimer = undefined;
    this.closedError ??= error;
    this.notify();
  }

  private handleUnits(units: LinkUnit[]): void {
    for (const unit of units) {
      switch (unit.kind) {
        case 'ack':
          if (this.faults.receiveAck && !this.faults.receiveAck()) break;
          this.options.onEvent?.({ type: 'ack-received' });
          this.inbox.push({ kind: 'ack' });
          break;
        case 'nak':
          this.stats.naksReceived++;
          this.options.onEvent?.({ type: 'nak-received' });
          this.inbox.push({ kind: 'nak' });
          break;
        case 'error':
          this.options.onEvent?.({ type: 'error', error: unit.error });
          if (unit.error.code === 'GARBAGE') {
            this.stats.garbageBytes += unit.length;
            break;
          }
          if (unit.error.code === 'BAD_CRC') this.stats.badCrc++;
          else if (unit.error.code === 'BAD_LENGTH') this.stats.badLength++;
          else if (unit.error.code === 'INTERCHAR_TIMEOUT') this.stats.interCharacterTimeouts++;
          // A broken packet: ask for it again.
          this.sendControl(NAK);
          break;
        case 'packet':
          this.acceptPacket(unit.packet);
          break;
      }
    }
    if (this.inbox.length > 0) this.notify();
  }

  private acceptPacket(packet: DecodedPacket): void {
    const decision = this.faults.receivePacket ? this.faults.receivePacket(packet) : 'accept';
    if (decision === 'drop') return;
    if (decision === 'nak') {
      this.sendControl(NAK);
      return;
    }
    const toggle = packetFlags(packet.ctrl).toggle;
    if (this.lastAccepted && this.lastAccepted.toggle === toggle && this.lastAccepted.crc === packet.crc) {
      // Our ACK of this packet was lost and the peer sent it again: acknowledge, do not deliver twice.
      this.stats.duplicatesDiscarded++;
      this.options.onEvent?.({ type: 'duplicate-discarded', packet });
      this.sendControl(ACK);
      return;
    }
    this.lastAccepted = { toggle, crc: packet.crc };
    this.stats.packetsReceived++;
    this.options.onEvent?.({ type: 'packet-received', packet });
    this.sendControl(ACK);
    this.inbox.push({ kind: 'packet', packet });
  }

  private sendControl(byte: typeof ACK | typeof NAK): void {
    if (byte === ACK) {
      this.stats.acksSent++;
      this.options.onEvent?.({ type: 'ack-sent' });
      if (this.faults.transmitAck && !this.faults.transmitAck()) return;
    } else {
      this.stats.naksSent++;
      this.options.onEvent?.({ type: 'nak-sent' });
    }
    // Fire and forget: a failed write shows up as CLOSED on the next wait.
    this.stream.write(Uint8Array.of(byte)).catch((err: unknown) => this.fail(err instanceof C1218Error ? err : new C1218Error('CLOSED', String(err))));
  }

  private async writeOrFail(bytes: Uint8Array): Promise<void> {
    if (this.closedError) throw this.closedError;
    try {
      await this.stream.write(bytes);
    } catch (err) {
      const error = err instanceof C1218Error ? err : new C1218Error('CLOSED', `write failed: ${String(err)}`);
      this.fail(error);
      throw error;
    }
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
