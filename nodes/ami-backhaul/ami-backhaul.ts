import type { Node, NodeAPI, NodeDef } from 'node-red';
import type { Request, Response } from 'express';
import { gatewayHealth } from '../../src/appliance/health.js';
import { DEFAULT_MANAGEMENT_ADDRESS, formatManagementAddress, parseManagementAddress, type ManagementAddress } from '../../src/backhaul/address.js';
import { BackhaulError } from '../../src/backhaul/errors.js';
import { BackhaulMonitor, MAX_BYTECOUNT_INTERVAL_SECONDS, unmonitoredSnapshot, type BackhaulSnapshot } from '../../src/backhaul/monitor.js';
import { registerHealthRoute } from '../shared/health-route.js';
import { booleanProperty, NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';
import type { BackhaulListener, BackhaulNode } from '../shared/types.js';

interface BackhaulDef extends NodeDef {
  /** `/run/openvpn/ami.sock`, `unix:/path`, `host:port`, or an environment reference such as ${AMI_BACKHAUL_MGMT}. */
  mgmt: string;
  /** Seconds between OpenVPN's byte counts; 0 turns them off. */
  bytecount: string;
  /** Release OpenVPN's hold (--management-hold) as soon as it is seen: a checkbox, or "true"/"false" from the environment. */
  releaseHold?: boolean | string;
}

interface BackhaulCredentials {
  password?: string;
}

const DEFAULT_BYTECOUNT_SECONDS = 10;

interface DeployedBackhaul {
  name: string;
  address: string;
  monitoring: () => boolean;
  snapshot: () => BackhaulSnapshot;
  holdRelease: () => Promise<void>;
  restart: (kind: 'soft' | 'hard') => Promise<void>;
}

/**
 * The deployed backhaul config nodes, for the admin API. OpenVPN serves one
 * management client at a time: while the gateway holds the connection,
 * `ami-gateway backhaul` goes through these routes instead.
 */
const backhauls = new Map<string, DeployedBackhaul>();
const routedApps = new WeakSet<object>();

function registerBackhaulRoutes(RED: NodeAPI): void {
  const app = RED.httpAdmin;
  if (routedApps.has(app)) return;
  routedApps.add(app);
  app.get('/ami/backhaul', RED.auth.needsPermission('ami-backhaul.read'), (_req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    res.json({
      backhauls: [...backhauls.entries()].map(([id, entry]) => ({ id, name: entry.name, address: entry.address, monitoring: entry.monitoring(), snapshot: entry.snapshot() })),
    });
  });
  const act = (perform: (entry: DeployedBackhaul, body: Record<string, unknown>) => Promise<void>) => (req: Request, res: Response) => {
    const entry = backhauls.get(String(req.params.id));
    if (!entry) {
      res.status(404).json({ code: 'NOT_FOUND', error: `no backhaul ${String(req.params.id)}` });
      return;
    }
    perform(entry, (req.body ?? {}) as Record<string, unknown>).then(
      () => res.json({ ok: true, snapshot: entry.snapshot() }),
      (err: Error & { code?: string }) => res.status(err.code === 'BAD_COMMAND' ? 400 : 502).json({ code: err.code ?? 'INTERNAL', error: err.message }),
    );
  };
  app.post('/ami/backhaul/:id/hold-release', RED.auth.needsPermission('ami-backhaul.write'), act((entry) => entry.holdRelease()));
  app.post(
    '/ami/backhaul/:id/restart',
    RED.auth.needsPermission('ami-backhaul.write'),
    act((entry, body) => entry.restart((body.kind ?? 'soft') as 'soft' | 'hard')),
  );
}

/**
 * The backhaul to the HES: owns the connection to OpenVPN's management
 * interface (a BackhaulMonitor), opened for the first user and closed after
 * the last. Users register a listener that gets every change of the snapshot.
 */
export = function register(RED: NodeAPI): void {
  registerHealthRoute(RED);
  registerBackhaulRoutes(RED);

  function AmiBackhaul(this: BackhaulNode, def: BackhaulDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const credentials = ((node as Node & { credentials?: BackhaulCredentials }).credentials ?? {}) as BackhaulCredentials;
    const healthKey = `backhaul ${node.id}`;
    const listeners = new Map<string, BackhaulListener>();
    const createdAt = Date.now();
    let configError: string | undefined;
    let address: ManagementAddress | undefined;
    let bytecountIntervalSeconds = DEFAULT_BYTECOUNT_SECONDS;
    let releaseHold = false;
    let monitor: BackhaulMonitor | undefined;
    let removeHealthSource: (() => void) | undefined;
    /** The last connection problem logged, so a management interface that stays away is logged once, not per attempt. */
    let lastDisconnect: string | undefined;
    let malformedLogged = false;

    // An empty address (for instance ${AMI_BACKHAUL_MGMT} on a box without OpenVPN) means "not monitored":
    // users such as the HES endpoint then do not wait for a tunnel nobody watches.
    const monitored = stringProperty(def.mgmt, '') !== '';
    Object.defineProperty(node, 'monitored', { value: monitored, enumerable: true });
    try {
      try {
        if (monitored) address = parseManagementAddress(stringProperty(def.mgmt, DEFAULT_MANAGEMENT_ADDRESS));
      } catch (err) {
        throw new NodeConfigError(`Management: ${(err as Error).message}`);
      }
      bytecountIntervalSeconds = numberProperty('Byte counts every', def.bytecount, DEFAULT_BYTECOUNT_SECONDS, 0, MAX_BYTECOUNT_INTERVAL_SECONDS);
      releaseHold = booleanProperty('Release hold', def.releaseHold, false);
      if (credentials.password !== undefined && /[\r\n]/.test(credentials.password)) throw new NodeConfigError('Password: must be a single line');
    } catch (err) {
      configError = (err as Error).message;
      node.error(`${RED._('ami-backhaul.errors.config')}: ${configError}`);
    }
    const described = address ? formatManagementAddress(address) : monitored ? stringProperty(def.mgmt, DEFAULT_MANAGEMENT_ADDRESS) : '';
    Object.defineProperty(node, 'address', { value: described, enumerable: true });

    const snapshot = (): BackhaulSnapshot =>
      monitor?.snapshot() ??
      unmonitoredSnapshot(
        configError !== undefined
          ? `misconfigured: ${configError}`
          : monitored
            ? 'not monitored: no node uses this backhaul'
            : 'not monitored: no management address',
        createdAt,
      );

    function notify(current: BackhaulSnapshot, change: Parameters<BackhaulListener>[1]): void {
      for (const [userId, listener] of listeners) {
        try {
          listener({ ...current }, change);
        } catch (err) {
          // One user's failure must not keep the others from hearing about the backhaul.
          node.error(`a user of this backhaul (${userId}) failed on a ${change} change: ${(err as Error).message}`);
        }
      }
    }

    function open(): void {
      if (!monitored) return;
      if (configError !== undefined || !address) {
        gatewayHealth.setProblem(healthKey, `misconfigured: ${configError ?? 'no address'}`);
        return;
      }
      const opened = new BackhaulMonitor({
        address,
        ...(credentials.password ? { password: credentials.password } : {}),
        bytecountIntervalSeconds,
        releaseHold,
      });
      monitor = opened;
      removeHealthSource = gatewayHealth.addBackhaulSource(() => opened.snapshot());
      gatewayHealth.setProblem(healthKey, `down: ${opened.snapshot().reason ?? ''}`);
      opened.on('change', (current, change) => {
        if (monitor !== opened) return;
        if (change === 'up' || change === 'down' || change === 'state') {
          gatewayHealth.setProblem(healthKey, current.up ? undefined : `down: ${current.reason ?? ''}`);
        }
        notify(current, change);
      });
      opened.on('up', (current) => {
        lastDisconnect = undefined;
        node.log(RED._('ami-backhaul.log.up', { localIp: current.localIp ?? '?', remote: `${current.remoteIp ?? '?'}:${current.remotePort ?? '?'}` }));
      });
      opened.on('down', (reason) => node.warn(RED._('ami-backhaul.log.down', { reason })));
      opened.on('synced', (current) => {
        lastDisconnect = undefined;
        node.log(RED._('ami-backhaul.log.connected', { address: described, state: current.up ? 'up' : (current.reason ?? current.phase) }));
      });
      opened.on('disconnected', (error, retryInMs) => {
        if (retryInMs === null) return;
        const text = `${error.code}: ${error.message}`;
        if (text === lastDisconnect) {
          node.debug(`${text} (retrying in ${retryInMs} ms)`);
          return;
        }
        lastDisconnect = text;
        node.warn(RED._('ami-backhaul.log.disconnected', { address: described, reason: text }));
      });
      opened.on('problem', (error) => node.warn(`${RED._('ami-backhaul.errors.command')}: ${error.code}: ${error.message}`));
      opened.on('malformed', (error) => {
        // Counted by the monitor; logged once at warn, then at debug, so a hostile peer cannot flood the log.
        const text = `${RED._('ami-backhaul.errors.malformed')} (${opened.counters.malformed}): ${error.code}: ${error.message}`;
        if (malformedLogged) node.debug(text);
        else node.warn(text);
        malformedLogged = true;
      });
      opened.on('notification', (notification) => {
        if (notification.type === 'FATAL') node.error(RED._('ami-backhaul.log.fatal', { message: notification.message }));
      });
      opened.start();
    }

    async function close(): Promise<void> {
      const closing = monitor;
      monitor = undefined;
      removeHealthSource?.();
      removeHealthSource = undefined;
      gatewayHealth.setProblem(healthKey, undefined);
      await closing?.stop();
    }

    function running(): BackhaulMonitor {
      if (monitor) return monitor;
      throw new BackhaulError(
        'NOT_CONNECTED',
        configError !== undefined
          ? `the backhaul is misconfigured: ${configError}`
          : monitored
            ? 'the backhaul is not monitored: no node uses it'
            : 'the backhaul is not monitored: no management address is set',
      );
    }

    node.register = (user, listener) => {
      listeners.set(user.id, listener);
      if (listeners.size === 1 && !monitor) open();
    };

    node.deregister = async (user) => {
      listeners.delete(user.id);
      if (listeners.size === 0) await close();
    };

    node.snapshot = snapshot;

    node.holdRelease = async () => running().holdRelease();

    node.restart = async (kind) => running().restart(kind);

    backhauls.set(node.id, {
      name: node.name ?? '',
      address: described,
      monitoring: () => monitor !== undefined,
      snapshot,
      holdRelease: () => node.holdRelease(),
      // The kind comes from a request body: the monitor refuses anything but soft and hard (BAD_COMMAND).
      restart: (kind) => node.restart(kind),
    });

    node.on('close', (done: () => void) => {
      backhauls.delete(node.id);
      listeners.clear();
      close().then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }

  // The typings tie the constructor's `this` to the credentials' shape; our node type adds methods, so widen it here.
  RED.nodes.registerType('ami-backhaul', AmiBackhaul as unknown as Parameters<NodeAPI['nodes']['registerType']>[1], {
    credentials: {
      password: { type: 'password' },
    },
  });
};
