import type { Node, NodeAPI, NodeDef } from 'node-red';
import { settleExchange } from '../../src/coap/exchanges.js';
import type { DlmsUplink, Uplink } from '../../src/coap/endpoint.js';
import { readingKey } from '../../src/coap/reading.js';
import type { LinkMetrics } from '../../src/mesh/registry.js';
import type { MeshDlmsMessage, MeshEndpointNode, MeshReadingMessage, MeshRegistration } from '../shared/types.js';

interface MeshInDef extends NodeDef {
  endpoint: string;
  ackMode: 'accepted' | 'received';
  /** Missing in flows saved before DLMS frames existed: those received readings. */
  resource?: 'readings' | 'dlms';
}

/**
 * What the registry knows of the meter at `address`: its registration and,
 * when it reported any, its link metrics. Copies, so that a flow changing
 * the message cannot change the registry's frozen records.
 */
function meterContext(endpoint: MeshEndpointNode, address: string, name: string | undefined): { registration?: MeshRegistration; link?: LinkMetrics } {
  const meter = endpoint.lookupMeter(address, name);
  if (!meter) return {};
  const registration: MeshRegistration = { id: meter.id, endpoint: meter.endpoint, ...(meter.sector !== undefined ? { sector: meter.sector } : {}) };
  // The registry's metrics hold only the values reported (no undefined members): a copy is the message's.
  const link: LinkMetrics = { ...meter.metrics };
  return { registration, ...(Object.keys(link).length > 0 ? { link } : {}) };
}

export = function register(RED: NodeAPI): void {
  function AmiMeshIn(this: Node, def: MeshInDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const ackMode = def.ackMode === 'received' ? 'received' : 'accepted';
    const resource = def.resource === 'dlms' ? 'dlms' : 'readings';
    const endpoint = RED.nodes.getNode(def.endpoint) as MeshEndpointNode | null;
    if (!endpoint) {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-mesh-in.status.no-endpoint' });
      node.error(RED._('ami-mesh-in.errors.no-endpoint'));
      return;
    }
    if (resource === 'dlms') {
      endpoint.register(node, {
        dlms: (uplink: DlmsUplink) => {
          const msg: MeshDlmsMessage = {
            topic: uplink.meter ?? uplink.peer.address,
            payload: uplink.frame,
            exchangeId: uplink.exchangeId,
            frameKey: uplink.frameKey,
            peer: uplink.peer,
            ...(uplink.meter !== undefined ? { meter: uplink.meter } : {}),
            ...meterContext(endpoint, uplink.peer.address, uplink.meter),
          };
          node.send(msg);
          if (ackMode === 'received') settleExchange(uplink.exchangeId, uplink.frameKey, { accepted: true });
        },
      });
    } else {
      endpoint.register(node, {
        reading: (uplink: Uplink) => {
          const msg: MeshReadingMessage = {
            topic: uplink.reading.meter,
            payload: uplink.reading,
            exchangeId: uplink.exchangeId,
            peer: uplink.peer,
            ...meterContext(endpoint, uplink.peer.address, uplink.reading.meter),
          };
          node.send(msg);
          // In "received" mode the flow takes responsibility as soon as it has the message.
          if (ackMode === 'received') {
            settleExchange(uplink.exchangeId, readingKey(uplink.reading.meter, uplink.reading.id), { accepted: true });
          }
        },
      });
    }
    node.on('close', (done: () => void) => {
      endpoint.deregister(node).then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }
  RED.nodes.registerType('ami-mesh-in', AmiMeshIn);
};
