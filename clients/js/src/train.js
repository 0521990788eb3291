// Fine-tuning with edgelora's training kit on any onnxruntime-js (node, or web's wasm in Node or a browser): the
// same steps as edgelora/runtime/onnx_trainer.py. Every operation on parameters runs inside the kit's ONNX graphs.
// Platform-free: `ort` is the caller's onnxruntime module, `clock` its timer.
import { SplitMix64, initValues } from './prng.js';
import { UserError } from './npy.js';

async function session(ort, backend, model, what) {
  const opts = backend === 'node'
    ? { executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: 'sequential' }
    : { executionProviders: ['wasm'] };
  try {
    return await ort.InferenceSession.create(model, opts);
  } catch (e) {
    throw new UserError(`onnxruntime cannot load ${what}: ${String(e.message || e).split('\n')[0]}`);
  }
}

/** Rows [y0 | taps] (n x W) of every sample, through the backbone in batches of 64 (edgelora's Backbone). */
async function fillRows(ort, sess, inputs, backbone, width) {
  const { data, n, shape } = inputs;
  const size = shape.reduce((a, b) => a * b, 1);
  const names = [backbone.output.name, ...backbone.taps.map((t) => t.output)];
  const rows = new Float32Array(n * width);
  for (let a = 0; a < n; a += 64) {
    const b = Math.min(n, a + 64);
    const feed = { [backbone.inputs[0].name]: new ort.Tensor('float32', data.subarray(a * size, b * size), [b - a, ...shape]) };
    let out;
    try {
      out = await sess.run(feed, names);
    } catch (e) {
      throw new UserError(`the backbone failed on samples ${a}..${b - 1}: ${String(e.message || e).split('\n')[0]}`);
    }
    let col = 0;
    for (const name of names) {
      const t = out[name];
      const w = t.dims[1];
      for (let i = 0; i < b - a; i++) rows.set(t.data.subarray(i * w, (i + 1) * w), (a + i) * width + col);
      col += w;
    }
  }
  return rows;
}

const roundHalfEven = (x) => {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : r;
};

/** (train, val) sample indices: edgelora's 'tail' split, the last `fraction` of each class in sample order. */
function validationSplit(labels, n, fraction, classification) {
  const all = [...Array(n).keys()];
  if (!fraction) return [all, []];
  const groups = new Map();
  for (let i = 0; i < n; i++) {
    const key = classification ? Number(labels[i]) : 0;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(i);
  }
  const held = new Set();
  for (const g of groups.values()) {
    if (g.length >= 2) {
      const k = Math.min(g.length - 1, Math.max(1, roundHalfEven(fraction * g.length)));
      g.slice(g.length - k).forEach((i) => held.add(i));
    }
  }
  return [all.filter((i) => !held.has(i)), all.filter((i) => held.has(i))];
}

/** edgelora.core.optim.learning_rate. */
function learningRate(step, total, base, schedule, warmup) {
  if (warmup && step < warmup) return base * (step + 1) / warmup;
  if (schedule === 'cosine') {
    const progress = (step - warmup) / Math.max(1, total - warmup);
    return base * 0.5 * (1.0 + Math.cos(Math.PI * Math.min(1.0, progress)));
  }
  return base;
}

function classWeights(mode, labels, c) {
  if (mode === 'none') return new Float32Array(c).fill(1);
  if (mode === 'balanced') {
    const counts = new Array(c).fill(0);
    labels.forEach((l) => { counts[Number(l)] += 1; });
    return Float32Array.from(counts, (k) => (k > 0 ? labels.length / (c * k) : 0));
  }
  if (!Array.isArray(mode) || mode.length !== c) throw new UserError(`class_weights: expected 'none', 'balanced' or ${c} numbers`);
  return Float32Array.from(mode);
}

function pick(rows, width, idx) {
  const out = new Float32Array(idx.length * width);
  idx.forEach((s, i) => out.set(rows.subarray(s * width, (s + 1) * width), i * width));
  return out;
}

function pickTargets(targets, idx, c, classification) {
  if (classification) return BigInt64Array.from(idx, (i) => targets[i]);
  const out = new Float32Array(idx.length * c);
  idx.forEach((s, i) => out.set(targets.subarray(s * c, (s + 1) * c), i * c));
  return out;
}

/**
 * Train with the kit; returns { params (Float32Array), history }. hooks: clock() and cpu() in seconds (cpu may be
 * absent), onEpoch(record, params tensor) awaited after each epoch (progress events; not timed in `seconds`).
 */
async function trainKit(ort, sessions, contract, rows, targets, n, settings, hooks = {}) {
  const clock = hooks.clock || (() => performance.now() / 1e3);
  const lay = contract.layout;
  const c = lay.num_outputs;
  const width = lay.row_width;
  const cls = contract.backbone.task === 'classification';
  const [trainIdx, valIdx] = validationSplit(targets, n, settings.val_fraction, cls);
  const bs = contract.recipe.batch_size;
  if (trainIdx.length < bs) {
    throw new UserError(`the training split has ${trainIdx.length} samples, fewer than the kit's batch_size ${bs}; build a kit with a smaller batch or collect more samples`);
  }
  const nt = trainIdx.length;
  const T = (data, type, dims) => new ort.Tensor(type, data, dims);
  const tgtT = (t, m) => (cls ? T(t, 'int64', [m]) : T(t, 'float32', [m, c]));
  const trainRows = T(pick(rows, width, trainIdx), 'float32', [nt, width]);
  const trainTargets = pickTargets(targets, trainIdx, c, cls);
  const val = valIdx.length ? { rows: T(pick(rows, width, valIdx), 'float32', [valIdx.length, width]),
    targets: pickTargets(targets, valIdx, c, cls) } : null;
  let params = new Float32Array(lay.size);
  params.set(initValues(lay.widths, lay.rank, settings.seed));
  let state = { params: T(params, 'float32', [lay.size]), opt_m: T(new Float32Array(lay.size), 'float32', [lay.size]),
    opt_v: T(new Float32Array(lay.size), 'float32', [lay.size]), step: T(new BigInt64Array(1), 'int64', []) };
  const steps = Math.ceil(nt / bs);
  const total = settings.epochs * steps;
  const warmup = roundHalfEven(settings.warmup_epochs * steps);
  const lrs = Float64Array.from({ length: total }, (_, i) => learningRate(i, total, settings.lr, settings.schedule, warmup));
  const feed = { rows: trainRows, targets: tgtT(trainTargets, nt), weight_decay: T(Float64Array.of(settings.weight_decay), 'float64', []) };
  if (cls) feed.class_weights = T(classWeights(settings.class_weights, trainTargets, c), 'float32', [c]);
  const shuffler = new SplitMix64(settings.seed);
  let best = state.params; let bestLoss = null; let bestEpoch = 0; let since = 0; let stopped = 'completed';
  const epochs = [];
  for (let epoch = 1; epoch <= settings.epochs; epoch++) {
    const t0 = clock();
    const cpu0 = hooks.cpu ? hooks.cpu() : 0;
    const out = await sessions.train.run({ ...feed, ...state, perm: T(shuffler.permutation(nt), 'int64', [nt]),
      lr: T(lrs.subarray((epoch - 1) * steps, epoch * steps), 'float64', [steps]) });
    if (!out.finite.data[0]) { stopped = 'non_finite'; break; }  // keep the last good parameters
    state = { params: out.params_out, opt_m: out.opt_m_out, opt_v: out.opt_v_out, step: out.step_out };
    const rec = { epoch, lr: lrs[epoch * steps - 1] };
    if (val) {
      const ev = await sessions.evaluate.run({ rows: val.rows, targets: tgtT(val.targets, valIdx.length), params: state.params });
      rec.val_loss = ev.loss.data[0];
      if (cls) rec.val_accuracy = accuracy(ev.outputs.data, val.targets, c);
      if (bestLoss === null || rec.val_loss < bestLoss) { best = state.params; bestLoss = rec.val_loss; bestEpoch = epoch; since = 0; } else since += 1;
    } else { best = state.params; bestEpoch = epoch; }
    rec.seconds = clock() - t0;
    if (hooks.cpu) rec.cpu_seconds = hooks.cpu() - cpu0;
    epochs.push(rec);
    if (hooks.onEpoch) await hooks.onEpoch(rec, state.params);
    if (settings.patience && since >= settings.patience) { stopped = 'early_stopping'; break; }
  }
  params = Float32Array.from(best.data);
  let valMetrics = {};
  if (val) {
    const ev = await sessions.evaluate.run({ rows: val.rows, targets: tgtT(val.targets, valIdx.length), params: T(params, 'float32', [lay.size]) });
    valMetrics = cls ? { accuracy: accuracy(ev.outputs.data, val.targets, c), loss: ev.loss.data[0], samples: valIdx.length }
      : { mse: ev.loss.data[0], loss: ev.loss.data[0], samples: valIdx.length };
  }
  return { params, history: { epochs, best_epoch: bestEpoch, stopped, samples: { train: nt, val: valIdx.length }, val_metrics: valMetrics } };
}

function accuracy(outputs, labels, c) {
  let right = 0;
  for (let i = 0; i < labels.length; i++) {
    let arg = 0;
    for (let j = 1; j < c; j++) if (outputs[i * c + j] > outputs[i * c + arg]) arg = j;
    if (BigInt(arg) === labels[i]) right += 1;
  }
  return right / labels.length;
}

export { session, fillRows, trainKit, learningRate, validationSplit, accuracy };
