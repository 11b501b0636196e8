/** Where a coap:// URL points. `host` has no brackets, ready for dgram. */
export interface CoapTarget {
  host: string;
  port: number;
  pathname: string;
  /** The query without '?', '' when none: each '&'-separated part is one Uri-Query option. */
  query: string;
}

export class CoapUrlError extends Error {
  override readonly name = 'CoapUrlError';
}

export const COAP_DEFAULT_PORT = 5683;

export function parseCoapUrl(raw: string): CoapTarget {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CoapUrlError(`not a URL: "${raw}"`);
  }
  if (url.protocol !== 'coap:') {
    throw new CoapUrlError(`expected a coap:// URL, got "${raw}"`);
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === '') throw new CoapUrlError(`no host in "${raw}"`);
  return {
    host,
    port: url.port === '' ? COAP_DEFAULT_PORT : Number(url.port),
    pathname: url.pathname === '' ? '/' : url.pathname,
    query: url.search.replace(/^\?/, ''),
  };
}

/** Formats a host and port as a coap:// URL, bracketing IPv6 literals. */
export function formatCoapUrl(host: string, port: number, pathname = ''): string {
  const h = host.includes(':') ? `[${host}]` : host;
  return `coap://${h}:${port}${pathname}`;
}
