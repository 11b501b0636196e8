import type { Node, NodeAPI, NodeDef, NodeMessageInFlow, NodeStatus } from 'node-red';
import { BackhaulError } from '../../src/backhaul/errors.js';
import { backhaulRequest, type BackhaulRequest } from '../../src/backhaul/request.js';
import type { BackhaulChange, BackhaulSnapshot } from '../../src/backhaul/monitor.js';
import type { BackhaulNode } from '../shared/types.js';

interface BackhaulStatusDef extends NodeDef {
  backhaul: string;
  /** Also send a message for each byte count OpenVPN reports. */
  bytecount?: boolean;
}

const STATUS_TEXT_CHARS = 48;

function shorten(text: string): string {
  return text.length <= STATUS_TEXT_CHARS ? text : `${text.slice(0, STATUS_TEXT_CHARS - 1)}…`;
}

export = function register(RED: NodeAPI): void {
  // The reason comes from OpenVPN and the monitor (in English); the dot's words stay with it.
  function statusFor(snapshot: BackhaulSnapshot): NodeStatus {
    switch (snapshot.phase) {
      case 'up':
        return { fill: 'green', shape: 'dot', text: `up ${snapshot.localIp ?? ''}`.trim() };
      case 'hold':
        return { fill: 'yellow', shape: 'ring', text: 'hold: waiting for hold release' };
      case 'connecting':
        return { fill: 'yellow', shape: 'ring', text: shorten(`connecting (${snapshot.state ?? 'no state yet'})`) };
      case 'down':
        return { fill: 'red', shape: 'ring', text: shorten(`down: ${snapshot.reason ?? ''}`) };
    }
  }

  function AmiBackhaulStatus(this: Node, def: BackhaulStatusDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const backhaul = RED.nodes.getNode(def.backhaul) as BackhaulNode | null;
    if (!backhaul) {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-backhaul-status.status.no-backhaul' });
      node.error(RED._('ami-backhaul-status.errors.no-backhaul'));
      return;
    }
    const withBytecount = def.bytecount === true;
    let lastStatus = '';
    const show = (snapshot: BackhaulSnapshot): void => {
      // An empty management address is a choice (no OpenVPN to watch), not a fault: a grey dot, not a red one.
      const status = backhaul.monitored ? statusFor(snapshot) : { fill: 'grey' as const, shape: 'ring' as const, text: 'ami-backhaul-status.status.unmonitored' };
      // Byte counts do not change the dot: only set it when it says something new.
      const key = `${status.fill}/${status.text}`;
      if (key === lastStatus) return;
      lastStatus = key;
      node.status(status);
    };

    backhaul.register(node, (snapshot: BackhaulSnapshot, change: BackhaulChange) => {
      show(snapshot);
      if (change === 'up' || change === 'down') node.send({ topic: change, payload: snapshot });
      else if (change === 'bytecount' && withBytecount) node.send({ topic: 'bytecount', payload: snapshot });
    });
    show(backhaul.snapshot());

    node.on('input', (msg: NodeMessageInFlow, send: (msg: NodeMessageInFlow) => void, done: (err?: Error) => void) => {
      const fail = (err: unknown): void => {
        const code = err instanceof BackhaulError ? err.code : 'INTERNAL';
        const error = new Error(`${code}: ${(err as Error).message}`);
        Object.assign(error, { code });
        done(error);
      };
      let request: BackhaulRequest;
      try {
        request = backhaulRequest(msg);
      } catch (err) {
        fail(err);
        return;
      }
      if (request.action === 'status') {
        send({ ...msg, topic: 'status', payload: backhaul.snapshot() });
        done();
        return;
      }
      const action = request.action === 'hold release' ? backhaul.holdRelease() : backhaul.restart(request.kind);
      action.then(() => done(), fail);
    });

    node.on('close', (done: () => void) => {
      backhaul.deregister(node).then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }
  RED.nodes.registerType('ami-backhaul-status', AmiBackhaulStatus);
};
