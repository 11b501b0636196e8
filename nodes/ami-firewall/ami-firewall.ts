import type { Node, NodeAPI, NodeDef, NodeMessage, NodeMessageInFlow } from 'node-red';
import { DEFAULT_DRIFT_INTERVAL_MS, FirewallManager, type ApplyReport, type DriftReport } from '../../src/firewall/manager.js';
import { NftRunner, type NftCommand } from '../../src/firewall/nft.js';
import { FirewallError, type FirewallConfig } from '../../src/firewall/ruleset.js';
import { booleanProperty, NodeConfigError, numberProperty } from '../shared/settings-values.js';
import type { AllowlistNode, HesEndpointNode } from '../shared/types.js';

/**
 * The `firewall` node (issue 7): keeps the kernel's nftables table of the
 * gateway (`inet ami_gateway`) in line with an `ami-allowlist`: applies it on
 * deploy and on a message, watches it for drift, and reports every event on
 * its output. Without nft or CAP_NET_ADMIN it says so and stays idle: the
 * in-process allowlists keep working.
 */
interface FirewallDef extends NodeDef {
  allowlist: string;
  /** Optional ami-hes-endpoint: drift is also reported there, as an alarm record through its outbox. */
  hes?: string;
  /** true/false, or an environment reference such as ${AMI_FIREWALL_APPLY} ('' = false). */
  applyOnDeploy?: boolean | string;
  /** Seconds between two drift checks; 0 = off. */
  driftInterval?: string;
}

interface FirewallSettings {
  /** How nft is started (tests: `{ file: 'ip', args: ['netns', 'exec', NS, 'nft'] }`); settings.js only. */
  nftCommand?: unknown;
}

type Topic = 'apply' | 'verify' | 'counters' | 'remove';
const TOPICS: readonly string[] = ['apply', 'verify', 'counters', 'remove'];

const DEFAULT_DRIFT_S = DEFAULT_DRIFT_INTERVAL_MS / 1000;

/** The same drift is reported to the HES at most once an hour. */
const DRIFT_ALARM_REPEAT_MS = 3_600_000;

function nftCommandOf(raw: unknown): NftCommand | undefined {
  if (raw === undefined || raw === null) return undefined;
  const candidate = raw as { file?: unknown; args?: unknown };
  const args = candidate.args ?? [];
  if (typeof candidate.file !== 'string' || candidate.file === '' || !Array.isArray(args) || !args.every((a): a is string => typeof a === 'string')) {
    throw new NodeConfigError('settings amiFirewall.nftCommand must be { file: string, args: string[] }');
  }
  return { file: candidate.file, args };
}

function asFirewallError(err: unknown): FirewallError {
  if (err instanceof FirewallError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new FirewallError('APPLY_FAILED', message, { cause: err });
}

function entryCount(config: FirewallConfig): number {
  return config.hes.length + config.mesh.length + config.mgmt.length;
}

export = function register(RED: NodeAPI): void {
  function AmiFirewall(this: Node, def: FirewallDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const allowlist = RED.nodes.getNode(def.allowlist) as AllowlistNode | null;
    let closed = false;

    /** The error's code in the status (red ring); NO_NFT / NO_PERMISSION say the kernel allowlists are off. */
    function showError(error: FirewallError): void {
      if (closed) return;
      const known = error.code === 'NO_NFT' ? 'no-nft' : error.code === 'NO_PERMISSION' ? 'no-permission' : undefined;
      const text = known ? `${error.code}: ${RED._(`ami-firewall.status.${known}`)}` : RED._('ami-firewall.status.error', { code: error.code });
      node.status({ fill: 'red', shape: 'ring', text });
    }

    /** An 'error' message on the output and node.error, so a catch node sees msg.error.code. */
    function fail(err: unknown, incoming?: NodeMessage): void {
      if (closed) return;
      const error = asFirewallError(err);
      showError(error);
      const msg = { ...(incoming ?? {}), topic: 'error', error: { code: error.code, message: error.message } } as NodeMessage;
      node.send(msg);
      node.error(Object.assign(new Error(`${error.code}: ${error.message}`), { code: error.code }), msg);
    }

    const refuse = (status: string, message: string): void => {
      node.status({ fill: 'red', shape: 'ring', text: `ami-firewall.status.${status}` });
      node.error(message);
    };
    if (!allowlist) return refuse('no-allowlist', RED._('ami-firewall.errors.no-allowlist'));

    let applyOnDeploy = true;
    let driftSeconds = DEFAULT_DRIFT_S;
    let command: NftCommand | undefined;
    try {
      // Empty (an unset ${AMI_FIREWALL_APPLY}) is off: the kernel is changed only when someone asked for it.
      applyOnDeploy = booleanProperty('Apply on deploy', def.applyOnDeploy, false);
      driftSeconds = numberProperty('Drift check', def.driftInterval, DEFAULT_DRIFT_S, 0, 86_400);
      command = nftCommandOf((RED.settings as unknown as { amiFirewall?: FirewallSettings }).amiFirewall?.nftCommand);
    } catch (err) {
      if (!(err instanceof NodeConfigError)) throw err;
      return refuse('misconfigured', err.message);
    }

    // The allowlist shows a bad configuration in its users' status.
    allowlist.register(node);

    let config: FirewallConfig;
    try {
      config = allowlist.config();
    } catch (err) {
      const error = asFirewallError(err);
      showError(error);
      // Once the whole flow has started, so catch nodes created after this one see it too.
      setImmediate(() => fail(error));
      node.on('input', (incoming, _send, done) => {
        fail(error, incoming as NodeMessage);
        done();
      });
      node.on('close', (done: () => void) => {
        closed = true;
        allowlist.deregister(node).then(done, done);
      });
      return;
    }

    // Drift alarms to the HES: the endpoint opens its uplink for its users, and pushes its own state to
    // their status; this node shows the firewall's, so it registers a stand-in that ignores that status.
    const hesId = typeof def.hes === 'string' ? def.hes.trim() : '';
    const hes = hesId === '' ? null : (RED.nodes.getNode(hesId) as HesEndpointNode | null);
    const hesUser = hes ? Object.assign(Object.create(node) as Node, { status: () => undefined }) : undefined;
    if (hes && hesUser) hes.register(hesUser);

    const manager = new FirewallManager({
      config,
      runner: new NftRunner(command ? { command } : {}),
      driftIntervalMs: driftSeconds > 0 ? driftSeconds * 1000 : DEFAULT_DRIFT_INTERVAL_MS,
    });

    manager.on('applied', (report: ApplyReport) => {
      if (closed) return;
      node.send({ topic: 'applied', payload: report } as NodeMessage);
      if (report.ok) {
        node.status({ fill: 'green', shape: 'dot', text: RED._('ami-firewall.status.applied', { count: entryCount(manager.config) }) });
        // A stable token for operators' log searches (and the appliance test), not translated.
        const { hes, mesh, mgmt } = report.entries;
        node.log(`FIREWALL_APPLIED table=inet ami_gateway hash=${report.hash} hes=${hes} mesh=${mesh} mgmt=${mgmt} applyMs=${Math.round(report.applyMs)} verifyMs=${Math.round(report.verifyMs)}`);
      } else if (report.error) {
        fail(report.error);
      }
    });
    manager.on('drift', (drift: DriftReport) => {
      if (closed) return;
      reportDriftToHes(drift);
      node.send({ topic: 'drift', payload: drift } as NodeMessage);
      node.warn(RED._(drift.repaired ? 'ami-firewall.warn.drift-repaired' : 'ami-firewall.warn.drift-unrepaired', { differences: drift.differences.join('; ') }));
      if (drift.repaired) node.status({ fill: 'yellow', shape: 'dot', text: 'ami-firewall.status.drift-repaired' });
      else if (drift.error) showError(drift.error);
    });
    manager.on('error', (error: FirewallError) => fail(error));

    /**
     * The HES learns of a drift as an alarm (the outbox sends alarms first and
     * never drops them), keyed by the gateway and the detection time so a
     * redelivery is stored once. A failed hand-over is a warning: the drift is
     * in the log and on the output anyway.
     */
    /** The last drift reported to the HES: the same drift again within an hour is not reported again. */
    let lastReported: { signature: string; at: number } | undefined;

    function reportDriftToHes(drift: DriftReport): void {
      if (hesId === '') return;
      // A drift that persists (unrepairable, or something keeps flushing the table) is found at every check;
      // the outbox never drops alarms, so repeating it every minute would crowd out meter readings in an outage.
      const signature = `${drift.repaired}|${drift.error?.code ?? ''}|${drift.differences.join('|')}`;
      if (lastReported && lastReported.signature === signature && drift.at - lastReported.at < DRIFT_ALARM_REPEAT_MS) return;
      lastReported = { signature, at: drift.at };
      if (!hes) {
        node.warn(RED._('ami-firewall.warn.no-hes', { id: hesId }));
        return;
      }
      const body = {
        code: 'FIREWALL_DRIFT',
        table: 'inet ami_gateway',
        repaired: drift.repaired,
        differences: drift.differences,
        ...(drift.error ? { error: { code: drift.error.code, message: drift.error.message } } : {}),
      };
      hes.deliver({ key: `firewall/${hes.gatewayId}/drift/${drift.at}`, kind: 'alarm', meter: hes.gatewayId, ts: drift.at, body }).then(
        () => undefined,
        (err: unknown) => {
          if (!closed) node.warn(RED._('ami-firewall.warn.hes-report', { reason: err instanceof Error ? err.message : String(err) }));
        },
      );
    }

    const startWatch = (): void => {
      if (!closed && driftSeconds > 0) manager.startDriftWatch();
    };

    /** Applies; the 'applied' listener reports the outcome. Rejections are nft being unusable (NO_NFT, NO_PERMISSION). */
    function apply(incoming?: NodeMessage): Promise<void> {
      return manager.apply().then(
        (report) => {
          if (report.ok) startWatch();
        },
        (err: unknown) => fail(err, incoming),
      );
    }

    if (applyOnDeploy) {
      node.status({ fill: 'yellow', shape: 'ring', text: 'ami-firewall.status.applying' });
      void apply();
    } else {
      // Says why the kernel has no table yet; an apply message (or AMI_FIREWALL=enforce in the default flow) changes that.
      node.status({ fill: 'grey', shape: 'ring', text: 'ami-firewall.status.not-applied' });
    }

    node.on('input', (incoming, send, done) => {
      const msg = incoming as NodeMessageInFlow;
      const raw = typeof msg.topic === 'string' ? msg.topic.trim() : '';
      const topic = (raw === '' ? 'apply' : raw) as Topic;
      if (!TOPICS.includes(topic)) {
        done(Object.assign(new Error(RED._('ami-firewall.errors.unknown-topic', { topic: raw })), { code: 'UNKNOWN_TOPIC' }));
        return;
      }
      const reply = (payload: unknown): void => {
        if (closed) return;
        send({ ...msg, topic, payload } as NodeMessage);
      };
      let work: Promise<void>;
      switch (topic) {
        case 'apply':
          work = apply(msg);
          break;
        case 'verify':
          work = manager.verify().then((result) => {
            reply(result);
            if (!result.ok && !closed) node.status({ fill: 'yellow', shape: 'ring', text: RED._('ami-firewall.status.differs', { count: result.differences.length }) });
          });
          break;
        case 'counters':
          work = manager.counters().then(reply);
          break;
        case 'remove':
          work = manager.remove().then((removed) => {
            reply({ removed });
            if (!closed) node.status({ fill: 'grey', shape: 'ring', text: 'ami-firewall.status.removed' });
          });
          break;
      }
      work.then(
        () => done(),
        (err: unknown) => {
          fail(err, msg);
          done();
        },
      );
    });

    node.on('close', (done: () => void) => {
      closed = true;
      // The table stays in force: removal is an explicit 'remove' (or `ami-gateway firewall remove`).
      Promise.all([manager.stop(), allowlist.deregister(node), hes && hesUser ? hes.deregister(hesUser) : undefined]).then(
        () => done(),
        () => done(),
      );
    });
  }
  RED.nodes.registerType('ami-firewall', AmiFirewall);
};
