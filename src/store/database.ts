import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { Level } from 'level';

/**
 * The appliance's one LevelDB database, organised in sublevels (keys,
 * invocation counters, later the outbox and the meter registry).
 *
 * LevelDB allows one open handle per directory per process, while Node-RED
 * may start a redeployed config node before the old one has closed. So the
 * handle is shared per directory and counted: `acquireDatabase` opens it (or
 * waits for a pending close and reopens), and the database closes when the
 * last lease is released.
 */
export type GatewayDatabase = Level<string, Uint8Array>;

export class StoreError extends Error {
  override readonly name = 'StoreError';
  constructor(
    readonly code: 'OPEN_FAILED' | 'LOCKED' | 'CLOSED',
    message: string,
  ) {
    super(message);
  }
}

interface SharedHandle {
  db: GatewayDatabase;
  leases: number;
  opening: Promise<void>;
  closing?: Promise<void>;
}

const handles = new Map<string, SharedHandle>();

export interface DatabaseLease {
  readonly db: GatewayDatabase;
  readonly path: string;
  /** Gives the lease back; the database closes when no lease is left. Idempotent. */
  release(): Promise<void>;
}

export async function acquireDatabase(location: string): Promise<DatabaseLease> {
  const resolved = path.resolve(location);
  let handle = handles.get(resolved);
  if (handle?.closing) {
    await handle.closing;
    handle = handles.get(resolved);
  }
  if (!handle) {
    try {
      mkdirSync(resolved, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new StoreError('OPEN_FAILED', `cannot create ${resolved}: ${(err as Error).message}`);
    }
    const db: GatewayDatabase = new Level<string, Uint8Array>(resolved, { valueEncoding: 'view' });
    const created: SharedHandle = { db, leases: 0, opening: db.open() };
    handle = created;
    handles.set(resolved, created);
    try {
      await created.opening;
    } catch (err) {
      handles.delete(resolved);
      const cause = (err as Error & { cause?: Error & { code?: string } }).cause;
      if (cause?.code === 'LEVEL_LOCKED') {
        throw new StoreError('LOCKED', `${resolved} is in use by another process`);
      }
      throw new StoreError('OPEN_FAILED', `cannot open ${resolved}: ${(cause ?? (err as Error)).message}`);
    }
  } else {
    await handle.opening;
  }
  const shared = handle;
  shared.leases += 1;
  let released = false;
  return {
    db: shared.db,
    path: resolved,
    release: async () => {
      if (released) return;
      released = true;
      shared.leases -= 1;
      if (shared.leases > 0) return;
      shared.closing = shared.db.close().finally(() => {
        if (handles.get(resolved) === shared) handles.delete(resolved);
      });
      await shared.closing;
    },
  };
}

/** A named part of the database with binary values. */
export function openSublevel(db: GatewayDatabase, name: string) {
  return db.sublevel<string, Uint8Array>(name, { valueEncoding: 'view' });
}

export type GatewaySublevel = ReturnType<typeof openSublevel>;
