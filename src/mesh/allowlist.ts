import { BlockList, isIP } from 'node:net';
import { canonicalSourceAddress } from '../coap/address.js';

/**
 * The in-process allowlist of the mesh endpoint: datagrams from sources
 * outside the configured mesh prefixes are dropped before the CoAP layer sees
 * them (no ACK, no reset: to an outsider the port looks closed), and counted.
 * nftables (issue 7) adds the same rule in the kernel; this one stays as the
 * second layer. An empty list allows every source.
 */
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
