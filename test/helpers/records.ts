import { existsSync, readFileSync } from 'node:fs';

/**
 * The JSON-lines `--record` files of the simulators: the meter fleet writes a
 * line per reading the gateway acknowledged, the HES simulator a line per key
 * it stored for the first time. Tests compare the two.
 */
export interface RecordLine {
  /** HES file: the record key; meter file: the reading id. */
  id?: string;
  /** Meter file: the key the HES stores the reading under. */
  key?: string;
  meter: string;
  ts: number;
}

export function readJsonLines(file: string): RecordLine[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as RecordLine);
}

/** Per meter, lines whose capture time goes backwards (empty when every meter's readings are in order). */
export function outOfOrder(lines: readonly RecordLine[]): string[] {
  const last = new Map<string, number>();
  const wrong: string[] = [];
  for (const line of lines) {
    const previous = last.get(line.meter);
    if (previous !== undefined && line.ts < previous) wrong.push(`${line.meter}: ${line.ts} after ${previous}`);
    last.set(line.meter, line.ts);
  }
  return wrong;
}

/**
 * Polls `read` until `predicate` holds: for files and endpoints of other
 * processes, which offer no event to await. Rejects after `timeoutMs` with
 * the last value or error.
 */
export async function pollUntil<T>(what: string, read: () => T | Promise<T>, predicate: (value: T) => boolean, timeoutMs: number, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  let lastError: unknown;
  for (;;) {
    try {
      last = await read();
      if (predicate(last)) return last;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what}: not within ${timeoutMs} ms (last: ${lastError ? String(lastError) : JSON.stringify(last)?.slice(0, 500)})`);
    }
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}
