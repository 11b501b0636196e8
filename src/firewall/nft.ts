import { execa, ExecaError } from 'execa';
import { FirewallError, TABLE_FAMILY, TABLE_NAME } from './ruleset.js';

/**
 * The only place that runs nft (issue 7), through execa. Every failure is a
 * FirewallError with a code a caller can act on:
 *
 *   NO_NFT         the nft binary is missing (ENOENT), or cannot be executed
 *   NO_PERMISSION  no CAP_NET_ADMIN ("Operation not permitted", EPERM)
 *   APPLY_FAILED   nft exited non-zero; its stderr (with the script's line
 *                  numbers, e.g. "/dev/stdin:3:20-20: Error: ...") is in the
 *                  message and in `stderr`
 *   TIMEOUT        nft did not finish within timeoutMs and was killed
 *   BAD_NFT_OUTPUT `nft -j` printed something that is not JSON
 */

/**
 * How nft is started: `file` with `args` before nft's own arguments. The
 * default is plain `nft`; tests run it in a namespace with
 * `{ file: 'ip', args: ['netns', 'exec', NS, 'nft'] }`.
 */
export interface NftCommand {
  file: string;
  args: string[];
}

export const DEFAULT_NFT_COMMAND: Readonly<NftCommand> = Object.freeze({ file: 'nft', args: [] });
export const DEFAULT_NFT_TIMEOUT_MS = 30_000;

export interface NftRunnerOptions {
  command?: NftCommand;
  /**
   * Per nft invocation; default 30 s. On expiry the started process gets
   * SIGTERM (SIGKILL 2 s later), so a wrapper must exec nft (ip netns exec,
   * setpriv and `sh -c 'exec ...'` do) rather than fork it.
   */
  timeoutMs?: number;
}

const TABLE_REF = [TABLE_FAMILY, TABLE_NAME] as const;
/** nft's stdout can be large: the JSON of a 10,000-entry set is a few MB. */
const MAX_BUFFER = 256 * 1024 * 1024;
const MAX_STDERR_IN_MESSAGE = 4000;

/** What a wrapper (ip netns exec, setpriv, sudo, env) prints when it cannot execute nft. */
const WRAPPED_EXEC_MISSING = /(?:exec of .* failed|failed to execute|execvp).*No such file or directory|command not found/i;
const NOT_PERMITTED = /Operation not permitted|you must be root/i;
/** nft's report for a table that does not exist (list / delete). */
const NO_SUCH_OBJECT = /Error: (?:Could not process rule: )?No such file or directory/;

function clip(text: string, max = MAX_STDERR_IN_MESSAGE): string {
  return text.length > max ? `${text.slice(0, max)}… (${text.length - max} more characters)` : text;
}

interface RunResult {
  stdout: string;
  stderr: string;
}

/** A failed nft run, before it is turned into a FirewallError (listTable/deleteTable look at it first). */
class NftExit extends Error {
  constructor(
    readonly exitCode: number | undefined,
    readonly stderr: string,
    readonly original: unknown,
  ) {
    super(`nft exited ${exitCode ?? '(killed)'}`);
  }
}

export class NftRunner {
  readonly command: Readonly<NftCommand>;
  readonly timeoutMs: number;

  constructor(options: NftRunnerOptions = {}) {
    const command = options.command ?? DEFAULT_NFT_COMMAND;
    this.command = Object.freeze({ file: command.file, args: [...command.args] });
    const timeoutMs = options.timeoutMs ?? DEFAULT_NFT_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new RangeError(`timeoutMs must be a positive number, not ${timeoutMs}`);
    this.timeoutMs = timeoutMs;
  }

  /** The command line, for messages: "nft -f -", "ip netns exec NS nft -f -". */
  describe(nftArgs: string[]): string {
    return [this.command.file, ...this.command.args, ...nftArgs].join(' ');
  }

  /** `nft -f -` with the script on stdin: one transaction, all or nothing. */
  async apply(script: string): Promise<void> {
    await this.runOrThrow(['-f', '-'], script, 'refused the ruleset');
  }

  /** `nft -c -f -`: checks the script (against the kernel too) without applying it. */
  async check(script: string): Promise<void> {
    await this.runOrThrow(['-c', '-f', '-'], script, 'refused the ruleset (check only, nothing applied)');
  }

  /** The parsed JSON of `nft -j list table inet ami_gateway`, or undefined when the table does not exist. */
  async listTable(): Promise<unknown | undefined> {
    const args = ['-j', 'list', 'table', ...TABLE_REF];
    let result: RunResult;
    try {
      result = await this.run(args);
    } catch (err) {
      if (err instanceof NftExit && NO_SUCH_OBJECT.test(err.stderr) && !WRAPPED_EXEC_MISSING.test(err.stderr)) return undefined;
      throw this.toFirewallError(err, args, 'could not list the table');
    }
    try {
      return JSON.parse(result.stdout) as unknown;
    } catch (err) {
      throw new FirewallError('BAD_NFT_OUTPUT', `${this.describe(args)} printed something that is not JSON: ${clip(result.stdout, 200)}`, { cause: err });
    }
  }

  /** `nft delete table inet ami_gateway`; false when it did not exist. No other table is touched. */
  async deleteTable(): Promise<boolean> {
    const args = ['delete', 'table', ...TABLE_REF];
    try {
      await this.run(args);
      return true;
    } catch (err) {
      if (err instanceof NftExit && NO_SUCH_OBJECT.test(err.stderr) && !WRAPPED_EXEC_MISSING.test(err.stderr)) return false;
      throw this.toFirewallError(err, args, 'could not delete the table');
    }
  }

  private async runOrThrow(args: string[], input: string | undefined, what: string): Promise<RunResult> {
    try {
      return await this.run(args, input);
    } catch (err) {
      throw this.toFirewallError(err, args, what);
    }
  }

  /**
   * Runs nft. Resolves on exit 0; rejects with a FirewallError for a spawn
   * failure or a timeout, and with an NftExit for a non-zero exit.
   */
  private async run(nftArgs: string[], input?: string): Promise<RunResult> {
    const args = [...this.command.args, ...nftArgs];
    try {
      const result = await execa(this.command.file, args, {
        ...(input === undefined ? { stdin: 'ignore' as const } : { input }),
        timeout: this.timeoutMs,
        forceKillAfterDelay: 2000,
        maxBuffer: MAX_BUFFER,
        encoding: 'utf8',
        stripFinalNewline: false,
        env: { LC_ALL: 'C' },
        extendEnv: true,
        windowsHide: true,
      });
      return { stdout: result.stdout, stderr: result.stderr };
    } catch (err) {
      if (!(err instanceof ExecaError)) throw err;
      const described = this.describe(nftArgs);
      const stderr = typeof err.stderr === 'string' ? err.stderr : '';
      if (err.timedOut) {
        throw new FirewallError('TIMEOUT', `${described} did not finish within ${this.timeoutMs} ms and was killed`, { cause: err, stderr });
      }
      const code = (err as ExecaError & { code?: unknown }).code;
      if (code === 'ENOENT') {
        throw new FirewallError('NO_NFT', `cannot run ${this.command.file}: not found (is nftables installed, and ${this.command.file} on PATH?)`, { cause: err });
      }
      if (code === 'EACCES') {
        throw new FirewallError('NO_NFT', `cannot run ${this.command.file}: permission denied (not executable)`, { cause: err });
      }
      if (code === 'EPERM') {
        throw new FirewallError('NO_PERMISSION', `cannot run ${described}: operation not permitted (the gateway needs CAP_NET_ADMIN to manage its firewall table)`, { cause: err });
      }
      if (typeof code === 'string' || (err.exitCode === undefined && !err.signal)) {
        // Another spawn or I/O error (E2BIG, EMFILE, EPIPE, ...).
        throw new FirewallError('APPLY_FAILED', `${described} failed: ${err.shortMessage}`, { cause: err, stderr });
      }
      // A non-zero exit, or killed by a signal (exitCode undefined).
      throw new NftExit(err.exitCode, stderr, err);
    }
  }

  private toFirewallError(err: unknown, nftArgs: string[], what: string): unknown {
    if (!(err instanceof NftExit)) return err;
    const described = this.describe(nftArgs);
    const stderr = err.stderr.trim();
    if (WRAPPED_EXEC_MISSING.test(stderr)) {
      return new FirewallError('NO_NFT', `cannot run ${described}: nft not found (is nftables installed?): ${clip(stderr, 300)}`, { cause: err.original, stderr });
    }
    if (NOT_PERMITTED.test(stderr)) {
      return new FirewallError(
        'NO_PERMISSION',
        `${described}: operation not permitted: the gateway needs CAP_NET_ADMIN (run as root or grant the capability) to manage its firewall table (nft: ${clip(stderr, 300)})`,
        { cause: err.original, stderr },
      );
    }
    const exit = err.exitCode === undefined ? 'killed' : `exit ${err.exitCode}`;
    return new FirewallError('APPLY_FAILED', `${described} ${what} (${exit})${stderr ? `:\n${clip(stderr)}` : ''}`, { cause: err.original, stderr });
  }
}
