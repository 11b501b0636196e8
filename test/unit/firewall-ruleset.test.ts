import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FirewallError, SET_NAMES, compareWithNftJson, expectedState, parseFirewallConfig, renderRuleset, type FirewallConfig } from '../../src/firewall/index.js';

const ports = { meshCoap: 5683, backhaulCoap: 5684, dlms: 4059, admin: 1880, openvpnMgmt: 7505 };

function config(overrides: Record<string, unknown> = {}): FirewallConfig {
  return parseFirewallConfig({ hes: ['192.0.2.10', '2001:db8:100::/48'], mesh: ['fd00:1::/64', '10.20.0.0/16'], mgmt: ['198.51.100.0/24'], ports, ...overrides });
}

function badConfig(input: unknown): FirewallError {
  try {
    parseFirewallConfig(input);
  } catch (err) {
    expect(err).toBeInstanceOf(FirewallError);
    expect((err as FirewallError).code).toBe('BAD_CONFIG');
    return err as FirewallError;
  }
  throw new Error(`accepted ${JSON.stringify(input)}`);
}

/** A minimal `nft -j list table` document equivalent to what nft prints for `config`. */
function nftJsonFor(cfg: FirewallConfig): { nftables: unknown[] } {
  const state = expectedState(cfg);
  const out: unknown[] = [{ metainfo: { version: '1.0.6' } }, { table: { family: 'inet', name: 'ami_gateway', handle: 1 } }];
  for (const name of SET_NAMES) {
    const elem = state.sets[name].map((e) => {
      const [addr, len] = e.split('/');
      return len === undefined ? addr : { prefix: { addr, len: Number(len) } };
    });
    out.push({ set: { family: 'inet', name, table: 'ami_gateway', type: name.endsWith('v4') ? 'ipv4_addr' : 'ipv6_addr', flags: ['interval'], ...(elem.length ? { elem } : {}) } });
  }
  out.push({ chain: { family: 'inet', table: 'ami_gateway', name: 'input', type: 'filter', hook: 'input', prio: 0, policy: 'accept' } });
  const match = (left: unknown, right: unknown, op = '==') => ({ match: { op, left, right } });
  const payload = (protocol: string, field: string) => ({ payload: { protocol, field } });
  const rule = (expr: unknown[], comment?: string) => ({ rule: { family: 'inet', table: 'ami_gateway', chain: 'input', expr, ...(comment ? { comment } : {}) } });
  out.push(rule([match({ meta: { key: 'iif' } }, 'lo'), { accept: null }]));
  out.push(rule([match({ ct: { key: 'state' } }, ['established', 'related'], 'in'), { accept: null }]));
  for (const s of state.services) {
    out.push(rule([match(payload('ip', 'saddr'), `@${s.from}_v4`), match(payload(s.protocol, 'dport'), s.port), { accept: null }]));
    out.push(rule([match(payload('ip6', 'saddr'), `@${s.from}_v6`), match(payload(s.protocol, 'dport'), s.port), { accept: null }]));
  }
  for (const s of state.services) out.push(rule([match(payload(s.protocol, 'dport'), s.port), { counter: { packets: 0, bytes: 0 } }, { drop: null }], s.dropComment));
  return { nftables: out };
}

describe('parseFirewallConfig: validation', () => {
  it('rejects a non-object and non-array lists', () => {
    expect(badConfig(null).message).toMatch(/must be an object/);
    expect(badConfig([]).message).toMatch(/must be an object/);
    expect(badConfig({ hes: '192.0.2.1', mesh: [], mgmt: [], ports }).message).toMatch(/hes must be an array/);
    expect(badConfig({ hes: [], mesh: [], ports }).message).toMatch(/mgmt must be an array/);
    expect(badConfig({ hes: [], mesh: [42], mgmt: [], ports }).message).toMatch(/mesh\[0\] must be a string/);
  });

  it('rejects bad addresses, naming the entry', () => {
    for (const bad of ['300.1.1.1', 'fd00::g', 'meter-1', '', '1.2.3', 'fe80::1%eth0', '01.2.3.4']) {
      const err = badConfig({ hes: [], mesh: ['fd00::/8', bad], mgmt: [], ports });
      expect(err.message).toContain('mesh[1]');
    }
    expect(badConfig({ hes: ['999.0.0.1'], mesh: [], mgmt: [], ports }).message).toContain('"999.0.0.1"');
  });

  it('rejects bad prefix lengths', () => {
    for (const bad of ['10.0.0.0/33', 'fd00::/129', '10.0.0.0/', '10.0.0.0/-1', '10.0.0.0/8/8', 'fd00::/x', '10.0.0.0/0008']) {
      expect(badConfig({ hes: [], mesh: [bad], mgmt: [], ports }).message).toMatch(/mesh\[0\]/);
    }
    expect(badConfig({ hes: [], mesh: ['10.0.0.0/33'], mgmt: [], ports }).message).toMatch(/prefix length/);
  });

  it('rejects ports out of range, missing, duplicated or unknown', () => {
    for (const bad of [0, 65536, -1, 1.5, '5683', NaN]) {
      expect(badConfig({ hes: [], mesh: [], mgmt: [], ports: { ...ports, meshCoap: bad } }).message).toMatch(/ports\.meshCoap/);
    }
    expect(badConfig({ hes: [], mesh: [], mgmt: [], ports: { ...ports, openvpnMgmt: 70000 } }).message).toMatch(/ports\.openvpnMgmt/);
    expect(badConfig({ hes: [], mesh: [], mgmt: [], ports: { dlms: 4059, admin: 1880 } }).message).toMatch(/ports\.meshCoap is required/);
    expect(badConfig({ hes: [], mesh: [], mgmt: [], ports: { ...ports, admin: 4059 } }).message).toMatch(/both use tcp port 4059/);
    expect(badConfig({ hes: [], mesh: [], mgmt: [], ports: { ...ports, ssh: 22 } }).message).toMatch(/unknown port "ssh"/);
    expect(badConfig({ hes: [], mesh: [], mgmt: [], mgnt: [], ports }).message).toMatch(/unknown firewall setting "mgnt"/);
    expect(badConfig({ hes: [], mesh: [], mgmt: [], ports: 5683 }).message).toMatch(/ports must be an object/);
  });
});

describe('parseFirewallConfig: normalisation', () => {
  it('deduplicates, sorts, puts IPv4 first, clears host bits, drops full-length prefixes', () => {
    const cfg = parseFirewallConfig({
      hes: ['2001:DB8::0001', '192.0.2.10/32', '192.0.2.10', '2001:db8:0:0::1/128', '10.1.2.3/8', '10.0.0.0/8', '2001:db8:abcd:12::5/48'],
      mesh: ['FD00:0:0:0:0:0:0:0/8', '::ffff:10.0.0.1', '10.0.0.0/16'],
      mgmt: [],
      ports: { meshCoap: 5683, admin: 1880 },
    });
    expect(cfg.hes).toEqual(['10.0.0.0/8', '192.0.2.10', '2001:db8::1', '2001:db8:abcd::/48']);
    expect(cfg.mesh).toEqual(['10.0.0.0/16', '::ffff:a00:1', 'fd00::/8']);
    expect(cfg.mgmt).toEqual([]);
    expect(cfg.ports).toEqual({ meshCoap: 5683, dlms: 4059, admin: 1880 });
    const state = expectedState(cfg);
    expect(state.sets.hes_v4).toEqual(['10.0.0.0/8', '192.0.2.10']);
    expect(state.sets.hes_v6).toEqual(['2001:db8::1', '2001:db8:abcd::/48']);
    expect(state.sets.mesh_v6).toEqual(['::ffff:a00:1', 'fd00::/8']);
    expect(state.sets.mgmt_v4).toEqual([]);
  });

  it('is idempotent: parsing a parsed configuration gives the same one', () => {
    const cfg = config();
    expect(parseFirewallConfig(cfg)).toEqual(cfg);
  });
});

describe('renderRuleset', () => {
  it('replaces our table atomically with the delete-then-define idiom and names no other table', () => {
    const script = renderRuleset(config());
    const lines = script.split('\n').filter((l) => !l.startsWith('#') && l.trim() !== '');
    expect(lines.slice(0, 3)).toEqual(['table inet ami_gateway {}', 'delete table inet ami_gateway', 'table inet ami_gateway {']);
    expect(script).toMatch(/^# ami-gateway ruleset sha256:[0-9a-f]{64}$/m);
    const tables = [...lines.join('\n').matchAll(/\btable\s+(\S+)\s+(\S+)/g)].map((m) => `${m[1]} ${m[2]}`);
    expect(new Set(tables)).toEqual(new Set(['inet ami_gateway']));
    expect(script).not.toMatch(/flush ruleset/);
  });

  it('defines every set as an interval set and the counted drops with unique comments', () => {
    const script = renderRuleset(config());
    for (const name of SET_NAMES) expect(script).toMatch(new RegExp(`set ${name} \\{\\n\\t\\ttype ipv${name.endsWith('v4') ? 4 : 6}_addr\\n\\t\\tflags interval\\n\\t\\tauto-merge`));
    expect(script).toContain('type filter hook input priority filter; policy accept;');
    expect(script).toContain('iif lo accept');
    expect(script).toContain('ct state established,related accept');
    expect(script).toContain('ip6 saddr @mesh_v6 udp dport 5683 accept');
    expect(script).toContain('ip saddr @hes_v4 tcp dport 4059 accept');
    expect(script).toContain('ip6 saddr @hes_v6 udp dport 4059 accept');
    expect(script).toContain('ip saddr @mgmt_v4 tcp dport 1880 accept');
    expect(script).toContain('ip saddr @mgmt_v4 tcp dport 7505 accept');
    const drops = [...script.matchAll(/counter drop comment "([^"]+)"/g)].map((m) => m[1]);
    expect(drops).toEqual(['drop-mesh', 'drop-backhaul', 'drop-dlms-tcp', 'drop-dlms-udp', 'drop-admin', 'drop-openvpn-mgmt']);
    expect(script).toContain('udp dport 5683 counter drop comment "drop-mesh"');
    // Every accept comes before every drop.
    expect(script.lastIndexOf(' accept\n')).toBeLessThan(script.indexOf('counter drop'));
    // Empty sets have no elements line.
    expect(script).toMatch(/set mgmt_v6 \{\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\tauto-merge\n\t\}/);
  });

  it('leaves optional ports unguarded when they are not configured', () => {
    const script = renderRuleset(config({ ports: { meshCoap: 5683, admin: 1880 } }));
    expect(script).not.toContain('drop-backhaul');
    expect(script).not.toContain('drop-openvpn-mgmt');
    expect(script).toContain('drop-dlms-udp');
  });

  it('renders a 10,000-entry allowlist', () => {
    const mesh = Array.from({ length: 10_000 }, (_, i) => `fd00:${(i >> 8).toString(16)}:${(i & 0xff).toString(16)}::/64`);
    const cfg = config({ mesh, hes: Array.from({ length: 10_000 }, (_, i) => `10.${i >> 8}.${i & 0xff}.1`) });
    const script = renderRuleset(cfg);
    expect(expectedState(cfg).sets.mesh_v6).toHaveLength(10_000);
    expect(expectedState(cfg).sets.hes_v4).toHaveLength(10_000);
    expect(script.split('\n').length).toBeGreaterThan(20_000);
    expect(compareWithNftJson(cfg, nftJsonFor(cfg))).toEqual({ ok: true, differences: [] });
  });
});

describe('compareWithNftJson', () => {
  const cfg = config();

  it('accepts what nft prints for the ruleset (as an object or as text)', () => {
    expect(compareWithNftJson(cfg, nftJsonFor(cfg))).toEqual({ ok: true, differences: [] });
    expect(compareWithNftJson(cfg, JSON.stringify(nftJsonFor(cfg))).ok).toBe(true);
  });

  it('accepts auto-merged elements as ranges and wider prefixes', () => {
    const c = parseFirewallConfig({ hes: [], mesh: ['192.168.1.0/25', '192.168.1.128/25', '10.0.0.1', '10.0.0.2'], mgmt: [], ports });
    const doc = nftJsonFor(c);
    const set = doc.nftables.find((e) => (e as { set?: { name: string } }).set?.name === 'mesh_v4') as { set: { elem: unknown[] } };
    set.set.elem = [{ range: ['10.0.0.1', '10.0.0.2'] }, { prefix: { addr: '192.168.1.0', len: 24 } }];
    expect(compareWithNftJson(c, doc)).toEqual({ ok: true, differences: [] });
  });

  it('reports a missing table', () => {
    const result = compareWithNftJson(cfg, { nftables: [{ metainfo: {} }, { table: { family: 'inet', name: 'other' } }] });
    expect(result.ok).toBe(false);
    expect(result.differences).toEqual(['table inet ami_gateway is missing']);
  });

  it('reports a flushed or changed set, a missing set, a missing drop and a changed chain', () => {
    const flushed = nftJsonFor(cfg);
    const meshV6 = flushed.nftables.find((e) => (e as { set?: { name: string } }).set?.name === 'mesh_v6') as { set: { elem?: unknown[] } };
    delete meshV6.set.elem;
    let result = compareWithNftJson(cfg, flushed);
    expect(result.ok).toBe(false);
    expect(result.differences.join('\n')).toMatch(/set mesh_v6 is empty/);

    meshV6.set.elem = [{ prefix: { addr: 'fd00:1::', len: 64 } }, 'fd00:2::1'];
    result = compareWithNftJson(cfg, flushed);
    expect(result.differences).toEqual(['set mesh_v6 has unexpected fd00:2::1']);

    const noSet = nftJsonFor(cfg);
    noSet.nftables = noSet.nftables.filter((e) => (e as { set?: { name: string } }).set?.name !== 'hes_v4');
    expect(compareWithNftJson(cfg, noSet).differences).toContain('set hes_v4 is missing');

    const noDrop = nftJsonFor(cfg);
    noDrop.nftables = noDrop.nftables.filter((e) => (e as { rule?: { comment?: string } }).rule?.comment !== 'drop-admin');
    expect(compareWithNftJson(cfg, noDrop).differences.join('\n')).toMatch(/drop rule "drop-admin" \(tcp dport 1880\) is missing/);

    const dropPolicy = nftJsonFor(cfg);
    const chain = dropPolicy.nftables.find((e) => (e as { chain?: unknown }).chain) as { chain: { policy: string } };
    chain.chain.policy = 'drop';
    expect(compareWithNftJson(cfg, dropPolicy).differences.join('\n')).toMatch(/chain input is .*policy "drop"/);

    const noChain = nftJsonFor(cfg);
    noChain.nftables = noChain.nftables.filter((e) => !(e as { chain?: unknown }).chain);
    expect(compareWithNftJson(cfg, noChain).differences).toContain('chain input is missing');
  });

  it('throws BAD_NFT_OUTPUT for output that is not nft JSON', () => {
    for (const bad of [null, 'not json', '{}', 42, { nftables: {} }]) {
      expect(() => compareWithNftJson(cfg, bad)).toThrow(FirewallError);
      try {
        compareWithNftJson(cfg, bad);
      } catch (err) {
        expect((err as FirewallError).code).toBe('BAD_NFT_OUTPUT');
      }
    }
  });
});

// ---------------------------------------------------------------------------
// Properties

/** A random prefix with its normalised text computed independently (WHATWG URL serialises IPv6 per RFC 5952). */
const v4Entry = fc.tuple(fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 }), fc.option(fc.integer({ min: 0, max: 32 }), { nil: undefined })).map(([bytes, len]) => {
  const input = bytes.join('.') + (len === undefined ? '' : `/${len}`);
  const bits = len ?? 32;
  const value = bytes.reduce((acc, b) => acc * 256 + b, 0);
  const masked = bits === 0 ? 0 : Number((BigInt(value) >> BigInt(32 - bits)) << BigInt(32 - bits));
  const address = [24, 16, 8, 0].map((s) => Math.floor(masked / 2 ** s) % 256).join('.');
  return { input, normalised: bits === 32 ? address : `${address}/${bits}` };
});

const v6Entry = fc
  .tuple(fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 }), fc.option(fc.integer({ min: 0, max: 128 }), { nil: undefined }), fc.boolean())
  .map(([groups, len, upper]) => {
    let text = new URL(`http://[${groups.map((g) => g.toString(16)).join(':')}]`).hostname.slice(1, -1);
    if (upper) text = text.toUpperCase();
    const bits = len ?? 128;
    let value = groups.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
    value = bits === 0 ? 0n : (value >> BigInt(128 - bits)) << BigInt(128 - bits);
    const masked: number[] = [];
    for (let i = 7; i >= 0; i--) masked.push(Number((value >> BigInt(16 * i)) & 0xffffn));
    const address = new URL(`http://[${masked.map((g) => g.toString(16)).join(':')}]`).hostname.slice(1, -1);
    return { input: text + (len === undefined ? '' : `/${len}`), normalised: bits === 128 ? address : `${address}/${bits}` };
  });

const entries = fc.array(fc.oneof(v4Entry, v6Entry), { maxLength: 40 });

describe('properties', () => {
  it('any list of valid addresses/prefixes renders, and the expected sets hold exactly the normalised inputs', () => {
    fc.assert(
      fc.property(entries, entries, entries, (hes, mesh, mgmt) => {
        const cfg = parseFirewallConfig({ hes: hes.map((e) => e.input), mesh: mesh.map((e) => e.input), mgmt: mgmt.map((e) => e.input), ports });
        const script = renderRuleset(cfg);
        const state = expectedState(cfg);
        for (const [name, list] of [['hes', hes], ['mesh', mesh], ['mgmt', mgmt]] as const) {
          const want = new Set(list.map((e) => e.normalised));
          const v4 = [...want].filter((e) => !e.includes(':'));
          const v6 = [...want].filter((e) => e.includes(':'));
          expect(new Set(state.sets[`${name}_v4`])).toEqual(new Set(v4));
          expect(new Set(state.sets[`${name}_v6`])).toEqual(new Set(v6));
          expect(state.sets[`${name}_v4`]).toHaveLength(v4.length);
          expect(state.sets[`${name}_v6`]).toHaveLength(v6.length);
          for (const element of want) expect(script).toContain(`\t\t\t${element}`);
        }
        expect(compareWithNftJson(cfg, nftJsonFor(cfg)).ok).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('parseFirewallConfig on arbitrary input returns a config or throws FirewallError, nothing else', () => {
    const arbitrary = fc.oneof(
      fc.anything(),
      fc.record({ hes: fc.anything(), mesh: fc.anything(), mgmt: fc.anything(), ports: fc.anything() }),
      fc.record({ hes: fc.array(fc.string()), mesh: fc.array(fc.oneof(fc.string(), fc.anything())), mgmt: fc.constant([]), ports: fc.dictionary(fc.constantFrom('meshCoap', 'dlms', 'admin', 'x'), fc.anything()) }),
    );
    fc.assert(
      fc.property(arbitrary, (input) => {
        try {
          const cfg = parseFirewallConfig(input);
          renderRuleset(cfg);
        } catch (err) {
          if (!(err instanceof FirewallError)) throw err;
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('compareWithNftJson on arbitrary input returns a result or throws FirewallError, nothing else', () => {
    const cfg = config();
    const entry = fc.oneof(
      fc.anything(),
      fc.record({ table: fc.record({ family: fc.constant('inet'), name: fc.constant('ami_gateway') }) }),
      fc.record({ set: fc.record({ family: fc.constant('inet'), table: fc.constant('ami_gateway'), name: fc.oneof(fc.constantFrom(...SET_NAMES), fc.anything()), type: fc.anything(), flags: fc.anything(), elem: fc.anything() }) }),
      fc.record({ chain: fc.record({ family: fc.constant('inet'), table: fc.constant('ami_gateway'), name: fc.oneof(fc.constant('input'), fc.anything()), hook: fc.anything(), prio: fc.anything() }) }),
      fc.record({ rule: fc.record({ family: fc.constant('inet'), table: fc.constant('ami_gateway'), chain: fc.anything(), expr: fc.anything(), comment: fc.anything() }) }),
    );
    fc.assert(
      fc.property(fc.oneof(fc.anything(), fc.record({ nftables: fc.array(entry) }), fc.string()), (json) => {
        try {
          const result = compareWithNftJson(cfg, json);
          expect(typeof result.ok).toBe('boolean');
          expect(Array.isArray(result.differences)).toBe(true);
        } catch (err) {
          if (!(err instanceof FirewallError)) throw err;
        }
      }),
      { numRuns: 1000 },
    );
  });
});
