// JSON text byte-identical to Python's json.dumps(obj, indent=2, sort_keys=True) + "\n" (edgelora's
// fileio.dumps_json), so the checksums edgelora keeps over adapter configs match what this client writes.

function pyFloat(x) {
  if (!Number.isFinite(x)) throw new Error(`cannot write ${x} to JSON (edgelora refuses NaN/Infinity)`);
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return String(x);  // written as an int, read back as an int
  const [mant, exp] = x.toExponential().split('e');
  const e = Number(exp);
  if (e >= -4 && e < 16) return String(x);                          // Python repr: fixed notation here
  return `${mant}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
}

function pyString(s) {
  return JSON.stringify(s).replace(/[\u0080-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

function dump(v, level) {
  const pad = '  '.repeat(level + 1);
  const end = '  '.repeat(level);
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') return pyFloat(v);
  if (typeof v === 'string') return pyString(v);
  if (Array.isArray(v)) {
    if (!v.length) return '[]';
    return '[\n' + v.map((x) => pad + dump(x, level + 1)).join(',\n') + '\n' + end + ']';
  }
  const keys = Object.keys(v).sort();
  if (!keys.length) return '{}';
  return '{\n' + keys.map((k) => pad + pyString(k) + ': ' + dump(v[k], level + 1)).join(',\n') + '\n' + end + '}';
}

/** Python's dumps_json: sorted, indented JSON ending in a newline. */
function dumpsJson(obj) {
  return dump(obj, 0) + '\n';
}

export { dumpsJson, pyFloat };
