import path from 'node:path';
import type { NodeAPI, NodeDef } from 'node-red';
import { acquireDatabase, StoreError } from '../../src/store/database.js';
import { stringProperty } from '../shared/settings-values.js';
import type { StoreNode } from '../shared/types.js';

interface StoreDef extends NodeDef {
  path: string;
}

/**
 * The appliance's LevelDB database. Each user (keyring, mesh registry, later
 * the outbox) takes a lease; the handle is shared per directory, opened by the
 * first lease and closed after the last is released.
 */
export = function register(RED: NodeAPI): void {
  function AmiStore(this: StoreNode, def: StoreDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const userDir = (RED.settings as { userDir?: string }).userDir ?? process.cwd();
    const location = path.resolve(stringProperty(def.path, path.join(userDir, 'ami-store')));
    Object.defineProperty(node, 'location', { value: location, enumerable: true });
    let closed = false;

    node.acquire = async () => {
      if (closed) throw new StoreError('CLOSED', 'the store node is closed');
      try {
        return await acquireDatabase(location);
      } catch (err) {
        const text = err instanceof StoreError && err.code === 'LOCKED' ? RED._('ami-store.errors.in-use') : RED._('ami-store.errors.open-failed');
        node.error(`${text}: ${(err as Error).message}`);
        throw err;
      }
    };

    // Users hold their own leases and release them when they close: the
    // database stays open until the last of them has flushed its writes.
    node.on('close', () => {
      closed = true;
    });
  }
  RED.nodes.registerType('ami-store', AmiStore);
};
