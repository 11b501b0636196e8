import { closeSync, existsSync, mkdirSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import { inspect } from 'node:util';
import { LOG_LEVELS, type LogLevel } from './config.js';

export interface LogSinkOptions {
  level: LogLevel;
  /** Log file; rotated at `maxFileBytes`, keeping `keepFiles` old files. */
  file?: string;
  maxFileBytes?: number;
  keepFiles?: number;
  /** Where lines go besides the file; stdout by default (journald picks it up under systemd). */
  stdout?: (line: string) => void;
}

export interface ComponentLog {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
}

const DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024;

/** Node-RED's numeric log levels (@node-red/util log.js). */
const NODE_RED_LEVELS: Record<number, LogLevel | 'audit' | 'metric'> = {
  10: 'fatal',
  20: 'error',
  30: 'warn',
  40: 'info',
  50: 'debug',
  60: 'trace',
  98: 'audit',
  99: 'metric',
};

/**
 * The appliance's one log: every line goes to stdout and to a rotating file
 * under the data directory, from our own components and from Node-RED alike.
 * File writes are synchronous: a few lines a second cost nothing, and a line
 * logged just before a crash is on disk.
 */
export class ApplianceLog {
  private fd: number | undefined;
  private fileBytes = 0;
  private readonly threshold: number;

  constructor(private readonly options: LogSinkOptions) {
    this.threshold = LOG_LEVELS.indexOf(options.level);
    if (options.file) {
      mkdirSync(path.dirname(options.file), { recursive: true, mode: 0o750 });
      this.fileBytes = existsSync(options.file) ? statSync(options.file).size : 0;
      this.fd = openSync(options.file, 'a', 0o640);
    }
  }

  enabled(level: LogLevel): boolean {
    return LOG_LEVELS.indexOf(level) <= this.threshold;
  }

  write(level: LogLevel, component: string, message: string): void {
    if (!this.enabled(level)) return;
    const line = `${new Date().toISOString()} ${level.padEnd(5)} [${component}] ${message}\n`;
    (this.options.stdout ?? ((text: string) => process.stdout.write(text)))(line);
    if (this.fd !== undefined) {
      try {
        writeSync(this.fd, line);
        this.fileBytes += Buffer.byteLength(line);
        if (this.fileBytes >= (this.options.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES)) this.rotate();
      } catch (err) {
        // A full or failing disk must not stop the gateway: keep logging to stdout only.
        this.fd = undefined;
        process.stderr.write(`ami-gateway: log file ${this.options.file} disabled: ${(err as Error).message}\n`);
      }
    }
  }

  component(name: string): ComponentLog {
    return {
      error: (message) => this.write('error', name, message),
      warn: (message) => this.write('warn', name, message),
      info: (message) => this.write('info', name, message),
      debug: (message) => this.write('debug', name, message),
    };
  }

  /**
   * A Node-RED logging handler (settings.logging.<name>.handler) writing
   * Node-RED's own and its nodes' messages into this log.
   */
  nodeRedHandler(): () => (entry: NodeRedLogEntry) => void {
    return () => (entry) => {
      const level = NODE_RED_LEVELS[entry.level];
      if (level === undefined || level === 'audit' || level === 'metric') return;
      const component = entry.type ? `${entry.type}${entry.name ? `:${entry.name}` : entry.id ? `:${entry.id}` : ''}` : 'node-red';
      const text = typeof entry.msg === 'string' ? entry.msg : entry.msg instanceof Error ? entry.msg.message : inspect(entry.msg);
      this.write(level, component, text);
    };
  }

  private rotate(): void {
    const file = this.options.file as string;
    const keep = this.options.keepFiles ?? 5;
    if (this.fd !== undefined) closeSync(this.fd);
    for (let i = keep - 1; i >= 1; i--) {
      if (existsSync(`${file}.${i}`)) renameSync(`${file}.${i}`, `${file}.${i + 1}`);
    }
    if (existsSync(file)) renameSync(file, `${file}.1`);
    this.fd = openSync(file, 'a', 0o640);
    this.fileBytes = 0;
  }

  async close(): Promise<void> {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

export interface NodeRedLogEntry {
  level: number;
  msg: unknown;
  type?: string;
  name?: string;
  id?: string;
}
