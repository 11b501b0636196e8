import { afterEach, describe, expect, it } from 'vitest';
import { BackhaulMonitor, backhaulRequest, bytesFromStatus, type BackhaulChange, type BackhaulMonitorOptions, type BackhaulSnapshot } from '../../src/backhaul/index.js';
import { ScriptedManagementServer } from '../helpers/openvpn.js';

/**
 * The backhaul monitor against a scripted management interface: up if and
 * only if CONNECTED with SUCCESS, transitions only, the state read at once
 * after every (re)connection, holds, fatals and restarts.
 */

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setUp(options: Partial<BackhaulMonitorOptions> = {}, history: string[] = []) {
  const server = await ScriptedManagementServer.listen();
  server.history.push(...history);
  cleanups.push(() => server.close());
  const monitor = new BackhaulMonitor({ address: server.address, reconnectInitialMs: 20, reconnectMaxMs: 100, ...options });
  cleanups.push(() => monitor.stop());
  const changes: Array<{ change: BackhaulChange; snapshot: BackhaulSnapshot }> = [];
  monitor.on('change', (snapshot, change) => changes.push({ change, snapshot }));
  const transitions = () => changes.filter((c) => c.change === 'up' || c.change === 'down').map((c) => c.change);
  return { server, monitor, changes, transitions };
}

function until(monitor: BackhaulMonitor, predicate: (s: BackhaulSnapshot) => boolean): Promise<BackhaulSnapshot> {
  const now = monitor.snapshot();
  if (predicate(now)) return Promise.resolve(now);
  return new Promise((resolve) => {
    const listener = (snapshot: BackhaulSnapshot): void => {
      if (!predicate(snapshot)) return;
      monitor.off('change', listener);
      resolve(snapshot);
    };
    monitor.on('change', listener);
  });
}

function synced(monitor: BackhaulMonitor): Promise<BackhaulSnapshot> {
  return new Promise((resolve) => monitor.once('synced', resolve));
}

const T = 1795340130;

describe('BackhaulMonitor', () => {
  it('is down before it has heard from OpenVPN, with the reason', async () => {
    const { monitor } = await setUp();
    expect(monitor.snapshot()).toMatchObject({ up: false, phase: 'down', managementConnected: false, reason: expect.stringMatching(/management interface/) });
  });

  it('sends `state on all` and `bytecount N` after connecting, and learns the current state from the history at once', async () => {
    const { server, monitor, transitions } = await setUp({ bytecountIntervalSeconds: 5 }, [`${T},WAIT,,,,,,`, `${T},CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,`]);
    const up = until(monitor, (s) => s.up);
    const done = synced(monitor);
    monitor.start();
    const snapshot = await up;
    expect(snapshot).toMatchObject({
      up: true,
      phase: 'up',
      reason: null,
      state: 'CONNECTED',
      description: 'SUCCESS',
      localIp: '10.8.0.2',
      remoteIp: '10.99.0.1',
      remotePort: 1194,
      stateTime: T * 1000,
      holding: false,
      managementConnected: true,
    });
    await done;
    expect(server.received.slice(0, 2)).toEqual(['state on all', 'bytecount 5']);
    expect(transitions()).toEqual(['up']);
  });

  it('turns bytecount off explicitly when not configured (OpenVPN keeps the interval across connections)', async () => {
    const { server, monitor } = await setUp();
    const done = synced(monitor);
    monitor.start();
    await done;
    expect(server.received).toEqual(['state on all', 'bytecount 0']);
  });

  it('is up if and only if the state is CONNECTED with SUCCESS, and emits up and down only on transitions', async () => {
    const { server, monitor, transitions } = await setUp({}, [`${T},CONNECTING,,,,,,`]);
    const done = synced(monitor);
    monitor.start();
    await done;
    expect(monitor.snapshot()).toMatchObject({ up: false, phase: 'connecting', reason: 'CONNECTING' });

    const steps: Array<[string, string, string, boolean, string]> = [
      ['WAIT', '', '', false, 'connecting'],
      ['AUTH', '', '', false, 'connecting'],
      ['ASSIGN_IP', '', '10.8.0.2', false, 'connecting'],
      ['CONNECTED', 'SUCCESS', '10.8.0.2', true, 'up'],
      ['CONNECTED', 'SUCCESS', '10.8.0.2', true, 'up'],
      ['RECONNECTING', 'ping-restart', '', false, 'down'],
      ['WAIT', '', '', false, 'connecting'],
      ['CONNECTED', 'ERROR', '10.8.0.2', false, 'down'],
      ['CONNECTED', 'SUCCESS', '10.8.0.2', true, 'up'],
      ['EXITING', 'SIGTERM', '', false, 'down'],
    ];
    for (const [name, description, localIp, up, phase] of steps) {
      const seen = until(monitor, (s) => s.state === name && s.description === description && s.localIp === (localIp || null));
      server.pushState(name, description, localIp, name === 'CONNECTED' ? '10.99.0.1' : '', name === 'CONNECTED' ? '1194' : '');
      const snapshot = await seen;
      expect(snapshot.up, `${name} ${description}`).toBe(up);
      expect(snapshot.phase, `${name} ${description}`).toBe(phase);
      expect(snapshot.reason === null, `${name} ${description}`).toBe(up);
    }
    expect(monitor.snapshot().reason).toBe('EXITING (SIGTERM)');
    // The repeated CONNECTED did not emit a second up.
    expect(transitions()).toEqual(['up', 'down', 'up', 'down']);
  });

  it('gives the down event its reason and moves `since` only on transitions', async () => {
    let clock = 1000;
    const { server, monitor } = await setUp({ now: () => clock }, [`${T},CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,`]);
    clock = 2000;
    const up = until(monitor, (s) => s.up);
    monitor.start();
    expect((await up).since).toBe(2000);
    clock = 3000;
    const down = new Promise<[string, BackhaulSnapshot]>((resolve) => monitor.once('down', (reason, snapshot) => resolve([reason, snapshot])));
    server.pushState('RECONNECTING', 'ping-restart');
    const [reason, snapshot] = await down;
    expect(reason).toBe('RECONNECTING (ping-restart)');
    expect(snapshot.since).toBe(3000);
    clock = 4000;
    const waiting = until(monitor, (s) => s.state === 'WAIT');
    server.pushState('WAIT');
    expect((await waiting).since).toBe(3000);
  });

  it('reports a hold, which holdRelease() ends', async () => {
    const { server, monitor } = await setUp({}, [`${T},CONNECTING,,,,,,`]);
    server.afterGreeting = ['>HOLD:Waiting for hold release:0'];
    const done = synced(monitor);
    monitor.start();
    const snapshot = await done;
    expect(snapshot).toMatchObject({ up: false, phase: 'hold', holding: true, reason: 'OpenVPN waits for hold release' });

    await monitor.holdRelease();
    expect(server.received).toContain('hold release');
    expect(monitor.snapshot()).toMatchObject({ holding: false, phase: 'connecting' });
    const up = until(monitor, (s) => s.up);
    server.pushState('CONNECTED', 'SUCCESS', '10.8.0.2', '10.99.0.1', '1194');
    await up;
  });

  it('releases a hold by itself when told to, also one that comes later (a restart with --management-hold)', async () => {
    const { server, monitor } = await setUp({ releaseHold: true }, [`${T},CONNECTING,,,,,,`]);
    server.afterGreeting = ['>HOLD:Waiting for hold release:0'];
    const released = server.nextCommand('hold release');
    monitor.start();
    await released;
    await until(monitor, (s) => !s.holding);

    const again = server.nextCommand('hold release');
    server.pushState('RECONNECTING', 'SIGUSR1');
    server.send('>HOLD:Waiting for hold release:1');
    await again;
    await until(monitor, (s) => !s.holding);
    expect(server.received.filter((c) => c === 'hold release')).toHaveLength(2);
  });

  it('is down with the FATAL message as the reason, through EXITING, until OpenVPN starts again', async () => {
    const { server, monitor } = await setUp({}, [`${T},CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,`]);
    const up = until(monitor, (s) => s.up);
    monitor.start();
    await up;
    const fatal = until(monitor, (s) => s.lastFatal !== null);
    server.send('>FATAL:Cannot load certificate file client.crt');
    expect(await fatal).toMatchObject({ up: false, phase: 'down', reason: 'fatal: Cannot load certificate file client.crt' });
    const exiting = until(monitor, (s) => s.state === 'EXITING');
    server.pushState('EXITING', 'fatal-error');
    expect((await exiting).reason).toBe('fatal: Cannot load certificate file client.crt');
    const restarted = until(monitor, (s) => s.state === 'CONNECTING');
    server.pushState('CONNECTING');
    expect(await restarted).toMatchObject({ reason: 'CONNECTING', lastFatal: 'Cannot load certificate file client.crt' });
  });

  it('is down while the management interface is gone, and syncs again on every reconnection', async () => {
    const { server, monitor, transitions } = await setUp({}, [`${T},CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,`]);
    const up = until(monitor, (s) => s.up);
    monitor.start();
    await up;
    const down = until(monitor, (s) => !s.managementConnected);
    server.dropConnections();
    expect(await down).toMatchObject({ up: false, phase: 'down', reason: expect.stringMatching(/^management interface unreachable: /) });
    // It comes back: the monitor asks for the state again and is up without any notification.
    const upAgain = until(monitor, (s) => s.up);
    await upAgain;
    expect(server.connections).toBe(2);
    expect(server.received.filter((c) => c === 'state on all')).toHaveLength(2);
    expect(transitions()).toEqual(['up', 'down', 'up']);
  });

  it('does not take the stale state from before a reconnection for the current one', async () => {
    const { server, monitor, transitions } = await setUp({}, [`${T},CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,`]);
    const up = until(monitor, (s) => s.up);
    monitor.start();
    await up;
    // OpenVPN restarted meanwhile: it answers the history slowly, and it no longer ends with CONNECTED.
    server.setReply('state on all', null);
    const asked = server.nextCommand('state on all');
    server.dropConnections();
    await asked;
    expect(monitor.snapshot()).toMatchObject({ up: false, managementConnected: true, state: null, phase: 'connecting' });
    server.send('SUCCESS: real-time state notification set to ON', `${T + 5},CONNECTING,,,,,,`, 'END');
    await until(monitor, (s) => s.state === 'CONNECTING');
    expect(transitions()).toEqual(['up', 'down']);
  });

  it('prefers a state notification that came inside the history reply over the history', async () => {
    const { server, monitor } = await setUp({}, [`${T},WAIT,,,,,,`]);
    server.setReply('state on all', ['SUCCESS: real-time state notification set to ON', `>STATE:${T + 1},CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,`, `${T},WAIT,,,,,,`, 'END']);
    const done = synced(monitor);
    monitor.start();
    expect(await done).toMatchObject({ up: true, state: 'CONNECTED' });
  });

  it('counts bytes as a bytecount change, not a transition', async () => {
    const { server, monitor, changes } = await setUp({ bytecountIntervalSeconds: 1 }, [`${T},CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,`]);
    const done = synced(monitor);
    monitor.start();
    await done;
    const counted = until(monitor, (s) => s.bytesOut === 3617);
    server.send('>BYTECOUNT:3519,3617');
    expect(await counted).toMatchObject({ up: true, bytesIn: 3519, bytesOut: 3617 });
    expect(changes.at(-1)?.change).toBe('bytecount');
  });

  it('restarts soft with SIGUSR1 and hard with SIGHUP, and refuses any other kind', async () => {
    const { server, monitor } = await setUp();
    const done = synced(monitor);
    monitor.start();
    await done;
    await monitor.restart('soft');
    await monitor.restart('hard');
    expect(server.received.slice(-2)).toEqual(['signal SIGUSR1', 'signal SIGHUP']);
    // What a flow could send: the type says soft or hard, the value is whatever came in.
    const fromAMessage: string = 'reboot';
    await expect(monitor.restart(fromAMessage as 'soft')).rejects.toMatchObject({ code: 'BAD_COMMAND' });
    expect(server.received.slice(-1)).toEqual(['signal SIGHUP']);
  });
});

describe('bytesFromStatus', () => {
  it('reads the transport counters of a client status, and nothing from others', () => {
    const lines = ['OpenVPN STATISTICS', 'TCP/UDP read bytes,3519', 'TCP/UDP write bytes,3617', 'Auth read bytes,112'];
    expect(bytesFromStatus({ command: 'status', success: null, lines })).toEqual({ bytesIn: 3519, bytesOut: 3617 });
    expect(bytesFromStatus({ command: 'status', success: null, lines: ['OpenVPN CLIENT LIST', 'ROUTING TABLE'] })).toBeUndefined();
  });
});

describe('backhaulRequest (what a message to `backhaul status` asks for)', () => {
  it('reads the command from msg.topic, or from msg.payload when the topic is not one', () => {
    expect(backhaulRequest({ topic: 'status' })).toEqual({ action: 'status' });
    expect(backhaulRequest({ topic: 'sensor/7', payload: 'status' })).toEqual({ action: 'status' });
    expect(backhaulRequest({ topic: 'hold release' })).toEqual({ action: 'hold release' });
    expect(backhaulRequest({ payload: 'hold-release' })).toEqual({ action: 'hold release' });
    expect(backhaulRequest({ topic: 'HOLD_RELEASE' })).toEqual({ action: 'hold release' });
    expect(backhaulRequest({ topic: 'restart' })).toEqual({ action: 'restart', kind: 'soft' });
    expect(backhaulRequest({ topic: 'restart', payload: 'soft' })).toEqual({ action: 'restart', kind: 'soft' });
    expect(backhaulRequest({ topic: 'restart', payload: 'hard' })).toEqual({ action: 'restart', kind: 'hard' });
    expect(backhaulRequest({ payload: 'restart' })).toEqual({ action: 'restart', kind: 'soft' });
  });

  it('refuses anything else with BAD_COMMAND', () => {
    for (const message of [{}, { topic: 'reboot' }, { payload: 42 }, { topic: 'restart', payload: 'sideways' }, { topic: 'restart', payload: { kind: 'hard' } }]) {
      expect(() => backhaulRequest(message), JSON.stringify(message)).toThrow(expect.objectContaining({ code: 'BAD_COMMAND' }));
    }
  });
});
