import { parseArgs } from 'node:util';
import { C1218Error } from '../c1218/errors.js';
import type { C1218Timeouts } from '../c1218/link.js';
import { C1218_INITIAL_BAUD_RATE, openOpticalPort } from '../c1218/serial.js';
import { C1218_BAUD_RATES, PASSWORD_LENGTH, USER_LENGTH, type IdentifyResponse, type NegotiateResponse } from '../c1218/services.js';
import { withC1218Session, type C1218SessionOptions } from '../c1218/session.js';
import type { C1218Stream } from '../c1218/stream.js';
import {
  DEFAULT_TABLE_FORMAT,
  MANUFACTURER_TABLE_BASE,
  decodeDeviceIdentification,
  decodeGeneralConfiguration,
  decodeKnownTable,
  decodeManufacturerIdentification,
  tableFormatOf,
  tableLabel,
  tableName,
  tablesUsed,
  type DecodedTable,
  type DeviceIdentification,
  type GeneralConfiguration,
  type ManufacturerIdentification,
  type TableFormat,
} from '../c1218/tables.js';

/**
 * `ami-gateway optical ident|read`: a field engineer's session with a meter
 * through an ANSI type 2 optical probe (C12.18), for commissioning and for
 * meters that cannot be reached over the mesh.
 *
 *   optical ident --port PATH [--baud 9600] [--user NAME] [--user-id N] [--password TEXT] [--json]
 *   optical read  --port PATH --table N|STn|MTn [--offset N --count N] [...same options]
 *
 * The password comes from --password or AMI_OPTICAL_PASSWORD (kept out of the
 * shell history). Exit codes: 0 done, 1 the meter refused or the link failed
 * (`ami-gateway: <CODE>: message`), 2 usage (OpticalUsageError, mapped by the
 * CLI), 3 the port could not be opened.
 */
export class OpticalUsageError extends Error {
  override readonly name = 'OpticalUsageError';
}

export interface OpticalCommandContext {
  /** Where AMI_OPTICAL_PASSWORD is read (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Link-layer timeouts and retries; the C12.18 defaults otherwise (tests shorten them). */
  link?: Partial<C1218Timeouts> & { retries?: number };
}

export interface OpticalIdentReport {
  port: string;
  identification: ReturnType<typeof identificationJson>;
  negotiated?: NegotiateResponse;
  generalConfiguration?: GeneralConfiguration;
  manufacturer: ManufacturerIdentification;
  device?: DeviceIdentification;
  /** Why ST5 is missing, when it is (the meter refused it). */
  deviceError?: string;
  tables?: string[];
}

export interface OpticalReadReport {
  port: string;
  table: number;
  label: string;
  name?: string;
  offset?: number;
  count?: number;
  length: number;
  hex: string;
  decoded?: DecodedTable['value'];
}

function integer(option: string, raw: string | undefined, min: number, max: number): number | undefined {
  if (raw === undefined) return undefined;
  if (!/^(0x[0-9a-f]+|\d+)$/i.test(raw)) throw new OpticalUsageError(`${option} must be a number, got "${raw}"`);
  const value = Number(raw);
  if (value < min || value > max) throw new OpticalUsageError(`${option} must be from ${min} to ${max}, got ${raw}`);
  return value;
}

/** A table as engineers write it: 5, ST5, MT3 (= 2048 + 3). */
function tableArgument(raw: string): number {
  const named = /^(ST|MT)(\d+)$/i.exec(raw);
  if (named) {
    const number = Number(named[2]);
    if (number >= MANUFACTURER_TABLE_BASE) throw new OpticalUsageError(`--table ${raw}: table numbers go up to ${MANUFACTURER_TABLE_BASE - 1}`);
    return (named[1] as string).toUpperCase() === 'MT' ? MANUFACTURER_TABLE_BASE + number : number;
  }
  return integer('--table', raw, 0, 0xffff) as number;
}

function latin1Argument(option: string, raw: string, max: number): string {
  if (raw.length > max) throw new OpticalUsageError(`${option} has at most ${max} characters`);
  if (/[^\u0000-\u00ff]/.test(raw)) throw new OpticalUsageError(`${option} must be latin1 text`);
  return raw;
}

function identificationJson(id: IdentifyResponse): { standard: number; standardName: string; version: number; revision: number; features: string } {
  return { standard: id.standard, standardName: id.standardName, version: id.version, revision: id.revision, features: Buffer.from(id.features).toString('hex') };
}

export async function opticalCommand(args: string[], context: OpticalCommandContext = {}): Promise<{ exitCode: number; output: string }> {
  const [action, ...rest] = args;
  if (action !== 'ident' && action !== 'read') throw new OpticalUsageError(`unknown optical command "${action ?? ''}": expected ident or read`);
  let values;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        port: { type: 'string' },
        baud: { type: 'string' },
        table: { type: 'string' },
        offset: { type: 'string' },
        count: { type: 'string' },
        user: { type: 'string' },
        'user-id': { type: 'string' },
        password: { type: 'string' },
        json: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new OpticalUsageError((err as Error).message);
  }
  const port = values.port;
  if (!port) throw new OpticalUsageError('--port is required: the optical probe (e.g. /dev/ttyUSB0)');
  const baudRate = integer('--baud', values.baud, 1, 1_000_000) ?? C1218_INITIAL_BAUD_RATE;
  if (!C1218_BAUD_RATES.includes(baudRate)) throw new OpticalUsageError(`--baud must be one of ${C1218_BAUD_RATES.join(', ')}`);
  const offset = integer('--offset', values.offset, 0, 0xffffff);
  const count = integer('--count', values.count, 0, 0xffff);
  if ((offset === undefined) !== (count === undefined)) throw new OpticalUsageError('--offset and --count go together');
  let table: number | undefined;
  if (action === 'read') {
    if (values.table === undefined) throw new OpticalUsageError('--table is required: a table number, STn or MTn');
    table = tableArgument(values.table);
  } else if (values.table !== undefined || offset !== undefined) {
    throw new OpticalUsageError('ident reads ST0, ST1 and ST5: --table, --offset and --count belong to read');
  }
  const env = context.env ?? process.env;
  const passwordText = values.password ?? env.AMI_OPTICAL_PASSWORD;
  const session: C1218SessionOptions = {
    ...context.link,
    userId: integer('--user-id', values['user-id'], 0, 0xffff) ?? 0,
    user: latin1Argument('--user', values.user ?? '', USER_LENGTH),
    password: passwordText === undefined || passwordText === '' ? undefined : latin1Argument('the password', passwordText, PASSWORD_LENGTH),
    baudRate,
  };

  let stream: C1218Stream;
  try {
    stream = await openOpticalPort(port, { baudRate: C1218_INITIAL_BAUD_RATE });
  } catch (err) {
    return { exitCode: 3, output: `ami-gateway: ${err instanceof C1218Error ? err.code : 'PORT_OPEN_FAILED'}: ${(err as Error).message}` };
  }
  try {
    if (action === 'ident') {
      const report = await identify(stream, port, session);
      return { exitCode: 0, output: values.json ? JSON.stringify(report, null, 2) : identText(report) };
    }
    const report = await read(stream, port, session, table as number, offset, count);
    return { exitCode: 0, output: values.json ? JSON.stringify(report, null, 2) : readText(report) };
  } catch (err) {
    if (!(err instanceof C1218Error)) throw err;
    return { exitCode: 1, output: `ami-gateway: ${err.code}: ${err.message}` };
  } finally {
    await stream.close();
  }
}

/** ST0 for the table format, or undefined when the meter will not give it (the defaults then apply). */
async function generalConfiguration(read: () => Promise<Uint8Array>): Promise<GeneralConfiguration | undefined> {
  try {
    return decodeGeneralConfiguration(await read());
  } catch (err) {
    if (err instanceof C1218Error && err.responseCode !== undefined) return undefined;
    throw err;
  }
}

async function identify(stream: C1218Stream, port: string, options: C1218SessionOptions): Promise<OpticalIdentReport> {
  return withC1218Session(stream, options, async (client, session) => {
    const st0 = await generalConfiguration(() => client.fullRead(0));
    const format: TableFormat = st0 ? tableFormatOf(st0) : DEFAULT_TABLE_FORMAT;
    const manufacturer = decodeManufacturerIdentification(await client.fullRead(1), format);
    const report: OpticalIdentReport = { port, identification: identificationJson(session.identification), manufacturer };
    if (session.negotiated) report.negotiated = session.negotiated;
    if (st0) {
      report.generalConfiguration = st0;
      report.tables = tablesUsed(st0).map(tableLabel);
    }
    try {
      report.device = decodeDeviceIdentification(await client.fullRead(5), format);
    } catch (err) {
      // Not every meter has ST5, or lets this user read it: the rest of the report still stands.
      if (!(err instanceof C1218Error && err.responseCode !== undefined)) throw err;
      report.deviceError = `${err.code}: ${err.message}`;
    }
    return report;
  });
}

async function read(stream: C1218Stream, port: string, options: C1218SessionOptions, table: number, offset?: number, count?: number): Promise<OpticalReadReport> {
  return withC1218Session(stream, options, async (client) => {
    const partial = offset !== undefined && count !== undefined;
    const data = partial ? await client.partialRead(table, offset, count) : await client.fullRead(table);
    const report: OpticalReadReport = { port, table, label: tableLabel(table), length: data.length, hex: Buffer.from(data).toString('hex') };
    const name = tableName(table);
    if (name) report.name = name;
    if (partial) Object.assign(report, { offset, count });
    else if (table === 0 || table === 1 || table === 5) {
      const st0 = table === 0 ? undefined : await generalConfiguration(() => client.fullRead(0));
      report.decoded = decodeKnownTable(table, data, st0 ? tableFormatOf(st0) : DEFAULT_TABLE_FORMAT)?.value;
    }
    return report;
  });
}

function row(label: string, value: string): string {
  return `${label.padEnd(18)}${value}`;
}

function printable(hex: string): string {
  const text = Buffer.from(hex, 'hex').toString('latin1');
  return /^[\x20-\x7e]+$/.test(text) ? ` (${text})` : '';
}

function identText(report: OpticalIdentReport): string {
  const { identification: id, manufacturer: m } = report;
  const lines = [row('standard', `${id.standardName} version ${id.version} revision ${id.revision}${id.features ? `, features ${id.features}` : ''}`)];
  if (report.negotiated) {
    const n = report.negotiated;
    lines.push(row('negotiated', `packet size ${n.packetSize}, ${n.maxPackets} packets${n.baudRate ? `, ${n.baudRate} baud` : ''}`));
  }
  lines.push(
    row('manufacturer', m.manufacturer),
    row('model', m.edModel),
    row('hardware', `${m.hwVersionNumber}.${m.hwRevisionNumber}`),
    row('firmware', `${m.fwVersionNumber}.${m.fwRevisionNumber}`),
    row('serial number', m.mfgSerialNumber),
  );
  lines.push(row('identification', report.device ? report.device.identification : `unavailable (${report.deviceError ?? 'refused'})`));
  const st0 = report.generalConfiguration;
  if (st0) {
    lines.push(
      row('device class', `${st0.deviceClass}${printable(st0.deviceClass)}`),
      row('nameplate', st0.nameplateTypeName),
      row('table format', `${st0.formatControl1.dataOrder}, ${st0.formatControl1.charFormatName}, identifiers as ${st0.formatControl2.idForm}`),
      row('C12.19 version', `${st0.stdVersionNo}.${st0.stdRevisionNo}`),
      row('tables', (report.tables ?? []).join(' ')),
    );
  }
  return lines.join('\n');
}

function hexDump(hex: string, startOffset: number): string[] {
  const bytes = Buffer.from(hex, 'hex');
  const lines: string[] = [];
  for (let at = 0; at < bytes.length; at += 16) {
    const slice = bytes.subarray(at, at + 16);
    const hexPart = Array.from(slice, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = Array.from(slice, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${(startOffset + at).toString(16).padStart(6, '0')}  ${hexPart.padEnd(47)}  |${ascii}|`);
  }
  return lines;
}

function readText(report: OpticalReadReport): string {
  const title = `${report.label}${report.name ? ` ${report.name}` : ''}: ${report.length} bytes${report.offset !== undefined ? ` from offset ${report.offset}` : ''}`;
  if (report.decoded) {
    const lines = Object.entries(report.decoded).map(([key, value]) => row(key, typeof value === 'object' ? JSON.stringify(value) : String(value)));
    return [title, ...lines].join('\n');
  }
  return [title, ...hexDump(report.hex, report.offset ?? 0)].join('\n');
}
