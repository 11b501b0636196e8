import { EventEmitter } from 'node:events';
import { ManagementClient, type ManagementClientOptions } from './client.js';
import { BackhaulError } from './errors.js';
import { parseStateFields, type ManagementNotification, type OpenVpnState } from './parser.js';
import type { ManagementReply } from './reply.js';

/**
 * up: CONNECTED with SUCCESS. hold: OpenVPN waits for `hold release`.
 * connecting: on its way up (CONNECTING, RESOLVE, TCP_CONNECT, WAIT, AUTH,
 * AUTH_PENDING, GET_CONFIG, ASSIGN_IP, ADD_ROUTES), or just reconnected to
 * the management interface and not told the state yet. down: anything else
 * (RECONNECTING, EXITING, CONNECTED with ERROR, a FATAL, the management
 * interface unreachable).
 */
export type BackhaulPhase = 'up' | 'connecting' | 'hold' | 'down';

/** What the monitor knows about the tunnel; plain JSON (no undefined), so it can be a message payload or printed. */
export interface BackhaulSnapshot {
  /** True if and only if OpenVPN's last state is CONNECTED with SUCCESS (and it is not holding, and we can hear it). */
  up: boolean;
  phase: BackhaulPhase;
  /** Why it is not up; null when up. */
  reason: string | null;
  /** OpenVPN's last state name (CONNECTED, RECONNECTING, ...), null before one is known. */
  state: string | null;
  /** The state's description: SUCCESS or ERROR for CONNECTED, the cause for RECONNECTING and EXITING. */
  description: string | null;
  /** When `up` last changed (ms since the epoch); the monitor's start before the first change. */
  since: number;
  /** When OpenVPN entered its last state (ms since the epoch, whole seconds). */
  stateTime: number | null;
  /** The tunnel's local IPv4 address. */
  localIp: string | null;
  /** The VPN server's address and port. */
  remoteIp: string | null;
  remotePort: number | null;
  /** The tunnel's local IPv6 address, if it has one. */
  localIpv6: string | null;
  /**
   * Bytes received and sent on the transport since OpenVPN started, as its
   * last `>BYTECOUNT:` said (0 until then; only with a bytecount interval).
   */
  bytesIn: number;
  bytesOut: number;
  /** The last `>FATAL:` message, kept after OpenVPN restarts. */
  lastFatal: string | null;
  holding: boolean;
  /** True while connected to the management interface (and it greeted). */
  managementConnected: boolean;
}

/** What changed: up and down are transitions; state is any other change; bytecount only the counters. */
export type BackhaulChange = 'up' | 'down' | 'state' | 'bytecount';

export interface BackhaulMonitorOptions extends Omit<ManagementClientOptions, 'reconnect'> {
  /**
   * Ask OpenVPN for `>BYTECOUNT:` every N seconds (0, the default: off). null
   * leaves OpenVPN's setting alone (it outlives management connections), for a
   * one-shot reader such as the CLI.
   */
  bytecountIntervalSeconds?: number | null;
  /** Release a hold (`--management-hold`) as soon as it is seen (default false: only on request). */
  releaseHold?: boolean;
  /** Keep reconnecting to the management interface (default true; the CLI connects once). */
  reconnect?: boolean;
  /** For tests: the clock. */
  now?: () => number;
}

export interface BackhaulMonitorEvents {
  up: [snapshot: BackhaulSnapshot];
  down: [reason: string, snapshot: BackhaulSnapshot];
  /** Every change of the snapshot, transitions included. */
  change: [snapshot: BackhaulSnapshot, change: BackhaulChange];
  /** After each (re)connection to the management interface, once the current state has been read. */
  synced: [snapshot: BackhaulSnapshot];
  /** Every notification OpenVPN sent (LOG, INFO, and those the monitor does not interpret). */
  notification: [notification: ManagementNotification];
  /** A malformed or unexpected line (counted, skipped). */
  malformed: [error: BackhaulError];
  /** A command the monitor sends by itself failed (reading the state after a reconnect, releasing a hold). */
  problem: [error: BackhaulError];
  /** The management connection closed or could not be made; the monitor retries after `retryInMs` (null: it does not). */
  disconnected: [error: BackhaulError, retryInMs: number | null];
}

const CONNECTING_STATES = new Set(['CONNECTING', 'RESOLVE', 'TCP_CONNECT', 'WAIT', 'AUTH', 'AUTH_PENDING', 'GET_CONFIG', 'ASSIGN_IP', 'ADD_ROUTES']);
const SNAPSHOT_FIELDS_BUT_BYTES = [
  'up', 'phase', 'reason', 'state', 'description', 'stateTime', 'localIp', 'remoteIp', 'remotePort', 'localIpv6', 'lastFatal', 'holding', 'managementConnected',
] as const satisfies ReadonlyArray<keyof BackhaulSnapshot>;

export const MAX_BYTECOUNT_INTERVAL_SECONDS = 86_400;

function describeState(state: OpenVpnState): string {
  return state.description === '' ? state.name : `${state.name} (${state.description})`;
}

/**
 * The transport counters in a client's `status` reply ("TCP/UDP read bytes,N"),
 * if it has them. They count since the tunnel last (re)started, unlike
 * `>BYTECOUNT:`, which counts since OpenVPN started.
 */
export function bytesFromStatus(reply: ManagementReply): { bytesIn: number; bytesOut: number } | undefined {
  let bytesIn: number | undefined;
  let bytesOut: number | undefined;
  for (const line of reply.lines) {
    const match = /^TCP\/UDP (read|write) bytes,(\d+)$/.exec(line);
    if (!match) continue;
    const value = Number(match[2]);
    if (!Number.isSafeInteger(value)) continue;
    if (match[1] === 'read') bytesIn = value;
    else bytesOut = value;
  }
  return bytesIn === undefined || bytesOut === undefined ? undefined : { bytesIn, bytesOut };
}

/** The snapshot of a backhaul nobody monitors (not started, misconfigured): down, for `reason`. */
export function unmonitoredSnapshot(reason: string, since: number = Date.now()): BackhaulSnapshot {
  return {
    up: false,
    phase: 'down',
    reason,
    state: null,
    description: null,
    since,
    stateTime: null,
    localIp: null,
    remoteIp: null,
    remotePort: null,
    localIpv6: null,
    bytesIn: 0,
    bytesOut: 0,
    lastFatal: null,
    holding: false,
    managementConnected: false,
  };
}

/**
 * Knows whether the OpenVPN tunnel to the HES is up, from OpenVPN's
 * management interface. Up if and only if the last state is CONNECTED with
 * SUCCESS; anything else is down, with a reason. Emits `up` and `down` only
 * on transitions, `change` on every change of the snapshot.
 *
 * After every (re)connection to the management interface it sends
 * `state on all` (turns on state notifications and returns the history, whose
 * last line is the current state) and `bytecount N`, so it knows where the
 * tunnel stands at once.
 */
export class BackhaulMonitor extends EventEmitter<BackhaulMonitorEvents> {
  readonly client: ManagementClient;
  private readonly now: () => number;
  private readonly bytecountIntervalSeconds: number | null;
  private readonly releaseHold: boolean;
  private managementError = 'not connected to the management interface yet';
  private state: OpenVpnState | null = null;
  private holding = false;
  /** A FATAL not yet followed by a new start. */
  private fatal: string | null = null;
  private lastFatal: string | null = null;
  private bytesIn = 0;
  private bytesOut = 0;
  private since: number;
  /** Counts STATE notifications: the history read after a reconnect must not override a newer one. */
  private stateNotifications = 0;
  /** Counts management connections: a sync for an older one is ignored. */
  private session = 0;
  private synced = false;
  private stopped = false;
  private releasing: Promise<void> | undefined;
  private current: BackhaulSnapshot;

  constructor(options: BackhaulMonitorOptions) {
    super();
    const interval = options.bytecountIntervalSeconds === undefined ? 0 : options.bytecountIntervalSeconds;
    if (interval !== null && (!Number.isInteger(interval) || interval < 0 || interval > MAX_BYTECOUNT_INTERVAL_SECONDS)) {
      throw new BackhaulError('BAD_COMMAND', `the bytecount interval must be a whole number of seconds from 0 to ${MAX_BYTECOUNT_INTERVAL_SECONDS}`);
    }
    this.bytecountIntervalSeconds = interval;
    this.releaseHold = options.releaseHold ?? false;
    this.now = options.now ?? Date.now;
    this.since = this.now();
    this.client = new ManagementClient(options);
    this.current = this.derive();
    this.client.on('connected', () => this.connected());
    this.client.on('disconnected', (error, retryInMs) => this.disconnected(error, retryInMs));
    this.client.on('notification', (notification) => this.notified(notification));
    this.client.on('malformed', (error) => this.emit('malformed', error));
  }

  start(): void {
    this.client.start();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.session += 1;
    await this.client.stop();
    await this.releasing?.catch(() => undefined);
  }

  snapshot(): BackhaulSnapshot {
    return { ...this.current };
  }

  /** Malformed lines, command timeouts and management connections so far. */
  get counters(): { malformed: number; timeouts: number; connections: number } {
    return { ...this.client.counters };
  }

  /** Ends a hold: OpenVPN starts (or restarts) the tunnel. */
  async holdRelease(): Promise<void> {
    await this.client.command('hold release');
    if (this.holding) {
      this.holding = false;
      this.update();
    }
  }

  /** soft: SIGUSR1, reconnects the tunnel keeping what it has; hard: SIGHUP, re-reads the configuration and starts afresh. */
  async restart(kind: 'soft' | 'hard'): Promise<void> {
    if (kind !== 'soft' && kind !== 'hard') throw new BackhaulError('BAD_COMMAND', `a restart is soft or hard, not "${String(kind)}"`);
    await this.client.command(kind === 'soft' ? 'signal SIGUSR1' : 'signal SIGHUP');
  }

  /** Any management command, for tools and tests (e.g. `hold off`, `status`). */
  command(text: string): Promise<ManagementReply> {
    return this.client.command(text);
  }

  private connected(): void {
    const session = ++this.session;
    // What was known before may be stale (OpenVPN may have restarted): the state is read afresh.
    this.state = null;
    this.holding = false;
    this.fatal = null;
    this.synced = false;
    this.update();
    void this.sync(session);
  }

  private async sync(session: number): Promise<void> {
    const notificationsBefore = this.stateNotifications;
    try {
      const history = await this.client.command('state on all');
      if (session !== this.session) return;
      if (this.stateNotifications === notificationsBefore) {
        const last = history.lines.at(-1);
        if (last !== undefined) {
          try {
            this.state = parseStateFields(last);
          } catch (err) {
            this.emit('malformed', err as BackhaulError);
          }
        }
      }
      this.update();
      // Sent also when off: OpenVPN keeps the interval across management connections, so another client's setting would linger.
      if (this.bytecountIntervalSeconds !== null) await this.client.command(`bytecount ${this.bytecountIntervalSeconds}`);
      if (session !== this.session) return;
      this.synced = true;
      if (this.holding && this.releaseHold) this.releaseAutomatically();
      this.emit('synced', this.snapshot());
    } catch (err) {
      // A connection that dropped in the middle is reported as such and synced again on the next one.
      if (session === this.session && (err as BackhaulError).code !== 'NOT_CONNECTED' && (err as BackhaulError).code !== 'CLOSED') {
        this.emit('problem', err as BackhaulError);
      }
    }
  }

  private releaseAutomatically(): void {
    this.releasing ??= this.holdRelease()
      .catch((err: BackhaulError) => {
        if (!this.stopped && err.code !== 'NOT_CONNECTED' && err.code !== 'CLOSED') this.emit('problem', err);
      })
      .finally(() => {
        this.releasing = undefined;
      });
  }

  private disconnected(error: BackhaulError, retryInMs: number | null): void {
    this.session += 1;
    this.synced = false;
    this.managementError = error.message;
    if (!this.stopped) this.update();
    this.emit('disconnected', error, retryInMs);
  }

  private notified(notification: ManagementNotification): void {
    switch (notification.type) {
      case 'STATE':
        this.stateNotifications += 1;
        this.state = notification.state;
        this.holding = false;
        // EXITING follows a FATAL: the FATAL stays the reason until OpenVPN starts again.
        if (notification.state.name !== 'EXITING') this.fatal = null;
        break;
      case 'BYTECOUNT':
        this.bytesIn = notification.bytesIn;
        this.bytesOut = notification.bytesOut;
        break;
      case 'FATAL':
        this.fatal = notification.message;
        this.lastFatal = notification.message;
        break;
      case 'HOLD':
        this.holding = true;
        if (this.releaseHold && this.synced) this.releaseAutomatically();
        break;
      default:
        break;
    }
    this.update();
    this.emit('notification', notification);
  }

  private derive(): BackhaulSnapshot {
    const state = this.state;
    const connected = this.client.connected;
    let phase: BackhaulPhase;
    let reason: string | null;
    if (!connected) {
      phase = 'down';
      reason = `management interface unreachable: ${this.managementError}`;
    } else if (this.holding) {
      phase = 'hold';
      reason = 'OpenVPN waits for hold release';
    } else if (this.fatal !== null) {
      phase = 'down';
      reason = `fatal: ${this.fatal}`;
    } else if (state === null) {
      phase = 'connecting';
      reason = 'waiting for OpenVPN to report its state';
    } else if (state.name === 'CONNECTED' && state.description === 'SUCCESS') {
      phase = 'up';
      reason = null;
    } else {
      phase = CONNECTING_STATES.has(state.name) ? 'connecting' : 'down';
      reason = describeState(state);
    }
    return {
      up: phase === 'up',
      phase,
      reason,
      state: state?.name ?? null,
      description: state?.description ?? null,
      since: this.since,
      stateTime: state ? state.time * 1000 : null,
      localIp: state?.localIp || null,
      remoteIp: state?.remoteIp || null,
      remotePort: state?.remotePort ?? null,
      localIpv6: state?.localIpv6 || null,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      lastFatal: this.lastFatal,
      holding: this.holding,
      managementConnected: connected,
    };
  }

  private update(): void {
    const previous = this.current;
    let next = this.derive();
    if (next.up !== previous.up) {
      this.since = this.now();
      next = { ...next, since: this.since };
    }
    this.current = next;
    if (next.up !== previous.up) {
      const snapshot = this.snapshot();
      this.emit('change', snapshot, next.up ? 'up' : 'down');
      if (next.up) this.emit('up', snapshot);
      else this.emit('down', next.reason ?? 'down', snapshot);
      return;
    }
    const changed = SNAPSHOT_FIELDS_BUT_BYTES.some((field) => next[field] !== previous[field]);
    if (changed) this.emit('change', this.snapshot(), 'state');
    else if (next.bytesIn !== previous.bytesIn || next.bytesOut !== previous.bytesOut) this.emit('change', this.snapshot(), 'bytecount');
  }
}
