/**
 * Vocabulary of the relay command lifecycle: commands, the meter port the
 * lifecycle talks through, results and typed errors.
 *
 * The relay is the COSEM Disconnect control object (interface class 70,
 * OBIS 0.0.96.3.10.255): control_state (attribute 3) 0 disconnected,
 * 1 connected, 2 ready for reconnection; methods 1 remote_disconnect and
 * 2 remote_reconnect. The DLMS/CoAP adapter implements RelayMeterPort.
 */

export const RELAY_ALLOWED_ROLES = ['utility-administrator', 'field-technician'] as const;
export type RelayRole = (typeof RELAY_ALLOWED_ROLES)[number];

export type RelayAction = 'disconnect' | 'reconnect';
export const RELAY_ACTIONS: readonly RelayAction[] = ['disconnect', 'reconnect'];

/** control_state of class 70: 0 disconnected, 1 connected, 2 ready for reconnection. */
export type ControlState = 0 | 1 | 2;

/** The authorization a command carries, already checked by whoever accepted it (HES envelope or local TOTP). */
export interface RelayAuthorization {
  source: 'hes' | 'local';
  operator: string;
  /** Must be one of RELAY_ALLOWED_ROLES. */
  role: string;
  /** Whether the operator passed multi-factor authentication for this command. */
  mfa: boolean;
}

export interface RelayCommand {
  /** Unique for ever; a second command with this id returns the first one's outcome. 1-256 printable characters. */
  id: string;
  /** The meter's endpoint name (as in the mesh registry). */
  meter: string;
  action: RelayAction;
  authorization: RelayAuthorization;
  /** ms since the epoch; past it an unfinished command finishes as EXPIRED. */
  notAfter: number;
  /** ms since the epoch; before it the command is deferred (reason 'not-before'). */
  notBefore?: number;
  /** Optional id of the rolling run the command belongs to. */
  runId?: string;
  /**
   * Who issued it, e.g. the id of the `relay command` node: results that come
   * later (after a restart, when the meter is back) go to that issuer. Not
   * part of the command's identity.
   */
  origin?: string;
}

// ---------------------------------------------------------------------------
// The meter port

export type RelayPortErrorCode =
  /** No answer from the meter (mesh timeout): the command stays pending. */
  | 'COMM_TIMEOUT_ERR'
  /** The meter reports no mains power (cannot actuate): the command stays pending. */
  | 'NO_POWER'
  /** The firing capacitor is not charged (E001): retried after the charge cycle. */
  | 'LOW_CAPACITOR'
  /** The meter refused our association/ciphering (E012). */
  | 'AUTH_FAILURE'
  /** The actuator could not move (E044). */
  | 'OBSTRUCTION'
  /** The meter refused the method for another reason (control mode, tamper lock, ...). */
  | 'REFUSED';

export class RelayPortError extends Error {
  override readonly name = 'RelayPortError';
  constructor(
    readonly code: RelayPortErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * How the lifecycle reaches a meter. Implementations throw RelayPortError
 * for meter-side failures; when `signal` aborts they must reject promptly
 * (with any error: the lifecycle recognises its own abort).
 */
export interface RelayMeterPort {
  /** COSEM class 70 attribute 3. */
  readControlState(meter: string, signal: AbortSignal): Promise<ControlState>;
  /** Load-side voltage, volts. */
  readLoadVoltage(meter: string, signal: AbortSignal): Promise<number>;
  /** Class 70 method 1 (remote_disconnect) or 2 (remote_reconnect). */
  invoke(meter: string, method: 'remote_disconnect' | 'remote_reconnect', signal: AbortSignal): Promise<void>;
  /**
   * The meter's alarm register 1 (class 1, 0.0.97.98.0.255, attribute 2), a
   * bit field; TAMPER_ALARM_BIT is the magnetic tamper. Optional: a port
   * without it cannot detect tamper before a reconnect (locks raised by
   * events still apply).
   */
  readAlarms?(meter: string, signal: AbortSignal): Promise<number>;
  /** Clears the bits of `mask` in the meter's alarm register 1 (a set-request writing the mask). */
  clearAlarms?(meter: string, mask: number, signal: AbortSignal): Promise<void>;
}

/** Alarm register 1, bit 16: fraud attempt (the magnetic tamper sensor). */
export const TAMPER_ALARM_BIT = 1 << 16;

// ---------------------------------------------------------------------------
// Results

/** Final codes: the command is finished. */
export type RelayFinalCode =
  | 'RELAY_OP_SUCCESS'
  | 'RELAY_WELD_DETECTED'
  | 'E012'
  | 'E044'
  | 'E099'
  | 'REFUSED'
  | 'UNAUTHORIZED'
  | 'EXPIRED'
  /** A reconnect refused because the meter has a standing tamper alarm (cleared by `alarms reset`). */
  | 'TAMPER_LOCKED';

/** Non-final codes: the command is kept in the journal and tried again. */
export type RelayWaitingCode = 'DEFERRED' | 'COMM_TIMEOUT_ERR';

export type RelayResultCode = RelayFinalCode | RelayWaitingCode;

export const RELAY_FINAL_CODES: readonly RelayFinalCode[] = [
  'RELAY_OP_SUCCESS',
  'RELAY_WELD_DETECTED',
  'E012',
  'E044',
  'E099',
  'REFUSED',
  'UNAUTHORIZED',
  'EXPIRED',
  'TAMPER_LOCKED',
];

/**
 * Why a command waits:
 * - `link`: RSSI/SNR below the thresholds (retried after linkRetryMs or on meterAvailable);
 * - `wear`: minimum interval or hourly cap of the relay (retried at retryAt);
 * - `E001`: low capacitor voltage (retried after the charge cycle);
 * - `not-before`: the command's window has not opened;
 * - `no-power`: the meter reports no mains power (waits for meterAvailable).
 */
export type RelayDeferralReason = 'link' | 'wear' | 'E001' | 'not-before' | 'no-power';

export interface RelayResult {
  commandId: string;
  meter: string;
  action: RelayAction;
  operator: string;
  source: RelayAuthorization['source'];
  code: RelayResultCode;
  /** True for RelayFinalCode: nothing more will happen for this command. */
  final: boolean;
  /**
   * Whether this command sent the relay method (an invoke that may have
   * reached the meter). The relay itself operates at most once per command.
   */
  actuated: boolean;
  /**
   * Invokes sent for this command when more than one: 2 after a resumed
   * command found the relay unmoved and invoked it once more.
   */
  attempts?: number;
  /** Already in the target state: confirmed without actuation. */
  idempotent?: boolean;
  /** control_state last read (after a re-sync for E099). */
  state?: ControlState;
  /** Load-side voltage last read, volts. */
  loadVoltage?: number;
  /** For DEFERRED. */
  reason?: RelayDeferralReason;
  /** For DEFERRED: when it is tried again (ms since the epoch), when known. */
  retryAt?: number;
  /** Human-readable detail (why deferred, the port error message, ...). */
  detail?: string;
  /** Concluded after a restart or re-dispatch from a journal that said the invoke may have been sent (read back first). */
  resumed?: boolean;
  runId?: string;
  /** ms since the epoch. */
  at: number;
}

export type RelayErrorCode =
  | 'BAD_COMMAND'
  | 'ID_CONFLICT'
  | 'CLOSED'
  | 'UNKNOWN_RUN'
  /** alarms reset: the meter has no such standing alarm. */
  | 'NO_SUCH_ALARM'
  /** alarms reset: no allowed role or no MFA. */
  | 'UNAUTHORIZED'
  /** alarms reset: the meter's own alarm register could not be cleared (unreachable, refused). */
  | 'METER_FAILED';

export class RelayError extends Error {
  override readonly name = 'RelayError';
  constructor(
    readonly code: RelayErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export function targetState(action: RelayAction): ControlState {
  return action === 'disconnect' ? 0 : 1;
}

export function methodFor(action: RelayAction): 'remote_disconnect' | 'remote_reconnect' {
  return action === 'disconnect' ? 'remote_disconnect' : 'remote_reconnect';
}

const PRINTABLE = /^[\x21-\x7e]{1,128}$/;

/** Throws RelayError BAD_COMMAND unless `command` is well formed. */
export function checkCommand(command: RelayCommand): void {
  const bad = (why: string): never => {
    throw new RelayError('BAD_COMMAND', why);
  };
  if (typeof command !== 'object' || command === null) bad('command must be an object');
  // Up to 256: a rolling run's command ids are `<run id>:<meter>`.
  if (typeof command.id !== 'string' || !/^[\x21-\x7e]{1,256}$/.test(command.id)) bad('id must be 1-256 printable characters without spaces');
  if (typeof command.meter !== 'string' || !PRINTABLE.test(command.meter)) bad('meter must be 1-128 printable characters without spaces');
  if (!RELAY_ACTIONS.includes(command.action)) bad(`action must be disconnect or reconnect`);
  if (!Number.isFinite(command.notAfter)) bad('notAfter must be a time in ms');
  if (command.notBefore !== undefined && !Number.isFinite(command.notBefore)) bad('notBefore must be a time in ms');
  if (command.origin !== undefined && (typeof command.origin !== 'string' || command.origin.length > 128)) bad('origin must be text of at most 128 characters');
  const auth = command.authorization;
  if (typeof auth !== 'object' || auth === null) bad('authorization is required');
  if (auth.source !== 'hes' && auth.source !== 'local') bad('authorization.source must be hes or local');
  if (typeof auth.operator !== 'string' || auth.operator.length === 0 || auth.operator.length > 128) bad('authorization.operator is required');
}

/** Whether the command's authorization allows actuation: an allowed role and MFA. */
export function authorizationProblem(auth: RelayAuthorization): string | undefined {
  if (!(RELAY_ALLOWED_ROLES as readonly string[]).includes(auth.role)) return `role ${JSON.stringify(auth.role)} may not operate relays`;
  if (auth.mfa !== true) return 'multi-factor authentication is required';
  return undefined;
}

/**
 * Whether `b` repeats command `a`: same id, meter, action and source. The
 * operator and the validity window may differ (a repeat issued later, by
 * someone else, with a fresh code): it returns the first one's outcome and
 * actuates nothing. Same id with another meter, action or source is an
 * ID_CONFLICT.
 */
export function sameCommand(a: RelayCommand, b: RelayCommand): boolean {
  return a.id === b.id && a.meter === b.meter && a.action === b.action && a.authorization.source === b.authorization.source;
}

// ---------------------------------------------------------------------------
// Alarms and reports

/**
 * Alarms the relay service raises and keeps per meter until an authorized
 * operator clears them (`ami-gateway alarms reset --meter ID --code CODE`):
 * - TAMPER: magnetic tamper (the meter's alarm register, or an event from the
 *   flow); while it stands, reconnects are refused (TAMPER_LOCKED);
 * - RELAY_WELD_DETECTED: disconnected but voltage on the load side; a truck
 *   roll. It does not lock anything (a disconnect already failed).
 */
export const RELAY_ALARM_CODES = ['TAMPER', 'RELAY_WELD_DETECTED'] as const;
export type RelayAlarmCode = (typeof RELAY_ALARM_CODES)[number];

export interface RelayAlarm {
  meter: string;
  code: RelayAlarmCode;
  /** ms since the epoch. */
  raisedAt: number;
  /** Where it came from: the meter's alarm register read before a reconnect, a relay outcome, or an event a flow reported. */
  source: 'meter-alarm-register' | 'relay-outcome' | 'event';
  detail: string;
  /** The command during which it was found, if any. */
  commandId?: string;
}

/**
 * A record for the HES (structurally src/hes/contract.ts HesRecord): every
 * final outcome (kind result), every alarm raised (kind alarm) and cleared
 * (kind event). Journaled in the same atomic write as what it reports and
 * handed to the outbox by RelayReporter; the key makes a repeat harmless.
 */
export interface RelayReport {
  key: string;
  kind: 'result' | 'alarm' | 'event';
  meter: string;
  ts: number;
  body: Record<string, unknown>;
}
