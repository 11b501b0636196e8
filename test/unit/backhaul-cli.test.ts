import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { backhaulCommand, BackhaulUsageError } from '../../src/appliance/cli-backhaul.js';
import { main } from '../../src/appliance/cli.js';
import { ConfigError, loadConfig } from '../../src/appliance/config.js';
import { freeTcpPort } from '../helpers/ports.js';
import { ScriptedManagementServer } from '../helpers/openvpn.js';

/**
 * `ami-gateway backhaul status|hold-release|restart` against a scripted
 * management interface, and through a stand-in for the running gateway's
 * admin API when OpenVPN is busy with another client.
 */

const T = 1795340130;
const CONNECTED = `${T},CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,`;
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function serve(options: Parameters<typeof ScriptedManagementServer.listen>[0] = {}, history: string[] = [CONNECTED]): Promise<ScriptedManagementServer> {
  const server = await ScriptedManagementServer.listen(options);
  server.history.push(...history);
  cleanups.push(() => server.close());
  return server;
}

/** A port where no gateway answers, so the fallback finds nothing. */
async function noGateway(): Promise<number> {
  return freeTcpPort();
}

function run(args: string[], httpPort: number, defaultMgmt = '/nonexistent/ami.sock') {
  return backhaulCommand(args, { defaultMgmt, httpPort });
}

/** A stand-in for the gateway's admin API: GET /ami/backhaul, POST /ami/backhaul/:id/hold-release|restart. */
async function fakeGateway(address: string, snapshot: Record<string, unknown>): Promise<{ port: number; posts: Array<{ url: string; body: string }> }> {
  const posts: Array<{ url: string; body: string }> = [];
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString()));
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      if (req.method === 'GET' && req.url === '/ami/backhaul') {
        res.end(JSON.stringify({ backhauls: [{ id: 'bh1', name: '', address, monitoring: true, snapshot }] }));
        return;
      }
      if (req.method === 'POST') {
        posts.push({ url: req.url ?? '', body });
        res.end(JSON.stringify({ ok: true, snapshot }));
        return;
      }
      res.statusCode = 404;
      res.end('{}');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as { port: number }).port, posts };
}

const UP_SNAPSHOT = {
  up: true,
  phase: 'up',
  reason: null,
  state: 'CONNECTED',
  description: 'SUCCESS',
  since: 1_700_000_000_000,
  stateTime: T * 1000,
  localIp: '10.8.0.2',
  remoteIp: '10.99.0.1',
  remotePort: 1194,
  localIpv6: null,
  bytesIn: 1,
  bytesOut: 2,
  lastFatal: null,
  holding: false,
  managementConnected: true,
};

describe('ami-gateway backhaul status', () => {
  it('prints the state and exits 0 when the tunnel is up, without changing OpenVPN settings', async () => {
    const server = await serve();
    const result = await run(['status', '--mgmt', server.address], await noGateway());
    expect(result.exitCode).toBe(0);
    expect(result.output).toMatch(/^backhaul {6}up since /m);
    expect(result.output).toMatch(/^openvpn {7}CONNECTED \(SUCCESS\) at /m);
    expect(result.output).toMatch(/^tunnel {8}10\.8\.0\.2, server 10\.99\.0\.1:1194$/m);
    expect(result.output).toMatch(/^traffic {7}in 3519 B, out 3617 B since the tunnel \(re\)started$/m);
    expect(result.output).toMatch(new RegExp(`^management {4}${server.address.replace(/[.]/g, '\\.')}, connected to `, 'm'));
    expect(server.received).toEqual(['state on all', 'status']);
  });

  it('exits 1 when it is down, and --json gives the snapshot', async () => {
    const server = await serve({ transport: 'unix' }, [CONNECTED, `${T + 9},RECONNECTING,ping-restart,,,,,`]);
    const result = await run(['status', '--json'], await noGateway(), server.address);
    expect(result.exitCode).toBe(1);
    expect(JSON.parse(result.output)).toMatchObject({
      management: server.address,
      up: false,
      phase: 'down',
      reason: 'RECONNECTING (ping-restart)',
      state: 'RECONNECTING',
      description: 'ping-restart',
      managementConnected: true,
      tunnelBytesIn: 3519,
      tunnelBytesOut: 3617,
    });
  });

  it('says when OpenVPN holds', async () => {
    const server = await serve({ afterGreeting: ['>HOLD:Waiting for hold release:0'] }, [`${T},CONNECTING,,,,,,`]);
    server.setReply('status', ["ERROR: The 'status' command is not supported by the current daemon mode"]);
    const result = await run(['status', '--mgmt', server.address], await noGateway());
    expect(result.exitCode).toBe(1);
    expect(result.output).toMatch(/^hold {10}yes/m);
    expect(result.output).toMatch(/^backhaul {6}down \(hold\): OpenVPN waits for hold release/m);
  });

  it('exits 3 when neither the management interface nor a gateway can be reached', async () => {
    const result = await run(['status', '--mgmt', '/nonexistent/dir/ami.sock'], await noGateway());
    expect(result.exitCode).toBe(3);
    expect(result.output).toMatch(/cannot reach the OpenVPN management interface at unix:\/nonexistent\/dir\/ami\.sock: UNREACHABLE: .*ENOENT.*no running gateway/);
  });

  it('asks the running gateway when OpenVPN is busy with another management client', async () => {
    const server = await serve({ greet: false });
    const gateway = await fakeGateway(server.address, UP_SNAPSHOT);
    const result = await run(['status', '--mgmt', server.address, '--timeout', '1', '--url', `http://127.0.0.1:${gateway.port}`], 1);
    expect(result.exitCode).toBe(0);
    expect(result.output).toMatch(/^backhaul {6}up/m);
    expect(result.output).toMatch(/via the gateway at http:\/\/127\.0\.0\.1:\d+, which holds the management connection/);
  });

  it('answers with the password from --password-file', async () => {
    const server = await serve({ password: 'mgmt-pw' });
    const directory = mkdtempSync(path.join(os.tmpdir(), 'amit-cli-'));
    cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
    const file = path.join(directory, 'pw');
    writeFileSync(file, 'mgmt-pw\nignored second line\n');
    const result = await run(['status', '--mgmt', server.address, '--password-file', file], await noGateway());
    expect(result.exitCode).toBe(0);
    const wrong = path.join(directory, 'wrong');
    writeFileSync(wrong, 'nope\n');
    const refused = await run(['status', '--mgmt', server.address, '--password-file', wrong], await noGateway());
    expect(refused).toMatchObject({ exitCode: 3, output: expect.stringMatching(/BAD_PASSWORD/) });
  });
});

describe('ami-gateway backhaul hold-release and restart', () => {
  it('releases a hold', async () => {
    const server = await serve({ afterGreeting: ['>HOLD:Waiting for hold release:0'] }, [`${T},CONNECTING,,,,,,`]);
    const result = await run(['hold-release', '--mgmt', server.address], await noGateway());
    expect(result).toEqual({ exitCode: 0, output: `hold released: OpenVPN is starting the tunnel (connected to ${server.address})` });
    expect(server.received).toContain('hold release');
  });

  it('restarts soft by default and hard on request, and exits 1 when OpenVPN refuses', async () => {
    const server = await serve();
    expect((await run(['restart', '--mgmt', server.address], await noGateway())).exitCode).toBe(0);
    expect((await run(['restart', 'hard', '--mgmt', server.address, '--json'], await noGateway())).output).toContain('"kind": "hard"');
    expect(server.received.filter((c) => c.startsWith('signal'))).toEqual(['signal SIGUSR1', 'signal SIGHUP']);
    server.setReply(/^signal/, ["ERROR: signal 'SIGUSR1' is currently ignored"]);
    const refused = await run(['restart', '--mgmt', server.address], await noGateway());
    expect(refused).toMatchObject({ exitCode: 1, output: expect.stringMatching(/COMMAND_FAILED: .*currently ignored/) });
  });

  it('goes through the gateway when OpenVPN is busy', async () => {
    const server = await serve({ greet: false });
    const gateway = await fakeGateway(server.address, { ...UP_SNAPSHOT, holding: true });
    const result = await run(['restart', 'hard', '--mgmt', server.address, '--timeout', '1', '--url', `http://127.0.0.1:${gateway.port}`], 1);
    expect(result.exitCode).toBe(0);
    expect(gateway.posts).toEqual([{ url: '/ami/backhaul/bh1/restart', body: '{"kind":"hard"}' }]);
  });
});

describe('ami-gateway backhaul usage', () => {
  it('takes the default address from AMI_BACKHAUL_MGMT, else /run/openvpn/ami.sock', () => {
    expect(loadConfig({}, '/tmp').backhaulMgmt).toBe('/run/openvpn/ami.sock');
    expect(loadConfig({ AMI_BACKHAUL_MGMT: '127.0.0.1:7505' }, '/tmp').backhaulMgmt).toBe('127.0.0.1:7505');
    expect(() => loadConfig({ AMI_BACKHAUL_MGMT: 'localhost' }, '/tmp')).toThrow(ConfigError);
  });

  it('refuses bad arguments with a typed usage error', async () => {
    for (const args of [['frobnicate'], ['restart', 'sideways'], ['status', 'extra'], ['status', '--timeout', '0'], ['status', '--mgmt', 'no-port'], ['status', '--password-file', '/nonexistent/pw']]) {
      await expect(run(args, 1), args.join(' ')).rejects.toBeInstanceOf(BackhaulUsageError);
    }
  });

  it('exits with the usage code from the CLI, and names AMI_BACKHAUL_MGMT when it is wrong', async () => {
    const saved = process.env.AMI_BACKHAUL_MGMT;
    const stderr = process.stderr.write;
    const written: string[] = [];
    process.stderr.write = ((chunk: string) => {
      written.push(String(chunk));
      return true;
    }) as typeof process.stderr.write;
    try {
      expect(await main(['backhaul', 'frobnicate'])).toBe(2);
      process.env.AMI_BACKHAUL_MGMT = 'not an address';
      expect(await main(['backhaul', 'status'])).toBe(2);
    } finally {
      process.stderr.write = stderr;
      if (saved === undefined) delete process.env.AMI_BACKHAUL_MGMT;
      else process.env.AMI_BACKHAUL_MGMT = saved;
    }
    expect(written.join('')).toMatch(/unknown backhaul command "frobnicate"/);
    expect(written.join('')).toMatch(/AMI_BACKHAUL_MGMT: /);
  });
});
