import { createHash } from 'node:crypto';
import { isIP } from 'node:net';

/**
 * The kernel half of the gateway's allowlists (issue 7): a configuration of
 * who may reach which service port, rendered as an nftables script for one
 * table of our own (`inet ami_gateway`), and the means to check what nft
 * reports back (`nft -j list table inet ami_gateway`) against it.
 *
 * Everything here is pure: no process is started, no file read. Driving nft
 * is left to nft.ts (NftRunner) and manager.ts (FirewallManager: apply,
 * verify, drift timer, rollback).
 *
 * Model:
 *   - named interval sets hes_v4/hes_v6, mesh_v4/mesh_v6, mgmt_v4/mgmt_v6, so
 *     allowlists of thousands of entries cost one lookup;
 *   - one `input` chain, policy accept: loopback and established/related
 *     traffic are accepted, then each service port accepts its allowlisted
 *     sources, then a counted drop per service port (a unique comment per
 *     drop, so counters can be read back by name). Traffic to any other port
 *     is left to whatever else the host runs.
 *
 * An empty allowlist means "nobody but loopback" for its ports (unlike the
 * in-process mesh allowlist, where empty allows everyone): the lists are
 * required in the configuration, so that cannot happen by omission.
 */

export const TABLE_FAMILY = 'inet';
export const TABLE_NAME = 'ami_gateway';
export const CHAIN_NAME = 'input';

/**
 * BAD_CONFIG: the configuration is invalid. BAD_NFT_OUTPUT: nft printed
 * something that is not the JSON expected. The rest come from running nft
 * (src/firewall/nft.ts): NO_NFT (the nft binary is missing), NO_PERMISSION
 * (no CAP_NET_ADMIN: "Operation not permitted"), APPLY_FAILED (nft exited
 * non-zero: it refused the script, with its stderr and line numbers in the
 * message; or the ruleset read back differs from the one applied), TIMEOUT
 * (nft did not finish in time and was killed).
 */
export type FirewallErrorCode = 'BAD_CONFIG' | 'BAD_NFT_OUTPUT' | 'NO_NFT' | 'NO_PERMISSION' | 'APPLY_FAILED' | 'TIMEOUT';

export class FirewallError extends Error {
  override readonly name = 'FirewallError';
  /** nft's stderr, when the error comes from running nft. */
  readonly stderr?: string;
  constructor(
    readonly code: FirewallErrorCode,
    message: string,
    options: { cause?: unknown; stderr?: string } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    if (options.stderr !== undefined) this.stderr = options.stderr;
  }
}

export interface FirewallPorts {
  /** Mesh CoAP endpoint (UDP), reachable from the mesh prefixes. */
  meshCoap: number;
  /** Backhaul CoAP (UDP), reachable from the HES sites. */
  backhaulCoap?: number;
  /** DLMS/COSEM wrapper port, 4059 (TCP and UDP), reachable from the HES sites. */
  dlms: number;
  /** Editor / admin API (TCP), reachable from the management networks. */
  admin: number;
  /** OpenVPN management interface (TCP), reachable from the management networks. */
  openvpnMgmt?: number;
}

export interface FirewallConfig {
  /** HES sites: IPv4/IPv6 addresses or prefixes, normalised, deduplicated, sorted. */
  hes: string[];
  /** Mesh prefixes (usually IPv6; IPv4 allowed). */
  mesh: string[];
  /** Management networks. */
  mgmt: string[];
  ports: FirewallPorts;
}

export type AllowlistName = 'hes' | 'mesh' | 'mgmt';
export type SetName = `${AllowlistName}_v4` | `${AllowlistName}_v6`;
export const SET_NAMES: readonly SetName[] = ['hes_v4', 'hes_v6', 'mesh_v4', 'mesh_v6', 'mgmt_v4', 'mgmt_v6'];

export type Protocol = 'tcp' | 'udp';

/** One service port guarded by the ruleset. */
export interface GuardedService {
  /** Unique; the drop rule's comment is `drop-${id}`. */
  id: string;
  protocol: Protocol;
  port: number;
  /** The allowlist whose sets may reach the port. */
  from: AllowlistName;
  /** Comment of the counted drop rule, e.g. "drop-mesh". */
  dropComment: string;
}

export interface ExpectedChain {
  name: string;
  type: 'filter';
  hook: 'input';
  priority: 0;
  policy: 'accept';
}

export interface ExpectedState {
  family: typeof TABLE_FAMILY;
  table: typeof TABLE_NAME;
  /** Set name -> its elements (normalised addresses/prefixes, sorted). */
  sets: Record<SetName, string[]>;
  chain: ExpectedChain;
  /** The guarded service ports in rule order. */
  services: GuardedService[];
  /**
   * The chain's rules in order, each as its nft statement text (which is also
   * what renderRuleset writes), e.g. `ip6 saddr @mesh_v6 udp dport 5683 accept`
   * or `udp dport 5683 counter drop comment "drop-mesh"`.
   */
  rules: string[];
  /** `sha256:<hex>` of the normalised configuration. */
  hash: string;
}

// ---------------------------------------------------------------------------
// Addresses

type Family = 4 | 6;

interface Network {
  family: Family;
  /** Network address (host bits cleared). */
  value: bigint;
  /** Prefix length; 32 / 128 for a single address. */
  length: number;
}

const V4_BITS = 32;
const V6_BITS = 128;

function bitsOf(family: Family): number {
  return family === 4 ? V4_BITS : V6_BITS;
}

function hostMask(family: Family, length: number): bigint {
  return (1n << BigInt(bitsOf(family) - length)) - 1n;
}

function parseV4(text: string): bigint {
  const parts = text.split('.');
  let value = 0n;
  for (const part of parts) value = (value << 8n) | BigInt(Number(part));
  return value;
}

function parseV6(text: string): bigint {
  // isIP() has already accepted the text, so its shape is sound.
  let body = text;
  let tail: bigint[] = [];
  const lastColon = body.lastIndexOf(':');
  const last = body.slice(lastColon + 1);
  if (last.includes('.')) {
    const v4 = parseV4(last);
    tail = [v4 >> 16n, v4 & 0xffffn];
    body = body.slice(0, lastColon + 1);
    if (body.endsWith(':') && !body.endsWith('::')) body = body.slice(0, -1);
  }
  const groupsOf = (s: string): bigint[] => (s === '' ? [] : s.split(':').map((g) => BigInt(parseInt(g, 16))));
  let groups: bigint[];
  const gap = body.indexOf('::');
  if (gap >= 0) {
    const head = groupsOf(body.slice(0, gap));
    const rest = groupsOf(body.slice(gap + 2));
    const missing = 8 - head.length - rest.length - tail.length;
    groups = [...head, ...new Array<bigint>(Math.max(0, missing)).fill(0n), ...rest, ...tail];
  } else {
    groups = [...groupsOf(body), ...tail];
  }
  let value = 0n;
  for (const group of groups) value = (value << 16n) | group;
  return value;
}

function formatV4(value: bigint): string {
  return [24n, 16n, 8n, 0n].map((shift) => String((value >> shift) & 0xffn)).join('.');
}

/** RFC 5952 text: lowercase, no leading zeros, the first longest run of 2+ zero groups as "::". */
function formatV6(value: bigint): string {
  const groups: number[] = [];
  for (let shift = 112n; shift >= 0n; shift -= 16n) groups.push(Number((value >> shift) & 0xffffn));
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestLength < 2) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`;
}

function formatAddress(family: Family, value: bigint): string {
  return family === 4 ? formatV4(value) : formatV6(value);
}

function formatNetwork(network: Network): string {
  const address = formatAddress(network.family, network.value);
  return network.length === bitsOf(network.family) ? address : `${address}/${network.length}`;
}

/**
 * Parses an address or prefix. Host bits set (10.1.2.3/8) are accepted and
 * cleared (10.0.0.0/8), as nft itself would store them; a single address with
 * a full-length prefix (/32, /128) is written without it. Zones (fe80::1%eth0)
 * are refused: a kernel set has no notion of them.
 */
function parseNetwork(entry: string): Network | string {
  const text = entry.trim();
  if (text === '') return 'is empty';
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  if (address.includes('%')) return 'has a zone, which an nftables set cannot hold';
  const family = isIP(address);
  if (family !== 4 && family !== 6) return 'is not an IPv4 or IPv6 address or prefix';
  let length = bitsOf(family);
  if (slash >= 0) {
    const lengthText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(lengthText) || Number(lengthText) > bitsOf(family)) {
      return `has a bad prefix length (IPv${family} takes /0 to /${bitsOf(family)})`;
    }
    length = Number(lengthText);
  }
  const raw = family === 4 ? parseV4(address) : parseV6(address);
  return { family, value: raw & ~hostMask(family, length), length };
}

function compareNetworks(a: Network, b: Network): number {
  if (a.value !== b.value) return a.value < b.value ? -1 : 1;
  return a.length - b.length;
}

/** Normalises a list: parsed, deduplicated, split into v4 and v6, each sorted. */
function normaliseList(name: AllowlistName, input: unknown): { v4: Network[]; v6: Network[] } {
  if (!Array.isArray(input)) throw new FirewallError('BAD_CONFIG', `${name} must be an array of addresses or prefixes, not ${describe(input)}`);
  const seen = new Set<string>();
  const v4: Network[] = [];
  const v6: Network[] = [];
  input.forEach((entry: unknown, index) => {
    if (typeof entry !== 'string') throw new FirewallError('BAD_CONFIG', `${name}[${index}] must be a string, not ${describe(entry)}`);
    const parsed = parseNetwork(entry);
    if (typeof parsed === 'string') throw new FirewallError('BAD_CONFIG', `${name}[${index}] "${clip(entry)}" ${parsed}`);
    const key = formatNetwork(parsed);
    if (seen.has(key)) return;
    seen.add(key);
    (parsed.family === 4 ? v4 : v6).push(parsed);
  });
  v4.sort(compareNetworks);
  v6.sort(compareNetworks);
  return { v4, v6 };
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `"${clip(value)}"`;
  if (typeof value === 'object') return 'an object';
  return `${typeof value} ${clip(String(value))}`;
}

function clip(text: string, max = 80): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

// ---------------------------------------------------------------------------
// Configuration

const CONFIG_KEYS = new Set(['hes', 'mesh', 'mgmt', 'ports']);
const PORT_KEYS = new Set(['meshCoap', 'backhaulCoap', 'dlms', 'admin', 'openvpnMgmt']);
export const DEFAULT_DLMS_PORT = 4059;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parsePort(ports: Record<string, unknown>, key: keyof FirewallPorts, required: boolean, fallback?: number): number | undefined {
  const value = ports[key];
  if (value === undefined || value === null) {
    if (fallback !== undefined) return fallback;
    if (required) throw new FirewallError('BAD_CONFIG', `ports.${key} is required`);
    return undefined;
  }
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
    throw new FirewallError('BAD_CONFIG', `ports.${key} must be an integer port from 1 to 65535, not ${describe(value)}`);
  }
  return value;
}

/**
 * What an empty mesh allowlist means in the kernel: every source, as the
 * in-process mesh allowlist reads an empty AMI_ALLOW_MESH. The operator states
 * the list once and both layers mean the same; an empty kernel set would
 * instead drop every meter (and refusing would leave the HES and management
 * ports unprotected too).
 */
export const EVERY_SOURCE: readonly string[] = ['0.0.0.0/0', '::/0'];

/** Said (log, node warning, CLI stderr) whenever EVERY_SOURCE stands in for an empty mesh list. */
export const OPEN_MESH_WARNING =
  'no mesh prefixes are configured (AMI_ALLOW_MESH): the mesh port admits every source, as the in-process allowlist does; set AMI_ALLOW_MESH to restrict it';

/** The mesh list for the kernel: the configured one, or EVERY_SOURCE (openToEveryone) when it is empty. */
export function kernelMeshList(configured: readonly string[]): { mesh: string[]; openToEveryone: boolean } {
  return configured.length === 0 ? { mesh: [...EVERY_SOURCE], openToEveryone: true } : { mesh: [...configured], openToEveryone: false };
}

/**
 * Validates and normalises a firewall configuration. Every list is required
 * (an empty one admits nobody but loopback), entries are IPv4/IPv6 addresses
 * or prefixes; the result has each list deduplicated and sorted, IPv4 entries
 * first. `ports.dlms` defaults to 4059. Two services on the same protocol and
 * port are refused (their drop counters could not be told apart).
 */
export function parseFirewallConfig(input: unknown): FirewallConfig {
  if (!isRecord(input)) throw new FirewallError('BAD_CONFIG', `the firewall configuration must be an object, not ${describe(input)}`);
  for (const key of Object.keys(input)) {
    if (!CONFIG_KEYS.has(key)) throw new FirewallError('BAD_CONFIG', `unknown firewall setting "${clip(key)}" (expected hes, mesh, mgmt, ports)`);
  }
  const lists = {
    hes: normaliseList('hes', input.hes),
    mesh: normaliseList('mesh', input.mesh),
    mgmt: normaliseList('mgmt', input.mgmt),
  };
  const rawPorts = input.ports;
  if (!isRecord(rawPorts)) throw new FirewallError('BAD_CONFIG', `ports must be an object, not ${describe(rawPorts)}`);
  for (const key of Object.keys(rawPorts)) {
    if (!PORT_KEYS.has(key)) throw new FirewallError('BAD_CONFIG', `unknown port "${clip(key)}" (expected meshCoap, backhaulCoap, dlms, admin, openvpnMgmt)`);
  }
  const ports: FirewallPorts = {
    meshCoap: parsePort(rawPorts, 'meshCoap', true) as number,
    dlms: parsePort(rawPorts, 'dlms', true, DEFAULT_DLMS_PORT) as number,
    admin: parsePort(rawPorts, 'admin', true) as number,
  };
  const backhaulCoap = parsePort(rawPorts, 'backhaulCoap', false);
  if (backhaulCoap !== undefined) ports.backhaulCoap = backhaulCoap;
  const openvpnMgmt = parsePort(rawPorts, 'openvpnMgmt', false);
  if (openvpnMgmt !== undefined) ports.openvpnMgmt = openvpnMgmt;
  const config: FirewallConfig = {
    hes: [...lists.hes.v4, ...lists.hes.v6].map(formatNetwork),
    mesh: [...lists.mesh.v4, ...lists.mesh.v6].map(formatNetwork),
    mgmt: [...lists.mgmt.v4, ...lists.mgmt.v6].map(formatNetwork),
    ports,
  };
  const used = new Map<string, string>();
  for (const service of servicesOf(config)) {
    const key = `${service.protocol}/${service.port}`;
    const other = used.get(key);
    if (other !== undefined) throw new FirewallError('BAD_CONFIG', `ports: ${service.id} and ${other} both use ${service.protocol} port ${service.port}`);
    used.set(key, service.id);
  }
  return config;
}

/** The guarded service ports of a configuration, in rule order. */
export function servicesOf(config: FirewallConfig): GuardedService[] {
  const services: GuardedService[] = [];
  const add = (id: string, protocol: Protocol, port: number | undefined, from: AllowlistName): void => {
    if (port === undefined) return;
    services.push({ id, protocol, port, from, dropComment: `drop-${id}` });
  };
  add('mesh', 'udp', config.ports.meshCoap, 'mesh');
  add('backhaul', 'udp', config.ports.backhaulCoap, 'hes');
  add('dlms-tcp', 'tcp', config.ports.dlms, 'hes');
  add('dlms-udp', 'udp', config.ports.dlms, 'hes');
  add('admin', 'tcp', config.ports.admin, 'mgmt');
  add('openvpn-mgmt', 'tcp', config.ports.openvpnMgmt, 'mgmt');
  return services;
}

// ---------------------------------------------------------------------------
// Expected state and rendering

/** Splits an (already normalised, or not) list into sorted v4 and v6 element strings. */
function splitList(name: AllowlistName, list: string[]): { v4: string[]; v6: string[] } {
  const { v4, v6 } = normaliseList(name, list);
  return { v4: v4.map(formatNetwork), v6: v6.map(formatNetwork) };
}

function configHash(config: FirewallConfig, sets: Record<SetName, string[]>): string {
  const canonical = JSON.stringify({ sets, ports: servicesOf(config).map((s) => [s.id, s.protocol, s.port, s.from]) });
  return `sha256:${createHash('sha256').update(canonical).digest('hex')}`;
}

/**
 * expectedState per configuration object: the drift watch compares the same
 * configuration every minute, and parsing 10,000 entries again each time
 * cost as much as nft's own listing. Configurations are values (a changed
 * allowlist is a new object from parseFirewallConfig), never edited in place.
 */
const expectedStates = new WeakMap<FirewallConfig, ExpectedState>();

/** The sets, chain and ordered rules the ruleset of `config` defines. */
export function expectedState(config: FirewallConfig): ExpectedState {
  const cached = expectedStates.get(config);
  if (cached) return cached;
  const state = computeExpectedState(config);
  expectedStates.set(config, state);
  return state;
}

function computeExpectedState(config: FirewallConfig): ExpectedState {
  const hes = splitList('hes', config.hes);
  const mesh = splitList('mesh', config.mesh);
  const mgmt = splitList('mgmt', config.mgmt);
  const sets: Record<SetName, string[]> = {
    hes_v4: hes.v4,
    hes_v6: hes.v6,
    mesh_v4: mesh.v4,
    mesh_v6: mesh.v6,
    mgmt_v4: mgmt.v4,
    mgmt_v6: mgmt.v6,
  };
  const services = servicesOf(config);
  const rules = ['iif lo accept', 'ct state established,related accept'];
  for (const service of services) {
    rules.push(`ip saddr @${service.from}_v4 ${service.protocol} dport ${service.port} accept`);
    rules.push(`ip6 saddr @${service.from}_v6 ${service.protocol} dport ${service.port} accept`);
  }
  for (const service of services) {
    rules.push(`${service.protocol} dport ${service.port} counter drop comment "${service.dropComment}"`);
  }
  return {
    family: TABLE_FAMILY,
    table: TABLE_NAME,
    sets,
    chain: { name: CHAIN_NAME, type: 'filter', hook: 'input', priority: 0, policy: 'accept' },
    services,
    rules,
    hash: configHash(config, sets),
  };
}

/**
 * The nft script for `config`. Fed to `nft -f -`, it replaces our table in one
 * transaction: the first line creates the table if it is missing (so the
 * delete cannot fail), the second deletes it with everything in it, the rest
 * defines it afresh. Either all of it applies or none (nft's atomicity), and
 * no other table is named.
 */
export function renderRuleset(config: FirewallConfig): string {
  const state = expectedState(config);
  const ref = `${TABLE_FAMILY} ${TABLE_NAME}`;
  const lines: string[] = [
    `# ami-gateway ruleset ${state.hash}`,
    `# Replaces table ${ref} atomically (nft -f -); no other table is touched.`,
    `table ${ref} {}`,
    `delete table ${ref}`,
    `table ${ref} {`,
  ];
  for (const name of SET_NAMES) {
    const elements = state.sets[name];
    lines.push(`\tset ${name} {`, `\t\ttype ${name.endsWith('_v4') ? 'ipv4_addr' : 'ipv6_addr'}`, '\t\tflags interval', '\t\tauto-merge');
    if (elements.length > 0) {
      lines.push('\t\telements = {', elements.map((e) => `\t\t\t${e}`).join(',\n'), '\t\t}');
    }
    lines.push('\t}');
  }
  lines.push(`\tchain ${CHAIN_NAME} {`, '\t\ttype filter hook input priority filter; policy accept;');
  for (const rule of state.rules) lines.push(`\t\t${rule}`);
  lines.push('\t}', '}', '');
  return lines.join('\n');
}

// ---------------------------------------------------------------------------
// Verification against `nft -j list table inet ami_gateway`

export interface CompareResult {
  ok: boolean;
  differences: string[];
}

/** A closed interval of addresses of one family. */
type Interval = [bigint, bigint];

function toInterval(network: Network): Interval {
  return [network.value, network.value | hostMask(network.family, network.length)];
}

function mergeIntervals(intervals: Interval[]): Interval[] {
  const sorted = [...intervals].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const merged: Interval[] = [];
  for (const [start, end] of sorted) {
    const last = merged[merged.length - 1];
    if (last && start <= last[1] + 1n) {
      if (end > last[1]) last[1] = end;
    } else {
      merged.push([start, end]);
    }
  }
  return merged;
}

/** Parts of `a` not covered by `b` (both merged and sorted). */
function subtractIntervals(a: Interval[], b: Interval[]): Interval[] {
  const out: Interval[] = [];
  let j = 0;
  for (const [start, end] of a) {
    let cursor = start;
    while (j < b.length && (b[j] as Interval)[1] < cursor) j++;
    let k = j;
    while (k < b.length && (b[k] as Interval)[0] <= end) {
      const [bs, be] = b[k] as Interval;
      if (bs > cursor) out.push([cursor, bs - 1n]);
      if (be + 1n > cursor) cursor = be + 1n;
      if (cursor > end) break;
      k++;
    }
    if (cursor <= end) out.push([cursor, end]);
  }
  return out;
}

function formatInterval(family: Family, [start, end]: Interval): string {
  const span = end - start + 1n;
  // A power-of-two span aligned on itself is a prefix.
  if ((span & (span - 1n)) === 0n && (start & (span - 1n)) === 0n) {
    const hostBits = span.toString(2).length - 1;
    return formatNetwork({ family, value: start, length: bitsOf(family) - hostBits });
  }
  return `${formatAddress(family, start)}-${formatAddress(family, end)}`;
}

function badOutput(message: string): FirewallError {
  return new FirewallError('BAD_NFT_OUTPUT', message);
}

function safeJson(value: unknown): string {
  try {
    return clip(JSON.stringify(value) ?? String(value), 200);
  } catch {
    return '(unprintable)';
  }
}

/** An address as nft prints it, of the expected family, or undefined. */
function addressValue(family: Family, value: unknown): bigint | undefined {
  if (typeof value !== 'string' || value.includes('%') || isIP(value) !== family) return undefined;
  return family === 4 ? parseV4(value) : parseV6(value);
}

/**
 * True when the listed elements are, as text, exactly the expected ones:
 * "addr" for an address, {prefix:{addr,len}} for a prefix. Anything else
 * (ranges, other spellings, a different count) is left to the interval
 * comparison, which is exact but parses every address.
 */
function sameElementsAsWritten(elems: unknown[], expected: readonly string[]): boolean {
  if (elems.length !== expected.length) return false;
  const want = new Set(expected);
  if (want.size !== expected.length) return false;
  for (const element of elems) {
    let text: string | undefined;
    if (typeof element === 'string') text = element;
    else if (isRecord(element) && isRecord(element.prefix) && typeof element.prefix.addr === 'string' && typeof element.prefix.len === 'number') {
      text = `${element.prefix.addr}/${element.prefix.len}`;
    }
    if (text === undefined || !want.delete(text)) return false;
  }
  return want.size === 0;
}

/** One element of a set as nft -j prints it: "addr", {prefix:{addr,len}}, {range:[a,b]}, {elem:{val}}. */
function elementInterval(family: Family, element: unknown, depth = 0): Interval | undefined {
  if (typeof element === 'string') {
    const value = addressValue(family, element);
    return value === undefined ? undefined : [value, value];
  }
  if (!isRecord(element) || depth > 4) return undefined;
  if (isRecord(element.prefix)) {
    const value = addressValue(family, element.prefix.addr);
    const length = element.prefix.len;
    if (value === undefined || typeof length !== 'number' || !Number.isInteger(length) || length < 0 || length > bitsOf(family)) return undefined;
    return toInterval({ family, value: value & ~hostMask(family, length), length });
  }
  if (Array.isArray(element.range) && element.range.length === 2) {
    const start = elementInterval(family, element.range[0], depth + 1);
    const end = elementInterval(family, element.range[1], depth + 1);
    if (!start || !end || start[0] > end[1]) return undefined;
    return [start[0], end[1]];
  }
  if (isRecord(element.elem)) return elementInterval(family, element.elem.val, depth + 1);
  return undefined;
}

function exprOperand(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'number') return String(value);
  if (Array.isArray(value)) {
    const parts = value.map(exprOperand);
    return parts.every((p): p is string => p !== undefined) ? parts.join(',') : undefined;
  }
  if (isRecord(value) && Array.isArray(value.set)) return exprOperand(value.set);
  return undefined;
}

function exprLeft(value: unknown): string | undefined {
  if (!isRecord(value)) return undefined;
  if (isRecord(value.meta) && typeof value.meta.key === 'string') return value.meta.key;
  if (isRecord(value.ct) && typeof value.ct.key === 'string') return `ct ${value.ct.key}`;
  if (isRecord(value.payload) && typeof value.payload.protocol === 'string' && typeof value.payload.field === 'string') {
    return `${value.payload.protocol} ${value.payload.field}`;
  }
  return undefined;
}

/** The nft statement text of a rule from its JSON form, in the form expectedState uses. */
function ruleSignature(rule: Record<string, unknown>): string {
  const parts: string[] = [];
  const exprs = Array.isArray(rule.expr) ? rule.expr : [];
  for (const expr of exprs) {
    let text: string | undefined;
    if (isRecord(expr)) {
      if (isRecord(expr.match)) {
        const left = exprLeft(expr.match.left);
        const right = exprOperand(expr.match.right);
        const op = expr.match.op;
        if (left !== undefined && right !== undefined && (op === '==' || op === 'in')) text = `${left} ${right}`;
        else if (left !== undefined && right !== undefined && typeof op === 'string') text = `${left} ${op} ${right}`;
      } else if ('counter' in expr) {
        text = 'counter';
      } else if ('accept' in expr && Object.keys(expr).length === 1) {
        text = 'accept';
      } else if ('drop' in expr && Object.keys(expr).length === 1) {
        text = 'drop';
      }
    }
    parts.push(text ?? `<${safeJson(expr)}>`);
  }
  if (typeof rule.comment === 'string') parts.push(`comment "${rule.comment}"`);
  return parts.join(' ');
}

function sample(items: string[], max = 5): string {
  return items.length <= max ? items.join(', ') : `${items.slice(0, max).join(', ')} and ${items.length - max} more`;
}

/**
 * Compares what nft reports (`nft -j list table inet ami_gateway`, parsed; or
 * its text; `nft -j list ruleset` works too, other tables are ignored) with
 * the ruleset of `config`. Set contents are compared as address ranges, since
 * nft's auto-merge may join adjacent or overlapping entries. Throws a
 * FirewallError BAD_NFT_OUTPUT when the input is not nft's JSON at all.
 */
export function compareWithNftJson(config: FirewallConfig, json: unknown): CompareResult {
  let doc = json;
  if (typeof doc === 'string') {
    try {
      doc = JSON.parse(doc) as unknown;
    } catch {
      throw badOutput('nft output is not JSON');
    }
  }
  if (!isRecord(doc) || !Array.isArray(doc.nftables)) throw badOutput(`nft output has no "nftables" array: ${safeJson(doc)}`);
  const expected = expectedState(config);
  const differences: string[] = [];
  const ours = (o: Record<string, unknown>, tableKey: 'name' | 'table'): boolean => o.family === TABLE_FAMILY && o[tableKey] === TABLE_NAME;

  let tableFound = false;
  const sets = new Map<string, Record<string, unknown>>();
  const chains = new Map<string, Record<string, unknown>>();
  const rules: Record<string, unknown>[] = [];
  for (const entry of doc.nftables as unknown[]) {
    if (!isRecord(entry)) continue;
    if (isRecord(entry.table) && ours(entry.table, 'name')) tableFound = true;
    if (isRecord(entry.set) && ours(entry.set, 'table')) {
      if (typeof entry.set.name !== 'string') throw badOutput(`a set without a name: ${safeJson(entry.set)}`);
      sets.set(entry.set.name, entry.set);
    }
    if (isRecord(entry.map) && ours(entry.map, 'table') && typeof entry.map.name === 'string') differences.push(`unexpected map ${entry.map.name}`);
    if (isRecord(entry.chain) && ours(entry.chain, 'table')) {
      if (typeof entry.chain.name !== 'string') throw badOutput(`a chain without a name: ${safeJson(entry.chain)}`);
      chains.set(entry.chain.name, entry.chain);
    }
    if (isRecord(entry.rule) && ours(entry.rule, 'table')) rules.push(entry.rule);
  }
  if (!tableFound) {
    return { ok: false, differences: [`table ${TABLE_FAMILY} ${TABLE_NAME} is missing`] };
  }

  // Sets.
  for (const name of SET_NAMES) {
    const family: Family = name.endsWith('_v4') ? 4 : 6;
    const set = sets.get(name);
    if (!set) {
      differences.push(`set ${name} is missing`);
      continue;
    }
    const type = family === 4 ? 'ipv4_addr' : 'ipv6_addr';
    if (set.type !== type) differences.push(`set ${name} has type ${safeJson(set.type)}, expected ${type}`);
    if (!Array.isArray(set.flags) || !set.flags.includes('interval')) differences.push(`set ${name} is not an interval set`);
    const elems: unknown[] = set.elem === undefined ? [] : Array.isArray(set.elem) ? set.elem : [set.elem];
    // Fast path: nft lists the elements exactly as we wrote them (its text of an address is RFC 5952's, as ours).
    if (sameElementsAsWritten(elems, expected.sets[name])) continue;
    const actual: Interval[] = [];
    const unreadable: string[] = [];
    for (const element of elems) {
      const interval = elementInterval(family, element);
      if (interval) actual.push(interval);
      else unreadable.push(safeJson(element));
    }
    if (unreadable.length > 0) differences.push(`set ${name} has elements of an unknown form: ${sample(unreadable)}`);
    const want = mergeIntervals(
      expected.sets[name].map((e) => {
        const parsed = parseNetwork(e);
        if (typeof parsed === 'string') throw new FirewallError('BAD_CONFIG', `${name} element "${e}" ${parsed}`);
        return toInterval(parsed);
      }),
    );
    const have = mergeIntervals(actual);
    const missing = subtractIntervals(want, have).map((i) => formatInterval(family, i));
    const extra = subtractIntervals(have, want).map((i) => formatInterval(family, i));
    if (missing.length > 0) {
      differences.push(
        have.length === 0 ? `set ${name} is empty, expected ${expected.sets[name].length} element(s) (${sample(expected.sets[name])})` : `set ${name} lacks ${sample(missing)}`,
      );
    }
    if (extra.length > 0) differences.push(`set ${name} has unexpected ${sample(extra)}`);
  }
  for (const name of sets.keys()) {
    if (!(SET_NAMES as readonly string[]).includes(name)) differences.push(`unexpected set ${name}`);
  }

  // Chain.
  const chain = chains.get(CHAIN_NAME);
  if (!chain) {
    differences.push(`chain ${CHAIN_NAME} is missing`);
  } else {
    const want = expected.chain;
    if (chain.type !== want.type || chain.hook !== want.hook || chain.prio !== want.priority || chain.policy !== want.policy) {
      differences.push(
        `chain ${CHAIN_NAME} is type ${safeJson(chain.type)} hook ${safeJson(chain.hook)} priority ${safeJson(chain.prio)} policy ${safeJson(chain.policy)}, expected type filter hook input priority 0 policy accept`,
      );
    }
  }
  for (const name of chains.keys()) {
    if (name !== CHAIN_NAME) differences.push(`unexpected chain ${name}`);
  }

  // Rules.
  const actualRules = rules.filter((r) => r.chain === CHAIN_NAME).map(ruleSignature);
  const foreignRules = rules.filter((r) => r.chain !== CHAIN_NAME && !(typeof r.chain === 'string' && chains.has(r.chain)));
  if (foreignRules.length > 0) differences.push(`${foreignRules.length} rule(s) outside any known chain`);
  if (chain) {
    const comments = new Set(rules.filter((r) => r.chain === CHAIN_NAME).map((r) => r.comment));
    for (const service of expected.services) {
      if (!comments.has(service.dropComment)) differences.push(`drop rule "${service.dropComment}" (${service.protocol} dport ${service.port}) is missing`);
    }
    const have = new Set(actualRules);
    const want = new Set(expected.rules);
    const missing = expected.rules.filter((r) => !have.has(r));
    const extra = actualRules.filter((r) => !want.has(r));
    if (missing.length > 0) differences.push(`chain ${CHAIN_NAME} lacks rule(s): ${sample(missing)}`);
    if (extra.length > 0) differences.push(`chain ${CHAIN_NAME} has unexpected rule(s): ${sample(extra)}`);
    if (missing.length === 0 && extra.length === 0 && actualRules.join('\n') !== expected.rules.join('\n')) {
      differences.push(`chain ${CHAIN_NAME} has the expected rules in another order or repeated`);
    }
  }
  return { ok: differences.length === 0, differences };
}
