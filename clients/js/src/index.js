// edgelora's reference JavaScript client: fine-tune skip adapters with the training kit, no Python.
// Node: `finetune` (node.js) reads and writes folders. Browsers: compose finetune.js's steps with web_io.js.
export { openKit, settingsFor, cacheRows, targetsFor, train, evaluate, adapterFor, SETTINGS } from './finetune.js';
export { parseNpy, parseNpz, UserError } from './npy.js';
export { SplitMix64, initValues } from './prng.js';
