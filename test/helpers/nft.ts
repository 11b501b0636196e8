/**
 * Shared setup for the tests that run the real nft (nftables) inside a fresh
 * network namespace, so the host's ruleset is never touched:
 *
 *   const problem = nftSupport('firewall-nft');
 *   describeWithNft(problem, 'the ruleset under real nftables', () => {
 *     const the = useNamespace('fw');
 *     it('...', async () => { await nftOkIn(the(), ['list', 'tables']); });
 *   });
 *
 * These tests need root, iproute2 and nft; elsewhere they are skipped (with
 * the reason in the describe title and a warning), but never under CI (CI
 * set), where the test file fails instead.
 */
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe } from 'vitest';
import { parseFirewallConfig, type FirewallConfig } from '../../src/firewall/index.js';
import { createNamespace, namespaceSupportProblem, removeStaleNamespaces, uniqueName, type CommandResult, type Namespace } from './netns.js';

/** A configuration with every list and port filled in: 4 HES, 3 mesh and 2 management entries, IPv4 and IPv6. */
export const sampleFirewallConfig: FirewallConfig = parseFirewallConfig({
  hes: ['192.0.2.10', '203.0.113.0/24', '2001:db8:100::/48', '2001:db8:200::7'],
  mesh: ['fd00:1::/64', 'fd00:2::/64', '10.20.0.0/16'],
  mgmt: ['198.51.100.0/24', 'fd99::/16'],
  ports: { meshCoap: 5683, backhaulCoap: 5684, dlms: 4059, admin: 1880, openvpnMgmt: 7505 },
});

/** How long one nft run may take before it is killed (a 10,000-entry set takes a while). */
export const NFT_TIMEOUT_MS = 60_000;

/**
 * Why the nft namespace tests cannot run here (namespace support, then `nft
 * --version`, then `more`, if given, for a test's extra tools), or undefined
 * when they can. Throws under CI when they cannot; otherwise warns
 * `LABEL: SKIPPED: reason`. Synchronous, for use at collection time.
 */
export function nftSupport(label: string, more?: () => string | undefined): string | undefined {
  const problem = nftSupportProblem(more);
  if (problem !== undefined && process.env.CI) throw new Error(`${label}: the nftables tests cannot run in CI: ${problem}`);
  if (problem !== undefined) console.warn(`${label}: SKIPPED: ${problem}`);
  return problem;
}

function nftSupportProblem(more?: () => string | undefined): string | undefined {
  const ns = namespaceSupportProblem();
  if (ns !== undefined) return ns;
  if (spawnSync('nft', ['--version'], { stdio: 'ignore' }).status !== 0) return 'nft (nftables) is not installed';
  return more?.();
}

/** A describe that is skipped when `problem` is set, with the reason appended to its title. */
export function describeWithNft(problem: string | undefined, title: string, body: () => void): void {
  describe.skipIf(problem !== undefined)(`${title}${problem ? ` (SKIPPED: ${problem})` : ''}`, body);
}

/**
 * Registers, in the current describe, a beforeAll that removes stale
 * namespaces and creates a fresh one named after `role`, and an afterAll that
 * removes it. Returns the accessor for that namespace, which throws when
 * called before the beforeAll finished.
 */
export function useNamespace(role: string): () => Namespace {
  let ns: Namespace | undefined;

  beforeAll(async () => {
    await removeStaleNamespaces();
    ns = await createNamespace(uniqueName(role));
  });

  afterAll(async () => {
    await ns?.remove();
  });

  return () => {
    if (!ns) throw new Error('beforeAll did not finish');
    return ns;
  };
}

/** `nft ARGS...` inside `ns`, with `input` on its stdin if given; never rejects for a non-zero exit. */
export function nftIn(ns: Namespace, args: string[], input?: string, timeoutMs = NFT_TIMEOUT_MS): Promise<CommandResult> {
  return ns.exec('nft', args, input === undefined ? { timeoutMs } : { timeoutMs, input });
}

/** `nft ARGS...` inside `ns`, resolving with its stdout, rejecting with its stderr when it exits non-zero. */
export async function nftOkIn(ns: Namespace, args: string[], input?: string, timeoutMs = NFT_TIMEOUT_MS): Promise<string> {
  const result = await nftIn(ns, args, input, timeoutMs);
  if (result.code !== 0) throw new Error(`nft ${args.join(' ')} exited ${result.code}: ${result.stderr.trim()}`);
  return result.stdout;
}
