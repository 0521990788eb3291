'use strict';
// Reading .npy files (NumPy's format 1.0-3.0, little-endian, C order) with errors that name the file.
const fs = require('fs');
const zlib = require('zlib');

const DTYPES = {
  '<f4': [Float32Array, 4], '<f8': [Float64Array, 8], '<i8': [BigInt64Array, 8], '<i4': [Int32Array, 4],
  '<i2': [Int16Array, 2], '|i1': [Int8Array, 1], '|u1': [Uint8Array, 1], '<u2': [Uint16Array, 2],
  '<u4': [Uint32Array, 4],
};

class UserError extends Error {}

function readFile(path, what) {
  try {
    return fs.readFileSync(path);
  } catch (e) {
    throw new UserError(`${path}: expected ${what}, found none (${e.code || e.message})`);
  }
}

/** { dtype: '<f4' | ..., shape: [..], data: TypedArray } of a .npy file. */
function readNpy(path) {
  return parseNpy(readFile(path, 'a .npy file'), path);
}

/** The arrays of an .npz file (NumPy's zip of .npy files, stored or deflated) by name, without `.npy`. */
function readNpz(path) {
  const buf = readFile(path, 'an .npz file');
  const bad = (why) => new UserError(`${path}: not a valid .npz file (${why}); it is corrupt or truncated`);
  let end = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 65535); i--) {
    if (buf.readUInt32LE(i) === 0x06054b50) { end = i; break; }
  }
  if (end < 0) throw bad('no zip directory');
  const count = buf.readUInt16LE(end + 10);
  let at = buf.readUInt32LE(end + 16);
  const out = {};
  for (let k = 0; k < count; k++) {
    if (at + 46 > buf.length || buf.readUInt32LE(at) !== 0x02014b50) throw bad('broken zip directory');
    const method = buf.readUInt16LE(at + 10);
    const size = buf.readUInt32LE(at + 20);
    const nameLen = buf.readUInt16LE(at + 28);
    const local = buf.readUInt32LE(at + 42);
    const name = buf.toString('utf8', at + 46, at + 46 + nameLen);
    at += 46 + nameLen + buf.readUInt16LE(at + 30) + buf.readUInt16LE(at + 32);
    if (size === 0xffffffff || local === 0xffffffff) throw bad(`${name} needs zip64; save the arrays as .npy files`);
    if (local + 30 > buf.length || buf.readUInt32LE(local) !== 0x04034b50) throw bad(`no data for ${name}`);
    const start = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    const raw = buf.subarray(start, start + size);
    if (raw.length !== size) throw bad(`${name} is cut short`);
    if (method !== 0 && method !== 8) throw bad(`${name} uses zip method ${method}; expected stored or deflated`);
    let data;
    try {
      data = method === 8 ? zlib.inflateRawSync(raw) : raw;
    } catch (e) {
      throw bad(`${name}: ${e.message}`);
    }
    out[name.replace(/\.npy$/, '')] = parseNpy(data, `${path}[${name}]`);
  }
  return out;
}

function parseNpy(buf, path) {
  const bad = (why) => new UserError(`${path}: not a valid .npy file (${why}); it is corrupt or truncated`);
  if (buf.length < 10 || buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw bad('no \\x93NUMPY magic');
  const major = buf[6];
  const wide = major >= 2;
  if (buf.length < (wide ? 12 : 10)) throw bad('header cut short');
  const hlen = wide ? buf.readUInt32LE(8) : buf.readUInt16LE(8);
  const start = (wide ? 12 : 10) + hlen;
  if (start > buf.length) throw bad(`header of ${hlen} bytes exceeds the file`);
  const header = buf.toString(major >= 3 ? 'utf8' : 'latin1', wide ? 12 : 10, start);
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw bad(`unreadable header ${JSON.stringify(header.slice(0, 80))}`);
  if (!(descr[1] in DTYPES)) {
    throw new UserError(`${path}: dtype ${descr[1]} is not supported; expected one of ${Object.keys(DTYPES).join(', ')}`);
  }
  if (fortran[1] === 'True') throw new UserError(`${path}: Fortran-ordered array; save it with np.ascontiguousarray`);
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const [Type, size] = DTYPES[descr[1]];
  const count = dims.reduce((a, b) => a * b, 1);
  if (buf.length - start !== count * size) {
    throw bad(`shape (${dims.join(', ')}) ${descr[1]} needs ${count * size} data bytes, found ${buf.length - start}`);
  }
  const bytes = buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + buf.length);
  return { dtype: descr[1], shape: dims, data: new Type(bytes) };
}

module.exports = { readNpy, readNpz, UserError };
