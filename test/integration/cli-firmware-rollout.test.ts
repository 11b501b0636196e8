import { execFile } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { FirmwareApiRolloutStatusResponse, FirmwareApiRolloutsResponse } from '../../src/firmware/api.js';
import type { MeterRolloutEntry, RolloutSummary } from '../../src/firmware/rollout-types.js';
import { CLI, REPO_ROOT } from '../helpers/appliance.js';
import { freeTcpPort } from '../helpers/ports.js';

/**
 * `ami-gateway firmware rollout|status` through the built CLI (like the other
 * CLI tests: bin/ami-gateway.js runs dist/), against a plain HTTP server that
 * plays the gateway's admin API (src/firmware/api.ts) with canned answers
 * and records what it was asked. The real `ami-firmware` node behind the
 * same routes is the appliance's own test.
 */

const TOKEN = 'test-admin-token';
const T = Date.UTC(2025, 5, 1, 12, 0, 0);

interface Seen {
  method: string;
  path: string;
  authorization: string | undefined;
  body: unknown;
}

/** One canned answer; 'hang-up' closes the connection without one (a gateway restarting). */
type Canned = { status: number; json: unknown } | 'hang-up';

/** What the stand-in answers: POST and the list once each, each rollout's status in turn (the last one again and again). */
interface Script {
  post?: Canned;
  list?: Canned;
  statuses?: Record<string, Canned[]>;
}

const seen: Seen[] = [];
let script: Script = {};
let port = 0;

function summary(rolloutId: string, overrides: Partial<RolloutSummary> = {}): RolloutSummary {
  return { rolloutId, want: { comm: '2.2.0' }, total: 2, done: 0, byCode: {}, byPhase: { queued: 2 }, finished: false, createdAt: T, requestedBy: 'admin-api', ...overrides };
}

function meter(rolloutId: string, name: string, overrides: Partial<MeterRolloutEntry> = {}): MeterRolloutEntry {
  return { rolloutId, meter: name, phase: 'queued', attempts: 0, updatedAt: T, ...overrides };
}

function done(rolloutId: string, name: string, code: NonNullable<MeterRolloutEntry['outcome']>['code'], reason?: string): MeterRolloutEntry {
  return meter(rolloutId, name, { phase: 'done', steps: [], outcome: { code, at: T, ...(reason ? { reason } : {}) } });
}

function ok(json: unknown, status = 200): Canned {
  return { status, json };
}

function answer(res: ServerResponse, canned: Canned | undefined): void {
  if (canned === undefined) {
    res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'not scripted', code: 'UNKNOWN' }));
  } else if (canned === 'hang-up') {
    res.socket?.destroy();
  } else {
    res.writeHead(canned.status, { 'content-type': 'application/json' }).end(JSON.stringify(canned.json));
  }
}

function handle(req: IncomingMessage, res: ServerResponse, text: string): void {
  const path = req.url ?? '';
  let body: unknown;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch {
    body = text;
  }
  seen.push({ method: req.method ?? '', path, authorization: req.headers.authorization, body });
  if (req.method === 'POST' && path === '/ami/firmware/rollouts') return answer(res, script.post);
  if (req.method === 'GET' && path === '/ami/firmware/rollouts') return answer(res, script.list);
  const status = /^\/ami\/firmware\/rollouts\/([^/?]+)$/.exec(path);
  if (req.method === 'GET' && status) {
    const queue = script.statuses?.[decodeURIComponent(status[1]!)];
    return answer(res, queue && queue.length > 1 ? queue.shift() : queue?.[0]);
  }
  answer(res, undefined);
}

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => handle(req, res, Buffer.concat(chunks).toString('utf8')));
});

beforeAll(async () => {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});
beforeEach(() => {
  seen.length = 0;
  script = {};
});

function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('AMI_')));
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, 'firmware', ...args],
      { cwd: REPO_ROOT, timeout: 30_000, env: { ...base, AMI_HTTP_PORT: String(port), AMI_ADMIN_TOKEN: TOKEN, ...env } },
      (error, stdout, stderr) => {
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
      },
    );
  });
}

/** The progress lines of --wait: they start with the time. */
function progressLines(text: string): string[] {
  return text
    .split('\n')
    .filter((line) => /^\d{4}-\d\d-\d\dT/.test(line))
    .map((line) => line.replace(/^\S+\s+/, ''));
}

describe('ami-gateway firmware rollout (built CLI, stand-in admin API)', () => {
  it('--wait posts the request, polls until the rollout is finished, and exits 0 when every meter is updated or current', async () => {
    const id = 'R-ok';
    const halfway: FirmwareApiRolloutStatusResponse = {
      rollout: summary(id, { done: 1, byPhase: { done: 1, downloading: 1 }, byCode: { FW_ALREADY_CURRENT: 1 } }),
      meters: [done(id, 'mtr-1', 'FW_ALREADY_CURRENT'), meter(id, 'mtr-2', { phase: 'downloading', steps: [{ target: 'comm', from: '2.1.0', to: '2.2.0', imageId: 'acme/comm-2.2.0' }], step: 0, received: 256, size: 1024 })],
    };
    const finished: FirmwareApiRolloutStatusResponse = {
      rollout: summary(id, { done: 2, finished: true, byPhase: { done: 2 }, byCode: { FW_ALREADY_CURRENT: 1, FW_UPDATE_SUCCESS: 1 } }),
      meters: [done(id, 'mtr-1', 'FW_ALREADY_CURRENT'), done(id, 'mtr-2', 'FW_UPDATE_SUCCESS')],
    };
    script = {
      post: ok({ rollout: summary(id) }, 202),
      // The same counts twice, then no answer at all and a service still opening (a restart), then finished.
      statuses: { [id]: [ok(halfway), ok(halfway), 'hang-up', ok({ error: 'the firmware service is not running: it is still opening', code: 'NOT_READY' }, 503), ok(finished)] },
    };
    const result = await runCli(['rollout', '--comm', '2.2.0', '--meters', 'mtr-1,mtr-2', '--concurrency', '2', '--id', id, '--wait']);
    expect(result.code, result.stdout + result.stderr).toBe(0);

    expect(seen[0]).toEqual({ method: 'POST', path: '/ami/firmware/rollouts', authorization: `Bearer ${TOKEN}`, body: { comm: '2.2.0', meters: ['mtr-1', 'mtr-2'], concurrency: 2, id } });
    expect(seen.slice(1).map((s) => `${s.method} ${s.path}`)).toEqual(Array(5).fill(`GET /ami/firmware/rollouts/${id}`));
    expect(seen.every((s) => s.authorization === `Bearer ${TOKEN}`)).toBe(true);

    const progress = progressLines(result.stdout);
    expect(progress).toHaveLength(3);
    expect(progress[0]).toBe('1/2 done; downloading 1; FW_ALREADY_CURRENT 1');
    expect(progress[1]).toMatch(/cannot reach http:\/\/127\.0\.0\.1:\d+: .*; asking again for 60 s$/);
    expect(progress[2]).toBe('2/2 done; FW_UPDATE_SUCCESS 1, FW_ALREADY_CURRENT 1');
    expect(result.stdout).toMatch(/^mtr-1\s+done\s+0\/0\s+-\s+FW_ALREADY_CURRENT$/m);
    expect(result.stdout).toMatch(/^mtr-2\s+done\s+0\/0\s+-\s+FW_UPDATE_SUCCESS$/m);
  });

  it('--wait --json for a group exits 1 when a meter is refused, with the final status as JSON on stdout and progress on stderr', async () => {
    const id = 'R-group';
    const finished: FirmwareApiRolloutStatusResponse = {
      rollout: summary(id, { want: { metro: '5.1.0' }, done: 2, finished: true, byPhase: { done: 2 }, byCode: { FW_UPDATE_SUCCESS: 1, FW_INCOMPATIBLE: 1 } }),
      meters: [done(id, 'mtr-1', 'FW_UPDATE_SUCCESS'), done(id, 'mtr-3', 'FW_INCOMPATIBLE', 'metro 5.1.0 is not compatible with comm 2.0.0')],
    };
    script = { post: ok({ rollout: summary(id, { want: { metro: '5.1.0' } }) }, 202), statuses: { [id]: [ok(finished)] } };
    const result = await runCli(['rollout', '--metro', '5.1.0', '--group', 'feeder=F3', '--id', id, '--wait', '--json']);
    expect(result.code, result.stderr).toBe(1);
    expect(seen[0]?.body).toEqual({ metro: '5.1.0', group: { tag: 'feeder', value: 'F3' }, id });
    expect(JSON.parse(result.stdout)).toEqual(finished);
    expect(progressLines(result.stderr)).toEqual(['2/2 done; FW_UPDATE_SUCCESS 1, FW_INCOMPATIBLE 1']);
  });

  it('without --wait asks nothing more once the rollout is accepted (exit 0) and says how to follow it', async () => {
    script = { post: ok({ rollout: summary('R-bg', { total: 1, byPhase: { queued: 1 } }) }, 202) };
    const result = await runCli(['rollout', '--comm', '2.2.0', '--meter', 'mtr-1']);
    expect(result.code, result.stderr).toBe(0);
    expect(seen.map((s) => s.method)).toEqual(['POST']);
    expect(seen[0]?.body).toEqual({ comm: '2.2.0', meter: 'mtr-1' });
    expect(result.stdout).toContain('rollout R-bg started: comm 2.2.0 for 1 meter');
    expect(result.stdout).toContain('ami-gateway firmware status R-bg');
  });

  it('exits 1 with the gateway\'s reason when it refuses: an empty group, no firmware service', async () => {
    script = { post: ok({ error: 'no registered meter has feeder=F9', code: 'EMPTY_TARGET' }, 400) };
    const empty = await runCli(['rollout', '--comm', '2.2.0', '--group', 'feeder=F9']);
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('HTTP 400 EMPTY_TARGET: no registered meter has feeder=F9');

    script = { post: ok({ error: 'no firmware service (ami-firmware node) is deployed', code: 'NO_FIRMWARE' }, 404) };
    const none = await runCli(['rollout', '--comm', '2.2.0', '--meter', 'mtr-1']);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/has no firmware service deployed \(an ami-firmware config node\)/);
  });

  it('exits 2 for bad arguments without asking the gateway', async () => {
    for (const args of [
      ['rollout', '--comm', '2.x', '--meter', 'mtr-1'],
      ['rollout', '--comm', '2.2.0'],
      ['rollout', '--comm', '2.2.0', '--meter', 'mtr-1', '--concurrency', '5000'],
      ['status', 'a/b'],
    ]) {
      const result = await runCli(args);
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr).toMatch(/^ami-gateway: /);
    }
    expect(seen).toEqual([]);
  });

  it('exits 3 when the gateway cannot be reached or its authentication refuses', async () => {
    const closed = await freeTcpPort();
    const unreachable = await runCli(['rollout', '--comm', '2.2.0', '--meter', 'mtr-1'], { AMI_HTTP_PORT: String(closed) });
    expect(unreachable.code).toBe(3);
    expect(unreachable.stderr).toContain(`cannot reach http://127.0.0.1:${closed}`);

    script = { list: ok({ message: 'Unauthorized' }, 401) };
    const refused = await runCli(['status']);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain('set AMI_ADMIN_TOKEN or --user');
  });
});

describe('ami-gateway firmware status (built CLI, stand-in admin API)', () => {
  it('lists the rollouts, and shows one rollout as the API answered it with --json', async () => {
    const list: FirmwareApiRolloutsResponse = { rollouts: [summary('R-2', { done: 1, byCode: { FW_UPDATE_SUCCESS: 1 } }), summary('R-1', { finished: true, done: 2, byCode: { FW_UPDATE_SUCCESS: 2 } })] };
    const one: FirmwareApiRolloutStatusResponse = { rollout: list.rollouts[1]!, meters: [done('R-1', 'mtr-1', 'FW_UPDATE_SUCCESS'), done('R-1', 'mtr-2', 'FW_UPDATE_SUCCESS')] };
    script = { list: ok(list), statuses: { 'R-1': [ok(one)], 'R-9': [ok({ error: 'no rollout R-9', code: 'UNKNOWN' }, 404)] } };

    const listed = await runCli(['status']);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(/^R-2\s+2025-06-01T12:00:00Z\s+comm 2\.2\.0\s+1\/2\s+running\s+FW_UPDATE_SUCCESS 1$/m);
    expect(listed.stdout).toMatch(/^R-1\s+.*\s+2\/2\s+finished\s+FW_UPDATE_SUCCESS 2$/m);

    const shown = await runCli(['status', 'R-1', '--json']);
    expect(shown.code, shown.stderr).toBe(0);
    expect(JSON.parse(shown.stdout)).toEqual(one);
    expect(seen.map((s) => `${s.method} ${s.path}`)).toEqual(['GET /ami/firmware/rollouts', 'GET /ami/firmware/rollouts/R-1']);

    const unknown = await runCli(['status', 'R-9']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('HTTP 404 UNKNOWN: no rollout R-9');
  });
});
