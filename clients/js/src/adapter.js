// An adapter in edgelora's format (edgelora/files/adapter.py): the bytes of adapter_config.json and
// adapter_model.safetensors with their cross checksums. Platform-free; writing them is the caller's I/O.
import { sha256 } from './hash.js';
import { dumpsJson } from './pyjson.js';

export const ADAPTER_FILES = ['adapter_config.json', 'adapter_model.safetensors'];

/** safetensors bytes of {name: {shape, data: Float32Array}} with string metadata. */
export function safetensors(tensors, metadata) {
  const header = { __metadata__: metadata };
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const n = tensors[name].data.length * 4;
    header[name] = { dtype: 'F32', shape: tensors[name].shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  let head = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (head.length % 8)) % 8;
  if (pad) head = new TextEncoder().encode(JSON.stringify(header) + ' '.repeat(pad));
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let at = 8 + head.length;
  for (const name of names) {
    const t = tensors[name].data;
    out.set(new Uint8Array(t.buffer, t.byteOffset, t.byteLength), at);
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

/** {file name: bytes} of the adapter folder; `config` is AdapterConfig's fields without weights_sha256. */
export async function adapterFiles(config, flat, layout) {
  const configSha = await sha256(dumpsJson(config));
  const blob = safetensors(peftTensors(flat, layout), { config_sha256: configSha, format: 'edgelora-skip-lora' });
  const full = { ...config, weights_sha256: await sha256(blob) };
  return { 'adapter_model.safetensors': blob, 'adapter_config.json': new TextEncoder().encode(dumpsJson(full)) };
}
