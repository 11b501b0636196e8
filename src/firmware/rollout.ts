/**
 * Firmware rollouts (issue 9): takes a list of meters to wanted
 * communication-module and/or metrology versions, a rolling sequence of at
 * most `concurrency` meters at a time.
 *
 * For each meter:
 *
 *   1. check    read the meter's firmware (GET /fw/state) and plan the steps
 *               with planUpdate(): an update that would leave an
 *               incompatible pair, after the last step or between two, is
 *               refused (FW_INCOMPATIBLE) and nothing is sent;
 *   2. steps    per step, re-read the meter, check the step again against
 *               the pair it runs now, re-verify the image (signature, chain,
 *               size, hash: FW_IMAGE_REFUSED when it fails), journal the
 *               offer, then offer it (POST /fw/update). The meter downloads
 *               the image block-wise from the gateway (FirmwareResource); the
 *               rollout reads its state every `pollMs` (sooner when it
 *               re-registers) until it runs the step's version. A meter that
 *               failed (hash mismatch, download failed) or stayed silent past
 *               `stepTimeoutMs` is offered the image again, up to
 *               `maxAttempts` offers per step;
 *   3. verify   read the versions back: FW_UPDATE_SUCCESS only when both are
 *               the wanted ones.
 *
 * Every request goes through the port at metrology priority, so relay
 * commands to the same meters go first. Every phase change is journaled
 * before the step it announces; after a restart the service reopens the
 * unfinished rollouts and asks each unfinished meter where it is before
 * offering anything again (a meter still downloading the image is left to
 * finish; a meter that holds part of it resumes from there). Each final
 * outcome is journaled together with a result record for the HES, which a
 * JournalReporter hands to the outbox.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter, setMaxListeners } from 'node:events';
import { Limiter } from '../relay/policy.js';
import { checkUpdate, planUpdate, type FirmwarePair, type WantedFirmware } from './compatibility.js';
import { FirmwareError } from './errors.js';
import { isFirmwareVersion, type FirmwareTarget } from './manifest.js';
import type { FirmwareRepository } from './repository.js';
import type { FirmwareReport, RolloutJournal } from './rollout-journal.js';
import {
  FIRMWARE_FINAL_CODES,
  FirmwarePortError,
  MAX_ROLLOUT_CONCURRENCY,
  MAX_ROLLOUT_METERS,
  meterNameProblem,
  ROLLOUT_ID_PATTERN,
  type FirmwareFinalCode,
  type FirmwareMeterPort,
  type FirmwareOffer,
  type MeterFirmwareReport,
  type MeterRolloutEntry,
  type MeterRolloutPhase,
  type RolloutProgress,
  type RolloutRecord,
  type RolloutSummary,
} from './rollout-types.js';

export interface FirmwareRolloutServiceOptions {
  journal: RolloutJournal;
  repository: FirmwareRepository;
  port: FirmwareMeterPort;
  /** How often a meter's state is read while it works on an image (default 2 s). */
  pollMs?: number;
  /** How long one offer may take, download and install, before it is made again (default 10 min). */
  stepTimeoutMs?: number;
  /** Offers per step before the meter is given up on (default 3). */
  maxAttempts?: number;
  /** Meters worked on at once across all rollouts (default 16). */
  maxConcurrent?: number;
  /** Meters at once in a rollout that names none (default 8). */
  defaultConcurrency?: number;
  /** Whether a meter is registered (has an address); a meter that is not when its turn comes ends FW_UNKNOWN_METER. */
  isRegistered?: (meter: string) => boolean;
  now?: () => number;
}

export interface RolloutRequest {
  want: WantedFirmware;
  meters: readonly string[];
  concurrency?: number;
  rolloutId?: string;
  requestedBy?: string;
}

export interface FirmwareRolloutServiceEvents {
  /** A meter's phase or download progress changed. */
  progress: [RolloutProgress];
  /** A meter finished (entry.outcome is set and on disk). */
  result: [MeterRolloutEntry];
  /** A rollout finished: every meter has an outcome. */
  finished: [RolloutSummary];
  /** Results for the HES were journaled (kick the reporter). */
  report: [];
  /** A meter's lifecycle failed on the gateway's side (e.g. a journal write); it stays as journaled and resumes at the next open. */
  problem: [meter: string, error: Error];
}

export type FirmwareRolloutErrorCode = 'BAD_REQUEST' | 'CLOSED';

export class FirmwareRolloutError extends Error {
  override readonly name = 'FirmwareRolloutError';
  constructor(
    readonly code: FirmwareRolloutErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Progress is journaled at most at these steps of the download, not at every read. */
const PROGRESS_JOURNAL_STEP = 0.25;

/** The idempotency key of the HES record that reports a meter's outcome in a rollout. */
export function rolloutResultKey(rolloutId: string, meter: string): string {
  return `firmware-result:${rolloutId}:${meter}`;
}

/** The meter's firmware pair as read. */
function pairOf(state: MeterFirmwareReport): FirmwarePair {
  return { comm: state.comm, metro: state.metro };
}

class Stopped extends Error {}

export class FirmwareRolloutService extends EventEmitter<FirmwareRolloutServiceEvents> {
  private readonly journal: RolloutJournal;
  private readonly repository: FirmwareRepository;
  private readonly port: FirmwareMeterPort;
  private readonly pollMs: number;
  private readonly stepTimeoutMs: number;
  private readonly maxAttempts: number;
  private readonly defaultConcurrency: number;
  private readonly now: () => number;
  private readonly limiter: Limiter;
  private readonly abort = new AbortController();
  /** Rollouts running now: their meters' entries, kept current (progress is not journaled at every read). */
  private readonly live = new Map<string, { record: RolloutRecord; entries: Map<string, MeterRolloutEntry>; done: Promise<RolloutSummary> }>();
  /** Wakes the waits of a meter's rollout (it re-registered). */
  private readonly wakers = new Map<string, Set<() => void>>();
  private closed = false;
  /** Rollouts being journaled by start(), by id: a second start() of the same id waits for the first. */
  private readonly starting = new Map<string, Promise<RolloutSummary>>();
  private readonly isRegistered: ((meter: string) => boolean) | undefined;

  private constructor(options: FirmwareRolloutServiceOptions) {
    super();
    // Every meter under way listens on this one signal: not a leak.
    setMaxListeners(0, this.abort.signal);
    this.journal = options.journal;
    this.repository = options.repository;
    this.port = options.port;
    this.pollMs = options.pollMs ?? 2000;
    this.stepTimeoutMs = options.stepTimeoutMs ?? 600_000;
    this.maxAttempts = options.maxAttempts ?? 3;
    this.defaultConcurrency = options.defaultConcurrency ?? 8;
    this.now = options.now ?? Date.now;
    this.limiter = new Limiter(options.maxConcurrent ?? 16);
    this.isRegistered = options.isRegistered;
  }

  /** Opens the service and resumes the rollouts the journal holds unfinished. */
  static async open(options: FirmwareRolloutServiceOptions): Promise<FirmwareRolloutService> {
    const service = new FirmwareRolloutService(options);
    for (const record of await options.journal.rollouts()) {
      if (!record.finished) service.run(record, await options.journal.entries(record.rolloutId));
    }
    return service;
  }

  /**
   * Journals a rollout and runs it in the background; resolves with its
   * first summary. The id of a rollout already known returns that one
   * (asking twice starts nothing twice).
   */
  async start(request: RolloutRequest): Promise<RolloutSummary> {
    if (this.closed) throw new FirmwareRolloutError('CLOSED', 'the firmware rollout service is closed');
    const rolloutId = request.rolloutId ?? randomUUID();
    if (!ROLLOUT_ID_PATTERN.test(rolloutId)) throw new FirmwareRolloutError('BAD_REQUEST', `rollout id ${JSON.stringify(rolloutId)}: 1 to 128 of A-Z a-z 0-9 . _ : -`);
    const want = checkWanted(request.want);
    const meters = checkMeters(request.meters);
    const concurrency = request.concurrency ?? this.defaultConcurrency;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > MAX_ROLLOUT_CONCURRENCY) {
      throw new FirmwareRolloutError('BAD_REQUEST', `concurrency ${String(concurrency)}: a whole number from 1 to ${MAX_ROLLOUT_CONCURRENCY}`);
    }
    // Two requests with one id at once: the second waits for the first, then finds it known.
    const starting = this.starting.get(rolloutId);
    if (starting) await starting.catch(() => undefined);
    const known = (await this.journal.rollout(rolloutId)) ?? this.live.get(rolloutId)?.record;
    if (known) {
      if (!sameRequest(known, want, meters)) {
        throw new FirmwareRolloutError('BAD_REQUEST', `rollout ${rolloutId} exists with other versions or meters; give a new id`);
      }
      return (await this.summary(rolloutId)) as RolloutSummary;
    }
    const claim = (async (): Promise<RolloutSummary> => {
      // A meter in a rollout still running would get offers from two loops: refused, naming the rollout.
      const busy = this.runningRolloutOf(meters);
      if (busy) throw new FirmwareRolloutError('BAD_REQUEST', `meter ${busy.meter} is already in rollout ${busy.rolloutId}, still running`);
      const record: RolloutRecord = { rolloutId, want, meters, concurrency, createdAt: this.now(), finished: false };
      if (request.requestedBy !== undefined) record.requestedBy = request.requestedBy;
      const entries = meters.map((meter): MeterRolloutEntry => ({ rolloutId, meter, phase: 'queued', attempts: 0, updatedAt: record.createdAt }));
      const written = this.journal.putRollout(record, entries);
      this.run(record, entries, written);
      // Accepted once on disk: a rollout the caller was told about survives a restart.
      await written;
      return summarize(record, entries);
    })();
    this.starting.set(rolloutId, claim);
    try {
      return await claim;
    } finally {
      if (this.starting.get(rolloutId) === claim) this.starting.delete(rolloutId);
    }
  }

  /** A meter of `meters` that a running rollout has not finished with, if any. */
  private runningRolloutOf(meters: readonly string[]): { meter: string; rolloutId: string } | undefined {
    for (const { record, entries } of this.live.values()) {
      for (const meter of meters) {
        const entry = entries.get(meter);
        if (entry && entry.phase !== 'done') return { meter, rolloutId: record.rolloutId };
      }
    }
    return undefined;
  }

  /** Resolves with the summary once every meter of the rollout has an outcome (or at once for a finished one). */
  async wait(rolloutId: string): Promise<RolloutSummary> {
    const live = this.live.get(rolloutId);
    if (live) return live.done;
    const summary = await this.summary(rolloutId);
    if (!summary) throw new FirmwareRolloutError('BAD_REQUEST', `no rollout ${rolloutId}`);
    return summary;
  }

  async summary(rolloutId: string): Promise<RolloutSummary | undefined> {
    const live = this.live.get(rolloutId);
    if (live) return summarize(live.record, [...live.entries.values()]);
    const record = await this.journal.rollout(rolloutId);
    return record ? summarize(record, await this.journal.entries(rolloutId)) : undefined;
  }

  /** Every rollout the journal holds, newest first. */
  async rollouts(): Promise<RolloutSummary[]> {
    const records = await this.journal.rollouts();
    records.sort((a, b) => b.createdAt - a.createdAt);
    const out: RolloutSummary[] = [];
    for (const record of records) {
      const summary = await this.summary(record.rolloutId);
      if (summary) out.push(summary);
    }
    return out;
  }

  /** The meters of a rollout with their phase, progress and outcome, in meter order. */
  async meters(rolloutId: string): Promise<MeterRolloutEntry[]> {
    const live = this.live.get(rolloutId);
    if (live) return [...live.entries.values()].sort((a, b) => (a.meter < b.meter ? -1 : a.meter > b.meter ? 1 : 0));
    return this.journal.entries(rolloutId);
  }

  /** The meter (re-)registered, e.g. after installing an image: read its state now rather than at the next poll. */
  meterAvailable(meter: string): void {
    const wakers = this.wakers.get(meter);
    if (!wakers) return;
    this.wakers.delete(meter);
    for (const wake of wakers) wake();
  }

  /** Meters being worked on now, across rollouts. */
  activeCount(): number {
    let active = 0;
    for (const { entries } of this.live.values()) for (const entry of entries.values()) if (entry.phase !== 'queued' && entry.phase !== 'done') active += 1;
    return active;
  }

  /**
   * Stops: aborts the port calls and waits under way (each meter stays as
   * its journal entry says, for the next open), waits for the rollouts to
   * wind down and closes the journal.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    for (const wakers of this.wakers.values()) for (const wake of wakers) wake();
    this.wakers.clear();
    await Promise.allSettled([...this.live.values()].map((l) => l.done));
    await this.journal.close();
  }

  // -------------------------------------------------------------------------

  /**
   * Runs a rollout in the background (live at once, so status and overlap
   * checks see it); `written` is the journal write of a new rollout, which
   * must be on disk before anything is sent.
   */
  private run(record: RolloutRecord, journaled: readonly MeterRolloutEntry[], written: Promise<void> = Promise.resolve()): void {
    const entries = new Map<string, MeterRolloutEntry>();
    for (const meter of record.meters) entries.set(meter, { rolloutId: record.rolloutId, meter, phase: 'queued', attempts: 0, updatedAt: record.createdAt });
    for (const entry of journaled) if (entries.has(entry.meter)) entries.set(entry.meter, entry);
    const perRollout = new Limiter(Math.max(1, record.concurrency));
    const done = (async () => {
      try {
        await written;
        await Promise.all(
          record.meters.map((meter) =>
            perRollout.run(() =>
              this.limiter.run(async () => {
                if (this.closed) return;
                const entry = entries.get(meter) as MeterRolloutEntry;
                if (entry.phase === 'done') return;
                try {
                  await this.runMeter(record, entry, (next) => entries.set(meter, next));
                } catch (err) {
                  if (err instanceof Stopped) return;
                  // The meter stays as journaled (it resumes at the next open); the others go on.
                  this.emit('problem', meter, err instanceof Error ? err : new Error(String(err)));
                }
              }),
            ),
          ),
        );
        const all = [...entries.values()];
        const finished = all.every((e) => e.phase === 'done');
        if (finished && !this.closed) {
          record.finished = true;
          await this.journal.putRollout(record);
        }
        const summary = summarize(record, all);
        if (finished) this.emit('finished', summary);
        return summary;
      } finally {
        this.live.delete(record.rolloutId);
      }
    })();
    // Failures are told per meter ('problem'); this catch only keeps an unobserved rejection quiet.
    done.catch(() => undefined);
    this.live.set(record.rolloutId, { record, entries, done });
  }

  /** One meter's lifecycle; throws Stopped when the service closes (the journal says where it was). */
  private async runMeter(record: RolloutRecord, first: MeterRolloutEntry, keep: (entry: MeterRolloutEntry) => void): Promise<void> {
    let entry = first;
    const save = async (changes: Partial<MeterRolloutEntry>, journal = true, report?: FirmwareReport): Promise<void> => {
      entry = { ...entry, ...changes, updatedAt: this.now() };
      keep(entry);
      if (journal) await this.journal.put(entry, report);
      this.emit('progress', { rolloutId: record.rolloutId, meter: entry.meter, entry });
    };
    const finish = async (code: FirmwareFinalCode, reason: string | undefined, versions: FirmwarePair | undefined): Promise<void> => {
      const outcome = { code, at: this.now(), ...(reason !== undefined ? { reason } : {}), ...(versions ? { versions } : {}) };
      const report: FirmwareReport = {
        key: rolloutResultKey(record.rolloutId, entry.meter),
        kind: 'result',
        meter: entry.meter,
        ts: outcome.at,
        body: {
          type: 'firmware',
          rollout: record.rolloutId,
          code,
          want: record.want,
          ...(entry.from ? { from: entry.from } : {}),
          ...(versions ? { versions } : {}),
          ...(entry.steps ? { steps: entry.steps } : {}),
          attempts: entry.attempts,
          ...(reason !== undefined ? { reason } : {}),
        },
      };
      await save({ phase: 'done', outcome }, true, report);
      this.emit('result', entry);
      this.emit('report');
    };

    const meter = entry.meter;
    // 1. check (also where a restarted rollout learns what the meter is doing).
    if (entry.phase === 'queued') {
      // Only before anything was sent: later, a meter may be away while it reboots.
      if (this.isRegistered && !this.isRegistered(meter)) return finish('FW_UNKNOWN_METER', `meter ${meter} is not registered with the gateway`, undefined);
      await save({ phase: 'checking' });
    }
    let state = await this.readUntil(meter, this.now() + this.stepTimeoutMs);
    if (!state.ok) return finish('COMM_TIMEOUT_ERR', state.reason, undefined);
    if (entry.steps === undefined) {
      try {
        const plan = planUpdate({ endpoint: meter, ...(state.report.model !== undefined ? { model: state.report.model } : {}), firmware: pairOf(state.report) }, record.want, this.repository);
        if (plan.steps.length === 0) {
          await save({ from: plan.from });
          return finish('FW_ALREADY_CURRENT', undefined, plan.from);
        }
        await save({ from: plan.from, steps: plan.steps.map((s) => ({ target: s.target, from: s.from, to: s.to, imageId: s.imageId })), step: 0, attempts: 0 });
      } catch (err) {
        if (!(err instanceof FirmwareError)) throw err;
        await save({ from: pairOf(state.report) });
        return finish(err.code === 'INCOMPATIBLE' ? 'FW_INCOMPATIBLE' : 'FW_NO_IMAGE', err.message, pairOf(state.report));
      }
    }

    // 2. steps.
    const steps = entry.steps ?? [];
    for (let index = entry.step ?? 0; index < steps.length; index++) {
      const step = steps[index] as NonNullable<typeof steps>[number];
      if (entry.step !== index) await save({ step: index, attempts: 0, received: 0, lastProblem: undefined });
      let deadline = this.now() + this.stepTimeoutMs;
      // Set when the meter stayed silent, or kept working, past the deadline: offer again.
      let offerAgain = false;
      for (;;) {
        const report = state.report;
        if (report[step.target] === step.to && !busy(report)) break;
        const image = this.repository.get(step.imageId);
        const sha256 = image?.status === 'good' ? image.manifest.sha256 : undefined;
        const workingOnIt = sha256 !== undefined && report.image?.sha256 === sha256 && busy(report);
        if (!workingOnIt || offerAgain) {
          const failed = report.state === 'failed' && sha256 !== undefined && report.image?.sha256 === sha256 ? (report.result ?? 'failed') : undefined;
          const problem = failed ?? entry.lastProblem;
          if (entry.attempts >= this.maxAttempts) {
            return finish('FW_UPDATE_FAILED', `${step.target} ${step.to}: no install after ${entry.attempts} offers; last: ${problem ?? 'no answer'}`, pairOf(report));
          }
          // Checked again against what the meter runs now: nothing goes to a meter it would leave incompatible.
          const refusal = this.safeToOffer(meter, step, report);
          if (refusal !== undefined) return finish(refusal.code, refusal.reason, pairOf(report));
          let verified;
          try {
            verified = await this.repository.verifyBeforeSend(step.imageId);
          } catch (err) {
            if (!(err instanceof FirmwareError)) throw err;
            return finish('FW_IMAGE_REFUSED', err.message, pairOf(report));
          }
          const m = verified.manifest;
          await save({ phase: 'offering', attempts: entry.attempts + 1, size: m.size, received: 0, ...(problem !== undefined ? { lastProblem: problem } : {}) });
          const answer = await this.offer(meter, { path: imagePath(step.imageId), target: m.target, version: m.version, sha256: m.sha256, size: m.size });
          if (answer.kind === 'refused') return finish('FW_UPDATE_FAILED', `${step.target} ${step.to}: ${answer.problem}`, pairOf(report));
          if (answer.kind === 'busy') {
            // Busy (4.09, 5.03), unreached or the queue full: not an offer the meter took; asked again until the deadline.
            await save({ attempts: entry.attempts - 1, lastProblem: answer.problem });
            if (this.now() >= deadline) {
              return finish(answer.problem.startsWith('COMM_TIMEOUT_ERR') ? 'COMM_TIMEOUT_ERR' : 'FW_UPDATE_FAILED', `${step.target} ${step.to}: ${answer.problem}`, pairOf(report));
            }
          } else {
            await save({ phase: 'downloading' });
            deadline = this.now() + this.stepTimeoutMs;
          }
          offerAgain = false;
        }
        await this.pause(meter);
        const next = await this.readUntil(meter, deadline);
        if (!next.ok) {
          await save({ lastProblem: next.reason }, false);
          offerAgain = true;
          continue;
        }
        state = next;
        await this.noteProgress(next.report, entry, save);
        if (this.now() >= deadline && busy(next.report)) {
          await save({ lastProblem: `not installed within ${Math.round(this.stepTimeoutMs / 1000)} s` }, false);
          offerAgain = true;
        }
      }
    }

    // 3. verify.
    await save({ phase: 'verifying' });
    const final = await this.readUntil(meter, this.now() + this.stepTimeoutMs);
    if (!final.ok) return finish('COMM_TIMEOUT_ERR', `version check: ${final.reason}`, undefined);
    const want = record.want;
    const versions = pairOf(final.report);
    const wrong = (['comm', 'metro'] as const).filter((t) => want[t] !== undefined && versions[t] !== want[t]);
    if (wrong.length > 0) {
      return finish('FW_VERSION_MISMATCH', wrong.map((t) => `${t} is ${versions[t]}, wanted ${want[t] as string}`).join('; '), versions);
    }
    return finish('FW_UPDATE_SUCCESS', undefined, versions);
  }

  /** Undefined when the step may be offered to a meter in this state; otherwise the final code. */
  private safeToOffer(meter: string, step: { target: FirmwareTarget; to: string; imageId: string }, report: MeterFirmwareReport): { code: FirmwareFinalCode; reason: string } | undefined {
    const image = this.repository.get(step.imageId);
    if (!image || image.status !== 'good') return { code: 'FW_IMAGE_REFUSED', reason: `image ${step.imageId} is ${image ? `quarantined: ${image.code}: ${image.reason}` : 'no longer in the repository'}` };
    if (report.model !== undefined && !image.manifest.models.includes(report.model)) {
      return { code: 'FW_NO_IMAGE', reason: `meter ${meter}: image ${step.imageId} is not for model ${report.model}` };
    }
    try {
      const verdict = checkUpdate(pairOf(report), { id: image.id, manifest: image.manifest }, this.repository, report.model);
      if (!verdict.compatible) return { code: 'FW_INCOMPATIBLE', reason: `meter ${meter} runs comm ${report.comm} with metro ${report.metro}; ${step.target} ${step.to}: ${verdict.reason}` };
    } catch (err) {
      if (!(err instanceof FirmwareError)) throw err;
      return { code: 'FW_NO_IMAGE', reason: err.message };
    }
    return undefined;
  }

  /** ok: accepted; busy: a transient refusal or no answer (offered again later); refused: final for the meter. */
  private async offer(meter: string, offer: FirmwareOffer): Promise<{ kind: 'ok' } | { kind: 'busy' | 'refused'; problem: string }> {
    try {
      await this.port.offer(meter, offer, this.abort.signal);
      return { kind: 'ok' };
    } catch (err) {
      if (this.closed) throw new Stopped();
      const problem = asPortError(err);
      return { kind: problem.transient ? 'busy' : 'refused', problem: `${problem.code}: ${problem.message}` };
    }
  }

  /** Reads the meter's state, asking again through transient failures until `deadline`. */
  private async readUntil(meter: string, deadline: number): Promise<{ ok: true; report: MeterFirmwareReport } | { ok: false; reason: string }> {
    let reason = 'no answer';
    for (;;) {
      if (this.closed) throw new Stopped();
      try {
        return { ok: true, report: await this.port.readState(meter, this.abort.signal) };
      } catch (err) {
        if (this.closed) throw new Stopped();
        const problem = asPortError(err);
        reason = `${problem.code}: ${problem.message}`;
        if (!problem.transient || this.now() >= deadline) return { ok: false, reason };
      }
      await this.pause(meter);
    }
  }

  /** Waits `pollMs`, or less when the meter re-registers; throws Stopped when the service closes. */
  private pause(meter: string): Promise<void> {
    if (this.closed) return Promise.reject(new Stopped());
    return new Promise<void>((resolve, reject) => {
      let wakers = this.wakers.get(meter);
      if (!wakers) this.wakers.set(meter, (wakers = new Set()));
      const set = wakers;
      const wake = (): void => {
        clearTimeout(timer);
        set.delete(wake);
        // No empty set left behind per meter polled.
        if (set.size === 0 && this.wakers.get(meter) === set) this.wakers.delete(meter);
        if (this.closed) reject(new Stopped());
        else resolve();
      };
      const timer = setTimeout(wake, this.pollMs);
      set.add(wake);
    });
  }

  /** Keeps the meter's download progress; journals it only at phase changes and every quarter of the image. */
  private async noteProgress(report: MeterFirmwareReport, entry: MeterRolloutEntry, save: (changes: Partial<MeterRolloutEntry>, journal?: boolean) => Promise<void>): Promise<void> {
    if (!busy(report)) return;
    const phase: MeterRolloutPhase = report.state === 'updating' ? 'updating' : 'downloading';
    const received = report.received ?? entry.received ?? 0;
    const size = report.size ?? entry.size;
    const quarter = (n: number | undefined): number => (size ? Math.floor((n ?? 0) / size / PROGRESS_JOURNAL_STEP) : 0);
    const journal = phase !== entry.phase || quarter(received) !== quarter(entry.received);
    if (journal || received !== entry.received) await save({ phase, received, ...(size !== undefined ? { size } : {}) }, journal);
  }
}

function busy(report: MeterFirmwareReport): boolean {
  return report.state === 'downloading' || report.state === 'updating';
}

function asPortError(err: unknown): FirmwarePortError {
  return err instanceof FirmwarePortError ? err : new FirmwarePortError('BAD_ANSWER', (err as Error)?.message ?? String(err));
}

/** The image's path on the gateway's mesh endpoint (FirmwareResource): each id segment percent-encoded. */
export function imagePath(imageId: string): string {
  return `/fw/${imageId.split('/').map(encodeURIComponent).join('/')}`;
}

function checkWanted(want: WantedFirmware): WantedFirmware {
  if (typeof want !== 'object' || want === null) throw new FirmwareRolloutError('BAD_REQUEST', 'want: give comm and/or metro versions');
  const out: WantedFirmware = {};
  for (const target of ['comm', 'metro'] as const) {
    const version = want[target];
    if (version === undefined) continue;
    if (!isFirmwareVersion(version)) throw new FirmwareRolloutError('BAD_REQUEST', `${target} version ${JSON.stringify(version)}: 2 to 4 dot-separated numbers, e.g. "2.2.0"`);
    out[target] = version;
  }
  if (out.comm === undefined && out.metro === undefined) throw new FirmwareRolloutError('BAD_REQUEST', 'nothing wanted: give a comm and/or a metro version');
  return out;
}

function checkMeters(meters: readonly string[]): string[] {
  if (!Array.isArray(meters) || meters.length === 0) throw new FirmwareRolloutError('BAD_REQUEST', 'no meters: give at least one meter');
  const unique = [...new Set(meters)];
  if (unique.length > MAX_ROLLOUT_METERS) throw new FirmwareRolloutError('BAD_REQUEST', `${unique.length} meters: at most ${MAX_ROLLOUT_METERS} per rollout`);
  for (const meter of unique) {
    const problem = meterNameProblem(meter);
    if (problem !== undefined) throw new FirmwareRolloutError('BAD_REQUEST', `meter ${problem}`);
  }
  return unique;
}

/** Whether a known rollout is what is asked for again (same versions, same meters). */
function sameRequest(known: RolloutRecord, want: WantedFirmware, meters: readonly string[]): boolean {
  if (known.want.comm !== want.comm || known.want.metro !== want.metro) return false;
  if (known.meters.length !== meters.length) return false;
  const set = new Set(known.meters);
  return meters.every((m) => set.has(m));
}

function summarize(record: RolloutRecord, entries: readonly MeterRolloutEntry[]): RolloutSummary {
  const byCode: RolloutSummary['byCode'] = {};
  const byPhase: RolloutSummary['byPhase'] = {};
  let done = 0;
  for (const entry of entries) {
    byPhase[entry.phase] = (byPhase[entry.phase] ?? 0) + 1;
    if (entry.phase === 'done' && entry.outcome && FIRMWARE_FINAL_CODES.includes(entry.outcome.code)) {
      done += 1;
      byCode[entry.outcome.code] = (byCode[entry.outcome.code] ?? 0) + 1;
    }
  }
  const summary: RolloutSummary = {
    rolloutId: record.rolloutId,
    want: record.want,
    total: record.meters.length,
    done,
    byCode,
    byPhase,
    finished: record.finished || (entries.length === record.meters.length && done === record.meters.length),
    createdAt: record.createdAt,
  };
  if (record.requestedBy !== undefined) summary.requestedBy = record.requestedBy;
  return summary;
}
