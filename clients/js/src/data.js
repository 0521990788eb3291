// Inputs and targets from .npy files, validated against the kit's backbone like edgelora's data.py.
import { UserError } from './npy.js';

/** Per-sample float32 inputs (n x size) with the manifest's standardisation applied, as numpy does in float32. */
function prepareInputs(x, where, backbone) {
  if (backbone.inputs.length !== 1) {
    throw new UserError(`this client supports bundles with one input; the bundle has ${backbone.inputs.length}`);
  }
  const spec = backbone.inputs[0];
  if (spec.dtype !== 'float32') throw new UserError(`this client supports float32 inputs; the bundle's input \`${spec.name}\` is ${spec.dtype}`);
  const want = spec.shape.slice(1);
  const got = x.shape.slice(1);
  const fits = got.length === want.length && want.every((d, i) => typeof d !== 'number' || d === got[i]);
  if (!fits || x.shape.length < 1) {
    throw new UserError(`${where}: expected shape (N, ${want.join(', ')}) for input \`${spec.name}\`, found (${x.shape.join(', ')})`);
  }
  const n = x.shape[0];
  const size = got.reduce((a, b) => a * b, 1);
  const out = toFloat32(x.data);  // any numeric dtype, as edgelora casts to the manifest's float32
  for (let i = 0; i < out.length; i++) {
    if (!Number.isFinite(out[i])) {
      throw new UserError(`${where}: sample ${Math.floor(i / size)} contains NaN or Inf; expected finite inputs`);
    }
  }
  const pre = (backbone.preprocess || {})[spec.name];
  if (pre) {
    const mean = broadcast(pre.mean, got, where);
    const std = broadcast(pre.std, got, where);
    for (let s = 0; s < n; s++) {
      for (let j = 0; j < size; j++) out[s * size + j] = Math.fround(Math.fround(out[s * size + j] - mean[j]) / std[j]);
    }
  }
  return { data: out, n, shape: got };
}

/**
 * A float32 copy of any typed array. The typed-array constructor converts numbers natively; `Float32Array.from`
 * with a map function walks an iterator and took 100-200 ms for fan's 1302 x 512 inputs in V8 (most of the cache fill).
 */
function toFloat32(data) {
  if (!(data instanceof BigInt64Array || data instanceof BigUint64Array)) return new Float32Array(data);
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = Number(data[i]);
  return out;
}

/** A number or nested list broadcast (numpy rules) against one sample's shape, as float32. */
function broadcast(value, shape, where) {
  const dims = [];
  for (let v = value; Array.isArray(v); v = v[0]) dims.push(v.length);
  const flat = Float32Array.from([value].flat(Infinity));
  const pad = shape.length - dims.length;
  if (pad < 0 || dims.some((d, i) => d !== 1 && d !== shape[pad + i])) {
    throw new UserError(`${where}: standardisation of shape (${dims}) does not broadcast to a sample of shape (${shape})`);
  }
  const size = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(size);
  for (let j = 0; j < size; j++) {
    let rest = j; let src = 0; let stride = 1;
    for (let ax = shape.length - 1; ax >= 0; ax--) {
      const idx = rest % shape[ax]; rest = Math.floor(rest / shape[ax]);
      const k = ax - pad;
      if (k >= 0) { src += (dims[k] === 1 ? 0 : idx) * stride; stride *= dims[k]; }
    }
    out[j] = flat[src];
  }
  return out;
}

/** int64 labels (classification) or float32 (n x C) values (regression). */
function prepareTargets(y, where, n, backbone, c) {
  if (y.shape[0] !== n) throw new UserError(`${where}: expected ${n} targets (one per sample), found ${y.shape[0]}`);
  if (backbone.task === 'classification') {
    if (y.shape.length !== 1) throw new UserError(`${where}: expected a 1-D array of class indices, found shape (${y.shape.join(', ')})`);
    if (y.data instanceof Float32Array || y.data instanceof Float64Array) {
      throw new UserError(`${where}: expected integer class indices, found dtype ${y.dtype}`);
    }
    const out = new BigInt64Array(n);
    for (let i = 0; i < n; i++) {
      const v = Number(y.data[i]);
      if (v < 0 || v >= c) throw new UserError(`${where}: labels must be class indices 0..${c - 1}; found ${v} at row ${i}`);
      out[i] = BigInt(v);
    }
    return out;
  }
  const cols = y.shape.length === 1 ? 1 : y.shape.slice(1).reduce((a, b) => a * b, 1);
  if (cols !== c) throw new UserError(`${where}: expected regression targets of shape (${n}, ${c}), found (${y.shape.join(', ')})`);
  const out = toFloat32(y.data);
  if (!out.every(Number.isFinite)) throw new UserError(`${where}: targets contain NaN or Inf`);
  return out;
}

export { prepareInputs, prepareTargets };
