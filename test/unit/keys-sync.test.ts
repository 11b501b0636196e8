import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { cborEncode } from '../../src/coap/cbor.js';
import { CONTENT_FORMAT } from '../../src/coap/reading.js';
import { BLOCK_BYTES, coapCall } from '../../src/coap/request.js';
import { Keyring } from '../../src/keys/keyring.js';
import type { MeterKeySet } from '../../src/keys/keystore.js';
import { createTestPki, generateGatewayKeyPair, type RsaKeyPairPem } from '../../src/keys/pki.js';
import { KEYS_PATH, KeySync, KeySyncError, type KeySyncErrorCode } from '../../src/keys/sync.js';
import { SimulatedCosemMeter } from '../../src/sim/cosem-meter.js';
import { HesSimulator } from '../../src/sim/hes.js';
import { SimKeyManagement } from '../../src/sim/key-service.js';
import { DEFAULT_SIM_KEY_SEED, simMeterKeys, simMeterNames } from '../../src/sim/meter-keys.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';

const GATEWAY = 'gw-keysync-test';
const GATEWAY_TITLE = '4757303030303032';
const MASTER = Buffer.alloc(32, 0x33);
/** 20 meters: the bundle is a few KiB, so it travels block-wise (RFC 7959). */
const NAMES = simMeterNames(20, 'ks-');
const READING = [{ obis: '1.0.1.8.0.255', value: 42 }];
const YEAR_MS = 365 * 24 * 60 * 60 * 1000;

let gatewayKeys: RsaKeyPairPem;
let dir: string;
const leases: DatabaseLease[] = [];
const keyrings: Keyring[] = [];
const sims: HesSimulator[] = [];

beforeAll(() => {
  gatewayKeys = generateGatewayKeyPair();
});

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ami-keys-'));
});

afterEach(async () => {
  for (const hes of sims.splice(0)) await hes.stop();
  for (const keyring of keyrings.splice(0)) await keyring.close();
  for (const lease of leases.splice(0)) await lease.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function openKeyring(): Promise<Keyring> {
  const lease = await acquireDatabase(path.join(dir, 'db'));
  leases.push(lease);
  const keyring = await Keyring.open({ db: lease.db, masterKey: MASTER, gatewaySystemTitle: GATEWAY_TITLE, micThreshold: 3 });
  keyrings.push(keyring);
  return keyring;
}

async function startHes(km: SimKeyManagement): Promise<HesSimulator> {
  const hes = new HesSimulator({ port: 0, bind: '::1', keyManagement: km });
  sims.push(hes);
  await hes.start();
  return hes;
}

function keySync(keyring: Keyring, sites: string[], trustAnchorsPem: string[], timeoutMs = 5000): KeySync {
  return new KeySync(keyring, {
    gateway: GATEWAY,
    sites,
    trustAnchorsPem,
    privateKeyPem: gatewayKeys.privateKeyPem,
    publicKeyPem: gatewayKeys.publicKeyPem,
    timeoutMs,
  });
}

async function syncError(sync: KeySync, request: Parameters<KeySync['sync']>[0] = {}): Promise<KeySyncError> {
  let error: unknown;
  try {
    await sync.sync(request);
  } catch (err) {
    error = err;
  }
  expect(error).toBeInstanceOf(KeySyncError);
  return error as KeySyncError;
}

function expectSameKeys(keyring: Keyring, expected: MeterKeySet): void {
  const stored = keyring.keys.get(expected.systemTitle);
  expect(stored).toBeDefined();
  expect(stored?.epoch).toBe(expected.epoch);
  expect(stored?.meter).toBe(expected.meter);
  expect(stored?.ek.equals(expected.ek)).toBe(true);
  expect(stored?.ak.equals(expected.ak)).toBe(true);
  expect(stored?.kek.equals(expected.kek)).toBe(true);
}

describe('key sync over CoAP', () => {
  let km: SimKeyManagement;
  let primary: HesSimulator;
  let secondary: HesSimulator;
  let keyring: Keyring;

  beforeEach(async () => {
    km = new SimKeyManagement({ meters: NAMES });
    primary = await startHes(km);
    secondary = await startHes(km);
    keyring = await openKeyring();
  });

  it('brings every meter from the primary (block-wise) and the sites agree with the gateway', async () => {
    const sync = keySync(keyring, [primary.url, secondary.url], [km.trustAnchorPem]);
    const before = await sync.compareFingerprints();
    expect(before).toMatchObject({ inSync: false, sitesDisagree: false, local: { count: 0 } });

    const result = await sync.sync();
    expect(result).toMatchObject({ site: primary.url, full: false, epoch: 1, meters: NAMES.length });
    expect(result.changes).toMatchObject({ added: NAMES.length, updated: 0, removed: 0 });
    expect(keyring.status()).toMatchObject({ meters: NAMES.length, epoch: 1, pending: 0 });
    for (const name of NAMES) expectSameKeys(keyring, simMeterKeys(DEFAULT_SIM_KEY_SEED, name, 1));

    // The bundle did not fit one CoAP block.
    const response = await coapCall(`${primary.url}${KEYS_PATH}`, {
      method: 'POST',
      payload: cborEncode({ gateway: GATEWAY, since: 0, force: false, publicKey: gatewayKeys.publicKeyPem }),
      contentFormat: CONTENT_FORMAT.cbor,
      accept: CONTENT_FORMAT.cbor,
      timeoutMs: 5000,
    });
    expect(response.code).toBe('2.05');
    expect(response.payload.length).toBeGreaterThan(BLOCK_BYTES);

    const meter = new SimulatedCosemMeter(simMeterKeys(DEFAULT_SIM_KEY_SEED, NAMES[7] as string, 1));
    const opened = await keyring.openFrame(meter.pushFrame(READING));
    expect(opened).toMatchObject({ meter: NAMES[7], systemTitle: meter.systemTitle, repeat: false });
    expect(opened.apdu.type).toBe('data-notification');

    const report = await sync.compareFingerprints();
    expect(report.inSync).toBe(true);
    expect(report.sitesDisagree).toBe(false);
    expect(report.local).toEqual({ fingerprint: keyring.status().fingerprint, epoch: 1, count: NAMES.length });
    expect(report.sites).toEqual([
      { site: primary.url, fingerprint: report.local.fingerprint, epoch: 1, count: NAMES.length },
      { site: secondary.url, fingerprint: report.local.fingerprint, epoch: 1, count: NAMES.length },
    ]);
  });

  it('an incremental sync brings only the rotated meter', async () => {
    const sync = keySync(keyring, [primary.url, secondary.url], [km.trustAnchorPem]);
    await sync.sync();
    const name = NAMES[3] as string;
    const rotated = km.rotate(name);
    expect(rotated.epoch).toBe(2);

    const result = await sync.sync();
    expect(result.meters).toBe(1);
    expect(result.epoch).toBe(2);
    expect(result.changes).toMatchObject({ added: 0, updated: 1, removed: 0, rekeyed: [rotated.systemTitle] });
    expectSameKeys(keyring, rotated);
    expect(keyring.status()).toMatchObject({ meters: NAMES.length, epoch: 2 });
    // Other meters keep their keys.
    expectSameKeys(keyring, simMeterKeys(DEFAULT_SIM_KEY_SEED, NAMES[4] as string, 1));

    const meter = new SimulatedCosemMeter(rotated);
    expect((await keyring.openFrame(meter.pushFrame(READING))).meter).toBe(name);

    // Nothing newer: nothing comes.
    const idle = await sync.sync();
    expect(idle.meters).toBe(0);
    expect(idle.changes.rekeyed).toEqual([]);
    expect((await sync.compareFingerprints()).inSync).toBe(true);
  });

  it('fails over to the secondary when the primary is down', async () => {
    await keySync(keyring, [primary.url, secondary.url], [km.trustAnchorPem]).sync();
    // A dead site costs its whole timeout: keep it short.
    const sync = keySync(keyring, [primary.url, secondary.url], [km.trustAnchorPem], 1000);
    const rotated = km.rotate(NAMES[0] as string);
    await primary.stop();

    const result = await sync.sync();
    expect(result.site).toBe(secondary.url);
    expect(result.meters).toBe(1);
    expectSameKeys(keyring, rotated);

    const report = await sync.compareFingerprints();
    expect(report.sites[0]?.site).toBe(primary.url);
    expect(report.sites[0]?.fingerprint).toBeUndefined();
    expect(report.sites[0]?.error).toEqual(expect.any(String));
    expect(report.inSync).toBe(true);

    await secondary.stop();
    const err = await syncError(keySync(keyring, [primary.url, secondary.url], [km.trustAnchorPem], 400));
    expect(err.code).toBe('UNREACHABLE' satisfies KeySyncErrorCode);
    expect(err.attempts).toHaveLength(2);
  });

  it('refuses bundles from an untrusted or expired signer and keeps the keys', async () => {
    await keySync(keyring, [primary.url], [km.trustAnchorPem]).sync();
    const fingerprint = keyring.status().fingerprint;

    // Another utility's PKI, which also has newer keys on offer.
    const foreignKm = new SimKeyManagement({ meters: NAMES, pki: createTestPki({ commonNamePrefix: 'Foreign Utility' }) });
    foreignKm.rotate(NAMES[0] as string);
    const foreign = await startHes(foreignKm);
    const untrusted = keySync(keyring, [foreign.url], [km.trustAnchorPem]);
    const err = await syncError(untrusted);
    expect(err.code).toBe('UNTRUSTED_CHAIN' satisfies KeySyncErrorCode);
    expect(err.attempts).toHaveLength(1);
    expect((await syncError(untrusted, { force: true })).code).toBe('UNTRUSTED_CHAIN');
    expect(keyring.status().fingerprint).toBe(fingerprint);

    // A signer (and root) whose validity ended long ago.
    const expiredPki = createTestPki({ now: new Date(Date.now() - 2 * YEAR_MS), validDays: 1, commonNamePrefix: 'Expired' });
    const expiredKm = new SimKeyManagement({ meters: NAMES, pki: expiredPki });
    expiredKm.rotate(NAMES[1] as string);
    const expired = await startHes(expiredKm);
    const stale = keySync(keyring, [expired.url], [expiredPki.rootCertPem]);
    const expiredErr = await syncError(stale);
    expect(expiredErr.code).toBe('CERT_EXPIRED' satisfies KeySyncErrorCode);
    expect(keyring.status().fingerprint).toBe(fingerprint);
    expectSameKeys(keyring, simMeterKeys(DEFAULT_SIM_KEY_SEED, NAMES[1] as string, 1));

    // A site with a bad bundle does not stop a good site after it.
    const rotated = km.rotate(NAMES[2] as string);
    const mixed = keySync(keyring, [foreign.url, expired.url, secondary.url], [km.trustAnchorPem, expiredPki.rootCertPem]);
    const result = await mixed.sync();
    expect(result).toMatchObject({ site: secondary.url, meters: 1 });
    expectSameKeys(keyring, rotated);
  });

  it('targeted resync replaces a meter whose keys changed at the same epoch', async () => {
    const sync = keySync(keyring, [primary.url, secondary.url], [km.trustAnchorPem]);
    await sync.sync();
    const name = NAMES[5] as string;
    const replaced: MeterKeySet = { ...simMeterKeys('re-provisioned', name, 1) };
    km.setKeys(replaced);
    const meter = new SimulatedCosemMeter(replaced);

    // An incremental sync cannot see a change at the same epoch.
    const plain = await sync.sync();
    expect(plain.meters).toBe(0);
    expectSameKeys(keyring, simMeterKeys(DEFAULT_SIM_KEY_SEED, name, 1));
    expect((await sync.compareFingerprints()).inSync).toBe(false);
    const refused = await keyring.openFrame(meter.pushFrame(READING)).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'MIC_FAILURE' });

    const targeted = await sync.sync({ systemTitles: [replaced.systemTitle] });
    expect(targeted.meters).toBe(1);
    expect(targeted.changes).toMatchObject({ added: 0, updated: 1, removed: 0, rekeyed: [replaced.systemTitle] });
    expectSameKeys(keyring, replaced);
    expect(keyring.status().meters).toBe(NAMES.length);
    expect((await sync.compareFingerprints()).inSync).toBe(true);
    const opened = await keyring.openFrame(meter.pushFrame(READING));
    expect(opened.meter).toBe(name);
    expect(keyring.micFailures(replaced.systemTitle).streak).toBe(0);
  });
});

describe('sites that disagree', () => {
  it('is reported by compareFingerprints', async () => {
    const primaryKm = new SimKeyManagement({ meters: NAMES, seed: 'shared-seed' });
    const secondaryKm = new SimKeyManagement({ meters: NAMES, seed: 'shared-seed', pki: primaryKm.pki });
    expect(secondaryKm.fingerprint()).toEqual(primaryKm.fingerprint());
    const name = NAMES[9] as string;
    secondaryKm.setKeys({ ...simMeterKeys('diverged', name, 1) });
    const primary = await startHes(primaryKm);
    const secondary = await startHes(secondaryKm);
    const keyring = await openKeyring();
    const sync = keySync(keyring, [primary.url, secondary.url], [primaryKm.trustAnchorPem]);
    await sync.sync();
    expectSameKeys(keyring, simMeterKeys('shared-seed', name, 1));

    const report = await sync.compareFingerprints();
    expect(report.sitesDisagree).toBe(true);
    expect(report.inSync).toBe(false);
    expect(report.sites[0]?.fingerprint).toBe(report.local.fingerprint);
    expect(report.sites[1]?.fingerprint).toEqual(expect.stringMatching(/^[0-9a-f]{64}$/));
    expect(report.sites[1]?.fingerprint).not.toBe(report.local.fingerprint);
  });
});
