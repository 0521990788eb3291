// Drives the page in a real headless browser (Debian's chromium or firefox-esr through puppeteer-core: CDP for
// Chromium, WebDriver BiDi for Firefox; no browser is downloaded): loads the demo's scans, fine-tunes, saves the
// adapter the page offers as downloads into OUT, optionally a screenshot, and prints one JSON line (the page's
// result, and browserCpu: the CPU seconds of all the browser's processes from the click to the result, on Linux).
//   node tools/drive.mjs --browser chromium|firefox --url URL --out DIR [--screenshot PNG] [--timeout S]
//                        [--width 390 --height 844]   (a phone-sized viewport with touch by default)
//                        [--draw N] [--demo 0]   draw N digits (1s and 7s) with touch first; --demo 0: train
//                                       on the drawn digits alone
//                        [--profile DIR]   keep the browser profile in DIR (default: a fresh one, removed)
//                        [--flags "ARGS"]   extra browser command-line arguments (diagnostics: e.g. Chromium's
//                                       --js-flags=--no-wasm-dynamic-tiering; a user's browser has none)
//                        [--wait-warm 0]   click without waiting for the page's warm-up at load (the click stops it)
//                        [--visits N]   fine-tune N times in one profile (a returning user: the browser's compiled
//                                       wasm and HTTP caches are warm); the result is the last visit's
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const BROWSERS = {
  chromium: { browser: 'chrome', executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu',
    '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] },
  firefox: { browser: 'firefox', executablePath: '/usr/bin/firefox-esr', args: [] },
};

function parse(argv) {
  const o = { timeout: 120, width: 390, height: 844, visits: 1, draw: 0, demo: '1' };
  for (let i = 0; i < argv.length; i += 2) o[argv[i].replace(/^--/, '')] = argv[i + 1];
  if (!BROWSERS[o.browser] || !o.url || !o.out) {
    console.error('usage: node tools/drive.mjs --browser chromium|firefox --url URL --out DIR [--screenshot PNG]');
    process.exit(2);
  }
  return o;
}

async function launch(name, downloads, keep, flags) {
  const b = { ...BROWSERS[name] };
  if (flags) b.args = [...b.args, ...flags.split(' ').filter(Boolean)];
  if (!fs.existsSync(b.executablePath)) throw new Error(`${b.executablePath} not found: apt-get install -y ${name === 'firefox' ? 'firefox-esr' : 'chromium'}`);
  if (keep) fs.mkdirSync(keep, { recursive: true });
  const profile = keep || fs.mkdtempSync(path.join(os.tmpdir(), `edgelora-${name}-`));
  const browser = await puppeteer.launch({ ...b, headless: true, userDataDir: profile, protocolTimeout: 300000,
    extraPrefsFirefox: { 'browser.download.folderList': 2, 'browser.download.dir': downloads,
      'browser.download.useDownloadDir': true, 'browser.download.always_ask_before_handling_new_types': false,
      'browser.helperApps.neverAsk.saveToDisk': 'application/json,application/octet-stream' } });
  if (name === 'chromium') {
    const cdp = await browser.target().createCDPSession();
    await cdp.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: downloads });
  }
  return { browser, profile };
}

async function waitFor(check, seconds, what) {
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${seconds} s waiting for ${what}`);
}

/** A 1 or a 7 drawn on the pad with one finger, then its label tapped. */
async function drawDigit(page, digit) {
  const pad = await page.$('#pad');
  await pad.scrollIntoView();
  const box = await pad.boundingBox();
  const at = (fx, fy) => [box.x + fx * box.width, box.y + fy * box.height];
  const strokes = digit === 1 ? [[[0.5, 0.15], [0.52, 0.85]]] : [[[0.25, 0.2], [0.75, 0.2], [0.4, 0.85]]];
  for (const stroke of strokes) {
    await page.touchscreen.touchStart(...at(...stroke[0]));
    for (const [a, b] of stroke.slice(1).map((p, k) => [stroke[k], p])) {
      for (let t = 1; t <= 8; t++) await page.touchscreen.touchMove(...at(a[0] + (b[0] - a[0]) * t / 8, a[1] + (b[1] - a[1]) * t / 8));
    }
    await page.touchscreen.touchEnd();
  }
  const count = () => page.evaluate(() => document.querySelectorAll('#thumbs canvas').length);
  const before = await count();
  const label = await page.$(`#labels button:nth-child(${digit + 1})`);
  for (let attempt = 0; attempt < 5 && await count() === before; attempt++) {
    await label.tap();  // a tap right after the last one can be taken for a double tap: wait, tap again
    await waitFor(async () => await count() > before, 1, 'the label').catch(() => {});
  }
}

/**
 * CPU seconds (user + system) of process `root` and its descendants from Linux's /proc (null elsewhere): the
 * whole browser's CPU, every process and thread, read before and after a fine-tune.
 */
function treeCpu(root) {
  if (!root || !fs.existsSync('/proc/self/stat')) return null;
  const kids = new Map(); const ticks = new Map();
  for (const d of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    let stat;
    try { stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8'); } catch { continue; }  // gone meanwhile
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');  // state ppid ... utime (11) stime (12)
    ticks.set(Number(d), Number(f[11]) + Number(f[12]));
    if (!kids.has(Number(f[1]))) kids.set(Number(f[1]), []);
    kids.get(Number(f[1])).push(Number(d));
  }
  let total = 0; const todo = [root];
  while (todo.length) { const p = todo.pop(); total += ticks.get(p) || 0; todo.push(...(kids.get(p) || [])); }
  return total / 100;  // USER_HZ
}

/** Open the page, draw and/or load the demo's scans, fine-tune, wait for the result. */
async function fineTune(page, o, pid) {
  await page.goto(o.url, { waitUntil: 'load' });
  await page.waitForSelector('body[data-state="ready"]', { timeout: 30000 });
  if (!o.url.includes('open=0') && o['wait-warm'] !== '0') await page.waitForSelector('body[data-warm]', { timeout: 60000 });  // as a user would
  for (let i = 0; i < Number(o.draw); i++) await drawDigit(page, i % 2 ? 7 : 1);
  if (o.demo !== '0') await page.click('#load-demo');
  await page.waitForFunction(() => !document.getElementById('finetune').disabled, { timeout: 30000 });
  const cpu0 = treeCpu(pid);
  await page.$eval('#finetune', (b) => b.click());
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), { timeout: o.timeout * 1000, polling: 200 });
  const cpu = cpu0 === null ? null : treeCpu(pid) - cpu0;
  const state = await page.evaluate(() => document.body.dataset.state);
  if (state !== 'done') throw new Error(`the page reports: ${await page.evaluate(() => document.getElementById('status').textContent)}`);
  return { ...await page.evaluate(() => window.edgeloraResult), browserCpu: cpu,
    drawn: await page.evaluate(() => document.querySelectorAll('#thumbs canvas').length) };
}

async function main() {
  const o = parse(process.argv.slice(2));
  const out = path.resolve(o.out);
  fs.mkdirSync(out, { recursive: true });
  const { browser, profile } = await launch(o.browser, out, o.profile && path.resolve(o.profile), o.flags);
  const errors = [];
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => errors.push(String(e.message || e)));
    await page.setViewport({ width: Number(o.width), height: Number(o.height), hasTouch: true, isMobile: o.browser === 'chromium' });
    let result;
    for (let visit = 0; visit < Number(o.visits); visit++) result = await fineTune(page, o, browser.process()?.pid);
    for (const name of ['adapter_config.json', 'adapter_model.safetensors']) {
      await page.click(`#downloads a[download="${name}"]`);
      await waitFor(() => fs.existsSync(path.join(out, name)) && fs.statSync(path.join(out, name)).size > 0, 30, `the download of ${name}`);
    }
    await waitFor(() => !fs.readdirSync(out).some((f) => /\.(crdownload|part)$/.test(f)), 30, 'downloads to finish');
    if (o.screenshot) {
      await page.evaluate(() => document.getElementById('finetune').scrollIntoView());
      await page.screenshot({ path: o.screenshot, fullPage: true });
    }
    console.log(JSON.stringify({ browser: o.browser, version: await browser.version(), userAgent: await page.evaluate(() => navigator.userAgent),
      ...result, errors }));
  } finally {
    await browser.close();
    if (!o.profile) fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(`drive: ${e.message}`); process.exit(1); });
