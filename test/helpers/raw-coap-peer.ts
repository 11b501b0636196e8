import { createSocket, type Socket } from 'node:dgram';
import { generate, parse, type Packet, type ParsedPacket } from 'coap-packet';

export interface ReceivedDatagram {
  packet: ParsedPacket;
  from: { address: string; port: number };
  at: number;
}

/**
 * A CoAP peer on a plain UDP socket whose every answer the test writes by
 * hand: to stay silent, to answer late, to send an empty ACK first, to reset.
 * What the gateway sends is recorded in arrival order.
 */
export class RawCoapPeer {
  readonly received: ReceivedDatagram[] = [];
  private waiters: Array<{ count: number; resolve: () => void }> = [];
  onPacket: ((datagram: ReceivedDatagram) => void) | undefined;

  private constructor(
    private readonly socket: Socket,
    readonly port: number,
    readonly address: string,
  ) {
    socket.on('message', (buffer, rinfo) => {
      let packet: ParsedPacket;
      try {
        packet = parse(buffer);
      } catch {
        return;
      }
      const datagram = { packet, from: { address: rinfo.address, port: rinfo.port }, at: performance.now() };
      this.received.push(datagram);
      this.onPacket?.(datagram);
      if (this.waiters.length === 0) return;
      this.waiters = this.waiters.filter((w) => {
        if (this.received.length < w.count) return true;
        w.resolve();
        return false;
      });
    });
  }

  static async open(address = '::1'): Promise<RawCoapPeer> {
    const socket = createSocket(address.includes(':') ? 'udp6' : 'udp4');
    await new Promise<void>((resolve) => socket.bind(0, address, () => resolve()));
    return new RawCoapPeer(socket, socket.address().port, address);
  }

  get peer(): { address: string; port: number } {
    return { address: this.address, port: this.port };
  }

  /** Resolves once `count` datagrams have arrived in total. */
  receivedCount(count: number): Promise<void> {
    if (this.received.length >= count) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ count, resolve }));
  }

  send(packet: Packet, to: { address: string; port: number }): void {
    this.socket.send(generate(packet), to.port, to.address);
  }

  sendRaw(bytes: Buffer, to: { address: string; port: number }): void {
    this.socket.send(bytes, to.port, to.address);
  }

  /** Piggybacks `code` and `payload` on the ACK of a received confirmable request. */
  answer(request: ReceivedDatagram, code: string, payload?: Buffer, options: Packet['options'] = []): void {
    this.send({ code, ack: true, messageId: request.packet.messageId, token: request.packet.token, options, ...(payload ? { payload } : {}) }, request.from);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}
