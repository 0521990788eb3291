"""The data files docs/deploy.md and docs/personalize.md use, cut from the demo's scans.

    edgelora demo --save-data demo_files --no-plot --quiet
    python examples/demo_deliveries.py demo_files

writes into demo_files/: day1.npz, day2.npz, day3.npz (finetune.npz in three deliveries, in sample order),
day2_bad.npz (day 2 with every label replaced by a wrong one, drawn with a fixed seed) and
first130.npz (the first 130 scans, for a second adapter). numpy only; the same files on every machine.
A file it would replace must be an .npz of arrays x and y (what this script writes); anything else is refused.
"""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from edgelora.files.fileio import atomic_write

DAYS = 3        # deliveries of finetune.npz
SEED = 7        # the wrong labels of day2_bad.npz
FIRST = 130     # scans in first130.npz


def deliveries(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{file name: (x, y)}: three deliveries in order, day 2 with wrong labels, the first 130 scans."""
    cuts = np.linspace(0, len(x), DAYS + 1).round().astype(int)
    out = {f"day{d + 1}.npz": (x[a:b], y[a:b]) for d, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))}
    x2, y2 = out["day2.npz"]
    c = int(y.max()) + 1
    out["day2_bad.npz"] = (x2, (y2 + np.random.default_rng(SEED).integers(1, c, len(y2))) % c)  # never the true class
    out["first130.npz"] = (x[:FIRST], y[:FIRST])
    return out


def _ours(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return sorted(z.namelist()) == ["x.npy", "y.npy"]
    except (OSError, zipfile.BadZipFile):
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python examples/demo_deliveries.py DEMO_FILES  (a folder from `edgelora demo --save-data`)",
              file=sys.stderr)
        return 2
    folder = Path(argv[0])
    source = folder / "finetune.npz"
    if not source.is_file():
        print(f"demo_deliveries: {source} not found; make it with: edgelora demo --save-data {folder}", file=sys.stderr)
        return 2
    with np.load(source, allow_pickle=False) as data:
        x, y = data["x"], data["y"]
    files = deliveries(x, y)
    taken = [str(folder / name) for name in files if (folder / name).exists() and not _ours(folder / name)]
    if taken:
        print(f"demo_deliveries: would replace {taken}, which this script did not write; move them away",
              file=sys.stderr)
        return 2
    for name, (xs, ys) in files.items():
        buf = io.BytesIO()
        np.savez(buf, x=xs, y=ys)
        atomic_write(folder / name, buf.getvalue())
        print(f"wrote {folder / name}: {len(xs)} scans")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
