import { parseArgs } from 'node:util';
import { isOperatorName, isOperatorRole, OPERATOR_ROLES, OperatorAuthError, OperatorError, OperatorStore } from '../relay/operators.js';
import { ensureCredentialSecret } from './secrets.js';

/**
 * `ami-gateway operators add|list|remove|disable|enable|verify`: local
 * operators (role + TOTP) who may command relays from the gateway. Works
 * offline on the data directory (AMI_DATA_DIR), with or without a running
 * gateway; the store's lock file keeps the two consistent.
 */
export class OperatorsUsageError extends Error {
  override readonly name = 'OperatorsUsageError';
}

export interface OperatorsCommandEnv {
  dataDir: string;
  /** AMI_CREDENTIAL_SECRET, if set; otherwise the data directory's .credential-secret (created if missing). */
  credentialSecret: string | undefined;
  clock?: () => number;
}

const ACTIONS = ['add', 'list', 'remove', 'disable', 'enable', 'verify'] as const;

function requireName(name: string | undefined): string {
  if (name === undefined) throw new OperatorsUsageError('--name is required');
  if (!isOperatorName(name)) throw new OperatorsUsageError('--name: 1 to 64 characters, letters, digits and . _ @ - (starting with a letter or digit)');
  return name;
}

export async function operatorsCommand(args: string[], env: OperatorsCommandEnv): Promise<{ exitCode: number; output: string }> {
  const [action, ...rest] = args;
  if (!(ACTIONS as readonly string[]).includes(action ?? '')) {
    throw new OperatorsUsageError(`unknown operators command "${action ?? ''}": expected ${ACTIONS.join(', ')}`);
  }
  const { values, positionals } = parseArgs({
    args: rest,
    options: { name: { type: 'string' }, role: { type: 'string' }, totp: { type: 'string' }, json: { type: 'boolean' } },
    strict: true,
    allowPositionals: true,
  });
  if (positionals.length > 0) throw new OperatorsUsageError(`unexpected argument "${positionals[0]}"`);
  const allowed: Record<(typeof ACTIONS)[number], readonly string[]> = {
    add: ['name', 'role', 'json'],
    list: ['json'],
    remove: ['name', 'json'],
    disable: ['name', 'json'],
    enable: ['name', 'json'],
    verify: ['name', 'totp', 'json'],
  };
  const act = action as (typeof ACTIONS)[number];
  for (const option of Object.keys(values)) {
    if (!allowed[act].includes(option)) throw new OperatorsUsageError(`operators ${act} takes no --${option}`);
  }
  // Validate before touching the data directory (a usage error leaves nothing behind).
  const name = act === 'list' ? undefined : requireName(values.name);
  if (act === 'add' && !isOperatorRole(values.role)) {
    throw new OperatorsUsageError(`--role must be ${OPERATOR_ROLES.join(' or ')}`);
  }
  if (act === 'verify' && (values.totp === undefined || values.totp === '')) throw new OperatorsUsageError('--totp is required');

  const secret = ensureCredentialSecret(await ensureDir(env.dataDir), env.credentialSecret);
  const store = new OperatorStore({ dataDir: env.dataDir, credentialSecret: secret.secret, ...(env.clock ? { clock: env.clock } : {}) });
  const json = values.json === true;
  try {
    switch (act) {
      case 'add': {
        const added = await store.add(name!, values.role!);
        if (json) return { exitCode: 0, output: JSON.stringify({ ...added, note: 'the secret is shown once and cannot be shown again' }, null, 2) };
        return {
          exitCode: 0,
          output: [
            `operator ${added.name} added (${added.role})`,
            `TOTP secret: ${added.secretBase32}`,
            `otpauth URI: ${added.uri}`,
            'Enter the secret or the URI (as a QR code) in the operator\'s authenticator app now:',
            'it is shown this once and cannot be shown again (remove and add the operator to issue a new one).',
          ].join('\n'),
        };
      }
      case 'list': {
        const operators = await store.list();
        if (json) return { exitCode: 0, output: JSON.stringify(operators, null, 2) };
        if (operators.length === 0) return { exitCode: 0, output: `no operators (add one with: ami-gateway operators add --name N --role ${OPERATOR_ROLES.join('|')})` };
        const lines = operators.map((o) =>
          [
            o.name.padEnd(24),
            o.role.padEnd(22),
            (o.disabled ? 'disabled' : 'enabled').padEnd(9),
            `created ${o.createdAt}`,
            `last code ${o.lastAuthorizedAt ?? 'never'}`,
            o.failedAttempts > 0 ? `${o.failedAttempts} refused since` : '',
          ]
            .join('  ')
            .trimEnd(),
        );
        return { exitCode: 0, output: [`${operators.length} operators`, ...lines].join('\n') };
      }
      case 'remove':
        await store.remove(name!);
        return { exitCode: 0, output: json ? JSON.stringify({ removed: name }) : `operator ${name} removed` };
      case 'disable':
      case 'enable':
        await store.setDisabled(name!, act === 'disable');
        return { exitCode: 0, output: json ? JSON.stringify({ operator: name, disabled: act === 'disable' }) : `operator ${name} ${act}d` };
      case 'verify': {
        try {
          const authorization = await store.authorize(name!, values.totp!);
          return {
            exitCode: 0,
            output: json
              ? JSON.stringify({ ok: true, ...authorization })
              : `ok: operator ${authorization.operator} (${authorization.role}), code accepted (it cannot be used again)`,
          };
        } catch (err) {
          if (!(err instanceof OperatorAuthError)) throw err;
          return {
            exitCode: 1,
            output: json ? JSON.stringify({ ok: false, code: err.code, operator: err.operator }) : `refused: ${err.code}: ${err.message}`,
          };
        }
      }
    }
  } catch (err) {
    if (err instanceof OperatorError) {
      return { exitCode: 1, output: json ? JSON.stringify({ ok: false, code: err.code, message: err.message }) : `ami-gateway: ${err.code}: ${err.message}` };
    }
    throw err;
  }
}

async function ensureDir(dir: string): Promise<string> {
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}
