// Reading .npy and .npz (NumPy's format 1.0-3.0, little-endian, C order) from bytes, with errors that name
// the source. Platform-free: a Uint8Array in, plain typed arrays out (Node and browsers alike).
const DTYPES = {
  '<f4': [Float32Array, 4], '<f8': [Float64Array, 8], '<i8': [BigInt64Array, 8], '<i4': [Int32Array, 4],
  '<i2': [Int16Array, 2], '|i1': [Int8Array, 1], '|u1': [Uint8Array, 1], '<u2': [Uint16Array, 2],
  '<u4': [Uint32Array, 4],
};

/** Bad input: the message says what was expected and what was found (CLI exit code 2). */
export class UserError extends Error {}

const text = (bytes, a, b, enc = 'latin1') => (enc === 'utf8' ? new TextDecoder().decode(bytes.subarray(a, b))
  : String.fromCharCode(...bytes.subarray(a, b)));  // ISO-8859-1 exactly (TextDecoder's 'latin1' is windows-1252)

/** { dtype: '<f4' | ..., shape: [..], data: TypedArray } of the bytes of a .npy file. */
export function parseNpy(buf, where) {
  const bad = (why) => new UserError(`${where}: not a valid .npy file (${why}); it is corrupt or truncated`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.length < 10 || buf[0] !== 0x93 || text(buf, 1, 6) !== 'NUMPY') throw bad('no \\x93NUMPY magic');
  const major = buf[6];
  const wide = major >= 2;
  if (buf.length < (wide ? 12 : 10)) throw bad('header cut short');
  const hlen = wide ? view.getUint32(8, true) : view.getUint16(8, true);
  const start = (wide ? 12 : 10) + hlen;
  if (start > buf.length) throw bad(`header of ${hlen} bytes exceeds the file`);
  const header = text(buf, wide ? 12 : 10, start, major >= 3 ? 'utf8' : 'latin1');
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw bad(`unreadable header ${JSON.stringify(header.slice(0, 80))}`);
  if (!(descr[1] in DTYPES)) {
    throw new UserError(`${where}: dtype ${descr[1]} is not supported; expected one of ${Object.keys(DTYPES).join(', ')}`);
  }
  if (fortran[1] === 'True') throw new UserError(`${where}: Fortran-ordered array; save it with np.ascontiguousarray`);
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const [Type, size] = DTYPES[descr[1]];
  const count = dims.reduce((a, b) => a * b, 1);
  if (buf.length - start !== count * size) {
    throw bad(`shape (${dims.join(', ')}) ${descr[1]} needs ${count * size} data bytes, found ${buf.length - start}`);
  }
  const bytes = buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + buf.length);
  return { dtype: descr[1], shape: dims, data: new Type(bytes) };
}

async function inflateRaw(raw) {
  const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream('deflate-raw'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The arrays of an .npz file's bytes (NumPy's zip of .npy files, stored or deflated) by name, without `.npy`. */
export async function parseNpz(buf, where) {
  const bad = (why) => new UserError(`${where}: not a valid .npz file (${why}); it is corrupt or truncated`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const u32 = (i) => view.getUint32(i, true);
  const u16 = (i) => view.getUint16(i, true);
  let end = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 65535); i--) {
    if (u32(i) === 0x06054b50) { end = i; break; }
  }
  if (end < 0) throw bad('no zip directory');
  const count = u16(end + 10);
  let at = u32(end + 16);
  const out = {};
  for (let k = 0; k < count; k++) {
    if (at + 46 > buf.length || u32(at) !== 0x02014b50) throw bad('broken zip directory');
    const method = u16(at + 10);
    const size = u32(at + 20);
    const nameLen = u16(at + 28);
    const local = u32(at + 42);
    const name = text(buf, at + 46, at + 46 + nameLen, 'utf8');
    at += 46 + nameLen + u16(at + 30) + u16(at + 32);
    if (size === 0xffffffff || local === 0xffffffff) throw bad(`${name} needs zip64; save the arrays as .npy files`);
    if (local + 30 > buf.length || u32(local) !== 0x04034b50) throw bad(`no data for ${name}`);
    const start = local + 30 + u16(local + 26) + u16(local + 28);
    const raw = buf.subarray(start, start + size);
    if (raw.length !== size) throw bad(`${name} is cut short`);
    if (method !== 0 && method !== 8) throw bad(`${name} uses zip method ${method}; expected stored or deflated`);
    let data;
    try {
      data = method === 8 ? await inflateRaw(raw) : raw;
    } catch (e) {
      throw bad(`${name}: ${e.message}`);
    }
    out[name.replace(/\.npy$/, '')] = parseNpy(data, `${where}[${name}]`);
  }
  return out;
}
