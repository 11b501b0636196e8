import { existsSync, readFileSync } from 'node:fs';
import { ConfigError } from './config.js';

export interface AdminUser {
  username: string;
  /** bcrypt hash, as Node-RED's adminAuth expects. */
  password: string;
  permissions: '*' | 'read';
}

const BCRYPT_HASH = /^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$/;

/**
 * Reads admin users from the appliance settings file
 * (`{"adminUsers": [{"username", "password": "<bcrypt hash>", "permissions"}]}`).
 * A missing file means no users; a file that is present but wrong stops the
 * start, because running without authentication when the operator asked for
 * it would be worse than not running.
 */
export function loadAdminUsers(file: string): AdminUser[] {
  if (!existsSync(file)) return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError('AMI_SETTINGS_FILE', `${file} is not valid JSON: ${(err as Error).message}`);
  }
  const users = (parsed as { adminUsers?: unknown } | null)?.adminUsers;
  if (users === undefined) return [];
  if (!Array.isArray(users)) throw new ConfigError('AMI_SETTINGS_FILE', `${file}: adminUsers must be an array`);
  return users.map((user: unknown, index): AdminUser => {
    const u = user as Partial<Record<keyof AdminUser, unknown>> | null;
    if (typeof u?.username !== 'string' || u.username.trim() === '') {
      throw new ConfigError('AMI_SETTINGS_FILE', `${file}: adminUsers[${index}].username must be a non-empty string`);
    }
    if (typeof u.password !== 'string' || !BCRYPT_HASH.test(u.password)) {
      throw new ConfigError(
        'AMI_SETTINGS_FILE',
        `${file}: adminUsers[${index}].password must be a bcrypt hash (make one with: ami-gateway hash-password)`,
      );
    }
    const permissions = u.permissions ?? '*';
    if (permissions !== '*' && permissions !== 'read') {
      throw new ConfigError('AMI_SETTINGS_FILE', `${file}: adminUsers[${index}].permissions must be "*" or "read"`);
    }
    return { username: u.username, password: u.password, permissions };
  });
}
