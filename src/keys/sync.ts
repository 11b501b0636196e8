import { cborDecode, cborEncode } from '../coap/cbor.js';
import { coapCall, CoapRequestError } from '../coap/request.js';
import { CONTENT_FORMAT } from '../coap/reading.js';
import { KeyBundleError, openKeyBundle, type KeyBundle } from './bundle.js';
import type { Keyring } from './keyring.js';
import type { KeyStoreChanges } from './keystore.js';

/**
 * Key sync with the HES key management (the contract is in
 * docs/key-bundles.md):
 *
 *   POST /ami/v1/keys               CBOR {gateway, since, force, publicKey, systemTitles?}
 *     2.05 Content (Content-Format 60): a signed key bundle
 *   GET  /ami/v1/keys/fingerprint?gateway=ID
 *     2.05 Content, CBOR {fingerprint, epoch, count}
 *
 * Bundles are verified before anything is applied: a forged, expired or
 * untrusted bundle changes nothing.
 */
export const KEYS_PATH = '/ami/v1/keys';
export const KEYS_FINGERPRINT_PATH = '/ami/v1/keys/fingerprint';
/** Key bundles for tens of thousands of meters are a few MiB; more is refused. */
export const MAX_BUNDLE_BYTES = 16 * 1024 * 1024;

export interface KeySyncOptions {
  gateway: string;
  /** HES sites, primary first (coap:// URLs). */
  sites: string[];
  trustAnchorsPem: string[];
  privateKeyPem: string;
  publicKeyPem: string;
  timeoutMs: number;
  /** Clock for certificate validity; tests move it. */
  now?: () => Date;
}

export type KeySyncErrorCode = 'NO_SITE' | 'UNREACHABLE' | 'REFUSED' | 'BAD_RESPONSE' | KeyBundleError['code'];

export class KeySyncError extends Error {
  override readonly name = 'KeySyncError';
  constructor(
    readonly code: KeySyncErrorCode,
    message: string,
    /** Per-site reasons when every site failed. */
    readonly attempts: string[] = [],
  ) {
    super(message);
  }
}

export interface KeySyncResult {
  site: string;
  full: boolean;
  epoch: number;
  meters: number;
  changes: KeyStoreChanges;
}

export interface SiteFingerprint {
  site: string;
  fingerprint?: string;
  epoch?: number;
  count?: number;
  error?: string;
}

export interface FingerprintReport {
  local: { fingerprint: string; epoch: number; count: number };
  sites: SiteFingerprint[];
  /** Every site that answered agrees with the local store. */
  inSync: boolean;
  /** Two sites answered with different fingerprints: decryption breaks after a failover. */
  sitesDisagree: boolean;
}

export class KeySync {
  constructor(
    private readonly keyring: Keyring,
    private readonly options: KeySyncOptions,
  ) {}

  /**
   * Fetches keys newer than the local epoch (or everything with `force`, or
   * the current keys of `systemTitles` only) from the first site that
   * answers with a valid bundle, and applies them.
   */
  async sync(request: { force?: boolean; allowRollback?: boolean; systemTitles?: string[] } = {}): Promise<KeySyncResult> {
    if (this.options.sites.length === 0) throw new KeySyncError('NO_SITE', 'no HES site is configured for key sync');
    const force = request.force === true;
    const targeted = request.systemTitles !== undefined && request.systemTitles.length > 0;
    const since = force || targeted ? 0 : this.keyring.keys.summary().epoch;
    const body = cborEncode({
      gateway: this.options.gateway,
      since,
      force,
      publicKey: this.options.publicKeyPem,
      ...(targeted ? { systemTitles: request.systemTitles } : {}),
    });
    const attempts: string[] = [];
    let verificationError: KeyBundleError | undefined;
    for (const site of this.options.sites) {
      let bundle: KeyBundle;
      try {
        const response = await coapCall(`${site.replace(/\/+$/, '')}${KEYS_PATH}`, {
          method: 'POST',
          payload: body,
          contentFormat: CONTENT_FORMAT.cbor,
          accept: CONTENT_FORMAT.cbor,
          timeoutMs: this.options.timeoutMs,
        });
        if (!response.code.startsWith('2.')) {
          attempts.push(`${site}: ${response.code} ${response.payload.toString('utf8').slice(0, 120)}`);
          continue;
        }
        bundle = openKeyBundle(response.payload, {
          trustAnchorsPem: this.options.trustAnchorsPem,
          gatewayPrivateKeyPem: this.options.privateKeyPem,
          gateway: this.options.gateway,
          now: this.options.now?.() ?? new Date(),
          maxBytes: MAX_BUNDLE_BYTES,
        });
      } catch (err) {
        if (err instanceof KeyBundleError) {
          // A site that serves a bad bundle is not trusted for this sync; another may be fine.
          verificationError ??= err;
          attempts.push(`${site}: ${err.code}: ${err.message}`);
          continue;
        }
        if (err instanceof CoapRequestError) {
          attempts.push(`${site}: ${err.code}: ${err.message}`);
          continue;
        }
        throw err;
      }
      const changes = await this.keyring.applyKeys(bundle.meters, {
        full: force && bundle.full,
        replace: targeted || force,
        // Only an operator's explicit resync may take keys older than the ones held.
        allowRollback: force && request.allowRollback === true,
        ...(bundle.removed ? { removed: bundle.removed } : {}),
      });
      return { site, full: bundle.full, epoch: bundle.epoch, meters: bundle.meters.length, changes };
    }
    if (verificationError) {
      throw new KeySyncError(verificationError.code, `key bundle refused, keys unchanged: ${attempts.join('; ')}`, attempts);
    }
    throw new KeySyncError('UNREACHABLE', `no HES site delivered keys: ${attempts.join('; ')}`, attempts);
  }

  /** Asks every site for its fingerprint of this gateway's keys and compares. */
  async compareFingerprints(): Promise<FingerprintReport> {
    const status = this.keyring.status();
    const local = { fingerprint: status.fingerprint, epoch: status.epoch, count: status.meters };
    const sites = await Promise.all(this.options.sites.map((site) => this.siteFingerprint(site)));
    const answered = sites.filter((site) => site.fingerprint !== undefined);
    const distinct = new Set(answered.map((site) => site.fingerprint));
    return {
      local,
      sites,
      inSync: answered.length > 0 && answered.every((site) => site.fingerprint === local.fingerprint),
      sitesDisagree: distinct.size > 1,
    };
  }

  private async siteFingerprint(site: string): Promise<SiteFingerprint> {
    try {
      const response = await coapCall(
        `${site.replace(/\/+$/, '')}${KEYS_FINGERPRINT_PATH}?gateway=${encodeURIComponent(this.options.gateway)}`,
        { method: 'GET', accept: CONTENT_FORMAT.cbor, timeoutMs: this.options.timeoutMs },
      );
      if (!response.code.startsWith('2.')) return { site, error: `answered ${response.code}` };
      const value = cborDecode(response.payload) as Record<string, unknown>;
      if (typeof value?.fingerprint !== 'string' || !/^[0-9a-f]{64}$/.test(value.fingerprint)) {
        return { site, error: 'malformed fingerprint answer' };
      }
      return {
        site,
        fingerprint: value.fingerprint,
        ...(typeof value.epoch === 'number' ? { epoch: value.epoch } : {}),
        ...(typeof value.count === 'number' ? { count: value.count } : {}),
      };
    } catch (err) {
      return { site, error: (err as Error).message };
    }
  }
}
