/**
 * Firmware manifests: what an image is for and what it may be paired with.
 * The format is specified for the utility's firmware team in
 * firmware-images/README.md; keep the two in step (and
 * scripts/sign-firmware.mjs, which writes manifests without this module).
 *
 * Pure: no files, no keys. The manifest is read strictly (unknown fields,
 * wrong types and anything outside the documented character sets are refused)
 * and must be stored in its canonical form, so that the bytes under the
 * signature are a function of the content: no duplicate keys, no second
 * spelling of the same manifest, and what a person reads in manifest.json is
 * exactly what the gateway acts on.
 */
import { FirmwareError } from './errors.js';

/** The value of `format`; a later, incompatible format gets a new one. */
export const MANIFEST_FORMAT = 'ami-firmware-manifest/1';

/** The two firmware components of a meter. */
export const FIRMWARE_TARGETS = ['comm', 'metro'] as const;
/** `comm`: the communication module; `metro`: the metrology board. */
export type FirmwareTarget = (typeof FIRMWARE_TARGETS)[number];

/** A manifest is a few hundred bytes; anything much larger is not one. */
export const MAX_MANIFEST_BYTES = 16 * 1024;
export const MAX_MODELS = 64;
export const MAX_COMPATIBLE_VERSIONS = 256;
export const MAX_DESCRIPTION_CHARS = 1024;

export interface FirmwareManifest {
  format: typeof MANIFEST_FORMAT;
  /** Who makes the meters (informational, and the first folder of the conventional layout). */
  vendor: string;
  target: FirmwareTarget;
  /** The hardware models the image is built for (at least one, no repeats). */
  models: string[];
  version: string;
  /** Image size in bytes. */
  size: number;
  /** SHA-256 of the image, 64 lower-case hex digits. */
  sha256: string;
  /**
   * The versions of the other component this image works with, under that
   * component's name: a comm image has `{ metro: [...] }`, a metro image
   * `{ comm: [...] }`. Naming the component makes the list unambiguous to a
   * reader who does not know which way round it goes.
   */
  compatibleWith: Partial<Record<FirmwareTarget, string[]>>;
  /** Free text for people (release notes); never acted on. */
  description?: string;
}

/** The component a manifest's compatibleWith list speaks about. */
export function otherTarget(target: FirmwareTarget): FirmwareTarget {
  return target === 'comm' ? 'metro' : 'comm';
}

/** The versions of the other component the manifest declares compatible. */
export function compatibleVersions(manifest: FirmwareManifest): readonly string[] {
  return manifest.compatibleWith[otherTarget(manifest.target)] ?? [];
}

// ---------------------------------------------------------------------------
// Versions

/**
 * Two to four dot-separated decimal numbers of up to six digits, written as
 * the meter reports them (leading zeros allowed). Versions are matched as
 * written, so a manifest must spell a version exactly as meters report it in
 * fw_comm / fw_metro; `compareVersions` orders them numerically.
 */
const VERSION_RE = /^[0-9]{1,6}(?:\.[0-9]{1,6}){1,3}$/;

export function isFirmwareVersion(value: unknown): value is string {
  return typeof value === 'string' && VERSION_RE.test(value);
}

/**
 * Orders two versions numerically, component by component, a missing
 * component counting as 0 ('2.1' and '2.1.0' compare equal, though they do
 * not match). Throws BAD_MANIFEST when either is not a version.
 */
export function compareVersions(a: string, b: string): number {
  for (const v of [a, b]) {
    if (!VERSION_RE.test(v)) throw new FirmwareError('BAD_MANIFEST', `${show(v)} is not a firmware version`);
  }
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

// ---------------------------------------------------------------------------
// Parsing

/** Vendor and model names: what fits a folder name and a table cell. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
/** Printable ASCII only: then the canonical form is the same in every JSON library. */
const PRINTABLE_ASCII_RE = /^[\x20-\x7e]*$/;

const REQUIRED_KEYS = ['compatibleWith', 'format', 'models', 'sha256', 'size', 'target', 'vendor', 'version'] as const;
const OPTIONAL_KEYS = ['description'] as const;
const KNOWN_KEYS = new Set<string>([...REQUIRED_KEYS, ...OPTIONAL_KEYS]);

function bad(message: string): never {
  throw new FirmwareError('BAD_MANIFEST', message);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A value for a message: short, and never the raw bytes of something huge. */
function show(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? typeof value;
  } catch {
    text = typeof value;
  }
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}

function nameList(value: unknown, field: string, max: number, check: (item: unknown) => boolean, what: string): string[] {
  if (!Array.isArray(value)) bad(`${field} must be an array of ${what}`);
  if (value.length === 0) bad(`${field} must not be empty`);
  if (value.length > max) bad(`${field} has ${value.length} entries; at most ${max}`);
  const seen = new Set<string>();
  value.forEach((item: unknown, i) => {
    if (!check(item)) bad(`${field}[${i}] is ${show(item)}, not ${what.replace(/s$/, '')}`);
    const text = item as string;
    if (seen.has(text)) bad(`${field} lists ${JSON.stringify(text)} twice`);
    seen.add(text);
  });
  return [...(value as string[])];
}

/**
 * Checks a parsed JSON value against the manifest schema (not the canonical
 * form: that is a property of bytes). Returns a fresh object holding only the
 * manifest's fields. Throws only FirmwareError BAD_MANIFEST.
 */
export function validateManifest(value: unknown): FirmwareManifest {
  if (!isPlainObject(value)) bad('the manifest must be a JSON object');
  for (const key of Object.keys(value)) {
    if (!KNOWN_KEYS.has(key)) bad(`unknown field ${show(key)}`);
  }
  for (const key of REQUIRED_KEYS) {
    if (!Object.hasOwn(value, key)) bad(`field "${key}" is missing`);
  }
  if (value.format !== MANIFEST_FORMAT) bad(`format is ${show(value.format)}; this gateway reads ${JSON.stringify(MANIFEST_FORMAT)}`);
  const vendor = value.vendor;
  if (typeof vendor !== 'string' || !NAME_RE.test(vendor)) bad(`vendor is ${show(vendor)}; 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit`);
  const target = value.target;
  if (target !== 'comm' && target !== 'metro') bad(`target is ${show(target)}; expected "comm" or "metro"`);
  const models = nameList(value.models, 'models', MAX_MODELS, (m) => typeof m === 'string' && NAME_RE.test(m), 'model names');
  const version = value.version;
  if (!isFirmwareVersion(version)) bad(`version is ${show(version)}; expected 2 to 4 dot-separated numbers, e.g. "2.1.0"`);
  const size = value.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 1) bad(`size is ${show(size)}; expected a whole number of bytes, at least 1`);
  const sha256 = value.sha256;
  if (typeof sha256 !== 'string' || !SHA256_RE.test(sha256)) bad('sha256 must be 64 lower-case hex digits');

  const other = otherTarget(target);
  const compat = value.compatibleWith;
  if (!isPlainObject(compat)) bad(`compatibleWith must be an object: { "${other}": [versions] }`);
  const compatKeys = Object.keys(compat);
  if (compatKeys.length !== 1 || compatKeys[0] !== other) {
    bad(`compatibleWith of a ${target} image must have exactly one field, "${other}" (the versions of the other component); it has ${show(compatKeys)}`);
  }
  const versions = nameList(compat[other], `compatibleWith.${other}`, MAX_COMPATIBLE_VERSIONS, isFirmwareVersion, 'versions');

  const manifest: FirmwareManifest = {
    format: MANIFEST_FORMAT,
    vendor,
    target,
    models,
    version,
    size,
    sha256,
    compatibleWith: { [other]: versions },
  };
  if (Object.hasOwn(value, 'description')) {
    const description = value.description;
    if (typeof description !== 'string' || description.length > MAX_DESCRIPTION_CHARS || !PRINTABLE_ASCII_RE.test(description)) {
      bad(`description must be printable ASCII text of at most ${MAX_DESCRIPTION_CHARS} characters`);
    }
    manifest.description = description;
  }
  return manifest;
}

// ---------------------------------------------------------------------------
// Canonical form

function sortKeysDeep(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeysDeep);
  if (isPlainObject(value)) {
    const out: Record<string, unknown> = {};
    // Default sort: by UTF-16 code units, as JSON canonicalisation (RFC 8785) does.
    for (const key of Object.keys(value).sort()) out[key] = sortKeysDeep(value[key]);
    return out;
  }
  return value;
}

/**
 * The canonical text of a manifest: keys sorted at every level, two-space
 * indentation, one array element per line, a final newline. It is what
 * `JSON.stringify(sorted, null, 2) + '\n'` writes in JavaScript and
 * `json.dumps(m, indent=2, sort_keys=True) + '\n'` in Python; with the
 * manifest's printable-ASCII strings and whole numbers no JSON library has a
 * choice left. Readable on purpose: people review manifests in git.
 */
export function canonicalManifestText(manifest: FirmwareManifest): string {
  return `${JSON.stringify(sortKeysDeep(validateManifest(manifest)), null, 2)}\n`;
}

/** The canonical bytes: what manifest.json holds and what the signature covers. */
export function canonicalManifestBytes(manifest: FirmwareManifest): Buffer {
  return Buffer.from(canonicalManifestText(manifest), 'utf8');
}

/**
 * Parses manifest.json strictly: at most MAX_MANIFEST_BYTES of UTF-8 JSON,
 * matching the schema, and byte for byte in canonical form. Throws only
 * FirmwareError BAD_MANIFEST.
 */
export function parseManifest(bytes: Uint8Array): FirmwareManifest {
  if (!(bytes instanceof Uint8Array)) bad('the manifest must be bytes');
  if (bytes.length > MAX_MANIFEST_BYTES) bad(`the manifest is ${bytes.length} bytes; at most ${MAX_MANIFEST_BYTES}`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    bad('the manifest is not UTF-8 text');
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    bad('the manifest is not JSON');
  }
  const manifest = validateManifest(value);
  if (canonicalManifestText(manifest) !== text) {
    bad('the manifest is not in canonical form (keys sorted, two-space indentation, final newline, nothing else); write it with scripts/sign-firmware.mjs');
  }
  return manifest;
}

/** One line naming an image for messages: "comm 2.1.0 (AM550, AM560)". */
export function describeManifest(manifest: FirmwareManifest): string {
  return `${manifest.target} ${manifest.version} (${manifest.models.join(', ')})`;
}
