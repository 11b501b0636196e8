import { isIPv4 } from 'node:net';

/**
 * The IP address a datagram came from, in the one spelling used to compare
 * sources: lower case, and an IPv4-mapped IPv6 address (::ffff:10.1.2.3, as a
 * dual-stack socket reports an IPv4 peer, also as ::ffff:a01:203) as the IPv4
 * address it maps. A zone (fe80::1%eth0) is kept: it names the interface.
 */
export function canonicalSourceAddress(address: string): string {
  const lower = address.trim().toLowerCase();
  if (!lower.startsWith('::ffff:')) return lower;
  const rest = lower.slice('::ffff:'.length);
  if (isIPv4(rest)) return rest;
  const hex = /^([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(rest);
  if (!hex) return lower;
  const high = parseInt(hex[1]!, 16);
  const low = parseInt(hex[2]!, 16);
  return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
}
