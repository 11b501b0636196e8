import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FirmwareError } from '../../src/firmware/errors.js';
import {
  canonicalManifestBytes,
  canonicalManifestText,
  compareVersions,
  compatibleVersions,
  isFirmwareVersion,
  MAX_MANIFEST_BYTES,
  parseManifest,
  validateManifest,
  type FirmwareManifest,
} from '../../src/firmware/manifest.js';
import { createManifest } from '../../src/firmware/sign.js';

const TEST_IMAGES = path.resolve('firmware-images/test-images');

const manifest: FirmwareManifest = {
  format: 'ami-firmware-manifest/1',
  vendor: 'acme',
  target: 'comm',
  models: ['AMX-100', 'AMX-200'],
  version: '2.1.0',
  size: 4096,
  sha256: 'a'.repeat(64),
  compatibleWith: { metro: ['5.0.0'] },
};

const text = canonicalManifestText(manifest);

function code(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    if (err instanceof FirmwareError) return err.code;
    throw err;
  }
  return 'OK';
}

function parseText(t: string): FirmwareManifest {
  return parseManifest(Buffer.from(t, 'utf8'));
}

/** The manifest with one field replaced (undefined removes it), in canonical form: only the schema can refuse it. */
function canonicalWith(field: string, value: unknown): string {
  const raw: Record<string, unknown> = { ...manifest, [field]: value };
  if (value === undefined) delete raw[field];
  const sort = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(sort) : typeof v === 'object' && v !== null ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort((v as Record<string, unknown>)[k])])) : v;
  return `${JSON.stringify(sort(raw), null, 2)}\n`;
}

describe('firmware manifest: canonical form', () => {
  it('is sorted keys, two-space indentation and a final newline', () => {
    expect(text).toBe(
      [
        '{',
        '  "compatibleWith": {',
        '    "metro": [',
        '      "5.0.0"',
        '    ]',
        '  },',
        '  "format": "ami-firmware-manifest/1",',
        '  "models": [',
        '    "AMX-100",',
        '    "AMX-200"',
        '  ],',
        `  "sha256": "${'a'.repeat(64)}",`,
        '  "size": 4096,',
        '  "target": "comm",',
        '  "vendor": "acme",',
        '  "version": "2.1.0"',
        '}',
        '',
      ].join('\n'),
    );
    expect(parseText(text)).toEqual(manifest);
    expect(canonicalManifestBytes(manifest).equals(Buffer.from(text))).toBe(true);
  });

  it('parses every shipped test manifest, each already canonical', () => {
    const vendorDir = path.join(TEST_IMAGES, 'acme');
    const folders = readdirSync(vendorDir).sort();
    expect(folders).toEqual(['comm-2.1.0', 'comm-2.2.0', 'metro-5.0.0', 'metro-5.1.0']);
    for (const folder of folders) {
      const bytes = readFileSync(path.join(vendorDir, folder, 'manifest.json'));
      const parsed = parseManifest(bytes);
      expect(`${parsed.target}-${parsed.version}`).toBe(folder);
      expect(canonicalManifestBytes(parsed).equals(bytes)).toBe(true);
    }
  });

  it.each([
    ['compact JSON', JSON.stringify(JSON.parse(text))],
    ['keys in another order', `${JSON.stringify({ ...manifest, format: manifest.format }, null, 2)}\n`],
    ['no final newline', text.slice(0, -1)],
    ['CRLF line ends', text.replace(/\n/g, '\r\n')],
    ['trailing space', text.replace('"acme",', '"acme", ')],
    ['four-space indentation', `${JSON.stringify(JSON.parse(text), null, 4)}\n`],
    ['a byte-order mark', `\ufeff${text}`],
    ['a duplicate key', text.replace('  "vendor": "acme",\n', '  "vendor": "evil",\n  "vendor": "acme",\n')],
    ['an escaped character', text.replace('"acme"', '"\\u0061cme"')],
  ])('refuses %s as not canonical', (_what, t) => {
    expect(code(() => parseText(t))).toBe('BAD_MANIFEST');
  });

  it('names the tool that writes the canonical form', () => {
    expect(() => parseText(JSON.stringify(manifest))).toThrow(/canonical form.*sign-firmware\.mjs/);
  });
});

describe('firmware manifest: schema', () => {
  it.each([
    ['an unknown field', 'releaseDate', '2026-01-01'],
    ['no format', 'format', undefined],
    ['another format', 'format', 'ami-firmware-manifest/2'],
    ['no vendor', 'vendor', undefined],
    ['a vendor with a slash', 'vendor', 'acme/evil'],
    ['a vendor starting with a dot', 'vendor', '.acme'],
    ['a numeric vendor', 'vendor', 42],
    ['a target other than comm or metro', 'target', 'radio'],
    ['no models', 'models', []],
    ['a model twice', 'models', ['AMX-100', 'AMX-100']],
    ['a model with a space', 'models', ['AMX 100']],
    ['models as a string', 'models', 'AMX-100'],
    ['a one-part version', 'version', '2'],
    ['a five-part version', 'version', '1.2.3.4.5'],
    ['a version with a suffix', 'version', '2.1.0-rc1'],
    ['a version with a v', 'version', 'v2.1.0'],
    ['a numeric version', 'version', 2.1],
    ['size 0', 'size', 0],
    ['a negative size', 'size', -1],
    ['a fractional size', 'size', 1.5],
    ['a size as a string', 'size', '4096'],
    ['a size beyond 2^53', 'size', 2 ** 53],
    ['an upper-case sha256', 'sha256', 'A'.repeat(64)],
    ['a short sha256', 'sha256', 'a'.repeat(63)],
    ['compatibleWith naming the own component', 'compatibleWith', { comm: ['2.0.0'] }],
    ['compatibleWith naming both', 'compatibleWith', { metro: ['5.0.0'], comm: ['2.0.0'] }],
    ['compatibleWith as a list', 'compatibleWith', ['5.0.0']],
    ['an empty compatibleWith list', 'compatibleWith', { metro: [] }],
    ['a version listed twice', 'compatibleWith', { metro: ['5.0.0', '5.0.0'] }],
    ['a bad compatible version', 'compatibleWith', { metro: ['5.x'] }],
    ['a non-ASCII description', 'description', 'Zähler'],
    ['a description with a newline', 'description', 'line 1\nline 2'],
    ['a description that is too long', 'description', 'x'.repeat(1025)],
  ])('refuses %s', (_what, field, value) => {
    expect(code(() => parseText(canonicalWith(field, value)))).toBe('BAD_MANIFEST');
  });

  it('accepts a description and keeps it', () => {
    const withText = canonicalWith('description', 'Fixes the relay driver; see release notes 2.1');
    expect(parseText(withText).description).toBe('Fixes the relay driver; see release notes 2.1');
  });

  it('says which field is wrong', () => {
    expect(() => parseText(canonicalWith('compatibleWith', { comm: ['2.0.0'] }))).toThrow(/compatibleWith of a comm image must have exactly one field, "metro"/);
    expect(() => parseText(canonicalWith('version', '2.1.0-rc1'))).toThrow(/^version is "2\.1\.0-rc1"/);
  });

  it.each([
    ['non-UTF-8 bytes', Buffer.from([0x7b, 0xff, 0x7d])],
    ['not JSON', Buffer.from('version: 2.1.0\n')],
    ['a JSON array', Buffer.from('[]\n')],
    ['JSON null', Buffer.from('null\n')],
    ['empty', Buffer.alloc(0)],
    ['too many bytes', Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20)],
  ])('refuses %s', (_what, bytes) => {
    expect(code(() => parseManifest(bytes))).toBe('BAD_MANIFEST');
  });

  it('validateManifest returns a copy holding only the manifest fields', () => {
    const copy = validateManifest(JSON.parse(text));
    expect(copy).toEqual(manifest);
    expect(copy.models).not.toBe(manifest.models);
    expect(compatibleVersions(copy)).toEqual(['5.0.0']);
  });

  it('createManifest computes size and digest and sorts the lists', () => {
    const image = Buffer.from('firmware');
    const made = createManifest({ vendor: 'acme', target: 'metro', models: ['Z-1', 'A-1'], version: '5.0.0', compatibleWith: ['2.10.0', '2.9.0', '2.1.0'] }, image);
    expect(made.size).toBe(8);
    expect(made.sha256).toBe(createHash('sha256').update(image).digest('hex'));
    expect(made.models).toEqual(['A-1', 'Z-1']);
    expect(made.compatibleWith).toEqual({ comm: ['2.1.0', '2.9.0', '2.10.0'] });
    expect(code(() => createManifest({ vendor: 'acme', target: 'metro', models: [], version: '5.0.0', compatibleWith: ['2.1.0'] }, image))).toBe('BAD_MANIFEST');
  });
});

describe('firmware versions', () => {
  it('compares numerically, component by component', () => {
    expect(compareVersions('2.10.0', '2.9.0')).toBe(1);
    expect(compareVersions('2.1.0', '2.1.1')).toBe(-1);
    expect(compareVersions('2.1', '2.1.0')).toBe(0);
    expect(compareVersions('02.01.0003', '2.1.3')).toBe(0);
    expect(compareVersions('1.0.0.1', '1.0.0')).toBe(1);
    expect(['5.1.0', '5.0.10', '5.0.2'].sort(compareVersions)).toEqual(['5.0.2', '5.0.10', '5.1.0']);
  });

  it('refuses what is not a version', () => {
    expect(code(() => compareVersions('2.1.0', 'latest'))).toBe('BAD_MANIFEST');
    expect(isFirmwareVersion('2.1.0')).toBe(true);
    expect(isFirmwareVersion('2.1.0 ')).toBe(false);
    expect(isFirmwareVersion(210)).toBe(false);
  });
});

describe('firmware manifest parser fuzz', () => {
  /** Never anything but a manifest or FirmwareError BAD_MANIFEST. */
  function parsesOrRefuses(bytes: Uint8Array): void {
    try {
      parseManifest(bytes);
    } catch (err) {
      expect(err).toBeInstanceOf(FirmwareError);
      expect((err as FirmwareError).code).toBe('BAD_MANIFEST');
    }
  }

  it('arbitrary bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => parsesOrRefuses(bytes)), { numRuns: 2000 });
  });

  it('arbitrary JSON', () => {
    fc.assert(fc.property(fc.json(), (json) => parsesOrRefuses(Buffer.from(json))), { numRuns: 2000 });
  });

  it('the manifest with fields replaced by anything, canonical or not', () => {
    const fields = [...Object.keys(manifest), 'description', 'extra'];
    fc.assert(
      fc.property(fc.dictionary(fc.constantFrom(...fields), fc.oneof(fc.anything(), fc.constant(undefined))), fc.boolean(), (changes, pretty) => {
        const raw: Record<string, unknown> = { ...manifest, ...changes };
        for (const [k, v] of Object.entries(changes)) if (v === undefined) delete raw[k];
        let t: string;
        try {
          t = pretty ? canonicalManifestText(raw as unknown as FirmwareManifest) : JSON.stringify(raw);
        } catch (err) {
          // canonicalManifestText validates first: an invalid manifest has no canonical form.
          expect(err).toBeInstanceOf(FirmwareError);
          t = JSON.stringify(raw) ?? '';
        }
        parsesOrRefuses(Buffer.from(t));
      }),
      { numRuns: 2000 },
    );
  });

  it('single-byte edits of a valid manifest', () => {
    const bytes = Buffer.from(text);
    fc.assert(
      fc.property(fc.nat(bytes.length - 1), fc.integer({ min: 0, max: 255 }), (at, value) => {
        const edited = Buffer.from(bytes);
        edited[at] = value;
        parsesOrRefuses(edited);
      }),
      { numRuns: 2000 },
    );
  });

  it('every valid manifest survives canonical bytes and back', () => {
    const name = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,10}$/);
    const version = fc.array(fc.nat(999999), { minLength: 2, maxLength: 4 }).map((parts) => parts.join('.'));
    const arb = fc.record({
      vendor: name,
      target: fc.constantFrom('comm' as const, 'metro' as const),
      models: fc.uniqueArray(name, { minLength: 1, maxLength: 5 }),
      version,
      size: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
      sha256: fc.stringMatching(/^[0-9a-f]{64}$/),
      compatible: fc.uniqueArray(version, { minLength: 1, maxLength: 6 }),
      description: fc.option(fc.stringMatching(/^[\x20-\x7e]{0,60}$/), { nil: undefined }),
    });
    fc.assert(
      fc.property(arb, (a) => {
        const m: FirmwareManifest = {
          format: 'ami-firmware-manifest/1',
          vendor: a.vendor,
          target: a.target,
          models: a.models,
          version: a.version,
          size: a.size,
          sha256: a.sha256,
          compatibleWith: { [a.target === 'comm' ? 'metro' : 'comm']: a.compatible },
        };
        if (a.description !== undefined) m.description = a.description;
        expect(parseManifest(canonicalManifestBytes(m))).toEqual(m);
      }),
      { numRuns: 1000 },
    );
  });
});
