import type { ActionRequestApdu, DlmsData } from '../dlms/index.js';
import { DlmsError } from '../dlms/errors.js';
import { wrapKey } from '../dlms/keywrap.js';
import { nameOf, ACTION_RESULT } from '../dlms/apdu.js';
import type { Keyring } from './keyring.js';

/**
 * The DLMS global key transfer (Security setup, class 64, method 2
 * global_key_transfer): new keys go to the meter wrapped (RFC 3394) under its
 * key-encryption key, in a request protected with its current keys. The
 * gateway keeps the new keys aside until the meter confirms; until then the
 * old keys stay current, and a frame that authenticates only under the new
 * ones also counts as the meter's confirmation.
 */
export const SECURITY_SETUP_CLASS_ID = 64;
export const GLOBAL_KEY_TRANSFER_METHOD_ID = 2;
export const DEFAULT_SECURITY_SETUP = '0.0.43.0.0.255';
/** key_id of global_key_transfer's key_data (Blue Book, class 64). */
export const GLOBAL_KEY_ID = { unicastEncryption: 0, broadcastEncryption: 1, authentication: 2, kek: 3 } as const;

export interface KeyTransferRequest {
  systemTitle: string;
  /** The new keys, as the HES key management issued them. */
  next: { epoch: number; ek: Buffer; ak: Buffer; kek?: Buffer };
  /** Sends the ciphered request to the meter and resolves with its ciphered answer. */
  send: (frame: Buffer) => Promise<Buffer>;
  securitySetup?: string;
  invokeIdAndPriority?: number;
}

export type KeyTransferOutcome =
  | { result: 'confirmed'; epoch: number }
  | { result: 'refused'; actionResult: number; reason: string }
  | { result: 'no-answer'; reason: string };

/** The action-request APDU of a global key transfer, with keys wrapped under `kek`. */
export function globalKeyTransferRequest(
  kek: Uint8Array,
  keys: { ek?: Uint8Array; ak?: Uint8Array; kek?: Uint8Array },
  securitySetup = DEFAULT_SECURITY_SETUP,
  invokeIdAndPriority = 0xc1,
): ActionRequestApdu {
  const entry = (keyId: number, key: Uint8Array): DlmsData => ({
    type: 'structure',
    items: [
      { type: 'enum', value: keyId },
      { type: 'octet-string', value: wrapKey(kek, key) },
    ],
  });
  const items: DlmsData[] = [];
  if (keys.ek) items.push(entry(GLOBAL_KEY_ID.unicastEncryption, keys.ek));
  if (keys.ak) items.push(entry(GLOBAL_KEY_ID.authentication, keys.ak));
  if (keys.kek) items.push(entry(GLOBAL_KEY_ID.kek, keys.kek));
  return {
    type: 'action-request',
    invokeIdAndPriority,
    cosemMethodDescriptor: { classId: SECURITY_SETUP_CLASS_ID, instanceId: securitySetup, methodId: GLOBAL_KEY_TRANSFER_METHOD_ID },
    parameters: { type: 'array', items },
  };
}

export async function transferGlobalKeys(keyring: Keyring, request: KeyTransferRequest): Promise<KeyTransferOutcome> {
  const current = keyring.keys.get(request.systemTitle);
  if (!current) throw new DlmsError('NO_KEYS', `no keys for system title ${request.systemTitle}`);
  const kek = request.next.kek ?? current.kek;
  await keyring.keys.stagePending(current.systemTitle, { epoch: request.next.epoch, ek: request.next.ek, ak: request.next.ak, kek });
  const apdu = globalKeyTransferRequest(
    current.kek,
    { ek: request.next.ek, ak: request.next.ak, ...(request.next.kek ? { kek: request.next.kek } : {}) },
    request.securitySetup,
    request.invokeIdAndPriority,
  );
  const sealed = await keyring.sealFrame(apdu, { systemTitle: current.systemTitle }, { security: 'authenticated-encrypted', framing: 'general-glo' });
  let answer: Buffer;
  try {
    answer = await request.send(sealed.frame);
  } catch (err) {
    // The meter may have applied the keys and the answer was lost: the pending
    // keys stay, and the meter's next frame under them confirms the transfer.
    return { result: 'no-answer', reason: (err as Error).message };
  }
  const opened = await keyring.openFrame(answer, { systemTitle: current.systemTitle });
  if (opened.apdu.type !== 'action-response') {
    await keyring.keys.discardPending(current.systemTitle);
    return { result: 'refused', actionResult: -1, reason: `the meter answered ${opened.apdu.type}` };
  }
  if (opened.switchedToPendingKeys) return { result: 'confirmed', epoch: request.next.epoch };
  if (opened.apdu.result !== 0) {
    await keyring.keys.discardPending(current.systemTitle);
    return { result: 'refused', actionResult: opened.apdu.result, reason: nameOf(ACTION_RESULT, opened.apdu.result) };
  }
  // Another frame under the new keys may have confirmed the transfer while we waited.
  if (keyring.keys.get(current.systemTitle)?.pending) await keyring.confirmKeyTransfer(current.systemTitle);
  return { result: 'confirmed', epoch: request.next.epoch };
}
