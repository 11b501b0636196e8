import type { Node, NodeAPI, NodeDef, NodeMessage, NodeMessageInFlow } from 'node-red';
import { MAX_CONCURRENCY, RelayApiRequestError, parseGroupSelector, type RelayGroupSelector } from '../../src/relay/api.js';
import { OperatorAuthError, OperatorError } from '../../src/relay/operators.js';
import type { RelayRunProgress } from '../../src/relay/service.js';
import { RELAY_ACTIONS, RelayError, type RelayAction, type RelayAuthorization, type RelayCommand, type RelayResult } from '../../src/relay/types.js';
import { NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';
import type { RelayServiceNode } from '../shared/types.js';

interface RelayCommandDef extends NodeDef {
  relay: string;
  /** 'msg' (msg.action), 'disconnect' or 'reconnect'. */
  action?: string;
  /** Seconds a locally issued command stays valid (default 3600). */
  validFor?: string;
  /** Meters at once for a list or group; '' = the relay service's. */
  concurrency?: string;
}

interface RelayInput extends NodeMessageInFlow {
  meter?: unknown;
  meters?: unknown;
  group?: unknown;
  action?: unknown;
  operator?: unknown;
  totp?: unknown;
  commandId?: unknown;
  validFor?: unknown;
  command?: unknown;
}

/** A typed error for catch nodes: msg.error.code. */
class RelayCommandError extends Error {
  override readonly name = 'RelayCommandError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const MAX_VALID_FOR_S = 604_800;
/** Ids of results already sent, remembered so a late event does not send one twice (bounded). */
const SENT_MEMORY = 10_000;

function hesStatus(code: RelayResult['code']): 'succeeded' | 'failed' | 'expired' {
  if (code === 'RELAY_OP_SUCCESS') return 'succeeded';
  if (code === 'EXPIRED') return 'expired';
  return 'failed';
}

function resultMessage(result: RelayResult): NodeMessage {
  return {
    topic: result.meter,
    payload: result,
    meter: result.meter,
    commandId: result.commandId,
    // What `hes commands` reads to complete a HES command.
    status: hesStatus(result.code),
  } as NodeMessage;
}

function printable(value: unknown, max = 128): value is string {
  return typeof value === 'string' && value.length >= 1 && value.length <= max && /^[\x21-\x7e]+$/.test(value);
}

/**
 * `relay command`: remote disconnect / reconnect of one meter, a list or a
 * group, through the `ami-relay` service. Output 1: one final result per
 * meter (also results that come after a wait, or after a restart); output 2:
 * waiting results (DEFERRED, COMM_TIMEOUT_ERR).
 */
export = function register(RED: NodeAPI): void {
  function AmiRelayCommand(this: Node, def: RelayCommandDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const relay = RED.nodes.getNode(def.relay) as RelayServiceNode | null;
    const refuse = (message: string): void => {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-relay-command.status.misconfigured' });
      node.error(message);
    };
    if (!relay) {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-relay-command.status.no-relay' });
      node.error(RED._('ami-relay-command.errors.no-relay'));
      return;
    }
    let validForS = 3600;
    let concurrency: number | undefined;
    const fixedAction = stringProperty(def.action, 'msg');
    try {
      validForS = numberProperty('Valid for', def.validFor, 3600, 1, MAX_VALID_FOR_S);
      const c = numberProperty('Concurrency', def.concurrency, 0, 0, MAX_CONCURRENCY);
      concurrency = c === 0 ? undefined : c;
      if (fixedAction !== 'msg' && !RELAY_ACTIONS.includes(fixedAction as RelayAction)) throw new NodeConfigError(`Action must be msg, disconnect or reconnect, got "${fixedAction}"`);
    } catch (err) {
      if (!(err instanceof NodeConfigError)) throw err;
      return refuse(err.message);
    }

    const counts = { ok: 0, failed: 0, waiting: 0 };
    /** Commands this node issued in this process (the journal has the origin of older ones). */
    const origins = new Map<string, string>();
    /** Command ids this node is executing now (with how many inputs): their results come back from execute() or the run's progress. */
    const inFlightCount = new Map<string, number>();
    const inFlight = {
      has: (id: string): boolean => inFlightCount.has(id),
      add: (id: string): void => void inFlightCount.set(id, (inFlightCount.get(id) ?? 0) + 1),
      delete: (id: string): boolean => {
        const n = inFlightCount.get(id);
        if (n === undefined) return false;
        if (n <= 1) inFlightCount.delete(id);
        else inFlightCount.set(id, n - 1);
        return true;
      },
    };
    /** Waiting commands of this node: their final result comes later, as an event. */
    const waitingIds = new Set<string>();
    const sent = new Set<string>();
    let runProgress: { done: number; total: number } | undefined;
    let statusTimer: NodeJS.Timeout | undefined;
    let closed = false;

    const showStatus = (): void => {
      if (statusTimer || closed) return;
      statusTimer = setTimeout(() => {
        statusTimer = undefined;
        if (closed) return;
        const fill = counts.failed > 0 ? 'red' : counts.waiting > 0 ? 'yellow' : 'green';
        const text = runProgress
          ? RED._('ami-relay-command.status.progress', { done: runProgress.done, total: runProgress.total, waiting: counts.waiting })
          : RED._('ami-relay-command.status.counts', counts);
        node.status({ fill, shape: 'dot', text });
      }, 200);
    };

    /** `answer`: the result answers an input message of this node (a repeat of a command id answers again). */
    const output = (result: RelayResult, answer = false): void => {
      if (result.final) {
        if (sent.has(result.commandId) && !answer) return;
        sent.add(result.commandId);
        if (sent.size > SENT_MEMORY) sent.delete(sent.values().next().value!);
        if (waitingIds.delete(result.commandId)) counts.waiting = Math.max(0, counts.waiting - 1);
        origins.delete(result.commandId);
        if (result.code === 'RELAY_OP_SUCCESS') counts.ok += 1;
        else counts.failed += 1;
        node.send([resultMessage(result), null]);
      } else {
        if (!waitingIds.has(result.commandId)) {
          waitingIds.add(result.commandId);
          counts.waiting += 1;
        }
        node.send([null, resultMessage(result)]);
      }
      showStatus();
    };

    // The relay service pushes its own state to its users' status; this node shows its commands' counts,
    // so it registers a stand-in that shares its id and ignores that status.
    const relayUser = Object.assign(Object.create(node) as Node, { status: () => undefined });
    relay.register(relayUser, {
      result: (result) => {
        // Results of this node's commands that finish later (after a wait, a restart): by origin.
        if (inFlight.has(result.commandId) || !result.final || sent.has(result.commandId)) return;
        if (waitingIds.has(result.commandId) || origins.get(result.commandId) === node.id) {
          output(result);
          return;
        }
        // A command of an earlier run of the gateway: the journal knows who issued it.
        relay
          .service()
          .then((service) => service.status(result.commandId))
          .then((entry) => {
            if (!closed && entry?.command.origin === node.id) output(result);
          })
          .catch(() => undefined);
      },
      progress: (progress: RelayRunProgress) => {
        const id = progress.last.commandId;
        if (!inFlight.delete(id)) return;
        runProgress = { done: progress.done, total: progress.total };
        output(progress.last, true);
      },
    });
    relay
      .service()
      .then(async (service) => {
        // Commands this node issued before a restart and still unfinished: their results belong here.
        for (const meterIds of await unfinishedOfOrigin(service, node.id)) {
          origins.set(meterIds, node.id);
          waitingIds.add(meterIds);
        }
        counts.waiting = waitingIds.size;
        showStatus();
      })
      .catch(() => undefined);
    node.status({ fill: 'green', shape: 'ring', text: 'ami-relay-command.status.ready' });

    const targetsOf = (msg: RelayInput): { meters: string[]; group?: RelayGroupSelector } => {
      const given = ['meter', 'meters', 'group'].filter((k) => msg[k as keyof RelayInput] !== undefined);
      if (given.length !== 1) throw new RelayCommandError('NO_TARGET', RED._('ami-relay-command.errors.no-target'));
      if (msg.meter !== undefined) {
        if (!printable(msg.meter)) throw new RelayCommandError('NO_TARGET', 'msg.meter must be an endpoint name');
        return { meters: [msg.meter] };
      }
      if (msg.meters !== undefined) {
        if (!Array.isArray(msg.meters) || msg.meters.length === 0 || !msg.meters.every((m) => printable(m))) {
          throw new RelayCommandError('NO_TARGET', 'msg.meters must be a list of endpoint names');
        }
        return { meters: [...new Set(msg.meters as string[])] };
      }
      let group: RelayGroupSelector;
      try {
        const g = msg.group as { tag?: unknown; value?: unknown } | string;
        group = typeof g === 'string' ? parseGroupSelector(g) : parseGroupSelector(`${String(g?.tag)}=${String(g?.value)}`);
      } catch (err) {
        if (err instanceof RelayApiRequestError) throw new RelayCommandError('NO_TARGET', `msg.group: ${err.message}`);
        throw err;
      }
      const meters = relay.groupMeters(group);
      if (meters.length === 0) throw new RelayCommandError('EMPTY_GROUP', RED._('ami-relay-command.errors.empty-group', { tag: group.tag, value: group.value }));
      return { meters, group };
    };

    /** A verified HES command from `hes commands`: msg.command.id, checked against the pending-command store. */
    const hesCommandOf = async (msg: RelayInput): Promise<{ command: RelayCommand } | undefined> => {
      const id = typeof msg.command === 'object' && msg.command !== null ? (msg.command as { id?: unknown }).id : undefined;
      const payload = msg.payload as { operator?: unknown } | undefined;
      const looksLikeHes = id !== undefined && typeof payload === 'object' && payload !== null && typeof payload.operator === 'object';
      if (!looksLikeHes) return undefined;
      const claimed = msg.payload as { meter?: unknown; action?: unknown };
      if (typeof id !== 'string') throw new RelayCommandError('UNVERIFIED_HES_COMMAND', 'msg.command.id must be text');
      const pending = await relay.verifiedHesCommand(id);
      const verified = pending?.command;
      if (!verified || verified.meter !== claimed.meter || verified.action !== claimed.action) {
        throw new RelayCommandError(
          'UNVERIFIED_HES_COMMAND',
          RED._('ami-relay-command.errors.unverified', { id, meter: String(claimed.meter), action: String(claimed.action) }),
        );
      }
      if (!RELAY_ACTIONS.includes(verified.action as RelayAction)) {
        throw new RelayCommandError('UNSUPPORTED_ACTION', RED._('ami-relay-command.errors.unsupported', { action: verified.action }));
      }
      const authorization: RelayAuthorization = { source: 'hes', operator: verified.operator.name, role: verified.operator.role, mfa: verified.operator.mfa };
      return {
        command: {
          id: verified.id,
          meter: verified.meter,
          action: verified.action as RelayAction,
          authorization,
          notAfter: verified.notAfter,
          notBefore: verified.notBefore,
          origin: node.id,
        },
      };
    };

    const localAction = (msg: RelayInput): RelayAction => {
      const action = fixedAction === 'msg' ? (msg.action ?? (msg.payload as { action?: unknown } | undefined)?.action) : fixedAction;
      if (!RELAY_ACTIONS.includes(action as RelayAction)) throw new RelayCommandError('BAD_ACTION', RED._('ami-relay-command.errors.bad-action'));
      return action as RelayAction;
    };

    const handle = async (msg: RelayInput): Promise<void> => {
      const service = await relay.service();
      // Control messages.
      if (msg.topic === 'tamper' || msg.topic === 'power-restored') {
        if (!printable(msg.meter)) throw new RelayCommandError('NO_TARGET', 'msg.meter must be an endpoint name');
        if (msg.topic === 'tamper') {
          await service.reportTamper(msg.meter, typeof msg.payload === 'string' ? msg.payload : 'magnetic tamper reported by the flow');
          return;
        }
        for (const result of await service.meterAvailable(msg.meter)) if (origins.get(result.commandId) === node.id) output(result);
        return;
      }

      const hes = await hesCommandOf(msg);
      if (hes) {
        origins.set(hes.command.id, node.id);
        inFlight.add(hes.command.id);
        try {
          // Not an `answer`: when hes commands redelivers a command whose final result this node already sent
          // (it finished while the gateway resumed), sending it again would complete it twice.
          output(await service.execute(hes.command), false);
        } finally {
          inFlight.delete(hes.command.id);
        }
        return;
      }

      const action = localAction(msg);
      const { meters } = targetsOf(msg);
      if (!printable(msg.operator) || typeof msg.totp !== 'string') {
        throw new RelayCommandError('UNAUTHORIZED', `${RED._('ami-relay-command.errors.unauthorized')}: a local command needs msg.operator and msg.totp`);
      }
      // Everything is checked before the code is: a refused message must not use up the operator's code.
      let validFor = validForS;
      if (msg.validFor !== undefined) {
        if (!Number.isInteger(msg.validFor) || (msg.validFor as number) < 1 || (msg.validFor as number) > MAX_VALID_FOR_S) {
          throw new RelayCommandError('BAD_COMMAND', `msg.validFor must be a whole number of seconds 1-${MAX_VALID_FOR_S}`);
        }
        validFor = msg.validFor as number;
      }
      const id = msg.commandId === undefined ? `${node.id}:${msg._msgid}` : msg.commandId;
      if (!printable(id, 100)) throw new RelayCommandError('BAD_COMMAND', 'msg.commandId must be 1-100 printable characters');
      let authorization: RelayAuthorization;
      try {
        authorization = await relay.authorizeLocal(msg.operator, msg.totp);
      } catch (err) {
        if (err instanceof OperatorAuthError || err instanceof OperatorError) {
          throw new RelayCommandError('UNAUTHORIZED', `${RED._('ami-relay-command.errors.unauthorized')}: ${err.code}: ${err.message}`);
        }
        throw err;
      }
      const template = { action, authorization, notAfter: Date.now() + validFor * 1000, origin: node.id };
      if (meters.length === 1 && msg.meter !== undefined) {
        origins.set(id, node.id);
        inFlight.add(id);
        try {
          output(await service.execute({ ...template, id, meter: meters[0]! }), true);
        } finally {
          inFlight.delete(id);
        }
        return;
      }
      for (const meter of meters) {
        origins.set(`${id}:${meter}`, node.id);
        inFlight.add(`${id}:${meter}`);
      }
      runProgress = { done: 0, total: meters.length };
      showStatus();
      try {
        await service.runMany(template, meters, { concurrency: concurrency ?? relay.concurrency, runId: id });
      } finally {
        for (const meter of meters) inFlight.delete(`${id}:${meter}`);
      }
    };

    node.on('input', (incoming, _send, done) => {
      const msg = incoming as RelayInput;
      handle(msg).then(
        () => done(),
        (err: unknown) => {
          let typed: RelayCommandError;
          if (err instanceof RelayCommandError) typed = err;
          else if (err instanceof RelayError) typed = new RelayCommandError(err.code, err.message);
          else typed = new RelayCommandError('FAILED', `${RED._('ami-relay-command.errors.failed')}: ${(err as Error)?.message ?? String(err)}`);
          if (typed.code === 'UNAUTHORIZED' || typed.code === 'UNVERIFIED_HES_COMMAND') {
            node.status({ fill: 'red', shape: 'ring', text: RED._('ami-relay-command.status.refused', { code: typed.code }) });
          }
          done(Object.assign(new Error(typed.message), { code: typed.code }));
        },
      );
    });

    node.on('close', (done: () => void) => {
      closed = true;
      clearTimeout(statusTimer);
      relay.deregister(relayUser).then(done, () => done());
    });
  }
  RED.nodes.registerType('ami-relay-command', AmiRelayCommand);
};

/** Ids of unfinished commands issued by `origin`: only the unfinished entries are read, not the whole journal. */
async function unfinishedOfOrigin(service: import('../../src/relay/service.js').RelayService, origin: string): Promise<string[]> {
  const ids: string[] = [];
  for (const id of service.unfinishedIds()) {
    const entry = await service.status(id);
    if (entry && entry.phase !== 'done' && entry.command.origin === origin) ids.push(id);
  }
  return ids;
}
