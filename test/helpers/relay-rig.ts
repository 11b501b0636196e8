/**
 * Simulated meters behind the gateway's relay port, with real components on
 * loopback: a MeterFleet of ciphered DLMS meters serving on their own sockets
 * (not registering), the gateway's keyring on a LevelDB in a temporary folder
 * holding the meters' keys, a MeshClient on 127.0.0.1 and a DlmsRelayPort
 * that finds each meter by name. Tests build on top of it (a RelayService
 * with its journal on `lease.db`, for instance). Not used in production.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MeshClient } from '../../src/coap/client/client.js';
import type { TransmissionParameters } from '../../src/coap/client/parameters.js';
import type { PeerAddress } from '../../src/coap/client/transport.js';
import { Keyring } from '../../src/keys/keyring.js';
import type { MeterKeySet } from '../../src/keys/keystore.js';
import { DlmsRelayPort } from '../../src/relay/dlms-port.js';
import { simMeterKeys } from '../../src/sim/meter-keys.js';
import { MeterFleet, type MeterFleetOptions } from '../../src/sim/meters.js';
import type { FaultAssignment } from '../../src/sim/relay.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';

export interface RelayMeterRigOptions {
  /** Key seed of the simulated meters; the gateway's keyring gets the keys derived from it. */
  seed: string;
  /** The keyring's master key. */
  masterKey: Buffer;
  /** The gateway's system title (hex). */
  gatewaySystemTitle: string;
  /** How many meters (mtr-000001, ...). */
  count: number;
  faults?: FaultAssignment[];
  /** The meters' packet loss (default none). */
  lossRate?: number;
  /** Options of every meter's relay (rechargeMs, ...). */
  relay?: MeterFleetOptions['relay'];
  /** The mesh client's retransmission parameters. */
  transmission: Partial<TransmissionParameters>;
  /** The mesh client's outstanding exchanges (default the client's). */
  maxConcurrent?: number;
  /** Meters whose keys the gateway holds wrong (another seed's EK and AK) instead of the meter's own. */
  wrongKeysFor?: string[];
  /** Prefix of the temporary folder holding the database (default 'relay-rig-'). */
  tmpPrefix?: string;
}

export interface RelayMeterRig {
  fleet: MeterFleet;
  client: MeshClient;
  keyring: Keyring;
  lease: DatabaseLease;
  port: DlmsRelayPort;
  /** The meters' names, in fleet order. */
  names: string[];
  /** Closes the keyring and the client, stops the fleet, releases the database and removes the folder; never throws. */
  close(): Promise<void>;
}

/** Starts the rig; if a step fails, what was opened is closed again before the error is thrown. */
export async function startRelayMeterRig(options: RelayMeterRigOptions): Promise<RelayMeterRig> {
  const dir = await mkdtemp(path.join(tmpdir(), options.tmpPrefix ?? 'relay-rig-'));
  const opened: Partial<Omit<RelayMeterRig, 'close'>> = {};
  const close = async (): Promise<void> => {
    await opened.keyring?.close().catch(() => undefined);
    await opened.client?.close().catch(() => undefined);
    await opened.fleet?.stop().catch(() => undefined);
    await opened.lease?.release().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const fleet = new MeterFleet({
      count: options.count,
      gateway: 'coap://127.0.0.1:5683',
      intervalMs: 60_000,
      protocol: 'dlms',
      keySeed: options.seed,
      readings: false,
      register: false,
      serve: true,
      startSpreadMs: 0,
      faults: options.faults ?? [],
      lossRate: options.lossRate ?? 0,
      ...(options.relay ? { relay: options.relay } : {}),
    });
    opened.fleet = fleet;
    await fleet.start();
    const meters = fleet.meters();
    const names = meters.map((m) => m.name);
    const addresses = new Map<string, PeerAddress>(meters.map((m) => [m.name, m.address]));

    const lease = await acquireDatabase(path.join(dir, 'db'));
    opened.lease = lease;
    const keyring = await Keyring.open({ db: lease.db, masterKey: options.masterKey, gatewaySystemTitle: options.gatewaySystemTitle, micThreshold: 3 });
    opened.keyring = keyring;
    const wrong = new Set(options.wrongKeysFor ?? []);
    const keys: MeterKeySet[] = names.map((name) => {
      const real = simMeterKeys(options.seed, name, 1);
      if (!wrong.has(name)) return real;
      const other = simMeterKeys('not-the-seed', name, 1);
      return { ...real, ek: other.ek, ak: other.ak };
    });
    await keyring.applyKeys(keys, { full: false });

    const client = await MeshClient.open(
      { bind: '127.0.0.1' },
      { transmission: options.transmission, ...(options.maxConcurrent !== undefined ? { maxConcurrent: options.maxConcurrent } : {}) },
    );
    opened.client = client;
    const port = new DlmsRelayPort({ client, keyring, resolve: (meter) => addresses.get(meter) });
    return { fleet, client, keyring, lease, port, names, close };
  } catch (err) {
    await close();
    throw err;
  }
}
