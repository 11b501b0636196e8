import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import {
  ACK,
  C1218Client,
  C1218Error,
  PacketDecoder,
  createMemoryStreamPair,
  ctrlByte,
  decodeManufacturerIdentification,
  encodeIdentifyResponse,
  encodePacket,
  encodeRequest,
  readTable,
  withC1218Session,
  type C1218ClientOptions,
  type DecodedPacket,
  type LinkEvent,
  type MemoryStream,
} from '../../src/c1218/index.js';
import { SIM_C1218_LARGE_TABLE, SIM_C1218_PASSWORD, SimulatedC1218Meter, simTableBytes, type C1218MeterOptions } from '../../src/sim/c1218-meter.js';

/**
 * The C12.18 client against the simulated meter over an in-memory byte
 * channel, with the link timeouts shortened (the standard's 2 s / 500 ms
 * would make each fault case seconds long). Nothing sleeps: each test awaits
 * the client's promises or an event.
 */
const CLIENT_TIMEOUTS: C1218ClientOptions = { acknowledgementTimeoutMs: 200, responseTimeoutMs: 500, interCharacterTimeoutMs: 100, retries: 3 };
const METER_TIMEOUTS: C1218MeterOptions = { acknowledgementTimeoutMs: 200, interCharacterTimeoutMs: 100, retries: 3 };

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function rig(meterOptions: C1218MeterOptions = {}): { meter: SimulatedC1218Meter; client: MemoryStream; meterEnd: MemoryStream } {
  const [client, meterEnd] = createMemoryStreamPair();
  const meter = new SimulatedC1218Meter({ ...METER_TIMEOUTS, ...meterOptions });
  meter.serve(meterEnd);
  cleanups.push(async () => {
    await meter.close();
    await client.close();
  });
  return { meter, client, meterEnd };
}

async function rejection(promise: Promise<unknown>): Promise<C1218Error> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof C1218Error) return err;
    throw err;
  }
  throw new Error('expected a C1218Error');
}

const session = { ...CLIENT_TIMEOUTS, user: 'gateway', userId: 7 };

describe('C12.18 client against the simulated meter', () => {
  it('reads ST1 in a full session: identify, negotiate, logon, read, logoff, terminate', async () => {
    const { meter, client } = rig();
    const terminated = once(meter, 'state'); // the meter returns to its base state once the terminate response is acknowledged
    const result = await readTable(client, { ...session, table: 1 });
    await terminated;
    expect(result.identification).toMatchObject({ standard: 0, standardName: 'ANSI C12.18', version: 1, revision: 0 });
    expect(result.negotiated).toEqual({ packetSize: 256, maxPackets: 8 });
    expect(decodeManufacturerIdentification(result.data)).toMatchObject({ manufacturer: 'AMIG', edModel: 'OPTSIM-1', mfgSerialNumber: 'SN00000000012345' });
    expect(meter.requests.map((r) => r?.service)).toEqual(['identify', 'negotiate', 'logon', 'full-read', 'logoff', 'terminate']);
    expect(meter.requests[2]).toEqual({ service: 'logon', userId: 7, user: 'gateway' });
    expect(meter.state).toBe('base');
    // The first bytes on the wire are the standard's identify packet.
    expect(Buffer.from(client.written[0] ?? []).toString('hex')).toBe('ee0000000001201310');
    expect(meter.linkStats?.retransmissions).toBe(0);
  });

  it('reads a 600-byte table as a multi-packet response and reassembles it', async () => {
    const { meter, client } = rig();
    const sent: DecodedPacket[] = [];
    const decoder = new PacketDecoder();
    // Watch the meter's packets as the client receives them.
    client.on('data', (chunk: Uint8Array) => {
      for (const unit of decoder.push(chunk)) if (unit.kind === 'packet') sent.push(unit.packet);
    });
    const result = await readTable(client, { ...session, table: SIM_C1218_LARGE_TABLE, password: SIM_C1218_PASSWORD });
    expect(result.data).toEqual(simTableBytes(600));
    const multi = sent.filter((p) => p.ctrl & 0x80);
    expect(multi.map((p) => [p.ctrl & 0xc0, p.sequence, p.data.length])).toEqual([
      [0xc0, 2, 248],
      [0x80, 1, 248],
      [0x80, 0, 108],
    ]);
    // Each packet a side sends flips its toggle bit.
    const toggles = sent.map((p) => (p.ctrl & 0x20) !== 0);
    expect(toggles).toEqual(toggles.map((_, i) => i % 2 === 1));
  });

  it('reads part of a table by offset and count', async () => {
    const { client } = rig();
    const result = await readTable(client, { ...session, table: SIM_C1218_LARGE_TABLE, password: SIM_C1218_PASSWORD, offset: 500, count: 100 });
    expect(result.data).toEqual(simTableBytes(600).subarray(500, 600));
  });

  it('switches both ends to the negotiated baud rate and back after terminate', async () => {
    const { meter, client } = rig();
    const bauds: number[] = [];
    const terminated = once(meter, 'state');
    const result = await readTable(client, {
      ...session,
      table: 5,
      baudRate: 19200,
      setBaudRate: async (baud) => {
        bauds.push(baud);
        await client.setBaudRate(baud);
      },
    });
    await terminated;
    expect(result.negotiated?.baudRate).toBe(19200);
    expect(bauds).toEqual([19200, 9600]);
    expect(meter.baudRate).toBe(9600);
  });

  it('fails when the client does not follow the baud switch (the channel garbles mismatched rates)', async () => {
    const { client } = rig();
    const err = await rejection(readTable(client, { ...session, retries: 1, table: 5, baudRate: 19200, setBaudRate: async () => undefined }));
    expect(['TIMEOUT', 'NAK_LIMIT']).toContain(err.code);
  });
});

describe('link-layer recovery', () => {
  it('waits out a lost response packet: the meter retransmits it', async () => {
    const { meter, client } = rig({ faults: { dropOutgoingPackets: 1 } });
    const result = await readTable(client, { ...session, table: 1 });
    expect(result.data.length).toBe(32);
    expect(meter.faults.dropOutgoingPackets).toBe(0);
    expect(meter.linkStats?.retransmissions).toBe(1);
  });

  it('NAKs a corrupted response packet and takes the retransmission', async () => {
    const { meter, client } = rig();
    meter.inject({ corruptOutgoingPackets: 2 });
    const c = new C1218Client(client, CLIENT_TIMEOUTS);
    cleanups.push(() => c.detach());
    await c.identify();
    expect(c.link.stats.badCrc).toBe(2);
    expect(c.link.stats.naksSent).toBe(2);
    expect(meter.linkStats?.naksReceived).toBe(2);
    expect(meter.linkStats?.retransmissions).toBe(2);
  });

  it('retransmits a request the meter never saw', async () => {
    const { meter, client } = rig({ faults: { dropIncomingPackets: 2 } });
    const c = new C1218Client(client, CLIENT_TIMEOUTS);
    cleanups.push(() => c.detach());
    await c.identify();
    expect(c.link.stats.retransmissions).toBe(2);
    expect(meter.requests).toHaveLength(1);
  });

  it('retransmits on NAK, and gives up with NAK_LIMIT after the retries', async () => {
    const { meter, client } = rig({ faults: { nakIncomingPackets: 3 } });
    const c = new C1218Client(client, CLIENT_TIMEOUTS);
    cleanups.push(() => c.detach());
    await c.identify();
    expect(c.link.stats.naksReceived).toBe(3);
    expect(c.link.stats.retransmissions).toBe(3);
    meter.inject({ nakIncomingPackets: 4 });
    const err = await rejection(c.logon(1, 'x'));
    expect(err.code).toBe('NAK_LIMIT');
    expect(meter.faults.nakIncomingPackets).toBe(0);
  });

  it('discards a duplicate response (same toggle bit) after its ACK was lost, and carries on', async () => {
    const { meter, client } = rig({ faults: { ignoreIncomingAcks: 1 } });
    let duplicateSeen!: () => void;
    const duplicate = new Promise<void>((resolve) => (duplicateSeen = resolve));
    const events: LinkEvent['type'][] = [];
    const c = new C1218Client(client, {
      ...CLIENT_TIMEOUTS,
      onEvent: (event) => {
        events.push(event.type);
        if (event.type === 'duplicate-discarded') duplicateSeen();
      },
    });
    cleanups.push(() => c.detach());
    const identification = await c.identify();
    await duplicate; // the meter resends the identify response after its acknowledgement timeout
    expect(c.link.stats.duplicatesDiscarded).toBe(1);
    expect(c.link.stats.packetsReceived).toBe(1);
    expect(identification.version).toBe(1);
    await c.logon(0, 'after-dup');
    expect(meter.requests.map((r) => r?.service)).toEqual(['identify', 'logon']);
  });

  it('the meter discards a retransmitted request (same toggle bit) instead of serving it twice', async () => {
    const { meter, client } = rig({ faults: { dropOutgoingAcks: 1, responseDelayMs: 350 } });
    const c = new C1218Client(client, CLIENT_TIMEOUTS);
    cleanups.push(() => c.detach());
    await c.identify();
    expect(c.link.stats.retransmissions).toBe(1);
    expect(meter.linkStats?.duplicatesDiscarded).toBe(1);
    expect(meter.requests).toHaveLength(1);
  });

  it('times out when the meter acknowledges but never answers', async () => {
    const { meter, client } = rig({ faults: { responseDelayMs: 60_000 } });
    const c = new C1218Client(client, { ...CLIENT_TIMEOUTS, responseTimeoutMs: 40, retries: 2 });
    cleanups.push(() => c.detach());
    const started = Date.now();
    const err = await rejection(c.identify());
    expect(err.code).toBe('TIMEOUT');
    expect(c.link.stats.naksSent).toBe(2); // each wait that ran out asked again with NAK
    expect(Date.now() - started).toBeLessThan(2000);
    expect(meter.requests).toHaveLength(1);
  });

  it('does not take a late answer to a timed-out request for the answer to the next one', async () => {
    const { meter, client } = rig({ faults: { responseDelayMs: 300 } });
    const c = new C1218Client(client, { ...CLIENT_TIMEOUTS, responseTimeoutMs: 40, retries: 0 });
    cleanups.push(() => c.detach());
    const lateAnswer = once(meter, 'served');
    expect((await rejection(c.identify())).code).toBe('TIMEOUT');
    await lateAnswer; // the identify response arrived (and was acknowledged) after the client gave up
    meter.inject({ responseDelayMs: 0 });
    await c.logon(0, 'next'); // answered by the logon's own <ok>, not the stale identify response
    expect(meter.requests.map((r) => r?.service)).toEqual(['identify', 'logon']);
  });

  it('times out waiting for an acknowledgement when nothing is on the line', async () => {
    const [client, silent] = createMemoryStreamPair();
    cleanups.push(() => client.close());
    const c = new C1218Client(client, { ...CLIENT_TIMEOUTS, acknowledgementTimeoutMs: 20, retries: 2 });
    cleanups.push(() => c.detach());
    const err = await rejection(c.identify());
    expect(err.code).toBe('TIMEOUT');
    expect(silent.written).toHaveLength(0);
    expect(client.written).toHaveLength(3); // the first attempt and two retransmissions, all the same bytes
    expect(new Set(client.written.map((b) => Buffer.from(b).toString('hex'))).size).toBe(1);
  });

  it('fails with CLOSED when the stream closes under a request', async () => {
    const [client, other] = createMemoryStreamPair();
    const c = new C1218Client(client, CLIENT_TIMEOUTS);
    cleanups.push(() => c.detach());
    const pending = rejection(c.identify());
    await other.close();
    expect((await pending).code).toBe('CLOSED');
  });
});

/** The far end of a channel, driven by hand: reads the client's packets, writes raw bytes. */
function scriptedPeer(stream: MemoryStream): { next(): Promise<DecodedPacket>; write(...chunks: Uint8Array[]): Promise<void> } {
  const decoder = new PacketDecoder();
  const packets: DecodedPacket[] = [];
  let wake: (() => void) | undefined;
  stream.on('data', (chunk: Uint8Array) => {
    for (const unit of decoder.push(chunk)) if (unit.kind === 'packet') packets.push(unit.packet);
    wake?.();
  });
  return {
    async next() {
      while (packets.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      return packets.shift() as DecodedPacket;
    },
    async write(...chunks) {
      for (const chunk of chunks) await stream.write(chunk);
    },
  };
}

describe('link layer against a scripted peer', () => {
  const identifyResponse = (toggle: boolean, sequence = 0, ctrl = ctrlByte({ toggle })): Uint8Array =>
    encodePacket({ identity: 0, ctrl, sequence, data: encodeIdentifyResponse({ standard: 0, version: 2, revision: 0 }) });

  it('ignores garbage before the response and NAKs a packet cut short by the inter-character timeout', async () => {
    const [client, far] = createMemoryStreamPair();
    cleanups.push(() => client.close());
    const peer = scriptedPeer(far);
    const c = new C1218Client(client, CLIENT_TIMEOUTS);
    cleanups.push(() => c.detach());
    const pending = c.identify();
    expect(Buffer.from((await peer.next()).data).toString('hex')).toBe('20');
    const response = identifyResponse(false);
    const nak = once(far, 'data');
    await peer.write(Uint8Array.of(ACK, 0x41, 0x42), response.subarray(0, 7));
    // Half a packet, then silence: the client gives up on it after 100 ms and asks again.
    expect(Array.from((await nak)[0] as Uint8Array)).toContain(0x15);
    await peer.write(response);
    expect((await pending).version).toBe(2);
    expect(c.link.stats.garbageBytes).toBe(2);
    expect(c.link.stats.interCharacterTimeouts).toBe(1);
  });

  it('refuses a multi-packet response that starts without its first packet (BAD_SEQUENCE)', async () => {
    const [client, far] = createMemoryStreamPair();
    cleanups.push(() => client.close());
    const peer = scriptedPeer(far);
    const c = new C1218Client(client, CLIENT_TIMEOUTS);
    cleanups.push(() => c.detach());
    const pending = rejection(c.identify());
    await peer.next();
    await peer.write(Uint8Array.of(ACK), identifyResponse(false, 1, ctrlByte({ multiPacket: true })));
    expect((await pending).code).toBe('BAD_SEQUENCE');
  });

  it('splits a request larger than the packet size into a multi-packet transmission', async () => {
    const [client, far] = createMemoryStreamPair();
    cleanups.push(() => client.close());
    const peer = scriptedPeer(far);
    const c = new C1218Client(client, { ...CLIENT_TIMEOUTS, packetSize: 12 });
    cleanups.push(() => c.detach());
    const pending = c.rawRequest(encodeRequest({ service: 'logon', userId: 1, user: 'abcdefghij' }));
    const parts: DecodedPacket[] = [];
    for (let i = 0; i < 4; i++) {
      parts.push(await peer.next());
      await peer.write(Uint8Array.of(ACK));
    }
    expect(parts.map((p) => [p.ctrl & 0xe0, p.sequence, p.data.length])).toEqual([
      [0xc0, 3, 4],
      [0xa0, 2, 4],
      [0x80, 1, 4],
      [0xa0, 0, 1],
    ]);
    await peer.write(encodePacket({ identity: 0, ctrl: 0, sequence: 0, data: Uint8Array.of(0) }));
    expect(Array.from(await pending)).toEqual([0]);
  });
});

describe('service refusals and the session helper', () => {
  it('ISSS for a read before logon', async () => {
    const { client } = rig();
    const c = new C1218Client(client, CLIENT_TIMEOUTS);
    cleanups.push(() => c.detach());
    await c.identify();
    const err = await rejection(c.fullRead(1));
    expect(err).toMatchObject({ code: 'ISSS', responseCode: 0x0a });
  });

  it('ERR for a wrong password, ISC for a protected table without one, ONP for a missing table', async () => {
    const { client } = rig();
    expect((await rejection(readTable(client, { ...session, table: 1, password: 'wrong' }))).code).toBe('ERR');
    expect((await rejection(readTable(client, { ...session, table: SIM_C1218_LARGE_TABLE }))).code).toBe('ISC');
    expect((await rejection(readTable(client, { ...session, table: 99 }))).code).toBe('ONP');
    expect((await rejection(readTable(client, { ...session, table: 5, offset: 15, count: 10 }))).code).toBe('IAR');
  });

  it('terminates the session when the meter is busy, and when the table checksum is wrong', async () => {
    const { meter, client } = rig();
    meter.inject({ refusals: ['BSY'] });
    let terminated = once(meter, 'state');
    expect((await rejection(readTable(client, { ...session, table: 1 }))).code).toBe('BSY');
    await terminated;
    expect(meter.requests.map((r) => r?.service)).toEqual(['identify', 'terminate']);
    meter.inject({ badTableChecksum: 1 });
    terminated = once(meter, 'state');
    expect((await rejection(readTable(client, { ...session, table: 1 }))).code).toBe('BAD_TABLE_CHECKSUM');
    await terminated;
    expect(meter.requests.slice(2).map((r) => r?.service)).toEqual(['identify', 'negotiate', 'logon', 'full-read', 'terminate']);
    expect(meter.state).toBe('base');
    // The meter is usable right after.
    expect((await readTable(client, { ...session, table: 5 })).data.length).toBe(20);
  });

  it('runs several services in one session and keeps it alive with wait', async () => {
    const { meter, client } = rig();
    const tables = await withC1218Session(client, session, async (c) => {
      await c.wait(10);
      return [await c.fullRead(0), await c.fullRead(1), await c.fullRead(5)];
    });
    expect(tables.map((t) => t.length)).toEqual([expect.any(Number), 32, 20]);
    expect(meter.sessions).toBe(1);
  });

  it('the meter drops the session after the channel traffic timeout', async () => {
    const { meter, client } = rig({ channelTrafficTimeoutMs: 300 });
    const c = new C1218Client(client, CLIENT_TIMEOUTS);
    cleanups.push(() => c.detach());
    await c.identify();
    await c.logon(0, 'idle');
    await once(meter, 'state');
    expect(meter.channelTrafficTimeouts).toBe(1);
    expect((await rejection(c.fullRead(1))).code).toBe('ISSS');
  });
});
