// The page: collects new-scanner samples (the demo's scans and/or drawn digits), runs the trainer in a Web
// Worker, shows before/after accuracy and a chart, and hands the adapter back as downloads (kept in IndexedDB).
// Assets come from ASSETS (default `demo/`, written by `node web/setup.mjs`); `?assets=URL` picks another folder.
import { parseNpz, UserError } from '../src/npy.js';
import { bytesOf, downloadLinks, idbAdapters } from '../src/web_io.js';
import { drawChart } from './chart.js';
import { drawingPad, thumbnail } from './pad.js';

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const ASSETS = query.get('assets') || 'demo/';
const state = { demo: null, drawn: [], test: null, links: [] };
const percent = (a) => `${(100 * a).toFixed(2)} %`;

if ('serviceWorker' in navigator && query.get('sw') !== '0') navigator.serviceWorker.register('sw.js').catch(() => {});

async function readNpz(item, what) {
  const arrays = await parseNpz(await bytesOf(item, what), typeof item === 'string' ? item : item.name);
  if (!arrays.x || !arrays.y) throw new UserError(`${what}: expected arrays x and y, found ${Object.keys(arrays).join(', ')}`);
  return { x: arrays.x, y: arrays.y };
}

/** The training set: the demo's scans (if loaded) followed by the drawn digits. */
function trainingSet() {
  const parts = [];
  if (state.demo) parts.push(state.demo);
  if (state.drawn.length) {
    parts.push({ x: { dtype: '<f4', shape: [state.drawn.length, 64], data: Float32Array.from(state.drawn.flatMap((d) => [...d.x])) },
      y: { dtype: '<i8', shape: [state.drawn.length], data: BigInt64Array.from(state.drawn, (d) => BigInt(d.y)) } });
  }
  const n = parts.reduce((s, p) => s + p.x.shape[0], 0);
  const cat = (key, Type) => { const out = new Type(parts.reduce((s, p) => s + p[key].data.length, 0)); let at = 0; for (const p of parts) { out.set(p[key].data, at); at += p[key].data.length; } return out; };
  return { n, x: { dtype: '<f4', shape: [n, ...parts[0].x.shape.slice(1)], data: cat('x', Float32Array) },
    y: { dtype: '<i8', shape: [n], data: cat('y', BigInt64Array) } };
}

function refresh() {
  const n = (state.demo ? state.demo.x.shape[0] : 0) + state.drawn.length;
  $('drawn-status').textContent = `${state.drawn.length} drawn digit${state.drawn.length === 1 ? '' : 's'}; ${n} training samples in all`;
  $('finetune').disabled = n === 0;
}

async function loadDemo() {
  $('demo-status').textContent = 'loading...';
  try {
    state.demo = await readNpz($('train-file').files[0] || `${ASSETS}finetune.npz`, 'fine-tune data');
    state.test = await readNpz($('test-file').files[0] || `${ASSETS}test.npz`, 'test data');
    $('demo-status').textContent = `${state.demo.x.shape[0]} scans to learn from, ${state.test.x.shape[0]} to test on`;
  } catch (e) {
    $('demo-status').textContent = e.message;
  }
  refresh();
}

async function ensureTest() {
  if (!state.test) state.test = await readNpz($('test-file').files[0] || `${ASSETS}test.npz`, 'test data').catch(() => null);
}

const sources = () => ({
  bundle: $('bundle-files').files.length ? [...$('bundle-files').files] : `${ASSETS}bundle/`,
  kit: $('kit-files').files.length ? [...$('kit-files').files] : `${ASSETS}kit/`,
  warm: query.get('warm') !== '0',
  budget: query.get('warmup') === null ? undefined : Number(query.get('warmup')),  // warm-up seconds at load
  settle: query.get('settle') !== '0',  // 0: warm up for the whole budget (src/warm.js)
});

/** The trainer: one module worker for the page's life, opened and warmed up at load (see worker.js). */
function startWorker() {
  const worker = new Worker(new URL('worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = ({ data: m }) => state.onmessage(m);
  state.onmessage = (m) => {
    if (m.type === 'warm') {
      document.body.dataset.warm = 'done';
      $('timing').textContent = `trainer ready: loaded in ${m.load.toFixed(3)} s, warmed up in ${m.seconds.toFixed(3)} s (${m.passes} passes)`;
    } else if (m.type === 'error') {
      document.body.dataset.warm = 'error';
      $('status').textContent = m.message;
    }
  };
  if (query.get('open') !== '0') worker.postMessage({ type: 'open', ...sources() });
  return worker;
}

function finetune() {
  const { n, x, y } = trainingSet();
  const epochs = Number($('epochs').value) || undefined;
  const points = [];
  let before = null;
  $('finetune').disabled = true;
  document.body.dataset.state = 'training';
  state.onmessage = async (m) => {
    if (m.type === 'stage') {
      $('status').textContent = m.text;
      if (m.before) { before = m.before.accuracy; $('before').textContent = percent(before); }
    } else if (m.type === 'epoch') {
      $('progress').value = m.epoch / m.epochs;
      if (m.accuracy !== null) points.push([m.epoch, m.accuracy]);
      drawChart($('chart'), points, m.epochs, before);
    } else if (m.type === 'done') {
      await done(m, n);
    } else if (m.type === 'error') {
      $('status').textContent = `${m.user ? '' : 'unexpected error: '}${m.message}`;
      document.body.dataset.state = 'error';
      refresh();
    }
  };
  state.worker.postMessage({ type: 'finetune', ...sources(), train: { x, y }, test: state.test, options: { epochs },
    chart: query.get('chart') !== '0' });
}

async function done(m, n) {
  if (m.after) $('after').textContent = percent(m.after.accuracy);
  const first = m.epoch_seconds[0];
  $('status').textContent = `fine-tuned ${n} samples: best epoch ${m.history.best_epoch} (${m.history.stopped})`;
  $('timing').textContent = `cache fill ${m.cache_seconds.toFixed(3)} s${m.cached ? ' (from IndexedDB)' : ''}, training ${m.train_seconds.toFixed(3)} s ` +
    `(first epoch ${(1e3 * first).toFixed(1)} ms, wasm, ${m.threads} thread${m.threads > 1 ? 's' : ''})` +
    (m.warmed_ahead ? `; warmed up at page load in ${m.warm_seconds.toFixed(3)} s` : '');
  state.links.forEach((l) => URL.revokeObjectURL(l.url));
  state.links = downloadLinks(m.files);
  $('downloads').replaceChildren(...state.links.map((l) => Object.assign(document.createElement('a'), { href: l.url, download: l.name, textContent: l.name })));
  const name = `digits-${new Date().toISOString().slice(0, 19)}`;
  try {
    await idbAdapters.save(name, { files: m.files, summary: { before: m.before, after: m.after, samples: n } });
    $('saved').textContent = (await idbAdapters.names()).join(', ');
  } catch (e) {
    $('saved').textContent = `not kept (${e.message || e}): download the files`;
  }
  window.edgeloraResult = { before: m.before, after: m.after, n, warmedAhead: m.warmed_ahead, timings: { load: m.load_seconds, warm: m.warm_seconds, warmPasses: m.warm_passes,
    cache: m.cache_seconds, train: m.train_seconds, epochs: m.epoch_seconds, total: m.seconds }, threads: m.threads };
  document.body.dataset.state = 'done';
  refresh();
}

function setUp() {
  const pad = drawingPad($('pad'));
  for (let d = 0; d < 10; d++) {
    const b = Object.assign(document.createElement('button'), { textContent: String(d) });
    b.addEventListener('click', () => {
      const x = pad.toDigit();
      if (!x) { $('drawn-status').textContent = 'draw a digit first'; return; }
      state.drawn.push({ x, y: d });
      $('thumbs').append(thumbnail(x));
      pad.clear();
      refresh();
      ensureTest();
    });
    $('labels').append(b);
  }
  $('clear').addEventListener('click', pad.clear);
  $('load-demo').addEventListener('click', loadDemo);
  $('finetune').addEventListener('click', finetune);
  if (query.get('epochs')) $('epochs').value = query.get('epochs');
  idbAdapters.names().then((names) => { $('saved').textContent = names.join(', ') || 'none yet'; }).catch(() => {});
  state.worker = startWorker();
  document.body.dataset.state = 'ready';
}

setUp();
