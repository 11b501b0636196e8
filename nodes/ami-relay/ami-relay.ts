import path from 'node:path';
import type { Node, NodeAPI, NodeDef } from 'node-red';
import { ensureCredentialSecret } from '../../src/appliance/secrets.js';
import type { MeshRegistryEvent } from '../../src/mesh/events.js';
import { meterTarget } from '../../src/mesh/target.js';
import type { RelayGroupSelector } from '../../src/relay/api.js';
import { RelayAudit } from '../../src/relay/audit.js';
import { DlmsRelayPort } from '../../src/relay/dlms-port.js';
import { RelayJournal } from '../../src/relay/journal.js';
import { OperatorStore } from '../../src/relay/operators.js';
import { RelayReporter } from '../../src/relay/reporter.js';
import { RelayService } from '../../src/relay/service.js';
import type { RelayAuthorization, RelayRole } from '../../src/relay/types.js';
import type { DatabaseLease } from '../../src/store/database.js';
import { PendingCommands, type PendingCommand } from '../../src/store/pending-commands.js';
import { ConfigUsers } from '../shared/config-users.js';
import { publishRelay } from '../shared/relay-route.js';
import { NodeConfigError, booleanProperty, integerProperty, numberProperty } from '../shared/settings-values.js';
import type { HesEndpointNode, KeyringNode, MeshEndpointNode, RelayServiceNode, RelayUserListeners, StoreNode } from '../shared/types.js';

interface RelayDef extends NodeDef {
  mesh: string;
  keyring: string;
  store: string;
  hes?: string;
  minRssi?: string;
  minSnr?: string;
  minInterval?: string;
  maxPerHour?: string;
  weldVoltage?: string;
  concurrency?: string;
  chargeCycle?: string;
  linkRetry?: string;
  acceptReady?: boolean | string;
}

interface RelaySettings {
  minRssi: number;
  minSnr: number;
  minIntervalMs: number;
  maxPerHour: number;
  weldVoltage: number;
  concurrency: number;
  chargeCycleMs: number;
  linkRetryMs: number;
  acceptReady: boolean;
}

interface OpenRelay {
  service: RelayService;
  journal: RelayJournal;
  lease: DatabaseLease;
  reporter: RelayReporter | undefined;
}

/** Only one relay service per gateway: the journal, the wear records and the locks are the relay's truth. */
let activeRelayNode: string | undefined;

function readSettings(def: RelayDef): RelaySettings {
  return {
    minRssi: integerProperty('Minimum RSSI', def.minRssi, -85, -150, 0),
    minSnr: integerProperty('Minimum SNR', def.minSnr, 5, -50, 100),
    minIntervalMs: numberProperty('Minimum interval', def.minInterval, 60, 0, 86_400) * 1000,
    maxPerHour: numberProperty('Operations per hour', def.maxPerHour, 6, 1, 1000),
    weldVoltage: numberProperty('Weld voltage', def.weldVoltage, 50, 1, 1000),
    concurrency: numberProperty('Concurrency', def.concurrency, 64, 1, 1024),
    chargeCycleMs: numberProperty('Charge cycle', def.chargeCycle, 30, 1, 3600) * 1000,
    linkRetryMs: numberProperty('Link retry', def.linkRetry, 300, 1, 86_400) * 1000,
    acceptReady: booleanProperty('Accept ready for reconnection', def.acceptReady, true),
  };
}

/**
 * The relay service of the gateway (issue 6): owns the operation journal in
 * the store, the DLMS port to meters through the mesh endpoint's client and
 * the keyring, the audit logs, and the reporter that takes every outcome and
 * alarm to the HES outbox. Opens at deploy (unfinished commands resume even
 * without a `relay command` node) and serves the admin routes of
 * `ami-gateway relay` and `ami-gateway alarms`.
 */
export = function register(RED: NodeAPI): void {
  function AmiRelay(this: RelayServiceNode, def: RelayDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const users = new ConfigUsers();
    const listeners = new Map<string, RelayUserListeners>();
    const userDir = (RED.settings as { userDir?: string }).userDir ?? process.cwd();
    const logsDir = path.join(userDir, 'logs');
    Object.defineProperty(node, 'logsDir', { value: logsDir, enumerable: true });

    const mesh = RED.nodes.getNode(def.mesh) as MeshEndpointNode | null;
    const keyringNode = RED.nodes.getNode(def.keyring) as KeyringNode | null;
    const store = RED.nodes.getNode(def.store) as StoreNode | null;
    const hes = def.hes ? (RED.nodes.getNode(def.hes) as HesEndpointNode | null) : null;
    let settings: RelaySettings | undefined;
    let problem: string | undefined;
    try {
      if (!mesh) throw new NodeConfigError(RED._('ami-relay.errors.no-mesh'));
      if (!keyringNode) throw new NodeConfigError(RED._('ami-relay.errors.no-keyring'));
      if (!store) throw new NodeConfigError(RED._('ami-relay.errors.no-store'));
      settings = readSettings(def);
    } catch (err) {
      if (!(err instanceof NodeConfigError)) throw err;
      problem = err.message;
    }
    if (problem === undefined && activeRelayNode !== undefined && activeRelayNode !== node.id) {
      problem = RED._('ami-relay.errors.duplicate', { node: activeRelayNode });
    }
    Object.defineProperty(node, 'concurrency', { value: settings?.concurrency ?? 64, enumerable: true });

    let closed = false;
    /** Set once the service is open: registry events before that find nothing waiting anyway (resume() runs at open). */
    let openService: RelayService | undefined;
    let reportProblem: string | undefined;
    const showStatus = (): void => {
      if (closed) return;
      if (problem !== undefined) {
        users.status({ fill: 'red', shape: 'ring', text: 'ami-relay.status.misconfigured' });
        return;
      }
      if (reportProblem !== undefined) {
        users.status({ fill: 'yellow', shape: 'ring', text: 'ami-relay.status.no-hes' });
        return;
      }
      // Counted by the service itself (commands in progress, unfinished ones), read when the status is drawn.
      const running = openService?.runningCount() ?? 0;
      const waiting = openService?.waitingCount() ?? 0;
      if (running > 0) users.status({ fill: 'blue', shape: 'dot', text: RED._('ami-relay.status.working', { running, waiting }) });
      else if (waiting > 0) users.status({ fill: 'yellow', shape: 'dot', text: RED._('ami-relay.status.idle-waiting', { waiting }) });
      else users.status({ fill: 'green', shape: 'dot', text: hes ? 'ami-relay.status.ready' : 'ami-relay.status.no-hes' });
    };

    // The operator store is read on each local authorization (the CLI may add operators while the gateway runs).
    let operators: OperatorStore | undefined;
    const operatorStore = (): OperatorStore => {
      if (!operators) {
        const configured = (RED.settings as { credentialSecret?: unknown }).credentialSecret;
        const secret = ensureCredentialSecret(userDir, typeof configured === 'string' && configured !== '' ? configured : undefined);
        operators = new OperatorStore({ dataDir: userDir, credentialSecret: secret.secret });
      }
      return operators;
    };

    let hesCommands: Promise<{ lease: DatabaseLease; commands: PendingCommands } | undefined> | undefined;
    const openHesCommands = (): Promise<{ lease: DatabaseLease; commands: PendingCommands } | undefined> => {
      hesCommands ??= (async () => {
        if (!hes?.storeNode) return undefined;
        const lease = await hes.storeNode.acquire();
        try {
          return { lease, commands: await PendingCommands.open(lease.db) };
        } catch (err) {
          await lease.release();
          throw err;
        }
      })();
      return hesCommands;
    };

    // A stand-in user of the mesh endpoint: it pushes its own status to users, which must not paint this config node.
    const meshUser = Object.assign(Object.create(node) as Node, { status: () => undefined });
    let meshRegistered = false;
    // The same for the HES endpoint, which opens its uplink and outbox only for registered users:
    // the relay's reports need them also in a flow without `hes out`.
    const hesUser = Object.assign(Object.create(node) as Node, { status: () => undefined });
    let hesRegistered = false;
    // A meter that registers again (after an outage, a power cut) runs its waiting commands now. The endpoint
    // forwards its registry's events to users, also when the registry loads after this node registered.
    const onRegistryEvent = (event: MeshRegistryEvent): void => {
      const service = openService;
      if (!service || closed || (event.event !== 'joined' && event.event !== 'updated')) return;
      const meter = event.meter.endpoint;
      if (service.waitingFor(meter).length === 0) return;
      service.meterAvailable(meter).catch((err: Error) => node.debug(`meter ${meter} available: ${err.message}`));
    };

    const opening: Promise<OpenRelay> =
      problem !== undefined
        ? Promise.reject(new NodeConfigError(problem))
        : (async (): Promise<OpenRelay> => {
            activeRelayNode = node.id;
            const s = settings!;
            mesh!.register(meshUser, { registry: onRegistryEvent });
            meshRegistered = true;
            const lease = await store!.acquire();
            let journal: RelayJournal | undefined;
            try {
              journal = await RelayJournal.open(lease.db);
              const keyring = await keyringNode!.keyring();
              const client = await mesh!.meshClient();
              const port = new DlmsRelayPort({
                client,
                keyring,
                resolve: (meter) => {
                  const registered = mesh!.meterRegistry()?.byEndpoint(meter);
                  return registered ? meterTarget(registered).peer : undefined;
                },
              });
              const service = await RelayService.open({
                journal,
                port,
                audit: new RelayAudit(logsDir, Date.now, (err) => node.warn(`audit log: ${err.message}`)),
                linkMetrics: (meter) => mesh!.meterRegistry()?.byEndpoint(meter)?.metrics,
                link: { minRssi: s.minRssi, minSnr: s.minSnr },
                wear: { minIntervalMs: s.minIntervalMs, maxPerHour: s.maxPerHour },
                weldVoltage: s.weldVoltage,
                chargeCycleMs: s.chargeCycleMs,
                linkRetryMs: s.linkRetryMs,
                acceptReadyForReconnection: s.acceptReady,
                maxConcurrent: s.concurrency,
              });
              let reporter: RelayReporter | undefined;
              if (hes) {
                hes.register(hesUser);
                hesRegistered = true;
                const opened = new RelayReporter({
                  journal,
                  deliver: (report) => hes.deliver({ key: report.key, kind: report.kind, meter: report.meter, ts: report.ts, body: report.body }),
                  onProblem: (why) => {
                    reportProblem = why;
                    if (why !== undefined) node.warn(`${RED._('ami-relay.errors.report')}: ${why}`);
                    else node.log(RED._('ami-relay.log.reported'));
                    showStatus();
                  },
                });
                reporter = opened;
                service.on('report', () => opened.kick());
              }
              // A user's listener that throws must not break the service's emit (or the other users).
              const each = (call: (l: RelayUserListeners) => void): void => {
                for (const l of listeners.values()) {
                  try {
                    call(l);
                  } catch (err) {
                    node.error(`relay listener: ${(err as Error)?.message ?? String(err)}`);
                  }
                }
              };
              service.on('result', (result) => {
                each((l) => l.result?.(result));
                showStatus();
              });
              service.on('progress', (progress) => each((l) => l.progress?.(progress)));
              service.on('alarm', (alarm) => node.warn(RED._('ami-relay.errors.alarm', { code: alarm.code, meter: alarm.meter, detail: alarm.detail })));
              service.on('alarmCleared', (alarm, by) => node.log(RED._('ami-relay.log.cleared', { code: alarm.code, meter: alarm.meter, operator: by.operator })));
              openService = service;
              reporter?.start();
              // RelayService.open read the journal's unfinished commands already.
              const unfinished = service.waitingCount();
              if (unfinished > 0) node.log(RED._('ami-relay.log.resumed', { count: unfinished }));
              void service.resume().catch((err: Error) => {
                if (!closed) node.error(`resume: ${err.message}`);
              });
              return { service, journal, lease, reporter };
            } catch (err) {
              await journal?.close().catch(() => undefined);
              await lease.release().catch(() => undefined);
              throw err;
            }
          })();
    opening.then(
      () => showStatus(),
      (err: Error) => {
        if (closed) return;
        if (problem !== undefined) node.error(problem);
        else node.error(`${RED._('ami-relay.errors.open')}: ${err.message}`);
        problem ??= err.message;
        showStatus();
      },
    );

    node.register = (user, userListeners) => {
      listeners.set(user.id, userListeners);
      users.register(user);
      showStatus();
    };
    node.deregister = async (user) => {
      listeners.delete(user.id);
      users.deregister(user);
    };
    node.service = async () => {
      return (await opening).service;
    };
    node.authorizeLocal = async (operator, totp): Promise<RelayAuthorization> => {
      const granted = await operatorStore().authorize(operator, totp);
      return { source: 'local', operator: granted.operator, role: granted.role satisfies RelayRole, mfa: true };
    };
    node.verifiedHesCommand = async (id): Promise<PendingCommand | undefined> => {
      if (closed) return undefined;
      const opened = await openHesCommands();
      if (!opened) return undefined;
      const entry = await opened.commands.get(id);
      if (!entry || entry.outcome) return undefined;
      return entry;
    };
    node.groupMeters = (selector: RelayGroupSelector): string[] => {
      const registry = mesh?.meterRegistry();
      if (!registry) return [];
      return registry
        .list()
        .filter((m) => m.tags[selector.tag] === selector.value)
        .map((m) => m.endpoint)
        .sort();
    };

    const unpublish = problem === undefined ? publishRelay(RED, node) : () => undefined;

    node.on('close', (done: () => void) => {
      closed = true;
      unpublish();
      if (activeRelayNode === node.id) activeRelayNode = undefined;
      const shutdown = async (): Promise<void> => {
        try {
          const open = await opening.catch(() => undefined);
          if (open) {
            try {
              await open.reporter?.stop();
              // Closes the journal and the audit logs; commands in flight stay as the journal says and resume at the next start.
              await open.service.close();
            } finally {
              await open.lease.release();
            }
          }
          const commands = await hesCommands?.catch(() => undefined);
          if (commands) {
            try {
              await commands.commands.close();
            } finally {
              await commands.lease.release();
            }
          }
        } finally {
          try {
            if (hes && hesRegistered) await hes.deregister(hesUser);
          } finally {
            if (mesh && meshRegistered) await mesh.deregister(meshUser);
          }
        }
      };
      shutdown().then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }
  RED.nodes.registerType('ami-relay', AmiRelay);
};
