import { parseArgs } from 'node:util';
import {
  decodeFrame,
  encodeDatagram,
  formatMacAddress,
  LowpanError,
  parseMacAddress,
  type ContextTable,
  type DecodedFrame,
  type MacAddress,
  type MacFrameVersion,
} from '../lowpan/index.js';

/**
 * `ami-gateway lowpan decode|encode`: a field engineer's look at one radio
 * frame captured off the SLIP link (or a pcap), and the frames the gateway
 * would send for a datagram, offline and without the radio.
 */

/** Thrown for bad command-line input; the CLI maps it to its usage exit code. */
export class LowpanUsageError extends Error {
  override readonly name = 'LowpanUsageError';
}

function hexArgument(option: string, raw: string | undefined, allowEmpty = false): Uint8Array | undefined {
  if (raw === undefined) return undefined;
  // Captures come with spaces, colons or a 0x prefix; accept them.
  const text = raw.replace(/^0x/i, '').replace(/[\s:]/g, '');
  if ((text.length === 0 && !allowEmpty) || text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) {
    throw new LowpanUsageError(`${option} must be hex digits (an even number of them)`);
  }
  return Uint8Array.from(Buffer.from(text, 'hex'));
}

function integerArgument(option: string, raw: string | undefined, max: number): number | undefined {
  if (raw === undefined) return undefined;
  const value = /^0x[0-9a-f]+$/i.test(raw) ? Number.parseInt(raw.slice(2), 16) : /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isInteger(value) || value < 0 || value > max) throw new LowpanUsageError(`${option} must be an integer from 0 to ${max}, got "${raw}"`);
  return value;
}

function macArgument(option: string, raw: string | undefined): MacAddress {
  if (raw === undefined) throw new LowpanUsageError(`${option} is required: 4 hex digits (short address) or 16 (EUI-64)`);
  try {
    return parseMacAddress(raw);
  } catch {
    throw new LowpanUsageError(`${option} must be 4 hex digits (short address) or 16 (EUI-64), got "${raw}"`);
  }
}

/** `--context 0=2001:db8:1::/64`, repeatable. */
function contextArguments(raw: string[] | undefined): ContextTable | undefined {
  if (raw === undefined || raw.length === 0) return undefined;
  const table = new Map<number, string>();
  for (const entry of raw) {
    const match = /^(\d{1,2})=(.+)$/.exec(entry);
    const id = match ? Number(match[1]) : Number.NaN;
    if (!match || id > 15) throw new LowpanUsageError(`--context must be ID=PREFIX with ID 0..15, got "${entry}"`);
    table.set(id, match[2] ?? '');
  }
  return table;
}

function refusal(err: LowpanError): { exitCode: number; output: string } {
  return { exitCode: 1, output: err.offset === undefined ? `ami-gateway: ${err.code}: ${err.detail}` : `ami-gateway: ${err.code} at offset ${err.offset}: ${err.detail}` };
}

/** node:util parseArgs, its errors (unknown option, missing value) turned into usage errors. */
function usage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw new LowpanUsageError((err as Error).message);
  }
}

export function lowpanCommand(args: string[]): { exitCode: number; output: string } {
  const [action, ...rest] = args;
  if (action === 'decode') return decodeCommand(rest);
  if (action === 'encode') return encodeCommand(rest);
  throw new LowpanUsageError(`unknown lowpan command "${action ?? ''}": expected decode or encode`);
}

function decodeCommand(args: string[]): { exitCode: number; output: string } {
  const { values } = usage(() =>
    parseArgs({
      args,
      options: {
        hex: { type: 'string' },
        json: { type: 'boolean' },
        fcs: { type: 'boolean' },
        context: { type: 'string', multiple: true },
        'no-verify-checksum': { type: 'boolean' },
      },
      strict: true,
    }),
  );
  const frame = hexArgument('--hex', values.hex);
  if (!frame) throw new LowpanUsageError('--hex is required: the frame as hex digits');
  const contexts = contextArguments(values.context);
  let decoded: DecodedFrame;
  try {
    decoded = decodeFrame(frame, { fcs: values.fcs ?? false, verifyUdpChecksum: !values['no-verify-checksum'], ...(contexts ? { contexts } : {}) });
  } catch (err) {
    if (err instanceof LowpanError) return refusal(err);
    throw err;
  }
  const report = frameReport(decoded);
  return { exitCode: 0, output: values.json ? JSON.stringify(report, null, 2) : textReport(report) };
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

function pan(value: number | undefined): string | undefined {
  return value === undefined ? undefined : value.toString(16).padStart(4, '0');
}

/** The JSON report: field names are a contract with scripts (mac, ipv6.src, udp.srcPort, payload, ...). */
export interface LowpanReport {
  mac: {
    kind: string;
    frameVersion: number;
    sequenceNumber?: number;
    ackRequest: boolean;
    framePending: boolean;
    panIdCompression: boolean;
    dstPan?: string;
    dst?: string;
    srcPan?: string;
    src?: string;
    headerIes?: Array<{ elementId: number; length: number }>;
    payloadIes?: Array<{ groupId: number; length: number }>;
  };
  mesh?: { hopsLeft: number; originator: string; finalDestination: string };
  broadcast?: { sequenceNumber: number };
  fragment?: { kind: 'FRAG1' | 'FRAGN'; datagramSize: number; datagramTag: number; offset: number; length: number };
  ipv6?: { src: string; dst: string; hopLimit: number; trafficClass: number; flowLabel: number; nextHeader: number; payloadLength: number };
  udp?: { srcPort: number; dstPort: number; checksum?: number };
  payload?: string;
}

function frameReport(decoded: DecodedFrame): LowpanReport {
  const { mac } = decoded;
  const report: LowpanReport = {
    mac: {
      kind: mac.kind,
      frameVersion: mac.frameVersion,
      ...(mac.sequenceNumber === undefined ? {} : { sequenceNumber: mac.sequenceNumber }),
      ackRequest: mac.ackRequest,
      framePending: mac.framePending,
      panIdCompression: mac.panIdCompression,
      ...(mac.dstPan === undefined ? {} : { dstPan: pan(mac.dstPan) }),
      ...(mac.dst === undefined ? {} : { dst: formatMacAddress(mac.dst) }),
      ...(mac.srcPan === undefined ? {} : { srcPan: pan(mac.srcPan) }),
      ...(mac.src === undefined ? {} : { src: formatMacAddress(mac.src) }),
      ...(mac.headerIes.length ? { headerIes: [...mac.headerIes] } : {}),
      ...(mac.payloadIes.length ? { payloadIes: [...mac.payloadIes] } : {}),
    },
  };
  if (decoded.mesh) {
    report.mesh = { hopsLeft: decoded.mesh.hopsLeft, originator: formatMacAddress(decoded.mesh.originator), finalDestination: formatMacAddress(decoded.mesh.finalDestination) };
  }
  if (decoded.broadcast) report.broadcast = { sequenceNumber: decoded.broadcast.sequenceNumber };
  const { lowpan } = decoded;
  const ipv6Report = (h: { src: string; dst: string; hopLimit: number; trafficClass: number; flowLabel: number; nextHeader: number; payloadLength: number }): NonNullable<LowpanReport['ipv6']> => ({
    src: h.src,
    dst: h.dst,
    hopLimit: h.hopLimit,
    trafficClass: h.trafficClass,
    flowLabel: h.flowLabel,
    nextHeader: h.nextHeader,
    payloadLength: h.payloadLength,
  });
  if (lowpan.kind === 'datagram') {
    const { datagram } = lowpan;
    report.ipv6 = ipv6Report(datagram.ipv6);
    if (datagram.udp) report.udp = { srcPort: datagram.udp.srcPort, dstPort: datagram.udp.dstPort, checksum: datagram.udp.checksum };
    report.payload = hex(datagram.payload);
  } else if (lowpan.kind === 'fragment') {
    const { fragment, headers } = lowpan;
    report.fragment = { kind: fragment.kind, datagramSize: fragment.datagramSize, datagramTag: fragment.datagramTag, offset: fragment.offset, length: fragment.data.length };
    let skip = 0;
    if (headers) {
      report.ipv6 = ipv6Report(headers.ipv6);
      skip = 40;
      if (headers.udp) {
        report.udp = { srcPort: headers.udp.srcPort, dstPort: headers.udp.dstPort, ...(headers.udp.checksum === undefined ? {} : { checksum: headers.udp.checksum }) };
        skip = 48;
      }
    }
    report.payload = hex(fragment.data.subarray(Math.min(skip, fragment.data.length)));
  }
  return report;
}

function textReport(report: LowpanReport): string {
  const { mac } = report;
  const version = ['2003', '2006', '2015'][mac.frameVersion] ?? String(mac.frameVersion);
  const lines = [
    `mac: ${mac.kind} frame, 802.15.4-${version}, seq ${mac.sequenceNumber ?? 'suppressed'}${mac.ackRequest ? ', ack requested' : ''}${mac.framePending ? ', frame pending' : ''}`,
  ];
  if (mac.dst !== undefined || mac.dstPan !== undefined) lines.push(`mac.dst: ${mac.dst ?? '-'}${mac.dstPan === undefined ? '' : ` (PAN ${mac.dstPan})`}`);
  if (mac.src !== undefined || mac.srcPan !== undefined) lines.push(`mac.src: ${mac.src ?? '-'}${mac.srcPan === undefined ? '' : ` (PAN ${mac.srcPan}${mac.panIdCompression ? ', compressed' : ''})`}`);
  if (mac.headerIes) lines.push(`mac.headerIes: ${mac.headerIes.map((ie) => `0x${ie.elementId.toString(16)}(${ie.length})`).join(' ')}`);
  if (mac.payloadIes) lines.push(`mac.payloadIes: ${mac.payloadIes.map((ie) => `group ${ie.groupId}(${ie.length})`).join(' ')}`);
  if (report.mesh) lines.push(`mesh: ${report.mesh.originator} -> ${report.mesh.finalDestination}, ${report.mesh.hopsLeft} hops left`);
  if (report.broadcast) lines.push(`broadcast: sequence ${report.broadcast.sequenceNumber}`);
  if (report.fragment) {
    const f = report.fragment;
    lines.push(`fragment: ${f.kind} of a ${f.datagramSize}-byte datagram, tag ${f.datagramTag}, bytes ${f.offset}..${f.offset + f.length}`);
  }
  if (report.ipv6) {
    lines.push(`ipv6.src: ${report.ipv6.src}`, `ipv6.dst: ${report.ipv6.dst}`, `ipv6.hopLimit: ${report.ipv6.hopLimit}`);
    if (report.ipv6.trafficClass || report.ipv6.flowLabel) lines.push(`ipv6.trafficClass: ${report.ipv6.trafficClass}`, `ipv6.flowLabel: 0x${report.ipv6.flowLabel.toString(16)}`);
    if (!report.udp) lines.push(`ipv6.nextHeader: ${report.ipv6.nextHeader}`);
  }
  if (report.udp) {
    lines.push(`udp.srcPort: ${report.udp.srcPort}`, `udp.dstPort: ${report.udp.dstPort}`);
    if (report.udp.checksum !== undefined) lines.push(`udp.checksum: 0x${report.udp.checksum.toString(16).padStart(4, '0')}`);
  }
  if (report.payload !== undefined) lines.push(`payload: ${report.payload}`);
  if (!report.ipv6 && !report.fragment) lines.push(`no 6LoWPAN payload (${mac.kind} frame)`);
  return lines.join('\n');
}

function encodeCommand(args: string[]): { exitCode: number; output: string } {
  const { values } = usage(() =>
    parseArgs({
      args,
      strict: true,
      options: {
        src: { type: 'string' },
        dst: { type: 'string' },
        sport: { type: 'string' },
        dport: { type: 'string' },
        payload: { type: 'string' },
        'src-mac': { type: 'string' },
        'dst-mac': { type: 'string' },
        pan: { type: 'string' },
        'hop-limit': { type: 'string' },
        seq: { type: 'string' },
        tag: { type: 'string' },
        'frame-version': { type: 'string' },
        context: { type: 'string', multiple: true },
        fcs: { type: 'boolean' },
        'elide-checksum': { type: 'boolean' },
        uncompressed: { type: 'boolean' },
      },
    }),
  );
  for (const required of ['src', 'dst', 'sport', 'dport', 'pan'] as const) {
    if (values[required] === undefined) throw new LowpanUsageError(`--${required} is required`);
  }
  const srcPort = integerArgument('--sport', values.sport, 0xffff) ?? 0;
  const dstPort = integerArgument('--dport', values.dport, 0xffff) ?? 0;
  const panText = (values.pan ?? '').replace(/^0x/i, '');
  if (!/^[0-9a-fA-F]{1,4}$/.test(panText)) throw new LowpanUsageError(`--pan must be up to 4 hex digits, got "${values.pan ?? ''}"`);
  const hopLimit = integerArgument('--hop-limit', values['hop-limit'], 0xff);
  const sequenceNumber = integerArgument('--seq', values.seq, 0xff);
  const datagramTag = integerArgument('--tag', values.tag, 0xffff);
  const frameVersion = integerArgument('--frame-version', values['frame-version'], 2) as MacFrameVersion | undefined;
  const contexts = contextArguments(values.context);
  try {
    const frames = encodeDatagram(
      {
        src: values.src ?? '',
        dst: values.dst ?? '',
        srcPort,
        dstPort,
        payload: hexArgument('--payload', values.payload ?? '', true) ?? new Uint8Array(0),
        srcMac: macArgument('--src-mac', values['src-mac']),
        dstMac: macArgument('--dst-mac', values['dst-mac']),
        panId: Number.parseInt(panText, 16),
        ...(hopLimit === undefined ? {} : { hopLimit }),
        ...(sequenceNumber === undefined ? {} : { sequenceNumber }),
        ...(datagramTag === undefined ? {} : { datagramTag }),
        ...(frameVersion === undefined ? {} : { frameVersion }),
      },
      { fcs: values.fcs ?? false, elideUdpChecksum: values['elide-checksum'] ?? false, compress: !values.uncompressed, ...(contexts ? { contexts } : {}) },
    );
    return { exitCode: 0, output: frames.map(hex).join('\n') };
  } catch (err) {
    if (err instanceof LowpanError) return refusal(err);
    throw err;
  }
}
