import { readFileSync } from 'node:fs';
import type { NodeAPI, NodeDef } from 'node-red';
import type { Request, Response } from 'express';
import { MeterRegistry } from '../../src/mesh/registry.js';
import { MeshClient } from '../../src/coap/client/client.js';
import { RFC7252_TRANSMISSION } from '../../src/coap/client/parameters.js';
import { onRegistryEvents, type MeshRegistryEvent } from '../../src/mesh/events.js';
import { ResourceDirectory } from '../../src/mesh/rd.js';
import type { DatabaseLease } from '../../src/store/database.js';
import {
  DEFAULT_ACCEPT_TIMEOUT_MS,
  DEFAULT_RETRY_AFTER_SECONDS,
  MeshEndpoint,
  RECEIVE_BUFFER_BYTES,
  type MeshResource,
} from '../../src/coap/endpoint.js';
import { formatCoapUrl } from '../../src/coap/url.js';
import { explainListenError } from '../../src/coap/server.js';
import { gatewayHealth } from '../../src/appliance/health.js';
import { SerialRadioLink, listSerialPorts } from '../../src/mesh/radio-link.js';
import { LowpanTransport } from '../../src/mesh/lowpan-transport.js';
import { parseRadioSettings, RadioSettingsError, type RadioSettingField, type RadioSettings } from '../../src/mesh/radio-settings.js';
import { ConfigUsers } from '../shared/config-users.js';
import { booleanProperty, NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';
import { MeshAllowlist } from '../../src/mesh/allowlist.js';
import { registerHealthRoute } from '../shared/health-route.js';
import type { MeshEndpointNode, StoreNode } from '../shared/types.js';

interface MeshEndpointDef extends NodeDef {
  bind: string;
  port: string;
  acceptTimeout: string;
  retryAfter: string;
  /** Optional: with a store, the endpoint is also the resource directory (RFC 9176). */
  store?: string;
  maxMeters?: string;
  /** Mesh prefixes allowed to reach the endpoint (commas or spaces); empty: every source. */
  allow?: string;
  /**
   * Serve data requests only to sources a registered meter has (the resource
   * directory stays open). A checkbox (boolean), or "true"/"false" from an
   * environment reference such as ${AMI_MESH_REGISTERED_ONLY}.
   */
  registeredOnly?: boolean | string;
  /** Requests to meters: RFC 7252 ACK_TIMEOUT in ms (default 2000). */
  ackTimeout?: string;
  /** Requests to meters: RFC 7252 MAX_RETRANSMIT (default 4). */
  maxRetransmit?: string;
  /** Requests to meters outstanding at once across the mesh (default 64). */
  maxConcurrent?: string;
  /** 'udp' (default): the OS's IPv6 interface; 'radio': the serial 802.15.4 radio (6LoWPAN), issue 8. */
  transport?: string;
  /** The radio's serial port (a /dev path, better /dev/serial/by-id/...). */
  radioPath?: string;
  radioBaud?: string;
  /** 'none' (default) or 'rssi-lqi' (docs/serial-radio.md). */
  radioMetadata?: string;
  /** The gateway's EUI-64 on the radio, 16 hex digits. */
  radioMac?: string;
  /** The PAN ID, hex (0xabcd or abcd). */
  radioPan?: string;
  /** The PAN's shared contexts, context 0 first: prefixes separated by commas or spaces. */
  radioContexts?: string;
}

/** The dialog's label of each radio setting, for the error the node reports. */
const RADIO_LABELS: Record<RadioSettingField, string> = {
  path: 'Serial port',
  baudRate: 'Baud rate',
  metadata: 'Metadata',
  mac: 'MAC address',
  panId: 'PAN ID',
  contexts: 'Contexts',
};

/** The radio settings of a mesh endpoint, checked; NodeConfigError names the field. */
function radioSettings(def: MeshEndpointDef): RadioSettings {
  try {
    return parseRadioSettings({
      path: stringProperty(def.radioPath),
      baudRate: stringProperty(def.radioBaud),
      metadata: stringProperty(def.radioMetadata),
      mac: stringProperty(def.radioMac),
      pan: stringProperty(def.radioPan),
      contexts: stringProperty(def.radioContexts),
    });
  } catch (err) {
    if (err instanceof RadioSettingsError) throw new NodeConfigError(`${RADIO_LABELS[err.field]}: ${err.message}`);
    throw err;
  }
}

const DEFAULT_MAX_CONCURRENT = 64;

/**
 * Registrations written at once; beyond this a reconnect storm is told to come back (5.03).
 * 128 keeps a storm's peak memory low (each admitted request holds its CoAP objects until its
 * batch is on disk) and costs no registration time: LevelDB still commits them in large batches.
 */
const RD_MAX_IN_FLIGHT = 128;
const RD_RETRY_AFTER_SECONDS = 20;
const DEFAULT_MAX_METERS = 20_000;

/** The registries of deployed mesh endpoints, for GET /ami/mesh/meters. */
const registries = new Map<string, { name: string; registry: () => MeterRegistry | undefined }>();
const routedApps = new WeakSet<object>();

/**
 * Whether any of Node-RED's loggers writes debug lines. Joins are logged at
 * debug level; in a reconnect storm, translating that line for each of
 * thousands of meters when no logger writes it is work and garbage for
 * nothing. Logging settings not found (a test runtime) count as yes.
 */
function logsDebug(RED: NodeAPI): boolean {
  const logging: unknown = (RED.settings as unknown as { logging?: unknown }).logging;
  if (typeof logging !== 'object' || logging === null) return true;
  return Object.values(logging as Record<string, unknown>).some((logger) => {
    const level = typeof logger === 'object' && logger !== null ? (logger as { level?: unknown }).level : undefined;
    return level === 'debug' || level === 'trace';
  });
}

function registerMeshRoutes(RED: NodeAPI): void {
  const app = RED.httpAdmin;
  if (routedApps.has(app)) return;
  routedApps.add(app);
  // The edit dialog's port list; { unavailable } says why there is none (no udev in a container, ...).
  app.get('/ami/serial-ports', RED.auth.needsPermission('ami-mesh-endpoint.read'), (_req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    listSerialPorts().then(
      (result) => res.json(result),
      (err: Error) => res.json({ unavailable: err.message }),
    );
  });
  app.get('/ami/mesh/meters', RED.auth.needsPermission('ami-mesh-endpoint.read'), (_req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    const endpoints = [...registries.entries()].map(([id, entry]) => {
      const registry = entry.registry();
      return { id, name: entry.name, registry: registry !== undefined, meters: registry ? registry.list() : [] };
    });
    res.json({ endpoints });
  });
}

/**
 * True when the kernel makes IPv6 sockets IPv6-only by default
 * (net.ipv6.bindv6only = 1): bound to ::, the endpoint then does not hear
 * IPv4 meters.
 */
function ipv6OnlyByDefault(): boolean {
  try {
    return readFileSync('/proc/sys/net/ipv6/bindv6only', 'utf8').trim() === '1';
  } catch {
    return false;
  }
}

const DEFAULT_BIND = '::1';
const DEFAULT_PORT = 5683;
const LISTEN_RETRY_MS = 5000;

export = function register(RED: NodeAPI): void {
  registerHealthRoute(RED);
  registerMeshRoutes(RED);

  function AmiMeshEndpoint(this: MeshEndpointNode, def: MeshEndpointDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const users = new ConfigUsers();
    const removers = new Map<string, () => void>();
    const healthKey = `mesh endpoint ${node.id}`;
    let endpoint: MeshEndpoint | undefined;
    let retryTimer: NodeJS.Timeout | undefined;
    let configError: string | undefined;
    let bind = DEFAULT_BIND;
    let port = DEFAULT_PORT;
    let acceptTimeoutMs = DEFAULT_ACCEPT_TIMEOUT_MS;
    let retryAfterSeconds = DEFAULT_RETRY_AFTER_SECONDS;
    const store = def.store ? (RED.nodes.getNode(def.store) as StoreNode | null) : null;
    let maxMeters = DEFAULT_MAX_METERS;
    let allowlist: MeshAllowlist | undefined;
    let registeredOnly = false;
    let registry: MeterRegistry | undefined;
    let registryLease: DatabaseLease | undefined;
    let registryOpening: Promise<void> | undefined;
    let closed = false;
    let ackTimeoutMs = RFC7252_TRANSMISSION.ackTimeoutMs;
    let maxRetransmit = RFC7252_TRANSMISSION.maxRetransmit;
    let maxConcurrent = DEFAULT_MAX_CONCURRENT;
    let client: Promise<MeshClient> | undefined;
    let radio: RadioSettings | undefined;
    let radioLink: SerialRadioLink | undefined;
    let lowpan: LowpanTransport | undefined;
    /** Registrations whose RSSI/LQI came from the radio (not from the meter), so newer measurements replace them. */
    const radioMeasured = new Set<string>();
    const registryListeners = new Map<string, (event: MeshRegistryEvent) => void>();
    /** Resources users serve on the endpoint (the firmware images), with their user: added again when the endpoint reopens. */
    const userResources = new Map<MeshResource, { user: string; remove: () => void }>();
    let stopForwarding: (() => void) | undefined;
    registries.set(node.id, { name: node.name ?? '', registry: () => registry });
    try {
      maxMeters = numberProperty('Max meters', def.maxMeters, DEFAULT_MAX_METERS, 1, 1_000_000);
      try {
        allowlist = MeshAllowlist.parse(stringProperty(def.allow));
      } catch (err) {
        throw new NodeConfigError(`Allowed sources: ${(err as Error).message}`);
      }
      registeredOnly = booleanProperty('Registered meters only', def.registeredOnly, false);
      // Without a registry no meter could ever count as registered: every reading would be dropped.
      if (registeredOnly && !store) throw new NodeConfigError(RED._('ami-mesh-endpoint.errors.registered-only-needs-store'));
      bind = stringProperty(def.bind, DEFAULT_BIND);
      port = numberProperty('Port', def.port, DEFAULT_PORT, 0, 65535);
      acceptTimeoutMs = numberProperty('Accept timeout', def.acceptTimeout, DEFAULT_ACCEPT_TIMEOUT_MS, 100, 60_000);
      retryAfterSeconds = numberProperty('Retry after', def.retryAfter, DEFAULT_RETRY_AFTER_SECONDS, 1, 86_400);
      ackTimeoutMs = numberProperty('ACK timeout', def.ackTimeout, ackTimeoutMs, 10, 60_000);
      maxRetransmit = numberProperty('Retransmissions', def.maxRetransmit, maxRetransmit, 0, 10);
      maxConcurrent = numberProperty('Requests in flight', def.maxConcurrent, maxConcurrent, 1, 10_000);
      const transport = stringProperty(def.transport, 'udp');
      if (transport !== 'udp' && transport !== 'radio') throw new NodeConfigError(`Transport must be udp or radio, got "${transport}"`);
      if (transport === 'radio') radio = radioSettings(def);
    } catch (err) {
      configError = (err as Error).message;
      node.error(`${RED._('ami-mesh-endpoint.errors.config')}: ${configError}`);
    }

    function open(): void {
      if (configError !== undefined) {
        gatewayHealth.setProblem(healthKey, configError);
        users.status({ fill: 'red', shape: 'ring', text: RED._('ami-mesh-endpoint.status.misconfigured') });
        return;
      }
      const list = allowlist;
      const viaRadio = radio ? openRadio(radio) : undefined;
      const mesh = new MeshEndpoint({
        // Over the radio: the same endpoint on a socket of the 6LoWPAN transport (bind only names the family).
        bind: viaRadio ? '::' : bind,
        port,
        ...(viaRadio ? { socket: () => viaRadio.socket(port) } : {}),
        acceptTimeoutMs,
        retryAfterSeconds,
        ...(list && !list.allowsAll ? { allowSource: (address: string) => list.allows(address) } : {}),
        // Until the registry has loaded, no meter counts as registered: their readings go unanswered
        // for that moment and are retransmitted.
        ...(registeredOnly ? { isRegisteredSource: (address: string) => registry?.hasAddress(address) ?? false } : {}),
      });
      endpoint = mesh;
      for (const [resource, served] of userResources) served.remove = mesh.addResource(resource);
      users.status({ fill: 'yellow', shape: 'ring', text: RED._('ami-mesh-endpoint.status.starting') });
      mesh.on('received', () => gatewayHealth.increment('meshReceived'));
      // Counted, logged at debug only: a scan from outside must not flood the log.
      mesh.on('dropped', (peer) => {
        gatewayHealth.increment('meshDropped');
        node.debug(`dropped a datagram from [${peer.address}]:${peer.port}: not in the allowed mesh prefixes`);
      });
      mesh.on('unregistered', (peer, path) => {
        gatewayHealth.increment('meshDroppedUnregistered');
        node.debug(`dropped a request for ${path} from [${peer.address}]:${peer.port}: no registered meter has that address`);
      });
      mesh.on('duplicate', (peer, messageId, answered) => {
        gatewayHealth.increment('meshDuplicates');
        node.debug(`a copy of message ${messageId} from [${peer.address}]:${peer.port} ${answered ? 'was answered again' : 'waits for the first answer'}, not processed again`);
      });
      mesh.on('malformed', (peer, reason) => {
        gatewayHealth.increment('meshMalformed');
        node.debug(`dropped a malformed datagram from [${peer.address}]:${peer.port}: ${reason}`);
      });
      mesh.on('deferred', (_uplink, reason) => {
        gatewayHealth.increment('meshDeferred');
        node.debug(`deferred a reading (5.03): ${reason}`);
      });
      mesh.on('rejected', (reason, message, peer) => {
        gatewayHealth.increment('meshRejected');
        node.warn(`${RED._('ami-mesh-endpoint.errors.rejected', { peer: `[${peer.address}]:${peer.port}` })} (${reason}): ${message}`);
      });
      mesh.on('error', (err) => node.error(`${RED._('ami-mesh-endpoint.errors.runtime')}: ${err.message}`));
      if (store) {
        // The resource directory is served once the registry is loaded; until then /rd is 4.04.
        registryOpening ??= openRegistry(store).catch((err: Error) => {
          registryOpening = undefined;
          gatewayHealth.setProblem(`${healthKey} registry`, err.message);
          node.error(`${RED._('ami-mesh-endpoint.errors.registry')}: ${err.message}`);
        });
        void registryOpening.then(() => {
          if (!registry || endpoint !== mesh) return;
          const directory = new ResourceDirectory(registry, { maxInFlight: RD_MAX_IN_FLIGHT, retryAfterSeconds: RD_RETRY_AFTER_SECONDS });
          removers.set('rd', mesh.addResource(directory));
          node.log(RED._('ami-mesh-endpoint.log.registry', { meters: registry.size }));
        });
      }
      listen(mesh);
    }

    async function openRegistry(storeNode: StoreNode): Promise<void> {
      const lease = await storeNode.acquire();
      let opened: MeterRegistry;
      try {
        opened = await MeterRegistry.open(lease.db, { maxMeters });
      } catch (err) {
        await lease.release();
        throw err;
      }
      if (closed) {
        await opened.close();
        await lease.release();
        return;
      }
      registryLease = lease;
      registry = opened;
      // One forwarder for all users: `mesh events` nodes registered before the registry loaded get events too.
      stopForwarding = onRegistryEvents(opened, (event) => {
        for (const listener of registryListeners.values()) listener(event);
      });
      const joinsLogged = logsDebug(RED);
      opened.on('joined', (meter) => {
        if (joinsLogged) node.debug(RED._('ami-mesh-endpoint.log.joined', { endpoint: meter.endpoint, address: `[${meter.address.address}]:${meter.address.port}` }));
        recordRadioMetrics(opened, meter);
      });
      // Each refresh of a registration brings the radio's newer measurement (the relay's link gate reads it).
      opened.on('updated', (meter) => recordRadioMetrics(opened, meter));
      opened.on('removed', (meter, reason) => {
        if (reason === 'expired') node.log(RED._('ami-mesh-endpoint.log.expired', { endpoint: meter.endpoint, reason }));
      });
    }

    /**
     * Over the radio the gateway hears each meter's frames itself: a meter
     * that joins without reporting its own RSSI/LQI gets what the radio
     * measured on its last frame (the registration's), so `mesh topology`
     * can flag weak links. Metrics the meter reported are left as they are.
     */
    function recordRadioMetrics(opened: MeterRegistry, meter: { id: string; endpoint: string; sector?: string; address: { address: string }; metrics: { rssi?: number; lqi?: number } }): void {
      const heard = lowpan?.neighbour(meter.address.address);
      if (!heard) return;
      // Values the meter reported itself stay; values the radio measured are replaced by newer ones.
      const ours = radioMeasured.has(meter.id);
      const metrics = {
        ...((meter.metrics.rssi === undefined || ours) && heard.rssi !== undefined && heard.rssi !== meter.metrics.rssi ? { rssi: heard.rssi } : {}),
        ...((meter.metrics.lqi === undefined || ours) && heard.lqi !== undefined && heard.lqi !== meter.metrics.lqi ? { lqi: heard.lqi } : {}),
      };
      // Equal values write nothing, so the 'updated' this write causes ends here.
      if (Object.keys(metrics).length === 0) return;
      radioMeasured.add(meter.id);
      opened.updateMetrics(meter.endpoint, metrics, meter.sector).catch((err: Error) => node.debug(`radio metrics for ${meter.endpoint}: ${err.message}`));
    }

    async function closeRegistry(): Promise<void> {
      const current = registryOpening;
      registryOpening = undefined;
      await current;
      const opened = registry;
      const lease = registryLease;
      registry = undefined;
      registryLease = undefined;
      stopForwarding?.();
      stopForwarding = undefined;
      await opened?.close();
      await lease?.release();
    }

    /**
     * The serial radio and its 6LoWPAN transport, opened with the endpoint. The
     * link reopens by itself after an unplug; its state shows in the users'
     * status and in /ami/health.
     */
    function openRadio(settings: RadioSettings): LowpanTransport {
      if (lowpan) return lowpan;
      const link = new SerialRadioLink({ path: settings.path, baudRate: settings.baudRate, metadata: settings.metadata });
      const transport = new LowpanTransport({ link, mac: settings.mac, panId: settings.panId, contexts: settings.contexts });
      link.on('up', (up) => {
        gatewayHealth.setProblem(`${healthKey} radio`, undefined);
        node.log(RED._('ami-mesh-endpoint.log.radio-up', { path: settings.path, device: up.device }));
        if (endpoint?.port !== undefined) users.status({ fill: 'green', shape: 'dot', text: `radio ${settings.path} [${transport.address}]:${endpoint.port}` });
      });
      const down = (reason: string): void => {
        gatewayHealth.setProblem(`${healthKey} radio`, `the radio on ${settings.path} is down: ${reason}`);
        users.status({ fill: 'red', shape: 'ring', text: RED._('ami-mesh-endpoint.status.radio-down') });
      };
      link.on('down', (event) => {
        down(event.reason);
        node.warn(RED._('ami-mesh-endpoint.errors.radio-down', { path: settings.path, reason: event.reason }));
      });
      // A radio that never opened (wrong port, not plugged in at boot, no permission) never goes 'down':
      // each failed attempt says so, so health and status tell the operator.
      link.on('retry', (event) => down(event.reason));
      link.on('error', (err) => {
        // Open failures other than a missing device (no permission, port busy) come once per distinct reason.
        if ((err as { code?: string }).code === 'OPEN_FAILED') node.warn(`radio ${settings.path}: ${err.message}`);
        else node.debug(`radio ${settings.path}: ${err.message}`);
      });
      void link.open();
      radioLink = link;
      lowpan = transport;
      return transport;
    }

    async function closeRadio(): Promise<void> {
      const transport = lowpan;
      const link = radioLink;
      lowpan = undefined;
      radioLink = undefined;
      // Closing the link emits 'down' ("closed"): that is not a problem to report.
      link?.removeAllListeners('down');
      link?.removeAllListeners('retry');
      link?.removeAllListeners('up');
      await transport?.close();
      await link?.close();
      gatewayHealth.setProblem(`${healthKey} radio`, undefined);
    }

    function listen(mesh: MeshEndpoint): void {
      mesh.start().then(
        () => {
          const where = lowpan ? `radio ${radio?.path ?? ''} [${lowpan.address}]:${mesh.port ?? port}` : formatCoapUrl(bind, mesh.port ?? port);
          node.log(RED._('ami-mesh-endpoint.log.listening', { url: where }));
          const granted = mesh.receiveBufferBytes;
          // Linux reports twice the buffer it keeps; below half the request, bursts may be dropped.
          if (granted !== undefined && granted < RECEIVE_BUFFER_BYTES) {
            node.warn(
              `the mesh socket's receive buffer is ${Math.round(granted / 1024)} KiB, not the ${RECEIVE_BUFFER_BYTES / 1024} KiB asked for: raise net.core.rmem_max (sysctl) so bursts from many meters are not dropped`,
            );
          }
          if (!lowpan && bind === '::' && ipv6OnlyByDefault()) node.warn(RED._('ami-mesh-endpoint.errors.v6only'));
          gatewayHealth.setProblem(healthKey, undefined);
          if (radioLink && !radioLink.isUp) {
            // Until the radio's 'up' (or a failed attempt with its reason): meters cannot reach the endpoint yet.
            gatewayHealth.setProblem(`${healthKey} radio`, `the radio on ${radio?.path ?? ''} is not open yet`);
            users.status({ fill: 'red', shape: 'ring', text: RED._('ami-mesh-endpoint.status.radio-down') });
          } else {
            users.status({ fill: 'green', shape: 'dot', text: where.replace('coap://', '') });
          }
        },
        (err: NodeJS.ErrnoException) => {
          const explained = explainListenError(err, bind);
          node.error(`${RED._('ami-mesh-endpoint.errors.listen', { bind, port, seconds: LISTEN_RETRY_MS / 1000 })}: ${explained}`);
          gatewayHealth.setProblem(healthKey, `cannot listen on [${bind}]:${port}: ${explained}`);
          const text =
            err.code === 'EAFNOSUPPORT'
              ? RED._('ami-mesh-endpoint.status.no-ipv6')
              : err.code === 'EADDRNOTAVAIL'
                ? RED._('ami-mesh-endpoint.status.address-not-available')
                : (err.code ?? err.message);
          users.status({ fill: 'red', shape: 'ring', text });
          // The port may be held for a moment by a process that is going away: keep trying while needed.
          retryTimer = setTimeout(() => {
            retryTimer = undefined;
            if (endpoint === mesh) void listen(mesh);
          }, LISTEN_RETRY_MS);
        },
      );
    }

    node.register = (user, listeners) => {
      if (users.register(user)) open();
      const mesh = endpoint;
      const removeReading = mesh && listeners.reading ? mesh.onUplink(listeners.reading) : undefined;
      const removeDlms = mesh && listeners.dlms ? mesh.onDlmsUplink(listeners.dlms) : undefined;
      if (listeners.registry) registryListeners.set(user.id, listeners.registry);
      removers.set(user.id, () => {
        removeReading?.();
        removeDlms?.();
        registryListeners.delete(user.id);
      });
    };

    node.addResource = (user, resource) => {
      userResources.set(resource, { user: user.id, remove: endpoint?.addResource(resource) ?? (() => undefined) });
      return () => {
        const served = userResources.get(resource);
        if (served?.user !== user.id) return;
        served.remove();
        userResources.delete(resource);
      };
    };

    node.meterRegistry = () => registry;

    node.meshClient = () => {
      if (configError !== undefined) return Promise.reject(new Error(configError));
      // Over the radio the client has a port of its own on the same 6LoWPAN transport.
      if (lowpan) client ??= Promise.resolve(new MeshClient(lowpan.transport(), { transmission: { ackTimeoutMs, maxRetransmit }, maxConcurrent }));
      client ??= MeshClient.open(
        // The client's own socket on the endpoint's address: meters answer whichever port asked.
        { bind, receiveBufferBytes: RECEIVE_BUFFER_BYTES },
        {
          transmission: { ackTimeoutMs, maxRetransmit },
          maxConcurrent,
        },
      ).catch((err: NodeJS.ErrnoException) => {
        client = undefined;
        throw new Error(`cannot open the mesh client socket on [${bind}]: ${explainListenError(err, bind)}`);
      });
      return client;
    };

    /** Closes the client: requests still waiting fail with CLOSED. */
    async function closeClient(): Promise<void> {
      const opening = client;
      client = undefined;
      const opened = await opening?.catch(() => undefined);
      await opened?.close();
    }

    node.lookupMeter = (address, endpointName) => registry?.meterAt(address, endpointName);

    node.deregister = async (user) => {
      removers.get(user.id)?.();
      removers.delete(user.id);
      for (const [resource, served] of userResources) {
        if (served.user !== user.id) continue;
        served.remove();
        userResources.delete(resource);
      }
      if (users.deregister(user)) gatewayHealth.setProblem(healthKey, undefined);
      if (users.size === 0) await closeClient();
      if (users.size === 0 && endpoint) {
        clearTimeout(retryTimer);
        const closing = endpoint;
        endpoint = undefined;
        await closing.stop();
        await closeRadio();
      }
    };

    node.on('close', (done: () => void) => {
      closed = true;
      clearTimeout(retryTimer);
      registries.delete(node.id);
      gatewayHealth.setProblem(healthKey, undefined);
      gatewayHealth.setProblem(`${healthKey} registry`, undefined);
      const closing = endpoint;
      endpoint = undefined;
      Promise.all([closing ? closing.stop() : Promise.resolve(), closeClient()])
        .then(() => closeRadio())
        .then(() => closeRegistry())
        .then(done, (err: Error) => {
          node.error(err.message);
          done();
        });
    });
  }

  RED.nodes.registerType('ami-mesh-endpoint', AmiMeshEndpoint);
};
