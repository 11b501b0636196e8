#!/usr/bin/env node
// The serial 6LoWPAN radio (issue 8), two measurements in one run.
//
// 1. Meter readings through the radio path against the UDP path, measured
//    side by side (interleaved runs of the same size, same load):
//      radio  MeshClient on a meter-side LowpanTransport, carried by a SimulatedRadio
//             on one end of a socat pty pair; on the other end the gateway's
//             SerialRadioLink, its LowpanTransport and the MeshEndpoint on
//             transport.socket(5683). Every CoAP message is IPHC-compressed, split
//             into 802.15.4 frames (RFC 4944 FRAG1/FRAGN when it does not fit 127
//             bytes), SLIP-encoded, written through the pty, decoded, reassembled.
//      udp    the same MeshEndpoint on a UDP socket on ::1, the same MeshClient on UDP
//             (baseline: what the CoAP stack costs without the radio).
//    Both: the same CBOR readings (a small one that fits one frame, and a ~400-byte
//    one that needs fragmentation), COUNT POSTs to /readings per run, CONCURRENCY in
//    flight (NSTART raised to match: there is one peer), every reading accepted by
//    the uplink listener at once. Prints requests/s, datagrams/s (client side, both
//    ways), radio frames/s (from the gateway transport's counters, both ways),
//    p50/p99 latency, CPU per request (this process, where every part of both paths
//    runs; socat's from /proc), retransmissions; medians of RUNS runs, and the
//    radio/udp ratio. A run still unanswered after 20 s is cut short and its
//    requests counted as failed, so the bench cannot hang.
//    Keep CONCURRENCY x the fragmented datagram (~490 B) under the gateway
//    reassembler's 8 KiB per-peer cap: all requests come from one meter, and above
//    ~16 in flight its fragments are refused over the cap and retransmitted.
//    The pty ignores the baud rate: this is the host-side cost (SLIP, 6LoWPAN,
//    fragmentation, serialport I/O), NOT the radio's air time. A real 250 kbit/s
//    802.15.4 radio carries at most ~200-250 full frames/s.
//
// 2. Reassembly under interleaved fragments from 1,000 peers, with the pure codec
//    (no I/O): each peer sends DATAGRAMS fragmented datagrams of a 400-byte payload,
//    fragments dealt round-robin over all peers (so ~1,000 datagrams are in
//    progress at once), every 10th peer never sends the last fragment of any of its
//    datagrams. Timed: decodeFrame + Reassembler.add for every frame, with the
//    gateway's default caps. Baseline in the same run (interleaved): decodeFrame
//    alone over the same frames. Then one untimed, instrumented pass reads stats()
//    after every fragment for the peak bytes held against maxBytesTotal (and what is
//    still held at the end: the stragglers' datagrams, and orphans, datagrams refused
//    over the cap at one fragment and re-reserved by a later one, which the
//    reassembler now prevents by remembering refusals), and a single
//    peer's abandoned datagrams against maxBytesPerPeer. Heap: heapUsed after a
//    forced GC before and after that pass (the reassembler still alive).
//    With these numbers the total cap IS reached (~1,000 datagrams of 448 B in
//    progress plus the stragglers' exceed 512 KiB): that is the point, memory stays
//    within it and the refusals are counted.
//
// Not a test: nothing asserts timings. Without socat part 1 is skipped (exit 0).
// Run `node scripts/build.mjs` first.
//
//   node test/bench/radio.mjs
//   BENCH_RADIO_COUNT (2000)  BENCH_RADIO_CONCURRENCY (8)  BENCH_RADIO_RUNS (5)  BENCH_REASM_RUNS (7)
import { spawn, spawnSync } from 'node:child_process';
import { EventEmitter, once, setMaxListeners } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import { percentile } from './metrics.mjs';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = path.join(root, 'dist/src');
if (!existsSync(path.join(dist, 'mesh/lowpan-transport.js'))) {
  console.error('radio bench: dist/src/mesh/lowpan-transport.js is missing; run `node scripts/build.mjs` first');
  process.exit(1);
}

const { LowpanTransport } = require(path.join(dist, 'mesh/lowpan-transport.js'));
const { SerialRadioLink } = require(path.join(dist, 'mesh/radio-link.js'));
const { SimulatedRadio } = require(path.join(dist, 'sim/radio.js'));
const { MeshEndpoint } = require(path.join(dist, 'coap/endpoint.js'));
const { settleExchange } = require(path.join(dist, 'coap/exchanges.js'));
const { MeshClient } = require(path.join(dist, 'coap/client/client.js'));
const { UdpTransport } = require(path.join(dist, 'coap/client/transport.js'));
const { CONTENT_FORMAT, encodeReading, readingKey } = require(path.join(dist, 'coap/reading.js'));
const lowpan = require(path.join(dist, 'lowpan/index.js'));

const COUNT = Number(process.env.BENCH_RADIO_COUNT ?? 2000);
const CONCURRENCY = Number(process.env.BENCH_RADIO_CONCURRENCY ?? 8);
const RUNS = Number(process.env.BENCH_RADIO_RUNS ?? 5);
const REASM_RUNS = Number(process.env.BENCH_REASM_RUNS ?? 7);
const WARMUP = 500;
/** A run that takes longer than this is cut short (its unanswered requests count as failed), so the bench cannot hang. */
const RUN_DEADLINE_MS = 20_000;

const GATEWAY_MAC = '00124b0000000001';
const METER_MAC = '00124b00000000aa';
const PAN = 0xabcd;
const CONTEXTS = ['2001:db8:1::/64'];

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

// Forced GC without --expose-gc, for the heap figures only.
v8.setFlagsFromString('--expose-gc');
const gc = globalThis.gc ?? vm.runInNewContext('gc');

// ---------------------------------------------------------------------------------------------
// Cleanup: everything opened is closed in reverse order, also on SIGINT/SIGTERM.
// ---------------------------------------------------------------------------------------------
const closers = [];
let cleaning;
/** Runs the closers in reverse order; one that hangs is given up on after 2 s so the rest (socat) still run. */
function cleanup() {
  cleaning ??= (async () => {
    for (const close of closers.splice(0).reverse()) {
      let timer;
      try {
        await Promise.race([close(), new Promise((resolve) => (timer = setTimeout(resolve, 2000)))]);
      } catch {
        // going on with the rest
      } finally {
        clearTimeout(timer);
      }
    }
  })();
  return cleaning;
}
/** The socat child, killed at exit whatever happened before. */
let socatChild;
function killSocat() {
  if (socatChild && socatChild.exitCode === null && socatChild.signalCode === null) socatChild.kill('SIGTERM');
}
process.on('exit', killSocat);
/** Set by SIGINT/SIGTERM: the runs stop at the next check and nothing more is printed. */
let interrupted = false;
class Interrupted extends Error {}
function checkInterrupted() {
  if (interrupted) throw new Interrupted('interrupted');
}
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    interrupted = true;
    console.error(`radio bench: ${signal}, cleaning up`);
    const force = setTimeout(() => process.exit(130), 8000);
    force.unref();
    cleanup().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------------------------------
// Part 1: radio path vs UDP path
// ---------------------------------------------------------------------------------------------

/** socat pty pair; resolves once socat logged that both ptys are there. */
async function startSocat(first, second) {
  const child = spawn('socat', ['-d', '-d', `pty,raw,echo=0,link=${first}`, `pty,raw,echo=0,link=${second}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  socatChild = child;
  const exited = once(child, 'exit').catch(() => undefined);
  closers.push(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  });
  let log = '';
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socat did not start within 10 s: ${log}`)), 10_000);
    child.stderr.on('data', (chunk) => {
      log += chunk.toString();
      if (log.includes('starting data transfer loop')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`socat exited (${code}) before the ptys were ready: ${log}`));
    });
  });
  // Keep reading socat's stderr so a chatty socat never blocks on a full pipe.
  child.stderr.resume();
  return child;
}

/** A DatagramTransport that counts what passes; both client paths get the same wrapper. */
function counted(transport) {
  const counts = { out: 0, in: 0 };
  return {
    counts,
    transport: {
      get local() {
        return transport.local;
      },
      send(datagram, peer) {
        counts.out += 1;
        transport.send(datagram, peer);
      },
      onDatagram(receiver) {
        return transport.onDatagram((datagram, peer) => {
          counts.in += 1;
          receiver(datagram, peer);
        });
      },
      close: () => transport.close(),
    },
  };
}

async function startEndpoint(options) {
  // The node's defaults (15 s accept timeout, 30 s retry after); the reading is accepted at once.
  const endpoint = new MeshEndpoint({ acceptTimeoutMs: 15_000, retryAfterSeconds: 30, ...options });
  endpoint.onUplink(({ exchangeId, reading }) => {
    settleExchange(exchangeId, readingKey(reading.meter, reading.id), { accepted: true });
  });
  await endpoint.start();
  closers.push(() => endpoint.stop());
  return endpoint;
}

function clientOptions() {
  return { maxConcurrent: CONCURRENCY, transmission: { nstart: CONCURRENCY } };
}

/** The radio path: socat, link, simulated radio, the two transports, endpoint, client. */
async function radioPath(dir) {
  const hostPath = path.join(dir, 'radio-host');
  const radioPathName = path.join(dir, 'radio-sim');
  socatPid = (await startSocat(hostPath, radioPathName)).pid;

  const link = new SerialRadioLink({ path: hostPath, baudRate: 115_200 });
  link.on('error', (err) => console.error(`radio bench: link: ${err.message}`));
  link.on('down', ({ reason }) => {
    if (cleaning === undefined) console.error(`radio bench: link down: ${reason}`);
  });
  await link.open();
  closers.push(() => link.close());
  if (!link.isUp) throw new Error(`the serial radio link did not come up on ${hostPath} (state ${link.state})`);

  const radio = await SimulatedRadio.open({ path: radioPathName });
  radio.on('error', (err) => console.error(`radio bench: simulated radio: ${err.message}`));
  closers.push(() => radio.close());
  // The simulated radio hands Buffers and takes MAC frames; LowpanTransport wants { frame } events.
  const meterLink = new EventEmitter();
  meterLink.send = (frame) => radio.send(frame);
  radio.on('frame', (frame) => meterLink.emit('frame', { frame }));

  // Why a frame was refused by either end (LowpanTransport counts only that it was), for the summary line.
  const refused = new Map();
  const noteRefusal = (side, err) => {
    const key = `${side}: ${err?.code ?? ''} ${err?.message ?? String(err)}`.slice(0, 160);
    refused.set(key, (refused.get(key) ?? 0) + 1);
    throw err;
  };
  const gatewayLink = { send: (frame) => link.send(frame).catch((err) => noteRefusal('gateway', err)), on: (e, l) => link.on(e, l), off: (e, l) => link.off(e, l) };
  const sendToHost = meterLink.send;
  meterLink.send = (frame) => sendToHost(frame).catch((err) => noteRefusal('meter', err));

  const gateway = new LowpanTransport({ link: gatewayLink, mac: GATEWAY_MAC, panId: PAN, contexts: CONTEXTS });
  const meter = new LowpanTransport({ link: meterLink, mac: METER_MAC, panId: PAN, contexts: CONTEXTS });
  closers.push(() => gateway.close(), () => meter.close());

  await startEndpoint({ bind: '::', port: 5683, socket: () => gateway.socket(5683) });
  const wrapped = counted(meter.transport());
  const client = new MeshClient(wrapped.transport, clientOptions());
  closers.push(() => client.close());
  return { name: 'radio', client, counts: wrapped.counts, peer: { address: gateway.address, port: 5683 }, gateway, meter, link, radio, refused };
}

/** The UDP path: the same endpoint and client on ::1. */
async function udpPath() {
  const endpoint = await startEndpoint({ bind: '::1', port: 0 });
  const wrapped = counted(await UdpTransport.open({ bind: '::1' }));
  const client = new MeshClient(wrapped.transport, clientOptions());
  closers.push(() => client.close());
  return { name: 'udp', client, counts: wrapped.counts, peer: { address: '::1', port: endpoint.port } };
}

/** Readings of roughly `size` bytes of CBOR (ids unique per run). */
function readingOf(size, label, i) {
  const values = [{ obis: '1.0.1.8.0.255', value: i }];
  const reading = { id: `${label}${i}`, meter: 'm1', ts: 1_700_000_000_000 + i, values };
  for (let k = 0; encodeReading(reading).length < size && values.length < 64; k++) {
    values.push({ obis: `1.0.${1 + (k % 99)}.8.${k % 10}.255`, value: 1000 + k * 7 + i, unit: 'Wh' });
  }
  return reading;
}

let runSeq = 0;
/** socat's CPU time so far, in ms (utime + stime from /proc), or NaN where there is no /proc. */
let socatPid;
const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;
function socatCpuMs() {
  try {
    const stat = readFileSync(`/proc/${socatPid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/** One closed-loop run: `count` POSTs, CONCURRENCY in flight; whatever is unanswered after RUN_DEADLINE_MS is aborted. */
async function drive(pathObj, size, count) {
  checkInterrupted();
  const label = `${pathObj.name[0]}${(runSeq += 1).toString(36)}-`;
  const payloads = Array.from({ length: count }, (_, i) => encodeReading(readingOf(size, label, i)));
  const before = { client: pathObj.client.counters(), counts: { ...pathObj.counts }, frames: frameCount(pathObj), socat: pathObj.gateway ? socatCpuMs() : 0 };
  const latencies = [];
  const reasons = new Map();
  const signal = AbortSignal.timeout(RUN_DEADLINE_MS);
  setMaxListeners(count + CONCURRENCY, signal); // every waiting request listens on it
  let next = 0;
  let ok = 0;
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) {
        const payload = payloads[next++];
        const t0 = performance.now();
        try {
          const res = await pathObj.client.request({ peer: pathObj.peer, method: 'POST', path: '/readings', payload, contentFormat: CONTENT_FORMAT.cbor, signal });
          if (res.code === '2.04') {
            ok += 1;
            latencies.push(performance.now() - t0);
          } else reasons.set(res.code, (reasons.get(res.code) ?? 0) + 1);
        } catch (err) {
          const reason = signal.aborted ? `unanswered after ${RUN_DEADLINE_MS / 1000} s` : (err.code ?? err.message);
          reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
        }
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const after = pathObj.client.counters();
  latencies.sort((a, b) => a - b);
  const datagrams = pathObj.counts.out - before.counts.out + (pathObj.counts.in - before.counts.in);
  const frames = frameCount(pathObj) - before.frames;
  return {
    payloadBytes: payloads[0].length,
    ok,
    failed: count - ok,
    reasons,
    seconds,
    rps: ok / seconds,
    datagramsPerSecond: datagrams / seconds,
    frames,
    framesPerSecond: frames / seconds,
    framesPerRequest: frames / count,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    retransmissions: after.retransmissions - before.client.retransmissions,
    cpuUsPerRequest: (cpu.user + cpu.system) / count,
    socatUsPerRequest: pathObj.gateway ? ((socatCpuMs() - before.socat) * 1000) / count : NaN,
  };
}

/** Frames over the pty, both directions (the gateway sends and receives every one of them). */
function frameCount(pathObj) {
  return pathObj.gateway ? pathObj.gateway.counters.framesIn + pathObj.gateway.counters.framesOut : 0;
}

async function partOne() {
  if (spawnSync('socat', ['-V'], { stdio: 'ignore' }).status !== 0) {
    console.log('radio bench part 1 (radio path vs UDP): skipped: socat is not installed (apt-get install socat)');
    return;
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-radio-'));
  closers.push(() => rmSync(dir, { recursive: true, force: true }));
  const radio = await radioPath(dir);
  const udp = await udpPath();

  const variants = [
    { name: 'small (1 frame)', size: 40 },
    { name: 'fragmented', size: 400 },
  ];
  // Warm-up, not counted: every path with every payload before anything is measured.
  for (const variant of variants) for (const p of [radio, udp]) await drive(p, variant.size, WARMUP);
  const rows = [];
  for (const variant of variants) {
    const results = { radio: [], udp: [] };
    for (let r = 0; r < RUNS; r++) {
      // Alternate which goes first, so neither always runs on a warmer machine.
      const order = r % 2 === 0 ? [radio, udp] : [udp, radio];
      for (const p of order) results[p.name].push(await drive(p, variant.size, COUNT));
    }
    rows.push({ variant, results });
  }

  checkInterrupted();
  // Nothing lost on the wire: the pty is lossless, so frames out of one transport are frames into the other.
  const g = radio.gateway.counters;
  const m = radio.meter.counters;
  const malformed = Object.entries({ ...g.malformed }).map(([k, v]) => `${k}=${v}`).join(' ') || 'none';

  console.log('');
  console.log(
    `6LoWPAN radio path (socat pty, SLIP, SerialRadioLink, LowpanTransport) vs UDP on ::1: POST /readings (CBOR), ` +
      `${COUNT} requests per run, ${CONCURRENCY} in flight, median of ${RUNS} runs, node ${process.version}, ${os.cpus().length} cores`,
  );
  console.log('NOTE: the pty ignores the baud rate: host-side cost only (SLIP, 6LoWPAN, fragmentation, serial I/O), not air time');
  console.log('      (a 250 kbit/s 802.15.4 radio carries at most ~200-250 full frames/s).');
  const head = 'payload              path   CBOR B |     req/s   ratio | datagrams/s |  frames/s  frames/req |  p50 ms   p99 ms | CPU us/req: node  socat | retrans  failed';
  console.log(head);
  console.log('-'.repeat(head.length));
  for (const { variant, results } of rows) {
    const rad = summarise(results.radio);
    const base = summarise(results.udp);
    for (const [name, s] of [
      ['radio', rad],
      ['udp', base],
    ]) {
      console.log(
        `${variant.name.padEnd(20)} ${name.padEnd(5)} ${String(s.payloadBytes).padStart(7)} | ${s.rps.toFixed(0).padStart(9)} ${(name === 'radio' ? `${(rad.rps / base.rps).toFixed(2)}x` : '1.00x').padStart(7)} | ` +
          `${s.datagramsPerSecond.toFixed(0).padStart(11)} | ${(name === 'radio' ? s.framesPerSecond.toFixed(0) : '-').padStart(9)} ${(name === 'radio' ? s.framesPerRequest.toFixed(2) : '-').padStart(11)} | ` +
          `${s.p50.toFixed(2).padStart(7)} ${s.p99.toFixed(2).padStart(8)} | ${s.cpuUsPerRequest.toFixed(0).padStart(16)} ${(name === 'radio' ? s.socatUsPerRequest.toFixed(0) : '-').padStart(6)} | ${String(s.retransmissions).padStart(7)} ${String(s.failed).padStart(7)}${s.reasons ? `  (${s.reasons})` : ''}`,
      );
    }
  }
  console.log(
    `radio counters over the whole run: gateway framesIn ${g.framesIn} / meter framesOut ${m.framesOut}, gateway framesOut ${g.framesOut} / meter framesIn ${m.framesIn}, ` +
      `malformed ${malformed}, sendFailures gateway ${g.sendFailures} meter ${m.sendFailures}, serial link ${JSON.stringify(radio.link.stats)} ${radio.link.state}, ` +
      `gateway reassembly ${JSON.stringify(radio.gateway.reassemblyStats())}`,
  );
  for (const [reason, count] of radio.refused) console.log(`  frames refused by the link: ${count} x ${reason}`);
}

/** Medians of the runs; counts summed. */
function summarise(runs) {
  const reasons = new Map();
  for (const run of runs) for (const [k, v] of run.reasons) reasons.set(k, (reasons.get(k) ?? 0) + v);
  return {
    payloadBytes: runs[0].payloadBytes,
    rps: median(runs.map((r) => r.rps)),
    datagramsPerSecond: median(runs.map((r) => r.datagramsPerSecond)),
    framesPerSecond: median(runs.map((r) => r.framesPerSecond)),
    framesPerRequest: median(runs.map((r) => r.framesPerRequest)),
    p50: median(runs.map((r) => r.p50)),
    p99: median(runs.map((r) => r.p99)),
    cpuUsPerRequest: median(runs.map((r) => r.cpuUsPerRequest)),
    socatUsPerRequest: median(runs.map((r) => r.socatUsPerRequest)),
    retransmissions: runs.reduce((a, r) => a + r.retransmissions, 0),
    failed: runs.reduce((a, r) => a + r.failed, 0),
    reasons: [...reasons].map(([k, v]) => `${k} ${v}`).join(', '),
  };
}

// ---------------------------------------------------------------------------------------------
// Part 2: reassembly of interleaved fragments from 1,000 peers
// ---------------------------------------------------------------------------------------------

const PEERS = 1000;
const DATAGRAMS = 4;
const PAYLOAD_BYTES = 400;
const STRAGGLER_EVERY = 10;
/** The Reassembler's defaults (src/lowpan/frag.ts), which LowpanTransport uses unless configured; passed explicitly so the figures printed are the caps enforced. */
const CAPS = { maxBytesTotal: 512 * 1024, maxBytesPerPeer: 8 * 1024 };

function peerMac(i) {
  return `00124b01${i.toString(16).padStart(8, '0')}`;
}

/** All frames of all peers, dealt round-robin; stragglers never send the last fragment of a datagram. */
function interleavedFrames() {
  const gatewayMac = lowpan.parseMacAddress(GATEWAY_MAC);
  const gatewayLinkLocal = lowpan.linkLocalAddress(gatewayMac);
  const queues = [];
  let expectedComplete = 0;
  let fragmentsPerDatagram = 0;
  for (let p = 0; p < PEERS; p++) {
    const mac = lowpan.parseMacAddress(peerMac(p));
    const straggler = p % STRAGGLER_EVERY === STRAGGLER_EVERY - 1;
    const queue = [];
    let sequence = 0;
    for (let d = 0; d < DATAGRAMS; d++) {
      const payload = Buffer.alloc(PAYLOAD_BYTES, (p * 7 + d) & 0xff);
      const frames = lowpan.encodeDatagram({
        src: lowpan.linkLocalAddress(mac),
        dst: gatewayLinkLocal,
        srcPort: 0xc000 + d,
        dstPort: 5683,
        payload,
        srcMac: mac,
        dstMac: gatewayMac,
        panId: PAN,
        sequenceNumber: sequence,
        datagramTag: (p * DATAGRAMS + d + 1) & 0xffff,
      });
      sequence = (sequence + frames.length) & 0xff;
      fragmentsPerDatagram = frames.length;
      if (straggler) frames.pop();
      else expectedComplete += 1;
      queue.push(...frames);
    }
    queues.push(queue);
  }
  const frames = [];
  for (let round = 0; frames.length < queues.reduce((a, q) => a + q.length, 0); round++) {
    for (const queue of queues) if (round < queue.length) frames.push(queue[round]);
  }
  return { frames, expectedComplete, fragmentsPerDatagram };
}

function decodeOnly(frames) {
  let fragments = 0;
  const t0 = performance.now();
  for (const frame of frames) {
    const { lowpan: content } = lowpan.decodeFrame(frame);
    if (content.kind === 'fragment') fragments += 1;
  }
  return { ms: performance.now() - t0, fragments };
}

function decodeAndReassemble(frames, track) {
  const reassembler = new lowpan.Reassembler(CAPS);
  let peak = 0;
  let peakInProgress = 0;
  // Tracked pass only: per datagram (sender, tag), whether a fragment was refused over the cap and
  // whether one was taken in after that (a reservation for a datagram that can no longer complete).
  const refused = new Set();
  const orphans = new Map();
  const t0 = performance.now();
  for (const frame of frames) {
    const { lowpan: content } = lowpan.decodeFrame(frame);
    if (content.kind !== 'fragment') continue;
    const outcome = reassembler.add(content.fragment);
    if (track) {
      const s = reassembler.stats();
      if (s.bytesHeld > peak) peak = s.bytesHeld;
      if (s.inProgress > peakInProgress) peakInProgress = s.inProgress;
      const key = `${lowpan.formatMacAddress(content.fragment.src)}/${content.fragment.datagramTag}`;
      if (outcome.status === 'dropped' && outcome.reason === 'over-cap') refused.add(key);
      else if (outcome.status === 'pending' && refused.has(key)) orphans.set(key, content.fragment.datagramSize);
    }
  }
  return { ms: performance.now() - t0, reassembler, peak, peakInProgress, orphans };
}

/** One peer that abandons `count` datagrams: what it may hold against the per-peer cap. */
function perPeerCap(count) {
  const reassembler = new lowpan.Reassembler(CAPS);
  const mac = lowpan.parseMacAddress(peerMac(0xffff));
  const gatewayMac = lowpan.parseMacAddress(GATEWAY_MAC);
  for (let d = 0; d < count; d++) {
    const [first] = lowpan.encodeDatagram({
      src: lowpan.linkLocalAddress(mac),
      dst: lowpan.linkLocalAddress(gatewayMac),
      srcPort: 0xc000,
      dstPort: 5683,
      payload: Buffer.alloc(PAYLOAD_BYTES, d),
      srcMac: mac,
      dstMac: gatewayMac,
      panId: PAN,
      datagramTag: d + 1,
    });
    reassembler.add(lowpan.decodeFrame(first).lowpan.fragment);
  }
  return reassembler.stats();
}

function partTwo() {
  checkInterrupted();
  const { frames, expectedComplete, fragmentsPerDatagram } = interleavedFrames();
  const firstFragment = lowpan.decodeFrame(frames[0]).lowpan.fragment;
  const datagramSize = firstFragment.datagramSize;

  decodeOnly(frames); // warm-up
  decodeAndReassemble(frames, false);
  const base = [];
  const reasm = [];
  let fragments = 0;
  for (let r = 0; r < REASM_RUNS; r++) {
    const d = decodeOnly(frames);
    fragments = d.fragments;
    base.push(d.ms);
    reasm.push(decodeAndReassemble(frames, false).ms);
  }
  checkInterrupted();
  const baseMs = median(base);
  const reasmMs = median(reasm);

  gc();
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  const tracked = decodeAndReassemble(frames, true);
  gc();
  gc();
  const heapAfter = process.memoryUsage().heapUsed;
  const stats = tracked.reassembler.stats();
  const perPeer = perPeerCap(30);

  const n = (v) => v.toLocaleString('en-US');
  console.log('');
  console.log(
    `6LoWPAN reassembly, pure codec: ${PEERS} peers x ${DATAGRAMS} datagrams (${PAYLOAD_BYTES} B payload, ${datagramSize} B uncompressed, ` +
      `${fragmentsPerDatagram} fragments each), ` +
      `round-robin over all peers; every ${STRAGGLER_EVERY}th peer never sends its datagrams' last fragment; median of ${REASM_RUNS} runs`,
  );
  const head2 = 'variant                          frames |    ms   fragments/s   ratio';
  console.log(head2);
  console.log('-'.repeat(head2.length));
  console.log(`decodeFrame only (baseline)   ${String(frames.length).padStart(9)} | ${baseMs.toFixed(1).padStart(5)} ${n(Math.round(fragments / (baseMs / 1000))).padStart(13)}   1.00x`);
  console.log(
    `decodeFrame + Reassembler.add ${String(frames.length).padStart(9)} | ${reasmMs.toFixed(1).padStart(5)} ${n(Math.round(fragments / (reasmMs / 1000))).padStart(13)} ${`${(baseMs / reasmMs).toFixed(2)}x`.padStart(7)}`,
  );
  console.log(
    `datagrams completed ${n(stats.completed)} of ${n(expectedComplete)} sent whole (${n(PEERS / STRAGGLER_EVERY * DATAGRAMS)} never finished), ` +
      `droppedOverCap ${n(stats.droppedOverCap)}, badFragments ${stats.badFragments}, badDatagrams ${stats.badDatagrams}, timedOut ${stats.timedOut}`,
  );
  console.log(
    `bytes held: peak ${n(tracked.peak)} of maxBytesTotal ${n(CAPS.maxBytesTotal)} (${((100 * tracked.peak) / CAPS.maxBytesTotal).toFixed(1)} %), ` +
      `peak ${n(tracked.peakInProgress)} datagrams in progress`,
  );
  const orphanBytes = [...tracked.orphans.values()].reduce((a, b) => a + b, 0);
  console.log(
    `held at the end (until the 60 s timeout): ${n(stats.bytesHeld)} B in ${n(stats.inProgress)} datagrams: ${n(stats.inProgress - tracked.orphans.size)} abandoned by the stragglers, ` +
      `${n(tracked.orphans.size)} (${n(orphanBytes)} B) orphans: refused over the cap at one fragment, then re-reserved by a later one, so they can never complete`,
  );
  console.log(
    `per-peer cap: one peer abandoning 30 datagrams of ${datagramSize} B holds ${n(perPeer.bytesHeld)} of maxBytesPerPeer ${n(CAPS.maxBytesPerPeer)} ` +
      `(${perPeer.inProgress} in progress, ${perPeer.droppedOverCap} refused over cap)`,
  );
  console.log(
    `heap (after forced GC): ${(heapBefore / 1048576).toFixed(1)} MiB before, ${(heapAfter / 1048576).toFixed(1)} MiB after with the reassembler alive ` +
      `(+${((heapAfter - heapBefore) / 1024).toFixed(0)} KiB for ${n(stats.bytesHeld)} B held in ${stats.inProgress} datagrams)`,
  );
  tracked.reassembler = undefined;
}

let exitCode = 0;
try {
  await partOne();
  partTwo();
} catch (err) {
  if (interrupted) await new Promise(() => undefined); // the signal handler exits once cleanup is done
  console.error(`radio bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  exitCode = 1;
} finally {
  await cleanup();
}
process.exitCode = exitCode;
