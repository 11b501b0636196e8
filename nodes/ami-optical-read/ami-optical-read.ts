import { performance } from 'node:perf_hooks';
import { realpath } from 'node:fs/promises';
import type { Node, NodeAPI, NodeDef, NodeMessage, NodeMessageInFlow } from 'node-red';
import {
  C1218Error,
  C1218_BAUD_RATES,
  C1218_INITIAL_BAUD_RATE,
  DEFAULT_TABLE_FORMAT,
  MANUFACTURER_TABLE_BASE,
  PASSWORD_LENGTH,
  USER_LENGTH,
  decodeGeneralConfiguration,
  decodeKnownTable,
  openOpticalPort,
  tableFormatOf,
  tableLabel,
  tableName,
  withC1218Session,
  type C1218Client,
  type C1218SessionOptions,
  type C1218Stream,
  type NegotiateResponse,
  type TableFormat,
} from '../../src/c1218/index.js';
import { NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';

/**
 * The `optical read` node (issue 8): on each message, one ANSI C12.18 session
 * with a meter through its optical port (a type 2 optical probe, or the
 * metrology board's UART): identify, negotiate, logon, security, a full or
 * partial read of one C12.19 table, logoff, terminate. The port is opened for
 * the session and closed after it, whatever happened. A meter's optical port
 * takes one session at a time, so sessions on a port run one after the other
 * (for every optical read node of the runtime), and messages wait in a
 * bounded queue.
 */
interface OpticalReadDef extends NodeDef {
  /** Serial device path; an environment reference such as ${AMI_OPTICAL_PORT} is substituted by Node-RED. */
  port?: string;
  /** The rate the session starts at (C12.18: 9600). */
  baud?: string;
  /** N, STn or MTn. */
  table?: string;
  userId?: string;
  user?: string;
  /** Baud rate to ask for in negotiate; empty stays at the starting rate. */
  negotiateBaud?: string;
  output?: 'decoded' | 'raw';
}

interface OpticalReadCredentials {
  password?: string;
}

/** settings.js `amiOptical`: link timeouts for tests and slow probes (the C12.18 values otherwise). */
interface OpticalSettings {
  link?: Record<string, unknown>;
}

interface OpticalMessage extends NodeMessageInFlow {
  table?: unknown;
  offset?: unknown;
  count?: unknown;
  port?: unknown;
}

type Send = (msg: NodeMessage | Array<NodeMessage | NodeMessage[] | null>) => void;
type Done = (err?: Error) => void;

interface Job {
  msg: OpticalMessage;
  send: Send;
  done: Done;
}

/** What one message asks for, after its overrides. */
interface ReadRequest {
  port: string;
  table: number;
  offset?: number;
  count?: number;
}

/** Messages waiting behind the session under way; more are refused with BUSY_QUEUE. */
const QUEUE_LIMIT = 20;
/** On close, how long the session under way may take to end (terminate) before its port is closed under it. */
const CLOSE_GRACE_MS = 2000;
const LINK_SETTINGS = ['acknowledgementTimeoutMs', 'interCharacterTimeoutMs', 'responseTimeoutMs', 'retries', 'baudSwitchSettleMs'] as const;
/** Tables decoded to an object (full reads only). */
const DECODED_TABLES: ReadonlySet<number> = new Set([0, 1, 5]);

/** An error with the code a catch node sees in msg.error.code. */
class OpticalReadError extends Error {
  override readonly name = 'OpticalReadError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Thrown inside a session when the node closes: the session then still sends terminate. */
class NodeClosing extends Error {
  override readonly name = 'NodeClosing';
}

/** A table as engineers write it: 5, "5", "ST5", "MT3" (= 2048 + 3), or { id } from an earlier output. */
function parseTable(raw: unknown): number | undefined {
  if (typeof raw === 'object' && raw !== null && 'id' in raw) return parseTable((raw as { id: unknown }).id);
  if (typeof raw === 'number') return Number.isInteger(raw) && raw >= 0 && raw <= 0xffff ? raw : undefined;
  if (typeof raw !== 'string') return undefined;
  const text = raw.trim();
  const named = /^(ST|MT)(\d{1,5})$/i.exec(text);
  if (named) {
    const number = Number(named[2]);
    if (number >= MANUFACTURER_TABLE_BASE) return undefined;
    return (named[1] as string).toUpperCase() === 'MT' ? MANUFACTURER_TABLE_BASE + number : number;
  }
  return /^\d{1,5}$/.test(text) && Number(text) <= 0xffff ? Number(text) : undefined;
}

function wholeNumber(raw: unknown, max: number): number | undefined {
  const value = typeof raw === 'string' && /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : raw;
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= max ? value : undefined;
}

function baudProperty(label: string, raw: unknown, fallback: number | undefined): number | undefined {
  const value = numberProperty(label, raw, -1, 0, 1_000_000);
  if (value === -1) return fallback;
  if (!C1218_BAUD_RATES.includes(value)) throw new NodeConfigError(`${label} must be one of ${C1218_BAUD_RATES.join(', ')}, got ${value}`);
  return value;
}

function latin1Text(label: string, text: string, max: number): string {
  // The value itself is never quoted: the password goes through here too.
  if (text.length > max) throw new NodeConfigError(`${label} has at most ${max} characters`);
  if (/[^\u0000-\u00ff]/.test(text)) throw new NodeConfigError(`${label} must be latin1 text`);
  return text;
}

function linkOptions(raw: unknown): Partial<C1218SessionOptions> {
  if (raw === undefined || raw === null) return {};
  if (typeof raw !== 'object') throw new NodeConfigError('settings amiOptical.link must be an object');
  const options: Record<string, number> = {};
  for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
    if (!(LINK_SETTINGS as readonly string[]).includes(key)) throw new NodeConfigError(`settings amiOptical.link.${key} is not a link setting (${LINK_SETTINGS.join(', ')})`);
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 600_000) {
      throw new NodeConfigError(`settings amiOptical.link.${key} must be a whole number from 0 to 600000`);
    }
    options[key] = value;
  }
  return options as Partial<C1218SessionOptions>;
}

/**
 * Port sessions of the whole runtime, by path: each waits for the one before
 * it, so two optical read nodes on one probe never open it together.
 */
const portTails = new Map<string, Promise<void>>();

/**
 * Waits for the sessions ahead on `path`; resolves with the release of this
 * session's turn, or undefined if `abandon` came first (the turn then passes
 * on as soon as the sessions ahead end).
 */
async function acquirePort(named: string, abandon: Promise<void>): Promise<(() => void) | undefined> {
  // By the device, not its name: a /dev/serial/by-id link and /dev/ttyUSB0 are one port.
  let path = named;
  try {
    path = await realpath(named);
  } catch {
    // Not there (yet): the open that follows reports PORT_OPEN_FAILED.
  }
  const ahead = portTails.get(path) ?? Promise.resolve();
  let release!: () => void;
  const mine = new Promise<void>((resolve) => (release = resolve));
  const tail = ahead.then(() => mine);
  portTails.set(path, tail);
  void tail.then(() => {
    if (portTails.get(path) === tail) portTails.delete(path);
  });
  const turn = await Promise.race([ahead.then(() => true), abandon.then(() => false)]);
  if (!turn) {
    release();
    return undefined;
  }
  return release;
}

/** ST0's table format, or the common defaults when the meter will not give ST0. */
async function tableFormat(client: C1218Client): Promise<TableFormat> {
  try {
    return tableFormatOf(decodeGeneralConfiguration(await client.fullRead(0)));
  } catch (err) {
    if (err instanceof C1218Error && err.responseCode !== undefined) return DEFAULT_TABLE_FORMAT;
    throw err;
  }
}

export = function register(RED: NodeAPI): void {
  function AmiOpticalRead(this: Node, def: OpticalReadDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const credentials = ((node as Node & { credentials?: OpticalReadCredentials }).credentials ?? {}) as OpticalReadCredentials;
    let closed = false;

    let configError: string | undefined;
    let port = '';
    let baudRate = C1218_INITIAL_BAUD_RATE;
    let negotiateBaud: number | undefined;
    let defaultTable = 1;
    let session: C1218SessionOptions = {};
    const output = def.output === 'raw' ? 'raw' : 'decoded';
    try {
      port = stringProperty(def.port);
      baudRate = baudProperty('Baud rate', def.baud, C1218_INITIAL_BAUD_RATE) as number;
      negotiateBaud = baudProperty('Negotiate baud', def.negotiateBaud, undefined);
      const tableText = stringProperty(def.table);
      const table = tableText === '' ? 1 : parseTable(tableText);
      if (table === undefined) throw new NodeConfigError(`Table must be a table number, STn or MTn, got "${tableText}"`);
      defaultTable = table;
      const password = credentials.password ?? '';
      session = {
        ...linkOptions((RED.settings as unknown as { amiOptical?: OpticalSettings }).amiOptical?.link),
        initialBaudRate: baudRate,
        baudRate: negotiateBaud,
        userId: numberProperty('User id', def.userId, 0, 0, 0xffff),
        user: latin1Text('User', stringProperty(def.user), USER_LENGTH),
        password: password === '' ? undefined : latin1Text('Password', password, PASSWORD_LENGTH),
      };
    } catch (err) {
      if (!(err instanceof NodeConfigError)) throw err;
      configError = err.message;
      node.status({ fill: 'red', shape: 'ring', text: 'ami-optical-read.status.misconfigured' });
      node.error(`${RED._('ami-optical-read.errors.config')}: ${configError}`);
    }

    /** What a message asks for: the node's settings with msg.port, msg.table, msg.offset and msg.count over them. */
    function requestOf(msg: OpticalMessage): ReadRequest {
      const bad = (text: string): OpticalReadError => new OpticalReadError('BAD_INPUT', text);
      let path = port;
      if (msg.port !== undefined && msg.port !== null && msg.port !== '') {
        if (typeof msg.port !== 'string' || msg.port.trim() === '') throw bad(RED._('ami-optical-read.errors.bad-port'));
        // With a configured port a message may not send the meter's password to another serial device.
        if (port !== '' && msg.port.trim() !== port) throw bad(RED._('ami-optical-read.errors.port-fixed', { port }));
        path = msg.port.trim();
      }
      if (path === '') throw new OpticalReadError('NO_PORT', RED._('ami-optical-read.errors.no-port'));
      let table = defaultTable;
      if (msg.table !== undefined && msg.table !== null && msg.table !== '') {
        const parsed = parseTable(msg.table);
        if (parsed === undefined) throw bad(RED._('ami-optical-read.errors.bad-table'));
        table = parsed;
      }
      const hasOffset = msg.offset !== undefined && msg.offset !== null;
      const hasCount = msg.count !== undefined && msg.count !== null;
      if (hasOffset !== hasCount) throw bad(RED._('ami-optical-read.errors.partial'));
      if (!hasOffset) return { port: path, table };
      const offset = wholeNumber(msg.offset, 0xffffff);
      const count = wholeNumber(msg.count, 0xffff);
      if (offset === undefined || count === undefined) throw bad(RED._('ami-optical-read.errors.partial'));
      return { port: path, table, offset, count };
    }

    /** done(err) with msg: node.error, so a catch node gets msg.error.code; the code in a red ring. */
    function fail(err: unknown, done: Done): void {
      const code = err instanceof C1218Error || err instanceof OpticalReadError ? err.code : 'ERROR';
      const message = err instanceof Error ? err.message : String(err);
      if (!closed) node.status({ fill: 'red', shape: 'ring', text: code });
      done(Object.assign(new Error(`${code}: ${message}`), { code }));
    }

    if (configError !== undefined) {
      const error = new OpticalReadError('MISCONFIGURED', configError);
      node.on('input', (_msg, _send, done) => done(Object.assign(new Error(`${error.code}: ${error.message}`), { code: error.code })));
      return;
    }

    const queue: Job[] = [];
    /** The session under way: how to stop it, and its end. */
    let current: { abort(): void; stream?: C1218Stream; finished: Promise<void> } | undefined;

    function pump(): void {
      if (current || closed) return;
      const job = queue.shift();
      if (!job) return;
      let abort!: () => void;
      const aborted = new Promise<void>((resolve) => (abort = resolve));
      const control = { isAborted: false, stream: undefined as C1218Stream | undefined };
      const running = {
        abort() {
          control.isAborted = true;
          abort();
        },
        get stream() {
          return control.stream;
        },
        finished: Promise.resolve(),
      };
      current = running;
      running.finished = read(job, control, aborted).then(
        () => undefined,
        (err: unknown) => {
          // read() settles every message itself; this is a last resort so the queue never stalls.
          node.error(err instanceof Error ? err.message : String(err));
        },
      );
      void running.finished.then(() => {
        current = undefined;
        pump();
      });
    }

    async function read(job: Job, control: { isAborted: boolean; stream: C1218Stream | undefined }, aborted: Promise<void>): Promise<void> {
      const { msg, send, done } = job;
      let request: ReadRequest;
      try {
        request = requestOf(msg);
      } catch (err) {
        fail(err, done);
        return;
      }
      const label = tableLabel(request.table);
      node.status({ fill: 'blue', shape: 'ring', text: RED._('ami-optical-read.status.reading', { table: label }) });
      const release = await acquirePort(request.port, aborted);
      if (!release) {
        done();
        return;
      }
      // From the port's opening to its closing: a wait for another session on the port is not counted.
      const started = performance.now();
      const partial = request.offset !== undefined && request.count !== undefined;
      let stream: C1218Stream | undefined;
      let outcome: { data: Uint8Array; decoded?: unknown; baudRate: number; negotiated?: NegotiateResponse; identification: Record<string, unknown> } | undefined;
      let failure: unknown;
      try {
        if (control.isAborted) throw new NodeClosing('the node closed');
        stream = await openOpticalPort(request.port, { baudRate });
        control.stream = stream;
        if (control.isAborted) throw new NodeClosing('the node closed');
        const check = (): void => {
          if (control.isAborted) throw new NodeClosing('the node closed');
        };
        outcome = await withC1218Session(stream, session, async (client, info) => {
          check();
          const data = partial ? await client.partialRead(request.table, request.offset as number, request.count as number) : await client.fullRead(request.table);
          const sessionBaud = client.baudRate;
          let decoded: unknown;
          if (!partial && output === 'decoded' && DECODED_TABLES.has(request.table)) {
            check();
            const format = request.table === 0 ? DEFAULT_TABLE_FORMAT : await tableFormat(client);
            decoded = decodeKnownTable(request.table, data, format)?.value;
          }
          check();
          const id = info.identification;
          return {
            data,
            decoded,
            baudRate: sessionBaud,
            negotiated: info.negotiated,
            identification: { standard: id.standard, standardName: id.standardName, version: id.version, revision: id.revision, features: Buffer.from(id.features) },
          };
        });
      } catch (err) {
        failure = err;
      } finally {
        // One session, one opening of the port: closed whatever happened, and the port's turn passed on.
        await stream?.close().catch(() => undefined);
        control.stream = undefined;
        release();
      }
      if (control.isAborted || closed) {
        // The node is closing: the message is dropped, not failed.
        done();
        return;
      }
      if (failure !== undefined || !outcome) {
        fail(failure, done);
        return;
      }
      const name = tableName(request.table);
      msg.payload = outcome.decoded !== undefined ? outcome.decoded : Buffer.from(outcome.data);
      msg.table = { id: request.table, label, name: name ?? label };
      (msg as Record<string, unknown>).identification = outcome.identification;
      (msg as Record<string, unknown>).optical = {
        port: request.port,
        baudRate: outcome.baudRate,
        durationMs: Math.round(performance.now() - started),
        ...(outcome.negotiated ? { negotiated: outcome.negotiated } : {}),
        ...(partial ? { offset: request.offset, count: request.count } : {}),
        length: outcome.data.length,
      };
      node.status({ fill: 'green', shape: 'dot', text: RED._('ami-optical-read.status.read', { table: label }) });
      send(msg as NodeMessage);
      done();
    }

    node.on('input', (incoming, send, done) => {
      if (closed) {
        done();
        return;
      }
      if (queue.length >= QUEUE_LIMIT) {
        // The session under way is not counted: up to QUEUE_LIMIT messages wait behind it.
        done(Object.assign(new Error(`BUSY_QUEUE: ${RED._('ami-optical-read.errors.busy', { limit: QUEUE_LIMIT })}`), { code: 'BUSY_QUEUE' }));
        return;
      }
      queue.push({ msg: incoming as OpticalMessage, send, done });
      pump();
    });

    node.on('close', (done: () => void) => {
      closed = true;
      // Messages that never reached the port are dropped, each completed.
      for (const job of queue.splice(0)) job.done();
      const running = current;
      if (!running) {
        done();
        return;
      }
      // The request under way ends, then terminate; a meter that does not answer gets its port closed under it.
      running.abort();
      const force = setTimeout(() => void running.stream?.close(), CLOSE_GRACE_MS);
      void running.finished.then(() => {
        clearTimeout(force);
        done();
      });
    });
  }
  // The typings tie the constructor's `this` to the credentials' shape; widen it here as the other nodes do.
  RED.nodes.registerType('ami-optical-read', AmiOpticalRead as unknown as Parameters<NodeAPI['nodes']['registerType']>[1], {
    credentials: {
      password: { type: 'password' },
    },
  });
};
