'use strict';
// The bundle and the kit: read, verify checksums, refuse a kit built for another backbone.
const fs = require('fs');
const path = require('path');
const { sha256 } = require('./adapter');
const { UserError } = require('./npy');

function readJson(file, what) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new UserError(`${what} not found: expected a file at ${file}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UserError(`${what} ${file} is not valid JSON (${e.message}); the file is corrupt or truncated`);
  }
}

function plainName(name, folder, what) {
  if (typeof name !== 'string' || !name || name.includes('/') || name.includes('\\') || name === '..' || name === '.') {
    throw new UserError(`${what}: expected a plain file name inside ${folder}, found ${JSON.stringify(name)}`);
  }
  return path.join(folder, name);
}

/** { manifest, model (Buffer) } with the ONNX file's SHA-256 checked against the manifest. */
function loadBundle(folder) {
  const manifest = readJson(path.join(folder, 'edgelora_bundle.json'), 'bundle manifest');
  const file = plainName(manifest.model_file || 'backbone.onnx', folder, 'bundle model_file');
  let model;
  try {
    model = fs.readFileSync(file);
  } catch (e) {
    throw new UserError(`bundle backbone not found: expected ${file}`);
  }
  const found = 'sha256:' + sha256(model);
  if (found !== manifest.fingerprint) {
    throw new UserError(`${file} does not match its manifest: expected fingerprint ${manifest.fingerprint}, found ${found}; re-export the bundle`);
  }
  return { manifest, model };
}

/** { contract, train (Buffer), evaluate (Buffer) }; each graph's SHA-256 checked against the contract. */
function loadKit(folder) {
  const contract = readJson(path.join(folder, 'kit.json'), 'kit contract');
  if (contract.format !== 'edgelora-training-kit') {
    throw new UserError(`${folder}/kit.json: expected an edgelora training kit contract, found format ${JSON.stringify(contract.format)}`);
  }
  if (contract.format_version > 1) {
    throw new UserError(`${folder}: kit format ${contract.format_version} is newer than this client supports (1); update the client`);
  }
  const missing = ['backbone', 'recipe', 'layout', 'graphs'].filter((k) => !(k in contract))
    .concat(['train_epoch', 'evaluate'].filter((k) => contract.graphs && !(k in contract.graphs)));
  if (missing.length) {
    throw new UserError(`${folder}/kit.json: missing ${JSON.stringify(missing)}; the kit is incomplete, rebuild it with \`edgelora kit\``);
  }
  const graphs = {};
  for (const [key, info] of Object.entries(contract.graphs)) {
    const file = plainName(info.file, folder, `kit graph ${key}`);
    let blob;
    try {
      blob = fs.readFileSync(file);
    } catch (e) {
      throw new UserError(`kit graph ${key} not found: expected ${file}`);
    }
    if (sha256(blob) !== info.sha256) {
      throw new UserError(`${file} is corrupt or truncated: its SHA-256 does not match kit.json (expected ${info.sha256}); rebuild the kit with \`edgelora kit\``);
    }
    graphs[key] = blob;
  }
  return { contract, train: graphs.train_epoch, evaluate: graphs.evaluate };
}

const canon = (v) => JSON.stringify(v, (k, x) => (x && typeof x === 'object' && !Array.isArray(x)
  ? Object.fromEntries(Object.keys(x).sort().map((key) => [key, x[key]])) : x));

/** The kit must have been built for exactly this backbone (the fields Manifest.identity hashes). */
function checkKitFits(kit, manifest, where) {
  const b = kit.contract.backbone;
  for (const field of ['fingerprint', 'inputs', 'output', 'taps', 'preprocess', 'task']) {
    const want = field === 'preprocess' ? (manifest.preprocess || {}) : manifest[field];
    if (canon(b[field]) !== canon(want)) {
      throw new UserError(`${where} was built for another backbone: expected ${field} ${canon(b[field]).slice(0, 120)} (the kit's), found ${canon(want).slice(0, 120)} (the bundle's); rebuild it with \`edgelora kit BUNDLE\``);
    }
  }
}

module.exports = { loadBundle, loadKit, checkKitFits, readJson };
