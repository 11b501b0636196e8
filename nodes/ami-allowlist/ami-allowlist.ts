import { isIP } from 'node:net';
import type { Node, NodeAPI, NodeDef } from 'node-red';
import { DEFAULT_DLMS_PORT, FirewallError, kernelMeshList, OPEN_MESH_WARNING, parseFirewallConfig, type FirewallConfig } from '../../src/firewall/ruleset.js';
import { parseCoapUrl } from '../../src/coap/url.js';
import { ConfigUsers } from '../shared/config-users.js';
import { NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';
import type { AllowlistNode, HesEndpointNode } from '../shared/types.js';

/**
 * The gateway's allowlists, stated once (issue 7): who may reach the HES-facing
 * ports (HES sites), the mesh endpoint (mesh prefixes) and the editor
 * (management networks). A list left empty follows the HES or mesh endpoint
 * chosen here; `firewall` nodes turn the result into the kernel's ruleset.
 */
interface AllowlistDef extends NodeDef {
  /** HES addresses/prefixes (commas or spaces); '' = the IP literals among the HES endpoint's site hosts. */
  hes?: string;
  hesEndpoint?: string;
  /** Mesh prefixes; '' = the mesh endpoint's allowed sources; none at all = every source (as the in-process allowlist reads it). */
  mesh?: string;
  /** The mesh endpoint: its allowed sources (when `mesh` is empty) and its port. */
  meshEndpoint?: string;
  /** Management networks; '' = loopback only. */
  mgmt?: string;
  adminPort?: string;
  dlmsPort?: string;
  backhaulPort?: string;
  openvpnMgmtPort?: string;
}

/** The mesh endpoint's port when it sets none (as in ami-mesh-endpoint). */
const DEFAULT_MESH_PORT = 5683;
const DEFAULT_ADMIN_PORT = 1880;

function listOf(text: string): string[] {
  return text.split(/[\s,]+/).filter((entry) => entry !== '');
}

/** The IP literal a coap:// URL names as its host, or undefined for a host name (or a URL that does not parse). */
function ipHostOf(url: string): { ip?: string; host: string } {
  try {
    // The same parser the HES endpoint uses: its host comes without brackets.
    const { host } = parseCoapUrl(url);
    return isIP(host) !== 0 ? { ip: host, host } : { host };
  } catch {
    return { host: url };
  }
}

export = function register(RED: NodeAPI): void {
  function AmiAllowlist(this: AllowlistNode, def: AllowlistDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const users = new ConfigUsers();
    let outcome: { config: FirewallConfig } | { error: FirewallError } | undefined;

    /** A property of another node as deployed (its flow JSON), with ${VAR} references substituted. */
    function rawProperty(id: string, key: string): unknown {
      let found: Record<string, unknown> | undefined;
      RED.nodes.eachNode((n) => {
        if (n.id === id) found = n as unknown as Record<string, unknown>;
      });
      const live = RED.nodes.getNode(id) as (Node & Record<string, unknown>) | null;
      if (!found && !live) return undefined;
      // A live node that exposes the property wins (it has been substituted already).
      const value = live && typeof live[key] === 'string' ? live[key] : found?.[key];
      if (typeof value === 'string' && value.includes('${')) {
        return RED.util.evaluateNodeProperty(value, 'env', live ?? node, {}) as unknown;
      }
      return value;
    }

    function exists(id: string): boolean {
      let found = RED.nodes.getNode(id) !== null;
      if (!found) {
        RED.nodes.eachNode((n) => {
          if (n.id === id) found = true;
        });
      }
      return found;
    }

    function build(): FirewallConfig {
      const settings = RED.settings as unknown as { uiPort?: unknown };
      const uiPort = typeof settings.uiPort === 'number' && Number.isInteger(settings.uiPort) && settings.uiPort > 0 ? settings.uiPort : DEFAULT_ADMIN_PORT;

      let hes = listOf(stringProperty(def.hes));
      const hesId = stringProperty(def.hesEndpoint);
      if (hes.length === 0 && hesId !== '') {
        const hesNode = RED.nodes.getNode(hesId) as HesEndpointNode | null;
        if (!hesNode) throw new FirewallError('BAD_CONFIG', RED._('ami-allowlist.errors.no-hes-endpoint', { id: hesId }));
        const sites = Array.isArray(hesNode.sites) ? hesNode.sites : [];
        const hosts = sites.map(ipHostOf);
        hes = hosts.flatMap((h) => (h.ip !== undefined ? [h.ip] : []));
        const names = hosts.filter((h) => h.ip === undefined).map((h) => h.host);
        if (names.length > 0) node.warn(RED._('ami-allowlist.warn.hes-names', { names: names.join(', ') }));
      }

      let mesh = listOf(stringProperty(def.mesh));
      let meshPort = DEFAULT_MESH_PORT;
      const meshId = stringProperty(def.meshEndpoint);
      if (meshId !== '') {
        if (!exists(meshId)) throw new FirewallError('BAD_CONFIG', RED._('ami-allowlist.errors.no-mesh-endpoint', { id: meshId }));
        if (mesh.length === 0) mesh = listOf(stringProperty(rawProperty(meshId, 'allow')));
        meshPort = numberProperty('Mesh endpoint port', rawProperty(meshId, 'port'), DEFAULT_MESH_PORT, 1, 65535);
      }

      const optionalPort = (label: string, raw: unknown): number | undefined => {
        const text = stringProperty(raw);
        return text === '' ? undefined : numberProperty(label, text, 0, 1, 65535);
      };
      const ports: Record<string, number> = {
        meshCoap: meshPort,
        dlms: numberProperty('DLMS port', def.dlmsPort, DEFAULT_DLMS_PORT, 1, 65535),
        admin: numberProperty('Admin port', def.adminPort, uiPort, 1, 65535),
      };
      const backhaul = optionalPort('Backhaul CoAP port', def.backhaulPort);
      if (backhaul !== undefined) ports.backhaulCoap = backhaul;
      const openvpn = optionalPort('OpenVPN management port', def.openvpnMgmtPort);
      if (openvpn !== undefined) ports.openvpnMgmt = openvpn;

      const kernelMesh = kernelMeshList(mesh);
      if (kernelMesh.openToEveryone) node.warn(OPEN_MESH_WARNING);
      return parseFirewallConfig({ hes, mesh: kernelMesh.mesh, mgmt: listOf(stringProperty(def.mgmt)), ports });
    }

    /** Works the configuration out once (the endpoints it follows exist by the time a user asks). */
    function evaluate(): { config: FirewallConfig } | { error: FirewallError } {
      if (outcome) return outcome;
      try {
        outcome = { config: build() };
      } catch (err) {
        const error =
          err instanceof FirewallError
            ? err
            : new FirewallError('BAD_CONFIG', err instanceof NodeConfigError ? err.message : `${(err as Error).message}`, { cause: err });
        outcome = { error };
        node.error(`${error.code}: ${error.message}`);
        users.status({ fill: 'red', shape: 'ring', text: 'ami-allowlist.status.bad-config' });
      }
      return outcome;
    }

    node.register = (user) => {
      users.register(user);
      evaluate();
    };
    node.deregister = async (user) => {
      users.deregister(user);
    };
    node.config = () => {
      const result = evaluate();
      if ('error' in result) throw result.error;
      return result.config;
    };
  }
  RED.nodes.registerType('ami-allowlist', AmiAllowlist as unknown as Parameters<NodeAPI['nodes']['registerType']>[1]);
};
