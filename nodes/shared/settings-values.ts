/**
 * Node properties arrive as strings from the editor and after ${VAR}
 * substitution from the environment; an empty one means "use the default".
 */
export class NodeConfigError extends Error {
  override readonly name = 'NodeConfigError';
}

export function numberProperty(label: string, raw: unknown, fallback: number, min: number, max: number): number {
  if (raw === undefined || raw === null || (typeof raw === 'string' && raw.trim() === '')) return fallback;
  const text = String(raw).trim();
  if (!/^\d+$/.test(text)) throw new NodeConfigError(`${label} must be a whole number, got "${text}"`);
  const value = Number(text);
  if (value < min || value > max) throw new NodeConfigError(`${label} must be between ${min} and ${max}, got ${value}`);
  return value;
}

export function stringProperty(raw: unknown, fallback = ''): string {
  if (typeof raw !== 'string') return fallback;
  const text = raw.trim();
  return text === '' ? fallback : text;
}
