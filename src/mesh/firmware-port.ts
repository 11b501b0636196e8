/**
 * The firmware rollout's way to meters over the mesh (docs/firmware.md,
 * "The meter's side"): GET /fw/state and POST /fw/update in CBOR, through
 * the congestion-controlled mesh client at metrology priority, so relay
 * commands always go first.
 */
import { cborDecode, cborEncode } from '../coap/cbor.js';
import type { MeshRequest, MeshResponse } from '../coap/client/client.js';
import { MeshRequestError } from '../coap/client/errors.js';
import type { RequestPriority } from '../coap/client/scheduler.js';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { FIRMWARE_TARGETS, isFirmwareVersion, type FirmwareTarget } from '../firmware/manifest.js';
import { FirmwarePortError, type FirmwareMeterPort, type FirmwareOffer, type MeterFirmwareReport } from '../firmware/rollout-types.js';
import type { MeterTarget } from './target.js';

export const METER_FIRMWARE_STATE_PATH = '/fw/state';
export const METER_FIRMWARE_UPDATE_PATH = '/fw/update';

/** What the port needs of the mesh client (src/coap/client/client.ts MeshClient). */
export interface FirmwareMeshClient {
  request(request: MeshRequest): Promise<MeshResponse>;
}

export interface CoapFirmwarePortOptions {
  client: FirmwareMeshClient;
  /** The meter's address and path prefix, e.g. `(m) => { const r = registry.byEndpoint(m); return r && meterTarget(r); }`. */
  resolve: (meter: string) => MeterTarget | undefined;
  /** Default 'metrology'. */
  priority?: RequestPriority;
}

const STATES: ReadonlySet<string> = new Set(['idle', 'downloading', 'updating', 'failed']);
const MAX_TEXT = 64;

export class CoapFirmwarePort implements FirmwareMeterPort {
  private readonly priority: RequestPriority;

  constructor(private readonly options: CoapFirmwarePortOptions) {
    this.priority = options.priority ?? 'metrology';
  }

  async readState(meter: string, signal: AbortSignal): Promise<MeterFirmwareReport> {
    const response = await this.request(meter, { method: 'GET', path: METER_FIRMWARE_STATE_PATH, accept: CONTENT_FORMAT.cbor, signal });
    if (response.code !== '2.05') throw answerError(meter, 'GET /fw/state', response.code);
    let value: unknown;
    try {
      value = cborDecode(response.payload);
    } catch (err) {
      throw new FirmwarePortError('BAD_ANSWER', `meter ${meter}: /fw/state is not CBOR: ${(err as Error).message}`);
    }
    return parseFirmwareState(value, meter);
  }

  async offer(meter: string, offer: FirmwareOffer, signal: AbortSignal): Promise<void> {
    const payload = cborEncode({ path: offer.path, target: offer.target, version: offer.version, sha256: offer.sha256, size: offer.size });
    const response = await this.request(meter, { method: 'POST', path: METER_FIRMWARE_UPDATE_PATH, payload, contentFormat: CONTENT_FORMAT.cbor, signal });
    if (response.code !== '2.04' && response.code !== '2.01') throw answerError(meter, 'POST /fw/update', response.code);
  }

  private async request(meter: string, request: Omit<MeshRequest, 'peer' | 'priority'>): Promise<MeshResponse> {
    const target = this.options.resolve(meter);
    if (!target) throw new FirmwarePortError('NOT_REGISTERED', `meter ${meter} has no known address (not registered)`);
    try {
      return await this.options.client.request({ ...request, peer: target.peer, path: `${target.pathPrefix}${request.path}`, priority: this.priority });
    } catch (err) {
      if (!(err instanceof MeshRequestError)) throw err;
      if (err.code === 'COMM_TIMEOUT_ERR' || err.code === 'RESET') throw new FirmwarePortError('COMM_TIMEOUT_ERR', `meter ${meter}: ${err.message}`);
      if (err.code === 'QUEUE_FULL') throw new FirmwarePortError('QUEUE_FULL', err.message);
      if (err.code === 'ABORTED' || err.code === 'CLOSED') throw new FirmwarePortError('ABORTED', err.message);
      throw new FirmwarePortError('BAD_ANSWER', `meter ${meter}: ${err.code}: ${err.message}`);
    }
  }
}

function answerError(meter: string, what: string, code: string): FirmwarePortError {
  // 4.09 Conflict (busy with another image) and 5.03 are for later; 4.04/4.05: the meter does not do firmware updates this way.
  if (code === '4.09' || code === '5.03') return new FirmwarePortError('METER_BUSY', `meter ${meter}: ${what} answered ${code}`);
  return new FirmwarePortError('METER_REFUSED', `meter ${meter}: ${what} answered ${code}`);
}

/** Checks a meter's /fw/state strictly: every field the rollout decides on is typed and bounded. */
export function parseFirmwareState(value: unknown, meter = 'the meter'): MeterFirmwareReport {
  const bad = (why: string): never => {
    throw new FirmwarePortError('BAD_ANSWER', `meter ${meter}: /fw/state ${why}`);
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return bad('is not a map');
  const v = value as Record<string, unknown>;
  const text = (name: string, optional: boolean): string | undefined => {
    const field = v[name];
    if (field === undefined && optional) return undefined;
    if (typeof field !== 'string' || field === '' || field.length > MAX_TEXT) return bad(`${name} is not a short text`);
    return field;
  };
  const comm = text('comm', false) as string;
  const metro = text('metro', false) as string;
  if (!isFirmwareVersion(comm)) bad(`comm ${JSON.stringify(comm)} is not a version`);
  if (!isFirmwareVersion(metro)) bad(`metro ${JSON.stringify(metro)} is not a version`);
  const state = text('state', false) as string;
  if (!STATES.has(state)) bad(`state ${JSON.stringify(state)} is not idle, downloading, updating or failed`);
  const report: MeterFirmwareReport = { comm, metro, state: state as MeterFirmwareReport['state'] };
  const model = text('model', true);
  if (model !== undefined) report.model = model;
  const result = text('result', true);
  if (result !== undefined) report.result = result;
  for (const name of ['received', 'size'] as const) {
    const n = v[name];
    if (n === undefined) continue;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) bad(`${name} is not a byte count`);
    report[name] = n as number;
  }
  if (v.image !== undefined) {
    const image = v.image as Record<string, unknown>;
    if (typeof image !== 'object' || image === null) bad('image is not a map');
    const target = image.target;
    if (typeof target !== 'string' || !(FIRMWARE_TARGETS as readonly string[]).includes(target)) bad('image.target is not comm or metro');
    if (!isFirmwareVersion(image.version)) bad('image.version is not a version');
    if (typeof image.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(image.sha256)) bad('image.sha256 is not 64 lower-case hex digits');
    report.image = { target: target as FirmwareTarget, version: image.version as string, sha256: image.sha256 as string };
  }
  return report;
}
