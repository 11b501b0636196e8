import type { NodeAPI } from 'node-red';
import type { Request, Response } from 'express';
import type { HesSitesStatus } from '../../src/hes/sites.js';

/** What GET /ami/hes/status lists for one HES endpoint config node. */
export interface HesEndpointStatus {
  id: string;
  name: string;
  /** Why the endpoint does not send (misconfigured), null when it does. */
  problem: string | null;
  /** Its sites, their state and latency, the active one, failover counters; null when it is not open. */
  uplink: HesSitesStatus | null;
}

const sources = new Map<string, () => HesEndpointStatus>();
const routedApps = new WeakSet<object>();

/** Lists a HES endpoint in GET /ami/hes/status until the returned function is called. */
export function addHesStatusSource(id: string, source: () => HesEndpointStatus): () => void {
  sources.set(id, source);
  return () => {
    if (sources.get(id) === source) sources.delete(id);
  };
}

/**
 * Serves GET /ami/hes/status on Node-RED's admin app (`ami-gateway hes
 * status`): per HES endpoint its sites with state, latency and last probe,
 * the active site, failovers, failbacks and the last gray failure. Behind the
 * admin API's authentication (permission ami-hes-endpoint.read), like the
 * other routes that name the utility's infrastructure.
 */
export function registerHesStatusRoute(RED: NodeAPI): void {
  const app = RED.httpAdmin;
  if (routedApps.has(app)) return;
  routedApps.add(app);
  app.get('/ami/hes/status', RED.auth.needsPermission('ami-hes-endpoint.read'), (_req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    res.json({ endpoints: [...sources.values()].map((source) => source()) });
  });
}
