import { afterEach, describe, expect, it } from 'vitest';
import { coapCall } from '../../src/coap/request.js';
import {
  decodeApdu,
  decryptApdu,
  encodeApdu,
  encryptApdu,
  parseCipheredApdu,
  decodeWrapper,
  encodeWrapper,
  type CipheredFraming,
  type DlmsData,
  type XdlmsApdu,
} from '../../src/dlms/index.js';
import { SimulatedCosemMeter } from '../../src/sim/cosem-meter.js';
import { simMeterKeys } from '../../src/sim/meter-keys.js';
import { MeterFleet } from '../../src/sim/meters.js';
import {
  ALARM_BIT,
  ALARM_REGISTER_OBIS,
  CONTROL_STATE,
  DISCONNECT_CONTROL_CLASS_ID,
  DISCONNECT_CONTROL_OBIS,
  FRAUD_EVENT_OBIS,
  LOAD_VOLTAGE_OBIS,
  parseFaultSpec,
  SUPPLY_VOLTAGE_OBIS,
  type RelayFault,
} from '../../src/sim/relay.js';

const GATEWAY_TITLE = Buffer.from('414d4701020304ff', 'hex');
const SEED = 'sim-cosem-relay-test';

/** The gateway's side of one meter: its keys, the gateway's system title and outgoing counter, as src/dlms does it. */
class GatewaySide {
  constructor(
    readonly meter: string,
    readonly framing: CipheredFraming = 'glo',
    private counter = 100,
  ) {}

  get keys(): ReturnType<typeof simMeterKeys> {
    return simMeterKeys(SEED, this.meter, 1);
  }

  seal(apdu: XdlmsApdu): Buffer {
    this.counter += 1;
    return encryptApdu(encodeApdu(apdu), {
      keys: this.keys,
      systemTitle: GATEWAY_TITLE,
      invocationCounter: this.counter,
      security: 'authenticated-encrypted',
      framing: this.framing,
    });
  }

  open(frame: Uint8Array): XdlmsApdu {
    const parsed = parseCipheredApdu(frame);
    return decodeApdu(decryptApdu(parsed, this.keys, Buffer.from(this.keys.systemTitle, 'hex')));
  }
}

const get = (classId: number, instanceId: string, attributeId: number): XdlmsApdu => ({
  type: 'get-request',
  invokeIdAndPriority: 0xc1,
  descriptor: { classId, instanceId, attributeId },
});
const action = (methodId: number, parameters: DlmsData | undefined = { type: 'integer', value: 0 }): XdlmsApdu => ({
  type: 'action-request',
  invokeIdAndPriority: 0xc2,
  cosemMethodDescriptor: { classId: DISCONNECT_CONTROL_CLASS_ID, instanceId: DISCONNECT_CONTROL_OBIS, methodId },
  ...(parameters ? { parameters } : {}),
});

function meterWith(name: string, faults: RelayFault[] = [], clock = { t: 5_000_000 }): SimulatedCosemMeter {
  return new SimulatedCosemMeter(simMeterKeys(SEED, name, 1), {
    invocationCounter: 7,
    clientSystemTitle: GATEWAY_TITLE.toString('hex'),
    relay: { now: () => clock.t, rechargeMs: 10_000, faults },
  });
}

function exchange(meter: SimulatedCosemMeter, gw: GatewaySide, apdu: XdlmsApdu): XdlmsApdu {
  return gw.open(meter.handleRequest(gw.seal(apdu)));
}

function data(answer: XdlmsApdu): DlmsData {
  if (answer.type !== 'get-response' || !('data' in answer.result)) throw new Error(`no data in ${JSON.stringify(answer)}`);
  return answer.result.data;
}

function actionResult(answer: XdlmsApdu): number {
  if (answer.type !== 'action-response') throw new Error(`not an action-response: ${answer.type}`);
  return answer.result;
}

describe('simulated COSEM meter: the Disconnect control object, ciphered', () => {
  it('answers get of attributes 2/3/4 and the load voltage, runs remote_disconnect/reconnect, idempotently', () => {
    const clock = { t: 5_000_000 };
    const meter = meterWith('relay-a', [], clock);
    const gw = new GatewaySide('relay-a');
    expect(data(exchange(meter, gw, get(70, DISCONNECT_CONTROL_OBIS, 2)))).toEqual({ type: 'boolean', value: true });
    expect(data(exchange(meter, gw, get(70, DISCONNECT_CONTROL_OBIS, 3)))).toEqual({ type: 'enum', value: CONTROL_STATE.connected });
    expect(data(exchange(meter, gw, get(70, DISCONNECT_CONTROL_OBIS, 4)))).toEqual({ type: 'enum', value: 4 });
    const logicalName = data(exchange(meter, gw, get(70, DISCONNECT_CONTROL_OBIS, 1)));
    expect(logicalName.type).toBe('octet-string');
    if (logicalName.type === 'octet-string') expect([...logicalName.value]).toEqual([0, 0, 96, 3, 10, 255]);
    expect(data(exchange(meter, gw, get(3, LOAD_VOLTAGE_OBIS, 2)))).toEqual({ type: 'long-unsigned', value: 2300 });
    expect(data(exchange(meter, gw, get(3, LOAD_VOLTAGE_OBIS, 3)))).toEqual({
      type: 'structure',
      items: [
        { type: 'integer', value: -1 },
        { type: 'enum', value: 35 },
      ],
    });

    const disconnect = exchange(meter, gw, action(1));
    expect(disconnect).toMatchObject({ type: 'action-response', invokeIdAndPriority: 0xc2, result: 0 });
    expect(data(exchange(meter, gw, get(70, DISCONNECT_CONTROL_OBIS, 3)))).toEqual({ type: 'enum', value: CONTROL_STATE.disconnected });
    expect(data(exchange(meter, gw, get(70, DISCONNECT_CONTROL_OBIS, 2)))).toEqual({ type: 'boolean', value: false });
    expect(data(exchange(meter, gw, get(3, LOAD_VOLTAGE_OBIS, 2)))).toEqual({ type: 'long-unsigned', value: 0 });
    expect(data(exchange(meter, gw, get(3, SUPPLY_VOLTAGE_OBIS, 2)))).toEqual({ type: 'long-unsigned', value: 2300 });

    // A second disconnect: success, nothing moves (the capacitor is still empty, and it does not matter).
    expect(actionResult(exchange(meter, gw, action(1)))).toBe(0);
    expect(meter.relay.stats.actuations).toBe(1);

    // Reconnect too early: temporary-failure (E001); after the charge cycle: success.
    expect(actionResult(exchange(meter, gw, action(2)))).toBe(2);
    clock.t += 10_000;
    expect(actionResult(exchange(meter, gw, action(2, undefined)))).toBe(0);
    expect(data(exchange(meter, gw, get(3, LOAD_VOLTAGE_OBIS, 2)))).toEqual({ type: 'long-unsigned', value: 2300 });
    expect(meter.relay.stats).toMatchObject({ actuations: 2, confirmations: 1, refusedLowCapacitor: 1 });

    // The answers are general-glo-ciphered with the meter's system title, under its own rising counter.
    const frame = meter.handleRequest(gw.seal(get(70, DISCONNECT_CONTROL_OBIS, 3)));
    expect(frame[0]).toBe(0xdb);
    expect(parseCipheredApdu(frame).systemTitle?.toString('hex')).toBe(meter.systemTitle);
    expect(parseCipheredApdu(frame).invocationCounter).toBeGreaterThan(7);
  });

  it('shows each fault on the wire: weld in the load voltage, obstruction as hardware-fault, lowcap as temporary-failure, no supply, tamper in the alarm register', () => {
    const welded = meterWith('relay-weld', ['weld']);
    const gw = new GatewaySide('relay-weld');
    expect(actionResult(exchange(welded, gw, action(1)))).toBe(0);
    expect(data(exchange(welded, gw, get(70, DISCONNECT_CONTROL_OBIS, 3)))).toEqual({ type: 'enum', value: 0 });
    expect(data(exchange(welded, gw, get(3, LOAD_VOLTAGE_OBIS, 2)))).toEqual({ type: 'long-unsigned', value: 2300 });

    const obstructed = meterWith('relay-obst', ['obstruction']);
    const gwO = new GatewaySide('relay-obst');
    expect(actionResult(exchange(obstructed, gwO, action(1)))).toBe(1);
    expect(data(exchange(obstructed, gwO, get(70, DISCONNECT_CONTROL_OBIS, 3)))).toEqual({ type: 'enum', value: 1 });

    const lowcap = meterWith('relay-cap', ['lowcap']);
    const gwC = new GatewaySide('relay-cap');
    expect(actionResult(exchange(lowcap, gwC, action(1)))).toBe(2);
    expect(lowcap.relay.stats.actuations).toBe(0);

    const unpowered = meterWith('relay-nopower');
    const gwP = new GatewaySide('relay-nopower');
    unpowered.relay.powerOff();
    expect(actionResult(exchange(unpowered, gwP, action(1)))).toBe(11);
    expect(data(exchange(unpowered, gwP, get(3, SUPPLY_VOLTAGE_OBIS, 2)))).toEqual({ type: 'long-unsigned', value: 0 });

    const tampered = meterWith('relay-tamper', ['tamper']);
    const gwT = new GatewaySide('relay-tamper');
    expect(data(exchange(tampered, gwT, get(1, ALARM_REGISTER_OBIS, 2)))).toEqual({ type: 'double-long-unsigned', value: ALARM_BIT.fraudAttempt });
    expect(data(exchange(tampered, gwT, get(1, FRAUD_EVENT_OBIS, 2)))).toEqual({ type: 'unsigned', value: 42 });
    const clear: XdlmsApdu = {
      type: 'set-request',
      invokeIdAndPriority: 0xc3,
      descriptor: { classId: 1, instanceId: ALARM_REGISTER_OBIS, attributeId: 2 },
      value: { type: 'double-long-unsigned', value: ALARM_BIT.fraudAttempt },
    };
    expect(exchange(tampered, gwT, clear)).toMatchObject({ type: 'set-response', result: 0 });
    expect(data(exchange(tampered, gwT, get(1, ALARM_REGISTER_OBIS, 2)))).toEqual({ type: 'double-long-unsigned', value: 0 });
  });

  it('refuses wrong classes, unknown attributes and methods, bad parameters, and sets control_mode', () => {
    const meter = meterWith('relay-b');
    const gw = new GatewaySide('relay-b', 'general-glo');
    expect(exchange(meter, gw, get(1, DISCONNECT_CONTROL_OBIS, 2))).toMatchObject({ result: { dataAccessResult: 9 } });
    expect(exchange(meter, gw, get(70, DISCONNECT_CONTROL_OBIS, 9))).toMatchObject({ result: { dataAccessResult: 4 } });
    expect(actionResult(exchange(meter, gw, action(3)))).toBe(11);
    expect(actionResult(exchange(meter, gw, action(1, { type: 'visible-string', value: 'now' })))).toBe(12);
    const setMode = (value: DlmsData): XdlmsApdu => ({
      type: 'set-request',
      invokeIdAndPriority: 0xc4,
      descriptor: { classId: 70, instanceId: DISCONNECT_CONTROL_OBIS, attributeId: 4 },
      value,
    });
    expect(exchange(meter, gw, setMode({ type: 'enum', value: 1 }))).toMatchObject({ result: 0 });
    expect(meter.relay.controlMode).toBe(1);
    expect(exchange(meter, gw, setMode({ type: 'enum', value: 9 }))).toMatchObject({ result: 250 });
    const setState: XdlmsApdu = { ...setMode({ type: 'enum', value: 0 }), descriptor: { classId: 70, instanceId: DISCONNECT_CONTROL_OBIS, attributeId: 3 } } as XdlmsApdu;
    expect(exchange(meter, gw, setState)).toMatchObject({ result: 3 });
    expect(meter.relay.stats.actuations).toBe(0);
  });

  it('serve(): wrapper in, wrapper out; the same bytes again get the same answer and act once; security failures answer an exception-response', () => {
    const meter = meterWith('relay-c');
    const gw = new GatewaySide('relay-c');
    const request = encodeWrapper({ sourceWPort: 0x10, destinationWPort: 0x01, apdu: gw.seal(action(1)) });
    const first = meter.serve(request);
    if (!first.ok) throw new Error(first.message);
    expect(first.repeat).toBe(false);
    const unwrapped = decodeWrapper(first.response);
    expect(unwrapped).toMatchObject({ sourceWPort: 0x01, destinationWPort: 0x10 });
    expect(gw.open(unwrapped.apdu)).toMatchObject({ type: 'action-response', result: 0 });
    const again = meter.serve(request);
    expect(again).toMatchObject({ ok: true, repeat: true });
    if (again.ok) expect(again.response.equals(first.response)).toBe(true);
    expect(meter.relay.stats.actuations).toBe(1);

    // A counter already used: invocation-counter-error.
    const replayed = meter.serve(new GatewaySide('relay-c', 'glo', 0).seal(action(2)));
    expect(replayed).toMatchObject({ ok: false, kind: 'security', code: 'REPLAY' });
    if (!replayed.ok) expect(decodeApdu(replayed.exception)).toMatchObject({ type: 'exception-response', serviceError: 6 });
    // Another key: deciphering-error, unciphered.
    const stranger = new GatewaySide('someone-else', 'glo', 10_000);
    const forged = meter.serve(stranger.seal(action(2)));
    expect(forged).toMatchObject({ ok: false, kind: 'security', code: 'MIC_FAILURE' });
    if (!forged.ok) expect(decodeApdu(forged.exception)).toMatchObject({ type: 'exception-response', stateError: 1, serviceError: 5 });
    expect(meter.relay.stats.actuations).toBe(1);
  });
});

describe('simulated mesh meter: POST /dlms over CoAP on loopback', () => {
  let fleet: MeterFleet | undefined;
  afterEach(async () => {
    await fleet?.stop();
    fleet = undefined;
  });

  it('answers ciphered relay requests on its own socket, counts actuations, and an offline meter answers nothing', async () => {
    fleet = new MeterFleet({
      count: 3,
      gateway: 'coap://[::1]:5683',
      intervalMs: 60_000,
      protocol: 'dlms',
      keySeed: SEED,
      readings: false,
      register: false,
      serve: true,
      startSpreadMs: 0,
      faults: parseFaultSpec('weld:1,offline:mtr-000003'),
    });
    await fleet.start();
    const [welded, healthy, offline] = fleet.meters();
    if (!welded?.base || !healthy?.base || !offline?.base) throw new Error('meters without a base');
    expect(welded.server?.links.map((link) => link.target)).toContain('/dlms');

    const post = async (base: string, frame: Buffer, timeoutMs = 5_000): Promise<{ code: string; payload: Buffer }> =>
      coapCall(`${base}/dlms?st=${GATEWAY_TITLE.toString('hex')}`, { method: 'POST', payload: frame, contentFormat: 42, timeoutMs });

    const gwHealthy = new GatewaySide(healthy.name);
    const answer = await post(healthy.base, gwHealthy.seal(action(1)));
    expect(answer.code).toBe('2.04');
    expect(gwHealthy.open(answer.payload)).toMatchObject({ type: 'action-response', result: 0 });
    const voltage = await post(healthy.base, gwHealthy.seal(get(3, LOAD_VOLTAGE_OBIS, 2)));
    expect(data(gwHealthy.open(voltage.payload))).toEqual({ type: 'long-unsigned', value: 0 });
    // /relay and /status follow the DLMS relay.
    expect(healthy.server?.relay).toBe('disconnected');

    const gwWelded = new GatewaySide(welded.name);
    expect(gwWelded.open((await post(welded.base, gwWelded.seal(action(1)))).payload)).toMatchObject({ result: 0 });
    const weldVoltage = await post(welded.base, gwWelded.seal(get(3, LOAD_VOLTAGE_OBIS, 2)));
    expect(data(gwWelded.open(weldVoltage.payload))).toEqual({ type: 'long-unsigned', value: 2300 });

    // A request under the wrong keys: 4.01 with the exception-response.
    const refused = await post(healthy.base, new GatewaySide('not-this-meter', 'glo', 10_000).seal(action(2)));
    expect(refused.code).toBe('4.01');
    expect(decodeApdu(refused.payload)).toMatchObject({ type: 'exception-response', serviceError: 5 });

    const gwOffline = new GatewaySide(offline.name);
    await expect(post(offline.base, gwOffline.seal(action(1)), 1_500)).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(offline.server?.dropped.requests).toBeGreaterThanOrEqual(1);

    const stats = new Map(fleet.relayStats().map((info) => [info.name, info]));
    expect(stats.get(healthy.name)?.stats.actuations).toBe(1);
    expect(stats.get(welded.name)).toMatchObject({ controlState: 0, loadVoltage: 230, faults: ['weld'] });
    expect(stats.get(offline.name)?.stats.actuations).toBe(0);
    expect(stats.get(offline.name)?.faults).toEqual(['offline']);

    // Back online, it answers.
    fleet.setOffline(offline.name, false);
    const back = await post(offline.base, gwOffline.seal(action(1)));
    expect(gwOffline.open(back.payload)).toMatchObject({ result: 0 });
  });

  it('with loss, a retransmitted request whose answer was lost gets the same answer and the relay moves once', async () => {
    // Deterministic "random": drop the first answer, then nothing.
    const draws = [0.9, 0.0];
    fleet = new MeterFleet({
      count: 1,
      gateway: 'coap://[::1]:5683',
      intervalMs: 60_000,
      protocol: 'dlms',
      keySeed: SEED,
      readings: false,
      register: false,
      serve: true,
      startSpreadMs: 0,
      lossRate: 0.5,
      random: () => draws.shift() ?? 0.99,
    });
    await fleet.start();
    const [meter] = fleet.meters();
    if (!meter?.base) throw new Error('no base');
    const gw = new GatewaySide(meter.name);
    // The client retransmits the confirmable request (RFC 7252) after the first answer is lost.
    const answer = await coapCall(`${meter.base}/dlms?st=${GATEWAY_TITLE.toString('hex')}`, { method: 'POST', payload: gw.seal(action(1)), contentFormat: 42, timeoutMs: 20_000 });
    expect(answer.code).toBe('2.04');
    expect(gw.open(answer.payload)).toMatchObject({ type: 'action-response', result: 0 });
    expect(meter.server?.dropped.answers).toBe(1);
    expect(fleet.relay(meter.name)?.stats.actuations).toBe(1);
    expect(fleet.relay(meter.name)?.controlState).toBe(CONTROL_STATE.disconnected);
  });
});
