import { createRequire } from 'node:module';
import path from 'node:path';
import helper from 'node-red-node-test-helper';
import type { HealthRegistry } from '../../src/appliance/health.js';

const requireFromHere = createRequire(__filename);
export const DIST = path.resolve(__dirname, '..', '..', 'dist');

type NodeModule = (RED: unknown) => void;

/**
 * Our compiled node modules, loaded from dist/ exactly as Node-RED loads them.
 * Tests that look at process-wide state (health counters) must use the same
 * module instances as the nodes, so they come from dist/ too.
 */
export const nodes = {
  meshEndpoint: requireFromHere(path.join(DIST, 'nodes/ami-mesh-endpoint/ami-mesh-endpoint.js')) as NodeModule,
  meshIn: requireFromHere(path.join(DIST, 'nodes/ami-mesh-in/ami-mesh-in.js')) as NodeModule,
  hesEndpoint: requireFromHere(path.join(DIST, 'nodes/ami-hes-endpoint/ami-hes-endpoint.js')) as NodeModule,
  hesOut: requireFromHere(path.join(DIST, 'nodes/ami-hes-out/ami-hes-out.js')) as NodeModule,
  store: requireFromHere(path.join(DIST, 'nodes/ami-store/ami-store.js')) as NodeModule,
  keyring: requireFromHere(path.join(DIST, 'nodes/ami-keyring/ami-keyring.js')) as NodeModule,
  dlmsDecode: requireFromHere(path.join(DIST, 'nodes/ami-dlms-decode/ami-dlms-decode.js')) as NodeModule,
  dlmsEncode: requireFromHere(path.join(DIST, 'nodes/ami-dlms-encode/ami-dlms-encode.js')) as NodeModule,
  meshRequest: requireFromHere(path.join(DIST, 'nodes/ami-mesh-request/ami-mesh-request.js')) as NodeModule,
  meshEvents: requireFromHere(path.join(DIST, 'nodes/ami-mesh-events/ami-mesh-events.js')) as NodeModule,
  backhaul: requireFromHere(path.join(DIST, 'nodes/ami-backhaul/ami-backhaul.js')) as NodeModule,
  backhaulStatus: requireFromHere(path.join(DIST, 'nodes/ami-backhaul-status/ami-backhaul-status.js')) as NodeModule,
  hesCommands: requireFromHere(path.join(DIST, 'nodes/ami-hes-commands/ami-hes-commands.js')) as NodeModule,
  relay: requireFromHere(path.join(DIST, 'nodes/ami-relay/ami-relay.js')) as NodeModule,
  relayCommand: requireFromHere(path.join(DIST, 'nodes/ami-relay-command/ami-relay-command.js')) as NodeModule,
  allowlist: requireFromHere(path.join(DIST, 'nodes/ami-allowlist/ami-allowlist.js')) as NodeModule,
  firewall: requireFromHere(path.join(DIST, 'nodes/ami-firewall/ami-firewall.js')) as NodeModule,
  opticalRead: requireFromHere(path.join(DIST, 'nodes/ami-optical-read/ami-optical-read.js')) as NodeModule,
  firmware: requireFromHere(path.join(DIST, 'nodes/ami-firmware/ami-firmware.js')) as NodeModule,
  firmwareRollout: requireFromHere(path.join(DIST, 'nodes/ami-firmware-rollout/ami-firmware-rollout.js')) as NodeModule,
};
export const allNodes = Object.values(nodes);

/** Core nodes the shipped flows use, from the Node-RED the tests run against. */
export const coreNodes = {
  inject: requireFromHere('@node-red/nodes/core/common/20-inject.js') as NodeModule,
  debug: requireFromHere('@node-red/nodes/core/common/21-debug.js') as NodeModule,
  comment: requireFromHere('@node-red/nodes/core/common/90-comment.js') as NodeModule,
  catch: requireFromHere('@node-red/nodes/core/common/25-catch.js') as NodeModule,
  func: requireFromHere('@node-red/nodes/core/function/10-function.js') as NodeModule,
  switch: requireFromHere('@node-red/nodes/core/function/10-switch.js') as NodeModule,
};

export const gatewayHealth = (
  requireFromHere(path.join(DIST, 'src/appliance/health.js')) as { gatewayHealth: HealthRegistry }
).gatewayHealth;

export function initHelper(): typeof helper {
  helper.init(requireFromHere.resolve('node-red'));
  return helper;
}

/** Resolves with the next message a node receives on its input. */
export function nextInput(node: { once(event: 'input', listener: (msg: Record<string, unknown>) => void): unknown }) {
  return new Promise<Record<string, unknown>>((resolve) => node.once('input', resolve));
}
