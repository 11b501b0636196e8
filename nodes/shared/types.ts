import type { Node, NodeMessage } from 'node-red';
import type { UplinkListener } from '../../src/coap/endpoint.js';
import type { MeterReading } from '../../src/coap/reading.js';
import type { HesRecord } from '../../src/hes/contract.js';

/** What a `mesh in` node sees of its `ami-mesh-endpoint` config node. */
export interface MeshEndpointNode extends Node {
  register(user: Node, listener: UplinkListener): void;
  deregister(user: Node): Promise<void>;
}

/** What an `hes out` node sees of its `ami-hes-endpoint` config node. */
export interface HesEndpointNode extends Node {
  register(user: Node): void;
  deregister(user: Node): Promise<void>;
  /** Resolves with the endpoint once the HES accepted the record; rejects with a HesUplinkError. */
  deliver(record: HesRecord): Promise<string>;
}

/** The message a `mesh in` node sends for each reading. */
export interface MeshReadingMessage extends NodeMessage {
  topic: string;
  payload: MeterReading;
  /** Settled by the node that takes responsibility for the reading (hes out). */
  exchangeId: string;
  peer: { address: string; port: number };
}
