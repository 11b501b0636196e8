/**
 * The relay command lifecycle: one explicit state machine per command,
 * journaled so that a restart resumes without operating a relay twice.
 *
 *   received -> authorize (role + MFA, else UNAUTHORIZED: nothing stored, nothing sent)
 *            -> journal `accepted` (synced)
 *            -> expiry / notBefore
 *            -> reconnect: a standing TAMPER alarm refuses it (TAMPER_LOCKED)
 *            -> link gate (RSSI/SNR, else DEFERRED link)
 *            -> reconnect: read the meter's alarm register; the tamper bit
 *               raises the TAMPER alarm and refuses it (TAMPER_LOCKED)
 *            -> read control_state
 *                 already in the target state: confirm without actuation
 *                 (disconnect: load voltage read too, a weld is reported)
 *            -> wear gate (min interval, cap per hour, else DEFERRED wear)
 *            -> journal `actuating` (attempts 1, fromState = the state read,
 *               invokeUnanswered) + the relay's wear record (synced, one batch)
 *            -> invoke remote_disconnect / remote_reconnect
 *            -> verify: read control_state and load voltage
 *                 RELAY_OP_SUCCESS | RELAY_WELD_DETECTED | E099 (+ re-sync read)
 *            -> journal `done` with the outcome, its report for the HES and
 *               any alarm raised (a weld, a tamper), in one synced write;
 *               audit, 'result' event (RelayReporter takes the report to the
 *               outbox)
 *
 * Meter failures (RelayPortError): COMM_TIMEOUT_ERR and NO_POWER keep the
 * command pending until meterAvailable() (or its notAfter: EXPIRED);
 * LOW_CAPACITOR defers it for the charge cycle (E001) and NO_POWER until
 * power is restored; in both the meter says it did not actuate, so the retry
 * may invoke (that attempt is neither wear nor counted in `attempts`); AUTH_FAILURE -> E012, OBSTRUCTION -> E044, REFUSED ->
 * REFUSED (final).
 *
 * The rule that prevents double actuation while letting a resumed command
 * complete. Once `actuating` is on disk (invokeMaybeSent) the command is never
 * invoked again without first reading the relay back (control_state and load
 * voltage), whatever brought it back (restart, timeout, repeat of the
 * command, meterAvailable):
 *   1. relay in the target state (disconnect: 0; reconnect: 1, or 2 when
 *      acceptReadyForReconnection): finished as verify finishes
 *      (RELAY_OP_SUCCESS, or RELAY_WELD_DETECTED with load voltage), no invoke;
 *   2. relay still in `fromState` (it did not move) and the last invoke is
 *      unanswered (invokeUnanswered: the gateway stopped before the answer was
 *      journaled, so resume() finds `actuating`; or the invoke itself ended
 *      COMM_TIMEOUT_ERR and the meter is tried again) and it was the first
 *      attempt: past notAfter EXPIRED (never invoked late); else the link and
 *      wear gates as for a first invoke (the command's own first attempt does
 *      not hold it back), then a new `actuating` record with attempts 2
 *      (synced, its wear record in the same batch) and invoke 2, then verify;
 *   3. anything else is verified as before: an invoke the meter answered (OK,
 *      REFUSED, ...) that left the relay unmoved, a second attempt that did
 *      not move it, a state that is neither: E099 (+ re-sync read).
 * At most two invokes per command and never two operations of the relay: a
 * latching relay moves only when it is not in the target state and after
 * moving it is in the target state, which the read-back sees; the second
 * invoke is sent only after a read-back found the relay unmoved, and if the
 * first invoke still arrives late, one of the two finds the relay already in
 * the target state and does nothing.
 */
import { EventEmitter, setMaxListeners } from 'node:events';
import { randomUUID } from 'node:crypto';
import type { LinkMetrics } from '../mesh/registry.js';
import { NULL_AUDIT, type RelayAuditSink } from './audit.js';
import type { RelayJournal, RelayJournalEntry, RelayJournalExtras, RelayRunRecord } from './journal.js';
import {
  DEFAULT_LINK_THRESHOLDS,
  DEFAULT_WEAR_LIMITS,
  Limiter,
  describeLink,
  linkProblem,
  pruneWear,
  timerScheduler,
  wearDeferral,
  type LinkThresholds,
  type RelayScheduler,
  type WearLimits,
} from './policy.js';
import {
  RelayError,
  RelayPortError,
  TAMPER_ALARM_BIT,
  authorizationProblem,
  checkCommand,
  methodFor,
  sameCommand,
  targetState,
  type ControlState,
  type RelayAlarm,
  type RelayAlarmCode,
  type RelayAuthorization,
  type RelayCommand,
  type RelayReport,
  type RelayDeferralReason,
  type RelayFinalCode,
  type RelayMeterPort,
  type RelayResult,
} from './types.js';

export interface RelayServiceOptions {
  journal: RelayJournal;
  port: RelayMeterPort;
  /** Audit logs (RelayAudit); none by default. Closed with the service. */
  audit?: RelayAuditSink;
  /** The meter's link metrics, e.g. `(m) => registry.byEndpoint(m)?.metrics`. */
  linkMetrics?: (meter: string) => Readonly<LinkMetrics> | undefined;
  link?: Partial<LinkThresholds>;
  wear?: Partial<WearLimits>;
  /** Load-side volts above which a disconnected relay is reported welded (default 50). */
  weldVoltage?: number;
  /** After E001, retry after this long, ms (default 30 s). */
  chargeCycleMs?: number;
  /** After a link deferral, retry after this long, ms (default 5 min; meterAvailable retries sooner). */
  linkRetryMs?: number;
  /**
   * A reconnect that leaves the relay `ready for reconnection` (2: the
   * customer must press the button, control modes 2, 4, 6) counts as
   * RELAY_OP_SUCCESS (default true); otherwise it is E099.
   */
  acceptReadyForReconnection?: boolean;
  /** Lifecycles talking to meters at once, service-wide (default 64). */
  maxConcurrent?: number;
  now?: () => number;
  scheduler?: RelayScheduler;
}

export interface RelayRunProgress {
  runId: string;
  /** Commands with a result in this pass (final or waiting). */
  done: number;
  total: number;
  byCode: Record<string, number>;
  last: RelayResult;
}

export interface RelayRunSummary {
  runId: string;
  total: number;
  byCode: Record<string, number>;
  /** One result per meter, in the order of the meters. */
  results: RelayResult[];
  /** Every command of the run has a final outcome. */
  finished: boolean;
}

export type RelayCommandTemplate = Omit<RelayCommand, 'meter' | 'id' | 'runId'>;

export interface RelayServiceEvents {
  /** Every result: final outcomes and waiting states (DEFERRED, COMM_TIMEOUT_ERR). */
  result: [RelayResult];
  progress: [RelayRunProgress];
  /** An alarm was raised (TAMPER, RELAY_WELD_DETECTED); already on disk. */
  alarm: [RelayAlarm];
  /** An alarm was cleared by an operator. */
  alarmCleared: [RelayAlarm, { operator: string; meterCleared: boolean }];
  /** Reports for the HES were journaled (RelayReporter hands them to the outbox). */
  report: [];
}

/** The idempotency key of the HES record that reports a command's final outcome. */
export function resultReportKey(commandId: string): string {
  return `relay-result:${commandId}`;
}

type Extra = Record<string, string | number | boolean | undefined>;

export class RelayService extends EventEmitter<RelayServiceEvents> {
  private readonly journal: RelayJournal;
  private readonly port: RelayMeterPort;
  private readonly audit: RelayAuditSink;
  private readonly thresholds: LinkThresholds;
  private readonly wearLimits: WearLimits;
  private readonly weldVoltage: number;
  private readonly chargeCycleMs: number;
  private readonly linkRetryMs: number;
  private readonly acceptReady: boolean;
  private readonly now: () => number;
  private readonly scheduler: RelayScheduler;
  private readonly limiter: Limiter;
  private readonly abort = new AbortController();
  /** One promise per command id in progress (accepting or running). */
  private readonly running = new Map<string, Promise<RelayResult>>();
  /** Lifecycles of one meter run one after the other. */
  private readonly meterChains = new Map<string, Promise<unknown>>();
  private readonly timers = new Map<string, () => void>();
  /** Unfinished command ids by meter. */
  private readonly unfinishedByMeter = new Map<string, Set<string>>();
  private readonly tasks = new Set<Promise<unknown>>();
  private closed = false;

  private constructor(private readonly options: RelayServiceOptions) {
    super();
    // Every meter request in flight listens on this one signal (up to maxConcurrent of them): not a leak.
    setMaxListeners(0, this.abort.signal);
    this.journal = options.journal;
    this.port = options.port;
    this.audit = options.audit ?? NULL_AUDIT;
    this.thresholds = { ...DEFAULT_LINK_THRESHOLDS, ...options.link };
    this.wearLimits = { ...DEFAULT_WEAR_LIMITS, ...options.wear };
    this.weldVoltage = options.weldVoltage ?? 50;
    this.chargeCycleMs = options.chargeCycleMs ?? 30_000;
    this.linkRetryMs = options.linkRetryMs ?? 300_000;
    this.acceptReady = options.acceptReadyForReconnection ?? true;
    this.now = options.now ?? Date.now;
    this.scheduler = options.scheduler ?? timerScheduler(this.now);
    this.limiter = new Limiter(options.maxConcurrent ?? 64);
  }

  /** Opens the service on a journal; call resume() to continue what a previous run left unfinished. */
  static async open(options: RelayServiceOptions): Promise<RelayService> {
    const service = new RelayService(options);
    for (const entry of await options.journal.unfinished()) service.track(entry);
    return service;
  }

  /**
   * Runs one command to a result. A command id seen before returns its
   * recorded outcome without touching the meter (an unfinished one is tried
   * again under the read-back rule of the header: the relay never operates
   * twice). Throws RelayError BAD_COMMAND, ID_CONFLICT
   * (same id, different command) or CLOSED.
   */
  execute(command: RelayCommand): Promise<RelayResult> {
    if (this.closed) return Promise.reject(new RelayError('CLOSED', 'the relay service is closed'));
    try {
      checkCommand(command);
    } catch (err) {
      return Promise.reject(err);
    }
    const auth = command.authorization;
    this.audit.daemon(this.fields(command, 'receive', 'RECEIVED', { action: command.action, source: auth.source, role: auth.role, mfa: auth.mfa }));
    const problem = authorizationProblem(auth);
    if (problem !== undefined) {
      this.audit.daemon(this.fields(command, 'authorize', 'UNAUTHORIZED', { why: problem }));
      const result = this.result(command, 'UNAUTHORIZED', { detail: problem });
      this.emit('result', result);
      return Promise.resolve(result);
    }
    this.audit.daemon(this.fields(command, 'authorize', 'AUTHORIZED', { role: auth.role, mfa: true }));
    const inFlight = this.running.get(command.id);
    if (inFlight) return inFlight;
    return this.track_(command.id, async () => {
      const existing = await this.journal.get(command.id);
      if (existing) {
        if (!sameCommand(existing.command, command)) {
          throw new RelayError('ID_CONFLICT', `command id ${command.id} was used for another command`);
        }
        if (existing.phase === 'done' && existing.outcome) {
          this.audit.daemon(this.fields(command, 'repeat', 'DUPLICATE', { outcome: existing.outcome.code }));
          return existing.outcome;
        }
        return this.runLifecycle(existing);
      }
      const at = this.now();
      const entry: RelayJournalEntry = { command, phase: 'accepted', invokeMaybeSent: false, createdAt: at, updatedAt: at };
      await this.journal.put(entry);
      this.track(entry);
      return this.runLifecycle(entry);
    });
  }

  /** The journal entry of a command (its phase, last result, outcome). */
  status(id: string): Promise<RelayJournalEntry | undefined> {
    return this.journal.get(id);
  }

  /** Every command in the journal (finished ones until purged), in id order. */
  entries(): AsyncGenerator<RelayJournalEntry> {
    return this.journal.entries();
  }

  /** A rolling run as journaled. */
  runRecord(runId: string): Promise<RelayRunRecord | undefined> {
    return this.journal.getRun(runId);
  }

  /**
   * Continues every unfinished command of the journal: those accepted or
   * actuating (read back first; invoked once more only if the relay did not
   * move) or pending are tried now, deferred ones at
   * their retry time; unfinished rolling runs are restarted. Resolves with
   * the results of the commands tried now, once they and the runs settled.
   */
  async resume(): Promise<RelayResult[]> {
    this.assertOpen();
    const now = this.now();
    const tried: Array<Promise<RelayResult>> = [];
    for (const entry of await this.journal.unfinished()) {
      this.track(entry);
      if (entry.invokeMaybeSent) this.audit.daemon(this.fields(entry.command, 'resume', 'RESUMED', { phase: entry.phase }));
      if (entry.phase === 'deferred' && entry.retryAt !== undefined && entry.retryAt > now && entry.command.notAfter > now) {
        this.schedule(entry);
        continue;
      }
      const attempt = this.dispatch(entry.command.id);
      // Handled here at once: if the service closes while the loop still awaits the journal, this promise
      // rejects (CLOSED) before Promise.all below gets to it, which would be an unhandled rejection.
      attempt.catch(() => undefined);
      tried.push(attempt);
    }
    const runs = (await this.journal.runs()).filter((run) => !run.finished).map((run) => this.startRun(run));
    const [results] = await Promise.all([Promise.all(tried), Promise.all(runs)]);
    return results;
  }

  /**
   * The meter re-registered or reported power restored: its waiting commands
   * are tried now (expired ones finish as EXPIRED).
   */
  async meterAvailable(meter: string): Promise<RelayResult[]> {
    this.assertOpen();
    const ids = [...(this.unfinishedByMeter.get(meter) ?? [])];
    this.audit.daemon({ command: '-', operator: '-', meter, step: 'meter-available', token: 'METER_AVAILABLE', extra: { waiting: ids.length } });
    return Promise.all(ids.map((id) => this.dispatch(id)));
  }

  /** Unfinished commands (ids) waiting for the meter. */
  waitingFor(meter: string): string[] {
    return [...(this.unfinishedByMeter.get(meter) ?? [])];
  }

  /** Ids of every unfinished command (waiting or in progress), from memory. */
  unfinishedIds(): string[] {
    return [...this.unfinishedByMeter.values()].flatMap((ids) => [...ids]);
  }

  /** Unfinished commands (waiting or in progress). */
  waitingCount(): number {
    let count = 0;
    for (const ids of this.unfinishedByMeter.values()) count += ids.size;
    return count;
  }

  /** Commands being worked on now. */
  runningCount(): number {
    return this.running.size;
  }

  /** Standing alarms, of one meter or all. */
  alarms(meter?: string): Promise<RelayAlarm[]> {
    return this.journal.alarms(meter);
  }

  /**
   * A magnetic tamper reported by an event (a flow that decoded the meter's
   * push, a field report): raises the TAMPER alarm, which locks reconnects.
   * Resolves with the standing alarm (the earlier one if it already stood).
   */
  async reportTamper(meter: string, detail: string): Promise<RelayAlarm> {
    this.assertOpen();
    if (typeof meter !== 'string' || !/^[\x21-\x7e]{1,128}$/.test(meter)) throw new RelayError('BAD_COMMAND', 'meter must be 1-128 printable characters without spaces');
    // On the meter's chain: a reset of the alarm in progress must not delete a tamper reported meanwhile.
    return this.onMeterChain(meter, () => this.raiseTamperEvent(meter, detail));
  }

  private async raiseTamperEvent(meter: string, detail: string): Promise<RelayAlarm> {
    this.assertOpen();
    const standing = await this.journal.alarm(meter, 'TAMPER');
    if (standing) return standing;
    const alarm: RelayAlarm = { meter, code: 'TAMPER', raisedAt: this.now(), source: 'event', detail: String(detail).slice(0, 512) || 'magnetic tamper reported' };
    await this.journal.write({ raise: [alarm], reports: [alarmReport(alarm)] });
    this.emit('report');
    this.alarmRaised(alarm);
    return alarm;
  }

  /**
   * Clears a standing alarm on behalf of an authorized operator (an allowed
   * role and MFA, as for a command). For TAMPER the meter's own alarm
   * register is cleared first (when the port can), so the next reconnect's
   * check does not find it again; if that fails the alarm stays. Throws
   * RelayError UNAUTHORIZED, NO_SUCH_ALARM, METER_FAILED or CLOSED.
   */
  async clearAlarm(meter: string, code: RelayAlarmCode, authorization: RelayAuthorization): Promise<{ cleared: RelayAlarm; meterCleared: boolean }> {
    this.assertOpen();
    // On the meter's chain: after the meter's commands in progress, before the next ones, never beside a tamper report.
    return this.onMeterChain(meter, () => this.clearAlarmNow(meter, code, authorization));
  }

  private async clearAlarmNow(meter: string, code: RelayAlarmCode, authorization: RelayAuthorization): Promise<{ cleared: RelayAlarm; meterCleared: boolean }> {
    this.assertOpen();
    const who = { command: '-', operator: authorization.operator, meter, step: 'alarm-reset' };
    const problem = authorizationProblem(authorization);
    if (problem !== undefined) {
      this.audit.daemon({ ...who, token: 'UNAUTHORIZED', extra: { alarm: code, why: problem } });
      throw new RelayError('UNAUTHORIZED', problem);
    }
    const alarm = await this.journal.alarm(meter, code);
    if (!alarm) throw new RelayError('NO_SUCH_ALARM', `meter ${meter} has no standing ${code} alarm`);
    let meterCleared = false;
    if (code === 'TAMPER' && this.port.clearAlarms) {
      try {
        await this.port.clearAlarms(meter, TAMPER_ALARM_BIT, this.abort.signal);
        meterCleared = true;
      } catch (err) {
        if (this.abort.signal.aborted) throw new RelayError('CLOSED', 'the relay service is closing');
        const why = err instanceof RelayPortError ? `${err.code}: ${err.message}` : String((err as Error)?.message ?? err);
        this.audit.daemon({ ...who, token: 'ALARM_RESET_FAILED', extra: { alarm: code, why } });
        throw new RelayError('METER_FAILED', `the meter's alarm register could not be cleared, the alarm stays: ${why}`);
      }
    }
    const at = this.now();
    const report: RelayReport = {
      key: `relay-alarm-cleared:${meter}:${code}:${at}`,
      kind: 'event',
      meter,
      ts: at,
      body: { type: 'relay-alarm-cleared', alarm: { ...alarm }, operator: authorization.operator, source: authorization.source, meterCleared },
    };
    await this.journal.write({ clear: [{ meter, code }], reports: [report] });
    const fields = { ...who, token: 'ALARM_CLEARED', extra: { alarm: code, meter_register_cleared: meterCleared } };
    this.audit.actuator(fields);
    this.audit.daemon(fields);
    this.emit('report');
    this.emit('alarmCleared', alarm, { operator: authorization.operator, meterCleared });
    return { cleared: alarm, meterCleared };
  }

  /**
   * A rolling run: one command per meter (id `<runId>:<meter>`), at most
   * `concurrency` at once, 'progress' after each result. The run is
   * journaled first, so resume() restarts it; calling runMany again with the
   * same runId continues it (finished commands return their outcome).
   */
  async runMany(
    template: RelayCommandTemplate,
    meters: readonly string[],
    options: { concurrency: number; runId?: string },
  ): Promise<RelayRunSummary> {
    this.assertOpen();
    const runId = options.runId ?? randomUUID();
    const existing = await this.journal.getRun(runId);
    const run: RelayRunRecord = existing ?? {
      runId,
      template: { ...template },
      meters: [...new Set(meters)],
      concurrency: options.concurrency,
      createdAt: this.now(),
      finished: false,
    };
    if (!existing) await this.journal.putRun(run);
    return this.startRun(run);
  }

  /** Resolves when no lifecycle is in progress (timers for deferred commands may still be armed). */
  async idle(): Promise<void> {
    while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
  }

  /**
   * Stops: cancels retry timers, aborts the port calls in progress (their
   * commands stay as the journal says), waits for them, closes the journal
   * and the audit logs.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const cancel of this.timers.values()) cancel();
    this.timers.clear();
    this.abort.abort();
    await this.idle();
    await this.journal.close();
    await this.audit.close();
  }

  // -------------------------------------------------------------------------
  // Runs

  private startRun(run: RelayRunRecord): Promise<RelayRunSummary> {
    const work = (async () => {
      const limiter = new Limiter(Math.max(1, run.concurrency));
      const byCode: Record<string, number> = {};
      let done = 0;
      const total = run.meters.length;
      const results = await Promise.all(
        run.meters.map((meter) =>
          limiter.run(async () => {
            const result = await this.execute({ ...run.template, id: `${run.runId}:${meter}`, meter, runId: run.runId });
            done += 1;
            byCode[result.code] = (byCode[result.code] ?? 0) + 1;
            this.emit('progress', { runId: run.runId, done, total, byCode: { ...byCode }, last: result });
            return result;
          }),
        ),
      );
      const finished = results.every((r) => r.final);
      if (finished) await this.journal.putRun({ ...run, finished: true });
      return { runId: run.runId, total, byCode, results, finished };
    })();
    this.tasks.add(work);
    void work.catch(() => undefined).finally(() => this.tasks.delete(work));
    return work;
  }

  // -------------------------------------------------------------------------
  // Dispatch

  private dispatch(id: string): Promise<RelayResult> {
    if (this.closed) return Promise.reject(new RelayError('CLOSED', 'the relay service is closed'));
    const inFlight = this.running.get(id);
    if (inFlight) return inFlight;
    return this.track_(id, async () => {
      const entry = await this.journal.get(id);
      if (!entry) throw new RelayError('BAD_COMMAND', `no command ${id} in the journal`);
      if (entry.phase === 'done' && entry.outcome) return entry.outcome;
      return this.runLifecycle(entry);
    });
  }

  /** Registers the one promise for command `id`. */
  private track_(id: string, work: () => Promise<RelayResult>): Promise<RelayResult> {
    // Removed from `running` before the caller sees the result, so a re-dispatch right after starts afresh.
    const self: { promise?: Promise<RelayResult> } = {};
    const promise = (async () => {
      try {
        return await work();
      } finally {
        if (this.running.get(id) === self.promise) this.running.delete(id);
        if (self.promise) this.tasks.delete(self.promise);
      }
    })();
    self.promise = promise;
    this.running.set(id, promise);
    this.tasks.add(promise);
    return promise;
  }

  /** Per meter one at a time, service-wide at most maxConcurrent; re-reads the entry when its turn comes. */
  private runLifecycle(entry: RelayJournalEntry): Promise<RelayResult> {
    return this.onMeterChain(entry.command.meter, () =>
      this.limiter.run(async () => {
        const fresh = (await this.journal.get(entry.command.id)) ?? entry;
        return this.lifecycle(fresh);
      }),
    );
  }

  /** Runs `work` after everything queued for the meter (lifecycles, alarm changes): one at a time per meter. */
  private onMeterChain<T>(meter: string, work: () => Promise<T>): Promise<T> {
    const previous = this.meterChains.get(meter) ?? Promise.resolve();
    const run = previous.catch(() => undefined).then(work);
    const tail = run.catch(() => undefined);
    this.meterChains.set(meter, tail);
    void tail.then(() => {
      if (this.meterChains.get(meter) === tail) this.meterChains.delete(meter);
    });
    this.tasks.add(tail);
    void tail.finally(() => this.tasks.delete(tail));
    return run;
  }

  // -------------------------------------------------------------------------
  // The state machine

  private async lifecycle(entry: RelayJournalEntry): Promise<RelayResult> {
    this.assertOpen();
    const cmd = entry.command;
    if (entry.phase === 'done' && entry.outcome) return entry.outcome;
    this.cancelTimer(cmd.id);
    // The invoke may have been sent: read the relay back before anything else.
    if (entry.invokeMaybeSent) return this.verify(entry, true);
    const now = this.now();
    if (now >= cmd.notAfter) return this.finish(entry, 'EXPIRED', { detail: 'notAfter passed before the relay was operated' });
    if (cmd.notBefore !== undefined && now < cmd.notBefore) {
      return this.defer(entry, 'not-before', cmd.notBefore, 'the command is not valid yet');
    }

    if (cmd.action === 'reconnect') {
      const locked = await this.tamperLock(entry);
      if (locked) return locked;
    }

    const linkDeferred = this.linkGate(entry, now);
    if (linkDeferred) return linkDeferred;

    if (cmd.action === 'reconnect' && this.port.readAlarms) {
      // The meter's own tamper flag, read before a reconnect: a magnet may have been used since the last command.
      let alarms: number;
      try {
        alarms = await this.call(cmd, 'read-alarm-register', () => this.port.readAlarms!(cmd.meter, this.abort.signal));
      } catch (err) {
        return this.failed(entry, err);
      }
      if ((alarms & TAMPER_ALARM_BIT) !== 0) {
        const alarm: RelayAlarm = {
          meter: cmd.meter,
          code: 'TAMPER',
          raisedAt: this.now(),
          source: 'meter-alarm-register',
          detail: `alarm register 1 reads 0x${(alarms >>> 0).toString(16).padStart(8, '0')}: magnetic tamper (bit 16)`,
          commandId: cmd.id,
        };
        return this.finish(entry, 'TAMPER_LOCKED', { detail: `reconnect refused: ${alarm.detail}; an operator must clear the alarm (ami-gateway alarms reset --meter ${cmd.meter} --code TAMPER)` }, alarm);
      }
    }

    // Baseline.
    let state: ControlState;
    try {
      state = await this.call(cmd, 'read-control-state', () => this.port.readControlState(cmd.meter, this.abort.signal));
    } catch (err) {
      return this.failed(entry, err);
    }
    this.audit.actuator(this.fields(cmd, 'baseline', 'STATE_READ', { control_state: state }));
    if (state === targetState(cmd.action)) {
      let voltage: number;
      try {
        voltage = await this.call(cmd, 'read-load-voltage', () => this.port.readLoadVoltage(cmd.meter, this.abort.signal));
      } catch (err) {
        return this.failed(entry, err);
      }
      if (cmd.action === 'disconnect' && voltage > this.weldVoltage) {
        return this.finish(entry, 'RELAY_WELD_DETECTED', { state, loadVoltage: voltage, idempotent: true, detail: `already disconnected but ${voltage} V on the load side` });
      }
      return this.finish(entry, 'RELAY_OP_SUCCESS', { state, loadVoltage: voltage, idempotent: true, detail: 'already in the target state: confirmed without actuation' });
    }

    // Wear gate.
    const times = await this.journal.wear(cmd.meter);
    const wearDeferred = this.wearGate(entry, times, now);
    if (wearDeferred) return wearDeferred;
    return this.actuate(entry, state, times, false);
  }

  /** Journals `actuating` (synced, with the wear record), then sends the invoke and verifies. */
  private async actuate(entry: RelayJournalEntry, fromState: ControlState, times: readonly number[], resumed: boolean): Promise<RelayResult> {
    const cmd = entry.command;
    const attempts = attemptsOf(entry) + 1;
    // Actuate: on disk before the invoke is sent.
    const invokedAt = this.now();
    const actuating: RelayJournalEntry = {
      ...entry,
      phase: 'actuating',
      invokeMaybeSent: true,
      invokeUnanswered: true,
      attempts,
      fromState,
      invokedAt,
      updatedAt: invokedAt,
    };
    delete actuating.retryAt;
    await this.journal.put(actuating, { meter: cmd.meter, times: [...pruneWear(times, invokedAt), invokedAt] });
    this.track(actuating);
    this.audit.actuator(this.fields(cmd, 'actuate', 'ACTUATING', { method: methodFor(cmd.action), from_state: fromState, attempt: attempts }));
    try {
      await this.call(cmd, 'invoke', () => this.port.invoke(cmd.meter, methodFor(cmd.action), this.abort.signal));
    } catch (err) {
      if (err instanceof RelayPortError && (err.code === 'LOW_CAPACITOR' || err.code === 'NO_POWER') && !this.abort.signal.aborted) {
        // The meter says it did not fire (no charge, or no supply to charge from): the retry may invoke,
        // and this attempt counts neither as wear nor as an attempt. Without power the meter keeps the
        // command pending, as the field procedure says, until power is restored (meterAvailable).
        const cleared: RelayJournalEntry = { ...actuating, invokeMaybeSent: false, invokeUnanswered: false, attempts: attempts - 1 };
        delete cleared.invokedAt;
        const wear = { meter: cmd.meter, times: pruneWear(times, invokedAt) };
        if (err.code === 'NO_POWER') return this.defer(cleared, 'no-power', undefined, err.message, wear);
        return this.defer(cleared, 'E001', this.now() + this.chargeCycleMs, err.message, wear);
      }
      // Only a timeout leaves the invoke unanswered; any other answer says what the meter did.
      const answered = err instanceof RelayPortError && err.code !== 'COMM_TIMEOUT_ERR';
      return this.failed(answered ? { ...actuating, invokeUnanswered: false } : actuating, err, resumed);
    }
    return this.verify({ ...actuating, invokeUnanswered: false }, resumed);
  }

  /**
   * Reads the relay back after an invoke (or on resuming a command whose
   * invoke may have been sent) and concludes; a relay found unmoved after an
   * unanswered first invoke is invoked once more (rule 2 of the header).
   */
  private async verify(entry: RelayJournalEntry, resumed: boolean): Promise<RelayResult> {
    const cmd = entry.command;
    if (entry.invokeMaybeSent && entry.invokeUnanswered === undefined) {
      // An entry written before invokeUnanswered existed: `actuating` means no answer was journaled.
      entry = { ...entry, invokeUnanswered: entry.phase === 'actuating' };
    }
    let state: ControlState;
    let voltage: number;
    try {
      state = await this.call(cmd, 'verify-control-state', () => this.port.readControlState(cmd.meter, this.abort.signal));
      voltage = await this.call(cmd, 'verify-load-voltage', () => this.port.readLoadVoltage(cmd.meter, this.abort.signal));
    } catch (err) {
      return this.failed(entry, err, resumed);
    }
    this.audit.actuator(this.fields(cmd, 'verify', 'STATE_READ', { control_state: state, load_voltage: voltage }));
    if (this.mayInvokeAgain(entry) && !this.reached(cmd, state) && this.unmoved(entry, state)) {
      return this.invokeAgain(entry, state, voltage);
    }
    return this.conclude(entry, state, voltage, resumed);
  }

  /** Rule 2: the relay did not move after an unanswered first invoke. */
  private async invokeAgain(entry: RelayJournalEntry, state: ControlState, voltage: number): Promise<RelayResult> {
    const cmd = entry.command;
    const now = this.now();
    this.audit.daemon(this.fields(cmd, 'resume', 'RELAY_NOT_MOVED', { control_state: state, load_voltage: voltage, attempts: attemptsOf(entry) }));
    if (now >= cmd.notAfter) {
      return this.finish(entry, 'EXPIRED', {
        state,
        loadVoltage: voltage,
        resumed: true,
        detail: 'notAfter passed: the relay had not moved after an unanswered invoke and is not invoked again',
      });
    }
    if (cmd.action === 'reconnect') {
      const locked = await this.tamperLock(entry);
      if (locked) return locked;
    }
    const linkDeferred = this.linkGate(entry, now);
    if (linkDeferred) return linkDeferred;
    const times = await this.journal.wear(cmd.meter);
    // The command's own first attempt did not move the relay: it does not hold back its completion.
    const others = entry.invokedAt === undefined ? times : times.filter((t) => t !== entry.invokedAt);
    const wearDeferred = this.wearGate(entry, others, now);
    if (wearDeferred) return wearDeferred;
    return this.actuate(entry, entry.fromState ?? state, times, true);
  }

  /** Whether the relay may be invoked once more: its last invoke is unanswered and was the first. */
  private mayInvokeAgain(entry: RelayJournalEntry): boolean {
    return entry.invokeMaybeSent && entry.invokeUnanswered === true && attemptsOf(entry) < MAX_ATTEMPTS;
  }

  /** The state verify accepts as the command done (weld aside). */
  private reached(cmd: RelayCommand, state: ControlState): boolean {
    return cmd.action === 'disconnect' ? state === 0 : state === 1 || (state === 2 && this.acceptReady);
  }

  /** Still in the state read before the first invoke (older entries: not moved towards the target). */
  private unmoved(entry: RelayJournalEntry, state: ControlState): boolean {
    if (entry.fromState !== undefined) return state === entry.fromState;
    return entry.command.action === 'disconnect' ? state !== 0 : state === 0;
  }

  /** A standing TAMPER alarm refuses a reconnect without a word to the meter. */
  private async tamperLock(entry: RelayJournalEntry): Promise<RelayResult | undefined> {
    const cmd = entry.command;
    const alarm = await this.journal.alarm(cmd.meter, 'TAMPER');
    if (!alarm) return undefined;
    this.audit.daemon(this.fields(cmd, 'tamper-check', 'TAMPER_LOCKED', { since: new Date(alarm.raisedAt).toISOString() }));
    return this.finish(entry, 'TAMPER_LOCKED', {
      detail: `reconnect refused: tamper alarm since ${new Date(alarm.raisedAt).toISOString()} (${alarm.detail}); an operator must clear it (ami-gateway alarms reset --meter ${cmd.meter} --code TAMPER)`,
    });
  }

  private linkGate(entry: RelayJournalEntry, now: number): Promise<RelayResult> | undefined {
    const cmd = entry.command;
    const metrics = this.options.linkMetrics?.(cmd.meter);
    const problem = linkProblem(metrics, this.thresholds);
    if (problem !== undefined) {
      this.audit.daemon(this.fields(cmd, 'link-check', 'LINK_DEFERRED', { link: describeLink(metrics), why: problem }));
      return this.defer(entry, 'link', now + this.linkRetryMs, problem);
    }
    this.audit.daemon(this.fields(cmd, 'link-check', 'LINK_OK', { link: describeLink(metrics) }));
    return undefined;
  }

  private wearGate(entry: RelayJournalEntry, gateTimes: readonly number[], now: number): Promise<RelayResult> | undefined {
    const cmd = entry.command;
    const wear = wearDeferral(gateTimes, now, this.wearLimits);
    if (!wear) return undefined;
    this.audit.actuator(this.fields(cmd, 'wear-check', 'WEAR_LIMIT', { until: new Date(wear.until).toISOString(), why: wear.detail }));
    return this.defer(entry, 'wear', wear.until, wear.detail);
  }

  /** The outcome of a read-back: success, weld, or E099 after a re-sync read. */
  private async conclude(entry: RelayJournalEntry, state: ControlState, voltage: number, resumed: boolean): Promise<RelayResult> {
    const cmd = entry.command;
    const base = { state, loadVoltage: voltage, resumed };
    if (cmd.action === 'disconnect' && state === 0) {
      if (voltage > this.weldVoltage) {
        return this.finish(entry, 'RELAY_WELD_DETECTED', { ...base, detail: `control_state disconnected but ${voltage} V on the load side (threshold ${this.weldVoltage} V)` });
      }
      return this.finish(entry, 'RELAY_OP_SUCCESS', base);
    }
    if (cmd.action === 'reconnect' && (state === 1 || (state === 2 && this.acceptReady))) {
      return this.finish(entry, 'RELAY_OP_SUCCESS', { ...base, ...(state === 2 ? { detail: 'ready for reconnection: the customer completes it' } : {}) });
    }
    // Logical state mismatch: force a re-sync, record the real state.
    let real = state;
    let realVoltage = voltage;
    this.audit.daemon(this.fields(cmd, 'resync', 'STATE_RESYNC', { control_state: state }));
    try {
      real = await this.call(cmd, 'resync-control-state', () => this.port.readControlState(cmd.meter, this.abort.signal));
      realVoltage = await this.call(cmd, 'resync-load-voltage', () => this.port.readLoadVoltage(cmd.meter, this.abort.signal));
    } catch (err) {
      if (this.abort.signal.aborted) throw new RelayError('CLOSED', 'the relay service is closing');
      // Keep what verify read.
    }
    return this.finish(entry, 'E099', {
      state: real,
      loadVoltage: realVoltage,
      resumed,
      detail: `after ${methodFor(cmd.action)}${attemptsOf(entry) > 1 ? ` (${attemptsOf(entry)} attempts)` : ''} control_state is ${real}, expected ${targetState(cmd.action)}`,
    });
  }

  /** A port call failed (or the service is closing). */
  private async failed(entry: RelayJournalEntry, err: unknown, resumed = false): Promise<RelayResult> {
    if (this.abort.signal.aborted) throw new RelayError('CLOSED', 'the relay service is closing');
    const cmd = entry.command;
    const code = err instanceof RelayPortError ? err.code : 'COMM_TIMEOUT_ERR';
    const message = err instanceof Error ? err.message : String(err);
    switch (code) {
      case 'AUTH_FAILURE':
        return this.finish(entry, 'E012', { detail: message, resumed });
      case 'OBSTRUCTION':
        return this.finish(entry, 'E044', { detail: message, resumed });
      case 'REFUSED':
        return this.finish(entry, 'REFUSED', { detail: message, resumed });
      case 'LOW_CAPACITOR':
        return this.defer(entry, 'E001', this.now() + this.chargeCycleMs, message);
      case 'NO_POWER':
      case 'COMM_TIMEOUT_ERR':
      default: {
        if (this.now() >= cmd.notAfter) {
          return this.finish(entry, 'EXPIRED', {
            detail: `${code} at notAfter${entry.invokeMaybeSent ? '; the relay state after the invoke is unknown' : ''}`,
            resumed,
          });
        }
        if (code === 'NO_POWER') return this.defer(entry, 'no-power', undefined, message);
        return this.pending(entry, message);
      }
    }
  }

  // -------------------------------------------------------------------------
  // Recording results

  /**
   * Records a final outcome, its report for the HES and (TAMPER, or a weld)
   * a new alarm, in one synced write.
   */
  private async finish(
    entry: RelayJournalEntry,
    code: RelayFinalCode,
    extra: Partial<Pick<RelayResult, 'state' | 'loadVoltage' | 'idempotent' | 'detail' | 'resumed'>>,
    alarm?: RelayAlarm,
  ): Promise<RelayResult> {
    const cmd = entry.command;
    const attempts = attemptsOf(entry);
    const result = this.result(cmd, code, { ...extra, actuated: entry.invokeMaybeSent, ...(attempts > 1 ? { attempts } : {}) });
    const done: RelayJournalEntry = { ...entry, phase: 'done', outcome: result, last: result, updatedAt: result.at };
    delete done.retryAt;
    if (!alarm && code === 'RELAY_WELD_DETECTED') {
      alarm = { meter: cmd.meter, code: 'RELAY_WELD_DETECTED', raisedAt: result.at, source: 'relay-outcome', detail: result.detail ?? 'voltage on the load side', commandId: cmd.id };
    }
    // An alarm already standing is not raised (nor reported) again.
    if (alarm && (await this.journal.alarm(alarm.meter, alarm.code))) alarm = undefined;
    const extras: RelayJournalExtras = { reports: [resultReport(result), ...(alarm ? [alarmReport(alarm)] : [])], ...(alarm ? { raise: [alarm] } : {}) };
    await this.journal.put(done, undefined, extras);
    this.track(done);
    this.audit.actuator(this.fields(cmd, 'outcome', code, { control_state: result.state, load_voltage: result.loadVoltage, actuated: result.actuated, idempotent: result.idempotent, detail: result.detail }));
    this.audit.daemon(this.fields(cmd, 'outcome', code, { final: true }));
    // 'report' first: a listener of 'result' that throws must not hold the report back.
    this.emit('report');
    if (alarm) this.alarmRaised(alarm);
    this.emit('result', result);
    return result;
  }

  private alarmRaised(alarm: RelayAlarm): void {
    const fields = { command: alarm.commandId ?? '-', operator: '-', meter: alarm.meter, step: 'alarm', token: alarm.code === 'TAMPER' ? 'TAMPER_ALARM' : 'WELD_ALARM', extra: { source: alarm.source, detail: alarm.detail } };
    this.audit.actuator(fields);
    this.audit.daemon(fields);
    this.emit('alarm', alarm);
  }

  private async defer(
    entry: RelayJournalEntry,
    reason: RelayDeferralReason,
    retryAt: number | undefined,
    detail: string,
    wear?: { meter: string; times: readonly number[] },
  ): Promise<RelayResult> {
    const cmd = entry.command;
    const result = this.result(cmd, 'DEFERRED', { reason, detail, actuated: entry.invokeMaybeSent, ...(retryAt !== undefined ? { retryAt } : {}) });
    const deferred: RelayJournalEntry = { ...entry, phase: 'deferred', last: result, updatedAt: result.at };
    if (retryAt !== undefined) deferred.retryAt = retryAt;
    else delete deferred.retryAt;
    await this.journal.put(deferred, wear);
    this.track(deferred);
    if (reason === 'E001') this.audit.actuator(this.fields(cmd, 'outcome', 'E001', { detail, retry_at: iso(retryAt) }));
    this.audit.daemon(this.fields(cmd, 'defer', 'DEFERRED', { reason, retry_at: iso(retryAt), why: detail }));
    this.emit('result', result);
    this.schedule(deferred);
    return result;
  }

  private async pending(entry: RelayJournalEntry, detail: string): Promise<RelayResult> {
    const cmd = entry.command;
    const result = this.result(cmd, 'COMM_TIMEOUT_ERR', { detail, actuated: entry.invokeMaybeSent });
    const pending: RelayJournalEntry = { ...entry, phase: 'pending', last: result, updatedAt: result.at };
    delete pending.retryAt;
    await this.journal.put(pending);
    this.track(pending);
    this.audit.actuator(this.fields(cmd, 'outcome', 'COMM_TIMEOUT_ERR', { detail, invoke_maybe_sent: entry.invokeMaybeSent, invoke_unanswered: entry.invokeUnanswered }));
    this.audit.daemon(this.fields(cmd, 'pending', 'PENDING', { until: iso(cmd.notAfter) }));
    this.emit('result', result);
    this.schedule(pending);
    return result;
  }

  private result(cmd: RelayCommand, code: RelayResult['code'], extra: Partial<RelayResult>): RelayResult {
    const final = code !== 'DEFERRED' && code !== 'COMM_TIMEOUT_ERR';
    const result: RelayResult = {
      commandId: cmd.id,
      meter: cmd.meter,
      action: cmd.action,
      operator: cmd.authorization.operator,
      source: cmd.authorization.source,
      code,
      final,
      actuated: false,
      at: this.now(),
      ...(cmd.runId !== undefined ? { runId: cmd.runId } : {}),
    };
    for (const [key, value] of Object.entries(extra)) {
      if (value !== undefined && value !== false) (result as unknown as Record<string, unknown>)[key] = value;
    }
    result.actuated = extra.actuated === true;
    return result;
  }

  // -------------------------------------------------------------------------
  // Helpers

  private async call<T>(cmd: RelayCommand, what: string, fn: () => Promise<T>): Promise<T> {
    this.audit.daemon(this.fields(cmd, what, 'APDU_SENT'));
    try {
      const value = await fn();
      this.audit.daemon(this.fields(cmd, what, 'APDU_RECEIVED', { value: typeof value === 'number' ? value : undefined }));
      return value;
    } catch (err) {
      this.audit.daemon(this.fields(cmd, what, 'APDU_ERROR', { error: err instanceof RelayPortError ? err.code : (err as Error)?.name }));
      throw err;
    }
  }

  /** Re-dispatch a waiting command at its retry time, or at its notAfter (to finish it as EXPIRED). */
  private schedule(entry: RelayJournalEntry): void {
    if (this.closed) return;
    this.cancelTimer(entry.command.id);
    const at = Math.min(entry.retryAt ?? Number.POSITIVE_INFINITY, entry.command.notAfter);
    const cancel = this.scheduler.at(at, () => {
      this.timers.delete(entry.command.id);
      if (!this.closed) void this.dispatch(entry.command.id).catch(() => undefined);
    });
    this.timers.set(entry.command.id, cancel);
  }

  private cancelTimer(id: string): void {
    const cancel = this.timers.get(id);
    if (cancel) {
      cancel();
      this.timers.delete(id);
    }
  }

  private track(entry: RelayJournalEntry): void {
    const { id, meter } = entry.command;
    let ids = this.unfinishedByMeter.get(meter);
    if (entry.phase === 'done') {
      ids?.delete(id);
      if (ids?.size === 0) this.unfinishedByMeter.delete(meter);
      return;
    }
    if (!ids) this.unfinishedByMeter.set(meter, (ids = new Set()));
    ids.add(id);
  }

  private fields(cmd: RelayCommand, step: string, token: string, extra?: Extra) {
    return { command: cmd.id, operator: cmd.authorization.operator, meter: cmd.meter, step, token, ...(extra ? { extra } : {}) };
  }

  private assertOpen(): void {
    if (this.closed) throw new RelayError('CLOSED', 'the relay service is closed');
  }
}

/** Invokes a command may send: the first, and one more after an unanswered one that left the relay unmoved. */
const MAX_ATTEMPTS = 2;

/** Invokes of the command that may have reached the meter (older entries: 1 while invokeMaybeSent). */
function attemptsOf(entry: RelayJournalEntry): number {
  return entry.attempts ?? (entry.invokeMaybeSent ? 1 : 0);
}

function resultReport(result: RelayResult): RelayReport {
  return { key: resultReportKey(result.commandId), kind: 'result', meter: result.meter, ts: result.at, body: { type: 'relay-outcome', ...result } };
}

function alarmReport(alarm: RelayAlarm): RelayReport {
  return { key: `relay-alarm:${alarm.meter}:${alarm.code}:${alarm.raisedAt}`, kind: 'alarm', meter: alarm.meter, ts: alarm.raisedAt, body: { type: 'relay-alarm', ...alarm } };
}

function iso(time: number | undefined): string | undefined {
  return time === undefined ? undefined : new Date(time).toISOString();
}
