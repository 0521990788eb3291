// The Node API: fine-tune from folders and files to an adapter folder (what `cli.js train` runs).
import { adapterFor, cacheRows, openKit, settingsFor, targetsFor, train } from './finetune.js';
import { UserError } from './npy.js';
import { checkOutput, cpuSeconds, folderSource, readNpy, readNpz, runtime, writeFolderAtomically } from './node_io.js';

/**
 * Fine-tune: bundle + kit + data (.npz, or x.npy and y.npy) -> adapter folder `out` (edgelora's format; `edgelora eval` loads it).
 * options: backend 'node' | 'wasm', and any of SETTINGS (default: the kit's recorded defaults).
 */
export async function finetune({ bundle, kit, x, y, out, backend = 'node', ...options }) {
  const clock = () => performance.now() / 1e3;
  const t0 = clock();
  const guard = () => checkOutput(out, [['bundle', bundle], ['kit', kit], ...[options.data, x, y].filter(Boolean).map((f) => ['data file', f])]);
  guard();  // before any work, and again right before writing
  const ort = runtime(backend);
  const [xa, ya, xWhere, yWhere] = await arrays(options, x, y);
  const ctx = await openKit({ ort, backend, bundle: folderSource(bundle), kit: folderSource(kit) });
  const settings = settingsFor(ctx, options);
  const loaded = clock() - t0;
  const cpu0 = cpuSeconds();  // CPU time too: on a busy machine wall time mostly measures waiting
  const { rows, n } = await cacheRows(ctx, xa, xWhere);
  const targets = targetsFor(ctx, ya, yWhere, n);
  const filled = clock() - t0;
  const { params, history } = await train(ctx, rows, targets, n, settings, { cpu: cpuSeconds });
  const trained = clock() - t0;
  const cpu = cpuSeconds() - cpu0;
  const files = await adapterFor(ctx, params, settings, history, `js-${backend}`);
  guard();
  writeFolderAtomically(out, files);
  const r = ctx.contract.recipe;
  return { out, backend, n, load_seconds: loaded, cache_seconds: filled - loaded,
    train_seconds: trained - filled, cpu_seconds: cpu, seconds: clock() - t0, ...history, epochs: history.epochs.length,
    epoch_seconds: history.epochs.map((e) => e.seconds), epoch_cpu_seconds: history.epochs.map((e) => e.cpu_seconds),
    chosen: { r: r.r, lora_alpha: r.lora_alpha, weight_decay: settings.weight_decay } };
}

/** (inputs, targets, where, where) from --data FILE.npz (arrays --x-key, --y-key) or --x X.npy --y Y.npy. */
async function arrays({ data, x_key: xKey = 'x', y_key: yKey = 'y' }, x, y) {
  if (data) {
    const found = await readNpz(data);
    const missing = [xKey, yKey].filter((k) => !(k in found));
    if (missing.length) {
      throw new UserError(`${data}: expected arrays ${JSON.stringify([xKey, yKey])}, found ${JSON.stringify(Object.keys(found))}; choose them with --x-key/--y-key`);
    }
    return [found[xKey], found[yKey], `${data}['${xKey}']`, `${data}['${yKey}']`];
  }
  if (!x || !y) throw new UserError('expected --data FILE.npz, or --x X.npy and --y Y.npy');
  return [readNpy(x), readNpy(y), x, y];
}

export { UserError };
