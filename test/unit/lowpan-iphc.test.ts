import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  buildUdpDatagram,
  compressIphc,
  decodeFrame,
  decompressIphc,
  encodeDatagram,
  encodeMacFrame,
  extendedAddress,
  finishDatagram,
  formatIpv6Address,
  interfaceIdentifier,
  linkLocalAddress,
  LowpanError,
  normalizeIpv6Address,
  parseIpv6Address,
  shortAddress,
  udpChecksum,
  type ContextTable,
  type Ipv6Datagram,
  type LowpanContext,
  type MacAddress,
} from '../../src/lowpan/index.js';

const hex = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text.replace(/\s+/g, ''), 'hex'));
const toHex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

function lowpanError(fn: () => unknown): LowpanError {
  try {
    fn();
  } catch (err) {
    if (err instanceof LowpanError) return err;
    throw err;
  }
  throw new Error('expected a LowpanError');
}

const SRC_MAC = extendedAddress('00124b0001020304');
const DST_MAC = extendedAddress('00124b000a0b0c0d');
const PAN = 0xabcd;

/** A MAC data frame from SRC_MAC to `dst` around the hand-written 6LoWPAN bytes. */
function frameWith(lowpan: Uint8Array, dst: MacAddress = DST_MAC, src: MacAddress = SRC_MAC): Uint8Array {
  return encodeMacFrame({ panId: PAN, dst, src }, lowpan);
}

function datagramOf(frame: Uint8Array, contexts?: ContextTable): Ipv6Datagram {
  const decoded = decodeFrame(frame, contexts ? { contexts } : {});
  if (decoded.lowpan.kind !== 'datagram') throw new Error(`expected a datagram, got ${decoded.lowpan.kind}`);
  return decoded.lowpan.datagram;
}

/** The inline UDP checksum of the datagram those fields make (the algorithm is checked against captures and tshark elsewhere). */
function checksumOf(src: string, dst: string, srcPort: number, dstPort: number, payload: Uint8Array): string {
  const d = buildUdpDatagram({ src, dst, srcPort, dstPort, payload });
  return toHex(d.subarray(46, 48));
}

describe('IPv6 addresses', () => {
  it('parses and prints RFC 5952 text', () => {
    expect(normalizeIpv6Address('FE80:0:0:0:0212:4B00:0001:0203')).toBe('fe80::212:4b00:1:203');
    expect(normalizeIpv6Address('2001:db8:0:0:1:0:0:1')).toBe('2001:db8::1:0:0:1');
    expect(normalizeIpv6Address('::')).toBe('::');
    expect(normalizeIpv6Address('::ffff:192.0.2.1')).toBe('::ffff:c000:201');
    expect(normalizeIpv6Address('1:0:1:0:1:0:1:0')).toBe('1:0:1:0:1:0:1:0');
    for (const bad of ['', '1::2::3', '12345::', 'fe80::1%eth0', '1:2:3:4:5:6:7:8:9', 'g::1']) expect(() => parseIpv6Address(bad)).toThrow(LowpanError);
  });

  it('derives interface identifiers from MAC addresses (RFC 6282 3.2.2)', () => {
    expect(toHex(interfaceIdentifier(SRC_MAC))).toBe('02124b0001020304');
    expect(toHex(interfaceIdentifier(shortAddress(0x1234)))).toBe('000000fffe001234');
    expect(linkLocalAddress(SRC_MAC)).toBe('fe80::212:4b00:102:304');
    expect(linkLocalAddress(shortAddress(0x00ab))).toBe('fe80::ff:fe00:ab');
  });
});

describe('RFC 6282 IPHC decompression of hand-built vectors', () => {
  const payload = hex('48656c6c6f');

  it('link-local addresses from extended MACs, hop limit 64, UDP ports 0xF0Bx and an inline checksum', () => {
    const src = linkLocalAddress(SRC_MAC);
    const dst = linkLocalAddress(DST_MAC);
    // 011 TF=11 NH=1 HLIM=10 | CID=0 SAC=0 SAM=11 M=0 DAC=0 DAM=11 | NHC 11110 C=0 P=11 | ports 1,2 | checksum
    const lowpan = hex(`7e33 f3 12 ${checksumOf(src, dst, 0xf0b1, 0xf0b2, payload)} 48656c6c6f`);
    const datagram = datagramOf(frameWith(lowpan));
    expect(datagram.ipv6).toMatchObject({ src, dst, hopLimit: 64, trafficClass: 0, flowLabel: 0, nextHeader: 17, payloadLength: 13 });
    expect(datagram.udp).toMatchObject({ srcPort: 0xf0b1, dstPort: 0xf0b2, length: 13 });
    expect(toHex(datagram.payload)).toBe('48656c6c6f');
    // The encoder picks exactly this form.
    const encoded = compressIphc(buildUdpDatagram({ src, dst, srcPort: 0xf0b1, dstPort: 0xf0b2, payload }), { link: { src: SRC_MAC, dst: DST_MAC } });
    expect(toHex(encoded.header)).toBe(toHex(lowpan.subarray(0, 6)));
  });

  it('computes the UDP checksum the sender elided (C=1)', () => {
    const lowpan = hex('7e33 f7 12 48656c6c6f');
    const datagram = datagramOf(frameWith(lowpan));
    const expected = checksumOf(linkLocalAddress(SRC_MAC), linkLocalAddress(DST_MAC), 0xf0b1, 0xf0b2, payload);
    expect(datagram.udp?.checksum.toString(16).padStart(4, '0')).toBe(expected);
  });

  it('refuses a wrong inline checksum as BAD_CHECKSUM, unless told not to verify', () => {
    const frame = frameWith(hex('7e33 f3 12 0000 48656c6c6f'));
    const err = lowpanError(() => decodeFrame(frame));
    expect(err.code).toBe('BAD_CHECKSUM');
    expect(err.offset).toBeLessThan(frame.length);
    const decoded = decodeFrame(frame, { verifyUdpChecksum: false });
    expect(decoded.lowpan.kind === 'datagram' && decoded.lowpan.datagram.udp?.checksum).toBe(0);
  });

  it('points a bad checksum in an inline UDP header at its bytes in the frame', () => {
    // IPHC 7a11: next header inline (17), 64-bit IIDs inline; the UDP header follows uncompressed with a wrong checksum.
    const frame = frameWith(hex('7a11 11 0000000000000001 0000000000000002 03e807d0000d1234 48656c6c6f'));
    expect(lowpanError(() => decodeFrame(frame))).toMatchObject({ code: 'BAD_CHECKSUM', offset: 21 + 19 + 6 });
    const short = frameWith(hex('7a11 11 0000000000000001 0000000000000002 03e807d0000e1234 48656c6c6f'));
    expect(lowpanError(() => decodeFrame(short))).toMatchObject({ code: 'BAD_LENGTH', offset: 21 + 19 + 4 });
  });

  it('short MAC addresses: 0000:00ff:fe00:XXXX identifiers, ports in the 0xF0xx 8-bit forms', () => {
    const srcShort = shortAddress(0x0001);
    const dstShort = shortAddress(0x00ff);
    const src = 'fe80::ff:fe00:1';
    const dst = 'fe80::ff:fe00:ff';
    const sum = checksumOf(src, dst, 0xf012, 5683, payload);
    // P=10: source 0xF0xx in 8 bits, destination inline
    const frame = frameWith(hex(`7e33 f2 12 1633 ${sum} 48656c6c6f`), dstShort, srcShort);
    const datagram = datagramOf(frame);
    expect(datagram.ipv6.src).toBe(src);
    expect(datagram.ipv6.dst).toBe(dst);
    expect(datagram.udp).toMatchObject({ srcPort: 0xf012, dstPort: 5683 });
    const sum2 = checksumOf(src, dst, 5683, 0xf0ab, payload);
    const datagram2 = datagramOf(frameWith(hex(`7e33 f1 1633 ab ${sum2} 48656c6c6f`), dstShort, srcShort));
    expect(datagram2.udp).toMatchObject({ srcPort: 5683, dstPort: 0xf0ab });
  });

  it('all four traffic class / flow label forms and all hop limit forms', () => {
    const src = 'fe80::1';
    const dst = 'fe80::2';
    const cases: Array<{ tf: number; inline: string; trafficClass: number; flowLabel: number }> = [
      { tf: 0, inline: '6e0abcde', trafficClass: 0xb9, flowLabel: 0xabcde },
      { tf: 1, inline: '412345', trafficClass: 0x01, flowLabel: 0x12345 },
      { tf: 2, inline: '2e', trafficClass: 0xb8, flowLabel: 0 },
      { tf: 3, inline: '', trafficClass: 0, flowLabel: 0 },
    ];
    for (const c of cases) {
      for (const [hlim, hopInline, hopLimit] of [[0, '11', 17], [1, '', 1], [2, '', 64], [3, '', 255]] as const) {
        // SAM=01/DAM=01 (64-bit IIDs inline, fe80::/64 elided), NH inline (17), UDP uncompressed in the payload
        const first = 0x60 | (c.tf << 3) | hlim;
        const udp = buildUdpDatagram({ src, dst, srcPort: 1000, dstPort: 2000, payload, hopLimit, trafficClass: c.trafficClass, flowLabel: c.flowLabel }).subarray(40);
        const lowpan = hex(`${first.toString(16)}11 ${c.inline} 11 ${hopInline} 0000000000000001 0000000000000002 ${toHex(udp)}`);
        const datagram = datagramOf(frameWith(lowpan));
        expect(datagram.ipv6).toMatchObject({ trafficClass: c.trafficClass, flowLabel: c.flowLabel, hopLimit, src, dst });
        expect(datagram.udp).toMatchObject({ srcPort: 1000, dstPort: 2000 });
        const encoded = compressIphc(buildUdpDatagram({ src, dst, srcPort: 1000, dstPort: 2000, payload, hopLimit, trafficClass: c.trafficClass, flowLabel: c.flowLabel }), { compressUdp: false });
        expect(toHex(encoded.header)).toBe(toHex(lowpan.subarray(0, lowpan.length - udp.length)));
      }
    }
  });

  it('multicast destinations in every stateless form', () => {
    const src = linkLocalAddress(SRC_MAC);
    const cases: Array<[string, number, string]> = [
      ['ff02::1', 3, '01'],
      ['ff05::1:3', 2, '05010003'],
      ['ff02::1:ff00:1234', 1, '0201ff001234'],
      ['ff0e::1234:5678:9abc:def0', 0, 'ff0e0000000000001234' + '56789abcdef0'],
    ];
    for (const [dst, dam, inline] of cases) {
      const sum = checksumOf(src, dst, 5683, 5683, payload);
      const second = (0x30 | 0x08 | dam).toString(16);
      const lowpan = hex(`7e${second} ${inline} f0 16331633 ${sum} 48656c6c6f`);
      const datagram = datagramOf(frameWith(lowpan, shortAddress(0xffff)));
      expect(datagram.ipv6.dst).toBe(dst);
      const encoded = compressIphc(buildUdpDatagram({ src, dst, srcPort: 5683, dstPort: 5683, payload }), { link: { src: SRC_MAC, dst: shortAddress(0xffff) } });
      expect(toHex(encoded.header)).toBe(toHex(lowpan.subarray(0, lowpan.length - payload.length)));
    }
  });

  it('stateful compression with a context table: SAC/DAC, CID and unicast-prefix-based multicast', () => {
    const contexts: ContextTable = new Map<number, string | LowpanContext>([
      [0, '2001:db8:1::/64'],
      [3, { prefix: 'fd00:aaaa:bbbb:cccc::', length: 64 }],
    ]);
    const src = `2001:db8:1:0:${linkLocalAddress(SRC_MAC).slice('fe80::'.length)}`;
    const dst = 'fd00:aaaa:bbbb:cccc::ff:fe00:1234';
    const sum = checksumOf(src, dst, 61616, 5683, payload);
    // CID=1 SAC=1 SAM=11 M=0 DAC=1 DAM=10 | SCI=0 DCI=3 | dst short 1234
    const lowpan = hex(`7e f6 03 1234 f0 f0b01633 ${sum} 48656c6c6f`);
    const datagram = datagramOf(frameWith(lowpan), contexts);
    expect(datagram.ipv6.src).toBe(normalizeIpv6Address(src));
    // RFC 5952 4.2.2: "::" never stands for a single zero group.
    expect(datagram.ipv6.dst).toBe('fd00:aaaa:bbbb:cccc:0:ff:fe00:1234');
    const encoded = compressIphc(buildUdpDatagram({ src, dst, srcPort: 61616, dstPort: 5683, payload }), { link: { src: SRC_MAC, dst: DST_MAC }, contexts });
    // The encoder prefers 0xF0xx for the source port: f2 b0 1633 beats f0 f0b0 1633 by a byte.
    expect(toHex(encoded.header)).toBe(`7ef6031234f2b01633${sum}`);

    // A context id the table lacks is BAD_CONTEXT at the CID byte.
    const err = lowpanError(() => decodeFrame(frameWith(hex('7e f6 05 1234 f0 f0b01633 0000')), { contexts }));
    expect(err).toMatchObject({ code: 'BAD_CONTEXT' });
    // ... and without a table at all.
    expect(lowpanError(() => decodeFrame(frameWith(lowpan))).code).toBe('BAD_CONTEXT');

    // M=1 DAC=1 DAM=00: ffXX:XXLL:PPPP:PPPP:PPPP:PPPP:XXXX:XXXX with L and P from context 0.
    const multicast = 'ff3e:40:2001:db8:1:0:1:2';
    const sum2 = checksumOf(src, multicast, 5683, 5683, payload);
    const lowpan2 = hex(`7e 7c 3e00 00010002 f0 16331633 ${sum2} 48656c6c6f`);
    expect(datagramOf(frameWith(lowpan2, shortAddress(0xffff)), contexts).ipv6.dst).toBe(multicast);
    const encoded2 = compressIphc(buildUdpDatagram({ src, dst: multicast, srcPort: 5683, dstPort: 5683, payload }), { link: { src: SRC_MAC, dst: shortAddress(0xffff) }, contexts });
    expect(toHex(encoded2.header)).toBe(toHex(lowpan2.subarray(0, lowpan2.length - payload.length)));
  });

  it('follows a context table updated in place and refuses invalid tables', () => {
    const contexts = new Map<number, string>([[0, '2001:db8:1::/64']]);
    const frame = frameWith(hex('7e 77 f0 16331633 0000'), shortAddress(1), shortAddress(2));
    expect(decodeFrame(frame, { contexts, verifyUdpChecksum: false }).lowpan).toMatchObject({ datagram: { ipv6: { src: '2001:db8:1::ff:fe00:2' } } });
    contexts.set(0, '2001:db8:9::/64');
    expect(decodeFrame(frame, { contexts, verifyUdpChecksum: false }).lowpan).toMatchObject({ datagram: { ipv6: { src: '2001:db8:9::ff:fe00:2' } } });
    expect(() => decodeFrame(frame, { contexts: new Map([[16, 'fd00::/64']]) })).toThrow(expect.objectContaining({ code: 'BAD_CONTEXT' }));
    expect(() => decodeFrame(frame, { contexts: ['fd00::/129'] })).toThrow(expect.objectContaining({ code: 'BAD_CONTEXT' }));
    expect(() => decodeFrame(frame, { contexts: ['not-a-prefix'] })).toThrow(expect.objectContaining({ code: 'BAD_CONTEXT' }));
  });

  it('the unspecified source address (SAC=1 SAM=00) needs no context', () => {
    const dst = 'ff02::16';
    const sum = checksumOf('::', dst, 5683, 5683, payload);
    const lowpan = hex(`7e 4b 16 f0 16331633 ${sum} 48656c6c6f`);
    expect(datagramOf(frameWith(lowpan, shortAddress(0xffff))).ipv6.src).toBe('::');
  });

  it('contexts longer than 64 bits override identifier bits; shorter ones leave zeros', () => {
    const contexts = [{ prefix: '2001:db8:1:2:aaaa::', length: 80 }, '2001:db8::/32'];
    const a = buildUdpDatagram({ src: '2001:db8:1:2:aaaa:ff:fe00:7', dst: '2001:db8::ff:fe00:9', srcPort: 1, dstPort: 2, payload });
    const encoded = compressIphc(a, { contexts });
    // src: SAC=1 SAM=10 ctx 0; dst: DAC=1 DAM=10 ctx 1 -> CID byte 0x01
    expect(toHex(encoded.header.subarray(0, 7))).toBe('7ee6010007' + '0009');
    const back = decompressIphc(Uint8Array.of(...encoded.header, ...payload), 0, encoded.header.length + payload.length, { contexts });
    expect(toHex(back.headers)).toBe(toHex(a.subarray(0, 48)));
  });

  it('decodes uncompressed IPv6 (dispatch 0x41) and inline next headers other than UDP', () => {
    const src = 'fe80::1';
    const dst = 'fe80::2';
    const udp = buildUdpDatagram({ src, dst, srcPort: 7, dstPort: 9, payload });
    const datagram = datagramOf(frameWith(Uint8Array.of(0x41, ...udp)));
    expect(datagram.ipv6).toMatchObject({ src, dst, nextHeader: 17 });
    expect(toHex(datagram.payload)).toBe(toHex(payload));
    // An ICMPv6 echo request, next header 58 inline: delivered as the raw IPv6 payload.
    const icmp = hex('8000 0000 1234 0001');
    const raw = datagramOf(frameWith(hex(`7a33 3a ${toHex(icmp)}`)));
    expect(raw.ipv6.nextHeader).toBe(58);
    expect(raw.udp).toBeUndefined();
    expect(toHex(raw.payload)).toBe(toHex(icmp));
  });

  it('refuses what it does not implement and what is reserved, with typed errors', () => {
    expect(lowpanError(() => decodeFrame(frameWith(hex('7e33 e1 11 00'))))).toMatchObject({ code: 'UNSUPPORTED', offset: 23 });
    expect(lowpanError(() => decodeFrame(frameWith(hex('7e34 f0 00000000 0000'))))).toMatchObject({ code: 'BAD_VALUE' });
    expect(lowpanError(() => decodeFrame(frameWith(hex('42 00'))))).toMatchObject({ code: 'UNSUPPORTED', offset: 21 });
    expect(lowpanError(() => decodeFrame(frameWith(hex('01 00'))))).toMatchObject({ code: 'BAD_DISPATCH', offset: 21 });
    expect(lowpanError(() => decodeFrame(frameWith(hex('7e33 d0'))))).toMatchObject({ code: 'BAD_VALUE' });
    expect(lowpanError(() => decodeFrame(encodeMacFrame({ panId: PAN, dst: DST_MAC }, hex('7e33 f0 00010002 0000'))))).toMatchObject({ code: 'BAD_VALUE' });
  });

  it('checksum helper agrees with a datagram built by hand', () => {
    const d = buildUdpDatagram({ src: 'fe80::1', dst: 'fe80::2', srcPort: 1, dstPort: 2, payload: new Uint8Array(0) });
    expect(udpChecksum(d.subarray(8, 24), d.subarray(24, 40), d.subarray(40))).toBe((d[46]! << 8) | d[47]!);
    expect(finishDatagram(Uint8Array.from(d), false).udp?.checksum).toBe((d[46]! << 8) | d[47]!);
  });
});

// ---------------------------------------------------------------- properties

const macArb: fc.Arbitrary<MacAddress> = fc.oneof(
  fc.integer({ min: 0, max: 0xfffe }).map(shortAddress),
  fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => extendedAddress(toHex(b))),
);

const prefixArb = fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => formatIpv6Address(Uint8Array.of(...b, 0, 0, 0, 0, 0, 0, 0, 0)));

const contextsArb: fc.Arbitrary<Array<string | LowpanContext | undefined>> = fc.array(
  fc.option(
    fc.oneof(
      prefixArb.map((p) => `${p}/64`),
      fc.tuple(fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.integer({ min: 0, max: 128 })).map(([b, length]) => ({ prefix: formatIpv6Address(b), length })),
    ),
    { nil: undefined, freq: 3 },
  ),
  { maxLength: 16 },
);

function withIid(prefix: Uint8Array, iid: Uint8Array): string {
  return formatIpv6Address(Uint8Array.of(...prefix.subarray(0, 8), ...iid));
}

/** Addresses that exercise every compression form for the given link address and contexts. */
function addressArb(link: MacAddress, contexts: Array<string | LowpanContext | undefined>, role: 'src' | 'dst'): fc.Arbitrary<string> {
  const prefixes = contexts.flatMap((c) => (c === undefined ? [] : [parseIpv6Address(typeof c === 'string' ? c.split('/')[0]! : c.prefix)]));
  const ll = parseIpv6Address('fe80::');
  const arbs: Array<fc.Arbitrary<string>> = [
    fc.constant(withIid(ll, interfaceIdentifier(link))),
    fc.integer({ min: 0, max: 0xffff }).map((n) => withIid(ll, Uint8Array.of(0, 0, 0, 0xff, 0xfe, 0, n >> 8, n & 0xff))),
    fc.uint8Array({ minLength: 8, maxLength: 8 }).map((iid) => withIid(ll, iid)),
    fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => formatIpv6Address(b)),
  ];
  for (const p of prefixes) {
    arbs.push(fc.constant(withIid(p, interfaceIdentifier(link))));
    arbs.push(fc.integer({ min: 0, max: 0xffff }).map((n) => withIid(p, Uint8Array.of(0, 0, 0, 0xff, 0xfe, 0, n >> 8, n & 0xff))));
    arbs.push(fc.uint8Array({ minLength: 8, maxLength: 8 }).map((iid) => withIid(p, iid)));
  }
  if (role === 'src') arbs.push(fc.constant('::'));
  if (role === 'dst') {
    arbs.push(fc.integer({ min: 0, max: 255 }).map((n) => `ff02::${n.toString(16)}`));
    arbs.push(fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 0xffffff })).map(([s, g]) => formatIpv6Address(Uint8Array.of(0xff, s, ...new Array<number>(11).fill(0), g >> 16, (g >> 8) & 0xff, g & 0xff))));
    arbs.push(fc.tuple(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ minLength: 5, maxLength: 5 })).map(([s, g]) => formatIpv6Address(Uint8Array.of(0xff, s, ...new Array<number>(9).fill(0), ...g))));
    arbs.push(fc.uint8Array({ minLength: 15, maxLength: 15 }).map((b) => formatIpv6Address(Uint8Array.of(0xff, ...b))));
    for (const [i, c] of contexts.entries()) {
      if (c === undefined) continue;
      const length = typeof c === 'string' ? 64 : c.length ?? 64;
      if (length > 64) continue;
      const p = prefixes[contexts.slice(0, i).filter((x) => x !== undefined).length]!;
      const masked = Uint8Array.from(p.subarray(0, 8)).map((v, k) => v & (0xff00 >> Math.max(0, Math.min(8, length - 8 * k))));
      arbs.push(fc.uint8Array({ minLength: 6, maxLength: 6 }).map((x) => formatIpv6Address(Uint8Array.of(0xff, x[0]!, x[1]!, length, ...masked, x[2]!, x[3]!, x[4]!, x[5]!))));
    }
  }
  return fc.oneof(...arbs);
}

const portArb = fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0xf0b0, max: 0xf0bf }), fc.integer({ min: 0xf000, max: 0xf0ff }), fc.constant(5683));

const scenarioArb = fc
  .record({ srcMac: macArb, dstMac: macArb, contexts: contextsArb })
  .chain(({ srcMac, dstMac, contexts }) =>
    fc.record({
      srcMac: fc.constant(srcMac),
      dstMac: fc.constant(dstMac),
      contexts: fc.constant(contexts),
      src: addressArb(srcMac, contexts, 'src'),
      dst: addressArb(dstMac, contexts, 'dst'),
      srcPort: portArb,
      dstPort: portArb,
      hopLimit: fc.oneof(fc.constantFrom(1, 64, 255), fc.integer({ min: 0, max: 255 })),
      trafficClass: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 255 })),
      flowLabel: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xfffff })),
      elide: fc.boolean(),
    }),
  );

describe('IPHC round trips (fast-check)', () => {
  it('decompress(compress(datagram)) gives back the datagram, for random addresses, ports, contexts and payloads', () => {
    fc.assert(
      fc.property(scenarioArb, fc.uint8Array({ maxLength: 64 }), (s, payload) => {
        const datagram = buildUdpDatagram({ ...s, payload });
        const link = { src: s.srcMac, dst: s.dstMac };
        const encoded = compressIphc(datagram, { link, contexts: s.contexts, elideUdpChecksum: s.elide });
        const wire = Uint8Array.of(...encoded.header, ...datagram.subarray(encoded.payloadOffset));
        const decoded = decompressIphc(wire, 0, wire.length, { link, contexts: s.contexts });
        const rebuilt = Uint8Array.of(...decoded.headers, ...wire.subarray(decoded.payloadOffset));
        const finished = finishDatagram(rebuilt, decoded.udpChecksumElided);
        expect(toHex(finished.bytes)).toBe(toHex(datagram));
        // Never longer than the uncompressed headers plus the IPHC base.
        expect(encoded.header.length).toBeLessThanOrEqual(2 + 1 + 4 + 1 + 1 + 32 + 7);
      }),
      { numRuns: 1500 },
    );
  });

  it('picks the most compact form: no shorter header decodes to the same datagram', () => {
    // For addresses built to be fully elidable, the header is exactly the IPHC base plus the ports.
    fc.assert(
      fc.property(macArb, macArb, (srcMac, dstMac) => {
        const datagram = buildUdpDatagram({ src: linkLocalAddress(srcMac), dst: linkLocalAddress(dstMac), srcPort: 0xf0b3, dstPort: 0xf0b4, payload: new Uint8Array(3) });
        const encoded = compressIphc(datagram, { link: { src: srcMac, dst: dstMac }, elideUdpChecksum: true });
        expect(toHex(encoded.header)).toBe('7e33f734');
      }),
      { numRuns: 50 },
    );
  });

  it('encodeDatagram -> decodeFrame gives back addresses, ports and payload (single frames)', () => {
    fc.assert(
      fc.property(scenarioArb, fc.uint8Array({ maxLength: 40 }), fc.integer({ min: 0, max: 0xffff }), (s, payload, panId) => {
        const frames = encodeDatagram({ ...s, payload, panId }, { contexts: s.contexts, elideUdpChecksum: s.elide, fcs: true });
        for (const frame of frames) expect(frame.length).toBeLessThanOrEqual(127);
        if (frames.length !== 1) return;
        const decoded = decodeFrame(frames[0]!, { contexts: s.contexts, fcs: true });
        expect(decoded.lowpan.kind).toBe('datagram');
        if (decoded.lowpan.kind !== 'datagram') return;
        const { datagram } = decoded.lowpan;
        expect(datagram.ipv6.src).toBe(normalizeIpv6Address(s.src));
        expect(datagram.ipv6.dst).toBe(normalizeIpv6Address(s.dst));
        expect(datagram.udp).toMatchObject({ srcPort: s.srcPort, dstPort: s.dstPort });
        expect(toHex(datagram.payload)).toBe(toHex(payload));
      }),
      { numRuns: 500 },
    );
  });
});
