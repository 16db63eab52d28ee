// The package's checks (`npm run check:sse-client`, and prepack before every pack or publish):
// - the UMD builds are ES5, and so is the ES module but for its `export`;
// - publint (package.json, exports, files) and attw (the typings under require and import, in
//   each module resolution) on the tarball that npm would publish. It is packed here without
//   scripts, since prepack runs this.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'acorn';

const dist = new URL('../dist/', import.meta.url);
const read = (name) => readFileSync(new URL(name, dist), 'utf8');

function assertES5(name, code) {
  try {
    parse(code, { ecmaVersion: 5 });
  } catch (error) {
    throw new Error(`dist/${name} is not ES5: ${error.message}`);
  }
}
assertES5('sse-client.js', read('sse-client.js'));
assertES5('sse-client.min.js', read('sse-client.min.js'));
assertES5('sse-client.mjs', read('sse-client.mjs').replace(/^export default SSEClient;$/m, ''));

const run = (command, ...args) => execFileSync(command, args, { stdio: 'inherit' });
const packed = mkdtempSync(join(tmpdir(), 'sse-client-pack-'));
try {
  const pack = ['pack', '--ignore-scripts', '--json', '--pack-destination', packed];
  const tarball = join(packed, JSON.parse(execFileSync('npm', pack))[0].filename);
  run('publint', 'run', '--strict', tarball);
  run('attw', '--profile', 'strict', '--no-color', tarball);
} finally {
  rmSync(packed, { recursive: true, force: true });
}
