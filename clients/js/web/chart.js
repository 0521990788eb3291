// A line chart of test accuracy per epoch on a <canvas>, with the accuracy before fine-tuning as a dashed line.

/** Draw `points` ([epoch, accuracy] pairs) over `epochs` epochs; `before` is the untuned accuracy. */
export function drawChart(canvas, points, epochs, before) {
  const g = canvas.getContext('2d');
  const [w, h, left, bottom, top, right] = [canvas.width, canvas.height, 44, 28, 10, 10];
  const X = (e) => left + (w - left - right) * e / Math.max(1, epochs);
  const Y = (a) => h - bottom - (h - bottom - top) * a;
  g.clearRect(0, 0, w, h);
  g.font = '12px system-ui, sans-serif'; g.fillStyle = '#555'; g.strokeStyle = '#ddd'; g.lineWidth = 1;
  for (const a of [0, 0.25, 0.5, 0.75, 1]) {
    g.beginPath(); g.moveTo(left, Y(a)); g.lineTo(w - right, Y(a)); g.stroke();
    g.fillText(`${a * 100} %`, 4, Y(a) + 4);
  }
  g.fillText('epoch', w - right - 36, h - 8);
  g.fillText('0', left - 3, h - 12);
  g.fillText(String(epochs), X(epochs) - 14, h - 12);
  if (before !== null && before !== undefined) {
    g.strokeStyle = '#c33'; g.setLineDash([6, 4]);
    g.beginPath(); g.moveTo(left, Y(before)); g.lineTo(w - right, Y(before)); g.stroke();
    g.setLineDash([]); g.fillStyle = '#c33'; g.fillText('before', left + 4, Y(before) - 4);
  }
  if (!points.length) return;
  g.strokeStyle = '#1a5fb4'; g.lineWidth = 2.5;
  g.beginPath();
  g.moveTo(X(0), Y(before ?? points[0][1]));
  for (const [e, a] of points) g.lineTo(X(e), Y(a));
  g.stroke();
  g.fillStyle = '#1a5fb4';
  const [e, a] = points[points.length - 1];
  g.fillText(`${(a * 100).toFixed(1)} %`, Math.min(X(e) - 40, w - right - 50), Y(a) - 6);
}
