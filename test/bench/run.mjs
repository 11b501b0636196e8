#!/usr/bin/env node
// Benchmarks the first data path side by side with its baseline, in one run:
//   baseline  a bare coap server that answers 2.04 at once (what the library costs)
//   core      MeshEndpoint -> HesUplink -> HES simulator, no Node-RED
//   appliance `ami-gateway start` (Node-RED flow mesh in -> hes out) -> HES simulator
// Each variant runs in its own process (the appliance too), the load generator
// in this one, so all three get the same share of the machine.
// Each is driven by the same closed-loop load: C clients (own UDP sockets), each
// posting its next reading as soon as the previous one is acknowledged.
// Prints readings/s and the ratio to the baseline. Not a test: nothing asserts timings.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { driveReadings } from './closed-loop.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 50);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);

function drive(port, label) {
  return driveReadings(port, label, { clients: CLIENTS, seconds: SECONDS });
}

/** Starts test/bench/server.mjs VARIANT in a child process and resolves with its port and a stop function. */
async function serverProcess(variant) {
  const child = spawn(process.execPath, [path.join(root, 'test/bench/server.mjs'), variant], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const match = /port (\d+)/.exec(out);
      if (match) resolve(Number(match[1]));
    });
    child.once('exit', (code) => reject(new Error(`${variant} server exited with ${code}`)));
  });
  return {
    port,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    },
  };
}

async function inChild(variant) {
  const server = await serverProcess(variant);
  try {
    return await drive(server.port, variant);
  } finally {
    await server.stop();
  }
}

async function appliance() {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'ami-bench-'));
  const meshPort = 25683 + Math.floor(Math.random() * 1000);
  const httpPort = 21880 + Math.floor(Math.random() * 1000);
  // As npm start and the systemd unit start it, with the appliance's heap settings.
  const { APPLIANCE_NODE_FLAGS } = require(path.join(root, 'dist/src/appliance/node-flags.js'));
  const child = spawn(process.execPath, [...APPLIANCE_NODE_FLAGS, path.join(root, 'bin/ami-gateway.js'), 'start'], {
    env: { ...process.env, AMI_DATA_DIR: dataDir, AMI_MESH_PORT: String(meshPort), AMI_HTTP_PORT: String(httpPort), AMI_SIM_METERS: '0', AMI_LOG_LEVEL: 'warn' },
    stdio: ['ignore', process.env.BENCH_VERBOSE ? 'inherit' : 'ignore', 'inherit'],
  });
  try {
    for (let i = 0; i < 200; i++) {
      try {
        const res = await fetch(`http://127.0.0.1:${httpPort}/ami/health`);
        if (res.ok && (await res.json()).hesEndpoint) break;
      } catch {
        // not up yet
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return await drive(meshPort, 'appliance');
  } finally {
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const results = [await inChild('baseline'), await inChild('core'), await appliance()];
const base = results[0].perSecond;
console.log(`mesh -> HES data path: ${CLIENTS} closed-loop meters, ${SECONDS}s each, loopback, node ${process.version}, ${os.cpus().length} cores`);
console.log('variant     readings/s   ratio   p50 ms   p99 ms   failed');
for (const r of results) {
  console.log(
    `${r.label.padEnd(10)} ${r.perSecond.toFixed(0).padStart(11)} ${(r.perSecond / base).toFixed(2).padStart(7)} ${r.p50.toFixed(2).padStart(8)} ${r.p99.toFixed(2).padStart(8)} ${String(r.failed).padStart(8)}${r.failed ? `  (${[...r.reasons].map(([k, v]) => `${k}: ${v}`).join(', ')})` : ''}`,
  );
}
