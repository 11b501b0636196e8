import { createSocket } from 'node:dgram';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { NodeStatus } from 'node-red';
import { coapCall } from '../../src/coap/request.js';
import { CONTENT_FORMAT, encodeReading, type MeterReading } from '../../src/coap/reading.js';
import { HesSimulator } from '../../src/sim/hes.js';
import { freeUdpPort } from '../helpers/ports.js';
import { allNodes, gatewayHealth, initHelper, nextInput } from './setup.js';

const helper = initHelper();

let hes: HesSimulator;
let meshPort: number;

function reading(id: string, meter = 'mtr-flow-1'): MeterReading {
  return { id, meter, ts: 1_700_000_000_000, values: [{ obis: '1.0.1.8.0.255', value: 42, unit: 'Wh' }] };
}

function post(payload: Uint8Array, contentFormat: number | undefined = CONTENT_FORMAT.cbor, path = '/readings') {
  return coapCall(`coap://[::1]:${meshPort}${path}`, { method: 'POST', payload, contentFormat, timeoutMs: 10_000 });
}

const TAB = { id: 'f1', type: 'tab', label: 'test' };

type FlowOptions = { ackMode?: 'accepted' | 'received'; hesUrl?: string; acceptTimeout?: string; hesTimeout?: string };

function flow(options: FlowOptions = {}) {
  return [
    TAB,
    { id: 'mesh', type: 'ami-mesh-endpoint', name: 'Meter mesh', bind: '::1', port: String(meshPort), acceptTimeout: options.acceptTimeout ?? '5000', retryAfter: '30' },
    { id: 'hesconf', type: 'ami-hes-endpoint', name: 'HES', primary: options.hesUrl ?? hes.url, secondary: '', gatewayId: 'gw-test', timeout: options.hesTimeout ?? '1500' },
    { id: 'in', z: 'f1', x: 0, y: 0, type: 'ami-mesh-in', name: 'Readings', endpoint: 'mesh', ackMode: options.ackMode ?? 'accepted', wires: [['out', 'seen']] },
    { id: 'out', z: 'f1', x: 0, y: 0, type: 'ami-hes-out', name: 'To HES', hes: 'hesconf', wires: [['delivered']] },
    { id: 'seen', z: 'f1', x: 0, y: 0, type: 'helper' },
    { id: 'delivered', z: 'f1', x: 0, y: 0, type: 'helper' },
    { id: 'catch', z: 'f1', x: 0, y: 0, type: 'catch', scope: ['out'], uncaught: false, wires: [['errors']] },
    { id: 'errors', z: 'f1', x: 0, y: 0, type: 'helper' },
  ];
}

/** Resolves with the first status of `nodeId` that satisfies `predicate` (including one already shown). */
function statusOf(nodeId: string, predicate: (s: NodeStatus) => boolean): Promise<NodeStatus> {
  const node = helper.getNode(nodeId);
  if (!node) throw new Error(`no node ${nodeId}`);
  return new Promise((resolve) => {
    node.on('call:status', (call: unknown) => {
      const status = (call as { args: [NodeStatus] }).args[0];
      if (predicate(status)) resolve(status);
    });
  });
}

async function loadFlow(options: FlowOptions = {}): Promise<void> {
  await helper.load(allNodes, flow(options));
  // The endpoint's socket opens asynchronously; its users turn green when it listens.
  await statusOf('in', (s) => s.fill === 'green');
}

/** A mesh endpoint (200 ms limit, Max-Age 7) and a mesh in wired only to a helper node. */
async function loadMeshOnly(ackMode: 'accepted' | 'received'): Promise<void> {
  await helper.load(allNodes, [
    TAB,
    { id: 'mesh', type: 'ami-mesh-endpoint', bind: '::1', port: String(meshPort), acceptTimeout: '200', retryAfter: '7' },
    { id: 'in', z: 'f1', x: 0, y: 0, type: 'ami-mesh-in', endpoint: 'mesh', ackMode, wires: [['seen']] },
    { id: 'seen', z: 'f1', x: 0, y: 0, type: 'helper' },
  ]);
  await statusOf('in', (s) => s.fill === 'green');
}

beforeAll(async () => {
  hes = new HesSimulator({ port: 0, bind: '::1' });
  await hes.start();
  return () => hes.stop();
});

beforeEach(async () => {
  meshPort = await freeUdpPort();
});

afterEach(async () => {
  await helper.unload();
});

describe('mesh in -> hes out', () => {
  it('acknowledges a meter with 2.04 only after the HES stored the reading', async () => {
    const stored: string[] = [];
    const stop = hes.onStored((key) => stored.push(key));
    await helper.load(allNodes, flow());
    const listening = statusOf('in', (s) => s.fill === 'green');
    await listening;
    const delivered = nextInput(helper.getNode('delivered')!);
    const before = gatewayHealth.snapshot();

    const response = await post(encodeReading(reading('r-1')));

    expect(response.code).toBe('2.04');
    // The HES had the record before the meter got its acknowledgement.
    expect(stored).toEqual(['mtr-flow-1/r-1']);
    const msg = await delivered;
    expect(msg.hes).toEqual({ endpoint: hes.url, key: 'mtr-flow-1/r-1' });
    expect(msg.topic).toBe('mtr-flow-1');
    const after = gatewayHealth.snapshot();
    expect(after.meshReceived - before.meshReceived).toBe(1);
    expect(after.hesDelivered - before.hesDelivered).toBe(1);
    expect(after.hesEndpoint).toBe(hes.url);
    stop();
  });

  it('accepts JSON readings as well as CBOR', async () => {
    await loadFlow();
    const response = await post(Buffer.from(JSON.stringify(reading('r-json'))), CONTENT_FORMAT.json);
    expect(response.code).toBe('2.04');
    expect(hes.has('mtr-flow-1/r-json')).toBe(true);
  });

  it('acknowledges the meter once a slow HES confirms, with a separate response after an empty ACK', async () => {
    await loadFlow({ hesTimeout: '5000', acceptTimeout: '8000' });
    hes.setResponseDelay(2500);
    try {
      const started = Date.now();
      const response = await post(encodeReading(reading('r-slow')));
      expect(response.code).toBe('2.04');
      expect(Date.now() - started).toBeGreaterThanOrEqual(2500);
      expect(hes.has('mtr-flow-1/r-slow')).toBe(true);
    } finally {
      hes.setResponseDelay(0);
    }
  });

  it('answers 5.03 with Max-Age when the HES refuses, and reports the failure to a catch node', async () => {
    await loadFlow();
    const caught = nextInput(helper.getNode('errors')!);
    hes.refuseNext(1);

    const response = await post(encodeReading(reading('r-refused')));

    expect(response.code).toBe('5.03');
    expect(response.maxAge).toBe(30);
    const error = (await caught).error as { message: string };
    expect(error.message).toContain('mtr-flow-1/r-refused');
    expect(error.message).toContain('UNAVAILABLE');
    expect(hes.has('mtr-flow-1/r-refused')).toBe(false);
    // The meter retries later and then gets its acknowledgement.
    expect((await post(encodeReading(reading('r-refused')))).code).toBe('2.04');
    expect(hes.has('mtr-flow-1/r-refused')).toBe(true);
  });

  it('answers 5.03 when the HES is unreachable, and the health turns degraded', async () => {
    const deadPort = await freeUdpPort();
    await loadFlow({ hesUrl: `coap://[::1]:${deadPort}`, hesTimeout: '500', acceptTimeout: '10000' });
    const caught = nextInput(helper.getNode('errors')!);
    const response = await post(encodeReading(reading('r-dead')));
    expect(response.code).toBe('5.03');
    // The 5.03 comes from hes out giving up on the HES, long before the endpoint's own limit.
    expect(response.payload.toString()).toContain('no HES accepted the batch');
    expect(((await caught).error as { message: string }).message).toContain('UNAVAILABLE');
    const health = gatewayHealth.snapshot();
    expect(health.status).toBe('degraded');
    expect(health.problems.join(' ')).toContain(`coap://[::1]:${deadPort}`);
  });

  it('answers 5.03 when nothing accepts the reading in time', async () => {
    // A flow whose mesh in is not wired to anything that accepts.
    await loadMeshOnly('accepted');
    const seen = nextInput(helper.getNode('seen')!);
    const response = await post(encodeReading(reading('r-orphan')));
    expect(response.code).toBe('5.03');
    expect(response.maxAge).toBe(7);
    expect(response.payload.toString()).toContain('not accepted within 200 ms');
    expect(((await seen).payload as MeterReading).id).toBe('r-orphan');
  });

  it('acknowledges on receipt in "received" mode', async () => {
    await loadMeshOnly('received');
    expect((await post(encodeReading(reading('r-recv')))).code).toBe('2.04');
  });

  it('refuses malformed requests with a 4.xx and a diagnostic, counts them, and keeps serving', async () => {
    await loadFlow();
    const before = gatewayHealth.snapshot().meshRejected;
    const garbage = await post(Buffer.from([0xff, 0x00, 0x13]));
    expect(garbage.code).toBe('4.00');
    expect(garbage.payload.toString()).toContain('invalid CBOR');
    const wrongShape = await post(Buffer.from(JSON.stringify({ id: 'x' })), CONTENT_FORMAT.json);
    expect(wrongShape.code).toBe('4.00');
    expect(wrongShape.payload.toString()).toContain('meter');
    const noFormat = await coapCall(`coap://[::1]:${meshPort}/readings`, {
      method: 'POST',
      payload: encodeReading(reading('r-nofmt')),
      timeoutMs: 5000,
    });
    expect(noFormat.code).toBe('4.15');
    const wrongPath = await post(encodeReading(reading('r-path')), CONTENT_FORMAT.cbor, '/nothing');
    expect(wrongPath.code).toBe('4.04');
    const wrongMethod = await coapCall(`coap://[::1]:${meshPort}/readings`, { method: 'GET', timeoutMs: 5000 });
    expect(wrongMethod.code).toBe('4.05');
    expect(gatewayHealth.snapshot().meshRejected - before).toBe(5);
    expect((await post(encodeReading(reading('r-after')))).code).toBe('2.04');
  });

  it('stores a reading once when a meter sends it twice', async () => {
    await loadFlow();
    const storedBefore = hes.stats.stored;
    const duplicatesBeforeJoin = hes.stats.duplicates;
    const first = post(encodeReading(reading('r-twice')));
    const second = post(encodeReading(reading('r-twice')));
    expect((await first).code).toBe('2.04');
    expect((await second).code).toBe('2.04');
    // The second request joined the first: one record went to the HES.
    expect(hes.stats.stored - storedBefore).toBe(1);
    expect(hes.stats.duplicates).toBe(duplicatesBeforeJoin);
    expect((await post(encodeReading(reading('r-twice')))).code).toBe('2.04');
    const duplicatesBefore = hes.stats.duplicates;
    expect(hes.has('mtr-flow-1/r-twice')).toBe(true);
    // A later resend reaches the HES, which acknowledges it without storing it again.
    expect((await post(encodeReading(reading('r-twice')))).code).toBe('2.04');
    expect(hes.stats.duplicates).toBe(duplicatesBefore + 1);
  });

  it('acknowledges a burst from many meters at once, every reading stored once', async () => {
    await loadFlow();
    const { Agent } = await import('coap');
    const { closeAgent } = await import('../../src/coap/request.js');
    // Long keys make large batches and large acknowledgements (block-wise on both ways).
    const meters = Array.from({ length: 60 }, (_, i) => ({ name: `mtr-burst-${String(i).padStart(4, '0')}-${'x'.repeat(30)}`, agent: new Agent({ type: 'udp6' }) }));
    const codes = await Promise.all(
      meters.flatMap((meter) =>
        [1, 2, 3].map(async (n) => {
          const r = await coapCall(`coap://[::1]:${meshPort}/readings`, {
            method: 'POST',
            payload: encodeReading(reading(`burst-${n}-${'y'.repeat(40)}`, meter.name)),
            contentFormat: CONTENT_FORMAT.cbor,
            timeoutMs: 20_000,
            agent: meter.agent,
          });
          return r.code;
        }),
      ),
    );
    await Promise.all(meters.map((meter) => closeAgent(meter.agent)));
    expect(codes.filter((code) => code !== '2.04')).toEqual([]);
    for (const meter of meters) {
      for (const n of [1, 2, 3]) expect(hes.has(`${meter.name}/burst-${n}-${'y'.repeat(40)}`)).toBe(true);
    }
  });

  it('shows a red status and no socket when the endpoint is misconfigured', async () => {
    await helper.load(allNodes, [
      TAB,
      { id: 'mesh', type: 'ami-mesh-endpoint', bind: '::1', port: 'not-a-port' },
      { id: 'in', z: 'f1', x: 0, y: 0, type: 'ami-mesh-in', endpoint: 'mesh', ackMode: 'accepted', wires: [[]] },
    ]);
    const status = await statusOf('in', (s) => s.fill === 'red');
    expect(status.text).toBe('ami-mesh-endpoint.status.misconfigured');
  });

  it('reports a missing HES address on hes out and in the health', async () => {
    await helper.load(allNodes, [
      TAB,
      { id: 'hesconf', type: 'ami-hes-endpoint', primary: '', secondary: '' },
      { id: 'out', z: 'f1', x: 0, y: 0, type: 'ami-hes-out', hes: 'hesconf', wires: [[]] },
      { id: 'catch', z: 'f1', x: 0, y: 0, type: 'catch', scope: ['out'], uncaught: false, wires: [['errors']] },
      { id: 'errors', z: 'f1', x: 0, y: 0, type: 'helper' },
    ]);
    const caught = nextInput(helper.getNode('errors')!);
    helper.getNode('out')!.receive({ payload: reading('r-nohes') });
    expect(((await caught).error as { message: string }).message).toMatch(/no HES address/);
    expect(gatewayHealth.snapshot().problems.join(' ')).toMatch(/no HES address/);
  });

  it('rejects a payload that is not a reading with a catchable error', async () => {
    await loadFlow();
    const caught = nextInput(helper.getNode('errors')!);
    helper.getNode('out')!.receive({ payload: { hello: 'world' } });
    // The prefix is translated (the test helper shows its key); the detail says what is wrong.
    expect(((await caught).error as { message: string }).message).toMatch(/bad-payload: id must be/);
  });

  it('serves GET /ami/health on the admin app', async () => {
    await loadFlow();
    const response = await helper.request().get('/ami/health');
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({ status: expect.any(String), meshReceived: expect.any(Number), hesDelivered: expect.any(Number), outboxDepth: expect.any(Number) });
  });

  it('releases the UDP port when the flow is stopped', async () => {
    await loadFlow();
    await helper.unload();
    const socket = createSocket('udp6');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(meshPort, '::1', () => resolve());
    });
    await new Promise<void>((resolve) => socket.close(() => resolve()));
  });
});
