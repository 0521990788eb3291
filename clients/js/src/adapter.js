'use strict';
// Writing an adapter folder in edgelora's format (edgelora/files/adapter.py): adapter_config.json +
// adapter_model.safetensors with the cross checksums, swapped in atomically (never half-overwritten).
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { UserError } = require('./npy');
const { dumpsJson } = require('./pyjson');

const sha256 = (data) => crypto.createHash('sha256').update(data).digest('hex');

/** safetensors bytes of {name: {shape, data: Float32Array}} with string metadata. */
function safetensors(tensors, metadata) {
  const header = { __metadata__: metadata };
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const n = tensors[name].data.length * 4;
    header[name] = { dtype: 'F32', shape: tensors[name].shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8);
  const head = Buffer.from(text, 'utf8');
  const out = Buffer.alloc(8 + head.length + offset);
  out.writeBigUInt64LE(BigInt(head.length), 0);
  head.copy(out, 8);
  let at = 8 + head.length;
  for (const name of names) {
    const t = tensors[name].data;
    Buffer.from(t.buffer, t.byteOffset, t.byteLength).copy(out, at);
    at += t.byteLength;
  }
  return out;
}

/** PEFT-oriented tensors from the flat buffer (lora.views layout): lora_A = A_k^T, lora_B = B_k^T. */
function peftTensors(flat, layout) {
  const { taps, widths, rank: r, num_outputs: c } = layout;
  const at = Object.fromEntries(layout.tensors.map((t) => [t.name, t.offset]));
  const out = {};
  taps.forEach((tap, k) => {
    const d = widths[k];
    const a = new Float32Array(r * d);
    const base = at[`A.${tap}`];
    for (let i = 0; i < d; i++) for (let j = 0; j < r; j++) a[j * d + i] = flat[base + i * r + j];
    const b = new Float32Array(c * r);
    for (let j = 0; j < r; j++) for (let o = 0; o < c; o++) b[o * r + j] = flat[at.B + (k * r + j) * c + o];
    out[`${tap}.lora_A.weight`] = { shape: [r, d], data: a };
    out[`${tap}.lora_B.weight`] = { shape: [c, r], data: b };
  });
  if (layout.bias) out.bias = { shape: [c], data: flat.slice(at.bias, at.bias + c) };
  return out;
}

function fsyncDir(dir) {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function writeFolderAtomically(dst, files) {
  dst = path.resolve(dst);
  if (fs.existsSync(dst) && !fs.lstatSync(dst).isDirectory()) {
    throw new Error(`${dst} exists and is not a folder; expected a folder path (nothing was written)`);
  }
  // edgelora's temp name (fileio._temp_name): its writers remove what a dead process left behind
  const tmp = path.join(path.dirname(dst), `.${path.basename(dst)}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
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

const ADAPTER_FILES = ['adapter_config.json', 'adapter_model.safetensors'];
const TEMP = /^\.(.+)\.(tmp-\d+-[0-9a-f]+|old|lock)$/;  // edgelora's temp, aside and lock names

/**
 * edgelora's rule for outputs (edgelora/files/outputs.py): an existing `dst` is replaced only if it is an adapter
 * folder or empty, and it is never an input, a folder holding one, the current folder or one above it.
 */
function checkOutput(dst, inputs) {
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

/** Write the adapter folder; `config` is AdapterConfig's fields without weights_sha256. */
function saveAdapter(dst, config, flat, layout) {
  const configSha = sha256(dumpsJson(config));
  const blob = safetensors(peftTensors(flat, layout), { config_sha256: configSha, format: 'edgelora-skip-lora' });
  const full = { ...config, weights_sha256: sha256(blob) };
  writeFolderAtomically(dst, { 'adapter_model.safetensors': blob, 'adapter_config.json': dumpsJson(full) });
}

module.exports = { saveAdapter, checkOutput, sha256, safetensors };
