// Wraps tsc's script output, which declares a top-level SSEClient, as UMD (AMD, CommonJS, else
// a browser global), and turns its declarations into the matching UMD module typings.
// Usage: node scripts/umd-wrap.mjs <file.js> <file.d.ts>, right after tsc wrote them.
import { readFileSync, writeFileSync } from 'node:fs';

const [jsPath, dtsPath] = process.argv.slice(2);
const script = readFileSync(jsPath, 'utf8');
writeFileSync(
  jsPath,
  `(function (root, factory) {
  if (typeof define === 'function' && define.amd) define([], factory);
  else if (typeof module === 'object' && module.exports) module.exports = factory();
  else root.SSEClient = factory();
})(typeof self !== 'undefined' ? self : this, function () {
${script}return SSEClient;
});
`,
);
const typings = readFileSync(dtsPath, 'utf8');
writeFileSync(dtsPath, `${typings}export = SSEClient;\nexport as namespace SSEClient;\n`);
