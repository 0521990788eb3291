// Node's side of the client's I/O: folders as sources, .npy/.npz files, onnxruntime-node or -web, and writing
// the adapter folder by edgelora's rules (never half-written, never replacing what it did not write).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { ADAPTER_FILES } from './adapter.js';
import { parseNpy, parseNpz, UserError } from './npy.js';

const require = createRequire(import.meta.url);

/** onnxruntime for a backend name: 'node' (onnxruntime-node) or 'wasm' (onnxruntime-web, one thread). */
export function runtime(backend) {
  if (backend === 'node') return require('onnxruntime-node');
  if (backend === 'wasm') {
    const ort = require('onnxruntime-web');
    ort.env.wasm.numThreads = 1;  // one core, as on a small device; no worker threads
    return ort;
  }
  throw new UserError(`--backend: expected node or wasm, found ${JSON.stringify(backend)}`);
}

function readFile(file, what) {
  try {
    return new Uint8Array(fs.readFileSync(file));
  } catch (e) {
    throw new UserError(`${what} not found: expected a file at ${file} (${e.code || e.message})`);
  }
}

/** A folder as a source for bundle.js. */
export const folderSource = (dir) => ({ where: dir, read: async (name, what) => readFile(path.join(dir, name), what) });

export const readNpy = (file) => parseNpy(readFile(file, 'a .npy file'), file);
export const readNpz = (file) => parseNpz(readFile(file, 'an .npz file'), file);

/** CPU seconds of this process (user + system). */
export const cpuSeconds = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };

function fsyncDir(dir) {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Write {name: bytes} as folder `dst`, built aside and swapped in. */
export function writeFolderAtomically(dst, files) {
  dst = path.resolve(dst);
  if (fs.existsSync(dst) && !fs.lstatSync(dst).isDirectory()) {
    throw new Error(`${dst} exists and is not a folder; expected a folder path (nothing was written)`);
  }
  // edgelora's temp name (fileio._temp_name): its writers remove what a dead process left behind
  const tmp = path.join(path.dirname(dst), `.${path.basename(dst)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  fs.mkdirSync(path.dirname(dst), { recursive: true });
  fs.mkdirSync(tmp);
  try {
    for (const [name, data] of Object.entries(files)) {
      const fd = fs.openSync(path.join(tmp, name), 'w');
      fs.writeSync(fd, data);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    }
    // old folder aside, new one in: edgelora's recover_dir puts `.NAME.old` back if a crash falls between
    const old = path.join(path.dirname(dst), `.${path.basename(dst)}.old`);
    fs.rmSync(old, { recursive: true, force: true });
    if (fs.existsSync(dst)) fs.renameSync(dst, old);
    fs.renameSync(tmp, dst);
    fs.rmSync(old, { recursive: true, force: true });
    fsyncDir(path.dirname(dst));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

const TEMP = /^\.(.+)\.(tmp-\d+-[0-9a-f]+|old|lock)$/;  // edgelora's temp, aside and lock names

/**
 * edgelora's rule for outputs (edgelora/files/outputs.py): an existing `dst` is replaced only if it is an adapter
 * folder or empty, and it is never an input, a folder holding one, the current folder or one above it.
 */
export function checkOutput(dst, inputs) {
  const out = path.resolve(dst);
  const inside = (a, b) => a === b || a.startsWith(b.endsWith(path.sep) ? b : b + path.sep);
  if (inside(process.cwd(), out)) throw new UserError(`--out: ${dst} is the current folder or one above it; choose a new folder`);
  for (const [what, p] of inputs) {
    const q = path.resolve(p);
    if (inside(q, out) || inside(out, q)) throw new UserError(`--out: ${dst} is or holds the ${what} ${p}; write the adapter somewhere else`);
  }
  if (!fs.existsSync(out)) return;
  if (fs.lstatSync(out).isSymbolicLink() || !fs.lstatSync(out).isDirectory()) {
    throw new UserError(`--out: ${dst} exists and is not a folder; expected a new folder or an adapter folder (nothing was written)`);
  }
  const entries = fs.readdirSync(out);
  const foreign = entries.filter((e) => !ADAPTER_FILES.includes(e) && !(TEMP.test(e) && ADAPTER_FILES.includes(TEMP.exec(e)[1])));
  if (foreign.length || (entries.length && !entries.includes(ADAPTER_FILES[0]))) {
    throw new UserError(`--out: ${dst} holds ${entries.length} entries (${JSON.stringify(entries.slice(0, 3))}), not an adapter folder; refusing to replace it (choose another path)`);
  }
}
