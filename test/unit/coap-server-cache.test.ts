import { createSocket } from 'node:dgram';
import { generate, parse } from 'coap-packet';
import { afterEach, describe, expect, it } from 'vitest';
import type { Server } from 'coap';
import { closeQuietly, createCoapServer, listenCoapServer } from '../../src/coap/server.js';
import { MeshClient } from '../../src/coap/client/index.js';

/**
 * The library caches every answer with the sender that transmitted it. For
 * answers it never retransmits, our server releases the sender's timer and
 * listeners (which hold the whole request and response) once it is sent;
 * duplicates are still answered from the cached bytes.
 */
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface CachedEntry {
  sender?: { _timer?: { _destroyed?: boolean }; listenerCount(event: string): number };
}

describe('coap server errors', () => {
  it('answers a request the library fails on to its sender, as a bare ACK 5.00 without the error text', async () => {
    const server: Server = createCoapServer('127.0.0.1');
    const port = await listenCoapServer(server, 0, '127.0.0.1');
    cleanups.push(() => closeQuietly(server));
    const sender = createSocket('udp4');
    await new Promise<void>((resolve) => sender.bind(0, '127.0.0.1', () => resolve()));
    cleanups.push(() => new Promise<void>((resolve) => sender.close(() => resolve())));
    const answer = new Promise<Buffer>((resolve) => sender.once('message', resolve));
    // The library's hook for a request it failed on (a middleware threw), as it calls it.
    server._sendError(
      Buffer.from('internal detail'),
      { address: '127.0.0.1', port: sender.address().port, family: 'IPv4' },
      { code: '0.02', confirmable: true, messageId: 0x0505, token: Buffer.from('t1') },
    );
    const packet = parse(await answer);
    expect(packet).toMatchObject({ ack: true, code: '5.00', messageId: 0x0505 });
    expect(packet.token.toString()).toBe('t1');
    expect(packet.payload.length).toBe(0);
    expect(port).toBeGreaterThan(0);
  });
});

describe('coap server answer cache', () => {
  it('keeps piggybacked answers cached but drops their timers and listeners', async () => {
    const server: Server = createCoapServer('::1');
    server.on('request', (_req, res) => res.end('ok'));
    const port = await listenCoapServer(server, 0, '::1');
    cleanups.push(() => closeQuietly(server));
    const client = await MeshClient.open({ bind: '::1' });
    cleanups.push(() => client.close());
    for (let i = 0; i < 20; i += 1) {
      const response = await client.request({ peer: { address: '::1', port }, method: 'GET', path: `/r${i}` });
      expect(response.payload.toString()).toBe('ok');
    }
    const entries = [...(server._lru as unknown as { values(): IterableIterator<CachedEntry> }).values()];
    expect(entries).toHaveLength(20);
    for (const entry of entries) {
      expect(entry.sender).toBeDefined();
      expect(entry.sender!.listenerCount('error')).toBe(0);
      expect(entry.sender!._timer?._destroyed).toBe(true);
    }
  });
});

describe('coap server answer cache with copies answered in front', () => {
  async function rawClient(): Promise<{ socket: ReturnType<typeof createSocket>; next(): Promise<ReturnType<typeof parse>> }> {
    const socket = createSocket('udp6');
    await new Promise<void>((resolve) => socket.bind(0, '::1', () => resolve()));
    cleanups.push(() => new Promise<void>((resolve) => socket.close(() => resolve())));
    const queued: Buffer[] = [];
    const waiting: Array<(datagram: Buffer) => void> = [];
    socket.on('message', (datagram: Buffer) => (waiting.length ? waiting.shift()!(datagram) : queued.push(datagram)));
    return {
      socket,
      next: async () => parse(queued.length ? queued.shift()! : await new Promise<Buffer>((resolve) => waiting.push(resolve))),
    };
  }

  it('keeps no piggybacked answer, but keeps a confirmable separate response until it is acknowledged', async () => {
    const server: Server = createCoapServer('::1', { piggybackReplyMs: 20 }, { copiesAnsweredInFront: true });
    let release: (() => void) | undefined;
    server.on('request', (req, res) => {
      if (req.url === '/slow') release = () => res.end('late');
      else res.end('ok');
    });
    const port = await listenCoapServer(server, 0, '::1');
    cleanups.push(() => closeQuietly(server));
    const cacheSize = (): number => (server._lru as unknown as { size: number }).size;
    const client = await rawClient();
    const send = (packet: Parameters<typeof generate>[0]): void => void client.socket.send(generate(packet), port, '::1');

    for (let i = 0; i < 20; i += 1) {
      send({ code: '0.01', confirmable: true, messageId: 100 + i, token: Buffer.from([i]), options: [{ name: 'Uri-Path', value: Buffer.from(`r${i}`) }] });
      const answer = await client.next();
      expect(answer).toMatchObject({ ack: true, code: '2.05', messageId: 100 + i });
    }
    expect(cacheSize()).toBe(0);

    // Beyond the piggyback window: an empty ACK, then the response as a CON of its own.
    send({ code: '0.01', confirmable: true, messageId: 200, token: Buffer.from('sl'), options: [{ name: 'Uri-Path', value: Buffer.from('slow') }] });
    const emptyAck = await client.next();
    expect(emptyAck).toMatchObject({ ack: true, code: '0.00', messageId: 200 });
    release!();
    const separate = await client.next();
    expect(separate).toMatchObject({ confirmable: true, code: '2.05' });
    expect(separate.payload.toString()).toBe('late');
    // The empty ACK is gone; the separate response stays, so that its sender can retransmit it.
    expect(cacheSize()).toBe(1);
    send({ code: '0.00', ack: true, messageId: separate.messageId });
    // Datagrams from one socket are handled in order: once the next request is answered, the ACK was.
    send({ code: '0.01', confirmable: true, messageId: 201, token: Buffer.from('n'), options: [{ name: 'Uri-Path', value: Buffer.from('next') }] });
    expect(await client.next()).toMatchObject({ ack: true, code: '2.05', messageId: 201 });
    expect(cacheSize()).toBe(0);
  });
});
