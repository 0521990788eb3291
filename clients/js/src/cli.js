#!/usr/bin/env node
// edgelora-js train --bundle B --kit K (--data D.npz | --x X.npy --y Y.npy) --out ADAPTER [--backend node|wasm] [settings]
import { finetune, UserError } from './node.js';

const USAGE = `usage: edgelora-js train --bundle BUNDLE --kit KIT (--data D.npz | --x X.npy --y Y.npy) --out ADAPTER_DIR
         [--x-key x] [--y-key y] [--backend node|wasm] [--epochs N] [--lr LR] [--weight-decay W] [--seed S]
         [--val-fraction F] [--patience N] [--class-weights none|balanced] [--schedule constant|cosine]
         [--warmup-epochs E] [--json]`;
const NUMBERS = { epochs: parseInt, lr: Number, 'weight-decay': Number, seed: parseInt, 'val-fraction': Number,
  patience: parseInt, 'warmup-epochs': Number };
const STRINGS = ['bundle', 'kit', 'data', 'x-key', 'y-key', 'x', 'y', 'out', 'backend', 'class-weights', 'schedule'];

function parse(argv) {
  if (argv[0] !== 'train') throw new UserError(`expected the command 'train', found ${JSON.stringify(argv[0] || '')}\n${USAGE}`);
  const opts = { json: false };
  for (let i = 1; i < argv.length; i++) {
    const flag = argv[i].replace(/^--/, '');
    if (argv[i] === '--json') { opts.json = true; continue; }
    if (!argv[i].startsWith('--') || !(flag in NUMBERS || STRINGS.includes(flag))) throw new UserError(`unknown argument ${argv[i]}\n${USAGE}`);
    const value = argv[++i];
    if (value === undefined) throw new UserError(`--${flag}: expected a value`);
    const key = flag.replace(/-/g, '_');
    if (flag in NUMBERS) {
      const v = NUMBERS[flag](value);
      if (!Number.isFinite(v) || String(v) === 'NaN') throw new UserError(`--${flag}: expected a number, found ${JSON.stringify(value)}`);
      opts[key] = v;
    } else opts[key] = value;
  }
  for (const need of ['bundle', 'kit', 'out']) if (!opts[need]) throw new UserError(`--${need} is required\n${USAGE}`);
  return opts;
}

async function main() {
  let opts;
  try {
    opts = parse(process.argv.slice(2));
    const r = await finetune(opts);
    if (opts.json) console.log(JSON.stringify(r));
    else {
      console.log(`fine-tuned ${r.n} samples on ${r.backend}: best epoch ${r.best_epoch} (${r.stopped}), ` +
        `cache fill ${r.cache_seconds.toFixed(3)} s, training ${r.train_seconds.toFixed(3)} s`);
      console.log(`  saved ${r.out}`);
    }
    return 0;
  } catch (e) {
    const user = e instanceof UserError;
    console.error(`edgelora-js: error: ${user ? e.message.split('\n')[0] : (e.stack || e)}`);
    return user ? 2 : 1;
  }
}

main().then((code) => { process.exitCode = code; });
