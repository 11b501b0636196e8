#!/usr/bin/env node
// Builds the installable package: compiles the TypeScript (strict; a type
// error fails the build), then assembles each node's editor HTML, locales and
// icons next to its compiled runtime, and copies flows/ to examples/ where
// Node-RED's Import > Examples looks for them.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');

function fail(message) {
  console.error(`build: ${message}`);
  process.exit(1);
}

rmSync(dist, { recursive: true, force: true });
const tsc = spawnSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
  cwd: root,
  stdio: 'inherit',
});
if (tsc.status !== 0) fail('TypeScript compilation failed');

const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const registered = pkg['node-red']?.nodes ?? {};
const nodesDir = path.join(root, 'nodes');
const nodeFolders = readdirSync(nodesDir).filter(
  (name) => statSync(path.join(nodesDir, name)).isDirectory() && existsSync(path.join(nodesDir, name, `${name}.ts`)),
);

for (const name of nodeFolders) {
  const source = path.join(nodesDir, name);
  const target = path.join(dist, 'nodes', name);
  const html = path.join(source, `${name}.html`);
  if (!existsSync(html)) fail(`nodes/${name} has no ${name}.html editor template`);
  if (!existsSync(path.join(source, 'locales', 'en-US', `${name}.json`))) fail(`nodes/${name} has no locales/en-US/${name}.json`);
  if (!existsSync(path.join(source, 'locales', 'en-US', `${name}.html`))) fail(`nodes/${name} has no locales/en-US/${name}.html help`);
  mkdirSync(target, { recursive: true });
  cpSync(html, path.join(target, `${name}.html`));
  cpSync(path.join(source, 'locales'), path.join(target, 'locales'), { recursive: true });
  if (existsSync(path.join(source, 'icons'))) cpSync(path.join(source, 'icons'), path.join(target, 'icons'), { recursive: true });
  const expected = `dist/nodes/${name}/${name}.js`;
  if (registered[name] !== expected) fail(`package.json node-red.nodes must register "${name}": "${expected}"`);
}
for (const [name, file] of Object.entries(registered)) {
  if (!existsSync(path.join(root, file))) fail(`package.json registers ${name} at ${file}, which the build did not produce`);
}

const examples = path.join(root, 'examples');
rmSync(examples, { recursive: true, force: true });
mkdirSync(examples);
for (const file of readdirSync(path.join(root, 'flows')).filter((f) => f.endsWith('.json'))) {
  JSON.parse(readFileSync(path.join(root, 'flows', file), 'utf8'));
  cpSync(path.join(root, 'flows', file), path.join(examples, file));
}
console.log(`build: ${nodeFolders.length} nodes, ${readdirSync(examples).length} example flows`);
