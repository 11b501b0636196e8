/**
 * The relay audit trail: two append-only text logs under the data
 * directory's logs folder, with the tokens operators grep for.
 *
 *   actuator.log      the relay's view: baseline state, ACTUATING, verify
 *                     reads, outcomes (RELAY_OP_SUCCESS, RELAY_WELD_DETECTED,
 *                     E001, E012, E044, E099, COMM_TIMEOUT_ERR, ...)
 *   relay_daemon.log  the daemon's view: RECEIVED, AUTHORIZED/UNAUTHORIZED,
 *                     LINK_OK/LINK_DEFERRED, APDU_SENT/APDU_RECEIVED,
 *                     DEFERRED, PENDING, RESUMED, EXPIRED
 *
 * One line per step: `<ISO time> cmd=<id> operator=<name> meter=<id>
 * step=<step> token=<TOKEN> [key=value ...]` (values with spaces or quotes
 * are JSON-quoted). Lines are written through a stream opened for append;
 * close() flushes and fsyncs.
 */
import { closeSync, createWriteStream, fsyncSync, mkdirSync, openSync, type WriteStream } from 'node:fs';
import path from 'node:path';

export const ACTUATOR_LOG = 'actuator.log';
export const RELAY_DAEMON_LOG = 'relay_daemon.log';

/** A small append-only line writer. Write errors disable the file (reported once via onError) instead of throwing. */
export class AppendOnlyLog {
  private readonly fd: number;
  private readonly stream: WriteStream;
  private closed = false;
  private failed = false;

  constructor(
    readonly file: string,
    private readonly onError: (err: Error) => void = () => undefined,
  ) {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o750 });
    this.fd = openSync(file, 'a', 0o640);
    this.stream = createWriteStream('', { fd: this.fd, autoClose: false });
    this.stream.on('error', (err) => this.fail(err));
  }

  append(line: string): void {
    if (this.closed || this.failed) return;
    this.stream.write(line.endsWith('\n') ? line : `${line}\n`);
  }

  /** Flushes buffered lines, fsyncs and closes. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await new Promise<void>((resolve) => this.stream.end(resolve));
    try {
      if (!this.failed) fsyncSync(this.fd);
    } catch (err) {
      this.fail(err as Error);
    }
    closeSync(this.fd);
  }

  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = true;
    this.onError(err);
  }
}

export interface RelayAuditFields {
  command: string;
  operator: string;
  meter: string;
  step: string;
  token: string;
  /** Extra key=value pairs. */
  extra?: Record<string, string | number | boolean | undefined>;
}

/** Where the lifecycle reports its steps. */
export interface RelayAuditSink {
  actuator(fields: RelayAuditFields): void;
  daemon(fields: RelayAuditFields): void;
  close(): Promise<void>;
}

export function formatAuditLine(time: number, fields: RelayAuditFields): string {
  const parts = [
    new Date(time).toISOString(),
    `cmd=${quote(fields.command)}`,
    `operator=${quote(fields.operator)}`,
    `meter=${quote(fields.meter)}`,
    `step=${quote(fields.step)}`,
    `token=${quote(fields.token)}`,
  ];
  for (const [key, value] of Object.entries(fields.extra ?? {})) {
    if (value !== undefined) parts.push(`${key}=${quote(String(value))}`);
  }
  return parts.join(' ');
}

function quote(value: string): string {
  return /^[^\s"=\\]+$/.test(value) ? value : JSON.stringify(value);
}

/** The two files under `logsDir`. */
export class RelayAudit implements RelayAuditSink {
  private readonly actuatorLog: AppendOnlyLog;
  private readonly daemonLog: AppendOnlyLog;

  constructor(
    readonly logsDir: string,
    private readonly now: () => number = Date.now,
    onError?: (err: Error) => void,
  ) {
    this.actuatorLog = new AppendOnlyLog(path.join(logsDir, ACTUATOR_LOG), onError);
    this.daemonLog = new AppendOnlyLog(path.join(logsDir, RELAY_DAEMON_LOG), onError);
  }

  actuator(fields: RelayAuditFields): void {
    this.actuatorLog.append(formatAuditLine(this.now(), fields));
  }

  daemon(fields: RelayAuditFields): void {
    this.daemonLog.append(formatAuditLine(this.now(), fields));
  }

  async close(): Promise<void> {
    await Promise.all([this.actuatorLog.close(), this.daemonLog.close()]);
  }
}

/** Audit sink that discards (when no logs directory is configured). */
export const NULL_AUDIT: RelayAuditSink = Object.freeze({
  actuator: () => undefined,
  daemon: () => undefined,
  close: async () => undefined,
});
