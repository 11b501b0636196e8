import path from 'node:path';
import type { Node, NodeAPI, NodeDef } from 'node-red';
import { imagesResponse, type FirmwareGroupSelector } from '../../src/firmware/api.js';
import { openFirmwareRepository, type FirmwareRepository } from '../../src/firmware/repository.js';
import { RolloutJournal, type FirmwareReport } from '../../src/firmware/rollout-journal.js';
import { FirmwareRolloutService } from '../../src/firmware/rollout.js';
import { JournalReporter } from '../../src/hes/journal-reporter.js';
import { readTrustAnchors } from '../../src/keys/files.js';
import type { MeshRegistryEvent } from '../../src/mesh/events.js';
import { CoapFirmwarePort } from '../../src/mesh/firmware-port.js';
import { FirmwareResource } from '../../src/mesh/firmware-resource.js';
import { meterTarget } from '../../src/mesh/target.js';
import type { DatabaseLease } from '../../src/store/database.js';
import { ConfigUsers } from '../shared/config-users.js';
import { publishFirmware } from '../shared/firmware-route.js';
import { NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';
import type { FirmwareServiceNode, FirmwareUserListeners, HesEndpointNode, MeshEndpointNode, StoreNode } from '../shared/types.js';

interface FirmwareDef extends NodeDef {
  mesh: string;
  store: string;
  hes?: string;
  /** The images folder; empty or an unset ${AMI_FIRMWARE_DIR}: `firmware` in Node-RED's user directory. */
  images?: string;
  /** PEM file of the utility's firmware root CA(s); empty or an unset ${AMI_FIRMWARE_TRUST_ANCHORS}: distribution off. */
  trustAnchors?: string;
  concurrency?: string;
  poll?: string;
  attempts?: string;
  stepTimeout?: string;
}

interface FirmwareSettings {
  imagesDir: string;
  /** Undefined: not configured, so no image can be trusted and nothing is distributed. */
  trustAnchorsFile: string | undefined;
  concurrency: number;
  pollMs: number;
  maxAttempts: number;
  stepTimeoutMs: number;
}

interface OpenFirmware {
  repository: FirmwareRepository;
  service: FirmwareRolloutService;
  lease: DatabaseLease;
  reporter: JournalReporter<FirmwareReport> | undefined;
  removeResource: () => void;
}

/** Why the firmware service is not running, for its users and the admin API (`code` NOT_READY, as the API answers). */
class FirmwareNotReadyError extends Error {
  override readonly name = 'FirmwareNotReadyError';
  readonly code = 'NOT_READY';
}

/** Only one firmware service per gateway: two would serve /fw on the same endpoint and journal the same rollouts. */
let activeFirmwareNode: string | undefined;

function readSettings(def: FirmwareDef, userDir: string): FirmwareSettings {
  const anchors = stringProperty(def.trustAnchors);
  return {
    // On the appliance Node-RED's user directory is AMI_DATA_DIR: the same default as `ami-gateway firmware`.
    imagesDir: path.resolve(userDir, stringProperty(def.images, 'firmware')),
    trustAnchorsFile: anchors === '' ? undefined : path.resolve(userDir, anchors),
    concurrency: numberProperty('Concurrency', def.concurrency, 8, 1, 1024),
    pollMs: numberProperty('Poll', def.poll, 2, 1, 3600) * 1000,
    maxAttempts: numberProperty('Attempts', def.attempts, 3, 1, 100),
    stepTimeoutMs: numberProperty('Step timeout', def.stepTimeout, 600, 10, 86_400) * 1000,
  };
}

/**
 * The firmware distribution of the gateway (issue 9): loads and verifies the
 * signed images, serves them to meters on the mesh endpoint (/fw), and owns
 * the FirmwareRolloutService with its journal in the store, which resumes
 * unfinished rollouts at deploy. Each meter's outcome goes to the HES outbox
 * as a `result` record. Serves the admin routes of `ami-gateway firmware`.
 */
export = function register(RED: NodeAPI): void {
  function AmiFirmware(this: FirmwareServiceNode, def: FirmwareDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const users = new ConfigUsers();
    const listeners = new Map<string, FirmwareUserListeners>();
    const userDir = (RED.settings as { userDir?: string }).userDir ?? process.cwd();

    const mesh = RED.nodes.getNode(def.mesh) as MeshEndpointNode | null;
    const store = RED.nodes.getNode(def.store) as StoreNode | null;
    const hes = def.hes ? (RED.nodes.getNode(def.hes) as HesEndpointNode | null) : null;
    let settings: FirmwareSettings | undefined;
    /** What keeps the service from running; `off` when that is a deliberate setting (no trust anchors) rather than a fault. */
    let problem: string | undefined;
    let off = false;
    /** The configuration is wrong (as opposed to the service failing to open). */
    let misconfigured = false;
    try {
      if (!mesh) throw new NodeConfigError(RED._('ami-firmware.errors.no-mesh'));
      if (!store) throw new NodeConfigError(RED._('ami-firmware.errors.no-store'));
      settings = readSettings(def, userDir);
    } catch (err) {
      if (!(err instanceof NodeConfigError)) throw err;
      problem = err.message;
      misconfigured = true;
    }
    const duplicate = problem === undefined && activeFirmwareNode !== undefined && activeFirmwareNode !== node.id;
    if (duplicate) {
      problem = RED._('ami-firmware.errors.duplicate', { node: activeFirmwareNode ?? '' });
      misconfigured = true;
    }
    if (problem === undefined && settings?.trustAnchorsFile === undefined) {
      problem = RED._('ami-firmware.errors.no-trust-anchors');
      off = true;
    }

    let closed = false;
    let openService: FirmwareRolloutService | undefined;
    let openRepository: FirmwareRepository | undefined;
    let reportProblem: string | undefined;
    const showStatus = (): void => {
      if (closed) return;
      if (problem !== undefined) {
        // Without trust anchors distribution is off by configuration: said as it is, not as a fault.
        const text = off ? problem : RED._(misconfigured ? 'ami-firmware.status.misconfigured' : 'ami-firmware.status.failed');
        users.status({ fill: off ? 'yellow' : 'red', shape: 'ring', text });
      } else if (!openService || !openRepository) {
        users.status({ fill: 'yellow', shape: 'ring', text: RED._('ami-firmware.status.starting') });
      } else if (reportProblem !== undefined) {
        users.status({ fill: 'yellow', shape: 'ring', text: RED._('ami-firmware.status.report-waiting') });
      } else {
        const counts = { images: openRepository.goodImages().length, quarantined: openRepository.quarantinedImages().length };
        users.status({ fill: 'green', shape: 'dot', text: RED._(hes ? 'ami-firmware.status.ready' : 'ami-firmware.status.ready-no-hes', counts) });
      }
    };

    // Stand-in users of the mesh and HES endpoints: they push their own status to users, which must not paint this config node.
    const meshUser = Object.assign(Object.create(node) as Node, { status: () => undefined });
    let meshRegistered = false;
    const hesUser = Object.assign(Object.create(node) as Node, { status: () => undefined });
    let hesRegistered = false;
    // A meter that registers again (after it installed an image it reboots and registers) is asked for its state now,
    // not at the next poll. The endpoint forwards its registry's events, also when the registry loads after this node registered.
    const onRegistryEvent = (event: MeshRegistryEvent): void => {
      const service = openService;
      if (!service || closed || (event.event !== 'joined' && event.event !== 'updated')) return;
      try {
        service.meterAvailable(event.meter.endpoint);
      } catch (err) {
        node.debug(`meter ${event.meter.endpoint} available: ${(err as Error).message}`);
      }
    };

    const opening: Promise<OpenFirmware> =
      problem !== undefined
        ? Promise.reject(new FirmwareNotReadyError(problem))
        : (async (): Promise<OpenFirmware> => {
            activeFirmwareNode = node.id;
            const s = settings!;
            const repository = await openFirmwareRepository({ root: s.imagesDir, trustAnchorsPem: readTrustAnchors(s.trustAnchorsFile!) });
            for (const image of repository.quarantinedImages()) {
              node.warn(RED._('ami-firmware.errors.quarantined', { id: image.id, code: image.code, reason: image.reason }));
            }
            node.log(RED._('ami-firmware.log.loaded', { images: repository.goodImages().length, quarantined: repository.quarantinedImages().length, dir: s.imagesDir }));
            if (closed) throw new FirmwareNotReadyError('closed while opening');
            mesh!.register(meshUser, { registry: onRegistryEvent });
            meshRegistered = true;
            let meshClient: { controlRequestsPending(): number } | undefined;
            const resource = new FirmwareResource(repository, {
              // Relay commands go first: image blocks wait (5.03 Max-Age) while one is queued or under way.
              deferWhile: () => (meshClient?.controlRequestsPending() ?? 0) > 0,
              onRefused: (id, err) => node.warn(RED._('ami-firmware.errors.refused', { id, code: err.code, reason: err.message })),
            });
            const removeResource = mesh!.addResource(meshUser, resource);
            let lease: DatabaseLease | undefined;
            let journal: RolloutJournal | undefined;
            let openedService: FirmwareRolloutService | undefined;
            try {
              lease = await store!.acquire();
              journal = new RolloutJournal(lease.db);
              const client = await mesh!.meshClient();
              meshClient = client;
              const port = new CoapFirmwarePort({
                client,
                resolve: (meter) => {
                  const registered = mesh!.meterRegistry()?.byEndpoint(meter);
                  return registered ? meterTarget(registered) : undefined;
                },
              });
              const service = await FirmwareRolloutService.open({
                journal,
                repository,
                port,
                pollMs: s.pollMs,
                stepTimeoutMs: s.stepTimeoutMs,
                maxAttempts: s.maxAttempts,
                // One setting: the gateway-wide limit, which a rollout that names no concurrency may use in full.
                maxConcurrent: s.concurrency,
                defaultConcurrency: s.concurrency,
                isRegistered: (meter) => mesh!.meterRegistry()?.byEndpoint(meter) !== undefined,
              });
              openedService = service;
              service.on('problem', (meter, err) => node.warn(`firmware rollout, meter ${meter}: ${err.message}; it resumes at the next deploy`));
              let reporter: JournalReporter<FirmwareReport> | undefined;
              if (hes) {
                // The HES endpoint opens its uplink and outbox for its users: the results need them even in a flow without `hes out`.
                hes.register(hesUser);
                hesRegistered = true;
                const opened = new JournalReporter<FirmwareReport>({
                  journal,
                  deliver: (report) => hes.deliver({ key: report.key, kind: report.kind, meter: report.meter, ts: report.ts, body: report.body }),
                  onProblem: (why) => {
                    reportProblem = why;
                    if (why !== undefined) node.warn(`${RED._('ami-firmware.errors.report')}: ${why}`);
                    else node.log(RED._('ami-firmware.log.reported'));
                    showStatus();
                  },
                });
                reporter = opened;
                service.on('report', () => opened.kick());
              }
              // A user's listener that throws must not break the service's emit (or the other users).
              const each = (call: (l: FirmwareUserListeners) => void): void => {
                for (const l of listeners.values()) {
                  try {
                    call(l);
                  } catch (err) {
                    node.error(`firmware listener: ${(err as Error)?.message ?? String(err)}`);
                  }
                }
              };
              service.on('result', (entry) => each((l) => l.result?.(entry)));
              service.on('finished', (summary) => {
                const codes = Object.entries(summary.byCode)
                  .map(([code, count]) => `${count} ${code}`)
                  .join(', ');
                node.log(RED._('ami-firmware.log.finished', { id: summary.rolloutId, total: summary.total, codes }));
                each((l) => l.finished?.(summary));
              });
              openRepository = repository;
              openService = service;
              reporter?.start();
              return { repository, service, lease, reporter, removeResource };
            } catch (err) {
              removeResource();
              // Closing the service also closes the journal; rollouts it resumed stop sending.
              await openedService?.close().catch(() => undefined);
              await journal?.close().catch(() => undefined);
              await lease?.release().catch(() => undefined);
              throw err;
            }
          })();
    opening.then(
      () => showStatus(),
      (err: Error) => {
        if (closed) return;
        if (off) node.warn(problem!);
        else if (problem !== undefined) node.error(problem);
        else node.error(`${RED._('ami-firmware.errors.open')}: ${err.message}`);
        problem ??= `${RED._('ami-firmware.errors.open')}: ${err.message}`;
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
      try {
        return (await opening).service;
      } catch (err) {
        if (err instanceof FirmwareNotReadyError) throw err;
        throw new FirmwareNotReadyError(problem ?? (err as Error).message);
      }
    };
    node.groupMeters = (selector: FirmwareGroupSelector): string[] => {
      const registry = mesh?.meterRegistry();
      if (!registry) return [];
      return registry
        .list()
        .filter((m) => m.tags[selector.tag] === selector.value)
        .map((m) => m.endpoint)
        .sort();
    };

    const unpublish = duplicate
      ? () => undefined
      : publishFirmware(RED, {
          images: () => {
            if (!openRepository) throw new FirmwareNotReadyError(problem ?? RED._('ami-firmware.status.starting'));
            return imagesResponse(openRepository.list());
          },
          service: () => openService,
          problem: () => problem,
          resolveGroup: (tag, value) => node.groupMeters({ tag, value }),
        });

    node.on('close', (done: () => void) => {
      closed = true;
      unpublish();
      if (activeFirmwareNode === node.id) activeFirmwareNode = undefined;
      const shutdown = async (): Promise<void> => {
        try {
          const open = await opening.catch(() => undefined);
          if (open) {
            try {
              open.removeResource();
              await open.reporter?.stop();
            } finally {
              try {
                // Meters in flight stay as the journal says; their rollouts resume at the next start. Closes the journal too.
                await open.service.close();
                open.service.removeAllListeners();
              } finally {
                await open.lease.release();
              }
            }
          }
        } finally {
          openService = undefined;
          openRepository = undefined;
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
  RED.nodes.registerType('ami-firmware', AmiFirmware);
};
