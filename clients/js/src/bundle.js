// The bundle and the kit, read through a source (a folder, URLs or picked files: see node_io.js and web_io.js):
// checksums verified, a kit built for another backbone refused. A source is { where, read(name) -> bytes }.
import { sha256 } from './hash.js';
import { UserError } from './npy.js';

export async function readJson(source, name, what) {
  const bytes = await source.read(name, what);
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new UserError(`${what} ${source.where}/${name} is not valid JSON (${e.message}); the file is corrupt or truncated`);
  }
}

function plainName(name, source, what) {
  if (typeof name !== 'string' || !name || name.includes('/') || name.includes('\\') || name === '..' || name === '.') {
    throw new UserError(`${what}: expected a plain file name inside ${source.where}, found ${JSON.stringify(name)}`);
  }
  return name;
}

/** { manifest, model (Uint8Array) } with the ONNX file's SHA-256 checked against the manifest. */
export async function loadBundle(source) {
  const manifest = await readJson(source, 'edgelora_bundle.json', 'bundle manifest');
  const name = plainName(manifest.model_file || 'backbone.onnx', source, 'bundle model_file');
  const model = await source.read(name, 'bundle backbone');
  const found = 'sha256:' + await sha256(model);
  if (found !== manifest.fingerprint) {
    throw new UserError(`${source.where}/${name} does not match its manifest: expected fingerprint ${manifest.fingerprint}, found ${found}; re-export the bundle`);
  }
  return { manifest, model };
}

/** { contract, train (bytes), evaluate (bytes) }; each graph's SHA-256 checked against the contract. */
export async function loadKit(source) {
  const where = source.where;
  const contract = await readJson(source, 'kit.json', 'kit contract');
  if (contract.format !== 'edgelora-training-kit') {
    throw new UserError(`${where}/kit.json: expected an edgelora training kit contract, found format ${JSON.stringify(contract.format)}`);
  }
  if (contract.format_version > 1) {
    throw new UserError(`${where}: kit format ${contract.format_version} is newer than this client supports (1); update the client`);
  }
  const missing = ['backbone', 'recipe', 'layout', 'graphs'].filter((k) => !(k in contract))
    .concat(['train_epoch', 'evaluate'].filter((k) => contract.graphs && !(k in contract.graphs)));
  if (missing.length) {
    throw new UserError(`${where}/kit.json: missing ${JSON.stringify(missing)}; the kit is incomplete, rebuild it with \`edgelora kit\``);
  }
  const graphs = {};
  for (const [key, info] of Object.entries(contract.graphs)) {
    const name = plainName(info.file, source, `kit graph ${key}`);
    const blob = await source.read(name, `kit graph ${key}`);
    if (await sha256(blob) !== info.sha256) {
      throw new UserError(`${where}/${name} is corrupt or truncated: its SHA-256 does not match kit.json (expected ${info.sha256}); rebuild the kit with \`edgelora kit\``);
    }
    graphs[key] = blob;
  }
  return { contract, train: graphs.train_epoch, evaluate: graphs.evaluate };
}

const canon = (v) => JSON.stringify(v, (k, x) => (x && typeof x === 'object' && !Array.isArray(x)
  ? Object.fromEntries(Object.keys(x).sort().map((key) => [key, x[key]])) : x));

export const TAP_STATISTICS = ['std', 'map'];  // edgelora's files/manifest_parts.py, in its order

/** The tap statistics a kit's taps read (a tap `<tap>:<statistic>` each; files/tap_stats.py), in TAP_STATISTICS order. */
export function statisticsRead(taps) {
  const read = new Set(taps.filter((t) => TAP_STATISTICS.includes(t.pooling) && t.name.includes(':')).map((t) => t.pooling));
  return TAP_STATISTICS.filter((s) => read.has(s));
}

/** The bundle's taps as an adapter reading `statistics` sees them: each such statistic just before its tap. */
function viewTaps(manifest, statistics, where) {
  const offered = manifest.tap_statistics || [];
  const missing = statistics.filter((s) => !offered.some((o) => o.statistic === s));
  if (missing.length) {
    throw new UserError(`${where} reads tap statistic(s) ${JSON.stringify(missing)}, which the bundle does not offer (it offers ${JSON.stringify([...new Set(offered.map((o) => o.statistic))])}); use the bundle the kit was built for`);
  }
  return manifest.taps.flatMap((t) => [...offered.filter((o) => o.tap === t.name && statistics.includes(o.statistic))
    .map((o) => ({ name: `${o.tap}:${o.statistic}`, output: o.output, width: o.width, pooling: o.statistic, source: `${o.statistic} of ${o.tap}` })), t]);
}

/** The kit must have been built for exactly this backbone (the fields Manifest.identity hashes), over the view of
 * the tap statistics its taps read. */
export function checkKitFits(kit, manifest, where) {
  const b = kit.contract.backbone;
  const taps = viewTaps(manifest, statisticsRead(b.taps || []), where);
  for (const field of ['fingerprint', 'inputs', 'output', 'taps', 'preprocess', 'task']) {
    const want = field === 'preprocess' ? (manifest.preprocess || {}) : field === 'taps' ? taps : manifest[field];
    if (canon(b[field]) !== canon(want)) {
      throw new UserError(`${where} was built for another backbone: expected ${field} ${canon(b[field]).slice(0, 120)} (the kit's), found ${canon(want).slice(0, 120)} (the bundle's); rebuild it with \`edgelora kit BUNDLE\``);
    }
  }
}
