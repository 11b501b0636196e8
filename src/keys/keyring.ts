import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { decodeApdu, encodeApdu, type XdlmsApdu } from '../dlms/apdu.js';
import { DlmsError } from '../dlms/errors.js';
import {
  decryptApdu,
  encryptApdu,
  isCipheredApdu,
  parseCipheredApdu,
  type CipheredApdu,
} from '../dlms/security.js';
import { decodeWrapper, encodeWrapper, looksLikeWrapper } from '../dlms/wrapper.js';
import type { GatewayDatabase } from '../store/database.js';
import { GroupCommitter } from '../store/group-commit.js';
import { MicFailureTracker, OutgoingCounter, ReplayGuard } from './counters.js';
import { KeyStore, normaliseSystemTitle, type KeyStoreSummary, type StoredMeterKeys } from './keystore.js';

/**
 * The gateway's DLMS security context: the key store, replay protection for
 * received frames, the gateway's own invocation counter for frames it sends,
 * and MIC failure accounting. Everything a `dlms decode` or `dlms encode`
 * node does goes through here; the codec underneath is pure.
 */
export interface KeyringOptions {
  db: GatewayDatabase;
  masterKey: Uint8Array;
  /** The gateway's own system title (16 hex characters): the IV prefix of frames it sends. */
  gatewaySystemTitle: string;
  /** Consecutive MIC failures of one meter before it is reported out of sync. */
  micThreshold: number;
}

export interface FrameContext {
  /** The sender's system title, when the frame does not carry it. */
  systemTitle?: string;
  /** The sender's meter name: finds its system title in the key store. */
  meter?: string;
  /** Refuse frames whose counter is not greater than the last accepted (default true). */
  replayCheck?: boolean;
  /** Accept unciphered APDUs (default false: they are UNPROTECTED). */
  allowPlain?: boolean;
}

export interface SecurityHeader {
  securityControl: number;
  authentication: boolean;
  encryption: boolean;
  broadcastKey: boolean;
  invocationCounter: number;
  /** Present when the frame carries it (general-glo-ciphering). */
  systemTitle?: string;
  framing: 'glo' | 'general-glo';
}

export interface OpenedFrame {
  /** The sender's system title as used for decryption (undefined for a plain APDU). */
  systemTitle?: string;
  meter?: string;
  security?: SecurityHeader;
  wrapper?: { version: number; sourceWPort: number; destinationWPort: number };
  plaintext: Buffer;
  apdu: XdlmsApdu;
  /** The frame authenticated only under keys staged for a key transfer: the meter has switched. */
  switchedToPendingKeys: boolean;
  /** The meter sent its last accepted frame again (it missed the answer); downstream deduplicates by key. */
  repeat: boolean;
  /** Epoch of the keys the frame authenticated under: with the counter, it names the frame uniquely. */
  keyEpoch?: number;
}

export interface SealOptions {
  security: 'authenticated-encrypted' | 'authenticated' | 'encrypted';
  framing: 'glo' | 'general-glo';
  /** Wrap in the DLMS/COSEM UDP wrapper with these wPorts. */
  wrapper?: { sourceWPort: number; destinationWPort: number };
}

export interface SealedFrame {
  frame: Buffer;
  systemTitle: string;
  meter: string;
  invocationCounter: number;
}

export interface KeyOutOfSync {
  systemTitle: string;
  meter?: string;
  failures: number;
}

export interface KeyringEvents {
  /** A meter's frames failed authentication `micThreshold` times in a row. */
  'key-out-of-sync': [info: KeyOutOfSync];
  /** Keys changed (sync or confirmed transfer); epochs only. */
  'keys-changed': [systemTitles: string[]];
}

export interface KeyringCounters {
  opened: number;
  sealed: number;
  micFailures: number;
  replays: number;
  noKeys: number;
  malformed: number;
}

export class Keyring extends EventEmitter<KeyringEvents> {
  readonly counters: KeyringCounters = { opened: 0, sealed: 0, micFailures: 0, replays: 0, noKeys: 0, malformed: 0 };
  private readonly mic: MicFailureTracker;

  private constructor(
    readonly keys: KeyStore,
    private readonly replay: ReplayGuard,
    private readonly outgoing: OutgoingCounter,
    private readonly committer: GroupCommitter,
    readonly gatewaySystemTitle: string,
    micThreshold: number,
  ) {
    super();
    this.mic = new MicFailureTracker(micThreshold);
    keys.on('changed', (systemTitles) => {
      for (const systemTitle of systemTitles) this.mic.reset(systemTitle);
      this.emit('keys-changed', systemTitles);
    });
  }

  static async open(options: KeyringOptions): Promise<Keyring> {
    const gatewaySystemTitle = normaliseSystemTitle(options.gatewaySystemTitle);
    const committer = new GroupCommitter(options.db);
    const keys = await KeyStore.open(options.db, options.masterKey, committer);
    const replay = await ReplayGuard.open(options.db, { lingerMs: 0, sync: false });
    const outgoing = await OutgoingCounter.open(options.db, gatewaySystemTitle);
    return new Keyring(keys, replay, outgoing, committer, gatewaySystemTitle, options.micThreshold);
  }

  set micThreshold(value: number) {
    this.mic.threshold = value;
  }

  /** Flushes pending counter writes. The database itself belongs to the caller. */
  async close(): Promise<void> {
    await this.replay.drain();
    await this.committer.close();
  }

  /**
   * Decrypts, authenticates and parses one frame. Throws only DlmsError
   * (codes MIC_FAILURE, REPLAY, NO_KEYS, NO_SYSTEM_TITLE, UNPROTECTED and
   * the codec's). Resolves once the frame's invocation counter is on disk.
   */
  async openFrame(input: Uint8Array, context: FrameContext = {}): Promise<OpenedFrame> {
    let apduBytes: Uint8Array = input;
    let wrapper: OpenedFrame['wrapper'];
    try {
      if (looksLikeWrapper(input)) {
        const decoded = decodeWrapper(input);
        wrapper = { version: decoded.version, sourceWPort: decoded.sourceWPort, destinationWPort: decoded.destinationWPort };
        apduBytes = decoded.apdu;
      }
      if (!isCipheredApdu(apduBytes)) {
        if (!context.allowPlain) {
          throw new DlmsError('UNPROTECTED', 'the APDU is not ciphered and plain APDUs are not accepted', wrapper ? 8 : 0);
        }
        const plaintext = Buffer.from(apduBytes);
        return { plaintext, apdu: decodeApdu(plaintext), wrapper, meter: context.meter, switchedToPendingKeys: false, repeat: false };
      }
    } catch (err) {
      if (err instanceof DlmsError && err.code !== 'UNPROTECTED') this.counters.malformed += 1;
      throw err;
    }
    let frame: CipheredApdu;
    try {
      frame = parseCipheredApdu(apduBytes);
    } catch (err) {
      this.counters.malformed += 1;
      throw err;
    }
    if (!frame.security.authentication && !context.allowPlain) {
      // Without a tag anyone can forge such a frame (the system title travels in clear):
      // it must neither reach the HES nor move a meter's replay counter.
      throw new DlmsError('UNPROTECTED', 'the APDU is encrypted but not authenticated (security control 0x20), and unauthenticated APDUs are not accepted');
    }
    const systemTitle = this.senderSystemTitle(frame, context);
    const entry = this.keys.get(systemTitle);
    if (!entry) {
      this.counters.noKeys += 1;
      throw new DlmsError('NO_KEYS', `no keys for system title ${systemTitle}`);
    }
    // Unauthenticated frames (allowed only with allowPlain) never touch the replay counters.
    const replayCheck = context.replayCheck !== false && frame.security.authentication;
    // What identifies this exact frame for repeat detection: its GCM tag when it has one (a MAC over
    // the whole frame, computed anyway), otherwise a digest of its bytes.
    const digest = frame.authTag && frame.authTag.length >= 12 ? frame.authTag : createHash('sha256').update(apduBytes).digest();
    // Replays are judged after decryption only: a frame under keys the gateway does not hold yet (rotated
    // in the KMS, counter restarted) must count as a MIC failure and lead to a resync, not be dropped as a
    // replay. Costs one AES-GCM decryption per replayed frame.
    const titleBytes = frame.systemTitle && frame.systemTitle.length === 8 ? frame.systemTitle : Buffer.from(systemTitle, 'hex');
    const { plaintext, switched } = this.decrypt(frame, entry, titleBytes);
    // Authentic under the staged keys: the meter has applied the transfer, and its
    // invocation counter belongs to the new keys.
    const usedKeys = switched ? await this.confirmKeyTransfer(entry.systemTitle) : entry;
    let verdict: 'fresh' | 'repeat' | 'replay' = 'fresh';
    if (replayCheck) {
      // Checked again after decrypt(): another openFrame may have accepted this counter meanwhile,
      // and a switch to the staged keys restarted the meter's counter.
      const keyId = this.keyIdOf(usedKeys);
      verdict = this.replay.check(systemTitle, frame.invocationCounter, digest, keyId);
      if (verdict === 'replay') throw this.replayError(systemTitle, frame.invocationCounter);
      if (verdict === 'fresh') await this.replay.accept(systemTitle, frame.invocationCounter, digest, keyId);
      // A repeat racing the first copy's write waits for it too: nothing leaves before its counter is written.
      else await this.replay.settled();
    }
    let apdu: XdlmsApdu;
    try {
      apdu = decodeApdu(plaintext);
    } catch (err) {
      this.counters.malformed += 1;
      if (err instanceof DlmsError) {
        // The offset is re-added by the constructor; strip the copy the message already carries.
        const message = err.offset === undefined ? err.message : err.message.replace(/ \(at byte \d+\)$/, '');
        throw new DlmsError(err.code, `decrypted APDU from ${systemTitle}: ${message}`, err.offset);
      }
      throw err;
    }
    this.counters.opened += 1;
    return {
      systemTitle,
      meter: entry.meter,
      security: {
        securityControl: frame.securityControl,
        authentication: frame.security.authentication,
        encryption: frame.security.encryption,
        broadcastKey: frame.security.broadcastKey,
        invocationCounter: frame.invocationCounter,
        ...(frame.systemTitle && frame.systemTitle.length > 0 ? { systemTitle } : {}),
        framing: frame.kind,
      },
      wrapper,
      plaintext,
      apdu,
      switchedToPendingKeys: switched,
      repeat: verdict === 'repeat',
      keyEpoch: usedKeys.epoch,
    };
  }

  private readonly keyIds = new WeakMap<StoredMeterKeys, Buffer>();

  /** 4 bytes identifying a meter's EK and AK, so replay counters follow the keys. */
  private keyIdOf(entry: StoredMeterKeys): Buffer {
    let id = this.keyIds.get(entry);
    if (!id) {
      id = createHash('sha256').update(entry.ek).update(entry.ak).digest().subarray(0, 4);
      this.keyIds.set(entry, id);
    }
    return id;
  }

  private replayError(systemTitle: string, invocationCounter: number): DlmsError {
    this.counters.replays += 1;
    return new DlmsError(
      'REPLAY',
      `invocation counter ${invocationCounter} from ${systemTitle} is not greater than the last accepted (${this.replay.lastAccepted(systemTitle)})`,
    );
  }

  private senderSystemTitle(frame: CipheredApdu, context: FrameContext): string {
    if (frame.systemTitle && frame.systemTitle.length > 0) return frame.systemTitle.toString('hex');
    if (context.systemTitle) {
      try {
        return normaliseSystemTitle(context.systemTitle);
      } catch {
        throw new DlmsError('NO_SYSTEM_TITLE', 'msg.systemTitle must be 16 hex characters');
      }
    }
    const byMeter = context.meter ? this.keys.systemTitleOf(context.meter) : undefined;
    if (byMeter) return byMeter;
    throw new DlmsError(
      'NO_SYSTEM_TITLE',
      context.meter
        ? `the frame carries no system title and meter ${context.meter} is not in the key store`
        : 'the frame carries no system title and no meter or system title was given',
    );
  }

  /** Synchronous: only a switch to staged keys needs the disk, and the caller awaits that. */
  private decrypt(frame: CipheredApdu, entry: StoredMeterKeys, title: Uint8Array): { plaintext: Buffer; switched: boolean } {
    try {
      const plaintext = decryptApdu(frame, entry, title);
      this.mic.succeed(entry.systemTitle);
      return { plaintext, switched: false };
    } catch (err) {
      if (!(err instanceof DlmsError) || err.code !== 'MIC_FAILURE') throw err;
      if (entry.pending) {
        try {
          return { plaintext: decryptApdu(frame, entry.pending, title), switched: true };
        } catch (pendingErr) {
          if (!(pendingErr instanceof DlmsError) || pendingErr.code !== 'MIC_FAILURE') throw pendingErr;
        }
      }
      this.counters.micFailures += 1;
      if (this.mic.fail(entry.systemTitle)) {
        this.emit('key-out-of-sync', { systemTitle: entry.systemTitle, meter: entry.meter, failures: this.mic.streak(entry.systemTitle) });
      }
      throw new DlmsError(
        'MIC_FAILURE',
        `authentication tag mismatch for ${entry.systemTitle} (meter ${entry.meter}, ${this.mic.streak(entry.systemTitle)} in a row): the keys may be out of sync`,
      );
    }
  }

  /** Encrypts an APDU for a meter with its keys, the gateway's system title and next invocation counter. */
  async sealFrame(apdu: XdlmsApdu | Uint8Array, target: { systemTitle?: string; meter?: string }, options: SealOptions): Promise<SealedFrame> {
    let requested: string | undefined;
    try {
      requested = target.systemTitle ? normaliseSystemTitle(target.systemTitle) : undefined;
    } catch {
      throw new DlmsError('NO_SYSTEM_TITLE', 'the system title must be 16 hex characters');
    }
    const systemTitle = requested
      ? requested
      : target.meter
        ? this.keys.systemTitleOf(target.meter)
        : undefined;
    if (!systemTitle) throw new DlmsError('NO_SYSTEM_TITLE', target.meter ? `meter ${target.meter} is not in the key store` : 'no meter or system title given');
    const entry = this.keys.get(systemTitle);
    if (!entry) throw new DlmsError('NO_KEYS', `no keys for system title ${systemTitle}`);
    const plaintext = apdu instanceof Uint8Array ? apdu : encodeApdu(apdu);
    const invocationCounter = await this.outgoing.take();
    let frame = encryptApdu(plaintext, {
      keys: entry,
      systemTitle: Buffer.from(this.gatewaySystemTitle, 'hex'),
      invocationCounter,
      security: options.security,
      framing: options.framing,
    });
    if (options.wrapper) frame = encodeWrapper({ version: 1, ...options.wrapper, apdu: frame });
    this.counters.sealed += 1;
    return { frame, systemTitle, meter: entry.meter, invocationCounter };
  }

  /** Meter counts per state and the fingerprint HES sites are compared with. No key material. */
  status(): KeyStoreSummary & { fingerprint: string; outOfSync: string[]; counters: KeyringCounters } {
    return {
      ...this.keys.summary(),
      fingerprint: this.keys.fingerprint(),
      outOfSync: this.mic.outOfSync(),
      counters: { ...this.counters },
    };
  }

  micFailures(systemTitle: string): { streak: number; total: number } {
    return { streak: this.mic.streak(systemTitle), total: this.mic.total(systemTitle) };
  }

  /**
   * The meter confirmed a key transfer: the staged keys become current. Its
   * counter restarts with them (replay state is kept per key, see ReplayGuard).
   */
  async confirmKeyTransfer(systemTitle: string): Promise<StoredMeterKeys> {
    return this.keys.confirmPending(systemTitle);
  }

  /** Applies synced keys. */
  async applyKeys(...args: Parameters<KeyStore['apply']>): ReturnType<KeyStore['apply']> {
    // Replay counters need no reset: they are kept per key, so new keys start afresh
    // and a meter re-added with the same keys keeps its counter.
    return this.keys.apply(...args);
  }
}
