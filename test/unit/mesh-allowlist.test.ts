import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { generate, parse } from 'coap-packet';
import { describe, expect, it } from 'vitest';
import { MeshEndpoint } from '../../src/coap/endpoint.js';
import { AllowlistError, MeshAllowlist } from '../../src/mesh/allowlist.js';

describe('MeshAllowlist', () => {
  it('matches IPv6 and IPv4 prefixes, single addresses, and IPv4-mapped sources', () => {
    const list = MeshAllowlist.parse('fd00::/8, 2001:db8:1::/48 10.20.0.0/16 ::1');
    expect(list.allows('fd12:3456::1')).toBe(true);
    expect(list.allows('2001:db8:1:ffff::9')).toBe(true);
    expect(list.allows('2001:db8:2::9')).toBe(false);
    expect(list.allows('10.20.3.4')).toBe(true);
    expect(list.allows('::ffff:10.20.3.4')).toBe(true);
    expect(list.allows('10.21.0.1')).toBe(false);
    expect(list.allows('::1')).toBe(true);
    expect(list.allows('not an address')).toBe(false);
  });

  it('allows everyone when empty, and names a bad entry', () => {
    expect(MeshAllowlist.parse(' ').allowsAll).toBe(true);
    expect(MeshAllowlist.parse('').allows('2001:db8::1')).toBe(true);
    expect(() => MeshAllowlist.parse('fd00::/8, mesh.example')).toThrow(/mesh\.example/);
    expect(() => MeshAllowlist.parse('fd00::/129')).toThrow(AllowlistError);
    expect(() => MeshAllowlist.parse('10.0.0.0/33')).toThrow(AllowlistError);
  });
});

function confirmablePost(messageId: number): Buffer {
  return generate({ code: '0.02', confirmable: true, messageId, token: Buffer.from([1, 2]), options: [{ name: 'Uri-Path', value: Buffer.from('readings') }], payload: Buffer.from('{}') });
}

describe('MeshEndpoint with an allowlist', () => {
  it('drops datagrams from sources outside the mesh prefixes unanswered, and serves the ones inside', async () => {
    const mesh = MeshAllowlist.parse('fd00::/8');
    const loopback = MeshAllowlist.parse('::1/128');
    const outside = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 300, retryAfterSeconds: 5, allowSource: (a) => mesh.allows(a) });
    const inside = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 300, retryAfterSeconds: 5, allowSource: (a) => loopback.allows(a) });
    await outside.start();
    await inside.start();
    const client = createSocket('udp6');
    await new Promise<void>((resolve) => client.bind(0, '::1', () => resolve()));
    const answers: Buffer[] = [];
    client.on('message', (message) => answers.push(message));
    try {
      let received = 0;
      outside.on('received', () => (received += 1));
      outside.on('rejected', () => (received += 1));
      const dropped = once(outside, 'dropped');
      client.send(confirmablePost(7), outside.port!, '::1');
      const [peer] = (await dropped) as [{ address: string }];
      expect(peer.address).toBe('::1');
      expect(outside.dropped).toBe(1);
      expect(received).toBe(0);

      // The allowed endpoint answers (4.00 for the empty reading): the client's socket works.
      const answered = once(client, 'message');
      client.send(confirmablePost(8), inside.port!, '::1');
      await answered;
      expect(inside.dropped).toBe(0);
      // Every answer the client got is the allowed endpoint's: nothing came back from the other one.
      expect(answers.map((message) => parse(message).messageId)).toEqual([8]);
    } finally {
      client.close();
      await outside.stop();
      await inside.stop();
    }
  });
});
