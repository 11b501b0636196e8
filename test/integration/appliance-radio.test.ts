import { afterEach, describe, expect, it } from 'vitest';
import { MeshClient } from '../../src/coap/client/client.js';
import { CONTENT_FORMAT, encodeReading } from '../../src/coap/reading.js';
import { LowpanTransport } from '../../src/mesh/lowpan-transport.js';
import { meterSideOf, SimulatedRadio } from '../../src/sim/radio.js';
import { startApplianceProcess, type ApplianceProcess } from '../helpers/appliance.js';
import { openPtyPair, ptySupport, type PtyPair } from '../helpers/pty.js';

/**
 * The headless appliance on the serial radio (issue 8): `ami-gateway start`
 * with AMI_MESH_TRANSPORT=radio and the radio on one end of a socat pty pair.
 * A simulated meter behind the simulated SLIP radio on the other end posts a
 * reading over 6LoWPAN; the default flow acknowledges it once it is in the
 * outbox on disk (2.04 over the radio) and delivers it to the embedded HES
 * simulator.
 */
const problem = ptySupport('appliance-radio');

const GATEWAY_MAC = '00124b0000000001';
const CONTEXT = '2001:db8:1::/64';
const GATEWAY_ADDRESS = '2001:db8:1:0:212:4b00:0:1';

describe.skipIf(problem !== undefined)(`the appliance on the serial radio${problem ? ` (SKIPPED: ${problem})` : ''}`, () => {
  let pty: PtyPair | undefined;
  let appliance: ApplianceProcess | undefined;
  let radio: SimulatedRadio | undefined;
  let meter: LowpanTransport | undefined;
  let client: MeshClient | undefined;

  afterEach(async () => {
    await client?.close();
    await meter?.close();
    await appliance?.stop();
    appliance?.cleanup();
    await radio?.close();
    await pty?.close();
  });

  it('AMI_MESH_TRANSPORT=radio: a meter behind the radio gets its reading acknowledged and delivered to the HES', async () => {
    pty = await openPtyPair();
    radio = await SimulatedRadio.open({ path: pty.b });
    appliance = await startApplianceProcess({
      AMI_MESH_TRANSPORT: 'radio',
      AMI_RADIO_PORT: pty.a,
      AMI_RADIO_MAC: GATEWAY_MAC,
      AMI_RADIO_PAN: 'abcd',
      AMI_RADIO_CONTEXTS: CONTEXT,
      AMI_SIM_METERS: '0',
    });
    await appliance.waitForHealth((h) => h.hesEndpoint !== null && h.problems.length === 0);
    expect(appliance.output()).toMatch(/the radio on .* is up/);

    meter = new LowpanTransport({ link: meterSideOf(radio), mac: '00124b00000000bb', panId: 0xabcd, contexts: [CONTEXT] });
    client = new MeshClient(meter.transport());
    const reading = { id: 'radio-1', meter: 'mtr-radio-app', ts: Date.now(), values: [{ obis: '1.0.1.8.0.255', value: 12.5, unit: 'kWh' }] };
    const response = await client.request({ peer: { address: GATEWAY_ADDRESS, port: appliance.meshPort }, method: 'POST', path: '/readings', payload: encodeReading(reading), contentFormat: CONTENT_FORMAT.cbor });
    expect(response.code).toBe('2.04');
    const health = await appliance.waitForHealth((h) => h.hesDelivered >= 1);
    expect(health.meshReceived).toBeGreaterThanOrEqual(1);
  });

  it('refuses AMI_MESH_TRANSPORT=radio without a port or with a bad MAC address, naming the variable', async () => {
    const { spawnSync } = await import('node:child_process');
    const { CLI, REPO_ROOT } = await import('../helpers/appliance.js');
    const run = (env: Record<string, string>) => spawnSync(process.execPath, [CLI, 'start'], { cwd: REPO_ROOT, env: { ...process.env, AMI_MESH_TRANSPORT: 'radio', ...env }, encoding: 'utf8', timeout: 30_000 });
    const noPort = run({});
    expect(noPort.status).toBe(2);
    expect(noPort.stderr).toContain('AMI_RADIO_PORT');
    const badMac = run({ AMI_RADIO_PORT: '/dev/ttyUSB9', AMI_RADIO_MAC: '1234', AMI_RADIO_PAN: 'abcd' });
    expect(badMac.status).toBe(2);
    expect(badMac.stderr).toContain('AMI_RADIO_MAC');
  });
});
