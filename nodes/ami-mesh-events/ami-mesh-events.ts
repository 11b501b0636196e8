import type { Node, NodeAPI, NodeDef } from 'node-red';
import type { MeshRegistryEvent } from '../../src/mesh/events.js';
import type { MeshEndpointNode } from '../shared/types.js';

interface MeshEventsDef extends NodeDef {
  endpoint: string;
  joined: boolean;
  updated: boolean;
  expired: boolean;
  removed: boolean;
}

export = function register(RED: NodeAPI): void {
  function AmiMeshEvents(this: Node, def: MeshEventsDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const endpoint = RED.nodes.getNode(def.endpoint) as MeshEndpointNode | null;
    if (!endpoint) {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-mesh-events.status.no-endpoint' });
      node.error(RED._('ami-mesh-events.errors.no-endpoint'));
      return;
    }
    // Flows saved before a kind existed get every kind.
    const wanted: Record<MeshRegistryEvent['event'], boolean> = {
      joined: def.joined !== false,
      updated: def.updated !== false,
      expired: def.expired !== false,
      removed: def.removed !== false,
      replaced: def.removed !== false,
    };
    const counts = { joined: 0, updated: 0, expired: 0, removed: 0 };
    let statusTimer: NodeJS.Timeout | undefined;
    function showCounts(): void {
      if (statusTimer) return;
      statusTimer = setTimeout(() => {
        statusTimer = undefined;
        node.status({ fill: 'green', shape: 'dot', text: RED._('ami-mesh-events.status.counts', counts) });
      }, 250);
    }
    endpoint.register(node, {
      registry: (event: MeshRegistryEvent) => {
        if (event.event !== 'replaced') counts[event.event] += 1;
        showCounts();
        if (!wanted[event.event]) return;
        node.send({ topic: event.event, payload: event.meter, meter: event.meter.endpoint });
      },
    });
    node.on('close', (done: () => void) => {
      clearTimeout(statusTimer);
      endpoint.deregister(node).then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }
  RED.nodes.registerType('ami-mesh-events', AmiMeshEvents);
};
