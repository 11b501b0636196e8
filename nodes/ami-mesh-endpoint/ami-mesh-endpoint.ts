import type { NodeAPI, NodeDef } from 'node-red';
import {
  DEFAULT_ACCEPT_TIMEOUT_MS,
  DEFAULT_RETRY_AFTER_SECONDS,
  MeshEndpoint,
} from '../../src/coap/endpoint.js';
import { formatCoapUrl } from '../../src/coap/url.js';
import { gatewayHealth } from '../../src/appliance/health.js';
import { ConfigUsers } from '../shared/config-users.js';
import { numberProperty, stringProperty } from '../shared/settings-values.js';
import { registerHealthRoute } from '../shared/health-route.js';
import type { MeshEndpointNode } from '../shared/types.js';

interface MeshEndpointDef extends NodeDef {
  bind: string;
  port: string;
  acceptTimeout: string;
  retryAfter: string;
}

const DEFAULT_BIND = '::1';
const DEFAULT_PORT = 5683;
const LISTEN_RETRY_MS = 5000;

export = function register(RED: NodeAPI): void {
  registerHealthRoute(RED);

  function AmiMeshEndpoint(this: MeshEndpointNode, def: MeshEndpointDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const users = new ConfigUsers();
    const removers = new Map<string, () => void>();
    const healthKey = `mesh endpoint ${node.id}`;
    let endpoint: MeshEndpoint | undefined;
    let retryTimer: NodeJS.Timeout | undefined;
    let configError: string | undefined;
    let bind = DEFAULT_BIND;
    let port = DEFAULT_PORT;
    let acceptTimeoutMs = DEFAULT_ACCEPT_TIMEOUT_MS;
    let retryAfterSeconds = DEFAULT_RETRY_AFTER_SECONDS;
    try {
      bind = stringProperty(def.bind, DEFAULT_BIND);
      port = numberProperty('Port', def.port, DEFAULT_PORT, 0, 65535);
      acceptTimeoutMs = numberProperty('Accept timeout', def.acceptTimeout, DEFAULT_ACCEPT_TIMEOUT_MS, 100, 60_000);
      retryAfterSeconds = numberProperty('Retry after', def.retryAfter, DEFAULT_RETRY_AFTER_SECONDS, 1, 86_400);
    } catch (err) {
      configError = (err as Error).message;
      node.error(`${RED._('ami-mesh-endpoint.errors.config')}: ${configError}`);
    }

    function open(): void {
      if (configError !== undefined) {
        gatewayHealth.setProblem(healthKey, configError);
        users.status({ fill: 'red', shape: 'ring', text: RED._('ami-mesh-endpoint.status.misconfigured') });
        return;
      }
      const mesh = new MeshEndpoint({ bind, port, acceptTimeoutMs, retryAfterSeconds });
      endpoint = mesh;
      users.status({ fill: 'yellow', shape: 'ring', text: RED._('ami-mesh-endpoint.status.starting') });
      mesh.on('received', () => gatewayHealth.increment('meshReceived'));
      mesh.on('deferred', (_uplink, reason) => {
        gatewayHealth.increment('meshDeferred');
        node.debug(`deferred a reading (5.03): ${reason}`);
      });
      mesh.on('rejected', (reason, message, peer) => {
        gatewayHealth.increment('meshRejected');
        node.warn(`${RED._('ami-mesh-endpoint.errors.rejected', { peer: `[${peer.address}]:${peer.port}` })} (${reason}): ${message}`);
      });
      mesh.on('error', (err) => node.error(`${RED._('ami-mesh-endpoint.errors.runtime')}: ${err.message}`));
      listen(mesh);
    }

    function listen(mesh: MeshEndpoint): void {
      mesh.start().then(
        () => {
          const where = formatCoapUrl(bind, mesh.port ?? port);
          node.log(RED._('ami-mesh-endpoint.log.listening', { url: where }));
          gatewayHealth.setProblem(healthKey, undefined);
          users.status({ fill: 'green', shape: 'dot', text: where.replace('coap://', '') });
        },
        (err: NodeJS.ErrnoException) => {
          const text = err.code ?? err.message;
          node.error(`${RED._('ami-mesh-endpoint.errors.listen', { bind, port, seconds: LISTEN_RETRY_MS / 1000 })}: ${err.message}`);
          gatewayHealth.setProblem(healthKey, `cannot listen on [${bind}]:${port}: ${text}`);
          users.status({ fill: 'red', shape: 'ring', text });
          // The port may be held for a moment by a process that is going away: keep trying while needed.
          retryTimer = setTimeout(() => {
            retryTimer = undefined;
            if (endpoint === mesh) void listen(mesh);
          }, LISTEN_RETRY_MS);
        },
      );
    }

    node.register = (user, listeners) => {
      if (users.register(user)) open();
      const mesh = endpoint;
      const removeReading = mesh && listeners.reading ? mesh.onUplink(listeners.reading) : undefined;
      const removeDlms = mesh && listeners.dlms ? mesh.onDlmsUplink(listeners.dlms) : undefined;
      removers.set(user.id, () => {
        removeReading?.();
        removeDlms?.();
      });
    };

    node.deregister = async (user) => {
      removers.get(user.id)?.();
      removers.delete(user.id);
      if (users.deregister(user)) gatewayHealth.setProblem(healthKey, undefined);
      if (users.size === 0 && endpoint) {
        clearTimeout(retryTimer);
        const closing = endpoint;
        endpoint = undefined;
        await closing.stop();
      }
    };

    node.on('close', (done: () => void) => {
      clearTimeout(retryTimer);
      gatewayHealth.setProblem(healthKey, undefined);
      const closing = endpoint;
      endpoint = undefined;
      if (!closing) {
        done();
        return;
      }
      closing.stop().then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }

  RED.nodes.registerType('ami-mesh-endpoint', AmiMeshEndpoint);
};
