import { parseArgs } from 'node:util';

/**
 * `ami-gateway keys status|sync`: talks to the running gateway's admin API
 * (GET /ami/keys, POST /ami/keys/sync). When the editor has admin users, give
 * a token in AMI_ADMIN_TOKEN, or --user NAME with the password in
 * AMI_ADMIN_PASSWORD (the CLI then asks Node-RED for a token).
 */
export class KeysUsageError extends Error {
  override readonly name = 'KeysUsageError';
}

export interface KeysCommandResult {
  exitCode: number;
  output: string;
}

/** A token for the admin API: AMI_ADMIN_TOKEN, or a login as `user` with AMI_ADMIN_PASSWORD. */
export async function bearerToken(base: string, user: string | undefined): Promise<string | undefined> {
  if (process.env.AMI_ADMIN_TOKEN) return process.env.AMI_ADMIN_TOKEN;
  if (!user) return undefined;
  const password = process.env.AMI_ADMIN_PASSWORD;
  if (!password) throw new KeysUsageError('--user needs the password in AMI_ADMIN_PASSWORD');
  const response = await fetch(`${base}/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: user, password }),
    signal: AbortSignal.timeout(10_000),
  });
  if (!response.ok) throw new Error(`login as ${user} refused (HTTP ${response.status})`);
  const body = (await response.json()) as { access_token?: unknown };
  if (typeof body.access_token !== 'string') throw new Error('the gateway returned no token');
  return body.access_token;
}

interface KeyringReport {
  id: string;
  name: string;
  gatewaySystemTitle?: string;
  gatewayKeyFingerprint?: string;
  meters?: number;
  epoch?: number;
  pending?: number;
  fingerprint?: string;
  outOfSync?: string[];
  lastSync: { at: string; site: string } | null;
  lastError: string | null;
  sites?: { sitesDisagree: boolean; inSync: boolean; sites: { site: string; fingerprint?: string; error?: string }[] };
}

/** Exit codes: 0 ok, 1 a keyring reports a problem or the sync failed, 3 unreachable. */
export async function keysCommand(args: string[], httpPort: number): Promise<KeysCommandResult> {
  const [action, ...rest] = args;
  const { values } = parseArgs({
    args: rest,
    options: { json: { type: 'boolean' }, force: { type: 'boolean' }, url: { type: 'string' }, user: { type: 'string' } },
    strict: true,
  });
  if (action !== 'status' && action !== 'sync') throw new KeysUsageError(`unknown keys command "${action ?? ''}": expected status or sync`);
  if (action === 'status' && values.force) throw new KeysUsageError('--force applies to "keys sync" only');
  const base = (values.url ?? `http://127.0.0.1:${httpPort}`).replace(/\/+$/, '');
  let response: Response;
  try {
    const token = await bearerToken(base, values.user);
    const headers: Record<string, string> = { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) };
    response =
      action === 'status'
        ? await fetch(`${base}/ami/keys`, { headers, signal: AbortSignal.timeout(10_000) })
        : await fetch(`${base}/ami/keys/sync`, {
            method: 'POST',
            headers: { ...headers, 'content-type': 'application/json' },
            body: JSON.stringify({ force: values.force === true }),
            signal: AbortSignal.timeout(60_000),
          });
  } catch (err) {
    if (err instanceof KeysUsageError) throw err;
    return { exitCode: 3, output: `ami-gateway: cannot reach ${base}: ${(err as Error).message}` };
  }
  if (response.status === 401 || response.status === 403) {
    return { exitCode: 3, output: `ami-gateway: ${base} refused the request (HTTP ${response.status}): set AMI_ADMIN_TOKEN or --user` };
  }
  let body: unknown;
  try {
    body = await response.json();
  } catch {
    return { exitCode: 3, output: `ami-gateway: ${base} did not answer with JSON (HTTP ${response.status})` };
  }
  if (action === 'status') {
    const reports = (body as { keyrings?: KeyringReport[] }).keyrings;
    if (!Array.isArray(reports)) return { exitCode: 3, output: 'ami-gateway: the reply is not a keyring report' };
    const bad = reports.some((r) => r.lastError !== null || (r.outOfSync?.length ?? 0) > 0 || r.sites?.sitesDisagree === true);
    if (values.json) return { exitCode: bad ? 1 : 0, output: JSON.stringify(body, null, 2) };
    if (reports.length === 0) return { exitCode: 1, output: 'no keyring is deployed' };
    const lines = reports.flatMap((r) => [
      `keyring ${r.name || r.id}`,
      `  meters       ${r.meters ?? '?'} (epoch ${r.epoch ?? '?'}, ${r.pending ?? 0} key transfers pending)`,
      `  fingerprint  ${r.fingerprint ?? '?'}`,
      `  gateway      system title ${r.gatewaySystemTitle ?? '?'}, public key SHA-256 ${r.gatewayKeyFingerprint ?? '?'} (--json shows the PEM to enrol at the HES)`,
      `  last sync    ${r.lastSync ? `${r.lastSync.at} from ${r.lastSync.site}` : 'never'}`,
      ...(r.sites ? r.sites.sites.map((s) => `  site         ${s.site}: ${s.fingerprint ?? `unreachable (${s.error ?? '?'})`}${s.fingerprint && s.fingerprint === r.fingerprint ? ' (same)' : s.fingerprint ? ' (DIFFERENT)' : ''}`) : []),
      ...(r.sites?.sitesDisagree ? ['  WARNING      the HES sites hold different keys: decryption will break after a failover'] : []),
      ...((r.outOfSync?.length ?? 0) > 0 ? [`  out of sync  ${r.outOfSync?.join(', ')}`] : []),
      ...(r.lastError ? [`  problem      ${r.lastError}`] : []),
    ]);
    return { exitCode: bad ? 1 : 0, output: lines.join('\n') };
  }
  const results = (body as { results?: Array<{ id: string; ok: boolean; code?: string; error?: string; result?: { site: string; epoch: number; meters: number; full: boolean; changes: Record<string, number> } }> }).results;
  if (!Array.isArray(results)) {
    return { exitCode: 1, output: `ami-gateway: key sync failed: ${(body as { error?: string }).error ?? `HTTP ${response.status}`}` };
  }
  if (values.json) return { exitCode: results.every((r) => r.ok) ? 0 : 1, output: JSON.stringify(body, null, 2) };
  const lines = results.map((r) =>
    r.ok && r.result
      ? `keyring ${r.id}: synced from ${r.result.site}${r.result.full ? ' (full)' : ''}: epoch ${r.result.epoch}, ${r.result.meters} meters in the bundle, ${r.result.changes.added ?? 0} added, ${r.result.changes.updated ?? 0} updated, ${r.result.changes.removed ?? 0} removed`
      : `keyring ${r.id}: sync failed (${r.code ?? 'ERROR'}): ${r.error ?? ''}`,
  );
  return { exitCode: results.every((r) => r.ok) ? 0 : 1, output: lines.join('\n') };
}
