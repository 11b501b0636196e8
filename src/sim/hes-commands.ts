import { randomBytes } from 'node:crypto';
import type { IncomingMessage, OutgoingMessage } from 'coap';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { COMMANDS_ACK_PATH, COMMANDS_PATH, COMMANDS_STATE_PATH } from '../hes/contract.js';
import {
  CommandTransportError,
  decodeCommandAck,
  encodeCommandQueue,
  encodeCommandQueueState,
  signCommand,
  type Command,
  type CommandAction,
  type CommandParams,
} from '../hes/commands.js';
import { OID_KP_DOCUMENT_SIGNING } from '../keys/certificate-chain.js';
import { createTestPki, generateRsaKeyPair, issueCertificate, type KeyUsageFlags, type TestPki } from '../keys/pki.js';
import type { SimLog } from './log.js';

export interface SimCommandServiceOptions {
  /** The utility PKI operators' certificates are issued from; a fresh test PKI when not given. */
  pki?: TestPki;
  /** Envelopes in one answer to GET /ami/v1/commands at most (default 16). */
  maxPerAnswer?: number;
  /** Max-Age of the queue state and its notifications, seconds (default 60). */
  maxAgeSeconds?: number;
  log?: SimLog;
}

/** An HES operator: a name, a role, and the key and certificate they sign commands with. */
export interface SimOperator {
  name: string;
  role: string;
  keyPem: string;
  certPem: string;
  /** The certificate first, then intermediates: what goes into the envelope. */
  chainPem: string[];
}

export interface CreateOperatorOptions {
  /** Default: a day before now. */
  notBefore?: Date;
  /** Default: a year after now. */
  notAfter?: Date;
  /** Issuing CA; the service's root by default. */
  issuer?: { certPem: string; keyPem: string };
  /** Default: digitalSignature only. null leaves the extension out. */
  keyUsage?: KeyUsageFlags | null;
  /** Default: documentSigning (RFC 9336). null leaves the extension out. */
  extKeyUsage?: string[] | null;
  /** Intermediates between the operator certificate and the root, to put into the chain. */
  intermediatesPem?: string[];
}

export interface IssueCommandSpec {
  meter: string;
  action: CommandAction;
  params?: CommandParams;
  /** Default: a fresh random id. */
  id?: string;
  /** Default: now. */
  notBefore?: number;
  /** Default: notBefore plus validForMs. */
  notAfter?: number;
  /** Default: 15 minutes. */
  validForMs?: number;
  issuedAt?: number;
  /** Whether the operator passed MFA; default true. */
  mfa?: boolean;
  /** Overrides the operator's role in the command (tests: a claim the policy refuses). */
  role?: string;
  /** Overrides the operator's name in the command (tests: a name the certificate does not carry). */
  operatorName?: string;
}

export interface SimCommandStats {
  issued: number;
  /** Answers to GET /ami/v1/commands. */
  fetches: number;
  /** Queue entries removed by acknowledgements. */
  acknowledged: number;
  notifications: number;
  refused: number;
}

const DAY_MS = 24 * 60 * 60_000;

/**
 * The HES command service of the simulator: issues commands signed by
 * operators of a test PKI, keeps a queue of envelopes per gateway until the
 * gateway acknowledges them, and serves it over CoAP as docs/hes-commands.md
 * describes (the queue, its observable state, the acknowledgement).
 *
 * The queue outlives a restart of the CoAP server (stop and start a
 * HesSimulator with the same service), as a real HES's database would; its
 * observers do not.
 */
export class SimCommandService {
  readonly pki: TestPki;
  readonly stats: SimCommandStats = { issued: 0, fetches: 0, acknowledged: 0, notifications: 0, refused: 0 };
  private readonly queues = new Map<string, Map<string, Uint8Array>>();
  private readonly versions = new Map<string, number>();
  /** Observers of each gateway's queue state, by peer and token. */
  private readonly observers = new Map<string, Map<string, OutgoingMessage>>();
  private readonly ackListeners = new Set<(gateway: string, ids: string[]) => void>();
  private readonly maxPerAnswer: number;
  private readonly maxAgeSeconds: number;

  constructor(private readonly options: SimCommandServiceOptions = {}) {
    this.pki = options.pki ?? createTestPki({ commonNamePrefix: 'AMI Simulator' });
    this.maxPerAnswer = options.maxPerAnswer ?? 16;
    this.maxAgeSeconds = options.maxAgeSeconds ?? 60;
  }

  /** The root certificate a gateway must trust to accept these commands. */
  get trustAnchorPem(): string {
    return this.pki.rootCertPem;
  }

  /** A new operator with a fresh RSA key and a certificate from the service's root (or `issuer`). */
  createOperator(name: string, role: string, opts: CreateOperatorOptions = {}): SimOperator {
    const now = Date.now();
    const keys = generateRsaKeyPair();
    const issuer = opts.issuer ?? { certPem: this.pki.rootCertPem, keyPem: this.pki.rootKeyPem };
    const extKeyUsage = opts.extKeyUsage === undefined ? [OID_KP_DOCUMENT_SIGNING] : opts.extKeyUsage;
    const certPem = issueCertificate({
      subjectCN: name,
      subjectO: 'AMI Simulator',
      publicKeyPem: keys.publicKeyPem,
      issuerCertPem: issuer.certPem,
      issuerKeyPem: issuer.keyPem,
      notBefore: opts.notBefore ?? new Date(now - DAY_MS),
      notAfter: opts.notAfter ?? new Date(now + 365 * DAY_MS),
      ca: false,
      keyUsage: opts.keyUsage === undefined ? { digitalSignature: true } : opts.keyUsage,
      ...(extKeyUsage === null ? {} : { extKeyUsage: { oids: extKeyUsage } }),
    });
    return { name, role, keyPem: keys.privateKeyPem, certPem, chainPem: [certPem, ...(opts.intermediatesPem ?? [])] };
  }

  /** A command for `gateway` as `operator` would issue it, signed; not queued. */
  sign(gateway: string, spec: IssueCommandSpec, operator: SimOperator): { id: string; command: Command; envelope: Buffer } {
    const notBefore = spec.notBefore ?? Date.now();
    const command: Command = {
      id: spec.id ?? `cmd-${randomBytes(8).toString('hex')}`,
      gateway,
      meter: spec.meter,
      action: spec.action,
      ...(spec.params !== undefined ? { params: spec.params } : {}),
      notBefore,
      notAfter: spec.notAfter ?? notBefore + (spec.validForMs ?? 15 * 60_000),
      issuedAt: spec.issuedAt ?? Date.now(),
      operator: { name: spec.operatorName ?? operator.name, role: spec.role ?? operator.role, mfa: spec.mfa ?? true },
    };
    const envelope = signCommand(command, { signerKeyPem: operator.keyPem, signerChainPem: operator.chainPem });
    return { id: command.id, command, envelope };
  }

  /** Signs a command and queues it for its gateway. */
  issue(gateway: string, spec: IssueCommandSpec, operator: SimOperator): { id: string; command: Command; envelope: Buffer } {
    const signed = this.sign(gateway, spec, operator);
    this.enqueue(gateway, signed.id, signed.envelope);
    this.stats.issued += 1;
    this.options.log?.info(`hes-sim: command ${signed.id} (${spec.action} ${spec.meter}) queued for gateway ${gateway} by ${operator.name}`);
    return signed;
  }

  /** Queues any bytes as an envelope (tests: forged, malformed, replayed envelopes). */
  enqueue(gateway: string, id: string, envelope: Uint8Array): void {
    let queue = this.queues.get(gateway);
    if (!queue) {
      queue = new Map();
      this.queues.set(gateway, queue);
    }
    // A re-queued id goes to the end, as a resend would.
    queue.delete(id);
    queue.set(id, envelope);
    this.changed(gateway);
  }

  /** Ids waiting for `gateway`, oldest first. */
  pending(gateway: string): string[] {
    return [...(this.queues.get(gateway)?.keys() ?? [])];
  }

  /** Calls `listener` with the ids each acknowledgement removed; returns the remover. */
  onAcknowledged(listener: (gateway: string, ids: string[]) => void): () => void {
    this.ackListeners.add(listener);
    return () => this.ackListeners.delete(listener);
  }

  /** Forgets every observer, as a restarted HES would. */
  dropObservers(): void {
    for (const observers of this.observers.values()) {
      for (const stream of observers.values()) endQuietly(stream);
    }
    this.observers.clear();
  }

  /** Handles the command resources; returns false for any other path. */
  handle(path: string, req: IncomingMessage, res: OutgoingMessage): boolean {
    if (path === COMMANDS_PATH) {
      if (req.method !== 'GET') return this.answer(res, '4.05');
      const gateway = gatewayOf(req);
      if (gateway === undefined) return this.answer(res, '4.00', 'the query must name the gateway: ?gw=ID');
      const entries = [...(this.queues.get(gateway)?.entries() ?? [])].slice(0, this.maxPerAnswer).map(([id, envelope]) => ({ id, envelope }));
      this.stats.fetches += 1;
      res.code = '2.05';
      res.setOption('Content-Format', CONTENT_FORMAT.cbor);
      res.end(encodeCommandQueue(entries));
      return true;
    }
    if (path === COMMANDS_STATE_PATH) {
      if (req.method !== 'GET') return this.answer(res, '4.05');
      const gateway = gatewayOf(req);
      if (gateway === undefined) return this.answer(res, '4.00', 'the query must name the gateway: ?gw=ID');
      const key = observerKey(req);
      if (req.headers.Observe === 0) {
        this.observe(gateway, key, res);
        return true;
      }
      // A plain GET, or a deregistration (Observe 1): answered with the state, observer gone.
      const stream = this.observers.get(gateway)?.get(key);
      if (stream) {
        this.observers.get(gateway)?.delete(key);
        endQuietly(stream);
      }
      res.code = '2.05';
      res.setOption('Content-Format', CONTENT_FORMAT.cbor);
      res.setOption('Max-Age', this.maxAgeSeconds);
      res.end(this.state(gateway));
      return true;
    }
    if (path === COMMANDS_ACK_PATH) {
      if (req.method !== 'POST') return this.answer(res, '4.05');
      let ack: { gateway: string; ids: string[] };
      try {
        ack = decodeCommandAck(req.payload);
      } catch (err) {
        if (!(err instanceof CommandTransportError)) throw err;
        this.stats.refused += 1;
        return this.answer(res, '4.00', err.message);
      }
      const queue = this.queues.get(ack.gateway);
      const removed = ack.ids.filter((id) => queue?.delete(id) === true);
      this.stats.acknowledged += removed.length;
      if (removed.length > 0) this.changed(ack.gateway);
      for (const listener of this.ackListeners) listener(ack.gateway, removed);
      res.code = '2.04';
      res.end();
      return true;
    }
    return false;
  }

  private observe(gateway: string, key: string, res: OutgoingMessage): void {
    let observers = this.observers.get(gateway);
    if (!observers) {
      observers = new Map();
      this.observers.set(gateway, observers);
    }
    // A gateway registering again (same address, port and token) replaces its stream:
    // two streams would number their notifications independently.
    const previous = observers.get(key);
    if (previous) endQuietly(previous);
    observers.set(key, res);
    const forget = (): void => {
      if (this.observers.get(gateway)?.get(key) === res) this.observers.get(gateway)?.delete(key);
    };
    res.on('finish', forget);
    res.on('close', forget);
    res.on('error', forget);
    res.code = '2.05';
    res.setOption('Content-Format', CONTENT_FORMAT.cbor);
    res.setOption('Max-Age', this.maxAgeSeconds);
    res.write(this.state(gateway));
  }

  private changed(gateway: string): void {
    this.versions.set(gateway, (this.versions.get(gateway) ?? 0) + 1);
    const state = this.state(gateway);
    for (const stream of this.observers.get(gateway)?.values() ?? []) {
      if (stream.writableEnded || stream.destroyed) continue;
      try {
        stream.write(state);
        this.stats.notifications += 1;
      } catch {
        // The observer went away meanwhile: its 'finish' removes it.
      }
    }
  }

  private state(gateway: string): Buffer {
    return encodeCommandQueueState({ pending: this.queues.get(gateway)?.size ?? 0, version: this.versions.get(gateway) ?? 0 });
  }

  private answer(res: OutgoingMessage, code: string, text?: string): true {
    res.code = code;
    res.end(text?.slice(0, 200));
    return true;
  }
}

/**
 * Issues a `read-relay-state` command for one of `meters` (in turn) to
 * `gateway` every `everyMs`, signed by a simulated field technician: what
 * `ami-gateway sim hes --commands-for GW` runs. Returns the stopper.
 */
export function issueCommandsPeriodically(
  service: SimCommandService,
  options: { gateway: string; meters: readonly string[]; everyMs: number },
): () => void {
  if (options.meters.length === 0) return () => undefined;
  const technician = service.createOperator('Sim Field Technician', 'field-technician');
  let next = 0;
  const timer = setInterval(() => {
    const meter = options.meters[next % options.meters.length] as string;
    next += 1;
    service.issue(options.gateway, { meter, action: 'read-relay-state', mfa: true }, technician);
  }, options.everyMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** The `gw=` query parameter, taken as written (Uri-Query options are not percent-encoded). */
function gatewayOf(req: IncomingMessage): string | undefined {
  const query = req.url.includes('?') ? req.url.slice(req.url.indexOf('?') + 1) : '';
  const part = query.split('&').find((p) => p.startsWith('gw='));
  const gateway = part?.slice(3);
  return gateway === undefined || gateway === '' || gateway.length > 128 ? undefined : gateway;
}

function observerKey(req: IncomingMessage): string {
  const token = req._packet.token;
  return `${req.rsinfo.address}|${req.rsinfo.port}|${token ? token.toString('hex') : ''}`;
}

function endQuietly(stream: OutgoingMessage): void {
  try {
    if (!stream.writableEnded) stream.end();
  } catch {
    // Already gone.
  }
}
