import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NodeStatus } from 'node-red';
import { cborEncode } from '../../src/coap/cbor.js';
import { coapCall } from '../../src/coap/request.js';
import { RawCoapPeer } from '../helpers/raw-coap-peer.js';
import { freeUdpPort } from '../helpers/ports.js';
import { allNodes, initHelper, nextInput } from './setup.js';

/**
 * `mesh request` and `mesh events` in a flow: a meter (a raw CoAP peer whose
 * answers the test writes) registers with the endpoint's resource directory,
 * `mesh events` reports it, and `mesh request` reaches it by name.
 */
const helper = initHelper();
const TAB = { id: 'f1', type: 'tab', label: 'test' };
let meshPort: number;
let tmp: string;
const peers: RawCoapPeer[] = [];

beforeEach(async () => {
  meshPort = await freeUdpPort();
  tmp = await mkdtemp(path.join(os.tmpdir(), 'ami-mesh-request-'));
});

afterEach(async () => {
  await helper.unload();
  for (const peer of peers.splice(0)) await peer.close();
  await rm(tmp, { recursive: true, force: true });
});

function flow(extra: Array<{ id: string; type: string; [key: string]: unknown }> = []) {
  return [
    TAB,
    { id: 'store', type: 'ami-store', path: path.join(tmp, 'store') },
    // ACK_TIMEOUT 50 ms with 2 retransmissions: a silent meter fails in about a third of a second.
    { id: 'mesh', type: 'ami-mesh-endpoint', bind: '::1', port: String(meshPort), acceptTimeout: '2000', retryAfter: '30', store: 'store', ackTimeout: '50', maxRetransmit: '2' },
    { id: 'events', z: 'f1', x: 0, y: 0, type: 'ami-mesh-events', endpoint: 'mesh', joined: true, updated: true, expired: true, removed: true, wires: [['joined']] },
    { id: 'joined', z: 'f1', x: 0, y: 0, type: 'helper' },
    { id: 'req', z: 'f1', x: 0, y: 0, type: 'ami-mesh-request', endpoint: 'mesh', method: 'GET', path: '/status', priority: 'metrology', contentFormat: '', output: 'decoded', wires: [['responses']] },
    { id: 'responses', z: 'f1', x: 0, y: 0, type: 'helper' },
    ...extra,
  ];
}

function node(id: string): NonNullable<ReturnType<typeof helper.getNode>> {
  const found = helper.getNode(id);
  if (!found) throw new Error(`no node ${id} in the flow`);
  return found;
}

function statusOf(nodeId: string, predicate: (s: NodeStatus) => boolean): Promise<NodeStatus> {
  const target = node(nodeId);
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

/** Registers the raw peer as meter `name`, serving at its own port (base). */
async function registerMeter(name: string, meter: RawCoapPeer): Promise<void> {
  const query = `ep=${name}&lt=600&base=${encodeURIComponent(`coap://[::1]:${meter.port}`)}&rssi=-70&hops=3`;
  for (;;) {
    // Until the endpoint's socket is open nothing answers, and until its registry is loaded /rd is 4.04:
    // like a real meter, try again.
    const answer = await coapCall(`coap://[::1]:${meshPort}/rd?${query}`, { method: 'POST', payload: Buffer.from('</status>;obs'), contentFormat: 40, timeoutMs: 1000 }).catch(
      (err: unknown) => ({ code: (err as Error).message }),
    );
    if (answer.code === '2.01') return;
    if (answer.code !== '4.04' && !/no response/.test(answer.code)) throw new Error(`registration answered ${answer.code}`);
  }
}

async function load(extra: Parameters<typeof flow>[0] = []): Promise<void> {
  await helper.load(allNodes, flow(extra));
}

describe('mesh request and mesh events', () => {
  it('reports a joining meter, then reads it by name and decodes its CBOR answer', async () => {
    await load();
    const meter = await RawCoapPeer.open();
    peers.push(meter);
    meter.onPacket = (d) => meter.answer(d, '2.05', cborEncode({ power: 'on', relay: 'connected' }), [{ name: 'Content-Format', value: Buffer.of(60) }]);
    const joined = nextInput(node('joined'));
    await registerMeter('mtr-flow-7', meter);
    const event = (await joined) as { topic: string; payload: { endpoint: string; metrics: { rssi: number; hops: number }; base: string }; meter: string };
    expect(event.topic).toBe('joined');
    expect(event.meter).toBe('mtr-flow-7');
    expect(event.payload.metrics).toMatchObject({ rssi: -70, hops: 3 });

    const response = nextInput(node('responses'));
    node('req').receive({ meter: 'mtr-flow-7' });
    const out = (await response) as { payload: unknown; coap: { code: string; contentFormat: number }; meter: string };
    expect(out.payload).toEqual({ power: 'on', relay: 'connected' });
    expect(out.coap).toMatchObject({ code: '2.05', contentFormat: 60 });
    expect(out.meter).toBe('mtr-flow-7');
    const request = meter.received[0]!.packet;
    expect(request.code).toBe('0.01');
    expect(request.options.filter((o) => o.name === 'Uri-Path').map((o) => o.value.toString())).toEqual(['status']);
  });

  it('gives a catch node COMM_TIMEOUT_ERR for a meter that never answers, and BAD_REQUEST for an unknown meter', async () => {
    await load([
        { id: 'catch', z: 'f1', x: 0, y: 0, type: 'catch', scope: ['req'], uncaught: false, wires: [['errors']] },
        { id: 'errors', z: 'f1', x: 0, y: 0, type: 'helper' },
      ]);
    const silent = await RawCoapPeer.open();
    peers.push(silent);
    await registerMeter('mtr-silent', silent);
    const caught = nextInput(node('errors'));
    node('req').receive({ meter: 'mtr-silent' });
    const timeout = (await caught) as { error: { message: string; code?: string } };
    expect(timeout.error.code).toBe('COMM_TIMEOUT_ERR');
    expect(timeout.error.message).toContain('COMM_TIMEOUT_ERR: [::1]');
    expect(silent.received).toHaveLength(3); // first transmission + maxRetransmit 2
    await statusOf('req', (s) => s.fill === 'red' && String(s.text).startsWith('COMM_TIMEOUT_ERR'));

    const unknown = nextInput(node('errors'));
    node('req').receive({ meter: 'mtr-nobody' });
    const refused = (await unknown) as { error: { message: string; code: string } };
    expect(refused.error.code).toBe('BAD_REQUEST');
    expect(refused.error.message).toContain('meter mtr-nobody is not registered');

    // Two observe requests for one resource at once: the second is refused while the first registers.
    const second = nextInput(node('errors'));
    node('req').receive({ meter: 'mtr-silent', observe: true });
    node('req').receive({ meter: 'mtr-silent', observe: true });
    const duplicate = (await second) as { error: { message: string; code: string } };
    expect(duplicate.error.code).toBe('BAD_REQUEST');
    expect(duplicate.error.message).toContain('already observing');
    const first = nextInput(node('errors'));
    expect(((await first) as { error: { code: string } }).error.code).toBe('COMM_TIMEOUT_ERR');
  });

  it('observes a resource until told to stop', async () => {
    await load();
    const meter = await RawCoapPeer.open();
    peers.push(meter);
    await registerMeter('mtr-obs', meter);
    let registration: (typeof meter.received)[number] | undefined;
    meter.onPacket = (d) => {
      if (registration) return meter.answer(d, '2.05');
      registration = d;
      meter.answer(d, '2.05', Buffer.from('on'), [
        { name: 'Observe', value: Buffer.of(1) },
        { name: 'Content-Format', value: Buffer.alloc(0) },
      ]);
    };
    const first = nextInput(node('responses'));
    node('req').receive({ meter: 'mtr-obs', observe: true });
    expect(((await first) as { payload: string }).payload).toBe('on');
    const second = nextInput(node('responses'));
    meter.send(
      { code: '2.05', confirmable: true, messageId: 9, token: registration!.packet.token, options: [{ name: 'Observe', value: Buffer.of(2) }, { name: 'Content-Format', value: Buffer.alloc(0) }], payload: Buffer.from('off') },
      registration!.from,
    );
    const notification = (await second) as { payload: string; coap: { observe: number } };
    expect(notification.payload).toBe('off');
    expect(notification.coap.observe).toBe(2);
    const before = meter.received.length;
    node('req').receive({ meter: 'mtr-obs', observe: false });
    // Our ACK of the notification may arrive first; the deregistration is the next GET.
    let seen = before;
    while (!meter.received.slice(before).some((d) => d.packet.code === '0.01')) await meter.receivedCount(++seen);
    const deregister = meter.received.slice(before).find((d) => d.packet.code === '0.01')!.packet;
    expect(deregister.options.find((o) => o.name === 'Observe')!.value).toEqual(Buffer.of(1));
  });
});
