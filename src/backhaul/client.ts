import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { formatManagementAddress, parseManagementAddress, type ManagementAddress } from './address.js';
import { BackhaulError, excerpt } from './errors.js';
import { ManagementParser, type ManagementItem, type ManagementNotification } from './parser.js';
import { ReplyReader, type ManagementReply, type ReplyShape } from './reply.js';

export interface ManagementClientOptions {
  /** `host:port`, `[v6]:port`, `unix:/path` or a socket path (see parseManagementAddress). */
  address: ManagementAddress | string;
  /** The management password (OpenVPN's `management ... pw-file`), when it has one. */
  password?: string;
  /** A command without its reply after this long fails with TIMEOUT (default 10 s). */
  commandTimeoutMs?: number;
  /** From opening the connection to OpenVPN's greeting (default 5 s). */
  connectTimeoutMs?: number;
  /** Reconnect when the connection closes or cannot be made (default true). */
  reconnect?: boolean;
  /** First wait before reconnecting (default 250 ms); doubled per failed attempt, jittered. */
  reconnectInitialMs?: number;
  /** Longest wait between attempts (default 10 s). */
  reconnectMaxMs?: number;
  /** For tests: the jitter's random source. */
  random?: () => number;
  maxLineBytes?: number;
}

export interface ManagementClientEvents {
  /** OpenVPN greeted (after the password, when it asked): commands can be sent. */
  connected: [];
  /**
   * The connection closed or could not be made. `retryInMs` is when the next
   * attempt starts, null when there is none (stopped, or reconnect off).
   */
  disconnected: [error: BackhaulError, retryInMs: number | null];
  /** A real-time notification (`>NAME:...`), also one that came inside a reply. */
  notification: [notification: ManagementNotification];
  /** A line that broke the protocol: counted, reported, and skipped. */
  malformed: [error: BackhaulError];
}

export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
export const DEFAULT_RECONNECT_INITIAL_MS = 250;
export const DEFAULT_RECONNECT_MAX_MS = 10_000;
const MAX_COMMAND_CHARS = 4096;

/**
 * The wait before reconnect attempt `failures` (1 for the first): doubling
 * from `initialMs` up to `maxMs`, then jittered into its upper half, so that
 * it is never zero and clients restarted together spread out.
 */
export function reconnectDelay(failures: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.max(0, Math.min(failures - 1, 30)));
  return Math.round(base / 2 + random() * (base / 2));
}

type Phase = 'idle' | 'connecting' | 'greeting' | 'authenticating' | 'ready' | 'waiting' | 'stopped';

interface PendingCommand {
  text: string;
  shape: ReplyShape | undefined;
  resolve(reply: ManagementReply): void;
  reject(error: BackhaulError): void;
  timer: NodeJS.Timeout;
}

/**
 * A client of OpenVPN's management interface: connects (TCP or unix socket),
 * answers the password prompt, waits for the greeting, sends one command at a
 * time from a queue and matches each reply to its command, and routes the
 * real-time notifications (which may come at any point, also inside a reply)
 * as events. It reconnects with jittered, capped backoff while OpenVPN is not
 * there (not started yet, restarting).
 *
 * A command that gets no reply in time fails with TIMEOUT and the connection
 * is reset: a late reply could otherwise be taken for the next command's.
 */
export class ManagementClient extends EventEmitter<ManagementClientEvents> {
  readonly address: ManagementAddress;
  /** Malformed or unexpected lines, command timeouts, connections made: since construction. */
  readonly counters = { malformed: 0, timeouts: 0, connections: 0 };
  private readonly options: Required<Omit<ManagementClientOptions, 'password' | 'address' | 'maxLineBytes'>>;
  private readonly password: string | undefined;
  private readonly parser: ManagementParser;
  private phase: Phase = 'idle';
  private socket: Socket | undefined;
  /** Why the current socket is being closed, when we close it. */
  private closeReason: BackhaulError | undefined;
  private socketError: NodeJS.ErrnoException | undefined;
  private greetingTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private readonly queue: PendingCommand[] = [];
  private current: { pending: PendingCommand; reader: ReplyReader } | undefined;

  constructor(options: ManagementClientOptions) {
    super();
    this.address = typeof options.address === 'string' ? parseManagementAddress(options.address) : options.address;
    if (options.password !== undefined && /[\r\n]/.test(options.password)) {
      throw new BackhaulError('BAD_COMMAND', 'the management password must be a single line');
    }
    this.password = options.password === '' ? undefined : options.password;
    this.options = {
      commandTimeoutMs: options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      reconnect: options.reconnect ?? true,
      reconnectInitialMs: options.reconnectInitialMs ?? DEFAULT_RECONNECT_INITIAL_MS,
      reconnectMaxMs: options.reconnectMaxMs ?? DEFAULT_RECONNECT_MAX_MS,
      random: options.random ?? Math.random,
    };
    this.parser = new ManagementParser(options.maxLineBytes);
  }

  /** True between the greeting and the connection closing. */
  get connected(): boolean {
    return this.phase === 'ready';
  }

  get description(): string {
    return formatManagementAddress(this.address);
  }

  /** Starts connecting (and, unless told otherwise, keeps reconnecting). */
  start(): void {
    if (this.phase !== 'idle') return;
    this.open();
  }

  /** Closes the connection for good; commands still waiting fail with CLOSED. */
  async stop(): Promise<void> {
    if (this.phase === 'stopped') return;
    this.phase = 'stopped';
    clearTimeout(this.retryTimer);
    clearTimeout(this.greetingTimer);
    this.failAll(new BackhaulError('CLOSED', 'the management client was stopped'));
    const socket = this.socket;
    if (socket && !socket.destroyed) {
      this.closeReason = new BackhaulError('CLOSED', 'the management client was stopped');
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.destroy();
      await closed;
    }
  }

  /**
   * Sends a command once those before it have their replies. Resolves with
   * the reply; rejects with a BackhaulError: COMMAND_FAILED (OpenVPN said
   * ERROR), TIMEOUT, NOT_CONNECTED, UNEXPECTED_REPLY, BAD_COMMAND or CLOSED.
   * `shape` overrides how the reply is read (see replyShapeOf).
   */
  command(text: string, options: { timeoutMs?: number; shape?: ReplyShape } = {}): Promise<ManagementReply> {
    const command = text.trim();
    if (command === '' || /[\r\n]/.test(command) || command.length > MAX_COMMAND_CHARS) {
      return Promise.reject(new BackhaulError('BAD_COMMAND', `not a management command: "${excerpt(command)}"`));
    }
    if (this.phase === 'stopped') return Promise.reject(new BackhaulError('CLOSED', 'the management client was stopped'));
    if (this.phase !== 'ready') {
      return Promise.reject(new BackhaulError('NOT_CONNECTED', `not connected to the OpenVPN management interface at ${this.description}`));
    }
    return new Promise<ManagementReply>((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? this.options.commandTimeoutMs;
      const pending: PendingCommand = {
        text: command,
        shape: options.shape,
        resolve,
        reject,
        timer: setTimeout(() => this.timedOut(pending, timeoutMs), timeoutMs),
      };
      this.queue.push(pending);
      this.pump();
    });
  }

  private open(): void {
    this.phase = 'connecting';
    this.parser.reset();
    this.closeReason = undefined;
    this.socketError = undefined;
    const socket = this.address.kind === 'unix' ? connect({ path: this.address.path }) : connect({ host: this.address.host, port: this.address.port });
    this.socket = socket;
    this.greetingTimer = setTimeout(() => {
      if (this.socket !== socket) return;
      this.closeWith(
        socket,
        this.phase === 'connecting'
          ? new BackhaulError('UNREACHABLE', `cannot connect to ${this.description} within ${this.options.connectTimeoutMs} ms`)
          : new BackhaulError(
              'NO_GREETING',
              `${this.description} accepted the connection but OpenVPN did not greet within ${this.options.connectTimeoutMs} ms ` +
                '(it serves one management client at a time: another client may hold it)',
            ),
      );
    }, this.options.connectTimeoutMs);
    socket.on('connect', () => {
      if (this.socket === socket && this.phase === 'connecting') this.phase = 'greeting';
      if (this.address.kind === 'tcp') socket.setNoDelay(true);
    });
    socket.on('data', (chunk: Buffer) => this.received(socket, chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.socketError ??= err;
    });
    socket.on('close', () => this.closed(socket));
  }

  private received(socket: Socket, chunk: Buffer): void {
    for (const item of this.parser.push(chunk)) {
      // A listener may have stopped the client or reset the connection.
      if (this.socket !== socket || socket.destroyed) return;
      this.handle(socket, item);
    }
  }

  private handle(socket: Socket, item: ManagementItem): void {
    switch (item.kind) {
      case 'malformed':
        this.counters.malformed += 1;
        this.emit('malformed', item.error);
        return;
      case 'password-prompt':
        if (this.phase === 'greeting') {
          if (this.password === undefined) {
            this.closeWith(socket, new BackhaulError('PASSWORD_REQUIRED', `the management interface at ${this.description} asks for a password and none is configured`));
            return;
          }
          this.phase = 'authenticating';
          socket.write(`${this.password}\n`);
          return;
        }
        if (this.phase === 'authenticating') {
          this.closeWith(socket, new BackhaulError('BAD_PASSWORD', `the management interface at ${this.description} refused the password`));
          return;
        }
        this.unexpected('ENTER PASSWORD:');
        return;
      case 'notification':
        if (item.notification.type === 'INFO' && (this.phase === 'greeting' || this.phase === 'authenticating')) this.ready();
        this.emit('notification', item.notification);
        return;
      case 'line':
        this.line(socket, item.text);
        return;
    }
  }

  private line(socket: Socket, text: string): void {
    if (this.phase === 'authenticating') {
      // "SUCCESS: password is correct" comes before the greeting.
      if (text.startsWith('SUCCESS:')) return;
      if (text.startsWith('ERROR:')) {
        this.closeWith(socket, new BackhaulError('BAD_PASSWORD', `the management interface at ${this.description} refused the password: ${excerpt(text)}`));
        return;
      }
    }
    const current = this.current;
    if (this.phase !== 'ready' || !current) {
      this.unexpected(text);
      return;
    }
    const progress = current.reader.accept(text);
    if (!progress.done) return;
    this.current = undefined;
    clearTimeout(current.pending.timer);
    if ('reply' in progress) current.pending.resolve(progress.reply);
    else current.pending.reject(progress.error);
    if ('error' in progress && progress.error.code === 'UNEXPECTED_REPLY') {
      // Replies no longer line up with commands: start afresh.
      this.closeWith(socket, progress.error);
      return;
    }
    this.pump();
  }

  private unexpected(text: string): void {
    this.counters.malformed += 1;
    this.emit('malformed', new BackhaulError('UNEXPECTED_LINE', `a line nobody asked for: "${excerpt(text)}"`, excerpt(text)));
  }

  private ready(): void {
    clearTimeout(this.greetingTimer);
    this.phase = 'ready';
    this.failures = 0;
    this.counters.connections += 1;
    this.emit('connected');
    this.pump();
  }

  private pump(): void {
    if (this.current || this.phase !== 'ready' || !this.socket) return;
    const pending = this.queue.shift();
    if (!pending) return;
    this.current = { pending, reader: new ReplyReader(pending.text, pending.shape) };
    this.socket.write(`${pending.text}\n`);
  }

  private timedOut(pending: PendingCommand, timeoutMs: number): void {
    const error = new BackhaulError('TIMEOUT', `no reply to "${pending.text}" within ${timeoutMs} ms`);
    this.counters.timeouts += 1;
    if (this.current?.pending === pending) {
      this.current = undefined;
      pending.reject(error);
      if (this.socket) this.closeWith(this.socket, new BackhaulError('TIMEOUT', `${error.message}; reconnecting to resynchronise`));
      return;
    }
    const index = this.queue.indexOf(pending);
    if (index >= 0) this.queue.splice(index, 1);
    pending.reject(error);
  }

  private closeWith(socket: Socket, reason: BackhaulError): void {
    this.closeReason ??= reason;
    socket.destroy();
  }

  private closed(socket: Socket): void {
    if (this.socket !== socket) return;
    this.socket = undefined;
    clearTimeout(this.greetingTimer);
    const wasReady = this.phase === 'ready';
    const stopped = this.phase === 'stopped';
    const err = this.socketError;
    const reason =
      this.closeReason ??
      (this.phase === 'connecting'
        ? new BackhaulError('UNREACHABLE', `cannot connect to ${this.description}: ${err?.code ?? ''} ${err?.message ?? 'connection failed'}`.replace(/\s+/g, ' '))
        : this.phase === 'greeting' || this.phase === 'authenticating'
          ? new BackhaulError(
              'NOT_CONNECTED',
              `the management interface at ${this.description} closed the connection before greeting` +
                ' (OpenVPN refuses users other than its management-client-user / management-client-group)',
            )
          : new BackhaulError('NOT_CONNECTED', `the management interface at ${this.description} closed the connection${err ? ` (${err.code ?? err.message})` : ''}`));
    this.failAll(stopped ? new BackhaulError('CLOSED', 'the management client was stopped') : new BackhaulError('NOT_CONNECTED', `${reason.message} before the reply`));
    if (stopped || !this.options.reconnect) {
      if (!stopped) this.phase = 'idle';
      this.emit('disconnected', reason, null);
      return;
    }
    this.failures = wasReady ? 1 : this.failures + 1;
    const delay = reconnectDelay(this.failures, this.options.reconnectInitialMs, this.options.reconnectMaxMs, this.options.random);
    this.phase = 'waiting';
    this.retryTimer = setTimeout(() => {
      if (this.phase === 'waiting') this.open();
    }, delay);
    this.emit('disconnected', reason, delay);
  }

  private failAll(error: BackhaulError): void {
    const pending = [...(this.current ? [this.current.pending] : []), ...this.queue];
    this.current = undefined;
    this.queue.length = 0;
    for (const command of pending) {
      clearTimeout(command.timer);
      command.reject(error);
    }
  }
}

/**
 * Connects once (no reconnecting), for a one-shot tool such as the CLI.
 * Resolves with a connected client; rejects with why it could not connect.
 */
export function connectOnce(options: Omit<ManagementClientOptions, 'reconnect'>): Promise<ManagementClient> {
  const client = new ManagementClient({ ...options, reconnect: false });
  return new Promise((resolve, reject) => {
    const onConnected = (): void => {
      client.off('disconnected', onDisconnected);
      resolve(client);
    };
    const onDisconnected = (error: BackhaulError): void => {
      client.off('connected', onConnected);
      reject(error);
    };
    client.once('connected', onConnected);
    client.once('disconnected', onDisconnected);
    client.start();
  });
}
