import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CommandError, type Command, type VerifiedCommand } from '../../src/hes/commands.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';
import { DEFAULT_REPLAY_MARGIN_MS, MAX_RESULT_BYTES, PendingCommandError, PendingCommands, type PendingCommandsOptions } from '../../src/store/pending-commands.js';

let tmpRoot: string;
const open: Array<{ store: PendingCommands; lease: DatabaseLease }> = [];
beforeAll(() => {
  tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'pending-commands-'));
});
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));
afterEach(closeAll);

async function openStore(dir: string, options: PendingCommandsOptions = {}): Promise<PendingCommands> {
  const lease = await acquireDatabase(dir);
  const store = await PendingCommands.open(lease.db, options);
  open.push({ store, lease });
  return store;
}

async function closeAll(): Promise<void> {
  for (const { store, lease } of open.splice(0)) {
    await store.close();
    await lease.release();
  }
}

const T0 = 1_750_000_000_000;

function verified(id: string, digest = `digest-of-${id}`, overrides: Partial<Command> = {}): VerifiedCommand {
  return {
    command: {
      id,
      gateway: 'gw-1',
      meter: 'mtr-1',
      action: 'disconnect',
      notBefore: T0,
      notAfter: T0 + 15 * 60_000,
      issuedAt: T0,
      operator: { name: 'Alice Administrator', role: 'utility-administrator', mfa: true },
      ...overrides,
    },
    digest,
    signer: { name: 'Alice Administrator', serial: '4a01', fingerprint: 'ab'.repeat(32) },
  };
}

async function replayError(promise: Promise<unknown>): Promise<CommandError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CommandError);
  return err as CommandError;
}

describe('pending commands store', () => {
  it('stores a command, lists and gets it, and keeps it across a reopen', async () => {
    const dir = mkdtempSync(path.join(tmpRoot, 'reopen-'));
    const store = await openStore(dir);
    expect(await store.put(verified('cmd-1'), T0 + 5)).toBe('stored');
    expect(await store.put(verified('cmd-2', undefined, { action: 'configure', params: { tariff: 'T2' } }))).toBe('stored');
    expect(store.size).toBe(2);
    await closeAll();

    const again = await openStore(dir);
    expect(again.size).toBe(2);
    expect((await again.list()).map((p) => p.command.id)).toEqual(['cmd-1', 'cmd-2']);
    const first = await again.get('cmd-1');
    expect(first).toEqual({ ...verified('cmd-1'), receivedAt: T0 + 5 });
    expect((await again.get('cmd-2'))?.command.params).toEqual({ tariff: 'T2' });
    expect(await again.get('cmd-3')).toBeUndefined();
  });

  it('tells a resend after a lost acknowledgement from a replay, also after a reopen', async () => {
    const dir = mkdtempSync(path.join(tmpRoot, 'replay-'));
    const store = await openStore(dir);
    await store.put(verified('cmd-1'));
    // The HES sends the same envelope again: our acknowledgement did not reach it.
    expect(await store.put(verified('cmd-1'))).toBe('known');
    // Another envelope with the same id is a replay whatever happened to the acknowledgement.
    const other = await replayError(store.put(verified('cmd-1', 'another-digest')));
    expect(other).toMatchObject({ code: 'REPLAYED', message: expect.stringMatching(/used before by another command/) });
    await store.markAcknowledged(['cmd-1']);
    const same = await replayError(store.put(verified('cmd-1')));
    expect(same).toMatchObject({ code: 'REPLAYED', message: expect.stringMatching(/accepted and acknowledged before/) });
    await closeAll();

    const again = await openStore(dir);
    expect((await replayError(again.put(verified('cmd-1')))).code).toBe('REPLAYED');
    // The refused replay changed nothing.
    expect(again.size).toBe(1);
    expect((await again.list()).map((p) => p.digest)).toEqual(['digest-of-cmd-1']);
  });

  it('completes a command in two steps: the outcome is kept until forget(), the id stays refused', async () => {
    const dir = mkdtempSync(path.join(tmpRoot, 'complete-'));
    const store = await openStore(dir, { now: () => T0 + 1000 });
    await store.put(verified('cmd-1'));
    await store.put(verified('cmd-2'));
    const done = await store.complete('cmd-1', { status: 'succeeded', result: { relay: 'open', at: 12 } });
    expect(done.outcome).toEqual({ status: 'succeeded', result: { relay: 'open', at: 12 }, completedAt: T0 + 1000 });
    await closeAll();

    const again = await openStore(dir);
    // Across a restart the outcome is there, so the result is sent rather than the command run again.
    expect((await again.get('cmd-1'))?.outcome).toEqual({ status: 'succeeded', result: { relay: 'open', at: 12 }, completedAt: T0 + 1000 });
    expect((await again.get('cmd-2'))?.outcome).toBeUndefined();
    await again.forget('cmd-1');
    expect(again.size).toBe(1);
    expect(await again.get('cmd-1')).toBeUndefined();
    // The HES never heard our acknowledgement and sends the envelope again: acknowledged again, not run again.
    expect(await again.put(verified('cmd-1'))).toBe('known');
    expect(await again.get('cmd-1')).toBeUndefined();
    expect((await replayError(again.put(verified('cmd-1', 'other-envelope')))).code).toBe('REPLAYED');
    await again.markAcknowledged(['cmd-1']);
    expect((await replayError(again.put(verified('cmd-1')))).code).toBe('REPLAYED');
    await again.forget('cmd-1');
    expect(again.size).toBe(1);
  });

  it('refuses results for unknown or finished commands and results it cannot keep', async () => {
    const store = await openStore(mkdtempSync(path.join(tmpRoot, 'bad-result-')));
    await store.put(verified('cmd-1'));
    await expect(store.complete('cmd-9', { status: 'succeeded' })).rejects.toMatchObject({ name: 'PendingCommandError', code: 'UNKNOWN_COMMAND' });
    await expect(store.complete('cmd-1', { status: 'done' as 'succeeded' })).rejects.toMatchObject({ code: 'BAD_RESULT' });
    await expect(store.complete('cmd-1', { status: 'failed', result: 'x'.repeat(MAX_RESULT_BYTES) })).rejects.toMatchObject({ code: 'BAD_RESULT' });
    await store.complete('cmd-1', { status: 'failed', result: { reason: 'meter did not answer' } });
    await expect(store.complete('cmd-1', { status: 'succeeded' })).rejects.toBeInstanceOf(PendingCommandError);
    await expect(store.complete('cmd-1', { status: 'succeeded' })).rejects.toMatchObject({ code: 'ALREADY_COMPLETED' });
    expect((await store.get('cmd-1'))?.outcome?.status).toBe('failed');
  });

  it('decides concurrent puts of one id one at a time', async () => {
    const store = await openStore(mkdtempSync(path.join(tmpRoot, 'race-')));
    const results = await Promise.allSettled([store.put(verified('cmd-1', 'a')), store.put(verified('cmd-1', 'b')), store.put(verified('cmd-1', 'a'))]);
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as CommandError).code))).toEqual(['stored', 'REPLAYED', 'known']);
    expect(store.size).toBe(1);
  });

  it('purges replay entries only once their command could no longer verify, and never for a pending command', async () => {
    let now = T0;
    const store = await openStore(mkdtempSync(path.join(tmpRoot, 'purge-')), { now: () => now });
    await store.put(verified('cmd-1'));
    await store.put(verified('cmd-2'));
    await store.complete('cmd-1', { status: 'succeeded' });
    await store.forget('cmd-1');
    now = T0 + 15 * 60_000 + DEFAULT_REPLAY_MARGIN_MS;
    expect(await store.purgeExpired()).toBe(0);
    now += 1;
    // cmd-1 is done and past its window: its entry goes; cmd-2 is still pending: its entry stays.
    expect(await store.purgeExpired()).toBe(1);
    expect((await replayError(store.put(verified('cmd-2', 'other')))).code).toBe('REPLAYED');
    expect(await store.put(verified('cmd-1', 'fresh', { notAfter: now + 60_000, notBefore: now }))).toBe('stored');
  });

  it('refuses work once closed', async () => {
    const store = await openStore(mkdtempSync(path.join(tmpRoot, 'closed-')));
    await store.close();
    await expect(store.put(verified('cmd-1'))).rejects.toMatchObject({ code: 'CLOSED' });
  });
});
