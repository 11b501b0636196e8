import { createSocket, type Socket } from 'node:dgram';
import { isIPv4 } from 'node:net';
import { canonicalSourceAddress } from '../address.js';

/** Where a datagram comes from or goes to. */
export interface PeerAddress {
  address: string;
  port: number;
}

/**
 * What the CoAP message layer needs from the network: send a datagram,
 * receive datagrams. A UDP socket is one implementation; the serial 6LoWPAN
 * radio presents the same interface, so the client above it does not care
 * which carries the mesh.
 */
export interface DatagramTransport {
  send(datagram: Buffer, peer: PeerAddress): void;
  /** Adds a receiver; returns the function that removes it. */
  onDatagram(receiver: (datagram: Buffer, peer: PeerAddress) => void): () => void;
  /** The local address, for logs. */
  readonly local: PeerAddress;
  close(): Promise<void>;
}

/**
 * The key a peer is known by. IPv4-mapped IPv6 addresses (a dual-stack
 * socket's view of an IPv4 peer) are folded onto the IPv4 form so that a
 * meter is one peer whichever way its address is written.
 */
export function peerKey(peer: PeerAddress): string {
  return `${canonicalSourceAddress(peer.address)}|${peer.port}`;
}

export interface UdpTransportOptions {
  /** Local address; its family decides the socket's ('::' is dual-stack). */
  bind: string;
  /** Local port; 0 (default) lets the system choose. */
  port?: number;
  /** Receive buffer to ask for; responses from thousands of meters arrive in bursts. */
  receiveBufferBytes?: number;
}

/**
 * A UDP socket as a DatagramTransport. Send errors (EHOSTUNREACH, ...) are
 * dropped, never thrown: the exchange retransmits and times out as if the
 * datagram had been lost.
 */
export class UdpTransport implements DatagramTransport {
  private readonly receivers = new Set<(datagram: Buffer, peer: PeerAddress) => void>();
  private closed = false;

  private constructor(
    private readonly socket: Socket,
    readonly local: PeerAddress,
  ) {
    socket.on('message', (datagram, rinfo) => {
      const peer = { address: rinfo.address, port: rinfo.port };
      for (const receiver of this.receivers) receiver(datagram, peer);
    });
  }

  static async open(options: UdpTransportOptions): Promise<UdpTransport> {
    const socket = createSocket({ type: isIPv4(options.bind) ? 'udp4' : 'udp6', reuseAddr: false });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(options.port ?? 0, options.bind, () => {
        socket.off('error', reject);
        resolve();
      });
    }).catch((err: unknown) => {
      socket.close();
      throw err;
    });
    // After bind, socket and send errors (ICMP unreachable on some kernels) must not crash the process.
    socket.on('error', () => undefined);
    if (options.receiveBufferBytes !== undefined) {
      try {
        socket.setRecvBufferSize(options.receiveBufferBytes);
      } catch {
        // Capped by net.core.rmem_max or refused: the socket keeps its default.
      }
    }
    const { address, port } = socket.address();
    return new UdpTransport(socket, { address, port });
  }

  send(datagram: Buffer, peer: PeerAddress): void {
    if (this.closed) return;
    // Without a callback a send error is emitted as 'error', which open() ignores.
    this.socket.send(datagram, peer.port, peer.address);
  }

  onDatagram(receiver: (datagram: Buffer, peer: PeerAddress) => void): () => void {
    this.receivers.add(receiver);
    return () => this.receivers.delete(receiver);
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}
