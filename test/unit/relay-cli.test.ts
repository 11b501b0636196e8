import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { alarmsCommand, relayCommand, RelayUsageError } from '../../src/appliance/cli-relay.js';
import { main } from '../../src/appliance/cli.js';
import {
  parseAlarmResetRequest,
  parseCommandRequest,
  RelayApiRequestError,
  type RelayApiCommandRequest,
  type RelayApiCommandResponse,
  type RelayApiStatusResponse,
  type RelayStatusEntry,
} from '../../src/relay/api.js';
import type { RelayAlarm, RelayResult } from '../../src/relay/types.js';
import { freeTcpPort } from '../helpers/ports.js';

/**
 * `ami-gateway relay ...` and `ami-gateway alarms ...` against a stand-in
 * for the running gateway's admin API (the routes of src/relay/api.ts, with
 * its request validation), which records what it was asked.
 */

const T = Date.UTC(2025, 5, 1, 12, 0, 0);
const RETRY_AT = T + 15 * 60_000;
const TOTP = '492039';
/** Not used with --url; the command functions need one. */
const NO_PORT = 1;

interface Seen {
  method: string;
  path: string;
  query: Record<string, string>;
  headers: IncomingHttpHeaders;
  body: unknown;
}

const GROUPS: Record<string, string[]> = {
  'feeder=F12': ['mtr-1', 'mtr-2', 'mtr-already'],
  'feeder=F7': ['mtr-1', 'mtr-weld', 'mtr-far'],
  'cell=C3': ['mtr-far', 'mtr-silent', 'mtr-2'],
};

/** What each simulated meter does with a command. */
function outcome(meter: string, request: RelayApiCommandRequest, commandId: string, runId: string | undefined): RelayResult {
  const base = { commandId, meter, action: request.action, operator: request.operator, source: 'local' as const, at: T, ...(runId ? { runId } : {}) };
  switch (meter) {
    case 'mtr-already':
      return { ...base, code: 'RELAY_OP_SUCCESS', final: true, actuated: false, idempotent: true, state: request.action === 'disconnect' ? 0 : 1 };
    case 'mtr-weld':
      return { ...base, code: 'RELAY_WELD_DETECTED', final: true, actuated: true, state: 0, loadVoltage: 231.4, detail: 'control_state 0 but 231.4 V on the load side' };
    case 'mtr-far':
      return { ...base, code: 'DEFERRED', final: false, actuated: false, reason: 'link', retryAt: RETRY_AT, detail: 'RSSI -97 dBm below -90 dBm' };
    case 'mtr-silent':
      return { ...base, code: 'COMM_TIMEOUT_ERR', final: false, actuated: false, detail: 'no answer within 20 s' };
    default:
      return { ...base, code: 'RELAY_OP_SUCCESS', final: true, actuated: true, state: request.action === 'disconnect' ? 0 : 1, loadVoltage: 0 };
  }
}

class FakeGateway {
  readonly requests: Seen[] = [];
  /** Whether an ami-relay config node is deployed. */
  relayDeployed = true;
  /** Whether the relay routes exist at all (an older gateway, or something else on the port). */
  routes = true;
  /** When set, the admin API wants this bearer token. */
  adminToken: string | undefined;
  alarms: RelayAlarm[] = [];
  private server!: Server;
  port = 0;

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => this.handle(req, res, Buffer.concat(chunks).toString('utf8')));
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  reset(): void {
    this.requests.length = 0;
    this.relayDeployed = true;
    this.routes = true;
    this.adminToken = undefined;
    this.alarms = [
      { meter: 'mtr-7', code: 'TAMPER', raisedAt: T - 3600_000, source: 'meter-alarm-register', detail: 'alarm register 1 bit 16 (magnetic tamper)', commandId: 'c-77' },
      { meter: 'mtr-weld', code: 'RELAY_WELD_DETECTED', raisedAt: T, source: 'relay-outcome', detail: '231.4 V on the load side after disconnect' },
    ];
  }

  private handle(req: IncomingMessage, res: ServerResponse, text: string): void {
    const url = new URL(req.url ?? '/', 'http://gateway');
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = text;
    }
    this.requests.push({ method: req.method ?? '', path: url.pathname, query: Object.fromEntries(url.searchParams), headers: req.headers, body });
    const json = (status: number, payload: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(payload));
    };
    const known = ['/ami/relay/commands', '/ami/relay/status', '/ami/alarms', '/ami/alarms/reset'].includes(url.pathname);
    if (!this.routes || !known) {
      res.writeHead(404, { 'content-type': 'text/html' });
      res.end(`<pre>Cannot ${req.method} ${url.pathname}</pre>`);
      return;
    }
    // Node-RED's admin authentication answers before the route: plain text, no code.
    if (this.adminToken !== undefined && req.headers.authorization !== `Bearer ${this.adminToken}`) {
      res.writeHead(401, { 'content-type': 'text/plain' });
      res.end('Unauthorized');
      return;
    }
    if (!this.relayDeployed) return json(404, { error: 'no ami-relay config node is deployed', code: 'NO_RELAY' });
    try {
      if (req.method === 'POST' && url.pathname === '/ami/relay/commands') return json(200, this.commands(parseCommandRequest(body)));
      if (req.method === 'GET' && url.pathname === '/ami/relay/status') return json(200, this.status(url.searchParams));
      if (req.method === 'GET' && url.pathname === '/ami/alarms') {
        const meter = url.searchParams.get('meter');
        return json(200, { alarms: this.alarms.filter((a) => meter === null || a.meter === meter) });
      }
      if (req.method === 'POST' && url.pathname === '/ami/alarms/reset') {
        const reset = parseAlarmResetRequest(body);
        this.checkOperator(reset.operator, reset.totp);
        if (reset.meter === 'mtr-offline') return json(502, { error: "mtr-offline: the meter's alarm register could not be cleared: no answer", code: 'METER_FAILED' });
        const at = this.alarms.findIndex((a) => a.meter === reset.meter && a.code === reset.code);
        if (at < 0) return json(404, { error: `${reset.meter} has no standing ${reset.code} alarm`, code: 'NO_SUCH_ALARM' });
        const [cleared] = this.alarms.splice(at, 1);
        return json(200, { cleared, meterCleared: cleared!.code === 'TAMPER' });
      }
      return json(405, { error: 'method not allowed', code: 'BAD_REQUEST' });
    } catch (err) {
      if (err instanceof RelayApiRequestError) return json(err.code === 'OPERATOR_REFUSED' ? 403 : 400, { error: err.message, code: err.code });
      return json(500, { error: (err as Error).message });
    }
  }

  private checkOperator(operator: string, totp: string): void {
    if (operator === 'mallory') throw new RelayApiRequestError('OPERATOR_REFUSED', 'operator "mallory" is disabled');
    if (totp === '000000') throw new RelayApiRequestError('OPERATOR_REFUSED', `operator "${operator}": bad or reused TOTP code`);
  }

  private commands(request: RelayApiCommandRequest): RelayApiCommandResponse {
    this.checkOperator(request.operator, request.totp);
    const meters = request.meter !== undefined ? [request.meter] : (request.meters ?? GROUPS[`${request.group!.tag}=${request.group!.value}`] ?? []);
    if (meters.length === 0) throw new RelayApiRequestError('EMPTY_TARGET', 'no meter in the registry has that tag');
    const one = request.meter !== undefined;
    const id = request.id ?? (one ? 'cmd-generated' : 'run-generated');
    const results = meters.map((m) => outcome(m, request, one ? id : `${id}:${m}`, one ? undefined : id));
    const byCode: Record<string, number> = {};
    for (const r of results) byCode[r.code] = (byCode[r.code] ?? 0) + 1;
    return { id, results, byCode, finished: results.every((r) => r.final) };
  }

  private status(query: URLSearchParams): RelayApiStatusResponse {
    const entry = (id: string, meter: string, over: Partial<RelayStatusEntry>): RelayStatusEntry => ({
      id,
      meter,
      action: 'disconnect',
      phase: 'done',
      operator: 'alice',
      source: 'local',
      code: 'RELAY_OP_SUCCESS',
      final: true,
      notAfter: T + 3600_000,
      createdAt: T - 60_000,
      updatedAt: T,
      ...over,
    });
    if (query.has('run')) {
      const run = query.get('run')!;
      return {
        entries: [
          entry(`${run}:mtr-1`, 'mtr-1', { runId: run }),
          entry(`${run}:mtr-far`, 'mtr-far', { runId: run, phase: 'deferred', code: 'DEFERRED', final: false, reason: 'link', retryAt: RETRY_AT }),
        ],
        alarms: [],
        run: { id: run, total: 2, finished: false, byCode: { RELAY_OP_SUCCESS: 1, DEFERRED: 1 } },
      };
    }
    if (query.has('meter')) {
      const meter = query.get('meter')!;
      return { entries: meter === 'mtr-7' ? [entry('c-77', 'mtr-7', { action: 'reconnect', code: 'TAMPER_LOCKED', operator: 'bob' })] : [], alarms: this.alarms.filter((a) => a.meter === meter) };
    }
    if (query.has('group')) {
      const meters = GROUPS[query.get('group')!] ?? [];
      return { entries: meters.map((m, i) => entry(`c-${i}`, m, {})), alarms: this.alarms.filter((a) => meters.includes(a.meter)) };
    }
    return { entries: [entry(query.get('command')!, 'mtr-1', {})], alarms: [] };
  }
}

const gateway = new FakeGateway();
const savedToken = process.env.AMI_ADMIN_TOKEN;
beforeAll(() => gateway.start());
afterAll(() => gateway.stop());
beforeEach(() => {
  gateway.reset();
  delete process.env.AMI_ADMIN_TOKEN;
});
afterEach(() => {
  if (savedToken === undefined) delete process.env.AMI_ADMIN_TOKEN;
  else process.env.AMI_ADMIN_TOKEN = savedToken;
});

const relay = (...args: string[]) => relayCommand([...args, '--url', gateway.url], NO_PORT);
const alarms = (...args: string[]) => alarmsCommand([...args, '--url', gateway.url], NO_PORT);
const AUTH = ['--operator', 'alice', '--totp', TOTP];

describe('ami-gateway relay disconnect|reconnect', () => {
  it('posts the command for one meter and prints its outcome (exit 0)', async () => {
    const result = await relay('disconnect', '--meter', 'mtr-1', ...AUTH, '--id', 'job-1', '--valid', '600');
    expect(gateway.requests).toHaveLength(1);
    const [seen] = gateway.requests;
    expect(seen).toMatchObject({ method: 'POST', path: '/ami/relay/commands' });
    expect(seen!.headers['content-type']).toBe('application/json');
    expect(seen!.body).toEqual({ action: 'disconnect', meter: 'mtr-1', operator: 'alice', totp: TOTP, id: 'job-1', validSeconds: 600 });
    expect(seen!.headers.authorization).toBeUndefined();
    expect(result.exitCode).toBe(0);
    const lines = result.output.split('\n');
    expect(lines[0]).toBe('disconnect command job-1: 1 meter');
    expect(lines[1]).toMatch(/^mtr-1\s+RELAY_OP_SUCCESS\s+disconnected$/);
    expect(lines).toContain('summary: RELAY_OP_SUCCESS 1');
    expect(result.output).not.toContain(TOTP);
  });

  it('runs a list of meters: idempotent ones are confirmed without actuation (exit 0)', async () => {
    const result = await relay('reconnect', '--meters', 'mtr-1, mtr-already,mtr-2,mtr-1', ...AUTH, '--concurrency', '8');
    expect(gateway.requests[0]!.body).toEqual({ action: 'reconnect', meters: ['mtr-1', 'mtr-already', 'mtr-2'], operator: 'alice', totp: TOTP, concurrency: 8 });
    expect(result.exitCode).toBe(0);
    expect(result.output).toMatch(/^reconnect run run-generated: 3 meters$/m);
    expect(result.output).toMatch(/^mtr-1\s+RELAY_OP_SUCCESS\s+reconnected$/m);
    expect(result.output).toMatch(/^mtr-already\s+RELAY_OP_SUCCESS\s+confirmed without actuation$/m);
    expect(result.output).toMatch(/^summary: RELAY_OP_SUCCESS 3$/m);
  });

  it('exits 1 when a meter ends in another final code (a weld), with the waiting ones said', async () => {
    const result = await relay('disconnect', '--group', 'feeder=F7', ...AUTH, '--id', 'storm-7');
    expect(gateway.requests[0]!.body).toMatchObject({ action: 'disconnect', group: { tag: 'feeder', value: 'F7' }, operator: 'alice', totp: TOTP, id: 'storm-7' });
    expect(gateway.requests[0]!.body).not.toHaveProperty('meter');
    expect(gateway.requests[0]!.body).not.toHaveProperty('meters');
    expect(result.exitCode).toBe(1);
    expect(result.output).toMatch(/^mtr-weld\s+RELAY_WELD_DETECTED\s+relay welded \(231\.4 V on the load side\)/m);
    expect(result.output).toMatch(/^summary: RELAY_OP_SUCCESS 1, RELAY_WELD_DETECTED 1, DEFERRED 1$/m);
    expect(result.output).not.toMatch(/^ami-gateway:/);
  });

  it('exits 4 when nothing failed but some meters wait: deferred until when, and how to follow them', async () => {
    const result = await relay('disconnect', '--group', 'tag.cell=C3', ...AUTH, '--id', 'run-c3');
    expect(gateway.requests[0]!.body).toMatchObject({ group: { tag: 'cell', value: 'C3' } });
    expect(result.exitCode).toBe(4);
    expect(result.output).toMatch(new RegExp(`^mtr-far\\s+DEFERRED\\s+deferred \\(link\\) until ${new Date(RETRY_AT).toISOString().replace('.000Z', 'Z')}: RSSI -97 dBm`, 'm'));
    expect(result.output).toMatch(/^mtr-silent\s+COMM_TIMEOUT_ERR\s+no answer from the meter/m);
    expect(result.output).toMatch(/^2 waiting: the gateway keeps them and runs them later \(ami-gateway relay status --run run-c3\)$/m);
  });

  it('prints the response body with --json', async () => {
    const result = await relay('disconnect', '--group', 'feeder=F12', ...AUTH, '--json');
    expect(result.exitCode).toBe(0);
    const body = JSON.parse(result.output) as RelayApiCommandResponse;
    expect(body).toMatchObject({ id: 'run-generated', finished: true, byCode: { RELAY_OP_SUCCESS: 3 } });
    expect(body.results.map((r) => r.meter)).toEqual(['mtr-1', 'mtr-2', 'mtr-already']);
  });

  it('exits 1 with the reason when the gateway refuses the operator (403 OPERATOR_REFUSED)', async () => {
    const result = await relay('disconnect', '--meter', 'mtr-1', '--operator', 'mallory', '--totp', TOTP);
    expect(result).toEqual({ exitCode: 1, output: 'ami-gateway: operator refused: operator "mallory" is disabled' });
    const reused = await relay('disconnect', '--meter', 'mtr-1', '--operator', 'alice', '--totp', '000000');
    expect(reused.exitCode).toBe(1);
    expect(reused.output).toContain('bad or reused TOTP code');
    expect(reused.output).not.toContain('000000');
  });

  it('exits 1 and says so when no relay service is deployed (404 NO_RELAY)', async () => {
    gateway.relayDeployed = false;
    const result = await relay('disconnect', '--meter', 'mtr-1', ...AUTH);
    expect(result.exitCode).toBe(1);
    expect(result.output).toMatch(/^ami-gateway: .* has no relay service deployed/);
  });

  it('exits 1 on the API\'s other errors, with their code (a group without meters)', async () => {
    const result = await relay('disconnect', '--group', 'feeder=NOWHERE', ...AUTH);
    expect(result.exitCode).toBe(1);
    expect(result.output).toContain('HTTP 400 EMPTY_TARGET: no meter in the registry has that tag');
  });

  it('exits 3 when the admin API wants a token, and sends AMI_ADMIN_TOKEN', async () => {
    gateway.adminToken = 'tok-123';
    const refused = await relay('disconnect', '--meter', 'mtr-1', ...AUTH);
    expect(refused.exitCode).toBe(3);
    expect(refused.output).toMatch(/refused the request \(HTTP 401\): set AMI_ADMIN_TOKEN or --user$/);
    const listRefused = await alarms('list');
    expect(listRefused.exitCode).toBe(3);

    process.env.AMI_ADMIN_TOKEN = 'tok-123';
    const ok = await relay('disconnect', '--meter', 'mtr-1', ...AUTH);
    expect(ok.exitCode).toBe(0);
    expect(gateway.requests.at(-1)!.headers.authorization).toBe('Bearer tok-123');
  });

  it('exits 3 when something else answers (404 without JSON) or nothing does', async () => {
    gateway.routes = false;
    const other = await relay('disconnect', '--meter', 'mtr-1', ...AUTH);
    expect(other.exitCode).toBe(3);
    expect(other.output).toContain('has no /ami/relay/commands (not an ami-gateway');

    const port = await freeTcpPort();
    const down = await relayCommand(['disconnect', '--meter', 'mtr-1', ...AUTH, '--url', `http://127.0.0.1:${port}`], NO_PORT);
    expect(down.exitCode).toBe(3);
    expect(down.output).toMatch(/^ami-gateway: cannot reach http:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED/);
    const downStatus = await relayCommand(['status', '--meter', 'mtr-1', '--url', `http://127.0.0.1:${port}`], NO_PORT);
    expect(downStatus.exitCode).toBe(3);
    // The default URL is the local gateway's HTTP port.
    const byPort = await alarmsCommand(['list'], port);
    expect(byPort.exitCode).toBe(3);
    expect(byPort.output).toContain(`http://127.0.0.1:${port}`);
  });

  it('refuses bad arguments before any request, never quoting the TOTP code', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['disconnect', '--meter', 'mtr-1', '--meters', 'mtr-2', ...AUTH], /give one of --meter, --meters, --group, not --meter and --meters/],
      [['disconnect', '--meter', 'mtr-1', '--group', 'feeder=F7', ...AUTH], /not --meter and --group/],
      [['reconnect', ...AUTH], /give the meters/],
      [['disconnect', '--meter', 'mtr-1', '--operator', 'alice', '--totp', '12345'], /--totp must be the operator's current code: 6 to 8 digits/],
      [['disconnect', '--meter', 'mtr-1', '--operator', 'alice', '--totp', '12a456'], /6 to 8 digits/],
      [['disconnect', '--meter', 'mtr-1', '--operator', 'alice'], /--totp is required/],
      [['disconnect', '--meter', 'mtr-1', '--totp', TOTP], /--operator is required/],
      [['disconnect', '--group', 'feeder', ...AUTH], /--group: group must be TAG=VALUE/],
      [['disconnect', '--group', '9x=F1', ...AUTH], /--group: group tag "9x" is not a tag name/],
      [['disconnect', '--meters', 'mtr-1,,mtr-2', ...AUTH], /without empty entries/],
      [['disconnect', '--meter', 'mtr 1', ...AUTH], /not an endpoint name/],
      [['disconnect', '--meter', 'mtr-1', ...AUTH, '--valid', '0'], /--valid must be a whole number 1-604800/],
      [['disconnect', '--meter', 'mtr-1', ...AUTH, '--valid', '604801'], /--valid/],
      [['disconnect', '--meter', 'mtr-1', ...AUTH, '--concurrency', '2.5'], /--concurrency must be a whole number 1-1024/],
      [['disconnect', '--meter', 'mtr-1', ...AUTH, '--id', 'has space'], /--id must be/],
      [['disconnect', '--meter', 'mtr-1', '--operator', 'alice', TOTP], /unexpected argument/],
      [['disconnect', '--meter', 'mtr-1', ...AUTH, '--color'], /Unknown option '--color'/],
      [['status', ...AUTH, '--meter', 'mtr-1'], /relay status takes no --operator/],
      [['status'], /give one of --meter ID, --command ID, --run ID, --group TAG=VALUE/],
      [['status', '--run', 'r1', '--meter', 'mtr-1'], /not --meter and --run|not --run and --meter/],
      [['status', '--group', '=F7'], /--group: group must be TAG=VALUE/],
      [['switch', '--meter', 'mtr-1'], /unknown relay command "switch": expected disconnect, reconnect or status/],
    ];
    for (const [args, message] of cases) {
      const error = await relay(...args).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error, args.join(' ')).toBeInstanceOf(RelayUsageError);
      expect((error as Error).message, args.join(' ')).toMatch(message);
      expect((error as Error).message, args.join(' ')).not.toContain(TOTP);
      expect((error as Error).message, args.join(' ')).not.toContain('12345');
    }
    await expect(relayCommand([], NO_PORT)).rejects.toThrow(/unknown relay command "": expected disconnect, reconnect or status/);
    expect(gateway.requests).toHaveLength(0);
  });
});

describe('ami-gateway relay status', () => {
  it('shows a run: progress, a table of its commands and no alarms', async () => {
    const result = await relay('status', '--run', 'storm-7');
    expect(gateway.requests[0]).toMatchObject({ method: 'GET', path: '/ami/relay/status', query: { run: 'storm-7' } });
    expect(result.exitCode).toBe(0);
    const lines = result.output.split('\n');
    expect(lines[0]).toBe('run storm-7: 2 meters, in progress; RELAY_OP_SUCCESS 1, DEFERRED 1');
    expect(lines[1]).toMatch(/^id\s+meter\s+action\s+phase\s+code\s+operator\s+updated$/);
    expect(lines[2]).toMatch(/^storm-7:mtr-1\s+mtr-1\s+disconnect\s+done\s+RELAY_OP_SUCCESS\s+alice\s+2025-06-01T12:00:00Z$/);
    expect(lines[3]).toMatch(/^storm-7:mtr-far\s+mtr-far\s+disconnect\s+deferred\s+DEFERRED \(link\)\s+alice\s+2025-06-01T12:00:00Z$/);
    expect(lines).toContain('no standing alarms');
  });

  it('shows a meter with its standing alarm, and a group as TAG=VALUE', async () => {
    const meter = await relay('status', '--meter', 'mtr-7');
    expect(meter.exitCode).toBe(0);
    expect(meter.output).toMatch(/^c-77\s+mtr-7\s+reconnect\s+done\s+TAMPER_LOCKED\s+bob\s+/m);
    expect(meter.output).toMatch(/^standing alarms:$/m);
    expect(meter.output).toMatch(/^mtr-7\s+TAMPER\s+2025-06-01T11:00:00Z\s+meter-alarm-register\s+alarm register 1 bit 16 \(magnetic tamper\) \(command c-77\)$/m);

    const group = await relay('status', '--group', 'feeder=F7', '--json');
    expect(gateway.requests.at(-1)!.query).toEqual({ group: 'feeder=F7' });
    const body = JSON.parse(group.output) as RelayApiStatusResponse;
    expect(body.entries.map((e) => e.meter)).toEqual(['mtr-1', 'mtr-weld', 'mtr-far']);
    expect(body.alarms).toEqual([expect.objectContaining({ meter: 'mtr-weld', code: 'RELAY_WELD_DETECTED' })]);

    const command = await relay('status', '--command', 'job-1');
    expect(gateway.requests.at(-1)!.query).toEqual({ command: 'job-1' });
    expect(command.output).toMatch(/^job-1\s+mtr-1\s+/m);
    const none = await relay('status', '--meter', 'mtr-new');
    expect(none).toEqual({ exitCode: 0, output: 'no relay commands for meter mtr-new\n\nno standing alarms' });
  });

  it('exits 1 when no relay service is deployed', async () => {
    gateway.relayDeployed = false;
    const result = await relay('status', '--meter', 'mtr-1');
    expect(result.exitCode).toBe(1);
    expect(result.output).toContain('no relay service deployed');
  });
});

describe('ami-gateway alarms list|reset', () => {
  it('lists the standing alarms, all or of one meter, as a table or JSON', async () => {
    const all = await alarms('list');
    expect(gateway.requests[0]).toMatchObject({ method: 'GET', path: '/ami/alarms', query: {} });
    expect(all.exitCode).toBe(0);
    const lines = all.output.split('\n');
    expect(lines[0]).toMatch(/^meter\s+code\s+raised\s+source\s+detail$/);
    expect(lines[1]).toMatch(/^mtr-7\s+TAMPER\s+/);
    expect(lines[2]).toMatch(/^mtr-weld\s+RELAY_WELD_DETECTED\s+2025-06-01T12:00:00Z\s+relay-outcome\s+231\.4 V/);

    const one = await alarms('list', '--meter', 'mtr-weld', '--json');
    expect(gateway.requests.at(-1)!.query).toEqual({ meter: 'mtr-weld' });
    expect((JSON.parse(one.output) as { alarms: RelayAlarm[] }).alarms).toHaveLength(1);
    expect(await alarms('list', '--meter', 'mtr-1')).toEqual({ exitCode: 0, output: 'no standing alarms on mtr-1' });
  });

  it('resets an alarm with the operator\'s code (exit 0), and says the meter register was cleared', async () => {
    const result = await alarms('reset', '--meter', 'mtr-7', '--code', 'TAMPER', ...AUTH);
    expect(gateway.requests[0]).toMatchObject({ method: 'POST', path: '/ami/alarms/reset', body: { meter: 'mtr-7', code: 'TAMPER', operator: 'alice', totp: TOTP } });
    expect(result.exitCode).toBe(0);
    expect(result.output).toBe(
      "cleared TAMPER on mtr-7 (raised 2025-06-01T11:00:00Z, meter-alarm-register: alarm register 1 bit 16 (magnetic tamper))\nthe meter's alarm register was cleared too",
    );
    expect(result.output).not.toContain(TOTP);
    const json = await alarms('reset', '--meter', 'mtr-weld', '--code', 'RELAY_WELD_DETECTED', ...AUTH, '--json');
    expect(JSON.parse(json.output)).toMatchObject({ cleared: { meter: 'mtr-weld', code: 'RELAY_WELD_DETECTED' }, meterCleared: false });
    expect(gateway.alarms).toEqual([]);
  });

  it('exits 1 when refused, when there is no such alarm and when the meter fails', async () => {
    const refused = await alarms('reset', '--meter', 'mtr-7', '--code', 'TAMPER', '--operator', 'mallory', '--totp', TOTP);
    expect(refused).toEqual({ exitCode: 1, output: 'ami-gateway: operator refused: operator "mallory" is disabled' });
    const none = await alarms('reset', '--meter', 'mtr-1', '--code', 'TAMPER', ...AUTH);
    expect(none.exitCode).toBe(1);
    expect(none.output).toContain('HTTP 404 NO_SUCH_ALARM: mtr-1 has no standing TAMPER alarm');
    const failed = await alarms('reset', '--meter', 'mtr-offline', '--code', 'TAMPER', ...AUTH);
    expect(failed.exitCode).toBe(1);
    expect(failed.output).toContain('HTTP 502 METER_FAILED');
    gateway.relayDeployed = false;
    expect((await alarms('list')).exitCode).toBe(1);
  });

  it('refuses bad arguments before any request', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['reset', '--meter', 'mtr-7', '--code', 'FIRE', ...AUTH], /--code must be TAMPER or RELAY_WELD_DETECTED, got "FIRE"/],
      [['reset', '--meter', 'mtr-7', ...AUTH], /--code is required/],
      [['reset', '--code', 'TAMPER', ...AUTH], /--meter is required/],
      [['reset', '--meter', 'mtr-7', '--code', 'TAMPER', '--operator', 'alice', '--totp', '123456789'], /6 to 8 digits/],
      [['reset', '--meter', 'mtr-7', '--code', 'TAMPER', '--totp', TOTP], /--operator is required/],
      [['list', '--code', 'TAMPER'], /alarms list takes no --code/],
      [['clear'], /unknown alarms command "clear": expected list or reset/],
    ];
    for (const [args, message] of cases) {
      await expect(alarms(...args), args.join(' ')).rejects.toThrow(message);
      await expect(alarms(...args), args.join(' ')).rejects.toBeInstanceOf(RelayUsageError);
    }
    expect(gateway.requests).toHaveLength(0);
  });
});

describe('ami-gateway relay|alarms from the command line', () => {
  async function captured(argv: string[]): Promise<{ code: number | undefined; stdout: string; stderr: string }> {
    const out: string[] = [];
    const err: string[] = [];
    const stdout = process.stdout.write;
    const stderr = process.stderr.write;
    process.stdout.write = ((chunk: string) => out.push(String(chunk)) > 0) as typeof process.stdout.write;
    process.stderr.write = ((chunk: string) => err.push(String(chunk)) > 0) as typeof process.stderr.write;
    try {
      return { code: await main(argv), stdout: out.join(''), stderr: err.join('') };
    } finally {
      process.stdout.write = stdout;
      process.stderr.write = stderr;
    }
  }

  it('dispatches relay and alarms, reports on stdout, errors on stderr, usage errors as exit code 2', async () => {
    const waiting = await captured(['relay', 'disconnect', '--meters', 'mtr-1,mtr-far', ...AUTH, '--url', gateway.url]);
    expect(waiting.code).toBe(4);
    expect(waiting.stdout).toMatch(/^mtr-far\s+DEFERRED\s+deferred \(link\)/m);
    const refused = await captured(['alarms', 'reset', '--meter', 'mtr-7', '--code', 'TAMPER', '--operator', 'mallory', '--totp', TOTP, '--url', gateway.url]);
    expect(refused).toMatchObject({ code: 1, stdout: '' });
    expect(refused.stderr).toContain('operator refused');
    const usage = await captured(['relay', 'disconnect', '--meter', 'mtr-1', '--operator', 'alice', '--totp', '1234', '--url', gateway.url]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("--totp must be the operator's current code");
    expect(usage.stderr).not.toContain('1234\n');
    const unknown = await captured(['alarms', 'silence']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('expected list or reset');
    expect(gateway.requests.map((r) => r.path)).toEqual(['/ami/relay/commands', '/ami/alarms/reset']);
  });
});
