import { readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  catalogOf,
  checkPair,
  checkUpdate,
  planUpdate,
  type CatalogImage,
  type FirmwareCatalog,
  type FirmwarePair,
  type MeterFirmwareState,
  type WantedFirmware,
} from '../../src/firmware/compatibility.js';
import { FirmwareError } from '../../src/firmware/errors.js';
import type { FirmwareManifest, FirmwareTarget } from '../../src/firmware/manifest.js';
import { openFirmwareRepository, type FirmwareRepository } from '../../src/firmware/repository.js';
import type { RegisteredMeter } from '../../src/mesh/registry.js';

const SHIPPED = path.resolve('firmware-images');

/** An image as compatibility sees it: no signature, no bytes. */
function image(target: FirmwareTarget, version: string, compatibleWith: string[], models = ['AMX-100', 'AMX-200'], id?: string): CatalogImage {
  const manifest: FirmwareManifest = {
    format: 'ami-firmware-manifest/1',
    vendor: 'acme',
    target,
    models,
    version,
    size: 1,
    sha256: '0'.repeat(64),
    compatibleWith: { [target === 'comm' ? 'metro' : 'comm']: compatibleWith },
  };
  return { id: id ?? `acme/${target}-${version}`, manifest };
}

function meter(comm: string | undefined, metro: string | undefined, model?: string): MeterFirmwareState {
  const firmware: { comm?: string; metro?: string } = {};
  if (comm !== undefined) firmware.comm = comm;
  if (metro !== undefined) firmware.metro = metro;
  return { endpoint: 'm-0001', firmware, ...(model === undefined ? {} : { model }) };
}

function refusal(f: () => unknown): FirmwareError {
  try {
    f();
  } catch (err) {
    if (err instanceof FirmwareError) return err;
    throw err;
  }
  throw new Error('expected a FirmwareError');
}

let shipped: FirmwareRepository;

beforeAll(async () => {
  shipped = await openFirmwareRepository({
    root: path.join(SHIPPED, 'test-images'),
    trustAnchorsPem: [readFileSync(path.join(SHIPPED, 'test-ca/root-ca.pem'), 'utf8')],
  });
  expect(shipped.goodImages()).toHaveLength(4);
});

describe('the shipped test images (comm 2.1.0, 2.2.0; metro 5.0.0, 5.1.0)', () => {
  it('an update to an incompatible pair is refused with INCOMPATIBLE, naming the versions', () => {
    const error = refusal(() => planUpdate(meter('2.1.0', '5.0.0'), { metro: '5.1.0' }, shipped));
    expect(error.code).toBe('INCOMPATIBLE');
    expect(error.message).toMatch(/^meter m-0001: metro 5\.1\.0 would leave it with comm 2\.1\.0 with metro 5\.1\.0, which are not compatible/);
    // Both manifests that speak say no, and each is named.
    expect(error.message).toContain('comm 2.1.0 (acme/comm-2.1.0) lists metro 5.0.0 only');
    expect(error.message).toContain('metro 5.1.0 (acme/metro-5.1.0) lists comm 2.2.0 only');
    expect(error.imageId).toBe('acme/metro-5.1.0');
  });

  it('when both must change, the plan updates comm first (metro first would pass through an incompatible pair)', () => {
    const plan = planUpdate(meter('2.1.0', '5.0.0'), { comm: '2.2.0', metro: '5.1.0' }, shipped);
    expect(plan.steps.map((s) => [s.target, s.from, s.to, s.imageId])).toEqual([
      ['comm', '2.1.0', '2.2.0', 'acme/comm-2.2.0'],
      ['metro', '5.0.0', '5.1.0', 'acme/metro-5.1.0'],
    ]);
    expect(plan.steps.map((s) => s.after)).toEqual([
      { comm: '2.2.0', metro: '5.0.0' },
      { comm: '2.2.0', metro: '5.1.0' },
    ]);
    expect(plan.from).toEqual({ comm: '2.1.0', metro: '5.0.0' });
    expect(plan.to).toEqual({ comm: '2.2.0', metro: '5.1.0' });
    expect(plan.steps.every((s) => !s.downgrade)).toBe(true);
  });

  it('going back down, the plan updates metro first, and says they are downgrades', () => {
    const plan = planUpdate(meter('2.2.0', '5.1.0'), { comm: '2.1.0', metro: '5.0.0' }, shipped);
    expect(plan.steps.map((s) => `${s.target} ${s.to}`)).toEqual(['metro 5.0.0', 'comm 2.1.0']);
    expect(plan.steps.map((s) => s.downgrade)).toEqual([true, true]);
  });

  it('a single compatible update is one step', () => {
    const plan = planUpdate(meter('2.1.0', '5.0.0'), { comm: '2.2.0' }, shipped);
    expect(plan.steps).toHaveLength(1);
    expect(plan.steps[0]?.manifest.version).toBe('2.2.0');
    expect(plan.steps[0]?.after).toEqual({ comm: '2.2.0', metro: '5.0.0' });
  });

  it('a meter already on the wanted versions needs no step', () => {
    expect(planUpdate(meter('2.2.0', '5.1.0'), { comm: '2.2.0', metro: '5.1.0' }, shipped).steps).toEqual([]);
    expect(planUpdate(meter('2.2.0', '5.1.0'), {}, shipped).steps).toEqual([]);
  });

  it('one wanted version equal to the current one counts as one change', () => {
    const plan = planUpdate(meter('2.1.0', '5.0.0'), { comm: '2.2.0', metro: '5.0.0' }, shipped);
    expect(plan.steps.map((s) => s.target)).toEqual(['comm']);
  });

  it('checkPair and checkUpdate give the verdict for one pair', () => {
    expect(checkPair({ comm: '2.2.0', metro: '5.1.0' }, shipped)).toEqual({ compatible: true, declaredBy: ['acme/comm-2.2.0', 'acme/metro-5.1.0'] });
    expect(checkPair({ comm: '2.1.0', metro: '5.1.0' }, shipped).compatible).toBe(false);
    const metro51 = shipped.goodImages().find((i) => i.id === 'acme/metro-5.1.0');
    if (metro51 === undefined) throw new Error('metro 5.1.0 is missing');
    expect(checkUpdate({ comm: '2.2.0' }, metro51, shipped).compatible).toBe(true);
    expect(checkUpdate({ comm: '2.1.0' }, metro51, shipped).compatible).toBe(false);
    expect(refusal(() => checkUpdate({ metro: '5.0.0' }, metro51, shipped)).code).toBe('UNKNOWN_FIRMWARE');
  });

  it('a meter from the mesh registry can be planned for as it is', () => {
    const registered = { id: 'x', endpoint: 'm-0002', firmware: { comm: '2.1.0', metro: '5.0.0' } } as unknown as RegisteredMeter;
    // Compile-time: a RegisteredMeter is a MeterFirmwareState.
    const state: MeterFirmwareState = registered;
    expect(planUpdate(state, { comm: '2.2.0' }, shipped).endpoint).toBe('m-0002');
  });

  it('quarantined images do not count', () => {
    const catalog: FirmwareCatalog = { goodImages: () => shipped.goodImages().filter((i) => i.id !== 'acme/comm-2.2.0') };
    expect(refusal(() => planUpdate(meter('2.1.0', '5.0.0'), { comm: '2.2.0' }, catalog)).code).toBe('NO_IMAGE');
  });
});

describe('compatibility rules', () => {
  it('no order works: both intermediate pairs incompatible, the final one compatible → INCOMPATIBLE', () => {
    // comm 1.0 ↔ metro 1.0, comm 2.0 ↔ metro 2.0, nothing across.
    const catalog = catalogOf([image('comm', '1.0', ['1.0']), image('comm', '2.0', ['2.0']), image('metro', '1.0', ['1.0']), image('metro', '2.0', ['2.0'])]);
    expect(checkPair({ comm: '2.0', metro: '2.0' }, catalog).compatible).toBe(true);
    const error = refusal(() => planUpdate(meter('1.0', '1.0'), { comm: '2.0', metro: '2.0' }, catalog));
    expect(error.code).toBe('INCOMPATIBLE');
    expect(error.message).toMatch(/no order takes it from comm 1\.0 with metro 1\.0 to comm 2\.0 with metro 2\.0/);
    expect(error.message).toMatch(/comm first passes through comm 2\.0 with metro 1\.0/);
    expect(error.message).toMatch(/metro first passes through comm 1\.0 with metro 2\.0/);
  });

  it('a wanted pair that is itself incompatible is refused before any order is tried', () => {
    const catalog = catalogOf([image('comm', '2.0', ['1.0']), image('metro', '2.0', ['1.0'])]);
    const error = refusal(() => planUpdate(meter('1.0', '1.0'), { comm: '2.0', metro: '2.0' }, catalog));
    expect(error.code).toBe('INCOMPATIBLE');
    expect(error.message).toMatch(/comm 2\.0 and metro 2\.0 would leave it with comm 2\.0 with metro 2\.0, which are not compatible/);
  });

  it('both orders safe: comm goes first', () => {
    const catalog = catalogOf([image('comm', '2.0', ['1.0', '2.0']), image('metro', '2.0', ['1.0', '2.0'])]);
    expect(planUpdate(meter('1.0', '1.0'), { comm: '2.0', metro: '2.0' }, catalog).steps.map((s) => s.target)).toEqual(['comm', 'metro']);
  });

  it('the manifest of the current version speaks too: when it disagrees, the pair is refused', () => {
    // The new comm says it works with metro 1.0; metro 1.0's own manifest does not know comm 3.0.
    const catalog = catalogOf([image('comm', '3.0', ['1.0']), image('metro', '1.0', ['2.0'])]);
    const verdict = checkPair({ comm: '3.0', metro: '1.0' }, catalog);
    expect(verdict).toEqual({ compatible: false, reason: 'metro 1.0 (acme/metro-1.0) lists comm 2.0 only' });
    // Without a manifest for metro 1.0 (factory firmware), the new comm's manifest alone decides.
    expect(checkPair({ comm: '3.0', metro: '1.0' }, catalogOf([image('comm', '3.0', ['1.0'])])).compatible).toBe(true);
  });

  it('a pair no manifest speaks about is not compatible', () => {
    const verdict = checkPair({ comm: '9.0', metro: '9.0' }, catalogOf([image('comm', '1.0', ['1.0'])]));
    expect(verdict.compatible).toBe(false);
    if (!verdict.compatible) expect(verdict.reason).toMatch(/no verified manifest is for comm 9\.0 or metro 9\.0/);
  });

  it('versions match as written', () => {
    const catalog = catalogOf([image('comm', '2.0.0', ['1.0.0'])]);
    expect(checkPair({ comm: '2.0.0', metro: '1.0.0' }, catalog).compatible).toBe(true);
    expect(checkPair({ comm: '2.0.0', metro: '1.0' }, catalog).compatible).toBe(false);
  });

  it('unknown current versions: UNKNOWN_FIRMWARE', () => {
    const catalog = catalogOf([image('comm', '2.0', ['1.0'])]);
    const error = refusal(() => planUpdate(meter('1.0', undefined), { comm: '2.0' }, catalog));
    expect(error.code).toBe('UNKNOWN_FIRMWARE');
    expect(error.message).toMatch(/its metro firmware version is not known/);
    expect(refusal(() => planUpdate(meter(undefined, undefined), { comm: '2.0' }, catalog)).message).toMatch(/comm and metro/);
  });

  it('no image for the wanted version: NO_IMAGE', () => {
    const error = refusal(() => planUpdate(meter('1.0', '1.0'), { comm: '4.0' }, catalogOf([image('comm', '2.0', ['1.0'])])));
    expect(error.code).toBe('NO_IMAGE');
    expect(error.message).toBe('meter m-0001: no verified comm 4.0 image');
  });

  it('the meter\'s model, when known, selects the images and the manifests that speak', () => {
    const catalog = catalogOf([
      image('comm', '2.0', ['1.0'], ['AMX-100'], 'acme/amx-100/comm-2.0'),
      image('comm', '2.0', ['1.5'], ['AMX-200'], 'acme/amx-200/comm-2.0'),
      image('metro', '1.0', ['2.0'], ['AMX-100']),
    ]);
    expect(planUpdate(meter('1.0', '1.0', 'AMX-100'), { comm: '2.0' }, catalog).steps[0]?.imageId).toBe('acme/amx-100/comm-2.0');
    // For AMX-200 only its own comm 2.0 speaks, and it does not list metro 1.0.
    expect(refusal(() => planUpdate(meter('1.0', '1.0', 'AMX-200'), { comm: '2.0' }, catalog)).code).toBe('INCOMPATIBLE');
    expect(planUpdate(meter('1.0', '1.5', 'AMX-200'), { comm: '2.0' }, catalog).steps[0]?.imageId).toBe('acme/amx-200/comm-2.0');
    const noImage = refusal(() => planUpdate(meter('1.0', '1.0', 'AMX-300'), { comm: '2.0' }, catalog));
    expect(noImage.code).toBe('NO_IMAGE');
    expect(noImage.message).toMatch(/for model AMX-300; there are images for AMX-100, AMX-200/);
    // Without the model, two images fit and nothing tells them apart.
    expect(refusal(() => planUpdate(meter('1.0', '1.0'), { comm: '2.0' }, catalog)).code).toBe('MODEL_UNKNOWN');
  });

  it('property: every plan passes only through compatible pairs, and a refusal means no order works', () => {
    const versions = ['1', '2', '3'].map((v) => `${v}.0`);
    const arbImage = (target: FirmwareTarget) =>
      fc.record({ version: fc.constantFrom(...versions), compat: fc.subarray(versions, { minLength: 1 }) }).map((r) => image(target, r.version, r.compat));
    const arbCatalog = fc
      .tuple(fc.array(arbImage('comm'), { maxLength: 3 }), fc.array(arbImage('metro'), { maxLength: 3 }))
      // One image per target and version, as the repository guarantees.
      .map(([c, m]) => [...new Map([...c, ...m].map((i) => [i.id, i])).values()]);
    const arbWanted = fc.record({ comm: fc.option(fc.constantFrom(...versions), { nil: undefined }), metro: fc.option(fc.constantFrom(...versions), { nil: undefined }) });
    fc.assert(
      fc.property(arbCatalog, fc.constantFrom(...versions), fc.constantFrom(...versions), arbWanted, (images, comm, metro, rawWanted) => {
        const catalog = catalogOf(images);
        const wanted: WantedFirmware = {};
        if (rawWanted.comm !== undefined) wanted.comm = rawWanted.comm;
        if (rawWanted.metro !== undefined) wanted.metro = rawWanted.metro;
        const from: FirmwarePair = { comm, metro };
        const to: FirmwarePair = { comm: wanted.comm ?? comm, metro: wanted.metro ?? metro };
        const ok = (p: FirmwarePair): boolean => checkPair(p, catalog).compatible;
        const has = (t: FirmwareTarget, v: string): boolean => images.some((i) => i.manifest.target === t && i.manifest.version === v);
        let plan;
        try {
          plan = planUpdate(meter(comm, metro), wanted, catalog);
        } catch (err) {
          expect(err).toBeInstanceOf(FirmwareError);
          const code = (err as FirmwareError).code;
          if (code === 'NO_IMAGE') {
            expect((to.comm !== comm && !has('comm', to.comm)) || (to.metro !== metro && !has('metro', to.metro))).toBe(true);
            return;
          }
          expect(code).toBe('INCOMPATIBLE');
          // Brute force: no sequence of the changing targets is safe.
          const commFirst = ok({ comm: to.comm, metro }) && ok(to);
          const metroFirst = ok({ comm, metro: to.metro }) && ok(to);
          const changes = (to.comm !== comm ? 1 : 0) + (to.metro !== metro ? 1 : 0);
          if (changes === 1) expect(ok(to)).toBe(false);
          else expect(commFirst || metroFirst).toBe(false);
          return;
        }
        let pair = from;
        for (const step of plan.steps) {
          expect(step.from).toBe(pair[step.target]);
          pair = step.after;
          expect(ok(pair)).toBe(true);
        }
        expect(pair).toEqual(to);
      }),
      { numRuns: 1000 },
    );
  });
});
