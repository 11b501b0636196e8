import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { MeshClient } from '../../src/coap/client/client.js';
import { MeshEndpoint, type Uplink } from '../../src/coap/endpoint.js';
import { settleExchange } from '../../src/coap/exchanges.js';
import { CONTENT_FORMAT, encodeReading, readingKey } from '../../src/coap/reading.js';
import { createCoapServer, listenCoapServer, closeQuietly } from '../../src/coap/server.js';
import { decodeFrame, encodeDatagram } from '../../src/lowpan/index.js';
import { LowpanTransport, macFromInterfaceIdentifier } from '../../src/mesh/lowpan-transport.js';

/**
 * The 6LoWPAN radio as a datagram transport, over an in-memory radio (two
 * link ends that hand each other raw MAC frames): the mesh endpoint and the
 * mesh client run on it unchanged. The serial version of the same is in
 * test/integration/radio-mesh-pty.test.ts.
 */
type Received = { frame: Buffer; rssi?: number; lqi?: number };

class RadioEnd extends EventEmitter {
  peer: RadioEnd | undefined;
  readonly sent: Buffer[] = [];
  /** Frames to lose on the way out (by their index among this end's frames). */
  drop = new Set<number>();
  constructor(private readonly rssi: number) {
    super();
  }
  async send(frame: Uint8Array): Promise<void> {
    const index = this.sent.length;
    this.sent.push(Buffer.from(frame));
    if (this.drop.has(index)) return;
    const peer = this.peer;
    // Later, as a radio would deliver it.
    setImmediate(() => peer?.emit('frame', { frame: Buffer.from(frame), rssi: this.rssi, lqi: 180 } satisfies Received));
  }
}

function radioPair(): [RadioEnd, RadioEnd] {
  const a = new RadioEnd(-71);
  const b = new RadioEnd(-64);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

const GATEWAY_MAC = '00124b0000000001';
const METER_MAC = '00124b00000000aa';
const PAN = 0xabcd;
const CONTEXTS = ['2001:db8:1::/64'];

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function transports() {
  const [gatewayEnd, meterEnd] = radioPair();
  const gateway = new LowpanTransport({ link: gatewayEnd, mac: GATEWAY_MAC, panId: PAN, contexts: CONTEXTS });
  const meter = new LowpanTransport({ link: meterEnd, mac: METER_MAC, panId: PAN, contexts: CONTEXTS });
  cleanups.push(() => gateway.close(), () => meter.close());
  return { gateway, meter, gatewayEnd, meterEnd };
}

describe('LowpanTransport', () => {
  it('derives its addresses from its EUI-64 and context 0, and MAC addresses back from interface identifiers', () => {
    const { gateway } = transports();
    expect(gateway.linkLocal).toBe('fe80::212:4b00:0:1');
    expect(gateway.global).toBe('2001:db8:1:0:212:4b00:0:1');
    expect(macFromInterfaceIdentifier('2001:db8:1:0:212:4b00:0:aa')).toEqual({ mode: 'extended', eui64: METER_MAC });
    expect(macFromInterfaceIdentifier('fe80::ff:fe00:1234')).toEqual({ mode: 'short', short: 0x1234 });
    expect(macFromInterfaceIdentifier('not an address')).toBeUndefined();
  });

  it('carries a meter reading to the mesh endpoint and its 2.04 back, through IPHC-compressed frames', async () => {
    const { gateway, meter, meterEnd, gatewayEnd } = transports();
    const endpoint = new MeshEndpoint({ bind: '::', port: 5683, acceptTimeoutMs: 2_000, retryAfterSeconds: 30, socket: () => gateway.socket(5683) });
    const uplinks: Uplink[] = [];
    endpoint.onUplink((uplink) => {
      uplinks.push(uplink);
      settleExchange(uplink.exchangeId, readingKey(uplink.reading.meter, uplink.reading.id), { accepted: true });
    });
    await endpoint.start();
    cleanups.push(() => endpoint.stop());
    expect(endpoint.port).toBe(5683);
    const client = new MeshClient(meter.transport());
    cleanups.push(() => client.close());

    const reading = { id: 'r-1', meter: 'mtr-radio-1', ts: 1_700_000_000_000, values: [{ obis: '1.0.1.8.0.255', value: 42 }] };
    const response = await client.request({
      peer: { address: gateway.address, port: 5683 },
      method: 'POST',
      path: '/readings',
      payload: encodeReading(reading),
      contentFormat: CONTENT_FORMAT.cbor,
    });
    expect(response.code).toBe('2.04');
    expect(uplinks).toHaveLength(1);
    expect(uplinks[0]!.reading).toMatchObject({ id: 'r-1', meter: 'mtr-radio-1' });
    expect(uplinks[0]!.peer.address).toBe('2001:db8:1:0:212:4b00:0:aa');
    // Both ways really went as 802.15.4 frames between the two MAC addresses.
    const up = decodeFrame(meterEnd.sent[0]!, { contexts: CONTEXTS });
    expect(up.mac).toMatchObject({ src: { mode: 'extended', eui64: METER_MAC }, dst: { mode: 'extended', eui64: GATEWAY_MAC }, dstPan: PAN });
    const down = decodeFrame(gatewayEnd.sent[0]!, { contexts: CONTEXTS });
    expect(down.mac).toMatchObject({ src: { mode: 'extended', eui64: GATEWAY_MAC }, dst: { mode: 'extended', eui64: METER_MAC } });
    // The gateway learned the meter's link from the frame.
    expect(gateway.neighbour('2001:db8:1:0:212:4b00:0:aa')).toMatchObject({ mac: { eui64: METER_MAC }, rssi: -64, lqi: 180 });
  });

  it('fragments datagrams over 127-byte frames both ways (RFC 4944) and reassembles them', async () => {
    const { gateway, meter, meterEnd, gatewayEnd } = transports();
    // A plain CoAP server on the gateway side that echoes the request body.
    const server = createCoapServer('::');
    server.on('request', (req: { payload: Buffer }, res: { end(body: Buffer): void }) => res.end(Buffer.concat([Buffer.from('echo:'), req.payload])));
    await listenCoapServer(server, 0, '::', gateway.socket(5683));
    cleanups.push(() => closeQuietly(server));
    const client = new MeshClient(meter.transport(), { blockSize: 1024 });
    cleanups.push(() => client.close());

    const body = Buffer.alloc(600, 0x5a);
    const response = await client.request({ peer: { address: gateway.address, port: 5683 }, method: 'POST', path: '/echo', payload: body });
    expect(response.code).toBe('2.05');
    expect(response.payload).toEqual(Buffer.concat([Buffer.from('echo:'), body]));
    // Several frames each way, none over 125 bytes (127 less the FCS the radio adds).
    expect(meterEnd.sent.length).toBeGreaterThan(4);
    expect(gatewayEnd.sent.length).toBeGreaterThan(4);
    for (const frame of [...meterEnd.sent, ...gatewayEnd.sent]) expect(frame.length).toBeLessThanOrEqual(125);
    expect(gateway.reassemblyStats().completed).toBeGreaterThanOrEqual(1);
    expect(meter.reassemblyStats().completed).toBeGreaterThanOrEqual(1);
  });

  it('ignores frames for other nodes, counts malformed frames by code and datagrams nobody listens for', async () => {
    const { gateway, gatewayEnd } = transports();
    const received: unknown[] = [];
    gateway.listen(5683, (payload) => received.push(payload));
    const frame = (dstMac: string, dstPort: number) =>
      encodeDatagram({ src: 'fe80::212:4b00:0:aa', dst: 'fe80::212:4b00:0:1', srcPort: 5683, dstPort, payload: Uint8Array.of(1, 2, 3), srcMac: METER_MAC, dstMac, panId: PAN })[0]!;
    const deliver = (bytes: Uint8Array) => gatewayEnd.emit('frame', { frame: Buffer.from(bytes) });
    deliver(frame('00124b00000000bb', 5683));
    deliver(frame(GATEWAY_MAC, 9999));
    deliver(Uint8Array.of(0x41, 0xcc, 0x00));
    deliver(frame(GATEWAY_MAC, 5683));
    expect(gateway.counters).toMatchObject({ framesIn: 4, notForUs: 1, noListener: 1, datagramsIn: 2 });
    expect(Object.values(gateway.counters.malformed).reduce((a, b) => a + b, 0)).toBe(1);
    expect(received).toEqual([Buffer.from([1, 2, 3])]);
  });

  it('takes only datagrams for its own addresses or multicast, also from broadcast frames', () => {
    const { gateway, gatewayEnd } = transports();
    const received: string[] = [];
    gateway.listen(5683, (_payload, peer) => received.push(peer.address));
    const frame = (dst: string) =>
      encodeDatagram({ src: 'fe80::212:4b00:0:aa', dst, srcPort: 5683, dstPort: 5683, payload: Uint8Array.of(1), srcMac: METER_MAC, dstMac: 'ffff', panId: PAN }, { contexts: CONTEXTS })[0]!;
    for (const dst of ['fe80::212:4b00:0:bb', '2001:db8:1:0:212:4b00:0:bb', 'fe80::212:4b00:0:1', '2001:db8:1:0:212:4b00:0:1', 'ff02::1']) {
      gatewayEnd.emit('frame', { frame: Buffer.from(frame(dst)) });
    }
    // Meter B's two datagrams went past; the gateway's two addresses and all-nodes multicast came up.
    expect(received).toHaveLength(3);
    expect(gateway.counters.notForUs).toBe(2);
  });

  it('does not let a frame from another MAC address take over a known neighbour (a spoofed source)', () => {
    const { gateway, gatewayEnd } = transports();
    gateway.listen(5683, () => undefined);
    const meterAddress = 'fd00::1234';
    const from = (srcMac: string) =>
      encodeDatagram({ src: meterAddress, dst: 'fe80::212:4b00:0:1', srcPort: 5683, dstPort: 5683, payload: Uint8Array.of(1), srcMac, dstMac: GATEWAY_MAC, panId: PAN })[0]!;
    gatewayEnd.emit('frame', { frame: Buffer.from(from(METER_MAC)) });
    gatewayEnd.emit('frame', { frame: Buffer.from(from('00124b0000000666')) });
    expect(gateway.neighbour(meterAddress)?.mac).toEqual({ mode: 'extended', eui64: METER_MAC });
    expect(gateway.counters.neighbourConflicts).toBe(1);
  });

  it('cannot send to an address with no known or derivable MAC address: counted, not thrown', async () => {
    const { gateway } = transports();
    expect(await gateway.send(Buffer.from('x'), 5683, { address: 'not-an-address', port: 5683 })).toBe(false);
    expect(gateway.counters.sendFailures).toBe(1);
  });
});
