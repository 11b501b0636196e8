import { DlmsError } from './errors.js';

/**
 * OBIS codes (IEC 62056-6-1) name COSEM objects with six value groups A..F,
 * each 0..255. On the wire a logical name is a 6-byte octet-string; in text the
 * gateway writes it dotted, `0.0.1.0.0.255`, and also reads the IEC notation
 * `A-B:C.D.E*F` (or `A-B:C.D.E.F`), which is what meter manuals print.
 */
export const OBIS_LENGTH = 6;

const DOTTED = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
const IEC = /^(\d{1,3})-(\d{1,3}):(\d{1,3})\.(\d{1,3})\.(\d{1,3})[.*](\d{1,3})$/;

function parseGroups(s: string): number[] | undefined {
  const match = DOTTED.exec(s) ?? IEC.exec(s);
  if (!match) return undefined;
  const groups = match.slice(1, 7).map(Number);
  return groups.every((g) => g <= 255) ? groups : undefined;
}

/** Six bytes to the dotted form, `0.0.1.0.0.255`. Any other length is BAD_LENGTH. */
export function obisToString(bytes: Uint8Array): string {
  if (bytes.length !== OBIS_LENGTH) {
    throw new DlmsError('BAD_LENGTH', `an OBIS code is ${OBIS_LENGTH} bytes, not ${bytes.length}`);
  }
  return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}.${bytes[4]}.${bytes[5]}`;
}

/** Dotted or IEC text to the 6 wire bytes; anything else is BAD_VALUE. */
export function obisFromString(s: string): Buffer {
  const groups = typeof s === 'string' ? parseGroups(s) : undefined;
  if (!groups) {
    throw new DlmsError('BAD_VALUE', `not an OBIS code: ${JSON.stringify(String(s)).slice(0, 40)}`);
  }
  return Buffer.from(groups);
}

/** True for text obisFromString accepts. */
export function isObisString(s: unknown): s is string {
  return typeof s === 'string' && parseGroups(s) !== undefined;
}
