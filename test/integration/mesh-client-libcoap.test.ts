import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { MeshClient, type MeshResponse } from '../../src/coap/client/index.js';
import { freeUdpPort } from '../helpers/ports.js';

/**
 * The gateway's congestion-controlled client against libcoap's example
 * server, a CoAP implementation written independently of ours: Observe on
 * /time, a separate response from /async, block-wise in both directions on
 * a dynamic resource, and lost datagrams (-l).
 */
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Starts coap-server-notls on ::1 and resolves once its socket is bound (from then on datagrams to it wait in its buffer). */
async function libcoapServer(extraArgs: string[] = []): Promise<{ port: number }> {
  const port = await freeUdpPort();
  const server: ChildProcess = spawn('/usr/bin/coap-server-notls', ['-A', '::1', '-p', String(port), '-d', '10', '-v', '0', ...extraArgs], { stdio: 'ignore' });
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        if (server.exitCode !== null) return resolve();
        server.once('exit', () => resolve());
        server.kill('SIGTERM');
      }),
  );
  await udpBound(port);
  return { port };
}

/** Waits until something listens on UDP `port` on ::1, without sending it a datagram. */
async function udpBound(port: number): Promise<void> {
  const portSuffix = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  for (let attempt = 0; attempt < 200; attempt += 1) {
    const table = await readFile('/proc/net/udp6', 'utf8');
    if (table.split('\n').some((line) => line.trim().split(/\s+/)[1]?.endsWith(portSuffix))) return;
    await delay(10); // no event tells when another process binds; poll with a deadline
  }
  throw new Error(`nothing bound UDP port ${port} within 2 s`);
}

async function client(): Promise<MeshClient> {
  const c = await MeshClient.open({ bind: '::1' }, { transmission: { ackTimeoutMs: 200, maxRetransmit: 4, separateResponseTimeoutMs: 5000 } });
  cleanups.push(() => c.close());
  return c;
}

describe('mesh client against libcoap coap-server-notls', () => {
  it('uploads 5 KiB block-wise (Block1) and reads it back block-wise (Block2) unchanged', async () => {
    const { port } = await libcoapServer();
    const c = await client();
    const peer = { address: '::1', port };
    const discovery = await c.request({ peer, method: 'GET', path: '/.well-known/core' });
    expect(discovery.payload.toString()).toContain('</time>');
    const body = randomBytes(5000);
    const put = await c.request({ peer, method: 'PUT', path: '/upload', payload: body, contentFormat: 42, blockSize: 512 });
    expect(put.code).toBe('2.01');
    expect(put.exchanges).toBe(10);
    const get = await c.request({ peer, method: 'GET', path: '/upload', blockSize: 256 });
    expect(get.code).toBe('2.05');
    expect(get.exchanges).toBeGreaterThan(1);
    expect(get.payload.equals(body)).toBe(true);
  });

  it('observes /time and gets fresh notifications until it cancels', async () => {
    const { port } = await libcoapServer();
    const c = await client();
    const notifications: MeshResponse[] = [];
    let third: () => void = () => undefined;
    const gotThree = new Promise<void>((resolve) => (third = resolve));
    const observation = await c.observe({ peer: { address: '::1', port }, path: '/time' }, (n) => {
      notifications.push(n);
      if (notifications.length === 3) third();
    });
    await gotThree;
    const values = notifications.map((n) => n.observe!);
    expect(values.every((v) => typeof v === 'number')).toBe(true);
    expect(values[1]! > values[0]! && values[2]! > values[1]!).toBe(true);
    expect(notifications[2]!.payload.toString()).toMatch(/\d\d:\d\d:\d\d/);
    await observation.cancel();
    expect(observation.active).toBe(false);
    expect(c.counters().observations).toBe(0);
  });

  it('waits for a separate response (/async) and retransmits through lost datagrams', async () => {
    const { port } = await libcoapServer();
    const c = await client();
    const started = Date.now();
    const delayed = await c.request({ peer: { address: '::1', port }, method: 'GET', path: '/async', query: '1' });
    expect(delayed.code).toBe('2.05');
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);

    // A server that loses the first two datagrams it sends: the ACKs to our first two transmissions.
    const lossy = await libcoapServer(['-l', '1,2']);
    const c2 = await client();
    const response = await c2.request({ peer: { address: '::1', port: lossy.port }, method: 'GET', path: '/' });
    expect(response.code).toBe('2.05');
    expect(response.retransmissions).toBeGreaterThanOrEqual(2);
  });
});
