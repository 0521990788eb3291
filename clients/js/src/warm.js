// Warming up onnxruntime's wasm code before the real work, so a fine-tune does not pay for its compilation.
// V8 (Chromium, Node) compiles each wasm function of onnxruntime-web's 14 MB module on its first call with its
// baseline compiler and recompiles it optimised, in background threads, only after it has run enough; passes of
// every graph on zero samples get the functions the kit's graphs use there ahead of time.
// Platform-free: used by the page's worker while the user collects samples.
import { cacheRows, evaluate, settingsFor, train } from './finetune.js';

/**
 * Passes of every graph (backbone, one training epoch, evaluate) on zero samples of the kit's input shape until
 * the passes have settled (`settle` false: not checked), `budget` seconds have passed or `stop()` says so
 * (checked between passes; the event loop gets a turn every 50 ms, so a message can set it). Settled: the median of the last `window` passes has not
 * dropped below 0.8 x its lowest value for as long as it took to reach that value (at least `quiet` s). V8's
 * passes fall in steps, with plateaus of 0.5-1 s, as batches of functions finish their optimised compile
 * (docs/browser.md); SpiderMonkey's settle in milliseconds. Returns { seconds, passes } (passes 0: the backbone's
 * input has a dynamic dimension).
 */
export async function warmUp(ctx, { budget = 8, window = 5, quiet = 2, settle = true, stop = () => false,
  clock = () => performance.now() / 1e3 } = {}) {
  const t0 = clock();
  const lay = ctx.contract.layout;
  const m = ctx.contract.recipe.batch_size;
  const dims = ctx.contract.backbone.inputs[0].shape.slice(1);
  if (!dims.every(Number.isInteger)) return { seconds: 0, passes: 0 };
  const n = m * Math.ceil(64 / m);  // a full batch of the backbone's 64 and whole training batches
  const x = { dtype: '<f4', shape: [n, ...dims], data: new Float32Array(n * dims.reduce((a, b) => a * b, 1)) };
  const cls = ctx.contract.backbone.task === 'classification';
  const targets = cls ? BigInt64Array.from({ length: n }, (_, i) => BigInt(i % lay.num_outputs)) : new Float32Array(n * lay.num_outputs);
  const settings = settingsFor(ctx, { epochs: 1, val_fraction: 0, patience: null, class_weights: 'none' });
  const times = []; let best = Infinity; let since = t0; let turn = t0; let done = false;
  do {
    const p0 = clock();
    const { rows } = await cacheRows(ctx, x, 'warm-up');
    const { params } = await train(ctx, rows, targets, n, settings);
    await evaluate(ctx, rows, targets, n, params);
    const now = clock();
    times.push(now - p0);
    const median = times.slice(-window).sort((a, b) => a - b)[Math.floor(Math.min(window, times.length) / 2)];
    if (times.length >= window && median < 0.8 * best) { best = median; since = now; }
    if (now - turn > 0.05) { await new Promise((r) => setTimeout(r, 0)); turn = clock(); }
    done = settle && settled(times.length, window, clock() - since, Math.max(quiet, since - t0));
  } while (!done && clock() - t0 < budget && !stop());
  return { seconds: clock() - t0, passes: times.length };
}

/** Whether the passes have settled: a full window of passes, and no 20 % drop in its median for `wait` seconds. */
function settled(passes, window, idle, wait) {
  return passes >= 2 * window && idle >= wait;
}
