// Turns tsc's output, a script that declares a top-level SSEClient (dist/sse-client.js, its source
// map and its declarations), into the package's modules, each with its map and typings:
// - dist/sse-client.js: UMD (AMD, CommonJS, else a browser global), typed by sse-client.d.ts
//   (`export =`, and the global for scripts);
// - dist/sse-client.mjs: an ES module, typed by sse-client.d.mts (`export default`).
// Both are the same ES5 code. Usage: node scripts/wrap-modules.mjs, right after tsc.
import { readFileSync, writeFileSync } from 'node:fs';

const dist = new URL('../dist/', import.meta.url);
const read = (name) => readFileSync(new URL(name, dist), 'utf8');
const write = (name, text) => writeFileSync(new URL(name, dist), text);

const script = read('sse-client.js').replace(/\/\/# sourceMappingURL=.*$/, '');
const map = JSON.parse(read('sse-client.js.map'));
const typings = read('sse-client.d.ts');

function writeModule(name, head, tail) {
  write(name, `${head}${script}${tail}//# sourceMappingURL=${name}.map\n`);
  // Each line put before the script moves its mappings one generated line down: one more ';'.
  const shift = ';'.repeat(head.split('\n').length - 1);
  write(`${name}.map`, JSON.stringify({ ...map, file: name, mappings: shift + map.mappings }));
}

writeModule(
  'sse-client.js',
  `(function (root, factory) {
  if (typeof define === 'function' && define.amd) define([], factory);
  else if (typeof module === 'object' && module.exports) module.exports = factory();
  else root.SSEClient = factory();
})(typeof self !== 'undefined' ? self : this, function () {
`,
  'return SSEClient;\n});\n',
);
writeModule('sse-client.mjs', '', 'export default SSEClient;\n');
write('sse-client.d.ts', `${typings}export = SSEClient;\nexport as namespace SSEClient;\n`);
write('sse-client.d.mts', `${typings}export default SSEClient;\n`);
