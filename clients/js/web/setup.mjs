// Writes the page's local files: onnxruntime-web's ES module and wasm into web/vendor/ (served from the page's
// own folder, so nothing is fetched from a CDN). Run after `npm ci --ignore-scripts` in clients/js.
// The demo's assets (web/demo/) come from edgelora itself: see docs/browser.md.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, '..', 'node_modules', 'onnxruntime-web', 'dist');
const FILES = ['ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm'];
const missing = FILES.filter((f) => !fs.existsSync(path.join(dist, f)));
if (missing.length) {
  console.error(`setup: ${missing.join(', ')} not found in ${dist}; run \`npm ci --ignore-scripts\` in clients/js first`);
  process.exit(2);
}
const vendor = path.join(here, 'vendor');
fs.mkdirSync(vendor, { recursive: true });
for (const f of FILES) fs.copyFileSync(path.join(dist, f), path.join(vendor, f));
console.log(`setup: copied ${FILES.join(', ')} into ${vendor}`);
