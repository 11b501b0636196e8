import { isIP } from 'node:net';
import { BackhaulError } from './errors.js';

/** Where OpenVPN's management interface listens. */
export type ManagementAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/**
 * The gateway's default: a unix socket, which only local users with access to
 * the file can reach (OpenVPN: `management /run/openvpn/ami.sock unix`).
 */
export const DEFAULT_MANAGEMENT_ADDRESS = '/run/openvpn/ami.sock';

/**
 * Reads a management address as an operator writes it:
 * `unix:/run/openvpn/ami.sock` or a path (`/run/openvpn/ami.sock`,
 * `./ami.sock`) for a unix socket; `127.0.0.1:7505`, `localhost:7505` or
 * `[::1]:7505` for TCP.
 */
export function parseManagementAddress(text: string): ManagementAddress {
  const raw = text.trim();
  if (raw === '') throw new BackhaulError('BAD_ADDRESS', 'the management address is empty');
  if (raw.startsWith('unix:')) {
    const path = raw.slice('unix:'.length);
    if (path === '') throw new BackhaulError('BAD_ADDRESS', `"${raw}" names no socket path`);
    return { kind: 'unix', path };
  }
  if (raw.startsWith('/') || raw.startsWith('./') || raw.startsWith('../')) return { kind: 'unix', path: raw };
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(raw);
  const plain = /^([^:\s/]+):(\d+)$/.exec(raw);
  const match = bracketed ?? plain;
  if (!match) {
    throw new BackhaulError('BAD_ADDRESS', `"${raw}" is not a management address: expected host:port, [IPv6]:port, unix:/path or a socket path`);
  }
  const host = match[1] ?? '';
  if (bracketed && isIP(host) !== 6) throw new BackhaulError('BAD_ADDRESS', `"${host}" in brackets is not an IPv6 address`);
  const port = Number(match[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new BackhaulError('BAD_ADDRESS', `port ${match[2] ?? ''} is not between 1 and 65535`);
  return { kind: 'tcp', host, port };
}

export function formatManagementAddress(address: ManagementAddress): string {
  if (address.kind === 'unix') return `unix:${address.path}`;
  return isIP(address.host) === 6 ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/**
 * The TCP port of a management address (the port the kernel allowlists guard
 * as OpenVPN's management port), or undefined for a unix socket or an address
 * that does not parse (the configuration has refused those already).
 */
export function managementTcpPort(text: string): number | undefined {
  try {
    const address = parseManagementAddress(text);
    return address.kind === 'tcp' ? address.port : undefined;
  } catch {
    return undefined;
  }
}
