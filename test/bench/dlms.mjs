#!/usr/bin/env node
// DLMS security benchmark, side by side in one run on the same frames:
//   baseline  raw node:crypto AES-128-GCM: IV = system title || counter, AAD = SC || AK, tag check
//   gateway   Keyring.openFrame: frame parsing, key look-up, replay check, the same
//             decryption, xDLMS APDU decoding, and the invocation counter written to
//             LevelDB (group-committed, synced) before the frame is released
// Frames come from simulated meters (general-glo-ciphering, data-notifications in
// the push profile). Rounds alternate so both see the same machine. Not a test:
// nothing asserts timings.
import { createDecipheriv } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = (file) => require(path.join(root, 'dist/src', file));
const { acquireDatabase } = dist('store/database.js');
const { Keyring } = dist('keys/keyring.js');
const { SimulatedCosemMeter } = dist('sim/cosem-meter.js');
const { simMeterKeys, simMeterNames } = dist('sim/meter-keys.js');
const { parseCipheredApdu } = dist('dlms/security.js');

const METERS = Number(process.env.BENCH_METERS ?? 200);
const FRAMES_PER_METER = Number(process.env.BENCH_FRAMES_PER_METER ?? 100);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
/** Frames in flight at once in the gateway variant, as many meters' requests would be. */
const WINDOW = Number(process.env.BENCH_WINDOW ?? 512);

const names = simMeterNames(METERS, 'bench-');
const keys = names.map((name) => simMeterKeys('bench-seed', name, 1));
const keyByTitle = new Map(keys.map((k) => [k.systemTitle, k]));

/** One set of frames per round: replay protection refuses a frame it has seen. */
function makeFrames() {
  const meters = keys.map((k) => new SimulatedCosemMeter(k, { invocationCounter: makeFrames.counter }));
  makeFrames.counter += FRAMES_PER_METER + 1;
  const frames = [];
  for (let i = 0; i < FRAMES_PER_METER; i++) {
    for (const meter of meters) {
      frames.push(
        meter.pushFrame([
          { obis: '1.0.1.8.0.255', value: 1000 + i, unit: 'Wh' },
          { obis: '1.0.32.7.0.255', value: 2301, scaler: -1, unit: 'V' },
        ]),
      );
    }
  }
  return frames;
}
makeFrames.counter = 0;

/** What any receiver must do at least: find the header fields and decrypt with tag check. */
function rawDecrypt(frames) {
  let bytes = 0;
  for (const frame of frames) {
    // general-glo-ciphering with an 8-byte system title: DB 08 <title> <len> SC IC(4) ciphertext tag(12)
    const title = frame.subarray(2, 10);
    const lengthByte = frame[10];
    const start = lengthByte === 0x81 ? 12 : lengthByte === 0x82 ? 13 : 11;
    const sc = frame[start];
    const ic = frame.subarray(start + 1, start + 5);
    const k = keyByTitle.get(title.toString('hex'));
    const decipher = createDecipheriv('aes-128-gcm', k.ek, Buffer.concat([title, ic]), { authTagLength: 12 });
    decipher.setAAD(Buffer.concat([Buffer.from([sc]), k.ak]));
    decipher.setAuthTag(frame.subarray(frame.length - 12));
    const plain = Buffer.concat([decipher.update(frame.subarray(start + 5, frame.length - 12)), decipher.final()]);
    bytes += plain.length;
  }
  return bytes;
}

async function gatewayOpen(keyring, frames, context = {}) {
  let next = 0;
  let opened = 0;
  async function worker() {
    while (next < frames.length) {
      const frame = frames[next++];
      const result = await keyring.openFrame(frame, context);
      if (result.apdu.type === 'data-notification') opened += 1;
    }
  }
  await Promise.all(Array.from({ length: WINDOW }, worker));
  return opened;
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-dlms-'));
const lease = await acquireDatabase(path.join(dir, 'store'));
const keyring = await Keyring.open({ db: lease.db, masterKey: Buffer.alloc(32, 7), gatewaySystemTitle: '414d470000000001', micThreshold: 5 });
await keyring.applyKeys(keys, { full: true });

// Sanity: the raw path decrypts what the gateway opens.
const sample = makeFrames().slice(0, 1);
parseCipheredApdu(sample[0]);
rawDecrypt(sample);

// The machine's speed drifts (shared cores, frequency changes), so the two variants
// alternate in chunks of CHUNK frames and each round's ratio is taken over the sums.
const CHUNK = Number(process.env.BENCH_CHUNK ?? 2000);
const results = { raw: [], gateway: [], ratio: [], withoutReplay: [] };
for (let round = 0; round < ROUNDS; round++) {
  const frames = makeFrames();
  let rawNs = 0;
  let gatewayNs = 0;
  let withoutReplayNs = 0;
  for (let at = 0; at < frames.length; at += CHUNK) {
    const chunk = frames.slice(at, at + CHUNK);
    let t0 = process.hrtime.bigint();
    rawDecrypt(chunk);
    rawNs += Number(process.hrtime.bigint() - t0);
    t0 = process.hrtime.bigint();
    const opened = await gatewayOpen(keyring, chunk);
    gatewayNs += Number(process.hrtime.bigint() - t0);
    if (opened !== chunk.length) throw new Error(`opened ${opened} of ${chunk.length} frames`);
    // The same path without the replay check (so without the counter write), to show what that costs.
    t0 = process.hrtime.bigint();
    await gatewayOpen(keyring, chunk, { replayCheck: false });
    withoutReplayNs += Number(process.hrtime.bigint() - t0);
  }
  results.raw.push(frames.length / (rawNs / 1e9));
  results.gateway.push(frames.length / (gatewayNs / 1e9));
  results.ratio.push(rawNs / gatewayNs);
  results.withoutReplay.push(rawNs / withoutReplayNs);
}
const status = keyring.status();
await keyring.close();
await lease.release();
rmSync(dir, { recursive: true, force: true });

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const raw = median(results.raw);
const gateway = median(results.gateway);
const ratio = median(results.ratio);
const frameBytes = sample[0].length;
console.log(`DLMS security suite 0: ${METERS} meters x ${FRAMES_PER_METER} frames (${frameBytes} bytes each), ${ROUNDS} rounds, median`);
console.log(`  raw node:crypto AES-128-GCM decrypt, tag checked                ${raw.toFixed(0).padStart(8)} frames/s   1.00`);
console.log(
  `  gateway: parse, keys, replay, decrypt, APDU, counter in LevelDB  ${gateway.toFixed(0).padStart(8)} frames/s   ${ratio.toFixed(2)}x of raw`,
);
console.log(`  per round, ratio to raw: ${results.ratio.map((v) => v.toFixed(2)).join(', ')}`);
console.log(
  `  the same without the replay check and its counter write (not a mode dlms decode runs in): ${median(results.withoutReplay).toFixed(2)}x of raw`,
);
console.log(`  replays refused ${status.counters.replays}, MIC failures ${status.counters.micFailures}`);
