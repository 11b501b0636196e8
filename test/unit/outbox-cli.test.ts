import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import express from 'express';
import type { NextFunction, Request, Response } from 'express';
import type { NodeAPI } from 'node-red';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { acquireDatabase } from '../../src/store/database.js';
import { Outbox, type OutboxClass } from '../../src/store/outbox.js';
import { queueCommand } from '../../src/appliance/cli-queue.js';
import { publishOutbox, registerOutboxRoutes } from '../../nodes/shared/outbox-route.js';

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const CHILD = path.join(REPO_ROOT, 'test', 'fixtures', 'outbox-child.mjs');
const BIN = path.join(REPO_ROOT, 'bin', 'ami-gateway.js');
const LONG = { alarm: 1e9, event: 1e9, metrology: 1e9 };
/** Not used by the --store and --url modes; queueCommand needs one. */
const NO_PORT = 1;

let tmpRoot: string;
beforeAll(() => {
  tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'outbox-cli-'));
});
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));

const record = (key: string, recordClass: OutboxClass, meter: string) => ({ key, meter, recordClass, payload: Buffer.alloc(100, 1) });

/** A store directory with a stopped gateway's outbox: 2 alarms, 1 event, 3 readings, one of them quarantined. */
async function storeWithBacklog(): Promise<string> {
  const dir = mkdtempSync(path.join(tmpRoot, 'store-'));
  const lease = await acquireDatabase(dir);
  const outbox = await Outbox.open(lease.db, { maxBytes: 1e9, ttlMs: LONG });
  await outbox.append(record('r1', 'metrology', 'mtr-1'));
  await outbox.append(record('a1', 'alarm', 'mtr-2'));
  await outbox.append(record('r2', 'metrology', 'mtr-2'));
  await outbox.append(record('e1', 'event', 'mtr-1'));
  await outbox.append(record('a2', 'alarm', 'mtr-1'));
  await outbox.append(record('r3', 'metrology', 'mtr-1'));
  await outbox.quarantine(['r2'], 'HES refused the record');
  await outbox.close();
  await lease.release();
  return dir;
}

describe('ami-gateway queue --store (the gateway stopped)', () => {
  it('reads the outbox from the LevelDB directory: stats per class and in total', async () => {
    const dir = await storeWithBacklog();
    const json = await queueCommand(['stats', '--store', dir, '--json'], NO_PORT);
    expect(json.exitCode).toBe(0);
    const [row] = (JSON.parse(json.output) as { outboxes: Array<{ stats: Record<string, unknown> & { totals: unknown } }> }).outboxes;
    expect(row?.stats.alarm).toMatchObject({ records: 2, bytes: 2 * (2 + 5 + 100) });
    expect(row?.stats.event).toMatchObject({ records: 1 });
    expect(row?.stats.metrology).toMatchObject({ records: 2, quarantined: 1, dropped: 0, expired: 0 });
    expect(row?.stats.totals).toMatchObject({ records: 5, quarantined: 1 });
    // The budget is a node setting, not in the database: not made up.
    expect(row?.stats.maxBytes).toBeNull();

    const human = await queueCommand(['stats', '--store', dir], NO_PORT);
    expect(human.exitCode).toBe(0);
    expect(human.output).toMatch(/^alarm\s+2\s+214 B\s+\d+s\s+0\s+0\s+0$/m);
    expect(human.output).toMatch(/^metrology\s+2\s+214 B\s+\d+s\s+0\s+0\s+1$/m);
    expect(human.output).toMatch(/^total\s+5\s+/m);
    expect(human.output).toContain('budget unknown');
  });

  it('peeks in drain order, filtered by class and meter, and at the dead letters', async () => {
    const dir = await storeWithBacklog();
    const keys = async (...args: string[]): Promise<string[]> => {
      const result = await queueCommand(['peek', '--store', dir, '--json', ...args], NO_PORT);
      expect(result.exitCode).toBe(0);
      return (JSON.parse(result.output) as { outboxes: Array<{ entries: Array<{ key: string }> }> }).outboxes[0]!.entries.map((e) => e.key);
    };
    expect(await keys()).toEqual(['a1', 'a2', 'e1', 'r1', 'r3']);
    expect(await keys('--limit', '2')).toEqual(['a1', 'a2']);
    expect(await keys('--class', 'metrology')).toEqual(['r1', 'r3']);
    expect(await keys('--meter', 'mtr-2')).toEqual(['a1']);
    expect(await keys('--dead')).toEqual(['r2']);
    const human = await queueCommand(['peek', '--store', dir, '--dead'], NO_PORT);
    expect(human.output).toMatch(/^metrology\s+mtr-2\s+\d+s\s+107\s+r2\s+dead \d+s ago: HES refused the record$/m);
  });

  it('says the gateway is running when it holds the database, and refuses a directory without one', async () => {
    const dir = await storeWithBacklog();
    const child = spawn(process.execPath, [CHILD, dir, '--hold'], { stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      const ready = new Promise<void>((resolve) => {
        child.stdout.on('data', (chunk: Buffer) => {
          if (chunk.toString().includes('READY')) resolve();
        });
      });
      const outcome = await Promise.race([ready.then(() => 'ready'), exited.then((code) => `exited with ${code} (is dist/ built?)`)]);
      expect(outcome, 'the child holding the store').toBe('ready');
      const result = await queueCommand(['stats', '--store', dir], NO_PORT);
      expect(result.exitCode).toBe(1);
      expect(result.output).toContain('the gateway is running');
      expect(result.output).toContain('omit --store to ask it');
    } finally {
      child.stdin.end();
      await exited;
    }
    // Free again: readable.
    expect((await queueCommand(['stats', '--store', dir], NO_PORT)).exitCode).toBe(0);

    const empty = mkdtempSync(path.join(tmpRoot, 'empty-'));
    const missing = await queueCommand(['stats', '--store', empty], NO_PORT);
    expect(missing).toEqual({ exitCode: 1, output: expect.stringContaining('no LevelDB database') as string });
  });

  it('runs as `ami-gateway queue` from the command line, with usage errors as exit code 2', () => {
    return storeWithBacklog().then((dir) => {
      const ok = spawnSync(process.execPath, [BIN, 'queue', 'stats', '--store', dir], { encoding: 'utf8' });
      expect(ok.status, ok.stderr).toBe(0);
      expect(ok.stdout).toMatch(/^alarm\s+2\s/m);
      const bad = spawnSync(process.execPath, [BIN, 'queue', 'peek', '--store', dir, '--class', 'urgent'], { encoding: 'utf8' });
      expect(bad.status).toBe(2);
      expect(bad.stderr).toContain('--class must be one of alarm, event, metrology');
    });
  });
});

describe('ami-gateway queue against the admin API', () => {
  const TOKEN = 'test-token';
  let server: Server | undefined;
  let base: string;
  const permissions: string[] = [];
  const cleanups: Array<() => Promise<void> | void> = [];

  beforeAll(async () => {
    const app = express();
    // The two parts of RED the routes use: the admin app and a permission check (a bearer token here).
    const RED = {
      httpAdmin: app,
      auth: {
        needsPermission: (permission: string) => {
          permissions.push(permission);
          return (req: Request, res: Response, next: NextFunction) => {
            if (req.headers.authorization === `Bearer ${TOKEN}`) next();
            else res.status(401).end();
          };
        },
      },
    } as unknown as NodeAPI; // only httpAdmin and auth.needsPermission are used by the routes
    registerOutboxRoutes(RED);
    registerOutboxRoutes(RED);
    const dir = await storeWithBacklog();
    const lease = await acquireDatabase(dir);
    const outbox = await Outbox.open(lease.db, { maxBytes: 1_000_000, ttlMs: LONG });
    await outbox.take(1);
    const unpublish = publishOutbox(RED, 'node-1', 'HES primary', outbox);
    cleanups.push(unpublish, () => outbox.close(), () => lease.release());
    const listening = app.listen(0, '127.0.0.1');
    server = listening;
    await new Promise<void>((resolve) => listening.once('listening', () => resolve()));
    base = `http://127.0.0.1:${(listening.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });
  afterEach(() => {
    delete process.env.AMI_ADMIN_TOKEN;
  });

  it('registers its routes once, behind the read permission, and is refused without a token (exit code 3)', async () => {
    expect(permissions).toEqual(['ami-hes-endpoint.read']);
    const refused = await queueCommand(['stats', '--url', base], NO_PORT);
    expect(refused.exitCode).toBe(3);
    expect(refused.output).toContain('HTTP 401');
  });

  it('prints the stats and peeks with filters through GET /ami/queue/*', async () => {
    process.env.AMI_ADMIN_TOKEN = TOKEN;
    const stats = await queueCommand(['stats', '--url', base], NO_PORT);
    expect(stats.exitCode).toBe(0);
    expect(stats.output).toContain('outbox HES primary (node node-1)');
    expect(stats.output).toMatch(/^total\s+5\s/m);
    expect(stats.output).toMatch(/disk budget .* of 976\.6 KiB .*; in flight 1$/m);
    const peek = await queueCommand(['peek', '--url', base, '--json', '--class', 'alarm', '--meter', 'mtr-1'], NO_PORT);
    const rows = (JSON.parse(peek.output) as { outboxes: Array<{ id: string; entries: Array<{ key: string; inFlight: boolean }> }> }).outboxes;
    expect(rows.map((row) => row.id)).toEqual(['node-1']);
    expect(rows[0]!.entries).toMatchObject([{ key: 'a2', inFlight: false }]);
    const human = await queueCommand(['peek', '--url', base, '--limit', '1'], NO_PORT);
    expect(human.output).toMatch(/^alarm\s+mtr-2\s+\S+\s+107\s+a1\s+\(in flight\)$/m);
  });

  it('answers 400 to a bad query, and the CLI says when the gateway cannot be reached', async () => {
    const response = await fetch(`${base}/ami/queue/peek?limit=0`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ code: 'BAD_QUERY' });
    const closed = await new Promise<number>((resolve) => {
      const probe = express().listen(0, '127.0.0.1', () => {
        const port = (probe.address() as AddressInfo).port;
        probe.close(() => resolve(port));
      });
    });
    const unreachable = await queueCommand(['stats', '--url', `http://127.0.0.1:${closed}`], NO_PORT);
    expect(unreachable.exitCode).toBe(3);
    expect(unreachable.output).toContain('cannot reach');
  });
});
