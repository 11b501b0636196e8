/**
 * CoRE Link Format (RFC 6690, Content-Format 40): the payload a meter sends
 * to the resource directory to list its resources.
 *
 * Choices made here (the RFC grammar leaves them open or is stricter):
 * - Attribute names are case-insensitive (RFC 8288) and are lowercased when
 *   parsed; `formatLinkFormat` writes names as given.
 * - An attribute without a value (`;obs`) is `true`.
 * - Quoted-string values are unescaped (`\x` -> `x`); token values are kept as
 *   written. Extended values (`title*=UTF-8''...`) are kept raw, not decoded.
 * - A space-separated value (`rt="a b"`) stays one string; use
 *   `attributeTokens` to split relation-types.
 * - An attribute repeated in one link (`;rt=a;rt=b`) becomes an array of its
 *   values in order. A value-less repeat of an attribute that has a value is
 *   dropped (`;obs;obs` stays `true`, `;rt=a;rt` stays `"a"`).
 * - Optional whitespace (SP, HTAB, CR, LF) is accepted around `,` `;` `=`
 *   and at both ends, as many implementations print one link per line.
 * - The target must consist of URI characters (RFC 3986 unreserved, reserved
 *   and `%`); it is not resolved or percent-decoded. `<>` is allowed.
 * - Attribute maps are null-prototype objects, so a parameter named
 *   `__proto__` or `constructor` is plain data.
 *
 * Limits: at most MAX_LINKS links and MAX_LINK_FORMAT_BYTES (UTF-8) of input;
 * beyond them the parser throws LinkFormatError('TOO_LARGE'). The parser makes
 * one forward pass, so it always terminates, and throws nothing but
 * LinkFormatError.
 */

export type LinkAttributeValue = string | true | string[];

export interface Link {
  target: string;
  attributes: Record<string, LinkAttributeValue>;
}

export const MAX_LINKS = 256;
export const MAX_LINK_FORMAT_BYTES = 8192;

export type LinkFormatErrorCode = 'BAD_LINK_FORMAT' | 'TOO_LARGE';

export class LinkFormatError extends Error {
  override readonly name = 'LinkFormatError';
  constructor(
    readonly code: LinkFormatErrorCode,
    /** Character (UTF-16 code unit) offset in the input; -1 when formatting. */
    readonly offset: number,
    message: string,
  ) {
    super(offset >= 0 ? `${message} at offset ${offset}` : message);
  }
}

// Character classes, indexed by char code (ASCII only; >= 0x80 handled separately).
const URI_CHARS = asciiSet("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%");
// RFC 5987 attr-char (parmname); `*` is also accepted so `title*` parses.
const PARMNAME_CHARS = asciiSet('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~*');
// RFC 6690 ptokenchar.
const PTOKEN_CHARS = asciiSet("!#$%&'()*+-./0123456789:<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~");

function asciiSet(chars: string): Uint8Array {
  const set = new Uint8Array(128);
  for (let i = 0; i < chars.length; i++) set[chars.charCodeAt(i)] = 1;
  return set;
}

function inSet(set: Uint8Array, code: number): boolean {
  return code < 128 && set[code] === 1;
}

function isWhitespace(code: number): boolean {
  return code === 0x20 || code === 0x09 || code === 0x0d || code === 0x0a;
}

/** Allowed inside a quoted-string (besides the escape): no control characters but HTAB. */
function isQuotedTextChar(code: number): boolean {
  return code === 0x09 || (code >= 0x20 && code !== 0x7f);
}

function newAttributes(): Record<string, LinkAttributeValue> {
  return Object.create(null) as Record<string, LinkAttributeValue>;
}

function addAttribute(attributes: Record<string, LinkAttributeValue>, name: string, value: string | true): void {
  if (!Object.hasOwn(attributes, name)) {
    attributes[name] = value;
    return;
  }
  const existing = attributes[name];
  if (value === true) return; // a value-less repeat adds nothing
  if (existing === true || existing === undefined) attributes[name] = value;
  else if (Array.isArray(existing)) existing.push(value);
  else attributes[name] = [existing, value];
}

/** Parses an RFC 6690 link-format document. Throws only LinkFormatError. */
export function parseLinkFormat(text: string): Link[] {
  if (typeof text !== 'string') throw new LinkFormatError('BAD_LINK_FORMAT', 0, 'link format must be a string');
  if (text.length > MAX_LINK_FORMAT_BYTES || Buffer.byteLength(text, 'utf8') > MAX_LINK_FORMAT_BYTES) {
    throw new LinkFormatError('TOO_LARGE', 0, `link format larger than ${MAX_LINK_FORMAT_BYTES} bytes`);
  }
  const len = text.length;
  const links: Link[] = [];
  let i = 0;
  const skipWhitespace = (): void => {
    while (i < len && isWhitespace(text.charCodeAt(i))) i++;
  };
  const fail = (message: string, at: number = i): never => {
    throw new LinkFormatError('BAD_LINK_FORMAT', at, message);
  };

  skipWhitespace();
  if (i === len) return links;
  for (;;) {
    if (links.length === MAX_LINKS) throw new LinkFormatError('TOO_LARGE', i, `more than ${MAX_LINKS} links`);
    if (text.charCodeAt(i) !== 0x3c /* < */) fail("expected '<'");
    i++;
    const targetStart = i;
    while (i < len && text.charCodeAt(i) !== 0x3e /* > */) {
      if (!inSet(URI_CHARS, text.charCodeAt(i))) fail('invalid character in link target');
      i++;
    }
    if (i === len) fail("unterminated link target, expected '>'");
    const target = text.slice(targetStart, i);
    i++; // '>'
    const attributes = newAttributes();
    skipWhitespace();
    while (i < len && text.charCodeAt(i) === 0x3b /* ; */) {
      i++;
      skipWhitespace();
      const nameStart = i;
      while (i < len && inSet(PARMNAME_CHARS, text.charCodeAt(i))) i++;
      if (i === nameStart) fail('expected a parameter name');
      const name = text.slice(nameStart, i).toLowerCase();
      skipWhitespace();
      let value: string | true = true;
      if (i < len && text.charCodeAt(i) === 0x3d /* = */) {
        i++;
        skipWhitespace();
        if (i < len && text.charCodeAt(i) === 0x22 /* " */) {
          const quoteStart = i;
          i++;
          let out = '';
          let runStart = i;
          for (;;) {
            if (i >= len) fail('unterminated quoted string', quoteStart);
            const code = text.charCodeAt(i);
            if (code === 0x22) break;
            if (code === 0x5c /* \ */) {
              out += text.slice(runStart, i);
              if (i + 1 >= len) fail('unterminated quoted string', quoteStart);
              const escaped = text.charCodeAt(i + 1);
              if (!isQuotedTextChar(escaped)) fail('invalid escaped character', i + 1);
              out += text[i + 1];
              i += 2;
              runStart = i;
              continue;
            }
            if (!isQuotedTextChar(code)) fail('control character in quoted string');
            i++;
          }
          out += text.slice(runStart, i);
          i++; // closing quote
          value = out;
        } else {
          const valueStart = i;
          while (i < len && inSet(PTOKEN_CHARS, text.charCodeAt(i))) i++;
          if (i === valueStart) fail('expected a parameter value');
          value = text.slice(valueStart, i);
        }
      }
      addAttribute(attributes, name, value);
      skipWhitespace();
    }
    links.push({ target, attributes });
    if (i === len) return links;
    if (text.charCodeAt(i) !== 0x2c /* , */) fail("expected ',' or ';'");
    i++;
    skipWhitespace();
    if (i === len) fail("expected a link after ','");
  }
}

function isParmname(name: string): boolean {
  if (name.length === 0) return false;
  for (let i = 0; i < name.length; i++) if (!inSet(PARMNAME_CHARS, name.charCodeAt(i))) return false;
  return true;
}

function formatValue(name: string, value: string): string {
  if (typeof value !== 'string') throw new LinkFormatError('BAD_LINK_FORMAT', -1, `attribute ${name}: value must be a string`);
  if (/^[0-9]+$/.test(value)) return value; // cardinal (sz, ct): unquoted, as in RFC 6690 examples
  let out = '"';
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i);
    if (!isQuotedTextChar(code)) throw new LinkFormatError('BAD_LINK_FORMAT', -1, `attribute ${name}: control character in value`);
    if (code === 0x22 || code === 0x5c) out += '\\';
    out += value[i];
  }
  return out + '"';
}

/**
 * Writes links as RFC 6690 link format, without whitespace. Digit-only values
 * are written as tokens, all others as quoted strings; an array value becomes
 * one parameter per element (an empty array is omitted). Throws
 * LinkFormatError (offset -1) for a target or name that cannot be written.
 * No size cap: the caller decides how much it sends.
 */
export function formatLinkFormat(links: readonly Link[]): string {
  if (!Array.isArray(links)) throw new LinkFormatError('BAD_LINK_FORMAT', -1, 'links must be an array');
  const parts: string[] = [];
  for (const link of links) {
    const target = (link as Partial<Link> | null)?.target;
    if (typeof target !== 'string') throw new LinkFormatError('BAD_LINK_FORMAT', -1, 'link target must be a string');
    for (let i = 0; i < target.length; i++) {
      if (!inSet(URI_CHARS, target.charCodeAt(i))) {
        throw new LinkFormatError('BAD_LINK_FORMAT', -1, `invalid character in link target ${JSON.stringify(target)}`);
      }
    }
    let out = `<${target}>`;
    const attributes = link.attributes ?? {};
    for (const name of Object.keys(attributes)) {
      if (!isParmname(name)) {
        throw new LinkFormatError('BAD_LINK_FORMAT', -1, `invalid attribute name ${JSON.stringify(name)}`);
      }
      const value = attributes[name];
      if (value === true) out += `;${name}`;
      else if (Array.isArray(value)) for (const item of value) out += `;${name}=${formatValue(name, item)}`;
      else if (typeof value === 'string') out += `;${name}=${formatValue(name, value)}`;
      else throw new LinkFormatError('BAD_LINK_FORMAT', -1, `attribute ${name}: unsupported value`);
    }
    parts.push(out);
  }
  return parts.join(',');
}

/**
 * The values of an attribute as a flat list of space-separated tokens
 * (relation-types such as `rt`, `if`, `rel`): `rt="a b";rt=c` -> [a, b, c].
 * A value-less attribute yields []; a missing one yields [].
 */
export function attributeTokens(link: Link, name: string): string[] {
  const value = Object.hasOwn(link.attributes, name) ? link.attributes[name] : undefined;
  if (value === undefined || value === true) return [];
  const values = Array.isArray(value) ? value : [value];
  return values.flatMap((v) => v.split(/[ \t]+/).filter((t) => t.length > 0));
}
