import { randomUUID } from 'node:crypto';
import type { NodeAPI } from 'node-red';
import type { Request, Response } from 'express';
import {
  DEFAULT_VALID_SECONDS,
  RelayApiRequestError,
  parseAlarmResetRequest,
  parseCommandRequest,
  parseGroupSelector,
  type RelayApiCommandResponse,
  type RelayApiErrorCode,
  type RelayApiStatusResponse,
  type RelayStatusEntry,
} from '../../src/relay/api.js';
import type { RelayJournalEntry } from '../../src/relay/journal.js';
import { OperatorAuthError, OperatorError } from '../../src/relay/operators.js';
import type { RelayService } from '../../src/relay/service.js';
import { RelayError, type RelayAlarm, type RelayAuthorization, type RelayResult } from '../../src/relay/types.js';
import type { RelayServiceNode } from './types.js';

/**
 * The relay routes of the admin API (contract: src/relay/api.ts), served for
 * the one deployed `ami-relay` config node:
 *   POST /ami/relay/commands, GET /ami/relay/status   (ami-relay.write / .read)
 *   GET /ami/alarms, POST /ami/alarms/reset           (ami-relay.read / .write)
 * Local commands and alarm resets need a local operator and their TOTP code
 * on top of the admin API's own authentication.
 */
let published: RelayServiceNode | undefined;
const routedApps = new WeakSet<object>();
/** Commands listed by GET /ami/relay/status?meter=: the most recent ones. */
const STATUS_LIMIT = 50;

export function publishRelay(RED: NodeAPI, node: RelayServiceNode): () => void {
  registerRelayRoutes(RED);
  published = node;
  return () => {
    if (published === node) published = undefined;
  };
}

class RouteError extends Error {
  constructor(
    readonly status: number,
    readonly code: RelayApiErrorCode,
    message: string,
  ) {
    super(message);
  }
}

function fail(res: Response, err: unknown): void {
  if (err instanceof RouteError) {
    res.status(err.status).json({ error: err.message, code: err.code });
  } else if (err instanceof RelayApiRequestError) {
    res.status(400).json({ error: err.message, code: err.code });
  } else if (err instanceof OperatorAuthError) {
    res.status(403).json({ error: err.message, code: 'OPERATOR_REFUSED', reason: err.code });
  } else if (err instanceof OperatorError) {
    // The operator store cannot decide (damaged, locked): a refusal too.
    res.status(403).json({ error: `operator store: ${err.message}`, code: 'OPERATOR_REFUSED', reason: err.code });
  } else if (err instanceof RelayError) {
    const map: Record<string, [number, RelayApiErrorCode]> = {
      BAD_COMMAND: [400, 'BAD_REQUEST'],
      ID_CONFLICT: [409, 'ID_CONFLICT'],
      UNAUTHORIZED: [403, 'OPERATOR_REFUSED'],
      NO_SUCH_ALARM: [404, 'NO_SUCH_ALARM'],
      METER_FAILED: [502, 'METER_FAILED'],
      CLOSED: [503, 'NOT_READY'],
    };
    const [status, code] = map[err.code] ?? [500, 'NOT_READY'];
    res.status(status).json({ error: err.message, code });
  } else {
    res.status(503).json({ error: (err as Error)?.message ?? String(err), code: 'NOT_READY' });
  }
}

async function relayService(): Promise<{ node: RelayServiceNode; service: RelayService }> {
  const node = published;
  if (!node) throw new RouteError(404, 'NO_RELAY', 'no relay service (ami-relay node) is deployed');
  try {
    return { node, service: await node.service() };
  } catch (err) {
    throw new RouteError(503, 'NOT_READY', `the relay service is not running: ${(err as Error).message}`);
  }
}

function statusEntry(entry: RelayJournalEntry): RelayStatusEntry {
  const last: RelayResult | undefined = entry.outcome ?? entry.last;
  const c = entry.command;
  return {
    id: c.id,
    meter: c.meter,
    action: c.action,
    phase: entry.phase,
    operator: c.authorization.operator,
    source: c.authorization.source,
    ...(last ? { code: last.code } : {}),
    final: entry.phase === 'done',
    ...(last?.detail !== undefined ? { detail: last.detail } : {}),
    ...(last?.reason !== undefined ? { reason: last.reason } : {}),
    ...(entry.retryAt !== undefined ? { retryAt: entry.retryAt } : {}),
    ...(c.runId !== undefined ? { runId: c.runId } : {}),
    notAfter: c.notAfter,
    createdAt: entry.createdAt,
    updatedAt: entry.updatedAt,
  };
}

function single(query: Request['query'], name: string): string | undefined {
  const value = query[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value === '') throw new RelayApiRequestError('BAD_REQUEST', `${name} must be given once`);
  return value;
}

async function status(query: Request['query']): Promise<RelayApiStatusResponse> {
  const selectors = ['meter', 'command', 'run', 'group'].filter((k) => query[k] !== undefined);
  if (selectors.length !== 1) throw new RelayApiRequestError('BAD_REQUEST', 'give exactly one of meter, command, run, group');
  const { node, service } = await relayService();
  const command = single(query, 'command');
  if (command !== undefined) {
    const entry = await service.status(command);
    if (!entry) throw new RouteError(404, 'UNKNOWN', `no command ${command}`);
    return { entries: [statusEntry(entry)], alarms: await service.alarms(entry.command.meter) };
  }
  const run = single(query, 'run');
  if (run !== undefined) {
    const record = await service.runRecord(run);
    if (!record) throw new RouteError(404, 'UNKNOWN', `no run ${run}`);
    const entries: RelayStatusEntry[] = [];
    const byCode: Record<string, number> = {};
    for (const meter of record.meters) {
      const entry = await service.status(`${run}:${meter}`);
      if (!entry) continue;
      const row = statusEntry(entry);
      entries.push(row);
      const key = row.code ?? row.phase;
      byCode[key] = (byCode[key] ?? 0) + 1;
    }
    const alarms = (await service.alarms()).filter((a) => record.meters.includes(a.meter));
    return { entries, alarms, run: { id: run, total: record.meters.length, finished: record.finished, byCode } };
  }
  const meters = query.meter !== undefined ? [single(query, 'meter')!] : node.groupMeters(parseGroupSelector(single(query, 'group')!));
  const wanted = new Set(meters);
  const entries: RelayStatusEntry[] = [];
  for await (const entry of service.entries()) if (wanted.has(entry.command.meter)) entries.push(statusEntry(entry));
  entries.sort((a, b) => b.updatedAt - a.updatedAt);
  const alarms: RelayAlarm[] = (await service.alarms()).filter((a) => wanted.has(a.meter));
  return { entries: entries.slice(0, query.meter !== undefined ? STATUS_LIMIT : Math.max(STATUS_LIMIT, meters.length)), alarms };
}

export function registerRelayRoutes(RED: NodeAPI): void {
  const app = RED.httpAdmin;
  if (routedApps.has(app)) return;
  routedApps.add(app);
  const read = RED.auth.needsPermission('ami-relay.read');
  const write = RED.auth.needsPermission('ami-relay.write');

  app.post('/ami/relay/commands', write, (req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    (async (): Promise<RelayApiCommandResponse> => {
      const request = parseCommandRequest(req.body);
      const { node, service } = await relayService();
      const meters = request.meter !== undefined ? [request.meter] : (request.meters ?? node.groupMeters(request.group!));
      if (meters.length === 0) {
        throw new RelayApiRequestError('EMPTY_TARGET', `no registered meter has ${request.group?.tag}=${request.group?.value}`);
      }
      if (request.meter !== undefined && request.id !== undefined) {
        // A command id used for another meter or action: refused before the code is used up.
        const known = await service.status(request.id);
        if (known && (known.command.meter !== request.meter || known.command.action !== request.action || known.command.authorization.source !== 'local')) {
          throw new RouteError(409, 'ID_CONFLICT', `command id ${request.id} was used for another command`);
        }
      }
      const authorization: RelayAuthorization = await node.authorizeLocal(request.operator, request.totp);
      const notAfter = Date.now() + (request.validSeconds ?? DEFAULT_VALID_SECONDS) * 1000;
      const template = { action: request.action, authorization, notAfter, origin: 'admin-api' };
      if (request.meter !== undefined) {
        const result = await service.execute({ ...template, id: request.id ?? randomUUID(), meter: request.meter });
        return { id: result.commandId, results: [result], byCode: { [result.code]: 1 }, finished: result.final };
      }
      const summary = await service.runMany(template, meters, { concurrency: request.concurrency ?? node.concurrency, ...(request.id ? { runId: request.id } : {}) });
      return { id: summary.runId, results: summary.results, byCode: summary.byCode, finished: summary.finished };
    })().then(
      (body) => res.json(body),
      (err) => fail(res, err),
    );
  });

  app.get('/ami/relay/status', read, (req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    status(req.query).then(
      (body) => res.json(body),
      (err) => fail(res, err),
    );
  });

  app.get('/ami/alarms', read, (req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    (async () => {
      const meter = single(req.query, 'meter');
      const { service } = await relayService();
      return { alarms: await service.alarms(meter) };
    })().then(
      (body) => res.json(body),
      (err) => fail(res, err),
    );
  });

  app.post('/ami/alarms/reset', write, (req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    (async () => {
      const request = parseAlarmResetRequest(req.body);
      const { node, service } = await relayService();
      // Checked before the code is, so a wrong meter or code does not use up the operator's TOTP code.
      if (!(await service.alarms(request.meter)).some((a) => a.code === request.code)) {
        throw new RouteError(404, 'NO_SUCH_ALARM', `meter ${request.meter} has no standing ${request.code} alarm`);
      }
      const authorization = await node.authorizeLocal(request.operator, request.totp);
      return service.clearAlarm(request.meter, request.code, authorization);
    })().then(
      (body) => res.json(body),
      (err) => fail(res, err),
    );
  });
}
