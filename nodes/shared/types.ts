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
  /**
   * Serves a further resource (the firmware images) on the endpoint for a
   * registered user, also after the endpoint reopens; returns the function
   * that removes it (deregistering the user removes it too).
   */
  addResource(user: Node, resource: import('../../src/coap/endpoint.js').MeshResource): () => void;
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
  /**
   * For signed HES commands (`hes commands`, docs/hes-commands.md): the
   * utility root CA(s) operator certificates must chain to; undefined when
   * none is set (commands are then refused), `problem` when unusable.
   */
  commandTrust: import('../../src/hes/command-receiver.js').CommandTrustSetting;
  /** The endpoint's store, where `hes commands` keeps pending commands; null without one. */
  storeNode: StoreNode | null;
  /** The HES site requests go to now (the active one), a coap:// URL. */
  activeSite(): string;
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

/**
 * Gets every change of the backhaul's snapshot: `up` and `down` on
 * transitions, `state` for any other change (a new OpenVPN state, a hold,
 * the management connection), `bytecount` when only the byte counters moved.
 */
export type BackhaulListener = (
  snapshot: import('../../src/backhaul/monitor.js').BackhaulSnapshot,
  change: import('../../src/backhaul/monitor.js').BackhaulChange,
) => void;

/**
 * What users (`backhaul status`; the HES endpoint, to pause its outbox drain
 * while the tunnel is down) see of the `ami-backhaul` config node, which owns
 * the connection to OpenVPN's management interface.
 */
export interface BackhaulNode extends Node {
  /**
   * Adds a user: the first one starts the monitor. The listener is not called
   * for the current state: read snapshot() right after registering.
   */
  register(user: Node, listener: BackhaulListener): void;
  /** Removes a user: after the last one the management connection closes. */
  deregister(user: Node): Promise<void>;
  /** The current snapshot (down, with the reason, while nothing is known or the node is misconfigured). */
  snapshot(): import('../../src/backhaul/monitor.js').BackhaulSnapshot;
  /** Ends OpenVPN's hold (`hold release`); rejects with a BackhaulError (NOT_CONNECTED, COMMAND_FAILED, TIMEOUT). */
  holdRelease(): Promise<void>;
  /** soft: SIGUSR1 (reconnect); hard: SIGHUP (re-read the configuration). Rejects with a BackhaulError. */
  restart(kind: 'soft' | 'hard'): Promise<void>;
  /** The management address in use, e.g. `unix:/run/openvpn/ami.sock` ('' when not monitored). */
  readonly address: string;
  /** False when the address is empty: nothing watches the tunnel, and users should not wait for it. */
  readonly monitored: boolean;
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

/** What a `relay command` node hears from its `ami-relay` config node. */
export interface RelayUserListeners {
  /** Every result the service records (final and waiting), whoever issued the command. */
  result?: (result: import('../../src/relay/types.js').RelayResult) => void;
  /** Progress of rolling runs. */
  progress?: (progress: import('../../src/relay/service.js').RelayRunProgress) => void;
}

/** Authorization problems a relay user reports to its catch node. */
export interface RelayRefusal {
  code: 'UNAUTHORIZED' | 'UNVERIFIED_HES_COMMAND';
  message: string;
}

/** What `relay command` nodes and the admin routes see of the `ami-relay` config node, which owns the RelayService. */
export interface RelayServiceNode extends Node {
  register(user: Node, listeners: RelayUserListeners): void;
  deregister(user: Node): Promise<void>;
  /** The service once open; rejects with the reason it cannot open. */
  service(): Promise<import('../../src/relay/service.js').RelayService>;
  /**
   * A local operator's authorization: the operator exists, is enabled, has a
   * relay role, and `totp` is their current code (used up). Rejects with an
   * OperatorAuthError (or OperatorError when the store cannot decide).
   */
  authorizeLocal(operator: string, totp: string): Promise<import('../../src/relay/types.js').RelayAuthorization>;
  /**
   * The verified HES command `id` if it is pending in the HES endpoint's
   * command store for this meter and relay action; undefined otherwise (also
   * when no HES endpoint is configured).
   */
  verifiedHesCommand(id: string): Promise<import('../../src/store/pending-commands.js').PendingCommand | undefined>;
  /** Registered meters whose tag `tag` is `value`, by endpoint name. */
  groupMeters(selector: import('../../src/relay/api.js').RelayGroupSelector): string[];
  /** Meters at once for lists and groups, by default. */
  readonly concurrency: number;
  /** The audit logs' folder. */
  readonly logsDir: string;
}

/** What a `firewall` node sees of its `ami-allowlist` config node: the allowlists, stated once. */
export interface AllowlistNode extends Node {
  /** Adds a user: it gets the allowlist's status (a red ring while its configuration is bad). */
  register(user: Node): void;
  deregister(user: Node): Promise<void>;
  /**
   * The firewall configuration (parsed with parseFirewallConfig): the lists and
   * ports of the node, those left empty taken from its HES and mesh endpoints.
   * Throws a FirewallError BAD_CONFIG when it is not valid.
   */
  config(): import('../../src/firewall/ruleset.js').FirewallConfig;
}

/** What a `firmware rollout` node hears from its `ami-firmware` config node. */
export interface FirmwareUserListeners {
  /** A meter of any rollout finished (entry.outcome set), whoever started the rollout. */
  result?: (entry: import('../../src/firmware/rollout-types.js').MeterRolloutEntry) => void;
  /** A rollout finished. */
  finished?: (summary: import('../../src/firmware/rollout-types.js').RolloutSummary) => void;
}

/** What `firmware rollout` nodes see of the `ami-firmware` config node, which owns the FirmwareRolloutService. */
export interface FirmwareServiceNode extends Node {
  /** Adds a user: it gets the service's state as its status (what keeps it from working, or ready). */
  register(user: Node, listeners: FirmwareUserListeners): void;
  deregister(user: Node): Promise<void>;
  /** The service once open; rejects with an error `code` NOT_READY saying why it is not running. */
  service(): Promise<import('../../src/firmware/rollout.js').FirmwareRolloutService>;
  /** Registered meters whose registry tag `tag` is `value`, by endpoint name. */
  groupMeters(selector: import('../../src/firmware/api.js').FirmwareGroupSelector): string[];
}
