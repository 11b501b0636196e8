#!/usr/bin/env node
// Firmware images to meters over the mesh (issue 9): block-wise (RFC 7959 Block2) download
// throughput of the gateway's firmware resource, side by side with a bare coap server serving
// the same bytes, in one run.
//   gateway   MeshEndpoint (its datagram screen, duplicate detection, resource dispatch) with a
//             FirmwareResource over a FirmwareRepository: GET /fw/bench/comm-9.9.0 re-verifies the
//             image at block 0 of each download (signature, chain, size, SHA-256; downloads that
//             start while a verification runs share it) and answers later blocks from those
//             verified bytes; the resource cuts the block itself (at most 512 bytes), with the
//             image digest as ETag.
//   baseline  coap.createServer answering that GET with the same bytes, Content-Format 42 and the
//             same ETag option, nothing else (what the library costs); the library cuts the block
//             (and replaces the ETag with its own 2-byte digest).
// The image: BENCH_FW_BYTES random bytes, signed with the test signer (firmware-images/test-ca)
// into a temporary image folder, removed at the end. The default is 64 KiB, not a full-size
// communication-module image, to keep the bench under a minute: the baseline's cost per block
// grows with the whole body (for every Block2 response the coap library XORs the whole body into
// its own 2-byte ETag: ~1.4 us per KiB of image per block, ~360 of the ~900 us a block costs at
// 256 KiB); 100 meters x 256 KiB in 512-byte blocks take 40-55 s per run on two cores.
// BENCH_FW_BYTES=262144 measures that size (the run timeout grows with it).
// Each server runs in its own child process (this file, with the variant as argument), the
// meters in this one, so both servers get the same share of the machine; both children stay up
// for the whole run and are measured alternately (which goes first alternates per run).
// The meters: each simulated meter is a MeshClient (the project's CoAP client, dist/src/coap/client)
// on its own UDP socket on ::1, RFC 7252 transmission defaults, NSTART 1. It GETs the image with
// Block2 in BENCH_FW_BLOCK-byte blocks from block 0 until a block without the M bit, each block its
// own confirmable exchange with a fresh token (as the gateway's own client does; every block
// reaches the resource handler), and checks that the blocks keep the first block's ETag.
// The downloaded bytes' SHA-256 must equal the image's; a mismatch, an error code, a timeout or
// a run cut short counts as a failed download. BENCH_FW_CLIENT=coap uses the coap library's Agent
// instead (one per meter, the library's automatic Block2 follow-up with ONE token for all blocks,
// so blocks after 0 come from the library's per-token cache and never reach the handler).
// Scenarios, each measured BENCH_FW_RUNS times per server after an untimed warm-up (one meter,
// two downloads from each server):
//   one meter    one meter downloads the image BENCH_FW_SINGLE times in a row
//   N meters     BENCH_FW_METERS meters start at once, each downloads the image once
// Prints, per scenario and server, medians over the runs: payload KiB/s, downloads/s, blocks/s,
// p50/p99 download time, server CPU per block (the server child's own user+system time over the
// run), retransmissions and failures summed, and the ratio gateway/baseline of KiB/s (and of CPU
// per block). Then the ETag each server put on the blocks, the gateway's image verifications
// (count and time), and each server's peak RSS.
// Every run is cut short after BENCH_FW_RUN_TIMEOUT_S (its unfinished downloads count as failed),
// and the whole bench after a hard cap, so it always terminates.
// Not a test: nothing asserts timings; it exits non-zero only when the bench itself fails (a
// server does not start).
//
//   node test/bench/firmware.mjs
//   BENCH_FW_BYTES (65536)  BENCH_FW_BLOCK (512: szx 5; 16..1024)  BENCH_FW_RUNS (3)  BENCH_FW_SINGLE (10)
//   BENCH_FW_METERS (100)  BENCH_FW_RUN_TIMEOUT_S (30, or 2 ms per block of the N-meter run if longer)
//   BENCH_FW_CLIENT (mesh | coap)
// Needs dist/ (node scripts/build.mjs).
import { fork } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { setMaxListeners } from 'node:events';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { percentile, procMemory } from './metrics.mjs';

const require = createRequire(import.meta.url);
const self = fileURLToPath(import.meta.url);
const root = path.resolve(path.dirname(self), '..', '..');
const dist = path.join(root, 'dist/src');
const coap = require('coap');

const IMAGE_BYTES = Number(process.env.BENCH_FW_BYTES ?? 64 * 1024);
const BLOCK = Number(process.env.BENCH_FW_BLOCK ?? 512);
const RUNS = Number(process.env.BENCH_FW_RUNS ?? 3);
const SINGLE = Number(process.env.BENCH_FW_SINGLE ?? 10);
const METERS = Number(process.env.BENCH_FW_METERS ?? 100);
/** Default: 30 s, or 2 ms per block of the N-meter scenario if that is longer (the coap library's cost per block grows with the image). */
const RUN_TIMEOUT_MS = Number(process.env.BENCH_FW_RUN_TIMEOUT_S ?? Math.max(30, Math.ceil((METERS * Math.ceil(IMAGE_BYTES / BLOCK) * 2) / 1000))) * 1000;
const CLIENT = process.env.BENCH_FW_CLIENT ?? 'mesh';
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

const VENDOR = 'bench';
const TARGET = 'comm';
const VERSION = '9.9.0';
const IMAGE_ID = `${VENDOR}/${TARGET}-${VERSION}`;
const IMAGE_PATH = `/fw/${IMAGE_ID}`;
/** CoAP Content-Format application/octet-stream, as the firmware resource sends. */
const OCTET_STREAM = 42;

const median = (values) => {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

if (!existsSync(path.join(dist, 'mesh/firmware-resource.js'))) {
  console.error('firmware bench: dist/src/mesh/firmware-resource.js is missing; run `node scripts/build.mjs` first');
  process.exit(1);
}

// ---------------------------------------------------------------------------------------------
// Child side: one server variant over the image folder in argv[3]. Tells the parent its port over
// IPC ({ port }); answers 'stats' with its CPU time and counters, 'stop' likewise, then exits.
// ---------------------------------------------------------------------------------------------

async function gatewayServer(imagesRoot) {
  const { MeshEndpoint } = require(path.join(dist, 'coap/endpoint.js'));
  const { openFirmwareRepository } = require(path.join(dist, 'firmware/index.js'));
  const { FirmwareResource } = require(path.join(dist, 'mesh/firmware-resource.js'));
  const trustAnchorsPem = [readFileSync(path.join(root, 'firmware-images/test-ca/root-ca.pem'), 'utf8')];
  const repository = await openFirmwareRepository({ root: imagesRoot, trustAnchorsPem });
  const image = repository.get(IMAGE_ID);
  if (image?.status !== 'good') throw new Error(`the bench image is not good: ${JSON.stringify(image)}`);
  // One verification alone, on an idle process (what each download's block 0 costs at least).
  const alone = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    await repository.verifyBeforeSend(IMAGE_ID);
    alone.push(performance.now() - t0);
  }
  // The re-verification at block 0 of every download, timed (wall time: it reads files and may wait behind others).
  const verifications = [];
  const verify = repository.verifyBeforeSend.bind(repository);
  repository.verifyBeforeSend = async (id) => {
    const t0 = performance.now();
    try {
      return await verify(id);
    } finally {
      verifications.push(performance.now() - t0);
    }
  };
  const refused = [];
  // The same options the node uses by default (15 s accept timeout, 30 s retry after).
  const endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 15_000, retryAfterSeconds: 30 });
  endpoint.on('error', (err) => console.error(`firmware bench: gateway: ${err.message}`));
  endpoint.addResource(new FirmwareResource(repository, { onRefused: (id, err) => refused.push(`${id}: ${err.code}`) }));
  await endpoint.start();
  return {
    port: endpoint.port,
    stats: () => {
      const sorted = [...verifications].sort((a, b) => a - b);
      return {
        verifyAlone: median(alone),
        verifications: verifications.length,
        verifyP50: percentile(sorted, 0.5),
        verifyP99: percentile(sorted, 0.99),
        refused: refused.length,
        duplicates: endpoint.duplicates,
        malformed: endpoint.malformed,
      };
    },
    stop: () => endpoint.stop(),
  };
}

async function baselineServer(imagesRoot) {
  const dir = path.join(imagesRoot, VENDOR, `${TARGET}-${VERSION}`);
  const bytes = readFileSync(path.join(dir, 'image.bin'));
  const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  // The firmware resource's ETag: the first 8 bytes of the image's SHA-256.
  const etag = Buffer.from(manifest.sha256.slice(0, 16), 'hex');
  const server = coap.createServer({ type: 'udp6' });
  server.on('request', (req, res) => {
    if (req.method !== 'GET' || req.url.split('?')[0] !== IMAGE_PATH) {
      res.code = '4.04';
      res.end();
      return;
    }
    res.setOption('Content-Format', OCTET_STREAM);
    res.setOption('ETag', etag);
    res.end(bytes);
  });
  await new Promise((resolve) => server.listen(0, '::1', resolve));
  return { port: server._sock.address().port, stats: () => ({}), stop: () => new Promise((resolve) => server.close(resolve)) };
}

async function serve(variant, imagesRoot) {
  let server;
  try {
    server = variant === 'gateway' ? await gatewayServer(imagesRoot) : variant === 'baseline' ? await baselineServer(imagesRoot) : undefined;
    if (!server) throw new Error(`unknown variant ${variant}`);
  } catch (err) {
    process.send({ error: err.message ?? String(err) }, () => process.exit(1));
    return;
  }
  // The parent going away (killed, crashed) takes this child with it.
  process.on('disconnect', () => process.exit(0));
  process.on('message', async (message) => {
    const cpu = process.cpuUsage();
    const reply = { stats: { cpuMs: (cpu.user + cpu.system) / 1000, ...server.stats() } };
    if (message === 'stats') process.send(reply);
    else if (message === 'stop') {
      await Promise.race([server.stop(), new Promise((resolve) => setTimeout(resolve, 2000))]);
      process.send(reply, () => process.exit(0));
    }
  });
  process.send({ port: server.port });
}

// ---------------------------------------------------------------------------------------------
// Parent side: the image, the two servers, the meters.
// ---------------------------------------------------------------------------------------------

/** Signs BENCH_FW_BYTES random bytes with the test signer into a fresh image folder under `dir`. */
async function makeImage(dir) {
  const { signImage, writeImageFolder } = require(path.join(dist, 'firmware/index.js'));
  const ca = path.join(root, 'firmware-images/test-ca');
  const signer = {
    privateKeyPem: readFileSync(path.join(ca, 'firmware-signing.key.pem'), 'utf8'),
    signerChainPem: readFileSync(path.join(ca, 'firmware-signing.pem'), 'utf8'),
  };
  const bytes = randomBytes(IMAGE_BYTES);
  const fields = { vendor: VENDOR, target: TARGET, models: ['AMX-100'], version: VERSION, compatibleWith: ['5.0.0'], description: 'firmware bench image' };
  const signed = signImage(fields, bytes, signer);
  await writeImageFolder(path.join(dir, VENDOR, `${TARGET}-${VERSION}`), signed);
  return { bytes, sha256: signed.manifest.sha256, etag: Buffer.from(signed.manifest.sha256.slice(0, 16), 'hex') };
}

/** Starts a server variant in a child process; resolves with its port, pid, stats() and stop(). */
async function startChild(variant, imagesRoot) {
  const child = fork(self, [variant, imagesRoot], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let timer;
  const first = await Promise.race([
    new Promise((resolve) => child.once('message', resolve)),
    exited.then(({ code, signal }) => ({ error: `exited with ${code ?? signal} before listening` })),
    new Promise((resolve) => (timer = setTimeout(() => resolve({ error: `not listening after ${START_TIMEOUT_MS / 1000} s` }), START_TIMEOUT_MS))),
  ]);
  clearTimeout(timer);
  if (first.error) {
    child.kill('SIGKILL');
    throw new Error(`${variant} did not start: ${first.error}`);
  }
  const ask = async (message) => {
    if (child.exitCode !== null || child.signalCode !== null) return undefined;
    let t;
    const reply = new Promise((resolve) => child.once('message', (m) => resolve(m.stats)));
    child.send(message);
    const stats = await Promise.race([reply, exited.then(() => undefined), new Promise((resolve) => (t = setTimeout(resolve, STOP_TIMEOUT_MS)))]);
    clearTimeout(t);
    return stats;
  };
  return {
    name: variant,
    port: first.port,
    pid: child.pid,
    stats: () => ask('stats'),
    stop: async () => {
      const stats = await ask('stop');
      // It exits on its own after answering; SIGTERM only if it does not.
      let t;
      await Promise.race([exited, new Promise((resolve) => (t = setTimeout(resolve, STOP_TIMEOUT_MS)))]);
      clearTimeout(t);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      return stats ?? {};
    },
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

// --- Meters ----------------------------------------------------------------------------------

/** A meter on the project's MeshClient: fresh token per block, ETag checked across blocks. */
async function meshMeter() {
  const { MeshClient } = require(path.join(dist, 'coap/client/client.js'));
  const client = await MeshClient.open({ bind: '::1' }, { blockSize: BLOCK, maxBodyBytes: IMAGE_BYTES + BLOCK });
  return {
    async download(port, signal) {
      const res = await client.request({ peer: { address: '::1', port }, method: 'GET', path: IMAGE_PATH, blockSize: BLOCK, maxBodyBytes: IMAGE_BYTES + BLOCK, signal });
      return { code: res.code, payload: res.payload, etag: res.etag, blocks: res.exchanges };
    },
    /** Over the meter's life, failed downloads included. */
    retransmissions: () => client.counters().retransmissions,
    close: () => client.close(),
  };
}

/** A meter on the coap library's Agent: Block2 asked for at block 0, the library follows up (one token). */
function coapMeter() {
  const { closeAgent } = require(path.join(dist, 'coap/request.js'));
  const agent = new coap.Agent({ type: 'udp6' });
  const szx = Math.log2(BLOCK) - 4;
  return {
    download(port, signal) {
      return new Promise((resolve, reject) => {
        const req = coap.request({ hostname: '::1', port, pathname: IMAGE_PATH, method: 'GET', confirmable: true, agent });
        req.setOption('Block2', Buffer.of(szx)); // num 0, M 0, szx
        const onAbort = () => {
          agent.abort(req);
          reject(Object.assign(new Error('aborted'), { code: 'ABORTED' }));
        };
        signal.addEventListener('abort', onAbort, { once: true });
        const done = (fn) => {
          signal.removeEventListener('abort', onAbort);
          fn();
        };
        req.on('response', (res) => {
          // No ETag: the library hands it over decoded as a UTF-8 string, its bytes lost.
          done(() => resolve({ code: res.code, payload: res.payload, etag: undefined, blocks: Math.ceil(res.payload.length / BLOCK) }));
        });
        req.on('timeout', () => done(() => reject(Object.assign(new Error('timeout'), { code: 'TIMEOUT' }))));
        req.on('error', (err) => done(() => reject(err)));
        req.end();
      });
    },
    /** The Agent does not count them. */
    retransmissions: () => NaN,
    close: () => closeAgent(agent),
  };
}

const openMeter = () => (CLIENT === 'coap' ? coapMeter() : meshMeter());

/** One download by `meter`; its outcome is tallied in `tally`. */
async function downloadOnce(meter, server, image, signal, tally) {
  const t0 = performance.now();
  try {
    const res = await meter.download(server.port, signal);
    const ms = performance.now() - t0;
    if (res.etag) tally.etags.add(res.etag.toString('hex'));
    if (res.code !== '2.05') return tally.fail(`code ${res.code}`);
    if (res.payload.length !== image.bytes.length || createHash('sha256').update(res.payload).digest('hex') !== image.sha256) {
      return tally.fail(`SHA-256 mismatch (${res.payload.length} bytes)`);
    }
    tally.ok += 1;
    tally.blocks += res.blocks;
    tally.latencies.push(ms);
  } catch (err) {
    tally.fail(signal.aborted ? `cut short after ${RUN_DEADLINE_S()} s` : (err.code ?? err.message));
  }
}
const RUN_DEADLINE_S = () => RUN_TIMEOUT_MS / 1000;

function newTally() {
  const tally = { ok: 0, failed: 0, blocks: 0, retransmissions: 0, latencies: [], reasons: new Map(), etags: new Set() };
  tally.fail = (reason) => {
    tally.failed += 1;
    tally.reasons.set(reason, (tally.reasons.get(reason) ?? 0) + 1);
  };
  return tally;
}

/**
 * One timed run against `server`: `meters` meters (opened before the clock starts), each
 * downloading the image `each` times in a row, all meters at once.
 */
async function run(server, image, meters, each) {
  const clients = await Promise.all(Array.from({ length: meters }, () => openMeter()));
  const tally = newTally();
  const signal = AbortSignal.timeout(RUN_TIMEOUT_MS);
  // Every meter's exchanges listen on this one signal.
  setMaxListeners(0, signal);
  const cpu0 = (await server.stats())?.cpuMs ?? NaN;
  const t0 = performance.now();
  await Promise.all(
    clients.map(async (meter) => {
      for (let i = 0; i < each; i++) {
        if (signal.aborted) tally.fail(`cut short after ${RUN_DEADLINE_S()} s`);
        else await downloadOnce(meter, server, image, signal, tally);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const after = await server.stats();
  const cpuMs = (after?.cpuMs ?? NaN) - cpu0;
  for (const meter of clients) tally.retransmissions += meter.retransmissions();
  await Promise.all(clients.map((c) => Promise.race([c.close(), new Promise((resolve) => setTimeout(resolve, 2000).unref())])));
  tally.latencies.sort((a, b) => a - b);
  return {
    ok: tally.ok,
    failed: tally.failed,
    reasons: tally.reasons,
    etags: tally.etags,
    seconds,
    kibPerSecond: (tally.ok * image.bytes.length) / 1024 / seconds,
    downloadsPerSecond: tally.ok / seconds,
    blocksPerSecond: tally.blocks / seconds,
    p50: percentile(tally.latencies, 0.5),
    p99: percentile(tally.latencies, 0.99),
    cpuUsPerBlock: tally.blocks ? (cpuMs * 1000) / tally.blocks : NaN,
    retransmissions: tally.retransmissions,
  };
}

/** Medians of the runs; counts summed. */
function summarise(runs) {
  const reasons = new Map();
  const etags = new Set();
  for (const r of runs) {
    for (const [k, v] of r.reasons) reasons.set(k, (reasons.get(k) ?? 0) + v);
    for (const e of r.etags) etags.add(e);
  }
  const m = (key) => median(runs.map((r) => r[key]));
  return {
    kibPerSecond: m('kibPerSecond'),
    downloadsPerSecond: m('downloadsPerSecond'),
    blocksPerSecond: m('blocksPerSecond'),
    p50: m('p50'),
    p99: m('p99'),
    cpuUsPerBlock: m('cpuUsPerBlock'),
    retransmissions: runs.reduce((a, r) => a + r.retransmissions, 0),
    failed: runs.reduce((a, r) => a + r.failed, 0),
    downloads: runs.reduce((a, r) => a + r.ok + r.failed, 0),
    reasons: [...reasons].map(([k, v]) => `${k}: ${v}`).join(', '),
    etags,
  };
}

async function main() {
  if (CLIENT !== 'mesh' && CLIENT !== 'coap') throw new Error(`BENCH_FW_CLIENT must be mesh or coap, not ${CLIENT}`);
  if (![16, 32, 64, 128, 256, 512, 1024].includes(BLOCK)) throw new Error(`BENCH_FW_BLOCK must be a power of two from 16 to 1024, not ${BLOCK}`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-fw-'));
  const servers = [];
  // A hard cap on the whole bench: whatever hangs, the children go and the temp folder with them.
  const hardCapMs = (RUNS * 2 * 2 + 4) * RUN_TIMEOUT_MS + 60_000;
  const hardCap = setTimeout(() => {
    console.error(`firmware bench: still running after ${hardCapMs / 1000} s, giving up`);
    for (const s of servers) s.kill();
    rmSync(dir, { recursive: true, force: true });
    process.exit(1);
  }, hardCapMs);
  hardCap.unref();
  // Interrupted: the children and the temp folder go too.
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.once(signal, () => {
      for (const s of servers) s.kill();
      rmSync(dir, { recursive: true, force: true });
      process.exit(130);
    });
  }
  try {
    const image = await makeImage(dir);
    servers.push(await startChild('gateway', dir));
    servers.push(await startChild('baseline', dir));
    const [gateway, baseline] = servers;

    // Warm-up, not counted: a download from each server, and the gateway's first verification.
    for (const s of servers) await run(s, image, 1, 2);

    const scenarios = [
      { name: `1 meter x ${SINGLE}`, meters: 1, each: SINGLE },
      { name: `${METERS} meters at once`, meters: METERS, each: 1 },
    ];
    const rows = [];
    for (const scenario of scenarios) {
      const results = { gateway: [], baseline: [] };
      for (let r = 0; r < RUNS; r++) {
        // Alternate which goes first, so neither always runs on a warmer (or hotter) machine.
        const order = r % 2 === 0 ? [gateway, baseline] : [baseline, gateway];
        for (const s of order) results[s.name].push(await run(s, image, scenario.meters, scenario.each));
      }
      rows.push({ scenario, gw: summarise(results.gateway), base: summarise(results.baseline) });
    }

    const memory = Object.fromEntries(servers.map((s) => [s.name, (() => {
      try {
        return procMemory(s.pid).peak;
      } catch {
        return NaN;
      }
    })()]));
    const gatewayStats = await gateway.stats();

    const blocks = Math.ceil(IMAGE_BYTES / BLOCK);
    console.log(
      `\nfirmware image block-wise (Block2) to meters: ${IMAGE_BYTES} B image in ${BLOCK} B blocks (${blocks} blocks), ` +
        `meters on ${CLIENT === 'mesh' ? 'MeshClient (fresh token per block)' : 'the coap Agent (one token, library follow-up)'}, ` +
        `loopback [::1], servers in child processes, median of ${RUNS} runs, node ${process.version}, ${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'})`,
    );
    const head =
      'scenario              server   |    KiB/s   ratio | downloads/s | blocks/s |  p50 ms   p99 ms | server CPU us/block  ratio | retrans  failed';
    console.log(head);
    console.log('-'.repeat(head.length));
    for (const { scenario, gw, base } of rows) {
      for (const [name, s] of [
        ['gateway', gw],
        ['baseline', base],
      ]) {
        const isGw = name === 'gateway';
        const ratio = isGw ? `${(gw.kibPerSecond / base.kibPerSecond).toFixed(2)}x` : '1.00x';
        const cpuRatio = isGw ? `${(gw.cpuUsPerBlock / base.cpuUsPerBlock).toFixed(2)}x` : '1.00x';
        console.log(
          `${scenario.name.padEnd(21)} ${name.padEnd(8)} | ${s.kibPerSecond.toFixed(0).padStart(8)} ${ratio.padStart(7)} | ${s.downloadsPerSecond.toFixed(2).padStart(11)} | ` +
            `${s.blocksPerSecond.toFixed(0).padStart(8)} | ${s.p50.toFixed(1).padStart(7)} ${s.p99.toFixed(1).padStart(8)} | ` +
            `${s.cpuUsPerBlock.toFixed(1).padStart(19)} ${cpuRatio.padStart(6)} | ${String(Number.isNaN(s.retransmissions) ? '-' : s.retransmissions).padStart(7)} ${`${s.failed}/${s.downloads}`.padStart(7)}` +
            `${s.reasons ? `  (${s.reasons})` : ''}`,
        );
      }
    }
    const etagsOf = (key) => [...new Set(rows.flatMap((r) => [...r[key].etags]))].join(', ') || (CLIENT === 'coap' ? 'not seen (the coap Agent decodes it as text)' : 'none');
    console.log(`ETag on the blocks: gateway ${etagsOf('gw')}, baseline ${etagsOf('base')} (the firmware resource sets ${image.etag.toString('hex')}: the first 8 bytes of the SHA-256)`);
    if (gatewayStats) {
      console.log(
        `gateway image verifications (block 0 of each download, warm-up included): ${gatewayStats.verifications}, ` +
          `wall time p50 ${gatewayStats.verifyP50?.toFixed(1)} ms p99 ${gatewayStats.verifyP99?.toFixed(1)} ms (one alone on an idle server: ${gatewayStats.verifyAlone?.toFixed(1)} ms); refused ${gatewayStats.refused}, ` +
          `duplicates ${gatewayStats.duplicates}, malformed ${gatewayStats.malformed}`,
      );
    }
    const mib = (b) => (b / 1048576).toFixed(0);
    console.log(`server peak RSS: gateway ${mib(memory.gateway)} MiB, baseline ${mib(memory.baseline)} MiB`);
  } finally {
    await Promise.all(servers.map((s) => s.stop().catch(() => s.kill())));
    rmSync(dir, { recursive: true, force: true });
    clearTimeout(hardCap);
  }
}

if (process.argv[2]) await serve(process.argv[2], process.argv[3]);
else {
  try {
    await main();
  } catch (err) {
    console.error(`firmware bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  }
}
