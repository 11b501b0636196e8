import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Level } from 'level';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeApdu, type GetRequestApdu } from '../../src/dlms/apdu.js';
import type { Keyring } from '../../src/keys/keyring.js';
import { HesSimulator } from '../../src/sim/hes.js';
import { SimulatedCosemMeter } from '../../src/sim/cosem-meter.js';
import { DEFAULT_SIM_KEY_SEED, simMeterKeys } from '../../src/sim/meter-keys.js';
import { gatewayHealth, initHelper, nodes } from './setup.js';

/**
 * The DLMS nodes in a flow: ami-store + ami-keyring (keys synced from the HES
 * simulator's key management) + ami-dlms-decode / ami-dlms-encode, with catch
 * nodes. Errors are asserted by code, statuses by fill (RED._ returns the key
 * in the test helper, so status texts carry no numbers).
 */
const helper = initHelper();
type HelperNode = NonNullable<ReturnType<typeof helper.getNode>>;
type Msg = Record<string, unknown>;
interface SpyCall {
  args: unknown[];
}
interface NodeStatusArg {
  fill?: string;
  shape?: string;
  text?: string;
}
interface CaughtError {
  message: string;
  code?: string;
  offset?: unknown;
  cause?: { offset?: unknown };
  source: { id: string };
}

const GATEWAY_ID = 'gw-dlms-test';
const METER_A = 'mtr-dlms-a';
const METER_B = 'mtr-dlms-b';
const SEED = DEFAULT_SIM_KEY_SEED;
const READING = { obis: '1.0.1.8.0.255', value: 4242, unit: 'Wh' };
const DECODE_COUNTS = 'ami-dlms-decode.status.counts';
const GET_CLOCK: GetRequestApdu = {
  type: 'get-request',
  invokeIdAndPriority: 0xc1,
  descriptor: { classId: 8, instanceId: '0.0.1.0.0.255', attributeId: 2 },
};

// The catch node is not listed: the test helper loads core catch itself for every catch node in the flow
// (once per node, so the flow has a single catch node, scoped to both DLMS nodes).
const modules = [nodes.hesEndpoint, nodes.store, nodes.keyring, nodes.dlmsDecode, nodes.dlmsEncode];

let hes: HesSimulator;
let tmp: string;
let storePath: string;
let anchorsPath: string;
let loadedFlows: string[] = [];

/** Every status/error/warn/log call of every flow node, and every message the helper nodes got. */
const recorded = { calls: [] as Array<{ node: string; method: string; args: unknown[] }>, outputs: [] as Msg[], logs: [] as unknown[][] };

function buildFlow(): Array<Record<string, unknown> & { id: string; type: string }> {
  const z = 'tab-dlms';
  return [
    { id: z, type: 'tab', label: 'dlms nodes' },
    { id: 'hes', type: 'ami-hes-endpoint', primary: hes.url, secondary: '', gatewayId: GATEWAY_ID, timeout: '' },
    { id: 'store', type: 'ami-store', path: storePath },
    {
      id: 'keyring',
      type: 'ami-keyring',
      store: 'store',
      hes: 'hes',
      systemTitle: '',
      trustAnchors: anchorsPath,
      micThreshold: '3',
      syncInterval: '',
    },
    { id: 'decode', type: 'ami-dlms-decode', z, x: 200, y: 100, keyring: 'keyring', replayCheck: true, allowPlain: false, wires: [['decodeOut']] },
    { id: 'decodeOut', type: 'helper', z, x: 400, y: 100, wires: [] },
    { id: 'dlmsCatch', type: 'catch', z, x: 200, y: 160, scope: ['decode', 'encode'], uncaught: false, wires: [['caught']] },
    { id: 'caught', type: 'helper', z, x: 400, y: 160, wires: [] },
    {
      id: 'encode',
      type: 'ami-dlms-encode',
      z,
      x: 200,
      y: 240,
      keyring: 'keyring',
      security: 'authenticated-encrypted',
      framing: 'general-glo',
      wrapper: false,
      wires: [['encodeOut']],
    },
    { id: 'encodeOut', type: 'helper', z, x: 400, y: 240, wires: [] },
  ];
}

function nodeOf(id: string): HelperNode {
  const node = helper.getNode(id);
  if (!node) throw new Error(`node ${id} is not deployed`);
  return node;
}

function keyringOf(): { keyring(): Promise<Keyring> } {
  // The config node's public surface (nodes/shared/types.ts KeyringNode); the instance comes from dist/.
  return nodeOf('keyring') as unknown as { keyring(): Promise<Keyring> };
}

/** Rejects after `ms` so a missing event fails the test with a name instead of the 60 s test timeout. */
function within<T>(promise: Promise<T>, label: string, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next call of `node.<method>(...)` whose arguments satisfy `matches` (the helper's `call:<method>` spy events). */
function nextCall(node: HelperNode, method: 'status' | 'warn' | 'error' | 'log', matches: (args: unknown[]) => boolean): Promise<unknown[]> {
  return new Promise((resolve) => {
    const listener = (call: unknown): void => {
      const { args } = call as SpyCall;
      if (!matches(args)) return;
      node.removeListener(`call:${method}`, listener);
      resolve(args);
    };
    node.on(`call:${method}`, listener);
  });
}

/** The first message any of `ids` receives, and which one got it. */
function firstInput(ids: string[]): Promise<{ id: string; msg: Msg }> {
  return new Promise((resolve) => {
    const listeners = ids.map((id) => {
      const listener = (msg: unknown): void => {
        ids.forEach((other, i) => nodeOf(other).removeListener('input', listeners[i]!));
        resolve({ id, msg: msg as Msg });
      };
      nodeOf(id).on('input', listener);
      return listener;
    });
  });
}

function statusArg(args: unknown[]): NodeStatusArg {
  return (args[0] ?? {}) as NodeStatusArg;
}

interface DecodeOutcome {
  /** The decoded message (output) or the catch node's message (failure). */
  msg: Msg;
  ok: boolean;
  /** The decode node's own count status after this frame. */
  fill: string | undefined;
}

/** Sends one message to the decode node; resolves with its output or caught error and the count status that follows. */
async function decode(msg: Msg): Promise<DecodeOutcome> {
  const decodeNode = nodeOf('decode');
  const status = nextCall(decodeNode, 'status', (args) => statusArg(args).text === DECODE_COUNTS);
  const result = firstInput(['decodeOut', 'caught']);
  decodeNode.receive(msg);
  const { id, msg: received } = await within(result, 'decode output or error');
  const fill = statusArg(await within(status, 'decode count status')).fill;
  return { msg: received, ok: id === 'decodeOut', fill };
}

async function decodeOk(msg: Msg): Promise<Msg> {
  const outcome = await decode(msg);
  expect(outcome.ok, `expected an output, got ${JSON.stringify((outcome.msg as { error?: unknown }).error)}`).toBe(true);
  expect(outcome.fill).toBe('green');
  return outcome.msg;
}

async function decodeFails(msg: Msg): Promise<CaughtError> {
  const outcome = await decode(msg);
  expect(outcome.ok, 'expected the catch node to get an error').toBe(false);
  expect(outcome.fill).toBe('red');
  const error = outcome.msg.error as CaughtError;
  expect(error.source.id).toBe('decode');
  return error;
}

async function encode(msg: Msg): Promise<{ msg: Msg; ok: boolean }> {
  const result = firstInput(['encodeOut', 'caught']);
  nodeOf('encode').receive(msg);
  const { id, msg: received } = await within(result, 'encode output or error');
  return { msg: received, ok: id === 'encodeOut' };
}

/** Records every status/error/warn/log call and every delivered message of the deployed flow (for the leak check). */
function recordFlow(): void {
  for (const def of buildFlow()) {
    if (def.type === 'tab') continue;
    const node = nodeOf(def.id);
    for (const method of ['status', 'error', 'warn', 'log'] as const) {
      node.on(`call:${method}`, (call: unknown) => recorded.calls.push({ node: def.id, method, args: (call as SpyCall).args }));
    }
    if (def.type === 'helper') node.on('input', (msg: unknown) => recorded.outputs.push(msg as Msg));
  }
}

/** The helper's spy on RED.log.log: every line any node logged (warn/error/log included) since load. */
function loggedLines(): unknown[][] {
  // helper.log() is the test helper's documented accessor; our typings (types/) do not declare it.
  const spy = (helper as unknown as { log(): { args: unknown[][] } }).log();
  return spy.args;
}

async function loadFlow(): Promise<void> {
  const flow = buildFlow();
  loadedFlows.push(JSON.stringify(flow));
  await helper.load(modules, flow);
  recordFlow();
}

/** Resolves once the keyring holds keys: its green status on the decode node, or keys already there. */
async function keysReady(): Promise<void> {
  const green = nextCall(nodeOf('decode'), 'status', (args) => statusArg(args).fill === 'green');
  const keyring = await within(keyringOf().keyring(), 'the keyring to open');
  if (keyring.keys.size > 0) return;
  await within(green, 'the keyring to sync keys');
}

/** Key material a leak check looks for: every meter key the KMS ever issued, hex in both cases and base64, and the keyring's master key. */
function secrets(): string[] {
  const keySets = [METER_A, METER_B].flatMap((meter) =>
    Array.from({ length: hes.keyManagement!.currentEpoch }, (_, i) => simMeterKeys(SEED, meter, i + 1)),
  );
  const keys = keySets.flatMap((set) => [set.ek, set.ak, set.kek]);
  const found = keys.flatMap((key) => [key.toString('hex'), key.toString('hex').toUpperCase(), key.toString('base64')]);
  // The keyring keeps its master key and the gateway's private key next to the store (no credentials configured).
  const secretsDir = path.join(path.dirname(storePath), 'keyring');
  for (const file of readdirSync(secretsDir)) {
    const text = readFileSync(path.join(secretsDir, file), 'utf8').trim();
    if (/^[0-9a-fA-F]{64}$/.test(text)) found.push(text.toLowerCase(), text.toUpperCase());
    const pemLine = text.split('\n').find((line) => /^[A-Za-z0-9+/]{64}$/.test(line));
    if (pemLine) found.push(pemLine);
  }
  return found;
}

/** JSON with Buffers (and their JSON form) as hex, so key bytes in a Buffer show up too. */
function asText(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v && typeof v === 'object' && (v as { type?: unknown }).type === 'Buffer' && Array.isArray((v as { data?: unknown }).data)) {
      return Buffer.from((v as { data: number[] }).data).toString('hex');
    }
    if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
    return v;
  }) ?? String(value);
}

function expectNoKeyMaterial(): void {
  const haystacks: Array<{ where: string; text: string }> = [
    ...recorded.calls.map((call) => ({ where: `${call.node}.${call.method}`, text: asText(call.args) })),
    ...recorded.logs.map((args, i) => ({ where: `RED.log #${i}`, text: asText(args) })),
    ...recorded.outputs.map((msg, i) => ({ where: `output #${i}`, text: asText(msg) })),
    ...loadedFlows.map((text, i) => ({ where: `flow #${i}`, text })),
  ];
  const needles = secrets();
  expect(needles.length).toBeGreaterThan(6);
  for (const { where, text } of haystacks) {
    for (const needle of needles) {
      if (text.includes(needle)) expect.fail(`key material in ${where}: ${text.slice(0, 200)}`);
    }
  }
}

/** Opens the store's directory directly: LevelDB refuses a second handle in this process while the store node holds one. */
async function openStoreDirectly(): Promise<'opened' | string> {
  const db = new Level<string, Uint8Array>(storePath, { valueEncoding: 'view' });
  try {
    await db.open();
  } catch (err) {
    return (err as Error & { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
  }
  await db.close();
  return 'opened';
}

function counters() {
  return gatewayHealth.snapshot();
}

beforeAll(async () => {
  hes = new HesSimulator({ port: 0, bind: '::1', keyManagement: { meters: [METER_A, METER_B], seed: SEED } });
  await hes.start();
  tmp = mkdtempSync(path.join(os.tmpdir(), 'ami-dlms-nodes-'));
  storePath = path.join(tmp, 'ami-store');
  anchorsPath = path.join(tmp, 'root-ca.pem');
  writeFileSync(anchorsPath, hes.keyManagement!.trustAnchorPem);
  helper.settings({ userDir: tmp });
  await loadFlow();
  await keysReady();
});

afterAll(async () => {
  await helper.unload();
  await hes.stop();
  helper.settings({});
  rmSync(tmp, { recursive: true, force: true });
});

describe('ami-dlms-decode / ami-dlms-encode with ami-keyring and ami-store', () => {
  const meterA = new SimulatedCosemMeter(simMeterKeys(SEED, METER_A, 1));
  let meterB: SimulatedCosemMeter;
  /** A frame of meter A that was accepted and then overtaken: a replay from then on. */
  let overtaken: Buffer;

  it('decodes a meter frame, flags a repeat, and refuses replays, forgeries, garbage, non-buffers and plain APDUs by code', async () => {
    const before = counters();
    const first = meterA.pushFrame([READING]);
    const msg = await decodeOk({ payload: first });
    expect(msg.payload).toMatchObject({
      meter: METER_A,
      systemTitle: meterA.systemTitle,
      invocationCounter: 1,
      apdu: { type: 'data-notification' },
      values: [READING],
    });
    expect(msg.topic).toBe(METER_A);
    expect(msg.dlms).toMatchObject({ systemTitle: meterA.systemTitle, invocationCounter: 1, repeat: false });

    // The meter missed the answer and sends the same frame again: delivered, marked as a repeat.
    const again = await decodeOk({ payload: first });
    expect(again.dlms).toMatchObject({ invocationCounter: 1, repeat: true });

    overtaken = first;
    const second = await decodeOk({ payload: meterA.pushFrame([{ ...READING, value: 4243 }]) });
    expect(second.dlms).toMatchObject({ invocationCounter: 2, repeat: false });
    expect((await decodeFails({ payload: overtaken })).code).toBe('REPLAY');
    // Green again after a success.
    await decodeOk({ payload: meterA.pushFrame([READING]) });

    const forged = Buffer.from(meterA.pushFrame([READING]));
    forged[forged.length - 1]! ^= 0x01;
    expect((await decodeFails({ payload: forged })).code).toBe('MIC_FAILURE');
    await decodeOk({ payload: meterA.pushFrame([READING]) });

    const garbage = await decodeFails({ payload: Buffer.from([0xc8, 0x05, 0x30]) });
    expect(['TRUNCATED', 'BAD_LENGTH']).toContain(garbage.code);
    expect((await decodeFails({ payload: 'not a frame' })).code).toBe('BAD_INPUT');
    expect((await decodeFails({ payload: encodeApdu(GET_CLOCK) })).code).toBe('UNPROTECTED');
    await decodeOk({ payload: meterA.pushFrame([READING]) });

    // The counts behind the status, as the health registry sees them.
    const after = counters();
    expect(after.dlmsDecoded - before.dlmsDecoded).toBe(6);
    expect(after.dlmsFailed - before.dlmsFailed).toBe(5);
    expect(after.micFailures - before.micFailures).toBe(1);
    expect(after.replaysRefused - before.replaysRefused).toBe(1);
  });

  // Node-RED's catch node copies only message/code/stack/cause of the error given to done(): the offset rides in the cause.
  it('tells a catch node the byte offset where a malformed frame went wrong', async () => {
    const error = await decodeFails({ payload: Buffer.from([0xc8, 0x05, 0x30]) });
    expect(['TRUNCATED', 'BAD_LENGTH']).toContain(error.code);
    expect(error.cause?.offset).toEqual(expect.any(Number));
  });

  it('resyncs a meter whose frames keep failing authentication, after micThreshold failures, and then decodes them', async () => {
    const km = hes.keyManagement!;
    const old = new SimulatedCosemMeter(simMeterKeys(SEED, METER_B, 1));
    await decodeOk({ payload: old.pushFrame([READING]) });

    // The KMS rotates the meter's keys and the meter applies them; the gateway has not heard yet.
    const rotated = km.rotate(METER_B);
    expect(rotated.epoch).toBeGreaterThan(1);
    // The meter restarts its counter with the new keys: its frames must count as MIC failures, not replays.
    meterB = new SimulatedCosemMeter(simMeterKeys(SEED, METER_B, rotated.epoch), { invocationCounter: 0 });
    expect(meterB.currentKeys.ek.equals(km.keysOf(METER_B)!.ek)).toBe(true);

    const keyring = nodeOf('keyring');
    const bundlesBefore = km.stats.bundles;
    const outOfSync = nextCall(keyring, 'warn', (args) => String(args[0]).includes('ami-keyring.errors.key-out-of-sync'));
    const resynced = nextCall(keyring, 'log', (args) => String(args[0]).startsWith(`resynced keys of ${METER_B}`));
    let warned = false;
    void outOfSync.then(() => (warned = true));

    let lastFailed: Buffer | undefined;
    for (let i = 1; i <= 3; i += 1) {
      lastFailed = meterB.pushFrame([{ ...READING, value: 5000 + i }]);
      expect((await decodeFails({ payload: lastFailed })).code).toBe('MIC_FAILURE');
      // Below the threshold the keyring stays quiet (its warning would precede the caught error).
      if (i < 3) expect(warned).toBe(false);
    }
    await within(outOfSync, 'the key-out-of-sync warning');
    await within(resynced, 'the targeted resync');
    expect(km.stats.bundles).toBe(bundlesBefore + 1);

    // The meter retries the frame that was refused with 5.03: it now decodes, and so does a new one.
    const retried = await decodeOk({ payload: lastFailed! });
    expect(retried.payload).toMatchObject({ meter: METER_B, values: [{ ...READING, value: 5003 }] });
    const fresh = await decodeOk({ payload: meterB.pushFrame([{ ...READING, value: 6000 }]) });
    expect(fresh.payload).toMatchObject({ meter: METER_B, systemTitle: meterB.systemTitle, values: [{ ...READING, value: 6000 }] });
  });

  it('encodes a get-request the meter accepts, with a rising invocation counter, and refuses a message naming no meter', async () => {
    const first = await encode({ topic: METER_A, payload: GET_CLOCK });
    expect(first.ok).toBe(true);
    expect(Buffer.isBuffer(first.msg.payload)).toBe(true);
    const dlms1 = first.msg.dlms as { systemTitle: string; invocationCounter: number; meter: string };
    expect(dlms1).toMatchObject({ systemTitle: meterA.systemTitle, meter: METER_A });
    expect(first.msg.topic).toBe(METER_A);

    // The meter decrypts the gateway's request and answers; the gateway decodes the answer.
    const answer = meterA.handleRequest(first.msg.payload as Buffer);
    const decoded = await decodeOk({ payload: answer });
    expect(decoded.payload).toMatchObject({ meter: METER_A, apdu: { type: 'get-response' } });

    // By system title alone, too; the counter rises and the meter accepts it (it refuses replays).
    const second = await encode({ systemTitle: meterA.systemTitle, payload: GET_CLOCK });
    expect(second.ok).toBe(true);
    const dlms2 = second.msg.dlms as { invocationCounter: number; meter: string };
    expect(dlms2.meter).toBe(METER_A);
    expect(dlms2.invocationCounter).toBeGreaterThan(dlms1.invocationCounter);
    expect(Buffer.isBuffer(meterA.handleRequest(second.msg.payload as Buffer))).toBe(true);

    const red = nextCall(nodeOf('encode'), 'status', (args) => statusArg(args).fill === 'red');
    const refused = await encode({ payload: GET_CLOCK });
    expect(refused.ok).toBe(false);
    expect(refused.msg.error).toMatchObject({ code: 'NO_SYSTEM_TITLE', source: { id: 'encode' } });
    await within(red, 'the encode node turning red');
  });

  it('never shows key material in statuses, errors, warnings, logs, the flow or output messages', () => {
    recorded.logs.push(...loggedLines());
    expect(recorded.outputs.length).toBeGreaterThan(15);
    expect(recorded.calls.some((call) => call.method === 'warn')).toBe(true);
    expectNoKeyMaterial();
  });

  it('on redeploy, reopens the same store: keys and replay counters survive, with the HES unreachable', async () => {
    await hes.stop();
    expect(await openStoreDirectly()).toBe('LEVEL_LOCKED');
    await helper.unload();
    // The store node gave its lease back on close: the database is closed, not just forgotten.
    expect(await openStoreDirectly()).toBe('opened');
    await loadFlow();
    await keysReady();

    const msg = await decodeOk({ payload: meterA.pushFrame([{ ...READING, value: 7000 }]) });
    expect(msg.payload).toMatchObject({ meter: METER_A, values: [{ ...READING, value: 7000 }] });
    // Keys the keyring resynced before the redeploy are still there.
    const b = await decodeOk({ payload: meterB.pushFrame([{ ...READING, value: 7001 }]) });
    expect(b.payload).toMatchObject({ meter: METER_B, systemTitle: meterB.systemTitle });
    // So are the replay counters.
    expect((await decodeFails({ payload: overtaken })).code).toBe('REPLAY');

    recorded.logs.push(...loggedLines());
    expectNoKeyMaterial();
  });
});
