/**
 * Waiting for simulated meters (MeterFleet) to be registered with the
 * gateway's resource directory, as its admin API lists them. Not used in
 * production.
 */
import type { MeterFleet } from '../../src/sim/meters.js';

/** A meter as GET /ami/mesh/meters lists it (what the tests look at). */
export interface RegisteredMeter {
  endpoint: string;
  base?: string;
}

/** An HTTP client with GET, as the Node-RED test helper's `request()` gives. */
export interface AdminRequest {
  get(url: string): PromiseLike<{ body: unknown }>;
}

/**
 * A lister of the meters registered with the gateway, from its admin API
 * (GET /ami/mesh/meters): those of the mesh endpoint node `endpointId`, or of
 * every endpoint.
 */
export function meshMeterLister(request: () => AdminRequest, endpointId?: string): () => Promise<RegisteredMeter[]> {
  return async () => {
    const listed = await request().get('/ami/mesh/meters');
    const endpoints = (listed.body as { endpoints: Array<{ id: string; meters?: RegisteredMeter[] }> }).endpoints;
    return endpoints.filter((e) => endpointId === undefined || e.id === endpointId).flatMap((e) => e.meters ?? []);
  };
}

/**
 * Resolves once `predicate` holds of the listed meters: lists again after each
 * registration of the fleet, and at the latest after 200 ms (a registration
 * may finish between a listing and the wait for the next one).
 */
export async function untilRegistered(
  list: () => Promise<RegisteredMeter[]>,
  fleet: MeterFleet,
  predicate: (meters: RegisteredMeter[]) => boolean,
): Promise<void> {
  for (;;) {
    if (predicate(await list())) return;
    await new Promise<void>((resolve) => {
      const stop = fleet.onRegistration(() => {
        stop();
        resolve();
      });
      setTimeout(() => {
        stop();
        resolve();
      }, 200).unref();
    });
  }
}
