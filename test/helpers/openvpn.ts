/**
 * OpenVPN for tests, two ways:
 *
 * - `ScriptedManagementServer`: a stand-in for OpenVPN's management
 *   interface on loopback TCP or a unix socket. It greets, asks for a password
 *   when given one, answers commands the way OpenVPN 2.6 does (recorded from a
 *   real openvpn; replies end with CRLF) and lets a test push notifications,
 *   hold back replies, and drop connections. For unit and flow tests.
 *
 * - `startTunnel()`: a real OpenVPN 2.6 tunnel between two network
 *   namespaces joined by a veth pair: a TLS-mode server in one, a client in
 *   the other whose management interface is a unix socket reachable from the
 *   test process (the filesystem is shared across namespaces). Needs root,
 *   iproute2 and /usr/sbin/openvpn (see `tunnelSupportProblem()`). For
 *   integration and end-to-end tests:
 *
 *     const tunnel = await startTunnel({ name: 'e2e' });
 *     try {
 *       // monitor tunnel.mgmtSocket; reach tunnel.serverTunIp from tunnel.clientNs
 *       await tunnel.cut();      // the link goes down: the client's ping-restart fires within ~4 s
 *       await tunnel.restore();  // and it reconnects
 *     } finally {
 *       await tunnel.stop();     // processes, namespaces and files, also after a failure
 *     }
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { generateRsaKeyPair, issueCertificate } from '../../src/keys/pki.js';
import { connectNamespaces, createNamespace, namespaceSupportProblem, removeStaleNamespaces, run, uniqueName, type Namespace, type VethLink } from './netns.js';

// ---------------------------------------------------------------------------
// A scripted management interface
// ---------------------------------------------------------------------------

export const GREETING = ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info";

/** Lines to send for a command (without line ends), or null to send nothing (the test answers by hand, or never). */
export type ScriptedReply = string[] | null;

export interface ScriptedServerOptions {
  /** 'tcp': 127.0.0.1 on a free port (default); 'unix': a socket in a fresh temporary directory. */
  transport?: 'tcp' | 'unix';
  /** Ask for this password first, as `management ADDR PORT pw-file` does. */
  password?: string;
  /** Greet new connections (default true). false: accept and say nothing, like an OpenVPN serving another client. */
  greet?: boolean;
  /** Lines sent right after the greeting, e.g. `>HOLD:Waiting for hold release:0`. */
  afterGreeting?: string[];
}

interface ScriptedServerEvents {
  command: [command: string];
  connection: [socket: Socket];
}

/**
 * A fake OpenVPN management interface. `history` is the state history
 * (`time,NAME,description,localIp,remoteIp,port,,`); `state on all` returns
 * it, `pushState()` adds to it and notifies when notifications are on.
 */
export class ScriptedManagementServer extends EventEmitter<ScriptedServerEvents> {
  /** Commands received, in order (password attempts excluded). */
  readonly received: string[] = [];
  readonly history: string[] = [];
  /** Connections accepted so far. */
  connections = 0;
  private readonly sockets = new Set<Socket>();
  private readonly overrides: Array<{ match: string | RegExp; reply: ScriptedReply | ((command: string) => ScriptedReply) }> = [];
  private stateOn = false;
  greet: boolean;
  afterGreeting: string[];

  private constructor(
    private readonly server: Server,
    readonly address: string,
    private readonly directory: string | undefined,
    private readonly password: string | undefined,
    options: ScriptedServerOptions,
  ) {
    super();
    this.greet = options.greet ?? true;
    this.afterGreeting = options.afterGreeting ?? [];
    server.on('connection', (socket) => this.accept(socket));
  }

  static async listen(options: ScriptedServerOptions = {}): Promise<ScriptedManagementServer> {
    const server = createServer();
    if (options.transport === 'unix') {
      const directory = mkdtempSync(path.join(os.tmpdir(), 'amit-mgmt-'));
      const socketPath = path.join(directory, 'mgmt.sock');
      server.listen(socketPath);
      await once(server, 'listening');
      return new ScriptedManagementServer(server, `unix:${socketPath}`, directory, options.password, options);
    }
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as { port: number };
    return new ScriptedManagementServer(server, `127.0.0.1:${port}`, undefined, options.password, options);
  }

  /** Overrides the answer to commands equal to (or matching) `match`; later overrides win. */
  setReply(match: string | RegExp, reply: ScriptedReply | ((command: string) => ScriptedReply)): void {
    this.overrides.unshift({ match, reply });
  }

  /** Sends raw lines (CRLF added) to every connection, e.g. notifications or a held-back reply. */
  send(...lines: string[]): void {
    const text = lines.map((line) => `${line}\r\n`).join('');
    for (const socket of this.sockets) socket.write(text);
  }

  /** Sends bytes exactly as given (for split lines, missing line ends, garbage). */
  sendRaw(data: string | Buffer): void {
    for (const socket of this.sockets) socket.write(data);
  }

  /** Records a state and, if a client turned state notifications on, sends it as `>STATE:`. */
  pushState(name: string, description = '', localIp = '', remoteIp = '', remotePort = ''): void {
    const record = `${Math.floor(Date.now() / 1000)},${name},${description},${localIp},${remoteIp},${remotePort},,`;
    this.history.push(record);
    if (this.stateOn) this.send(`>STATE:${record}`);
  }

  /** Resolves with the next command received that matches. */
  nextCommand(match: string | RegExp = /.*/): Promise<string> {
    return new Promise((resolve) => {
      const listener = (command: string): void => {
        if (typeof match === 'string' ? command !== match : !match.test(command)) return;
        this.off('command', listener);
        resolve(command);
      };
      this.on('command', listener);
    });
  }

  nextConnection(): Promise<void> {
    return new Promise((resolve) => this.once('connection', () => resolve()));
  }

  /** Closes every open connection (the server keeps listening). */
  dropConnections(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  get openConnections(): number {
    return this.sockets.size;
  }

  async close(): Promise<void> {
    this.dropConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (this.directory) rmSync(this.directory, { recursive: true, force: true });
  }

  private accept(socket: Socket): void {
    this.connections += 1;
    // OpenVPN resets notification switches per connection (the bytecount interval it keeps).
    this.stateOn = false;
    let authenticated = this.password === undefined;
    let tries = 0;
    let buffered = '';
    socket.on('error', () => undefined);
    socket.on('close', () => this.sockets.delete(socket));
    const greet = (): void => {
      this.sockets.add(socket);
      if (this.greet) socket.write([GREETING, ...this.afterGreeting].map((line) => `${line}\r\n`).join(''));
    };
    if (authenticated) greet();
    else socket.write('ENTER PASSWORD:');
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8');
      let end: number;
      while ((end = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, end).replace(/\r$/, '');
        buffered = buffered.slice(end + 1);
        if (!authenticated) {
          if (line === this.password) {
            authenticated = true;
            socket.write('SUCCESS: password is correct\r\n');
            greet();
          } else if (++tries >= 3) {
            socket.destroy();
          } else {
            socket.write('ENTER PASSWORD:');
          }
          continue;
        }
        this.received.push(line);
        this.emit('command', line);
        const reply = this.answer(line);
        if (reply !== null && !socket.destroyed) socket.write(reply.map((text) => `${text}\r\n`).join(''));
      }
    });
    this.emit('connection', socket);
  }

  private answer(command: string): ScriptedReply {
    for (const { match, reply } of this.overrides) {
      if (typeof match === 'string' ? match === command : match.test(command)) return typeof reply === 'function' ? reply(command) : reply;
    }
    if (command === 'state on all') {
      this.stateOn = true;
      return ['SUCCESS: real-time state notification set to ON', ...this.history, 'END'];
    }
    if (command === 'state on' || command === 'state off') {
      this.stateOn = command === 'state on';
      return [`SUCCESS: real-time state notification set to ${this.stateOn ? 'ON' : 'OFF'}`];
    }
    if (command === 'state') return [...this.history.slice(-1), 'END'];
    if (command === 'state all') return [...this.history, 'END'];
    if (/^bytecount \d+$/.test(command)) return ['SUCCESS: bytecount interval changed'];
    if (command === 'hold release') return ['SUCCESS: hold release succeeded'];
    if (command === 'hold off') return ['SUCCESS: hold flag set to OFF'];
    const signal = /^signal (\S+)$/.exec(command);
    if (signal) {
      return ['SIGUSR1', 'SIGUSR2', 'SIGHUP', 'SIGTERM'].includes(signal[1] ?? '')
        ? [`SUCCESS: signal ${signal[1]} thrown`]
        : [`ERROR: signal '${signal[1]}' is not a known signal type`];
    }
    if (command === 'status') {
      return ['OpenVPN STATISTICS', 'Updated,2026-01-01 00:00:00', 'TUN/TAP read bytes,96', 'TUN/TAP write bytes,48', 'TCP/UDP read bytes,3519', 'TCP/UDP write bytes,3617', 'Auth read bytes,112', 'END'];
    }
    if (command === 'pid') return ['SUCCESS: pid=4242'];
    return ["ERROR: unknown command, enter 'help' for more options"];
  }
}

// ---------------------------------------------------------------------------
// A real OpenVPN tunnel between two network namespaces
// ---------------------------------------------------------------------------

export const OPENVPN_BINARY = '/usr/sbin/openvpn';

/** Why a real tunnel cannot be started here (no OpenVPN 2.6, not root, no namespaces), or undefined. Synchronous, for skipIf. */
export function tunnelSupportProblem(): string | undefined {
  if (!existsSync(OPENVPN_BINARY)) return `${OPENVPN_BINARY} is not installed (Debian package openvpn)`;
  const version = spawnSync(OPENVPN_BINARY, ['--version'], { encoding: 'utf8' });
  const first = (version.stdout ?? '').split('\n')[0] ?? '';
  if (!/^OpenVPN (2\.(6|[7-9])|2\.\d\d|[3-9]\.)/.test(first)) return `${OPENVPN_BINARY} is not OpenVPN 2.6 or later: "${first}"`;
  return namespaceSupportProblem();
}

export interface TunnelOptions {
  /** A short word for the names of namespaces and files (default 'vpn'). */
  name?: string;
  /** Start the client with --management-hold: it waits for `hold release` (default false). */
  managementHold?: boolean;
  /** A password for the client's management interface (written to a file; OpenVPN asks for it). */
  managementPassword?: string;
  /** Seconds between keepalive pings, and without traffic until a restart (defaults 1 and 4: a cut is seen in ~4 s). */
  ping?: number;
  pingRestart?: number;
  /** Extra arguments for the client and the server (e.g. ['--verb', '4']). */
  clientArgs?: string[];
  serverArgs?: string[];
}

export interface Tunnel {
  /** The namespaces (each has exec/spawn/ip). */
  serverNs: Namespace;
  clientNs: Namespace;
  /** Addresses on the veth link between the namespaces (the tunnel's transport). */
  serverLinkIp: string;
  clientLinkIp: string;
  /** Addresses inside the tunnel. */
  serverTunIp: string;
  clientTunIp: string;
  /** The client's management interface: a unix socket path (give it to the monitor as is). */
  mgmtSocket: string;
  /** The server's management interface (unix socket), for tests that want to watch the server too. */
  serverMgmtSocket: string;
  /** The directory with keys, configuration and logs (removed by stop()). */
  directory: string;
  /** Takes the veth link down (both ends): the transport stops carrying packets. */
  cut(): Promise<void>;
  /** Brings the link up again. */
  restore(): Promise<void>;
  /** Stops (SIGTERM) or starts the server or the client openvpn process. */
  stopServer(): Promise<void>;
  startServer(): Promise<void>;
  stopClient(): Promise<void>;
  startClient(): Promise<void>;
  /**
   * Proves the tunnel carries traffic: a TCP echo server on serverTunIp (in
   * the server namespace) and a client in the client namespace that sends a
   * token through the tunnel and waits for it to come back. Resolves with the
   * round trip in ms; rejects if it does not come back within `timeoutMs`.
   */
  probe(timeoutMs?: number): Promise<number>;
  /** What the server and client have logged so far (for a failing test's message). */
  logs(): { server: string; client: string };
  /** Resolves when the server or client log has a line matching `pattern` (also one logged before the call). */
  waitForLog(which: 'server' | 'client', pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Stops both processes, deletes both namespaces and the directory. Safe to call twice, and after a failed start. */
  stop(): Promise<void>;
}

const LINK_SERVER = '10.231.0.1';
const LINK_CLIENT = '10.231.0.2';
const TUN_SERVER = '10.232.0.1';
const TUN_CLIENT = '10.232.0.2';
const OPENVPN_PORT = 1194;
const STOP_GRACE_MS = 5000;

interface TunnelFiles {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  tlsCrypt: string;
  ccd: string;
  passwordFile: string | undefined;
}

const CLIENT_CN = 'ami-gateway-test';

/** A CA, server and client certificates (serverAuth / clientAuth), a tls-crypt key and the client's fixed tunnel address. */
async function writeTunnelFiles(directory: string, password: string | undefined): Promise<TunnelFiles> {
  const now = Date.now();
  const notBefore = new Date(now - 3600_000);
  const notAfter = new Date(now + 86_400_000);
  const caKeys = generateRsaKeyPair();
  const caCert = issueCertificate({ subjectCN: 'AMI Test VPN CA', publicKeyPem: caKeys.publicKeyPem, issuerKeyPem: caKeys.privateKeyPem, notBefore, notAfter, ca: true, keyUsage: { keyCertSign: true, cRLSign: true } });
  const issue = (cn: string, purpose: string, keyUsage: { digitalSignature: true; keyEncipherment?: true }) => {
    const keys = generateRsaKeyPair();
    const cert = issueCertificate({
      subjectCN: cn,
      publicKeyPem: keys.publicKeyPem,
      issuerCertPem: caCert,
      issuerKeyPem: caKeys.privateKeyPem,
      notBefore,
      notAfter,
      ca: false,
      keyUsage,
      extKeyUsage: { oids: [purpose] },
    });
    return { cert, key: keys.privateKeyPem };
  };
  const server = issue('ami-hes-vpn', '1.3.6.1.5.5.7.3.1', { digitalSignature: true, keyEncipherment: true });
  const client = issue(CLIENT_CN, '1.3.6.1.5.5.7.3.2', { digitalSignature: true });
  const file = (name: string, content: string): string => {
    const target = path.join(directory, name);
    writeFileSync(target, content, { mode: 0o600 });
    return target;
  };
  const tlsCrypt = path.join(directory, 'tls-crypt.key');
  const generated = await run(OPENVPN_BINARY, ['--genkey', 'tls-crypt', tlsCrypt]);
  if (generated.code !== 0) throw new Error(`openvpn --genkey failed: ${generated.stderr || generated.stdout}`);
  const ccd = path.join(directory, 'ccd');
  mkdirSync(ccd);
  // A fixed address for the client, so tests know clientTunIp before it connects.
  writeFileSync(path.join(ccd, CLIENT_CN), `ifconfig-push ${TUN_CLIENT} 255.255.255.0\n`);
  return {
    ca: file('ca.crt', caCert),
    serverCert: file('server.crt', server.cert),
    serverKey: file('server.key', server.key),
    clientCert: file('client.crt', client.cert),
    clientKey: file('client.key', client.key),
    tlsCrypt,
    ccd,
    passwordFile: password === undefined ? undefined : file('mgmt-password', `${password}\n`),
  };
}

/** An openvpn process inside a namespace, its output kept in memory and in a log file. */
class OpenVpnProcess {
  private child: ChildProcess | undefined;
  private exited: Promise<void> | undefined;
  output = '';
  private readonly lines = new EventEmitter<{ line: [line: string] }>();

  constructor(
    private readonly ns: Namespace,
    private readonly args: string[],
    private readonly logFile: string,
  ) {}

  start(): void {
    if (this.child) return;
    const child = this.ns.spawn(OPENVPN_BINARY, this.args);
    this.child = child;
    let pending = '';
    const take = (chunk: Buffer): void => {
      const text = chunk.toString('utf8');
      this.output += text;
      appendFileSync(this.logFile, text);
      pending += text;
      let end: number;
      while ((end = pending.indexOf('\n')) >= 0) {
        this.lines.emit('line', pending.slice(0, end));
        pending = pending.slice(end + 1);
      }
    };
    child.stdout?.on('data', take);
    child.stderr?.on('data', take);
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    child.once('exit', (code, signal) => {
      const note = `--- openvpn exited (${code ?? signal})\n`;
      this.output += note;
      appendFileSync(this.logFile, note);
      if (this.child === child) this.child = undefined;
    });
  }

  async stop(): Promise<void> {
    const child = this.child;
    const exited = this.exited;
    if (!child || !exited) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    await exited;
    clearTimeout(timer);
  }

  waitFor(pattern: RegExp, timeoutMs: number): Promise<string> {
    const seen = this.output.split('\n').find((line) => pattern.test(line));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.lines.off('line', listener);
        reject(new Error(`openvpn did not log ${pattern} within ${timeoutMs} ms; its output:\n${this.output.slice(-4000)}`));
      }, timeoutMs);
      const listener = (line: string): void => {
        if (!pattern.test(line)) return;
        clearTimeout(timer);
        this.lines.off('line', listener);
        resolve(line);
      };
      this.lines.on('line', listener);
    });
  }
}

/** Node scripts for probe(): an echo server that says when it listens, and a client that checks the echo. */
const ECHO_SERVER = `
const net = require('net');
const server = net.createServer((s) => { s.on('error', () => {}); s.pipe(s); });
server.listen(Number(process.argv[2]), process.argv[1], () => console.log('listening'));
setTimeout(() => process.exit(0), Number(process.argv[3])).unref();
`;
const ECHO_CLIENT = `
const net = require('net');
const token = 'ami-probe-' + Math.random();
const started = Date.now();
const s = net.connect({ host: process.argv[1], port: Number(process.argv[2]) }, () => s.write(token));
let got = '';
s.on('data', (d) => { got += d; if (got === token) { console.log(String(Date.now() - started)); process.exit(0); } });
s.on('error', (e) => { console.error(e.message); process.exit(1); });
setTimeout(() => { console.error('no echo'); process.exit(1); }, Number(process.argv[3])).unref();
`;

/**
 * Starts a real OpenVPN tunnel between two fresh namespaces and resolves
 * once the server is listening (the client is started too; with
 * `managementHold` it waits for `hold release`). The client's tunnel address
 * is fixed (client-config-dir), so tests know it up front.
 */
export async function startTunnel(options: TunnelOptions = {}): Promise<Tunnel> {
  await removeStaleNamespaces();
  const role = (options.name ?? 'vpn').replace(/[^a-z0-9]/gi, '').slice(0, 6) || 'vpn';
  const base = uniqueName(role);
  const directory = mkdtempSync(path.join(os.tmpdir(), 'amit-vpn-'));
  const cleanups: Array<() => Promise<void>> = [async () => rmSync(directory, { recursive: true, force: true })];
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  };
  try {
    const files = await writeTunnelFiles(directory, options.managementPassword);
    const serverNs = await createNamespace(`${base}-s`);
    cleanups.push(() => serverNs.remove());
    const clientNs = await createNamespace(`${base}-c`);
    cleanups.push(() => clientNs.remove());
    const link: VethLink = await connectNamespaces(serverNs, clientNs, `${LINK_SERVER}/24`, `${LINK_CLIENT}/24`, { a: 'amit-srv0', b: 'amit-cli0' });
    const ping = String(options.ping ?? 1);
    const pingRestart = String(options.pingRestart ?? 4);
    const mgmtSocket = path.join(directory, 'client.sock');
    const serverMgmtSocket = path.join(directory, 'server.sock');
    const common = ['--cd', directory, '--dev', 'tun', '--proto', 'udp', '--ca', files.ca, '--tls-crypt', files.tlsCrypt, '--ping', ping, '--ping-restart', pingRestart, '--verb', '3'];
    const server = new OpenVpnProcess(
      serverNs,
      [
        ...common,
        '--server', '10.232.0.0', '255.255.255.0',
        '--topology', 'subnet',
        '--local', LINK_SERVER,
        '--port', String(OPENVPN_PORT),
        '--cert', files.serverCert,
        '--key', files.serverKey,
        '--dh', 'none',
        '--client-config-dir', files.ccd,
        '--management', serverMgmtSocket, 'unix',
        ...(options.serverArgs ?? []),
      ],
      path.join(directory, 'server.log'),
    );
    cleanups.push(() => server.stop());
    const client = new OpenVpnProcess(
      clientNs,
      [
        ...common,
        '--client',
        '--remote', LINK_SERVER, String(OPENVPN_PORT),
        '--nobind',
        '--cert', files.clientCert,
        '--key', files.clientKey,
        '--remote-cert-tls', 'server',
        // After a failed attempt, try again within a second (the default waits 5 s and more).
        '--connect-retry', '1', '1',
        '--management', mgmtSocket, 'unix', ...(files.passwordFile ? [files.passwordFile] : []),
        ...(options.managementHold ? ['--management-hold'] : []),
        ...(options.clientArgs ?? []),
      ],
      path.join(directory, 'client.log'),
    );
    cleanups.push(() => client.stop());
    server.start();
    await server.waitFor(/Initialization Sequence Completed/, 20_000);
    client.start();
    const tunnel: Tunnel = {
      serverNs,
      clientNs,
      serverLinkIp: LINK_SERVER,
      clientLinkIp: LINK_CLIENT,
      serverTunIp: TUN_SERVER,
      clientTunIp: TUN_CLIENT,
      mgmtSocket,
      serverMgmtSocket,
      directory,
      cut: () => link.down(),
      restore: () => link.up(),
      stopServer: () => server.stop(),
      startServer: async () => {
        server.start();
        await server.waitFor(/Initialization Sequence Completed/, 20_000);
      },
      stopClient: () => client.stop(),
      startClient: async () => client.start(),
      probe: (timeoutMs = 5000) => probe(serverNs, clientNs, timeoutMs),
      logs: () => ({ server: server.output, client: client.output }),
      waitForLog: (which, pattern, timeoutMs = 20_000) => (which === 'server' ? server : client).waitFor(pattern, timeoutMs),
      stop,
    };
    return tunnel;
  } catch (err) {
    await stop();
    throw err;
  }
}

let probePort = 7000;

async function probe(serverNs: Namespace, clientNs: Namespace, timeoutMs: number): Promise<number> {
  const port = String(probePort++);
  const echo = serverNs.spawn(process.execPath, ['-e', ECHO_SERVER, TUN_SERVER, port, String(timeoutMs + 1000)]);
  try {
    await new Promise<void>((resolve, reject) => {
      let output = '';
      echo.stdout?.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        if (output.includes('listening')) resolve();
      });
      echo.stderr?.on('data', (chunk: Buffer) => {
        output += chunk.toString();
      });
      echo.once('exit', (code) => reject(new Error(`the echo server exited (${code}) before listening: ${output}`)));
    });
    const result = await clientNs.exec(process.execPath, ['-e', ECHO_CLIENT, TUN_SERVER, port, String(timeoutMs)], { timeoutMs: timeoutMs + 2000 });
    if (result.code !== 0) throw new Error(`no echo through the tunnel: ${result.stderr.trim() || `exit ${result.code}`}`);
    return Number(result.stdout.trim());
  } finally {
    echo.kill('SIGKILL');
  }
}
