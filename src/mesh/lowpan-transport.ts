import * as dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { DatagramTransport, PeerAddress } from '../coap/client/transport.js';
import {
  BROADCAST_SHORT_ADDRESS,
  decodeFrame,
  encodeDatagram,
  formatIpv6Address,
  interfaceIdentifier,
  isLowpanError,
  linkLocalAddress,
  macAddressEquals,
  normalizeContexts,
  normalizeIpv6Address,
  parseIpv6Address,
  parseMacAddress,
  Reassembler,
  type ContextTable,
  type Ipv6Datagram,
  type MacAddress,
  type ReassemblerOptions,
  type ReassemblerStats,
} from '../lowpan/index.js';

/**
 * One mesh stack, two transports (issue 8): the 6LoWPAN radio presented as
 * UDP. Above it the CoAP endpoint (through a dgram.Socket look-alike) and the
 * congestion-controlled mesh client (through a DatagramTransport) serve
 * meters exactly as they do over the border router's IPv6 interface; below
 * it any frame link (the serial SLIP radio, or a simulated one) carries raw
 * 802.15.4 MAC frames.
 *
 * Receiving: frames not addressed to the gateway (its short or extended
 * address, or broadcast) are ignored; 6LoWPAN is decoded with the PAN's
 * contexts, fragments are reassembled within memory caps, and each UDP
 * datagram goes to whoever listens on its destination port, as a socket
 * would. Malformed frames are counted by error code, never thrown.
 *
 * Sending: the destination MAC address is the one the meter last sent from
 * (a neighbour table learned from received frames, as a border router's
 * 6LoWPAN-ND cache would hold), else the one its interface identifier is
 * derived from (RFC 6282 3.2.2). The source is the gateway's link-local
 * address towards link-local peers and its context-0 address otherwise, so
 * both compress to nothing but the context id.
 */

/** What the transport needs of the link: a SerialRadioLink has it. */
export interface RadioFrameLink {
  send(frame: Uint8Array): Promise<void>;
  on(event: 'frame', listener: (received: { frame: Buffer; rssi?: number; lqi?: number }) => void): unknown;
  off(event: 'frame', listener: (received: { frame: Buffer; rssi?: number; lqi?: number }) => void): unknown;
}

export interface LowpanTransportOptions {
  link: RadioFrameLink;
  /** The gateway's EUI-64 ("00124b0001020304"), as its radio sends from it. */
  mac: string;
  /** An optional short address (0x0000-0xfffd) the gateway also answers to. */
  shortAddress?: number;
  panId: number;
  /** The PAN's shared contexts (RFC 6282 3.1.1); context 0's prefix gives the gateway its global address. */
  contexts?: ContextTable;
  reassembly?: ReassemblerOptions;
  /** Frame version of what the gateway sends (default 1, 802.15.4-2006). */
  frameVersion?: 0 | 1 | 2;
  /** Neighbours remembered at most (default 50,000; the least recently heard go first). */
  maxNeighbours?: number;
  now?: () => number;
}

/** What is known of a meter's radio link from its last frame. */
export interface RadioNeighbour {
  mac: MacAddress;
  rssi?: number;
  lqi?: number;
  lastHeard: number;
}

export interface LowpanTransportCounters {
  framesIn: number;
  framesOut: number;
  datagramsIn: number;
  datagramsOut: number;
  /** Frames or datagrams for another node: neither our MAC address nor broadcast, a mesh header's final destination elsewhere, or an IPv6 destination that is not ours (nor multicast). */
  notForUs: number;
  /** Frames whose IPv6 source already belongs to another MAC address: not learned (a spoofed source, or a meter whose address is not derived from its MAC). */
  neighbourConflicts: number;
  /** Beacons, acknowledgements, MAC commands. */
  notData: number;
  /** Datagrams that are not UDP. */
  notUdp: number;
  /** UDP datagrams for a port nobody listens on. */
  noListener: number;
  /** Datagrams that could not be sent: no MAC address known for the destination, or the link refused. */
  sendFailures: number;
  /** Malformed frames, by LowpanError code. */
  malformed: Record<string, number>;
}

type Receiver = (payload: Buffer, peer: PeerAddress) => void;

function parseEui64(text: string): MacAddress {
  const address = parseMacAddress(text);
  if (address.mode !== 'extended') throw new TypeError(`the gateway's MAC address must be an EUI-64 (16 hex digits), got "${text}"`);
  return address;
}

/** The MAC address an IPv6 interface identifier was derived from (RFC 4944 6 / RFC 6282 3.2.2), or undefined. */
export function macFromInterfaceIdentifier(address: string): MacAddress | undefined {
  let bytes: Uint8Array;
  try {
    bytes = parseIpv6Address(address);
  } catch {
    return undefined;
  }
  const iid = bytes.subarray(8, 16);
  if (iid[0] === 0 && iid[1] === 0 && iid[2] === 0 && iid[3] === 0xff && iid[4] === 0xfe && iid[5] === 0) {
    return { mode: 'short', short: ((iid[6] ?? 0) << 8) | (iid[7] ?? 0) };
  }
  const eui = Uint8Array.from(iid);
  eui[0] = (eui[0] ?? 0) ^ 0x02;
  return { mode: 'extended', eui64: Buffer.from(eui).toString('hex') };
}

export class LowpanTransport extends EventEmitter {
  readonly counters: LowpanTransportCounters = {
    framesIn: 0,
    framesOut: 0,
    datagramsIn: 0,
    datagramsOut: 0,
    notForUs: 0,
    neighbourConflicts: 0,
    notData: 0,
    notUdp: 0,
    noListener: 0,
    sendFailures: 0,
    malformed: {},
  };
  /** fe80::IID of the gateway's EUI-64. */
  readonly linkLocal: string;
  /** Context 0's prefix with the gateway's IID, when a context 0 is configured. */
  readonly global: string | undefined;
  private readonly mac: MacAddress;
  private readonly short: MacAddress | undefined;
  private readonly reassembler: Reassembler;
  private readonly receivers = new Map<number, Receiver>();
  private readonly neighbours = new Map<string, RadioNeighbour>();
  private readonly now: () => number;
  private sequence = 0;
  private datagramTag = 0;
  private nextEphemeralPort = 0xc000;
  private closed = false;
  private readonly onFrame = (received: { frame: Buffer; rssi?: number; lqi?: number }): void => this.receive(received);

  constructor(private readonly options: LowpanTransportOptions) {
    super();
    this.mac = parseEui64(options.mac);
    this.short = options.shortAddress === undefined ? undefined : { mode: 'short', short: options.shortAddress };
    this.now = options.now ?? Date.now;
    // The reassembler keeps its own monotonic clock unless a test injects one.
    this.reassembler = new Reassembler({ ...options.reassembly, ...(options.now ? { now: options.now } : {}) });
    this.linkLocal = linkLocalAddress(this.mac);
    const context0 = normalizeContexts(options.contexts)[0];
    if (context0) {
      const bytes = new Uint8Array(16);
      bytes.set(context0.prefix.subarray(0, 8));
      bytes.set(interfaceIdentifier(this.mac), 8);
      this.global = formatIpv6Address(bytes);
    }
    options.link.on('frame', this.onFrame);
  }

  /** The address meters are told to use (global when a context 0 exists). */
  get address(): string {
    return this.global ?? this.linkLocal;
  }

  reassemblyStats(): ReassemblerStats {
    return this.reassembler.stats();
  }

  /** The radio link of a meter, by its IPv6 address, from its last frame. */
  neighbour(address: string): RadioNeighbour | undefined {
    return this.neighbours.get(this.key(address));
  }

  /** A dgram.Socket for the coap library's server, on `port` of this transport. */
  socket(port: number): RadioDatagramSocket {
    return new RadioDatagramSocket(this, port);
  }

  /** A DatagramTransport for the mesh client, on `port` (0: the next free one from 0xc000). */
  transport(port = 0): DatagramTransport {
    const local = port === 0 ? this.ephemeralPort() : port;
    const receivers = new Set<Receiver>();
    this.listen(local, (payload, peer) => {
      for (const receiver of receivers) receiver(payload, peer);
    });
    let open = true;
    return {
      local: { address: this.address, port: local },
      send: (datagram, peer) => {
        if (open) void this.send(datagram, local, peer);
      },
      onDatagram: (receiver) => {
        receivers.add(receiver);
        return () => receivers.delete(receiver);
      },
      close: async () => {
        open = false;
        this.unlisten(local);
      },
    };
  }

  /** Delivers UDP datagrams to `port` to `receiver`; a port has one receiver, as a bound socket. */
  listen(port: number, receiver: Receiver): void {
    if (this.receivers.has(port)) throw Object.assign(new Error(`UDP port ${port} of the radio transport is in use`), { code: 'EADDRINUSE' });
    this.receivers.set(port, receiver);
  }

  unlisten(port: number): void {
    this.receivers.delete(port);
  }

  /**
   * Sends `payload` from `srcPort` to the peer. Resolves false (and counts)
   * when it cannot: no MAC address known, or the link refused; a lost
   * datagram is the CoAP layer's to retransmit, as with UDP.
   */
  async send(payload: Uint8Array, srcPort: number, peer: PeerAddress): Promise<boolean> {
    if (this.closed) return false;
    let dst: string;
    try {
      dst = normalizeIpv6Address(peer.address);
    } catch {
      this.counters.sendFailures += 1;
      return false;
    }
    const dstMac = this.neighbours.get(dst)?.mac ?? macFromInterfaceIdentifier(dst);
    if (!dstMac) {
      this.counters.sendFailures += 1;
      return false;
    }
    const src = dst.startsWith('fe80:') || this.global === undefined ? this.linkLocal : this.global;
    let frames: Uint8Array[];
    try {
      frames = encodeDatagram(
        {
          src,
          dst,
          srcPort,
          dstPort: peer.port,
          payload,
          srcMac: this.mac,
          dstMac,
          panId: this.options.panId,
          sequenceNumber: this.sequence,
          datagramTag: (this.datagramTag = (this.datagramTag + 1) & 0xffff),
          frameVersion: this.options.frameVersion ?? 1,
        },
        this.options.contexts ? { contexts: this.options.contexts } : {},
      );
    } catch (err) {
      if (!isLowpanError(err)) throw err;
      this.counters.sendFailures += 1;
      return false;
    }
    this.sequence = (this.sequence + frames.length) & 0xff;
    try {
      // In order: a receiver reassembles fragments in any order, but some radios queue only a few frames.
      for (const frame of frames) {
        await this.options.link.send(frame);
        this.counters.framesOut += 1;
      }
    } catch {
      this.counters.sendFailures += 1;
      return false;
    }
    this.counters.datagramsOut += 1;
    return true;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.options.link.off('frame', this.onFrame);
    this.receivers.clear();
  }

  private key(address: string): string {
    try {
      return normalizeIpv6Address(address);
    } catch {
      return address;
    }
  }

  private ephemeralPort(): number {
    for (let tries = 0; tries < 0x4000; tries += 1) {
      const port = this.nextEphemeralPort;
      this.nextEphemeralPort = port >= 0xffff ? 0xc000 : port + 1;
      if (!this.receivers.has(port)) return port;
    }
    throw Object.assign(new Error('no free UDP port on the radio transport'), { code: 'EADDRINUSE' });
  }

  private forUs(dst: MacAddress | undefined): boolean {
    if (dst === undefined) return false;
    if (dst.mode === 'short' && dst.short === BROADCAST_SHORT_ADDRESS) return true;
    return macAddressEquals(dst, this.mac) || (this.short !== undefined && macAddressEquals(dst, this.short));
  }

  private receive(received: { frame: Buffer; rssi?: number; lqi?: number }): void {
    if (this.closed) return;
    this.counters.framesIn += 1;
    let decoded: ReturnType<typeof decodeFrame>;
    try {
      decoded = decodeFrame(received.frame, this.options.contexts ? { contexts: this.options.contexts } : {});
    } catch (err) {
      this.malformed(err);
      return;
    }
    const { mac, lowpan } = decoded;
    if (lowpan.kind === 'none') {
      this.counters.notData += 1;
      return;
    }
    // A mesh header names the datagram's final destination; otherwise the MAC destination is it.
    if (!this.forUs(mac.dst) || (decoded.mesh && !this.forUs(decoded.mesh.finalDestination))) {
      this.counters.notForUs += 1;
      return;
    }
    let datagram: Ipv6Datagram;
    if (lowpan.kind === 'datagram') {
      datagram = lowpan.datagram;
    } else {
      const outcome = this.reassembler.add(lowpan.fragment);
      if (outcome.status === 'dropped') {
        if (outcome.error) this.malformed(outcome.error);
        return;
      }
      if (outcome.status !== 'complete') return;
      datagram = outcome.datagram;
    }
    this.deliver(datagram, mac.src, received);
  }

  private deliver(datagram: Ipv6Datagram, srcMac: MacAddress | undefined, received: { rssi?: number; lqi?: number }): void {
    // A broadcast frame (or a careless sender) may carry a datagram for another meter: only ours, or multicast, go up.
    const destination = datagram.ipv6.dst;
    if (destination !== this.linkLocal && destination !== this.global && !destination.startsWith('ff')) {
      this.counters.notForUs += 1;
      return;
    }
    this.counters.datagramsIn += 1;
    const source = datagram.ipv6.src;
    if (srcMac) this.remember(source, { mac: srcMac, lastHeard: this.now(), ...(received.rssi !== undefined ? { rssi: received.rssi } : {}), ...(received.lqi !== undefined ? { lqi: received.lqi } : {}) });
    if (!datagram.udp) {
      this.counters.notUdp += 1;
      return;
    }
    const receiver = this.receivers.get(datagram.udp.dstPort);
    if (!receiver) {
      this.counters.noListener += 1;
      return;
    }
    receiver(Buffer.from(datagram.payload), { address: source, port: datagram.udp.srcPort });
  }

  /**
   * Learns which MAC address an IPv6 source sends from. Unsecured 802.15.4
   * lets anyone claim any source, so a known address is not moved to another
   * MAC address (a spoofed frame would otherwise divert the meter's downlink,
   * relay commands included) unless the new one is the MAC address the IPv6
   * address is derived from.
   */
  private remember(address: string, neighbour: RadioNeighbour): void {
    const known = this.neighbours.get(address);
    if (known && !macAddressEquals(known.mac, neighbour.mac) && !macAddressEquals(macFromInterfaceIdentifier(address), neighbour.mac)) {
      this.counters.neighbourConflicts += 1;
      return;
    }
    // Re-inserted, so the map's order is least recently heard first.
    this.neighbours.delete(address);
    this.neighbours.set(address, neighbour);
    const max = this.options.maxNeighbours ?? 50_000;
    while (this.neighbours.size > max) {
      const oldest = this.neighbours.keys().next().value;
      if (oldest === undefined) break;
      this.neighbours.delete(oldest);
    }
  }

  private malformed(err: unknown): void {
    const code = isLowpanError(err) ? err.code : 'UNEXPECTED';
    this.counters.malformed[code] = (this.counters.malformed[code] ?? 0) + 1;
    if (!isLowpanError(err)) this.emit('error', err);
  }
}

/** dgram.Socket's constructor as it is at run time (the typings declare none). */
const SocketBase = dgram.Socket as unknown as new (type: 'udp6') => dgram.Socket;

/**
 * The radio transport as a dgram.Socket, for the coap library's server: it
 * accepts any EventEmitter to listen on, but sends cached answers only
 * through an `instanceof dgram.Socket`, so this is one. It never binds a
 * kernel socket; send, address and close go to the transport.
 */
export class RadioDatagramSocket extends SocketBase {
  private open = true;

  constructor(
    private readonly radio: LowpanTransport,
    private readonly port: number,
  ) {
    super('udp6');
    radio.listen(port, (payload, peer) => {
      this.emit('message', payload, { address: peer.address, family: 'IPv6', port: peer.port, size: payload.length });
    });
  }

  override address(): AddressInfo {
    return { address: this.radio.address, family: 'IPv6', port: this.port };
  }

  // The library calls both send(msg, offset, length, port, address, cb) and send(msg, port, address, cb).
  override send(...args: unknown[]): void {
    const [message, second, third, fourth, fifth, sixth] = args;
    if (!this.open) throw Object.assign(new Error('Not running'), { code: 'ERR_SOCKET_DGRAM_NOT_RUNNING' });
    let payload: Buffer;
    let port: number;
    let address: string;
    let callback: unknown;
    const bytes = Buffer.isBuffer(message) ? message : typeof message === 'string' ? Buffer.from(message) : undefined;
    if (!bytes) throw new TypeError('the radio socket sends Buffers');
    if (typeof second === 'number' && typeof third === 'number' && typeof fourth === 'number') {
      payload = bytes.subarray(second, second + third);
      port = fourth;
      address = typeof fifth === 'string' ? fifth : '';
      callback = sixth;
    } else if (typeof second === 'number') {
      payload = bytes;
      port = second;
      address = typeof third === 'string' ? third : '';
      callback = fourth;
    } else {
      throw new TypeError('send(message, port, address) or send(message, offset, length, port, address)');
    }
    void this.radio.send(payload, this.port, { address, port }).then((sent) => {
      if (typeof callback === 'function') (callback as (error: Error | null, bytes: number) => void)(sent ? null : new Error('not sent over the radio'), sent ? payload.length : 0);
    });
  }

  override close(callback?: () => void): this {
    if (this.open) {
      this.open = false;
      this.radio.unlisten(this.port);
      // Releases the unbound native handle the base class made (it would keep this object alive).
      super.close();
    }
    if (callback) setImmediate(callback);
    return this;
  }
}
