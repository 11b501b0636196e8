import { normalizeContexts, parseMacAddress } from '../lowpan/index.js';
import type { RadioMetadataMode } from './radio-link.js';

/**
 * The serial radio's settings, checked once for both places that take them:
 * the appliance's AMI_RADIO_* variables and the mesh endpoint node's
 * properties. A bad value is a RadioSettingsError naming the field, which
 * each caller turns into its own error (the variable, the dialog's label).
 */
export type RadioSettingField = 'path' | 'baudRate' | 'metadata' | 'mac' | 'panId' | 'contexts';

export class RadioSettingsError extends Error {
  override readonly name = 'RadioSettingsError';
  constructor(
    readonly field: RadioSettingField,
    message: string,
  ) {
    super(message);
  }
}

export interface RadioSettings {
  /** The serial port: /dev/ttyUSB0, or better a /dev/serial/by-id/... link. */
  path: string;
  baudRate: number;
  metadata: RadioMetadataMode;
  /** The gateway's EUI-64, 16 lower-case hex digits. */
  mac: string;
  panId: number;
  /** The PAN's 6LoWPAN context prefixes, context 0 first. */
  contexts: string[];
}

/** As typed by an operator: text (or a number for the baud rate); empty means the default where there is one. */
export interface RadioSettingsInput {
  path?: string;
  baudRate?: string | number;
  metadata?: string;
  mac?: string;
  pan?: string;
  contexts?: string;
}

export const DEFAULT_RADIO_BAUD_RATE = 115_200;

export function parseRadioSettings(input: RadioSettingsInput): RadioSettings {
  const path = (input.path ?? '').trim();
  if (path === '') throw new RadioSettingsError('path', "the radio's serial port is not set, e.g. /dev/serial/by-id/usb-...");

  const baudText = String(input.baudRate ?? '').trim();
  const baudRate = baudText === '' ? DEFAULT_RADIO_BAUD_RATE : Number(baudText);
  if (!/^\d+$/.test(baudText === '' ? '0' : baudText) || baudRate < 1_200 || baudRate > 4_000_000) {
    throw new RadioSettingsError('baudRate', `expected a baud rate from 1200 to 4000000, got "${baudText}"`);
  }

  const metadata = (input.metadata ?? '').trim() || 'none';
  if (metadata !== 'none' && metadata !== 'rssi-lqi') throw new RadioSettingsError('metadata', `expected none or rssi-lqi, got "${metadata}"`);

  const mac = (input.mac ?? '').trim().replace(/[:-]/g, '').toLowerCase();
  let address: ReturnType<typeof parseMacAddress> | undefined;
  try {
    address = parseMacAddress(mac);
  } catch {
    address = undefined;
  }
  if (address?.mode !== 'extended') throw new RadioSettingsError('mac', `expected the gateway's EUI-64 as 16 hex digits, got "${input.mac ?? ''}"`);

  const panText = (input.pan ?? '').trim().replace(/^0x/i, '');
  if (!/^[0-9a-fA-F]{1,4}$/.test(panText) || parseInt(panText, 16) === 0xffff) {
    throw new RadioSettingsError('panId', `expected a PAN ID of 1 to 4 hex digits (not ffff), got "${input.pan ?? ''}"`);
  }

  const contexts = (input.contexts ?? '').split(/[\s,]+/).filter((entry) => entry !== '');
  if (contexts.length > 16) throw new RadioSettingsError('contexts', `at most 16 contexts, got ${contexts.length}`);
  try {
    normalizeContexts(contexts);
  } catch (err) {
    throw new RadioSettingsError('contexts', (err as Error).message);
  }

  return { path, baudRate, metadata, mac, panId: parseInt(panText, 16), contexts };
}
