import type { DlmsData } from './axdr.js';
import { dateTimeToDate } from './axdr.js';
import type { XdlmsApdu } from './apdu.js';
import { obisToString } from './obis.js';

/**
 * The gateway's push profile (docs/dlms.md): the body of a meter's
 * data-notification is
 *
 *   structure {
 *     logical-device-name   octet-string | visible-string
 *     values                array of structure {
 *                             obis        octet-string (6)
 *                             value       any integer or float type
 *                             scaler-unit structure { integer scaler, enum unit }
 *                           }
 *   }
 *
 * Self-describing (each value carries its OBIS code), so the gateway needs no
 * copy of each meter's push object list. Frames in other shapes still decode;
 * they just have no `values`.
 */
export interface ProfileValue {
  obis: string;
  value: number;
  unit?: string;
}

export interface PushProfile {
  device: string;
  ts?: number;
  values: ProfileValue[];
}

/** Blue Book unit enumeration (class 3 scaler_unit), the units meters push. */
const UNITS: Record<number, string> = {
  1: 'a',
  2: 'mo',
  3: 'wk',
  4: 'd',
  5: 'h',
  6: 'min',
  7: 's',
  8: '°',
  9: '°C',
  13: 'm³',
  23: 'Pa',
  27: 'W',
  28: 'VA',
  29: 'var',
  30: 'Wh',
  31: 'VAh',
  32: 'varh',
  33: 'A',
  34: 'C',
  35: 'V',
  44: 'Hz',
  56: '%',
  255: '',
};

export function unitName(code: number): string | undefined {
  return UNITS[code];
}

export function unitCode(name: string): number | undefined {
  for (const [code, unit] of Object.entries(UNITS)) if (unit === name) return Number(code);
  return undefined;
}

function numeric(data: DlmsData): number | undefined {
  switch (data.type) {
    case 'integer':
    case 'long':
    case 'unsigned':
    case 'long-unsigned':
    case 'double-long':
    case 'double-long-unsigned':
    case 'float32':
    case 'float64':
    case 'enum':
      return data.value;
    case 'long64':
    case 'long64-unsigned':
      return Number(data.value);
    default:
      return undefined;
  }
}

function text(data: DlmsData): string | undefined {
  if (data.type === 'visible-string' || data.type === 'utf8-string') return data.value;
  if (data.type === 'octet-string') return Buffer.from(data.value).toString('latin1');
  return undefined;
}

/** The profile's values, or undefined when the notification is not in the profile's shape. */
export function readPushProfile(apdu: XdlmsApdu): PushProfile | undefined {
  if (apdu.type !== 'data-notification') return undefined;
  const body = apdu.body;
  if (body.type !== 'structure' || body.items.length !== 2) return undefined;
  const [deviceData, list] = body.items as [DlmsData, DlmsData];
  const device = text(deviceData);
  if (device === undefined || list.type !== 'array') return undefined;
  const values: ProfileValue[] = [];
  for (const item of list.items) {
    if (item.type !== 'structure' || item.items.length !== 3) return undefined;
    const [obisData, valueData, scalerUnit] = item.items as [DlmsData, DlmsData, DlmsData];
    if (obisData.type !== 'octet-string' || obisData.value.length !== 6) return undefined;
    const raw = numeric(valueData);
    if (raw === undefined) return undefined;
    let value = raw;
    let unit: string | undefined;
    if (scalerUnit.type === 'structure' && scalerUnit.items.length === 2) {
      const [scaler, unitData] = scalerUnit.items as [DlmsData, DlmsData];
      if (scaler.type === 'integer' && scaler.value !== 0) value = Number((raw * 10 ** scaler.value).toPrecision(15));
      if (unitData.type === 'enum') unit = unitName(unitData.value);
    }
    values.push({ obis: obisToString(obisData.value), value, ...(unit ? { unit } : {}) });
  }
  const when = apdu.dateTime ? dateTimeToDate(apdu.dateTime) : undefined;
  return { device, values, ...(when ? { ts: when.getTime() } : {}) };
}
