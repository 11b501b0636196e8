import { isIP } from 'node:net';
import { cborDecode, cborEncode } from '../coap/cbor.js';
import { MeshRequestError } from '../coap/client/errors.js';
import type { PeerAddress } from '../coap/client/transport.js';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { COAP_DEFAULT_PORT } from '../coap/url.js';
import type { MeterRegistry, RegisteredMeter } from './registry.js';

/** Where requests for a registered meter go, and the path its resources sit under. */
export interface MeterTarget {
  peer: PeerAddress;
  /** From the registration's `base` ('' when none): prefixed to every request path. */
  pathPrefix: string;
  meter?: RegisteredMeter;
}

/**
 * The meter's address for requests: its registration's `base` URI when it
 * gave one (RFC 9176 section 5.3: the meter says where it is served, for
 * instance another port than it registered from), otherwise the address the
 * registration came from.
 */
export function meterTarget(meter: RegisteredMeter): MeterTarget {
  if (meter.base) {
    let url: URL | undefined;
    try {
      url = new URL(meter.base);
    } catch {
      url = undefined;
    }
    const host = url?.hostname.replace(/^\[(.*)\]$/, '$1') ?? '';
    if (url && url.protocol === 'coap:' && isIP(host) !== 0) {
      return {
        peer: { address: host, port: url.port === '' ? COAP_DEFAULT_PORT : Number(url.port) },
        pathPrefix: url.pathname.replace(/\/+$/, ''),
        meter,
      };
    }
    // A base the gateway cannot reach directly (a host name, coaps:) falls back to the source address.
  }
  return { peer: { address: meter.address.address, port: meter.address.port }, pathPrefix: '', meter };
}

/**
 * Resolves what a flow names as the destination: a registered endpoint name
 * (optionally with its sector), or an explicit address and port. Throws
 * MeshRequestError BAD_REQUEST with a message a flow author can act on.
 */
export function resolveMeter(
  destination: { meter?: unknown; sector?: unknown; peer?: unknown },
  registry: MeterRegistry | undefined,
): MeterTarget {
  if (typeof destination.meter === 'string' && destination.meter !== '') {
    if (!registry) throw new MeshRequestError('BAD_REQUEST', 'meters are found by name only when the mesh endpoint has a store (registry); give msg.peer instead');
    const sector = typeof destination.sector === 'string' && destination.sector !== '' ? destination.sector : undefined;
    const meter = registry.byEndpoint(destination.meter, sector);
    if (!meter) throw new MeshRequestError('BAD_REQUEST', `meter ${destination.meter}${sector ? ` in sector ${sector}` : ''} is not registered`);
    return meterTarget(meter);
  }
  const peer = destination.peer as { address?: unknown; port?: unknown } | undefined;
  if (peer && typeof peer === 'object' && typeof peer.address === 'string' && isIP(peer.address) !== 0) {
    const port = peer.port === undefined ? COAP_DEFAULT_PORT : Number(peer.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new MeshRequestError('BAD_REQUEST', `msg.peer.port ${String(peer.port)} is not a port`);
    return { peer: { address: peer.address, port }, pathPrefix: '' };
  }
  throw new MeshRequestError('BAD_REQUEST', 'no destination: set msg.meter to a registered endpoint name, or msg.peer to {address, port}');
}

/** Content-Formats the gateway encodes and decodes for flows (RFC 7252 section 12.3): the readings' and two more. */
const CONTENT_FORMATS = { ...CONTENT_FORMAT, linkFormat: 40, octetStream: 42 } as const;

/**
 * A flow's payload as request bytes: Buffers as they are; strings as UTF-8;
 * anything else as CBOR (or JSON when the format says so).
 */
export function encodeRequestPayload(payload: unknown, contentFormat: number | undefined): { bytes: Buffer | undefined; contentFormat: number | undefined } {
  if (payload === undefined || payload === null || payload === '') return { bytes: undefined, contentFormat };
  if (Buffer.isBuffer(payload)) return { bytes: payload, contentFormat: contentFormat ?? CONTENT_FORMATS.octetStream };
  if (payload instanceof Uint8Array) return { bytes: Buffer.from(payload), contentFormat: contentFormat ?? CONTENT_FORMATS.octetStream };
  if (typeof payload === 'string') return { bytes: Buffer.from(payload, 'utf8'), contentFormat: contentFormat ?? CONTENT_FORMATS.text };
  if (contentFormat === CONTENT_FORMATS.json) return { bytes: Buffer.from(JSON.stringify(payload), 'utf8'), contentFormat };
  if (contentFormat !== undefined && contentFormat !== CONTENT_FORMATS.cbor) {
    throw new MeshRequestError('BAD_REQUEST', `cannot encode an object as Content-Format ${contentFormat}; send a Buffer or a string`);
  }
  return { bytes: cborEncode(payload), contentFormat: CONTENT_FORMATS.cbor };
}

/**
 * A response body for a flow: CBOR and JSON decoded, text and link-format as
 * strings, anything else as a Buffer. A body that does not decode as its
 * format says stays a Buffer, with the reason.
 */
export function decodeResponsePayload(payload: Buffer, contentFormat: number | undefined): { value: unknown; decodeError?: string } {
  try {
    switch (contentFormat) {
      case CONTENT_FORMATS.cbor:
        return payload.length === 0 ? { value: undefined } : { value: cborDecode(payload) };
      case CONTENT_FORMATS.json:
        return { value: JSON.parse(payload.toString('utf8')) as unknown };
      case CONTENT_FORMATS.text:
      case CONTENT_FORMATS.linkFormat:
        return { value: payload.toString('utf8') };
      default:
        return { value: payload };
    }
  } catch (err) {
    return { value: payload, decodeError: `body is not valid for Content-Format ${contentFormat}: ${(err as Error).message}` };
  }
}
