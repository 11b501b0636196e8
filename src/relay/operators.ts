import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { base32Encode, generateTotpSecret, totpUri, verifyTotp } from './totp.js';

/**
 * Local operators: the people allowed to command relays from the gateway
 * itself (CLI, admin API, a flow), each with a role and a TOTP authenticator
 * (RFC 6238). No role or no valid code, no actuation.
 *
 * The store is one JSON file in the data directory (`operators.json`, mode
 * 0600), replaced atomically (temp file, fsync, rename). TOTP secrets in it
 * are sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the
 * appliance's credential secret (`AMI_CREDENTIAL_SECRET` or the data
 * directory's `.credential-secret`, see src/appliance/secrets.ts), with the
 * operator's name as associated data, so a copy of the file alone gives no
 * secret and a sealed secret cannot be moved to another operator.
 *
 * Concurrency: the CLI and the running gateway may both use the file. Every
 * change (add, remove, enable/disable, and each authorization, which records
 * the accepted time step) runs under an exclusive lock file
 * (`operators.json.lock`, created with O_EXCL) and re-reads the file first, so
 * one code is accepted once across processes on this host. Limits: the lock is
 * advisory (a process that does not use this class ignores it); a lock left by
 * a crashed process is broken after `staleLockMs` (10 s), so a process stalled
 * for longer than that while holding it could overlap with the next one; the
 * data directory must be a local filesystem (rename and O_EXCL semantics).
 * Readers (list) read without the lock and always see a whole file.
 */

export const OPERATOR_ROLES = ['utility-administrator', 'field-technician'] as const;
export type OperatorRole = (typeof OPERATOR_ROLES)[number];

export const OPERATORS_FILE = 'operators.json';
export const OPERATORS_ISSUER = 'ami-gateway';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

export function isOperatorRole(value: unknown): value is OperatorRole {
  return typeof value === 'string' && (OPERATOR_ROLES as readonly string[]).includes(value);
}

export function isOperatorName(value: unknown): value is string {
  return typeof value === 'string' && NAME.test(value);
}

export type OperatorErrorCode =
  | 'BAD_NAME'
  | 'BAD_ROLE'
  | 'DUPLICATE'
  | 'UNKNOWN_OPERATOR'
  | 'STORE_CORRUPT'
  | 'SECRET_UNREADABLE'
  | 'STORE_LOCKED'
  | 'BAD_KEY';

/** Managing operators went wrong (add, remove, a damaged or locked file). */
export class OperatorError extends Error {
  override readonly name = 'OperatorError';
  constructor(
    readonly code: OperatorErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export type OperatorAuthCode = 'UNKNOWN_OPERATOR' | 'DISABLED' | 'BAD_ROLE' | 'BAD_CODE' | 'REPLAYED_CODE';
export const OPERATOR_AUTH_CODES: readonly OperatorAuthCode[] = ['UNKNOWN_OPERATOR', 'DISABLED', 'BAD_ROLE', 'BAD_CODE', 'REPLAYED_CODE'];

/** An authorization refused. The message names the operator and the reason, never the code typed. */
export class OperatorAuthError extends Error {
  override readonly name = 'OperatorAuthError';
  constructor(
    readonly code: OperatorAuthCode,
    readonly operator: string,
    message: string,
  ) {
    super(message);
  }
}

/** What `list()` shows of an operator: everything but the secret. */
export interface OperatorInfo {
  name: string;
  /** One of OPERATOR_ROLES, unless the file was edited by hand (such an operator is refused with BAD_ROLE). */
  role: string;
  /** ISO 8601. */
  createdAt: string;
  disabled: boolean;
  /** The last TOTP time step a code was accepted for; null if none yet. */
  lastStep: number | null;
  /** ISO 8601 time of the last accepted code. */
  lastAuthorizedAt: string | null;
  /** Refused codes since the last accepted one. */
  failedAttempts: number;
}

export interface OperatorAuthorization {
  operator: string;
  role: OperatorRole;
  mfa: true;
  /** The time step the code was accepted for (never accepted again). */
  step: number;
}

interface SealedSecret {
  alg: 'aes-256-gcm';
  iv: string;
  data: string;
  tag: string;
}

interface OperatorRecord extends OperatorInfo {
  secret: SealedSecret;
}

interface OperatorsFile {
  version: 1;
  operators: OperatorRecord[];
}

export interface OperatorStoreOptions {
  /** The data directory (config.dataDir); the file is `<dataDir>/operators.json`. */
  dataDir: string;
  /**
   * The appliance's credential secret (ensureCredentialSecret in
   * src/appliance/secrets.ts); the key sealing TOTP secrets is derived from it.
   */
  credentialSecret: string;
  /** Clock in ms since the epoch; Date.now by default. Inject it in tests. */
  clock?: () => number;
  /** Issuer shown by authenticator apps; 'ami-gateway' by default. */
  issuer?: string;
  /** TOTP steps accepted either side of now; 1 by default. */
  window?: number;
  /** How long to wait for the lock file before STORE_LOCKED; 5000 ms by default. */
  lockTimeoutMs?: number;
  /** A lock file older than this is taken as left by a crashed process and broken; 10000 ms by default. */
  staleLockMs?: number;
}

export interface AuthorizeOptions {
  /** Roles allowed for this action; both operator roles by default. Another role is BAD_ROLE. */
  roles?: readonly OperatorRole[];
}

export interface FailureCounters {
  total: number;
  byCode: Record<OperatorAuthCode, number>;
}

const HKDF_SALT = 'ami-gateway/relay/operators';
/** Refused codes in a row after which an operator is disabled (an online guess of a 6-digit code). */
export const MAX_FAILED_ATTEMPTS = 5;
const HKDF_INFO = 'totp-secret-seal-v1';

export class OperatorStore {
  readonly file: string;
  private readonly lockFile: string;
  private readonly key: Buffer;
  private readonly clock: () => number;
  private readonly issuer: string;
  private readonly window: number;
  private readonly lockTimeoutMs: number;
  private readonly staleLockMs: number;
  /** Serializes this process's changes; the lock file serializes processes. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly failureCounters: FailureCounters = {
    total: 0,
    byCode: { UNKNOWN_OPERATOR: 0, DISABLED: 0, BAD_ROLE: 0, BAD_CODE: 0, REPLAYED_CODE: 0 },
  };
  private authorizedCount = 0;

  constructor(options: OperatorStoreOptions) {
    if (typeof options.credentialSecret !== 'string' || options.credentialSecret.length < 16) {
      throw new OperatorError('BAD_KEY', 'the credential secret must have at least 16 characters');
    }
    this.file = path.join(options.dataDir, OPERATORS_FILE);
    this.lockFile = `${this.file}.lock`;
    this.key = Buffer.from(hkdfSync('sha256', Buffer.from(options.credentialSecret, 'utf8'), HKDF_SALT, HKDF_INFO, 32));
    this.clock = options.clock ?? Date.now;
    this.issuer = options.issuer ?? OPERATORS_ISSUER;
    this.window = options.window ?? 1;
    this.lockTimeoutMs = options.lockTimeoutMs ?? 5000;
    this.staleLockMs = options.staleLockMs ?? 10_000;
  }

  /**
   * Adds an operator with a fresh TOTP secret. The secret (base32) and its
   * otpauth URI are returned once, for the operator's authenticator app; the
   * store keeps only the sealed secret.
   */
  async add(name: string, role: string): Promise<{ name: string; role: OperatorRole; secretBase32: string; uri: string }> {
    if (!isOperatorName(name)) {
      throw new OperatorError('BAD_NAME', 'an operator name is 1 to 64 characters: letters, digits and . _ @ - (starting with a letter or digit)');
    }
    if (!isOperatorRole(role)) throw new OperatorError('BAD_ROLE', `the role must be one of ${OPERATOR_ROLES.join(', ')}`);
    const secret = generateTotpSecret();
    await this.mutate((file) => {
      if (file.operators.some((o) => o.name.toLowerCase() === name.toLowerCase())) {
        throw new OperatorError('DUPLICATE', `operator "${name}" already exists`);
      }
      file.operators.push({
        name,
        role,
        createdAt: new Date(this.clock()).toISOString(),
        disabled: false,
        lastStep: null,
        lastAuthorizedAt: null,
        failedAttempts: 0,
        secret: this.seal(name, secret),
      });
      return true;
    });
    const result = { name, role, secretBase32: base32Encode(secret, { padding: false }), uri: totpUri({ secret, account: name, issuer: this.issuer }) };
    secret.fill(0);
    return result;
  }

  /** Every operator, without secrets, by name. */
  async list(): Promise<OperatorInfo[]> {
    const file = await this.read();
    return file.operators.map(info).sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Removes an operator; UNKNOWN_OPERATOR if there is none by that name. */
  async remove(name: string): Promise<void> {
    await this.mutate((file) => {
      const index = file.operators.findIndex((o) => o.name === name);
      if (index < 0) throw new OperatorError('UNKNOWN_OPERATOR', `no operator "${name}"`);
      file.operators.splice(index, 1);
      return true;
    });
  }

  /** Disables (or enables again) an operator: a disabled operator's codes are refused with DISABLED. */
  async setDisabled(name: string, disabled: boolean): Promise<void> {
    await this.mutate((file) => {
      const operator = file.operators.find((o) => o.name === name);
      if (!operator) throw new OperatorError('UNKNOWN_OPERATOR', `no operator "${name}"`);
      if (operator.disabled === disabled && (disabled || operator.failedAttempts === 0)) return false;
      operator.disabled = disabled;
      // Enabling also ends a lockout after refused codes.
      if (!disabled) operator.failedAttempts = 0;
      return true;
    });
  }

  /**
   * Authorizes a local command: the operator exists, is enabled, has an
   * allowed role, and `code` is their TOTP code within ±window steps of `now`
   * and for a later step than the last accepted one (a code works once).
   * Resolves with the authorization or rejects with OperatorAuthError
   * (UNKNOWN_OPERATOR, DISABLED, BAD_ROLE, BAD_CODE, REPLAYED_CODE); other
   * errors (OperatorError: a damaged or locked file, a secret that does not
   * unseal under this credential secret) mean the store cannot decide, and
   * must be taken as a refusal too.
   */
  async authorize(name: string, code: string, now: number = this.clock(), options: AuthorizeOptions = {}): Promise<OperatorAuthorization> {
    const allowed = options.roles ?? OPERATOR_ROLES;
    let refusal: OperatorAuthError | undefined;
    let authorization: OperatorAuthorization | undefined;
    await this.mutate((file) => {
      const operator = file.operators.find((o) => o.name === name);
      if (!operator) {
        refusal = new OperatorAuthError('UNKNOWN_OPERATOR', name, `no operator "${name}"`);
        return false;
      }
      if (operator.disabled) {
        refusal = new OperatorAuthError('DISABLED', name, `operator "${name}" is disabled`);
        return false;
      }
      if (!isOperatorRole(operator.role) || !allowed.includes(operator.role)) {
        refusal = new OperatorAuthError('BAD_ROLE', name, `operator "${name}" has role "${String(operator.role)}", not ${allowed.join(' or ')}`);
        return false;
      }
      const secret = this.unseal(operator.name, operator.secret);
      let result: ReturnType<typeof verifyTotp>;
      try {
        result = verifyTotp(secret, code, now, { window: this.window, lastStep: operator.lastStep });
      } finally {
        secret.fill(0);
      }
      if (!result.ok) {
        operator.failedAttempts += 1;
        // Guessing a 6-digit code must not be free: after this many refusals in a row the operator is disabled
        // until `ami-gateway operators enable --name N` (which also resets the count).
        const lockedOut = operator.failedAttempts >= MAX_FAILED_ATTEMPTS;
        if (lockedOut) operator.disabled = true;
        const lock = lockedOut ? `; ${MAX_FAILED_ATTEMPTS} refused codes in a row: the operator is now disabled (ami-gateway operators enable --name ${name})` : '';
        refusal =
          result.reason === 'REPLAYED_CODE'
            ? new OperatorAuthError('REPLAYED_CODE', name, `operator "${name}": this code was already used${lock}`)
            : new OperatorAuthError('BAD_CODE', name, `operator "${name}": wrong or expired TOTP code${lock}`);
        return true;
      }
      operator.lastStep = result.step;
      operator.lastAuthorizedAt = new Date(now).toISOString();
      operator.failedAttempts = 0;
      authorization = { operator: operator.name, role: operator.role, mfa: true, step: result.step };
      return true;
    });
    if (refusal) {
      this.failureCounters.total += 1;
      this.failureCounters.byCode[refusal.code] += 1;
      throw refusal;
    }
    this.authorizedCount += 1;
    return authorization!;
  }

  /** Refusals this store instance has seen, in total and by code (process-local; failedAttempts per operator is on disk). */
  failures(): FailureCounters {
    return { total: this.failureCounters.total, byCode: { ...this.failureCounters.byCode } };
  }

  /** Authorizations this store instance granted. */
  authorized(): number {
    return this.authorizedCount;
  }

  // -------------------------------------------------------------------------

  private seal(name: string, secret: Uint8Array): SealedSecret {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    cipher.setAAD(Buffer.from(`operator:${name}`, 'utf8'));
    const data = Buffer.concat([cipher.update(secret), cipher.final()]);
    return { alg: 'aes-256-gcm', iv: iv.toString('base64'), data: data.toString('base64'), tag: cipher.getAuthTag().toString('base64') };
  }

  private unseal(name: string, sealed: SealedSecret): Buffer {
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.key, Buffer.from(sealed.iv, 'base64'));
      decipher.setAAD(Buffer.from(`operator:${name}`, 'utf8'));
      decipher.setAuthTag(Buffer.from(sealed.tag, 'base64'));
      return Buffer.concat([decipher.update(Buffer.from(sealed.data, 'base64')), decipher.final()]);
    } catch {
      throw new OperatorError(
        'SECRET_UNREADABLE',
        `the TOTP secret of operator "${name}" does not unseal: the credential secret (AMI_CREDENTIAL_SECRET or .credential-secret) is not the one it was added with`,
      );
    }
  }

  private async read(): Promise<OperatorsFile> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, operators: [] };
      throw err;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new OperatorError('STORE_CORRUPT', `${this.file} is not valid JSON`);
    }
    const f = parsed as { version?: unknown; operators?: unknown } | null;
    if (f === null || typeof f !== 'object' || f.version !== 1 || !Array.isArray(f.operators) || !f.operators.every(isRecord)) {
      throw new OperatorError('STORE_CORRUPT', `${this.file} is not an operators file (version 1)`);
    }
    return {
      version: 1,
      operators: f.operators.map((o) => ({ ...o, lastAuthorizedAt: o.lastAuthorizedAt ?? null, failedAttempts: o.failedAttempts ?? 0 })),
    };
  }

  /** Writes the file atomically: a 0600 temp file in the same directory, fsync, rename, fsync of the directory. */
  private async write(file: OperatorsFile): Promise<void> {
    const dir = path.dirname(this.file);
    const temp = path.join(dir, `.${OPERATORS_FILE}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    const handle = await open(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
    try {
      await handle.writeFile(`${JSON.stringify(file, null, 2)}\n`, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await rename(temp, this.file);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw err;
    }
    const dirHandle = await open(dir, 'r').catch(() => undefined);
    if (dirHandle) {
      await dirHandle.sync().catch(() => undefined);
      await dirHandle.close();
    }
  }

  /**
   * Runs `change` on a fresh read of the file under both locks; writes the
   * file when it returns true. Errors thrown by `change` reject (nothing written).
   */
  private mutate(change: (file: OperatorsFile) => boolean): Promise<void> {
    const run = async (): Promise<void> => {
      await mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
      const release = await this.lock();
      try {
        const file = await this.read();
        if (change(file)) await this.write(file);
      } finally {
        await release();
      }
    };
    const next = this.queue.then(run, run);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async lock(): Promise<() => Promise<void>> {
    const deadline = Date.now() + this.lockTimeoutMs;
    let delay = 5;
    for (;;) {
      try {
        const handle = await open(this.lockFile, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
        await handle.writeFile(`${process.pid}\n`);
        await handle.close();
        return () => unlink(this.lockFile).catch(() => undefined);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const age = await stat(this.lockFile).then(
        (s) => Date.now() - s.mtimeMs,
        () => 0,
      );
      if (age >= this.staleLockMs) {
        await unlink(this.lockFile).catch(() => undefined);
        continue;
      }
      if (Date.now() >= deadline) throw new OperatorError('STORE_LOCKED', `${this.lockFile} is held by another process`);
      // Waiting for another process to release the lock (milliseconds: it only writes a small file).
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 100);
    }
  }
}

function info(record: OperatorRecord): OperatorInfo {
  return {
    name: record.name,
    role: record.role,
    createdAt: record.createdAt,
    disabled: record.disabled,
    lastStep: record.lastStep,
    lastAuthorizedAt: record.lastAuthorizedAt,
    failedAttempts: record.failedAttempts,
  };
}

function isRecord(value: unknown): value is OperatorRecord {
  const r = value as Partial<Record<keyof OperatorRecord, unknown>> | null;
  const s = r?.secret as Partial<Record<keyof SealedSecret, unknown>> | undefined;
  return (
    r !== null &&
    typeof r === 'object' &&
    typeof r.name === 'string' &&
    // The role is checked at authorization (BAD_ROLE), so a hand-edited role does not hide the operator from list.
    typeof r.role === 'string' &&
    typeof r.createdAt === 'string' &&
    typeof r.disabled === 'boolean' &&
    (r.lastStep === null || (typeof r.lastStep === 'number' && Number.isInteger(r.lastStep))) &&
    (r.lastAuthorizedAt === null || r.lastAuthorizedAt === undefined || typeof r.lastAuthorizedAt === 'string') &&
    (r.failedAttempts === undefined || typeof r.failedAttempts === 'number') &&
    typeof s === 'object' &&
    s !== null &&
    s.alg === 'aes-256-gcm' &&
    typeof s.iv === 'string' &&
    typeof s.data === 'string' &&
    typeof s.tag === 'string'
  );
}
