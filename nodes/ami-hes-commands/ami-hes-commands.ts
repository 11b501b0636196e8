import type { Node, NodeAPI, NodeDef, NodeMessage, NodeMessageInFlow } from 'node-red';
import { CommandReceiver, DEFAULT_COMMAND_POLL_MS } from '../../src/hes/command-receiver.js';
import type { CommandError } from '../../src/hes/commands.js';
import type { DatabaseLease } from '../../src/store/database.js';
import { PendingCommands, type CommandStatus, type PendingCommand } from '../../src/store/pending-commands.js';
import { NodeConfigError, numberProperty } from '../shared/settings-values.js';
import type { HesEndpointNode } from '../shared/types.js';

interface HesCommandsDef extends NodeDef {
  hes: string;
  /** Seconds between two fetches when no notification comes (default 30). */
  pollInterval?: string;
}

interface ResultMessage extends NodeMessageInFlow {
  command?: unknown;
  commandId?: unknown;
  status?: unknown;
}

/** One node per HES endpoint receives its commands: two would take turns at the same queue. */
const receiverOfHes = new Map<string, string>();

/** The command id a result message is about: msg.command.id, or msg.commandId. */
function commandIdOf(msg: ResultMessage): string | undefined {
  const fromCommand = typeof msg.command === 'object' && msg.command !== null ? (msg.command as { id?: unknown }).id : undefined;
  const id = fromCommand ?? msg.commandId;
  return typeof id === 'string' && id !== '' ? id : undefined;
}

function commandMessage(entry: PendingCommand, redelivered: boolean): NodeMessage {
  const { command } = entry;
  return {
    topic: command.meter,
    payload: command,
    // `mesh request` addresses a meter by msg.meter.
    meter: command.meter,
    command: { id: command.id, action: command.action, operator: command.operator, signer: entry.signer, receivedAt: entry.receivedAt, notAfter: command.notAfter },
    redelivered,
  } as NodeMessage;
}

function rejectionMessage(err: CommandError, info: { queueId?: string; site: string }): NodeMessage {
  const payload = { code: err.code, reason: err.message, ...err.context, ...(info.queueId !== undefined ? { queueId: info.queueId } : {}), site: info.site };
  return { topic: err.code, payload, error: { code: err.code, message: err.message } } as NodeMessage;
}

export = function register(RED: NodeAPI): void {
  function AmiHesCommands(this: Node, def: HesCommandsDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const hes = RED.nodes.getNode(def.hes) as HesEndpointNode | null;

    const refuse = (status: string, message: string): void => {
      node.status({ fill: 'red', shape: 'ring', text: `ami-hes-commands.status.${status}` });
      node.error(message);
    };
    if (!hes) return refuse('no-hes', RED._('ami-hes-commands.errors.no-hes'));
    let pollMs = DEFAULT_COMMAND_POLL_MS;
    try {
      pollMs = numberProperty('Poll interval', def.pollInterval, DEFAULT_COMMAND_POLL_MS / 1000, 1, 86_400) * 1000;
    } catch (err) {
      if (!(err instanceof NodeConfigError)) throw err;
      return refuse('misconfigured', err.message);
    }
    const trust = hes.commandTrust;
    if (trust === undefined) return refuse('no-trust', RED._('ami-hes-commands.errors.no-trust'));
    if ('problem' in trust) return refuse('no-trust', `${RED._('ami-hes-commands.errors.bad-trust')}: ${trust.problem}`);
    const storeNode = hes.storeNode;
    if (!storeNode) return refuse('no-store', RED._('ami-hes-commands.errors.no-store'));
    const owner = receiverOfHes.get(hes.id);
    if (owner !== undefined && owner !== node.id) return refuse('duplicate', RED._('ami-hes-commands.errors.duplicate', { node: owner }));
    receiverOfHes.set(hes.id, node.id);
    const trustAnchorsPem = trust.trustAnchorsPem;

    // The HES endpoint pushes its own state to its users' status; this node shows command counts,
    // so it registers a stand-in that shares its id and ignores that status.
    const hesUser = Object.assign(Object.create(node) as Node, { status: () => undefined });
    hes.register(hesUser);

    const counts = { pending: 0, accepted: 0, rejected: 0 };
    let unavailable: string | undefined;
    let statusTimer: NodeJS.Timeout | undefined;
    let closed = false;
    const showStatus = (): void => {
      if (statusTimer || closed) return;
      statusTimer = setTimeout(() => {
        statusTimer = undefined;
        if (closed) return;
        node.status(
          unavailable === undefined
            ? { fill: 'green', shape: 'dot', text: RED._('ami-hes-commands.status.counts', counts) }
            : { fill: 'red', shape: 'ring', text: RED._('ami-hes-commands.status.unavailable', counts) },
        );
      }, 250);
    };
    node.status({ fill: 'yellow', shape: 'ring', text: 'ami-hes-commands.status.starting' });

    let lease: DatabaseLease | undefined;
    let store: PendingCommands | undefined;
    let receiver: CommandReceiver | undefined;
    const opening = (async (): Promise<CommandReceiver> => {
      lease = await storeNode.acquire();
      store = await PendingCommands.open(lease.db);
      const opened = new CommandReceiver({
        gatewayId: hes.gatewayId,
        trustAnchorsPem,
        store,
        site: () => hes.activeSite(),
        deliver: (record) => hes.deliver(record),
        pollIntervalMs: pollMs,
      });
      receiver = opened;
      const pendingNow = (): number => opened.pending;
      opened.on('command', (entry, info) => {
        if (!info.redelivered) counts.accepted += 1;
        counts.pending = pendingNow();
        showStatus();
        node.send([commandMessage(entry, info.redelivered), null]);
      });
      opened.on('rejected', (err, info) => {
        counts.rejected += 1;
        showStatus();
        node.warn(`${RED._('ami-hes-commands.errors.rejected', { code: err.code })}: ${err.message}`);
        node.send([null, rejectionMessage(err, info)]);
      });
      opened.on('synced', () => {
        if (unavailable !== undefined) node.log(RED._('ami-hes-commands.log.reachable'));
        unavailable = undefined;
        counts.pending = pendingNow();
        showStatus();
      });
      opened.on('unavailable', (err, retryInMs) => {
        // Logged once per outage; the status shows it for as long as it lasts.
        if (unavailable === undefined) node.warn(`${RED._('ami-hes-commands.errors.unavailable')}: ${err.message}`);
        unavailable = err.message;
        node.debug(`next try in ${Math.round(retryInMs / 1000)} s`);
        showStatus();
      });
      opened.on('expired', (entry) => {
        counts.pending = pendingNow();
        showStatus();
        node.warn(RED._('ami-hes-commands.errors.expired', { id: entry.command.id, action: entry.command.action, meter: entry.command.meter }));
      });
      opened.on('reportFailed', (err, key) => node.warn(`${RED._('ami-hes-commands.errors.report', { key })}: ${err.message}`));
      counts.pending = opened.pending;
      if (!closed) await opened.start();
      return opened;
    })();
    opening.catch((err: Error) => {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-hes-commands.status.store-failed' });
      node.error(`${RED._('ami-hes-commands.errors.store')}: ${err.message}`);
    });

    node.on('input', (incoming, _send, done) => {
      const msg = incoming as ResultMessage;
      const id = commandIdOf(msg);
      if (id === undefined) {
        done(Object.assign(new Error(RED._('ami-hes-commands.errors.no-id')), { code: 'NO_COMMAND_ID' }));
        return;
      }
      const status = (msg.status ?? 'succeeded') as CommandStatus;
      opening
        .then((opened) => opened.complete(id, { status, result: msg.payload }))
        .then(
          ({ sent }) => {
            counts.pending = receiver?.pending ?? counts.pending;
            showStatus();
            if (!sent) node.warn(RED._('ami-hes-commands.errors.result-kept', { id }));
            done();
          },
          (err: Error & { code?: string }) => {
            done(Object.assign(new Error(`${RED._('ami-hes-commands.errors.result', { id })}: ${err.message}`), { code: err.code ?? 'ERROR' }));
          },
        );
    });

    node.on('close', (done: () => void) => {
      closed = true;
      clearTimeout(statusTimer);
      if (receiverOfHes.get(hes.id) === node.id) receiverOfHes.delete(hes.id);
      const shutdown = async (): Promise<void> => {
        await opening.catch(() => undefined);
        await receiver?.stop();
        await store?.close();
        await lease?.release();
        await hes.deregister(hesUser);
      };
      shutdown().then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }
  RED.nodes.registerType('ami-hes-commands', AmiHesCommands);
};
