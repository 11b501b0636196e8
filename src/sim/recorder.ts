import { createWriteStream, type WriteStream } from 'node:fs';
import { once } from 'node:events';

/**
 * Appends one JSON object per line to a file. Both simulators record what
 * they saw with the record's id, so the two files can be compared.
 */
export class JsonLinesRecorder {
  private readonly stream: WriteStream;

  constructor(readonly file: string) {
    this.stream = createWriteStream(file, { flags: 'a' });
  }

  async open(): Promise<void> {
    if (this.stream.pending) await once(this.stream, 'ready');
  }

  write(entry: Record<string, unknown>): void {
    this.stream.write(`${JSON.stringify(entry)}\n`);
  }

  async close(): Promise<void> {
    if (this.stream.closed) return;
    await new Promise<void>((resolve, reject) => this.stream.end((err?: Error | null) => (err ? reject(err) : resolve())));
  }
}
