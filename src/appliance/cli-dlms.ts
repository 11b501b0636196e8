import { parseArgs } from 'node:util';
import { decodeApdu, describeApdu } from '../dlms/apdu.js';
import { DlmsError } from '../dlms/errors.js';
import { decryptApdu, isCipheredApdu, parseCipheredApdu } from '../dlms/security.js';
import { decodeWrapper, looksLikeWrapper } from '../dlms/wrapper.js';
import { readPushProfile } from '../dlms/profile.js';

/** Thrown for bad command-line input; the CLI maps it to exit code 2. */
export class DlmsUsageError extends Error {
  override readonly name = 'DlmsUsageError';
}

function hexArgument(option: string, raw: string | undefined, bytes?: number): Buffer | undefined {
  if (raw === undefined) return undefined;
  // Captures come with spaces, colons or a 0x prefix; accept them.
  const text = raw.replace(/^0x/i, '').replace(/[\s:]/g, '');
  if (text.length === 0 || text.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(text)) {
    throw new DlmsUsageError(`${option} must be hex digits (an even number of them)`);
  }
  const value = Buffer.from(text, 'hex');
  if (bytes !== undefined && value.length !== bytes) throw new DlmsUsageError(`${option} must be ${bytes} bytes (${bytes * 2} hex digits), not ${value.length}`);
  return value;
}

export interface DlmsDecodeReport {
  wrapper?: { version: number; sourceWPort: number; destinationWPort: number };
  securityControl?: number;
  security?: { authentication: boolean; encryption: boolean; broadcastKey: boolean; framing: 'glo' | 'general-glo'; tag: number };
  invocationCounter?: number;
  systemTitle?: string;
  plaintext?: string;
  apdu?: unknown;
  values?: unknown;
}

/**
 * `ami-gateway dlms decode`: a field engineer's look at one captured frame,
 * offline. Resolves with the exit code: 0 decoded, 1 the frame was refused
 * (tag mismatch, malformed, no keys given for a ciphered frame).
 */
export function dlmsDecodeCommand(args: string[], out: (text: string) => void, err: (text: string) => void): number {
  const { values } = parseArgs({
    args,
    options: {
      hex: { type: 'string' },
      ek: { type: 'string' },
      ak: { type: 'string' },
      'system-title': { type: 'string' },
      json: { type: 'boolean' },
    },
    strict: true,
  });
  const frame = hexArgument('--hex', values.hex);
  if (!frame) throw new DlmsUsageError('--hex is required: the frame as hex digits');
  const ek = hexArgument('--ek', values.ek, 16);
  const ak = hexArgument('--ak', values.ak, 16);
  const systemTitle = hexArgument('--system-title', values['system-title'], 8);
  const report: DlmsDecodeReport = {};
  const print = (): void => {
    out(values.json ? JSON.stringify(report, null, 2) : humanReport(report));
  };
  try {
    let apduBytes: Uint8Array = frame;
    if (looksLikeWrapper(frame)) {
      const wrapper = decodeWrapper(frame);
      report.wrapper = { version: wrapper.version, sourceWPort: wrapper.sourceWPort, destinationWPort: wrapper.destinationWPort };
      apduBytes = wrapper.apdu;
    }
    let plaintext: Buffer;
    if (isCipheredApdu(apduBytes)) {
      const ciphered = parseCipheredApdu(apduBytes);
      report.securityControl = ciphered.securityControl;
      report.security = {
        authentication: ciphered.security.authentication,
        encryption: ciphered.security.encryption,
        broadcastKey: ciphered.security.broadcastKey,
        framing: ciphered.kind,
        tag: ciphered.tag,
      };
      report.invocationCounter = ciphered.invocationCounter;
      if (ciphered.systemTitle && ciphered.systemTitle.length > 0) report.systemTitle = ciphered.systemTitle.toString('hex');
      const title = ciphered.systemTitle && ciphered.systemTitle.length > 0 ? ciphered.systemTitle : systemTitle;
      if (!ek || !ak) {
        print();
        err('ami-gateway: the frame is ciphered: give --ek and --ak (and --system-title if the frame has none) to decrypt it');
        return 1;
      }
      if (!title) {
        print();
        err('ami-gateway: NO_SYSTEM_TITLE: the frame carries no system title: give --system-title');
        return 1;
      }
      plaintext = decryptApdu(ciphered, { ek, ak }, title);
    } else {
      plaintext = Buffer.from(apduBytes);
    }
    report.plaintext = plaintext.toString('hex');
    const apdu = decodeApdu(plaintext);
    report.apdu = describeApdu(apdu);
    const profile = readPushProfile(apdu);
    if (profile) report.values = profile.values;
    print();
    return 0;
  } catch (caught) {
    if (!(caught instanceof DlmsError)) throw caught;
    if (Object.keys(report).length > 0) print();
    const what = caught.code === 'MIC_FAILURE' ? 'authentication tag mismatch (wrong keys, wrong system title, or the frame was altered)' : caught.message;
    err(`ami-gateway: ${caught.code}: ${what}${caught.offset !== undefined && caught.code !== 'MIC_FAILURE' ? '' : ''}`);
    return 1;
  }
}

function humanReport(report: DlmsDecodeReport): string {
  const lines: string[] = [];
  if (report.wrapper) lines.push(`wrapper            version ${report.wrapper.version}, wPort ${report.wrapper.sourceWPort} -> ${report.wrapper.destinationWPort}`);
  if (report.securityControl !== undefined && report.security) {
    const parts = [report.security.authentication ? 'authenticated' : '', report.security.encryption ? 'encrypted' : ''].filter(Boolean).join(' + ');
    lines.push(`security control   0x${report.securityControl.toString(16).padStart(2, '0')} (${parts}, ${report.security.framing}, tag 0x${report.security.tag.toString(16)})`);
    lines.push(`invocation counter ${report.invocationCounter}`);
    if (report.systemTitle) lines.push(`system title       ${report.systemTitle}`);
  }
  if (report.plaintext !== undefined) lines.push(`plaintext          ${report.plaintext}`);
  if (report.apdu !== undefined) lines.push(`apdu               ${JSON.stringify(report.apdu, null, 2).replace(/\n/g, '\n                   ')}`);
  if (report.values !== undefined) lines.push(`values             ${JSON.stringify(report.values)}`);
  return lines.join('\n');
}
