"""device_bench/shift_bench.py: its flags, where it writes, and the table it computes from the workers' reports."""
import json

import pytest

from device_bench import shift_bench


def report(accs_by_shots: dict, seconds: float, rss: float) -> dict:
    return {"peak_rss_mb": rss, "runs": [{"shots": k, "seed": s, "accuracy": a, "seconds": seconds}
                                         for k, accs in accs_by_shots.items() for s, a in enumerate(accs)]}


def test_summary_counts_harm_and_times_against_pytorch():
    reports = {"edgelora": report({5: [0.5, 0.7, 0.8]}, 0.1, 80.0), "torch-ft-all": report({5: [0.9, 0.9, 0.9]}, 2.0, 400.0)}
    row = shift_bench.summarise(reports, base=0.6, shots=[5])[5]
    assert row["edgelora"]["harm"] == 1 and row["torch-ft-all"]["harm"] == 0
    assert row["edgelora"]["ratio"] == pytest.approx(0.05) and row["edgelora"]["mean"] == pytest.approx(2 / 3)
    results = {"methods": ["edgelora", "torch-ft-all"], "backbones": {"cnn": {"rows": {5: row}, "clean_test_accuracy": 0.95}}}
    assert "| cnn | 5 | 95.0 | 60.0 | 66.7 ± 12.5 (1/3) | 90.0 ± 0.0 (0/3) | 0.05x | 80 / 400 |" in shift_bench.table("p", results)


def test_overrides_are_train_config_fields_and_get_their_own_folder():
    assert shift_bench.parse_overrides(["epochs=300", "form=skip", "epoch_fractions=[0.5,1]"]) == \
        {"epochs": 300, "form": "skip", "epoch_fractions": [0.5, 1]}
    assert shift_bench.default_out("har-mount", {}) == shift_bench.OUT / "har-mount"
    assert shift_bench.default_out("har-mount", {"form": "skip", "epochs": 300}).name == "set-epochs=300,form=skip"


def test_error_bad_flags_name_what_was_expected():
    with pytest.raises(ValueError, match=r"--set expects FIELD=VALUE with FIELD one of TrainConfig's .*found 'epoch=3'"):
        shift_bench.parse_overrides(["epoch=3"])
    with pytest.raises(ValueError, match="`epochs` should be a positive integer or 'auto', found 0"):
        shift_bench.parse_overrides(["epochs=0"])
    with pytest.raises(ValueError, match="--shots should be positive integers separated by commas, found '5,x'"):
        shift_bench.positive_ints("5,x", "--shots")


def test_render_rewrites_the_table_from_the_raw_reports(tmp_path):
    reports = {"edgelora": report({5: [0.5, 0.7]}, 0.1, 80.0), "torch-ft-all": report({5: [0.9, 0.8]}, 2.0, 400.0)}
    results = {"protocol": "p", "seeds": 2, "shots": [5], "overrides": {}, "load_average_1min": [1.0, 2.0],
               "seconds": 3.0, "date": "d", "methods": ["edgelora", "torch-ft-all"],
               "backbones": {"cnn": {"reports": reports, "base_accuracy": 0.6, "clean_test_accuracy": 0.9, "rows": {}}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    text = shift_bench.render(tmp_path / "results.json")
    assert (tmp_path / "results.md").read_text() == text and "1-min load 1.00-2.00" in text
    assert "| cnn | 5 | 90.0 | 60.0 | 60.0 ± 10.0 (1/2) | 85.0 ± 5.0 (0/2) | 0.05x | 80 / 400 |" in text


def test_time_is_the_whole_call_when_the_worker_reports_it():
    runs = [{"shots": 5, "seed": 0, "accuracy": 0.5, "seconds": 0.1, "call_seconds": 0.4}]
    reports = {"edgelora": {"peak_rss_mb": 1.0, "runs": runs}, "torch-ft-all": report({5: [0.9]}, 2.0, 400.0)}
    assert shift_bench.summarise(reports, base=0.6, shots=[5])[5]["edgelora"]["ratio"] == pytest.approx(0.2)


def test_cpu_time_ratio_is_a_column_when_every_run_reports_it():
    def cpu_report(accs, wall, cpu):
        rep = report({5: accs}, wall, 100.0)
        for r in rep["runs"]:
            r["cpu_seconds"] = cpu
        return rep
    reports = {"edgelora": cpu_report([0.7], 1.0, 0.5), "torch-ft-all": cpu_report([0.9], 2.0, 2.0)}
    row = shift_bench.summarise(reports, base=0.6, shots=[5])[5]
    results = {"methods": ["edgelora", "torch-ft-all"], "backbones": {"cnn": {"rows": {5: row}, "clean_test_accuracy": 0.9}}}
    text = shift_bench.table("p", results)
    assert "CPU time / PyTorch FT-All: edgelora default" in text and "| 0.50x | 0.25x | 100 / 100 |" in text
