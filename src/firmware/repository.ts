/**
 * The gateway's firmware images: a folder tree (firmware-images/README.md,
 * "Layout") read and verified as a whole. Every image is verified when the
 * repository loads and again, from disk, right before it is sent; an image
 * that fails either time is quarantined with the reason: it stays listed, so
 * that an operator sees why it is not offered, and it is never handed out.
 *
 * Only good images take part in compatibility decisions (the repository is a
 * FirmwareCatalog): an unverified manifest says nothing about which versions
 * go together.
 */
import type { Dirent } from 'node:fs';
import { open, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { CatalogImage, FirmwareCatalog } from './compatibility.js';
import { asFirmwareError, FirmwareError, type FirmwareErrorCode } from './errors.js';
import { IMAGE_FILE, IMAGE_FOLDER_FILES, MANIFEST_FILE, SIGNATURE_FILE, SIGNER_FILE } from './layout.js';
import { MAX_MANIFEST_BYTES, validateManifest, type FirmwareManifest } from './manifest.js';
import { verifyImage, verifyManifest, type FirmwareSigner } from './verify.js';

/** Default cap on one image: meter firmware is hundreds of KB; this leaves room without reading anything huge. */
export const DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024;
/** An RSA signature is at most 2 KB (16384-bit key). */
const MAX_SIGNATURE_BYTES = 4 * 1024;
const MAX_SIGNER_PEM_BYTES = 64 * 1024;
/** How deep below the images folder image folders are looked for (the conventional layout uses 2). */
export const MAX_FOLDER_DEPTH = 6;

export interface GoodFirmwareImage extends CatalogImage {
  status: 'good';
  /** The image folder (absolute). */
  dir: string;
  signer: FirmwareSigner;
  /** When the image was last verified (load or send), ISO 8601. */
  verifiedAt: string;
}

export interface QuarantinedFirmwareImage {
  status: 'quarantined';
  id: string;
  dir: string;
  code: FirmwareErrorCode;
  /** Why, for people: the FirmwareError message. */
  reason: string;
  /**
   * What manifest.json claims, when it can be read at all: for listings
   * only, so that an operator can tell which image this was. Not verified:
   * never acted on.
   */
  claimed?: FirmwareManifest;
  quarantinedAt: string;
}

export type FirmwareImage = GoodFirmwareImage | QuarantinedFirmwareImage;

/** An image ready to send: the bytes are those just verified, so send these and not a second read of the file. */
export interface ImageToSend {
  id: string;
  manifest: FirmwareManifest;
  signer: FirmwareSigner;
  bytes: Buffer;
}

export interface FirmwareRepositoryOptions {
  /** The images folder. */
  root: string;
  /** The utility's root CA certificates (PEM texts). Empty: every image is quarantined (UNTRUSTED_CHAIN). */
  trustAnchorsPem: readonly string[];
  /** The clock for certificate validity; default the system clock. */
  now?: () => Date;
  maxImageBytes?: number;
}

interface FolderResult {
  manifestBytes: Buffer;
  manifest: FirmwareManifest;
  signer: FirmwareSigner;
  bytes: Buffer;
}

export class FirmwareRepository implements FirmwareCatalog {
  readonly root: string;
  readonly #trustAnchorsPem: readonly string[];
  readonly #now: () => Date;
  readonly #maxImageBytes: number;
  /** By id, in id order. */
  #images = new Map<string, FirmwareImage>();
  /** The manifest bytes verified for each good image: verifyBeforeSend insists on the same. */
  #verifiedManifests = new Map<string, Buffer>();

  constructor(opts: FirmwareRepositoryOptions) {
    this.root = path.resolve(opts.root);
    this.#trustAnchorsPem = [...opts.trustAnchorsPem];
    this.#now = opts.now ?? (() => new Date());
    this.#maxImageBytes = opts.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES;
  }

  /**
   * (Re)reads the images folder and verifies every image folder in it.
   * Replaces what was loaded before. Throws BAD_REPOSITORY when the images
   * folder itself cannot be read; a bad image never throws, it is quarantined.
   */
  async load(): Promise<readonly FirmwareImage[]> {
    const folders = await findImageFolders(this.root);
    const images = new Map<string, FirmwareImage>();
    const verified = new Map<string, Buffer>();
    for (const id of folders) {
      const dir = path.join(this.root, ...id.split('/'));
      const at = this.#now();
      try {
        const result = await this.#verifyFolder(dir, id, at);
        images.set(id, { status: 'good', id, dir, manifest: result.manifest, signer: result.signer, verifiedAt: at.toISOString() });
        verified.set(id, result.manifestBytes);
      } catch (err) {
        images.set(id, await quarantined(id, dir, asFirmwareError(err, 'BAD_MANIFEST', 'verification', id), at));
      }
    }
    for (const [id, error] of findDuplicates(images)) {
      const image = images.get(id);
      if (image !== undefined) images.set(id, await quarantined(id, image.dir, error, this.#now()));
      verified.delete(id);
    }
    this.#images = images;
    this.#verifiedManifests = verified;
    return this.list();
  }

  /** Every image found, good and quarantined, in id order. */
  list(): readonly FirmwareImage[] {
    return [...this.#images.values()];
  }

  get(id: string): FirmwareImage | undefined {
    return this.#images.get(id);
  }

  goodImages(): readonly GoodFirmwareImage[] {
    return this.list().filter((i): i is GoodFirmwareImage => i.status === 'good');
  }

  quarantinedImages(): readonly QuarantinedFirmwareImage[] {
    return this.list().filter((i): i is QuarantinedFirmwareImage => i.status === 'quarantined');
  }

  /**
   * Verifies an image again from disk, right before it is sent: signer chain
   * at the current time, signature, manifest (which must be the one verified
   * at load: CHANGED_ON_DISK otherwise, as a plan made from the old one may
   * no longer hold), size and SHA-256. Returns the verified bytes. On any
   * failure the image is quarantined until the next load() and the
   * FirmwareError is thrown; UNKNOWN_IMAGE and QUARANTINED for an image that
   * is not good to begin with.
   */
  async verifyBeforeSend(id: string): Promise<ImageToSend> {
    const image = this.#images.get(id);
    if (image === undefined) throw new FirmwareError('UNKNOWN_IMAGE', `no image ${JSON.stringify(id)} in ${this.root}`, id);
    if (image.status === 'quarantined') throw new FirmwareError('QUARANTINED', `image ${id} is quarantined: ${image.code}: ${image.reason}`, id);
    const at = this.#now();
    try {
      const result = await this.#verifyFolder(image.dir, id, at);
      const loaded = this.#verifiedManifests.get(id);
      if (loaded === undefined || !loaded.equals(result.manifestBytes)) {
        throw new FirmwareError('CHANGED_ON_DISK', `${MANIFEST_FILE} of ${id} was replaced after the repository was loaded; reload the repository`, id);
      }
      // The map may have been replaced by a load() meanwhile; only update the entry still there.
      if (this.#images.get(id) === image) this.#images.set(id, { ...image, verifiedAt: at.toISOString() });
      return { id, manifest: result.manifest, signer: result.signer, bytes: result.bytes };
    } catch (err) {
      const error = asFirmwareError(err, 'BAD_MANIFEST', 'verification', id);
      if (this.#images.get(id) === image) {
        this.#images.set(id, await quarantined(id, image.dir, error, at));
        this.#verifiedManifests.delete(id);
      }
      throw error;
    }
  }

  async #verifyFolder(dir: string, id: string, now: Date): Promise<FolderResult> {
    const manifestBytes = await readCapped(path.join(dir, MANIFEST_FILE), MAX_MANIFEST_BYTES, 'NO_MANIFEST', 'BAD_MANIFEST', id);
    const signature = await readCapped(path.join(dir, SIGNATURE_FILE), MAX_SIGNATURE_BYTES, 'NO_SIGNATURE', 'BAD_SIGNATURE', id);
    const signerPem = await readCapped(path.join(dir, SIGNER_FILE), MAX_SIGNER_PEM_BYTES, 'NO_SIGNATURE', 'BAD_CERTIFICATE', id);
    const { manifest, signer } = verifyManifest(manifestBytes, signature, signerPem.toString('latin1'), { trustAnchorsPem: this.#trustAnchorsPem, now });
    if (manifest.size > this.#maxImageBytes) {
      throw new FirmwareError('TOO_LARGE', `the manifest gives ${manifest.size} bytes; this gateway accepts images of up to ${this.#maxImageBytes}`, id);
    }
    // The image is read only up to the size the signed manifest gives (plus one byte to notice more).
    const bytes = await readCapped(path.join(dir, IMAGE_FILE), manifest.size, 'MISSING_IMAGE', 'SIZE_MISMATCH', id, `the manifest says ${manifest.size}`);
    verifyImage(manifest, bytes);
    return { manifestBytes, manifest, signer, bytes };
  }
}

/** Creates a repository and loads it. */
export async function openFirmwareRepository(opts: FirmwareRepositoryOptions): Promise<FirmwareRepository> {
  const repository = new FirmwareRepository(opts);
  await repository.load();
  return repository;
}

async function quarantined(id: string, dir: string, error: FirmwareError, at: Date): Promise<QuarantinedFirmwareImage> {
  const image: QuarantinedFirmwareImage = { status: 'quarantined', id, dir, code: error.code, reason: error.message, quarantinedAt: at.toISOString() };
  const claimed = await claimedManifest(dir);
  if (claimed !== undefined) image.claimed = claimed;
  return image;
}

/** What manifest.json says, read leniently (no signature, no canonical form), or undefined. */
async function claimedManifest(dir: string): Promise<FirmwareManifest | undefined> {
  try {
    const bytes = await readCapped(path.join(dir, MANIFEST_FILE), MAX_MANIFEST_BYTES, 'NO_MANIFEST', 'BAD_MANIFEST');
    return validateManifest(JSON.parse(bytes.toString('utf8')));
  } catch {
    return undefined;
  }
}

/**
 * Reads a file of at most `max` bytes through one open file handle (so that
 * the size checked is the size of the file read). `missing` when it does not
 * exist, `tooLarge` when it holds more than `max` bytes.
 */
async function readCapped(
  file: string,
  max: number,
  missing: FirmwareErrorCode,
  tooLarge: FirmwareErrorCode,
  id?: string,
  limit = `at most ${max} expected`,
): Promise<Buffer> {
  const name = path.basename(file);
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new FirmwareError(missing, `${name} is missing`, id);
    throw new FirmwareError(missing, `${name} cannot be read (${code ?? 'error'})`, id);
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new FirmwareError(missing, `${name} is not a regular file`, id);
    if (stat.size > max) throw new FirmwareError(tooLarge, `${name} is ${stat.size} bytes; ${limit}`, id);
    // Read one byte more than allowed, in case the file grew after fstat.
    const buffer = Buffer.alloc(Math.min(stat.size, max) + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length === buffer.length) break;
    }
    if (length > max) throw new FirmwareError(tooLarge, `${name} is more than ${max} bytes; ${limit}`, id);
    return buffer.subarray(0, length);
  } catch (err) {
    if (err instanceof FirmwareError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new FirmwareError(missing, `${name} cannot be read (${code ?? 'error'})`, id);
  } finally {
    await handle.close();
  }
}

/**
 * The ids of the image folders below `root`, '/'-separated and relative to
 * it, sorted. A folder holding any of the image files is an image folder and
 * is not searched further; hidden folders and symbolic links to folders are
 * skipped (no loops, nothing outside the tree).
 */
async function findImageFolders(root: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (rel: string[], depth: number): Promise<void> => {
    let entries: Dirent[];
    try {
      entries = await readdir(path.join(root, ...rel), { withFileTypes: true });
    } catch (err) {
      if (depth > 0) return; // a subfolder that vanished or is unreadable holds no image
      const code = (err as NodeJS.ErrnoException).code;
      throw new FirmwareError('BAD_REPOSITORY', `the images folder ${root} cannot be read (${code ?? 'error'})`);
    }
    if (depth > 0 && entries.some((e) => IMAGE_FOLDER_FILES.includes(e.name) && !e.isDirectory())) {
      found.push(rel.join('/'));
      return;
    }
    if (depth >= MAX_FOLDER_DEPTH) return;
    const folders = entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name);
    for (const name of folders.sort()) await walk([...rel, name], depth + 1);
  };
  await walk([], 0);
  return found.sort();
}

/**
 * Good images that claim the same vendor, target and version for a common
 * model: which one a meter would get is undefined, and their compatibility
 * lists may disagree, so each is quarantined naming the others.
 */
function findDuplicates(images: ReadonlyMap<string, FirmwareImage>): Map<string, FirmwareError> {
  const good = [...images.values()].filter((i): i is GoodFirmwareImage => i.status === 'good');
  const out = new Map<string, FirmwareError>();
  for (const a of good) {
    const clashes = good.filter(
      (b) =>
        b !== a &&
        b.manifest.vendor === a.manifest.vendor &&
        b.manifest.target === a.manifest.target &&
        b.manifest.version === a.manifest.version &&
        b.manifest.models.some((m) => a.manifest.models.includes(m)),
    );
    if (clashes.length > 0) {
      out.set(
        a.id,
        new FirmwareError(
          'DUPLICATE_IMAGE',
          `${a.manifest.target} ${a.manifest.version} for ${a.manifest.models.join(', ')} is also offered by ${clashes.map((c) => c.id).join(', ')}; keep one`,
          a.id,
        ),
      );
    }
  }
  return out;
}
