import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  decodeFragmentHeader,
  decodeFrame,
  decodeMacFrame,
  encodeBroadcastHeader,
  encodeDatagram,
  encodeFragmentHeader,
  encodeMacFrame,
  encodeMeshHeader,
  extendedAddress,
  linkLocalAddress,
  LowpanError,
  Reassembler,
  shortAddress,
  type Fragment,
  type MacAddress,
  type ReassemblyOutcome,
} from '../../src/lowpan/index.js';

const hex = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text.replace(/\s+/g, ''), 'hex'));
const toHex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

function fragmentOf(frame: Uint8Array): Fragment {
  const decoded = decodeFrame(frame);
  if (decoded.lowpan.kind !== 'fragment') throw new Error(`expected a fragment, got ${decoded.lowpan.kind}`);
  return decoded.lowpan.fragment;
}

/** Feeds every frame's fragment and returns the outcome of the last one. */
function reassemble(reassembler: Reassembler, frames: Uint8Array[]): ReassemblyOutcome {
  let outcome: ReassemblyOutcome | undefined;
  for (const frame of frames) outcome = reassembler.add(fragmentOf(frame));
  if (!outcome) throw new Error('no frames');
  return outcome;
}

/**
 * Three frames of one 307-byte datagram, captured from a real 6LoWPAN link
 * and published with smoltcp's sixlowpan tests (src/wire/sixlowpan/mod.rs,
 * sixlowpan_three_fragments): 802.15.4-2003, extended addresses, FCS stripped,
 * IPHC with TF=01, UDP ports inline and the checksum 0xb46b inline.
 */
const CAPTURED = [
  '41cc92efbe4242424242420b1ad93e08282f829332c133003f6e3302353df0d25f1b39b46b4c6f72656d20697073756d20646f6c6f722073697420616d65742c20636f6e73656374657475722061646970697363696e6720656c69742e20416c697175616d20647569206f64696f2c20696163756c69732076656c2072',
  '41cc93efbe4242424242420b1ad93e08282f829332e133003f11757472756d2061742c20747269737469717565206e6f6e206e756e6320657261742063757261652e204c6f72656d20697073756d20646f6c6f722073697420616d65742c20636f6e73656374657475722061646970697363696e6720656c6974',
  '41cc94efbe4242424242420b1ad93e08282f829332e133003f1d2e20416c697175616d20647569206f64696f2c20696163756c69732076656c2072757472756d2061742c20747269737469717565206e6f6e206e756e6320657261742063757261652e200a',
].map(hex);
const LOREM =
  'Lorem ipsum dolor sit amet, consectetur adipiscing elit. Aliquam dui odio, iaculis vel rutrum at, tristique non nunc erat curae. Lorem ipsum dolor sit amet, consectetur adipiscing elit. Aliquam dui odio, iaculis vel rutrum at, tristique non nunc erat curae. \n';

const SRC_MAC = extendedAddress('00124b0001020304');
const DST_MAC = extendedAddress('00124b000a0b0c0d');

function bigDatagram(payloadLength: number, overrides: { srcMac?: MacAddress; tag?: number; fill?: number } = {}): Uint8Array[] {
  const srcMac = overrides.srcMac ?? SRC_MAC;
  const payload = Uint8Array.from({ length: payloadLength }, (_, i) => (i * 7 + (overrides.fill ?? 0)) & 0xff);
  return encodeDatagram({
    src: linkLocalAddress(srcMac),
    dst: 'fd00::1',
    srcPort: 61616,
    dstPort: 5683,
    payload,
    srcMac,
    dstMac: DST_MAC,
    panId: 0xabcd,
    datagramTag: overrides.tag ?? 7,
  });
}

describe('RFC 4944 fragment headers', () => {
  it('encodes and decodes FRAG1 and FRAGN (vectors from smoltcp)', () => {
    expect(toHex(encodeFragmentHeader({ kind: 'FRAG1', datagramSize: 0xff, datagramTag: 0xabcd, offset: 0 }))).toBe('c0ffabcd');
    expect(toHex(encodeFragmentHeader({ kind: 'FRAGN', datagramSize: 0xff, datagramTag: 0xabcd, offset: 0xcc * 8 }))).toBe('e0ffabcdcc');
    expect(decodeFragmentHeader(hex('e0ffabcdcc'), 0, 5)).toEqual({ header: { kind: 'FRAGN', datagramSize: 0xff, datagramTag: 0xabcd, offset: 0xcc * 8 }, next: 5 });
    expect(() => encodeFragmentHeader({ kind: 'FRAG1', datagramSize: 2048, datagramTag: 0, offset: 0 })).toThrow(LowpanError);
  });

  it('reassembles the captured three-fragment datagram and verifies its UDP checksum', () => {
    const fragments = CAPTURED.map(fragmentOf);
    expect(fragments.map((f) => [f.kind, f.datagramSize, f.datagramTag, f.offset, f.data.length])).toEqual([
      ['FRAG1', 307, 0x3f, 0, 136],
      ['FRAGN', 307, 0x3f, 136, 96],
      ['FRAGN', 307, 0x3f, 232, 75],
    ]);
    const first = decodeFrame(CAPTURED[0]!);
    expect(first.lowpan.kind === 'fragment' && first.lowpan.headers).toMatchObject({
      ipv6: { src: 'fe80::3093:822f:2808:3ed9', dst: 'fe80::180b:4242:4242:4242', hopLimit: 64, flowLabel: 0x2353d, payloadLength: 267 },
      udp: { srcPort: 53855, dstPort: 6969, checksum: 0xb46b },
    });
    const reassembler = new Reassembler({ now: () => 0 });
    const outcome = reassemble(reassembler, CAPTURED);
    expect(outcome.status).toBe('complete');
    if (outcome.status !== 'complete') return;
    expect(outcome.datagram.udp).toEqual({ srcPort: 53855, dstPort: 6969, length: 267, checksum: 0xb46b });
    expect(new TextDecoder().decode(outcome.datagram.payload)).toBe(LOREM);
    expect(reassembler.stats()).toMatchObject({ completed: 1, inProgress: 0, bytesHeld: 0 });
  });

  it('fragments a ~400-byte datagram into frames of at most 127 bytes that reassemble in any order', () => {
    const frames = bigDatagram(400);
    expect(frames.length).toBeGreaterThan(3);
    for (const frame of frames) expect(frame.length + 2).toBeLessThanOrEqual(127);
    const fragments = frames.map(fragmentOf);
    // Every fragment but the last ends on an 8-byte boundary of the uncompressed datagram.
    for (const f of fragments.slice(0, -1)) expect((f.offset + f.data.length) % 8).toBe(0);
    expect(fragments.reduce((n, f) => n + f.data.length, 0)).toBe(400 + 48);
    fc.assert(
      fc.property(fc.shuffledSubarray(fragments, { minLength: fragments.length, maxLength: fragments.length }), (order) => {
        const reassembler = new Reassembler({ now: () => 0 });
        const outcomes = order.map((f) => reassembler.add(f));
        const last = outcomes.at(-1);
        expect(outcomes.slice(0, -1).every((o) => o.status === 'pending')).toBe(true);
        expect(last?.status).toBe('complete');
        if (last?.status === 'complete') expect(toHex(last.datagram.payload)).toBe(toHex(Uint8Array.from({ length: 400 }, (_, i) => (i * 7) & 0xff)));
      }),
      { numRuns: 50 },
    );
  });

  it('fills frames as far as the MAC header allows: short addresses leave more room than extended ones', () => {
    const withShort = encodeDatagram({ src: 'fd00::1', dst: 'fd00::2', srcPort: 1, dstPort: 2, payload: new Uint8Array(1200), srcMac: shortAddress(1), dstMac: shortAddress(2), panId: 1 });
    const withExtended = encodeDatagram({ src: 'fd00::1', dst: 'fd00::2', srcPort: 1, dstPort: 2, payload: new Uint8Array(1200), srcMac: SRC_MAC, dstMac: DST_MAC, panId: 1 });
    expect(withShort.length).toBeLessThan(withExtended.length);
    for (const frame of [...withShort.slice(0, -1), ...withExtended.slice(0, -1)]) expect(frame.length).toBeGreaterThan(127 - 2 - 8);
    expect(() => encodeDatagram({ src: 'fd00::1', dst: 'fd00::2', srcPort: 1, dstPort: 2, payload: new Uint8Array(2000), srcMac: SRC_MAC, dstMac: DST_MAC, panId: 1 })).toThrow(
      expect.objectContaining({ code: 'TOO_LARGE' }),
    );
  });

  it('carries uncompressed IPv6 (0x41) across fragments too', () => {
    const frames = encodeDatagram(
      { src: 'fd00::1', dst: 'fd00::2', srcPort: 1, dstPort: 2, payload: new Uint8Array(300).fill(0x5a), srcMac: SRC_MAC, dstMac: DST_MAC, panId: 1, datagramTag: 9 },
      { compress: false, fcs: true },
    );
    const reassembler = new Reassembler({ now: () => 0 });
    let outcome: ReassemblyOutcome | undefined;
    for (const frame of frames) {
      const decoded = decodeFrame(frame, { fcs: true });
      if (decoded.lowpan.kind !== 'fragment') throw new Error('expected fragments');
      outcome = reassembler.add(decoded.lowpan.fragment);
    }
    expect(outcome?.status === 'complete' && outcome.datagram.ipv6.dst).toBe('fd00::2');
  });
});

describe('Reassembler', () => {
  it('ignores exact duplicates and discards on an inconsistent overlap, restarting from the new fragment (RFC 4944 5.3)', () => {
    const fragments = bigDatagram(200).map(fragmentOf);
    const reassembler = new Reassembler({ now: () => 0 });
    expect(reassembler.add(fragments[0]!).status).toBe('pending');
    expect(reassembler.add(fragments[0]!).status).toBe('duplicate');
    const altered: Fragment = { ...fragments[1]!, data: Uint8Array.from(fragments[1]!.data, (b) => b ^ 0xff) };
    expect(reassembler.add(fragments[1]!).status).toBe('pending');
    const restarted = reassembler.add(altered);
    expect(restarted).toMatchObject({ status: 'pending', restarted: true, received: altered.data.length });
    expect(reassembler.stats()).toMatchObject({ badFragments: 1, inProgress: 1 });
    // A shifted overlap (a different offset into received bytes) is just as inconsistent.
    const shifted: Fragment = { ...fragments[1]!, offset: fragments[1]!.offset + 8, data: fragments[1]!.data.subarray(0, 16) };
    expect(reassembler.add(shifted)).toMatchObject({ status: 'pending', restarted: true });
    expect(reassembler.stats().badFragments).toBe(2);
  });

  it('refuses malformed fragments without throwing', () => {
    const reassembler = new Reassembler({ now: () => 0 });
    const base: Fragment = { kind: 'FRAGN', src: SRC_MAC, dst: DST_MAC, datagramSize: 100, datagramTag: 1, offset: 96, data: new Uint8Array(8), udpChecksumElided: false };
    expect(reassembler.add(base).status).toBe('dropped');
    expect(reassembler.add({ ...base, offset: 0 }).status).toBe('dropped');
    expect(reassembler.add({ ...base, kind: 'FRAG1', offset: 8 }).status).toBe('dropped');
    expect(reassembler.add({ ...base, offset: 12 }).status).toBe('dropped');
    expect(reassembler.add({ ...base, data: new Uint8Array(0), offset: 8 }).status).toBe('dropped');
    expect(reassembler.stats()).toMatchObject({ badFragments: 5, bytesHeld: 0 });
  });

  it('reports a complete datagram with a bad UDP checksum as dropped, with the typed error', () => {
    const fragments = bigDatagram(200).map(fragmentOf);
    const last = fragments.at(-1)!;
    const corrupted: Fragment = { ...last, data: Uint8Array.from(last.data, (b, i) => (i === 0 ? b ^ 1 : b)) };
    const reassembler = new Reassembler({ now: () => 0 });
    const outcomes = [...fragments.slice(0, -1), corrupted].map((f) => reassembler.add(f));
    expect(outcomes.at(-1)).toMatchObject({ status: 'dropped', reason: 'bad-datagram', error: { code: 'BAD_CHECKSUM' } });
    expect(reassembler.stats()).toMatchObject({ badDatagrams: 1, completed: 0, bytesHeld: 0 });
    const lenient = new Reassembler({ now: () => 0, verifyUdpChecksum: false });
    expect([...fragments.slice(0, -1), corrupted].map((f) => lenient.add(f)).at(-1)?.status).toBe('complete');
  });

  it('times datagrams out on the injected clock (default 60 s)', () => {
    let now = 1_000;
    const reassembler = new Reassembler({ now: () => now });
    const a = bigDatagram(200, { tag: 1 }).map(fragmentOf);
    const b = bigDatagram(200, { tag: 2 }).map(fragmentOf);
    reassembler.add(a[0]!);
    now += 30_000;
    reassembler.add(b[0]!);
    now += 29_999;
    expect(reassembler.expire()).toBe(0);
    now += 1;
    expect(reassembler.expire()).toBe(1);
    expect(reassembler.stats()).toMatchObject({ timedOut: 1, inProgress: 1 });
    // The rest of a timed-out datagram starts a new, incomplete reassembly.
    for (const f of a.slice(1)) expect(reassembler.add(f).status).toBe('pending');
    // Adding also expires: b's first fragment is 60 s old now.
    now += 30_000;
    const outcomes = b.slice(1).map((f) => reassembler.add(f));
    expect(outcomes.every((o) => o.status === 'pending')).toBe(true);
    expect(reassembler.stats().timedOut).toBe(2);
  });

  it('drops and counts datagrams over the per-peer and total caps', () => {
    const reassembler = new Reassembler({ now: () => 0, maxBytesPerPeer: 600, maxBytesTotal: 900 });
    const size = fragmentOf(bigDatagram(200, { tag: 1 })[0]!).datagramSize; // 248
    expect(reassembler.add(fragmentOf(bigDatagram(200, { tag: 1 })[0]!)).status).toBe('pending');
    expect(reassembler.add(fragmentOf(bigDatagram(200, { tag: 2 })[0]!)).status).toBe('pending');
    expect(reassembler.add(fragmentOf(bigDatagram(200, { tag: 3 })[0]!))).toMatchObject({ status: 'dropped', reason: 'over-cap' });
    expect(reassembler.stats()).toMatchObject({ droppedOverCap: 1, bytesHeld: 2 * size });
    const other = extendedAddress('00124b00ffffffff');
    expect(reassembler.add(fragmentOf(bigDatagram(200, { tag: 1, srcMac: other })[0]!)).status).toBe('pending');
    expect(reassembler.add(fragmentOf(bigDatagram(200, { tag: 2, srcMac: other })[0]!))).toMatchObject({ status: 'dropped', reason: 'over-cap' });
    expect(reassembler.stats()).toMatchObject({ droppedOverCap: 2, bytesHeld: 3 * size });
  });

  it('refuses the later fragments of a datagram refused over its cap, so no orphan holds room it can never use', () => {
    let now = 0;
    const reassembler = new Reassembler({ now: () => now, maxBytesPerPeer: 10_000, maxBytesTotal: 600, timeoutMs: 60_000 });
    const a = bigDatagram(200, { tag: 1 });
    const b = bigDatagram(200, { tag: 2 });
    const c = bigDatagram(200, { tag: 3 });
    expect(reassembler.add(fragmentOf(a[0]!)).status).toBe('pending');
    expect(reassembler.add(fragmentOf(b[0]!)).status).toBe('pending');
    expect(reassembler.add(fragmentOf(c[0]!))).toMatchObject({ status: 'dropped', reason: 'over-cap' });
    // a completes and frees its room; c's later fragments must not reserve it: c's first fragment is gone.
    expect(reassemble(reassembler, a.slice(1)).status).toBe('complete');
    for (const fragment of c.slice(1)) expect(reassembler.add(fragmentOf(fragment))).toMatchObject({ status: 'dropped', reason: 'over-cap' });
    expect(reassembler.stats()).toMatchObject({ inProgress: 1, droppedOverCap: 1 });
    // The room is there for a datagram that can complete.
    const d = bigDatagram(200, { tag: 4 });
    expect(reassemble(reassembler, d).status).toBe('complete');
    // After the reassembly timeout the refusal is forgotten: the tag may be used again.
    now = 61_000;
    expect(reassemble(reassembler, bigDatagram(200, { tag: 3 })).status).toBe('complete');
  });

  it('stays within its caps under 1,000 interleaved peers and completes what fits', () => {
    const maxBytesTotal = 64 * 1024;
    const maxBytesPerPeer = 2 * 2047;
    const reassembler = new Reassembler({ now: () => 0, maxBytesTotal, maxBytesPerPeer });
    const peers = Array.from({ length: 1000 }, (_, i) => {
      const mac = extendedAddress(`00124b00${i.toString(16).padStart(8, '0')}`);
      return bigDatagram(300, { srcMac: mac, tag: i, fill: i }).map(fragmentOf);
    });
    const rounds = Math.max(...peers.map((p) => p.length));
    let completed = 0;
    let maxHeld = 0;
    for (let r = 0; r < rounds; r++) {
      for (const fragments of peers) {
        const fragment = fragments[r];
        if (!fragment) continue;
        const outcome = reassembler.add(fragment);
        if (outcome.status === 'complete') completed++;
        const held = reassembler.stats().bytesHeld;
        maxHeld = Math.max(maxHeld, held);
        expect(held).toBeLessThanOrEqual(maxBytesTotal);
      }
    }
    const stats = reassembler.stats();
    expect(maxHeld).toBeLessThanOrEqual(maxBytesTotal);
    expect(stats.completed).toBe(completed);
    // 64 KiB holds 188 datagrams of 348 bytes at a time; the others are refused and counted.
    expect(completed).toBe(Math.floor(maxBytesTotal / 348));
    expect(stats.droppedOverCap).toBeGreaterThan(0);
    // Fragments of refused datagrams that arrive once room is free start reassemblies that never complete; the timeout clears them.
    expect(stats.bytesHeld).toBeLessThanOrEqual(maxBytesTotal);
  });
});

describe('RFC 4944 mesh and broadcast headers', () => {
  const payloadFrame = bigDatagram(20)[0]!;
  const innerLowpan = decodeMacFrame(payloadFrame).payload;

  it('skips a mesh header and derives elided addresses from its originator and final destination', () => {
    // The datagram's IIDs are elided against SRC_MAC/DST_MAC; a relay forwards it under its own MAC addresses.
    const mesh = encodeMeshHeader({ hopsLeft: 5, originator: SRC_MAC, finalDestination: DST_MAC });
    expect(toHex(mesh)).toBe('85' + '00124b0001020304' + '00124b000a0b0c0d');
    const relayed = encodeMacFrame({ panId: 0xabcd, src: shortAddress(0x0042), dst: shortAddress(0x0043) }, Uint8Array.of(...mesh, ...innerLowpan));
    const decoded = decodeFrame(relayed);
    expect(decoded.mesh).toEqual({ hopsLeft: 5, originator: SRC_MAC, finalDestination: DST_MAC });
    expect(decoded.lowpan.kind === 'datagram' && decoded.lowpan.datagram.ipv6.src).toBe(linkLocalAddress(SRC_MAC));
  });

  it('reads short mesh addresses, Deep Hops Left and a broadcast header', () => {
    const mesh = encodeMeshHeader({ hopsLeft: 20, originator: shortAddress(0x0001), finalDestination: shortAddress(0xffff) });
    expect(toHex(mesh)).toBe('bf' + '14' + '0001' + 'ffff');
    const bc0 = encodeBroadcastHeader({ sequenceNumber: 0x42 });
    const datagram = encodeDatagram({ src: 'fe80::ff:fe00:1', dst: 'ff02::1', srcPort: 5683, dstPort: 5683, payload: hex('01'), srcMac: shortAddress(1), dstMac: shortAddress(0xffff), panId: 1 })[0]!;
    const inner = decodeMacFrame(datagram).payload;
    const frame = encodeMacFrame({ panId: 1, src: shortAddress(0x0009), dst: shortAddress(0xffff) }, Uint8Array.of(...mesh, ...bc0, ...inner));
    const decoded = decodeFrame(frame);
    expect(decoded.mesh).toEqual({ hopsLeft: 20, originator: shortAddress(1), finalDestination: shortAddress(0xffff) });
    expect(decoded.broadcast).toEqual({ sequenceNumber: 0x42 });
    expect(decoded.lowpan.kind === 'datagram' && decoded.lowpan.datagram.ipv6.src).toBe('fe80::ff:fe00:1');
  });

  it('keys fragments behind a mesh header on the originator', () => {
    const frames = bigDatagram(200, { tag: 3 });
    const mesh = encodeMeshHeader({ hopsLeft: 3, originator: SRC_MAC, finalDestination: DST_MAC });
    const relayed = frames.map((f) => encodeMacFrame({ panId: 0xabcd, src: shortAddress(0x10), dst: shortAddress(0x11) }, Uint8Array.of(...mesh, ...decodeMacFrame(f).payload)));
    expect(fragmentOf(relayed[0]!).src).toEqual(SRC_MAC);
    const outcome = reassemble(new Reassembler({ now: () => 0 }), relayed);
    expect(outcome.status).toBe('complete');
  });

  it('refuses headers out of order and truncated headers with typed errors', () => {
    const bc0 = encodeBroadcastHeader({ sequenceNumber: 1 });
    const mesh = encodeMeshHeader({ hopsLeft: 1, originator: shortAddress(1), finalDestination: shortAddress(2) });
    const wrap = (lowpan: Uint8Array): Uint8Array => encodeMacFrame({ panId: 1, src: shortAddress(1), dst: shortAddress(2) }, lowpan);
    expect(() => decodeFrame(wrap(Uint8Array.of(...bc0, ...mesh, ...innerLowpan)))).toThrow(expect.objectContaining({ code: 'BAD_DISPATCH', offset: 9 + 2 }));
    expect(() => decodeFrame(wrap(mesh.subarray(0, 3)))).toThrow(expect.objectContaining({ code: 'TRUNCATED' }));
    expect(() => decodeFrame(wrap(bc0))).toThrow(expect.objectContaining({ code: 'TRUNCATED' }));
  });
});
