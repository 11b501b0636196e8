import os from 'node:os';
import type { NodeAPI, NodeDef } from 'node-red';
import { parseCoapUrl } from '../../src/coap/url.js';
import { DEFAULT_UPLINK_OPTIONS, HesUplink, HesUplinkError } from '../../src/hes/uplink.js';
import { gatewayHealth } from '../../src/appliance/health.js';
import { ConfigUsers } from '../shared/config-users.js';
import { NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';
import { registerHealthRoute } from '../shared/health-route.js';
import { addHesStatusSource, registerHesStatusRoute } from '../shared/hes-route.js';
import { DEFAULT_FAILOVER_OPTIONS } from '../../src/hes/sites.js';
import { publishOutbox, registerOutboxRoutes } from '../shared/outbox-route.js';
import type { BackhaulNode, HesEndpointNode, StoreNode } from '../shared/types.js';
import { readCommandTrust } from '../../src/hes/command-receiver.js';
import { Outbox, OutboxError } from '../../src/store/outbox.js';
import { OutboxDrain, outboxEntryFor } from '../../src/hes/drain.js';
import type { DatabaseLease } from '../../src/store/database.js';

interface HesEndpointDef extends NodeDef {
  primary: string;
  secondary: string;
  gatewayId: string;
  timeout: string;
  /**
   * Optional: with a store, records go to a durable outbox on disk first (the
   * meter is acknowledged once its record is there) and are sent from it.
   */
  store?: string;
  /** Disk budget of the outbox, MiB (default 256). */
  budget?: string;
  /** Failover (docs/hes-uplink.md): latency budget of a batch, probe interval and failback hold, ms. */
  latencyBudget?: string;
  probeInterval?: string;
  failbackHold?: string;
  /** The utility root CA(s) for signed HES commands: PEM text or a PEM file's path (docs/hes-commands.md). */
  commandTrust?: string;
  /** Optional `ami-backhaul` config node: while it reports the tunnel down, nothing is sent and no site is blamed. */
  backhaul?: string;
}

const DEFAULT_BUDGET_MIB = 256;
const DAY_MS = 86_400_000;
/** How long each class may wait for the HES before it is dropped (and counted). */
const OUTBOX_TTL_MS = { alarm: 30 * DAY_MS, event: 14 * DAY_MS, metrology: 7 * DAY_MS };
const SWEEP_EVERY_MS = 60_000;

export = function register(RED: NodeAPI): void {
  registerHealthRoute(RED);
  registerHesStatusRoute(RED);
  registerOutboxRoutes(RED);

  function AmiHesEndpoint(this: HesEndpointNode, def: HesEndpointDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const users = new ConfigUsers();
    const healthKey = `HES ${node.id}`;
    let uplink: HesUplink | undefined;
    let configError: string | undefined;
    const removers: Array<() => void> = [];
    let delivered = 0;
    const store = def.store ? (RED.nodes.getNode(def.store) as StoreNode | null) : null;
    const backhaul = def.backhaul ? (RED.nodes.getNode(def.backhaul) as BackhaulNode | null) : null;
    /** The backhaul as last reported; true when no backhaul is watched. */
    let linkUp = true;
    let budgetBytes = DEFAULT_BUDGET_MIB * 1024 * 1024;
    let durable: Promise<{ outbox: Outbox; drain: OutboxDrain; lease: DatabaseLease }> | undefined;
    let sweepTimer: NodeJS.Timeout | undefined;

    const endpoints = [stringProperty(def.primary), stringProperty(def.secondary)].filter((url) => url !== '');
    let requestTimeoutMs: number = DEFAULT_UPLINK_OPTIONS.requestTimeoutMs;
    const failover = { ...DEFAULT_FAILOVER_OPTIONS };
    try {
      if (endpoints.length === 0) throw new NodeConfigError('no HES address: set the primary (or secondary) HES URL');
      for (const url of endpoints) {
        try {
          parseCoapUrl(url);
        } catch (err) {
          throw new NodeConfigError(`${url}: ${(err as Error).message}`);
        }
      }
      requestTimeoutMs = numberProperty('Timeout', def.timeout, DEFAULT_UPLINK_OPTIONS.requestTimeoutMs, 100, 120_000);
      budgetBytes = numberProperty('Outbox budget', def.budget, DEFAULT_BUDGET_MIB, 1, 1_000_000) * 1024 * 1024;
      failover.latencyBudgetMs = numberProperty('Latency budget', def.latencyBudget, failover.latencyBudgetMs, 50, 120_000);
      failover.probeIntervalMs = numberProperty('Probe interval', def.probeInterval, failover.probeIntervalMs, 0, 3_600_000);
      failover.failbackHoldMs = numberProperty('Failback hold', def.failbackHold, failover.failbackHoldMs, 0, 86_400_000);
      failover.minDwellMs = Math.min(failover.minDwellMs, failover.failbackHoldMs);
      if (def.store && !store) throw new NodeConfigError('the chosen store does not exist');
      if (def.backhaul && !backhaul) throw new NodeConfigError('the chosen backhaul does not exist');
    } catch (err) {
      configError = (err as Error).message;
      node.error(`${RED._('ami-hes-endpoint.errors.config')}: ${configError}`);
    }

    node.sites = endpoints;
    node.durable = store !== null;
    node.gatewayId = stringProperty(def.gatewayId, os.hostname());
    // Signed commands (`hes commands`): the root CA their operators chain to, the store, the site in use.
    // A bad trust anchor turns commands off (the hes commands node says why), not the uplink.
    node.commandTrust = readCommandTrust(stringProperty(def.commandTrust));
    node.storeNode = store;
    node.activeSite = () => uplink?.activeEndpoint ?? endpoints[0] ?? '';

    function open(): void {
      if (configError !== undefined) {
        const problem = configError;
        removers.push(addHesStatusSource(node.id, () => ({ id: node.id, name: node.name ?? '', problem, uplink: null })));
        gatewayHealth.setProblem(healthKey, configError);
        users.status({ fill: 'red', shape: 'ring', text: RED._('ami-hes-endpoint.status.misconfigured') });
        return;
      }
      const link = new HesUplink({
        ...DEFAULT_UPLINK_OPTIONS,
        gateway: node.gatewayId,
        endpoints,
        requestTimeoutMs,
        failover,
        log: { warn: (message) => node.warn(message), info: (message) => node.log(message) },
      });
      uplink = link;
      removers.push(gatewayHealth.addHesSource(() => link.status()));
      removers.push(addHesStatusSource(node.id, () => ({ id: node.id, name: node.name ?? '', problem: null, uplink: link.status() })));
      link.on('delivered', (records, endpoint) => {
        delivered += records.length;
        gatewayHealth.increment('hesDelivered', records.length);
        gatewayHealth.setProblem(healthKey, undefined);
        users.status({ fill: 'green', shape: 'dot', text: RED._('ami-hes-endpoint.status.delivered', { count: delivered, endpoint }) });
      });
      link.on('failed', (err, count) => {
        gatewayHealth.increment('hesFailed', count);
        gatewayHealth.setProblem(healthKey, err.message);
        node.warn(`${RED._('ami-hes-endpoint.errors.delivery', { count })}: ${err.message}`);
        users.status({ fill: 'red', shape: 'ring', text: RED._('ami-hes-endpoint.status.unavailable', { depth: link.depth }) });
      });
      link.on('endpoint', (endpoint) => node.log(RED._('ami-hes-endpoint.log.switched', { endpoint })));
      if (store) {
        durable = openOutbox(store, link);
        durable.catch((err: Error) => {
          gatewayHealth.setProblem(`${healthKey} outbox`, err.message);
          node.error(`${RED._('ami-hes-endpoint.errors.outbox')}: ${err.message}`);
        });
      } else {
        removers.push(gatewayHealth.addDepthSource(() => link.depth));
      }
      removers.push(gatewayHealth.addEndpointSource(() => link.activeEndpoint));
      users.status({ fill: 'yellow', shape: 'ring', text: RED._('ami-hes-endpoint.status.ready', { endpoint: link.activeEndpoint }) });
      if (backhaul?.monitored) watchBackhaul(backhaul, link);
    }

    /**
     * Pauses the uplink and the outbox drain while the tunnel to the HES is
     * down: records wait on disk, sites are not marked down for a cut
     * backhaul, and the backlog drains as soon as OpenVPN reports CONNECTED.
     */
    function watchBackhaul(backhaulNode: BackhaulNode, link: HesUplink): void {
      const apply = (up: boolean, reason: string | undefined): void => {
        if (up === linkUp) return;
        linkUp = up;
        link.setLinkUp(up);
        void durable?.then(({ drain }) => drain.setLinkUp(up, reason), () => undefined);
        if (up) node.log(RED._('ami-hes-endpoint.log.backhaulUp'));
        else {
          node.warn(RED._('ami-hes-endpoint.log.backhaulDown', { reason: reason ?? '' }));
          users.status({ fill: 'yellow', shape: 'ring', text: RED._('ami-hes-endpoint.status.backhaulDown') });
        }
      };
      backhaulNode.register(node, (snapshot) => apply(snapshot.up, snapshot.reason ?? undefined));
      removers.push(() => {
        linkUp = true;
        void backhaulNode.deregister(node);
      });
      // The listener hears only changes: start from the state now (down until OpenVPN has answered).
      const now = backhaulNode.snapshot();
      apply(now.up, now.reason ?? undefined);
    }

    /** The durable outbox in the store and the drain that empties it into `link`. */
    async function openOutbox(storeNode: StoreNode, link: HesUplink): Promise<{ outbox: Outbox; drain: OutboxDrain; lease: DatabaseLease }> {
      const lease = await storeNode.acquire();
      let outbox: Outbox;
      try {
        outbox = await Outbox.open(lease.db, { maxBytes: budgetBytes, ttlMs: OUTBOX_TTL_MS });
      } catch (err) {
        await lease.release();
        throw err;
      }
      const drain = new OutboxDrain(outbox, link);
      drain.on('failed', (err, count, retryInMs) => {
        users.status({ fill: 'red', shape: 'ring', text: RED._('ami-hes-endpoint.status.unavailable', { depth: outbox.depth }) });
        node.debug(`${count} record(s) stay in the outbox (${err.code}); next try in ${Math.round(retryInMs / 1000)} s`);
      });
      drain.on('unreadable', (key) => node.warn(`removed an unreadable outbox record ${key}`));
      drain.on('quarantined', (keys, reason) => {
        gatewayHealth.increment('hesQuarantined', keys.length);
        node.warn(RED._('ami-hes-endpoint.errors.quarantined', { count: keys.length, keys: keys.join(', '), reason }));
      });
      removers.push(gatewayHealth.addDepthSource(() => outbox.depth));
      // GET /ami/queue/stats|peek (`ami-gateway queue`) list it until close() runs the removers.
      removers.push(publishOutbox(RED, node.id, node.name ?? '', outbox));
      sweepTimer = setInterval(() => {
        outbox.sweep().then(
          (expired) => {
            if (expired > 0) node.warn(RED._('ami-hes-endpoint.errors.expired', { count: expired }));
          },
          (err: Error) => node.error(err.message),
        );
      }, SWEEP_EVERY_MS);
      sweepTimer.unref();
      // The backhaul may have been reported down before the outbox was open.
      if (!linkUp) drain.setLinkUp(false, 'backhaul down');
      drain.start();
      const waiting = outbox.depth;
      if (waiting > 0) node.log(RED._('ami-hes-endpoint.log.backlog', { count: waiting }));
      return { outbox, drain, lease };
    }

    async function close(): Promise<void> {
      for (const remove of removers.splice(0)) remove();
      gatewayHealth.setProblem(healthKey, undefined);
      gatewayHealth.setProblem(`${healthKey} outbox`, undefined);
      clearInterval(sweepTimer);
      const closing = uplink;
      uplink = undefined;
      const opened = durable;
      durable = undefined;
      const parts = await opened?.catch(() => undefined);
      // The uplink closes first: it aborts a batch in flight, which ends the drain's loop.
      const uplinkClosed = closing?.close();
      await parts?.drain.stop();
      await uplinkClosed;
      await parts?.outbox.close();
      await parts?.lease.release();
    }

    node.register = (user) => {
      if (users.register(user)) open();
    };
    node.deregister = async (user) => {
      if (users.deregister(user)) await close();
    };
    node.deliver = async (record) => {
      if (!uplink) {
        throw new HesUplinkError('UNAVAILABLE', configError ?? RED._('ami-hes-endpoint.errors.not-open'));
      }
      const link = uplink;
      if (durable) {
        const { outbox, drain } = await durable;
        try {
          await outbox.append(outboxEntryFor(record));
        } catch (err) {
          if (err instanceof OutboxError && err.code === 'FULL') throw new HesUplinkError('QUEUE_FULL', err.message);
          throw new HesUplinkError('UNAVAILABLE', (err as Error).message);
        }
        drain.wake();
        return link.activeEndpoint;
      }
      await link.submit(record);
      return link.activeEndpoint;
    };
    node.on('close', (done: () => void) => {
      close().then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }

  RED.nodes.registerType('ami-hes-endpoint', AmiHesEndpoint);
};
