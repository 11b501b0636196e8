import type { Node, NodeAPI, NodeDef, NodeMessage, NodeMessageInFlow, NodeStatus } from 'node-red';
import { FirmwareApiRequestError, MAX_ROLLOUT_CONCURRENCY, parseRolloutRequest, type FirmwareApiRolloutRequest } from '../../src/firmware/api.js';
import type { WantedFirmware } from '../../src/firmware/compatibility.js';
import type { FirmwareFinalCode, MeterRolloutEntry, RolloutSummary } from '../../src/firmware/rollout-types.js';
import { NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';
import type { FirmwareServiceNode } from '../shared/types.js';

interface FirmwareRolloutDef extends NodeDef {
  firmware: string;
  /** Wanted versions; empty: not changed (unless msg.payload names one). */
  comm?: string;
  metro?: string;
  /** How `targets` names the meters: 'meter', 'list' (commas or spaces) or 'group' (TAG=VALUE). */
  target?: string;
  /** Empty: every message must name its meters. */
  targets?: string;
  /** Meters updating at once in one rollout; empty: the firmware service's. */
  concurrency?: string;
}

/** The codes a catch node finds in msg.error.code (the admin API's, so flows and the CLI speak alike). */
type RolloutErrorCode = 'BAD_REQUEST' | 'EMPTY_TARGET' | 'NO_FIRMWARE' | 'NOT_READY';

class FirmwareRolloutNodeError extends Error {
  override readonly name = 'FirmwareRolloutNodeError';
  constructor(
    readonly code: RolloutErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Outcomes that leave the meter on the wanted versions. */
const SUCCESS_CODES: readonly FirmwareFinalCode[] = ['FW_UPDATE_SUCCESS', 'FW_ALREADY_CURRENT'];
const TARGET_MODES = ['meter', 'list', 'group'] as const;
type TargetMode = (typeof TARGET_MODES)[number];
/** Rollouts this node remembers the owner of: the service says whose a rollout is, this saves asking for each result. */
const OWNER_MEMORY = 1000;

function errorCodeOf(err: unknown): unknown {
  return typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value);
}

function failedCount(summary: RolloutSummary): number {
  let failed = 0;
  for (const [code, count] of Object.entries(summary.byCode)) if (!SUCCESS_CODES.includes(code as FirmwareFinalCode)) failed += count ?? 0;
  return failed;
}

/**
 * `firmware rollout`: updates the firmware of one meter, a list or a group
 * through the `ami-firmware` service. Output 1: one message per meter as it
 * finishes; output 2: the rollout's summary when it starts and when it ends.
 */
export = function register(RED: NodeAPI): void {
  function AmiFirmwareRollout(this: Node, def: FirmwareRolloutDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const firmware = RED.nodes.getNode(def.firmware) as FirmwareServiceNode | null;
    /** The request the node's properties make; msg.payload overrides its fields. */
    const configured: Record<string, unknown> = {};
    let setupProblem: { code: RolloutErrorCode; message: string } | undefined;
    try {
      const comm = stringProperty(def.comm);
      const metro = stringProperty(def.metro);
      if (comm !== '') configured.comm = comm;
      if (metro !== '') configured.metro = metro;
      const mode = stringProperty(def.target, 'meter');
      if (!TARGET_MODES.includes(mode as TargetMode)) throw new NodeConfigError(`Target must be meter, list or group, got "${mode}"`);
      const targets = stringProperty(def.targets);
      if (targets !== '') {
        if (mode === 'meter') configured.meter = targets;
        else if (mode === 'list') configured.meters = targets.split(/[\s,]+/).filter((m) => m !== '');
        else configured.group = targets;
      }
      const concurrency = numberProperty('Concurrency', def.concurrency, 0, 0, MAX_ROLLOUT_CONCURRENCY);
      if (concurrency > 0) configured.concurrency = concurrency;
      // The properties alone are checked as far as they go (versions, names, group), so a typo shows at deploy.
      checkProperties(configured);
    } catch (err) {
      if (!(err instanceof NodeConfigError) && !(err instanceof FirmwareApiRequestError)) throw err;
      setupProblem = { code: 'BAD_REQUEST', message: err.message };
    }
    if (!firmware) setupProblem = { code: 'NO_FIRMWARE', message: RED._('ami-firmware-rollout.errors.no-firmware') };

    let closed = false;
    /** The last rollout this node started (or resumed), for the status. */
    let current: { rolloutId: string; total: number; done: number; failed: number; finished: boolean } | undefined;
    /** The firmware service's own state: shown while this node has no rollout to show, and whenever it is a problem. */
    let serviceStatus: NodeStatus = {};
    let statusTimer: NodeJS.Timeout | undefined;

    const drawStatus = (): void => {
      if (closed) return;
      const serviceTrouble = serviceStatus.fill === 'red' || serviceStatus.fill === 'yellow';
      if (!current || serviceTrouble) {
        node.status(serviceStatus);
        return;
      }
      const { done, total, failed, finished } = current;
      if (!finished) node.status({ fill: 'blue', shape: 'dot', text: RED._('ami-firmware-rollout.status.running', { done, total, failed }) });
      else node.status({ fill: failed > 0 ? 'red' : 'green', shape: 'dot', text: RED._('ami-firmware-rollout.status.finished', { done, total, failed }) });
    };
    // Results of a large rollout come in bursts: the status is drawn at most five times a second.
    const showStatus = (): void => {
      if (statusTimer || closed) return;
      statusTimer = setTimeout(() => {
        statusTimer = undefined;
        drawStatus();
      }, 200);
    };

    if (setupProblem) {
      node.status({ fill: 'red', shape: 'ring', text: RED._(setupProblem.code === 'NO_FIRMWARE' ? 'ami-firmware-rollout.status.no-firmware' : 'ami-firmware-rollout.status.misconfigured') });
      node.error(setupProblem.message);
      const refusal = setupProblem;
      // Every message still goes to the catch nodes, with the reason.
      node.on('input', (_msg, _send, done) => done(Object.assign(new Error(refusal.message), { code: refusal.code })));
      return;
    }
    const service = firmware!;

    /** Whether a rollout is this node's: set when it starts one, asked of the service for others (resumed after a restart). */
    const owners = new Map<string, Promise<boolean>>();
    const ownedByThisNode = (rolloutId: string): Promise<boolean> => {
      let known = owners.get(rolloutId);
      if (!known) {
        known = service
          .service()
          .then((s) => s.summary(rolloutId))
          .then((summary) => summary?.requestedBy === node.id)
          .catch(() => false);
        owners.set(rolloutId, known);
        if (owners.size > OWNER_MEMORY) owners.delete(owners.keys().next().value!);
      }
      return known;
    };

    const summaryMessage = (summary: RolloutSummary, topic: 'started' | 'finished'): NodeMessage =>
      ({ topic, payload: summary, rollout: summary.rolloutId }) as NodeMessage;

    const follow = (summary: RolloutSummary): void => {
      current = { rolloutId: summary.rolloutId, total: summary.total, done: summary.done, failed: failedCount(summary), finished: summary.finished };
      showStatus();
    };

    // The node registers a stand-in sharing its id, so that the service's state lands in serviceStatus and not straight on the node.
    const firmwareUser = Object.assign(Object.create(node) as Node, {
      status: (status: NodeStatus) => {
        serviceStatus = status;
        drawStatus();
      },
    });
    service.register(firmwareUser, {
      result: (entry: MeterRolloutEntry) => {
        void ownedByThisNode(entry.rolloutId).then((mine) => {
          if (!mine || closed) return;
          if (current?.rolloutId === entry.rolloutId) {
            current.done += 1;
            if (!entry.outcome || !SUCCESS_CODES.includes(entry.outcome.code)) current.failed += 1;
            showStatus();
          }
          node.send([{ topic: entry.meter, payload: entry, rollout: entry.rolloutId } as NodeMessage, null]);
        });
      },
      finished: (summary: RolloutSummary) => {
        void ownedByThisNode(summary.rolloutId).then((mine) => {
          if (!mine || closed) return;
          if (current === undefined || current.rolloutId === summary.rolloutId) follow(summary);
          node.send([null, summaryMessage(summary, 'finished')]);
        });
      },
    });
    // After a restart the status shows this node's newest unfinished rollout, which the service resumed.
    service
      .service()
      .then((s) => s.rollouts())
      .then((rollouts) => {
        const resumed = rollouts.find((r) => r.requestedBy === node.id && !r.finished);
        if (resumed && !current && !closed) {
          owners.set(resumed.rolloutId, Promise.resolve(true));
          follow(resumed);
        }
      })
      .catch(() => undefined);

    /** The request for one message: the node's properties, with msg.payload's fields over them. */
    const requestOf = (msg: NodeMessageInFlow): FirmwareApiRolloutRequest => {
      const merged: Record<string, unknown> = { ...configured };
      if (isPlainObject(msg.payload)) {
        const overrides = msg.payload;
        // A message that names its meters replaces the node's target altogether.
        if (overrides.meter !== undefined || overrides.meters !== undefined || overrides.group !== undefined) {
          delete merged.meter;
          delete merged.meters;
          delete merged.group;
        }
        Object.assign(merged, overrides);
      }
      try {
        return parseRolloutRequest(merged);
      } catch (err) {
        if (err instanceof FirmwareApiRequestError) throw new FirmwareRolloutNodeError('BAD_REQUEST', err.message);
        throw err;
      }
    };

    const handle = async (msg: NodeMessageInFlow): Promise<void> => {
      const request = requestOf(msg);
      // A service that is not running is the first thing to say: the meters cannot be judged without its registry anyway.
      let rollouts;
      try {
        rollouts = await service.service();
      } catch (err) {
        throw new FirmwareRolloutNodeError('NOT_READY', `${RED._('ami-firmware-rollout.errors.not-ready')}: ${(err as Error).message}`);
      }
      let meters: string[];
      if (request.meter !== undefined) meters = [request.meter];
      else if (request.meters !== undefined) meters = request.meters;
      else {
        const group = request.group!;
        meters = service.groupMeters(group);
        if (meters.length === 0) throw new FirmwareRolloutNodeError('EMPTY_TARGET', `${RED._('ami-firmware-rollout.errors.empty-group')}: ${group.tag}=${group.value}`);
      }
      const want: WantedFirmware = {};
      if (request.comm !== undefined) want.comm = request.comm;
      if (request.metro !== undefined) want.metro = request.metro;
      // The message's id makes a redelivered message the same rollout, not a second one.
      const rolloutId = request.id ?? `${node.id}.${msg._msgid}`.replace(/[^A-Za-z0-9._:-]/g, '-');
      const wasOwned = owners.get(rolloutId);
      // Known as this node's before it starts: its first results may come before start() resolves.
      owners.set(rolloutId, Promise.resolve(true));
      current = { rolloutId, total: meters.length, done: 0, failed: 0, finished: false };
      showStatus();
      let summary: RolloutSummary;
      try {
        summary = await rollouts.start({
          want,
          meters,
          rolloutId,
          requestedBy: node.id,
          ...(request.concurrency !== undefined ? { concurrency: request.concurrency } : {}),
        });
      } catch (err) {
        if (wasOwned) owners.set(rolloutId, wasOwned);
        else owners.delete(rolloutId);
        if (current?.rolloutId === rolloutId) current = undefined;
        showStatus();
        if (errorCodeOf(err) === 'BAD_REQUEST') throw new FirmwareRolloutNodeError('BAD_REQUEST', (err as Error).message);
        throw new FirmwareRolloutNodeError('NOT_READY', `${RED._('ami-firmware-rollout.errors.not-ready')}: ${(err as Error)?.message ?? String(err)}`);
      }
      // Results counted while start() was under way are kept; a repeated id brings the journal's counts.
      if (current?.rolloutId === rolloutId && summary.done >= current.done) follow(summary);
      // A repeated id of a finished rollout: nothing more will come for it, so its summary is the answer.
      node.send([null, summaryMessage(summary, summary.finished ? 'finished' : 'started')]);
    };

    node.on('input', (incoming, _send, done) => {
      handle(incoming).then(
        () => done(),
        (err: unknown) => {
          const typed =
            err instanceof FirmwareRolloutNodeError
              ? err
              : new FirmwareRolloutNodeError('NOT_READY', `${RED._('ami-firmware-rollout.errors.not-ready')}: ${(err as Error)?.message ?? String(err)}`);
          done(Object.assign(new Error(typed.message), { code: typed.code }));
        },
      );
    });

    node.on('close', (done: () => void) => {
      closed = true;
      clearTimeout(statusTimer);
      service.deregister(firmwareUser).then(done, () => done());
    });
  }
  RED.nodes.registerType('ami-firmware-rollout', AmiFirmwareRollout);
};

/**
 * Checks what the node's properties give, before any message: the versions
 * and the meters as the admin API would. Incomplete properties are fine
 * (messages fill them in); wrong ones throw FirmwareApiRequestError.
 */
function checkProperties(configured: Record<string, unknown>): void {
  const probe: Record<string, unknown> = { ...configured };
  // Stand-ins for what a message may still give, so only the fields present are judged.
  if (probe.comm === undefined && probe.metro === undefined) probe.comm = '0.0.0';
  if (probe.meter === undefined && probe.meters === undefined && probe.group === undefined) probe.meter = 'probe';
  parseRolloutRequest(probe);
}
