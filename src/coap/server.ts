import { isIPv4 } from 'node:net';
import * as coap from 'coap';
import type { CoapServerOptions, Server } from 'coap';

/**
 * A coap Server on the socket family of `bind`, which does not share its port:
 * the library's default (reuseAddr) lets another process bind the same port
 * and silently take part of the traffic.
 */
export function createCoapServer(bind: string, options: Omit<CoapServerOptions, 'type' | 'reuseAddr'> = {}): Server {
  return coap.createServer({ ...options, type: isIPv4(bind) ? 'udp4' : 'udp6', reuseAddr: false });
}

/**
 * Listens on `bind`:`port` and resolves with the bound port (the one the
 * system chose when `port` is 0). On failure (EADDRINUSE, EINVAL, ...) the
 * server is closed and the error rejected; nothing is left open.
 */
export async function listenCoapServer(server: Server, port: number, bind: string): Promise<number> {
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, bind, (err?: Error) => {
        server.off('error', reject);
        if (err) reject(err);
        else resolve();
      });
    });
  } catch (err) {
    closeQuietly(server);
    throw err;
  }
  // coap's Server keeps its socket private; its address tells the port when 0 was asked for.
  const socket = (server as unknown as { _sock?: { address(): { port: number } } })._sock;
  return socket?.address().port ?? port;
}

export function closeQuietly(server: Server): void {
  try {
    server.close();
  } catch {
    // The socket never opened; there is nothing more to release.
  }
}

/**
 * Asks for a larger receive buffer on the server's socket and returns what
 * the kernel granted. The default (about 208 KiB on Linux) drops datagrams
 * when a few hundred meters send at once; Linux caps the request at
 * net.core.rmem_max (and reports twice what it keeps, for its bookkeeping).
 */
export function sizeReceiveBuffer(server: Server, bytes: number): number | undefined {
  // coap's Server keeps its socket private; this is the one place we reach for it besides the port.
  const socket = (server as unknown as { _sock?: { setRecvBufferSize(size: number): void; getRecvBufferSize(): number } })._sock;
  if (!socket) return undefined;
  try {
    socket.setRecvBufferSize(bytes);
  } catch {
    // EPERM or EINVAL: keep whatever the socket has.
  }
  try {
    return socket.getRecvBufferSize();
  } catch {
    return undefined;
  }
}
