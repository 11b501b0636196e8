import { existsSync } from 'node:fs';
import { MeshAllowlist } from '../mesh/allowlist.js';
import { isIP } from 'node:net';
import path from 'node:path';
import { parseCoapUrl } from '../coap/url.js';
import { DEFAULT_MANAGEMENT_ADDRESS, parseManagementAddress } from '../backhaul/address.js';
import { parseRadioSettings, RadioSettingsError, type RadioSettingField, type RadioSettings } from '../mesh/radio-settings.js';

/** A configuration value that cannot be used. Carries the variable's name so the operator knows what to fix. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
  }
}

export interface ApplianceConfig {
  /** Node-RED user directory: flows, credentials, secrets, logs. */
  dataDir: string;
  /** Editor and admin API port. */
  httpPort: number;
  /** Address the editor binds to; loopback unless admin users are configured. */
  httpBind: string | undefined;
  /** File holding admin users (bcrypt hashes); absent means no adminAuth. */
  settingsFile: string;
  credentialSecret: string | undefined;
  hesPrimary: string | undefined;
  hesSecondary: string | undefined;
  /**
   * HES failover (docs/hes-uplink.md), ms; undefined: the HES endpoint's own
   * setting or default (2000, 5000, 60000). The default flow reads them as ${VAR}.
   */
  hesLatencyBudgetMs: number | undefined;
  hesProbeIntervalMs: number | undefined;
  hesFailbackHoldMs: number | undefined;
  meshPort: number;
  meshBind: string;
  simMeters: number;
  /** Seconds between two readings of one simulated meter. */
  simIntervalSeconds: number;
  /** What simulated meters send: ciphered DLMS data-notifications (default) or plain readings. */
  simProtocol: 'dlms' | 'plain';
  /** Seed the simulated meters and the simulated key management derive meter keys from. */
  simKeySeed: string | undefined;
  /** PEM file with the utility's root CA(s) that sign HES key bundles; the HES simulator's when unset and simulated. */
  keysTrustAnchors: string | undefined;
  /** Mesh prefixes allowed to reach the mesh endpoint ('' = every source). */
  allowMesh: string;
  /** Serve readings and DLMS frames only to addresses a registered meter has (the resource directory stays open). */
  meshRegisteredOnly: boolean;
  /** OpenVPN's management interface (AMI_BACKHAUL_MGMT): where `ami-gateway backhaul` connects. */
  backhaulMgmt: string;
  /**
   * AMI_FIREWALL: `enforce` has the default flow's firewall node put the
   * allowlists into the kernel at start (the systemd unit sets it); `off`
   * (default) leaves the kernel alone, so `npm start` on a workstation never
   * changes its firewall.
   */
  firewall: FirewallMode;
  /**
   * AMI_MESH_TRANSPORT: how the mesh endpoint reaches the meters, `udp` (the
   * OS's IPv6 interface, default) or `radio` (the serial 802.15.4 radio,
   * 6LoWPAN; docs/serial-radio.md), with its settings.
   */
  meshTransport: 'udp' | 'radio';
  /** The serial radio (AMI_RADIO_*), checked when AMI_MESH_TRANSPORT=radio. */
  radio: RadioSettings | undefined;
  /** AMI_FIRMWARE_DIR: the signed firmware images the gateway distributes (default $AMI_DATA_DIR/firmware). */
  firmwareDir: string;
  /** AMI_FIRMWARE_TRUST_ANCHORS: PEM file with the utility's firmware root CA(s); without it no image is trusted. */
  firmwareTrustAnchors: string | undefined;
  logLevel: LogLevel;
}

export const FIREWALL_MODES = ['off', 'enforce'] as const;
export type FirewallMode = (typeof FIREWALL_MODES)[number];

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const DEFAULT_HTTP_PORT = 1880;
export const DEFAULT_MESH_PORT = 5683;
export const DEFAULT_SIM_METERS = 50;
export const DEFAULT_SIM_INTERVAL_SECONDS = 10;

type Env = Readonly<Record<string, string | undefined>>;

function nonEmpty(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === undefined || value === '' ? undefined : value;
}

export function parseInteger(variable: string, raw: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw)) {
    throw new ConfigError(variable, `expected a whole number, got "${raw}"`);
  }
  const value = Number(raw);
  if (value < min || value > max) {
    throw new ConfigError(variable, `must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

function optionalInteger(env: Env, name: string, min: number, max: number): number | undefined {
  const raw = nonEmpty(env, name);
  return raw === undefined ? undefined : parseInteger(name, raw, min, max);
}

function port(env: Env, name: string, fallback: number): number {
  const raw = nonEmpty(env, name);
  return raw === undefined ? fallback : parseInteger(name, raw, 1, 65535);
}

/** An IP address literal (IPv4 or IPv6) to bind to. */
function bindAddress(env: Env, name: string): string | undefined {
  const raw = nonEmpty(env, name);
  if (raw !== undefined && isIP(raw) === 0) {
    throw new ConfigError(name, `expected an IPv4 or IPv6 address such as ::, ::1, 0.0.0.0 or 127.0.0.1, got "${raw}"`);
  }
  return raw;
}

function hesUrl(env: Env, name: string): string | undefined {
  const raw = nonEmpty(env, name);
  if (raw === undefined) return undefined;
  try {
    parseCoapUrl(raw);
  } catch (err) {
    throw new ConfigError(name, (err as Error).message);
  }
  return raw;
}

function simProtocol(env: Env): 'dlms' | 'plain' {
  const raw = nonEmpty(env, 'AMI_SIM_PROTOCOL') ?? 'dlms';
  if (raw !== 'dlms' && raw !== 'plain') throw new ConfigError('AMI_SIM_PROTOCOL', `expected dlms or plain, got "${raw}"`);
  return raw;
}

function allowMesh(env: Env): string {
  const raw = nonEmpty(env, 'AMI_ALLOW_MESH') ?? '';
  try {
    MeshAllowlist.parse(raw);
  } catch (err) {
    throw new ConfigError('AMI_ALLOW_MESH', (err as Error).message);
  }
  return raw;
}

function flag(env: Env, name: string, fallback: boolean): boolean {
  const raw = nonEmpty(env, name);
  if (raw === undefined) return fallback;
  if (raw.toLowerCase() === 'true') return true;
  if (raw.toLowerCase() === 'false') return false;
  throw new ConfigError(name, `expected true or false, got "${raw}"`);
}

function firewallMode(env: Env): FirewallMode {
  const raw = nonEmpty(env, 'AMI_FIREWALL') ?? 'off';
  if (!(FIREWALL_MODES as readonly string[]).includes(raw)) throw new ConfigError('AMI_FIREWALL', `expected off or enforce, got "${raw}"`);
  return raw as FirewallMode;
}

function meshTransport(env: Env): 'udp' | 'radio' {
  const raw = nonEmpty(env, 'AMI_MESH_TRANSPORT') ?? 'udp';
  if (raw !== 'udp' && raw !== 'radio') throw new ConfigError('AMI_MESH_TRANSPORT', `expected udp or radio, got "${raw}"`);
  return raw;
}

/** Which variable states each radio setting, for the error an operator reads. */
const RADIO_VARIABLES: Record<RadioSettingField, string> = {
  path: 'AMI_RADIO_PORT',
  baudRate: 'AMI_RADIO_BAUD',
  metadata: 'AMI_RADIO_METADATA',
  mac: 'AMI_RADIO_MAC',
  panId: 'AMI_RADIO_PAN',
  contexts: 'AMI_RADIO_CONTEXTS',
};

function radioConfig(env: Env): RadioSettings {
  try {
    return parseRadioSettings({
      path: env.AMI_RADIO_PORT,
      baudRate: env.AMI_RADIO_BAUD,
      metadata: env.AMI_RADIO_METADATA,
      mac: env.AMI_RADIO_MAC,
      pan: env.AMI_RADIO_PAN,
      contexts: env.AMI_RADIO_CONTEXTS,
    });
  } catch (err) {
    if (err instanceof RadioSettingsError) throw new ConfigError(RADIO_VARIABLES[err.field], err.message);
    throw err;
  }
}

function backhaulManagement(env: Env): string {
  const raw = nonEmpty(env, 'AMI_BACKHAUL_MGMT') ?? DEFAULT_MANAGEMENT_ADDRESS;
  try {
    parseManagementAddress(raw);
  } catch (err) {
    throw new ConfigError('AMI_BACKHAUL_MGMT', (err as Error).message);
  }
  return raw;
}

function trustAnchorsFile(env: Env, cwd: string, variable = 'AMI_KEYS_TRUST_ANCHORS'): string | undefined {
  const raw = nonEmpty(env, variable);
  if (raw === undefined) return undefined;
  const file = path.resolve(cwd, raw);
  if (!existsSync(file)) throw new ConfigError(variable, `${file} does not exist`);
  return file;
}

/**
 * Reads the appliance configuration from the environment. Every variable is
 * optional; the defaults run the gateway on loopback with its simulators.
 */
export function loadConfig(env: Env = process.env, cwd: string = process.cwd()): ApplianceConfig {
  const dataDir = path.resolve(cwd, nonEmpty(env, 'AMI_DATA_DIR') ?? 'data');
  const logLevelRaw = nonEmpty(env, 'AMI_LOG_LEVEL') ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(logLevelRaw)) {
    throw new ConfigError('AMI_LOG_LEVEL', `expected one of ${LOG_LEVELS.join(', ')}, got "${logLevelRaw}"`);
  }
  const simMetersRaw = nonEmpty(env, 'AMI_SIM_METERS');
  const simIntervalRaw = nonEmpty(env, 'AMI_SIM_INTERVAL');
  return {
    dataDir,
    httpPort: port(env, 'AMI_HTTP_PORT', DEFAULT_HTTP_PORT),
    httpBind: bindAddress(env, 'AMI_HTTP_BIND'),
    settingsFile: path.resolve(dataDir, nonEmpty(env, 'AMI_SETTINGS_FILE') ?? 'ami-settings.json'),
    credentialSecret: nonEmpty(env, 'AMI_CREDENTIAL_SECRET'),
    hesPrimary: hesUrl(env, 'AMI_HES_PRIMARY'),
    hesSecondary: hesUrl(env, 'AMI_HES_SECONDARY'),
    hesLatencyBudgetMs: optionalInteger(env, 'AMI_HES_LATENCY_BUDGET_MS', 50, 120_000),
    hesProbeIntervalMs: optionalInteger(env, 'AMI_HES_PROBE_INTERVAL_MS', 0, 3_600_000),
    hesFailbackHoldMs: optionalInteger(env, 'AMI_HES_FAILBACK_HOLD_MS', 0, 86_400_000),
    meshPort: port(env, 'AMI_MESH_PORT', DEFAULT_MESH_PORT),
    meshBind: bindAddress(env, 'AMI_MESH_BIND') ?? '::1',
    simMeters:
      simMetersRaw === undefined ? DEFAULT_SIM_METERS : parseInteger('AMI_SIM_METERS', simMetersRaw, 0, 100_000),
    simIntervalSeconds:
      simIntervalRaw === undefined
        ? DEFAULT_SIM_INTERVAL_SECONDS
        : parseInteger('AMI_SIM_INTERVAL', simIntervalRaw, 1, 86_400),
    simProtocol: simProtocol(env),
    simKeySeed: nonEmpty(env, 'AMI_SIM_KEY_SEED'),
    keysTrustAnchors: trustAnchorsFile(env, cwd),
    allowMesh: allowMesh(env),
    meshRegisteredOnly: flag(env, 'AMI_MESH_REGISTERED_ONLY', false),
    backhaulMgmt: backhaulManagement(env),
    firewall: firewallMode(env),
    meshTransport: meshTransport(env),
    radio: meshTransport(env) === 'radio' ? radioConfig(env) : undefined,
    firmwareDir: path.resolve(cwd, nonEmpty(env, 'AMI_FIRMWARE_DIR') ?? path.join(dataDir, 'firmware')),
    firmwareTrustAnchors: trustAnchorsFile(env, cwd, 'AMI_FIRMWARE_TRUST_ANCHORS'),
    logLevel: logLevelRaw as LogLevel,
  };
}
