import { lookup as dnsLookup } from 'node:dns/promises';
import { EventEmitter } from 'node:events';
import { isIP, isIPv4 } from 'node:net';
import { MeshClient, type MeshResponse, type Observation } from '../coap/client/client.js';
import { MeshRequestError } from '../coap/client/errors.js';
import type { TransmissionParameters } from '../coap/client/parameters.js';
import type { PeerAddress } from '../coap/client/transport.js';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { parseCoapUrl } from '../coap/url.js';
import { parseTrustAnchors } from '../keys/certificate-chain.js';
import { readTrustAnchors } from '../keys/files.js';
import { PendingCommands, type CommandStatus, type PendingCommand } from '../store/pending-commands.js';
import {
  CommandError,
  CommandTransportError,
  decodeCommandQueue,
  decodeCommandQueueState,
  DEFAULT_CLOCK_SKEW_MS,
  encodeCommandAck,
  verifyCommand,
  type CommandErrorCode,
} from './commands.js';
import { COMMANDS_ACK_PATH, COMMANDS_PATH, COMMANDS_STATE_PATH, type HesRecord } from './contract.js';

/**
 * The gateway side of signed HES commands (docs/hes-commands.md): fetches
 * the envelopes the HES holds for this gateway, verifies each, writes the
 * accepted ones to the pending-commands store (synced) and only then
 * acknowledges them to the HES. Refused envelopes are acknowledged too, so
 * the HES does not send them for ever, once a `result` record with status
 * `rejected` and the code is in the outbox for the HES.
 *
 * When it fetches: at start, whenever the HES notifies that the queue has
 * entries (an Observe registration on the queue's state resource, renewed
 * after the notification's Max-Age, so a restarted HES is found again), after
 * every pass that acknowledged something, and every `pollIntervalMs` in any
 * case, so a HES without Observe, or a lost notification, delays a command by
 * one interval at most. After a failure it waits, doubling with jitter.
 *
 * It talks to the HES site that is active now (`site()`, the uplink's), over
 * its own UDP socket, through the gateway's CoAP client (block-wise
 * transfers, retransmission, Observe).
 */
export interface CommandReceiverOptions {
  gatewayId: string;
  /** The utility root CA certificate(s) operator certificates must chain to. */
  trustAnchorsPem: readonly string[];
  store: PendingCommands;
  /** The HES site to talk to now, a coap:// URL (a path in it is a prefix). */
  site: () => string;
  /** Hands a record to the HES (the HES endpoint's outbox); resolves once it is safe. */
  deliver: (record: HesRecord) => Promise<unknown>;
  /** Fetch at least this often (default 30 s). */
  pollIntervalMs?: number;
  /** First wait after a failure (default 1 s), doubled up to retryMaxMs (default 60 s). */
  retryInitialMs?: number;
  retryMaxMs?: number;
  clockSkewMs?: number;
  maxEnvelopeBytes?: number;
  /** Largest queue answer accepted (default 1 MiB). */
  maxAnswerBytes?: number;
  /** CoAP transmission towards the HES; RFC 7252's defaults otherwise. */
  transmission?: Partial<TransmissionParameters>;
  /** Local addresses of the client socket per family (default '::' and '0.0.0.0'). */
  bind?: { v4?: string; v6?: string };
  lookup?: (host: string) => Promise<{ address: string }>;
  now?: () => number;
  random?: () => number;
}

export interface CommandReceiverCounters {
  /** Answers to GET /ami/v1/commands. */
  fetches: number;
  /** Passes that failed (no answer, refused, unreadable). */
  failures: number;
  /** Envelopes looked at. */
  received: number;
  accepted: number;
  /** Pending commands handed out again after a restart. */
  redelivered: number;
  /** Pending commands found past their validity window at start: finished as expired, not handed out. */
  expired: number;
  /** Envelopes already stored whose acknowledgement had not reached the HES, acknowledged again. */
  resent: number;
  rejected: number;
  rejectedByCode: Partial<Record<CommandErrorCode, number>>;
  /** Queue entries acknowledged to the HES. */
  acknowledged: number;
  notifications: number;
  completed: number;
  /** Records (results, rejection reports) the outbox did not take; tried again. */
  reportFailures: number;
}

export interface CommandReceiverEvents {
  /** A command to carry out: accepted now, or still pending from before a restart (redelivered). */
  command: [entry: PendingCommand, info: { redelivered: boolean }];
  rejected: [error: CommandError, info: { queueId?: string; site: string }];
  /** A pending command found past its window at start: finished as expired (its result goes to the HES). */
  expired: [entry: PendingCommand];
  /** A pass failed; the next one is in `retryInMs`. */
  unavailable: [error: Error, retryInMs: number];
  /** A record for the HES could not be handed to the outbox. */
  reportFailed: [error: Error, key: string];
  /** An Observe registration with `site` stands. */
  observing: [site: string];
  /** A pass finished. */
  synced: [info: { site: string; received: number; acknowledged: number }];
}

export class CommandFetchError extends Error {
  override readonly name = 'CommandFetchError';
  constructor(
    readonly code: 'REFUSED' | 'BAD_ANSWER' | 'CLOSED',
    message: string,
  ) {
    super(message);
  }
}

/**
 * The trust-anchor setting of the HES endpoint: the utility root CA(s), as
 * PEM text or as the path of a PEM file. `undefined` when nothing is set
 * (signed commands are then off); `problem` when the setting cannot be used.
 */
export type CommandTrustSetting = { trustAnchorsPem: string[]; source: string } | { problem: string } | undefined;

export function readCommandTrust(setting: string): CommandTrustSetting {
  const text = setting.trim();
  if (text === '') return undefined;
  let pems: string[];
  let source: string;
  if (text.includes('-----BEGIN')) {
    pems = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    source = 'PEM text';
    if (pems.length === 0) return { problem: 'the trust anchor text holds no PEM certificate' };
  } else {
    try {
      pems = readTrustAnchors(text);
    } catch (err) {
      return { problem: `trust anchors: ${(err as Error).message}` };
    }
    source = text;
  }
  try {
    parseTrustAnchors(pems);
  } catch (err) {
    return { problem: `trust anchors (${source}): ${(err as Error).message}` };
  }
  return { trustAnchorsPem: pems, source };
}

export const DEFAULT_COMMAND_POLL_MS = 30_000;
const DEFAULT_MAX_ANSWER_BYTES = 1024 * 1024;
const PURGE_EVERY_MS = 60 * 60_000;
/** Fetches of a queue answer that changed during its block-wise transfer, before it counts as a failure. */
const MAX_FETCH_ATTEMPTS = 3;
/** How many unreadable queue entries are remembered, so each is reported once. */
const MAX_REMEMBERED_UNREADABLE = 1000;

interface SiteTarget {
  site: string;
  peer: PeerAddress;
  prefix: string;
  client: MeshClient;
}

/** An acknowledgement fits one CoAP block: not every HES stack reassembles Block1 requests. */
const MAX_ACK_BYTES = 1000;

/** Splits ids into acknowledgements whose CBOR stays within MAX_ACK_BYTES. */
export function acknowledgementChunks(gateway: string, ids: readonly string[]): string[][] {
  const chunks: string[][] = [];
  // Map header, the two keys, the gateway text and the array header.
  const base = 32 + Buffer.byteLength(gateway);
  let chunk: string[] = [];
  let bytes = base;
  for (const id of ids) {
    // A CBOR text string costs its UTF-8 bytes plus up to 3 header bytes.
    const cost = Buffer.byteLength(id) + 3;
    if (chunk.length > 0 && bytes + cost > MAX_ACK_BYTES) {
      chunks.push(chunk);
      chunk = [];
      bytes = base;
    }
    chunk.push(id);
    bytes += cost;
  }
  if (chunk.length > 0) chunks.push(chunk);
  return chunks;
}

/** The idempotency key of a command's result record. */
export function commandResultKey(commandId: string): string {
  return `command/${commandId}/result`;
}

/** The result of a finished command as a HES record (kind `result`). */
export function commandResultRecord(gateway: string, entry: PendingCommand): HesRecord {
  const outcome = entry.outcome;
  if (outcome === undefined) throw new TypeError(`command ${entry.command.id} has no outcome`);
  const { command } = entry;
  return {
    key: commandResultKey(command.id),
    kind: 'result',
    meter: command.meter,
    ts: outcome.completedAt,
    body: {
      type: 'command-result',
      gateway,
      commandId: command.id,
      meter: command.meter,
      action: command.action,
      operator: command.operator.name,
      status: outcome.status,
      ...(outcome.result !== undefined ? { result: outcome.result } : {}),
      receivedAt: entry.receivedAt,
      completedAt: outcome.completedAt,
    },
  };
}

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

/** A refused envelope as a HES record: status `rejected`, the code and the reason. */
export function commandRejectionRecord(gateway: string, error: CommandError, at: number, queueId?: string): HesRecord {
  const claimed = error.context.id !== undefined && ID_PATTERN.test(error.context.id) ? error.context.id : undefined;
  const id = claimed ?? queueId ?? 'unreadable';
  const digest = error.context.digest ?? 'none';
  const meter = error.context.meter !== undefined && error.context.meter.length > 0 ? error.context.meter.slice(0, 64) : '-';
  return {
    // One report per envelope: the same bytes refused again are the same record.
    key: `command/${id}/rejected/${digest.slice(0, 16)}`,
    kind: 'result',
    meter,
    ts: at,
    body: {
      type: 'command-result',
      gateway,
      status: 'rejected',
      code: error.code,
      reason: error.message,
      ...(claimed !== undefined ? { commandId: claimed } : {}),
      ...(queueId !== undefined ? { queueId } : {}),
      ...(error.context.meter !== undefined ? { meter: error.context.meter } : {}),
      ...(error.context.action !== undefined ? { action: error.context.action } : {}),
      ...(error.context.operator !== undefined ? { operator: error.context.operator } : {}),
      digest,
      rejectedAt: at,
    },
  };
}

export class CommandReceiver extends EventEmitter<CommandReceiverEvents> {
  readonly counters: CommandReceiverCounters = {
    fetches: 0,
    failures: 0,
    received: 0,
    accepted: 0,
    redelivered: 0,
    expired: 0,
    resent: 0,
    rejected: 0,
    rejectedByCode: {},
    acknowledged: 0,
    notifications: 0,
    completed: 0,
    reportFailures: 0,
  };
  private readonly clients = new Map<4 | 6, Promise<MeshClient>>();
  private observed: { key: string; site: string; observation: Observation } | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private woken = false;
  private wakeUp: (() => void) | undefined;
  private lastPurge = 0;
  private readonly reportedUnreadable = new Set<string>();
  /** Results being sent now, so a pass and complete() do not both send one. */
  private readonly sending = new Set<string>();
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly lookup: (host: string) => Promise<{ address: string }>;

  constructor(private readonly options: CommandReceiverOptions) {
    super();
    this.now = options.now ?? Date.now;
    this.random = options.random ?? Math.random;
    this.lookup = options.lookup ?? ((host) => dnsLookup(host));
  }

  /** Commands accepted and not finished. */
  get pending(): number {
    return this.options.store.size;
  }

  /**
   * Hands out the commands still pending from before (`command` events with
   * redelivered = true; those past their validity window are finished as
   * `expired` instead), sends results recorded but not yet sent, then starts
   * fetching. Attach listeners first.
   */
  async start(): Promise<void> {
    if (this.running || this.stopped) return;
    this.running = (async () => {
      const skew = this.options.clockSkewMs ?? DEFAULT_CLOCK_SKEW_MS;
      for (const entry of await this.options.store.list()) {
        if (this.stopped) return;
        if (entry.outcome !== undefined) continue;
        if (this.now() - skew > entry.command.notAfter) {
          // Its window passed while the gateway was down: carrying it out now would act on a stale
          // decision (a disconnect days late). It is finished as expired, and the HES told so.
          const expired = await this.options.store.complete(entry.command.id, {
            status: 'expired',
            result: { reason: `the command expired at ${new Date(entry.command.notAfter).toISOString()} before it was carried out` },
          });
          this.counters.expired += 1;
          this.emit('expired', expired);
          continue;
        }
        this.counters.redelivered += 1;
        this.emit('command', entry, { redelivered: true });
      }
      await this.run();
    })();
    // A failure of the first list() is reported as a failed pass; run() is not reached.
    this.running = this.running.catch((err: unknown) => {
      this.emit('unavailable', err instanceof Error ? err : new Error(String(err)), 0);
    });
  }

  /** Fetch now (a notification, or a caller that knows commands wait). */
  wake(): void {
    this.woken = true;
    const wake = this.wakeUp;
    this.wakeUp = undefined;
    wake?.();
  }

  /**
   * Records the outcome of a pending command (synced), hands its result
   * record to the outbox and removes the command. `sent` is false when the
   * outbox did not take the record: the outcome is kept and sent on a later
   * pass. Throws PendingCommandError (UNKNOWN_COMMAND, ALREADY_COMPLETED,
   * BAD_RESULT, CLOSED).
   */
  async complete(id: string, outcome: { status: CommandStatus; result?: unknown }): Promise<{ record: HesRecord; sent: boolean }> {
    const entry = await this.options.store.complete(id, outcome);
    this.counters.completed += 1;
    const record = commandResultRecord(this.options.gatewayId, entry);
    return { record, sent: await this.sendResult(entry) };
  }

  /** Stops fetching, ends the observation, closes the sockets; the store stays open (the caller's). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    const clients = [...this.clients.values()];
    this.clients.clear();
    this.observed = undefined;
    // Closing fails what is in flight with CLOSED, which ends the pass.
    await Promise.all(clients.map((c) => c.then((client) => client.close(), () => undefined)));
    await this.running;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      this.woken = false;
      let wait = this.options.pollIntervalMs ?? DEFAULT_COMMAND_POLL_MS;
      try {
        await this.sendStoredResults();
        await this.purgeNowAndThen();
        const target = await this.target(this.options.site());
        const progressed = await this.pass(target);
        failures = 0;
        if (progressed) continue;
        await this.observe(target);
      } catch (err) {
        if (this.stopped) break;
        failures += 1;
        this.counters.failures += 1;
        const initial = this.options.retryInitialMs ?? 1000;
        const backoff = Math.min(this.options.retryMaxMs ?? 60_000, initial * 2 ** Math.min(failures - 1, 16));
        wait = Math.round(backoff * (0.75 + this.random() * 0.5));
        this.emit('unavailable', err instanceof Error ? err : new Error(String(err)), wait);
      }
      await this.pause(wait);
    }
  }

  /** Waits `ms` or until woken or stopped. */
  private pause(ms: number): Promise<void> {
    if (this.stopped || this.woken) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wake(), ms);
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** One fetch-verify-store-acknowledge pass; true when something was acknowledged (more may wait). */
  private async pass(target: SiteTarget): Promise<boolean> {
    const { gatewayId } = this.options;
    const response = await this.fetchQueue(target);
    if (response.code !== '2.05') throw new CommandFetchError('REFUSED', `${target.site} answered ${response.code} to the command queue request`);
    this.counters.fetches += 1;
    let queue: ReturnType<typeof decodeCommandQueue>;
    try {
      queue = decodeCommandQueue(response.payload);
    } catch (err) {
      if (err instanceof CommandTransportError) throw new CommandFetchError('BAD_ANSWER', `${target.site}: ${err.message}`);
      throw err;
    }

    const acknowledge: string[] = [];
    const stored: string[] = [];
    for (const entry of queue.entries) {
      if (this.stopped) return false;
      this.counters.received += 1;
      let outcome: 'stored' | 'known';
      try {
        const verified = verifyCommand(entry.envelope, {
          trustAnchorsPem: this.options.trustAnchorsPem,
          gateway: gatewayId,
          now: this.now(),
          ...(this.options.clockSkewMs !== undefined ? { clockSkewMs: this.options.clockSkewMs } : {}),
          ...(this.options.maxEnvelopeBytes !== undefined ? { maxBytes: this.options.maxEnvelopeBytes } : {}),
        });
        const { command } = verified;
        if (command.id !== entry.id) {
          throw new CommandError('MALFORMED', `the queue entry ${entry.id} carries command ${command.id}`, {
            id: command.id,
            meter: command.meter,
            action: command.action,
            operator: command.operator.name,
            digest: verified.digest,
          });
        }
        // On disk before anything else happens: the acknowledgement below depends on it.
        outcome = await this.options.store.put(verified, this.now());
        if (outcome === 'stored') {
          this.counters.accepted += 1;
          const pending = await this.options.store.get(command.id);
          if (pending !== undefined) this.emit('command', pending, { redelivered: false });
        } else {
          this.counters.resent += 1;
        }
        stored.push(entry.id);
        acknowledge.push(entry.id);
      } catch (err) {
        if (!(err instanceof CommandError)) throw err;
        if (await this.reject(err, target.site, entry.id)) acknowledge.push(entry.id);
      }
    }
    for (const entry of queue.unreadable) {
      if (this.reportedUnreadable.has(entry.digest)) {
        if (entry.id !== undefined) acknowledge.push(entry.id);
        continue;
      }
      const error = new CommandError('MALFORMED', `queue entry ${entry.index}: ${entry.reason}`, { digest: entry.digest });
      if (await this.reject(error, target.site, entry.id)) {
        if (entry.id !== undefined) acknowledge.push(entry.id);
        if (this.reportedUnreadable.size >= MAX_REMEMBERED_UNREADABLE) this.reportedUnreadable.clear();
        this.reportedUnreadable.add(entry.digest);
      }
    }

    for (const ids of acknowledgementChunks(gatewayId, acknowledge)) {
      const answer = await this.request(target, {
        method: 'POST',
        path: target.prefix + COMMANDS_ACK_PATH,
        payload: encodeCommandAck({ gateway: gatewayId, ids }),
        contentFormat: CONTENT_FORMAT.cbor,
      });
      if (!answer.code.startsWith('2.')) throw new CommandFetchError('REFUSED', `${target.site} answered ${answer.code} to the acknowledgement`);
      this.counters.acknowledged += ids.length;
      // An identical envelope from now on is a replay, not a resend after a lost acknowledgement.
      const confirmed = ids.filter((id) => stored.includes(id));
      if (confirmed.length > 0) await this.options.store.markAcknowledged(confirmed);
    }
    this.emit('synced', { site: target.site, received: queue.entries.length + queue.unreadable.length, acknowledged: acknowledge.length });
    return acknowledge.length > 0;
  }

  /**
   * GET of the queue. Each block of a block-wise answer is its own exchange,
   * so a queue that changes between two blocks (the HES queued a command
   * meanwhile) shows as another ETag: that is fetched again at once, a few
   * times, rather than counted as a failure.
   */
  private async fetchQueue(target: SiteTarget): Promise<MeshResponse> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.request(target, {
          method: 'GET',
          path: target.prefix + COMMANDS_PATH,
          accept: CONTENT_FORMAT.cbor,
          blockSize: 1024,
          maxBodyBytes: this.options.maxAnswerBytes ?? DEFAULT_MAX_ANSWER_BYTES,
        });
      } catch (err) {
        if (!(err instanceof MeshRequestError) || err.code !== 'BLOCKWISE_ERR' || attempt >= MAX_FETCH_ATTEMPTS || this.stopped) throw err;
      }
    }
  }

  /** Counts and reports a refused envelope; true once its report is in the outbox (it may then be acknowledged). */
  private async reject(error: CommandError, site: string, queueId: string | undefined): Promise<boolean> {
    this.counters.rejected += 1;
    this.counters.rejectedByCode[error.code] = (this.counters.rejectedByCode[error.code] ?? 0) + 1;
    this.emit('rejected', error, { ...(queueId !== undefined ? { queueId } : {}), site });
    const record = commandRejectionRecord(this.options.gatewayId, error, this.now(), queueId);
    try {
      await this.options.deliver(record);
      return true;
    } catch (err) {
      this.counters.reportFailures += 1;
      this.emit('reportFailed', err instanceof Error ? err : new Error(String(err)), record.key);
      return false;
    }
  }

  /** Hands a finished command's result to the outbox, then forgets the command. */
  private async sendResult(entry: PendingCommand): Promise<boolean> {
    const id = entry.command.id;
    if (this.sending.has(id)) return false;
    this.sending.add(id);
    const record = commandResultRecord(this.options.gatewayId, entry);
    try {
      await this.options.deliver(record);
    } catch (err) {
      this.counters.reportFailures += 1;
      this.emit('reportFailed', err instanceof Error ? err : new Error(String(err)), record.key);
      return false;
    } finally {
      this.sending.delete(id);
    }
    await this.options.store.forget(id);
    return true;
  }

  /** Results recorded but not in the outbox yet (the outbox refused, or the gateway stopped in between). */
  private async sendStoredResults(): Promise<void> {
    for (const entry of await this.options.store.list()) {
      if (this.stopped) return;
      if (entry.outcome !== undefined) await this.sendResult(entry);
    }
  }

  private async purgeNowAndThen(): Promise<void> {
    const now = this.now();
    if (now - this.lastPurge < PURGE_EVERY_MS) return;
    this.lastPurge = now;
    await this.options.store.purgeExpired();
  }

  /** Registers with the queue's state resource at `target` unless a registration there stands. */
  private async observe(target: SiteTarget): Promise<void> {
    const key = `${target.peer.address}|${target.peer.port}|${target.prefix}`;
    if (this.observed?.key === key && this.observed.observation.active) return;
    const previous = this.observed;
    this.observed = undefined;
    // Another site now: the old registration is cancelled in the background.
    if (previous?.observation.active) void previous.observation.cancel();
    let observation: Observation;
    try {
      observation = await target.client.observe(
        {
          peer: target.peer,
          path: target.prefix + COMMANDS_STATE_PATH,
          query: [`gw=${this.options.gatewayId}`],
          accept: CONTENT_FORMAT.cbor,
          priority: 'control',
        },
        (notification) => this.notified(notification),
      );
    } catch {
      // Not observable now (HES down or without Observe): polling covers it; the next pass tries again.
      return;
    }
    if (!observation.active || this.stopped) return;
    const observed = { key, site: target.site, observation };
    this.observed = observed;
    observation.once('end', () => {
      if (this.observed !== observed) return;
      this.observed = undefined;
      // The HES ended it or stopped answering: a pass now registers again (or backs off).
      if (!this.stopped) this.wake();
    });
    this.emit('observing', target.site);
  }

  private notified(notification: MeshResponse): void {
    this.counters.notifications += 1;
    if (!notification.code.startsWith('2.')) return;
    const state = decodeCommandQueueState(notification.payload);
    // A state that says nothing waits needs no fetch; anything else (or no state) does.
    if (state === undefined || state.pending > 0) this.wake();
  }

  private async request(
    target: SiteTarget,
    request: { method: 'GET' | 'POST'; path: string; accept?: number; payload?: Buffer; contentFormat?: number; blockSize?: number; maxBodyBytes?: number },
  ): Promise<MeshResponse> {
    return target.client.request({ peer: target.peer, query: [`gw=${this.options.gatewayId}`], priority: 'control', ...request });
  }

  private async target(site: string): Promise<SiteTarget> {
    if (this.stopped) throw new CommandFetchError('CLOSED', 'the command receiver is stopped');
    const url = parseCoapUrl(site);
    const address = isIP(url.host) !== 0 ? url.host : (await this.lookup(url.host)).address;
    const family: 4 | 6 = isIPv4(address) ? 4 : 6;
    let client = this.clients.get(family);
    if (client === undefined) {
      const bind = family === 4 ? (this.options.bind?.v4 ?? '0.0.0.0') : (this.options.bind?.v6 ?? '::');
      client = MeshClient.open({ bind }, { ...(this.options.transmission ? { transmission: this.options.transmission } : {}), blockSize: 1024 });
      this.clients.set(family, client);
      // A socket that cannot open is tried again on the next pass.
      client.catch(() => {
        if (this.clients.get(family) === client) this.clients.delete(family);
      });
    }
    const opened = await client;
    if (this.stopped) throw new CommandFetchError('CLOSED', 'the command receiver is stopped');
    return { site, peer: { address, port: url.port }, prefix: url.pathname.replace(/\/+$/, ''), client: opened };
  }
}
