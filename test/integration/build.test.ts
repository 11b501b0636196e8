import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, unlinkSync, existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/appliance.js';

/**
 * `npm run build` (scripts/build.mjs) in a scratch copy of the sources, so a
 * broken copy cannot disturb the tree the other tests run from.
 */
let copy: string;

beforeAll(() => {
  copy = mkdtempSync(path.join(REPO_ROOT, '.tmp-build-'));
  for (const entry of ['src', 'nodes', 'flows', 'scripts', 'types', 'package.json', 'tsconfig.json', 'tsconfig.build.json']) {
    cpSync(path.join(REPO_ROOT, entry), path.join(copy, entry), { recursive: true });
  }
  symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(copy, 'node_modules'));
});

afterAll(() => {
  rmSync(copy, { recursive: true, force: true });
});

function build() {
  return spawnSync(process.execPath, [path.join(copy, 'scripts', 'build.mjs')], { cwd: copy, encoding: 'utf8' });
}

describe('npm run build', () => {
  it('assembles each node next to its compiled runtime and the flows as examples', () => {
    const result = build();
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/build: 20 nodes, \d+ example flows/);
    for (const file of [
      'dist/nodes/ami-mesh-in/ami-mesh-in.js',
      'dist/nodes/ami-mesh-in/ami-mesh-in.html',
      'dist/nodes/ami-mesh-in/locales/en-US/ami-mesh-in.json',
      'dist/nodes/ami-mesh-in/locales/en-US/ami-mesh-in.html',
      'dist/nodes/ami-mesh-in/icons/ami-mesh.svg',
      'dist/src/appliance/cli.js',
      'examples/default-appliance.json',
    ]) {
      expect(existsSync(path.join(copy, file)), file).toBe(true);
    }
  });

  it('fails on a type error', () => {
    const broken = path.join(copy, 'src', 'coap', 'broken.ts');
    writeFileSync(broken, "export const port: number = 'not a number';\n");
    try {
      const result = build();
      expect(result.status).not.toBe(0);
      expect(`${result.stdout}${result.stderr}`).toMatch(/broken\.ts.*TS2322/);
      expect(result.stderr).toContain('TypeScript compilation failed');
    } finally {
      unlinkSync(broken);
    }
  });

  it('fails when a node lacks its help', () => {
    const help = path.join(copy, 'nodes', 'ami-hes-out', 'locales', 'en-US', 'ami-hes-out.html');
    const saved = path.join(copy, 'help.saved');
    cpSync(help, saved);
    unlinkSync(help);
    try {
      const result = build();
      expect(result.status).not.toBe(0);
      expect(result.stderr).toContain('nodes/ami-hes-out has no locales/en-US/ami-hes-out.html help');
    } finally {
      cpSync(saved, help);
    }
  });
});
