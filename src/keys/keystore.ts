import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { cborDecode, cborEncode } from '../coap/cbor.js';
import { openSublevel, type GatewayDatabase, type GatewaySublevel } from '../store/database.js';
import type { GroupCommitter } from '../store/group-commit.js';
import { keyStoreFingerprint, type MeterKeys } from './bundle.js';

/**
 * Per-meter DLMS keys, persisted in the `keys` sublevel encrypted at rest
 * under the device master key (AES-256-GCM, a fresh IV per write, the record's
 * LevelDB key as associated data so records cannot be swapped).
 *
 * Keys are held decrypted in memory, as every software gateway must to
 * decrypt traffic; they never leave through `summary()`, errors or events.
 */
/** One meter's keys, as key bundles carry them (system title, meter name, epoch, EK, AK, KEK). */
export type MeterKeySet = MeterKeys;

/** New keys sent to the meter (global key transfer) but not yet confirmed by it. */
export interface PendingKeys {
  epoch: number;
  ek: Buffer;
  ak: Buffer;
  kek: Buffer;
  stagedAt: number;
}

export interface StoredMeterKeys extends MeterKeySet {
  pending?: PendingKeys;
}

export type KeyStoreErrorCode = 'MASTER_KEY_MISMATCH' | 'BAD_MASTER_KEY' | 'CORRUPT_RECORD' | 'UNKNOWN_METER' | 'BAD_KEYS';

export class KeyStoreError extends Error {
  override readonly name = 'KeyStoreError';
  constructor(
    readonly code: KeyStoreErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface KeyStoreSummary {
  meters: number;
  /** Highest key epoch held. */
  epoch: number;
  pending: number;
}

export interface KeyStoreChanges {
  added: number;
  updated: number;
  removed: number;
  unchanged: number;
  /** System titles whose keys changed, so their replay counters restart. */
  rekeyed: string[];
}

const CANARY_KEY = '\u0000canary';
const CANARY_TEXT = Buffer.from('ami-gateway key store v1');
const SYSTEM_TITLE = /^[0-9a-f]{16}$/;
const RECORD_AAD_PREFIX = 'ami-keystore/v1/';

export function normaliseSystemTitle(value: string | Uint8Array): string {
  const text = typeof value === 'string' ? value.toLowerCase() : Buffer.from(value).toString('hex');
  if (!SYSTEM_TITLE.test(text)) throw new KeyStoreError('BAD_KEYS', 'a system title is 8 bytes (16 hex characters)');
  return text;
}

function checkKeySet(keys: MeterKeySet): void {
  normaliseSystemTitle(keys.systemTitle);
  if (!Number.isSafeInteger(keys.epoch) || keys.epoch < 0) throw new KeyStoreError('BAD_KEYS', `key epoch of ${keys.systemTitle} is not a non-negative integer`);
  for (const name of ['ek', 'ak', 'kek'] as const) {
    if (!(keys[name] instanceof Uint8Array) || keys[name].length !== 16) {
      throw new KeyStoreError('BAD_KEYS', `${name} of ${keys.systemTitle} must be 16 bytes`);
    }
  }
  if (typeof keys.meter !== 'string' || keys.meter.length === 0 || keys.meter.length > 64) {
    throw new KeyStoreError('BAD_KEYS', `meter name of ${keys.systemTitle} must be 1-64 characters`);
  }
}

function sameKeys(a: MeterKeySet, b: MeterKeySet): boolean {
  return a.epoch === b.epoch && a.meter === b.meter && a.ek.equals(b.ek) && a.ak.equals(b.ak) && a.kek.equals(b.kek);
}

export interface KeyStoreEvents {
  /** Keys of these system titles changed (epochs only: never key material). */
  changed: [systemTitles: string[]];
}

export class KeyStore extends EventEmitter<KeyStoreEvents> {
  private readonly entries = new Map<string, StoredMeterKeys>();
  private readonly byMeterName = new Map<string, string>();
  /** Hashes every meter's keys: computed once per change, not per health request. */
  private fingerprintCache: string | undefined;

  private constructor(
    private readonly db: GatewayDatabase,
    private readonly records: GatewaySublevel,
    private readonly masterKey: Buffer,
    private readonly committer: GroupCommitter | undefined,
  ) {
    super();
  }

  /**
   * Opens the store and decrypts every record. A master key that does not
   * match the one the store was created with is MASTER_KEY_MISMATCH, before
   * anything is read or written.
   */
  static async open(db: GatewayDatabase, masterKey: Uint8Array, committer?: GroupCommitter): Promise<KeyStore> {
    if (masterKey.length !== 32) throw new KeyStoreError('BAD_MASTER_KEY', 'the master key must be 32 bytes (64 hex characters)');
    const store = new KeyStore(db, openSublevel(db, 'keys'), Buffer.from(masterKey), committer);
    await store.load();
    return store;
  }

  private seal(key: string, plaintext: Uint8Array): Buffer {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.masterKey, iv);
    cipher.setAAD(Buffer.from(RECORD_AAD_PREFIX + key));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([iv, body, cipher.getAuthTag()]);
  }

  /** Returns undefined when the record does not authenticate under the master key. */
  private unseal(key: string, sealed: Uint8Array): Buffer | undefined {
    if (sealed.length < 12 + 16) return undefined;
    const bytes = Buffer.from(sealed);
    const decipher = createDecipheriv('aes-256-gcm', this.masterKey, bytes.subarray(0, 12));
    decipher.setAAD(Buffer.from(RECORD_AAD_PREFIX + key));
    decipher.setAuthTag(bytes.subarray(bytes.length - 16));
    try {
      return Buffer.concat([decipher.update(bytes.subarray(12, bytes.length - 16)), decipher.final()]);
    } catch {
      return undefined;
    }
  }

  private async load(): Promise<void> {
    const canary = await this.records.get(CANARY_KEY);
    if (canary === undefined) {
      await this.db.batch([{ type: 'put', sublevel: this.records, key: CANARY_KEY, value: this.seal(CANARY_KEY, CANARY_TEXT) }], { sync: true });
    } else {
      const text = this.unseal(CANARY_KEY, canary);
      if (!text?.equals(CANARY_TEXT)) {
        throw new KeyStoreError('MASTER_KEY_MISMATCH', 'the master key does not open this key store (was the master key file replaced?)');
      }
    }
    for await (const [key, value] of this.records.iterator()) {
      if (key === CANARY_KEY) continue;
      const plain = this.unseal(key, value);
      if (!plain) throw new KeyStoreError('CORRUPT_RECORD', `key record ${key} does not authenticate under the master key`);
      const entry = decodeEntry(key, plain);
      this.entries.set(key, entry);
      this.byMeterName.set(entry.meter, key);
    }
  }

  get size(): number {
    return this.entries.size;
  }

  get(systemTitle: string): StoredMeterKeys | undefined {
    return this.entries.get(systemTitle);
  }

  systemTitleOf(meter: string): string | undefined {
    return this.byMeterName.get(meter);
  }

  /** The fingerprint HES sites are compared with (docs/key-bundles.md). */
  fingerprint(): string {
    this.fingerprintCache ??= keyStoreFingerprint([...this.entries.values()]);
    return this.fingerprintCache;
  }

  summary(): KeyStoreSummary {
    let epoch = 0;
    let pending = 0;
    for (const entry of this.entries.values()) {
      epoch = Math.max(epoch, entry.epoch);
      if (entry.pending) pending += 1;
    }
    return { meters: this.entries.size, epoch, pending };
  }

  /**
   * Applies keys from a verified bundle. An incremental bundle adds or
   * replaces keys whose epoch is newer; a full bundle makes the store equal
   * to it (meters it does not list are removed); `replace` takes the listed
   * keys whatever their epoch. Written in one synced batch.
   */
  async apply(
    meters: MeterKeySet[],
    options: { full: boolean; replace?: boolean; allowRollback?: boolean; removed?: string[] },
  ): Promise<KeyStoreChanges> {
    for (const keys of meters) checkKeySet(keys);
    const changes: KeyStoreChanges = { added: 0, updated: 0, removed: 0, unchanged: 0, rekeyed: [] };
    const next = new Map<string, StoredMeterKeys>();
    for (const keys of meters) {
      const systemTitle = normaliseSystemTitle(keys.systemTitle);
      const current = this.entries.get(systemTitle);
      const incoming: StoredMeterKeys = { ...keys, systemTitle, ek: Buffer.from(keys.ek), ak: Buffer.from(keys.ak), kek: Buffer.from(keys.kek) };
      if (current?.pending && current.pending.ek.equals(incoming.ek) && current.pending.ak.equals(incoming.ak)) {
        // The HES already publishes keys this gateway is transferring to the meter:
        // they become current when the meter confirms, not before.
        changes.unchanged += 1;
        continue;
      }
      if (current && sameKeys(current, incoming)) {
        changes.unchanged += 1;
        continue;
      }
      // Older keys never replace newer ones (a lagging site, or an old signed bundle played back
      // after forged MIC failures), unless an operator forces a resync.
      if (current && incoming.epoch < current.epoch && !options.allowRollback) {
        changes.unchanged += 1;
        continue;
      }
      // A targeted resync (after MIC failures) or a forced one takes the HES's keys even at the same epoch.
      if (current && !options.full && !options.replace && incoming.epoch <= current.epoch) {
        changes.unchanged += 1;
        continue;
      }
      // Keys the HES now holds supersede a pending local transfer of the same or an older epoch.
      if (current?.pending && current.pending.epoch > incoming.epoch) incoming.pending = current.pending;
      next.set(systemTitle, incoming);
      if (current) changes.updated += 1;
      else changes.added += 1;
      if (current && (!current.ek.equals(incoming.ek) || !current.ak.equals(incoming.ak))) changes.rekeyed.push(systemTitle);
    }
    const removals = new Set<string>();
    if (options.full) {
      const listed = new Set(meters.map((keys) => normaliseSystemTitle(keys.systemTitle)));
      for (const systemTitle of this.entries.keys()) if (!listed.has(systemTitle)) removals.add(systemTitle);
    }
    for (const systemTitle of options.removed ?? []) {
      const normalised = normaliseSystemTitle(systemTitle);
      if (this.entries.has(normalised)) removals.add(normalised);
    }
    changes.removed = removals.size;
    await this.write(next, removals);
    const changed = [...next.keys(), ...removals];
    if (changed.length > 0) this.emit('changed', changed);
    return changes;
  }

  /** Keeps new keys for a meter aside until the meter confirms the transfer. */
  async stagePending(systemTitle: string, keys: Omit<PendingKeys, 'stagedAt'>): Promise<void> {
    const current = this.requireEntry(systemTitle);
    checkKeySet({ ...current, ...keys });
    const updated: StoredMeterKeys = { ...current, pending: { ...keys, stagedAt: Date.now() } };
    await this.write(new Map([[current.systemTitle, updated]]), new Set());
  }

  /** The meter confirmed: the pending keys become current, the old ones are gone. */
  async confirmPending(systemTitle: string): Promise<StoredMeterKeys> {
    const current = this.requireEntry(systemTitle);
    if (!current.pending) throw new KeyStoreError('UNKNOWN_METER', `no pending key change for ${current.systemTitle}`);
    const { pending } = current;
    const updated: StoredMeterKeys = {
      systemTitle: current.systemTitle,
      meter: current.meter,
      epoch: pending.epoch,
      ek: pending.ek,
      ak: pending.ak,
      kek: pending.kek,
    };
    await this.write(new Map([[current.systemTitle, updated]]), new Set());
    this.emit('changed', [current.systemTitle]);
    return updated;
  }

  /** The meter refused or never answered: the current keys stay. */
  async discardPending(systemTitle: string): Promise<void> {
    const current = this.requireEntry(systemTitle);
    if (!current.pending) return;
    const { pending: _discarded, ...rest } = current;
    await this.write(new Map([[current.systemTitle, rest]]), new Set());
  }

  private requireEntry(systemTitle: string): StoredMeterKeys {
    const normalised = normaliseSystemTitle(systemTitle);
    const entry = this.entries.get(normalised);
    if (!entry) throw new KeyStoreError('UNKNOWN_METER', `no keys for system title ${normalised}`);
    return entry;
  }

  private async write(puts: Map<string, StoredMeterKeys>, deletions: Set<string>): Promise<void> {
    const sublevel = this.records;
    const operations = [
      ...[...puts].map(([key, entry]) => ({ type: 'put' as const, sublevel, key, value: this.seal(key, encodeEntry(entry)) })),
      ...[...deletions].map((key) => ({ type: 'del' as const, sublevel, key })),
    ];
    if (operations.length === 0) return;
    if (this.committer) await this.committer.write(operations);
    else await this.db.batch(operations, { sync: true });
    // Memory follows the disk: only what is written is used.
    this.fingerprintCache = undefined;
    for (const key of deletions) {
      const old = this.entries.get(key);
      this.entries.delete(key);
      if (old && this.byMeterName.get(old.meter) === key) this.byMeterName.delete(old.meter);
    }
    for (const [key, entry] of puts) {
      const old = this.entries.get(key);
      if (old && old.meter !== entry.meter && this.byMeterName.get(old.meter) === key) this.byMeterName.delete(old.meter);
      this.entries.set(key, entry);
      this.byMeterName.set(entry.meter, key);
    }
  }
}

function encodeEntry(entry: StoredMeterKeys): Buffer {
  return cborEncode({
    meter: entry.meter,
    epoch: entry.epoch,
    ek: entry.ek,
    ak: entry.ak,
    kek: entry.kek,
    ...(entry.pending ? { pending: { ...entry.pending } } : {}),
  });
}

function bytes(value: unknown, what: string): Buffer {
  if (!(value instanceof Uint8Array) || value.length !== 16) throw new KeyStoreError('CORRUPT_RECORD', `stored ${what} is not 16 bytes`);
  return Buffer.from(value);
}

function decodeEntry(systemTitle: string, plain: Buffer): StoredMeterKeys {
  let value: unknown;
  try {
    value = cborDecode(plain);
  } catch {
    throw new KeyStoreError('CORRUPT_RECORD', `key record ${systemTitle} is not valid CBOR`);
  }
  const record = value as Record<string, unknown>;
  if (typeof record !== 'object' || record === null || typeof record.meter !== 'string' || typeof record.epoch !== 'number') {
    throw new KeyStoreError('CORRUPT_RECORD', `key record ${systemTitle} has the wrong shape`);
  }
  const entry: StoredMeterKeys = {
    systemTitle,
    meter: record.meter,
    epoch: record.epoch,
    ek: bytes(record.ek, 'ek'),
    ak: bytes(record.ak, 'ak'),
    kek: bytes(record.kek, 'kek'),
  };
  const pending = record.pending as Record<string, unknown> | undefined;
  if (pending && typeof pending === 'object' && typeof pending.epoch === 'number') {
    entry.pending = {
      epoch: pending.epoch,
      ek: bytes(pending.ek, 'pending ek'),
      ak: bytes(pending.ak, 'pending ak'),
      kek: bytes(pending.kek, 'pending kek'),
      stagedAt: typeof pending.stagedAt === 'number' ? pending.stagedAt : 0,
    };
  }
  return entry;
}
