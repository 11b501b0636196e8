import { decodeApdu, encodeApdu, type ActionRequestApdu, type XdlmsApdu } from '../dlms/apdu.js';
import { dateTimeFromDate, type DlmsData } from '../dlms/axdr.js';
import { DlmsError } from '../dlms/errors.js';
import { unwrapKey } from '../dlms/keywrap.js';
import { obisFromString } from '../dlms/obis.js';
import { unitCode } from '../dlms/profile.js';
import { decryptApdu, encryptApdu, isCipheredApdu, parseCipheredApdu } from '../dlms/security.js';
import type { MeterKeySet } from '../keys/keystore.js';
import { DEFAULT_SECURITY_SETUP, GLOBAL_KEY_ID, GLOBAL_KEY_TRANSFER_METHOD_ID, SECURITY_SETUP_CLASS_ID } from '../keys/rotation.js';

/**
 * A meter's DLMS/COSEM application layer, as far as the simulators need it:
 * it pushes ciphered data-notifications in the gateway's push profile
 * (docs/dlms.md), answers ciphered get/set/action requests from the gateway,
 * and performs the global key transfer (Security setup, class 64, method 2):
 * it answers under the old keys, then switches to the new ones, as the Green
 * Book describes.
 */
export interface ProfileReading {
  obis: string;
  value: number;
  /** Power of ten the value is scaled by (value = raw * 10^scaler). */
  scaler?: number;
  unit?: string;
}

export interface CosemMeterOptions {
  /** The invocation counter the meter starts from (it survives a reboot in a real meter). */
  invocationCounter?: number;
}

export class SimulatedCosemMeter {
  private invocationCounter: number;
  private keys: MeterKeySet;
  /** Last invocation counter seen from each client system title: the meter refuses replays too. */
  private readonly clientCounters = new Map<string, number>();
  private notificationId = 0;
  readonly attributes = new Map<string, DlmsData>();

  constructor(keys: MeterKeySet, options: CosemMeterOptions = {}) {
    this.keys = { ...keys };
    this.invocationCounter = options.invocationCounter ?? 0;
    this.attributes.set(`1/0.0.42.0.0.255/2`, { type: 'octet-string', value: Buffer.from(keys.meter) });
  }

  get systemTitle(): string {
    return this.keys.systemTitle;
  }

  get meter(): string {
    return this.keys.meter;
  }

  /** The meter's current keys (tests compare them with the gateway's). */
  get currentKeys(): MeterKeySet {
    return { ...this.keys };
  }

  private nextCounter(): number {
    this.invocationCounter += 1;
    return this.invocationCounter;
  }

  private seal(plain: Uint8Array, keys: MeterKeySet = this.keys): Buffer {
    return encryptApdu(plain, {
      keys,
      systemTitle: Buffer.from(keys.systemTitle, 'hex'),
      invocationCounter: this.nextCounter(),
      security: 'authenticated-encrypted',
      framing: 'general-glo',
    });
  }

  /** A ciphered data-notification carrying `readings` in the push profile. */
  pushFrame(readings: ProfileReading[], at: Date = new Date()): Buffer {
    this.notificationId = (this.notificationId + 1) & 0x00ff_ffff;
    const body: DlmsData = {
      type: 'structure',
      items: [
        { type: 'visible-string', value: this.keys.meter },
        {
          type: 'array',
          items: readings.map((reading) => ({
            type: 'structure',
            items: [
              { type: 'octet-string', value: obisFromString(reading.obis) },
              Number.isInteger(reading.value) && reading.value >= 0 && reading.value <= 0xffff_ffff
                ? { type: 'double-long-unsigned', value: reading.value }
                : { type: 'float64', value: reading.value },
              {
                type: 'structure',
                items: [
                  { type: 'integer', value: reading.scaler ?? 0 },
                  { type: 'enum', value: (reading.unit !== undefined ? unitCode(reading.unit) : undefined) ?? 255 },
                ],
              },
            ],
          })),
        },
      ],
    };
    const apdu: XdlmsApdu = {
      type: 'data-notification',
      longInvokeIdAndPriority: this.notificationId,
      dateTime: dateTimeFromDate(at),
      body,
    };
    return this.seal(encodeApdu(apdu));
  }

  /**
   * Answers one ciphered request from the gateway (general-glo-ciphering,
   * which carries the gateway's system title). Returns the ciphered response,
   * or throws DlmsError for a request the meter drops (bad tag, replay).
   */
  handleRequest(frame: Uint8Array, clientSystemTitle?: string): Buffer {
    if (!isCipheredApdu(frame)) throw new DlmsError('UNPROTECTED', 'the meter accepts ciphered requests only');
    const ciphered = parseCipheredApdu(frame);
    const client = ciphered.systemTitle?.toString('hex') ?? clientSystemTitle;
    if (!client) throw new DlmsError('NO_SYSTEM_TITLE', 'the request carries no client system title');
    const last = this.clientCounters.get(client);
    if (last !== undefined && ciphered.invocationCounter <= last) {
      throw new DlmsError('REPLAY', `request counter ${ciphered.invocationCounter} is not above ${last}`);
    }
    const plain = decryptApdu(ciphered, this.keys, Buffer.from(client, 'hex'));
    this.clientCounters.set(client, ciphered.invocationCounter);
    const request = decodeApdu(plain);
    const keysForAnswer = this.keys;
    const response = this.dispatch(request);
    // The answer goes out under the keys the request came with; a key transfer takes effect after it.
    return this.seal(encodeApdu(response), keysForAnswer);
  }

  private dispatch(request: XdlmsApdu): XdlmsApdu {
    switch (request.type) {
      case 'get-request': {
        const { classId, instanceId, attributeId } = request.descriptor;
        if (classId === 8 && instanceId === '0.0.1.0.0.255' && attributeId === 2) {
          return { type: 'get-response', invokeIdAndPriority: request.invokeIdAndPriority, result: { data: { type: 'date-time', value: dateTimeFromDate(new Date()) } } };
        }
        const value = this.attributes.get(`${classId}/${instanceId}/${attributeId}`);
        return {
          type: 'get-response',
          invokeIdAndPriority: request.invokeIdAndPriority,
          result: value ? { data: value } : { dataAccessResult: 4 /* object-undefined */ },
        };
      }
      case 'set-request': {
        const { classId, instanceId, attributeId } = request.descriptor;
        this.attributes.set(`${classId}/${instanceId}/${attributeId}`, request.value);
        return { type: 'set-response', invokeIdAndPriority: request.invokeIdAndPriority, result: 0 };
      }
      case 'action-request':
        return this.action(request);
      default:
        return { type: 'exception-response', stateError: 2, serviceError: 2 };
    }
  }

  private action(request: ActionRequestApdu): XdlmsApdu {
    const { classId, instanceId, methodId } = request.cosemMethodDescriptor;
    const answer = (result: number): XdlmsApdu => ({ type: 'action-response', invokeIdAndPriority: request.invokeIdAndPriority, result });
    if (classId !== SECURITY_SETUP_CLASS_ID || instanceId !== DEFAULT_SECURITY_SETUP || methodId !== GLOBAL_KEY_TRANSFER_METHOD_ID) {
      return answer(11 /* object-unavailable */);
    }
    const parameters = request.parameters;
    if (parameters?.type !== 'array') return answer(12 /* type-unmatched */);
    const next = { ...this.keys };
    for (const item of parameters.items) {
      if (item.type !== 'structure' || item.items.length !== 2) return answer(12);
      const [keyId, wrapped] = item.items as [DlmsData, DlmsData];
      if (keyId.type !== 'enum' || wrapped.type !== 'octet-string') return answer(12);
      let key: Buffer;
      try {
        key = unwrapKey(this.keys.kek, wrapped.value);
      } catch {
        return answer(3 /* read-write-denied: the wrapped key does not unwrap under our KEK */);
      }
      if (key.length !== 16) return answer(250);
      if (keyId.value === GLOBAL_KEY_ID.unicastEncryption) next.ek = key;
      else if (keyId.value === GLOBAL_KEY_ID.authentication) next.ak = key;
      else if (keyId.value === GLOBAL_KEY_ID.kek) next.kek = key;
      else return answer(250 /* other-reason: the broadcast key is not simulated */);
    }
    next.epoch = this.keys.epoch + 1;
    // The response is still sealed under the old keys: handleRequest took them before dispatching.
    this.keys = next;
    return answer(0);
  }
}
