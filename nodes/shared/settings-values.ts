/**
 * Node properties arrive as strings from the editor and after ${VAR}
 * substitution from the environment; an empty one means "use the default".
 */
export class NodeConfigError extends Error {
  override readonly name = 'NodeConfigError';
}

/**
 * Node-RED leaves `${VAR}` as written when VAR is not set (flows imported into
 * a plain Node-RED, where the appliance has not set its variables): that means
 * "not configured", so the default applies.
 */
const UNSET_ENV_REFERENCE = /^\$\{[^}\s]+\}$/;

function unset(raw: unknown): boolean {
  return raw === undefined || raw === null || (typeof raw === 'string' && (raw.trim() === '' || UNSET_ENV_REFERENCE.test(raw.trim())));
}

export function numberProperty(label: string, raw: unknown, fallback: number, min: number, max: number): number {
  if (unset(raw)) return fallback;
  const text = String(raw).trim();
  if (!/^\d+$/.test(text)) throw new NodeConfigError(`${label} must be a whole number, got "${text}"`);
  const value = Number(text);
  if (value < min || value > max) throw new NodeConfigError(`${label} must be between ${min} and ${max}, got ${value}`);
  return value;
}

/** Like numberProperty, for settings that may be negative (dBm, dB). */
export function integerProperty(label: string, raw: unknown, fallback: number, min: number, max: number): number {
  if (unset(raw)) return fallback;
  const text = String(raw).trim();
  if (!/^-?\d+$/.test(text)) throw new NodeConfigError(`${label} must be a whole number, got "${text}"`);
  const value = Number(text);
  if (value < min || value > max) throw new NodeConfigError(`${label} must be between ${min} and ${max}, got ${value}`);
  return value;
}

export function stringProperty(raw: unknown, fallback = ''): string {
  if (typeof raw !== 'string' || unset(raw)) return fallback;
  return raw.trim();
}

/** A checkbox's value, or "true"/"false" from the environment; unset (or an unset ${VAR}) is `fallback`. */
export function booleanProperty(label: string, raw: unknown, fallback: boolean): boolean {
  if (typeof raw === 'boolean') return raw;
  const text = stringProperty(raw).toLowerCase();
  if (text === '') return fallback;
  if (text === 'true') return true;
  if (text === 'false') return false;
  throw new NodeConfigError(`${label} must be true or false, got "${text}"`);
}
