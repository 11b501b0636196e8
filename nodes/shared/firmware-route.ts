import type { NodeAPI } from 'node-red';
import type { Request, Response } from 'express';
import {
  FirmwareApiRequestError,
  parseRolloutId,
  parseRolloutRequest,
  type FirmwareApiErrorCode,
  type FirmwareApiImagesResponse,
  type FirmwareApiRolloutResponse,
  type FirmwareApiRolloutsResponse,
  type FirmwareApiRolloutStatusResponse,
} from '../../src/firmware/api.js';
import type { WantedFirmware } from '../../src/firmware/compatibility.js';
import type { MeterRolloutEntry, RolloutSummary } from '../../src/firmware/rollout-types.js';

/**
 * The firmware routes of the admin API (contract: src/firmware/api.ts),
 * served for the one deployed `ami-firmware` config node:
 *   GET  /ami/firmware/images, /ami/firmware/rollouts, /ami/firmware/rollouts/:id   (ami-firmware.read)
 *   POST /ami/firmware/rollouts                                                     (ami-firmware.write)
 * The routes are added to the admin app once; each request asks the node
 * deployed at that moment, so a redeploy needs no new routes.
 */

/** What a rollout request asks of the service (src/firmware/rollout.ts FirmwareRolloutService.start). */
export interface FirmwareRolloutStart {
  want: WantedFirmware;
  meters: string[];
  concurrency?: number;
  rolloutId?: string;
  requestedBy?: string;
}

/**
 * The part of FirmwareRolloutService the routes use. start() rejects with an
 * error whose `code` is BAD_REQUEST for a request it refuses, CLOSED when
 * it is shutting down.
 */
export interface FirmwareRolloutServiceApi {
  start(request: FirmwareRolloutStart): Promise<RolloutSummary>;
  summary(rolloutId: string): Promise<RolloutSummary | undefined>;
  /** Newest first. */
  rollouts(): Promise<RolloutSummary[]>;
  meters(rolloutId: string): Promise<MeterRolloutEntry[]>;
}

/** What the `ami-firmware` config node offers the routes. */
export interface FirmwareRouteProvider {
  /** The images folder as loaded (images: the good ones). May throw: the route answers 503 NOT_READY with the message. */
  images(): FirmwareApiImagesResponse | Promise<FirmwareApiImagesResponse>;
  /** The service once open; undefined while it opens or when it could not (problem() says why). */
  service(): FirmwareRolloutServiceApi | undefined;
  /** Why the service is not available, when it is not. */
  problem(): string | undefined;
  /** Registered meters whose registry tag `tag` is `value`, by endpoint name. */
  resolveGroup(tag: string, value: string): string[];
}

let published: FirmwareRouteProvider | undefined;
/** Admin apps the routes were added to: Express has no way to remove a route, so they are added once per app. */
const routedApps = new WeakSet<object>();

/**
 * Serves the firmware routes for `provider` until the returned function is
 * called (on the node's close). A later call for another provider (a second
 * `ami-firmware` node) takes over the routes.
 */
export function publishFirmware(RED: NodeAPI, provider: FirmwareRouteProvider): () => void {
  registerFirmwareRoutes(RED);
  published = provider;
  return () => {
    if (published === provider) published = undefined;
  };
}

class RouteError extends Error {
  constructor(
    readonly status: number,
    readonly code: FirmwareApiErrorCode,
    message: string,
  ) {
    super(message);
  }
}

function errorCodeOf(err: unknown): unknown {
  return typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function fail(res: Response, err: unknown): void {
  if (err instanceof RouteError) {
    res.status(err.status).json({ error: err.message, code: err.code });
  } else if (err instanceof FirmwareApiRequestError) {
    res.status(400).json({ error: err.message, code: err.code });
  } else {
    res.status(503).json({ error: messageOf(err), code: 'NOT_READY' });
  }
}

function provider(): FirmwareRouteProvider {
  const current = published;
  if (!current) throw new RouteError(404, 'NO_FIRMWARE', 'no firmware service (ami-firmware node) is deployed');
  return current;
}

function rolloutService(from: FirmwareRouteProvider): FirmwareRolloutServiceApi {
  const service = from.service();
  if (!service) throw new RouteError(503, 'NOT_READY', `the firmware service is not running: ${from.problem() ?? 'it is still opening'}`);
  return service;
}

/**
 * Errors of the service, known by their `code` rather than their class so
 * that this file does not depend on how the service is built: BAD_REQUEST is
 * the request's fault, anything else (CLOSED, storage) is the gateway's.
 */
function serviceError(err: unknown): RouteError {
  if (errorCodeOf(err) === 'BAD_REQUEST') return new RouteError(400, 'BAD_REQUEST', messageOf(err));
  return new RouteError(503, 'NOT_READY', `the firmware service failed: ${messageOf(err)}`);
}

/** Who asked, for the rollout's record: the admin user when the editor has users. */
function requestedBy(req: Request): string {
  // Node-RED's authentication middleware adds `user` to the request; Express's types do not know it.
  const user = (req as Request & { user?: { username?: unknown } }).user;
  return typeof user?.username === 'string' && user.username !== '' ? `admin:${user.username}` : 'admin-api';
}

async function startRollout(req: Request): Promise<FirmwareApiRolloutResponse> {
  const request = parseRolloutRequest(req.body);
  const from = provider();
  const service = rolloutService(from);
  let meters: string[];
  if (request.meter !== undefined) meters = [request.meter];
  else if (request.meters !== undefined) meters = request.meters;
  else {
    const group = request.group!;
    meters = from.resolveGroup(group.tag, group.value);
    if (meters.length === 0) {
      throw new RouteError(400, 'EMPTY_TARGET', `no registered meter has ${group.tag}=${group.value}`);
    }
  }
  const want: WantedFirmware = {};
  if (request.comm !== undefined) want.comm = request.comm;
  if (request.metro !== undefined) want.metro = request.metro;
  const start: FirmwareRolloutStart = { want, meters, requestedBy: requestedBy(req) };
  if (request.concurrency !== undefined) start.concurrency = request.concurrency;
  if (request.id !== undefined) start.rolloutId = request.id;
  let rollout: RolloutSummary;
  try {
    rollout = await service.start(start);
  } catch (err) {
    throw serviceError(err);
  }
  return { rollout };
}

async function rolloutStatus(id: unknown): Promise<FirmwareApiRolloutStatusResponse> {
  const rolloutId = parseRolloutId(id);
  const service = rolloutService(provider());
  let rollout: RolloutSummary | undefined;
  let meters: MeterRolloutEntry[];
  try {
    rollout = await service.summary(rolloutId);
    if (!rollout) throw new RouteError(404, 'UNKNOWN', `no rollout ${rolloutId}`);
    meters = await service.meters(rolloutId);
  } catch (err) {
    throw err instanceof RouteError ? err : serviceError(err);
  }
  return { rollout, meters };
}

async function listRollouts(): Promise<FirmwareApiRolloutsResponse> {
  const service = rolloutService(provider());
  try {
    return { rollouts: await service.rollouts() };
  } catch (err) {
    throw serviceError(err);
  }
}

/** Answers with `work`'s result (status `status`) or its error as `{ error, code }`. */
function answer(res: Response, status: number, work: () => Promise<unknown>): void {
  res.set('Cache-Control', 'no-store');
  work().then(
    (body) => res.status(status).json(body),
    (err: unknown) => fail(res, err),
  );
}

export function registerFirmwareRoutes(RED: NodeAPI): void {
  const app = RED.httpAdmin;
  if (routedApps.has(app)) return;
  routedApps.add(app);
  const read = RED.auth.needsPermission('ami-firmware.read');
  const write = RED.auth.needsPermission('ami-firmware.write');

  app.get('/ami/firmware/images', read, (_req: Request, res: Response) => {
    answer(res, 200, async () => provider().images());
  });
  app.post('/ami/firmware/rollouts', write, (req: Request, res: Response) => {
    answer(res, 202, () => startRollout(req));
  });
  app.get('/ami/firmware/rollouts', read, (_req: Request, res: Response) => {
    answer(res, 200, listRollouts);
  });
  app.get('/ami/firmware/rollouts/:id', read, (req: Request, res: Response) => {
    answer(res, 200, () => rolloutStatus(req.params.id));
  });
}
