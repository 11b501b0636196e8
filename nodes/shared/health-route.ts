import type { NodeAPI } from 'node-red';
import type { Request, Response } from 'express';
import { gatewayHealth } from '../../src/appliance/health.js';

const registered = new WeakSet<object>();

/**
 * Serves GET /ami/health on Node-RED's admin app. Unauthenticated on purpose,
 * like most health endpoints: it carries counters and the HES URL, no secrets.
 * Both config node modules call this; it registers once per admin app.
 */
export function registerHealthRoute(RED: NodeAPI): void {
  const app = RED.httpAdmin;
  if (registered.has(app)) return;
  registered.add(app);
  app.get('/ami/health', (_req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    res.json(gatewayHealth.snapshot());
  });
}
