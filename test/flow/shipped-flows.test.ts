import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { coapCall } from '../../src/coap/request.js';
import { CONTENT_FORMAT, encodeReading } from '../../src/coap/reading.js';
import { HesSimulator } from '../../src/sim/hes.js';
import { MeterFleet } from '../../src/sim/meters.js';
import { SimulatedCosemMeter } from '../../src/sim/cosem-meter.js';
import { DEFAULT_SIM_KEY_SEED, simMeterKeys } from '../../src/sim/meter-keys.js';
import { dlmsRecordKey } from '../../src/hes/records.js';
import { meshMeterLister, untilRegistered } from '../helpers/fleet.js';
import { freeUdpPort } from '../helpers/ports.js';
import { createNamespace, removeStaleNamespaces, uniqueName } from '../helpers/netns.js';
import { nftIn, nftSupport } from '../helpers/nft.js';
import { openPtyPair, ptySupport } from '../helpers/pty.js';
import { SimulatedC1218Meter } from '../../src/sim/c1218-meter.js';
import { allNodes, coreNodes, initHelper, nextInput } from './setup.js';

const helper = initHelper();
const FLOWS_DIR = path.resolve(__dirname, '..', '..', 'flows');
type FlowNode = Record<string, unknown> & { id: string; type: string };

function readFlow(file: string): FlowNode[] {
  return JSON.parse(readFileSync(path.join(FLOWS_DIR, file), 'utf8')) as FlowNode[];
}

let hes: HesSimulator;
let userDir: string;
const savedEnv = { ...process.env };
const DLMS_METER = 'mtr-flow-dlms';
/** The first simulated meter (MeterFleet names meters mtr-000001, ...). */
const RELAY_METER = 'mtr-000001';

beforeAll(async () => {
  // The HES simulator plays the key management too: the flow's keyring syncs this meter's keys from it.
  // And the command queue: signed relay commands for the default flow's relay command node.
  hes = new HesSimulator({ port: 0, bind: '::1', keyManagement: { meters: [DLMS_METER, RELAY_METER] }, commands: {} });
  await hes.start();
  userDir = mkdtempSync(path.join(os.tmpdir(), 'ami-flows-'));
  const anchors = path.join(userDir, 'root-ca.pem');
  writeFileSync(anchors, hes.keyManagement!.trustAnchorPem);
  process.env.AMI_KEYS_TRUST_ANCHORS = anchors;
  process.env.AMI_COMMANDS_TRUST_ANCHORS = anchors;
  // The store node keeps its database under Node-RED's user directory.
  helper.settings({ userDir });
  process.env.AMI_HES_PRIMARY = hes.url;
  process.env.AMI_HES_SECONDARY = '';
  process.env.AMI_MESH_BIND = '::1';
  process.env.AMI_GATEWAY_ID = 'gw-flow-test';
  // As the runtime sets them without AMI_FIREWALL=enforce: the firewall node leaves the kernel alone.
  process.env.AMI_FIREWALL_APPLY = 'false';
  process.env.AMI_ALLOW_HES = '';
  process.env.AMI_ALLOW_MGMT = '';
  process.env.AMI_OPENVPN_MGMT_PORT = '';
});

afterAll(async () => {
  await hes.stop();
  helper.settings({});
  rmSync(userDir, { recursive: true, force: true });
  process.env = savedEnv;
});

afterEach(async () => {
  await helper.unload();
});

const modules = [...allNodes, ...Object.values(coreNodes)];

/** Resolves once the HES simulator holds `key` (at once if it already does). */
function storedByHes(key: string): Promise<void> {
  if (hes.has(key)) return Promise.resolve();
  return new Promise((resolve) => {
    const stop = hes.onStored((stored) => {
      if (stored !== key) return;
      stop();
      resolve();
    });
  });
}

describe('shipped flows', () => {
  const files = readdirSync(FLOWS_DIR).filter((file) => file.endsWith('.json'));

  it('has the default appliance flow and at least one example', () => {
    expect(files).toContain('default-appliance.json');
    expect(files.length).toBeGreaterThanOrEqual(2);
  });

  it.each(files)('%s deploys: every node is created, no unknown types', async (file) => {
    process.env.AMI_MESH_PORT = String(await freeUdpPort());
    const flow = readFlow(file);
    await helper.load(modules, flow);
    for (const node of flow.filter((n) => n.type !== 'tab')) {
      expect(helper.getNode(node.id), `${file}: node ${node.id} (${node.type})`).toBeTruthy();
    }
  });

  it('default-appliance.json carries a meter reading to the HES and acknowledges the meter', async () => {
    const meshPort = await freeUdpPort();
    process.env.AMI_MESH_PORT = String(meshPort);
    await helper.load(modules, readFlow('default-appliance.json'));
    const meshIn = helper.getNode('a1f0c0de00000005')!;
    await new Promise<void>((resolve) =>
      meshIn.on('call:status', (call: unknown) => {
        if ((call as { args: [{ fill?: string }] }).args[0].fill === 'green') resolve();
      }),
    );
    const reading = { id: 'default-1', meter: 'mtr-default', ts: Date.now(), values: [{ obis: '1.0.1.8.0.255', value: 1 }] };
    const response = await coapCall(`coap://[::1]:${meshPort}/readings`, {
      method: 'POST',
      payload: encodeReading(reading),
      contentFormat: CONTENT_FORMAT.cbor,
      timeoutMs: 10_000,
    });
    // Acknowledged once on disk in the outbox; from there it reaches the HES.
    expect(response.code).toBe('2.04');
    await storedByHes('mtr-default/default-1');
  });

  it('default-appliance.json keeps an acknowledged reading in its outbox while the HES refuses, across a redeploy, and delivers it once the HES is back', async () => {
    const meshPort = await freeUdpPort();
    process.env.AMI_MESH_PORT = String(meshPort);
    hes.refuseNext(1_000_000);
    try {
      await helper.load(modules, readFlow('default-appliance.json'));
      const reading = { id: 'outbox-1', meter: 'mtr-outbox', ts: Date.now(), values: [{ obis: '1.0.1.8.0.255', value: 7 }] };
      const post = () =>
        coapCall(`coap://[::1]:${meshPort}/readings`, { method: 'POST', payload: encodeReading(reading), contentFormat: CONTENT_FORMAT.cbor, timeoutMs: 1000 }).catch(() => undefined);
      // The endpoint opens a moment after deploy; like a meter, send again.
      let response = await post();
      while (!response) response = await post();
      expect(response.code).toBe('2.04');
      expect(hes.has('mtr-outbox/outbox-1')).toBe(false);
      await helper.unload();
    } finally {
      hes.refuseNext(0);
    }
    // The gateway comes back (same store): the backlog drains.
    await helper.load(modules, readFlow('default-appliance.json'));
    await storedByHes('mtr-outbox/outbox-1');
  });

  it('default-appliance.json decrypts a meter\'s DLMS frame with synced keys, delivers it keyed by system title and counter, and acknowledges the meter', async () => {
    const meshPort = await freeUdpPort();
    process.env.AMI_MESH_PORT = String(meshPort);
    await helper.load(modules, readFlow('default-appliance.json'));
    const decode = helper.getNode('a1f0c0de0000000d')!;
    const keyringReady = new Promise<void>((resolve) =>
      decode.on('call:status', (call: unknown) => {
        // Pushed by the keyring: green once it holds keys (before any frame, nothing else sets this status).
        if ((call as { args: [{ fill?: string }] }).args[0].fill === 'green') resolve();
      }),
    );
    await keyringReady;
    const meter = new SimulatedCosemMeter(simMeterKeys(DEFAULT_SIM_KEY_SEED, DLMS_METER, 1));
    const frame = meter.pushFrame([{ obis: '1.0.1.8.0.255', value: 4242, unit: 'Wh' }]);
    const delivered = nextInput(helper.getNode('a1f0c0de0000000e')!);
    const response = await coapCall(`coap://[::1]:${meshPort}/dlms?ep=${DLMS_METER}`, {
      method: 'POST',
      payload: frame,
      contentFormat: 42,
      timeoutMs: 10_000,
    });
    expect(response.code).toBe('2.04');
    const key = dlmsRecordKey(meter.systemTitle, 1, 1);
    await storedByHes(key);
    const msg = await delivered;
    expect(msg.payload).toMatchObject({
      meter: DLMS_METER,
      systemTitle: meter.systemTitle,
      invocationCounter: 1,
      keyEpoch: 1,
      apdu: { type: 'data-notification' },
      values: [{ obis: '1.0.1.8.0.255', value: 4242, unit: 'Wh' }],
    });
    // The same frame again (the meter missed the ACK): acknowledged, stored once.
    const stored = hes.stats.stored;
    const duplicatesBefore = hes.stats.duplicates;
    const again = await coapCall(`coap://[::1]:${meshPort}/dlms?ep=${DLMS_METER}`, { method: 'POST', payload: frame, contentFormat: 42, timeoutMs: 10_000 });
    expect(again.code).toBe('2.04');
    expect(hes.stats.stored).toBe(stored);
    // Not even sent again: the replay guard saw a repeat, and the outbox has the key already or delivered it.
    expect(hes.stats.duplicates - duplicatesBefore).toBeLessThanOrEqual(1);
    // A frame altered in flight: refused, and the meter is told to retry (its keys may be out of sync).
    const forged = Buffer.from(meter.pushFrame([{ obis: '1.0.1.8.0.255', value: 1, unit: 'Wh' }]));
    forged[forged.length - 1]! ^= 0x01;
    const refused = await coapCall(`coap://[::1]:${meshPort}/dlms?ep=${DLMS_METER}`, { method: 'POST', payload: forged, contentFormat: 42, timeoutMs: 10_000 });
    expect(refused.code).toBe('5.03');
    // Keys are a resync away: the meter is asked back sooner than the endpoint's 30 s default.
    expect(refused.maxAge).toBe(10);
    expect(refused.payload.toString()).toMatch(/MIC_FAILURE/);
  });

  it('send-test-reading.json sends a reading to the HES when its inject node fires', async () => {
    process.env.AMI_MESH_PORT = String(await freeUdpPort());
    await helper.load(modules, readFlow('send-test-reading.json'));
    const stored = new Promise<string>((resolve) => {
      const stop = hes.onStored((key) => {
        stop();
        resolve(key);
      });
    });
    const delivered = nextInput(helper.getNode('b2e0c0de00000006')!);
    helper.getNode('b2e0c0de00000003')!.receive({});
    const key = await stored;
    expect(key).toMatch(/^test-meter\/test-\d+$/);
    expect((await delivered).hes).toEqual({ endpoint: hes.url, key });
  });

  it('read-meters.json reports meters joining, reads one by name (a block-wise load profile too) and observes another', async () => {
    const meshPort = await freeUdpPort();
    process.env.AMI_MESH_PORT = String(meshPort);
    await helper.load(modules, readFlow('read-meters.json'));
    const node = (id: string) => {
      const found = helper.getNode(id);
      if (!found) throw new Error(`no node ${id}`);
      return found;
    };
    const events: Array<{ topic: string; meter: string }> = [];
    const joinedBoth = new Promise<void>((resolve) => {
      node('c3e0c0de00000008').on('input', (msg: unknown) => {
        events.push(msg as { topic: string; meter: string });
        if (events.filter((e) => e.topic === 'joined').length === 2) resolve();
      });
    });
    // Two simulated meters join the directory and serve /status and /lp, as under `npm start`.
    const fleet = new MeterFleet({ count: 2, gateway: `coap://[::1]:${meshPort}`, intervalMs: 3_600_000, readings: false, register: true, serve: true, statusIntervalMs: 200 });
    await fleet.start();
    try {
      await joinedBoth;
      expect(events.map((e) => e.meter).sort()).toEqual(['mtr-000001', 'mtr-000002']);

      const answers = node('c3e0c0de00000006');
      const status = nextInput(answers);
      node('c3e0c0de00000002').receive({});
      const read = (await status) as { payload: { power: string; relay: string }; coap: { code: string }; meter: string };
      expect(read.coap.code).toBe('2.05');
      expect(read.meter).toBe('mtr-000001');
      expect(read.payload).toMatchObject({ power: expect.any(String), relay: expect.any(String) });

      const profile = nextInput(answers);
      node('c3e0c0de00000003').receive({});
      const lp = (await profile) as { coap: { code: string; exchanges: number } };
      expect(lp.coap.code).toBe('2.05');
      expect(lp.coap.exchanges).toBeGreaterThan(1);

      // Observing: the registration's answer and at least one notification.
      const notifications: Array<{ coap: { observe?: number } }> = [];
      const two = new Promise<void>((resolve) => {
        answers.on('input', (raw: unknown) => {
          const msg = raw as { coap: { observe?: number }; meter: string };
          if (msg.meter !== 'mtr-000002') return;
          notifications.push(msg);
          if (notifications.length === 2) resolve();
        });
      });
      node('c3e0c0de00000004').receive({});
      await two;
      expect(notifications.every((n) => typeof n.coap.observe === 'number')).toBe(true);
      node('c3e0c0de00000009').receive({});
    } finally {
      await fleet.stop();
    }
  });
  it('default-appliance.json runs a signed HES disconnect through relay command: the relay opens once, the HES gets the command result and the outcome', async () => {
    const meshPort = await freeUdpPort();
    process.env.AMI_MESH_PORT = String(meshPort);
    // Link gating has its own tests; the simulated meter's radio profile must not decide this one.
    process.env.AMI_RELAY_MIN_RSSI = '-150';
    process.env.AMI_RELAY_MIN_SNR = '-50';
    await helper.load(modules, readFlow('default-appliance.json'));
    const fleet = new MeterFleet({ count: 1, gateway: `coap://[::1]:${meshPort}`, bind: '::1', intervalMs: 3_600_000, protocol: 'dlms', readings: false, register: true, serve: true, startSpreadMs: 0 });
    await fleet.start();
    try {
      // Registered with the resource directory (at this fleet's address: the store may remember an earlier test's meter), keys synced.
      const base = fleet.meters()[0]!.base;
      await untilRegistered(meshMeterLister(() => helper.request()), fleet, (meters) => meters.some((m) => m.endpoint === RELAY_METER && m.base === base));
      // Keys: the keyring's own sync at start, or one asked for now (awaited, not polled).
      const keyring = helper.getNode('a1f0c0de0000000a') as unknown as { keyring(): Promise<{ keys: { size: number } }>; syncNow(request: { force?: boolean }): Promise<unknown> };
      while ((await keyring.keyring()).keys.size < 2) await keyring.syncNow({ force: true });

      const technician = hes.commands!.createOperator('Tina Technician', 'field-technician');
      const issued = hes.commands!.issue('gw-flow-test', { meter: RELAY_METER, action: 'disconnect' }, technician);
      // relay command's final result goes back into hes commands, which completes the command at the HES.
      const outcome = nextInput(helper.getNode('a1f0c0de00000012')!);
      await Promise.all([storedByHes(`command/${issued.id}/result`), storedByHes(`relay-result:${issued.id}`)]);
      expect((await outcome).payload).toMatchObject({ commandId: issued.id, code: 'RELAY_OP_SUCCESS', source: 'hes', operator: 'Tina Technician' });
      const relay = fleet.relay(RELAY_METER)!;
      expect(relay.controlState).toBe(0);
      expect(relay.stats.actuations).toBe(1);
    } finally {
      await fleet.stop();
      delete process.env.AMI_RELAY_MIN_RSSI;
      delete process.env.AMI_RELAY_MIN_SNR;
    }
  });
  it('default-appliance.json leaves the kernel alone unless AMI_FIREWALL=enforce: the firewall node reads "not applied on deploy"', async () => {
    process.env.AMI_MESH_PORT = String(await freeUdpPort());
    await helper.load(modules, readFlow('default-appliance.json'));
    const firewall = helper.getNode('a1f0c0de00000031')!;
    // The helper's status spy sits on the shared Node prototype: keep the calls this node made.
    const spy = firewall.status as unknown as { args: unknown[][]; thisValues: unknown[] };
    const calls = spy.args.filter((_args, i) => spy.thisValues[i] === firewall).map((a) => a[0]);
    expect(calls.at(-1)).toEqual({ fill: 'grey', shape: 'ring', text: 'ami-firewall.status.not-applied' });
  });

  const nftProblem = nftSupport('shipped-flows firewall');
  it.skipIf(nftProblem !== undefined)(
    `default-appliance.json with AMI_FIREWALL=enforce applies the allowlists at deploy: HES from the HES endpoint, mesh and management from the environment${nftProblem ? ` (SKIPPED: ${nftProblem})` : ''}`,
    async () => {
      await removeStaleNamespaces();
      const ns = await createNamespace(uniqueName('dflt'));
      try {
        process.env.AMI_MESH_PORT = String(await freeUdpPort());
        process.env.AMI_FIREWALL_APPLY = 'true';
        process.env.AMI_ALLOW_MESH = 'fd00::/8';
        process.env.AMI_ALLOW_MGMT = '198.51.100.0/24';
        process.env.AMI_OPENVPN_MGMT_PORT = '7505';
        // nft runs inside the test's namespace, never on the host.
        helper.settings({ userDir, amiFirewall: { nftCommand: { file: 'ip', args: ['netns', 'exec', ns.name, 'nft'] } } });
        await helper.load(modules, readFlow('default-appliance.json'));
        const events = helper.getNode('a1f0c0de00000032')!;
        const applied = await new Promise<Record<string, unknown>>((resolve) =>
          events.on('input', (received: unknown) => {
            const msg = received as Record<string, unknown>;
            if (msg.topic === 'applied' || msg.topic === 'error') resolve(msg);
          }),
        );
        expect(applied).toMatchObject({ topic: 'applied', payload: { ok: true, entries: { hes: 1, mesh: 1, mgmt: 1 } } });
        const listed = await nftIn(ns, ['list', 'table', 'inet', 'ami_gateway']);
        expect(listed.code, listed.stderr).toBe(0);
        // The HES simulator's address, taken from the HES endpoint's sites (AMI_ALLOW_HES is empty).
        expect(listed.stdout).toMatch(/set hes_v6 \{[^}]*elements = \{ ::1 \}/);
        expect(listed.stdout).toMatch(/set mesh_v6 \{[^}]*fd00::\/8/);
        expect(listed.stdout).toMatch(/set mgmt_v4 \{[^}]*198\.51\.100\.0\/24/);
        expect(listed.stdout).toContain(`udp dport ${process.env.AMI_MESH_PORT} counter packets 0 bytes 0 drop comment "drop-mesh"`);
        expect(listed.stdout).toContain('tcp dport 7505 counter packets 0 bytes 0 drop comment "drop-openvpn-mgmt"');
      } finally {
        await helper.unload();
        helper.settings({ userDir });
        process.env.AMI_FIREWALL_APPLY = 'false';
        process.env.AMI_ALLOW_MESH = '';
        process.env.AMI_ALLOW_MGMT = '';
        process.env.AMI_OPENVPN_MGMT_PORT = '';
        await ns.remove();
      }
    },
  );

  const ptyProblem = ptySupport('shipped-flows optical');
  it.skipIf(ptyProblem !== undefined)(`optical-read.json reads ST1 and ST5 from a meter on the probe's port, and reports a missing probe to its catch node${ptyProblem ? ` (SKIPPED: ${ptyProblem})` : ''}`, async () => {
    const pty = await openPtyPair();
    const meter = await SimulatedC1218Meter.openSerial(pty.b);
    try {
      process.env.AMI_OPTICAL_PORT = pty.a;
      await helper.load(modules, readFlow('optical-read.json'));
      const tables = helper.getNode('d7e0c0de00000006')!;
      const st1 = nextInput(tables);
      helper.getNode('d7e0c0de00000003')!.receive({});
      expect((await st1).payload).toMatchObject({ manufacturer: 'AMIG' });
      const st5 = nextInput(tables);
      helper.getNode('d7e0c0de00000004')!.receive({});
      expect((await st5).payload).toMatchObject({ identification: 'SIM-C1218-0001' });
      await helper.unload();

      process.env.AMI_OPTICAL_PORT = path.join(pty.dir, 'no-probe');
      await helper.load(modules, readFlow('optical-read.json'));
      const caught = nextInput(helper.getNode('d7e0c0de00000008')!);
      helper.getNode('d7e0c0de00000003')!.receive({});
      expect(((await caught).error as { code: string }).code).toBe('PORT_OPEN_FAILED');
    } finally {
      delete process.env.AMI_OPTICAL_PORT;
      await helper.unload();
      await meter.close();
      await pty.close();
    }
  });

  it('relay-commands.json refuses its inject buttons until a real TOTP code is set, and keeps a command for an unregistered meter waiting', async () => {
    const meshPort = await freeUdpPort();
    process.env.AMI_MESH_PORT = String(meshPort);
    await helper.load(modules, readFlow('relay-commands.json'));
    const errors = helper.getNode('c5e0c0de0000000a')!;
    const caught = nextInput(errors);
    // The inject button with the placeholder code 000000.
    helper.getNode('c5e0c0de00000003')!.receive({});
    expect(((await caught).error as { code: string }).code).toBe('UNAUTHORIZED');

    // With an operator and a real code, a command for a meter that never registered waits on output 2 (COMM_TIMEOUT_ERR).
    const { OperatorStore } = await import('../../src/relay/operators.js');
    const { base32Decode, totp } = await import('../../src/relay/totp.js');
    const { ensureCredentialSecret } = await import('../../src/appliance/secrets.js');
    const operators = new OperatorStore({ dataDir: userDir, credentialSecret: ensureCredentialSecret(userDir, undefined).secret });
    const added = await operators.add(`example-tech-${Date.now()}`, 'field-technician');
    const waiting = nextInput(helper.getNode('c5e0c0de00000008')!);
    helper.getNode('c5e0c0de00000006')!.receive({ meter: 'mtr-never-registered', action: 'disconnect', operator: added.name, totp: totp(base32Decode(added.secretBase32), Date.now()) });
    expect((await waiting).payload).toMatchObject({ meter: 'mtr-never-registered', code: 'COMM_TIMEOUT_ERR', final: false });
  });
});
