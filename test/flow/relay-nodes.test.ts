/**
 * `ami-relay` and `relay command` in a flow with real components on
 * loopback: simulated meters (ciphered DLMS over CoAP, realistic relays with
 * faults) registered with the mesh endpoint's resource directory, the
 * keyring with keys synced from the HES simulator, the store, the HES
 * endpoint's outbox, and the `hes commands` node for signed HES commands.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NodeStatus } from 'node-red';
import { coapCall } from '../../src/coap/request.js';
import { OperatorStore } from '../../src/relay/operators.js';
import { base32Decode, totp } from '../../src/relay/totp.js';
import type { RelayService } from '../../src/relay/service.js';
import type { RelayAlarm, RelayResult } from '../../src/relay/types.js';
import { HesSimulator } from '../../src/sim/hes.js';
import type { SimOperator } from '../../src/sim/hes-commands.js';
import { simMeterNames } from '../../src/sim/meter-keys.js';
import { meterRadioProfile } from '../../src/sim/mesh-meter.js';
import { MeterFleet } from '../../src/sim/meters.js';
import type { FaultAssignment } from '../../src/sim/relay.js';
import { meshMeterLister, untilRegistered } from '../helpers/fleet.js';
import { freeUdpPort } from '../helpers/ports.js';
import { allNodes, coreNodes, initHelper } from './setup.js';

const helper = initHelper();
const SEED = 'relay-flow-test';
const GATEWAY = 'gw-relay-flow';
const CREDENTIAL_SECRET = 'relay-flow-test-credential-secret';
const COUNT = 24;
const NAMES = simMeterNames(COUNT, 'rly-');
const z = 'tab-relay';

// Meters by role in the tests: each test uses its own, so the order of tests does not matter.
const [SOLO, TAMPERED, HES_TARGET, OFFLINE, LISTED_A, LISTED_B] = NAMES as [string, string, string, string, string, string];
/** The feeder with most meters (besides those above): the group test's target, with a weld and an obstruction in it. */
const GROUP = (() => {
  const byFeeder = new Map<string, string[]>();
  for (const name of NAMES.slice(6)) {
    const feeder = meterRadioProfile(name).feeder;
    byFeeder.set(feeder, [...(byFeeder.get(feeder) ?? []), name]);
  }
  const [feeder, members] = [...byFeeder.entries()].sort((a, b) => b[1].length - a[1].length)[0]!;
  return { feeder, members };
})();
const WELDED = GROUP.members[0]!;
/** A meter outside the group for the tamper event test. */
const REPORTED = NAMES.slice(6).find((name) => !GROUP.members.includes(name))!;
const OBSTRUCTED = GROUP.members[1]!;
const FAULTS: FaultAssignment[] = [
  { meter: TAMPERED, fault: 'tamper' },
  { meter: WELDED, fault: 'weld' },
  { meter: OBSTRUCTED, fault: 'obstruction' },
];

let tmp: string;
let hes: HesSimulator;
let fleet: MeterFleet;
let technician: SimOperator;
let operators: OperatorStore;
let meshPort: number;
let operatorCount = 0;

type Msg = Record<string, unknown> & { payload?: unknown };

function flow() {
  const anchors = path.join(tmp, 'root-ca.pem');
  writeFileSync(anchors, hes.keyManagement!.trustAnchorPem);
  return [
    { id: z, type: 'tab', label: 'relay' },
    { id: 'store', type: 'ami-store', path: path.join(tmp, 'ami-store') },
    { id: 'hesconf', type: 'ami-hes-endpoint', primary: hes.url, secondary: '', gatewayId: GATEWAY, timeout: '2000', store: 'store', commandTrust: anchors },
    { id: 'keyring', type: 'ami-keyring', store: 'store', hes: 'hesconf', systemTitle: '', trustAnchors: anchors, micThreshold: '5', syncInterval: '' },
    // ACK_TIMEOUT 100 ms, 2 retransmissions: an offline meter times out within a second.
    { id: 'mesh', type: 'ami-mesh-endpoint', bind: '::1', port: String(meshPort), acceptTimeout: '2000', retryAfter: '30', store: 'store', ackTimeout: '100', maxRetransmit: '2' },
    // Link gating and wear limits out of the way here (their own unit tests cover them).
    { id: 'relayconf', type: 'ami-relay', mesh: 'mesh', keyring: 'keyring', store: 'store', hes: 'hesconf', minRssi: '-150', minSnr: '-50', minInterval: '0', maxPerHour: '1000', weldVoltage: '50', concurrency: '8', chargeCycle: '1', linkRetry: '3600', acceptReady: true },
    { id: 'relay', z, x: 0, y: 0, type: 'ami-relay-command', relay: 'relayconf', action: 'msg', validFor: '600', concurrency: '', wires: [['final', 'cmds'], ['waiting']] },
    { id: 'final', z, x: 0, y: 0, type: 'helper' },
    { id: 'waiting', z, x: 0, y: 0, type: 'helper' },
    { id: 'cmds', z, x: 0, y: 0, type: 'ami-hes-commands', hes: 'hesconf', pollInterval: '60', wires: [['relay'], ['rejected']] },
    { id: 'rejected', z, x: 0, y: 0, type: 'helper' },
    { id: 'catch', z, x: 0, y: 0, type: 'catch', scope: ['relay'], uncaught: false, wires: [['errors']] },
    { id: 'errors', z, x: 0, y: 0, type: 'helper' },
  ];
}

/** POST on the admin API (the helper's typings know only get). */
function adminPost(url: string): { send(body: unknown): PromiseLike<{ status: number; body: unknown }> } {
  return (helper.request() as unknown as { post(path: string): { send(body: unknown): PromiseLike<{ status: number; body: unknown }> } }).post(url);
}

function node(id: string): NonNullable<ReturnType<typeof helper.getNode>> {
  const found = helper.getNode(id);
  if (!found) throw new Error(`no node ${id}`);
  return found;
}

/** Messages arriving at a helper node from now on, until `until` says it has them all. */
function collect(id: string, until: (got: Msg[]) => boolean): Promise<Msg[]> {
  const target = node(id);
  const got: Msg[] = [];
  return new Promise((resolve) => {
    const listener = (msg: unknown): void => {
      got.push(msg as Msg);
      if (!until(got)) return;
      target.off('input', listener);
      resolve(got);
    };
    target.on('input', listener);
  });
}

const resultsFor = (meters: string[]) =>
  collect('final', (got) => meters.every((m) => got.some((msg) => (msg.payload as RelayResult).meter === m))).then((got) =>
    got.filter((msg) => meters.includes((msg.payload as RelayResult).meter)),
  );
const nextError = () => collect('errors', (got) => got.length === 1).then((got) => got[0]!);

function statusOf(id: string, predicate: (s: NodeStatus) => boolean): Promise<NodeStatus> {
  const target = node(id);
  return new Promise((resolve) => {
    const listener = (call: unknown): void => {
      const status = (call as { args: [NodeStatus] }).args[0];
      if (!predicate(status)) return;
      target.off('call:status', listener);
      resolve(status);
    };
    target.on('call:status', listener);
  });
}

/** A fresh local operator and its current TOTP code (a code works once per operator). */
async function freshOperator(role = 'field-technician'): Promise<{ operator: string; totp: string }> {
  operatorCount += 1;
  const name = `tech-${operatorCount}`;
  const added = await operators.add(name, role);
  return { operator: name, totp: totp(base32Decode(added.secretBase32), Date.now()) };
}

function relayOf(name: string) {
  const relay = fleet.relay(name);
  if (!relay) throw new Error(`no relay ${name}`);
  return relay;
}

function storedAtHes(key: string): Promise<void> {
  return new Promise((resolve) => {
    const stop = hes.onStored((k) => {
      if (k !== key) return;
      stop();
      resolve();
    });
  });
}

/** Resolves once every meter of the fleet is in the gateway's registry. */
function fleetRegistered(): Promise<void> {
  return untilRegistered(meshMeterLister(() => helper.request(), 'mesh'), fleet, (meters) => meters.length >= COUNT);
}

/** Resolves once the keyring holds the keys of every meter. */
async function keysReady(): Promise<void> {
  const keyring = await (node('keyring') as unknown as { keyring(): Promise<{ keys: { size: number } }> }).keyring();
  while (keyring.keys.size < COUNT) await (node('keyring') as unknown as { syncNow(r: { force?: boolean }): Promise<unknown> }).syncNow({ force: true });
}

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'ami-relay-flow-'));
  meshPort = await freeUdpPort();
  hes = new HesSimulator({ port: 0, bind: '::1', keyManagement: { meters: NAMES, seed: SEED }, commands: {} });
  await hes.start();
  technician = hes.commands!.createOperator('Tom Technician', 'field-technician');
  helper.settings({ userDir: tmp, credentialSecret: CREDENTIAL_SECRET });
  operators = new OperatorStore({ dataDir: tmp, credentialSecret: CREDENTIAL_SECRET });
  await helper.load([...allNodes, coreNodes.catch], flow());
  fleet = new MeterFleet({
    count: COUNT,
    prefix: 'rly-',
    gateway: `coap://[::1]:${meshPort}`,
    bind: '::1',
    intervalMs: 3_600_000,
    protocol: 'dlms',
    keySeed: SEED,
    readings: false,
    register: true,
    serve: true,
    startSpreadMs: 0,
    faults: FAULTS,
    // A relay operated again within half a second answers E001 (capacitor still charging); the gateway retries after 1 s.
    relay: { rechargeMs: 500 },
  });
  await fleet.start();
  await Promise.all([fleetRegistered(), keysReady()]);
}, 60_000);

afterAll(async () => {
  await helper.unload();
  await fleet?.stop();
  await hes?.stop();
  helper.settings({});
  rmSync(tmp, { recursive: true, force: true });
});

describe('relay command node', () => {
  it('refuses local commands without an operator, with an unknown one or a wrong code: nothing moves', async () => {
    const relay = relayOf(SOLO);
    let caught = nextError();
    node('relay').receive({ meter: SOLO, action: 'disconnect' });
    expect(((await caught).error as { code: string }).code).toBe('UNAUTHORIZED');
    caught = nextError();
    node('relay').receive({ meter: SOLO, action: 'disconnect', operator: 'nobody', totp: '123456' });
    const unknown = (await caught).error as { code: string; message: string };
    expect(unknown.code).toBe('UNAUTHORIZED');
    expect(unknown.message).toMatch(/UNKNOWN_OPERATOR/);
    const { operator } = await freshOperator();
    caught = nextError();
    node('relay').receive({ meter: SOLO, action: 'disconnect', operator, totp: '000000' });
    expect(((await caught).error as { message: string }).message).toMatch(/BAD_CODE/);
    caught = nextError();
    node('relay').receive({ meter: SOLO, action: 'open the relay', ...(await freshOperator()) });
    expect(((await caught).error as { code: string }).code).toBe('BAD_ACTION');
    expect(relay.stats.actuations).toBe(0);
    expect(relay.controlState).toBe(1);
  });

  it('disconnects one meter: one result on output 1, the relay opens, the outcome reaches the HES; the same command id again does not actuate', async () => {
    const relay = relayOf(SOLO);
    const commandId = 'flow-solo-1';
    const atHes = storedAtHes(`relay-result:${commandId}`);
    let results = resultsFor([SOLO]);
    node('relay').receive({ meter: SOLO, action: 'disconnect', commandId, ...(await freshOperator()) });
    const [msg] = await results;
    expect(msg).toMatchObject({ topic: SOLO, meter: SOLO, commandId, status: 'succeeded' });
    expect(msg!.payload).toMatchObject({ code: 'RELAY_OP_SUCCESS', final: true, actuated: true, state: 0, source: 'local' });
    expect(relay.controlState).toBe(0);
    expect(relay.stats.actuations).toBe(1);
    await atHes;

    results = resultsFor([SOLO]);
    node('relay').receive({ meter: SOLO, action: 'disconnect', commandId, ...(await freshOperator()) });
    expect((await results)[0]!.payload).toMatchObject({ code: 'RELAY_OP_SUCCESS', commandId });
    expect(relay.stats.actuations).toBe(1);

    // A new command for a meter already disconnected: confirmed without actuation.
    results = resultsFor([SOLO]);
    node('relay').receive({ meter: SOLO, action: 'disconnect', commandId: 'flow-solo-2', ...(await freshOperator()) });
    expect((await results)[0]!.payload).toMatchObject({ code: 'RELAY_OP_SUCCESS', idempotent: true, actuated: false });
    expect(relay.stats.actuations).toBe(1);
  });

  it(`disconnects a feeder as a rolling run: one result per meter, the weld and the obstruction with their codes`, async () => {
    expect(GROUP.members.length).toBeGreaterThanOrEqual(3);
    const results = resultsFor(GROUP.members);
    // Failures in the run: the status dot turns red (its text, with the counts, is translated at run time).
    const redProgress = statusOf('relay', (s) => s.fill === 'red' && s.text === 'ami-relay-command.status.progress');
    node('relay').receive({ group: `feeder=${GROUP.feeder}`, action: 'disconnect', commandId: 'flow-feeder', ...(await freshOperator('utility-administrator')) });
    const byMeter = new Map((await results).map((msg) => [(msg.payload as RelayResult).meter, msg.payload as RelayResult]));
    expect([...byMeter.keys()].sort()).toEqual([...GROUP.members].sort());
    expect(byMeter.get(WELDED)).toMatchObject({ code: 'RELAY_WELD_DETECTED', runId: 'flow-feeder', commandId: `flow-feeder:${WELDED}` });
    expect(byMeter.get(OBSTRUCTED)).toMatchObject({ code: 'E044' });
    for (const meter of GROUP.members.slice(2)) {
      expect(byMeter.get(meter)?.code).toBe('RELAY_OP_SUCCESS');
      expect(relayOf(meter).controlState).toBe(0);
    }
    for (const meter of GROUP.members) expect(relayOf(meter).stats.actuations).toBeLessThanOrEqual(1);
    await redProgress;
    // The weld is an alarm the admin API lists.
    const alarms = await helper.request().get(`/ami/alarms?meter=${WELDED}`);
    expect((alarms.body as { alarms: Array<{ code: string }> }).alarms.map((a) => a.code)).toEqual(['RELAY_WELD_DETECTED']);
  });

  it('tamper: a reconnect is refused with TAMPER_LOCKED and an alarm for the HES; an operator clears it through the admin API; then it reconnects', async () => {
    const relay = relayOf(TAMPERED);
    // Disconnect first (allowed while tampered).
    let results = resultsFor([TAMPERED]);
    node('relay').receive({ meter: TAMPERED, action: 'disconnect', ...(await freshOperator()) });
    expect((await results)[0]!.payload).toMatchObject({ code: 'RELAY_OP_SUCCESS' });

    results = resultsFor([TAMPERED]);
    node('relay').receive({ meter: TAMPERED, action: 'reconnect', commandId: 'flow-tamper-1', ...(await freshOperator()) });
    const [locked] = await results;
    expect(locked).toMatchObject({ status: 'failed', payload: { code: 'TAMPER_LOCKED', actuated: false } });
    expect(relay.controlState).toBe(0);

    const refused = await adminPost('/ami/alarms/reset').send({ meter: TAMPERED, code: 'TAMPER', operator: 'nobody', totp: '123456' });
    expect(refused.status).toBe(403);
    expect(refused.body).toMatchObject({ code: 'OPERATOR_REFUSED' });
    const reset = await adminPost('/ami/alarms/reset').send({ meter: TAMPERED, code: 'TAMPER', ...(await freshOperator('utility-administrator')) });
    expect(reset.status).toBe(200);
    expect(reset.body).toMatchObject({ meterCleared: true, cleared: { meter: TAMPERED, code: 'TAMPER', source: 'meter-alarm-register' } });
    expect(relay.tampered).toBe(false);

    // Right after the disconnect the capacitor may still be charging: then E001 waits on output 2 and the result comes after the charge cycle.
    results = resultsFor([TAMPERED]);
    node('relay').receive({ meter: TAMPERED, action: 'reconnect', commandId: 'flow-tamper-2', ...(await freshOperator()) });
    expect((await results)[0]!.payload).toMatchObject({ code: 'RELAY_OP_SUCCESS', state: 1, commandId: 'flow-tamper-2' });
    expect(relay.stats.actuations).toBe(2);
  });

  it('runs a signed HES command from hes commands and completes it at the HES; a forged HES-looking message moves nothing', async () => {
    const relay = relayOf(HES_TARGET);
    const issued = hes.commands!.issue(GATEWAY, { meter: HES_TARGET, action: 'disconnect' }, technician);
    const completed = storedAtHes(`command/${issued.id}/result`);
    const outcome = storedAtHes(`relay-result:${issued.id}`);
    const results = resultsFor([HES_TARGET]);
    // hes commands observes the HES's command queue: the simulator notifies it of the new command.
    const [msg] = await results;
    expect(msg).toMatchObject({ commandId: issued.id, status: 'succeeded', payload: { code: 'RELAY_OP_SUCCESS', source: 'hes', operator: 'Tom Technician' } });
    await Promise.all([completed, outcome]);
    expect(relay.stats.actuations).toBe(1);

    const caught = nextError();
    node('relay').receive({ command: { id: 'forged-1' }, payload: { id: 'forged-1', meter: LISTED_A, action: 'disconnect', operator: { name: 'Mallory', role: 'utility-administrator', mfa: true } } });
    expect(((await caught).error as { code: string }).code).toBe('UNVERIFIED_HES_COMMAND');
    expect(relayOf(LISTED_A).stats.actuations).toBe(0);
  });

  it('keeps an unreachable meter\'s command waiting (output 2) and runs it when the meter registers again (output 1)', async () => {
    const relay = relayOf(OFFLINE);
    fleet.setOffline(OFFLINE, true);
    const waiting = collect('waiting', (got) => got.some((m) => (m.payload as RelayResult).meter === OFFLINE));
    const final = resultsFor([OFFLINE]);
    node('relay').receive({ meter: OFFLINE, action: 'disconnect', commandId: 'flow-offline', ...(await freshOperator()) });
    const [pending] = (await waiting).filter((m) => (m.payload as RelayResult).meter === OFFLINE);
    expect(pending!.payload).toMatchObject({ code: 'COMM_TIMEOUT_ERR', final: false });
    expect(relay.stats.actuations).toBe(0);

    fleet.setOffline(OFFLINE, false);
    // The meter refreshes its registration (RFC 9176 update to its location): its waiting command runs now.
    const location = fleet.meters().find((m) => m.name === OFFLINE)!.location!;
    const update = await coapCall(`coap://[::1]:${meshPort}${location}?lt=3600`, { method: 'POST', timeoutMs: 5000 });
    expect(update.code).toBe('2.04');
    const [done] = await final;
    expect(done!.payload).toMatchObject({ code: 'RELAY_OP_SUCCESS', commandId: 'flow-offline' });
    expect(relay.stats.actuations).toBe(1);
  });

  it('serves POST /ami/relay/commands for a list of meters with an operator code, and GET /ami/relay/status', async () => {
    const refused = await adminPost('/ami/relay/commands').send({ action: 'disconnect', meters: [LISTED_A, LISTED_B], operator: 'nobody', totp: '123456' });
    expect(refused.status).toBe(403);
    expect(relayOf(LISTED_A).stats.actuations).toBe(0);
    const response = await adminPost('/ami/relay/commands').send({ action: 'disconnect', meters: [LISTED_A, LISTED_B], id: 'api-run-1', ...(await freshOperator()) });
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({ id: 'api-run-1', finished: true, byCode: { RELAY_OP_SUCCESS: 2 } });
    expect((response.body as { results: RelayResult[] }).results.map((r) => r.meter)).toEqual([LISTED_A, LISTED_B]);
    const status = await helper.request().get('/ami/relay/status?run=api-run-1');
    expect(status.body).toMatchObject({ run: { id: 'api-run-1', total: 2, finished: true, byCode: { RELAY_OP_SUCCESS: 2 } } });
    const bad = await adminPost('/ami/relay/commands').send({ action: 'disconnect', meter: LISTED_A, meters: [LISTED_B], operator: 'x', totp: '123456' });
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ code: 'BAD_REQUEST' });
  });
  it('a tamper event from the flow (topic "tamper") locks reconnects of that meter without a request to it', async () => {
    const relay = relayOf(REPORTED);
    const service = await (node('relayconf') as unknown as { service(): Promise<RelayService> }).service();
    const raised = new Promise<RelayAlarm>((resolve) => service.once('alarm', resolve));
    node('relay').receive({ topic: 'tamper', meter: REPORTED, payload: 'fraud event 42 (strong DC field) pushed by the meter' });
    expect(await raised).toMatchObject({ meter: REPORTED, code: 'TAMPER' });
    const listed = await helper.request().get(`/ami/alarms?meter=${REPORTED}`);
    const alarms = (listed.body as { alarms: Array<{ code: string; source: string; detail: string }> }).alarms;
    expect(alarms).toEqual([expect.objectContaining({ code: 'TAMPER', source: 'event', detail: 'fraud event 42 (strong DC field) pushed by the meter' })]);
    const results = resultsFor([REPORTED]);
    node('relay').receive({ meter: REPORTED, action: 'reconnect', ...(await freshOperator()) });
    expect((await results)[0]!.payload).toMatchObject({ code: 'TAMPER_LOCKED', actuated: false });
    expect(relay.stats.actuations).toBe(0);
  });
});
