import { describe, expect, it } from 'vitest';
import {
  ACK,
  C1218Error,
  NAK,
  PacketDecoder,
  STP,
  decodeDeviceIdentification,
  decodeGeneralConfiguration,
  decodeIdentifyResponse,
  decodeManufacturerIdentification,
  decodeNegotiateResponse,
  decodeOkResponse,
  decodePacket,
  decodeReadResponse,
  decodeRequest,
  encodeIdentifyResponse,
  encodeNegotiateResponse,
  encodePacket,
  encodeReadResponse,
  encodeRefusal,
  encodeRequest,
  passwordBytes,
  type LinkUnit,
  type RefusalName,
  type TableFormat,
} from '../../src/c1218/index.js';
import { defaultC1218MeterTables } from '../../src/sim/c1218-meter.js';
import { Gen, mutate, prng } from '../helpers/fuzz.js';

/**
 * Malformed C12.18 packets through the packet decoders (strict and streaming)
 * and the service and table decoders. Each call must return or throw a
 * C1218Error whose offset lies inside the input; the streaming decoder must
 * account for every byte, in order, and only ever report packets that are
 * really on the wire at the offset it gives.
 *
 * Reproduce a failure with C1218_FUZZ_SEED=<seed printed in the failure>.
 */
const SEED = process.env.C1218_FUZZ_SEED ? Number(process.env.C1218_FUZZ_SEED) : 0xc12_18;
const RANDOM_PACKETS = 30_000;
const MUTATED_PACKETS = 100_000;


const REFUSALS: RefusalName[] = ['ERR', 'SNS', 'ISC', 'ONP', 'IAR', 'BSY', 'DNR', 'DLK', 'RNO', 'ISSS'];
const INTERESTING = [STP, ACK, NAK, 0x00, 0x01, 0x20, 0x30, 0x3f, 0x50, 0x60, 0x6b, 0x7f, 0x80, 0xc0, 0xe0, 0xff];

const TABLES = [...defaultC1218MeterTables().values()].map((t) => t.data);

/** Application data of every kind the decoders meet: requests, responses, tables. */
function applicationData(g: Gen): Uint8Array {
  const tables = TABLES;
  switch (g.int(0, 9)) {
    case 0:
      return encodeRequest(
        g.pick([
          { service: 'identify' },
          { service: 'terminate' },
          { service: 'logoff' },
          { service: 'full-read', table: g.int(0, 0xffff) },
          { service: 'partial-read', table: g.int(0, 2100), offset: g.int(0, 0xffffff), count: g.int(0, 0xffff) },
          { service: 'logon', userId: g.int(0, 0xffff), user: 'user' },
          { service: 'security', password: passwordBytes(g.bytes(g.int(0, 20))) },
          { service: 'negotiate', packetSize: g.int(0, 0xffff), maxPackets: g.int(0, 255), baudRates: [9600, 19200].slice(0, g.int(0, 2)) },
          { service: 'wait', seconds: g.int(0, 255) },
        ] as const),
      );
    case 1:
      return encodeIdentifyResponse({ standard: g.int(0, 2), version: g.int(0, 3), revision: g.int(0, 3), features: g.bytes(g.int(0, 6)) });
    case 2:
      return encodeNegotiateResponse({ packetSize: g.int(0, 0xffff), maxPackets: g.int(0, 255), ...(g.chance(0.5) ? { baudRate: 19200 } : {}) });
    case 3:
      return encodeRefusal(g.pick(REFUSALS));
    case 4:
    case 5:
      return encodeReadResponse(g.pick(tables));
    case 6:
      return encodeReadResponse(g.bytes(g.int(0, 120)), { corruptChecksum: g.chance(0.2) });
    case 7:
      return g.pick(tables);
    default:
      return Uint8Array.of(0);
  }
}

function validPacket(g: Gen): Uint8Array {
  return encodePacket({ identity: g.chance(0.9) ? 0 : g.int(0, 255), ctrl: g.pick([0x00, 0x20, 0xc0, 0x80, 0xa0, 0xe0]), sequence: g.int(0, 3), data: applicationData(g) });
}

function mutateC1218(g: Gen, input: Uint8Array): Uint8Array {
  return mutate(g, input, {
    interesting: INTERESTING,
    codec: [
      // A length field claiming anything from 0 to 64 KiB.
      (gen, b) => {
        if (b.length >= 6) {
          const claim = gen.pick([0, 1, 0xffff, 0x1ff8, 0x1ff9, gen.int(0, 0x3000)]);
          b[4] = claim >>> 8;
          b[5] = claim & 0xff;
        }
        return b;
      },
      // Recompute the CRC over the mutated bytes, so the payload decoders see malformed data behind a good CRC.
      (_gen, b) => {
        if (b.length < 9 || b[0] !== STP) return b;
        const length = ((b[4] as number) << 8) | (b[5] as number);
        if (length < 1 || length !== b.length - 8) return b;
        return encodePacket({ identity: b[1] as number, ctrl: b[2] as number, sequence: b[3] as number, data: b.subarray(6, 6 + length) });
      },
    ],
  });
}

const FORMATS: TableFormat[] = [
  { dataOrder: 'little-endian', charFormat: 2, idForm: 'string' },
  { dataOrder: 'big-endian', charFormat: 1, idForm: 'bcd' },
  { dataOrder: 'little-endian', charFormat: 3, idForm: 'string' },
  { dataOrder: 'little-endian', charFormat: 4, idForm: 'string' },
];

const PAYLOAD_DECODERS: Array<[string, (b: Uint8Array, format: TableFormat) => unknown]> = [
  ['decodeIdentifyResponse', decodeIdentifyResponse],
  ['decodeNegotiateResponse', decodeNegotiateResponse],
  ['decodeReadResponse', decodeReadResponse],
  ['decodeOkResponse', (b) => decodeOkResponse(b, 'fuzz')],
  ['decodeRequest', decodeRequest],
  ['decodeGeneralConfiguration', decodeGeneralConfiguration],
  ['decodeManufacturerIdentification', decodeManufacturerIdentification],
  ['decodeDeviceIdentification', decodeDeviceIdentification],
];

/** Calls `fn`; a description of what went wrong, or undefined when it returned or threw a C1218Error with an offset inside the input. */
function checkCall(input: Uint8Array, fn: (b: Uint8Array) => unknown): string | undefined {
  try {
    fn(input);
  } catch (err) {
    if (!(err instanceof C1218Error)) return `threw a non-C1218Error: ${String(err)}`;
    if (err.offset !== undefined && (!Number.isInteger(err.offset) || err.offset < 0 || err.offset > input.length)) {
      return `C1218Error ${err.code} with offset ${err.offset} outside [0, ${input.length}]`;
    }
  }
  return undefined;
}

interface Failure {
  decoder: string;
  input: string;
  problem: string;
}

function checkPacket(frame: Uint8Array, format: TableFormat): Failure | undefined {
  const strict = checkCall(frame, (b) => decodePacket(b));
  if (strict) return { decoder: 'decodePacket', input: Buffer.from(frame).toString('hex'), problem: strict };
  // The payload decoders get what the packet carries, whether or not its CRC holds.
  const payload = frame.subarray(Math.min(6, frame.length), Math.max(6, frame.length - 2));
  for (const [name, decode] of PAYLOAD_DECODERS) {
    const problem = checkCall(payload, (b) => decode(b, format));
    if (problem) return { decoder: `${name} (${JSON.stringify(format)})`, input: Buffer.from(payload).toString('hex'), problem };
  }
  return undefined;
}

/** Feeds `stream` in random chunks, with random inter-character timeouts, and checks every unit. */
function checkStream(g: Gen, stream: Uint8Array): string | undefined {
  const decoder = new PacketDecoder({ maxPacketSize: g.pick([64, 1024, 8192]) });
  let covered = 0; // stream bytes accounted for by units, in order: each unit starts where the last ended
  const check = (units: LinkUnit[]): string | undefined => {
    for (const unit of units) {
      if (unit.offset !== covered) return `unit at ${unit.offset}, but the previous one ended at ${covered}`;
      if (unit.kind === 'packet') {
        const bytes = encodePacket(unit.packet);
        const onWire = stream.subarray(unit.offset, unit.offset + bytes.length);
        if (Buffer.compare(Buffer.from(bytes), Buffer.from(onWire)) !== 0) return `packet at ${unit.offset} is not what the stream holds there`;
        covered = unit.offset + bytes.length;
      } else if (unit.kind === 'error') {
        if (!(unit.error instanceof C1218Error) || unit.length < 1 || unit.offset + unit.length > stream.length) return `bad error unit ${JSON.stringify({ ...unit, error: unit.error.code })}`;
        covered = unit.offset + unit.length;
      } else {
        if (stream[unit.offset] !== (unit.kind === 'ack' ? ACK : NAK)) return `${unit.kind} at ${unit.offset} is not on the wire`;
        covered = unit.offset + 1;
      }
    }
    return undefined;
  };
  for (let at = 0; at < stream.length; ) {
    const size = g.int(1, 64);
    const problem = check(decoder.push(stream.subarray(at, at + size)));
    if (problem) return problem;
    at += size;
    if (g.chance(0.02)) {
      const flushed = check(decoder.flushPending());
      if (flushed) return flushed;
    }
  }
  // Each flush gives up on one incomplete packet; what follows it may be incomplete too.
  while (decoder.pendingBytes > 0) {
    const last = check(decoder.flushPending());
    if (last) return last;
  }
  if (covered !== stream.length) return `only ${covered} of ${stream.length} bytes accounted for`;
  return undefined;
}

describe('C12.18 decoders under fuzzing', () => {
  it(`survive ${RANDOM_PACKETS} random and ${MUTATED_PACKETS} mutated packets (seed ${SEED})`, () => {
    const g = new Gen(prng(SEED));
    const corpus = Array.from({ length: 400 }, () => validPacket(g));
    const failures: Failure[] = [];
    let packets = 0;
    const run = (frame: Uint8Array, kind: string, i: number): void => {
      packets++;
      const failure = checkPacket(frame, g.pick(FORMATS));
      if (failure && failures.length < 5) failures.push({ ...failure, problem: `${kind} #${i}: ${failure.problem}` });
    };
    // Capturing a stack trace for each of several hundred thousand thrown errors would dominate the run, and none is read.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    const started = performance.now();
    let streamBytes = 0;
    try {
      corpus.forEach((frame, i) => run(frame, 'corpus', i));
      for (let i = 0; i < RANDOM_PACKETS; i++) {
        const frame = g.bytes(g.int(0, 40));
        if (frame.length && g.chance(0.7)) frame[0] = STP;
        run(frame, 'random', i);
      }
      let batch: Uint8Array[] = [];
      for (let i = 0; i < MUTATED_PACKETS; i++) {
        const frame = mutateC1218(g, g.pick(corpus));
        run(frame, 'mutated', i);
        batch.push(frame, g.chance(0.3) ? validPacket(g) : new Uint8Array(0), g.chance(0.1) ? Uint8Array.of(g.pick([ACK, NAK])) : new Uint8Array(0));
        if (batch.length >= 300) {
          const stream = Buffer.concat(batch);
          streamBytes += stream.length;
          const problem = checkStream(g, stream);
          if (problem && failures.length < 5) failures.push({ decoder: 'PacketDecoder', input: `${stream.length} bytes`, problem: `stream before mutated #${i}: ${problem}` });
          batch = [];
        }
      }
    } finally {
      Error.stackTraceLimit = stackTraceLimit;
    }
    const seconds = (performance.now() - started) / 1000;
    expect(failures, `fuzz seed ${SEED} (rerun with C1218_FUZZ_SEED=${SEED}):\n${JSON.stringify(failures, null, 2)}`).toEqual([]);
    expect(packets).toBeGreaterThanOrEqual(RANDOM_PACKETS + MUTATED_PACKETS);
    expect(streamBytes).toBeGreaterThan(1_000_000);
    expect(seconds, `fuzzing took ${seconds.toFixed(1)} s`).toBeLessThan(15);
  });
});
