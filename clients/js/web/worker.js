// The page's trainer, off the main thread: opens the bundle and kit, fills the Skip-Cache (kept in IndexedDB),
// fine-tunes with onnxruntime-web's wasm backend and posts progress events, then the adapter's files.
//   in:  { type: 'open', bundle, kit (base URL or File[]), warm, budget (warm-up seconds), settle } opens and warms up
//          ahead (while the user collects samples); { type: 'finetune', bundle, kit, train: { x, y },
//          test: { x, y } | null (npy.js arrays), options (run settings), chart (evaluate the test rows after each
//          epoch), warm (false: no warm-up; src/warm.js) }
//   out: { type: 'warm', seconds, passes, load } | { type: 'stage', text }
//        | { type: 'epoch', epoch, epochs, seconds, accuracy } | { type: 'done', ... }
//        | { type: 'error', message, user }   (messages are handled one at a time)
import * as ort from './vendor/ort.wasm.min.mjs';
import { adapterFor, cacheRows, evaluate, openKit, settingsFor, targetsFor, train } from '../src/finetune.js';
import { warmUp } from '../src/warm.js';
import { UserError } from '../src/npy.js';
import { initValues } from '../src/prng.js';
import { fileSource, idbCache, urlSource } from '../src/web_io.js';

ort.env.wasm.wasmPaths = new URL('./vendor/', import.meta.url).href;  // served from the page's own folder
ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

const clock = () => performance.now() / 1e3;
const post = (m) => globalThis.postMessage(m);
const source = (s, what) => (typeof s === 'string' ? urlSource(s) : fileSource(s, `the picked ${what} files`));

let opened = null;  // { key, ctx, warm (seconds) } of the last bundle and kit given as URLs
let clicked = false;  // a fine-tune is waiting: the warm-up at load stops at its next pass

/** The kit context for these sources: reused when the same URLs were opened (and warmed) before. */
async function open(msg) {
  const key = typeof msg.bundle === 'string' && typeof msg.kit === 'string' ? `${msg.bundle}|${msg.kit}|${msg.warm !== false}` : null;
  if (key && opened && opened.key === key) return { ...opened, reused: true };
  post({ type: 'stage', text: 'loading the backbone and the training kit' });
  const t0 = clock();
  const ctx = await openKit({ ort, backend: 'wasm', bundle: source(msg.bundle, 'bundle'), kit: source(msg.kit, 'kit') });
  const load = clock() - t0;
  const budget = msg.type === 'open' ? msg.budget : 0;  // at page load: until settled (src/warm.js); at the click: one pass
  const { seconds: warm, passes } = msg.warm === false ? { seconds: 0, passes: 0 } : await warmUp(ctx, { clock, budget, settle: msg.settle, stop: () => clicked });
  opened = { key, ctx, load, warm, passes, reused: false };
  post({ type: 'warm', seconds: warm, passes, load });
  return opened;
}

async function finetune(msg) {
  const t0 = clock();
  const { ctx, load, warm, passes, reused } = await open(msg);
  const settings = settingsFor(ctx, msg.options || {});
  post({ type: 'stage', text: 'filling the Skip-Cache' });
  const t1 = clock();
  const fit = await cacheRows(ctx, msg.train.x, 'training samples', idbCache);
  const targets = targetsFor(ctx, msg.train.y, 'training labels', fit.n);
  const cacheSeconds = clock() - t1;
  let test = null;
  if (msg.test) {
    const t = await cacheRows(ctx, msg.test.x, 'test samples', idbCache);
    test = { ...t, targets: targetsFor(ctx, msg.test.y, 'test labels', t.n) };
  }
  const initial = initialParams(ctx, settings.seed);
  const before = test && await evaluate(ctx, test.rows, test.targets, test.n, initial);
  post({ type: 'stage', text: `fine-tuning ${fit.n} samples for ${settings.epochs} epochs`, before });
  const onEpoch = async (rec, params) => {
    const accuracy = msg.chart && test ? (await evaluate(ctx, test.rows, test.targets, test.n, params)).accuracy : null;
    post({ type: 'epoch', epoch: rec.epoch, epochs: settings.epochs, seconds: rec.seconds, accuracy });
  };
  const t2 = clock();
  const { params, history } = await train(ctx, fit.rows, targets, fit.n, settings, { clock, onEpoch });
  const trainSeconds = clock() - t2;
  const after = test && await evaluate(ctx, test.rows, test.targets, test.n, params);
  const files = await adapterFor(ctx, params, settings, history, 'js-browser-wasm');
  post({ type: 'done', files, before, after, params, history, n: fit.n, cached: fit.cached, threads: ort.env.wasm.numThreads,
    load_seconds: load, warm_seconds: warm, warm_passes: passes, warmed_ahead: reused, cache_seconds: cacheSeconds, train_seconds: trainSeconds,
    epoch_seconds: history.epochs.map((e) => e.seconds), seconds: clock() - t0 });
}

/** The kit's initial parameters for a seed (A from SplitMix64 stream 0, B and bias zero): "before" = the backbone. */
function initialParams(ctx, seed) {
  const lay = ctx.contract.layout;
  const p = new Float32Array(lay.size);
  p.set(initValues(lay.widths, lay.rank, seed));
  return p;
}

let queue = Promise.resolve();
globalThis.onmessage = (e) => {
  const handle = { open, finetune }[e.data.type];
  if (!handle) return;
  if (e.data.type === 'finetune') clicked = true;
  queue = queue.then(() => handle(e.data)).catch((err) => {
    post({ type: 'error', message: String(err.message || err), user: err instanceof UserError, during: e.data.type });
  });
};
