"""Personalisation over time on real data (har protocol): 9 users, 4 daily chunks, one wrong-label delivery.

    python -m device_bench.personalize_har [--out bench_out/personalize_har] [--bad scramble|shuffle|none]

Each test user's fine-tune half (time order) arrives in DAYS chunks; each day `edgelora.ops.personalize`
adds the chunk to that user's adapter in one store and publishes a new version if the gate passes.
Before day BAD_BEFORE_DAY a bad delivery arrives: that day's inputs with wrong labels (scramble: each
label replaced by a random other activity; shuffle: the day's labels permuted). The genuine chunk
follows, the same inputs with the right labels. After every delivery the version serving the user is
evaluated on the user's test half (second half in time), next to the shared model (no adapter).
Prints the tables and writes DIR/results.json and DIR/results.md.
"""
from __future__ import annotations

import os

from .profile import THREADS_ENV

os.environ.update(THREADS_ENV)  # one thread everywhere, before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edgelora import Backbone, Predictor, TrainConfig  # noqa: E402
from edgelora.ops.personalize import PersonalizeConfig, personalize  # noqa: E402
from edgelora.ops.store import STORE_KIND, AdapterStore  # noqa: E402
from edgelora.files.outputs import remove_own  # noqa: E402

from . import protocols  # noqa: E402
from .backbones import REPO, reference_bundle  # noqa: E402

DAYS = 4
BAD_BEFORE_DAY = 3                      # the wrong-label delivery arrives just before this day's chunk
BAD = "scramble"
OUT = REPO / "bench_out" / "personalize_har"
BUNDLES = REPO / "bench_out" / "bundles"  # shared with `python -m device_bench run`
THREADS = 1
SEED = 0


def wrong_labels(y: np.ndarray, kind: str, rng: np.random.Generator, classes: int) -> np.ndarray:
    if kind == "scramble":
        return (y + rng.integers(1, classes, len(y))) % classes
    return rng.permutation(y)


def run(out: Path = OUT, bad: str = BAD, bundle: Path | None = None, users: list[int] | None = None,
        config: PersonalizeConfig = PersonalizeConfig(), log=print) -> dict:
    start = time.perf_counter()
    data = protocols.har()
    bundle = Path(bundle) if bundle is not None else reference_bundle("har", data, BUNDLES)
    backbone = Backbone(bundle, threads=THREADS)
    out = Path(out)
    remove_own(out / "store", STORE_KIND)  # never a user's own `store` folder
    store = AdapterStore(out / "store")
    rng = np.random.default_rng(SEED)
    shared = Predictor(backbone)
    records = []
    for user in users or list(data["users"]):
        x, y = data["users"][user]["finetune"]
        xt, yt = data["users"][user]["test"]
        name = f"user-{user:02d}"
        base = shared.evaluate(xt, yt)["accuracy"]
        deliveries = []
        for day, idx in enumerate(np.array_split(np.arange(len(y)), DAYS), start=1):
            if day == BAD_BEFORE_DAY and bad != "none":
                yb = wrong_labels(y[idx], bad, rng, backbone.num_outputs)
                deliveries.append(("bad", x[idx], yb, float((yb != y[idx]).mean())))
            deliveries.append((f"day {day}", x[idx], y[idx], 0.0))
        for step, xs, ys, wrong in deliveries:
            r = personalize(store, name, backbone, xs, ys, config)
            serving = store.load(name) if r.current is not None else None
            cand = None if r.version is None else \
                Predictor(backbone, store.load(name, r.version)).evaluate(xt, yt)["accuracy"]
            records.append({"user": user, "step": step, "decision": r.decision, "reason": r.reason,
                            "wrong_labels": wrong, "version": r.version, "current": r.current,
                            "test_accuracy": Predictor(backbone, serving).evaluate(xt, yt)["accuracy"],
                            "candidate_test_accuracy": cand, "shared_test_accuracy": base,
                            "samples": r.samples, "gate": r.metrics.get("candidate", {}).get("gate"),
                            "gate_reference": r.metrics.get("reference", {}).get("gate"),
                            "implausible_labels": r.metrics.get("implausible_labels"),
                            "seconds": r.seconds.get("total")})
        log(f"  user {user}: " + ", ".join(f"{rec['step']} {rec['decision']}" for rec in records if rec["user"] == user))
    result = {"protocol": "har", "bundle": str(bundle), "days": DAYS, "bad": bad, "bad_before_day": BAD_BEFORE_DAY,
              "threads": THREADS, "config": json.loads(json.dumps(config, default=lambda o: o.__dict__)),
              "records": records, "seconds": time.perf_counter() - start}
    result["summary"] = summarise(records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=float))
    (out / "results.md").write_text(markdown(result))
    return result


def summarise(records: list[dict]) -> dict:
    steps = list(dict.fromkeys(r["step"] for r in records))
    users = sorted({r["user"] for r in records})
    mean = {s: float(np.mean([r["test_accuracy"] for r in records if r["step"] == s])) for s in steps}
    bad = [r for r in records if r["step"] == "bad"]
    return {"steps": steps, "users": users, "mean_test_accuracy": mean,
            "shared_mean": float(np.mean([r["shared_test_accuracy"] for r in records if r["step"] == steps[0]])),
            "bad_rejected": sum(r["decision"] == "rejected" for r in bad), "bad_deliveries": len(bad),
            "decisions": {d: sum(r["decision"] == d for r in records)
                          for d in ("published", "rejected", "deferred", "unchanged")},
            "mean_seconds_per_session": float(np.mean([r["seconds"] for r in records]))}


def markdown(result: dict) -> str:
    recs, s = result["records"], result["summary"]
    letter = {"published": "P", "rejected": "R", "deferred": "D", "unchanged": "U"}
    head = "| user | shared | " + " | ".join(s["steps"]) + " | last - shared |"
    lines = [f"Test accuracy of the version serving each user after each delivery (har, {result['days']} days; "
             f"P published, R rejected, D deferred, U unchanged; `bad` = day {result['bad_before_day']}'s inputs with "
             f"{result['bad']}d labels)", "", head, "|" + "---|" * (len(s["steps"]) + 3)]
    for u in s["users"]:
        mine = {r["step"]: r for r in recs if r["user"] == u}
        base = mine[s["steps"][0]]["shared_test_accuracy"]
        cells = [f"{100 * mine[st]['test_accuracy']:.1f} {letter[mine[st]['decision']]}" for st in s["steps"]]
        lines.append(f"| {u} | {100 * base:.1f} | " + " | ".join(cells) +
                     f" | {100 * (mine[s['steps'][-1]]['test_accuracy'] - base):+.1f} |")
    lines.append(f"| mean | {100 * s['shared_mean']:.1f} | " +
                 " | ".join(f"{100 * s['mean_test_accuracy'][st]:.1f}" for st in s["steps"]) +
                 f" | {100 * (s['mean_test_accuracy'][s['steps'][-1]] - s['shared_mean']):+.1f} |")
    bad = [r for r in recs if r["step"] == "bad"]
    if bad:
        margin = result["config"]["margin"]
        lines += ["", f"Bad delivery: {s['bad_rejected']} of {s['bad_deliveries']} rejected. Holdout gate = candidate "
                      f"vs serving version on the verified holdout (rejects if worse by > {100 * margin:g} points); "
                      f"label check = share of the delivery's labels the serving version gives p < 1e-3 "
                      f"(rejects above 50 %)", "",
                  "| user | wrong labels | decision | holdout gate: cand / serving | label check | "
                  "test acc serving | test acc of the candidate, had it been published |",
                  "|---|---|---|---|---|---|---|"]
        for r in bad:
            cand = "-" if r["candidate_test_accuracy"] is None else f"{100 * r['candidate_test_accuracy']:.1f}"
            g, ref = r["gate"], r["gate_reference"]
            gate = "-" if not g else f"{100 * g['accuracy']:.1f} / {100 * ref['accuracy']:.1f} " + \
                ("(reject)" if ref["accuracy"] - g["accuracy"] > margin + 1e-12 else "(pass)")
            labels = "-" if r["implausible_labels"] is None else \
                f"{100 * r['implausible_labels']:.0f} % " + ("(reject)" if r["implausible_labels"] > 0.5 else "(pass)")
            lines.append(f"| {r['user']} | {100 * r['wrong_labels']:.0f} % | {r['decision']} | {gate} | {labels} | "
                         f"{100 * r['test_accuracy']:.1f} | {cand} |")
    lines += ["", f"Decisions: {s['decisions']}; mean time per session {s['mean_seconds_per_session']:.2f} s "
                  f"({result['threads']} thread); whole run {result['seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(REPO)})")
    ap.add_argument("--bad", choices=("scramble", "shuffle", "none"), default=BAD, help=f"default {BAD}")
    ap.add_argument("--bundle", type=Path, default=None, help="har bundle (default: the reference MLP)")
    ap.add_argument("--users", default=None, help="comma-separated subset of the 9 test users")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default edgelora's)")
    ap.add_argument("--recipe", choices=("chosen", "fixed"), default="chosen",
                    help="chosen: the recipe chosen on the device (default); fixed: the session defaults")
    args = ap.parse_args(argv)
    cfg = PersonalizeConfig(recipe=args.recipe)
    if args.epochs:
        cfg = replace(cfg, train=replace(TrainConfig(), epochs=args.epochs))
    users = [int(u) for u in args.users.split(",")] if args.users else None
    result = run(args.out, args.bad, args.bundle, users, cfg)
    print(markdown(result))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return result


if __name__ == "__main__":
    main()
