import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { cborDecode, cborEncode } from '../../src/coap/cbor.js';
import { CONTENT_FORMAT } from '../../src/coap/reading.js';
import { coapCall } from '../../src/coap/request.js';
import { acknowledgementChunks, CommandReceiver, commandResultKey, type CommandReceiverOptions } from '../../src/hes/command-receiver.js';
import { encodeCommandAck, encodeCommandBody, verifyCommand, type CommandError } from '../../src/hes/commands.js';
import { encodeBatch, RECORDS_PATH, type HesRecord } from '../../src/hes/contract.js';
import { createTestPki, type TestPki } from '../../src/keys/pki.js';
import { HesSimulator } from '../../src/sim/hes.js';
import { SimCommandService, type SimOperator } from '../../src/sim/hes-commands.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';
import { PendingCommands, type PendingCommand } from '../../src/store/pending-commands.js';

const GATEWAY = 'gw-receiver-test';
/** Fast retransmission on loopback, so an outage is noticed within a second. */
const TRANSMISSION = { ackTimeoutMs: 150, maxRetransmit: 2 };

let pki: TestPki;
let admin: SimOperator;
let tech: SimOperator;
let dir: string;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(() => {
  pki = createTestPki({ commonNamePrefix: 'AMI Receiver Test' });
  const issuer = new SimCommandService({ pki });
  admin = issuer.createOperator('Alice Administrator', 'utility-administrator');
  tech = issuer.createOperator('Tom Technician', 'field-technician');
});

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ami-command-receiver-'));
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  rmSync(dir, { recursive: true, force: true });
});

async function startHes(service: SimCommandService, port = 0): Promise<HesSimulator> {
  const hes = new HesSimulator({ port, bind: '::1', commands: service });
  await hes.start();
  cleanups.push(() => hes.stop());
  return hes;
}

async function openStore(): Promise<{ store: PendingCommands; close: () => Promise<void> }> {
  const lease: DatabaseLease = await acquireDatabase(path.join(dir, 'db'));
  const store = await PendingCommands.open(lease.db);
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await store.close();
    await lease.release();
  };
  cleanups.push(close);
  return { store, close };
}

/** The HES endpoint's part, reduced to the uplink contract: one record per batch to the simulator. */
function deliverTo(hes: () => HesSimulator): (record: HesRecord) => Promise<void> {
  return async (record) => {
    const response = await coapCall(hes().url + RECORDS_PATH, {
      method: 'POST',
      payload: encodeBatch({ gateway: GATEWAY, records: [record] }),
      contentFormat: CONTENT_FORMAT.cbor,
      timeoutMs: 2000,
    });
    if (response.code !== '2.04') throw new Error(`the HES answered ${response.code}`);
  };
}

function receiverFor(hes: () => HesSimulator, store: PendingCommands, options: Partial<CommandReceiverOptions> = {}): CommandReceiver {
  const receiver = new CommandReceiver({
    gatewayId: GATEWAY,
    trustAnchorsPem: [pki.rootCertPem],
    store,
    site: () => hes().url,
    deliver: deliverTo(hes),
    pollIntervalMs: 120_000,
    retryInitialMs: 100,
    retryMaxMs: 400,
    transmission: TRANSMISSION,
    bind: { v6: '::1' },
    ...options,
  });
  cleanups.push(() => receiver.stop());
  return receiver;
}

/** Commands the receiver hands out, as they come. */
function collect(receiver: CommandReceiver): { fresh: PendingCommand[]; redelivered: PendingCommand[]; rejected: CommandError[] } {
  const seen = { fresh: [] as PendingCommand[], redelivered: [] as PendingCommand[], rejected: [] as CommandError[] };
  receiver.on('command', (entry, info) => (info.redelivered ? seen.redelivered : seen.fresh).push(entry));
  receiver.on('rejected', (err) => seen.rejected.push(err));
  return seen;
}

function nextEvent(receiver: CommandReceiver, event: 'observing' | 'synced' | 'unavailable' | 'command'): Promise<unknown> {
  return once(receiver, event);
}

/** Resolves once the HES holds nothing for the gateway. */
function queueEmpty(service: SimCommandService): Promise<void> {
  return new Promise((resolve) => {
    if (service.pending(GATEWAY).length === 0) return resolve();
    const stop = service.onAcknowledged(() => {
      if (service.pending(GATEWAY).length > 0) return;
      stop();
      resolve();
    });
  });
}

/** Resolves once `count` commands were handed out as new. */
function commands(receiver: CommandReceiver, count: number): Promise<PendingCommand[]> {
  const got: PendingCommand[] = [];
  return new Promise((resolve) => {
    receiver.on('command', (entry, info) => {
      if (info.redelivered) return;
      got.push(entry);
      if (got.length === count) resolve(got);
    });
  });
}

/** Resolves once `condition` holds, checked now and after each pass the receiver finishes. */
function afterPasses(receiver: CommandReceiver, condition: () => boolean | Promise<boolean>): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      Promise.resolve(condition()).then((met) => {
        if (!met) return;
        receiver.off('synced', check);
        resolve();
      }, reject);
    };
    receiver.on('synced', check);
    check();
  });
}

function stored(hes: HesSimulator, key: string): Promise<void> {
  return new Promise((resolve) => {
    if (hes.has(key)) return resolve();
    const stop = hes.onStored((k) => {
      if (k !== key) return;
      stop();
      resolve();
    });
  });
}

describe('command receiver against the HES simulator', () => {
  it('gets commands the HES issues (told by an Observe notification), stores each before acknowledging it, and the HES queue empties', async () => {
    const service = new SimCommandService({ pki });
    const hes = await startHes(service);
    const { store } = await openStore();
    const receiver = receiverFor(() => hes, store);
    const seen = collect(receiver);
    const observing = nextEvent(receiver, 'observing');
    await receiver.start();
    await observing;

    // What the HES's acknowledgement handler finds in the gateway's store when the acknowledgement arrives.
    const onDiskAtAck: Array<Promise<PendingCommand | undefined>> = [];
    service.onAcknowledged((_gateway, ids) => {
      for (const id of ids) onDiskAtAck.push(store.get(id));
    });
    const arrived = commands(receiver, 3);
    const issued = [
      service.issue(GATEWAY, { meter: 'mtr-1', action: 'disconnect' }, tech),
      service.issue(GATEWAY, { meter: 'mtr-2', action: 'read-relay-state', mfa: false }, tech),
      service.issue(GATEWAY, { meter: 'mtr-3', action: 'configure', params: { 'push-interval': 900 } }, admin),
    ];
    // The poll interval is two minutes: only the notification can bring these within the test.
    const got = await arrived;
    await queueEmpty(service);
    await afterPasses(receiver, () => receiver.counters.acknowledged === 3);

    expect(got.map((p) => p.command)).toEqual(issued.map((i) => i.command));
    expect(got.every((p) => p.outcome === undefined && p.signer.name === p.command.operator.name)).toBe(true);
    const atAck = await Promise.all(onDiskAtAck);
    expect(atAck.map((p) => p?.command.id)).toEqual(issued.map((i) => i.id));
    expect(store.size).toBe(3);
    expect(seen.rejected).toEqual([]);
    expect(receiver.counters).toMatchObject({ accepted: 3, acknowledged: 3, rejected: 0 });
    expect(receiver.counters.notifications).toBeGreaterThanOrEqual(2);
  });

  it('works through a queue longer than one answer, in order, while the HES keeps adding to it', async () => {
    const service = new SimCommandService({ pki, maxPerAnswer: 3 });
    const hes = await startHes(service);
    const { store } = await openStore();
    const receiver = receiverFor(() => hes, store);
    const issued = Array.from({ length: 8 }, (_, i) => service.issue(GATEWAY, { meter: `mtr-${i}`, action: 'disconnect' }, tech).id);
    // Four more arrive while the gateway is busy with the first ones.
    receiver.on('command', () => {
      if (issued.length < 12) issued.push(service.issue(GATEWAY, { meter: `mtr-${issued.length}`, action: 'reconnect' }, tech).id);
    });
    const arrived = commands(receiver, 12);
    await receiver.start();

    expect((await arrived).map((p) => p.command.id)).toEqual(issued);
    await queueEmpty(service);
    expect(service.stats.fetches).toBeGreaterThanOrEqual(4);
  });

  it('acknowledges nothing it could not store: a store that refuses writes leaves the HES queue as it was', async () => {
    const service = new SimCommandService({ pki });
    const hes = await startHes(service);
    const { store } = await openStore();
    const ids = [service.issue(GATEWAY, { meter: 'mtr-1', action: 'disconnect' }, admin).id, service.issue(GATEWAY, { meter: 'mtr-2', action: 'reconnect' }, admin).id];
    await store.close();
    const receiver = receiverFor(() => hes, store);
    const seen = collect(receiver);
    const failed = new Promise<Error>((resolve) => receiver.once('unavailable', (err) => resolve(err)));
    await receiver.start();

    expect((await failed).message).toMatch(/closed/);
    expect(service.pending(GATEWAY)).toEqual(ids);
    expect(service.stats.acknowledged).toBe(0);
    expect(seen.fresh).toEqual([]);
  });

  it('refuses unsigned, forged, expired, misaddressed, under-privileged, replayed and malformed envelopes; acknowledges and reports each; pending commands stay', async () => {
    const service = new SimCommandService({ pki });
    const hes = await startHes(service);
    const { store } = await openStore();
    const receiver = receiverFor(() => hes, store);
    const seen = collect(receiver);
    const first = commands(receiver, 1);
    await receiver.start();
    const good = service.issue(GATEWAY, { meter: 'mtr-ok', action: 'disconnect' }, tech);
    await first;
    await queueEmpty(service);

    const now = Date.now();
    const forgedBase = service.sign(GATEWAY, { meter: 'mtr-f', action: 'disconnect', id: 'cmd-forged' }, tech);
    const otherBody = (cborDecode(service.sign(GATEWAY, { meter: 'mtr-other', action: 'disconnect', id: 'cmd-forged' }, tech).envelope) as Record<string, unknown>).body;
    const bad: Array<[string, Uint8Array, string]> = [
      ['cmd-unsigned', encodeCommandBody({ ...good.command, id: 'cmd-unsigned' }), 'UNSIGNED'],
      ['cmd-forged', cborEncode({ ...(cborDecode(forgedBase.envelope) as Record<string, unknown>), body: otherBody }), 'BAD_SIGNATURE'],
      ['cmd-expired', service.sign(GATEWAY, { meter: 'mtr-e', action: 'disconnect', id: 'cmd-expired', notBefore: now - 3_600_000, validForMs: 60_000 }, tech).envelope, 'EXPIRED'],
      ['cmd-elsewhere', service.sign('gw-elsewhere', { meter: 'mtr-w', action: 'disconnect', id: 'cmd-elsewhere' }, tech).envelope, 'WRONG_GATEWAY'],
      ['cmd-role', service.sign(GATEWAY, { meter: 'mtr-r', action: 'configure', id: 'cmd-role', params: { a: 1 } }, tech).envelope, 'UNAUTHORIZED_ROLE'],
      ['cmd-mfa', service.sign(GATEWAY, { meter: 'mtr-m', action: 'disconnect', id: 'cmd-mfa', mfa: false }, tech).envelope, 'MFA_REQUIRED'],
      [good.id, good.envelope, 'REPLAYED'],
      ['cmd-garbage', Buffer.from('definitely not an envelope'), 'MALFORMED'],
      ['cmd-swapped', service.sign(GATEWAY, { meter: 'mtr-s', action: 'disconnect', id: 'cmd-inside' }, tech).envelope, 'MALFORMED'],
      ['cmd-huge', Buffer.alloc(20_000, 0x41), 'TOO_LARGE'],
    ];
    const reported = bad.map(([id]) => id);
    for (const [id, envelope] of bad) service.enqueue(GATEWAY, id, envelope);
    await queueEmpty(service);
    await afterPasses(receiver, () => receiver.counters.acknowledged === 1 + bad.length);

    expect(seen.rejected.map((e) => [e.context.id ?? '?', e.code])).toEqual(
      bad.map(([id, , code]) => [id === 'cmd-swapped' ? 'cmd-inside' : id === 'cmd-garbage' || id === 'cmd-huge' ? '?' : id, code]),
    );
    expect(receiver.counters.rejectedByCode).toEqual({
      UNSIGNED: 1,
      BAD_SIGNATURE: 1,
      EXPIRED: 1,
      WRONG_GATEWAY: 1,
      UNAUTHORIZED_ROLE: 1,
      MFA_REQUIRED: 1,
      REPLAYED: 1,
      MALFORMED: 2,
      TOO_LARGE: 1,
    });
    // Every refusal went to the HES as a result record with status rejected and its code.
    expect(hes.stats.stored).toBe(reported.length);
    // Nothing refused reached the store, and the pending command is untouched.
    expect((await store.list()).map((p) => p.command)).toEqual([good.command]);
    expect(seen.fresh.map((p) => p.command.id)).toEqual([good.id]);
  });

  it('after a restart: pending commands come again as redelivered, a lost acknowledgement is made good, an acknowledged command is never new again', async () => {
    const service = new SimCommandService({ pki });
    const hes = await startHes(service);
    const first = await openStore();
    const receiver = receiverFor(() => hes, first.store);
    const arrived = commands(receiver, 2);
    await receiver.start();
    const one = service.issue(GATEWAY, { meter: 'mtr-1', action: 'disconnect' }, tech);
    const two = service.issue(GATEWAY, { meter: 'mtr-2', action: 'reconnect' }, tech);
    await arrived;
    await queueEmpty(service);
    // The pass that acknowledged them has heard the HES confirm it.
    await afterPasses(receiver, () => receiver.counters.acknowledged === 2);
    await receiver.stop();
    await first.close();

    // While the gateway is down: a command it had stored when it crashed, before its acknowledgement went out,
    // and a replay of an acknowledged one.
    const three = service.issue(GATEWAY, { meter: 'mtr-3', action: 'disconnect' }, tech);
    const second = await openStore();
    expect(await second.store.put(verifyCommand(three.envelope, { trustAnchorsPem: [pki.rootCertPem], gateway: GATEWAY }))).toBe('stored');
    service.enqueue(GATEWAY, one.id, one.envelope);

    const restarted = receiverFor(() => hes, second.store);
    const seen = collect(restarted);
    await restarted.start();
    await queueEmpty(service);
    await afterPasses(restarted, () => restarted.counters.acknowledged === 2);

    expect(seen.redelivered.map((p) => p.command.id).sort()).toEqual([one.id, two.id, three.id].sort());
    expect(seen.fresh).toEqual([]);
    expect(seen.rejected.map((e) => [e.code, e.context.id])).toEqual([['REPLAYED', one.id]]);
    expect(restarted.counters).toMatchObject({ resent: 1, redelivered: 3, accepted: 0 });
    expect(second.store.size).toBe(3);
  });

  it('at start, finishes a pending command whose window passed while the gateway was down as expired, and does not hand it out', async () => {
    const service = new SimCommandService({ pki });
    const hes = await startHes(service);
    const { store } = await openStore();
    const stale = service.sign(GATEWAY, { meter: 'mtr-1', action: 'disconnect', validForMs: 60_000 }, tech);
    const fresh = service.sign(GATEWAY, { meter: 'mtr-2', action: 'disconnect', validForMs: 3 * 3_600_000 }, tech);
    for (const { envelope } of [stale, fresh]) await store.put(verifyCommand(envelope, { trustAnchorsPem: [pki.rootCertPem], gateway: GATEWAY }));

    // Two hours later: the first command's window (one minute, plus five of skew) is long gone.
    const receiver = receiverFor(() => hes, store, { now: () => Date.now() + 2 * 3_600_000 });
    const seen = collect(receiver);
    const expired: PendingCommand[] = [];
    receiver.on('expired', (entry) => expired.push(entry));
    const reported = stored(hes, commandResultKey(stale.id));
    await receiver.start();
    await reported;
    await afterPasses(receiver, async () => (await store.get(stale.id)) === undefined);

    expect(seen.redelivered.map((p) => p.command.id)).toEqual([fresh.id]);
    expect(expired.map((p) => [p.command.id, p.outcome?.status])).toEqual([[stale.id, 'expired']]);
    expect(receiver.counters).toMatchObject({ expired: 1, redelivered: 1 });
    expect((await store.list()).map((p) => p.command.id)).toEqual([fresh.id]);
  });

  it('finds a restarted HES again by registering anew once the notification Max-Age has passed', async () => {
    const service = new SimCommandService({ pki, maxAgeSeconds: 1 });
    const hes = await startHes(service);
    const { store } = await openStore();
    let current = hes;
    const receiver = receiverFor(() => current, store);
    const observing = nextEvent(receiver, 'observing');
    await receiver.start();
    await observing;

    await hes.stop();
    current = await startHes(service, hes.port);
    const arrived = commands(receiver, 1);
    const issued = service.issue(GATEWAY, { meter: 'mtr-1', action: 'read-relay-state' }, admin);
    // Polling is two minutes away: only a new registration with the restarted HES brings the command.
    const [got] = await arrived;
    expect(got?.command.id).toBe(issued.id);
    await queueEmpty(service);
  });

  it('rides out a HES outage: commands issued meanwhile arrive once it is back', async () => {
    const service = new SimCommandService({ pki });
    const hes = await startHes(service);
    const { store } = await openStore();
    let current = hes;
    const receiver = receiverFor(() => current, store);
    const observing = nextEvent(receiver, 'observing');
    await receiver.start();
    await observing;

    await hes.stop();
    const down = nextEvent(receiver, 'unavailable');
    receiver.wake();
    await down;
    const ids = [service.issue(GATEWAY, { meter: 'mtr-1', action: 'disconnect' }, tech).id, service.issue(GATEWAY, { meter: 'mtr-2', action: 'disconnect' }, tech).id];
    const arrived = commands(receiver, 2);
    current = await startHes(service, hes.port);
    expect((await arrived).map((p) => p.command.id)).toEqual(ids);
    await queueEmpty(service);
    expect(receiver.counters.failures).toBeGreaterThanOrEqual(1);
  });

  it('sends a result to the HES and forgets the command; a result the outbox refused is kept and sent on a later pass', async () => {
    const service = new SimCommandService({ pki });
    const hes = await startHes(service);
    const { store } = await openStore();
    let outboxRefuses = false;
    const deliver = deliverTo(() => hes);
    const receiver = receiverFor(() => hes, store, {
      deliver: async (record) => {
        if (outboxRefuses) throw new Error('QUEUE_FULL: the outbox is full');
        await deliver(record);
      },
    });
    const arrived = commands(receiver, 2);
    await receiver.start();
    const one = service.issue(GATEWAY, { meter: 'mtr-1', action: 'disconnect' }, tech);
    const two = service.issue(GATEWAY, { meter: 'mtr-2', action: 'read-relay-state' }, tech);
    await arrived;

    const done = await receiver.complete(one.id, { status: 'succeeded', result: { relay: 'open' } });
    expect(done.sent).toBe(true);
    expect(hes.has(commandResultKey(one.id))).toBe(true);
    expect(done.record).toMatchObject({ key: `command/${one.id}/result`, kind: 'result', meter: 'mtr-1', body: { status: 'succeeded', result: { relay: 'open' }, commandId: one.id } });
    expect(await store.get(one.id)).toBeUndefined();

    outboxRefuses = true;
    const failed = await receiver.complete(two.id, { status: 'failed', result: { reason: 'COMM_TIMEOUT_ERR' } });
    expect(failed.sent).toBe(false);
    expect((await store.get(two.id))?.outcome?.status).toBe('failed');
    await expect(receiver.complete(two.id, { status: 'succeeded' })).rejects.toMatchObject({ code: 'ALREADY_COMPLETED' });
    await expect(receiver.complete('cmd-unknown', { status: 'succeeded' })).rejects.toMatchObject({ code: 'UNKNOWN_COMMAND' });

    outboxRefuses = false;
    const resultStored = stored(hes, commandResultKey(two.id));
    receiver.wake();
    await resultStored;
    await afterPasses(receiver, () => store.size === 0);
    expect(await store.list()).toEqual([]);
  });
});

describe('acknowledgements', () => {
  it('are cut so that each fits one CoAP block, keeping every id once and in order', () => {
    const ids = Array.from({ length: 100 }, (_, i) => `${String(i).padStart(3, '0')}-${'x'.repeat(60)}`);
    const chunks = acknowledgementChunks(GATEWAY, ids);
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.flat()).toEqual(ids);
    for (const chunk of chunks) expect(encodeCommandAck({ gateway: GATEWAY, ids: chunk }).length).toBeLessThanOrEqual(1000);
    expect(acknowledgementChunks(GATEWAY, ['a', 'b'])).toEqual([['a', 'b']]);
    expect(acknowledgementChunks(GATEWAY, [])).toEqual([]);
  });
});
