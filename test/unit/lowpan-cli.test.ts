import { describe, expect, it } from 'vitest';
import { lowpanCommand, LowpanUsageError } from '../../src/appliance/cli-lowpan.js';
import { decodeFrame, encodeDatagram, extendedAddress, linkLocalAddress, shortAddress } from '../../src/lowpan/index.js';

const toHex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');
const METER = extendedAddress('00124b0001020304');
const GATEWAY = shortAddress(0x0001);

function frameHex(payloadLength: number, options: { fcs?: boolean } = {}): string[] {
  return encodeDatagram(
    {
      src: linkLocalAddress(METER),
      dst: 'fd00::1',
      srcPort: 61616,
      dstPort: 5683,
      payload: Uint8Array.from({ length: payloadLength }, (_, i) => i & 0xff),
      srcMac: METER,
      dstMac: GATEWAY,
      panId: 0xabcd,
      sequenceNumber: 7,
      datagramTag: 0x1234,
    },
    options,
  ).map(toHex);
}

describe('ami-gateway lowpan decode', () => {
  it('prints the MAC header, addresses, ports and payload', () => {
    const [frame] = frameHex(4);
    const { exitCode, output } = lowpanCommand(['decode', '--hex', frame!]);
    expect(exitCode).toBe(0);
    expect(output).toContain('mac: data frame, 802.15.4-2006, seq 7');
    expect(output).toContain('mac.dst: 0001 (PAN abcd)');
    expect(output).toContain('mac.src: 00124b0001020304 (PAN abcd, compressed)');
    expect(output).toContain(`ipv6.src: ${linkLocalAddress(METER)}`);
    expect(output).toContain('ipv6.dst: fd00::1');
    expect(output).toContain('udp.srcPort: 61616');
    expect(output).toContain('udp.dstPort: 5683');
    expect(output).toContain('payload: 00010203');
  });

  it('prints JSON with the documented field names', () => {
    const [frame] = frameHex(4);
    const { exitCode, output } = lowpanCommand(['decode', '--hex', `0x${frame!}`, '--json']);
    expect(exitCode).toBe(0);
    const report = JSON.parse(output) as Record<string, unknown>;
    expect(Object.keys(report)).toEqual(['mac', 'ipv6', 'udp', 'payload']);
    expect(report).toMatchObject({
      mac: { kind: 'data', frameVersion: 1, sequenceNumber: 7, dstPan: 'abcd', dst: '0001', srcPan: 'abcd', src: '00124b0001020304', panIdCompression: true },
      ipv6: { src: linkLocalAddress(METER), dst: 'fd00::1', hopLimit: 64 },
      udp: { srcPort: 61616, dstPort: 5683 },
      payload: '00010203',
    });
    expect(Object.keys(report.udp as object)).toEqual(['srcPort', 'dstPort', 'checksum']);
    expect(typeof (report.udp as { checksum: unknown }).checksum).toBe('number');
  });

  it('prints fragment information for fragments', () => {
    const frames = frameHex(300);
    const first = JSON.parse(lowpanCommand(['decode', '--hex', frames[0]!, '--json']).output) as Record<string, unknown>;
    expect(first).toMatchObject({ fragment: { kind: 'FRAG1', datagramSize: 348, datagramTag: 0x1234, offset: 0 }, ipv6: { dst: 'fd00::1' }, udp: { srcPort: 61616, dstPort: 5683 } });
    const second = lowpanCommand(['decode', '--hex', frames[1]!]);
    expect(second.exitCode).toBe(0);
    expect(second.output).toMatch(/fragment: FRAGN of a 348-byte datagram, tag 4660, bytes \d+\.\.\d+/);
  });

  it('verifies the FCS with --fcs and accepts contexts', () => {
    const [frame] = frameHex(2, { fcs: true });
    expect(lowpanCommand(['decode', '--hex', frame!, '--fcs']).exitCode).toBe(0);
    const broken = frame!.slice(0, -2) + (frame!.endsWith('00') ? '01' : '00');
    expect(lowpanCommand(['decode', '--hex', broken, '--fcs']).output).toMatch(/^ami-gateway: BAD_CHECKSUM at offset \d+: FCS/);
    const withContext = lowpanCommand(['encode', '--src', '2001:db8::ff:fe00:2', '--dst', '2001:db8::ff:fe00:1', '--sport', '5683', '--dport', '5683', '--payload', 'ab', '--src-mac', '0002', '--dst-mac', '0001', '--pan', 'abcd', '--context', '0=2001:db8::/64']);
    expect(withContext.exitCode).toBe(0);
    // SAC=1 SAM=11, DAC=1 DAM=11 with context 0: both addresses elided entirely.
    expect(withContext.output).toContain('7e77');
    const decoded = lowpanCommand(['decode', '--hex', withContext.output, '--context', '0=2001:db8::/64', '--json']);
    expect(JSON.parse(decoded.output)).toMatchObject({ ipv6: { src: '2001:db8::ff:fe00:2', dst: '2001:db8::ff:fe00:1' } });
    expect(lowpanCommand(['decode', '--hex', withContext.output]).output).toMatch(/^ami-gateway: BAD_CONTEXT at offset \d+: context 0 is not configured/);
  });

  it('refuses malformed frames with exit code 1, the error code and the offset', () => {
    const [frame] = frameHex(4);
    const result = lowpanCommand(['decode', '--hex', frame!.slice(0, 30)]);
    expect(result.exitCode).toBe(1);
    expect(result.output).toMatch(/^ami-gateway: TRUNCATED at offset \d+: /);
    expect(lowpanCommand(['decode', '--hex', '4988000000']).output).toMatch(/^ami-gateway: UNSUPPORTED at offset 0: MAC security/);
  });

  it('says what a non-data frame is', () => {
    const { exitCode, output } = lowpanCommand(['decode', '--hex', '020056']);
    expect(exitCode).toBe(0);
    expect(output).toContain('no 6LoWPAN payload (ack frame)');
  });
});

describe('ami-gateway lowpan encode', () => {
  const args = ['--src', 'fe80::212:4b00:102:304', '--dst', 'ff02::1', '--sport', '61617', '--dport', '61618', '--src-mac', '00:12:4b:00:01:02:03:04', '--dst-mac', 'ffff', '--pan', '0xabcd'];

  it('prints one frame that decodes to what was asked', () => {
    const { exitCode, output } = lowpanCommand(['encode', ...args, '--payload', 'cafe']);
    expect(exitCode).toBe(0);
    expect(output.split('\n')).toHaveLength(1);
    const decoded = decodeFrame(Buffer.from(output, 'hex'));
    expect(decoded.lowpan.kind === 'datagram' && decoded.lowpan.datagram).toMatchObject({ ipv6: { src: 'fe80::212:4b00:102:304', dst: 'ff02::1' }, udp: { srcPort: 61617, dstPort: 61618 } });
    // IPHC 7e3b, multicast ff02::1 as one byte, ports 0xF0B1/0xF0B2 as one byte.
    expect(output).toContain('7e3b01f312');
  });

  it('prints a fragmented datagram one frame per line, with FCS when asked', () => {
    const { exitCode, output } = lowpanCommand(['encode', ...args, '--payload', 'aa'.repeat(1000), '--fcs', '--tag', '77', '--seq', '250']);
    expect(exitCode).toBe(0);
    const lines = output.split('\n');
    expect(lines.length).toBeGreaterThan(3);
    for (const line of lines) expect(line.length / 2).toBeLessThanOrEqual(127);
    const kinds = lines.map((line) => {
      const d = decodeFrame(Buffer.from(line, 'hex'), { fcs: true });
      return d.lowpan.kind === 'fragment' ? `${d.lowpan.fragment.kind}/${d.lowpan.fragment.datagramTag}/${d.mac.sequenceNumber}` : d.lowpan.kind;
    });
    expect(kinds[0]).toBe('FRAG1/77/250');
    expect(kinds[6]).toBe('FRAGN/77/0');
  });

  it('reports encoder refusals with exit code 1 and bad usage with LowpanUsageError', () => {
    expect(lowpanCommand(['encode', ...args.map((a) => (a === 'ff02::1' ? 'ff02::1::2' : a)), '--payload', '00'])).toEqual({ exitCode: 1, output: 'ami-gateway: BAD_ADDRESS: "ff02::1::2" is not an IPv6 address' });
    expect(lowpanCommand(['encode', ...args, '--payload', '00'.repeat(2100)]).output).toMatch(/^ami-gateway: TOO_LARGE: /);
    expect(() => lowpanCommand(['frobnicate'])).toThrow(LowpanUsageError);
    expect(() => lowpanCommand([])).toThrow(LowpanUsageError);
    expect(() => lowpanCommand(['decode'])).toThrow(/--hex is required/);
    expect(() => lowpanCommand(['decode', '--hex', 'abc'])).toThrow(LowpanUsageError);
    expect(() => lowpanCommand(['decode', '--hex', 'zz'])).toThrow(LowpanUsageError);
    expect(() => lowpanCommand(['decode', '--hex', '00', '--bogus'])).toThrow(LowpanUsageError);
    expect(() => lowpanCommand(['decode', '--hex', '00', '--context', '16=fd00::/64'])).toThrow(LowpanUsageError);
    expect(() => lowpanCommand(['encode', ...args.filter((a, i) => a !== '--sport' && args[i - 1] !== '--sport')])).toThrow(/--sport is required/);
    expect(() => lowpanCommand(['encode', ...args.map((a) => (a === '61617' ? '70000' : a))])).toThrow(LowpanUsageError);
    expect(() => lowpanCommand(['encode', ...args.map((a) => (a === 'ffff' ? 'fffff' : a))])).toThrow(/--dst-mac/);
    expect(() => lowpanCommand(['encode', ...args.map((a) => (a === '0xabcd' ? 'pan' : a))])).toThrow(/--pan/);
  });
});
