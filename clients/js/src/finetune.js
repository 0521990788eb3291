// Fine-tuning as steps any host composes (Node's CLI, a browser worker): open the bundle and kit, fill the
// Skip-Cache rows through the backbone, train with the kit, evaluate, and build the adapter's files.
// Platform-free: files come from sources (bundle.js), onnxruntime is passed in, nothing is written here.
import { adapterFiles } from './adapter.js';
import { checkKitFits, loadBundle, loadKit, statisticsRead } from './bundle.js';
import { prepareInputs, prepareTargets } from './data.js';
import { sha256 } from './hash.js';
import { UserError } from './npy.js';
import { accuracy, fillRows, session, trainKit } from './train.js';

export const SETTINGS = ['epochs', 'lr', 'weight_decay', 'seed', 'schedule', 'warmup_epochs', 'class_weights', 'val_fraction', 'patience'];

/** { ort, backend, manifest, contract, sessions } for a bundle and a kit (sources), checked to fit each other. */
export async function openKit({ ort, backend, bundle, kit }) {
  const k = await loadKit(kit);
  const b = await loadBundle(bundle);
  checkKitFits(k, b.manifest, `the training kit ${kit.where}`);
  const c = k.contract;
  const sessions = {
    backbone: await session(ort, backend, b.model, `${bundle.where}/${b.manifest.model_file || 'backbone.onnx'}`),
    train: await session(ort, backend, k.train, `${kit.where}/${c.graphs.train_epoch.file}`),
    evaluate: await session(ort, backend, k.evaluate, `${kit.where}/${c.graphs.evaluate.file}`),
  };
  return { ort, backend, manifest: b.manifest, contract: c, sessions };
}

/** Run settings: the kit's recorded defaults, overridden by any of SETTINGS in `options`, validated. */
export function settingsFor(ctx, options = {}) {
  const settings = { schedule: 'constant', warmup_epochs: 0, class_weights: 'none', val_fraction: 0, patience: null,
    ...ctx.contract.defaults };
  for (const key of SETTINGS) if (options[key] !== undefined && options[key] !== null) settings[key] = options[key];
  checkSettings(settings);
  return settings;
}

/**
 * Cache rows [y0 | taps] of inputs `x` (an array from npy.js) through the backbone: { rows, n, cached }.
 * `cache` ({ get(key), put(key, rows) }, optional) keeps them across sessions, keyed by backbone and data.
 */
export async function cacheRows(ctx, x, where, cache = null) {
  const inputs = prepareInputs(x, where, ctx.contract.backbone);
  const key = cache && `${ctx.contract.backbone.identity}:${await sha256(new Uint8Array(inputs.data.buffer))}`;
  const hit = cache && await cache.get(key);
  if (hit) return { rows: hit, n: inputs.n, cached: true };
  const rows = await fillRows(ctx.ort, ctx.sessions.backbone, inputs, ctx.contract.backbone, ctx.contract.layout.row_width);
  if (cache) await cache.put(key, rows);
  return { rows, n: inputs.n, cached: false };
}

/** Targets from an array (npy.js), checked against the task; a classification needs two classes or more. */
export function targetsFor(ctx, y, where, n) {
  const targets = prepareTargets(y, where, n, ctx.contract.backbone, ctx.contract.layout.num_outputs);
  if (ctx.contract.backbone.task === 'classification' && new Set(targets).size < 2) {
    throw new UserError(`${where}: all samples have the same class; fine-tuning needs samples of at least 2 classes`);
  }
  return targets;
}

/** Train on cached rows: { params, history } (see train.js for hooks). */
export function train(ctx, rows, targets, n, settings, hooks = {}) {
  return trainKit(ctx.ort, ctx.sessions, ctx.contract, rows, targets, n, settings, hooks);
}

/** { loss, accuracy (classification) } of flat parameters (Float32Array, or the kit's initial ones) on rows. */
export async function evaluate(ctx, rows, targets, n, params) {
  const { ort, contract } = ctx;
  const c = contract.layout.num_outputs;
  const cls = contract.backbone.task === 'classification';
  const out = await ctx.sessions.evaluate.run({
    rows: new ort.Tensor('float32', rows, [n, contract.layout.row_width]),
    targets: cls ? new ort.Tensor('int64', targets, [n]) : new ort.Tensor('float32', targets, [n, c]),
    params: params instanceof ort.Tensor ? params : new ort.Tensor('float32', params, [contract.layout.size]),
  });
  const loss = out.loss.data[0];
  return cls ? { loss, accuracy: accuracy(out.outputs.data, targets, c) } : { loss, mse: loss };
}

/** The adapter folder's files ({name: bytes}) in edgelora's format, for an `engine` name such as 'js-wasm'. */
export function adapterFor(ctx, params, settings, history, engine) {
  const { contract } = ctx;
  const b = contract.backbone;
  const recipe = contract.recipe;
  const chosen = { r: recipe.r, lora_alpha: recipe.lora_alpha, weight_decay: settings.weight_decay };
  const config = {
    backbone_fingerprint: b.identity, target_taps: contract.layout.taps, tap_widths: contract.layout.widths,
    num_outputs: contract.layout.num_outputs, task: b.task, r: recipe.r, lora_alpha: recipe.lora_alpha,
    bias: recipe.bias, classes: b.classes || [], format_version: 1, peft_type: 'SKIP_LORA',
    training: { engine, settings: { ...settings, ...recipe }, chosen, best_epoch: history.best_epoch,
      stopped: history.stopped, samples: history.samples, val_metrics: history.val_metrics },
  };
  const statistics = statisticsRead(b.taps);  // recorded only when some, as edgelora does
  if (statistics.length) config.tap_statistics = statistics;
  return adapterFiles(config, params, contract.layout);
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
