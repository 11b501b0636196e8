/**
 * `ami-firmware` and `firmware rollout` in a flow with real components on
 * loopback: the test images signed by the test CA, simulated meters that
 * register with the mesh endpoint's resource directory, serve /fw/state and
 * /fw/update and download images from the gateway block-wise, the store,
 * and the HES endpoint's outbox towards the HES simulator. Also the
 * example flow flows/firmware-rollout.json.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { NodeStatus } from 'node-red';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { coapCall } from '../../src/coap/request.js';
import { checkPair, type FirmwarePair } from '../../src/firmware/compatibility.js';
import { openFirmwareRepository, type FirmwareRepository } from '../../src/firmware/repository.js';
import type { MeterRolloutEntry, RolloutSummary } from '../../src/firmware/rollout-types.js';
import { HesSimulator } from '../../src/sim/hes.js';
import { meterRadioProfile } from '../../src/sim/mesh-meter.js';
import { simMeterNames } from '../../src/sim/meter-keys.js';
import { MeterFleet } from '../../src/sim/meters.js';
import type { FirmwareServiceNode } from '../../nodes/shared/types.js';
import { meshMeterLister, untilRegistered } from '../helpers/fleet.js';
import { freeUdpPort } from '../helpers/ports.js';
import { allNodes, coreNodes, initHelper, nextInput } from './setup.js';

const helper = initHelper();
const REPO = path.resolve(__dirname, '..', '..');
const TEST_IMAGES = path.join(REPO, 'firmware-images', 'test-images');
const TEST_ROOT_CA = path.join(REPO, 'firmware-images', 'test-ca', 'root-ca.pem');
const GATEWAY = 'gw-firmware-flow';
/** What every simulated meter runs at the start: the oldest pair of the test images. */
const START: FirmwarePair & { model: string } = { model: 'AMX-100', comm: '2.1.0', metro: '5.0.0' };
const z = 'tab-firmware';

type Msg = Record<string, unknown> & { payload?: unknown };

/**
 * The fewest meters (names fw-000001, ...) among which one feeder has
 * exactly three: that feeder is the group of the group rollout; the first
 * meter outside it gets the incompatible request, the last one the rollout
 * interrupted by a redeploy.
 */
const PLAN = (() => {
  for (let count = 3; count < 200; count++) {
    const names = simMeterNames(count, 'fw-');
    const byFeeder = new Map<string, string[]>();
    for (const name of names) {
      const feeder = meterRadioProfile(name).feeder;
      byFeeder.set(feeder, [...(byFeeder.get(feeder) ?? []), name]);
    }
    const three = [...byFeeder.entries()].find(([, members]) => members.length === 3);
    if (!three) continue;
    const [feeder, members] = three;
    const all = simMeterNames(count + 2, 'fw-');
    const others = all.filter((name) => !members.includes(name));
    return { count: count + 2, feeder, members, outsider: others[0]!, resumed: others[others.length - 1]! };
  }
  throw new Error('no feeder with three meters among the first 200 simulated names');
})();

let tmp: string;
let hes: HesSimulator;
let repository: FirmwareRepository;

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'ami-firmware-flow-'));
  hes = new HesSimulator({ port: 0, bind: '::1' });
  await hes.start();
  // The same images as the node loads: the test judges the pairs the meters ran by the manifests.
  repository = await openFirmwareRepository({ root: TEST_IMAGES, trustAnchorsPem: [readFileSync(TEST_ROOT_CA, 'utf8')] });
  helper.settings({ userDir: tmp });
});

afterAll(async () => {
  await helper.unload();
  await hes?.stop();
  helper.settings({});
  rmSync(tmp, { recursive: true, force: true });
});

function node(id: string): NonNullable<ReturnType<typeof helper.getNode>> {
  const found = helper.getNode(id);
  if (!found) throw new Error(`no node ${id}`);
  return found;
}

/** Messages arriving at a node's input from now on, until `until` says it has them all. */
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

/** Output 1 messages of rollout `rolloutId` until every meter of `meters` has one. */
function outcomesOf(id: string, rolloutId: string, meters: readonly string[]): Promise<Msg[]> {
  const ofRollout = (got: Msg[]) => got.filter((msg) => msg.rollout === rolloutId);
  return collect(id, (got) => meters.every((m) => ofRollout(got).some((msg) => msg.topic === m))).then(ofRollout);
}

/** The output 2 message that says rollout `rolloutId` finished. */
function finishedSummary(id: string, rolloutId: string): Promise<Msg> {
  const isIt = (msg: Msg) => msg.rollout === rolloutId && msg.topic === 'finished';
  return collect(id, (got) => got.some(isIt)).then((got) => got.find(isIt)!);
}

/** Resolves with the first status the node shows (from now on) that `predicate` accepts. */
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

/** The statuses node `id` has shown so far (the helper's spy sits on the shared Node prototype). */
function statusesOf(id: string): NodeStatus[] {
  const target = node(id);
  const spy = target.status as unknown as { args: unknown[][]; thisValues: unknown[] };
  return spy.args.filter((_args, i) => spy.thisValues[i] === target).map((a) => a[0] as NodeStatus);
}

/** Resolves with the status node `id` shows or has shown that `predicate` accepts. */
function untilStatus(id: string, predicate: (s: NodeStatus) => boolean): Promise<NodeStatus> {
  const waiting = statusOf(id, predicate);
  const shown = statusesOf(id).find(predicate);
  return shown ? Promise.resolve(shown) : waiting;
}

/** Resolves once the HES simulator holds `key` (at once if it does already). */
function storedAtHes(key: string): Promise<void> {
  if (hes.has(key)) return Promise.resolve();
  return new Promise((resolve) => {
    const stop = hes.onStored((stored) => {
      if (stored !== key) return;
      stop();
      resolve();
    });
  });
}

function startFleet(options: { count: number; prefix: string; meshPort: number }): MeterFleet {
  return new MeterFleet({
    count: options.count,
    prefix: options.prefix,
    gateway: `coap://[::1]:${options.meshPort}`,
    bind: '::1',
    intervalMs: 3_600_000,
    readings: false,
    register: true,
    serve: true,
    startSpreadMs: 0,
    firmware: () => ({ ...START }),
  });
}

describe('ami-firmware with trust anchors, and firmware rollout', () => {
  let fleet: MeterFleet;
  let meshPort: number;

  const flow = () => [
    { id: z, type: 'tab', label: 'firmware' },
    { id: 'store', type: 'ami-store', path: path.join(tmp, 'ami-store') },
    { id: 'hesconf', type: 'ami-hes-endpoint', primary: hes.url, secondary: '', gatewayId: GATEWAY, timeout: '2000', store: 'store' },
    { id: 'mesh', type: 'ami-mesh-endpoint', bind: '::1', port: String(meshPort), acceptTimeout: '2000', retryAfter: '30', store: 'store', ackTimeout: '200', maxRetransmit: '2' },
    // Poll every second: a meter's download of a few KB takes well under that on loopback.
    { id: 'fw', type: 'ami-firmware', mesh: 'mesh', store: 'store', hes: 'hesconf', images: TEST_IMAGES, trustAnchors: TEST_ROOT_CA, concurrency: '8', poll: '1', attempts: '3', stepTimeout: '60' },
    { id: 'rollout', z, x: 0, y: 0, type: 'ami-firmware-rollout', firmware: 'fw', comm: '', metro: '', target: 'meter', targets: '', concurrency: '', wires: [['results'], ['summaries']] },
    { id: 'results', z, x: 0, y: 0, type: 'helper' },
    { id: 'summaries', z, x: 0, y: 0, type: 'helper' },
    { id: 'catch', z, x: 0, y: 0, type: 'catch', scope: ['rollout'], uncaught: false, wires: [['errors']] },
    { id: 'errors', z, x: 0, y: 0, type: 'helper' },
  ];

  beforeAll(async () => {
    meshPort = await freeUdpPort();
    await helper.load([...allNodes, coreNodes.catch], flow());
    fleet = startFleet({ count: PLAN.count, prefix: 'fw-', meshPort });
    await fleet.start();
    await untilRegistered(meshMeterLister(() => helper.request(), 'mesh'), fleet, (meters) => meters.length >= PLAN.count);
  });

  afterAll(async () => {
    await helper.unload();
    await fleet?.stop();
  });

  it('serves the verified images on the mesh endpoint and lists them on the admin API', async () => {
    const listed = await helper.request().get('/ami/firmware/images');
    expect(listed.status).toBe(200);
    const body = listed.body as { images: Array<{ id: string; target: string; version: string }>; quarantined: unknown[] };
    expect(body.images.map((i) => i.id)).toEqual(['acme/comm-2.1.0', 'acme/comm-2.2.0', 'acme/metro-5.0.0', 'acme/metro-5.1.0']);
    expect(body.images.find((i) => i.id === 'acme/comm-2.2.0')).toMatchObject({ target: 'comm', version: '2.2.0' });
    expect(body.quarantined).toEqual([]);

    const links = await coapCall(`coap://[::1]:${meshPort}/fw`, { method: 'GET', timeoutMs: 5000 });
    expect(links.code).toBe('2.05');
    expect(links.payload.toString()).toContain('</fw/acme/comm-2.2.0>');
  });

  it(`updates comm to 2.2.0 on a group of three meters: three FW_UPDATE_SUCCESS on output 1, the finished summary on output 2, one result record per meter at the HES`, async () => {
    const rolloutId = 'flow-group-comm';
    const outcomes = outcomesOf('results', rolloutId, PLAN.members);
    const finished = finishedSummary('summaries', rolloutId);
    const started = collect('summaries', (got) => got.some((msg) => msg.rollout === rolloutId && msg.topic === 'started'));
    const greenStatus = statusOf('rollout', (s) => s.fill === 'green' && s.text === 'ami-firmware-rollout.status.finished');
    node('rollout').receive({ payload: { comm: '2.2.0', group: `feeder=${PLAN.feeder}`, id: rolloutId } });

    const [startedMsg] = (await started).filter((msg) => msg.rollout === rolloutId);
    expect(startedMsg!.payload).toMatchObject({ rolloutId, total: 3, want: { comm: '2.2.0' } });

    const byMeter = new Map((await outcomes).map((msg) => [msg.topic as string, msg.payload as MeterRolloutEntry]));
    expect([...byMeter.keys()].sort()).toEqual([...PLAN.members].sort());
    for (const meter of PLAN.members) {
      expect(byMeter.get(meter)).toMatchObject({ rolloutId, meter, phase: 'done', outcome: { code: 'FW_UPDATE_SUCCESS', versions: { comm: '2.2.0', metro: '5.0.0' } } });
      const firmware = fleet.firmwareOf(meter)!;
      expect(firmware.versions()).toEqual({ comm: '2.2.0', metro: '5.0.0' });
      // Offered the comm image only, and never ran a pair the manifests do not allow.
      expect(new Set(firmware.offers.map((o) => o.offer?.version))).toEqual(new Set(['2.2.0']));
      for (const pair of firmware.ranPairs) expect(checkPair(pair, repository, START.model).compatible).toBe(true);
    }

    const summary = (await finished).payload as RolloutSummary;
    expect(summary).toMatchObject({ rolloutId, total: 3, done: 3, finished: true, byCode: { FW_UPDATE_SUCCESS: 3 }, requestedBy: 'rollout' });

    await Promise.all(PLAN.members.map((meter) => storedAtHes(`firmware-result:${rolloutId}:${meter}`)));
    expect(hes.storedKeys(`firmware-result:${rolloutId}:`).sort()).toEqual(PLAN.members.map((m) => `firmware-result:${rolloutId}:${m}`).sort());
    await greenStatus;
  });

  it('refuses metro 5.1.0 for a meter whose comm 2.1.0 does not list it: FW_INCOMPATIBLE, and the meter was offered nothing', async () => {
    const rolloutId = 'flow-incompatible';
    const meter = PLAN.outsider;
    const outcomes = outcomesOf('results', rolloutId, [meter]);
    const finished = finishedSummary('summaries', rolloutId);
    node('rollout').receive({ payload: { metro: '5.1.0', meter, id: rolloutId } });
    const [msg] = await outcomes;
    expect(msg).toMatchObject({ topic: meter, rollout: rolloutId, payload: { outcome: { code: 'FW_INCOMPATIBLE', versions: { comm: '2.1.0', metro: '5.0.0' } } } });
    expect((msg!.payload as MeterRolloutEntry).outcome!.reason).toMatch(/compatible/);
    const firmware = fleet.firmwareOf(meter)!;
    expect(firmware.offers).toEqual([]);
    expect(firmware.versions()).toEqual({ comm: '2.1.0', metro: '5.0.0' });
    expect((await finished).payload).toMatchObject({ byCode: { FW_INCOMPATIBLE: 1 }, finished: true });
    // A refusal is an outcome too: the HES hears of it.
    await storedAtHes(`firmware-result:${rolloutId}:${meter}`);
  });

  it('runs a rollout asked for on the admin API (as ami-gateway firmware rollout does) and reports it on GET /ami/firmware/rollouts/ID', async () => {
    const rolloutId = 'api-group-metro';
    const accepted = await helper
      .request()
      .post('/ami/firmware/rollouts')
      .send({ metro: '5.1.0', group: `feeder=${PLAN.feeder}`, id: rolloutId, concurrency: 2 });
    expect(accepted.status).toBe(202);
    expect(accepted.body).toMatchObject({ rollout: { rolloutId, total: 3, want: { metro: '5.1.0' } } });
    // The HES hears of each meter once its outcome is journaled.
    await Promise.all(PLAN.members.map((meter) => storedAtHes(`firmware-result:${rolloutId}:${meter}`)));
    const status = await helper.request().get(`/ami/firmware/rollouts/${rolloutId}`);
    expect(status.status).toBe(200);
    const body = status.body as { rollout: RolloutSummary; meters: MeterRolloutEntry[] };
    expect(body.rollout).toMatchObject({ rolloutId, done: 3, byCode: { FW_UPDATE_SUCCESS: 3 } });
    expect(body.meters.map((m) => [m.meter, m.outcome?.code, m.outcome?.versions])).toEqual(
      [...PLAN.members].sort().map((meter) => [meter, 'FW_UPDATE_SUCCESS', { comm: '2.2.0', metro: '5.1.0' }]),
    );
    for (const meter of PLAN.members) expect(fleet.firmwareOf(meter)!.versions()).toEqual({ comm: '2.2.0', metro: '5.1.0' });
    const listed = await helper.request().get('/ami/firmware/rollouts');
    expect((listed.body as { rollouts: RolloutSummary[] }).rollouts.map((r) => r.rolloutId)).toContain(rolloutId);

    const noSuchGroup = await helper.request().post('/ami/firmware/rollouts').send({ metro: '5.1.0', group: 'feeder=NOWHERE' });
    expect(noSuchGroup.status).toBe(400);
    expect(noSuchGroup.body).toMatchObject({ code: 'EMPTY_TARGET' });
    const misspelt = await helper.request().post('/ami/firmware/rollouts').send({ metro: '5.1.0', meter: PLAN.outsider, concurency: 2 });
    expect(misspelt.status).toBe(400);
    expect(misspelt.body).toMatchObject({ code: 'BAD_REQUEST' });
    const unknown = await helper.request().get('/ami/firmware/rollouts/no-such-rollout');
    expect(unknown.status).toBe(404);
  });

  it('sends a message it cannot carry out to the catch node with a typed code, and starts nothing', async () => {
    const cases: Array<[Record<string, unknown>, string, RegExp]> = [
      [{ comm: 'two', meter: PLAN.outsider }, 'BAD_REQUEST', /comm/],
      [{ meter: PLAN.outsider }, 'BAD_REQUEST', /comm, metro/],
      [{ comm: '2.2.0' }, 'BAD_REQUEST', /meter, meters, group/],
      [{ comm: '2.2.0', meter: PLAN.outsider, colour: 'red' }, 'BAD_REQUEST', /colour/],
      [{ comm: '2.2.0', group: 'feeder=NOWHERE' }, 'EMPTY_TARGET', /NOWHERE/],
    ];
    for (const [payload, code, message] of cases) {
      const caught = collect('errors', (got) => got.length === 1);
      node('rollout').receive({ payload });
      const error = (await caught)[0]!.error as { code: string; message: string };
      expect(error.code, JSON.stringify(payload)).toBe(code);
      expect(error.message).toMatch(message);
    }
    expect(fleet.firmwareOf(PLAN.outsider)!.offers).toEqual([]);
  });

  it('resumes a rollout after a redeploy: the meter unreachable when the flow stopped is updated, and its outcome comes out of the node that started the rollout', async () => {
    const rolloutId = 'flow-resume';
    const meter = PLAN.resumed;
    fleet.setOffline(meter, true);
    const started = collect('summaries', (got) => got.some((msg) => msg.rollout === rolloutId && msg.topic === 'started'));
    node('rollout').receive({ payload: { comm: '2.2.0', meter, id: rolloutId } });
    await started;
    await helper.unload();
    expect(fleet.firmwareOf(meter)!.offers).toEqual([]);

    fleet.setOffline(meter, false);
    await helper.load([...allNodes, coreNodes.catch], flow());
    // The service resumes the rollout as it opens, after the images load: later than these listeners.
    const outcomes = outcomesOf('results', rolloutId, [meter]);
    const finished = finishedSummary('summaries', rolloutId);
    const [msg] = await outcomes;
    expect(msg!.payload).toMatchObject({ meter, outcome: { code: 'FW_UPDATE_SUCCESS', versions: { comm: '2.2.0', metro: '5.0.0' } } });
    expect(fleet.firmwareOf(meter)!.versions()).toEqual({ comm: '2.2.0', metro: '5.0.0' });
    expect((await finished).payload).toMatchObject({ rolloutId, total: 1, byCode: { FW_UPDATE_SUCCESS: 1 }, requestedBy: 'rollout' });
    await storedAtHes(`firmware-result:${rolloutId}:${meter}`);
  });
});

describe('ami-firmware without trust anchors', () => {
  let meshPort: number;
  const saved = process.env.AMI_FIRMWARE_TRUST_ANCHORS;

  beforeAll(async () => {
    meshPort = await freeUdpPort();
    // Unset, as on an appliance where no firmware root CA is configured: Node-RED leaves ${...} as written.
    delete process.env.AMI_FIRMWARE_TRUST_ANCHORS;
    await helper.load(
      [...allNodes, coreNodes.catch],
      [
        { id: z, type: 'tab', label: 'firmware off' },
        { id: 'store', type: 'ami-store', path: path.join(tmp, 'ami-store-off') },
        { id: 'mesh', type: 'ami-mesh-endpoint', bind: '::1', port: String(meshPort), acceptTimeout: '2000', retryAfter: '30', store: 'store' },
        { id: 'fw', type: 'ami-firmware', mesh: 'mesh', store: 'store', hes: '', images: TEST_IMAGES, trustAnchors: '${AMI_FIRMWARE_TRUST_ANCHORS}', concurrency: '8', poll: '2', attempts: '3', stepTimeout: '600' },
        { id: 'rollout', z, x: 0, y: 0, type: 'ami-firmware-rollout', firmware: 'fw', comm: '2.2.0', metro: '', target: 'meter', targets: 'fw-000001', concurrency: '', wires: [['results'], ['summaries']] },
        // A mesh user, so that the endpoint listens: it must answer /fw with 4.04.
        { id: 'meshin', z, x: 0, y: 0, type: 'ami-mesh-in', endpoint: 'mesh', ackMode: 'accepted', wires: [[]] },
        { id: 'results', z, x: 0, y: 0, type: 'helper' },
        { id: 'summaries', z, x: 0, y: 0, type: 'helper' },
        { id: 'catch', z, x: 0, y: 0, type: 'catch', scope: ['rollout'], uncaught: false, wires: [['errors']] },
        { id: 'errors', z, x: 0, y: 0, type: 'helper' },
      ],
    );
  });

  afterAll(async () => {
    await helper.unload();
    if (saved !== undefined) process.env.AMI_FIRMWARE_TRUST_ANCHORS = saved;
  });

  it('says so in the rollout node\'s status, refuses a rollout with NOT_READY, serves no image and answers the admin API with the reason', async () => {
    // The text is the message key here: the test runtime has no message catalogs (Node-RED translates it).
    const off = await untilStatus('rollout', (s) => s.text === 'ami-firmware.errors.no-trust-anchors');
    expect(off).toMatchObject({ fill: 'yellow', shape: 'ring' });

    const caught = collect('errors', (got) => got.length === 1);
    node('rollout').receive({ payload: 'go' });
    const error = (await caught)[0]!.error as { code: string; message: string };
    expect(error.code).toBe('NOT_READY');
    expect(error.message).toContain('ami-firmware.errors.no-trust-anchors');

    const images = await helper.request().get('/ami/firmware/images');
    expect(images.status).toBe(503);
    expect(images.body).toMatchObject({ code: 'NOT_READY' });
    const rollouts = await helper.request().get('/ami/firmware/rollouts');
    expect(rollouts.status).toBe(503);
    expect((rollouts.body as { error: string }).error).toContain('ami-firmware.errors.no-trust-anchors');

    await untilStatus('meshin', (s) => s.fill === 'green');
    const fw = await coapCall(`coap://[::1]:${meshPort}/fw`, { method: 'GET', timeoutMs: 5000 });
    expect(fw.code).toBe('4.04');
  });
});

describe('example flow firmware-rollout.json', () => {
  const FLOW = JSON.parse(readFileSync(path.join(REPO, 'flows', 'firmware-rollout.json'), 'utf8')) as Array<{ id: string; type: string }>;
  const saved = { ...process.env };
  let exampleDir: string;

  beforeAll(() => {
    // The example's store has no path: it lives in Node-RED's user directory, one for this example alone.
    exampleDir = mkdtempSync(path.join(os.tmpdir(), 'ami-firmware-example-'));
    helper.settings({ userDir: exampleDir });
    process.env.AMI_MESH_BIND = '::1';
    process.env.AMI_HES_PRIMARY = hes.url;
    process.env.AMI_HES_SECONDARY = '';
    process.env.AMI_GATEWAY_ID = GATEWAY;
    process.env.AMI_FIRMWARE_DIR = TEST_IMAGES;
  });

  afterAll(async () => {
    await helper.unload();
    process.env = saved;
    helper.settings({ userDir: tmp });
    rmSync(exampleDir, { recursive: true, force: true });
  });

  it('takes mtr-000001 to comm 2.2.0 and metro 5.1.0 in a compatible order from its inject button, and reports a firmware service without trust anchors to its catch node', async () => {
    const meshPort = await freeUdpPort();
    process.env.AMI_MESH_PORT = String(meshPort);
    process.env.AMI_FIRMWARE_TRUST_ANCHORS = TEST_ROOT_CA;
    await helper.load([...allNodes, ...Object.values(coreNodes)], FLOW);
    const fleet = startFleet({ count: 1, prefix: 'mtr-', meshPort });
    await fleet.start();
    try {
      await untilRegistered(meshMeterLister(() => helper.request(), 'a1f0c0de00000002'), fleet, (meters) => meters.some((m) => m.endpoint === 'mtr-000001'));
      const outcome = nextInput(node('e8f0c0de00000006'));
      const finished = collect('e8f0c0de00000007', (got) => got.some((msg) => msg.topic === 'finished'));
      // The button with msg.payload {meter: "mtr-000001", metro: "5.1.0"}; the node adds its comm 2.2.0.
      node('e8f0c0de00000004').receive({});
      expect((await outcome).payload).toMatchObject({ meter: 'mtr-000001', outcome: { code: 'FW_UPDATE_SUCCESS', versions: { comm: '2.2.0', metro: '5.1.0' } } });
      const firmware = fleet.firmwareOf('mtr-000001')!;
      // comm first: metro 5.1.0 next to comm 2.1.0 would not be a compatible pair.
      expect(firmware.ranPairs).toEqual([
        { comm: '2.1.0', metro: '5.0.0' },
        { comm: '2.2.0', metro: '5.0.0' },
        { comm: '2.2.0', metro: '5.1.0' },
      ]);
      expect((await finished).find((msg) => msg.topic === 'finished')!.payload).toMatchObject({ total: 1, byCode: { FW_UPDATE_SUCCESS: 1 } });
    } finally {
      await helper.unload();
      await fleet.stop();
    }

    delete process.env.AMI_FIRMWARE_TRUST_ANCHORS;
    await helper.load([...allNodes, ...Object.values(coreNodes)], FLOW);
    try {
      const caught = nextInput(node('e8f0c0de00000009'));
      node('e8f0c0de00000003').receive({});
      expect(((await caught).error as { code: string }).code).toBe('NOT_READY');
    } finally {
      await helper.unload();
    }
  });

  it('default-appliance.json has a firmware service on its mesh endpoint, store and HES endpoint, serving the images once AMI_FIRMWARE_TRUST_ANCHORS is set', async () => {
    const meshPort = await freeUdpPort();
    process.env.AMI_MESH_PORT = String(meshPort);
    process.env.AMI_FIRMWARE_TRUST_ANCHORS = TEST_ROOT_CA;
    // As the runtime sets them without AMI_FIREWALL=enforce: the flow's firewall node leaves the kernel alone.
    process.env.AMI_FIREWALL_APPLY = 'false';
    const flow = JSON.parse(readFileSync(path.join(REPO, 'flows', 'default-appliance.json'), 'utf8')) as Array<Record<string, unknown> & { id: string; type: string }>;
    expect(flow.find((n) => n.id === 'a1f0c0de00000040')).toMatchObject({ type: 'ami-firmware', mesh: 'a1f0c0de00000002', store: 'a1f0c0de00000009', hes: 'a1f0c0de00000003' });
    await helper.load([...allNodes, ...Object.values(coreNodes)], flow);
    // Resolves once the service is open: the images are loaded by then.
    await (node('a1f0c0de00000040') as unknown as FirmwareServiceNode).service();
    const listed = await helper.request().get('/ami/firmware/images');
    expect((listed.body as { images: Array<{ id: string }> }).images).toHaveLength(4);
    await untilStatus('a1f0c0de00000005', (s) => s.fill === 'green');
    const links = await coapCall(`coap://[::1]:${meshPort}/fw`, { method: 'GET', timeoutMs: 5000 });
    expect(links.code).toBe('2.05');
    expect(links.payload.toString().split(',')).toHaveLength(4);
  });
});
