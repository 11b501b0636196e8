import { createHash, createHmac } from 'node:crypto';
import type { MeterKeySet } from '../keys/keystore.js';

/**
 * Keys of simulated meters, derived from a seed shared by the HES simulator
 * (which plays the key-management system) and the meter simulator (whose
 * meters were "provisioned in the factory" with them). Both sides agree
 * without exchanging key files; the gateway learns them only through signed
 * key bundles, like a real one.
 */
export const DEFAULT_SIM_KEY_SEED = 'ami-gateway-simulator';

/** Three-letter DLMS manufacturer id of simulated meters ("AMI"), as in a real system title. */
const MANUFACTURER = Buffer.from('AMI', 'ascii');

/** The meter's 8-byte system title: manufacturer id + 5 bytes of serial derived from its name. */
export function simSystemTitle(meter: string): string {
  const serial = createHash('sha256').update(`serial/${meter}`).digest().subarray(0, 5);
  return Buffer.concat([MANUFACTURER, serial]).toString('hex');
}

export function simMeterKeys(seed: string, meter: string, epoch = 1): MeterKeySet {
  const derive = (purpose: string): Buffer => createHmac('sha256', seed).update(`${meter}/${epoch}/${purpose}`).digest().subarray(0, 16);
  return { systemTitle: simSystemTitle(meter), meter, epoch, ek: derive('ek'), ak: derive('ak'), kek: derive('kek') };
}

/** Endpoint names of a simulated fleet, as `sim meters` names them. */
export function simMeterNames(count: number, prefix = 'mtr-'): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}${String(i + 1).padStart(6, '0')}`);
}
