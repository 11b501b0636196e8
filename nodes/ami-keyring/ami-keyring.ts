import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import type { Node, NodeAPI, NodeDef } from 'node-red';
import type { Request, Response } from 'express';
import { gatewayHealth } from '../../src/appliance/health.js';
import {
  ensureGatewayKeyFile,
  ensureMasterKeyFile,
  keyPairFromPrivatePem,
  parseMasterKey,
  readTrustAnchors,
} from '../../src/keys/files.js';
import { Keyring } from '../../src/keys/keyring.js';
import type { DatabaseLease } from '../../src/store/database.js';
import { publicKeyFingerprint } from '../../src/keys/bundle.js';
import { KeyStoreError } from '../../src/keys/keystore.js';
import { KeySync, KeySyncError, type FingerprintReport, type KeySyncResult } from '../../src/keys/sync.js';
import { ConfigUsers } from '../shared/config-users.js';
import { NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';
import { registerHealthRoute } from '../shared/health-route.js';
import type { HesEndpointNode, KeyringNode, StoreNode } from '../shared/types.js';

interface KeyringDef extends NodeDef {
  store: string;
  hes: string;
  systemTitle: string;
  trustAnchors: string;
  micThreshold: string;
  syncInterval: string;
}

interface KeyringCredentials {
  gatewayKey?: string;
  masterKey?: string;
}

interface OpenKeyring {
  keyring: Keyring;
  /** The keyring's own lease on the database, so the store node closing first cannot close it under us. */
  lease: DatabaseLease;
  sync: KeySync | undefined;
  /** The gateway's public key: what a HES enrols so it can encrypt key bundles to this gateway. */
  publicKeyPem: string;
}

/** What `GET /ami/keys` shows of one keyring: counts, epochs, fingerprints; never keys. */
interface KeyringReport {
  id: string;
  name: string;
  gatewaySystemTitle?: string;
  /** SPKI PEM and its SHA-256: public, for enrolment at the HES key management. */
  gatewayPublicKey?: string;
  gatewayKeyFingerprint?: string;
  meters?: number;
  epoch?: number;
  pending?: number;
  fingerprint?: string;
  outOfSync?: string[];
  lastSync: { at: string; site: string; meters: number; epoch: number } | null;
  lastError: string | null;
  sites?: FingerprintReport;
  counters?: Keyring['counters'];
}

const DEFAULT_MIC_THRESHOLD = 5;
const DEFAULT_SYNC_INTERVAL_S = 3600;
const SYNC_TIMEOUT_MS = 20_000;
/** After a failed sync, try again sooner than the interval. */
const SYNC_RETRY_MS = 30_000;
/** How long out-of-sync meters are gathered into one resync request. */
const RESYNC_GATHER_MS = 250;

const keyrings = new Map<string, { report: () => Promise<KeyringReport>; sync: (force: boolean) => Promise<KeySyncResult> }>();
const routedApps = new WeakSet<object>();

/** The gateway's own system title when none is configured: "AMG" + 5 bytes of the gateway id's digest. */
function derivedSystemTitle(gatewayId: string): string {
  return Buffer.concat([Buffer.from('AMG'), createHash('sha256').update(gatewayId).digest().subarray(0, 5)]).toString('hex');
}

function registerRoutes(RED: NodeAPI): void {
  const app = RED.httpAdmin;
  if (routedApps.has(app)) return;
  routedApps.add(app);
  app.get('/ami/keys', RED.auth.needsPermission('ami-keyring.read'), (_req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    Promise.all([...keyrings.values()].map((entry) => entry.report())).then(
      (reports) => res.json({ keyrings: reports }),
      (err: Error) => res.status(500).json({ error: err.message }),
    );
  });
  app.post('/ami/keys/sync', RED.auth.needsPermission('ami-keyring.write'), (req: Request, res: Response) => {
    const body = (req.body ?? {}) as { force?: unknown };
    const force = body.force === true || req.query.force === 'true';
    if (keyrings.size === 0) {
      res.status(404).json({ error: 'no keyring is deployed' });
      return;
    }
    Promise.all(
      [...keyrings.entries()].map(([id, entry]) =>
        entry.sync(force).then(
          (result) => ({ id, ok: true, result }),
          (err: Error & { code?: string }) => ({ id, ok: false, code: err.code ?? 'ERROR', error: err.message }),
        ),
      ),
    ).then((results) => res.status(results.every((r) => r.ok) ? 200 : 502).json({ results }));
  });
}

export = function register(RED: NodeAPI): void {
  registerHealthRoute(RED);
  registerRoutes(RED);

  function AmiKeyring(this: KeyringNode, def: KeyringDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const credentials = ((node as Node & { credentials?: KeyringCredentials }).credentials ?? {}) as KeyringCredentials;
    const users = new ConfigUsers();
    const healthKey = `keyring ${node.id}`;
    const store = RED.nodes.getNode(def.store) as StoreNode | null;
    const hes = def.hes ? (RED.nodes.getNode(def.hes) as HesEndpointNode | null) : null;
    let configError: string | undefined;
    let micThreshold = DEFAULT_MIC_THRESHOLD;
    let syncIntervalMs = DEFAULT_SYNC_INTERVAL_S * 1000;
    const systemTitleSetting = stringProperty(def.systemTitle).toLowerCase();
    try {
      if (!store) throw new NodeConfigError(RED._('ami-keyring.errors.no-store'));
      micThreshold = numberProperty('MIC failures', def.micThreshold, DEFAULT_MIC_THRESHOLD, 1, 1000);
      syncIntervalMs = numberProperty('Sync interval', def.syncInterval, DEFAULT_SYNC_INTERVAL_S, 10, 604_800) * 1000;
      if (systemTitleSetting !== '' && !/^[0-9a-f]{16}$/.test(systemTitleSetting)) {
        throw new NodeConfigError('the system title must be 16 hex characters');
      }
    } catch (err) {
      configError = (err as Error).message;
      node.error(configError);
    }

    let opening: Promise<OpenKeyring> | undefined;
    let opened: OpenKeyring | undefined;
    let syncTimer: NodeJS.Timeout | undefined;
    let syncing: Promise<KeySyncResult> | undefined;
    let lastSync: KeyringReport['lastSync'] = null;
    let lastError: string | null = null;
    let lastFingerprints: FingerprintReport | undefined;
    let closed = false;
    const removers: Array<() => void> = [];

    function showStatus(): void {
      if (!opened) return;
      const summary = opened.keyring.keys.summary();
      if (lastError) {
        users.status({ fill: 'red', shape: 'ring', text: `${summary.meters} meters · ${lastError.slice(0, 40)}` });
      } else if (lastFingerprints?.sitesDisagree) {
        users.status({ fill: 'yellow', shape: 'ring', text: RED._('ami-keyring.errors.fingerprint-mismatch') });
      } else {
        users.status({
          fill: summary.meters > 0 ? 'green' : 'yellow',
          shape: 'dot',
          text: RED._('ami-keyring.status.ready', { meters: summary.meters, epoch: summary.epoch }),
        });
      }
    }

    function problem(text: string | undefined): void {
      // A sync still in flight when the node closed must not mark a redeployed node's health.
      if (closed) return;
      lastError = text ?? null;
      gatewayHealth.setProblem(healthKey, text);
      showStatus();
    }

    async function openKeyring(): Promise<OpenKeyring> {
      if (configError !== undefined || !store) throw new Error(configError ?? RED._('ami-keyring.errors.no-store'));
      // Our own lease keeps the database open until the keyring has flushed.
      const lease = await store.acquire();
      try {
        return await openOnLease(lease);
      } catch (err) {
        await lease.release();
        throw err;
      }
    }

    async function openOnLease(lease: DatabaseLease): Promise<OpenKeyring> {
      if (!store) throw new Error(RED._('ami-keyring.errors.no-store'));
      const db = lease.db;
      const secretsDir = path.join(path.dirname(store.location), 'keyring');
      let masterKey: Buffer;
      let keyPair;
      try {
        masterKey = credentials.masterKey ? parseMasterKey(credentials.masterKey) : ensureMasterKeyFile(secretsDir);
      } catch (err) {
        // A file that cannot be read or created says why; a bad key says what a good one is.
        throw new Error(err instanceof KeyStoreError ? RED._('ami-keyring.errors.master-key') : (err as Error).message);
      }
      try {
        keyPair = credentials.gatewayKey ? keyPairFromPrivatePem(credentials.gatewayKey) : ensureGatewayKeyFile(secretsDir);
      } catch {
        // The parser's message may quote the PEM; say only what is wrong.
        throw new Error(RED._('ami-keyring.errors.gateway-key'));
      }
      const gatewayId = hes?.gatewayId ?? os.hostname();
      let keyring: Keyring;
      try {
        keyring = await Keyring.open({
          db,
          masterKey,
          gatewaySystemTitle: systemTitleSetting || derivedSystemTitle(gatewayId),
          micThreshold,
        });
      } catch (err) {
        if (err instanceof KeyStoreError && err.code === 'MASTER_KEY_MISMATCH') {
          throw new Error(`${RED._('ami-keyring.errors.master-key-mismatch')}: ${err.message}`);
        }
        throw err;
      }
      if (closed) {
        // Closed while opening: nothing below may outlive the node.
        await keyring.close();
        throw new Error('the keyring node was closed while opening');
      }
      let sync: KeySync | undefined;
      const anchorsFile = stringProperty(def.trustAnchors);
      if (def.hes && !hes) {
        node.warn(`the HES endpoint configured for key sync (${def.hes}) does not exist; key sync is off`);
      } else if (hes && hes.sites.length === 0) {
        node.warn('the HES endpoint has no site configured; key sync is off');
      }
      if (hes && hes.sites.length > 0) {
        if (anchorsFile === '') {
          lastError = `${RED._('ami-keyring.errors.trust-anchors')}: no trust anchor file configured; key sync is off`;
          node.warn(lastError);
          gatewayHealth.setProblem(healthKey, lastError);
        } else {
          try {
            sync = new KeySync(keyring, {
              gateway: gatewayId,
              sites: hes.sites,
              trustAnchorsPem: readTrustAnchors(anchorsFile),
              privateKeyPem: keyPair.privateKeyPem,
              publicKeyPem: keyPair.publicKeyPem,
              timeoutMs: SYNC_TIMEOUT_MS,
            });
          } catch (err) {
            lastError = `${RED._('ami-keyring.errors.trust-anchors')}: ${(err as Error).message}; key sync is off`;
            node.error(lastError);
            gatewayHealth.setProblem(healthKey, lastError);
          }
        }
      }
      // Meters that fall out of sync together (a site's keys diverged) are resynced in one request.
      const resyncDue = new Map<string, string>();
      let resyncTimer: NodeJS.Timeout | undefined;
      removers.push(() => clearTimeout(resyncTimer));
      keyring.on('key-out-of-sync', ({ systemTitle, meter, failures }) => {
        node.warn(RED._('ami-keyring.errors.key-out-of-sync', { meter: meter ?? systemTitle, count: failures }));
        if (!sync) return;
        resyncDue.set(systemTitle, meter ?? systemTitle);
        resyncTimer ??= setTimeout(() => {
          resyncTimer = undefined;
          const due = [...resyncDue];
          resyncDue.clear();
          const names = due.map(([, name]) => name).join(', ');
          sync.sync({ systemTitles: due.map(([title]) => title) }).then(
            (result) => node.log(`resynced keys of ${names} from ${result.site} (epoch ${result.epoch})`),
            (err: Error) => node.warn(`${RED._('ami-keyring.errors.sync-failed')} (${names}): ${err.message}`),
          );
        }, RESYNC_GATHER_MS);
      });
      keyring.on('keys-changed', () => showStatus());
      removers.push(
        gatewayHealth.addKeysSource(() => {
          const status = keyring.status();
          return { meters: status.meters, epoch: status.epoch, fingerprint: status.fingerprint, outOfSync: status.outOfSync.length, lastSync: lastSync?.at ?? null };
        }),
      );
      return { keyring, lease, sync, publicKeyPem: keyPair.publicKeyPem };
    }

    function scheduleSync(delayMs: number): void {
      clearTimeout(syncTimer);
      if (closed || !opened?.sync) return;
      syncTimer = setTimeout(() => {
        runSync(false).catch(() => undefined);
      }, delayMs);
      syncTimer.unref();
    }

    /** One sync at a time; then the fingerprints of both sites are compared with ours. */
    function runSync(force: boolean, allowRollback = false): Promise<KeySyncResult> {
      if (syncing) return syncing;
      const attempt = (async () => {
        const { keyring, sync } = opened ?? (await ensureOpen());
        if (!sync) throw new KeySyncError('NO_SITE', 'key sync is not configured: set an HES endpoint and trust anchors');
        try {
          let result = await sync.sync({ force, allowRollback });
          lastSync = { at: new Date().toISOString(), site: result.site, meters: keyring.keys.size, epoch: result.epoch };
          node.log(RED._('ami-keyring.log.synced', { count: keyring.keys.size, epoch: result.epoch }) + ` (${result.site}${result.full ? ', full' : ''})`);
          lastFingerprints = await sync.compareFingerprints();
          const source = lastFingerprints.sites.find((site) => site.site === result.site);
          if (!force && source?.fingerprint && source.fingerprint !== lastFingerprints.local.fingerprint) {
            // Same epoch, different keys: only a full resync makes the stores equal again.
            node.warn(`key store differs from ${result.site} after an incremental sync; resyncing in full`);
            result = await sync.sync({ force: true });
            lastFingerprints = await sync.compareFingerprints();
          }
          if (lastFingerprints.sitesDisagree) {
            const detail = lastFingerprints.sites.map((site) => `${site.site}=${site.fingerprint?.slice(0, 12) ?? site.error}`).join(', ');
            node.warn(`${RED._('ami-keyring.errors.fingerprint-mismatch')}: ${detail}`);
            problem(`${RED._('ami-keyring.errors.fingerprint-mismatch')}: ${detail}`);
          } else {
            problem(undefined);
          }
          scheduleSync(syncIntervalMs);
          return result;
        } catch (err) {
          node.warn(`${RED._('ami-keyring.errors.sync-failed')}: ${(err as Error).message}`);
          problem(`${RED._('ami-keyring.errors.sync-failed')}: ${(err as Error).message}`);
          scheduleSync(Math.min(SYNC_RETRY_MS, syncIntervalMs));
          throw err;
        }
      })().finally(() => {
        syncing = undefined;
      });
      syncing = attempt;
      return attempt;
    }

    function ensureOpen(): Promise<OpenKeyring> {
      opening ??= openKeyring().then(
        (result) => {
          opened = result;
          if (closed) return result;
          showStatus();
          if (result.sync) runSync(false).catch(() => undefined);
          return result;
        },
        (err: Error) => {
          opening = undefined;
          if (closed) throw err;
          problem(err.message);
          users.status({ fill: 'red', shape: 'ring', text: err.message.slice(0, 60) });
          node.error(err.message);
          throw err;
        },
      );
      return opening;
    }

    node.keyring = async () => (await ensureOpen()).keyring;
    node.syncNow = (request) => {
      if (request.systemTitles && request.systemTitles.length > 0) {
        return ensureOpen().then(({ sync }) => {
          if (!sync) throw new KeySyncError('NO_SITE', 'key sync is not configured');
          return sync.sync(request);
        });
      }
      return runSync(request.force === true);
    };
    node.register = (user) => {
      users.register(user);
      if (configError !== undefined) {
        users.status({ fill: 'red', shape: 'ring', text: configError.slice(0, 60) });
        return;
      }
      ensureOpen().catch(() => undefined);
    };
    node.deregister = async (user) => {
      users.deregister(user);
    };

    keyrings.set(node.id, {
      // An operator's forced resync may take older keys (the HES rolled back on purpose); nothing else may.
      sync: (force) => runSync(force, force),
      report: async () => {
        const base: KeyringReport = { id: node.id, name: node.name ?? '', lastSync, lastError };
        if (!opened) return base;
        const status = opened.keyring.status();
        return {
          ...base,
          gatewaySystemTitle: opened.keyring.gatewaySystemTitle,
          gatewayPublicKey: opened.publicKeyPem,
          gatewayKeyFingerprint: publicKeyFingerprint(opened.publicKeyPem),
          meters: status.meters,
          epoch: status.epoch,
          pending: status.pending,
          fingerprint: status.fingerprint,
          outOfSync: status.outOfSync,
          counters: status.counters,
          ...(lastFingerprints ? { sites: lastFingerprints } : {}),
        };
      },
    });

    node.on('close', (done: () => void) => {
      closed = true;
      clearTimeout(syncTimer);
      keyrings.delete(node.id);
      for (const remove of removers.splice(0)) remove();
      gatewayHealth.setProblem(healthKey, undefined);
      const current = opening;
      opening = undefined;
      if (!current) {
        done();
        return;
      }
      current
        .then(async (result) => {
          await result.keyring.close();
          await result.lease.release();
        })
        .catch(() => undefined)
        .then(done, done);
    });
  }

  // The typings tie the constructor's `this` to the credentials' shape; our node type adds methods, so widen it here.
  RED.nodes.registerType('ami-keyring', AmiKeyring as unknown as Parameters<NodeAPI['nodes']['registerType']>[1], {
    credentials: {
      gatewayKey: { type: 'password' },
      masterKey: { type: 'password' },
    },
  });
};
