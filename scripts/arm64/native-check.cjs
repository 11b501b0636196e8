'use strict';
// Run by scripts/smoke-arm64.mjs with the linux-arm64 Node under qemu-user.
// Loads every native dependency of the appliance the way the appliance does,
// exercises it, and prints one JSON line (prefixed "NATIVE-CHECK ") with what
// it found. Exits 1 if a required native module fails to load or misbehaves.
//
// Environment:
//   SMOKE_EXPECT_CBOR_NATIVE=1  cbor-x's native accelerator (cbor-extract)
//                               must load; otherwise it is only reported.
//   CBOR_EXTRACT_PREBUILD       read by cbor-extract's loader: a directory
//                               holding prebuilds/<platform>-<arch>/*.node.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { createRequire } = require('node:module');

const root = path.resolve(__dirname, '..', '..');
const rootRequire = createRequire(path.join(root, 'package.json'));
// cbor-extract is cbor-x's dependency and may be installed under it: resolve it as cbor-x does.
const cborRequire = createRequire(rootRequire.resolve('cbor-x/package.json'));

const ELF_MACHINES = { 0x03: 'x86', 0x28: 'arm', 0x3e: 'x86_64', 0xb7: 'aarch64' };

/** The CPU an ELF file was built for, from e_machine in its header. */
function elfMachine(file) {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const header = Buffer.alloc(20);
      fs.readSync(fd, header, 0, 20, 0);
      if (header.readUInt32BE(0) !== 0x7f454c46) return 'not ELF';
      const machine = header[5] === 2 ? header.readUInt16BE(18) : header.readUInt16LE(18);
      return ELF_MACHINES[machine] ?? `e_machine 0x${machine.toString(16)}`;
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    return `unreadable (${err.code ?? err.message})`;
  }
}

/** `file` relative to the package root when it is inside it, else absolute. */
function shortPath(file) {
  const relative = path.relative(root, file);
  return relative.startsWith('..') || path.isAbsolute(relative) ? file : relative;
}

/** Native addons (.node files) mapped into this process, as the guest sees them. */
function loadedAddons() {
  try {
    const files = new Set();
    for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
      const file = line.slice(line.indexOf('/'));
      if (line.includes('/') && file.endsWith('.node')) files.add(file);
    }
    return [...files].map((file) => ({ file: shortPath(file), machine: elfMachine(file) }));
  } catch {
    return [];
  }
}

/** The .node file a node-gyp-build style loader picks for the package in `dir`. */
function addonPath(loaderName, dir) {
  try {
    const loader = createRequire(path.join(dir, 'package.json'))(loaderName);
    const file = loader.path(dir);
    return { file: shortPath(file), machine: elfMachine(file) };
  } catch (err) {
    return { error: err.message.split('\n')[0] };
  }
}

function packageDir(name) {
  const resolver = name === 'cbor-extract' ? cborRequire : rootRequire;
  return path.dirname(resolver.resolve(`${name}/package.json`));
}

function packageVersion(name) {
  try {
    return JSON.parse(fs.readFileSync(path.join(packageDir(name), 'package.json'), 'utf8')).version;
  } catch {
    return undefined;
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

async function checkLevel() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ami-arm64-level-'));
  try {
    const { Level } = rootRequire('level');
    let db = new Level(dir, { valueEncoding: 'json' });
    await db.open();
    const reading = { meter: 'mtr-000001', kWh: 1234.5, at: '2026-01-01T00:00:00Z' };
    await db.put('reading:1', reading);
    await db.batch([
      { type: 'put', key: 'reading:2', value: { ...reading, kWh: 1235 } },
      { type: 'put', key: 'reading:3', value: { ...reading, kWh: 1236 } },
      { type: 'del', key: 'reading:2' },
    ]);
    const keys = [];
    for await (const key of db.keys()) keys.push(key);
    await db.close();
    // Reopen: the data went through LevelDB's files, not only memory.
    db = new Level(dir, { valueEncoding: 'json' });
    await db.open();
    const back = await db.get('reading:1');
    await db.close();
    assert(JSON.stringify(back) === JSON.stringify(reading), `read back ${JSON.stringify(back)}`);
    assert(keys.join(',') === 'reading:1,reading:3', `iterated keys ${keys.join(',')}`);
    return {
      ok: true,
      detail: 'opened, wrote, batched, iterated, reopened and read back',
      version: packageVersion('classic-level'),
      addon: addonPath('node-gyp-build', packageDir('classic-level')),
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function checkSerialport() {
  const bindings = rootRequire('@serialport/bindings-cpp');
  const binding = bindings.autoDetect();
  assert(binding && typeof binding.open === 'function' && typeof binding.list === 'function', 'autoDetect() returned no binding');
  // Opening a path that does not exist goes through the native open() and
  // fails there; list() is not called (it needs udevadm).
  let openError;
  try {
    const port = await binding.open({ path: '/dev/ami-arm64-smoke-no-such-tty', baudRate: 9600 });
    await port.close();
  } catch (err) {
    openError = err.message;
  }
  assert(openError !== undefined, 'opening a non-existent tty succeeded');
  // The serialport package itself (what flows would use) loads too.
  rootRequire('serialport');
  return {
    ok: true,
    detail: `autoDetect() -> ${binding === bindings.LinuxBinding ? 'LinuxBinding' : 'a binding'}; open(non-existent tty) rejected: ${openError}`,
    version: packageVersion('@serialport/bindings-cpp'),
    addon: addonPath('node-gyp-build', packageDir('@serialport/bindings-cpp')),
  };
}

function checkCbor() {
  let extract;
  let extractError;
  try {
    extract = cborRequire('cbor-extract');
  } catch (err) {
    extractError = err.message.split('\n')[0];
  }
  const cborExtractDir = (() => {
    try {
      return packageDir('cbor-extract');
    } catch {
      return undefined;
    }
  })();
  const cborx = rootRequire('cbor-x');
  const { cborEncode, cborDecode } = rootRequire('./dist/src/coap/cbor.js');
  const reading = {
    meter: 'mtr-000042',
    seq: 7,
    at: '2026-01-01T00:00:00.000Z',
    values: [{ obis: '1-0:1.8.0', value: 1234.567, unit: 'kWh' }, { obis: '1-0:32.7.0', value: 229.9, unit: 'V' }],
    note: 'ü'.repeat(40),
  };
  const back = cborDecode(cborEncode(reading));
  assert(JSON.stringify(back) === JSON.stringify(reading), `project codec round trip gave ${JSON.stringify(back)}`);
  const many = Array.from({ length: 200 }, (_, i) => ({ ...reading, seq: i, meter: `mtr-${String(i).padStart(6, '0')}` }));
  const manyBack = cborx.decode(cborx.encode(many));
  assert(JSON.stringify(manyBack) === JSON.stringify(many), 'cbor-x round trip of 200 readings differs');
  const native = cborx.isNativeAccelerationEnabled === true;
  return {
    ok: true,
    detail: `encode/decode round trips (project codec and cbor-x) ok; native accelerator ${native ? 'in use' : 'not in use: pure-JS fallback'}`,
    version: packageVersion('cbor-x'),
    native,
    cborExtract: {
      version: packageVersion('cbor-extract'),
      loaded: extract !== undefined && typeof extract.extractStrings === 'function',
      error: extractError,
      addon: cborExtractDir ? addonPath('node-gyp-build-optional-packages', cborExtractDir) : { error: 'not installed' },
      prebuildOverride: process.env.CBOR_EXTRACT_PREBUILD,
    },
  };
}

async function main() {
  const result = {
    arch: process.arch,
    platform: process.platform,
    version: process.version,
    abi: process.versions.modules,
    napi: process.versions.napi,
    checks: {},
  };
  let failed = false;
  for (const [name, check] of [
    ['level', checkLevel],
    ['serialport', checkSerialport],
    ['cbor-x', checkCbor],
  ]) {
    try {
      result.checks[name] = await check();
    } catch (err) {
      failed = true;
      result.checks[name] = { ok: false, error: err.stack ?? String(err) };
    }
  }
  if (process.env.SMOKE_EXPECT_CBOR_NATIVE === '1' && !result.checks['cbor-x']?.native) {
    failed = true;
    result.checks['cbor-x'] = { ...result.checks['cbor-x'], ok: false, error: 'the arm64 cbor-extract binary did not load' };
  }
  result.loadedAddons = loadedAddons();
  for (const addon of result.loadedAddons) {
    if (addon.machine !== 'aarch64') failed = true;
  }
  process.stdout.write(`NATIVE-CHECK ${JSON.stringify(result)}\n`);
  process.exitCode = failed ? 1 : 0;
}

main().catch((err) => {
  process.stderr.write(`native-check: ${err.stack ?? err}\n`);
  process.exitCode = 1;
});
