/**
 * The disconnect relay of a simulated meter: the physical switch behind the
 * COSEM Disconnect control object (interface class 70, OBIS 0.0.96.3.10.255).
 * Pure logic with an injectable clock; the COSEM meter (cosem-meter.ts) puts
 * it on the wire.
 *
 * The model:
 * - Latching (bi-stable): the contacts stay where they are without power;
 *   `powerOff()` / `powerOn()` change the supply, never the state.
 * - A firing capacitor: every mechanical operation discharges it; it charges
 *   again while the supply is on, `rechargeMs` (10 s by default) after the
 *   last firing or after the supply came back. An operation with the
 *   capacitor low is refused and nothing moves (E001).
 * - No supply, no actuation: an operation that needs the actuator while the
 *   supply is off is refused (the comms module runs on its backup supply and
 *   can still answer).
 * - Idempotent: a disconnect of a disconnected relay (or a reconnect of a
 *   connected one) moves nothing and succeeds: only a confirmation.
 * - `stats.actuations` counts every firing of the actuator (including an
 *   obstructed or welded one): tests prove with it that nothing operated twice.
 * - Load-side voltage: the nominal voltage (230 V) while the contacts are
 *   closed and the supply is on, else 0.
 *
 * control_mode (Blue Book, class 70). remote_disconnect takes the object to
 * `disconnected` (from connected: transition b, the actuator fires; from
 * ready_for_reconnection: c, logical only, the contacts are already open).
 * remote_reconnect from `disconnected` goes straight to `connected` in modes 2
 * and 4 (transition a, the actuator fires) and to `ready_for_reconnection` in
 * modes 1, 3, 5 and 6 (transition d, logical only: the customer then presses
 * the button, `manualReconnect()`, transition e). Simplification: in modes 2
 * and 4 a remote_reconnect from ready_for_reconnection connects too. Mode 0:
 * always connected, both methods refused. Default: mode 4, so the gateway's
 * remote_reconnect connects directly.
 *
 * Faults, per meter (`sim meters --faults weld:ID,...`):
 * - `weld`: the contacts are fused. A disconnect fires and reports success,
 *   control_state says disconnected and output_state false, but the load side
 *   keeps its voltage (the gateway's RELAY_WELD_DETECTED).
 * - `obstruction`: the actuator fires but does not move; state unchanged (E044).
 * - `lowcap`: the capacitor never charges: every operation that needs the
 *   actuator is refused (E001).
 * - `offline`: the relay works, but the meter answers nothing on the mesh
 *   (handled by the meter's CoAP server; the gateway sees COMM_TIMEOUT_ERR).
 * - `tamper`: a magnetic tamper is detected at start: the alarm register
 *   (0.0.97.98.0.255, class 1, attribute 2, double-long-unsigned) has bit 16
 *   ("fraud attempt", ALARM_BIT.fraudAttempt) set and the fraud detection
 *   event object (0.0.96.11.1.255, class 1, attribute 2, unsigned) holds event
 *   code 42 ("strong DC field detected", as magnetic tampering is usually
 *   reported). `raiseTamper()` does the same at run time; a set-request on the
 *   alarm register clears the bits written as 1. The meter itself does not lock:
 *   the gateway refuses reconnects while the alarm stands.
 *
 * How an outcome shows on the wire (action-response result, see ACTION_RESULT
 * in src/dlms/apdu.ts) and the manual's code the gateway maps it to:
 *
 * | outcome                        | action result          | code  |
 * | ------------------------------ | ---------------------- | ----- |
 * | done, or already in the state  | 0 success              | RELAY_OP_SUCCESS (after verification) |
 * | capacitor low / lowcap         | 2 temporary-failure    | E001  |
 * | actuator obstructed            | 1 hardware-fault       | E044  |
 * | no supply (mains off)          | 11 object-unavailable  | keep the command pending until power returns |
 * | control_mode forbids it        | 3 read-write-denied    | refused by configuration |
 *
 * A weld is not an action result: the method succeeds and the read-back of
 * the load-side voltage (LOAD_VOLTAGE_OBIS) shows it.
 */

export const DISCONNECT_CONTROL_CLASS_ID = 70;
export const DISCONNECT_CONTROL_OBIS = '0.0.96.3.10.255';
export const DISCONNECT_CONTROL_ATTRIBUTE = { logicalName: 1, outputState: 2, controlState: 3, controlMode: 4 } as const;
export const DISCONNECT_CONTROL_METHOD = { remoteDisconnect: 1, remoteReconnect: 2 } as const;

/** control_state (class 70, attribute 3). */
export const CONTROL_STATE = { disconnected: 0, connected: 1, readyForReconnection: 2 } as const;
export type ControlState = (typeof CONTROL_STATE)[keyof typeof CONTROL_STATE];
export const CONTROL_STATE_NAME: Readonly<Record<ControlState, string>> = {
  0: 'disconnected',
  1: 'connected',
  2: 'ready_for_reconnection',
};

export const DEFAULT_CONTROL_MODE = 4;
/** Modes in which remote_reconnect connects directly (Blue Book transition a). */
const DIRECT_RECONNECT_MODES: ReadonlySet<number> = new Set([2, 4]);

/** The Register interface class (class 3: value, scaler_unit). */
export const REGISTER_CLASS_ID = 3;
/** The Data interface class (class 1: value). */
export const DATA_CLASS_ID = 1;

/**
 * Load-side voltage: a Register (class 3), value long-unsigned in 0.1 V
 * (scaler_unit {-1, V}). OBIS has no standard code for the voltage behind the
 * disconnector, so it is the L1 instantaneous voltage (1.0.32.7) with value
 * group E = 128, which the OBIS rules reserve for manufacturer-specific use:
 * a gateway that knows nothing of it never confuses it with the supply side.
 */
export const LOAD_VOLTAGE_OBIS = '1.0.32.7.128.255';
/** Supply-side L1 instantaneous voltage (the standard code; 0 while the mains are off). Register, 0.1 V. */
export const SUPPLY_VOLTAGE_OBIS = '1.0.32.7.0.255';
/** Alarm register 1 (class 1, attribute 2, double-long-unsigned bit mask). */
export const ALARM_REGISTER_OBIS = '0.0.97.98.0.255';
/** The bits of the alarm register the simulator uses. */
export const ALARM_BIT = { fraudAttempt: 1 << 16 } as const;
/** Fraud detection event object (class 1, attribute 2, unsigned: the last event code, 0 none). */
export const FRAUD_EVENT_OBIS = '0.0.96.11.1.255';
export const FRAUD_EVENT_CODE = { strongDcField: 42 } as const;

export const NOMINAL_VOLTAGE = 230;
export const DEFAULT_RECHARGE_MS = 10_000;

export const RELAY_FAULTS = ['weld', 'obstruction', 'lowcap', 'offline', 'tamper'] as const;
export type RelayFault = (typeof RELAY_FAULTS)[number];

export type SimRelayErrorCode = 'BAD_FAULT_SPEC' | 'BAD_CONTROL_MODE' | 'BAD_OPTION';

export class SimRelayError extends Error {
  override readonly name = 'SimRelayError';
  constructor(
    readonly code: SimRelayErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Why an operation was refused. */
export type RelayRefusal = 'low-capacitor' | 'obstruction' | 'no-supply' | 'not-allowed';

export type RelayOutcome =
  | {
      ok: true;
      /** False: already in the target state (or a logical-only transition): nothing moved. */
      actuated: boolean;
      state: ControlState;
    }
  | { ok: false; reason: RelayRefusal; state: ControlState; message: string };

/** Action-Result (src/dlms/apdu.ts ACTION_RESULT) for each refusal. */
export const ACTION_RESULT_FOR_REFUSAL: Readonly<Record<RelayRefusal, number>> = {
  'low-capacitor': 2, // temporary-failure -> E001
  obstruction: 1, // hardware-fault -> E044
  'no-supply': 11, // object-unavailable -> pending until power returns
  'not-allowed': 3, // read-write-denied
};

/** The manual's code for a refusal, where it has one. */
export const MANUAL_CODE_FOR_REFUSAL: Readonly<Partial<Record<RelayRefusal, string>>> = {
  'low-capacitor': 'E001',
  obstruction: 'E044',
};

/** The Action-Result the meter answers for an outcome. */
export function actionResultOf(outcome: RelayOutcome): number {
  return outcome.ok ? 0 : ACTION_RESULT_FOR_REFUSAL[outcome.reason];
}

export interface RelayStats {
  /** Firings of the actuator: every mechanical operation, successful or not. */
  actuations: number;
  /** Firings that opened the contacts (or would have: a weld counts). */
  disconnects: number;
  /** Firings that closed the contacts. */
  reconnects: number;
  /** Operations answered without moving anything (already in the target state). */
  confirmations: number;
  refusedLowCapacitor: number;
  refusedNoSupply: number;
  refusedNotAllowed: number;
  obstructed: number;
  tamperEvents: number;
}

export interface RelayOptions {
  /** Milliseconds; Date.now by default. */
  now?: () => number;
  /** Time the capacitor needs to charge after a firing or after the supply returns; default 10 000 ms. */
  rechargeMs?: number;
  /** Blue Book control_mode 0..6; default 4 (remote_reconnect connects directly). */
  controlMode?: number;
  /** Default connected. ready_for_reconnection starts with the contacts open. */
  initialState?: ControlState;
  /** Supply on at start (default true). */
  supplyOn?: boolean;
  /** Capacitor charged at start (default true when the supply is on). */
  charged?: boolean;
  faults?: Iterable<RelayFault>;
  nominalVoltage?: number;
}

export class SimulatedRelay {
  private readonly now: () => number;
  readonly rechargeMs: number;
  private mode: number;
  private state: ControlState;
  /** The physical contacts (differs from the state only when welded). */
  private contactsClosed: boolean;
  private supply: boolean;
  /** When the capacitor started charging; undefined while the supply is off. */
  private chargingSince: number | undefined;
  private readonly faultSet: Set<RelayFault>;
  private readonly nominal: number;
  private alarms = 0;
  private fraudEvent = 0;
  readonly stats: RelayStats = {
    actuations: 0,
    disconnects: 0,
    reconnects: 0,
    confirmations: 0,
    refusedLowCapacitor: 0,
    refusedNoSupply: 0,
    refusedNotAllowed: 0,
    obstructed: 0,
    tamperEvents: 0,
  };

  constructor(options: RelayOptions = {}) {
    this.now = options.now ?? Date.now;
    this.rechargeMs = options.rechargeMs ?? DEFAULT_RECHARGE_MS;
    if (!Number.isFinite(this.rechargeMs) || this.rechargeMs < 0) throw new SimRelayError('BAD_OPTION', 'rechargeMs must be a non-negative number');
    this.mode = checkControlMode(options.controlMode ?? DEFAULT_CONTROL_MODE);
    this.state = options.initialState ?? CONTROL_STATE.connected;
    if (this.mode === 0) this.state = CONTROL_STATE.connected;
    this.contactsClosed = this.state === CONTROL_STATE.connected;
    this.supply = options.supplyOn ?? true;
    const charged = options.charged ?? true;
    this.chargingSince = this.supply ? (charged ? this.now() - this.rechargeMs : this.now()) : undefined;
    this.faultSet = new Set(options.faults ?? []);
    for (const fault of this.faultSet) if (!RELAY_FAULTS.includes(fault)) throw new SimRelayError('BAD_FAULT_SPEC', `unknown fault "${String(fault)}"`);
    this.nominal = options.nominalVoltage ?? NOMINAL_VOLTAGE;
    if (this.faultSet.has('tamper')) this.raiseTamper();
  }

  // -------------------------------------------------------------------------
  // What the meter reports

  get controlState(): ControlState {
    return this.state;
  }

  /** output_state (attribute 2): true when the object is connected; what the meter believes, not the contacts. */
  get outputState(): boolean {
    return this.state === CONTROL_STATE.connected;
  }

  get controlMode(): number {
    return this.mode;
  }

  set controlMode(mode: number) {
    this.mode = checkControlMode(mode);
  }

  get supplyOn(): boolean {
    return this.supply;
  }

  /** Volts on the load side: nominal when the contacts are closed (welded or not) and the supply is on. */
  get loadVoltage(): number {
    return this.supply && this.contactsClosed ? this.nominal : 0;
  }

  /** Volts on the supply side. */
  get supplyVoltage(): number {
    return this.supply ? this.nominal : 0;
  }

  /** True when the contacts are closed, whatever the state says (a weld shows as a difference). */
  get contactsAreClosed(): boolean {
    return this.contactsClosed;
  }

  get capacitorCharged(): boolean {
    return this.capacitorReadyInMs() === 0;
  }

  /** Milliseconds until the capacitor is charged: 0 when charged, Infinity without supply or with a lowcap fault. */
  capacitorReadyInMs(): number {
    if (!this.supply || this.chargingSince === undefined || this.faultSet.has('lowcap')) return Number.POSITIVE_INFINITY;
    return Math.max(0, this.chargingSince + this.rechargeMs - this.now());
  }

  /** Alarm register 1 (bit mask, see ALARM_BIT). */
  get alarmRegister(): number {
    return this.alarms;
  }

  /** The fraud detection event object: the last event code, 0 when none. */
  get fraudEventCode(): number {
    return this.fraudEvent;
  }

  get tampered(): boolean {
    return (this.alarms & ALARM_BIT.fraudAttempt) !== 0;
  }

  get faults(): ReadonlySet<RelayFault> {
    return this.faultSet;
  }

  hasFault(fault: RelayFault): boolean {
    return this.faultSet.has(fault);
  }

  addFault(fault: RelayFault): void {
    this.faultSet.add(fault);
    if (fault === 'tamper') this.raiseTamper();
  }

  removeFault(fault: RelayFault): void {
    this.faultSet.delete(fault);
    // A capacitor that works again starts charging now.
    if (fault === 'lowcap' && this.supply) this.chargingSince = this.now();
  }

  // -------------------------------------------------------------------------
  // Operations

  /** Method 1 remote_disconnect. */
  remoteDisconnect(): RelayOutcome {
    if (this.mode === 0) return this.refuse('not-allowed', 'control_mode 0: the object is always connected');
    if (this.state === CONTROL_STATE.disconnected) return this.confirm();
    if (this.state === CONTROL_STATE.readyForReconnection) {
      // Transition c: the contacts are already open.
      this.state = CONTROL_STATE.disconnected;
      return { ok: true, actuated: false, state: this.state };
    }
    return this.fire(false, CONTROL_STATE.disconnected);
  }

  /** Method 2 remote_reconnect. */
  remoteReconnect(): RelayOutcome {
    if (this.mode === 0) return this.refuse('not-allowed', 'control_mode 0: the object is always connected');
    if (this.state === CONTROL_STATE.connected) return this.confirm();
    if (!DIRECT_RECONNECT_MODES.has(this.mode)) {
      if (this.state === CONTROL_STATE.readyForReconnection) return this.confirm();
      // Transition d: logical only; the customer reconnects on site.
      this.state = CONTROL_STATE.readyForReconnection;
      return { ok: true, actuated: false, state: this.state };
    }
    return this.fire(true, CONTROL_STATE.connected);
  }

  /** The customer's button (transition e): ready_for_reconnection -> connected. */
  manualReconnect(): RelayOutcome {
    if (this.state !== CONTROL_STATE.readyForReconnection) {
      return this.state === CONTROL_STATE.connected ? this.confirm() : this.refuse('not-allowed', 'not ready for reconnection');
    }
    return this.fire(true, CONTROL_STATE.connected);
  }

  /** Mains off: the contacts stay where they are (latching); the capacitor loses its charge. */
  powerOff(): void {
    this.supply = false;
    this.chargingSince = undefined;
  }

  /** Mains back: the capacitor starts charging. */
  powerOn(): void {
    if (this.supply) return;
    this.supply = true;
    this.chargingSince = this.now();
  }

  /** A magnetic tamper: alarm bit and fraud event. */
  raiseTamper(): void {
    this.alarms |= ALARM_BIT.fraudAttempt;
    this.fraudEvent = FRAUD_EVENT_CODE.strongDcField;
    this.stats.tamperEvents += 1;
  }

  /** Clears the alarm bits set in `mask` (a write to the alarm register). */
  clearAlarms(mask: number): void {
    this.alarms = (this.alarms & ~mask) >>> 0;
    if (!this.tampered) this.fraudEvent = 0;
  }

  private confirm(): RelayOutcome {
    this.stats.confirmations += 1;
    return { ok: true, actuated: false, state: this.state };
  }

  private refuse(reason: RelayRefusal, message: string): RelayOutcome {
    if (reason === 'low-capacitor') this.stats.refusedLowCapacitor += 1;
    else if (reason === 'no-supply') this.stats.refusedNoSupply += 1;
    else if (reason === 'not-allowed') this.stats.refusedNotAllowed += 1;
    else this.stats.obstructed += 1;
    return { ok: false, reason, state: this.state, message };
  }

  private fire(close: boolean, target: ControlState): RelayOutcome {
    if (!this.supply) return this.refuse('no-supply', 'no supply voltage: the actuator cannot move');
    const waitMs = this.capacitorReadyInMs();
    if (waitMs > 0) {
      return this.refuse(
        'low-capacitor',
        Number.isFinite(waitMs) ? `firing capacitor charging: ready in ${Math.ceil(waitMs)} ms` : 'firing capacitor does not charge',
      );
    }
    this.stats.actuations += 1;
    this.chargingSince = this.now();
    if (this.faultSet.has('obstruction')) return this.refuse('obstruction', 'the actuator did not move');
    if (close) {
      this.stats.reconnects += 1;
      this.contactsClosed = true;
    } else {
      this.stats.disconnects += 1;
      // Fused contacts stay closed; the meter does not know.
      if (!this.faultSet.has('weld')) this.contactsClosed = false;
    }
    this.state = target;
    return { ok: true, actuated: true, state: this.state };
  }
}

function checkControlMode(mode: number): number {
  if (!Number.isInteger(mode) || mode < 0 || mode > 6) throw new SimRelayError('BAD_CONTROL_MODE', `control_mode must be 0..6, not ${String(mode)}`);
  return mode;
}

export interface FaultAssignment {
  fault: RelayFault;
  /** A meter's endpoint name, or its 1-based number in the fleet. */
  meter: string;
}

/**
 * Parses `weld:mtr-000003,obstruction:7,...` (the `--faults` option). A meter
 * is named by its endpoint name or its 1-based number in the fleet. Unknown
 * faults and empty ids are BAD_FAULT_SPEC.
 */
export function parseFaultSpec(spec: string): FaultAssignment[] {
  const out: FaultAssignment[] = [];
  for (const raw of spec.split(',')) {
    const item = raw.trim();
    if (item === '') continue;
    const colon = item.indexOf(':');
    const fault = (colon < 0 ? item : item.slice(0, colon)).trim();
    const meter = colon < 0 ? '' : item.slice(colon + 1).trim();
    if (!(RELAY_FAULTS as readonly string[]).includes(fault)) {
      throw new SimRelayError('BAD_FAULT_SPEC', `unknown fault "${fault}": expected one of ${RELAY_FAULTS.join(', ')}`);
    }
    if (meter === '') throw new SimRelayError('BAD_FAULT_SPEC', `fault "${fault}" names no meter (expected ${fault}:ID)`);
    out.push({ fault: fault as RelayFault, meter });
  }
  return out;
}

/** The faults `assignments` give the meter `name`, the `index`-th (1-based) of its fleet. */
export function faultsFor(assignments: readonly FaultAssignment[], name: string, index: number): RelayFault[] {
  const faults = new Set<RelayFault>();
  for (const { fault, meter } of assignments) {
    if (meter === name || (/^\d+$/.test(meter) && Number(meter) === index)) faults.add(fault);
  }
  return [...faults];
}
