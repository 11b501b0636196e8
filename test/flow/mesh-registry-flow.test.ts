import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import type { NodeStatus } from 'node-red';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { coapCall } from '../../src/coap/request.js';
import { CONTENT_FORMAT, encodeReading, type MeterReading } from '../../src/coap/reading.js';
import { freeUdpPort } from '../helpers/ports.js';
import { allNodes, gatewayHealth, initHelper, nextInput } from './setup.js';

/**
 * The mesh endpoint with its registry in a flow: `mesh in` messages carry the
 * registration and link metrics of the meter behind the source address,
 * "registered meters only" drops the others, and the new health counters.
 */

const helper = initHelper();
const TAB = { id: 'f1', type: 'tab', label: 'test' };
let tmp: string;
let meshPort: number;
const savedEnv = { ...process.env };

beforeAll(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'ami-mesh-registry-flow-'));
});

afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
  process.env = savedEnv;
});

beforeEach(async () => {
  meshPort = await freeUdpPort();
});

afterEach(async () => {
  await helper.unload();
});

function flow(endpoint: Record<string, unknown> = {}, withStore = true) {
  return [
    TAB,
    ...(withStore ? [{ id: 'store', type: 'ami-store', path: path.join(tmp, `store-${meshPort}`) }] : []),
    { id: 'mesh', type: 'ami-mesh-endpoint', bind: '::1', port: String(meshPort), acceptTimeout: '3000', retryAfter: '7', ...(withStore ? { store: 'store' } : {}), ...endpoint },
    { id: 'in', z: 'f1', x: 0, y: 0, type: 'ami-mesh-in', endpoint: 'mesh', ackMode: 'received', wires: [['seen']] },
    { id: 'seen', z: 'f1', x: 0, y: 0, type: 'helper' },
  ];
}

/** The first argument of the node's next call of `method` that `predicate` accepts; the listener goes once it matched. */
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

function statusOf(nodeId: string, predicate: (s: NodeStatus) => boolean): Promise<NodeStatus> {
  return nextCall(nodeId, 'status', predicate);
}

/** The next message a node logs at `level` that matches `pattern`. */
function logged(nodeId: string, level: 'log' | 'debug' | 'error', pattern: RegExp): Promise<string> {
  return nextCall<unknown>(nodeId, level, (text) => pattern.test(String(text))).then(String);
}

/** Loads the flow and waits until the socket listens and the resource directory serves. */
async function loadWithRegistry(endpoint: Record<string, unknown> = {}): Promise<void> {
  await helper.load(allNodes, flow(endpoint));
  const serving = logged('mesh', 'log', /registry/);
  const listening = statusOf('in', (s) => s.fill === 'green');
  // The registry may have loaded before the listener above was attached: the admin API tells.
  const meters = await helper.request().get('/ami/mesh/meters');
  const loaded = (meters.body as { endpoints: { id: string; registry: boolean }[] }).endpoints.some((e) => e.id === 'mesh' && e.registry);
  await Promise.all([listening, loaded ? Promise.resolve() : serving]);
}

function reading(id: string, meter: string): MeterReading {
  return { id, meter, ts: 1_700_000_000_000, values: [{ obis: '1.0.1.8.0.255', value: 1, unit: 'Wh' }] };
}

const postReading = (r: MeterReading) =>
  coapCall(`coap://[::1]:${meshPort}/readings`, { method: 'POST', payload: encodeReading(r), contentFormat: CONTENT_FORMAT.cbor, timeoutMs: 10_000 });

const register = (query: string) =>
  coapCall(`coap://[::1]:${meshPort}/rd?${query}`, { method: 'POST', payload: Buffer.from('</1/0/0>;rt="meter"'), contentFormat: 40, timeoutMs: 10_000 });

describe('mesh in with the registry', () => {
  it('gives a registered meter\'s reading its registration and link metrics, picking the named meter among several at one address', async () => {
    await loadWithRegistry();
    const first = await register('ep=mtr-link-1&lt=600&rssi=-71&snr=9&lqi=200&hops=3');
    expect(first.code).toBe('2.01');
    // A second meter registers from the same address (::1): the reading's meter name decides.
    expect((await register('ep=mtr-link-2&lt=600&rssi=-90')).code).toBe('2.01');
    const listed = await helper.request().get('/ami/mesh/meters');
    const meters = (listed.body as { endpoints: { id: string; meters: { id: string; endpoint: string }[] }[] }).endpoints.find((e) => e.id === 'mesh')!.meters;
    const id = meters.find((m) => m.endpoint === 'mtr-link-1')!.id;

    const seen = nextInput(helper.getNode('seen')!);
    expect((await postReading(reading('r-link', 'mtr-link-1'))).code).toBe('2.04');
    const msg = await seen;
    expect(msg.registration).toEqual({ id, endpoint: 'mtr-link-1' });
    expect(msg.link).toMatchObject({ rssi: -71, snr: 9, lqi: 200, hops: 3, updatedAt: expect.any(Number) });
    expect(msg.topic).toBe('mtr-link-1');

    const other = nextInput(helper.getNode('seen')!);
    await postReading(reading('r-link-2', 'mtr-link-2'));
    expect((await other).link).toEqual({ rssi: -90, updatedAt: expect.any(Number) });

    // A name registered from nowhere near this address, with two meters here: no guess.
    const stranger = nextInput(helper.getNode('seen')!);
    await postReading(reading('r-unknown', 'mtr-elsewhere'));
    const unknown = await stranger;
    expect(unknown.registration).toBeUndefined();
    expect(unknown.link).toBeUndefined();
  });

  it('with "registered meters only", drops readings from unregistered addresses unanswered and counts them, but lets meters register', async () => {
    await loadWithRegistry({ registeredOnly: true });
    const before = gatewayHealth.snapshot().meshDroppedUnregistered;
    const droppedLog = logged('mesh', 'debug', /dropped a request for \/readings/);
    const socket = createSocket('udp6');
    await new Promise<void>((resolve) => socket.bind(0, '::1', () => resolve()));
    try {
      const answers: ParsedPacket[] = [];
      socket.on('message', (message: Buffer) => answers.push(parse(message)));
      const datagram = generate({
        code: '0.02',
        confirmable: true,
        messageId: 0x1111,
        token: Buffer.from('ro'),
        options: [{ name: 'Uri-Path', value: Buffer.from('readings') }, { name: 'Content-Format', value: Buffer.from([CONTENT_FORMAT.cbor]) }],
        payload: Buffer.from(encodeReading(reading('r-early', 'mtr-ro'))),
      });
      socket.send(datagram, meshPort, '::1');
      await droppedLog;
      expect(gatewayHealth.snapshot().meshDroppedUnregistered - before).toBe(1);

      expect((await register('ep=mtr-ro&lt=600')).code).toBe('2.01');
      // The registration came from another port of ::1 (coapCall's socket): the address is what counts.
      const seen = nextInput(helper.getNode('seen')!);
      const answered = new Promise<ParsedPacket>((resolve) => socket.once('message', (message: Buffer) => resolve(parse(message))));
      socket.send(Buffer.from(datagram), meshPort, '::1');
      expect(await answered).toMatchObject({ ack: true, code: '2.04', messageId: 0x1111 });
      expect(((await seen).registration as { endpoint: string }).endpoint).toBe('mtr-ro');
      // The first copy got nothing at all.
      expect(answers).toHaveLength(1);
    } finally {
      socket.close();
    }
  });

  it('takes "registered meters only" from ${AMI_MESH_REGISTERED_ONLY}, off when the variable is unset', async () => {
    delete process.env.AMI_MESH_REGISTERED_ONLY;
    await loadWithRegistry({ registeredOnly: '${AMI_MESH_REGISTERED_ONLY}' });
    expect((await postReading(reading('r-env-unset', 'mtr-env'))).code).toBe('2.04');
    await helper.unload();

    process.env.AMI_MESH_REGISTERED_ONLY = 'true';
    await loadWithRegistry({ registeredOnly: '${AMI_MESH_REGISTERED_ONLY}' });
    const dropped = logged('mesh', 'debug', /dropped a request for \/readings/);
    const answer = postReading(reading('r-env-true', 'mtr-env')).catch((err: Error) => err);
    await dropped;
    // Registering makes the meter's retransmission of that same request go through.
    expect((await register('ep=mtr-env&lt=600')).code).toBe('2.01');
    expect(await answer).toMatchObject({ code: '2.04' });
    delete process.env.AMI_MESH_REGISTERED_ONLY;
  });

  it('refuses "registered meters only" without a registry store, with a red status and a clear error', async () => {
    await helper.load(allNodes, flow({ registeredOnly: true }, false));
    const status = await statusOf('in', (s) => s.fill === 'red');
    expect(status.text).toBe('ami-mesh-endpoint.status.misconfigured');
    expect(gatewayHealth.snapshot().problems.join(' ')).toMatch(/registered-only-needs-store|Registered meters only needs a registry store/);
  });
});

describe('mesh endpoint health counters and binding errors', () => {
  it('counts duplicates and malformed datagrams in /ami/health', async () => {
    await loadWithRegistry();
    const before = gatewayHealth.snapshot();
    const socket = createSocket('udp6');
    await new Promise<void>((resolve) => socket.bind(0, '::1', () => resolve()));
    try {
      const answers: ParsedPacket[] = [];
      let notify: (() => void) | undefined;
      socket.on('message', (message: Buffer) => {
        answers.push(parse(message));
        notify?.();
      });
      const answered = (count: number) =>
        new Promise<void>((resolve) => {
          notify = () => answers.length >= count && resolve();
          notify();
        });
      // A version-0 datagram (ignored silently), then one reading sent twice.
      socket.send(Buffer.from([0x00, 0x02, 0, 1]), meshPort, '::1');
      const datagram = generate({
        code: '0.02',
        confirmable: true,
        messageId: 0x2222,
        token: Buffer.from('hc'),
        options: [{ name: 'Uri-Path', value: Buffer.from('readings') }, { name: 'Content-Format', value: Buffer.from([CONTENT_FORMAT.cbor]) }],
        payload: Buffer.from(encodeReading(reading('r-health', 'mtr-health'))),
      });
      socket.send(datagram, meshPort, '::1');
      await answered(1);
      socket.send(datagram, meshPort, '::1');
      await answered(2);
      expect(answers.map((a) => [a.messageId, a.code])).toEqual([
        [0x2222, '2.04'],
        [0x2222, '2.04'],
      ]);
    } finally {
      socket.close();
    }
    const after = gatewayHealth.snapshot();
    expect(after.meshDuplicates - before.meshDuplicates).toBe(1);
    expect(after.meshMalformed - before.meshMalformed).toBe(1);
    expect(after.meshReceived - before.meshReceived).toBe(1);
    const response = await helper.request().get('/ami/health');
    expect(response.body).toMatchObject({ meshDuplicates: expect.any(Number), meshMalformed: expect.any(Number), meshDroppedUnregistered: expect.any(Number) });
  });

  it('says clearly when the bind address is not available (an IPv6 address this host does not have)', async () => {
    await helper.load(allNodes, flow({ bind: 'fd00::dead:beef' }, false));
    const status = await statusOf('in', (s) => s.fill === 'red');
    expect(status.text).toBe('ami-mesh-endpoint.status.address-not-available');
    expect(gatewayHealth.snapshot().problems.join(' ')).toMatch(/\[fd00::dead:beef\] is not an address of this host/);
  });
});

describe('the join log line', () => {
  afterEach(() => {
    helper.settings({});
  });

  /** Registers a meter with a mesh events node wired, and returns the join lines the endpoint logged at debug level up to its joined event. */
  async function debugLinesOfAJoin(level: string, name: string): Promise<string[]> {
    helper.settings({ logging: { console: { level } } });
    const events = { id: 'events', z: 'f1', x: 0, y: 0, type: 'ami-mesh-events', endpoint: 'mesh', joined: true, wires: [['joined']] };
    await helper.load(allNodes, [...flow(), events, { id: 'joined', z: 'f1', x: 0, y: 0, type: 'helper' }]);
    const serving = logged('mesh', 'log', /registry/);
    const meters = await helper.request().get('/ami/mesh/meters');
    if (!(meters.body as { endpoints: { id: string; registry: boolean }[] }).endpoints.some((e) => e.id === 'mesh' && e.registry)) await serving;
    const lines: string[] = [];
    helper.getNode('mesh')!.on('call:debug', (call: unknown) => {
      lines.push(String((call as { args: unknown[] }).args[0]));
    });
    const joined = nextInput(helper.getNode('joined')!);
    expect((await register(`ep=${name}&lt=600`)).code).toBe('2.01');
    // The events node hears 'joined' before the endpoint's own listener, in the same emit: once its
    // message arrives, the log line has been written or skipped.
    await joined;
    // The helper's RED._ returns the message key rather than the English text.
    return lines.filter((line) => line === 'ami-mesh-endpoint.log.joined');
  }

  it('is written when a logger writes debug lines', async () => {
    expect(await debugLinesOfAJoin('debug', 'mtr-join-debug')).toEqual(['ami-mesh-endpoint.log.joined']);
  });

  it('is skipped when no logger writes debug lines', async () => {
    expect(await debugLinesOfAJoin('info', 'mtr-join-info')).toEqual([]);
  });
});
