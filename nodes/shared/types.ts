import type { Node, NodeMessage } from 'node-red';
import type { DlmsUplinkListener, UplinkListener } from '../../src/coap/endpoint.js';
import type { MeterReading } from '../../src/coap/reading.js';
import type { HesRecord } from '../../src/hes/contract.js';
import type { LinkMetrics, MeterRegistry, RegisteredMeter } from '../../src/mesh/registry.js';
import type { MeshClient } from '../../src/coap/client/client.js';
import type { MeshRegistryEvent } from '../../src/mesh/events.js';

/** What `mesh in`, `mesh request` and `mesh events` see of their `ami-mesh-endpoint` config node. */
export interface MeshEndpointNode extends Node {
  register(
    user: Node,
    listeners: { reading?: UplinkListener; dlms?: DlmsUplinkListener; registry?: (event: MeshRegistryEvent) => void },
  ): void;
  deregister(user: Node): Promise<void>;
  /** The congestion-controlled client towards meters, opened on first use and owned by the config node. */
  meshClient(): Promise<MeshClient>;
  /** The meter registry, once loaded (undefined without a store). */
  meterRegistry(): MeterRegistry | undefined;
  /**
   * The registration a request from `address` belongs to (see
   * MeterRegistry.meterAt), undefined without a registry or when none (or
   * more than one, unnamed) registered from that IP.
   */
  lookupMeter(address: string, endpoint?: string): RegisteredMeter | undefined;
}

/** The registration a message's source address belongs to, in `mesh in` messages. */
export interface MeshRegistration {
  /** The registration's id (its Location-Path is /rd/<id>). */
  id: string;
  /** The endpoint name it registered with (`ep`). */
  endpoint: string;
  /** Its sector (`d`), if it gave one. */
  sector?: string;
}

/** What an `hes out` node sees of its `ami-hes-endpoint` config node. */
export interface HesEndpointNode extends Node {
  register(user: Node): void;
  deregister(user: Node): Promise<void>;
  /**
   * Resolves with the active HES endpoint once the HES accepted the record,
   * or (durable) once the record is in the outbox on disk; rejects with a
   * HesUplinkError (QUEUE_FULL when the outbox budget is used up).
   */
  deliver(record: HesRecord): Promise<string>;
  /** The HES sites, primary first, as configured. */
  sites: string[];
  /** True when records go to the durable outbox: deliver() then resolves once the record is on disk. */
  durable: boolean;
  /** The gateway's identity towards the HES. */
  gatewayId: string;
}

/** What a keyring's users see of the `ami-store` config node. */
export interface StoreNode extends Node {
  /**
   * A lease on the store's database for one user, who releases it after its
   * last write (the handle is shared and closes with the last lease).
   */
  acquire(): Promise<import('../../src/store/database.js').DatabaseLease>;
  readonly location: string;
}

/** What `dlms decode` / `dlms encode` see of the `ami-keyring` config node. */
export interface KeyringNode extends Node {
  register(user: Node): void;
  deregister(user: Node): Promise<void>;
  /** Resolves once keys are loaded; rejects with the reason the keyring cannot open. */
  keyring(): Promise<import('../../src/keys/keyring.js').Keyring>;
  /** Asks the HES for keys now (all with force, or some meters). */
  syncNow(request: { force?: boolean; systemTitles?: string[] }): Promise<import('../../src/keys/sync.js').KeySyncResult>;
}

/** The message a `mesh in` node sends for each reading. */
export interface MeshReadingMessage extends NodeMessage {
  topic: string;
  payload: MeterReading;
  /** Settled by the node that takes responsibility for the reading (hes out). */
  exchangeId: string;
  peer: { address: string; port: number };
  /** The meter registered from the peer's IP address, when there is one. */
  registration?: MeshRegistration;
  /** The link metrics that registration last reported, when it reported any. */
  link?: LinkMetrics;
}

/** The message a `mesh in` node sends for each DLMS frame: still ciphered, nothing trusted yet. */
export interface MeshDlmsMessage extends NodeMessage {
  topic: string;
  payload: Buffer;
  exchangeId: string;
  /** The exchange's key before decoding; `dlms decode` re-keys it to the record key. */
  frameKey: string;
  /** The meter's endpoint name, when it sent `?ep=`. */
  meter?: string;
  peer: { address: string; port: number };
  /** The meter registered from the peer's IP address, when there is one. */
  registration?: MeshRegistration;
  /** The link metrics that registration last reported, when it reported any. */
  link?: LinkMetrics;
}
