import { createRequire } from 'node:module';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { NodeStatus } from 'node-red';
import { cborDecode, cborEncode } from '../../src/coap/cbor.js';
import { createTestPki, type TestPki } from '../../src/keys/pki.js';
import { HesSimulator } from '../../src/sim/hes.js';
import { SimCommandService, type SimOperator } from '../../src/sim/hes-commands.js';
import { DIST, initHelper, nodes } from './setup.js';

/**
 * The `hes commands` node with the HES simulator: ami-store + ami-hes-endpoint
 * (with the simulator's root CA as Command CA) + hes commands, wired to helper
 * nodes. Commands the simulated HES issues come out of output 1, refused
 * envelopes out of output 2; a result sent to the node reaches the HES.
 */
const requireFromHere = createRequire(__filename);
const hesCommandsNode = requireFromHere(path.join(DIST, 'nodes/ami-hes-commands/ami-hes-commands.js')) as (RED: unknown) => void;
const flowNodes = [nodes.store, nodes.hesEndpoint, hesCommandsNode, requireFromHere('@node-red/nodes/core/common/25-catch.js') as (RED: unknown) => void];

const helper = initHelper();
const GATEWAY = 'gw-flow-commands';
const TAB = { id: 'f1', type: 'tab', label: 'commands' };

let pki: TestPki;
let admin: SimOperator;
let tech: SimOperator;
let service: SimCommandService;
let hes: HesSimulator;
let tmp: string;

beforeAll(() => {
  pki = createTestPki({ commonNamePrefix: 'AMI Flow Test' });
  const issuer = new SimCommandService({ pki });
  admin = issuer.createOperator('Alice Administrator', 'utility-administrator');
  tech = issuer.createOperator('Tom Technician', 'field-technician');
});

beforeEach(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'ami-flow-commands-'));
  service = new SimCommandService({ pki });
  hes = new HesSimulator({ port: 0, bind: '::1', commands: service });
  await hes.start();
});

afterEach(async () => {
  await helper.unload();
  await hes.stop();
  rmSync(tmp, { recursive: true, force: true });
});

function flow(commandTrust: string = pki.rootCertPem) {
  return [
    TAB,
    { id: 'store', type: 'ami-store', path: path.join(tmp, 'ami-store') },
    { id: 'hesconf', type: 'ami-hes-endpoint', primary: hes.url, secondary: '', gatewayId: GATEWAY, timeout: '2000', store: 'store', commandTrust },
    { id: 'cmds', z: 'f1', x: 0, y: 0, type: 'ami-hes-commands', hes: 'hesconf', pollInterval: '60', wires: [['commands'], ['rejected']] },
    { id: 'commands', z: 'f1', x: 0, y: 0, type: 'helper' },
    { id: 'rejected', z: 'f1', x: 0, y: 0, type: 'helper' },
    { id: 'catch', z: 'f1', x: 0, y: 0, type: 'catch', scope: ['cmds'], uncaught: false, wires: [['errors']] },
    { id: 'errors', z: 'f1', x: 0, y: 0, type: 'helper' },
  ];
}

type Msg = Record<string, unknown>;

/** The next `count` messages a helper node receives. */
function messages(nodeId: string, count: number): Promise<Msg[]> {
  const node = helper.getNode(nodeId)!;
  const got: Msg[] = [];
  return new Promise((resolve) => {
    node.on('input', (msg: unknown) => {
      got.push(msg as Msg);
      if (got.length === count) resolve(got);
    });
  });
}

function statusOf(nodeId: string, predicate: (s: NodeStatus) => boolean): Promise<NodeStatus> {
  const node = helper.getNode(nodeId)!;
  return new Promise((resolve) => {
    node.on('call:status', (call: unknown) => {
      const status = (call as { args: [NodeStatus] }).args[0];
      if (predicate(status)) resolve(status);
    });
  });
}

/** The arguments of every call the node made to one of its methods (the test helper spies on them). */
function calls(nodeId: string, method: 'status' | 'error'): unknown[][] {
  return (helper.getNode(nodeId)![method] as unknown as { args: unknown[][] }).args;
}

function queueEmpty(): Promise<void> {
  return new Promise((resolve) => {
    if (service.pending(GATEWAY).length === 0) return resolve();
    const stop = service.onAcknowledged(() => {
      if (service.pending(GATEWAY).length > 0) return;
      stop();
      resolve();
    });
  });
}

function storedAtHes(key: string): Promise<unknown> {
  return new Promise((resolve) => {
    const stop = hes.onStored((k) => {
      if (k !== key) return;
      stop();
      resolve(k);
    });
  });
}

describe('hes commands node', () => {
  it('outputs verified commands, the HES queue empties, and a result sent back reaches the HES', async () => {
    await helper.load(flowNodes, flow());
    const out = messages('commands', 2);
    const disconnect = service.issue(GATEWAY, { meter: 'mtr-7', action: 'disconnect' }, tech);
    const configure = service.issue(GATEWAY, { meter: 'mtr-8', action: 'configure', params: { 'push-interval': 900 } }, admin);
    const [first, second] = await out;
    await queueEmpty();

    expect(first).toMatchObject({ topic: 'mtr-7', meter: 'mtr-7', redelivered: false, payload: disconnect.command, command: { id: disconnect.id, action: 'disconnect' } });
    expect(second?.payload).toEqual(configure.command);
    expect((first?.command as { signer: { name: string } }).signer.name).toBe('Tom Technician');

    const resultKey = `command/${disconnect.id}/result`;
    const atHes = storedAtHes(resultKey);
    helper.getNode('cmds')!.receive({ command: first?.command, payload: { relay: 'open' } });
    await atHes;
    helper.getNode('cmds')!.receive({ commandId: configure.id, status: 'failed', payload: { reason: 'meter busy' } });
    await storedAtHes(`command/${configure.id}/result`);
    // The counts themselves are in the translated text, which the test helper does not translate.
    await statusOf('cmds', (s) => s.fill === 'green' && s.text === 'ami-hes-commands.status.counts');
    const caught = messages('errors', 1);
    helper.getNode('cmds')!.receive({ command: first?.command, payload: { relay: 'closed' } });
    expect(((await caught)[0]?.error as { code: string }).code).toBe('UNKNOWN_COMMAND');
  });

  it('sends refused envelopes to output 2 with their code and reports them to the HES; a bad result goes to catch nodes', async () => {
    await helper.load(flowNodes, flow());
    const refused = messages('rejected', 3);
    const good = service.sign(GATEWAY, { meter: 'mtr-1', action: 'disconnect', id: 'cmd-flow-forged' }, tech);
    const other = service.sign(GATEWAY, { meter: 'mtr-2', action: 'disconnect', id: 'cmd-flow-forged' }, tech);
    const forged = cborEncode({ ...(cborDecode(good.envelope) as Msg), body: (cborDecode(other.envelope) as Msg).body });
    const reportKey = (id: string): Promise<unknown> =>
      new Promise((resolve) => {
        const stop = hes.onStored((k) => {
          if (!k.startsWith(`command/${id}/rejected/`)) return;
          stop();
          resolve(k);
        });
      });
    const reported = Promise.all([reportKey('cmd-flow-forged'), reportKey('cmd-flow-mfa'), reportKey('cmd-flow-role')]);
    service.enqueue(GATEWAY, 'cmd-flow-forged', forged);
    service.issue(GATEWAY, { meter: 'mtr-3', action: 'reconnect', id: 'cmd-flow-mfa', mfa: false }, tech);
    service.issue(GATEWAY, { meter: 'mtr-4', action: 'configure', id: 'cmd-flow-role', params: { a: 1 } }, tech);

    const got = await refused;
    expect(got.map((m) => [m.topic, (m.payload as Msg).id])).toEqual([
      ['BAD_SIGNATURE', 'cmd-flow-forged'],
      ['MFA_REQUIRED', 'cmd-flow-mfa'],
      ['UNAUTHORIZED_ROLE', 'cmd-flow-role'],
    ]);
    expect(got[1]).toMatchObject({ error: { code: 'MFA_REQUIRED' }, payload: { meter: 'mtr-3', operator: 'Tom Technician', site: hes.url } });
    await reported;
    await queueEmpty();

    const caught = messages('errors', 2);
    helper.getNode('cmds')!.receive({ commandId: 'cmd-never-seen', payload: {} });
    helper.getNode('cmds')!.receive({ payload: {} });
    const errors = (await caught).map((m) => (m.error as { code: string }).code).sort();
    expect(errors).toEqual(['NO_COMMAND_ID', 'UNKNOWN_COMMAND']);
  });

  it('hands out a command again, marked redelivered, after a redeploy; neither a resend nor a replay of it is new', async () => {
    await helper.load(flowNodes, flow());
    const out = messages('commands', 1);
    const issued = service.issue(GATEWAY, { meter: 'mtr-9', action: 'read-relay-state', mfa: false }, tech);
    expect((await out)[0]?.redelivered).toBe(false);
    await queueEmpty();
    await helper.unload();

    // The HES sends the same envelope once more (a resend, or a replay), then another envelope with the same id.
    service.enqueue(GATEWAY, issued.id, issued.envelope);
    await helper.load(flowNodes, flow());
    const emitted: Msg[] = [];
    helper.getNode('commands')!.on('input', (msg: unknown) => emitted.push(msg as Msg));
    const replay = messages('rejected', 1);
    await queueEmpty();
    const twin = service.sign(GATEWAY, { meter: 'mtr-10', action: 'read-relay-state', mfa: false, id: issued.id }, tech);
    service.enqueue(GATEWAY, issued.id, twin.envelope);

    expect((await replay)[0]).toMatchObject({ topic: 'REPLAYED', payload: { id: issued.id, meter: 'mtr-10' } });
    await queueEmpty();
    expect(emitted).toHaveLength(1);
    expect(emitted[0]).toMatchObject({ redelivered: true, payload: issued.command, command: { id: issued.id } });
  });

  it('fetches nothing without a usable Command CA, and says why', async () => {
    service.issue(GATEWAY, { meter: 'mtr-1', action: 'disconnect' }, tech);
    const missing = path.join(tmp, 'no-such-ca.pem');
    await helper.load(flowNodes, flow(missing));
    expect(calls('cmds', 'status')).toContainEqual([{ fill: 'red', shape: 'ring', text: 'ami-hes-commands.status.no-trust' }]);
    expect(calls('cmds', 'error')).toContainEqual([expect.stringMatching(/bad-trust: trust anchors: ENOENT.*no-such-ca\.pem/)]);
    await helper.unload();

    const notPem = path.join(tmp, 'not-a-ca.pem');
    writeFileSync(notPem, 'hello');
    await helper.load(flowNodes, flow(notPem));
    expect(calls('cmds', 'error')).toContainEqual([expect.stringMatching(/holds no PEM certificate/)]);
    await helper.unload();

    await helper.load(flowNodes, flow(''));
    expect(calls('cmds', 'error')).toContainEqual(['ami-hes-commands.errors.no-trust']);
    expect(service.pending(GATEWAY)).toHaveLength(1);
    expect(service.stats.fetches).toBe(0);
  });
});
