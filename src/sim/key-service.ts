import type { IncomingMessage, OutgoingMessage } from 'coap';
import { cborDecode, cborEncode } from '../coap/cbor.js';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { createKeyBundle, keyStoreFingerprint, type MeterKeys } from '../keys/bundle.js';
import { createTestPki, type TestPki } from '../keys/pki.js';
import { KEYS_FINGERPRINT_PATH, KEYS_PATH } from '../keys/sync.js';
import { DEFAULT_SIM_KEY_SEED, simMeterKeys } from './meter-keys.js';

export interface SimKeyManagementOptions {
  /** Meters whose keys this key-management system holds. */
  meters: string[];
  /** Seed the simulated meters derive their keys from. */
  seed?: string;
  /** Signing PKI; a fresh test PKI when not given. */
  pki?: TestPki;
}

export interface SimKeyStats {
  bundles: number;
  refused: number;
}

/**
 * The key-management side of the HES simulator: serves signed key bundles
 * (docs/key-bundles.md) encrypted to whichever gateway public key asks, and
 * the fingerprint of the keys it holds. A real HES would only encrypt to the
 * enrolled key of a known gateway; the simulator trusts what it is sent.
 *
 * Epochs are one sequence for the whole KMS: every change takes the next
 * number, so "everything after epoch N" is well defined.
 */
export class SimKeyManagement {
  readonly pki: TestPki;
  private readonly keys = new Map<string, MeterKeys>();
  private epoch = 1;
  private readonly seed: string;
  readonly stats: SimKeyStats = { bundles: 0, refused: 0 };

  constructor(options: SimKeyManagementOptions) {
    this.pki = options.pki ?? createTestPki({ commonNamePrefix: 'AMI Simulator' });
    this.seed = options.seed ?? DEFAULT_SIM_KEY_SEED;
    for (const meter of options.meters) {
      const keys = simMeterKeys(this.seed, meter, 1);
      this.keys.set(keys.systemTitle, keys);
    }
  }

  /** The root certificate a gateway must trust to accept these bundles. */
  get trustAnchorPem(): string {
    return this.pki.rootCertPem;
  }

  get currentEpoch(): number {
    return this.epoch;
  }

  keysOf(meter: string): MeterKeys | undefined {
    for (const keys of this.keys.values()) if (keys.meter === meter) return keys;
    return undefined;
  }

  /** Issues new keys for a meter at the next epoch, as a key rotation in the KMS would. */
  rotate(meter: string): MeterKeys {
    const current = this.keysOf(meter);
    if (!current) throw new Error(`the key-management simulator has no meter ${meter}`);
    this.epoch += 1;
    const next = { ...simMeterKeys(this.seed, meter, this.epoch) };
    this.keys.set(next.systemTitle, next);
    return next;
  }

  /** Replaces a meter's keys outright (tests: a site whose key store diverged). */
  setKeys(keys: MeterKeys): void {
    this.epoch = Math.max(this.epoch, keys.epoch);
    this.keys.set(keys.systemTitle, keys);
  }

  fingerprint(): { fingerprint: string; epoch: number; count: number } {
    return { fingerprint: keyStoreFingerprint([...this.keys.values()]), epoch: this.epoch, count: this.keys.size };
  }

  /** Handles the key resources; returns false for any other path. */
  handle(path: string, req: IncomingMessage, res: OutgoingMessage): boolean {
    if (path === KEYS_FINGERPRINT_PATH) {
      if (req.method !== 'GET') return this.answer(res, '4.05');
      res.setOption('Content-Format', CONTENT_FORMAT.cbor);
      res.end(cborEncode(this.fingerprint()));
      return true;
    }
    if (path !== KEYS_PATH) return false;
    if (req.method !== 'POST') return this.answer(res, '4.05');
    let request: { gateway: string; since: number; force: boolean; publicKey: string; systemTitles?: string[] };
    try {
      request = parseKeyRequest(req.payload);
    } catch (err) {
      this.stats.refused += 1;
      return this.answer(res, '4.00', (err as Error).message);
    }
    const targeted = request.systemTitles !== undefined ? new Set(request.systemTitles) : undefined;
    const full = request.force && !targeted;
    const meters = [...this.keys.values()].filter((keys) =>
      targeted ? targeted.has(keys.systemTitle) : full || keys.epoch > request.since,
    );
    let bundle: Buffer;
    try {
      bundle = createKeyBundle(
        { gateway: request.gateway, epoch: this.epoch, since: full ? 0 : request.since, full, issuedAt: Date.now(), meters },
        { signerKeyPem: this.pki.kmKeyPem, signerChainPem: [this.pki.kmCertPem], recipientPublicKeyPem: request.publicKey },
      );
    } catch (err) {
      this.stats.refused += 1;
      return this.answer(res, '4.00', `cannot encrypt to that public key: ${(err as Error).message}`);
    }
    this.stats.bundles += 1;
    res.code = '2.05';
    res.setOption('Content-Format', CONTENT_FORMAT.cbor);
    res.end(bundle);
    return true;
  }

  private answer(res: OutgoingMessage, code: string, text?: string): true {
    res.code = code;
    res.end(text?.slice(0, 200));
    return true;
  }
}

function parseKeyRequest(payload: Buffer): { gateway: string; since: number; force: boolean; publicKey: string; systemTitles?: string[] } {
  let value: unknown;
  try {
    value = cborDecode(payload);
  } catch {
    throw new Error('the key request is not CBOR');
  }
  const request = value as Record<string, unknown>;
  if (typeof request !== 'object' || request === null) throw new Error('the key request must be a map');
  const { gateway, since, force, publicKey, systemTitles } = request;
  if (typeof gateway !== 'string' || gateway.length === 0 || gateway.length > 128) throw new Error('gateway must be a string');
  if (typeof since !== 'number' || !Number.isSafeInteger(since) || since < 0) throw new Error('since must be a non-negative integer');
  if (typeof publicKey !== 'string' || !publicKey.includes('PUBLIC KEY')) throw new Error('publicKey must be an SPKI PEM');
  if (systemTitles !== undefined && (!Array.isArray(systemTitles) || !systemTitles.every((st) => typeof st === 'string' && /^[0-9a-f]{16}$/.test(st)))) {
    throw new Error('systemTitles must be a list of 16-hex-character system titles');
  }
  return { gateway, since, force: force === true, publicKey, ...(systemTitles ? { systemTitles: systemTitles as string[] } : {}) };
}
