import { createRequire } from 'node:module';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { NodeStatus } from 'node-red';
import type { CommandResult } from '../helpers/netns.js';
import { describeWithNft, nftIn, nftSupport, useNamespace } from '../helpers/nft.js';
import { freeUdpPort } from '../helpers/ports.js';
import { HesSimulator } from '../../src/sim/hes.js';
import { DIST, initHelper, nodes } from './setup.js';

/**
 * The `ami-allowlist` config node and the `firewall` node against the real
 * nft, run in a fresh network namespace through the amiFirewall.nftCommand
 * setting, so the host's ruleset is never touched. Needs root and nft;
 * skipped (with the reason in the name) elsewhere, but never under CI, where
 * it fails instead.
 */
const requireFromHere = createRequire(__filename);
type NodeModule = (RED: unknown) => void;
const allowlistNode = requireFromHere(path.join(DIST, 'nodes/ami-allowlist/ami-allowlist.js')) as NodeModule;
const firewallNode = requireFromHere(path.join(DIST, 'nodes/ami-firewall/ami-firewall.js')) as NodeModule;
const catchNode = requireFromHere('@node-red/nodes/core/common/25-catch.js') as NodeModule;
const flowNodes = [nodes.meshEndpoint, nodes.hesEndpoint, allowlistNode, firewallNode, catchNode];

const problem = nftSupport('firewall-nodes');

const helper = initHelper();
const TAB = { id: 'f1', type: 'tab', label: 'firewall' };

type Msg = Record<string, unknown>;

function nodeOf(id: string) {
  const found = helper.getNode(id);
  if (!found) throw new Error(`node ${id} is not deployed`);
  return found;
}

/** Every message a helper node receives, and a way to await the next one that matches. */
class Inbox {
  readonly messages: Msg[] = [];
  private waiters: Array<{ match: (m: Msg) => boolean; resolve: (m: Msg) => void }> = [];
  constructor(nodeId: string) {
    nodeOf(nodeId).on('input', (received: unknown) => {
      const msg = received as Msg;
      this.messages.push(msg);
      this.waiters = this.waiters.filter((w) => {
        if (!w.match(msg)) return true;
        w.resolve(msg);
        return false;
      });
    });
  }
  /** The first message (received already, or to come) that matches. */
  next(match: (m: Msg) => boolean, from = 0): Promise<Msg> {
    const seen = this.messages.slice(from).find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }
}

const topic = (t: string) => (m: Msg) => m.topic === t;

/** The status calls this node made (the helper's spy sits on the shared Node prototype). */
function statusCalls(nodeId: string): NodeStatus[] {
  const node = nodeOf(nodeId);
  const spy = node.status as unknown as { args: unknown[][]; thisValues: unknown[] };
  return spy.args.filter((_args, i) => spy.thisValues[i] === node).map((a) => a[0] as NodeStatus);
}

function errorCalls(nodeId: string): unknown[][] {
  return (nodeOf(nodeId).error as unknown as { args: unknown[][] }).args;
}

describeWithNft(problem, 'firewall nodes under real nftables', () => {
  const the = useNamespace('fwn');
  let meshPort = 0;

  /** nft in the namespace, never rejecting for a non-zero exit (30 s limit, run()'s default). */
  const nft = (...args: string[]): Promise<CommandResult> => nftIn(the(), args, undefined, 30_000);

  beforeEach(async () => {
    meshPort = await freeUdpPort();
    await nft('delete', 'table', 'inet', 'ami_gateway');
    helper.settings({ amiFirewall: { nftCommand: { file: 'ip', args: ['netns', 'exec', the().name, 'nft'] } } });
  });

  afterEach(async () => {
    await helper.unload();
    helper.settings({});
  });

  function flow(allowlist: Record<string, unknown> = {}, firewall: Record<string, unknown> = {}) {
    return [
      TAB,
      // Not used by any node, so it never binds: it only states the mesh prefixes and port once.
      { id: 'mesh', type: 'ami-mesh-endpoint', bind: '::1', port: String(meshPort), allow: 'fd00::/8' },
      {
        id: 'allow',
        type: 'ami-allowlist',
        hes: '192.0.2.10, 2001:db8:100::/48',
        mesh: '',
        meshEndpoint: 'mesh',
        mgmt: '198.51.100.0/24',
        adminPort: '18800',
        dlmsPort: '4059',
        backhaulPort: '',
        openvpnMgmtPort: '',
        ...allowlist,
      },
      { id: 'fw', z: 'f1', x: 0, y: 0, type: 'ami-firewall', allowlist: 'allow', applyOnDeploy: true, driftInterval: '1', wires: [['out']], ...firewall },
      { id: 'out', z: 'f1', x: 0, y: 0, type: 'helper' },
      { id: 'catch', z: 'f1', x: 0, y: 0, type: 'catch', scope: ['fw'], uncaught: false, wires: [['errors']] },
      { id: 'errors', z: 'f1', x: 0, y: 0, type: 'helper' },
    ];
  }

  async function listTable(): Promise<{ nftables: Array<Record<string, Record<string, unknown>>> }> {
    const result = await nft('-j', 'list', 'table', 'inet', 'ami_gateway');
    if (result.code !== 0) throw new Error(`nft list exited ${result.code}: ${result.stderr}`);
    return JSON.parse(result.stdout) as { nftables: Array<Record<string, Record<string, unknown>>> };
  }

  async function setElements(name: string): Promise<unknown[]> {
    const doc = await listTable();
    const set = doc.nftables.find((e) => e.set?.name === name)?.set;
    if (!set) throw new Error(`set ${name} is missing`);
    return (set.elem as unknown[] | undefined) ?? [];
  }

  it('applies the allowlist on deploy: an applied message, a green status, and the sets in the kernel', async () => {
    await helper.load(flowNodes, flow());
    const out = new Inbox('out');
    const applied = await out.next(topic('applied'));
    expect(applied.payload).toMatchObject({ ok: true, entries: { hes: 2, mesh: 1, mgmt: 1 } });
    expect(statusCalls('fw')).toContainEqual({ fill: 'green', shape: 'dot', text: 'ami-firewall.status.applied' });
    // The mesh prefix and port come from the mesh endpoint.
    expect(await setElements('mesh_v6')).toEqual([{ prefix: { addr: 'fd00::', len: 8 } }]);
    expect(await setElements('hes_v4')).toEqual(['192.0.2.10']);
    expect(await setElements('hes_v6')).toEqual([{ prefix: { addr: '2001:db8:100::', len: 48 } }]);
    expect(await setElements('mgmt_v4')).toEqual([{ prefix: { addr: '198.51.100.0', len: 24 } }]);
    const text = (await nft('list', 'table', 'inet', 'ami_gateway')).stdout;
    expect(text).toContain(`udp dport ${meshPort} counter packets 0 bytes 0 drop comment "drop-mesh"`);
    expect(text).toContain('tcp dport 18800 counter packets 0 bytes 0 drop comment "drop-admin"');
  });

  it('repairs a flushed set (drift), verifies, reports counters, and leaves the table on close', async () => {
    await helper.load(flowNodes, flow());
    const out = new Inbox('out');
    await out.next(topic('applied'));
    const flushed = await nft('flush', 'set', 'inet', 'ami_gateway', 'mesh_v6');
    expect(flushed.code).toBe(0);
    const drift = await out.next(topic('drift'));
    expect(drift.payload).toMatchObject({ repaired: true });
    expect((drift.payload as { differences: string[] }).differences.join('\n')).toMatch(/mesh_v6/);
    expect(statusCalls('fw')).toContainEqual({ fill: 'yellow', shape: 'dot', text: 'ami-firewall.status.drift-repaired' });
    expect((nodeOf('fw').warn as unknown as { args: unknown[][] }).args.length).toBeGreaterThan(0);
    expect(await setElements('mesh_v6')).toEqual([{ prefix: { addr: 'fd00::', len: 8 } }]);

    const from = out.messages.length;
    nodeOf('fw').receive({ topic: 'verify' });
    const verified = await out.next(topic('verify'), from);
    expect(verified.payload).toEqual({ ok: true, differences: [] });

    nodeOf('fw').receive({ topic: 'counters' });
    const counters = await out.next(topic('counters'), from);
    expect(counters.payload).toHaveProperty('drop-mesh');
    expect(counters.payload).toHaveProperty('drop-admin.packets', 0);

    await helper.unload();
    // Closing the flow stops the drift watch but keeps the table in force.
    await listTable();
  });

  it('reports a drift to the HES as an alarm record through the chosen HES endpoint', async () => {
    const hes = new HesSimulator({ port: 0, bind: '::1' });
    await hes.start();
    try {
      const alarmed = new Promise<string>((resolve) => {
        const stop = hes.onStored((key) => {
          if (!key.startsWith('firewall/gw-fw-test/drift/')) return;
          stop();
          resolve(key);
        });
      });
      await helper.load(flowNodes, [
        ...flow({}, { hes: 'hesconf' }),
        { id: 'hesconf', type: 'ami-hes-endpoint', primary: hes.url, secondary: '', gatewayId: 'gw-fw-test', timeout: '2000' },
      ]);
      const out = new Inbox('out');
      await out.next(topic('applied'));
      expect((await nft('delete', 'table', 'inet', 'ami_gateway')).code).toBe(0);
      const drift = await out.next(topic('drift'));
      expect(drift.payload).toMatchObject({ repaired: true });
      const key = await alarmed;
      expect(key).toBe(`firewall/gw-fw-test/drift/${(drift.payload as { at: number }).at}`);

      // The same drift again within the hour is not reported again (the outbox never drops alarms).
      const endpoint = helper.getNode('hesconf') as unknown as { deliver: (...args: unknown[]) => Promise<unknown> };
      const deliver = endpoint.deliver.bind(endpoint);
      let delivered = 0;
      endpoint.deliver = (...args: unknown[]) => {
        delivered += 1;
        return deliver(...args);
      };
      const from = out.messages.length;
      expect((await nft('delete', 'table', 'inet', 'ami_gateway')).code).toBe(0);
      // The alarm, if any, is handed over before the drift message leaves the node.
      expect((await out.next(topic('drift'), from)).payload).toMatchObject({ repaired: true });
      expect(delivered).toBe(0);
    } finally {
      await helper.unload();
      await hes.stop();
    }
  });

  it('removes the table on a remove message', async () => {
    await helper.load(flowNodes, flow());
    const out = new Inbox('out');
    await out.next(topic('applied'));
    nodeOf('fw').receive({ topic: 'remove' });
    const removed = await out.next(topic('remove'));
    expect(removed.payload).toEqual({ removed: true });
    expect((await nft('list', 'table', 'inet', 'ami_gateway')).code).not.toBe(0);
  });

  it('refuses a bad address in the allowlist with BAD_CONFIG and applies nothing', async () => {
    await helper.load(flowNodes, flow({ mgmt: '198.51.100.0/24, 10.0.0.300' }));
    const errors = new Inbox('errors');
    expect(errorCalls('allow')).toContainEqual([expect.stringMatching(/^BAD_CONFIG: mgmt\[1\]/)]);
    expect(statusCalls('fw')).toContainEqual({ fill: 'red', shape: 'ring', text: 'ami-allowlist.status.bad-config' });
    // An apply is refused the same way (the deploy's report may or may not have come already).
    const from = errors.messages.length;
    nodeOf('fw').receive({ topic: 'apply' });
    const caught = await errors.next((m) => m.topic === 'error', from);
    expect(caught.error).toMatchObject({ code: 'BAD_CONFIG', message: expect.stringMatching(/mgmt\[1\] "10\.0\.0\.300"/) });
    expect(errorCalls('fw')).toContainEqual([expect.objectContaining({ code: 'BAD_CONFIG' }), expect.objectContaining({ topic: 'error' })]);
    // Nothing reached the kernel.
    expect((await nft('list', 'table', 'inet', 'ami_gateway')).code).not.toBe(0);
  });

  it('with apply on deploy off: a grey "not applied" status and no table until an apply message', async () => {
    await helper.load(flowNodes, flow({}, { applyOnDeploy: false }));
    expect(statusCalls('fw').at(-1)).toEqual({ fill: 'grey', shape: 'ring', text: 'ami-firewall.status.not-applied' });
    expect((await nft('list', 'table', 'inet', 'ami_gateway')).code).not.toBe(0);
    const out = new Inbox('out');
    nodeOf('fw').receive({ topic: 'apply' });
    expect((await out.next(topic('applied'))).payload).toMatchObject({ ok: true });
    expect(await setElements('mgmt_v4')).toEqual([{ prefix: { addr: '198.51.100.0', len: 24 } }]);
  });

  it('an environment reference left empty counts as off (an unset ${AMI_FIREWALL_APPLY} never changes the kernel)', async () => {
    await helper.load(flowNodes, flow({}, { applyOnDeploy: '' }));
    expect(statusCalls('fw').at(-1)).toEqual({ fill: 'grey', shape: 'ring', text: 'ami-firewall.status.not-applied' });
    expect((await nft('list', 'table', 'inet', 'ami_gateway')).code).not.toBe(0);
  });

  it('with no mesh prefixes anywhere: the mesh port admits every source, as in-process, with a warning', async () => {
    await helper.load(flowNodes, flow({ mesh: '', meshEndpoint: '' }));
    const out = new Inbox('out');
    expect((await out.next(topic('applied'))).payload).toMatchObject({ ok: true });
    expect(await setElements('mesh_v4')).toEqual([{ prefix: { addr: '0.0.0.0', len: 0 } }]);
    expect(await setElements('mesh_v6')).toEqual([{ prefix: { addr: '::', len: 0 } }]);
    expect((nodeOf('allow').warn as unknown as { args: unknown[][] }).args).toContainEqual([expect.stringMatching(/mesh port admits every source/)]);
  });

  it('without CAP_NET_ADMIN: a red NO_PERMISSION status and msg.error.code, nothing applied', async () => {
    // nft itself runs without capabilities (and as nobody), still inside the test's namespace.
    helper.settings({
      amiFirewall: {
        nftCommand: {
          file: 'ip',
          args: ['netns', 'exec', the().name, '/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', 'nft'],
        },
      },
    });
    await helper.load(flowNodes, flow());
    const errors = new Inbox('errors');
    const caught = await errors.next(() => true);
    expect(caught.error).toMatchObject({ code: 'NO_PERMISSION' });
    expect(statusCalls('fw')).toContainEqual({ fill: 'red', shape: 'ring', text: expect.stringMatching(/^NO_PERMISSION: /) });
    expect((await nft('list', 'table', 'inet', 'ami_gateway')).code).not.toBe(0);
  });

  it('without nft: a red NO_NFT status, msg.error.code NO_NFT to a catch node, and the flow keeps running', async () => {
    helper.settings({ amiFirewall: { nftCommand: { file: '/nonexistent/nft', args: [] } } });
    await helper.load(flowNodes, flow());
    const errors = new Inbox('errors');
    const out = new Inbox('out');
    const caught = await errors.next(() => true);
    expect(caught.error).toMatchObject({ code: 'NO_NFT' });
    expect(await out.next(topic('error'))).toMatchObject({ error: { code: 'NO_NFT' } });
    expect(statusCalls('fw')).toContainEqual({ fill: 'red', shape: 'ring', text: expect.stringMatching(/^NO_NFT: /) });
    // Still alive: another request gets the same answer.
    nodeOf('fw').receive({ topic: 'counters' });
    const again = await errors.next(() => true, 1);
    expect(again.error).toMatchObject({ code: 'NO_NFT' });
    expect(again.topic).toBe('error');
  });
});
