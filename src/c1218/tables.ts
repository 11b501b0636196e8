import { C1218Error } from './errors.js';

/**
 * ANSI C12.19 table decoders (and encoders, for the simulator and round-trip
 * tests), pure functions over table bytes:
 *
 *   ST0 GEN_CONFIG_TBL       General Configuration: how the device encodes
 *                            everything else, and which tables/procedures it has
 *   ST1 GENERAL_MFG_ID_TBL   General Manufacturer Identification
 *   ST5 DEVICE_IDENT_TBL     Device Identification
 *
 * How strings and identifiers are encoded depends on ST0 (CHAR_FORMAT,
 * ID_FORM), so the ST1/ST5 decoders take the TableFormat read from it; without
 * ST0 they assume the common case (ISO 8859/1, strings, little-endian).
 */

/** Table ids on the wire: bit 11 set for manufacturer tables (MTn = 2048 + n). */
export const MANUFACTURER_TABLE_BASE = 2048;

export const StandardTable = {
  GEN_CONFIG: 0,
  GENERAL_MFG_ID: 1,
  DEVICE_IDENT: 5,
} as const;

/** Names of the standard tables this gateway may meet (decade 0, and those an engineer reads most). */
const STANDARD_TABLE_NAMES: Record<number, string> = {
  0: 'General Configuration',
  1: 'General Manufacturer Identification',
  2: 'Device Nameplate',
  3: 'End Device Mode and Status',
  4: 'Pending Status',
  5: 'Device Identification',
  6: 'Utility Information',
  7: 'Procedure Initiate',
  8: 'Procedure Response',
  21: 'Actual Register',
  23: 'Current Register Data',
  52: 'Clock',
  61: 'Actual Load Profile',
  63: 'Load Profile Status',
  64: 'Load Profile Data Set 1',
};

/** "ST5", "MT17": how engineers name tables. */
export function tableLabel(table: number): string {
  return table >= MANUFACTURER_TABLE_BASE ? `MT${table - MANUFACTURER_TABLE_BASE}` : `ST${table}`;
}

export function tableName(table: number): string | undefined {
  return table < MANUFACTURER_TABLE_BASE ? STANDARD_TABLE_NAMES[table] : undefined;
}

/** CHAR_FORMAT values of FORMAT_CONTROL_1. */
export const CharFormat = {
  ISO_646: 1,
  ISO_8859_1: 2,
  UTF_8: 3,
  UTF_16: 4,
  UTF_32: 5,
} as const;

const CHAR_FORMAT_NAMES: Record<number, string> = {
  1: 'ISO/IEC 646 (7-bit ASCII)',
  2: 'ISO 8859/1 (Latin 1)',
  3: 'UTF-8',
  4: 'UTF-16',
  5: 'UTF-32',
};

/** The encoding choices ST0 makes for every other table. */
export interface TableFormat {
  /** DATA_ORDER: byte order of multi-byte integers in tables. */
  dataOrder: 'little-endian' | 'big-endian';
  /** CHAR_FORMAT (CharFormat). */
  charFormat: number;
  /** ID_FORM: identifiers (ST1 serial number, ST5) as strings or as BCD digits. */
  idForm: 'string' | 'bcd';
}

export const DEFAULT_TABLE_FORMAT: TableFormat = { dataOrder: 'little-endian', charFormat: CharFormat.ISO_8859_1, idForm: 'string' };

export interface GeneralConfiguration {
  formatControl1: {
    dataOrder: 'little-endian' | 'big-endian';
    charFormat: number;
    charFormatName: string;
    /** MODEL_SELECT (C12.19-2008, bits 4..6; 0 in 1997-edition devices). */
    modelSelect: number;
  };
  formatControl2: {
    /** TM_FORMAT: 0 no clock, 1 BCD, 2 UINT8 fields, 3 UINT32 minutes, 4 UINT32 seconds. */
    tmFormat: number;
    /** DATA_ACCESS_METHOD: 0 full tables only, 1 offset-count, 2 index-count, 3 both. */
    dataAccessMethod: number;
    idForm: 'string' | 'bcd';
    /** INT_FORMAT: 0 two's complement, 1 one's complement, 2 sign-magnitude. */
    intFormat: number;
  };
  formatControl3: {
    /** NI_FORMAT1/2: encodings of non-integer values (0 FLOAT64 .. 8 INT32 ...). */
    niFormat1: number;
    niFormat2: number;
  };
  /** DEVICE_CLASS (MANUFACTURER in the 1997 edition): 4 bytes, as hex. */
  deviceClass: string;
  /** NAMEPLATE_TYPE: 0 gas, 1 water, 2 electric. */
  nameplateType: number;
  nameplateTypeName: string;
  defaultSetUsed: number;
  maxProcParmLength: number;
  maxRespDataLen: number;
  stdVersionNo: number;
  stdRevisionNo: number;
  dimStdTblsUsed: number;
  dimMfgTblsUsed: number;
  dimStdProcUsed: number;
  dimMfgProcUsed: number;
  dimMfgStatusUsed: number;
  nbrPending: number;
  /** Standard tables the device has (STD_TBLS_USED), ascending. */
  stdTblsUsed: number[];
  /** Manufacturer tables it has, numbered from 0 (MT0 = table id 2048). */
  mfgTblsUsed: number[];
  stdProcUsed: number[];
  mfgProcUsed: number[];
  /** Tables it lets be written (STD_TBLS_WRITE, MFG_TBLS_WRITE); absent from a short ST0. */
  stdTblsWrite: number[];
  mfgTblsWrite: number[];
}

const NAMEPLATE_NAMES: Record<number, string> = { 0: 'gas', 1: 'water', 2: 'electric' };

/** The fixed part of ST0 before the sets. */
const ST0_FIXED_LENGTH = 19;

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function need(bytes: Uint8Array, end: number, what: string): void {
  if (bytes.length < end) throw new C1218Error('TRUNCATED', `${what} needs ${end} bytes; the table has ${bytes.length}`, bytes.length);
}

/** Members of a C12.19 SET: bit 0 of the first byte is member 0. */
function readSet(bytes: Uint8Array, start: number, length: number): number[] {
  const members: number[] = [];
  for (let i = 0; i < length; i++) {
    const byte = bytes[start + i] as number;
    for (let bit = 0; bit < 8; bit++) if (byte & (1 << bit)) members.push(i * 8 + bit);
  }
  return members;
}

function writeSet(out: Uint8Array, start: number, length: number, members: number[], name: string): void {
  for (const member of members) {
    if (!Number.isInteger(member) || member < 0 || member >= length * 8) {
      throw new C1218Error('BAD_ARGUMENT', `${name}: ${member} does not fit a set of ${length} bytes`);
    }
    out[start + (member >>> 3)] = (out[start + (member >>> 3)] as number) | (1 << (member & 7));
  }
}

/** ST0. Throws TRUNCATED if the table is shorter than its dimensions say. */
export function decodeGeneralConfiguration(bytes: Uint8Array): GeneralConfiguration {
  need(bytes, ST0_FIXED_LENGTH, 'GEN_CONFIG_TBL');
  const fc1 = bytes[0] as number;
  const fc2 = bytes[1] as number;
  const fc3 = bytes[2] as number;
  const charFormat = (fc1 >>> 1) & 0x07;
  const nameplateType = bytes[7] as number;
  const dims = {
    dimStdTblsUsed: bytes[13] as number,
    dimMfgTblsUsed: bytes[14] as number,
    dimStdProcUsed: bytes[15] as number,
    dimMfgProcUsed: bytes[16] as number,
  };
  let at = ST0_FIXED_LENGTH;
  const sets: number[][] = [];
  for (const [name, length] of [
    ['STD_TBLS_USED', dims.dimStdTblsUsed],
    ['MFG_TBLS_USED', dims.dimMfgTblsUsed],
    ['STD_PROC_USED', dims.dimStdProcUsed],
    ['MFG_PROC_USED', dims.dimMfgProcUsed],
  ] as const) {
    need(bytes, at + length, name);
    sets.push(readSet(bytes, at, length));
    at += length;
  }
  // The write sets follow; some devices send ST0 without them.
  const hasWriteSets = bytes.length >= at + dims.dimStdTblsUsed + dims.dimMfgTblsUsed;
  const stdTblsWrite = hasWriteSets ? readSet(bytes, at, dims.dimStdTblsUsed) : [];
  const mfgTblsWrite = hasWriteSets ? readSet(bytes, at + dims.dimStdTblsUsed, dims.dimMfgTblsUsed) : [];
  return {
    formatControl1: {
      dataOrder: fc1 & 0x01 ? 'big-endian' : 'little-endian',
      charFormat,
      charFormatName: CHAR_FORMAT_NAMES[charFormat] ?? `unknown (${charFormat})`,
      modelSelect: (fc1 >>> 4) & 0x07,
    },
    formatControl2: {
      tmFormat: fc2 & 0x07,
      dataAccessMethod: (fc2 >>> 3) & 0x03,
      idForm: fc2 & 0x20 ? 'bcd' : 'string',
      intFormat: (fc2 >>> 6) & 0x03,
    },
    formatControl3: { niFormat1: fc3 & 0x0f, niFormat2: fc3 >>> 4 },
    deviceClass: toHex(bytes.subarray(3, 7)),
    nameplateType,
    nameplateTypeName: NAMEPLATE_NAMES[nameplateType] ?? `unknown (${nameplateType})`,
    defaultSetUsed: bytes[8] as number,
    maxProcParmLength: bytes[9] as number,
    maxRespDataLen: bytes[10] as number,
    stdVersionNo: bytes[11] as number,
    stdRevisionNo: bytes[12] as number,
    ...dims,
    dimMfgStatusUsed: bytes[17] as number,
    nbrPending: bytes[18] as number,
    stdTblsUsed: sets[0] ?? [],
    mfgTblsUsed: sets[1] ?? [],
    stdProcUsed: sets[2] ?? [],
    mfgProcUsed: sets[3] ?? [],
    stdTblsWrite,
    mfgTblsWrite,
  };
}

export type GeneralConfigurationInput = Omit<GeneralConfiguration, 'formatControl1' | 'nameplateTypeName'> & {
  formatControl1: Omit<GeneralConfiguration['formatControl1'], 'charFormatName'>;
};

function checkBits(name: string, value: number, bits: number): void {
  if (!Number.isInteger(value) || value < 0 || value >= 1 << bits) throw new C1218Error('BAD_ARGUMENT', `${name} must fit ${bits} bits, got ${value}`);
}

export function encodeGeneralConfiguration(st0: GeneralConfigurationInput): Uint8Array {
  const { formatControl1: f1, formatControl2: f2, formatControl3: f3 } = st0;
  checkBits('charFormat', f1.charFormat, 3);
  checkBits('modelSelect', f1.modelSelect, 3);
  checkBits('tmFormat', f2.tmFormat, 3);
  checkBits('dataAccessMethod', f2.dataAccessMethod, 2);
  checkBits('intFormat', f2.intFormat, 2);
  checkBits('niFormat1', f3.niFormat1, 4);
  checkBits('niFormat2', f3.niFormat2, 4);
  if (!/^[0-9a-fA-F]{8}$/.test(st0.deviceClass)) throw new C1218Error('BAD_ARGUMENT', 'deviceClass must be 8 hex digits');
  const deviceClass = Uint8Array.from({ length: 4 }, (_, i) => parseInt(st0.deviceClass.slice(2 * i, 2 * i + 2), 16));
  const singles = [
    st0.nameplateType,
    st0.defaultSetUsed,
    st0.maxProcParmLength,
    st0.maxRespDataLen,
    st0.stdVersionNo,
    st0.stdRevisionNo,
    st0.dimStdTblsUsed,
    st0.dimMfgTblsUsed,
    st0.dimStdProcUsed,
    st0.dimMfgProcUsed,
    st0.dimMfgStatusUsed,
    st0.nbrPending,
  ];
  singles.forEach((value, i) => checkBits(`ST0 byte ${7 + i}`, value, 8));
  const setsLength = 2 * st0.dimStdTblsUsed + 2 * st0.dimMfgTblsUsed + st0.dimStdProcUsed + st0.dimMfgProcUsed;
  const out = new Uint8Array(ST0_FIXED_LENGTH + setsLength);
  out[0] = (f1.dataOrder === 'big-endian' ? 1 : 0) | (f1.charFormat << 1) | (f1.modelSelect << 4);
  out[1] = f2.tmFormat | (f2.dataAccessMethod << 3) | (f2.idForm === 'bcd' ? 0x20 : 0) | (f2.intFormat << 6);
  out[2] = f3.niFormat1 | (f3.niFormat2 << 4);
  out.set(deviceClass, 3);
  out.set(singles, 7);
  let at = ST0_FIXED_LENGTH;
  for (const [name, length, members] of [
    ['stdTblsUsed', st0.dimStdTblsUsed, st0.stdTblsUsed],
    ['mfgTblsUsed', st0.dimMfgTblsUsed, st0.mfgTblsUsed],
    ['stdProcUsed', st0.dimStdProcUsed, st0.stdProcUsed],
    ['mfgProcUsed', st0.dimMfgProcUsed, st0.mfgProcUsed],
    ['stdTblsWrite', st0.dimStdTblsUsed, st0.stdTblsWrite],
    ['mfgTblsWrite', st0.dimMfgTblsUsed, st0.mfgTblsWrite],
  ] as const) {
    writeSet(out, at, length, members, name);
    at += length;
  }
  return out;
}

/** The TableFormat ST0 declares. */
export function tableFormatOf(st0: GeneralConfiguration): TableFormat {
  return { dataOrder: st0.formatControl1.dataOrder, charFormat: st0.formatControl1.charFormat, idForm: st0.formatControl2.idForm };
}

/** Every table id ST0 says the device has (standard, then manufacturer as 2048 + n). */
export function tablesUsed(st0: GeneralConfiguration): number[] {
  return [...st0.stdTblsUsed, ...st0.mfgTblsUsed.map((n) => MANUFACTURER_TABLE_BASE + n)];
}

const UTF8_DECODER = new TextDecoder('utf-8');
const UTF8_ENCODER = new TextEncoder();

/**
 * A fixed-length STRING(n) field: trailing spaces and NULs are padding.
 * 7-bit ASCII bytes above 0x7F come out as U+FFFD rather than failing: a
 * field engineer still sees the rest of the field.
 */
function decodeString(bytes: Uint8Array, start: number, length: number, format: TableFormat, field: string): string {
  const raw = bytes.subarray(start, start + length);
  let text: string;
  switch (format.charFormat) {
    case CharFormat.UTF_8:
      text = UTF8_DECODER.decode(raw);
      break;
    case CharFormat.UTF_16:
    case CharFormat.UTF_32:
      throw new C1218Error('UNSUPPORTED', `${field}: ${CHAR_FORMAT_NAMES[format.charFormat] ?? 'this'} strings are not decoded here`, start);
    case CharFormat.ISO_646:
      text = Array.from(raw, (b) => (b < 0x80 ? String.fromCharCode(b) : '\ufffd')).join('');
      break;
    default:
      // ISO 8859/1, and the undefined CHAR_FORMAT values read the same way.
      text = Array.from(raw, (b) => String.fromCharCode(b)).join('');
  }
  return text.replace(/[ \0]+$/, '');
}

function encodeString(text: string, length: number, format: TableFormat, field: string): Uint8Array {
  let bytes: Uint8Array;
  if (format.charFormat === CharFormat.UTF_8) bytes = UTF8_ENCODER.encode(text);
  else if (format.charFormat === CharFormat.UTF_16 || format.charFormat === CharFormat.UTF_32) {
    throw new C1218Error('UNSUPPORTED', `${field}: ${CHAR_FORMAT_NAMES[format.charFormat] ?? ''} strings are not encoded here`);
  } else {
    const limit = format.charFormat === CharFormat.ISO_646 ? 0x7f : 0xff;
    bytes = Uint8Array.from(text, (c) => {
      const code = c.charCodeAt(0);
      if (c.length !== 1 || code > limit) throw new C1218Error('BAD_ARGUMENT', `${field}: "${c}" is not in the device's character set`);
      return code;
    });
  }
  if (bytes.length > length) throw new C1218Error('BAD_ARGUMENT', `${field} has room for ${length} bytes, not ${bytes.length}`);
  const out = new Uint8Array(length).fill(0x20);
  out.set(bytes);
  return out;
}

/** A BCD(n) field: 2n decimal digits, most significant first. */
function decodeBcd(bytes: Uint8Array, start: number, length: number, field: string): string {
  let digits = '';
  for (let i = 0; i < length; i++) {
    const byte = bytes[start + i] as number;
    for (const nibble of [byte >>> 4, byte & 0x0f]) {
      if (nibble > 9) throw new C1218Error('BAD_VALUE', `${field}: 0x${byte.toString(16).padStart(2, '0')} is not two BCD digits`, start + i);
      digits += String(nibble);
    }
  }
  return digits;
}

function encodeBcd(digits: string, length: number, field: string): Uint8Array {
  if (!/^[0-9]*$/.test(digits) || digits.length > length * 2) throw new C1218Error('BAD_ARGUMENT', `${field} must be at most ${length * 2} decimal digits`);
  const padded = digits.padStart(length * 2, '0');
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (Number(padded[2 * i]) << 4) | Number(padded[2 * i + 1]);
  return out;
}

export interface ManufacturerIdentification {
  /** MANUFACTURER: 4 characters (e.g. "GE", "ITRN", "LGYR"). */
  manufacturer: string;
  /** ED_MODEL: 8 characters. */
  edModel: string;
  hwVersionNumber: number;
  hwRevisionNumber: number;
  fwVersionNumber: number;
  fwRevisionNumber: number;
  /** MFG_SERIAL_NUMBER: 16 characters, or 16 digits when ID_FORM is BCD. */
  mfgSerialNumber: string;
}

function st1Length(format: TableFormat): number {
  return 16 + (format.idForm === 'bcd' ? 8 : 16);
}

/** ST1. Bytes after the standard fields (a manufacturer's extension) are ignored. */
export function decodeManufacturerIdentification(bytes: Uint8Array, format: TableFormat = DEFAULT_TABLE_FORMAT): ManufacturerIdentification {
  need(bytes, st1Length(format), 'GENERAL_MFG_ID_TBL');
  return {
    manufacturer: decodeString(bytes, 0, 4, format, 'MANUFACTURER'),
    edModel: decodeString(bytes, 4, 8, format, 'ED_MODEL'),
    hwVersionNumber: bytes[12] as number,
    hwRevisionNumber: bytes[13] as number,
    fwVersionNumber: bytes[14] as number,
    fwRevisionNumber: bytes[15] as number,
    mfgSerialNumber: format.idForm === 'bcd' ? decodeBcd(bytes, 16, 8, 'MFG_SERIAL_NUMBER') : decodeString(bytes, 16, 16, format, 'MFG_SERIAL_NUMBER'),
  };
}

export function encodeManufacturerIdentification(st1: ManufacturerIdentification, format: TableFormat = DEFAULT_TABLE_FORMAT): Uint8Array {
  const out = new Uint8Array(st1Length(format));
  out.set(encodeString(st1.manufacturer, 4, format, 'MANUFACTURER'), 0);
  out.set(encodeString(st1.edModel, 8, format, 'ED_MODEL'), 4);
  const versions = [st1.hwVersionNumber, st1.hwRevisionNumber, st1.fwVersionNumber, st1.fwRevisionNumber];
  versions.forEach((value) => checkBits('version number', value, 8));
  out.set(versions, 12);
  out.set(format.idForm === 'bcd' ? encodeBcd(st1.mfgSerialNumber, 8, 'MFG_SERIAL_NUMBER') : encodeString(st1.mfgSerialNumber, 16, format, 'MFG_SERIAL_NUMBER'), 16);
  return out;
}

export interface DeviceIdentification {
  /** IDENTIFICATION: the utility's id of the device, 20 characters or 20 BCD digits. */
  identification: string;
}

/** ST5. */
export function decodeDeviceIdentification(bytes: Uint8Array, format: TableFormat = DEFAULT_TABLE_FORMAT): DeviceIdentification {
  const length = format.idForm === 'bcd' ? 10 : 20;
  need(bytes, length, 'DEVICE_IDENT_TBL');
  return {
    identification: format.idForm === 'bcd' ? decodeBcd(bytes, 0, 10, 'IDENTIFICATION') : decodeString(bytes, 0, 20, format, 'IDENTIFICATION'),
  };
}

export function encodeDeviceIdentification(st5: DeviceIdentification, format: TableFormat = DEFAULT_TABLE_FORMAT): Uint8Array {
  return format.idForm === 'bcd' ? encodeBcd(st5.identification, 10, 'IDENTIFICATION') : encodeString(st5.identification, 20, format, 'IDENTIFICATION');
}

export type DecodedTable =
  | { table: 0; name: string; value: GeneralConfiguration }
  | { table: 1; name: string; value: ManufacturerIdentification }
  | { table: 5; name: string; value: DeviceIdentification };

/** The decoded form of the tables decoded here, or undefined for any other table. */
export function decodeKnownTable(table: number, bytes: Uint8Array, format: TableFormat = DEFAULT_TABLE_FORMAT): DecodedTable | undefined {
  switch (table) {
    case StandardTable.GEN_CONFIG:
      return { table, name: STANDARD_TABLE_NAMES[table] as string, value: decodeGeneralConfiguration(bytes) };
    case StandardTable.GENERAL_MFG_ID:
      return { table, name: STANDARD_TABLE_NAMES[table] as string, value: decodeManufacturerIdentification(bytes, format) };
    case StandardTable.DEVICE_IDENT:
      return { table, name: STANDARD_TABLE_NAMES[table] as string, value: decodeDeviceIdentification(bytes, format) };
    default:
      return undefined;
  }
}
