import { isDeepStrictEqual } from 'node:util';
import { describe, expect, it } from 'vitest';
import {
  DlmsError,
  decodeApdu,
  decodeData,
  decodeWrapper,
  encodeApdu,
  encodeData,
  encodeWrapper,
  type CosemDateTime,
  type DlmsData,
  type XdlmsApdu,
} from '../../src/dlms/index.js';
import { Gen, mutate, prng, splice } from '../helpers/fuzz.js';

/**
 * Random and mutated frames through every decoder. Each call must return or
 * throw a DlmsError whose offset lies inside the input; whatever decodes must
 * re-encode (or be refused with BAD_VALUE) to something that decodes the same.
 *
 * Reproduce a failure with DLMS_FUZZ_SEED=<seed printed in the failure>.
 */
const SEED = process.env.DLMS_FUZZ_SEED ? Number(process.env.DLMS_FUZZ_SEED) : 0x5eed_2024;
const RANDOM_FRAMES = 50_000;
const MUTATED_FRAMES = 100_000;

class DlmsGen extends Gen {
  obis(): string {
    return Array.from(this.bytes(6)).join('.');
  }
  dateTime(): CosemDateTime {
    return {
      year: this.chance(0.5) ? this.int(2000, 2040) : 0xffff,
      month: this.int(1, 12),
      dayOfMonth: this.int(1, 31),
      dayOfWeek: this.int(1, 7),
      hour: this.int(0, 23),
      minute: this.int(0, 59),
      second: this.int(0, 59),
      hundredths: this.pick([0, 50, 0xff]),
      deviation: this.pick([0, -60, 120, -0x8000]),
      clockStatus: this.pick([0, 0x80, 0xff]),
    };
  }

  data(depth = 0): DlmsData {
    const container = depth < 4 && this.chance(0.3);
    if (container) {
      const items = Array.from({ length: this.int(0, 4) }, () => this.data(depth + 1));
      return { type: this.chance(0.5) ? 'array' : 'structure', items };
    }
    switch (this.int(0, 22)) {
      case 0:
        return { type: 'null' };
      case 1:
        return { type: 'boolean', value: this.chance(0.5) };
      case 2:
        return { type: 'integer', value: this.int(-128, 127) };
      case 3:
        return { type: 'long', value: this.int(-32768, 32767) };
      case 4:
        return { type: 'unsigned', value: this.int(0, 255) };
      case 5:
        return { type: 'long-unsigned', value: this.int(0, 65535) };
      case 6:
        return { type: 'double-long', value: this.int(-(2 ** 31), 2 ** 31 - 1) };
      case 7:
        return { type: 'double-long-unsigned', value: this.int(0, 2 ** 32 - 1) };
      case 8:
        return { type: 'enum', value: this.int(0, 255) };
      case 9:
        return { type: 'long64', value: BigInt(this.int(-(2 ** 40), 2 ** 40)) * 4099n };
      case 10:
        return { type: 'long64-unsigned', value: BigInt(this.int(0, 2 ** 40)) * 65537n };
      case 11:
        return { type: 'float32', value: Math.fround(this.next() * 1e6 - 5e5) };
      case 12:
        return { type: 'float64', value: this.next() * 1e12 };
      case 13:
        return { type: 'octet-string', value: this.bytes(this.chance(0.9) ? this.int(0, 16) : this.int(120, 300)) };
      case 14:
        return { type: 'visible-string', value: 'MTR-' + String(this.int(0, 99999)) };
      case 15:
        return { type: 'utf8-string', value: this.pick(['', 'Zähler', 'ok', '電力', '\u{1F50C}']) };
      case 16:
        return { type: 'bit-string', bits: Array.from({ length: this.int(0, 20) }, () => (this.chance(0.5) ? '1' : '0')).join('') };
      case 17:
        return { type: 'bcd', value: this.int(0, 99) };
      case 18:
        return { type: 'date-time', value: this.dateTime() };
      case 19: {
        const { year, month, dayOfMonth, dayOfWeek } = this.dateTime();
        return { type: 'date', value: { year, month, dayOfMonth, dayOfWeek } };
      }
      case 20: {
        const { hour, minute, second, hundredths } = this.dateTime();
        return { type: 'time', value: { hour, minute, second, hundredths } };
      }
      case 21:
        return { type: 'dont-care' };
      default:
        return { type: 'octet-string', value: this.bytes(6) };
    }
  }

  apdu(): XdlmsApdu {
    const descriptor = { classId: this.int(0, 80), instanceId: this.obis(), attributeId: this.int(-128, 127) };
    const iip = this.int(0, 255);
    const getDataResult = () => (this.chance(0.7) ? { data: this.data() } : { dataAccessResult: this.int(0, 255) });
    switch (this.int(0, 9)) {
      case 0: {
        const a: XdlmsApdu = { type: 'data-notification', longInvokeIdAndPriority: this.int(0, 2 ** 32 - 1), body: this.data() };
        if (this.chance(0.5)) a.dateTime = this.dateTime();
        return a;
      }
      case 1: {
        const a: XdlmsApdu = { type: 'event-notification-request', cosemAttributeDescriptor: descriptor, attributeValue: this.data() };
        if (this.chance(0.5)) a.time = this.dateTime();
        return a;
      }
      case 2: {
        const a: XdlmsApdu = { type: 'get-request', invokeIdAndPriority: iip, descriptor };
        if (this.chance(0.4)) a.accessSelection = { selector: this.int(1, 4), parameters: this.data() };
        return a;
      }
      case 3:
        return { type: 'get-response', invokeIdAndPriority: iip, result: getDataResult() };
      case 4: {
        const a: XdlmsApdu = { type: 'set-request', invokeIdAndPriority: iip, descriptor, value: this.data() };
        if (this.chance(0.3)) a.accessSelection = { selector: this.int(1, 4), parameters: this.data() };
        return a;
      }
      case 5:
        return { type: 'set-response', invokeIdAndPriority: iip, result: this.int(0, 255) };
      case 6: {
        const a: XdlmsApdu = {
          type: 'action-request',
          invokeIdAndPriority: iip,
          cosemMethodDescriptor: { classId: descriptor.classId, instanceId: descriptor.instanceId, methodId: this.int(-128, 127) },
        };
        if (this.chance(0.6)) a.parameters = this.data();
        return a;
      }
      case 7: {
        const a: XdlmsApdu = { type: 'action-response', invokeIdAndPriority: iip, result: this.int(0, 255) };
        if (this.chance(0.5)) a.returnParameters = getDataResult();
        return a;
      }
      case 8:
        return this.chance(0.3)
          ? { type: 'exception-response', stateError: this.int(1, 2), serviceError: 6, invocationCounter: this.int(0, 2 ** 32 - 1) }
          : { type: 'exception-response', stateError: this.int(1, 2), serviceError: this.int(1, 5) };
      default:
        return { type: 'confirmed-service-error', service: this.int(1, 19), errorGroup: this.int(0, 10), error: this.int(0, 8) };
    }
  }
}

const TAGS = [0x00, 0x01, 0x0e, 0x0f, 0x60, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc7, 0xcc, 0xd8, 0xdb, 0xe0];
const DATA_TAGS = [0, 1, 2, 3, 4, 5, 6, 9, 10, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 255];
const INTERESTING = [0x00, 0x01, 0x02, 0x06, 0x0c, 0x7f, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0xfe, 0xff];

/** `b` with `remove` bytes at `at` replaced by `insert` (a new array). */
function mutateDlms(g: DlmsGen, input: Uint8Array): Uint8Array {
  return mutate(g, input, {
    interesting: INTERESTING,
    codec: [
      // a length field claiming up to 4 GB
      (gen, b, at) => splice(b, at, gen.chance(0.5) ? 1 : 0, gen.pick([[0x84, 0xff, 0xff, 0xff, 0xff], [0x82, 0xff, 0xff], [0x81, 0xff], [0x83, 0x01, 0x00, 0x00], [0x7f]])),
      // nesting bomb spliced in
      (gen, b, at) => splice(b, at, 0, Array.from({ length: gen.int(10, 40) }, () => [gen.pick([0x01, 0x02]), gen.int(1, 3)]).flat()),
      // a Data tag somewhere
      (gen, b, at) => {
        if (b.length) b[at] = gen.pick(DATA_TAGS);
        return b;
      },
    ],
  });
}

function randomFrame(g: DlmsGen): Uint8Array {
  const b = g.bytes(g.int(0, 48));
  if (b.length && g.chance(0.6)) b[0] = g.chance(0.5) ? g.pick(TAGS) : g.pick(DATA_TAGS);
  if (b.length > 1 && g.chance(0.5)) b[1] = g.int(0, 6);
  return b;
}

interface Failure {
  decoder: string;
  input: string;
  problem: string;
}

/** Calls `fn` and returns a description of what went wrong, or undefined when the contract held. */
function checkCall<T>(input: Uint8Array, fn: (b: Uint8Array) => T, after?: (out: T) => string | undefined): string | undefined {
  let out: T;
  try {
    out = fn(input);
  } catch (err) {
    if (!(err instanceof DlmsError)) return `threw a non-DlmsError: ${String(err)}`;
    if (typeof err.offset !== 'number' || !Number.isInteger(err.offset) || err.offset < 0 || err.offset > input.length) {
      return `DlmsError ${err.code} with offset ${String(err.offset)} outside [0, ${input.length}]`;
    }
    return undefined;
  }
  return after?.(out);
}

/** Whatever decodes must re-encode, or be refused as BAD_VALUE (a latin1 visible-string), and decode back the same. */
function reencodes<T>(value: T, encode: (v: T) => Uint8Array, decode: (b: Uint8Array) => T): string | undefined {
  let bytes: Uint8Array;
  try {
    bytes = encode(value);
  } catch (err) {
    return err instanceof DlmsError && err.code === 'BAD_VALUE' ? undefined : `re-encoding failed: ${String(err)}`;
  }
  return isDeepStrictEqual(decode(bytes), value) ? undefined : 're-encoded value decodes differently';
}

const decodeOneData = (b: Uint8Array): DlmsData => decodeData(b).value;

function checkFrame(frame: Uint8Array): Failure | undefined {
  const input = Buffer.from(frame).toString('hex');
  const apduProblem = checkCall(frame, decodeApdu, (apdu) => reencodes(apdu, encodeApdu, decodeApdu));
  if (apduProblem) return { decoder: 'decodeApdu', input, problem: apduProblem };
  const dataProblem = checkCall(frame, decodeData, ({ value, next }) =>
    next < 1 || next > frame.length ? `next ${next} outside the input` : reencodes(value, encodeData, decodeOneData),
  );
  if (dataProblem) return { decoder: 'decodeData', input, problem: dataProblem };
  const wrapperProblem = checkCall(frame, decodeWrapper, ({ apdu }) =>
    checkCall(apdu, decodeApdu) ?? (apdu.length === frame.length - 8 ? undefined : 'APDU length does not match'),
  );
  if (wrapperProblem) return { decoder: 'decodeWrapper', input, problem: wrapperProblem };
  return undefined;
}

describe('DLMS decoders under fuzzing', () => {
  it(`survive ${RANDOM_FRAMES} random and ${MUTATED_FRAMES} mutated frames (seed ${SEED})`, () => {
    const g = new DlmsGen(prng(SEED));
    const corpus: Uint8Array[] = [];
    for (let i = 0; i < 300; i++) {
      const apdu = encodeApdu(g.apdu());
      corpus.push(apdu);
      if (i % 3 === 0) corpus.push(encodeWrapper({ sourceWPort: g.int(0, 0x7f), destinationWPort: g.int(0, 0x7f), apdu }));
      if (i % 2 === 0) corpus.push(encodeData(g.data()));
    }

    const started = performance.now();
    let frames = 0;
    let decodedApdus = 0;
    const failures: Failure[] = [];
    const run = (frame: Uint8Array, i: number, kind: string): void => {
      frames++;
      const failure = checkFrame(frame);
      if (failure && failures.length < 5) failures.push({ ...failure, problem: `${kind} #${i}: ${failure.problem}` });
    };

    for (const frame of corpus) {
      run(frame, 0, 'corpus');
      try {
        decodeApdu(frame);
        decodedApdus++;
      } catch {
        // wrappers and bare Data in the corpus are not APDUs
      }
    }
    // Most frames end in a thrown DlmsError; capturing a stack trace for each of
    // several hundred thousand errors would dominate the run, and none is read.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      for (let i = 0; i < RANDOM_FRAMES; i++) run(randomFrame(g), i, 'random');
      for (let i = 0; i < MUTATED_FRAMES; i++) run(mutateDlms(g, g.pick(corpus)), i, 'mutated');
    } finally {
      Error.stackTraceLimit = stackTraceLimit;
    }
    const seconds = (performance.now() - started) / 1000;

    expect(failures, `fuzz seed ${SEED} (rerun with DLMS_FUZZ_SEED=${SEED}):\n${JSON.stringify(failures, null, 2)}`).toEqual([]);
    expect(frames).toBeGreaterThanOrEqual(RANDOM_FRAMES + MUTATED_FRAMES);
    expect(decodedApdus).toBeGreaterThanOrEqual(300);
    expect(seconds, `fuzzing took ${seconds.toFixed(1)} s`).toBeLessThan(20);
  });
});
