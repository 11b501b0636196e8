/**
 * Network namespaces for tests that need real interfaces (an OpenVPN tunnel
 * between two namespaces, a link to cut). Everything here shells out to
 * iproute2's `ip`, needs root, and is meant to be cleaned up in afterAll:
 *
 *   const ns = await createNamespace(uniqueName('bh'));
 *   try { await ns.exec('ip', ['addr']); } finally { await ns.remove(); }
 *
 * Names carry the creating process's pid, so removeStaleNamespaces() can
 * delete what a crashed test run left behind without touching a running one.
 */
import { execFile, spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';

/** Prefix of every namespace these helpers create. */
export const NAMESPACE_PREFIX = 'amit';

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; never rejects for a non-zero exit (look at `code`). */
export function run(command: string, args: string[], options: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(command, args, { timeout: options.timeoutMs ?? 30_000, maxBuffer: 16 * 1024 * 1024, ...(options.env ? { env: options.env } : {}) }, (error, stdout, stderr) => {
      const failed = error as (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals }) | null;
      if (failed && typeof failed.code === 'string') {
        reject(new Error(`${command}: ${failed.message}`));
        return;
      }
      resolve({
        code: failed ? (typeof failed.code === 'number' ? failed.code : null) : 0,
        signal: failed?.signal ?? null,
        stdout: String(stdout),
        stderr: String(stderr),
      });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** Runs a command and rejects with its stderr when it exits non-zero. */
export async function runOk(command: string, args: string[], options: { timeoutMs?: number } = {}): Promise<string> {
  const result = await run(command, args, options);
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.code ?? result.signal}: ${result.stderr.trim() || result.stdout.trim()}`);
  return result.stdout;
}

/** `ip ARGS...`, rejecting with ip's message on failure. */
export function ip(...args: string[]): Promise<string> {
  return runOk('ip', args);
}

/**
 * A name unique to this process and call, `amit<pid36><random>-<role>`. Keep
 * `role` short: interface names have at most 15 characters (namespace names
 * have no such limit, but the same names are handy for both).
 */
export function uniqueName(role: string): string {
  return `${NAMESPACE_PREFIX}${process.pid.toString(36)}${randomBytes(2).toString('hex')}-${role}`;
}

/**
 * Why namespace tests cannot run here (not root, no iproute2, no /dev/net/tun,
 * namespaces refused), or undefined when they can. Synchronous, so a test
 * file can decide at collection time whether to skip.
 */
export function namespaceSupportProblem(): string | undefined {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'not running as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)';
  if (spawnSync('ip', ['-V'], { stdio: 'ignore' }).status !== 0) return 'iproute2 (`ip`) is not installed';
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun does not exist';
  const probe = `${NAMESPACE_PREFIX}probe${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
  const added = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
  if (added.status !== 0) return `cannot create a network namespace: ${(added.stderr || added.error?.message || '').trim()}`;
  spawnSync('ip', ['netns', 'delete', probe], { stdio: 'ignore' });
  return undefined;
}

export interface Namespace {
  readonly name: string;
  /** Runs a command inside the namespace (`ip netns exec NAME ...`) to completion. */
  exec(command: string, args?: string[], options?: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv }): Promise<CommandResult>;
  /**
   * Starts a long-running command inside the namespace. `ip netns exec`
   * replaces itself with the command, so the child's pid is the command's.
   */
  spawn(command: string, args?: string[], options?: SpawnOptions): ChildProcess;
  /** `ip -n NAME ARGS...` */
  ip(...args: string[]): Promise<string>;
  /** Deletes the namespace (its interfaces go with it). Safe to call twice. */
  remove(): Promise<void>;
}

/** Creates a namespace with its loopback up. */
export async function createNamespace(name: string): Promise<Namespace> {
  await ip('netns', 'add', name);
  let removed = false;
  const ns: Namespace = {
    name,
    exec: (command, args = [], options = {}) => run('ip', ['netns', 'exec', name, command, ...args], options),
    spawn: (command, args = [], options = {}) => spawn('ip', ['netns', 'exec', name, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...options }),
    ip: (...args) => ip('-n', name, ...args),
    remove: async () => {
      if (removed) return;
      removed = true;
      await ip('netns', 'delete', name).catch(() => undefined);
    },
  };
  try {
    await ns.ip('link', 'set', 'lo', 'up');
  } catch (err) {
    await ns.remove();
    throw err;
  }
  return ns;
}

export interface VethLink {
  /** Interface names at each end (each inside its namespace). */
  nameA: string;
  nameB: string;
  /** Takes both ends down: packets stop, addresses stay. */
  down(): Promise<void>;
  up(): Promise<void>;
}

/**
 * Joins two namespaces with a veth pair, each end created directly inside its
 * namespace (so nothing appears in the root namespace) with the given address
 * (CIDR, e.g. 10.99.0.1/24), and up.
 */
export async function connectNamespaces(a: Namespace, b: Namespace, addressA: string, addressB: string, names = { a: 'veth-a', b: 'veth-b' }): Promise<VethLink> {
  await ip('link', 'add', names.a, 'netns', a.name, 'type', 'veth', 'peer', 'name', names.b, 'netns', b.name);
  await a.ip('addr', 'add', addressA, 'dev', names.a);
  await b.ip('addr', 'add', addressB, 'dev', names.b);
  const link: VethLink = {
    nameA: names.a,
    nameB: names.b,
    down: async () => {
      await a.ip('link', 'set', names.a, 'down');
      await b.ip('link', 'set', names.b, 'down');
    },
    up: async () => {
      await a.ip('link', 'set', names.a, 'up');
      await b.ip('link', 'set', names.b, 'up');
    },
  };
  await link.up();
  return link;
}

/**
 * Deletes namespaces these helpers created in processes that no longer run
 * (a test run that was killed before its afterAll). Namespaces of live
 * processes, this one included, are left alone.
 */
export async function removeStaleNamespaces(): Promise<string[]> {
  let listing: string;
  try {
    listing = await ip('netns', 'list');
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const line of listing.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const match = new RegExp(`^${NAMESPACE_PREFIX}(?:probe)?([0-9a-z]+?)[0-9a-f]{4}(?:-|$)`).exec(name);
    if (!match) continue;
    const pid = parseInt(match[1] ?? '', 36);
    if (Number.isInteger(pid) && processAlive(pid)) continue;
    await ip('netns', 'delete', name).catch(() => undefined);
    removed.push(name);
  }
  return removed;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
