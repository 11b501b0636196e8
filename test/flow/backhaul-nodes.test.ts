import { createRequire } from 'node:module';
import path from 'node:path';
import type { NodeStatus } from 'node-red';
import { afterEach, describe, expect, it } from 'vitest';
import type { BackhaulSnapshot } from '../../src/backhaul/monitor.js';
import { ScriptedManagementServer } from '../helpers/openvpn.js';
import { DIST, gatewayHealth, initHelper, nextInput } from './setup.js';

/**
 * `ami-backhaul` and `backhaul status` in a flow, against a scripted OpenVPN
 * management interface: up/down messages on transitions only, the status dot,
 * requests (status, hold release, restart) and their typed failures, the
 * password credential, health, GET /ami/backhaul, and the connection closing
 * with the last user.
 */

const requireFromHere = createRequire(__filename);
type NodeModule = (RED: unknown) => void;
const backhaulNodes = [
  requireFromHere(path.join(DIST, 'nodes/ami-backhaul/ami-backhaul.js')) as NodeModule,
  requireFromHere(path.join(DIST, 'nodes/ami-backhaul-status/ami-backhaul-status.js')) as NodeModule,
];

const helper = initHelper();
const TAB = { id: 'f1', type: 'tab', label: 'test' };
const T = 1795340130;
const CONNECTED = `${T},CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,`;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  await helper.unload();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function serve(options: Parameters<typeof ScriptedManagementServer.listen>[0] = {}, history: string[] = []): Promise<ScriptedManagementServer> {
  const server = await ScriptedManagementServer.listen(options);
  server.history.push(...history);
  cleanups.push(() => server.close());
  return server;
}

function flow(mgmt: string, backhaul: Record<string, unknown> = {}, status: Record<string, unknown> = {}) {
  return [
    TAB,
    { id: 'bh', type: 'ami-backhaul', mgmt, bytecount: '0', ...backhaul },
    { id: 'st', z: 'f1', x: 0, y: 0, type: 'ami-backhaul-status', backhaul: 'bh', wires: [['out']], ...status },
    { id: 'out', z: 'f1', x: 0, y: 0, type: 'helper' },
  ];
}

/** The first argument of the node's next call of `method` that `predicate` accepts (or its last one, if that did). */
function nextCall<T>(nodeId: string, method: string, predicate: (arg: T) => boolean): Promise<T> {
  const node = helper.getNode(nodeId)!;
  return new Promise((resolve) => {
    const onCall = (call: unknown): void => {
      const arg = (call as { args: [T] }).args[0];
      if (!predicate(arg)) return;
      node.off(`call:${method}`, onCall);
      resolve(arg);
    };
    node.on(`call:${method}`, onCall);
  });
}

/** The first status of `backhaul status` that `predicate` accepts: one it already showed (the spy keeps them), or the next. */
function statusOf(predicate: (s: NodeStatus) => boolean): Promise<NodeStatus> {
  const spy = helper.getNode('st')!.status as unknown as { args: Array<[NodeStatus]> };
  const shown = spy.args.map((args) => args[0]).find(predicate);
  return shown ? Promise.resolve(shown) : nextCall('st', 'status', predicate);
}

type OutMessage = { topic: string; payload: BackhaulSnapshot };

/** supertest's POST on the admin app (types/node-red-node-test-helper.d.ts declares only GET). */
function adminPost(url: string): { send(body: unknown): PromiseLike<{ status: number; body: unknown }> } {
  return (helper.request() as unknown as { post(path: string): { send(body: unknown): PromiseLike<{ status: number; body: unknown }> } }).post(url);
}

function nextOutput(): Promise<OutMessage> {
  return nextInput(helper.getNode('out')!) as unknown as Promise<OutMessage>;
}

/** Loads the flow and resolves with the first message out of `backhaul status` (an up or down). */
async function load(mgmt: string, backhaul: Record<string, unknown> = {}, status: Record<string, unknown> = {}, credentials: Record<string, unknown> = {}): Promise<void> {
  await helper.load(backhaulNodes, flow(mgmt, backhaul, status), credentials);
}

describe('backhaul status', () => {
  it('sends up with the snapshot when the tunnel is up, and shows a green dot with the tunnel address', async () => {
    const server = await serve({}, [CONNECTED]);
    await load(server.address);
    // The output helper exists once load() resolves; the first message cannot come before the connection.
    const msg = await nextOutput();
    expect(msg.topic).toBe('up');
    expect(msg.payload).toMatchObject({ up: true, phase: 'up', state: 'CONNECTED', description: 'SUCCESS', localIp: '10.8.0.2', remoteIp: '10.99.0.1', managementConnected: true });
    expect(await statusOf((s) => s.fill === 'green')).toEqual({ fill: 'green', shape: 'dot', text: 'up 10.8.0.2' });
  });

  it('sends down with the reason on the transition only, shows it red, and reports it in /ami/health', async () => {
    const server = await serve({}, [CONNECTED]);
    await load(server.address);
    await nextOutput();
    const outputs: OutMessage[] = [];
    helper.getNode('out')!.on('input', (msg: unknown) => outputs.push(msg as OutMessage));
    const down = nextOutput();
    server.pushState('RECONNECTING', 'ping-restart');
    expect(await down).toMatchObject({ topic: 'down', payload: { up: false, reason: 'RECONNECTING (ping-restart)' } });
    expect(await statusOf((s) => s.text === 'down: RECONNECTING (ping-restart)')).toMatchObject({ fill: 'red', shape: 'ring' });
    expect(gatewayHealth.snapshot().problems).toContain('backhaul bh: down: RECONNECTING (ping-restart)');
    expect(gatewayHealth.snapshot().backhaul).toMatchObject({ up: false, state: 'RECONNECTING' });

    // On the way up again: yellow, and no message until it is up.
    server.pushState('WAIT');
    expect(await statusOf((s) => s.text === 'connecting (WAIT)')).toMatchObject({ fill: 'yellow', shape: 'ring' });
    const up = nextOutput();
    server.pushState('AUTH');
    server.pushState('CONNECTED', 'SUCCESS', '10.8.0.2', '10.99.0.1', '1194');
    expect((await up).topic).toBe('up');
    expect(outputs.map((m) => m.topic)).toEqual(['down', 'up']);
    expect(gatewayHealth.snapshot().problems.filter((p) => p.startsWith('backhaul'))).toEqual([]);
    expect(gatewayHealth.snapshot().backhaul).toMatchObject({ up: true });
  });

  it('answers a status request with the current snapshot', async () => {
    const server = await serve({}, [CONNECTED]);
    await load(server.address);
    await nextOutput();
    const answer = nextOutput();
    helper.getNode('st')!.receive({ topic: 'status', _msgid: 'm1' });
    const msg = await answer;
    expect(msg).toMatchObject({ topic: 'status', payload: { up: true, localIp: '10.8.0.2' } });
  });

  it('passes hold release and restarts (soft by default, hard on request) to OpenVPN', async () => {
    const server = await serve({}, [CONNECTED]);
    await load(server.address);
    await nextOutput();
    const st = helper.getNode('st')!;
    const release = server.nextCommand('hold release');
    st.receive({ payload: 'hold release' });
    await release;
    const soft = server.nextCommand('signal SIGUSR1');
    st.receive({ topic: 'restart' });
    await soft;
    const hard = server.nextCommand('signal SIGHUP');
    st.receive({ topic: 'restart', payload: 'hard' });
    await hard;
    expect(server.received.slice(2)).toEqual(['hold release', 'signal SIGUSR1', 'signal SIGHUP']);
  });

  it('sends failures to catch nodes with a code: unknown requests, and commands OpenVPN refuses', async () => {
    const server = await serve({}, [CONNECTED]);
    server.setReply(/^signal /, ["ERROR: signal 'SIGUSR1' is currently ignored"]);
    await load(server.address);
    await nextOutput();
    const st = helper.getNode('st')!;
    const bad = nextCall<Error & { code?: string }>('st', 'error', () => true);
    st.receive({ topic: 'reboot' });
    expect(await bad).toMatchObject({ code: 'BAD_COMMAND' });
    const badKind = nextCall<Error & { code?: string }>('st', 'error', () => true);
    st.receive({ topic: 'restart', payload: 'sideways' });
    expect(await badKind).toMatchObject({ code: 'BAD_COMMAND' });
    const refused = nextCall<Error & { code?: string }>('st', 'error', () => true);
    st.receive({ topic: 'restart', payload: 'soft' });
    expect(await refused).toMatchObject({ code: 'COMMAND_FAILED', message: expect.stringMatching(/currently ignored/) });
  });

  it('shows a hold in yellow, and a hold release ends it', async () => {
    const server = await serve({ afterGreeting: ['>HOLD:Waiting for hold release:0'] }, [`${T},CONNECTING,,,,,,`]);
    await load(server.address);
    expect(await statusOf((s) => s.text === 'hold: waiting for hold release')).toMatchObject({ fill: 'yellow', shape: 'ring' });
    const up = nextOutput();
    helper.getNode('st')!.receive({ topic: 'hold release' });
    await server.nextCommand('hold release');
    server.pushState('CONNECTED', 'SUCCESS', '10.8.0.2', '10.99.0.1', '1194');
    expect((await up).topic).toBe('up');
  });

  it('uses the password credential, and sends byte counts when asked to', async () => {
    const server = await serve({ password: 'pw-4-mgmt', transport: 'unix' }, [CONNECTED]);
    await load(server.address, { bytecount: '1' }, { bytecount: true }, { bh: { password: 'pw-4-mgmt' } });
    expect((await nextOutput()).topic).toBe('up');
    if (!server.received.includes('bytecount 1')) await server.nextCommand('bytecount 1');
    const counted = nextOutput();
    server.send('>BYTECOUNT:3519,3617');
    expect(await counted).toMatchObject({ topic: 'bytecount', payload: { bytesIn: 3519, bytesOut: 3617, up: true } });
  });

  it('lists the backhaul in GET /ami/backhaul', async () => {
    const server = await serve({}, [CONNECTED]);
    await load(server.address);
    await nextOutput();
    const response = await helper.request().get('/ami/backhaul');
    expect(response.status).toBe(200);
    expect(response.body).toEqual({ backhauls: [{ id: 'bh', name: '', address: server.address, monitoring: true, snapshot: expect.objectContaining({ up: true, localIp: '10.8.0.2' }) }] });
  });

  it('releases and restarts through POST /ami/backhaul/:id/..., refusing unknown kinds and backhauls', async () => {
    const server = await serve({}, [CONNECTED]);
    await load(server.address);
    await nextOutput();
    const released = await adminPost('/ami/backhaul/bh/hold-release').send({});
    expect(released.status).toBe(200);
    expect(released.body).toMatchObject({ ok: true, snapshot: { up: true } });
    const hard = await adminPost('/ami/backhaul/bh/restart').send({ kind: 'hard' });
    expect(hard.status).toBe(200);
    const sideways = await adminPost('/ami/backhaul/bh/restart').send({ kind: 'sideways' });
    expect(sideways.status).toBe(400);
    expect(sideways.body).toMatchObject({ code: 'BAD_COMMAND' });
    expect((await adminPost('/ami/backhaul/nope/restart').send({})).status).toBe(404);
    expect(server.received.slice(2)).toEqual(['hold release', 'signal SIGHUP']);
  });

  it('closes the management connection when the flow is removed', async () => {
    const server = await serve({}, [CONNECTED]);
    await load(server.address);
    await nextOutput();
    expect(server.openConnections).toBe(1);
    await helper.unload();
    // stop() resolves once the client's socket closed; the server sees the close right after.
    await new Promise<void>((resolve) => {
      const check = (): void => (server.openConnections === 0 ? resolve() : void setImmediate(check));
      check();
    });
    expect(gatewayHealth.snapshot().problems.filter((p) => p.startsWith('backhaul'))).toEqual([]);
    expect(gatewayHealth.snapshot().backhaul).toBeNull();
  });

  it('watches nothing when the management address is empty (an unset ${AMI_BACKHAUL_MGMT}): a grey dot, no health problem', async () => {
    await load('');
    expect((await statusOf(() => true)).fill).toBe('grey');
    expect((helper.getNode('bh') as unknown as { monitored: boolean }).monitored).toBe(false);
    const answer = nextOutput();
    helper.getNode('st')!.receive({ topic: 'status' });
    expect((await answer).payload).toMatchObject({ up: false, reason: 'not monitored: no management address' });
    expect(gatewayHealth.snapshot().problems.filter((p) => p.startsWith('backhaul'))).toEqual([]);
    expect(gatewayHealth.snapshot().backhaul).toBeNull();
  });

  it('says what is wrong with a misconfigured backhaul', async () => {
    await load('not an address');
    expect((await statusOf((s) => s.fill === 'red')).text).toMatch(/^down: misconfigured: Management: /);
    const answer = nextOutput();
    helper.getNode('st')!.receive({ topic: 'status' });
    expect((await answer).payload).toMatchObject({ up: false, managementConnected: false, reason: expect.stringMatching(/BAD_ADDRESS|not a management address/) });
    const refused = nextCall<Error & { code?: string }>('st', 'error', () => true);
    helper.getNode('st')!.receive({ topic: 'hold release' });
    expect(await refused).toMatchObject({ code: 'NOT_CONNECTED' });
  });
});
