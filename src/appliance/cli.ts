import { parseArgs } from 'node:util';
import { isIP } from 'node:net';
import path from 'node:path';
import { ConfigError, loadConfig, parseInteger } from './config.js';
import { packageVersion } from './package-info.js';
import { missingApplianceNodeFlags } from './node-flags.js';
import type { HealthSnapshot } from './health.js';
import { parseCoapUrl } from '../coap/url.js';

/** Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error, 3 gateway unreachable. */
export const EXIT = { ok: 0, failure: 1, usage: 2, unreachable: 3 } as const;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

const USAGE = `ami-gateway: edge gateway for smart-meter (AMI) networks

Usage:
  ami-gateway start                         run the gateway (configured by AMI_* environment variables)
  ami-gateway status [--json] [--url URL]   print the health of a running gateway
  ami-gateway sim hes --port P [--bind ADDR] [--record FILE] [--meters N] [--prefix NAME] [--key-seed SEED]
                    [--trust-anchor-out FILE] [--delay MS] [--drop-records]
                                            run a HES simulator (with key management for N simulated meters;
                                            --trust-anchor-out writes the root CA the gateway must trust;
                                            --delay / --drop-records: gray failure, batches answered late or
                                            never while health probes answer at once; switch it at run time
                                            from loopback with CoAP PUT /sim/gray, CBOR {delayMs, dropRecords})
                    [--commands-for GW] [--command-every SECONDS]
                                            signed commands (docs/hes-commands.md): queue a read-relay-state
                                            command for gateway GW every SECONDS (60 by default)
  ami-gateway sim meters --count N --gateway coap://[::1]:5683 [--interval SECONDS] [--prefix NAME] [--record FILE]
                    [--protocol dlms|plain] [--key-seed SEED] [--lifetime SECONDS] [--no-register] [--no-serve]
                    [--bind ADDR] [--faults weld:ID,obstruction:ID,lowcap:ID,offline:ID,tamper:ID] [--loss RATE]
                                            run a simulated meter fleet (ciphered DLMS frames by default); each
                                            meter registers with the gateway's resource directory (lifetime 3600 s
                                            by default) before it reports, and serves /status (observable), /lp,
                                            /fw and /relay over CoAP on its own port (bound to ADDR), and with DLMS
                                            POST /dlms (ciphered get/set/action: the disconnect relay, class 70);
                                            --faults: relay faults per meter (ID: endpoint name or 1-based number);
                                            --loss: fraction 0..1 of requests, and of answers, dropped at random
  ami-gateway dlms decode --hex FRAME [--ek HEX --ak HEX] [--system-title HEX] [--json]
                                            decode (and decrypt) a captured DLMS/COSEM frame, offline
  ami-gateway keys status [--json]          key store of the running gateway: meters, epoch, fingerprints
  ami-gateway keys sync [--force] [--json]  sync meter keys from the HES now (--force: full resync)
                                            (keys: --url http://HOST:PORT, --user NAME with AMI_ADMIN_PASSWORD,
                                             or AMI_ADMIN_TOKEN, when the editor has admin users)
  ami-gateway hes status [--json]           HES sites: the active one, state, latency and last probe of each,
                                            failovers, failbacks, last gray failure (--url, --user as for keys;
                                            exit 0 healthy, 1 degraded, 3 unreachable)
  ami-gateway mesh meters [--json]          meters registered with the gateway's resource directory, with link metrics
  ami-gateway mesh topology [--json]        hop counts; meters beyond 8 hops or below -85 dBm
  ami-gateway queue stats [--json]          the outbox towards the HES: records, bytes and oldest age per class,
                                            dropped (budget), expired (TTL) and dead letters
  ami-gateway queue peek [--limit N] [--class alarm|event|metrology] [--meter M] [--dead] [--json]
                                            the next records to send (or the dead letters), without taking them
                                            (queue: --url and --user as for keys; --store DIR reads a stopped
                                             gateway's store directly, e.g. data/ami-store)
  ami-gateway backhaul status [--mgmt ADDR] [--password-file FILE] [--json] [--timeout SECONDS]
                                            the OpenVPN tunnel to the HES, from OpenVPN's management interface
                                            (ADDR: a unix socket path or host:port; default AMI_BACKHAUL_MGMT,
                                            else /run/openvpn/ami.sock); exit 0 up, 1 down, 3 unreachable
  ami-gateway backhaul hold-release [...]   let an OpenVPN started with --management-hold connect
  ami-gateway backhaul restart [soft|hard] [...]
                                            restart the tunnel: soft (SIGUSR1, the default) or hard (SIGHUP)
                                            (backhaul: while the running gateway holds the management interface,
                                             through its admin API; --url and --user as for keys)
  ami-gateway operators add --name N --role utility-administrator|field-technician [--json]
                                            add a local operator; prints the TOTP secret and otpauth URI once
  ami-gateway operators list [--json]       local operators: role, enabled, last accepted code (no secrets)
  ami-gateway operators remove|disable|enable --name N
  ami-gateway operators verify --name N --totp CODE [--json]
                                            check an operator's TOTP code (exit 0 accepted, 1 refused; the code
                                             is used up). operators: offline, on AMI_DATA_DIR/operators.json
  ami-gateway relay disconnect|reconnect (--meter ID | --meters ID,ID,... | --group TAG=VALUE) --operator NAME
                    --totp CODE [--id ID] [--valid SECONDS] [--concurrency N] [--json]
                                            operate the meters' relays through the running gateway (a local
                                            operator and the current TOTP code; --group e.g. feeder=F12); one
                                            line per meter and a summary by code; exit 0 all RELAY_OP_SUCCESS,
                                            1 a failure or refusal, 4 some still waiting (DEFERRED,
                                            COMM_TIMEOUT_ERR: the gateway keeps them and runs them later)
  ami-gateway relay status (--meter ID | --command ID | --run ID | --group TAG=VALUE) [--json]
                                            relay commands (phase, last code, operator) and standing alarms
  ami-gateway alarms list [--meter ID] [--json]
                                            standing relay alarms (TAMPER, RELAY_WELD_DETECTED)
  ami-gateway alarms reset --meter ID --code TAMPER|RELAY_WELD_DETECTED --operator NAME --totp CODE [--json]
                                            clear an alarm (TAMPER: also the meter's register; a standing TAMPER
                                            refuses reconnects); exit 0 cleared, 1 refused or no such alarm
                                            (relay, alarms: --url and --user as for keys)
  ami-gateway firewall render|apply|verify|remove [--allow-hes ADDR]... [--allow-mesh PREFIX]... [--allow-mgmt PREFIX]...
                    [--mesh-port N] [--admin-port N] [--backhaul-port N] [--dlms-port N] [--openvpn-mgmt-port N] [--json]
                                            the kernel allowlists (nftables table inet ami_gateway, no other table
                                            touched): render prints the nft script (a dry run, needs no nft); apply
                                            replaces the table atomically and reads it back; verify compares the
                                            kernel's table with the configuration (exit 1 on drift, listing the
                                            differences); remove deletes the table (exit 0 also when absent).
                                            Lists: each option repeatable and comma-separated; defaults
                                            AMI_ALLOW_HES (else the IP hosts of AMI_HES_PRIMARY/SECONDARY),
                                            AMI_ALLOW_MESH (empty: every source, as in-process, with a warning),
                                            AMI_ALLOW_MGMT (empty: the editor from loopback only;
                                            loopback is always accepted). Ports: mesh AMI_MESH_PORT (5683), admin
                                            AMI_HTTP_PORT (1880), DLMS 4059 (TCP and UDP), OpenVPN management the
                                            port of a host:port AMI_BACKHAUL_MGMT, backhaul CoAP only when given.
                                            Exit 1 nft refused the ruleset (rolled back) or drift, 2 a bad address,
                                            3 no nft, or not root / without CAP_NET_ADMIN (the in-process
                                            allowlists keep working)
  ami-gateway lowpan decode --hex FRAME [--json] [--fcs] [--context ID=PREFIX]...
                                            decode an 802.15.4 frame (a sniffer capture): MAC header, ipv6.src/dst,
                                            udp.srcPort/dstPort and the payload as hex; exit 1 for a malformed frame
                                            (its error code and byte offset)
  ami-gateway lowpan encode --src IPV6 --dst IPV6 --sport N --dport N --payload HEX --src-mac HEX --dst-mac HEX --pan HEX
                    [--context ID=PREFIX]... [--fcs]
                                            encode a UDP datagram as 6LoWPAN (RFC 6282 IPHC) frames, one per line
                                            (RFC 4944 fragments when it does not fit one frame)
  ami-gateway optical ident --port PATH [--baud 9600] [--user NAME] [--user-id N] [--password TEXT] [--json]
  ami-gateway optical read --port PATH --table N|STn|MTn [--offset N --count N] [same options]
                                            a session with a meter through its optical port (ANSI C12.18):
                                            identify, negotiate, logon, security (--password or
                                            AMI_OPTICAL_PASSWORD), read, logoff, terminate; ident also decodes
                                            ST1 and ST5. Exit 1 the meter refused or the link failed (its code),
                                            3 the port cannot be opened
  ami-gateway firmware list|verify [--image ID] [--images DIR] [--json]
                                            the signed firmware images (AMI_FIRMWARE_DIR, default
                                            $AMI_DATA_DIR/firmware) checked against AMI_FIRMWARE_TRUST_ANCHORS:
                                            signature, chain, size, SHA-256; verify exits 1 when an image is
                                            quarantined (with its reason)
  ami-gateway firmware rollout [--comm V] [--metro V] (--meter ID | --meters ID,ID,... | --group TAG=VALUE)
                    [--concurrency N] [--id ID] [--wait] [--json]
                                            update the meters' firmware through the running gateway (at least one
                                            of --comm, --metro; the gateway plans each meter's steps from its own
                                            images and refuses incompatible pairs); --id makes a repeat return the
                                            same rollout; --wait follows it to the end with a progress line when the
                                            counts change, then a table per meter; exit 0 every meter
                                            FW_UPDATE_SUCCESS or FW_ALREADY_CURRENT (without --wait: accepted),
                                            1 some failed or refused
  ami-gateway firmware status [ROLLOUT_ID] [--json]
                                            the rollouts, newest first, or one rollout's meters (phase, step,
                                            progress %, outcome and reason)
                                            (firmware rollout, status: --url and --user as for keys)
  ami-gateway hash-password                 read a password on stdin, print its bcrypt hash for adminUsers
  ami-gateway --version

Exit codes: 0 ok, 1 failure (status: gateway degraded), 2 usage or configuration error, 3 gateway unreachable
(firewall: 3 no nft or no permission).
See README.md for the environment variables.`;

/** Stops `stop` on SIGTERM or SIGINT, exiting 0 if it finishes within the deadline, 1 otherwise. */
function stopOnSignal(what: string, stop: () => Promise<void>, deadlineMs = 15_000): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    const deadline = setTimeout(() => {
      process.stderr.write(`ami-gateway: ${what} did not stop within ${deadlineMs / 1000}s of ${signal}; exiting\n`);
      process.exit(EXIT.failure);
    }, deadlineMs);
    deadline.unref();
    stop().then(
      () => process.exit(EXIT.ok),
      (err: Error) => {
        process.stderr.write(`ami-gateway: error while stopping ${what}: ${err.message}\n`);
        process.exit(EXIT.failure);
      },
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}

function positiveInteger(option: string, raw: string | undefined, fallback?: number, min = 1, max = 1_000_000): number {
  if (raw === undefined) {
    if (fallback === undefined) throw new UsageError(`${option} is required`);
    return fallback;
  }
  try {
    return parseInteger(option, raw, min, max);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

async function start(): Promise<void> {
  const config = loadConfig();
  const { startAppliance } = await import('./runtime.js');
  const appliance = await startAppliance(config);
  const missingFlags = missingApplianceNodeFlags();
  if (missingFlags.length > 0) {
    appliance.log.write(
      'warn',
      'appliance',
      `node runs without the appliance's heap settings ${missingFlags.join(' ')}: a reconnect storm of thousands of meters then takes some 40 MiB more. npm start and deploy/ami-gateway.service pass them (node ${missingFlags.join(' ')} bin/ami-gateway.js start)`,
    );
  }
  // As Node-RED's own launcher does: a fault nobody caught leaves the process
  // in an unknown state, so log it and exit non-zero; systemd restarts the gateway.
  const fatal = (kind: string) => (err: unknown) => {
    appliance.log.write('fatal', 'appliance', `${kind}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(EXIT.failure);
  };
  process.on('uncaughtException', fatal('uncaught exception'));
  process.on('unhandledRejection', fatal('unhandled promise rejection'));
  stopOnSignal('the gateway', () => appliance.stop());
}

async function status(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' }, url: { type: 'string' } }, strict: true });
  const config = loadConfig();
  const url = values.url ?? `http://127.0.0.1:${config.httpPort}/ami/health`;
  let health: HealthSnapshot;
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(5000) });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    health = asHealthSnapshot(await response.json());
  } catch (err) {
    process.stderr.write(`ami-gateway: cannot read ${url}: ${(err as Error).message}\n`);
    return EXIT.unreachable;
  }
  if (values.json) {
    process.stdout.write(`${JSON.stringify(health, null, 2)}\n`);
  } else {
    const lines = [
      `status        ${health.status}${health.problems.length ? ` (${health.problems.join('; ')})` : ''}`,
      `HES endpoint  ${health.hesEndpoint ?? 'none'}`,
      `mesh          received ${health.meshReceived}, rejected ${health.meshRejected}, deferred ${health.meshDeferred}, dropped ${health.meshDropped ?? 0}`,
      `HES           delivered ${health.hesDelivered}, failed ${health.hesFailed}`,
      `DLMS          decoded ${health.dlmsDecoded ?? 0}, refused ${health.dlmsFailed ?? 0} (MIC failures ${health.micFailures ?? 0}, replays ${health.replaysRefused ?? 0})`,
      `keys          ${health.keys ? `${health.keys.meters} meters, epoch ${health.keys.epoch}, fingerprint ${health.keys.fingerprint.slice(0, 16)}…, out of sync ${health.keys.outOfSync}, last sync ${health.keys.lastSync ?? 'never'}` : 'no keyring'}`,
      `outbox depth  ${health.outboxDepth}`,
      `uptime        ${health.uptimeSeconds}s (version ${health.version})`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  return health.status === 'ok' ? EXIT.ok : EXIT.failure;
}

/** Checks that a reply is a health snapshot, so a stranger on the port reads as unreachable, not degraded. */
function asHealthSnapshot(value: unknown): HealthSnapshot {
  const h = value as Partial<Record<keyof HealthSnapshot, unknown>> | null;
  const numbers = ['meshReceived', 'meshRejected', 'meshDeferred', 'hesDelivered', 'hesFailed', 'outboxDepth', 'uptimeSeconds'] as const;
  if (
    h === null ||
    typeof h !== 'object' ||
    (h.status !== 'ok' && h.status !== 'degraded') ||
    !Array.isArray(h.problems) ||
    !numbers.every((name) => typeof h[name] === 'number') ||
    (h.hesEndpoint !== null && typeof h.hesEndpoint !== 'string')
  ) {
    throw new Error('the reply is not an ami-gateway health report');
  }
  return h as HealthSnapshot;
}

function consoleLog(prefix: string): { info(m: string): void; warn(m: string): void } {
  return {
    info: (message) => process.stdout.write(`${new Date().toISOString()} info  ${prefix}${message}\n`),
    warn: (message) => process.stderr.write(`${new Date().toISOString()} warn  ${prefix}${message}\n`),
  };
}

async function simHes(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: 'string' },
      bind: { type: 'string' },
      record: { type: 'string' },
      meters: { type: 'string' },
      prefix: { type: 'string' },
      'key-seed': { type: 'string' },
      'trust-anchor-out': { type: 'string' },
      delay: { type: 'string' },
      'drop-records': { type: 'boolean' },
      'commands-for': { type: 'string' },
      'command-every': { type: 'string' },
    },
    strict: true,
  });
  const commandEveryMs = positiveInteger('--command-every', values['command-every'], 60, 1, 86_400) * 1000;
  const { HesSimulator } = await import('../sim/hes.js');
  const delayMs = positiveInteger('--delay', values.delay, 0, 0, 3_600_000);
  const { simMeterNames } = await import('../sim/meter-keys.js');
  const meterCount = positiveInteger('--meters', values.meters, 50, 0, 1_000_000);
  const sim = new HesSimulator({
    port: positiveInteger('--port', values.port, undefined, 0, 65535),
    bind: values.bind ?? '::1',
    recordFile: values.record === undefined ? undefined : path.resolve(values.record),
    log: consoleLog(''),
    summaryEverySeconds: 10,
    keyManagement: { meters: simMeterNames(meterCount, values.prefix), ...(values['key-seed'] ? { seed: values['key-seed'] } : {}) },
    // Signed commands; operators' certificates come from the key management's PKI (the --trust-anchor-out root).
    commands: {},
  });
  if (values['trust-anchor-out'] !== undefined && sim.keyManagement) {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(path.resolve(values['trust-anchor-out']), sim.keyManagement.trustAnchorPem);
  }
  sim.setResponseDelay(delayMs);
  sim.setDropRecords(values['drop-records'] === true);
  await sim.start();
  const gatewayForCommands = values['commands-for'];
  if (gatewayForCommands !== undefined && sim.commands) {
    const { issueCommandsPeriodically } = await import('../sim/hes-commands.js');
    issueCommandsPeriodically(sim.commands, { gateway: gatewayForCommands, meters: simMeterNames(meterCount, values.prefix), everyMs: commandEveryMs });
  }
  stopOnSignal('the HES simulator', () => sim.stop());
}

async function simMeters(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      count: { type: 'string' },
      gateway: { type: 'string' },
      interval: { type: 'string' },
      prefix: { type: 'string' },
      record: { type: 'string' },
      protocol: { type: 'string' },
      'key-seed': { type: 'string' },
      lifetime: { type: 'string' },
      // Node 20's parseArgs has no negated booleans: the --no- forms are options of their own.
      'no-register': { type: 'boolean' },
      'no-serve': { type: 'boolean' },
      bind: { type: 'string' },
      faults: { type: 'string' },
      loss: { type: 'string' },
    },
    strict: true,
  });
  const protocol = values.protocol ?? 'dlms';
  const { parseFaultSpec, SimRelayError } = await import('../sim/relay.js');
  let faults: ReturnType<typeof parseFaultSpec> = [];
  try {
    faults = values.faults === undefined ? [] : parseFaultSpec(values.faults);
  } catch (err) {
    if (err instanceof SimRelayError) throw new UsageError(`--faults: ${err.message}`);
    throw err;
  }
  const lossRate = values.loss === undefined ? 0 : Number(values.loss);
  if (values.loss !== undefined && (values.loss.trim() === '' || !Number.isFinite(lossRate) || lossRate < 0 || lossRate >= 1)) {
    throw new UsageError(`--loss must be a fraction from 0 to below 1, got "${values.loss}"`);
  }
  if (faults.length > 0 && protocol !== 'dlms') throw new UsageError('--faults needs --protocol dlms (the relay is a DLMS object)');
  if (protocol !== 'dlms' && protocol !== 'plain') throw new UsageError('--protocol must be dlms or plain');
  if (values.gateway === undefined) throw new UsageError('--gateway is required (e.g. coap://[::1]:5683)');
  try {
    parseCoapUrl(values.gateway);
  } catch (err) {
    throw new UsageError(`--gateway: ${(err as Error).message}`);
  }
  if (values.bind !== undefined && isIP(values.bind) === 0) throw new UsageError(`--bind must be an IP address, got "${values.bind}"`);
  const { MeterFleet } = await import('../sim/meters.js');
  const fleet = new MeterFleet({
    count: positiveInteger('--count', values.count),
    gateway: values.gateway,
    intervalMs: positiveInteger('--interval', values.interval, 10, 1, 86_400) * 1000,
    prefix: values.prefix,
    recordFile: values.record === undefined ? undefined : path.resolve(values.record),
    log: consoleLog(''),
    summaryEverySeconds: 10,
    protocol,
    ...(values['key-seed'] ? { keySeed: values['key-seed'] } : {}),
    register: values['no-register'] !== true,
    serve: values['no-serve'] !== true,
    lifetimeSeconds: positiveInteger('--lifetime', values.lifetime, 3600, 60, 0xffff_ffff),
    ...(values.bind !== undefined ? { bind: values.bind } : {}),
    faults,
    lossRate,
  });
  await fleet.start();
  stopOnSignal('the meter fleet', () => fleet.stop());
}

async function hashPassword(): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const password = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
  if (password.length < 8) throw new UsageError('the password must have at least 8 characters');
  const bcrypt = await import('bcryptjs');
  process.stdout.write(`${await bcrypt.hash(password, 10)}\n`);
}

/** Runs the CLI; resolves with an exit code for commands that finish, or never settles for daemons. */
export async function main(argv: string[]): Promise<number | undefined> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'start':
        await start();
        return undefined;
      case 'status':
        return await status(rest);
      case 'sim': {
        const [what, ...simArgs] = rest;
        if (what === 'hes') await simHes(simArgs);
        else if (what === 'meters') await simMeters(simArgs);
        else throw new UsageError(`unknown simulator "${what ?? ''}": expected hes or meters`);
        return undefined;
      }
      case 'dlms': {
        const [what, ...args] = rest;
        if (what !== 'decode') throw new UsageError(`unknown dlms command "${what ?? ''}": expected decode`);
        const { dlmsDecodeCommand, DlmsUsageError } = await import('./cli-dlms.js');
        try {
          return dlmsDecodeCommand(
            args,
            (text) => process.stdout.write(`${text}\n`),
            (text) => process.stderr.write(`${text}\n`),
          );
        } catch (err) {
          if (err instanceof DlmsUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'keys': {
        const { keysCommand, KeysUsageError } = await import('./cli-keys.js');
        try {
          const result = await keysCommand(rest, loadConfig().httpPort);
          (result.exitCode === 3 ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof KeysUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'hes': {
        const { hesCommand, HesUsageError } = await import('./cli-hes.js');
        try {
          const result = await hesCommand(rest, loadConfig().httpPort);
          (result.exitCode === 3 ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof HesUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'backhaul': {
        const { backhaulCommand, BackhaulUsageError } = await import('./cli-backhaul.js');
        try {
          const config = loadConfig();
          const result = await backhaulCommand(rest, { defaultMgmt: config.backhaulMgmt, httpPort: config.httpPort });
          (result.exitCode === 3 ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof BackhaulUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'mesh': {
        const { meshCommand, MeshUsageError } = await import('./cli-mesh.js');
        try {
          const result = await meshCommand(rest, loadConfig().httpPort);
          (result.exitCode === 3 ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof MeshUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'operators': {
        const { operatorsCommand, OperatorsUsageError } = await import('./cli-operators.js');
        try {
          const config = loadConfig();
          const result = await operatorsCommand(rest, { dataDir: config.dataDir, credentialSecret: config.credentialSecret });
          (result.output.startsWith('ami-gateway:') ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof OperatorsUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'queue': {
        const { queueCommand, QueueUsageError } = await import('./cli-queue.js');
        try {
          const result = await queueCommand(rest, loadConfig().httpPort);
          // Reports go to stdout (also with exit code 1: a storage problem), errors ("ami-gateway: ...") to stderr.
          (result.output.startsWith('ami-gateway:') ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof QueueUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'relay':
      case 'alarms': {
        const { relayCommand, alarmsCommand, RelayUsageError } = await import('./cli-relay.js');
        try {
          const httpPort = loadConfig().httpPort;
          const result = command === 'relay' ? await relayCommand(rest, httpPort) : await alarmsCommand(rest, httpPort);
          // Reports go to stdout (also with exit codes 1 and 4: failed or waiting meters), errors ("ami-gateway: ...") to stderr.
          (result.output.startsWith('ami-gateway:') ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof RelayUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'firewall': {
        const { firewallCommand, firewallDefaultsFromEnv, FirewallUsageError } = await import('./cli-firewall.js');
        try {
          const result = await firewallCommand(rest, firewallDefaultsFromEnv(process.env, loadConfig()));
          for (const warning of result.warnings ?? []) process.stderr.write(`ami-gateway: warning: ${warning}\n`);
          // Reports (rulesets, drift) go to stdout, also with exit code 1; errors ("ami-gateway: ...") to stderr.
          (result.output.startsWith('ami-gateway:') ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof FirewallUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'lowpan': {
        const { lowpanCommand, LowpanUsageError } = await import('./cli-lowpan.js');
        try {
          const result = lowpanCommand(rest);
          (result.output.startsWith('ami-gateway:') ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof LowpanUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'optical': {
        const { opticalCommand, OpticalUsageError } = await import('./cli-optical.js');
        try {
          const result = await opticalCommand(rest);
          (result.output.startsWith('ami-gateway:') ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof OpticalUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'firmware': {
        const { firmwareCommand, firmwareGatewayCommand, FIRMWARE_GATEWAY_ACTIONS, FirmwareUsageError } = await import('./cli-firmware.js');
        if ((FIRMWARE_GATEWAY_ACTIONS as readonly string[]).includes(rest[0] ?? '')) {
          // rollout and status ask the running gateway, which holds the images and the trust anchors.
          try {
            const result = await firmwareGatewayCommand(rest, {
              httpPort: loadConfig().httpPort,
              writeLine: (stream, line) => process[stream].write(`${line}\n`),
            });
            // Reports go to stdout (also with exit code 1: failed meters), errors ("ami-gateway: ...") to stderr.
            (result.output.startsWith('ami-gateway:') ? process.stderr : process.stdout).write(`${result.output}\n`);
            return result.exitCode;
          } catch (err) {
            if (err instanceof FirmwareUsageError) throw new UsageError(err.message);
            throw err;
          }
        }
        const { readFileSync } = await import('node:fs');
        const config = loadConfig();
        if (config.firmwareTrustAnchors === undefined) {
          throw new ConfigError('AMI_FIRMWARE_TRUST_ANCHORS', "set it to a PEM file with the utility's firmware root CA: without it no image can be trusted");
        }
        try {
          const result = await firmwareCommand(rest, { imagesDir: config.firmwareDir, trustAnchorsPem: [readFileSync(config.firmwareTrustAnchors, 'utf8')] });
          (result.output.startsWith('ami-gateway:') ? process.stderr : process.stdout).write(`${result.output}\n`);
          return result.exitCode;
        } catch (err) {
          if (err instanceof FirmwareUsageError) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'hash-password':
        await hashPassword();
        return EXIT.ok;
      case '--version':
      case 'version':
        process.stdout.write(`${packageVersion()}\n`);
        return EXIT.ok;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(`${USAGE}\n`);
        return command === undefined ? EXIT.usage : EXIT.ok;
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof UsageError || err instanceof ConfigError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`ami-gateway: ${(err as Error).message}\n${err instanceof ConfigError ? '' : 'Run "ami-gateway --help" for usage.\n'}`);
      return EXIT.usage;
    }
    const e = err as NodeJS.ErrnoException;
    const hint = e.code === 'EADDRINUSE' ? ' (another process uses that port; set AMI_HTTP_PORT or AMI_MESH_PORT)' : '';
    process.stderr.write(`ami-gateway: ${e.message}${hint}\n`);
    return EXIT.failure;
  }
}
