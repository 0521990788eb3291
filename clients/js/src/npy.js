'use strict';
// Reading .npy files (NumPy's format 1.0-3.0, little-endian, C order) with errors that name the file.
const fs = require('fs');

const DTYPES = {
  '<f4': [Float32Array, 4], '<f8': [Float64Array, 8], '<i8': [BigInt64Array, 8], '<i4': [Int32Array, 4],
  '<i2': [Int16Array, 2], '|i1': [Int8Array, 1], '|u1': [Uint8Array, 1], '<u2': [Uint16Array, 2],
  '<u4': [Uint32Array, 4],
};

class UserError extends Error {}

/** { dtype: '<f4' | ..., shape: [..], data: TypedArray } of a .npy file. */
function readNpy(path) {
  let buf;
  try {
    buf = fs.readFileSync(path);
  } catch (e) {
    throw new UserError(`${path}: expected a .npy file, found none (${e.code || e.message})`);
  }
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

module.exports = { readNpy, UserError };
