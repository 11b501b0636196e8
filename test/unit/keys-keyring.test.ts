import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Level } from 'level';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeApdu, type GetRequestApdu, type XdlmsApdu } from '../../src/dlms/apdu.js';
import { DlmsError, type DlmsErrorCode } from '../../src/dlms/errors.js';
import { encryptApdu } from '../../src/dlms/security.js';
import { encodeWrapper } from '../../src/dlms/wrapper.js';
import { Keyring, type KeyOutOfSync } from '../../src/keys/keyring.js';
import { KeyStoreError, type MeterKeySet } from '../../src/keys/keystore.js';
import { transferGlobalKeys } from '../../src/keys/rotation.js';
import { SimulatedCosemMeter } from '../../src/sim/cosem-meter.js';
import { simMeterKeys, simMeterNames } from '../../src/sim/meter-keys.js';
import { acquireDatabase, openSublevel, type DatabaseLease } from '../../src/store/database.js';

const SEED = 'keys-keyring-test';
const MASTER = Buffer.alloc(32, 0x5a);
const GATEWAY_TITLE = '4757303030303031';
const NAMES = simMeterNames(3, 'kr-');
const METER_KEYS: MeterKeySet[] = NAMES.map((name) => simMeterKeys(SEED, name, 1));
const READING = [{ obis: '1.0.1.8.0.255', value: 123456, scaler: 0, unit: 'Wh' }];

/** Hex (both cases) of every key the tests use: none may appear in an error message. */
function keyHexes(sets: Array<Pick<MeterKeySet, 'ek' | 'ak' | 'kek'>>): string[] {
  return sets.flatMap((k) => [k.ek, k.ak, k.kek]).flatMap((key) => [key.toString('hex'), key.toString('hex').toUpperCase()]);
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

async function expectDlmsError(promise: Promise<unknown>, code: DlmsErrorCode): Promise<DlmsError> {
  const err = await rejection(promise);
  expect(err).toBeInstanceOf(DlmsError);
  expect((err as DlmsError).code).toBe(code);
  return err as DlmsError;
}

let dir: string;
let dbPath: string;
const leases: DatabaseLease[] = [];
const keyrings: Keyring[] = [];

interface Handle {
  lease: DatabaseLease;
  keyring: Keyring;
}

async function openKeyring(masterKey: Uint8Array = MASTER, micThreshold = 3): Promise<Handle> {
  const lease = await acquireDatabase(dbPath);
  leases.push(lease);
  const keyring = await Keyring.open({ db: lease.db, masterKey, gatewaySystemTitle: GATEWAY_TITLE, micThreshold });
  keyrings.push(keyring);
  return { lease, keyring };
}

async function closeHandle(handle: Handle): Promise<void> {
  await handle.keyring.close();
  await handle.lease.release();
}

/** Close the keyring, give back the database, open both again. */
async function restart(handle: Handle, micThreshold = 3): Promise<Handle> {
  await closeHandle(handle);
  return openKeyring(MASTER, micThreshold);
}

async function keyringWithMeters(keys: MeterKeySet[] = METER_KEYS): Promise<Handle> {
  const handle = await openKeyring();
  const changes = await handle.keyring.applyKeys(keys, { full: false });
  expect(changes.added).toBe(keys.length);
  return handle;
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ami-keys-'));
  dbPath = path.join(dir, 'db');
});

afterEach(async () => {
  for (const keyring of keyrings.splice(0)) await keyring.close();
  for (const lease of leases.splice(0)) await lease.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

function filesUnder(root: string): string[] {
  return fs.readdirSync(root, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(root, entry.name);
    return entry.isDirectory() ? filesUnder(full) : entry.isFile() ? [full] : [];
  });
}

describe('key store at rest', () => {
  it('survives a reopen with the same master key, refuses another one, and never writes a key in clear', async () => {
    const first = await keyringWithMeters();
    expect(first.keyring.status()).toMatchObject({ meters: 3, epoch: 1, pending: 0 });
    await closeHandle(first);

    const again = await openKeyring();
    for (const keys of METER_KEYS) {
      const stored = again.keyring.keys.get(keys.systemTitle);
      expect(stored).toBeDefined();
      expect(stored).toMatchObject({ systemTitle: keys.systemTitle, meter: keys.meter, epoch: 1 });
      expect(stored?.ek.equals(keys.ek)).toBe(true);
      expect(stored?.ak.equals(keys.ak)).toBe(true);
      expect(stored?.kek.equals(keys.kek)).toBe(true);
      expect(again.keyring.keys.systemTitleOf(keys.meter)).toBe(keys.systemTitle);
    }
    await closeHandle(again);

    const otherMaster = Buffer.alloc(32, 0xa5);
    const lease = await acquireDatabase(dbPath);
    leases.push(lease);
    const err = await rejection(Keyring.open({ db: lease.db, masterKey: otherMaster, gatewaySystemTitle: GATEWAY_TITLE, micThreshold: 3 }));
    expect(err).toBeInstanceOf(KeyStoreError);
    expect((err as KeyStoreError).code).toBe('MASTER_KEY_MISMATCH');
    expect((err as Error).message).not.toMatch(/[0-9a-f]{32}/i);

    // The raw `keys` sublevel holds sealed records only.
    const records = openSublevel(lease.db, 'keys');
    const sealedValues: Buffer[] = [];
    for await (const [key, value] of records.iterator()) {
      const bytes = Buffer.from(value);
      sealedValues.push(bytes);
      for (const keys of METER_KEYS) {
        for (const secret of [keys.ek, keys.ak, keys.kek]) expect(bytes.includes(secret)).toBe(false);
      }
      expect(key === '\u0000canary' || METER_KEYS.some((k) => k.systemTitle === key)).toBe(true);
    }
    expect(sealedValues).toHaveLength(METER_KEYS.length + 1);
    await lease.release();

    // Every file of the database directory: no key, raw or as hex text.
    const files = filesUnder(dbPath);
    expect(files.length).toBeGreaterThan(0);
    const disk = Buffer.concat(files.map((file) => fs.readFileSync(file)));
    // The scan sees the records (random ciphertext is stored as it is), so a key in clear would show.
    for (const sealed of sealedValues) expect(disk.includes(sealed)).toBe(true);
    for (const keys of METER_KEYS) {
      for (const secret of [keys.ek, keys.ak, keys.kek]) {
        expect(disk.includes(secret)).toBe(false);
        expect(disk.includes(Buffer.from(secret.toString('hex')))).toBe(false);
        expect(disk.includes(Buffer.from(secret.toString('hex').toUpperCase()))).toBe(false);
        expect(disk.includes(Buffer.from(secret.toString('base64')))).toBe(false);
      }
    }

    // The refused master key changed nothing: the right one still opens the store.
    const last = await openKeyring();
    expect(last.keyring.status()).toMatchObject({ meters: 3, epoch: 1 });
  });

  it('also scans a store written through a fresh raw LevelDB handle', async () => {
    const handle = await keyringWithMeters();
    await closeHandle(handle);
    // A plain Level handle (no sublevel helper) sees prefixed keys and sealed values only.
    const raw = new Level<string, Uint8Array>(dbPath, { valueEncoding: 'view' });
    await raw.open();
    try {
      let count = 0;
      for await (const [key, value] of raw.iterator()) {
        count += 1;
        for (const keys of METER_KEYS) {
          for (const secret of [keys.ek, keys.ak, keys.kek]) {
            expect(Buffer.from(value).includes(secret)).toBe(false);
            expect(key.includes(secret.toString('hex'))).toBe(false);
          }
        }
      }
      expect(count).toBeGreaterThanOrEqual(METER_KEYS.length + 1);
    } finally {
      await raw.close();
    }
  });
});

describe('openFrame', () => {
  it('opens data-notifications pushed by a simulated meter', async () => {
    const { keyring } = await keyringWithMeters();
    for (const keys of METER_KEYS) {
      const meter = new SimulatedCosemMeter(keys);
      const opened = await keyring.openFrame(meter.pushFrame(READING));
      expect(opened.apdu.type).toBe('data-notification');
      expect(opened.systemTitle).toBe(keys.systemTitle);
      expect(opened.meter).toBe(keys.meter);
      expect(opened.security).toMatchObject({ invocationCounter: 1, systemTitle: keys.systemTitle, framing: 'general-glo', authentication: true, encryption: true });
      expect(opened.repeat).toBe(false);
      expect(opened.switchedToPendingKeys).toBe(false);
      if (opened.apdu.type !== 'data-notification') throw new Error('unreachable');
      expect(opened.apdu.body).toMatchObject({ type: 'structure', items: [{ type: 'visible-string', value: keys.meter }, { type: 'array' }] });

      // The same meter's next frame, inside the DLMS/COSEM UDP wrapper.
      const wrapped = encodeWrapper({ version: 1, sourceWPort: 1, destinationWPort: 0x10, apdu: meter.pushFrame(READING) });
      const openedWrapped = await keyring.openFrame(wrapped);
      expect(openedWrapped.wrapper).toEqual({ version: 1, sourceWPort: 1, destinationWPort: 0x10 });
      expect(openedWrapped.security?.invocationCounter).toBe(2);
      expect(openedWrapped.apdu.type).toBe('data-notification');
    }
    expect(keyring.status().counters).toMatchObject({ opened: 6, micFailures: 0, replays: 0 });
  });
});

describe('replay protection', () => {
  it('passes a resent last frame as a repeat, refuses older frames, also after a restart', async () => {
    let handle = await keyringWithMeters();
    const keys = METER_KEYS[0] as MeterKeySet;
    const meter = new SimulatedCosemMeter(keys);
    const older = meter.pushFrame(READING);
    const newer = meter.pushFrame(READING);

    const fresh = await handle.keyring.openFrame(newer);
    expect(fresh.repeat).toBe(false);
    const again = await handle.keyring.openFrame(newer);
    expect(again.repeat).toBe(true);
    expect(again.apdu.type).toBe('data-notification');
    const err = await expectDlmsError(handle.keyring.openFrame(older), 'REPLAY');
    expect(err.message).toContain(keys.systemTitle);
    expect(handle.keyring.status().counters.replays).toBe(1);

    handle = await restart(handle);
    await expectDlmsError(handle.keyring.openFrame(older), 'REPLAY');
    const afterRestart = await handle.keyring.openFrame(newer);
    expect(afterRestart.repeat).toBe(true);
    const next = await handle.keyring.openFrame(meter.pushFrame(READING));
    expect(next.repeat).toBe(false);
    expect(next.security?.invocationCounter).toBe(3);

    // replayCheck: false opens an old frame without refusing it (and without moving the counter).
    const unchecked = await handle.keyring.openFrame(older, { replayCheck: false });
    expect(unchecked.security?.invocationCounter).toBe(1);
    await expectDlmsError(handle.keyring.openFrame(older), 'REPLAY');
  });

  it('two copies of one frame opened at the same time: exactly one is fresh', async () => {
    const { keyring } = await keyringWithMeters();
    const meter = new SimulatedCosemMeter(METER_KEYS[0] as MeterKeySet);
    const frame = meter.pushFrame(READING);
    const both = await Promise.all([keyring.openFrame(frame), keyring.openFrame(frame)]);
    expect(both.map((opened) => opened.repeat).sort()).toEqual([false, true]);
    const older = meter.pushFrame(READING);
    const newer = meter.pushFrame(READING);
    const results = await Promise.allSettled([keyring.openFrame(newer), keyring.openFrame(older)]);
    expect(results[0].status).toBe('fulfilled');
    expect(results[1].status).toBe('rejected');
    expect(((results[1] as PromiseRejectedResult).reason as DlmsError).code).toBe('REPLAY');
  });

  it('a forged frame with a huge invocation counter does not move the counter', async () => {
    const { keyring } = await keyringWithMeters();
    const keys = METER_KEYS[1] as MeterKeySet;
    const meter = new SimulatedCosemMeter(keys);
    await keyring.openFrame(meter.pushFrame(READING));

    const plain = encodeApdu({ type: 'data-notification', longInvokeIdAndPriority: 1, body: { type: 'null' } });
    const forged = encryptApdu(plain, {
      keys,
      systemTitle: Buffer.from(keys.systemTitle, 'hex'),
      invocationCounter: 0xffff_fff0,
      security: 'authenticated-encrypted',
      framing: 'general-glo',
    });
    // Flip a bit of the last ciphertext byte (the 12-byte tag follows it).
    const index = forged.length - 13;
    forged[index] = (forged[index] as number) ^ 0x01;
    const err = await expectDlmsError(keyring.openFrame(forged), 'MIC_FAILURE');
    expect(err.message).toContain(keys.systemTitle);

    const genuine = await keyring.openFrame(meter.pushFrame(READING));
    expect(genuine.repeat).toBe(false);
    expect(genuine.security?.invocationCounter).toBe(2);
  });
});

describe('MIC failures', () => {
  it('reports a meter out of sync once per episode and never puts keys in messages', async () => {
    const { keyring } = await keyringWithMeters();
    const keys = METER_KEYS[2] as MeterKeySet;
    const wrongKeys: MeterKeySet = { ...simMeterKeys('another-seed', keys.meter, 1), systemTitle: keys.systemTitle };
    const impostor = new SimulatedCosemMeter(wrongKeys);
    const meter = new SimulatedCosemMeter(keys);
    const events: KeyOutOfSync[] = [];
    keyring.on('key-out-of-sync', (info) => events.push(info));
    const messages: string[] = [];

    for (let i = 1; i <= 5; i++) {
      const err = await expectDlmsError(keyring.openFrame(impostor.pushFrame(READING)), 'MIC_FAILURE');
      messages.push(err.message);
      expect(events).toHaveLength(i < 3 ? 0 : 1);
      expect(keyring.micFailures(keys.systemTitle)).toEqual({ streak: i, total: i });
    }
    expect(events).toEqual([{ systemTitle: keys.systemTitle, meter: keys.meter, failures: 3 }]);
    expect(keyring.status().outOfSync).toEqual([keys.systemTitle]);
    expect(keyring.status().counters.micFailures).toBe(5);

    // A genuine frame ends the episode.
    const genuine = await keyring.openFrame(meter.pushFrame(READING));
    expect(genuine.apdu.type).toBe('data-notification');
    expect(keyring.micFailures(keys.systemTitle)).toEqual({ streak: 0, total: 5 });
    expect(keyring.status().outOfSync).toEqual([]);

    // A new episode needs the full threshold again, and is reported again.
    for (let i = 1; i <= 3; i++) {
      const err = await expectDlmsError(keyring.openFrame(impostor.pushFrame(READING)), 'MIC_FAILURE');
      messages.push(err.message);
      expect(events).toHaveLength(i < 3 ? 1 : 2);
    }
    expect(events[1]).toEqual({ systemTitle: keys.systemTitle, meter: keys.meter, failures: 3 });
    expect(keyring.status().counters.micFailures).toBe(8);

    const secrets = keyHexes([...METER_KEYS, wrongKeys]);
    for (const message of messages) {
      for (const hex of secrets) expect(message).not.toContain(hex);
    }
    expect(JSON.stringify(keyring.status())).not.toMatch(new RegExp(secrets.join('|')));
  });
});

describe('frames the keyring cannot attribute', () => {
  it('NO_KEYS, NO_SYSTEM_TITLE and UNPROTECTED', async () => {
    const { keyring } = await keyringWithMeters();
    const keys = METER_KEYS[0] as MeterKeySet;

    const stranger = new SimulatedCosemMeter(simMeterKeys(SEED, 'stranger', 1));
    const noKeys = await expectDlmsError(keyring.openFrame(stranger.pushFrame(READING)), 'NO_KEYS');
    expect(noKeys.message).toContain(stranger.systemTitle);
    expect(keyring.status().counters.noKeys).toBe(1);

    const response: XdlmsApdu = { type: 'get-response', invokeIdAndPriority: 0xc1, result: { data: { type: 'unsigned', value: 7 } } };
    const glo = encryptApdu(encodeApdu(response), {
      keys,
      systemTitle: Buffer.from(keys.systemTitle, 'hex'),
      invocationCounter: 10,
      security: 'authenticated-encrypted',
      framing: 'glo',
    });
    await expectDlmsError(keyring.openFrame(glo), 'NO_SYSTEM_TITLE');
    await expectDlmsError(keyring.openFrame(glo, { meter: 'not-in-the-store' }), 'NO_SYSTEM_TITLE');
    await expectDlmsError(keyring.openFrame(glo, { systemTitle: 'xyz' }), 'NO_SYSTEM_TITLE');
    const byMeter = await keyring.openFrame(glo, { meter: keys.meter });
    expect(byMeter).toMatchObject({ systemTitle: keys.systemTitle, meter: keys.meter, apdu: response });
    expect(byMeter.security).toMatchObject({ framing: 'glo', invocationCounter: 10 });
    expect(byMeter.security?.systemTitle).toBeUndefined();

    const untitled = encryptApdu(encodeApdu(response), {
      keys,
      systemTitle: Buffer.from(keys.systemTitle, 'hex'),
      invocationCounter: 11,
      security: 'authenticated-encrypted',
      framing: 'general-glo',
      includeSystemTitle: false,
    });
    await expectDlmsError(keyring.openFrame(untitled), 'NO_SYSTEM_TITLE');
    const byTitle = await keyring.openFrame(untitled, { systemTitle: keys.systemTitle.toUpperCase() });
    expect(byTitle.systemTitle).toBe(keys.systemTitle);

    const plain = encodeApdu({ type: 'data-notification', longInvokeIdAndPriority: 5, body: { type: 'visible-string', value: 'hello' } });
    await expectDlmsError(keyring.openFrame(plain), 'UNPROTECTED');
    await expectDlmsError(keyring.openFrame(encodeWrapper({ sourceWPort: 1, destinationWPort: 1, apdu: plain })), 'UNPROTECTED');
    const allowed = await keyring.openFrame(plain, { allowPlain: true, meter: keys.meter });
    expect(allowed.apdu).toMatchObject({ type: 'data-notification', longInvokeIdAndPriority: 5 });
    expect(allowed.systemTitle).toBeUndefined();
    expect(allowed.security).toBeUndefined();
  });
});

describe('sealFrame', () => {
  const getName: GetRequestApdu = {
    type: 'get-request',
    invokeIdAndPriority: 0xc1,
    descriptor: { classId: 1, instanceId: '0.0.42.0.0.255', attributeId: 2 },
  };

  it('seals requests the meter answers, with counters that are never reused across a restart', async () => {
    let handle = await keyringWithMeters();
    const keys = METER_KEYS[0] as MeterKeySet;
    const meter = new SimulatedCosemMeter(keys);
    const used: number[] = [];

    const exchange = async (keyring: Keyring, framing: 'glo' | 'general-glo'): Promise<void> => {
      const sealed = await keyring.sealFrame(getName, { meter: keys.meter }, { security: 'authenticated-encrypted', framing });
      expect(sealed).toMatchObject({ systemTitle: keys.systemTitle, meter: keys.meter });
      used.push(sealed.invocationCounter);
      const answer = meter.handleRequest(sealed.frame, framing === 'glo' ? GATEWAY_TITLE : undefined);
      const opened = await keyring.openFrame(answer);
      expect(opened.systemTitle).toBe(keys.systemTitle);
      expect(opened.apdu).toEqual({
        type: 'get-response',
        invokeIdAndPriority: 0xc1,
        result: { data: { type: 'octet-string', value: new Uint8Array(Buffer.from(keys.meter)) } },
      });
    };

    await exchange(handle.keyring, 'general-glo');
    await exchange(handle.keyring, 'glo');
    await exchange(handle.keyring, 'general-glo');
    expect(handle.keyring.status().counters.sealed).toBe(3);

    handle = await restart(handle);
    await exchange(handle.keyring, 'general-glo');
    await exchange(handle.keyring, 'glo');
    handle = await restart(handle);
    await exchange(handle.keyring, 'general-glo');

    for (let i = 1; i < used.length; i++) expect(used[i] as number).toBeGreaterThan(used[i - 1] as number);
    expect(new Set(used).size).toBe(used.length);

    // The meter refuses a request replayed with an old counter.
    const sealed = await handle.keyring.sealFrame(getName, { systemTitle: keys.systemTitle }, { security: 'authenticated-encrypted', framing: 'general-glo' });
    meter.handleRequest(sealed.frame);
    expect(() => meter.handleRequest(sealed.frame)).toThrow(DlmsError);

    await expectDlmsError(handle.keyring.sealFrame(getName, { meter: 'unknown' }, { security: 'authenticated', framing: 'glo' }), 'NO_SYSTEM_TITLE');
    await expectDlmsError(handle.keyring.sealFrame(getName, { systemTitle: '0011223344556677' }, { security: 'authenticated', framing: 'glo' }), 'NO_KEYS');
  });
});

describe('global key transfer', () => {
  const next = (meter: string, epoch: number): { epoch: number; ek: Buffer; ak: Buffer } => {
    const keys = simMeterKeys(`${SEED}/next`, meter, epoch);
    return { epoch, ek: keys.ek, ak: keys.ak };
  };

  it('is confirmed by the meter and the new keys become current', async () => {
    const { keyring } = await keyringWithMeters();
    const keys = METER_KEYS[0] as MeterKeySet;
    const meter = new SimulatedCosemMeter(keys);
    await keyring.openFrame(meter.pushFrame(READING));
    const changed: string[][] = [];
    keyring.on('keys-changed', (titles) => changed.push(titles));

    const newKeys = next(keys.meter, 2);
    const outcome = await transferGlobalKeys(keyring, {
      systemTitle: keys.systemTitle,
      next: newKeys,
      send: async (frame) => meter.handleRequest(frame),
    });
    expect(outcome).toEqual({ result: 'confirmed', epoch: 2 });
    const current = keyring.keys.get(keys.systemTitle);
    expect(current?.pending).toBeUndefined();
    expect(current?.epoch).toBe(2);
    expect(current?.ek.equals(meter.currentKeys.ek)).toBe(true);
    expect(current?.ak.equals(meter.currentKeys.ak)).toBe(true);
    expect(current?.kek.equals(meter.currentKeys.kek)).toBe(true);
    expect(meter.currentKeys.ek.equals(newKeys.ek)).toBe(true);
    expect(changed).toContainEqual([keys.systemTitle]);

    const opened = await keyring.openFrame(meter.pushFrame(READING));
    expect(opened).toMatchObject({ systemTitle: keys.systemTitle, repeat: false, switchedToPendingKeys: false });
    expect(keyring.status().counters.micFailures).toBe(0);
  });

  it('without an answer keeps the old keys current until a frame under the new keys confirms', async () => {
    let handle = await keyringWithMeters();
    const keys = METER_KEYS[1] as MeterKeySet;
    const meter = new SimulatedCosemMeter(keys);
    await handle.keyring.openFrame(meter.pushFrame(READING));

    const newKeys = next(keys.meter, 2);
    let captured: Buffer | undefined;
    const outcome = await transferGlobalKeys(handle.keyring, {
      systemTitle: keys.systemTitle,
      next: newKeys,
      send: async (frame) => {
        captured = frame;
        throw new Error('no answer from the mesh');
      },
    });
    expect(outcome).toEqual({ result: 'no-answer', reason: 'no answer from the mesh' });
    const staged = handle.keyring.keys.get(keys.systemTitle);
    expect(staged?.ek.equals(keys.ek)).toBe(true);
    expect(staged?.epoch).toBe(1);
    expect(staged?.pending?.epoch).toBe(2);
    expect(staged?.pending?.ek.equals(newKeys.ek)).toBe(true);
    expect(handle.keyring.status().pending).toBe(1);

    // Old-key frames still open while the transfer is pending.
    expect((await handle.keyring.openFrame(meter.pushFrame(READING))).switchedToPendingKeys).toBe(false);

    // The pending keys survive a restart.
    handle = await restart(handle);
    expect(handle.keyring.keys.get(keys.systemTitle)?.pending?.ek.equals(newKeys.ek)).toBe(true);

    // The request did reach the meter: it applies the keys.
    if (!captured) throw new Error('send was not called');
    meter.handleRequest(captured);
    expect(meter.currentKeys.ek.equals(newKeys.ek)).toBe(true);

    const opened = await handle.keyring.openFrame(meter.pushFrame(READING));
    expect(opened.switchedToPendingKeys).toBe(true);
    expect(opened.apdu.type).toBe('data-notification');
    const current = handle.keyring.keys.get(keys.systemTitle);
    expect(current?.pending).toBeUndefined();
    expect(current?.epoch).toBe(2);
    expect(current?.ek.equals(newKeys.ek)).toBe(true);
    expect(current?.ak.equals(newKeys.ak)).toBe(true);
    expect(handle.keyring.status().pending).toBe(0);

    const following = await handle.keyring.openFrame(meter.pushFrame(READING));
    expect(following).toMatchObject({ switchedToPendingKeys: false, repeat: false });
    expect(handle.keyring.status().counters.micFailures).toBe(0);
  });

  it('confirms a transfer from a meter that restarted its counter with the new keys', async () => {
    const keys = METER_KEYS[1] as MeterKeySet;
    const { keyring } = await keyringWithMeters();
    const meter = new SimulatedCosemMeter(keys, { invocationCounter: 50 });
    await keyring.openFrame(meter.pushFrame(READING));
    const newKeys = simMeterKeys(SEED, keys.meter, 2);
    let captured: Buffer | undefined;
    const outcome = await transferGlobalKeys(keyring, {
      systemTitle: keys.systemTitle,
      next: { epoch: 2, ek: newKeys.ek, ak: newKeys.ak },
      send: async (frame) => {
        captured = frame;
        throw new Error('lost');
      },
    });
    expect(outcome.result).toBe('no-answer');
    meter.handleRequest(captured as Buffer);
    // Counter 1 under the new keys: below the old keys' 51, and still the meter's confirmation.
    const restarted = new SimulatedCosemMeter(meter.currentKeys, { invocationCounter: 0 });
    const opened = await keyring.openFrame(restarted.pushFrame(READING));
    expect(opened.switchedToPendingKeys).toBe(true);
    expect(opened.security?.invocationCounter).toBe(1);
    expect(keyring.keys.get(keys.systemTitle)?.epoch).toBe(2);
  });

  it('refused by the meter (wrong KEK): the pending keys are discarded', async () => {
    const keys = METER_KEYS[2] as MeterKeySet;
    // The gateway holds the right EK/AK but a KEK the meter does not have.
    const { keyring } = await keyringWithMeters([{ ...keys, kek: randomBytes(16) }]);
    const meter = new SimulatedCosemMeter(keys);
    const outcome = await transferGlobalKeys(keyring, {
      systemTitle: keys.systemTitle,
      next: next(keys.meter, 2),
      send: async (frame) => meter.handleRequest(frame),
    });
    expect(outcome).toMatchObject({ result: 'refused', actionResult: 3 });
    expect(meter.currentKeys.ek.equals(keys.ek)).toBe(true);
    const current = keyring.keys.get(keys.systemTitle);
    expect(current?.pending).toBeUndefined();
    expect(current?.epoch).toBe(1);
    expect(current?.ek.equals(keys.ek)).toBe(true);
    expect(keyring.status().pending).toBe(0);
    expect((await keyring.openFrame(meter.pushFrame(READING))).switchedToPendingKeys).toBe(false);
  });
});

describe('review findings (regressions)', () => {
  it('refuses an unauthenticated (encryption-only) frame without moving the counter, even a forged one with a huge counter', async () => {
    const keys = METER_KEYS[0] as MeterKeySet;
    const { keyring } = await keyringWithMeters();
    const meter = new SimulatedCosemMeter(keys, { invocationCounter: 4 });
    await keyring.openFrame(meter.pushFrame(READING));
    // Anyone can build this: the system title travels in clear and there is no tag to forge.
    const forged = encryptApdu(Buffer.from([0x0f, 0, 0, 0, 1, 0, 0]), {
      keys: { ek: randomBytes(16), ak: randomBytes(16) },
      systemTitle: Buffer.from(keys.systemTitle, 'hex'),
      invocationCounter: 0xffff_fff0,
      security: 'encrypted',
      framing: 'general-glo',
    });
    await expectDlmsError(keyring.openFrame(forged), 'UNPROTECTED');
    const next = await keyring.openFrame(meter.pushFrame(READING));
    expect(next.repeat).toBe(false);
    expect(next.security?.invocationCounter).toBe(6);
  });

  it('never rolls keys back to an older epoch unless told to, and keeps replay state for unchanged keys', async () => {
    const keys = METER_KEYS[1] as MeterKeySet;
    const { keyring } = await keyringWithMeters([keys]);
    const newer = simMeterKeys(SEED, keys.meter, 2);
    await keyring.applyKeys([newer], { full: false });
    // An old signed bundle played back (or a lagging site) in a targeted resync: refused.
    const changes = await keyring.applyKeys([keys], { full: false, replace: true });
    expect(changes.unchanged).toBe(1);
    expect(keyring.keys.get(keys.systemTitle)?.epoch).toBe(2);
    // Only an operator's forced resync may take the older keys.
    await keyring.applyKeys([keys], { full: true, replace: true, allowRollback: true });
    expect(keyring.keys.get(keys.systemTitle)?.epoch).toBe(1);
  });

  it('a meter dropped by one full sync and re-added with the same keys keeps its replay counter', async () => {
    const [a, b] = METER_KEYS as [MeterKeySet, MeterKeySet];
    const { keyring } = await keyringWithMeters([a, b]);
    const meter = new SimulatedCosemMeter(a, { invocationCounter: 9 });
    const old = meter.pushFrame(READING);
    await keyring.openFrame(old);
    await keyring.openFrame(meter.pushFrame(READING));
    await keyring.applyKeys([b], { full: true });
    expect(keyring.keys.get(a.systemTitle)).toBeUndefined();
    await keyring.applyKeys([a, b], { full: true });
    await expectDlmsError(keyring.openFrame(old), 'REPLAY');
  });

  it('frames under new keys carry the new key epoch, so their record keys never collide with the old ones', async () => {
    const keys = METER_KEYS[2] as MeterKeySet;
    const { keyring } = await keyringWithMeters([keys]);
    const before = await keyring.openFrame(new SimulatedCosemMeter(keys, { invocationCounter: 0 }).pushFrame(READING));
    const rotated = simMeterKeys(SEED, keys.meter, 3);
    await keyring.applyKeys([rotated], { full: false });
    const after = await keyring.openFrame(new SimulatedCosemMeter(rotated, { invocationCounter: 0 }).pushFrame(READING));
    expect(before.security?.invocationCounter).toBe(after.security?.invocationCounter);
    expect([before.keyEpoch, after.keyEpoch]).toEqual([1, 3]);
  });
});
