import { BlockList, isIP, isIPv4 } from 'node:net';

/**
 * The in-process allowlist of the mesh endpoint: datagrams from sources
 * outside the configured mesh prefixes are dropped before the CoAP layer sees
 * them (no ACK, no reset: to an outsider the port looks closed), and counted.
 * nftables (issue 7) adds the same rule in the kernel; this one stays as the
 * second layer. An empty list allows every source.
 */
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

export class AllowlistError extends Error {
  override readonly name = 'AllowlistError';
  readonly code = 'BAD_PREFIX';
}

export class MeshAllowlist {
  private readonly list = new BlockList();

  private constructor(readonly prefixes: readonly string[]) {
    for (const prefix of prefixes) {
      const [address = '', length] = prefix.split('/');
      const family = isIP(address);
      if (family === 0) throw new AllowlistError(`"${prefix}" is not an IP address or prefix`);
      const type = family === 6 ? 'ipv6' : 'ipv4';
      if (length === undefined) {
        this.list.addAddress(address, type);
        continue;
      }
      const bits = Number(length);
      if (!/^\d{1,3}$/.test(length) || bits > (family === 6 ? 128 : 32)) {
        throw new AllowlistError(`"${prefix}" has a bad prefix length`);
      }
      this.list.addSubnet(address, bits, type);
    }
  }

  /** Parses "fd00::/8, 2001:db8:1::/48 10.0.0.0/8" (commas or spaces between entries). */
  static parse(text: string): MeshAllowlist {
    const prefixes = text
      .split(/[\s,]+/)
      .map((entry) => entry.trim())
      .filter((entry) => entry !== '');
    return new MeshAllowlist(prefixes);
  }

  get allowsAll(): boolean {
    return this.prefixes.length === 0;
  }

  /** IPv4-mapped IPv6 sources (::ffff:a.b.c.d, on a dual-stack socket) match IPv4 prefixes. */
  allows(address: string): boolean {
    if (this.allowsAll) return true;
    // A prefix names addresses on any interface: the zone of a link-local source does not take part.
    const canonical = canonicalSourceAddress(address).replace(/%.*$/, '');
    const family = isIP(canonical);
    if (family === 0) return false;
    return this.list.check(canonical, family === 6 ? 'ipv6' : 'ipv4');
  }
}
