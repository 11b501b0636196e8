import http from 'node:http';
import https from 'node:https';

/**
 * The HTTP request under the CLI commands that talk to the running
 * gateway's admin API for a long time (`relay`, `firmware rollout`). Not
 * fetch: undici gives up waiting for the response headers after 300 s
 * whatever the signal says, and a group's relay disconnect answers when its
 * last meter has.
 */
export class AdminRequestTimeoutError extends Error {
  override readonly name = 'AdminRequestTimeoutError';
}

export interface AdminReply {
  status: number;
  /** The body as text ('' when there is none). */
  text: string;
}

/**
 * One request; resolves with the status and body whatever the status,
 * rejects on a network error or with AdminRequestTimeoutError when the
 * whole answer has not arrived within `timeoutMs`.
 */
export function adminRequest(url: string, method: string, token: string | undefined, body: string | undefined, timeoutMs: number): Promise<AdminReply> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const req = (url.toLowerCase().startsWith('https:') ? https : http).request(url, { method, headers });
    const timer = setTimeout(() => req.destroy(new AdminRequestTimeoutError(`no answer within ${formatDuration(timeoutMs)}`)), timeoutMs);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
      });
    });
    req.end(body);
  });
}

/** A network error in words: every address tried (ECONNREFUSED on ::1 and 127.0.0.1), and the cause. */
export function networkErrorText(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) return (err.errors as Error[]).map((x) => x.message).join('; ');
  const e = err as Error & { cause?: unknown; code?: string };
  const cause = e.cause instanceof Error ? `: ${e.cause.message}` : '';
  return `${e.message || e.code || String(err)}${cause}`;
}

export function formatDuration(ms: number): string {
  return ms >= 60_000 ? `${Math.round(ms / 60_000)} min` : `${Math.round(ms / 1000)} s`;
}
