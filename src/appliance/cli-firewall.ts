import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { managementTcpPort } from '../backhaul/address.js';
import { parseCoapUrl } from '../coap/url.js';
import { FirewallManager, type ApplyReport } from '../firewall/manager.js';
import type { NftRunner } from '../firewall/nft.js';
import {
  DEFAULT_DLMS_PORT,
  expectedState,
  FirewallError,
  kernelMeshList,
  OPEN_MESH_WARNING,
  parseFirewallConfig,
  renderRuleset,
  TABLE_FAMILY,
  TABLE_NAME,
  type AllowlistName,
  type FirewallConfig,
} from '../firewall/ruleset.js';
import { DEFAULT_HTTP_PORT, DEFAULT_MESH_PORT } from './config.js';

/**
 * `ami-gateway firewall render|apply|verify|remove`: the kernel allowlists
 * (issue 7), table `inet ami_gateway`, driven from the command line.
 *
 * The allowlists come from --allow-hes / --allow-mesh / --allow-mgmt
 * (repeatable, each also a comma- or space-separated list), else from
 * AMI_ALLOW_HES / AMI_ALLOW_MESH / AMI_ALLOW_MGMT (AMI_ALLOW_MESH's format:
 * "fd00::/8, 2001:db8:1::/48 10.0.0.0/8"). Without AMI_ALLOW_HES the HES
 * list is the hosts of AMI_HES_PRIMARY / AMI_HES_SECONDARY when those are IP
 * literals. An empty management list admits the editor from loopback only
 * (loopback is always accepted). An empty mesh list means every source, as
 * the in-process allowlist reads it (EVERY_SOURCE), with a warning on stderr.
 *
 * Exit codes: 0 ok; 1 nft refused the ruleset (or it was rolled back), drift
 * found by verify, or another nft failure; 2 usage or configuration error
 * (a bad address: the BAD_CONFIG message); 3 nft is missing or the process
 * lacks root / CAP_NET_ADMIN.
 */
export class FirewallUsageError extends Error {
  override readonly name = 'FirewallUsageError';
}

export interface FirewallCommandResult {
  exitCode: number;
  output: string;
  /** Said on stderr (and in --json output): an empty mesh list admitting every source. */
  warnings?: string[];
}

/** What the command reads from the appliance configuration and environment. */
export interface FirewallDefaults {
  /** AMI_ALLOW_HES, AMI_ALLOW_MESH, AMI_ALLOW_MGMT (comma- or space-separated). */
  allowHes?: string;
  allowMesh?: string;
  allowMgmt?: string;
  /** AMI_HES_PRIMARY / AMI_HES_SECONDARY (coap:// URLs). */
  hesPrimary?: string;
  hesSecondary?: string;
  /** AMI_MESH_PORT, AMI_HTTP_PORT. */
  meshPort?: number;
  httpPort?: number;
  /** AMI_BACKHAUL_MGMT: a host:port guards that port as the OpenVPN management port. */
  backhaulMgmt?: string;
}

export interface FirewallCommandOptions {
  /** The nft runner (tests); the manager's default otherwise. */
  runner?: NftRunner;
}

export const FIREWALL_ACTIONS = ['render', 'apply', 'verify', 'remove'] as const;
type Action = (typeof FIREWALL_ACTIONS)[number];

const NO_ACCESS_HINT = 'needs root or CAP_NET_ADMIN; the in-process allowlists keep working';
const TABLE = `table ${TABLE_FAMILY} ${TABLE_NAME}`;

/** Reads the defaults from the environment (the AMI_* variables; loadConfig has checked the ones it knows). */
export function firewallDefaultsFromEnv(
  env: Readonly<Record<string, string | undefined>>,
  config: { meshPort: number; httpPort: number; hesPrimary: string | undefined; hesSecondary: string | undefined; allowMesh: string; backhaulMgmt: string },
): FirewallDefaults {
  return {
    allowHes: env.AMI_ALLOW_HES,
    allowMesh: config.allowMesh,
    allowMgmt: env.AMI_ALLOW_MGMT,
    hesPrimary: config.hesPrimary,
    hesSecondary: config.hesSecondary,
    meshPort: config.meshPort,
    httpPort: config.httpPort,
    backhaulMgmt: config.backhaulMgmt,
  };
}

function splitList(text: string | undefined): string[] {
  return (text ?? '')
    .split(/[\s,]+/)
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '');
}

function portOption(option: string, raw: string | undefined, fallback: number | undefined): number | undefined {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < 1 || Number(raw) > 65535) {
    throw new FirewallUsageError(`${option} must be a port from 1 to 65535, got "${raw}"`);
  }
  return Number(raw);
}

/** HES hosts of the configured coap:// URLs that are IP literals (a host name cannot go into a kernel set). */
function hesHosts(defaults: FirewallDefaults): { hosts: string[]; names: string[] } {
  const hosts: string[] = [];
  const names: string[] = [];
  for (const [variable, url] of [
    ['AMI_HES_PRIMARY', defaults.hesPrimary],
    ['AMI_HES_SECONDARY', defaults.hesSecondary],
  ] as const) {
    if (url === undefined || url.trim() === '') continue;
    let host: string;
    try {
      host = parseCoapUrl(url).host;
    } catch (err) {
      throw new FirewallUsageError(`${variable}: ${(err as Error).message}`);
    }
    if (isIP(host) !== 0) hosts.push(host);
    else names.push(`${variable} (${host})`);
  }
  return { hosts, names };
}

interface Values {
  'allow-hes'?: string[];
  'allow-mesh'?: string[];
  'allow-mgmt'?: string[];
  'mesh-port'?: string;
  'admin-port'?: string;
  'backhaul-port'?: string;
  'dlms-port'?: string;
  'openvpn-mgmt-port'?: string;
}

/** Where each list came from, for error messages. */
type Sources = Record<AllowlistName, string>;

/**
 * The firewall configuration from the options and defaults. `lenient` (for
 * remove, which needs none): an HES host name is not refused. An empty mesh
 * list becomes EVERY_SOURCE and OPEN_MESH_WARNING goes into `warnings`.
 */
export function firewallConfigFrom(values: Values, defaults: FirewallDefaults, lenient = false, warnings: string[] = []): FirewallConfig {
  const sources: Sources = { hes: '--allow-hes', mesh: '--allow-mesh', mgmt: '--allow-mgmt' };
  let hes = splitList((values['allow-hes'] ?? []).join(','));
  if (values['allow-hes'] === undefined) {
    hes = splitList(defaults.allowHes);
    sources.hes = 'AMI_ALLOW_HES';
    if (hes.length === 0) {
      const derived = hesHosts(defaults);
      if (derived.names.length > 0 && !lenient) {
        throw new FirewallUsageError(
          `${derived.names.join(' and ')} names a host, not an IP address, which a kernel set cannot hold: set AMI_ALLOW_HES or --allow-hes`,
        );
      }
      hes = derived.hosts;
      sources.hes = 'AMI_HES_PRIMARY/AMI_HES_SECONDARY';
    }
  }
  let mesh = splitList((values['allow-mesh'] ?? []).join(','));
  if (values['allow-mesh'] === undefined) {
    mesh = splitList(defaults.allowMesh);
    sources.mesh = 'AMI_ALLOW_MESH';
  }
  const kernelMesh = kernelMeshList(mesh);
  mesh = kernelMesh.mesh;
  if (kernelMesh.openToEveryone && !lenient) warnings.push(OPEN_MESH_WARNING);
  let mgmt = splitList((values['allow-mgmt'] ?? []).join(','));
  if (values['allow-mgmt'] === undefined) {
    mgmt = splitList(defaults.allowMgmt);
    sources.mgmt = 'AMI_ALLOW_MGMT';
  }
  // A unix socket needs no rule (and loadConfig has already refused a bad AMI_BACKHAUL_MGMT).
  const openvpnFallback = defaults.backhaulMgmt === undefined ? undefined : managementTcpPort(defaults.backhaulMgmt);
  const ports = {
    meshCoap: portOption('--mesh-port', values['mesh-port'], defaults.meshPort ?? DEFAULT_MESH_PORT),
    admin: portOption('--admin-port', values['admin-port'], defaults.httpPort ?? DEFAULT_HTTP_PORT),
    dlms: portOption('--dlms-port', values['dlms-port'], DEFAULT_DLMS_PORT),
    backhaulCoap: portOption('--backhaul-port', values['backhaul-port'], undefined),
    openvpnMgmt: portOption('--openvpn-mgmt-port', values['openvpn-mgmt-port'], openvpnFallback),
  };
  try {
    return parseFirewallConfig({ hes, mesh, mgmt, ports });
  } catch (err) {
    if (err instanceof FirewallError) {
      const list = /^(hes|mesh|mgmt)\[/.exec(err.message)?.[1] as AllowlistName | undefined;
      throw new FirewallUsageError(list ? `${sources[list]}: ${err.message}` : err.message);
    }
    throw err;
  }
}

function entries(config: FirewallConfig): { hes: number; mesh: number; mgmt: number } {
  return { hes: config.hes.length, mesh: config.mesh.length, mgmt: config.mgmt.length };
}

function json(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function isNoAccess(code: string | undefined): boolean {
  return code === 'NO_NFT' || code === 'NO_PERMISSION';
}

/** A failure of nft as a result: exit 3 for no nft / no permission (with the hint), 1 otherwise. */
function failure(action: Action, err: unknown, asJson: boolean, extra: Record<string, unknown> = {}): FirewallCommandResult {
  const code = errorCode(err) ?? 'ERROR';
  const message = err instanceof Error ? err.message : String(err);
  const noAccess = isNoAccess(code);
  const exitCode = noAccess ? 3 : 1;
  if (asJson) return { exitCode, output: json({ action, ok: false, ...extra, error: { code, message } }) };
  const hint = code === 'NO_NFT' ? `\ninstall nftables (nft); the firewall also ${NO_ACCESS_HINT}` : noAccess ? `\nthe firewall ${NO_ACCESS_HINT}` : '';
  return { exitCode, output: `ami-gateway: firewall ${action} failed (${code}): ${message}${hint}` };
}

/** Runs `firewall ACTION [options]`. Usage errors throw FirewallUsageError (exit 2). */
export async function firewallCommand(args: string[], defaults: FirewallDefaults, options: FirewallCommandOptions = {}): Promise<FirewallCommandResult> {
  const [action, ...rest] = args;
  if (!(FIREWALL_ACTIONS as readonly string[]).includes(action ?? '')) {
    throw new FirewallUsageError(`unknown firewall command "${action ?? ''}": expected ${FIREWALL_ACTIONS.join(', ')}`);
  }
  const { values } = parseArgs({
    args: rest,
    options: {
      'allow-hes': { type: 'string', multiple: true },
      'allow-mesh': { type: 'string', multiple: true },
      'allow-mgmt': { type: 'string', multiple: true },
      'mesh-port': { type: 'string' },
      'admin-port': { type: 'string' },
      'backhaul-port': { type: 'string' },
      'dlms-port': { type: 'string' },
      'openvpn-mgmt-port': { type: 'string' },
      json: { type: 'boolean' },
    },
    // Strict, and no positionals: a stray word is an ERR_PARSE_ARGS usage error.
    strict: true,
    allowPositionals: false,
  });
  const asJson = values.json === true;
  const act = action as Action;
  const warnings: string[] = [];
  const config = firewallConfigFrom(values, defaults, act === 'remove', warnings);
  const result = await run(act, config, asJson, options);
  if (warnings.length === 0) return result;
  if (asJson) {
    try {
      const body = JSON.parse(result.output) as Record<string, unknown>;
      return { ...result, output: json({ ...body, warnings }), warnings };
    } catch {
      // An error line rather than JSON: the warnings still go to stderr.
    }
  }
  return { ...result, warnings };
}

async function run(act: Action, config: FirewallConfig, asJson: boolean, options: FirewallCommandOptions): Promise<FirewallCommandResult> {

  if (act === 'render') {
    const script = renderRuleset(config);
    if (asJson) {
      return { exitCode: 0, output: json({ action: act, ok: true, hash: expectedState(config).hash, entries: entries(config), config, ruleset: script }) };
    }
    return { exitCode: 0, output: script.replace(/\n$/, '') };
  }

  const manager = new FirewallManager({ config, ...(options.runner ? { runner: options.runner } : {}) });

  if (act === 'apply') {
    let report: ApplyReport;
    try {
      report = await manager.apply();
    } catch (err) {
      return failure(act, err, asJson);
    }
    if (!report.ok) {
      const code = errorCode(report.error);
      if (isNoAccess(code)) return failure(act, report.error, asJson, { hash: report.hash, entries: report.entries });
      const reason = report.error?.message ?? 'the ruleset did not apply';
      if (asJson) {
        return {
          exitCode: 1,
          output: json({
            action: act,
            ok: false,
            hash: report.hash,
            entries: report.entries,
            applyMs: report.applyMs,
            verifyMs: report.verifyMs,
            rolledBack: report.rolledBack === true,
            error: { code: code ?? 'APPLY_FAILED', message: reason },
          }),
        };
      }
      // rolledBack is absent when nft refused the script (its transaction did not commit); otherwise the manager's message tells.
      const after = report.rolledBack === undefined ? '; the previous ruleset stays in force' : '';
      return { exitCode: 1, output: `ami-gateway: firewall apply failed (${code ?? 'APPLY_FAILED'}): ${reason}${after}` };
    }
    if (asJson) {
      return {
        exitCode: 0,
        output: json({ action: act, ok: true, hash: report.hash, entries: report.entries, applyMs: report.applyMs, verifyMs: report.verifyMs, rolledBack: false }),
      };
    }
    const { hes, mesh, mgmt } = report.entries;
    return {
      exitCode: 0,
      output:
        `applied and verified ${TABLE} (${report.hash})\n` +
        `entries: hes ${hes}, mesh ${mesh}, mgmt ${mgmt}; apply ${Math.round(report.applyMs)} ms, verify ${Math.round(report.verifyMs)} ms`,
    };
  }

  if (act === 'verify') {
    let result: { ok: boolean; differences: string[] };
    try {
      result = await manager.verify();
    } catch (err) {
      return failure(act, err, asJson);
    }
    const hash = expectedState(config).hash;
    if (asJson) return { exitCode: result.ok ? 0 : 1, output: json({ action: act, ok: result.ok, hash, differences: result.differences }) };
    if (result.ok) return { exitCode: 0, output: `${TABLE} matches the configuration (${hash})` };
    return {
      exitCode: 1,
      output: [`DRIFT: ${TABLE} differs from the configuration (${hash}):`, ...result.differences.map((d) => `  - ${d}`)].join('\n'),
    };
  }

  // remove
  let removed: boolean;
  try {
    removed = await manager.remove();
  } catch (err) {
    return failure(act, err, asJson);
  }
  if (asJson) return { exitCode: 0, output: json({ action: act, ok: true, removed }) };
  return { exitCode: 0, output: removed ? `removed ${TABLE}` : `${TABLE} was not there; nothing to remove` };
}
