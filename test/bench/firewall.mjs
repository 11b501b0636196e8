#!/usr/bin/env node
// The kernel allowlists (issue 7) against the real nft, in a fresh network
// namespace (the host's ruleset is never touched): for allowlists of 10, 1,000
// and 10,000 entries (mixed IPv4 /24 and IPv6 /64 prefixes, spread over the
// HES, mesh and management lists, none adjacent so nft's auto-merge keeps
// every one), the time to
//   render  renderRuleset(config), in this process;
//   apply   `nft -f -` of the rendered script, starting each time from no table;
//   verify  `nft -j list table inet ami_gateway`, JSON.parse and compareWithNftJson
//           (against the expected state render cached, as the drift watch does).
// Baseline, measured side by side in the same run (interleaved with each
// size): the same table, chain and rules with EMPTY sets, so the ratio shows
// what the entries cost. nft runs as `ip netns exec NS nft ...`, so process
// start-up is in every figure, the baseline's included. Median of 5 runs each
// (BENCH_FW_RUNS to change). Not a test: nothing asserts timings; a ruleset
// that does not verify sets exit code 1.
//
// Needs root and nft; elsewhere it says why and exits 0. Run `node scripts/build.mjs` first.
//
//   node test/bench/firewall.mjs [sizes=10,1000,10000]
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { performance } from 'node:perf_hooks';

const dist = new URL('../../dist/src/', import.meta.url);
const { compareWithNftJson, parseFirewallConfig, renderRuleset } = await import(new URL('firewall/ruleset.js', dist).href);

const SIZES = (process.argv[2] ?? '10,1000,10000').split(',').map(Number);
const RUNS = Number(process.env.BENCH_FW_RUNS ?? 5);
const PORTS = { meshCoap: 5683, backhaulCoap: 5684, dlms: 4059, admin: 1880, openvpnMgmt: 7505 };

function problem() {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'not running as root (nft in a network namespace needs CAP_NET_ADMIN)';
  if (spawnSync('ip', ['-V'], { stdio: 'ignore' }).status !== 0) return 'iproute2 (`ip`) is not installed';
  if (spawnSync('nft', ['--version'], { stdio: 'ignore' }).status !== 0) return 'nft (nftables) is not installed';
  return undefined;
}

const why = problem();
if (why !== undefined) {
  console.log(`firewall bench: skipped: ${why}`);
  process.exit(0);
}

/** Runs a command to completion; rejects on a non-zero exit with its stderr. */
function run(command, args, input) {
  return new Promise((resolve, reject) => {
    const child = execFile(command, args, { maxBuffer: 256 * 1024 * 1024, timeout: 300_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(' ')} failed: ${String(stderr).trim() || error.message}`));
      else resolve(String(stdout));
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

/** The i-th IPv4 /24 (10.a.b.0/24, b even: no two adjacent) and IPv6 /64 (fd00:i::/64). */
function v4Prefix(i) {
  return `10.${(i >> 7) & 0xff}.${(i & 0x7f) * 2}.0/24`;
}
function v6Prefix(i) {
  return `fd00:${i.toString(16)}::/64`;
}

/** `total` entries, half IPv4 and half IPv6, dealt round-robin to hes, mesh and mgmt. */
function configOf(total) {
  const lists = { hes: [], mesh: [], mgmt: [] };
  const names = ['hes', 'mesh', 'mgmt'];
  for (let i = 0; i < total; i++) {
    const n = i >> 1;
    lists[names[i % 3]].push(i % 2 === 0 ? v4Prefix(n) : v6Prefix(n));
  }
  return parseFirewallConfig({ ...lists, ports: PORTS });
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const ns = `amitbench${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
const nft = (args, input) => run('ip', ['netns', 'exec', ns, 'nft', ...args], input);

let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  await run('ip', ['netns', 'delete', ns]).catch(() => undefined);
}
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    cleanup().finally(() => process.exit(130));
  });
}

/** One measured round of `config`: render, apply from no table, verify. */
async function measure(config) {
  await nft(['delete', 'table', 'inet', 'ami_gateway']).catch(() => undefined); // untimed: every apply starts from no table
  // A copy: the expected state is cached per configuration object, and a
  // deploy renders a configuration it has not seen. The verify below then
  // compares against that cached state, as the drift watch does.
  const fresh = structuredClone(config);
  let t = performance.now();
  const script = renderRuleset(fresh);
  const render = performance.now() - t;

  t = performance.now();
  await nft(['-f', '-'], script);
  const apply = performance.now() - t;

  t = performance.now();
  const listed = await nft(['-j', 'list', 'table', 'inet', 'ami_gateway']);
  const listedAt = performance.now();
  const result = compareWithNftJson(fresh, JSON.parse(listed));
  const end = performance.now();
  if (!result.ok) throw new Error(`the applied ruleset does not verify: ${result.differences.join('; ')}`);
  return { render, apply, verify: end - t, list: listedAt - t, compare: end - listedAt };
}

function summarise(rounds) {
  const out = {};
  for (const key of ['render', 'apply', 'verify', 'list', 'compare']) out[key] = median(rounds.map((r) => r[key]));
  return out;
}

let exitCode = 0;
const rows = [];
try {
  await run('ip', ['netns', 'add', ns]);
  const baselineConfig = parseFirewallConfig({ hes: [], mesh: [], mgmt: [], ports: PORTS });
  await measure(baselineConfig); // warm-up (page cache, nft's first start), not counted
  for (const size of SIZES) {
    const config = configOf(size);
    const base = [];
    const sized = [];
    for (let r = 0; r < RUNS; r++) {
      base.push(await measure(baselineConfig));
      sized.push(await measure(config));
    }
    rows.push({ size, base: summarise(base), sized: summarise(sized), scriptBytes: Buffer.byteLength(renderRuleset(config)) });
  }
} catch (err) {
  console.error(`firewall bench: ${err instanceof Error ? err.message : String(err)}`);
  exitCode = 1;
} finally {
  await cleanup();
}

const ms = (v) => v.toFixed(2).padStart(8);
const ratio = (a, b) => `${(a / b).toFixed(2)}x`.padStart(8);
console.log(
  `nftables allowlists: render / apply (nft -f -) / verify (nft -j list + compare), median of ${RUNS}, fresh namespace, ` +
    `node ${process.version}, ${(await run('nft', ['--version'])).trim()}, ${os.cpus().length} cores`,
);
console.log('baseline: the same table with empty sets, measured interleaved with each size');
console.log('entries   script KiB |  render ms   base ms    ratio |   apply ms   base ms    ratio |  verify ms   base ms    ratio | (list ms  compare ms)');
for (const { size, base, sized, scriptBytes } of rows) {
  console.log(
    `${String(size).padStart(7)} ${(scriptBytes / 1024).toFixed(1).padStart(12)} |   ${ms(sized.render)}  ${ms(base.render)} ${ratio(sized.render, base.render)} | ${ms(sized.apply)}  ${ms(base.apply)} ${ratio(sized.apply, base.apply)} | ${ms(sized.verify)}  ${ms(base.verify)} ${ratio(sized.verify, base.verify)} | (${ms(sized.list)}   ${ms(sized.compare)})`,
  );
}
process.exitCode = exitCode;
