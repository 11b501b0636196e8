/**
 * An in-memory RelayMeterPort whose relays the caller controls, and a manual
 * clock/scheduler: for tests of the lifecycle and of what is wired on top of
 * it (node, CLI) without a meter simulator. Not used in production.
 */
import type { RelayScheduler } from '../../src/relay/policy.js';
import { RelayPortError, type ControlState, type RelayMeterPort, type RelayPortErrorCode } from '../../src/relay/types.js';

/**
 * One meter's relay: latching, it moves only when an invoke finds it out of
 * the method's target state. Three counters tell apart what the gateway sent
 * (`invokeCalls`), what reached the meter (`invokes`) and what the relay
 * physically did (`actuations`).
 */
export interface ScriptedRelay {
  state: ControlState;
  /** Supply voltage seen on the load side when the contacts are closed (default 230). */
  supply: number;
  /** Contacts welded: reports disconnected but the load stays powered. */
  weld: boolean;
  /** Every invoke is accepted but the relay does not change state (E099). */
  stuck: boolean;
  /**
   * The next `times` invokes reach the meter and fail with this code without
   * moving the relay (COMM_TIMEOUT_ERR: lost on the way, the meter never saw it).
   */
  invokeFault?: { code: RelayPortErrorCode; times: number };
  /** Next invoke moves the relay, then times out (the answer is lost), once. */
  timeoutAfterActuate?: boolean;
  /** Reads fail with this code while set. */
  readFault?: RelayPortErrorCode;
  /** Invokes the gateway sent (port.invoke calls), whether or not they arrived. */
  invokeCalls: number;
  /** Invokes that reached the meter (refused ones included), whether or not the relay moved. */
  invokes: number;
  /** Real state changes of the relay caused by invokes: its physical operation count. */
  actuations: number;
  /** Alarm register 1 (bit 16: magnetic tamper). */
  alarms: number;
  /** clearAlarms fails with this code while set. */
  clearFault?: RelayPortErrorCode;
}

/** What the port does with a call: 'run' normally, or hang (until aborted) with or without the call's effect. */
export type CallDecision = 'run' | 'hang' | 'apply-then-hang';

export class ScriptedRelayPort implements RelayMeterPort {
  readonly relays = new Map<string, ScriptedRelay>();
  /** Port calls so far (reads and invokes). */
  calls = 0;
  /** Called before each call; decides whether the "gateway crashes" there. */
  decide: (call: { n: number; kind: 'read' | 'invoke'; meter: string }) => CallDecision = () => 'run';
  private hangResolve: (() => void) | undefined;
  /** Resolves the first time a call hangs. */
  hung: Promise<void>;

  constructor() {
    this.hung = new Promise((resolve) => (this.hangResolve = resolve));
  }

  relay(meter: string, init: Partial<ScriptedRelay> = {}): ScriptedRelay {
    let relay = this.relays.get(meter);
    if (!relay) {
      relay = { state: 1, supply: 230, weld: false, stuck: false, invokeCalls: 0, invokes: 0, actuations: 0, alarms: 0, ...init };
      this.relays.set(meter, relay);
    } else Object.assign(relay, init);
    return relay;
  }

  /** Normal operation again (after a simulated crash), with a fresh `hung` promise. */
  heal(): void {
    this.decide = () => 'run';
    this.hung = new Promise((resolve) => (this.hangResolve = resolve));
  }

  async readControlState(meter: string, signal: AbortSignal): Promise<ControlState> {
    const relay = this.get(meter);
    await this.gate('read', meter, signal, () => undefined);
    if (relay.readFault) throw new RelayPortError(relay.readFault, `scripted ${relay.readFault}`);
    return relay.state;
  }

  async readLoadVoltage(meter: string, signal: AbortSignal): Promise<number> {
    const relay = this.get(meter);
    await this.gate('read', meter, signal, () => undefined);
    if (relay.readFault) throw new RelayPortError(relay.readFault, `scripted ${relay.readFault}`);
    return relay.state === 1 || relay.weld ? relay.supply : 0;
  }

  async readAlarms(meter: string, signal: AbortSignal): Promise<number> {
    const relay = this.get(meter);
    await this.gate('read', meter, signal, () => undefined);
    if (relay.readFault) throw new RelayPortError(relay.readFault, `scripted ${relay.readFault}`);
    return relay.alarms;
  }

  async clearAlarms(meter: string, mask: number, signal: AbortSignal): Promise<void> {
    const relay = this.get(meter);
    await this.gate('read', meter, signal, () => undefined);
    if (relay.clearFault) throw new RelayPortError(relay.clearFault, `scripted ${relay.clearFault}`);
    relay.alarms = (relay.alarms & ~mask) >>> 0;
  }

  async invoke(meter: string, method: 'remote_disconnect' | 'remote_reconnect', signal: AbortSignal): Promise<void> {
    const relay = this.get(meter);
    relay.invokeCalls += 1;
    /** What the invoke does at the meter; returns the error the meter answers, if any. */
    const effect = (): RelayPortError | undefined => {
      const fault = relay.invokeFault;
      if (fault && fault.times > 0) {
        fault.times -= 1;
        if (fault.times === 0) delete relay.invokeFault;
        if (fault.code !== 'COMM_TIMEOUT_ERR') relay.invokes += 1;
        return new RelayPortError(fault.code, `scripted ${fault.code}`);
      }
      relay.invokes += 1;
      const target: ControlState = method === 'remote_disconnect' ? 0 : 1;
      // Latching: an invoke finding the relay in the target state does nothing.
      if (!relay.stuck && relay.state !== target) {
        relay.state = target;
        relay.actuations += 1;
      }
      return undefined;
    };
    await this.gate('invoke', meter, signal, () => void effect());
    const error = effect();
    if (error) throw error;
    if (relay.timeoutAfterActuate) {
      relay.timeoutAfterActuate = false;
      throw new RelayPortError('COMM_TIMEOUT_ERR', 'scripted: the answer was lost');
    }
  }

  private get(meter: string): ScriptedRelay {
    return this.relays.get(meter) ?? this.relay(meter);
  }

  private async gate(kind: 'read' | 'invoke', meter: string, signal: AbortSignal, effect: () => void): Promise<void> {
    this.calls += 1;
    const decision = this.decide({ n: this.calls, kind, meter });
    if (decision === 'run') return;
    if (decision === 'apply-then-hang') effect();
    this.hangResolve?.();
    // Everything from here on hangs: the gateway "crashed".
    this.decide = () => 'hang';
    await new Promise<never>((_, reject) => {
      if (signal.aborted) reject(new Error('aborted'));
      signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
    });
  }
}

/** A manual clock with a scheduler: advance() runs what came due, in time order. */
export class ManualRelayTime {
  private tasks: Array<{ at: number; task: () => void; cancelled: boolean }> = [];

  constructor(public time = 1_700_000_000_000) {}

  readonly now = (): number => this.time;

  readonly scheduler: RelayScheduler = {
    at: (at, task) => {
      const entry = { at, task, cancelled: false };
      this.tasks.push(entry);
      return () => {
        entry.cancelled = true;
      };
    },
  };

  /** Tasks armed and not yet run or cancelled. */
  get armed(): number {
    return this.tasks.filter((t) => !t.cancelled).length;
  }

  advance(ms: number): void {
    this.time += ms;
    for (;;) {
      this.tasks = this.tasks.filter((t) => !t.cancelled);
      const due = this.tasks.filter((t) => t.at <= this.time).sort((a, b) => a.at - b.at)[0];
      if (!due) return;
      due.cancelled = true;
      due.task();
    }
  }
}
