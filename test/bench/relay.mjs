// Rolling disconnect of many simulated meters (issue 6): the relay lifecycle
// (RelayService + its LevelDB journal) driving ciphered class-70 requests
// through the congestion-controlled mesh client to a MeterFleet on loopback
// with packet loss. Measured side by side in one run:
//
//   ideal:   ceil(meters / concurrency) x (round trips per command) x (median
//            round trip of one ciphered request to a meter, measured first on
//            the same client and meters without loss);
//   rolling: the real run with the configured loss.
//
// Prints the time, the ratio to the ideal, double actuations (any relay that
// operated more than once) and lost commands (a meter without a final
// outcome). Not a test: nothing is asserted, but a double actuation or a lost
// command sets exit code 1.
//
//   node test/bench/relay.mjs [meters=5000] [concurrency=64] [loss=0.05]
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { percentile, procMemory } from './metrics.mjs';

const dist = new URL('../../dist/src/', import.meta.url);
const load = (p) => import(new URL(p, dist).href);
const { MeshClient } = await load('coap/client/client.js');
const { Keyring } = await load('keys/keyring.js');
const { DlmsRelayPort } = await load('relay/dlms-port.js');
const { RelayJournal } = await load('relay/journal.js');
const { RelayService } = await load('relay/service.js');
const { simMeterKeys } = await load('sim/meter-keys.js');
const { MeterFleet } = await load('sim/meters.js');
const { acquireDatabase } = await load('store/database.js');

const METERS = Number(process.argv[2] ?? process.env.BENCH_RELAY_METERS ?? 5000);
const CONCURRENCY = Number(process.argv[3] ?? 64);
const LOSS = Number(process.argv[4] ?? 0.05);
/** A disconnect: read control_state, invoke, read control_state and load voltage back. */
const ROUND_TRIPS_PER_COMMAND = 4;
const SEED = 'bench-relay';

const dir = await mkdtemp(path.join(tmpdir(), 'ami-bench-relay-'));
/** The simulated loss draws from this: off (never below the rate) while the round trip is measured. */
let lossOn = false;
const fleet = new MeterFleet({
  count: METERS,
  gateway: 'coap://127.0.0.1:5683',
  intervalMs: 3_600_000,
  protocol: 'dlms',
  keySeed: SEED,
  readings: false,
  register: false,
  serve: true,
  bind: '127.0.0.1',
  startSpreadMs: 0,
  lossRate: LOSS,
  random: () => (lossOn ? Math.random() : 1),
});
let exitCode = 0;
try {
  await fleet.start();
  const meters = fleet.meters();
  const names = meters.map((m) => m.name);
  const addresses = new Map(meters.map((m) => [m.name, m.address]));
  const lease = await acquireDatabase(path.join(dir, 'db'));
  const keyring = await Keyring.open({ db: lease.db, masterKey: Buffer.alloc(32, 7), gatewaySystemTitle: '4757303030303042', micThreshold: 5 });
  await keyring.applyKeys(
    names.map((name) => simMeterKeys(SEED, name, 1)),
    { full: false },
  );
  const client = await MeshClient.open({ bind: '127.0.0.1' }, { maxConcurrent: CONCURRENCY });
  const port = new DlmsRelayPort({ client, keyring, resolve: (meter) => addresses.get(meter) });

  // The round trip of one ciphered request (get control_state), without loss, one at a time.
  const signal = new AbortController().signal;
  const samples = [];
  for (let i = 0; i < 300; i++) {
    const started = process.hrtime.bigint();
    await port.readControlState(names[i % names.length], signal);
    samples.push(Number(process.hrtime.bigint() - started) / 1e6);
  }
  samples.sort((a, b) => a - b);
  const rttMs = percentile(samples, 0.5);
  const idealMs = Math.ceil(METERS / CONCURRENCY) * ROUND_TRIPS_PER_COMMAND * rttMs;

  lossOn = true;
  const journal = await RelayJournal.open(lease.db);
  const service = await RelayService.open({ journal, port, linkMetrics: () => ({ rssi: -60, snr: 20 }), maxConcurrent: CONCURRENCY });
  const before = new Map(fleet.relayStats().map((r) => [r.name, r.stats.actuations]));
  const started = Date.now();
  const summary = await service.runMany(
    { action: 'disconnect', authorization: { source: 'local', operator: 'bench', role: 'utility-administrator', mfa: true }, notAfter: Date.now() + 3_600_000 },
    names,
    { concurrency: CONCURRENCY },
  );
  let elapsedMs = Date.now() - started;
  // Commands left pending (every retransmission lost): the meter is back, as after a re-registration.
  let pending = summary.results.filter((r) => !r.final).map((r) => r.meter);
  let retried = 0;
  for (let round = 0; round < 3 && pending.length > 0; round++) {
    retried += pending.length;
    const again = (await Promise.all(pending.map((meter) => service.meterAvailable(meter)))).flat();
    pending = again.filter((r) => !r.final).map((r) => r.meter);
  }
  elapsedMs = Date.now() - started;
  const after = fleet.relayStats();
  const doubles = after.filter((r) => r.stats.actuations - (before.get(r.name) ?? 0) > 1).length;
  const disconnected = after.filter((r) => fleet.relay(r.name)?.controlState === 0).length;
  const byCode = {};
  for (const meter of names) {
    const status = await service.status(`${summary.runId}:${meter}`);
    const code = status?.outcome?.code ?? status?.last?.code ?? status?.phase ?? 'missing';
    byCode[code] = (byCode[code] ?? 0) + 1;
  }
  const lost = names.length - (byCode.RELAY_OP_SUCCESS ?? 0);
  const dropped = fleet.meters().reduce((sum, m) => sum + (m.server?.dropped?.requests ?? 0) + (m.server?.dropped?.answers ?? 0), 0);
  console.log(`relay rolling disconnect: ${METERS} meters, concurrency ${CONCURRENCY}, loss ${LOSS * 100}% each way`);
  console.log(`  round trip (ciphered get, no loss): p50 ${rttMs.toFixed(2)} ms, p99 ${percentile(samples, 0.99).toFixed(2)} ms`);
  console.log(`  ideal (meters / concurrency x ${ROUND_TRIPS_PER_COMMAND} round trips): ${(idealMs / 1000).toFixed(1)} s`);
  console.log(`  rolling run: ${(elapsedMs / 1000).toFixed(1)} s = ${(elapsedMs / idealMs).toFixed(2)}x the ideal`);
  console.log(`  outcomes: ${JSON.stringify(byCode)}; left pending after the run and retried: ${retried}`);
  console.log(`  relays disconnected: ${disconnected}/${METERS}; double actuations: ${doubles}; lost commands: ${lost}; datagrams dropped by the simulated loss: ${dropped}`);
  console.log(`  peak RSS ${(procMemory().peak / 1048576).toFixed(0)} MiB (gateway and ${METERS} meters in one process)`);
  if (doubles > 0 || lost > 0) exitCode = 1;
  await service.close();
  await keyring.close();
  await client.close();
  await lease.release();
} finally {
  await fleet.stop();
  await rm(dir, { recursive: true, force: true });
}
process.exit(exitCode);
