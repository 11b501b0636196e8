import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BackhaulError, ManagementClient, connectOnce, type ManagementClientOptions, type ManagementNotification } from '../../src/backhaul/index.js';
import { GREETING, ScriptedManagementServer } from '../helpers/openvpn.js';

/**
 * The management client against a scripted management interface on loopback
 * TCP and on a unix socket: one command at a time, replies matched to their
 * commands, notifications routed from anywhere, passwords, timeouts, and
 * reconnecting with backoff.
 */

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function serve(options: Parameters<typeof ScriptedManagementServer.listen>[0] = {}): Promise<ScriptedManagementServer> {
  const server = await ScriptedManagementServer.listen(options);
  cleanups.push(() => server.close());
  return server;
}

function client(options: ManagementClientOptions): ManagementClient {
  const created = new ManagementClient({ reconnectInitialMs: 20, reconnectMaxMs: 200, ...options });
  cleanups.push(() => created.stop());
  return created;
}

async function connected(c: ManagementClient): Promise<void> {
  if (c.connected) return;
  await once(c, 'connected');
}

/** The next event `name` whose arguments `predicate` accepts. */
function next<A extends unknown[]>(emitter: { on(name: string, l: (...args: A) => void): unknown; off(name: string, l: (...args: A) => void): unknown }, name: string, predicate: (...args: A) => boolean = () => true): Promise<A> {
  return new Promise((resolve) => {
    const listener = (...args: A): void => {
      if (!predicate(...args)) return;
      emitter.off(name, listener);
      resolve(args);
    };
    emitter.on(name, listener);
  });
}

describe.each(['tcp', 'unix'] as const)('ManagementClient over %s', (transport) => {
  it('sends one command at a time and matches each reply to its command', async () => {
    const server = await serve({ transport });
    // The first reply is held back until the test sends it.
    server.setReply('state', null);
    const c = client({ address: server.address });
    c.start();
    await connected(c);

    const firstArrived = server.nextCommand('state');
    const first = c.command('state');
    const second = c.command('pid');
    const third = c.command('signal SIGUSR1');
    await firstArrived;
    // Nothing else is sent while the first command waits for its reply.
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(server.received).toEqual(['state']);

    const rest = Promise.all([server.nextCommand('pid'), server.nextCommand('signal SIGUSR1')]);
    server.send('1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,', 'END');
    await expect(first).resolves.toEqual({ command: 'state', success: null, lines: ['1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,'] });
    await expect(second).resolves.toMatchObject({ success: 'pid=4242' });
    await expect(third).resolves.toMatchObject({ success: 'signal SIGUSR1 thrown' });
    await rest;
    expect(server.received).toEqual(['state', 'pid', 'signal SIGUSR1']);
  });

  it('routes notifications that come inside a multi-line reply as events, not reply lines', async () => {
    const server = await serve({ transport });
    server.setReply('status', ['OpenVPN STATISTICS', '>BYTECOUNT:10,20', 'TCP/UDP read bytes,3519', '>STATE:1795340138,RECONNECTING,ping-restart,,,,,', 'END']);
    const c = client({ address: server.address });
    const notifications: ManagementNotification[] = [];
    c.on('notification', (n) => notifications.push(n));
    c.start();
    await connected(c);
    const reply = await c.command('status');
    expect(reply.lines).toEqual(['OpenVPN STATISTICS', 'TCP/UDP read bytes,3519']);
    expect(notifications.map((n) => n.type)).toEqual(['INFO', 'BYTECOUNT', 'STATE']);
  });

  it('reassembles a reply whose lines arrive split across writes', async () => {
    const server = await serve({ transport });
    server.setReply('state', null);
    const c = client({ address: server.address });
    c.start();
    await connected(c);
    const arrived = server.nextCommand('state');
    const reply = c.command('state');
    await arrived;
    for (const piece of ['17953401', '30,CONNECTED,SUCC', 'ESS,10.8.0.2,10.99.0.1,1194,,\r', '\nE', 'ND\r\n']) {
      server.sendRaw(piece);
      // Pacing, not waiting for anything: so the pieces tend to reach the client as separate reads
      // (every split position is covered deterministically in backhaul-parser.test.ts).
      await new Promise<void>((resolve) => setTimeout(resolve, 5));
    }
    await expect(reply).resolves.toMatchObject({ lines: ['1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,'] });
  });

  it('turns ERROR: into COMMAND_FAILED and stays connected', async () => {
    const server = await serve({ transport });
    const c = client({ address: server.address });
    c.start();
    await connected(c);
    await expect(c.command('signal SIGBOGUS')).rejects.toMatchObject({ code: 'COMMAND_FAILED', message: expect.stringContaining('not a known signal type') });
    await expect(c.command('pid')).resolves.toMatchObject({ success: 'pid=4242' });
    expect(server.connections).toBe(1);
  });

  it('answers the password prompt', async () => {
    const server = await serve({ transport, password: 's3cret' });
    const c = client({ address: server.address, password: 's3cret' });
    c.start();
    await connected(c);
    await expect(c.command('pid')).resolves.toMatchObject({ success: 'pid=4242' });
  });

  it('gives up a connection whose password is refused (BAD_PASSWORD), and says when none is configured (PASSWORD_REQUIRED)', async () => {
    const server = await serve({ transport, password: 's3cret' });
    await expect(connectOnce({ address: server.address, password: 'wrong' })).rejects.toMatchObject({ code: 'BAD_PASSWORD' });
    await expect(connectOnce({ address: server.address })).rejects.toMatchObject({ code: 'PASSWORD_REQUIRED' });
  });

  it('fails a command without a reply with TIMEOUT, then reconnects to resynchronise', async () => {
    const server = await serve({ transport });
    server.setReply('state', null);
    const c = client({ address: server.address, commandTimeoutMs: 150 });
    c.start();
    await connected(c);
    const reconnected = next(c, 'connected');
    const started = Date.now();
    await expect(c.command('state')).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    await reconnected;
    expect(server.connections).toBe(2);
    expect(c.counters.timeouts).toBe(1);
    await expect(c.command('pid')).resolves.toMatchObject({ success: 'pid=4242' });
  });

  it('times out a command still waiting in the queue without touching the one in flight', async () => {
    const server = await serve({ transport });
    server.setReply('state', null);
    const c = client({ address: server.address, commandTimeoutMs: 5000 });
    c.start();
    await connected(c);
    const arrived = server.nextCommand('state');
    const first = c.command('state');
    await arrived;
    await expect(c.command('pid', { timeoutMs: 50 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    server.send('1795340130,WAIT,,,,,,', 'END');
    await expect(first).resolves.toMatchObject({ lines: ['1795340130,WAIT,,,,,,'] });
    expect(server.connections).toBe(1);
    expect(server.received).toEqual(['state']);
  });

  it('fails what is in flight and queued with NOT_CONNECTED when the connection drops, and reconnects', async () => {
    const server = await serve({ transport });
    server.setReply('state', null);
    const c = client({ address: server.address });
    c.start();
    await connected(c);
    const disconnected = next<[BackhaulError, number | null]>(c, 'disconnected');
    const arrived = server.nextCommand('state');
    const inFlight = c.command('state');
    const queued = c.command('pid');
    await arrived;
    const reconnected = next(c, 'connected');
    server.dropConnections();
    await expect(inFlight).rejects.toMatchObject({ code: 'NOT_CONNECTED' });
    await expect(queued).rejects.toMatchObject({ code: 'NOT_CONNECTED' });
    const [error, retryInMs] = await disconnected;
    expect(error.code).toBe('NOT_CONNECTED');
    expect(retryInMs).toBeGreaterThan(0);
    await reconnected;
    await expect(c.command('pid')).resolves.toMatchObject({ success: 'pid=4242' });
  });

  it('counts malformed and unexpected lines, reports them typed, and keeps working', async () => {
    const server = await serve({ transport });
    const c = client({ address: server.address });
    const errors: BackhaulError[] = [];
    c.on('malformed', (error) => errors.push(error));
    c.start();
    await connected(c);
    const seen = next(c, 'malformed', () => errors.length === 3);
    server.sendRaw('>STATE:never,CONNECTED\r\nSUCCESS: nobody asked\r\n\u0000\u0001garbage\r\n');
    await seen;
    expect(errors.map((e) => e.code)).toEqual(['MALFORMED_LINE', 'UNEXPECTED_LINE', 'MALFORMED_LINE']);
    expect(errors.every((e) => e instanceof BackhaulError)).toBe(true);
    expect(c.counters.malformed).toBe(3);
    await expect(c.command('pid')).resolves.toMatchObject({ success: 'pid=4242' });
    expect(server.connections).toBe(1);
  });

  it('resets the connection when a reply has the wrong shape (UNEXPECTED_REPLY)', async () => {
    const server = await serve({ transport });
    server.setReply('hold release', ['1795340127,CONNECTING,,,,,,']);
    const c = client({ address: server.address });
    c.start();
    await connected(c);
    const reconnected = next(c, 'connected');
    await expect(c.command('hold release')).rejects.toMatchObject({ code: 'UNEXPECTED_REPLY' });
    await reconnected;
    expect(server.connections).toBe(2);
  });
});

describe('ManagementClient connecting', () => {
  it('keeps trying with growing, capped, jittered waits until the management interface appears', async () => {
    const directory = mkdtempSync(path.join(os.tmpdir(), 'amit-mgmt-'));
    cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
    const socketPath = path.join(directory, 'late.sock');
    const c = client({ address: socketPath, reconnectInitialMs: 10, reconnectMaxMs: 80, random: () => 0.999 });
    const waits: number[] = [];
    const codes: string[] = [];
    c.on('disconnected', (error, retryInMs) => {
      codes.push(error.code);
      if (retryInMs !== null) waits.push(retryInMs);
    });
    const sixFailures = next(c, 'disconnected', () => waits.length === 6);
    c.start();
    await sixFailures;
    expect(codes.every((code) => code === 'UNREACHABLE')).toBe(true);
    expect(waits).toEqual([10, 20, 40, 80, 80, 80]);

    // OpenVPN starts: the next attempt gets in.
    const server = createServer((socket) => socket.write(`${GREETING}\r\n`));
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    server.listen(socketPath);
    await once(server, 'listening');
    await connected(c);
    expect(c.counters.connections).toBe(1);
    // Before the server's cleanup, which waits for its connections to end.
    await c.stop();
  });

  it('says NO_GREETING when the connection is accepted but OpenVPN stays silent (another client holds it)', async () => {
    const server = await serve({ greet: false });
    const started = Date.now();
    await expect(connectOnce({ address: server.address, connectTimeoutMs: 200 })).rejects.toMatchObject({ code: 'NO_GREETING', message: expect.stringMatching(/one management client at a time/) });
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
  });

  it('says UNREACHABLE when nothing listens', async () => {
    const free: Server = createServer();
    free.listen(0, '127.0.0.1');
    await once(free, 'listening');
    const { port } = free.address() as { port: number };
    await new Promise<void>((resolve) => free.close(() => resolve()));
    await expect(connectOnce({ address: `127.0.0.1:${port}` })).rejects.toMatchObject({ code: 'UNREACHABLE', message: expect.stringMatching(/ECONNREFUSED/) });
  });

  it('refuses commands it cannot send: not connected, stopped, or with a line break in them', async () => {
    const server = await serve();
    const c = client({ address: server.address });
    await expect(c.command('pid')).rejects.toMatchObject({ code: 'NOT_CONNECTED' });
    c.start();
    await connected(c);
    await expect(c.command('pid\nsignal SIGTERM')).rejects.toMatchObject({ code: 'BAD_COMMAND' });
    await expect(c.command('   ')).rejects.toMatchObject({ code: 'BAD_COMMAND' });
    expect(server.received).toEqual([]);
    await c.stop();
    await expect(c.command('pid')).rejects.toMatchObject({ code: 'CLOSED' });
    expect(() => new ManagementClient({ address: server.address, password: 'two\nlines' })).toThrow(BackhaulError);
    expect(() => new ManagementClient({ address: 'nonsense' })).toThrow(expect.objectContaining({ code: 'BAD_ADDRESS' }));
  });

  it('stops reconnecting once stopped', async () => {
    const server = await serve();
    const c = client({ address: server.address });
    c.start();
    await connected(c);
    await c.stop();
    expect(server.connections).toBe(1);
    // Wait past several reconnect delays (reconnectMaxMs is 200): a lower bound, not a timing assertion.
    await new Promise<void>((resolve) => setTimeout(resolve, 300));
    expect(server.connections).toBe(1);
    expect(c.connected).toBe(false);
  });
});
