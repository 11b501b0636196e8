import type { OptionName, ParsedPacket } from 'coap-packet';

/** One option of an outgoing message; repeated options (Uri-Path) appear once per value. */
export interface MessageOption {
  name: OptionName;
  value: Buffer;
}

/** A uint option value in its shortest form (RFC 7252 section 3.2: leading zero bytes are not sent). */
export function encodeUint(value: number): Buffer {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) throw new RangeError(`uint option out of range: ${value}`);
  if (value === 0) return Buffer.alloc(0);
  const bytes = value > 0xffffff ? 4 : value > 0xffff ? 3 : value > 0xff ? 2 : 1;
  const out = Buffer.alloc(bytes);
  out.writeUIntBE(value, 0, bytes);
  return out;
}

/** Reads a uint option; `undefined` when longer than 4 bytes (not a uint). */
export function decodeUint(value: Buffer): number | undefined {
  if (value.length > 4) return undefined;
  return value.length === 0 ? 0 : value.readUIntBE(0, value.length);
}

export function findOption(packet: Pick<ParsedPacket, 'options'>, name: OptionName): Buffer | undefined {
  return packet.options.find((o) => o.name === name)?.value;
}

export function uintOptionOf(packet: Pick<ParsedPacket, 'options'>, name: OptionName): number | undefined {
  const value = findOption(packet, name);
  return value === undefined ? undefined : decodeUint(value);
}

/** RFC 7959 Block1/Block2 value: block number, more flag, size exponent (size = 2^(szx+4)). */
export interface BlockOption {
  num: number;
  more: boolean;
  szx: number;
}

export function encodeBlock(block: BlockOption): Buffer {
  if (block.szx < 0 || block.szx > 6) throw new RangeError(`block szx ${block.szx} is not 0..6`);
  if (block.num < 0 || block.num > 0xfffff) throw new RangeError(`block number ${block.num} is not 0..2^20-1`);
  return encodeUint(block.num * 16 + (block.more ? 8 : 0) + block.szx);
}

/** `undefined` for a value that is no block option (too long, or szx 7, reserved). */
export function decodeBlock(value: Buffer): BlockOption | undefined {
  const raw = decodeUint(value);
  if (raw === undefined || value.length > 3) return undefined;
  const szx = raw & 7;
  if (szx === 7) return undefined;
  return { num: Math.floor(raw / 16), more: (raw & 8) !== 0, szx };
}

export function blockBytes(szx: number): number {
  return 2 ** (szx + 4);
}

/** The size exponent of a block size in bytes (16..1024, a power of two). */
export function blockSzx(bytes: number): number {
  const szx = Math.log2(bytes) - 4;
  if (!Number.isInteger(szx) || szx < 0 || szx > 6) throw new RangeError(`block size ${bytes} is not a power of two from 16 to 1024`);
  return szx;
}

/** Uri-Path options from '/a/b' (empty segments dropped, each percent-decoded). */
export function pathOptions(path: string): MessageOption[] {
  return path
    .split('/')
    .filter((segment) => segment !== '')
    .map((segment) => ({ name: 'Uri-Path', value: Buffer.from(decodeURIComponent(segment), 'utf8') }));
}

/** Uri-Query options, one per '&'-separated part. */
export function queryOptions(query: string | readonly string[] | undefined): MessageOption[] {
  if (query === undefined) return [];
  const parts = typeof query === 'string' ? query.replace(/^\?/, '').split('&') : query;
  return parts.filter((part) => part !== '').map((part) => ({ name: 'Uri-Query', value: Buffer.from(part, 'utf8') }));
}
