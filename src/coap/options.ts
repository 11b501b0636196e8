import type { IncomingMessage } from 'coap';
import { decodeUint } from './client/options.js';

/**
 * Content-Format names the coap library substitutes for the registered
 * numbers (RFC 7252 section 12.3 and the IANA registry), mapped back.
 */
const FORMAT_NUMBERS: Readonly<Record<string, number>> = {
  'text/plain': 0,
  'text/plain;charset=utf-8': 0,
  'application/link-format': 40,
  'application/xml': 41,
  'application/octet-stream': 42,
  'application/exi': 47,
  'application/json': 50,
  'application/cbor': 60,
};

/**
 * Reads a uint option (Content-Format, Accept, Max-Age, ...) from a received
 * message as a number. The coap library rewrites some options in place
 * (Content-Format becomes a media type name); this undoes that. Returns
 * `undefined` when absent and `NaN` when present but not understood.
 */
export function uintOption(message: IncomingMessage, name: string): number | undefined {
  const option = message._packet.options?.find((o) => o.name === name);
  if (!option) return undefined;
  const raw: unknown = option.value;
  if (typeof raw === 'number') return raw;
  if (typeof raw === 'string') return FORMAT_NUMBERS[raw.toLowerCase()] ?? Number.NaN;
  return (Buffer.isBuffer(raw) ? decodeUint(raw) : undefined) ?? Number.NaN;
}
