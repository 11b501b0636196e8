/**
 * A pair of connected pseudo-terminals made by socat, for tests that need two
 * real serial ports wired to each other (a client with `serialport` on one
 * end, a simulated device on the other):
 *
 *   const problem = ptySupport('c1218-pty');
 *   describe.skipIf(problem !== undefined)('...', () => {
 *     let pty: PtyPair;
 *     beforeEach(async () => (pty = await openPtyPair()));
 *     afterEach(() => pty.close());
 *     it('...', async () => { ... pty.a ... pty.b ... });
 *   });
 *
 * What one end writes, the other reads; a pty ignores the baud rate (both ends
 * can switch freely). Close the serial ports before the pair: a port whose pty
 * vanishes under it reports an error.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PtyPair {
  /** Path of one end (a symlink to /dev/pts/N). */
  a: string;
  /** Path of the other end. */
  b: string;
  /** The temporary directory holding both links (removed by close). */
  dir: string;
  /** socat's process id. */
  pid: number;
  /** Stops socat, waits for it to exit and removes the links. Safe to call twice. */
  close(): Promise<void>;
}

export interface PtyPairOptions {
  /** Directory for the links (default: a fresh one under the OS temp dir). */
  dir?: string;
  /** Give up if socat has not started its transfer loop by then (default 10 s; a safety net, it takes milliseconds). */
  startTimeoutMs?: number;
  /** The socat binary (default `socat` on PATH). */
  socat?: string;
}

/**
 * Why pty pairs cannot be made here, or undefined when they can. Throws under
 * CI (CI set), where socat is installed by .ci/run; otherwise warns
 * `LABEL: SKIPPED: reason`. Synchronous, for use at collection time.
 */
export function ptySupport(label: string): string | undefined {
  const problem = spawnSync('socat', ['-V'], { stdio: 'ignore' }).status === 0 ? undefined : 'socat is not installed';
  if (problem !== undefined && process.env.CI) throw new Error(`${label}: the pty tests cannot run in CI: ${problem}`);
  if (problem !== undefined) console.warn(`${label}: SKIPPED: ${problem}`);
  return problem;
}

/**
 * Starts `socat -d -d pty,raw,echo=0,link=DIR/a pty,raw,echo=0,link=DIR/b` and
 * resolves once socat logs that its data transfer loop started (both links
 * exist then), rather than after a guessed delay.
 */
export async function openPtyPair(options: PtyPairOptions = {}): Promise<PtyPair> {
  const ownDir = options.dir === undefined;
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'pty-pair-')));
  const a = join(dir, 'a');
  const b = join(dir, 'b');
  const child = spawn(options.socat ?? 'socat', ['-d', '-d', `pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  const removeDir = async (): Promise<void> => {
    if (ownDir) await rm(dir, { recursive: true, force: true });
  };
  try {
    await started(child, options.startTimeoutMs ?? 10_000);
  } catch (err) {
    // Without a pid socat never ran (not installed): there is no process to wait for.
    if (child.pid !== undefined) {
      child.kill('SIGKILL');
      await exited;
    }
    await removeDir();
    throw err;
  }
  let closing: Promise<void> | undefined;
  return {
    a,
    b,
    dir,
    pid: child.pid as number,
    close() {
      closing ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        await exited;
        await removeDir();
      })();
      return closing;
    },
  };
}

/** Resolves when socat reports its transfer loop; rejects if it fails or exits first, or after `timeoutMs`. */
function started(child: ChildProcess, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let log = '';
    const timer = setTimeout(() => finish(new Error(`socat did not start within ${timeoutMs} ms:\n${log}`)), timeoutMs);
    const onData = (chunk: Buffer): void => {
      log += chunk.toString();
      if (log.includes('starting data transfer loop')) finish();
    };
    const onError = (err: Error): void => finish(new Error(`cannot run socat: ${err.message}`));
    const onExit = (code: number | null, signal: string | null): void => finish(new Error(`socat exited (${signal ?? code}) before its transfer loop started:\n${log}`));
    function finish(err?: Error): void {
      clearTimeout(timer);
      child.stderr?.off('data', onData);
      child.off('error', onError);
      child.off('exit', onExit);
      // socat keeps logging to stderr (at exit too); keep the pipe drained so it never blocks.
      child.stderr?.resume();
      if (err) reject(err);
      else resolve();
    }
    child.stderr?.on('data', onData);
    child.once('error', onError);
    child.once('exit', onExit);
  });
}
