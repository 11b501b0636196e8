// The closed-loop load both data-path benchmarks drive: CLIENTS simulated
// meters, each with its own UDP socket, each posting its next CBOR reading to
// /readings as soon as the previous one is acknowledged, for `seconds`.
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { percentile } from './metrics.mjs';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const coap = require('coap');

export async function driveReadings(port, label, { clients, seconds }) {
  const { coapCall, closeAgent } = require(path.join(root, 'dist/src/coap/request.js'));
  const { encodeReading, CONTENT_FORMAT } = require(path.join(root, 'dist/src/coap/reading.js'));
  const agents = Array.from({ length: clients }, () => new coap.Agent({ type: 'udp6' }));
  let done = 0;
  let failed = 0;
  const reasons = new Map();
  const latencies = [];
  const deadline = Date.now() + seconds * 1000;
  const started = Date.now();
  await Promise.all(
    agents.map(async (agent, i) => {
      let seq = 0;
      while (Date.now() < deadline) {
        seq += 1;
        const reading = { id: `${label}-${seq}`, meter: `bench-${i}`, ts: Date.now(), values: [{ obis: '1.0.1.8.0.255', value: seq, unit: 'Wh' }] };
        const t0 = process.hrtime.bigint();
        try {
          const res = await coapCall(`coap://[::1]:${port}/readings`, {
            method: 'POST',
            payload: encodeReading(reading),
            contentFormat: CONTENT_FORMAT.cbor,
            timeoutMs: 10_000,
            agent,
          });
          if (res.code === '2.04') {
            done += 1;
            latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
          } else {
            failed += 1;
            reasons.set(res.code, (reasons.get(res.code) ?? 0) + 1);
          }
        } catch (err) {
          failed += 1;
          const reason = err.code ?? err.message;
          reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
        }
      }
    }),
  );
  const elapsed = (Date.now() - started) / 1000;
  await Promise.all(agents.map((agent) => closeAgent(agent)));
  latencies.sort((a, b) => a - b);
  return { label, perSecond: done / elapsed, done, failed, reasons, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) };
}
