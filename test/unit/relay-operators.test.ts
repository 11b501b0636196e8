import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { OperatorAuthError, OperatorError, OperatorStore, type OperatorAuthCode } from '../../src/relay/operators.js';
import { base32Decode, hotp, totpStep } from '../../src/relay/totp.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

const CREDENTIAL_SECRET = 'a'.repeat(64);
const T0 = Date.UTC(2025, 5, 1, 12, 0, 10); // 10 s into a 30 s step

function setup(secret = CREDENTIAL_SECRET): { dir: string; clock: { now: number }; store: OperatorStore } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ami-operators-'));
  dirs.push(dir);
  const clock = { now: T0 };
  return { dir, clock, store: new OperatorStore({ dataDir: dir, credentialSecret: secret, clock: () => clock.now }) };
}

async function refusal(promise: Promise<unknown>): Promise<OperatorAuthCode> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(OperatorAuthError);
  return (err as OperatorAuthError).code;
}

describe('OperatorStore', () => {
  it('adds an operator and authorizes a valid code from the secret it printed', async () => {
    const { store, clock } = setup();
    const added = await store.add('alice', 'field-technician');
    expect(added.secretBase32).toMatch(/^[A-Z2-7]{32}$/);
    expect(added.uri).toMatch(/^otpauth:\/\/totp\/ami-gateway:alice\?secret=[A-Z2-7]{32}&issuer=ami-gateway&algorithm=SHA1&digits=6&period=30$/);
    const secret = base32Decode(added.secretBase32);
    const step = totpStep(clock.now);
    await expect(store.authorize('alice', hotp(secret, step))).resolves.toEqual({ operator: 'alice', role: 'field-technician', mfa: true, step });
    expect(store.authorized()).toBe(1);
    const [info] = await store.list();
    expect(info).toMatchObject({ name: 'alice', role: 'field-technician', disabled: false, lastStep: step, failedAttempts: 0 });
    expect(info).not.toHaveProperty('secret');
  });

  it('accepts ±1 step, refuses beyond, and refuses a code used before (replay)', async () => {
    const { store, clock } = setup();
    const secret = base32Decode((await store.add('bob', 'utility-administrator')).secretBase32);
    const step = totpStep(clock.now);
    expect(await refusal(store.authorize('bob', hotp(secret, step - 2)))).toBe('BAD_CODE');
    expect(await refusal(store.authorize('bob', hotp(secret, step + 2)))).toBe('BAD_CODE');
    await expect(store.authorize('bob', hotp(secret, step - 1))).resolves.toMatchObject({ step: step - 1 });
    // The same code again, even within its window: refused.
    expect(await refusal(store.authorize('bob', hotp(secret, step - 1)))).toBe('REPLAYED_CODE');
    await expect(store.authorize('bob', hotp(secret, step + 1))).resolves.toMatchObject({ step: step + 1 });
    // An older code still in the window, after a newer one was accepted: refused too.
    expect(await refusal(store.authorize('bob', hotp(secret, step)))).toBe('REPLAYED_CODE');
    // 30 s later the next step's code is fresh, and the explicit `now` argument wins over the clock.
    await expect(store.authorize('bob', hotp(secret, step + 2), clock.now + 30_000)).resolves.toMatchObject({ step: step + 2 });
    expect(store.failures()).toEqual({ total: 4, byCode: { UNKNOWN_OPERATOR: 0, DISABLED: 0, BAD_ROLE: 0, BAD_CODE: 2, REPLAYED_CODE: 2 } });
  });

  it('remembers the last accepted step across store instances (another process)', async () => {
    const { dir, store, clock } = setup();
    const secret = base32Decode((await store.add('carol', 'field-technician')).secretBase32);
    const code = hotp(secret, totpStep(clock.now));
    await store.authorize('carol', code);
    const other = new OperatorStore({ dataDir: dir, credentialSecret: CREDENTIAL_SECRET, clock: () => clock.now });
    expect(await refusal(other.authorize('carol', code))).toBe('REPLAYED_CODE');
  });

  it('accepts one code once when authorizations race', async () => {
    const { dir, store, clock } = setup();
    const secret = base32Decode((await store.add('dave', 'field-technician')).secretBase32);
    const code = hotp(secret, totpStep(clock.now));
    const other = new OperatorStore({ dataDir: dir, credentialSecret: CREDENTIAL_SECRET, clock: () => clock.now });
    const results = await Promise.allSettled([store, other, store, other].map((s) => s.authorize('dave', code)));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect((r.reason as OperatorAuthError).code).toBe('REPLAYED_CODE');
  });

  it('refuses unknown and disabled operators, and roles not allowed for the action', async () => {
    const { store, clock } = setup();
    const secret = base32Decode((await store.add('erin', 'field-technician')).secretBase32);
    const step = totpStep(clock.now);
    expect(await refusal(store.authorize('mallory', '123456'))).toBe('UNKNOWN_OPERATOR');
    await store.setDisabled('erin', true);
    expect(await refusal(store.authorize('erin', hotp(secret, step)))).toBe('DISABLED');
    await store.setDisabled('erin', false);
    expect(await refusal(store.authorize('erin', hotp(secret, step), undefined, { roles: ['utility-administrator'] }))).toBe('BAD_ROLE');
    // Refusals before the code check do not use the code up.
    await expect(store.authorize('erin', hotp(secret, step))).resolves.toMatchObject({ operator: 'erin' });
  });

  it('refuses an operator whose role in the file is not one of the two (hand-edited)', async () => {
    const { dir, store, clock } = setup();
    const secret = base32Decode((await store.add('frank', 'field-technician')).secretBase32);
    const file = path.join(dir, 'operators.json');
    writeFileSync(file, readFileSync(file, 'utf8').replace('"field-technician"', '"viewer"'));
    expect(await refusal(store.authorize('frank', hotp(secret, totpStep(clock.now))))).toBe('BAD_ROLE');
    expect((await store.list())[0]?.role).toBe('viewer');
  });

  it('refuses bad names, bad roles and duplicates at add, with typed errors', async () => {
    const { store } = setup();
    await expect(store.add('alice', 'admin')).rejects.toMatchObject({ name: 'OperatorError', code: 'BAD_ROLE' });
    await expect(store.add('', 'field-technician')).rejects.toMatchObject({ code: 'BAD_NAME' });
    await expect(store.add('a b', 'field-technician')).rejects.toMatchObject({ code: 'BAD_NAME' });
    await expect(store.add('x'.repeat(65), 'field-technician')).rejects.toMatchObject({ code: 'BAD_NAME' });
    await store.add('alice', 'field-technician');
    await expect(store.add('Alice', 'utility-administrator')).rejects.toBeInstanceOf(OperatorError);
    await expect(store.add('alice', 'utility-administrator')).rejects.toMatchObject({ code: 'DUPLICATE' });
    expect(await store.list()).toHaveLength(1);
  });

  it('removes operators; their codes are then refused as unknown', async () => {
    const { store, clock } = setup();
    const secret = base32Decode((await store.add('gina', 'utility-administrator')).secretBase32);
    await store.add('hank', 'field-technician');
    await store.remove('gina');
    expect((await store.list()).map((o) => o.name)).toEqual(['hank']);
    expect(await refusal(store.authorize('gina', hotp(secret, totpStep(clock.now))))).toBe('UNKNOWN_OPERATOR');
    await expect(store.remove('gina')).rejects.toMatchObject({ code: 'UNKNOWN_OPERATOR' });
  });

  it('counts refused codes per operator until one is accepted', async () => {
    const { store, clock } = setup();
    const secret = base32Decode((await store.add('ivy', 'field-technician')).secretBase32);
    const wrong = hotp(secret, totpStep(clock.now) + 5);
    await refusal(store.authorize('ivy', wrong));
    await refusal(store.authorize('ivy', 'nope'));
    expect((await store.list())[0]?.failedAttempts).toBe(2);
    await store.authorize('ivy', hotp(secret, totpStep(clock.now)));
    expect((await store.list())[0]?.failedAttempts).toBe(0);
  });

  it('disables an operator after five refused codes in a row (no free guessing); enable ends the lockout', async () => {
    const { store, clock } = setup();
    const secret = base32Decode((await store.add('kim', 'field-technician')).secretBase32);
    const step = totpStep(clock.now);
    for (let i = 1; i <= 4; i++) expect(await refusal(store.authorize('kim', hotp(secret, step + 10 + i)))).toBe('BAD_CODE');
    expect((await store.list())[0]).toMatchObject({ disabled: false, failedAttempts: 4 });
    const fifth = await store.authorize('kim', hotp(secret, step + 20)).catch((err: OperatorAuthError) => err);
    expect(fifth).toMatchObject({ code: 'BAD_CODE', message: expect.stringMatching(/now disabled \(ami-gateway operators enable --name kim\)/) });
    // Locked: even the right code is refused now.
    expect(await refusal(store.authorize('kim', hotp(secret, step)))).toBe('DISABLED');
    await store.setDisabled('kim', false);
    expect((await store.list())[0]).toMatchObject({ disabled: false, failedAttempts: 0 });
    await expect(store.authorize('kim', hotp(secret, step))).resolves.toMatchObject({ operator: 'kim' });
  });

  it('keeps the file at mode 0600, written atomically, with the TOTP secret sealed', async () => {
    const { dir, store } = setup();
    const added = await store.add('judy', 'utility-administrator');
    const file = path.join(dir, 'operators.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const text = readFileSync(file, 'utf8');
    const raw = base32Decode(added.secretBase32);
    for (const form of [added.secretBase32, raw.toString('hex'), raw.toString('base64'), raw.toString('base64url')]) expect(text).not.toContain(form);
    expect(JSON.parse(text)).toMatchObject({ version: 1, operators: [{ name: 'judy', secret: { alg: 'aes-256-gcm' } }] });
    // No temp or lock file left behind.
    expect(readdirSync(dir).sort()).toEqual(['operators.json']);
    await store.remove('judy');
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('cannot unseal secrets under another credential secret, and says so without the secret', async () => {
    const { dir, store, clock } = setup();
    const secret = base32Decode((await store.add('kim', 'field-technician')).secretBase32);
    const wrongKey = new OperatorStore({ dataDir: dir, credentialSecret: 'b'.repeat(64), clock: () => clock.now });
    const err = await wrongKey.authorize('kim', hotp(secret, totpStep(clock.now))).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'OperatorError', code: 'SECRET_UNREADABLE' });
    expect((err as Error).message).not.toContain('b'.repeat(16));
    // A sealed secret moved to another operator does not unseal either (the name is associated data).
    await store.add('lee', 'utility-administrator');
    const file = path.join(dir, 'operators.json');
    const parsed = JSON.parse(readFileSync(file, 'utf8')) as { operators: Array<{ name: string; secret: unknown }> };
    parsed.operators[1]!.secret = parsed.operators[0]!.secret;
    writeFileSync(file, JSON.stringify(parsed));
    await expect(store.authorize('lee', hotp(secret, totpStep(clock.now)))).rejects.toMatchObject({ code: 'SECRET_UNREADABLE' });
  });

  it('reports a damaged file as STORE_CORRUPT and an empty directory as no operators', async () => {
    const { dir, store } = setup();
    expect(await store.list()).toEqual([]);
    expect(existsSync(path.join(dir, 'operators.json'))).toBe(false);
    writeFileSync(path.join(dir, 'operators.json'), '{"version": 1, "operators": [{"name": 3}]}');
    await expect(store.list()).rejects.toMatchObject({ code: 'STORE_CORRUPT' });
    writeFileSync(path.join(dir, 'operators.json'), 'not json');
    await expect(store.authorize('x', '123456')).rejects.toMatchObject({ code: 'STORE_CORRUPT' });
  });

  it('times out on a lock held by another process and breaks a stale one', async () => {
    const { dir } = setup();
    const lock = path.join(dir, 'operators.json.lock');
    const quick = new OperatorStore({ dataDir: dir, credentialSecret: CREDENTIAL_SECRET, lockTimeoutMs: 50 });
    writeFileSync(lock, '99999\n');
    await expect(quick.add('mo', 'field-technician')).rejects.toMatchObject({ code: 'STORE_LOCKED' });
    const breaker = new OperatorStore({ dataDir: dir, credentialSecret: CREDENTIAL_SECRET, staleLockMs: 0 });
    await breaker.add('mo', 'field-technician');
    expect(existsSync(lock)).toBe(false);
    expect((await breaker.list()).map((o) => o.name)).toEqual(['mo']);
  });
});
