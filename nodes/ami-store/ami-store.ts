import path from 'node:path';
import type { NodeAPI, NodeDef } from 'node-red';
import { acquireDatabase, StoreError, type DatabaseLease } from '../../src/store/database.js';
import { stringProperty } from '../shared/settings-values.js';
import type { StoreNode } from '../shared/types.js';

interface StoreDef extends NodeDef {
  path: string;
}

/**
 * The appliance's LevelDB database. The node opens it when a user first asks
 * for it and keeps it open until the node closes (a redeploy), so keys,
 * counters and later the outbox share one handle.
 */
export = function register(RED: NodeAPI): void {
  function AmiStore(this: StoreNode, def: StoreDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const userDir = (RED.settings as { userDir?: string }).userDir ?? process.cwd();
    const location = path.resolve(stringProperty(def.path, path.join(userDir, 'ami-store')));
    Object.defineProperty(node, 'location', { value: location, enumerable: true });
    let leasing: Promise<DatabaseLease> | undefined;
    let closed = false;

    node.database = async () => {
      if (closed) throw new StoreError('CLOSED', 'the store node is closed');
      leasing ??= acquireDatabase(location).catch((err: Error) => {
        leasing = undefined;
        const text = err instanceof StoreError && err.code === 'LOCKED' ? RED._('ami-store.errors.in-use') : RED._('ami-store.errors.open-failed');
        node.error(`${text}: ${err.message}`);
        throw err;
      });
      return (await leasing).db;
    };

    node.on('close', (done: () => void) => {
      closed = true;
      const pending = leasing;
      leasing = undefined;
      if (!pending) {
        done();
        return;
      }
      pending
        .then((lease) => lease.release())
        .catch(() => undefined)
        .then(done, done);
    });
  }
  RED.nodes.registerType('ami-store', AmiStore);
};
