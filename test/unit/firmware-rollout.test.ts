import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  checkPair,
  FirmwarePortError,
  FirmwareRolloutService,
  openFirmwareRepository,
  RolloutJournal,
  type FirmwareMeterPort,
  type FirmwareOffer,
  type FirmwareRepository,
  type MeterFirmwareReport,
  type MeterRolloutEntry,
} from '../../src/firmware/index.js';
import { acquireDatabase, type DatabaseLease } from '../../src/store/database.js';
import { REPO_ROOT } from '../helpers/appliance.js';

/**
 * The rollout lifecycle against scripted meters that follow the meter side
 * of docs/firmware.md (state, offer, download progress, install). The
 * simulated meters over real CoAP are in firmware-rollout-fleet.test.ts;
 * here each fault is placed exactly.
 */

const ROOT_CA = readFileSync(path.join(REPO_ROOT, 'firmware-images', 'test-ca', 'root-ca.pem'), 'utf8');

interface ScriptedMeter {
  model: string;
  comm: string;
  metro: string;
  state: MeterFirmwareReport['state'];
  image?: { target: 'comm' | 'metro'; version: string; sha256: string };
  received: number;
  size: number;
  result?: string;
  offers: FirmwareOffer[];
  /** Every pair the meter ran. */
  ran: { comm: string; metro: string }[];
  /** Bytes gained per read while downloading. */
  rate: number;
  /** Downloads that end in a hash mismatch, from the first. */
  corruptDownloads: number;
  /** Reads and offers go unanswered (COMM_TIMEOUT_ERR) while true. */
  silent: boolean;
  /** Installs leave the old version running (a meter that rolls back). */
  rollsBack: boolean;
  /** Offers answered 4.09 (busy with another image) before one is taken. */
  busyOffers: number;
}

class ScriptedMeters implements FirmwareMeterPort {
  readonly meters = new Map<string, ScriptedMeter>();
  /** Resolves the first time any meter reports this many bytes received. */
  private progressWaiters: { bytes: number; resolve: () => void }[] = [];

  add(name: string, init: Partial<ScriptedMeter> = {}): ScriptedMeter {
    const meter: ScriptedMeter = {
      model: 'AMX-100',
      comm: '2.1.0',
      metro: '5.0.0',
      state: 'idle',
      received: 0,
      size: 0,
      offers: [],
      ran: [],
      rate: 2048,
      corruptDownloads: 0,
      silent: false,
      rollsBack: false,
      busyOffers: 0,
      ...init,
    };
    meter.ran.push({ comm: meter.comm, metro: meter.metro });
    this.meters.set(name, meter);
    return meter;
  }

  receivedAtLeast(bytes: number): Promise<void> {
    return new Promise((resolve) => this.progressWaiters.push({ bytes, resolve }));
  }

  async readState(name: string, signal: AbortSignal): Promise<MeterFirmwareReport> {
    signal.throwIfAborted();
    const m = this.meter(name);
    // The meter works between two reads.
    if (m.state === 'downloading') {
      m.received = Math.min(m.size, m.received + m.rate);
      for (const w of this.progressWaiters.filter((w) => m.received >= w.bytes)) w.resolve();
      this.progressWaiters = this.progressWaiters.filter((w) => m.received < w.bytes);
      if (m.received === m.size) {
        if (m.corruptDownloads > 0) {
          m.corruptDownloads -= 1;
          m.state = 'failed';
          m.result = 'HASH_MISMATCH';
          m.received = 0;
        } else {
          m.state = 'updating';
        }
      }
    } else if (m.state === 'updating' && m.image) {
      if (!m.rollsBack) m[m.image.target] = m.image.version;
      m.ran.push({ comm: m.comm, metro: m.metro });
      m.state = 'idle';
    }
    const report: MeterFirmwareReport = { model: m.model, comm: m.comm, metro: m.metro, state: m.state, received: m.received, size: m.size };
    if (m.image) report.image = { ...m.image };
    if (m.result !== undefined) report.result = m.result;
    return report;
  }

  async offer(name: string, offer: FirmwareOffer, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const m = this.meter(name);
    m.offers.push(offer);
    if (m.busyOffers > 0) {
      m.busyOffers -= 1;
      throw new FirmwarePortError('METER_BUSY', `meter ${name}: POST /fw/update answered 4.09`);
    }
    if ((m.state === 'downloading' || m.state === 'updating') && m.image?.sha256 === offer.sha256) return;
    if (m.image?.sha256 !== offer.sha256) m.received = 0;
    m.image = { target: offer.target, version: offer.version, sha256: offer.sha256 };
    m.size = offer.size;
    m.state = 'downloading';
    delete m.result;
  }

  private meter(name: string): ScriptedMeter {
    const m = this.meters.get(name);
    if (!m) throw new FirmwarePortError('NOT_REGISTERED', `meter ${name} is not registered`);
    if (m.silent) throw new FirmwarePortError('COMM_TIMEOUT_ERR', `meter ${name} did not answer`);
    return m;
  }
}

let dir: string;
let repository: FirmwareRepository;
let port: ScriptedMeters;
const opened: { service: FirmwareRolloutService; lease: DatabaseLease }[] = [];

async function openService(options: { stepTimeoutMs?: number; maxAttempts?: number; maxConcurrent?: number; isRegistered?: (meter: string) => boolean } = {}): Promise<{ service: FirmwareRolloutService; journal: RolloutJournal; lease: DatabaseLease }> {
  const lease = await acquireDatabase(path.join(dir, 'db'));
  const journal = new RolloutJournal(lease.db, { sync: false });
  const service = await FirmwareRolloutService.open({ journal, repository, port, pollMs: 1, stepTimeoutMs: 2000, ...options });
  opened.push({ service, lease });
  return { service, journal, lease };
}

async function shutdown(h: { service: FirmwareRolloutService; lease: DatabaseLease }): Promise<void> {
  await h.service.close();
  await h.lease.release();
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'fw-rollout-'));
  await cp(path.join(REPO_ROOT, 'firmware-images', 'test-images'), path.join(dir, 'images'), { recursive: true });
  repository = await openFirmwareRepository({ root: path.join(dir, 'images'), trustAnchorsPem: [ROOT_CA] });
  port = new ScriptedMeters();
});

afterEach(async () => {
  for (const h of opened.splice(0)) await shutdown(h).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

function compatibleThroughout(m: ScriptedMeter): boolean {
  return m.ran.every((pair) => checkPair(pair, repository).compatible);
}

describe('firmware rollout', () => {
  it('updates comm before metro when both change, verifies the versions and journals one HES result per meter', async () => {
    port.add('m1');
    port.add('m2');
    const { service, journal } = await openService();
    const started = await service.start({ want: { comm: '2.2.0', metro: '5.1.0' }, meters: ['m1', 'm2'], rolloutId: 'r1', requestedBy: 'test' });
    expect(started).toMatchObject({ rolloutId: 'r1', total: 2, done: 0, finished: false });
    const summary = await service.wait('r1');
    expect(summary).toMatchObject({ total: 2, done: 2, finished: true, byCode: { FW_UPDATE_SUCCESS: 2 } });
    for (const name of ['m1', 'm2']) {
      const m = port.meters.get(name) as ScriptedMeter;
      expect(m.offers.map((o) => `${o.target} ${o.version} ${o.path}`)).toEqual(['comm 2.2.0 /fw/acme/comm-2.2.0', 'metro 5.1.0 /fw/acme/metro-5.1.0']);
      expect(m.ran).toEqual([
        { comm: '2.1.0', metro: '5.0.0' },
        { comm: '2.2.0', metro: '5.0.0' },
        { comm: '2.2.0', metro: '5.1.0' },
      ]);
      expect(compatibleThroughout(m)).toBe(true);
    }
    const entries = await service.meters('r1');
    expect(entries.map((e) => [e.meter, e.phase, e.outcome?.code, e.outcome?.versions])).toEqual([
      ['m1', 'done', 'FW_UPDATE_SUCCESS', { comm: '2.2.0', metro: '5.1.0' }],
      ['m2', 'done', 'FW_UPDATE_SUCCESS', { comm: '2.2.0', metro: '5.1.0' }],
    ]);
    const reports = await journal.reports();
    expect(reports.map((r) => r.report.key).sort()).toEqual(['firmware-result:r1:m1', 'firmware-result:r1:m2']);
    expect(reports[0]?.report).toMatchObject({ kind: 'result', body: { type: 'firmware', rollout: 'r1', code: 'FW_UPDATE_SUCCESS', from: { comm: '2.1.0', metro: '5.0.0' } } });
  });

  it('sends nothing to a meter the update would leave incompatible, and says which manifests refuse the pair', async () => {
    const alone = port.add('metro-alone');
    const between = port.add('no-safe-order', { metro: '4.9.0' });
    const { service } = await openService();
    await service.start({ want: { metro: '5.1.0' }, meters: ['metro-alone'], rolloutId: 'a' });
    await service.start({ want: { comm: '2.2.0', metro: '5.1.0' }, meters: ['no-safe-order'], rolloutId: 'b' });
    expect((await service.wait('a')).byCode).toEqual({ FW_INCOMPATIBLE: 1 });
    expect((await service.wait('b')).byCode).toEqual({ FW_INCOMPATIBLE: 1 });
    expect(alone.offers).toEqual([]);
    expect(between.offers).toEqual([]);
    const [a] = await service.meters('a');
    expect(a?.outcome?.reason).toMatch(/comm 2\.1\.0 with metro 5\.1\.0.*not compatible/);
    const [b] = await service.meters('b');
    expect(b?.outcome?.reason).toMatch(/no order/);
  });

  it('a meter already on the wanted versions gets nothing; an unknown model or version gets FW_NO_IMAGE', async () => {
    const current = port.add('current', { comm: '2.2.0' });
    const otherModel = port.add('other-model', { model: 'AMX-900' });
    const { service } = await openService();
    await service.start({ want: { comm: '2.2.0' }, meters: ['current', 'other-model'], rolloutId: 'r' });
    expect((await service.wait('r')).byCode).toEqual({ FW_ALREADY_CURRENT: 1, FW_NO_IMAGE: 1 });
    expect(current.offers.length + otherModel.offers.length).toBe(0);
    await service.start({ want: { comm: '9.9.9' }, meters: ['current'], rolloutId: 'none' });
    expect((await service.wait('none')).byCode).toEqual({ FW_NO_IMAGE: 1 });
  });

  it('offers the image again after a hash mismatch, and gives up after the attempts with the meter\'s reason', async () => {
    const once = port.add('once', { corruptDownloads: 1 });
    const always = port.add('always', { corruptDownloads: 99 });
    const { service } = await openService({ maxAttempts: 3 });
    await service.start({ want: { comm: '2.2.0' }, meters: ['once', 'always'], rolloutId: 'r' });
    expect((await service.wait('r')).byCode).toEqual({ FW_UPDATE_SUCCESS: 1, FW_UPDATE_FAILED: 1 });
    expect(once.offers).toHaveLength(2);
    expect(always.offers).toHaveLength(3);
    expect(always.comm).toBe('2.1.0');
    const failed = (await service.meters('r')).find((e) => e.meter === 'always');
    expect(failed?.outcome?.reason).toMatch(/3 offers; last: HASH_MISMATCH/);
  });

  it('a meter that never answers ends COMM_TIMEOUT_ERR after the step timeout; one that rolls back ends FW_UPDATE_FAILED', async () => {
    port.add('silent', { silent: true });
    const rollsBack = port.add('rolls-back', { rollsBack: true });
    const { service } = await openService({ stepTimeoutMs: 50, maxAttempts: 2 });
    await service.start({ want: { comm: '2.2.0' }, meters: ['silent', 'rolls-back'], rolloutId: 'r' });
    expect((await service.wait('r')).byCode).toEqual({ COMM_TIMEOUT_ERR: 1, FW_UPDATE_FAILED: 1 });
    expect(rollsBack.offers).toHaveLength(2);
  });

  it('refuses an image whose bytes changed on disk after loading (FW_IMAGE_REFUSED) and offers nothing', async () => {
    const meter = port.add('m1');
    const imagePath = path.join(dir, 'images', 'acme', 'comm-2.2.0', 'image.bin');
    const bytes = await readFile(imagePath);
    bytes[100] = (bytes[100] as number) ^ 0xff;
    await writeFile(imagePath, bytes);
    const { service } = await openService();
    await service.start({ want: { comm: '2.2.0' }, meters: ['m1'], rolloutId: 'r' });
    expect((await service.wait('r')).byCode).toEqual({ FW_IMAGE_REFUSED: 1 });
    expect(meter.offers).toEqual([]);
    expect(repository.get('acme/comm-2.2.0')).toMatchObject({ status: 'quarantined', code: 'HASH_MISMATCH' });
  });

  it('resumes after a restart: a meter still downloading is left to finish without a second offer', async () => {
    const meter = port.add('m1', { rate: 512 });
    port.add('m2', { rate: 512 });
    let h = await openService();
    await h.service.start({ want: { comm: '2.2.0' }, meters: ['m1', 'm2'], rolloutId: 'r' });
    await port.receivedAtLeast(2048);
    await shutdown(h);
    opened.length = 0;
    const offersBefore = meter.offers.length;
    expect(offersBefore).toBe(1);

    h = await openService();
    const summary = await h.service.wait('r');
    expect(summary).toMatchObject({ finished: true, byCode: { FW_UPDATE_SUCCESS: 2 } });
    expect(meter.offers).toHaveLength(1);
    const reports = await h.journal.reports();
    expect(reports.map((r) => r.report.key).sort()).toEqual(['firmware-result:r:m1', 'firmware-result:r:m2']);
  });

  it('keeps at most `concurrency` meters under way and every meter gets one outcome', async () => {
    const names = Array.from({ length: 20 }, (_, i) => `m${String(i).padStart(2, '0')}`);
    for (const name of names) port.add(name, { rate: 1024 });
    const { service } = await openService();
    let active = 0;
    let peak = 0;
    const phases = new Map<string, MeterRolloutEntry['phase']>();
    service.on('progress', ({ meter, entry }) => {
      const before = phases.get(meter) ?? 'queued';
      const wasActive = before !== 'queued' && before !== 'done';
      const isActive = entry.phase !== 'queued' && entry.phase !== 'done';
      active += (isActive ? 1 : 0) - (wasActive ? 1 : 0);
      peak = Math.max(peak, active);
      phases.set(meter, entry.phase);
    });
    const results: string[] = [];
    service.on('result', (entry) => results.push(entry.meter));
    await service.start({ want: { comm: '2.2.0' }, meters: names, concurrency: 3, rolloutId: 'r' });
    expect((await service.wait('r')).byCode).toEqual({ FW_UPDATE_SUCCESS: 20 });
    expect(peak).toBe(3);
    expect(results.sort()).toEqual(names);
  });

  it('refuses bad requests with BAD_REQUEST, and the same rollout id twice starts nothing twice', async () => {
    port.add('m1');
    const { service } = await openService();
    await expect(service.start({ want: {}, meters: ['m1'] })).rejects.toMatchObject({ code: 'BAD_REQUEST', message: /nothing wanted/ });
    await expect(service.start({ want: { comm: '2.x' }, meters: ['m1'] })).rejects.toMatchObject({ code: 'BAD_REQUEST', message: /comm version/ });
    await expect(service.start({ want: { comm: '2.2.0' }, meters: [] })).rejects.toMatchObject({ code: 'BAD_REQUEST', message: /no meters/ });
    await expect(service.start({ want: { comm: '2.2.0' }, meters: ['m1'], rolloutId: 'a b' })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(service.start({ want: { comm: '2.2.0' }, meters: ['m1'], concurrency: 0 })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await service.start({ want: { comm: '2.2.0' }, meters: ['m1'], rolloutId: 'once' });
    await service.wait('once');
    const again = await service.start({ want: { comm: '2.2.0' }, meters: ['m1'], rolloutId: 'once' });
    expect(again).toMatchObject({ finished: true, byCode: { FW_UPDATE_SUCCESS: 1 } });
    expect(port.meters.get('m1')?.offers).toHaveLength(1);
    expect((await service.rollouts()).map((r) => r.rolloutId)).toEqual(['once']);
  });

  it('the test image digests in the offers are the manifests\'', async () => {
    const meter = port.add('m1');
    const { service } = await openService();
    await service.start({ want: { comm: '2.2.0' }, meters: ['m1'], rolloutId: 'r' });
    await service.wait('r');
    const image = await readFile(path.join(dir, 'images', 'acme', 'comm-2.2.0', 'image.bin'));
    expect(meter.offers[0]).toMatchObject({ sha256: createHash('sha256').update(image).digest('hex'), size: image.length });
  });

  it('a busy meter (4.09) is asked again until the step deadline without using up its offers', async () => {
    const meter = port.add('busy', { busyOffers: 5 });
    const { service } = await openService({ maxAttempts: 2 });
    await service.start({ want: { comm: '2.2.0' }, meters: ['busy'], rolloutId: 'r' });
    expect((await service.wait('r')).byCode).toEqual({ FW_UPDATE_SUCCESS: 1 });
    expect(meter.offers).toHaveLength(6);
    const [entry] = await service.meters('r');
    expect(entry?.attempts).toBe(1);
  });

  it('an unregistered meter ends FW_UNKNOWN_METER at once', async () => {
    port.add('known');
    const { service } = await openService({ isRegistered: (meter) => meter === 'known' });
    await service.start({ want: { comm: '2.2.0' }, meters: ['known', 'typo'], rolloutId: 'r' });
    expect((await service.wait('r')).byCode).toEqual({ FW_UPDATE_SUCCESS: 1, FW_UNKNOWN_METER: 1 });
  });

  it('starts one rollout for two simultaneous requests with its id, refuses the id with other versions, and a meter already in a running rollout', async () => {
    const meter = port.add('m1', { rate: 256 });
    port.add('m2');
    const { service } = await openService();
    const request = { want: { comm: '2.2.0' }, meters: ['m1'], rolloutId: 'same' };
    const [a, b] = await Promise.all([service.start(request), service.start(request)]);
    expect(a.rolloutId).toBe('same');
    expect(b.rolloutId).toBe('same');
    await expect(service.start({ ...request, want: { comm: '2.1.0' } })).rejects.toMatchObject({ code: 'BAD_REQUEST', message: /other versions or meters/ });
    await expect(service.start({ want: { comm: '2.2.0' }, meters: ['m2', 'm1'], rolloutId: 'other' })).rejects.toMatchObject({
      code: 'BAD_REQUEST',
      message: /m1 is already in rollout same/,
    });
    expect((await service.wait('same')).byCode).toEqual({ FW_UPDATE_SUCCESS: 1 });
    expect(meter.offers).toHaveLength(1);
    expect((await service.rollouts()).map((r) => r.rolloutId)).toEqual(['same']);
  });

  it('keeps meters whose names sort above U+FFFF in UTF-8 across a restart', async () => {
    const name = 'meter-\u{1F50C}';
    port.add(name, { rate: 512 });
    let h = await openService();
    await h.service.start({ want: { comm: '2.2.0' }, meters: [name], rolloutId: 'r' });
    await port.receivedAtLeast(1024);
    await shutdown(h);
    opened.length = 0;
    h = await openService();
    expect((await h.journal.entries('r')).map((e) => e.meter)).toEqual([name]);
    expect((await h.service.wait('r')).byCode).toEqual({ FW_UPDATE_SUCCESS: 1 });
    expect(port.meters.get(name)?.offers).toHaveLength(1);
  });
});
