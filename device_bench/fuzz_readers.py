"""Byte-flip fuzzing of every reader of a file edgelora trusts: no mutation escapes as an undocumented error.

    python -m device_bench.fuzz_readers                     # 10,000 cases per reader, prints the figures
    python -m device_bench.fuzz_readers --cases 200 --json  # a quick look

For each reader a valid file is written by edgelora itself, then mutated CASES times (1 to 4 edits, each a
flipped bit, a random byte, a deleted or inserted byte, or a truncation) and read back. Every outcome is
counted: refused with a documented error (ValueError, TypeError, FileNotFoundError, naming the file) or
with a warning saying what was discarded (a damaged cache is rebuilt, never used), read back unchanged (the edit fell where it changes nothing, e.g. JSON whitespace), read back *changed* (a flip
that went unnoticed: 0 expected for checksummed files) or an uncaught exception (0 expected).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .crash_setup import make_bundle, make_data

CASES = 10_000
DOCUMENTED = (ValueError, TypeError, FileNotFoundError)


def mutate(blob: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(blob)
    for _ in range(int(rng.integers(1, 5))):
        if not b:
            break
        i, op = int(rng.integers(0, len(b))), int(rng.integers(0, 10))
        if op < 6:
            b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 6:
            b[i] = int(rng.integers(0, 256))
        elif op == 7:
            del b[i]
        elif op == 8:
            b.insert(i, int(rng.integers(0, 256)))
        else:
            del b[i:]
    return bytes(b)


def setup(root: Path) -> dict:
    """{reader name: (file to mutate, read() -> a comparable value)}, every file written by edgelora."""
    from edgelora import Backbone, TrainConfig, finetune, load_adapter
    from edgelora.files.bundle import MANIFEST_FILE, load_manifest
    from edgelora.files.checkpoint import load_checkpoint
    from edgelora.files.data import load_arrays
    from edgelora.files.onnx_refs import external_locations
    from edgelora.files.readers import parse_safetensors
    from edgelora.graphs.kit import KitRecipe, build_kit, load_kit
    from edgelora.ops.personalize import SESSION_TRAINING, PersonalizeConfig, personalize
    from edgelora.ops.samples import Samples
    from edgelora.ops.store import AdapterStore
    from edgelora.runtime.cache import SkipCache
    from dataclasses import replace
    bundle = root / "bundle"
    make_bundle(bundle)
    x, y = make_data(root / "d.npz")
    bb = Backbone(bundle)
    m = bb.manifest
    x, y = x[:200], y[:200]
    adapter, _ = finetune(bb, x, y, TrainConfig(epochs=2, cv_folds=0, form="skip", tap_scaling="none"),
                          checkpoint_dir=root / "ckpt")
    adapter.save(root / "adapter")
    build_kit(m, KitRecipe(r=2)).save(root / "kit")
    store = AdapterStore(root / "store")
    cfg = PersonalizeConfig(train=replace(SESSION_TRAINING, epochs=3))
    for s in (1, 2):
        personalize(store, "u", bb, x[s * 60:(s + 1) * 60], y[s * 60:(s + 1) * 60], cfg)
    store.pin("u", store.current("u"))
    SkipCache(bb, root / "cache").rows(x[:50])
    np.save(root / "x.npy", x[:50])
    np.savetxt(root / "d.csv", np.c_[x[:50], y[:50]], delimiter=",", fmt="%.5f")
    cache_meta = next((root / "cache").glob("*/meta.json"))

    def cache_rows():
        return len(SkipCache(bb, root / "cache"))
    ckpt = next(p for p in (root / "ckpt").iterdir() if p.suffix == ".json")
    return {
        "bundle manifest": (bundle / MANIFEST_FILE, lambda: load_manifest(bundle)),
        "onnx external-data scan": (bundle / m.model_file, lambda: external_locations((bundle / m.model_file).read_bytes())),
        "adapter config": (root / "adapter" / "adapter_config.json", lambda: load_adapter(root / "adapter").flat.tobytes()),
        "adapter weights": (root / "adapter" / "adapter_model.safetensors", lambda: load_adapter(root / "adapter").flat.tobytes()),
        "safetensors header": (root / "adapter" / "adapter_model.safetensors",
                               lambda: sorted(parse_safetensors((root / "adapter" / "adapter_model.safetensors").read_bytes(), "f")[0])),
        "checkpoint meta": (ckpt, lambda: _plain(load_checkpoint(root / "ckpt"))),
        "kit contract": (root / "kit" / "kit.json", lambda: load_kit(root / "kit").contract),
        "store current.json": (store.pointer_path("u"), lambda: store.current("u")),
        "store pins.json": (store.adapter_dir("u", "pins.json"), lambda: store.pins("u")),
        "version.json": (store.version_dir("u", 1) / "version.json", lambda: store.info("u", 1)),
        "sessions.json": (store.adapter_dir("u", "data", "sessions.json"),
                          lambda: Samples.load(store.adapter_dir("u", "data"), m).sessions),
        "cache meta.json": (cache_meta, cache_rows),
        ".npz data": (root / "d.npz", lambda: _plain(load_arrays(root / "d.npz"))),
        ".npy data": (root / "x.npy", lambda: _plain(load_arrays(root / "x.npy", y_key=None))),
        ".csv data": (root / "d.csv", lambda: _plain(load_arrays(root / "d.csv", label_column="-1"))),
    }


def _plain(value):
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def fuzz(name: str, path: Path, read, cases: int, rng: np.random.Generator) -> dict:
    good = path.read_bytes()
    expected = read()
    counts = {"refused": 0, "unchanged": 0, "changed": 0, "uncaught": 0}
    examples = []
    folder = path.parent
    saved = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for _ in range(cases):
        path.write_bytes(mutate(good, rng))
        try:
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                value = read()
            if warned:
                raise ValueError(warned[0].message)
        except DOCUMENTED:
            counts["refused"] += 1
            continue
        except Exception as e:  # noqa: BLE001 - the thing being counted
            counts["uncaught"] += 1
            if len(examples) < 5:
                examples.append(f"{type(e).__name__}: {str(e)[:200]}")
            continue
        finally:
            _restore(folder, saved)
        counts["unchanged" if value == expected else "changed"] += 1
    path.write_bytes(good)
    return {**counts, "uncaught_examples": examples}


def _restore(folder: Path, saved: dict[str, bytes]) -> None:
    """Put the folder back as it was (a reader may have rebuilt or repaired it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.is_file() and p.name not in saved:
            p.unlink()
    for name, data in saved.items():
        if not (folder / name).is_file() or (folder / name).read_bytes() != data:
            (folder / name).write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_bench.fuzz_readers", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=CASES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="run only the readers whose name contains this")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgelora-fuzz-") as tmp:
        targets = setup(Path(tmp))
        for name, (path, read) in targets.items():
            if args.only and args.only not in name:
                continue
            start = time.perf_counter()
            results[name] = {**fuzz(name, path, read, args.cases, rng), "seconds": round(time.perf_counter() - start, 1)}
            print(f"{name}: {results[name]}", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'reader':<26} {'cases':>6} {'refused':>8} {'unchanged':>9} {'changed':>8} {'uncaught':>8}")
        for name, r in results.items():
            print(f"{name:<26} {args.cases:>6} {r['refused']:>8} {r['unchanged']:>9} {r['changed']:>8} {r['uncaught']:>8}")
    return 0 if all(r["uncaught"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
