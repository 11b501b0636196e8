import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { cborDecode, cborEncode } from '../coap/cbor.js';
import { openSublevel, type GatewayDatabase, type GatewaySublevel } from '../store/database.js';
import { writeBatch, type BatchOperation } from '../store/group-commit.js';
import { canonicalSourceAddress } from '../coap/address.js';
import { MAX_LINKS, type Link, type LinkAttributeValue } from './linkformat.js';
import { IdsByKey, SharedValues } from './shared-values.js';

/**
 * The meter registry behind the gateway's CoAP resource directory (RFC 9176).
 *
 * A meter registers with `POST /rd?ep=..&lt=..` and a link-format payload; the
 * registration is identified by its endpoint name and sector (ep + d), so a
 * new registration for the same pair replaces the old one and keeps its id.
 * Registrations live in memory and in the `registry` sublevel (CBOR, one
 * record per id); writes made in one event-loop turn go to LevelDB as one
 * batch, and an operation resolves once its batch is written.
 *
 * Events are emitted after the batch holding the change has been written (or
 * has failed: memory is the live state either way), in the order the changes
 * were made:
 * - 'joined' (meter): a new registration, or the new one replacing another
 * - 'updated' (meter): a refresh (`update`) or new link metrics
 * - 'removed' (meter, reason): 'deleted' (`remove`), 'expired' (lifetime ran
 *   out, also for entries found expired by `open`), 'replaced' (the old
 *   registration when the same ep + d registers again; 'joined' follows)
 *
 * Expiry runs on one timer armed for the earliest expiry (a min-heap with
 * lazy deletion keeps that cheap); `expireNow()` runs the same check at once,
 * for tests with an injected clock.
 */

export interface LinkMetrics {
  /** Received signal strength, dBm. */
  rssi?: number;
  /** Link quality indicator (radio specific, 0..255). */
  lqi?: number;
  /** Signal-to-noise ratio, dB. */
  snr?: number;
  /** Hops to the gateway (0..255). */
  hops?: number;
  /** When the metrics were reported, ms since the epoch (the registry clock). */
  updatedAt?: number;
}

export interface MeterAddress {
  address: string;
  port: number;
}

export interface MeterFirmware {
  /** Communication module firmware version. */
  comm?: string;
  /** Metrology firmware version. */
  metro?: string;
}

/** One registration. Objects handed out are frozen snapshots; changes produce new objects. */
export interface RegisteredMeter {
  readonly id: string;
  readonly endpoint: string;
  readonly sector?: string;
  /** Where the registration came from (IP and port). */
  readonly address: Readonly<MeterAddress>;
  /** The `base` URI the meter asked for, if any (then preferred over `address`). */
  readonly base?: string;
  /** Frozen at run time (typed mutable so it can be passed where Link[] is expected). */
  readonly resources: Link[];
  readonly registeredAt: number;
  readonly lastSeen: number;
  readonly expiresAt: number;
  readonly lifetimeSeconds: number;
  readonly metrics: Readonly<LinkMetrics>;
  readonly firmware: Readonly<MeterFirmware>;
  /** Group tags (`feeder`, `cell`, any `tag.<name>`). Null-prototype object. */
  readonly tags: Readonly<Record<string, string>>;
}

export interface RegistrationInput {
  endpoint: string;
  sector?: string;
  lifetimeSeconds?: number;
  address: MeterAddress;
  base?: string;
  links: Link[];
  metrics?: LinkMetrics;
  firmware?: MeterFirmware;
  tags?: Record<string, string>;
}

export interface RegistrationChanges {
  lifetimeSeconds?: number;
  address?: MeterAddress;
  metrics?: LinkMetrics;
  /** A new base URI; null clears it. */
  base?: string | null;
  links?: Link[];
  /** Merged into the stored versions. */
  firmware?: MeterFirmware;
}

export interface RegistrationQuery {
  endpoint: string;
  sector?: string;
  lifetimeSeconds?: number;
  base?: string;
  metrics: LinkMetrics;
  firmware: MeterFirmware;
  tags: Record<string, string>;
}

/** A registration update's parameters (RFC 9176 §5.3.1): no ep or d. */
export type RegistrationUpdateQuery = Omit<RegistrationQuery, 'endpoint' | 'sector'>;

export interface MeterRegistryOptions {
  maxMeters: number;
  /** Lifetime when a registration names none; RFC 9176's default is 90000 s. */
  defaultLifetimeSeconds?: number;
  /** Clock in ms since the epoch; Date.now by default. */
  now?: () => number;
  /** fsync each batch (default true). */
  sync?: boolean;
}

export interface MeterRegistryEvents {
  joined: [meter: RegisteredMeter];
  updated: [meter: RegisteredMeter];
  removed: [meter: RegisteredMeter, reason: 'deleted' | 'expired' | 'replaced'];
}

export type RegistryErrorCode = 'BAD_REQUEST' | 'FULL' | 'NOT_FOUND' | 'CLOSED';

export class RegistryError extends Error {
  override readonly name = 'RegistryError';
  constructor(
    readonly code: RegistryErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export const DEFAULT_LIFETIME_SECONDS = 90_000;
export const MIN_LIFETIME_SECONDS = 60;
export const MAX_LIFETIME_SECONDS = 0xffff_ffff;
export const REGISTRY_SUBLEVEL = 'registry';
const MAX_TAGS = 16;
const MAX_TEXT = 64;
const MAX_BASE = 255;
const MAX_QUERY = 2048;
/** setTimeout's longest delay; longer waits re-arm when it fires. */
const MAX_TIMER_MS = 0x7fff_ffff;
const NAME_RE = /^[A-Za-z0-9._-]{1,63}$/;
const TAG_NAME_RE = /^[A-Za-z0-9._-]{1,32}$/;
const BASE_SCHEMES = new Set(['coap:', 'coaps:', 'coap+tcp:', 'coaps+tcp:', 'coap+ws:', 'coaps+ws:']);

function bad(message: string): never {
  throw new RegistryError('BAD_REQUEST', message);
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

function isPrintable(value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i);
    if (code < 0x20 || code === 0x7f) return false;
  }
  return true;
}

function checkName(value: unknown, what: string): string {
  if (typeof value !== 'string' || !NAME_RE.test(value)) bad(`${what} must be 1-63 characters of A-Z a-z 0-9 . _ -`);
  return value;
}

function checkText(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_TEXT || !isPrintable(value)) {
    bad(`${what} must be 1-${MAX_TEXT} printable characters`);
  }
  return value;
}

function checkLifetime(value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < MIN_LIFETIME_SECONDS || value > MAX_LIFETIME_SECONDS) {
    bad(`lifetime must be an integer from ${MIN_LIFETIME_SECONDS} to ${MAX_LIFETIME_SECONDS} seconds`);
  }
  return value;
}

function checkAddress(value: unknown): MeterAddress {
  const candidate = value as Partial<MeterAddress> | null | undefined;
  if (typeof candidate !== 'object' || candidate === null) bad('address is required');
  const { address, port } = candidate;
  if (typeof address !== 'string' || address.length > 64 || isIP(address) === 0) bad('address must be an IP address');
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) bad('port must be 0-65535');
  return Object.freeze({ address, port });
}

function checkBase(value: unknown): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_BASE || !isPrintable(value)) bad('base must be a URI');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    bad('base must be an absolute URI');
  }
  if (!BASE_SCHEMES.has(url.protocol)) bad('base must be a coap, coaps, coap+tcp, coaps+tcp, coap+ws or coaps+ws URI');
  if (url.search !== '' || url.hash !== '' || value.includes('?') || value.includes('#')) bad('base must not have a query or fragment');
  return value;
}

const METRIC_RANGES: Record<'rssi' | 'lqi' | 'snr' | 'hops', [min: number, max: number, integer: boolean]> = {
  rssi: [-200, 50, false],
  lqi: [0, 255, false],
  snr: [-100, 100, false],
  hops: [0, 255, true],
};

function checkMetrics(value: unknown): LinkMetrics {
  if (typeof value !== 'object' || value === null) bad('metrics must be an object');
  const input = value as Record<string, unknown>;
  const out: LinkMetrics = {};
  for (const name of ['rssi', 'lqi', 'snr', 'hops'] as const) {
    const v = input[name];
    if (v === undefined) continue;
    const [min, max, integer] = METRIC_RANGES[name];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
      bad(`${name} must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}`);
    }
    out[name] = v;
  }
  if (input.updatedAt !== undefined) {
    if (typeof input.updatedAt !== 'number' || !Number.isFinite(input.updatedAt)) bad('metrics.updatedAt must be a time in ms');
    out.updatedAt = input.updatedAt;
  }
  return out;
}

function checkFirmware(value: unknown): MeterFirmware {
  if (typeof value !== 'object' || value === null) bad('firmware must be an object');
  const input = value as Record<string, unknown>;
  const out: MeterFirmware = {};
  if (input.comm !== undefined) out.comm = checkText(input.comm, 'fw_comm');
  if (input.metro !== undefined) out.metro = checkText(input.metro, 'fw_metro');
  return out;
}

function checkTags(value: unknown): Record<string, string> {
  if (typeof value !== 'object' || value === null) bad('tags must be an object');
  const out = Object.create(null) as Record<string, string>;
  const names = Object.keys(value);
  if (names.length > MAX_TAGS) bad(`at most ${MAX_TAGS} tags`);
  for (const name of names) {
    if (!TAG_NAME_RE.test(name)) bad(`tag name ${JSON.stringify(name)} must be 1-32 characters of A-Z a-z 0-9 . _ -`);
    out[name] = checkText((value as Record<string, unknown>)[name], `tag ${name}`);
  }
  return out;
}

/** Copies links into frozen, null-prototype form; checks their shape. */
function checkLinks(value: unknown): Link[] {
  if (!Array.isArray(value)) bad('links must be an array');
  if (value.length > MAX_LINKS) bad(`at most ${MAX_LINKS} links`);
  const links: Link[] = [];
  for (const item of value as unknown[]) {
    const link = item as Partial<Link> | null;
    if (typeof link !== 'object' || link === null || typeof link.target !== 'string' || link.target.length > 1024) {
      bad('each link needs a target');
    }
    const source = link.attributes ?? {};
    if (typeof source !== 'object' || source === null) bad('link attributes must be an object');
    const attributes = Object.create(null) as Record<string, LinkAttributeValue>;
    for (const name of Object.keys(source)) {
      const v: unknown = (source as Record<string, unknown>)[name];
      if (v === true || typeof v === 'string') attributes[name] = v;
      else if (Array.isArray(v) && v.every((x) => typeof x === 'string')) attributes[name] = Object.freeze([...(v as string[])]) as string[];
      else bad(`link attribute ${name} must be a string, true or a string array`);
    }
    links.push(Object.freeze({ target: link.target, attributes: Object.freeze(attributes) }));
  }
  return Object.freeze(links) as Link[];
}

function hasMetric(metrics: LinkMetrics): boolean {
  return metrics.rssi !== undefined || metrics.lqi !== undefined || metrics.snr !== undefined || metrics.hops !== undefined;
}

/** Old metrics overlaid with new ones; updatedAt set to `now` unless given. */
function mergeMetrics(old: Readonly<LinkMetrics>, fresh: LinkMetrics | undefined, now: number): Readonly<LinkMetrics> {
  if (!fresh || (!hasMetric(fresh) && fresh.updatedAt === undefined)) return old;
  return Object.freeze({ ...old, ...fresh, updatedAt: fresh.updatedAt ?? now });
}

// ---------------------------------------------------------------------------
// Query parsing (the CoAP handler's Uri-Query options joined with '&')
// ---------------------------------------------------------------------------

function parseDecimal(value: string, what: string): number {
  if (!/^-?\d{1,6}(\.\d{1,6})?$/.test(value)) bad(`${what} must be a number`);
  return Number(value);
}

/**
 * Parses RFC 9176 registration parameters plus the gateway's own: `ep`
 * (required), `d`, `lt`, `base`, `rssi`, `lqi`, `snr`, `hops`, `fw_comm`,
 * `fw_metro`, `feeder`, `cell` and `tag.<name>` (feeder and cell are tags).
 * Keys and values are percent-decoded; a leading '?' is ignored; unknown
 * parameters are ignored; a repeated known parameter is BAD_REQUEST.
 * With `{ update: true }` (a registration update, `POST /rd/<id>`) `ep` and
 * `d` cannot be given (BAD_REQUEST) and the result has no endpoint.
 */
export function parseRegistrationQuery(query: string): RegistrationQuery;
export function parseRegistrationQuery(query: string, options: { update: true }): RegistrationUpdateQuery;
export function parseRegistrationQuery(query: string, options?: { update?: boolean }): RegistrationQuery | RegistrationUpdateQuery;
export function parseRegistrationQuery(query: string, options: { update?: boolean } = {}): RegistrationQuery | RegistrationUpdateQuery {
  const update = options.update === true;
  if (typeof query !== 'string') bad('query must be a string');
  const text = query.startsWith('?') ? query.slice(1) : query;
  if (text.length > MAX_QUERY) bad('query too long');
  const seen = new Set<string>();
  let endpoint: string | undefined;
  const result: Omit<RegistrationQuery, 'endpoint'> = { metrics: {}, firmware: {}, tags: Object.create(null) as Record<string, string> };
  let tagCount = 0;
  for (const part of text.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    let key: string;
    let value: string | undefined;
    try {
      key = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
      value = eq < 0 ? undefined : decodeURIComponent(part.slice(eq + 1));
    } catch {
      bad('malformed percent-encoding in query');
    }
    const known =
      ['ep', 'd', 'lt', 'base', 'rssi', 'lqi', 'snr', 'hops', 'fw_comm', 'fw_metro', 'feeder', 'cell'].includes(key) || key.startsWith('tag.');
    if (!known) continue;
    if (seen.has(key)) bad(`parameter ${key} given twice`);
    seen.add(key);
    if (value === undefined) bad(`parameter ${key} needs a value`);
    if (update && (key === 'ep' || key === 'd')) bad(`a registration update cannot change ${key}`);
    switch (key) {
      case 'ep':
        endpoint = checkName(value, 'ep');
        break;
      case 'd':
        result.sector = checkName(value, 'd');
        break;
      case 'lt':
        if (!/^\d{1,10}$/.test(value)) bad('lt must be an integer');
        result.lifetimeSeconds = checkLifetime(Number(value));
        break;
      case 'base':
        result.base = checkBase(value);
        break;
      case 'rssi':
      case 'lqi':
      case 'snr':
        result.metrics[key] = parseDecimal(value, key);
        break;
      case 'hops':
        if (!/^\d{1,3}$/.test(value)) bad('hops must be an integer');
        result.metrics.hops = Number(value);
        break;
      case 'fw_comm':
        result.firmware.comm = checkText(value, key);
        break;
      case 'fw_metro':
        result.firmware.metro = checkText(value, key);
        break;
      default: {
        const name = key.startsWith('tag.') ? key.slice(4) : key;
        if (!TAG_NAME_RE.test(name)) bad(`tag name ${JSON.stringify(name)} must be 1-32 characters of A-Z a-z 0-9 . _ -`);
        if (Object.hasOwn(result.tags, name)) bad(`tag ${name} given twice`);
        if (++tagCount > MAX_TAGS) bad(`at most ${MAX_TAGS} tags`);
        result.tags[name] = checkText(value, `tag ${name}`);
      }
    }
  }
  result.metrics = checkMetrics(result.metrics);
  if (update) return result;
  if (endpoint === undefined) bad('ep is required');
  return { endpoint, ...result };
}

// ---------------------------------------------------------------------------
// Stored form: CBOR maps with short keys. Attributes and tags are stored as
// [name, value] pairs, since CBOR decoders guard against a `__proto__` key.
// ---------------------------------------------------------------------------

interface StoredMeter {
  v: 1;
  id: string;
  ep: string;
  d?: string;
  addr: string;
  port: number;
  base?: string;
  res: [target: string, attributes: [name: string, value: LinkAttributeValue][]][];
  reg: number;
  seen: number;
  exp: number;
  lt: number;
  m: LinkMetrics;
  fw: MeterFirmware;
  tags: [name: string, value: string][];
}

function encodeMeter(meter: RegisteredMeter): Buffer {
  const stored: StoredMeter = {
    v: 1,
    id: meter.id,
    ep: meter.endpoint,
    addr: meter.address.address,
    port: meter.address.port,
    res: meter.resources.map((link) => [link.target, Object.keys(link.attributes).map((name) => [name, link.attributes[name]!])]),
    reg: meter.registeredAt,
    seen: meter.lastSeen,
    exp: meter.expiresAt,
    lt: meter.lifetimeSeconds,
    m: { ...meter.metrics },
    fw: { ...meter.firmware },
    tags: Object.keys(meter.tags).map((name) => [name, meter.tags[name]!]),
  };
  if (meter.sector !== undefined) stored.d = meter.sector;
  if (meter.base !== undefined) stored.base = meter.base;
  return cborEncode(stored);
}

function toNumber(value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  if (typeof value === 'bigint') return Number(value);
  return undefined;
}

/** Decodes and checks a stored record; undefined when it is not a valid one. */
function decodeMeter(key: string, bytes: Uint8Array): RegisteredMeter | undefined {
  try {
    const raw = cborDecode(bytes) as Partial<Record<keyof StoredMeter, unknown>> | null;
    if (typeof raw !== 'object' || raw === null || raw.v !== 1 || raw.id !== key) return undefined;
    const registeredAt = toNumber(raw.reg);
    const lastSeen = toNumber(raw.seen);
    const expiresAt = toNumber(raw.exp);
    const lifetimeSeconds = toNumber(raw.lt);
    if (registeredAt === undefined || lastSeen === undefined || expiresAt === undefined || lifetimeSeconds === undefined) return undefined;
    if (!Array.isArray(raw.res) || !Array.isArray(raw.tags)) return undefined;
    const links = (raw.res as unknown[]).map((entry) => {
      if (!Array.isArray(entry) || !Array.isArray(entry[1])) throw new Error('bad link');
      const attributes = Object.create(null) as Record<string, unknown>;
      for (const pair of entry[1] as unknown[]) {
        if (!Array.isArray(pair) || typeof pair[0] !== 'string') throw new Error('bad attribute');
        attributes[pair[0]] = pair[1];
      }
      return { target: entry[0] as unknown, attributes };
    });
    const tags = Object.create(null) as Record<string, unknown>;
    for (const pair of raw.tags as unknown[]) {
      if (!Array.isArray(pair) || typeof pair[0] !== 'string') return undefined;
      tags[pair[0]] = pair[1];
    }
    // checkMetrics keeps updatedAt too.
    const metrics = checkMetrics(raw.m);
    return freezeMeter({
      id: key,
      endpoint: checkName(raw.ep, 'ep'),
      ...(raw.d !== undefined ? { sector: checkName(raw.d, 'd') } : {}),
      address: checkAddress({ address: raw.addr, port: raw.port }),
      ...(raw.base !== undefined ? { base: checkBase(raw.base) } : {}),
      resources: checkLinks(links),
      registeredAt,
      lastSeen,
      expiresAt,
      lifetimeSeconds,
      metrics,
      firmware: checkFirmware(raw.fw),
      tags: checkTags(tags),
    });
  } catch {
    return undefined;
  }
}

function freezeMeter(meter: RegisteredMeter): RegisteredMeter {
  Object.freeze(meter.metrics);
  Object.freeze(meter.firmware);
  Object.freeze(meter.tags);
  return Object.freeze(meter);
}

function identityOf(endpoint: string, sector: string | undefined): string {
  // '/' cannot occur in either name, so the key is unambiguous.
  return `${sector ?? ''}/${endpoint}`;
}

// ---------------------------------------------------------------------------
// Min-heap of (expiresAt, id) with lazy deletion
// ---------------------------------------------------------------------------

interface ExpiryEntry {
  at: number;
  id: string;
}

class ExpiryHeap {
  private items: ExpiryEntry[] = [];

  get length(): number {
    return this.items.length;
  }

  peek(): ExpiryEntry | undefined {
    return this.items[0];
  }

  push(entry: ExpiryEntry): void {
    const items = this.items;
    items.push(entry);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (items[parent]!.at <= entry.at) break;
      items[i] = items[parent]!;
      i = parent;
    }
    items[i] = entry;
  }

  pop(): ExpiryEntry | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (top === undefined || last === undefined || items.length === 0) return top;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= items.length) break;
      const right = left + 1;
      const child = right < items.length && items[right]!.at < items[left]!.at ? right : left;
      if (items[child]!.at >= last.at) break;
      items[i] = items[child]!;
      i = child;
    }
    items[i] = last;
    return top;
  }

  reset(entries: ExpiryEntry[]): void {
    this.items = [];
    for (const entry of entries) this.push(entry);
  }
}

// ---------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

export class MeterRegistry extends EventEmitter<MeterRegistryEvents> {
  private readonly meters = new Map<string, RegisteredMeter>();
  /** identityOf(ep, d) -> id */
  private readonly byIdentity = new Map<string, string>();
  /** endpoint name -> ids (in any sector) */
  private readonly byName = new IdsByKey();
  /**
   * canonical source IP -> ids registered from it. By IP alone: a meter's
   * requests may come from another port than its registration, and its
   * `base` may name yet another one.
   */
  private readonly byAddress = new IdsByKey();
  /** Equal links, tags and firmware versions are kept once for all the meters that have them. */
  private readonly sharedLinks = new SharedValues<Link[]>();
  private readonly sharedTags = new SharedValues<Readonly<Record<string, string>>>();
  private readonly sharedFirmware = new SharedValues<Readonly<MeterFirmware>>();
  private readonly heap = new ExpiryHeap();
  private timer: NodeJS.Timeout | undefined;
  private armedAt: number | undefined;
  private readonly now: () => number;
  private readonly maxMeters: number;
  private readonly defaultLifetime: number;
  private readonly sync: boolean;
  private readonly sublevel: GatewaySublevel;
  private pendingWrites = new Map<string, RegisteredMeter | null>();
  private pendingEvents: (() => void)[] = [];
  private pendingWaiters: Waiter[] = [];
  private flushScheduled = false;
  private writing: Promise<void> = Promise.resolve();
  private closed = false;
  /** Entries `open` found expired (also reported as 'removed' ... 'expired' right after open resolves). */
  expiredOnLoad: readonly RegisteredMeter[] = [];
  /** Stored records `open` could not read and deleted. */
  corruptOnLoad = 0;

  private constructor(
    private readonly db: GatewayDatabase,
    options: MeterRegistryOptions,
  ) {
    super();
    if (!Number.isInteger(options.maxMeters) || options.maxMeters < 1) throw new RegistryError('BAD_REQUEST', 'maxMeters must be a positive integer');
    this.maxMeters = options.maxMeters;
    this.defaultLifetime = checkLifetime(options.defaultLifetimeSeconds ?? DEFAULT_LIFETIME_SECONDS);
    this.now = options.now ?? Date.now;
    this.sync = options.sync ?? true;
    this.sublevel = openSublevel(db, REGISTRY_SUBLEVEL);
  }

  /**
   * Loads the stored registrations. Entries already expired are deleted and
   * reported as 'removed' (reason 'expired') once the deletion is written,
   * which is after this resolves: attach listeners right after awaiting.
   */
  static async open(db: GatewayDatabase, options: MeterRegistryOptions): Promise<MeterRegistry> {
    const registry = new MeterRegistry(db, options);
    await registry.load();
    return registry;
  }

  private async load(): Promise<void> {
    const entries = await this.sublevel.iterator().all();
    const now = this.now();
    const expired: RegisteredMeter[] = [];
    for (const [key, value] of entries) {
      const decoded = decodeMeter(key, value);
      const meter = decoded && this.withSharedValues(decoded);
      if (!meter) {
        this.corruptOnLoad += 1;
        void this.persist(key, null).catch(() => undefined);
        continue;
      }
      if (meter.expiresAt <= now) {
        expired.push(meter);
        void this.persist(key, null, () => this.emit('removed', meter, 'expired')).catch(() => undefined);
        continue;
      }
      const identity = identityOf(meter.endpoint, meter.sector);
      const otherId = this.byIdentity.get(identity);
      const other = otherId === undefined ? undefined : this.meters.get(otherId);
      if (other) {
        // Two records for one ep + d cannot be written by this code; keep the newer.
        const [keep, drop] = other.lastSeen >= meter.lastSeen ? [other, meter] : [meter, other];
        this.forget(drop);
        void this.persist(drop.id, null, () => this.emit('removed', drop, 'replaced')).catch(() => undefined);
        this.remember(keep);
        continue;
      }
      this.remember(meter);
    }
    this.expiredOnLoad = Object.freeze(expired);
    this.rearm();
  }

  get size(): number {
    return this.meters.size;
  }

  get(id: string): RegisteredMeter | undefined {
    return this.meters.get(id);
  }

  /**
   * The registration of `name` in `sector`. Without a sector: the one without
   * a sector, else the first one registered under that name in any sector.
   */
  byEndpoint(name: string, sector?: string): RegisteredMeter | undefined {
    const id = this.byIdentity.get(identityOf(name, sector));
    if (id !== undefined) return this.meters.get(id);
    if (sector !== undefined) return undefined;
    const first = this.byName.first(name);
    return first === undefined ? undefined : this.meters.get(first);
  }

  list(): RegisteredMeter[] {
    return [...this.meters.values()];
  }

  /** True when a live registration came from the IP `address` (any port; ::ffff:a.b.c.d matches a.b.c.d). */
  hasAddress(address: string): boolean {
    return this.byAddress.has(canonicalSourceAddress(address));
  }

  /** The registrations that came from the IP `address` (any port). */
  atAddress(address: string): RegisteredMeter[] {
    return this.byAddress
      .get(canonicalSourceAddress(address))
      .map((id) => this.meters.get(id)).filter((meter): meter is RegisteredMeter => meter !== undefined);
  }

  /**
   * The registration a request from `address` belongs to: among those that
   * came from that IP, the one named `endpoint` when the request names its
   * meter, else the only one. Undefined when there is none, or when several
   * share the IP (a border router, a meter with several sectors) and the
   * request does not say which: a wrong attribution is worse than none.
   */
  meterAt(address: string, endpoint?: string): RegisteredMeter | undefined {
    const candidates = this.atAddress(address);
    if (endpoint !== undefined) {
      const named = candidates.filter((meter) => meter.endpoint === endpoint);
      if (named.length === 1) return named[0];
      if (named.length > 1) return undefined;
    }
    return candidates.length === 1 ? candidates[0] : undefined;
  }

  /**
   * Registers a meter (RFC 9176 §5.3). The same ep + d registering again
   * replaces its registration and keeps the id ('removed' 'replaced', then
   * 'joined'); firmware and tags come from the new registration, link metrics
   * not given are kept. Throws RegistryError BAD_REQUEST, FULL or CLOSED.
   */
  async register(input: RegistrationInput): Promise<{ id: string; location: string; created: boolean }> {
    this.assertOpen();
    if (typeof input !== 'object' || input === null) bad('registration is required');
    const endpoint = checkName(input.endpoint, 'endpoint');
    const sector = input.sector === undefined ? undefined : checkName(input.sector, 'sector');
    const lifetimeSeconds = input.lifetimeSeconds === undefined ? this.defaultLifetime : checkLifetime(input.lifetimeSeconds);
    const address = checkAddress(input.address);
    const base = input.base === undefined ? undefined : checkBase(input.base);
    const resources = this.shareLinks(checkLinks(input.links));
    const metrics = input.metrics === undefined ? undefined : checkMetrics(input.metrics);
    const firmware = this.shareFirmware(input.firmware === undefined ? {} : checkFirmware(input.firmware));
    const tags = this.shareTags(input.tags === undefined ? checkTags({}) : checkTags(input.tags));

    const identity = identityOf(endpoint, sector);
    const existingId = this.byIdentity.get(identity);
    const existing = existingId === undefined ? undefined : this.meters.get(existingId);
    if (!existing && this.meters.size >= this.maxMeters) {
      throw new RegistryError('FULL', `the registry holds its maximum of ${this.maxMeters} meters`);
    }
    const now = this.now();
    const id = existing?.id ?? this.newId();
    const meter = freezeMeter({
      id,
      endpoint,
      ...(sector !== undefined ? { sector } : {}),
      address,
      ...(base !== undefined ? { base } : {}),
      resources,
      registeredAt: now,
      lastSeen: now,
      expiresAt: now + lifetimeSeconds * 1000,
      lifetimeSeconds,
      metrics: mergeMetrics(existing?.metrics ?? {}, metrics, now),
      firmware,
      tags,
    });
    if (existing) this.forget(existing);
    this.remember(meter);
    this.rearm();
    await this.persist(id, meter, () => {
      if (existing) this.emit('removed', existing, 'replaced');
      this.emit('joined', meter);
    });
    return { id, location: `/rd/${id}`, created: !existing };
  }

  /**
   * Refreshes a registration (RFC 9176 §5.3.1): renews its lifetime (the
   * previous one unless given), updates lastSeen and whatever else is given.
   * Throws RegistryError NOT_FOUND, BAD_REQUEST or CLOSED.
   */
  async update(id: string, changes: RegistrationChanges = {}): Promise<RegisteredMeter> {
    this.assertOpen();
    const old = this.meters.get(id);
    if (!old) throw new RegistryError('NOT_FOUND', `no registration ${id}`);
    if (typeof changes !== 'object' || changes === null) bad('changes must be an object');
    const lifetimeSeconds = changes.lifetimeSeconds === undefined ? old.lifetimeSeconds : checkLifetime(changes.lifetimeSeconds);
    const address = changes.address === undefined ? old.address : checkAddress(changes.address);
    const base = changes.base === null ? undefined : changes.base === undefined ? old.base : checkBase(changes.base);
    const resources = changes.links === undefined ? old.resources : this.shareLinks(checkLinks(changes.links));
    const metrics = changes.metrics === undefined ? undefined : checkMetrics(changes.metrics);
    const firmware = changes.firmware === undefined ? old.firmware : this.shareFirmware({ ...old.firmware, ...checkFirmware(changes.firmware) });
    const now = this.now();
    const { base: _oldBase, ...rest } = old;
    const meter = freezeMeter({
      ...rest,
      ...(base !== undefined ? { base } : {}),
      address,
      resources,
      lastSeen: now,
      expiresAt: now + lifetimeSeconds * 1000,
      lifetimeSeconds,
      metrics: mergeMetrics(old.metrics, metrics, now),
      firmware,
    });
    this.forget(old);
    this.remember(meter);
    this.rearm();
    await this.persist(id, meter, () => this.emit('updated', meter));
    return meter;
  }

  /**
   * Records link metrics learned elsewhere (routing table, radio driver) for
   * the meter registered as `endpoint` (see byEndpoint). Does not renew the
   * registration or lastSeen. Throws RegistryError NOT_FOUND or BAD_REQUEST.
   */
  async updateMetrics(endpoint: string, metrics: LinkMetrics, sector?: string): Promise<RegisteredMeter> {
    this.assertOpen();
    const old = this.byEndpoint(endpoint, sector);
    if (!old) throw new RegistryError('NOT_FOUND', `no registration for ${endpoint}`);
    const checked = checkMetrics(metrics);
    const meter = freezeMeter({ ...old, metrics: mergeMetrics(old.metrics, checked, this.now()) });
    this.meters.set(meter.id, meter);
    await this.persist(meter.id, meter, () => this.emit('updated', meter));
    return meter;
  }

  /** Deletes a registration (RFC 9176 §5.3.2). Throws RegistryError NOT_FOUND or CLOSED. */
  async remove(id: string): Promise<RegisteredMeter> {
    this.assertOpen();
    const meter = this.meters.get(id);
    if (!meter) throw new RegistryError('NOT_FOUND', `no registration ${id}`);
    this.forget(meter);
    this.rearm();
    await this.persist(id, null, () => this.emit('removed', meter, 'deleted'));
    return meter;
  }

  /**
   * Removes every registration whose expiry is at or before the clock's now
   * (what the timer does); resolves with them once deleted from the store.
   */
  async expireNow(): Promise<RegisteredMeter[]> {
    if (this.closed) return [];
    const now = this.now();
    const expired: RegisteredMeter[] = [];
    const writes: Promise<void>[] = [];
    for (let top = this.heap.peek(); top !== undefined && top.at <= now; top = this.heap.peek()) {
      this.heap.pop();
      const meter = this.meters.get(top.id);
      if (!meter || meter.expiresAt !== top.at) continue; // stale entry
      this.forget(meter);
      expired.push(meter);
      writes.push(this.persist(meter.id, null, () => this.emit('removed', meter, 'expired')));
    }
    this.rearm();
    await Promise.all(writes);
    return expired;
  }

  /** Stops the timer and writes what is pending. Idempotent; the database lease stays the caller's. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.armedAt = undefined;
    await this.flush().catch(() => undefined);
  }

  // -------------------------------------------------------------------------

  private assertOpen(): void {
    if (this.closed) throw new RegistryError('CLOSED', 'the registry is closed');
  }

  private newId(): string {
    for (;;) {
      const id = randomBytes(6).toString('base64url');
      if (!this.meters.has(id)) return id;
    }
  }

  private remember(meter: RegisteredMeter): void {
    this.meters.set(meter.id, meter);
    this.byIdentity.set(identityOf(meter.endpoint, meter.sector), meter.id);
    this.byName.add(meter.endpoint, meter.id);
    this.byAddress.add(canonicalSourceAddress(meter.address.address), meter.id);
    this.heap.push({ at: meter.expiresAt, id: meter.id });
  }

  /** Drops a meter from the maps; its heap entries go stale. */
  private forget(meter: RegisteredMeter): void {
    this.meters.delete(meter.id);
    const identity = identityOf(meter.endpoint, meter.sector);
    if (this.byIdentity.get(identity) === meter.id) this.byIdentity.delete(identity);
    this.byName.delete(meter.endpoint, meter.id);
    this.byAddress.delete(canonicalSourceAddress(meter.address.address), meter.id);
  }

  // Keys are the values' JSON: links, tags and firmware are checked (strings, true, string arrays), frozen
  // and in the order they came, so equal JSON is an equal value.
  private shareLinks(links: Link[]): Link[] {
    return this.sharedLinks.share(JSON.stringify(links), links);
  }

  private shareTags(tags: Readonly<Record<string, string>>): Readonly<Record<string, string>> {
    return this.sharedTags.share(JSON.stringify(tags), Object.freeze(tags));
  }

  private shareFirmware(firmware: Readonly<MeterFirmware>): Readonly<MeterFirmware> {
    return this.sharedFirmware.share(JSON.stringify(firmware), Object.freeze(firmware));
  }

  /** A loaded registration with the shared instances of its links, tags and firmware versions. */
  private withSharedValues(meter: RegisteredMeter): RegisteredMeter {
    return freezeMeter({
      ...meter,
      resources: this.shareLinks(meter.resources),
      tags: this.shareTags(meter.tags),
      firmware: this.shareFirmware(meter.firmware),
    });
  }

  /** Arms the one timer for the earliest live expiry. */
  private rearm(): void {
    if (this.closed) return;
    // Compact when stale entries (refreshes, removals) dominate.
    if (this.heap.length > 2 * this.meters.size + 1024) {
      this.heap.reset([...this.meters.values()].map((m) => ({ at: m.expiresAt, id: m.id })));
    }
    let top = this.heap.peek();
    while (top !== undefined && this.meters.get(top.id)?.expiresAt !== top.at) {
      this.heap.pop();
      top = this.heap.peek();
    }
    if (top === undefined) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      this.armedAt = undefined;
      return;
    }
    if (this.timer && this.armedAt === top.at) return;
    if (this.timer) clearTimeout(this.timer);
    const delay = Math.min(Math.max(top.at - this.now(), 0), MAX_TIMER_MS);
    this.armedAt = top.at;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.armedAt = undefined;
      // If the delete fails the meter is still gone from memory, and the stored
      // record, being expired, is dropped again by the next open.
      this.expireNow().catch(() => undefined);
    }, delay);
    this.timer.unref();
  }

  /**
   * Queues a put (record) or delete (null) of `id` and an event to emit once
   * written; all queued in one event-loop turn go to LevelDB as one batch.
   */
  private persist(id: string, record: RegisteredMeter | null, event?: () => void): Promise<void> {
    this.pendingWrites.set(id, record);
    if (event) this.pendingEvents.push(event);
    const done = new Promise<void>((resolve, reject) => this.pendingWaiters.push({ resolve, reject }));
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => void this.flush().catch(() => undefined));
    }
    return done;
  }

  private flush(): Promise<void> {
    this.flushScheduled = false;
    const writes = this.pendingWrites;
    const events = this.pendingEvents;
    const waiters = this.pendingWaiters;
    this.pendingWrites = new Map();
    this.pendingEvents = [];
    this.pendingWaiters = [];
    // Batches are chained so they reach the disk in the order they were made.
    this.writing = this.writing.then(async () => {
      if (writes.size === 0) return;
      const operations: BatchOperation[] = [];
      for (const [key, record] of writes) {
        if (record) operations.push({ type: 'put', sublevel: this.sublevel, key, value: encodeMeter(record) });
        else operations.push({ type: 'del', sublevel: this.sublevel, key });
      }
      let failure: Error | undefined;
      try {
        await writeBatch(this.db, operations, this.sync);
      } catch (err) {
        failure = err as Error;
      }
      for (const emit of events) {
        try {
          emit();
        } catch (err) {
          // A throwing listener is a bug in the listener: surface it like EventEmitter would.
          queueMicrotask(() => {
            throw err;
          });
        }
      }
      for (const waiter of waiters) {
        if (failure) waiter.reject(failure);
        else waiter.resolve();
      }
    });
    return this.writing;
  }
}
