import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  attributeTokens,
  formatLinkFormat,
  LinkFormatError,
  MAX_LINK_FORMAT_BYTES,
  MAX_LINKS,
  parseLinkFormat,
  type Link,
} from '../../src/mesh/linkformat.js';

/** Plain-object copies, so expectations do not depend on null prototypes. */
function plain(links: Link[]): Link[] {
  return links.map((link) => ({ target: link.target, attributes: { ...link.attributes } }));
}

function errorOf(fn: () => unknown): LinkFormatError {
  try {
    fn();
  } catch (err) {
    if (err instanceof LinkFormatError) return err;
    throw err;
  }
  throw new Error('expected a LinkFormatError');
}

describe('parseLinkFormat: RFC 6690 examples', () => {
  it('parses the sensor example (RFC 6690 §5, RFC 9176 registration payload)', () => {
    const links = parseLinkFormat('</sensors/temp>;rt="temperature-c";if="sensor", </sensors/light>;rt="light-lux";if="sensor"');
    expect(plain(links)).toEqual([
      { target: '/sensors/temp', attributes: { rt: 'temperature-c', if: 'sensor' } },
      { target: '/sensors/light', attributes: { rt: 'light-lux', if: 'sensor' } },
    ]);
  });

  it('parses the anchor/rel/title/ct example of RFC 6690 §5, printed over several lines', () => {
    const text = [
      '</sensors>;ct=40;title="Sensor Index",',
      '</sensors/temp>;rt="temperature-c";if="sensor",',
      '</sensors/light>;rt="light-lux";if="sensor",',
      '<http://www.example.com/sensors/t123>;anchor="/sensors/temp";rel="describedby",',
      '</t>;anchor="/sensors/temp";rel="alternate"',
    ].join('\r\n');
    const links = plain(parseLinkFormat(text));
    expect(links).toHaveLength(5);
    expect(links[0]).toEqual({ target: '/sensors', attributes: { ct: '40', title: 'Sensor Index' } });
    expect(links[3]).toEqual({
      target: 'http://www.example.com/sensors/t123',
      attributes: { anchor: '/sensors/temp', rel: 'describedby' },
    });
    expect(links[4]).toEqual({ target: '/t', attributes: { anchor: '/sensors/temp', rel: 'alternate' } });
  });

  it('parses sz, value-less attributes, escapes, ext-values and case-insensitive names', () => {
    const links = plain(
      parseLinkFormat('</firmware/v2.1>;rt="firmware";sz=262144;obs;TITLE="say \\"hi\\" \\\\ ok";title*=UTF-8\'en\'%e2%82%ac'),
    );
    expect(links).toEqual([
      {
        target: '/firmware/v2.1',
        attributes: { rt: 'firmware', sz: '262144', obs: true, title: 'say "hi" \\ ok', 'title*': "UTF-8'en'%e2%82%ac" },
      },
    ]);
  });

  it('collects repeated attributes into arrays; keeps space-separated values as one string', () => {
    const [link] = parseLinkFormat('</m>;rt="core.s core.a";rt=x;if=sensor;obs;obs;ct;ct=0');
    expect(link!.attributes.rt).toEqual(['core.s core.a', 'x']);
    expect(link!.attributes.obs).toBe(true);
    expect(link!.attributes.ct).toBe('0');
    expect(attributeTokens(link!, 'rt')).toEqual(['core.s', 'core.a', 'x']);
    expect(attributeTokens(link!, 'obs')).toEqual([]);
    expect(attributeTokens(link!, 'missing')).toEqual([]);
  });

  it('treats __proto__ and constructor as plain attribute names', () => {
    const [link] = parseLinkFormat('</x>;__proto__="p";constructor');
    expect(Object.keys(link!.attributes)).toEqual(['__proto__', 'constructor']);
    expect(link!.attributes['__proto__']).toBe('p');
    expect(formatLinkFormat([link!])).toBe('</x>;__proto__="p";constructor');
  });

  it('accepts empty input, whitespace and an empty target', () => {
    expect(parseLinkFormat('')).toEqual([]);
    expect(parseLinkFormat(' \r\n\t')).toEqual([]);
    expect(plain(parseLinkFormat(' <> ; a = "b" ,\n</c> '))).toEqual([
      { target: '', attributes: { a: 'b' } },
      { target: '/c', attributes: {} },
    ]);
  });
});

describe('parseLinkFormat: errors', () => {
  const cases: [string, number][] = [
    ['/sensors', 0],
    ['</sensors', 9],
    ['</a b>', 3],
    ['</a>;', 5],
    ['</a>;rt=', 8],
    ['</a>;rt="abc', 8],
    ['</a>;rt="ab\\', 8],
    ['</a>;rt="a\u0001b"', 10],
    ['</a>,', 5],
    ['</a>,,</b>', 5],
    ['</a> </b>', 5],
    ['</a>;rt=a b', 10],
    ['</a>;r t', 7],
    ['</a>;rt=,</b>', 8],
  ];
  for (const [text, offset] of cases) {
    it(`rejects ${JSON.stringify(text)} at offset ${offset}`, () => {
      const err = errorOf(() => parseLinkFormat(text));
      expect(err.code).toBe('BAD_LINK_FORMAT');
      expect(err.offset).toBe(offset);
    });
  }

  it('rejects more than MAX_LINKS links and more than 8 KiB', () => {
    expect(parseLinkFormat(Array.from({ length: MAX_LINKS }, () => '<>').join(','))).toHaveLength(MAX_LINKS);
    const many = errorOf(() => parseLinkFormat(Array.from({ length: MAX_LINKS + 1 }, () => '<>').join(',')));
    expect(many.code).toBe('TOO_LARGE');
    expect(many.offset).toBe(MAX_LINKS * 3);
    const big = errorOf(() => parseLinkFormat(`</a>;title="${'x'.repeat(MAX_LINK_FORMAT_BYTES)}"`));
    expect(big.code).toBe('TOO_LARGE');
    // 8 KiB counted in UTF-8 bytes, not characters.
    const wide = errorOf(() => parseLinkFormat(`</a>;title="${'€'.repeat(3000)}"`));
    expect(wide.code).toBe('TOO_LARGE');
    expect(parseLinkFormat(`</a>;title="${'€'.repeat(2000)}"`)).toHaveLength(1);
  });

  it('rejects a non-string with LinkFormatError', () => {
    expect(errorOf(() => parseLinkFormat(42 as unknown as string)).code).toBe('BAD_LINK_FORMAT');
  });
});

describe('formatLinkFormat', () => {
  it('writes the RFC example, quoting all but cardinals', () => {
    const text = formatLinkFormat([
      { target: '/sensors/temp', attributes: { rt: 'temperature-c', if: 'sensor', ct: '0', obs: true } },
      { target: '/sensors/light', attributes: { rt: ['light-lux', 'core.s'], title: 'a "b" \\c' } },
    ]);
    expect(text).toBe('</sensors/temp>;rt="temperature-c";if="sensor";ct=0;obs,</sensors/light>;rt="light-lux";rt="core.s";title="a \\"b\\" \\\\c"');
  });

  it('round-trips the RFC examples through parse -> format -> parse', () => {
    for (const text of [
      '</sensors/temp>;rt="temperature-c";if="sensor", </sensors/light>;rt="light-lux";if="sensor"',
      '</sensors>;ct=40;title="Sensor Index",</t>;anchor="/sensors/temp";rel="alternate"',
      '</firmware/v2.1>;rt="firmware";sz=262144;obs',
    ]) {
      const links = parseLinkFormat(text);
      expect(plain(parseLinkFormat(formatLinkFormat(links)))).toEqual(plain(links));
    }
  });

  it('rejects what it cannot write', () => {
    expect(errorOf(() => formatLinkFormat([{ target: '/a b', attributes: {} }])).offset).toBe(-1);
    expect(errorOf(() => formatLinkFormat([{ target: '/a', attributes: { 'r t': 'x' } }])).code).toBe('BAD_LINK_FORMAT');
    expect(errorOf(() => formatLinkFormat([{ target: '/a', attributes: { rt: 'a\nb' } }])).code).toBe('BAD_LINK_FORMAT');
    expect(errorOf(() => formatLinkFormat([{ target: '/a', attributes: { rt: 5 as unknown as string } }])).code).toBe('BAD_LINK_FORMAT');
    expect(errorOf(() => formatLinkFormat('x' as unknown as Link[])).code).toBe('BAD_LINK_FORMAT');
  });
});

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

const URI_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%";
const NAME_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~';
const charOf = (alphabet: string) => fc.integer({ min: 0, max: alphabet.length - 1 }).map((i) => alphabet[i]!);
const targetArb = fc.array(charOf(URI_ALPHABET), { maxLength: 24 }).map((c) => c.join(''));
const nameArb = fc.array(charOf(NAME_ALPHABET), { minLength: 1, maxLength: 8 }).map((c) => c.join(''));
// Any text without control characters (but HTAB), including quotes, backslashes and non-ASCII.
const valueArb = fc.string({ unit: 'grapheme', maxLength: 16 }).map((s) => s.replace(/[\u0000-\u0008\u000a-\u001f\u007f]/g, '?'));
const attributeValueArb: fc.Arbitrary<string | true | string[]> = fc.oneof(
  fc.constant(true as const),
  valueArb,
  fc.array(valueArb, { minLength: 2, maxLength: 4 }),
);
const linkArb: fc.Arbitrary<Link> = fc.record({
  target: targetArb,
  attributes: fc.dictionary(nameArb, attributeValueArb, { maxKeys: 5 }),
});

describe('properties', () => {
  it('format -> parse is the identity on generated links', () => {
    fc.assert(
      fc.property(fc.array(linkArb, { maxLength: 12 }), (links) => {
        expect(plain(parseLinkFormat(formatLinkFormat(links)))).toEqual(links);
      }),
      { numRuns: 2000 },
    );
  });

  it('parse -> format -> parse is stable on anything that parses', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), (text) => {
        let links: Link[];
        try {
          links = parseLinkFormat(text);
        } catch (err) {
          expect(err).toBeInstanceOf(LinkFormatError);
          return;
        }
        expect(plain(parseLinkFormat(formatLinkFormat(links)))).toEqual(plain(links));
      }),
      { numRuns: 2000 },
    );
  });

  it('fuzz: 20,000 random and mutated inputs raise nothing but LinkFormatError', () => {
    // Small deterministic PRNG (xorshift32) so a failure reproduces.
    let state = 0x2545f491;
    const rand = (n: number): number => {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      return (state >>> 0) % n;
    };
    const seeds = [
      '</sensors/temp>;rt="temperature-c";if="sensor", </sensors/light>;rt="light-lux";if="sensor"',
      '</sensors>;ct=40;title="Sensor Index",</t>;anchor="/sensors/temp";rel="alternate"',
      '</firmware/v2.1>;rt="firmware";sz=262144;obs;title*=UTF-8\'\'%e2%82%ac;t="a\\"b"',
    ];
    const pieces = ['<', '>', ';', ',', '=', '"', '\\', ' ', '\n', '\u0000', '€', 'rt', '</a>', '"x"', '\ud800', '%'];
    let parsed = 0;
    let rejected = 0;
    for (let n = 0; n < 20_000; n++) {
      let text: string;
      if (n % 4 === 0) {
        text = Array.from({ length: rand(60) }, () => String.fromCharCode(rand(n % 8 === 0 ? 0x10000 : 128))).join('');
      } else {
        text = seeds[rand(seeds.length)]!;
        for (let m = rand(6) + 1; m > 0; m--) {
          const at = rand(text.length + 1);
          const op = rand(4);
          if (op === 0) text = text.slice(0, at) + text.slice(at + 1 + rand(4));
          else if (op === 1) text = text.slice(0, at) + pieces[rand(pieces.length)]! + text.slice(at);
          else if (op === 2) text = text.slice(0, at) + String.fromCharCode(rand(256)) + text.slice(at + 1);
          else text = text + ',' + text.slice(at);
        }
      }
      try {
        if (!Array.isArray(parseLinkFormat(text))) throw new Error('not an array');
        parsed += 1;
      } catch (err) {
        // Plain checks rather than expect(): this loop runs 20,000 times.
        if (!(err instanceof LinkFormatError)) throw err;
        if (err.code !== 'BAD_LINK_FORMAT' && err.code !== 'TOO_LARGE') throw new Error(`bad code ${err.code}`);
        if (!(err.offset >= 0 && err.offset <= text.length)) throw new Error(`bad offset ${err.offset} for ${JSON.stringify(text)}`);
        rejected += 1;
      }
    }
    expect(parsed + rejected).toBe(20_000);
    expect(parsed).toBeGreaterThan(100);
    expect(rejected).toBeGreaterThan(100);
  });
});
