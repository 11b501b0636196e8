import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import express from 'express';
import RED from 'node-red';
import { managementTcpPort } from '../backhaul/address.js';
import { formatCoapUrl } from '../coap/url.js';
import { HesSimulator } from '../sim/hes.js';
import { MeterFleet } from '../sim/meters.js';
import { simMeterNames } from '../sim/meter-keys.js';
import { loadAdminUsers } from './admin-users.js';
import type { ApplianceConfig } from './config.js';
import { gatewayHealth } from './health.js';
import { ApplianceLog } from './log.js';
import { packageRoot } from './package-info.js';
import { ensureCredentialSecret } from './secrets.js';
import { buildNodeRedSettings, editorBindAddress, FLOW_FILE } from './settings.js';

export const DEFAULT_FLOW = 'default-appliance.json';
const STATUS_LOG_EVERY_MS = 30_000;

export interface RunningAppliance {
  httpPort: number;
  httpHost: string;
  log: ApplianceLog;
  stop(): Promise<void>;
}

/** The address meters should use to reach a mesh endpoint bound to `bind`. */
export function meshTargetHost(bind: string): string {
  if (bind === '::' || bind === '') return '::1';
  if (bind === '0.0.0.0') return '127.0.0.1';
  return bind;
}

/**
 * Starts the headless appliance: Node-RED embedded with the appliance
 * settings and the default flow, plus the simulators the configuration asks
 * for. Resolves once the editor listens and the flows run.
 */
export async function startAppliance(config: ApplianceConfig): Promise<RunningAppliance> {
  mkdirSync(config.dataDir, { recursive: true, mode: 0o750 });
  const log = new ApplianceLog({ level: config.logLevel, file: path.join(config.dataDir, 'logs', 'ami-gateway.log') });
  const appLog = log.component('appliance');
  const root = packageRoot();

  const flowFile = path.join(config.dataDir, FLOW_FILE);
  if (!existsSync(flowFile)) {
    copyFileSync(path.join(root, 'flows', DEFAULT_FLOW), flowFile);
    appLog.info(`first start: installed the default flow flows/${DEFAULT_FLOW} as ${flowFile}`);
  }
  const secret = ensureCredentialSecret(config.dataDir, config.credentialSecret);
  if (secret.source === 'created') appLog.info('generated a credential secret (0600) in the data directory');
  if (secret.tightened) appLog.warn('the credential secret file was readable by others; its mode is now 0600');
  const adminUsers = loadAdminUsers(config.settingsFile);

  // What was started, in order, with how to stop it; stopped in reverse.
  const started: Array<[string, () => Promise<void>]> = [];
  const stopAll = async (): Promise<void> => {
    for (const [what, stop] of started.reverse()) {
      const begun = Date.now();
      try {
        await stop();
        appLog.debug(`stopped ${what} in ${Date.now() - begun} ms`);
      } catch (err) {
        appLog.error(`while stopping ${what}: ${(err as Error).message}`);
      }
    }
    started.length = 0;
  };

  try {
    // The flow reads its configuration with ${VAR}; give every variable its
    // documented default so the flow never sees an empty value.
    let hesPrimary = config.hesPrimary;
    if (hesPrimary === undefined && config.hesSecondary === undefined) {
      const hes = new HesSimulator({
        port: 0,
        bind: '::1',
        log: log.component('hes-sim'),
        summaryEverySeconds: 10,
        // The simulated key management holds the keys of the simulated fleet.
        keyManagement: { meters: simMeterNames(Math.max(config.simMeters, 1)), ...(config.simKeySeed ? { seed: config.simKeySeed } : {}) },
        // It also serves the command queue (empty until something issues a command), so the hes commands node has a peer.
        commands: {},
      });
      await hes.start();
      started.push(['the HES simulator', () => hes.stop()]);
      hesPrimary = hes.url;
      appLog.info(`AMI_HES_PRIMARY and AMI_HES_SECONDARY are unset: using the embedded HES simulator at ${hesPrimary}`);
      if (config.keysTrustAnchors === undefined && hes.keyManagement) {
        // Its root CA is regenerated at every start, as is the simulator's signing certificate.
        const anchors = path.join(config.dataDir, 'hes-sim', 'root-ca.pem');
        mkdirSync(path.dirname(anchors), { recursive: true, mode: 0o750 });
        writeFileSync(anchors, hes.keyManagement.trustAnchorPem);
        process.env.AMI_KEYS_TRUST_ANCHORS = anchors;
        appLog.info(`AMI_KEYS_TRUST_ANCHORS is unset: trusting the HES simulator's test root CA (${anchors})`);
        // Its signed commands come from operators under the same test root.
        if (!process.env.AMI_COMMANDS_TRUST_ANCHORS) process.env.AMI_COMMANDS_TRUST_ANCHORS = anchors;
      }
    }
    if (config.keysTrustAnchors !== undefined) process.env.AMI_KEYS_TRUST_ANCHORS = config.keysTrustAnchors;
    process.env.AMI_KEYS_TRUST_ANCHORS ??= '';
    process.env.AMI_COMMANDS_TRUST_ANCHORS ??= '';
    process.env.AMI_HES_PRIMARY = hesPrimary ?? '';
    process.env.AMI_HES_SECONDARY = config.hesSecondary ?? '';
    process.env.AMI_MESH_PORT = String(config.meshPort);
    process.env.AMI_MESH_BIND = config.meshBind;
    process.env.AMI_ALLOW_MESH = config.allowMesh;
    process.env.AMI_MESH_REGISTERED_ONLY = String(config.meshRegisteredOnly);
    // The default flow's mesh endpoint: UDP, or the serial radio (docs/serial-radio.md).
    process.env.AMI_MESH_TRANSPORT = config.meshTransport;
    process.env.AMI_RADIO_PORT = config.radio?.path ?? '';
    process.env.AMI_RADIO_BAUD = String(config.radio?.baudRate ?? '');
    process.env.AMI_RADIO_METADATA = config.radio?.metadata ?? '';
    process.env.AMI_RADIO_MAC = config.radio?.mac ?? '';
    process.env.AMI_RADIO_PAN = config.radio?.panId.toString(16) ?? '';
    process.env.AMI_RADIO_CONTEXTS = config.radio?.contexts.join(' ') ?? '';
    // The default flow's allowlist and firewall nodes (docs/firewall.md).
    process.env.AMI_FIREWALL_APPLY = String(config.firewall === 'enforce');
    process.env.AMI_ALLOW_HES ??= '';
    process.env.AMI_ALLOW_MGMT ??= '';
    process.env.AMI_OPENVPN_MGMT_PORT = String(managementTcpPort(config.backhaulMgmt) ?? '');
    process.env.AMI_GATEWAY_ID ??= os.hostname();

    const app = express();
    const server = http.createServer(app);
    const settings = buildNodeRedSettings({ config, credentialSecret: secret.secret, adminUsers, packageRoot: root, log });
    // RED.init's types expect Node-RED's full LocalSettings; ours is a subset built as a plain record.
    RED.init(server, settings as unknown as Parameters<typeof RED.init>[1]);
    app.use('/', RED.httpAdmin);
    app.use('/api', RED.httpNode);
    const host = editorBindAddress(config, adminUsers);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.httpPort, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    started.push([
      'the editor',
      () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    ]);
    const httpPort = (server.address() as AddressInfo).port;
    if (adminUsers.length === 0) {
      appLog.warn(
        `no admin users in ${config.settingsFile}: the editor is bound to loopback only (http://127.0.0.1:${httpPort}/). Add users to open it to the network.`,
      );
    } else {
      appLog.info(`adminAuth enforced for ${adminUsers.length} user(s); editor on http://${host}:${httpPort}/`);
    }

    await RED.start();
    started.push(['the flows', () => RED.stop()]);
    // RED.version is a getter returning a function in Node-RED 4 and 5, a string in the typings.
    const nodeRedVersion: unknown = RED.version;
    appLog.info(`Node-RED ${typeof nodeRedVersion === 'function' ? String(nodeRedVersion()) : String(nodeRedVersion)} running; editor at http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${httpPort}/`);

    if (config.simMeters > 0 && config.meshTransport === 'radio') {
      // The simulated fleet speaks UDP to the endpoint; over the radio only real (or radio-simulated) meters reach it.
      appLog.warn(`AMI_SIM_METERS=${config.simMeters} is ignored with AMI_MESH_TRANSPORT=radio: the simulated meters use UDP, not the radio`);
    } else if (config.simMeters > 0) {
      const fleet = new MeterFleet({
        count: config.simMeters,
        gateway: formatCoapUrl(meshTargetHost(config.meshBind), config.meshPort),
        intervalMs: config.simIntervalSeconds * 1000,
        protocol: config.simProtocol,
        ...(config.simKeySeed ? { keySeed: config.simKeySeed } : {}),
        // Like real meters, they join the gateway's resource directory first (so `ami-gateway mesh meters`
        // lists them) and serve their own resources.
        register: true,
        serve: true,
        log: log.component('sim-meters'),
        summaryEverySeconds: 10,
      });
      await fleet.start();
      started.push(['the meter fleet', () => fleet.stop()]);
    }

    const statusTimer = setInterval(() => {
      const h = gatewayHealth.snapshot();
      appLog.info(
        `status ${h.status}: meshReceived=${h.meshReceived} hesDelivered=${h.hesDelivered} outboxDepth=${h.outboxDepth} hes=${h.hesEndpoint ?? 'none'}${h.problems.length ? ` problems: ${h.problems.join('; ')}` : ''}`,
      );
    }, STATUS_LOG_EVERY_MS);
    statusTimer.unref();
    started.push(['the status log', async () => clearInterval(statusTimer)]);

    return {
      httpPort,
      httpHost: host,
      log,
      stop: async () => {
        appLog.info('stopping: meters, flows, simulators, editor');
        await stopAll();
        appLog.info('stopped');
        await log.close();
      },
    };
  } catch (err) {
    await stopAll();
    await log.close();
    throw err;
  }
}
