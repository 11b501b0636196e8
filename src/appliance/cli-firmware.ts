import path from 'node:path';
import { parseArgs } from 'node:util';
import { FirmwareError } from '../firmware/errors.js';
import { compatibleVersions, otherTarget, type FirmwareManifest } from '../firmware/manifest.js';
import { FirmwareRepository, type FirmwareImage } from '../firmware/repository.js';

/**
 * `ami-gateway firmware list|verify`: reads and verifies the images folder
 * itself, the same way the gateway does when it loads it (src/firmware), so
 * an operator can check an image before the gateway ever offers it.
 *
 * Exit codes: 0 ok; 1 an image is quarantined (verify), the image asked for
 * does not exist, or the images folder cannot be read; 2 usage.
 * `list` exits 0 whatever the images' status: it reports, verify judges.
 */
export class FirmwareUsageError extends Error {
  override readonly name = 'FirmwareUsageError';
}

export interface FirmwareCommandContext {
  /** The images folder, unless --images names another. */
  imagesDir: string;
  /** The utility's firmware root CA certificates (PEM texts). */
  trustAnchorsPem: readonly string[];
  /** The clock for certificate validity (tests); default the system clock. */
  now?: () => Date;
}

export interface FirmwareCommandResult {
  exitCode: number;
  output: string;
}

export const FIRMWARE_ACTIONS = ['list', 'verify'] as const;
type Action = (typeof FIRMWARE_ACTIONS)[number];

/** One image as `--json` reports it. */
interface ImageReport {
  id: string;
  status: 'good' | 'quarantined';
  /** false: the fields below are what a quarantined image's manifest claims, unverified. */
  verified: boolean;
  vendor?: string;
  target?: string;
  models?: string[];
  version?: string;
  size?: number;
  sha256?: string;
  compatibleWith?: Record<string, string[]>;
  signer?: { subject: string; serial: string; fingerprint: string; notAfter: string };
  code?: string;
  reason?: string;
}

export async function firmwareCommand(args: readonly string[], context: FirmwareCommandContext): Promise<FirmwareCommandResult> {
  const [action, ...rest] = args;
  if (!FIRMWARE_ACTIONS.includes(action as Action)) {
    throw new FirmwareUsageError(`unknown firmware command "${action ?? ''}": expected ${FIRMWARE_ACTIONS.join(' or ')}`);
  }
  let values: { json?: boolean; image?: string; images?: string };
  try {
    ({ values } = parseArgs({ args: [...rest], options: { json: { type: 'boolean' }, image: { type: 'string' }, images: { type: 'string' } }, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new FirmwareUsageError((err as Error).message);
  }
  if (action === 'list' && values.image !== undefined) throw new FirmwareUsageError('--image applies to "firmware verify" only');
  if (values.image === '') throw new FirmwareUsageError('--image needs an image id (as "firmware list" shows it)');

  if (values.images === '') throw new FirmwareUsageError('--images needs the images folder');
  const repository = new FirmwareRepository({ root: values.images !== undefined ? path.resolve(values.images) : context.imagesDir, trustAnchorsPem: context.trustAnchorsPem, ...(context.now ? { now: context.now } : {}) });
  let images: readonly FirmwareImage[];
  try {
    images = await repository.load();
  } catch (err) {
    if (err instanceof FirmwareError) return { exitCode: 1, output: `ami-gateway: ${err.code}: ${err.message}` };
    throw err;
  }

  if (action === 'list') {
    const reports = images.map(report);
    if (values.json) return { exitCode: 0, output: JSON.stringify(summary(repository.root, reports), null, 2) };
    return { exitCode: 0, output: listText(repository.root, reports) };
  }

  let chosen = images;
  if (values.image !== undefined) {
    const id = values.image.replace(/\\/g, '/').replace(/^\/+|\/+$/g, '');
    const image = repository.get(id);
    if (image === undefined) {
      const known = images.map((i) => i.id).join(', ') || 'none';
      return { exitCode: 1, output: `ami-gateway: no image ${JSON.stringify(values.image)} in ${repository.root} (images: ${known})` };
    }
    chosen = [image];
  }
  const reports = chosen.map(report);
  const exitCode = reports.some((r) => r.status === 'quarantined') ? 1 : 0;
  if (values.json) return { exitCode, output: JSON.stringify(summary(repository.root, reports), null, 2) };
  return { exitCode, output: verifyText(repository.root, reports) };
}

function manifestFields(manifest: FirmwareManifest): Pick<ImageReport, 'vendor' | 'target' | 'models' | 'version' | 'size' | 'sha256' | 'compatibleWith'> {
  return {
    vendor: manifest.vendor,
    target: manifest.target,
    models: [...manifest.models],
    version: manifest.version,
    size: manifest.size,
    sha256: manifest.sha256,
    compatibleWith: { [otherTarget(manifest.target)]: [...compatibleVersions(manifest)] },
  };
}

function report(image: FirmwareImage): ImageReport {
  if (image.status === 'good') {
    return { id: image.id, status: 'good', verified: true, ...manifestFields(image.manifest), signer: { ...image.signer } };
  }
  return {
    id: image.id,
    status: 'quarantined',
    verified: false,
    ...(image.claimed === undefined ? {} : manifestFields(image.claimed)),
    code: image.code,
    reason: image.reason,
  };
}

function summary(root: string, reports: ImageReport[]): { imagesDir: string; good: number; quarantined: number; images: ImageReport[] } {
  const good = reports.filter((r) => r.status === 'good').length;
  return { imagesDir: root, good, quarantined: reports.length - good, images: reports };
}

function counts(reports: ImageReport[]): string {
  const good = reports.filter((r) => r.status === 'good').length;
  return `${good} good, ${reports.length - good} quarantined`;
}

/** A plain table: columns padded to their widest cell. */
function table(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  '));
}

function listText(root: string, reports: ImageReport[]): string {
  if (reports.length === 0) return `no firmware images in ${root}`;
  const rows = [['ID', 'STATUS', 'TARGET', 'VERSION', 'MODELS', 'SIZE', 'SHA-256']];
  for (const r of reports) {
    // A quarantined image's fields are what its manifest claims: marked with '?'.
    const mark = r.verified ? '' : '?';
    const cell = (value: string | undefined): string => (value === undefined ? '-' : `${value}${mark}`);
    rows.push([r.id, r.status, cell(r.target), cell(r.version), cell(r.models?.join(',')), cell(r.size?.toString()), cell(r.sha256)]);
  }
  const lines = [`firmware images in ${root} (${counts(reports)})`, ...table(rows)];
  const quarantined = reports.filter((r) => r.status === 'quarantined');
  if (quarantined.length > 0) {
    lines.push('', 'quarantined (never offered; "?" marks what an unverified manifest claims):');
    for (const r of quarantined) lines.push(`  ${r.id}: ${r.code ?? ''}: ${r.reason ?? ''}`);
  }
  return lines.join('\n');
}

function verifyText(root: string, reports: ImageReport[]): string {
  if (reports.length === 0) return `no firmware images in ${root}`;
  const lines = reports.map((r) =>
    r.status === 'good'
      ? `ok    ${r.id}: ${r.target ?? ''} ${r.version ?? ''}, ${r.size ?? 0} bytes, signed by ${JSON.stringify(r.signer?.subject ?? '')} (certificate valid until ${r.signer?.notAfter ?? '?'})`
      : `FAIL  ${r.id}: ${r.code ?? ''}: ${r.reason ?? ''}`,
  );
  lines.push(`${counts(reports)} in ${root}`);
  return lines.join('\n');
}
