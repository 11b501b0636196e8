import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DlmsError } from '../../src/dlms/errors.js';
import { ReplayGuard, type ReplayVerdict } from '../../src/keys/counters.js';
import { Keyring } from '../../src/keys/keyring.js';
import type { MeterKeySet } from '../../src/keys/keystore.js';
import { SimulatedCosemMeter } from '../../src/sim/cosem-meter.js';
import { simMeterKeys, simMeterNames } from '../../src/sim/meter-keys.js';
import { acquireDatabase, openSublevel, type DatabaseLease } from '../../src/store/database.js';

/**
 * The replay journal (ReplayGuard's packed `j/<seq>` records and periodic
 * `snapshot`) against a plain Map model, across restarts, a hard crash of
 * another process, and a long run that must keep the journal bounded.
 */

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const CHILD = path.join(REPO_ROOT, 'test', 'fixtures', 'replay-child.mjs');
/** Mirrors SNAPSHOT_EVERY in src/keys/counters.ts (not exported). */
const SNAPSHOT_EVERY = 256;
const MAX_COUNTER = 0xffff_ffff;
const GUARD_OPTIONS = { lingerMs: 0, sync: false } as const;

let tmpRoot: string;

beforeAll(() => {
  tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'replay-journal-'));
});

afterAll(() => {
  fs.rmSync(tmpRoot, { recursive: true, force: true });
});

function freshDir(name: string): string {
  return fs.mkdtempSync(path.join(tmpRoot, `${name}-`));
}

async function countKeys(lease: DatabaseLease): Promise<{ total: number; journal: number; snapshot: boolean }> {
  const keys = await openSublevel(lease.db, 'ic-in').keys().all();
  return { total: keys.length, journal: keys.filter((k) => k.startsWith('j/')).length, snapshot: keys.includes('snapshot') };
}

// ---------------------------------------------------------------------------
// 1. Model-based: ReplayGuard vs a Map, with restarts and snapshots
// ---------------------------------------------------------------------------

const TITLES = ['414d490000000001', '414d490000000002', '414d4900000000ff', '4757303030303031', 'a1b2c3d4e5f60718'];

const TAG_A = Buffer.from('11223344556677889900aabbccddeeff', 'hex');
const TAG_B = Buffer.from('0102030405060708090a0b0c0d0e0f10', 'hex');
const TAG_12 = Buffer.from('cafebabedeadbeef01234567', 'hex');
/**
 * Frame identities as the guard sees them: the first 16 bytes, zero-padded.
 * A 32-byte digest starting with TAG_A is the same identity as TAG_A, and a
 * 12-byte GCM tag is the same as itself followed by four zero bytes.
 */
const DIGESTS: Buffer[] = [
  TAG_A,
  TAG_B,
  TAG_12,
  Buffer.concat([TAG_A, Buffer.alloc(16, 0x77)]),
  Buffer.concat([TAG_12, Buffer.alloc(4)]),
  Buffer.from('ffeeddccbbaa99887766554433221100', 'hex'),
];

function identity(digest: Uint8Array): string {
  const stored = Buffer.alloc(16);
  stored.set(digest.subarray(0, 16));
  return stored.toString('hex');
}

interface ModelEntry {
  counter: number;
  digest: string;
}

interface Model {
  last: Map<string, ModelEntry>;
  /** Records written: one per event-loop turn (or drain) with accepted or reset titles. */
  records: number;
  /** Journal records on disk now: every SNAPSHOT_EVERY-th record is a snapshot that replaces them. */
  journal: number;
  snapshots: number;
}

/** One record written: a journal record, or the snapshot that replaces the journal. */
function modelWrite(model: Model): void {
  model.records += 1;
  if (model.journal + 1 >= SNAPSHOT_EVERY) {
    model.journal = 0;
    model.snapshots += 1;
  } else {
    model.journal += 1;
  }
}

interface Real {
  path: string;
  lease: DatabaseLease;
  guard: ReplayGuard;
}

function modelCheck(model: Model, title: string, counter: number, digest: Uint8Array): ReplayVerdict {
  const last = model.last.get(title);
  if (last === undefined || counter > last.counter) return 'fresh';
  if (counter === last.counter && last.digest === identity(digest)) return 'repeat';
  return 'replay';
}

/** Applies an accept to the model; true when it moved the counter (and so needs a write). */
function modelAccept(model: Model, title: string, counter: number, digest: Uint8Array): boolean {
  const last = model.last.get(title);
  if (last !== undefined && counter <= last.counter) return false;
  model.last.set(title, { counter, digest: identity(digest) });
  return true;
}

function modelReset(model: Model, titles: string[]): boolean {
  for (const title of titles) model.last.delete(title);
  return titles.length > 0;
}

function fail(message: string): never {
  throw new Error(message);
}

/** Every title: lastAccepted() and the verdicts of check() around the last counter match the model. */
function verify(model: Model, guard: ReplayGuard, where: string): void {
  if (guard.size !== model.last.size) fail(`${where}: size ${guard.size}, model ${model.last.size}`);
  for (const title of TITLES) {
    const expected = model.last.get(title)?.counter;
    const actual = guard.lastAccepted(title);
    if (actual !== expected) fail(`${where}: lastAccepted(${title}) = ${actual}, model ${expected}`);
    const base = expected ?? 0;
    const probes = new Set([0, 1, base - 1, base, base + 1, MAX_COUNTER].filter((c) => c >= 0 && c <= MAX_COUNTER));
    for (const counter of probes) {
      for (const digest of DIGESTS) {
        const want = modelCheck(model, title, counter, digest);
        const got = guard.check(title, counter, digest);
        if (got !== want) fail(`${where}: check(${title}, ${counter}, ${digest.toString('hex')}) = ${got}, model ${want}`);
      }
    }
  }
}

/** Only the titles one step touched, for the long bursts (a full verify follows each burst). */
function verifyTitle(model: Model, guard: ReplayGuard, title: string, where: string): void {
  const expected = model.last.get(title);
  if (guard.lastAccepted(title) !== expected?.counter) fail(`${where}: lastAccepted(${title}) = ${guard.lastAccepted(title)}, model ${expected?.counter}`);
  if (expected) {
    const digest = DIGESTS.find((d) => identity(d) === expected.digest)!;
    if (guard.check(title, expected.counter, digest) !== 'repeat') fail(`${where}: the last frame of ${title} is not a repeat`);
  }
}

type CounterSpec = { kind: 'relative'; delta: number } | { kind: 'absolute'; value: number };

function resolveCounter(model: Model, title: string, spec: CounterSpec): number {
  if (spec.kind === 'absolute') return spec.value;
  const base = model.last.get(title)?.counter ?? 0;
  return Math.min(MAX_COUNTER, Math.max(0, base + spec.delta));
}

function describeSpec(spec: CounterSpec): string {
  return spec.kind === 'absolute' ? `${spec.value}` : `last${spec.delta >= 0 ? '+' : ''}${spec.delta}`;
}

interface AcceptOp {
  type: 'accept';
  title: number;
  counter: CounterSpec;
  digest: number;
}

interface ResetOp {
  type: 'reset';
  titles: number[];
}

type TurnOp = AcceptOp | ResetOp;

function describeOp(op: TurnOp): string {
  return op.type === 'accept' ? `accept(t${op.title}, ${describeSpec(op.counter)}, d${op.digest})` : `reset([${op.titles.map((t) => `t${t}`).join(',')}])`;
}

/**
 * Issues the ops in one event-loop turn (one journal record), checking after
 * each that the in-memory verdicts already match, before anything is written.
 */
function issueTurn(model: Model, real: Real, ops: TurnOp[], where: string): { promises: Promise<void>[]; writes: boolean } {
  const promises: Promise<void>[] = [];
  let writes = false;
  for (const op of ops) {
    if (op.type === 'accept') {
      const title = TITLES[op.title]!;
      const digest = DIGESTS[op.digest]!;
      const counter = resolveCounter(model, title, op.counter);
      const want = modelCheck(model, title, counter, digest);
      const got = real.guard.check(title, counter, digest);
      if (got !== want) fail(`${where}: check before ${describeOp(op)} = ${got}, model ${want}`);
      writes = modelAccept(model, title, counter, digest) || writes;
      promises.push(real.guard.accept(title, counter, digest));
    } else {
      const titles = op.titles.map((t) => TITLES[t]!);
      writes = modelReset(model, titles) || writes;
      promises.push(real.guard.reset(titles));
    }
    verify(model, real.guard, `${where}, in memory after ${describeOp(op)}`);
  }
  return { promises, writes };
}

async function restartGuard(real: Real, drain: boolean, model?: Model): Promise<void> {
  if (drain) await real.guard.drain();
  if (model) {
    // Everything is written now: the disk holds the journal the model predicts, plus a snapshot once one was due.
    const stored = await countKeys(real.lease);
    if (stored.journal !== model.journal || stored.snapshot !== model.snapshots > 0) {
      fail(`before restart: ${stored.journal} journal records and ${stored.snapshot ? 'a' : 'no'} snapshot, model ${model.journal} and ${model.snapshots}`);
    }
    if (stored.total > SNAPSHOT_EVERY + 1) fail(`before restart: ${stored.total} keys in ic-in`);
  }
  await real.lease.release();
  real.lease = await acquireDatabase(real.path);
  real.guard = await ReplayGuard.open(real.lease.db, GUARD_OPTIONS);
}

class TurnCommand implements fc.AsyncCommand<Model, Real> {
  constructor(readonly ops: TurnOp[]) {}
  check(): boolean {
    return true;
  }
  async run(model: Model, real: Real): Promise<void> {
    const { promises, writes } = issueTurn(model, real, this.ops, this.toString());
    await Promise.all(promises);
    if (writes) modelWrite(model);
    verify(model, real.guard, `after ${this.toString()}`);
  }
  toString(): string {
    return this.ops.length === 1 ? describeOp(this.ops[0]!) : `turn[${this.ops.map(describeOp).join('; ')}]`;
  }
}

/** Many accepts, each awaited in its own turn: each writes one journal record, so snapshots come round. */
class BurstCommand implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly length: number,
    readonly firstTitle: number,
    readonly step: number,
    readonly digest: number,
  ) {}
  check(): boolean {
    return true;
  }
  async run(model: Model, real: Real): Promise<void> {
    for (let i = 0; i < this.length; i++) {
      const title = TITLES[(this.firstTitle + i) % TITLES.length]!;
      const digest = DIGESTS[(this.digest + i) % DIGESTS.length]!;
      const counter = resolveCounter(model, title, { kind: 'relative', delta: this.step });
      if (modelAccept(model, title, counter, digest)) modelWrite(model);
      await real.guard.accept(title, counter, digest);
      verifyTitle(model, real.guard, title, `${this.toString()}, accept ${i}`);
    }
    verify(model, real.guard, `after ${this.toString()}`);
  }
  toString(): string {
    return `burst(${this.length} from t${this.firstTitle}, +${this.step}, d${this.digest})`;
  }
}

/**
 * Restart: drain (or not), release the lease, reacquire, open again. Without
 * drain every accept promise has been awaited already: resolved means written.
 */
class RestartCommand implements fc.AsyncCommand<Model, Real> {
  constructor(readonly drain: boolean) {}
  check(): boolean {
    return true;
  }
  async run(model: Model, real: Real): Promise<void> {
    await restartGuard(real, this.drain, model);
    verify(model, real.guard, `after ${this.toString()}`);
  }
  toString(): string {
    return this.drain ? 'restart(drain)' : 'restart(no drain)';
  }
}

/**
 * Accepts one at a time until the next record is due to be a snapshot, writes
 * that one as a turn of several accepts (and perhaps a reset), and restarts at
 * once: the snapshot alone must carry what that turn accepted and reset.
 */
class SnapshotRestartCommand implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly firstTitle: number,
    readonly ops: TurnOp[],
    readonly drain: boolean,
  ) {}
  check(): boolean {
    return true;
  }
  async run(model: Model, real: Real): Promise<void> {
    for (let i = 0; model.journal + 1 < SNAPSHOT_EVERY; i++) {
      const title = TITLES[(this.firstTitle + i) % TITLES.length]!;
      const counter = Math.min(MAX_COUNTER, (model.last.get(title)?.counter ?? 0) + 1);
      const digest = DIGESTS[i % DIGESTS.length]!;
      // A title stuck at the maximum counter writes nothing: reset it instead.
      if (modelAccept(model, title, counter, digest)) {
        await real.guard.accept(title, counter, digest);
      } else {
        modelReset(model, [title]);
        await real.guard.reset([title]);
      }
      modelWrite(model);
      verifyTitle(model, real.guard, title, `${this.toString()}, filling the journal (${i})`);
    }
    const ops: TurnOp[] = [{ type: 'accept', title: this.firstTitle, counter: { kind: 'relative', delta: 1 }, digest: 1 }, ...this.ops];
    const { promises, writes } = issueTurn(model, real, ops, this.toString());
    await Promise.all(promises);
    if (writes) modelWrite(model);
    await restartGuard(real, this.drain, model);
    verify(model, real.guard, `after ${this.toString()}`);
  }
  toString(): string {
    return `fill journal from t${this.firstTitle}, snapshot turn[accept(t${this.firstTitle}, last+1, d1); ${this.ops.map(describeOp).join('; ')}], restart(${this.drain ? 'drain' : 'no drain'})`;
  }
}

/** Accepts left pending (not awaited) and then drained, as Keyring.close() does, then a restart. */
class DrainPendingRestartCommand implements fc.AsyncCommand<Model, Real> {
  constructor(readonly ops: TurnOp[]) {}
  check(): boolean {
    return true;
  }
  async run(model: Model, real: Real): Promise<void> {
    const { promises, writes } = issueTurn(model, real, this.ops, this.toString());
    if (writes) modelWrite(model);
    const settled = Promise.all(promises);
    await restartGuard(real, true, model);
    await settled;
    verify(model, real.guard, `after ${this.toString()}`);
  }
  toString(): string {
    return `pending[${this.ops.map(describeOp).join('; ')}] + restart(drain)`;
  }
}

const titleArb = fc.nat(TITLES.length - 1);
const digestArb = fc.nat(DIGESTS.length - 1);
const counterArb: fc.Arbitrary<CounterSpec> = fc.oneof(
  { arbitrary: fc.integer({ min: -3, max: 5 }).map((delta): CounterSpec => ({ kind: 'relative', delta })), weight: 10 },
  { arbitrary: fc.nat(40).map((value): CounterSpec => ({ kind: 'absolute', value })), weight: 2 },
  { arbitrary: fc.integer({ min: MAX_COUNTER - 3, max: MAX_COUNTER }).map((value): CounterSpec => ({ kind: 'absolute', value })), weight: 1 },
);
const acceptOpArb: fc.Arbitrary<TurnOp> = fc.record({ title: titleArb, counter: counterArb, digest: digestArb }).map((a) => ({ type: 'accept', ...a }));
const resetOpArb: fc.Arbitrary<TurnOp> = fc
  .subarray(TITLES.map((_, i) => i), { minLength: 0, maxLength: 2 })
  .map((titles) => ({ type: 'reset', titles }));
const turnOpsArb = fc.array(fc.oneof({ arbitrary: acceptOpArb, weight: 5 }, { arbitrary: resetOpArb, weight: 1 }), { minLength: 1, maxLength: 8 });

const commandArbs = [
  acceptOpArb.map((op) => new TurnCommand([op])),
  acceptOpArb.map((op) => new TurnCommand([op])),
  turnOpsArb.map((ops) => new TurnCommand(ops)),
  resetOpArb.map((op) => new TurnCommand([op])),
  fc
    .record({ length: fc.integer({ min: 40, max: 200 }), firstTitle: titleArb, step: fc.integer({ min: 1, max: 3 }), digest: digestArb })
    .map((b) => new BurstCommand(b.length, b.firstTitle, b.step, b.digest)),
  fc
    .record({ length: fc.integer({ min: 40, max: 200 }), firstTitle: titleArb, step: fc.integer({ min: 1, max: 3 }), digest: digestArb })
    .map((b) => new BurstCommand(b.length, b.firstTitle, b.step, b.digest)),
  fc.boolean().map((drain) => new RestartCommand(drain)),
  fc.boolean().map((drain) => new RestartCommand(drain)),
  turnOpsArb.map((ops) => new DrainPendingRestartCommand(ops)),
  fc
    .record({ firstTitle: titleArb, ops: turnOpsArb, drain: fc.boolean() })
    .map((c) => new SnapshotRestartCommand(c.firstTitle, c.ops, c.drain)),
];

describe('ReplayGuard journal, model-based', () => {
  it('matches a Map model through accepts, resets, restarts and snapshots', async () => {
    const snapshotsPerRun: number[] = [];
    await fc.assert(
      fc.asyncProperty(fc.commands(commandArbs, { maxCommands: 40, size: 'max' }), async (commands) => {
        const dir = freshDir('model');
        const lease = await acquireDatabase(dir);
        const real: Real = { path: dir, lease, guard: await ReplayGuard.open(lease.db, GUARD_OPTIONS) };
        const model: Model = { last: new Map(), records: 0, journal: 0, snapshots: 0 };
        try {
          await fc.asyncModelRun(() => ({ model, real }), commands);
          // A last restart without drain: everything awaited is on disk.
          await restartGuard(real, false, model);
          verify(model, real.guard, 'after the final restart');
          snapshotsPerRun.push(model.snapshots);
        } finally {
          await real.lease.release();
          fs.rmSync(dir, { recursive: true, force: true });
        }
      }),
      { numRuns: 30 },
    );
    // The runs must have gone through several snapshots (one every SNAPSHOT_EVERY records).
    expect(Math.max(...snapshotsPerRun)).toBeGreaterThanOrEqual(3);
    expect(snapshotsPerRun.filter((snapshots) => snapshots > 0).length).toBeGreaterThanOrEqual(snapshotsPerRun.length / 2);
  });
});

// ---------------------------------------------------------------------------
// 2. Crash across processes: SIGKILL right after the last accepted frame
// ---------------------------------------------------------------------------

const SEED = 'replay-journal-test';
const MASTER = Buffer.alloc(32, 0x3c);
const GATEWAY_TITLE = '4757303030303032';
const READING = [{ obis: '1.0.1.8.0.255', value: 4242, scaler: 0, unit: 'Wh' }];
const PUSH_TIME = new Date('2026-01-01T00:00:00Z');

interface Accepted {
  counter: number;
  systemTitle: string;
}

const children = new Set<ChildProcess>();

afterEach(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }
  }
  children.clear();
});

/**
 * Runs the child on `dir` with `frames`, SIGKILLs it right after it reports
 * the last one accepted, and resolves once it is gone.
 */
async function runChildUntilLastAccepted(dir: string, jobFile: string, expected: number): Promise<{ accepted: Accepted[]; signal: NodeJS.Signals | null }> {
  const child = spawn(process.execPath, [CHILD, dir, jobFile], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(child);
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    stderr += chunk;
  });
  const accepted: Accepted[] = [];
  const lines = createInterface({ input: child.stdout! });
  const allAccepted = new Promise<void>((resolve, reject) => {
    lines.on('line', (line) => {
      const match = /^ACCEPTED (\d+) ([0-9a-f]{16})$/.exec(line);
      if (!match) return;
      accepted.push({ counter: Number(match[1]), systemTitle: match[2]! });
      if (accepted.length === expected) {
        // No graceful close: the process dies with whatever it has not written.
        child.kill('SIGKILL');
        resolve();
      }
    });
    void exited.then(([code, signal]) => {
      if (accepted.length < expected) {
        reject(new Error(`the child exited (code ${code}, signal ${signal}) after ${accepted.length}/${expected} frames:\n${stderr}`));
      }
    });
  });
  await allAccepted;
  const [, signal] = await exited;
  lines.close();
  return { accepted, signal };
}

describe('replay protection across a hard crash', () => {
  it('a SIGKILLed process keeps its accepted counters: last is a repeat, earlier ones replays, newer fresh', async () => {
    expect(fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'keys', 'keyring.js')), 'dist/ is missing: run npm run build').toBe(true);
    const dir = freshDir('crash');
    const keys: MeterKeySet[] = simMeterNames(3, 'rj-').map((name) => simMeterKeys(SEED, name, 1));
    const meters = keys.map((k) => new SimulatedCosemMeter(k, { invocationCounter: 1000 }));
    // 300 frames, one journal record each: a snapshot at the 256th, then journal records after it.
    const frames: Buffer[] = [];
    for (let i = 0; i < 300; i++) frames.push(meters[i % meters.length]!.pushFrame(READING, PUSH_TIME));
    const jobFile = path.join(tmpRoot, 'crash-job.json');
    fs.writeFileSync(
      jobFile,
      JSON.stringify({
        masterKey: MASTER.toString('hex'),
        gatewaySystemTitle: GATEWAY_TITLE,
        meters: keys.map((k) => ({ ...k, ek: k.ek.toString('hex'), ak: k.ak.toString('hex'), kek: k.kek.toString('hex') })),
        frames: frames.map((f) => f.toString('hex')),
      }),
    );

    const { accepted, signal } = await runChildUntilLastAccepted(dir, jobFile, frames.length);
    expect(signal).toBe('SIGKILL');
    expect(accepted.map((a) => a.systemTitle)).toEqual(frames.map((_, i) => keys[i % keys.length]!.systemTitle));
    accepted.forEach((a, i) => expect(a.counter).toBe(1001 + Math.floor(i / keys.length)));

    const lease = await acquireDatabase(dir);
    try {
      // Both halves of the storage carry state: the snapshot and the journal written after it.
      const stored = await countKeys(lease);
      expect(stored.snapshot).toBe(true);
      expect(stored.journal).toBeGreaterThan(0);

      const keyring = await Keyring.open({ db: lease.db, masterKey: MASTER, gatewaySystemTitle: GATEWAY_TITLE, micThreshold: 3 });
      const lastIndex = (m: number): number => frames.length - keys.length + m;
      for (let m = 0; m < keys.length; m++) {
        const last = await keyring.openFrame(frames[lastIndex(m)]!);
        expect(last.systemTitle).toBe(keys[m]!.systemTitle);
        expect(last.repeat, `the last frame of ${keys[m]!.meter} must still be known after the crash`).toBe(true);
        expect(last.security?.invocationCounter).toBe(accepted[lastIndex(m)]!.counter);
      }
      for (let i = 0; i < frames.length - keys.length; i++) {
        const err = await keyring.openFrame(frames[i]!).then(
          () => fail(`frame ${i} (counter ${accepted[i]!.counter}) was accepted after the crash`),
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(DlmsError);
        expect((err as DlmsError).code).toBe('REPLAY');
      }
      expect(keyring.counters.replays).toBe(frames.length - keys.length);
      for (let m = 0; m < keys.length; m++) {
        const newer = await keyring.openFrame(meters[m]!.pushFrame(READING, PUSH_TIME));
        expect(newer.repeat, `a newer frame of ${keys[m]!.meter} is fresh`).toBe(false);
        expect(newer.security?.invocationCounter).toBe(accepted[lastIndex(m)]!.counter + 1);
        // ... and the frame that was the last is now a plain replay.
        const old = await keyring.openFrame(frames[lastIndex(m)]!).catch((e: unknown) => e);
        expect((old as DlmsError).code).toBe('REPLAY');
      }
      await keyring.close();
    } finally {
      await lease.release();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------
// 3. The journal stays bounded
// ---------------------------------------------------------------------------

describe('ReplayGuard journal size', () => {
  it('stays at most SNAPSHOT_EVERY + 1 keys over 10,000 accepts on 50 titles', async () => {
    const dir = freshDir('bounded');
    const titles = Array.from({ length: 50 }, (_, i) => `414d49ff${i.toString(16).padStart(8, '0')}`);
    const counters = new Map<string, number>();
    const ACCEPTS = 10_000;
    const PER_TURN = 10;
    let lease = await acquireDatabase(dir);
    try {
      const guard = await ReplayGuard.open(lease.db, GUARD_OPTIONS);
      let maxKeys = 0;
      let maxJournal = 0;
      let sawSnapshot = false;
      for (let turn = 0; turn < ACCEPTS / PER_TURN; turn++) {
        const writes: Promise<void>[] = [];
        for (let i = 0; i < PER_TURN; i++) {
          const title = titles[(turn * PER_TURN + i + turn) % titles.length]!;
          const counter = (counters.get(title) ?? 0) + 1;
          counters.set(title, counter);
          const digest = Buffer.alloc(16);
          digest.writeUInt32BE(counter, 0);
          digest.write(title, 4, 8, 'hex');
          writes.push(guard.accept(title, counter, digest));
        }
        await Promise.all(writes);
        const stored = await countKeys(lease);
        expect(stored.total, `after turn ${turn}`).toBeLessThanOrEqual(SNAPSHOT_EVERY + 1);
        maxKeys = Math.max(maxKeys, stored.total);
        maxJournal = Math.max(maxJournal, stored.journal);
        sawSnapshot ||= stored.snapshot;
      }
      // The journal did grow to its limit and was folded into snapshots (1000 records: three of them).
      expect(sawSnapshot).toBe(true);
      expect(maxJournal).toBe(SNAPSHOT_EVERY - 1);
      expect(maxKeys).toBe(SNAPSHOT_EVERY);

      // Nothing was lost in the folding.
      await lease.release();
      lease = await acquireDatabase(dir);
      const reopened = await ReplayGuard.open(lease.db, GUARD_OPTIONS);
      expect(reopened.size).toBe(titles.length);
      for (const title of titles) expect(reopened.lastAccepted(title)).toBe(counters.get(title));
    } finally {
      await lease.release();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
