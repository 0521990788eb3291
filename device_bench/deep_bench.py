"""The deep tier on an input-level shift: edgelora (auto, skip only, deep forced) against PyTorch FT-All and
PEFT LoRA as users run them, per seed, with the tier chosen, time and peak RSS; then the deep tier's cost
against the number of samples (a fitted line).

Protocol imu-mount (built from ../shared/datasets/hapt_raw only): a 1-D CNN with batch-norm pre-trained on
the 21 source users' raw 128x6 IMU windows (6 activities); the 9 test users' phone is mounted otherwise: both
triplets (acc, gyro) rotated 90 degrees about z, gain 1.15 and an offset. Each user's windows in time order:
first half = the labelled pool (k per class drawn per seed), second half = test.

    python -m device_bench.deep_bench [--seeds 5] [--per-class 5 20] [--out /tmp/deep_bench]

edgelora runs in its own process with only the device's samples (no torch imported, no lab data: its peak
RSS is the device's); torch and PEFT run in this one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .profile import THREADS_ENV, device_env, peak_rss_mb
from .protocols import _load

SHIFT = {"rotation_deg": 90.0, "gain": 1.15, "acc_offset": (0.1, -0.1, 0.05), "gyro_offset": (0.05, -0.05, 0.02)}
TORCH = {"lr": 1e-3, "batch_size": 20, "epochs": 50}          # as users write it (issue: PyTorch = all samples)
PEFT_R = 8
SCALING_N = (30, 60, 120, 240)                                 # samples for the cost-vs-N line


def data() -> dict:
    """Source (lab) windows, and the shifted pool/test of the test users; standardisation from the source."""
    d = _load("hapt_raw/hapt_raw_w128.npz")
    keep = d["y"] < 6
    x, y, subj = d["X"][keep].astype(np.float32), d["y"][keep].astype(np.int64), d["subject"][keep]
    order = np.lexsort((d["start_sample"][keep], d["experiment"][keep], subj))
    x, y, subj = x[order], y[order], subj[order]
    test_users = np.isin(subj, d["uci_har_test_subjects"])
    a = np.deg2rad(SHIFT["rotation_deg"])
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], np.float32)
    xs = x.copy()
    xs[..., :3] = x[..., :3] @ rot.T * SHIFT["gain"] + np.asarray(SHIFT["acc_offset"], np.float32)
    xs[..., 3:] = x[..., 3:] @ rot.T * SHIFT["gain"] + np.asarray(SHIFT["gyro_offset"], np.float32)
    pool, test = [], []
    for u in np.unique(subj[test_users]):
        idx = np.flatnonzero(subj == u)
        pool.append(idx[:len(idx) // 2])
        test.append(idx[len(idx) // 2:])
    src = np.flatnonzero(~test_users)
    mean, std = x[src].mean(axis=(0, 1)), x[src].std(axis=(0, 1)) + 1e-6
    pool, test = np.concatenate(pool), np.concatenate(test)
    return {"source": (x[src], y[src]), "pool": (xs[pool], y[pool]), "test": (xs[test], y[test]),
            "mean": mean.astype(np.float32), "std": std.astype(np.float32)}


def draw(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k samples per class of the pool, in pool (time) order."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in np.unique(y)]))


def backbone(out: Path, d: dict):
    """The pre-trained CNN (torch module, standardised inputs) and its bundle, built once under `out`."""
    import torch
    from torch import nn
    from edgelora_export import export_model
    from edgelora_export.pretrain import pretrain

    class IMUNet(nn.Module):
        """(N, 128, 6) -> 3 x (Conv1d, BatchNorm1d, ReLU) with max-pooling -> channel means -> Linear."""
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv1d(6, 16, 5, padding=2), nn.BatchNorm1d(16)
            self.conv2, self.bn2 = nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32)
            self.conv3, self.bn3 = nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32)
            self.head = nn.Linear(32, 6)

        def forward(self, x):
            x = x.transpose(1, 2)
            x = torch.max_pool1d(torch.relu(self.bn1(self.conv1(x))), 2)
            x = torch.max_pool1d(torch.relu(self.bn2(self.conv2(x))), 2)
            return self.head(torch.relu(self.bn3(self.conv3(x))).mean(dim=2))
    torch.manual_seed(0)
    net = IMUNet()
    path = out / "imu_cnn.pt"
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
    else:
        xs, ys = d["source"]
        pretrain(net, (xs - d["mean"]) / d["std"], ys, threads=1, epochs=8)
        torch.save(net.state_dict(), path)
    net.eval()
    if not (out / "bundle" / "edgelora_bundle.json").is_file():
        export_model(net, torch.zeros(2, 128, 6), out / "bundle", classes=[str(i) for i in range(6)],
                     preprocess={"x": {"mean": d["mean"].tolist(), "std": d["std"].tolist()}})
    return net


def torch_method(net0, method: str, x, y, xt, yt, d: dict, seed: int) -> dict:
    """PyTorch FT-All or PEFT LoRA (r 8, every conv and linear) as users run them: model.train(), Adam."""
    import copy
    import torch
    torch.manual_seed(seed)
    net = copy.deepcopy(net0)
    if method == "peft_lora":
        from peft import LoraConfig, get_peft_model
        net = get_peft_model(net, LoraConfig(r=PEFT_R, lora_alpha=2 * PEFT_R,
                                             target_modules=["conv1", "conv2", "conv3", "head"]))
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=TORCH["lr"])
    xb = torch.from_numpy((x - d["mean"]) / d["std"])
    yb = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    net.train()
    for _ in range(TORCH["epochs"]):
        perm = torch.randperm(len(xb), generator=gen)
        for i in range(0, len(xb), TORCH["batch_size"]):
            b = perm[i:i + TORCH["batch_size"]]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb[b]), yb[b]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy((xt - d["mean"]) / d["std"])).argmax(1).numpy()
    return {"accuracy": float((pred == yt).mean()), "seconds": seconds}


def edgelora_worker(bundle: str, jobs: list[dict], pool: tuple, test: tuple) -> list[dict]:
    """edgelora's methods (no torch in this process): auto, skip, deep (cross-validated epochs), deep_fit (the
    deep tier's budget without cross-validation: the cost of one training); one fine-tune each."""
    from edgelora import Backbone
    from edgelora.runtime.predict import Predictor
    from edgelora.runtime.train import finetune
    from edgelora.runtime.train_config import TrainConfig
    bb, out = Backbone(bundle), []
    for job in jobs:
        idx = np.asarray(job["idx"])
        start = time.perf_counter()
        settings = {"form": "deep", "cv_folds": 0} if job["form"] == "deep_fit" else {"form": job["form"]}
        adapter, h = finetune(bb, pool[0][idx], pool[1][idx], TrainConfig(seed=job["seed"], **settings))
        seconds = time.perf_counter() - start
        acc = float((Predictor(bb, adapter).predict(test[0]) == test[1]).mean()) if job.get("test", True) else None
        deep = h.selection.get("deep", {})
        out.append({**{k: v for k, v in job.items() if k != "idx"}, "n": len(idx), "accuracy": acc,
                    "seconds": seconds, "train_seconds": h.train_seconds, "tier": h.chosen.get("tier", "skip"),
                    "deep": {k: v for k, v in deep.items() if k not in ("skip_chosen", "rule")}})
    return out + [{"peak_rss_mb": peak_rss_mb()}]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--per-class", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--out", type=Path, default=Path("/tmp/deep_bench"))
    ap.add_argument("--forms", nargs="+", default=["auto", "skip", "deep", "deep_fit"],
                    help="edgelora's runs (auto skip deep deep_fit)")
    ap.add_argument("--no-torch", action="store_true", help="edgelora only (no PyTorch/PEFT, no cost-vs-N runs)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:  # the edgelora process: jobs and the device's samples in, results out (files)
        spec = json.loads(args.worker.read_text())
        with np.load(spec["data"], allow_pickle=False) as f:
            pool, test = (f["x_pool"], f["y_pool"]), (f["x_test"], f["y_test"])
        res = edgelora_worker(spec["bundle"], spec["jobs"], pool, test)
        args.worker.with_suffix(".out.json").write_text(json.dumps(res))
        return
    import torch
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    d = data()
    net = backbone(args.out, d)
    xp, yp = d["pool"]
    jobs, torch_rows = [], []
    for k in args.per_class:
        for seed in range(args.seeds):
            idx = draw(yp, k, seed)
            jobs += [{"k": k, "seed": seed, "form": f, "idx": idx.tolist()} for f in args.forms]
            for m in () if args.no_torch else ("ft_all", "peft_lora"):
                torch_rows.append({"k": k, "seed": seed, "method": m,
                                   **torch_method(net, m, xp[idx], yp[idx], *d["test"], d, seed)})
    for n in () if args.no_torch else SCALING_N:  # cost vs N: the deep tier forced, no test
        jobs.append({"k": n // 6, "seed": 0, "form": "deep", "scaling": True, "test": False,
                     "idx": draw(yp, n // 6, 100).tolist()})
    spec = args.out / "edgelora_jobs.json"
    np.savez(args.out / "device_data.npz", x_pool=xp, y_pool=yp, x_test=d["test"][0], y_test=d["test"][1])
    spec.write_text(json.dumps({"bundle": str(args.out / "bundle"), "jobs": jobs,
                                "data": str(args.out / "device_data.npz")}))
    subprocess.run([sys.executable, "-m", "device_bench.deep_bench", "--worker", str(spec)], check=True,
                   env=device_env())
    ours = json.loads(spec.with_suffix(".out.json").read_text())
    result = {"edgelora": ours[:-1], "edgelora_peak_rss_mb": ours[-1]["peak_rss_mb"], "torch": torch_rows,
              "torch_peak_rss_mb": peak_rss_mb(), "load": os.getloadavg(),
              "no_finetune": float((net(torch.from_numpy((d["test"][0] - d["mean"]) / d["std"])).argmax(1).numpy()
                                    == d["test"][1]).mean())}
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(summary(result))


def summary(r: dict) -> str:
    """The tables docs/deep.md quotes."""
    lines = [f"imu-mount: no fine-tune {100 * r['no_finetune']:.1f} %; load average {r['load'][0]:.2f}",
             f"peak RSS: edgelora process {r['edgelora_peak_rss_mb']:.0f} MB, torch+PEFT process "
             f"{r['torch_peak_rss_mb']:.0f} MB", "",
             "| per class | edgelora auto | tiers (seeds) | skip only | deep forced | deep, no CV | PyTorch FT-All | "
             "PEFT LoRA r 8 | time auto / deep no CV / FT-All / PEFT (s) |", "|---|---|---|---|---|---|---|---|---|"]
    rows = [e for e in r["edgelora"] if not e.get("scaling")]
    for k in sorted({e["k"] for e in rows}):
        def ms(vals):
            return f"{100 * np.mean(vals):.1f} +- {100 * np.std(vals):.1f}"
        ours = {f: [e for e in rows if e["k"] == k and e["form"] == f] for f in ("auto", "skip", "deep", "deep_fit")}
        th = {m: [t for t in r["torch"] if t["k"] == k and t["method"] == m] for m in ("ft_all", "peft_lora")}
        tiers = "".join("D" if e["tier"] == "deep" else "s" for e in ours["auto"])
        lines.append(f"| {k} | {ms([e['accuracy'] for e in ours['auto']])} | {tiers} | "
                     f"{ms([e['accuracy'] for e in ours['skip']])} | {ms([e['accuracy'] for e in ours['deep']])} | "
                     f"{ms([e['accuracy'] for e in ours['deep_fit']])} | "
                     f"{ms([t['accuracy'] for t in th['ft_all']])} | {ms([t['accuracy'] for t in th['peft_lora']])} | "
                     f"{np.mean([e['train_seconds'] for e in ours['auto']]):.2f} / "
                     f"{np.mean([e['train_seconds'] for e in ours['deep_fit']]):.2f} / "
                     f"{np.mean([t['seconds'] for t in th['ft_all']]):.2f} / "
                     f"{np.mean([t['seconds'] for t in th['peft_lora']]):.2f} |")
    sc = [e for e in r["edgelora"] if e.get("scaling")]
    if sc:
        n, s = np.array([e["n"] for e in sc], float), np.array([e["train_seconds"] for e in sc])
        b, a = np.polyfit(n, s, 1)
        lines += ["", "deep tier (forced, cross-validation + refit) seconds vs samples: " +
                  ", ".join(f"{int(x)}: {y:.2f}" for x, y in zip(n, s)) + f"; fit {a:.3f} + {1000 * b:.2f} ms x N"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
