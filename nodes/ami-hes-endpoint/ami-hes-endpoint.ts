import os from 'node:os';
import type { NodeAPI, NodeDef } from 'node-red';
import { parseCoapUrl } from '../../src/coap/url.js';
import { DEFAULT_UPLINK_OPTIONS, HesUplink, HesUplinkError } from '../../src/hes/uplink.js';
import { gatewayHealth } from '../../src/appliance/health.js';
import { ConfigUsers } from '../shared/config-users.js';
import { NodeConfigError, numberProperty, stringProperty } from '../shared/settings-values.js';
import { registerHealthRoute } from '../shared/health-route.js';
import type { HesEndpointNode } from '../shared/types.js';

interface HesEndpointDef extends NodeDef {
  primary: string;
  secondary: string;
  gatewayId: string;
  timeout: string;
}

export = function register(RED: NodeAPI): void {
  registerHealthRoute(RED);

  function AmiHesEndpoint(this: HesEndpointNode, def: HesEndpointDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const users = new ConfigUsers();
    const healthKey = `HES ${node.id}`;
    let uplink: HesUplink | undefined;
    let configError: string | undefined;
    const removers: Array<() => void> = [];
    let delivered = 0;

    const endpoints = [stringProperty(def.primary), stringProperty(def.secondary)].filter((url) => url !== '');
    let requestTimeoutMs: number = DEFAULT_UPLINK_OPTIONS.requestTimeoutMs;
    try {
      if (endpoints.length === 0) throw new NodeConfigError('no HES address: set the primary (or secondary) HES URL');
      for (const url of endpoints) {
        try {
          parseCoapUrl(url);
        } catch (err) {
          throw new NodeConfigError(`${url}: ${(err as Error).message}`);
        }
      }
      requestTimeoutMs = numberProperty('Timeout', def.timeout, DEFAULT_UPLINK_OPTIONS.requestTimeoutMs, 100, 120_000);
    } catch (err) {
      configError = (err as Error).message;
      node.error(`${RED._('ami-hes-endpoint.errors.config')}: ${configError}`);
    }

    node.sites = endpoints;
    node.gatewayId = stringProperty(def.gatewayId, os.hostname());

    function open(): void {
      if (configError !== undefined) {
        gatewayHealth.setProblem(healthKey, configError);
        users.status({ fill: 'red', shape: 'ring', text: RED._('ami-hes-endpoint.status.misconfigured') });
        return;
      }
      const link = new HesUplink({
        ...DEFAULT_UPLINK_OPTIONS,
        gateway: node.gatewayId,
        endpoints,
        requestTimeoutMs,
      });
      uplink = link;
      link.on('delivered', (records, endpoint) => {
        delivered += records.length;
        gatewayHealth.increment('hesDelivered', records.length);
        gatewayHealth.setProblem(healthKey, undefined);
        users.status({ fill: 'green', shape: 'dot', text: RED._('ami-hes-endpoint.status.delivered', { count: delivered, endpoint }) });
      });
      link.on('failed', (err, count) => {
        gatewayHealth.increment('hesFailed', count);
        gatewayHealth.setProblem(healthKey, err.message);
        node.warn(`${RED._('ami-hes-endpoint.errors.delivery', { count })}: ${err.message}`);
        users.status({ fill: 'red', shape: 'ring', text: RED._('ami-hes-endpoint.status.unavailable', { depth: link.depth }) });
      });
      link.on('endpoint', (endpoint) => node.log(RED._('ami-hes-endpoint.log.switched', { endpoint })));
      removers.push(gatewayHealth.addDepthSource(() => link.depth));
      removers.push(gatewayHealth.addEndpointSource(() => link.activeEndpoint));
      users.status({ fill: 'yellow', shape: 'ring', text: RED._('ami-hes-endpoint.status.ready', { endpoint: link.activeEndpoint }) });
    }

    async function close(): Promise<void> {
      for (const remove of removers.splice(0)) remove();
      gatewayHealth.setProblem(healthKey, undefined);
      const closing = uplink;
      uplink = undefined;
      await closing?.close();
    }

    node.register = (user) => {
      if (users.register(user)) open();
    };
    node.deregister = async (user) => {
      if (users.deregister(user)) await close();
    };
    node.deliver = async (record) => {
      if (!uplink) {
        throw new HesUplinkError('UNAVAILABLE', configError ?? RED._('ami-hes-endpoint.errors.not-open'));
      }
      const link = uplink;
      await link.submit(record);
      return link.activeEndpoint;
    };
    node.on('close', (done: () => void) => {
      close().then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }

  RED.nodes.registerType('ami-hes-endpoint', AmiHesEndpoint);
};
