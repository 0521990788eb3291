// Warming up onnxruntime's wasm code before the real work, so a fine-tune does not pay for its compilation.
// V8 (Chromium, Node) compiles each wasm function of onnxruntime-web's 14 MB module on its first call with its
// baseline compiler and recompiles it optimised, in background threads, only after it has run enough; a few
// passes of every graph on zero samples get the functions the kit's graphs use there ahead of time.
// Platform-free: used by the page's worker while the user collects samples.
import { cacheRows, evaluate, settingsFor, train } from './finetune.js';

/**
 * Passes of every graph (backbone, one training epoch, evaluate) on zero samples of the kit's input shape: one,
 * then more until a pass stops getting faster (`settle` passes in a row not 20 % under the fastest so far) or
 * `budget` seconds have passed. Returns { seconds, passes } (passes 0: the backbone's input has a dynamic
 * dimension). V8 needs seconds of passes (docs/browser.md); SpiderMonkey settles after a few milliseconds.
 */
export async function warmUp(ctx, { budget = 8, settle = 5, clock = () => performance.now() / 1e3 } = {}) {
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
  let best = Infinity; let stale = 0; let passes = 0;
  do {
    const p0 = clock();
    const { rows } = await cacheRows(ctx, x, 'warm-up');
    const { params } = await train(ctx, rows, targets, n, settings);
    await evaluate(ctx, rows, targets, n, params);
    const t = clock() - p0;
    passes += 1;
    stale = t < 0.8 * best ? 0 : stale + 1;
    best = Math.min(best, t);
  } while (stale < settle && clock() - t0 < budget);
  return { seconds: clock() - t0, passes };
}
