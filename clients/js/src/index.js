'use strict';
// edgelora's reference JavaScript client: fine-tune skip adapters with the training kit, no Python.
const { checkOutput, saveAdapter } = require('./adapter');
const { loadBundle, loadKit, checkKitFits } = require('./bundle');
const { prepareInputs, prepareTargets } = require('./data');
const { readNpy, readNpz, UserError } = require('./npy');
const { runtime, session, fillRows, trainKit } = require('./train');

const SETTINGS = ['epochs', 'lr', 'weight_decay', 'seed', 'schedule', 'warmup_epochs', 'class_weights', 'val_fraction', 'patience'];

/**
 * Fine-tune: bundle + kit + data (.npz, or x.npy and y.npy) -> adapter folder `out` (edgelora's format; `edgelora eval` loads it).
 * options: backend 'node' | 'wasm', and any of SETTINGS (default: the kit's recorded defaults).
 */
async function finetune({ bundle, kit, x, y, out, backend = 'node', ...options }) {
  const t0 = process.hrtime.bigint();
  const seconds = () => Number(process.hrtime.bigint() - t0) / 1e9;
  const guard = () => checkOutput(out, [['bundle', bundle], ['kit', kit], ...[options.data, x, y].filter(Boolean).map((f) => ['data file', f])]);
  guard();  // before any work, and again right before writing
  const k = loadKit(kit);
  const b = loadBundle(bundle);
  checkKitFits(k, b.manifest, `the training kit ${kit}`);
  const contract = k.contract;
  const settings = { schedule: 'constant', warmup_epochs: 0, class_weights: 'none', val_fraction: 0, patience: null,
    ...contract.defaults };
  for (const key of SETTINGS) if (options[key] !== undefined && options[key] !== null) settings[key] = options[key];
  checkSettings(settings);
  const backboneInfo = contract.backbone;
  const [xa, ya, xWhere, yWhere] = arrays(options, x, y);
  const inputs = prepareInputs(xa, xWhere, backboneInfo);
  const targets = prepareTargets(ya, yWhere, inputs.n, backboneInfo, contract.layout.num_outputs);
  if (backboneInfo.task === 'classification' && new Set(targets).size < 2) {
    throw new UserError(`${y}: all samples have the same class; fine-tuning needs samples of at least 2 classes`);
  }
  const ort = runtime(backend);
  const backboneSession = await session(ort, backend, b.model, `${bundle}/${b.manifest.model_file || 'backbone.onnx'}`);
  const sessions = { train: await session(ort, backend, k.train, `${kit}/${contract.graphs.train_epoch.file}`),
    evaluate: await session(ort, backend, k.evaluate, `${kit}/${contract.graphs.evaluate.file}`) };
  const loaded = seconds();
  const cpu0 = process.cpuUsage();  // CPU time too: on a busy machine wall time mostly measures waiting
  const rows = await fillRows(ort, backboneSession, inputs, backboneInfo, contract.layout.row_width);
  const filled = seconds();
  const { params, history } = await trainKit(ort, sessions, contract, rows, targets, inputs.n, settings);
  const trained = seconds();
  const cpu = process.cpuUsage(cpu0);
  const recipe = contract.recipe;
  const chosen = { r: recipe.r, lora_alpha: recipe.lora_alpha, weight_decay: settings.weight_decay };
  const config = {
    backbone_fingerprint: backboneInfo.identity, target_taps: contract.layout.taps, tap_widths: contract.layout.widths,
    num_outputs: contract.layout.num_outputs, task: backboneInfo.task, r: recipe.r, lora_alpha: recipe.lora_alpha,
    bias: recipe.bias, classes: backboneInfo.classes || [], format_version: 1, peft_type: 'SKIP_LORA',
    training: { engine: `js-${backend}`, settings: { ...settings, ...recipe }, chosen, best_epoch: history.best_epoch,
      stopped: history.stopped, samples: history.samples, val_metrics: history.val_metrics },
  };
  guard();
  saveAdapter(out, config, params, contract.layout);
  return { out, backend, n: inputs.n, load_seconds: loaded, cache_seconds: filled - loaded,
    train_seconds: trained - filled, cpu_seconds: (cpu.user + cpu.system) / 1e6, seconds: seconds(), ...history, epochs: history.epochs.length,
    epoch_seconds: history.epochs.map((e) => e.seconds), epoch_cpu_seconds: history.epochs.map((e) => e.cpu_seconds),
    chosen };
}

/** (inputs, targets, where, where) from --data FILE.npz (arrays --x-key, --y-key) or --x X.npy --y Y.npy. */
function arrays({ data, x_key: xKey = 'x', y_key: yKey = 'y' }, x, y) {
  if (data) {
    const found = readNpz(data);
    const missing = [xKey, yKey].filter((k) => !(k in found));
    if (missing.length) {
      throw new UserError(`${data}: expected arrays ${JSON.stringify([xKey, yKey])}, found ${JSON.stringify(Object.keys(found))}; choose them with --x-key/--y-key`);
    }
    return [found[xKey], found[yKey], `${data}['${xKey}']`, `${data}['${yKey}']`];
  }
  if (!x || !y) throw new UserError('expected --data FILE.npz, or --x X.npy and --y Y.npy');
  return [readNpy(x), readNpy(y), x, y];
}

function checkSettings(s) {
  const bad = (what) => { throw new UserError(what); };
  if (!Number.isInteger(s.epochs) || s.epochs < 1) bad(`epochs: expected a positive integer, found ${s.epochs}`);
  if (!(s.lr > 0) || !Number.isFinite(s.lr)) bad(`lr: expected a positive number, found ${s.lr}`);
  if (!(s.weight_decay >= 0) || !Number.isFinite(s.weight_decay)) bad(`weight_decay: expected a number >= 0, found ${s.weight_decay}`);
  if (!Number.isSafeInteger(s.seed)) bad(`seed: expected an integer, found ${s.seed}`);
  if (!(s.val_fraction >= 0 && s.val_fraction < 1)) bad(`val_fraction: expected a fraction in [0, 1), found ${s.val_fraction}`);
  if (!['constant', 'cosine'].includes(s.schedule)) bad(`schedule: expected constant or cosine, found ${s.schedule}`);
}

module.exports = { finetune, UserError };
