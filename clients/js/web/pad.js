// The drawing pad: pointer (touch, pen, mouse) strokes -> an 8x8 digit in the new scanner's style, the way the
// demo's digits were made (UCI: a 32x32 bitmap counted in 4x4 blocks, 0..16) and then shifted as the demo's
// new scanner does (edgelora/cli/demo_data.py new_scanner: 1 pixel right, 60 % contrast, +2 grey, noise 0.5).

/** Wire strokes on `canvas`; returns { toDigit() -> Float32Array(64) | null, clear() }. */
export function drawingPad(canvas) {
  const g = canvas.getContext('2d');
  let last = null;
  const clear = () => { g.fillStyle = '#fff'; g.fillRect(0, 0, canvas.width, canvas.height); };
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener('pointerdown', (e) => { canvas.setPointerCapture(e.pointerId); last = at(e); e.preventDefault(); });
  canvas.addEventListener('pointermove', (e) => {
    if (!last) return;
    const p = at(e);
    g.strokeStyle = '#000'; g.lineWidth = canvas.width / 11; g.lineCap = 'round';
    g.beginPath(); g.moveTo(...last); g.lineTo(...p); g.stroke();
    last = p;
    e.preventDefault();
  });
  for (const end of ['pointerup', 'pointercancel', 'pointerleave']) canvas.addEventListener(end, () => { last = null; });
  clear();
  return { toDigit: () => toDigit(g, canvas.width, canvas.height), clear };
}

/** The ink's bounding box scaled into a 32x32 bitmap (aspect kept, centred), counted per 4x4 block. */
function toDigit(g, w, h) {
  const ink = g.getImageData(0, 0, w, h).data;
  let [x0, y0, x1, y1] = [w, h, -1, -1];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (ink[(y * w + x) * 4] < 128) { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y); }
    }
  }
  if (x1 < 0) return null;
  const side = Math.max(x1 - x0, y1 - y0) + 1;
  const small = new OffscreenCanvas(32, 32);
  const s = small.getContext('2d');
  s.fillStyle = '#fff'; s.fillRect(0, 0, 32, 32);
  const cx = (x0 + x1) / 2; const cy = (y0 + y1) / 2;
  s.drawImage(g.canvas, cx - side / 2, cy - side / 2, side, side, 2, 2, 28, 28);
  const px = s.getImageData(0, 0, 32, 32).data;
  const counts = new Float32Array(64);
  for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) if (px[(y * 32 + x) * 4] < 128) counts[(y >> 2) * 8 + (x >> 2)] += 1;
  return newScanner(counts);
}

/** What the demo's new scanner makes of a clean 8x8 digit (0..16). */
export function newScanner(clean) {
  const out = new Float32Array(64);
  for (let y = 0; y < 8; y++) {
    for (let x = 0; x < 8; x++) {
      const v = x === 0 ? 0 : clean[y * 8 + x - 1];
      out[y * 8 + x] = Math.min(16, Math.max(0, 0.6 * v + 2 + 0.5 * gaussian()));
    }
  }
  return out;
}

function gaussian() {
  const u = 1 - Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

/** A small grey image of an 8x8 digit (0..16), for the list of drawn samples. */
export function thumbnail(digit) {
  const c = document.createElement('canvas');
  c.width = 8; c.height = 8;
  const g = c.getContext('2d');
  const img = g.createImageData(8, 8);
  digit.forEach((v, i) => { const k = 255 - Math.round(v * 255 / 16); img.data.set([k, k, k, 255], i * 4); });
  g.putImageData(img, 0, 0);
  return c;
}
