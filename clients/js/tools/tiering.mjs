// How much of onnxruntime-web's wasm time in V8 is compilation: one fine-tune in Node on the wasm backend after
// a warm-up of BUDGET seconds (src/warm.js; 0: none) and a pause (the user picking samples, while V8 finishes
// optimising in the background); prints one JSON line with the CPU seconds of the warm-up, the cache fill and
// the training, and each epoch's CPU milliseconds (CPU time: on a busy machine wall time mostly measures waiting).
//   node [V8 flags] tools/tiering.mjs BUNDLE KIT X.npy Y.npy [BUDGET] [PAUSE]
// V8 flags to compare with: --no-liftoff --no-wasm-lazy-compilation (everything optimised before the first call).
import { cacheRows, openKit, settingsFor, targetsFor, train } from '../src/finetune.js';
import { cpuSeconds, folderSource, readNpy, runtime } from '../src/node_io.js';
import { warmUp } from '../src/warm.js';

const [bundle, kit, x, y, budget = '0', pause = '2'] = process.argv.slice(2);
if (!y) {
  console.error('usage: node tools/tiering.mjs BUNDLE KIT X.npy Y.npy [BUDGET seconds] [PAUSE seconds]');
  process.exit(2);
}
const ort = runtime('wasm');
const ctx = await openKit({ ort, backend: 'wasm', bundle: folderSource(bundle), kit: folderSource(kit) });
const c0 = cpuSeconds();
const warm = Number(budget) > 0 ? await warmUp(ctx, { budget: Number(budget), settle: Infinity }) : { passes: 0 };
const c1 = cpuSeconds();
await new Promise((r) => setTimeout(r, Number(pause) * 1000));
const c2 = cpuSeconds();
const { rows, n } = await cacheRows(ctx, readNpy(x), x);
const targets = targetsFor(ctx, readNpy(y), y, n);
const c3 = cpuSeconds();
const { history } = await train(ctx, rows, targets, n, settingsFor(ctx, {}), { cpu: cpuSeconds });
const c4 = cpuSeconds();
const r3 = (v) => Math.round(v * 1e3) / 1e3;
console.log(JSON.stringify({ budget: Number(budget), passes: warm.passes, warm_cpu: r3(c1 - c0), pause_cpu: r3(c2 - c1),
  cache_cpu: r3(c3 - c2), train_cpu: r3(c4 - c3), epoch_cpu_ms: history.epochs.map((e) => Math.round(1e3 * e.cpu_seconds)) }));
