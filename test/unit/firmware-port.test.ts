import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cborDecode, cborEncode } from '../../src/coap/cbor.js';
import type { MeshRequest, MeshResponse } from '../../src/coap/client/client.js';
import { MeshRequestError } from '../../src/coap/client/errors.js';
import { FirmwarePortError } from '../../src/firmware/index.js';
import { CoapFirmwarePort, parseFirmwareState } from '../../src/mesh/firmware-port.js';

const SHA = 'ab'.repeat(32);
const OFFER = { path: '/fw/acme/comm-2.2.0', target: 'comm' as const, version: '2.2.0', sha256: SHA, size: 5120 };

function response(code: string, payload: Buffer = Buffer.alloc(0)): MeshResponse {
  return { code, payload, peer: { address: '::1', port: 5683 }, exchanges: 1, retransmissions: 0, elapsedMs: 1 };
}

/** A mesh client that answers from a function and records the requests. */
function clientAnswering(answer: (request: MeshRequest) => MeshResponse | Error) {
  const requests: MeshRequest[] = [];
  return {
    requests,
    client: {
      async request(request: MeshRequest): Promise<MeshResponse> {
        requests.push(request);
        const out = answer(request);
        if (out instanceof Error) throw out;
        return out;
      },
    },
  };
}

const target = { peer: { address: 'fd00::7', port: 5683 }, pathPrefix: '/m' };

describe('firmware port over the mesh client', () => {
  it('reads /fw/state and offers with POST /fw/update in CBOR, at metrology priority, under the meter\'s base path', async () => {
    const state = { model: 'AMX-100', comm: '2.1.0', metro: '5.0.0', state: 'downloading', image: { target: 'comm', version: '2.2.0', sha256: SHA }, received: 512, size: 5120 };
    const { client, requests } = clientAnswering((r) => (r.method === 'GET' ? response('2.05', cborEncode(state)) : response('2.04')));
    const port = new CoapFirmwarePort({ client, resolve: (m) => (m === 'm1' ? target : undefined) });
    expect(await port.readState('m1', new AbortController().signal)).toEqual(state);
    await port.offer('m1', OFFER, new AbortController().signal);
    expect(requests.map((r) => [r.method, r.path, r.priority, r.peer.address])).toEqual([
      ['GET', '/m/fw/state', 'metrology', 'fd00::7'],
      ['POST', '/m/fw/update', 'metrology', 'fd00::7'],
    ]);
    expect(cborDecode(requests[1]?.payload as Uint8Array)).toEqual(OFFER);
    expect(requests[1]?.contentFormat).toBe(60);
  });

  it('maps answers and transport failures to typed, transient or final errors', async () => {
    const cases: [MeshResponse | Error, string, boolean][] = [
      [response('4.09'), 'METER_BUSY', true],
      [response('5.03'), 'METER_BUSY', true],
      [response('4.13'), 'METER_REFUSED', false],
      [response('4.04'), 'METER_REFUSED', false],
      [new MeshRequestError('COMM_TIMEOUT_ERR', 'no answer'), 'COMM_TIMEOUT_ERR', true],
      [new MeshRequestError('RESET', 'reset'), 'COMM_TIMEOUT_ERR', true],
      [new MeshRequestError('QUEUE_FULL', 'full'), 'QUEUE_FULL', true],
      [new MeshRequestError('BLOCKWISE_ERR', 'bad block'), 'BAD_ANSWER', false],
    ];
    for (const [answer, code, transient] of cases) {
      const port = new CoapFirmwarePort({ client: clientAnswering(() => answer).client, resolve: () => target });
      const error = await port.offer('m1', OFFER, new AbortController().signal).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(FirmwarePortError);
      expect(error).toMatchObject({ code, transient });
    }
    const unregistered = new CoapFirmwarePort({ client: clientAnswering(() => response('2.05')).client, resolve: () => undefined });
    await expect(unregistered.readState('gone', new AbortController().signal)).rejects.toMatchObject({ code: 'NOT_REGISTERED', transient: true });
    const notCbor = new CoapFirmwarePort({ client: clientAnswering(() => response('2.05', Buffer.from([0xff, 0x00]))).client, resolve: () => target });
    await expect(notCbor.readState('m1', new AbortController().signal)).rejects.toMatchObject({ code: 'BAD_ANSWER', transient: false });
  });

  it('refuses each malformed field of /fw/state, naming it', () => {
    const good = { comm: '2.1.0', metro: '5.0.0', state: 'idle' };
    const bad: [unknown, RegExp][] = [
      [[], /not a map/],
      [{ ...good, comm: 2 }, /comm is not a short text/],
      [{ ...good, metro: 'five' }, /metro "five" is not a version/],
      [{ ...good, state: 'flashing' }, /state "flashing"/],
      [{ ...good, received: -1 }, /received is not a byte count/],
      [{ ...good, size: 1.5 }, /size is not a byte count/],
      [{ ...good, model: 'x'.repeat(65) }, /model is not a short text/],
      [{ ...good, image: { target: 'radio', version: '1.0', sha256: SHA } }, /image.target/],
      [{ ...good, image: { target: 'comm', version: '1.0', sha256: SHA.toUpperCase() } }, /image.sha256/],
    ];
    for (const [value, message] of bad) expect(() => parseFirmwareState(value, 'm1')).toThrow(message);
    expect(parseFirmwareState(good)).toEqual(good);
  });

  it('fuzz: any CBOR-able value either parses to a well-formed report or throws BAD_ANSWER', () => {
    const field = fc.oneof(fc.string({ maxLength: 70 }), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.constantFrom('2.1.0', '5.0.0', 'idle', 'failed', 'comm', SHA));
    const state = fc.record(
      {
        comm: field,
        metro: field,
        state: field,
        model: field,
        received: field,
        size: field,
        result: field,
        image: fc.oneof(field, fc.record({ target: field, version: field, sha256: field }, { requiredKeys: [] })),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(fc.oneof(state, fc.anything()), (value) => {
        try {
          const report = parseFirmwareState(cborDecode(cborEncode(value)));
          expect(['idle', 'downloading', 'updating', 'failed']).toContain(report.state);
          expect(report.comm).toMatch(/^\d+(\.\d+){1,3}$/);
        } catch (err) {
          expect(err).toBeInstanceOf(FirmwarePortError);
          expect((err as FirmwarePortError).code).toBe('BAD_ANSWER');
        }
      }),
      { numRuns: 3000 },
    );
  });
});
