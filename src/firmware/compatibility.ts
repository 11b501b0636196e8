/**
 * Which communication-module and metrology firmware versions may run
 * together, and in which order to update a meter so that it never runs a
 * pair that may not. A mismatched pair is a known cause of commands the
 * actuator driver does not recognise, so every pair a meter would pass
 * through is checked, not only the final one.
 *
 * The rule (firmware-images/README.md, "Compatibility"): the pair
 * (comm C, metro M) is compatible when at least one good manifest speaks
 * about it, that is, is the manifest of comm C or of metro M, and every
 * manifest that speaks lists the other version in its compatibleWith. A
 * manifest that stays silent about a version is read as "not known to work":
 * when the two components' manifests disagree, the pair is refused and the
 * reason names the manifest to re-sign. The meter's current firmware often
 * has no manifest in the repository (it came from the factory); then the
 * target image's manifest alone decides.
 *
 * Pure: works on any FirmwareCatalog (the repository's good images, or a
 * list in tests).
 */
import { FirmwareError } from './errors.js';
import { compareVersions, compatibleVersions, isFirmwareVersion, otherTarget, type FirmwareManifest, type FirmwareTarget } from './manifest.js';

/** A verified image as compatibility sees it. */
export interface CatalogImage {
  /** The image's id in the repository (its folder, relative to the images folder). */
  id: string;
  manifest: FirmwareManifest;
}

/** The images whose manifests may be believed: only verified ones. */
export interface FirmwareCatalog {
  goodImages(): readonly CatalogImage[];
}

/** A catalog over a fixed list (tests, or a snapshot). */
export function catalogOf(images: readonly CatalogImage[]): FirmwareCatalog {
  const snapshot = [...images];
  return { goodImages: () => snapshot };
}

export interface FirmwarePair {
  comm: string;
  metro: string;
}

export type PairVerdict =
  | { compatible: true; /** The ids of the images whose manifests declare the pair. */ declaredBy: string[] }
  | { compatible: false; reason: string };

/** The firmware state of one meter; a RegisteredMeter from the mesh registry fits. */
export interface MeterFirmwareState {
  /** For messages. */
  endpoint?: string;
  /**
   * The meter's hardware model. When given, only images listing it are
   * used. The mesh registry does not record models yet: without one, images
   * for every model count, and a version offered for several models is
   * refused (MODEL_UNKNOWN) rather than guessed.
   */
  model?: string;
  firmware: Readonly<{ comm?: string; metro?: string }>;
}

export type WantedFirmware = Partial<Record<FirmwareTarget, string>>;

export interface UpdateStep {
  target: FirmwareTarget;
  from: string;
  to: string;
  imageId: string;
  manifest: FirmwareManifest;
  /** The step goes to a lower version (allowed; said so that a rollout can ask for confirmation). */
  downgrade: boolean;
  /** The meter's pair once this step is done. */
  after: FirmwarePair;
}

export interface UpdatePlan {
  endpoint?: string;
  from: FirmwarePair;
  to: FirmwarePair;
  /** In the order to apply them; empty when the meter already runs what is wanted. */
  steps: UpdateStep[];
}

function pairText(pair: FirmwarePair): string {
  return `comm ${pair.comm} with metro ${pair.metro}`;
}

function fits(manifest: FirmwareManifest, model: string | undefined): boolean {
  return model === undefined || manifest.models.includes(model);
}

/** Whether the pair may run on a meter (of `model`, when known), per the catalog's manifests. */
export function checkPair(pair: FirmwarePair, catalog: FirmwareCatalog, model?: string): PairVerdict {
  const speaking = catalog
    .goodImages()
    .filter((image) => fits(image.manifest, model) && image.manifest.version === pair[image.manifest.target])
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  if (speaking.length === 0) {
    const forModel = model === undefined ? '' : ` for model ${model}`;
    return { compatible: false, reason: `no verified manifest${forModel} is for comm ${pair.comm} or metro ${pair.metro}, so nothing declares them compatible` };
  }
  const dissent = speaking.filter((image) => !compatibleVersions(image.manifest).includes(pair[otherTarget(image.manifest.target)]));
  if (dissent.length === 0) return { compatible: true, declaredBy: speaking.map((i) => i.id) };
  const why = dissent.map((image) => {
    const m = image.manifest;
    return `${m.target} ${m.version} (${image.id}) lists ${otherTarget(m.target)} ${compatibleVersions(m).join(', ')} only`;
  });
  return { compatible: false, reason: why.join('; ') };
}

/**
 * Whether installing `image` on a meter running `firmware` leaves a
 * compatible pair. UNKNOWN_FIRMWARE when the other component's version is
 * not known.
 */
export function checkUpdate(firmware: MeterFirmwareState['firmware'], image: CatalogImage, catalog: FirmwareCatalog, model?: string): PairVerdict {
  const other = otherTarget(image.manifest.target);
  const otherVersion = firmware[other];
  if (otherVersion === undefined) {
    throw new FirmwareError('UNKNOWN_FIRMWARE', `the meter's ${other} firmware version is not known; read it before updating ${image.manifest.target}`, image.id);
  }
  const version = image.manifest.version;
  const pair: FirmwarePair = image.manifest.target === 'comm' ? { comm: version, metro: otherVersion } : { comm: otherVersion, metro: version };
  return checkPair(pair, catalog, model);
}

/** The one good image for target and version on this model, or a refusal. */
function imageFor(target: FirmwareTarget, version: string, catalog: FirmwareCatalog, model: string | undefined, meter: string): CatalogImage {
  const all = catalog.goodImages().filter((i) => i.manifest.target === target && i.manifest.version === version);
  const candidates = all.filter((i) => fits(i.manifest, model));
  const first = candidates[0];
  if (first === undefined) {
    const others = all.length === 0 ? '' : `; there are images for ${[...new Set(all.flatMap((i) => i.manifest.models))].join(', ')}`;
    const forModel = model === undefined ? '' : ` for model ${model}`;
    throw new FirmwareError('NO_IMAGE', `${meter}: no verified ${target} ${version} image${forModel}${others}`);
  }
  if (candidates.length > 1) {
    const ids = candidates.map((i) => i.id).join(', ');
    if (model === undefined) throw new FirmwareError('MODEL_UNKNOWN', `${meter}: ${target} ${version} is offered by ${ids} for different models, and the meter's model is not known`);
    throw new FirmwareError('DUPLICATE_IMAGE', `${meter}: ${target} ${version} for model ${model} is offered by ${ids}`);
  }
  return first;
}

/**
 * Plans the updates that take a meter to the wanted versions, refusing any
 * plan in which the meter would run an incompatible pair, after the last
 * step or between the two. When both components change and both orders are
 * safe, the communication module goes first: it carries the transfer of the
 * metrology image, and the newer comm firmware is the one more likely to
 * know both metrology versions.
 *
 * Throws FirmwareError: UNKNOWN_FIRMWARE (a current version is not known),
 * NO_IMAGE, MODEL_UNKNOWN, DUPLICATE_IMAGE, or INCOMPATIBLE naming the pair
 * and the manifests that do not declare it.
 */
export function planUpdate(meter: MeterFirmwareState, wanted: WantedFirmware, catalog: FirmwareCatalog): UpdatePlan {
  const name = meter.endpoint === undefined ? 'the meter' : `meter ${meter.endpoint}`;
  const { comm, metro } = meter.firmware;
  if (comm === undefined || metro === undefined) {
    const missing = [comm === undefined ? 'comm' : undefined, metro === undefined ? 'metro' : undefined].filter((t) => t !== undefined).join(' and ');
    throw new FirmwareError('UNKNOWN_FIRMWARE', `${name}: its ${missing} firmware version is not known (registration fw_comm / fw_metro, or a read); no pair can be checked`);
  }
  const from: FirmwarePair = { comm, metro };
  const changing: FirmwareTarget[] = (['comm', 'metro'] as const).filter((t) => wanted[t] !== undefined && wanted[t] !== from[t]);
  const to: FirmwarePair = { comm: wanted.comm ?? comm, metro: wanted.metro ?? metro };
  const plan: UpdatePlan = { from, to, steps: [] };
  if (meter.endpoint !== undefined) plan.endpoint = meter.endpoint;
  if (changing.length === 0) return plan;

  const images = new Map(changing.map((t) => [t, imageFor(t, to[t], catalog, meter.model, name)] as const));
  const stepOf = (target: FirmwareTarget, before: FirmwarePair): UpdateStep => {
    const image = images.get(target) as CatalogImage;
    const after: FirmwarePair = target === 'comm' ? { comm: to.comm, metro: before.metro } : { comm: before.comm, metro: to.metro };
    const older = isFirmwareVersion(from[target]) && compareVersions(to[target], from[target]) < 0;
    return { target, from: from[target], to: to[target], imageId: image.id, manifest: image.manifest, downgrade: older, after };
  };

  const final = checkPair(to, catalog, meter.model);
  if (!final.compatible) {
    const what = changing.map((t) => `${t} ${to[t]}`).join(' and ');
    throw new FirmwareError('INCOMPATIBLE', `${name}: ${what} would leave it with ${pairText(to)}, which are not compatible: ${final.reason}`, images.get(changing[0] as FirmwareTarget)?.id);
  }
  if (changing.length === 1) {
    plan.steps = [stepOf(changing[0] as FirmwareTarget, from)];
    return plan;
  }

  // Both change: the pair between the two steps must be compatible too.
  const refusals: string[] = [];
  for (const first of ['comm', 'metro'] as const) {
    const step1 = stepOf(first, from);
    const between = checkPair(step1.after, catalog, meter.model);
    if (between.compatible) {
      plan.steps = [step1, stepOf(otherTarget(first), step1.after)];
      return plan;
    }
    refusals.push(`${first} first passes through ${pairText(step1.after)}: ${between.reason}`);
  }
  throw new FirmwareError('INCOMPATIBLE', `${name}: no order takes it from ${pairText(from)} to ${pairText(to)} through compatible pairs only; ${refusals.join('; ')}`);
}
