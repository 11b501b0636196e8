import { execFile } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { CLI, REPO_ROOT } from '../helpers/appliance.js';

/** `ami-gateway lowpan encode|decode` through the built CLI: what a field engineer runs on a sniffer capture. */
function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const ENCODE = ['--src', 'fe80::212:4b00:0:aa', '--dst', 'fe80::212:4b00:0:1', '--sport', '5683', '--dport', '61617', '--src-mac', '00124b00000000aa', '--dst-mac', '00124b0000000001', '--pan', 'abcd'];

describe('ami-gateway lowpan (built CLI)', () => {
  it('encodes a datagram and decodes the frame back to the same addresses, ports and payload', async () => {
    const encoded = await runCli(['lowpan', 'encode', ...ENCODE, '--payload', '48656c6c6f']);
    expect(encoded.stderr).toBe('');
    expect(encoded.code).toBe(0);
    const frames = encoded.stdout.trim().split('\n');
    expect(frames).toHaveLength(1);
    const decoded = await runCli(['lowpan', 'decode', '--hex', frames[0]!, '--json']);
    expect(decoded.code).toBe(0);
    expect(JSON.parse(decoded.stdout)).toMatchObject({
      mac: { src: '00124b00000000aa', dst: '00124b0000000001', dstPan: 'abcd' },
      ipv6: { src: 'fe80::212:4b00:0:aa', dst: 'fe80::212:4b00:0:1' },
      udp: { srcPort: 5683, dstPort: 61617 },
      payload: '48656c6c6f',
    });
  });

  it('prints a large datagram as RFC 4944 fragments, one frame per line', async () => {
    const encoded = await runCli(['lowpan', 'encode', ...ENCODE, '--payload', 'ab'.repeat(300)]);
    expect(encoded.code).toBe(0);
    const frames = encoded.stdout.trim().split('\n');
    expect(frames.length).toBeGreaterThan(2);
    const first = await runCli(['lowpan', 'decode', '--hex', frames[0]!, '--json']);
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/FRAG1/);
  });

  it('exits 1 with the error code and offset for a malformed frame, 2 for bad usage', async () => {
    const malformed = await runCli(['lowpan', 'decode', '--hex', '41cc00']);
    expect(malformed.code).toBe(1);
    expect(malformed.stderr).toMatch(/^ami-gateway: TRUNCATED at offset \d+: /);
    const usage = await runCli(['lowpan', 'decode']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('ami-gateway:');
  });
});
