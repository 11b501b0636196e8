import type { NodeAPI } from 'node-red';
import type { Request, Response } from 'express';
import { MAX_PEEK, OUTBOX_CLASSES, type Outbox, type OutboxClass, type OutboxPeekOptions } from '../../src/store/outbox.js';

/**
 * The outboxes of deployed HES endpoints, for the admin routes
 *   GET /ami/queue/stats                                  { outboxes: [{ id, name, stats }] }
 *   GET /ami/queue/peek?limit=&class=&meter=&dead=        { outboxes: [{ id, name, entries }] }
 * (read by `ami-gateway queue`), with the permission ami-hes-endpoint.read.
 */
const outboxes = new Map<string, { name: string; outbox: Outbox }>();
const routedApps = new WeakSet<object>();

export const DEFAULT_PEEK_LIMIT = 20;

export class PeekQueryError extends Error {
  override readonly name = 'PeekQueryError';
  readonly code = 'BAD_QUERY';
}

/**
 * Lists `outbox` under the HES endpoint node `nodeId` until the returned
 * remover is called (when the node closes). A redeployed node publishing
 * before the old one removed itself replaces it; the old remover then leaves
 * the new entry alone.
 */
export function publishOutbox(RED: NodeAPI, nodeId: string, name: string, outbox: Outbox): () => void {
  registerOutboxRoutes(RED);
  outboxes.set(nodeId, { name, outbox });
  return () => {
    if (outboxes.get(nodeId)?.outbox === outbox) outboxes.delete(nodeId);
  };
}

/** The query of GET /ami/queue/peek as peek options; throws PeekQueryError. */
export function peekOptionsFromQuery(query: Record<string, unknown>): OutboxPeekOptions {
  const single = (name: string): string | undefined => {
    const value = query[name];
    if (value === undefined) return undefined;
    if (typeof value !== 'string') throw new PeekQueryError(`${name} must be given once`);
    return value;
  };
  const limitText = single('limit');
  let limit = DEFAULT_PEEK_LIMIT;
  if (limitText !== undefined) {
    if (!/^\d+$/.test(limitText) || Number(limitText) < 1 || Number(limitText) > MAX_PEEK) throw new PeekQueryError(`limit must be 1-${MAX_PEEK}`);
    limit = Number(limitText);
  }
  const recordClass = single('class');
  if (recordClass !== undefined && !OUTBOX_CLASSES.includes(recordClass as OutboxClass)) {
    throw new PeekQueryError(`class must be one of ${OUTBOX_CLASSES.join(', ')}`);
  }
  const meter = single('meter');
  const dead = single('dead');
  if (dead !== undefined && !['true', 'false', '1', '0', ''].includes(dead)) throw new PeekQueryError('dead must be true or false');
  return {
    limit,
    ...(recordClass !== undefined ? { recordClass: recordClass as OutboxClass } : {}),
    ...(meter !== undefined && meter !== '' ? { meter } : {}),
    // `?dead` alone means true.
    ...(dead !== undefined ? { dead: dead === 'true' || dead === '1' || dead === '' } : {}),
  };
}

/** Registers the routes once per admin app; publishOutbox calls it, and so may a node module at load. */
export function registerOutboxRoutes(RED: NodeAPI): void {
  const app = RED.httpAdmin;
  if (routedApps.has(app)) return;
  routedApps.add(app);
  const permission = RED.auth.needsPermission('ami-hes-endpoint.read');
  app.get('/ami/queue/stats', permission, (_req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    Promise.all([...outboxes.entries()].map(async ([id, entry]) => ({ id, name: entry.name, stats: await entry.outbox.stats() }))).then(
      (rows) => res.json({ outboxes: rows }),
      (err: Error & { code?: string }) => res.status(500).json({ error: err.message, code: err.code ?? 'ERROR' }),
    );
  });
  app.get('/ami/queue/peek', permission, (req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    let options: OutboxPeekOptions;
    try {
      options = peekOptionsFromQuery(req.query as Record<string, unknown>);
    } catch (err) {
      if (!(err instanceof PeekQueryError)) throw err;
      res.status(400).json({ error: err.message, code: err.code });
      return;
    }
    Promise.all([...outboxes.entries()].map(async ([id, entry]) => ({ id, name: entry.name, entries: await entry.outbox.peek(options) }))).then(
      (rows) => res.json({ outboxes: rows }),
      (err: Error & { code?: string }) => res.status(500).json({ error: err.message, code: err.code ?? 'ERROR' }),
    );
  });
}
