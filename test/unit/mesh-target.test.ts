import { describe, expect, it } from 'vitest';
import { cborDecode } from '../../src/coap/cbor.js';
import { decodeResponsePayload, encodeRequestPayload, meterTarget, resolveMeter } from '../../src/mesh/target.js';
import type { MeterRegistry, RegisteredMeter } from '../../src/mesh/registry.js';

function meter(overrides: Partial<RegisteredMeter> = {}): RegisteredMeter {
  return {
    id: 'r1',
    endpoint: 'mtr-1',
    address: { address: 'fd00::17', port: 49152 },
    resources: [],
    registeredAt: 0,
    lastSeen: 0,
    expiresAt: 0,
    lifetimeSeconds: 600,
    metrics: {},
    firmware: {},
    tags: {},
    ...overrides,
  };
}

const registryWith = (m: RegisteredMeter) => ({ byEndpoint: (name: string) => (name === m.endpoint ? m : undefined) }) as unknown as MeterRegistry;

describe('meter targets', () => {
  it('uses the registration source address, or the base URI with its path when the meter gave one', () => {
    expect(meterTarget(meter())).toMatchObject({ peer: { address: 'fd00::17', port: 49152 }, pathPrefix: '' });
    expect(meterTarget(meter({ base: 'coap://[fd00::18]:5684/m/1/' }))).toMatchObject({ peer: { address: 'fd00::18', port: 5684 }, pathPrefix: '/m/1' });
    expect(meterTarget(meter({ base: 'coap://10.0.0.9' }))).toMatchObject({ peer: { address: '10.0.0.9', port: 5683 } });
    // A base by host name (or coaps) cannot be reached directly: the source address is used.
    expect(meterTarget(meter({ base: 'coap://meter.example:5683' })).peer.address).toBe('fd00::17');
  });

  it('resolves a name through the registry, or an explicit peer, and says what is missing', () => {
    const m = meter();
    expect(resolveMeter({ meter: 'mtr-1' }, registryWith(m)).meter).toBe(m);
    expect(resolveMeter({ peer: { address: '::1', port: '5700' } }, undefined).peer).toEqual({ address: '::1', port: 5700 });
    expect(() => resolveMeter({ meter: 'mtr-2' }, registryWith(m))).toThrow(/mtr-2 is not registered/);
    expect(() => resolveMeter({ meter: 'mtr-1' }, undefined)).toThrow(/store/);
    expect(() => resolveMeter({ peer: { address: 'not-an-ip' } }, undefined)).toThrow(/no destination/);
    expect(() => resolveMeter({ peer: { address: '::1', port: 70000 } }, undefined)).toThrow(/not a port/);
  });

  it('encodes flow payloads by type and decodes responses by Content-Format', () => {
    expect(encodeRequestPayload(Buffer.of(1, 2), undefined)).toEqual({ bytes: Buffer.of(1, 2), contentFormat: 42 });
    expect(encodeRequestPayload('on', undefined)).toEqual({ bytes: Buffer.from('on'), contentFormat: 0 });
    const cbor = encodeRequestPayload({ relay: 0 }, undefined);
    expect(cbor.contentFormat).toBe(60);
    expect(cborDecode(cbor.bytes!)).toEqual({ relay: 0 });
    expect(encodeRequestPayload({ relay: 0 }, 50).bytes!.toString()).toBe('{"relay":0}');
    expect(() => encodeRequestPayload({ relay: 0 }, 42)).toThrow(/Buffer or a string/);
    expect(decodeResponsePayload(cbor.bytes!, 60)).toEqual({ value: { relay: 0 } });
    expect(decodeResponsePayload(Buffer.from('hi'), 0)).toEqual({ value: 'hi' });
    const broken = decodeResponsePayload(Buffer.from('{'), 50);
    expect(Buffer.isBuffer(broken.value)).toBe(true);
    expect(broken.decodeError).toMatch(/Content-Format 50/);
  });
});
