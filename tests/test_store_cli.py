"""`edgelora store` and `edgelora personalize` through main(argv): happy paths, exit codes, JSON."""
import json

import numpy as np
import pytest

from edgelora.cli import main

CENTRES = np.random.default_rng(0).standard_normal((3, 10)) * 3
FAST = ("--recipe", "fixed", "--epochs", "10", "--batch-size", "10")


def day(path, seed, n=60, wrong=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (CENTRES[y] + rng.standard_normal((n, 10))).astype(np.float32)
    np.savez(path, x=x, y=(y + 1) % 3 if wrong else y)
    return path


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, *argv):
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def store(tmp_path, toy_bundle, capsys):
    """A store with adapter u1: v1, v2 published, v3 rejected (wrong labels)."""
    st = tmp_path / "st"
    for i, wrong in ((1, False), (2, False), (3, True)):
        r = cli_json(capsys, "personalize", st, "u1", "--bundle", toy_bundle,
                     "--data", day(tmp_path / f"d{i}.npz", i, 120 if wrong else 60, wrong), *FAST)
        assert r["decision"] == ("rejected" if wrong else "published"), r["reason"]
    return st


def test_personalize_reports_decision_and_reason(store, tmp_path, toy_bundle, capsys):
    code, out, _ = cli(capsys, "personalize", store, "u1", "--bundle", toy_bundle, "--data", tmp_path / "d2.npz")
    assert code == 0 and "UNCHANGED" in out and "60 already known" in out
    code, out, _ = cli(capsys, "personalize", store, "u2", "--bundle", toy_bundle,
                       "--data", day(tmp_path / "d4.npz", 4), *FAST)
    assert code == 0 and "PUBLISHED" in out and "gate holdout" in out and "serving now: v1" in out


def test_store_list_show_rollback_pin_delete(store, capsys):
    listed = cli_json(capsys, "store", "list", store)["adapters"]
    assert [(a["name"], a["current"], a["versions"], a["latest_status"]) for a in listed] == \
        [("u1", 2, 3, "rejected")]
    shown = cli_json(capsys, "store", "show", store, "u1")
    assert [v["status"] for v in shown["versions"]] == ["accepted", "accepted", "rejected"]
    assert "worse by" in shown["versions"][2]["reason"]
    assert cli_json(capsys, "store", "rollback", store, "u1")["current"] == 1
    assert cli_json(capsys, "store", "rollback", store, "u1", "--to", "v2")["current"] == 2
    assert cli_json(capsys, "store", "pin", store, "u1")["pins"] == [2]
    code, _, err = cli(capsys, "store", "delete", store, "u1", "--version", "2")
    assert code == 2 and "current version" in err and len(err.strip().splitlines()) == 1
    assert cli_json(capsys, "store", "delete", store, "u1", "--version", "3")["removed"] == [3]
    code, out, _ = cli(capsys, "store", "show", store, "u1")
    assert code == 0 and "*v2" in out and "pinned: ['v2']" in out
    assert cli_json(capsys, "store", "delete", store, "u1", "--force")["removed"] == [1, 2]
    assert cli_json(capsys, "store", "list", store)["adapters"] == []


@pytest.mark.parametrize("argv, message", [
    (("store", "show", "{st}"), "needs an adapter NAME"),
    (("store", "show", "{st}", "../etc"), "not allowed"),
    (("store", "show", "{st}", "nobody"), "no adapter named"),
    (("store", "rollback", "{st}", "u1", "--to", "latest"), "version number"),
    (("store", "list", "{tmp}/missing"), "store not found"),
    (("personalize", "{st}", "u1", "--bundle", "{bundle}", "--data", "{tmp}/none.npz"), "not found"),
    (("personalize", "{st}", "u1", "--bundle", "{bundle}", "--data", "{tmp}/d1.npz", "--margin", "-1"), "--margin"),
])
def test_error_bad_input_exits_2_with_one_line(store, tmp_path, toy_bundle, capsys, argv, message):
    argv = [a.format(st=store, tmp=tmp_path, bundle=toy_bundle) for a in argv]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_error_epochs_without_the_fixed_recipe_is_refused(tmp_path, toy_bundle, capsys):
    code, _, err = cli(capsys, "personalize", tmp_path / "st", "u1", "--bundle", toy_bundle,
                       "--data", day(tmp_path / "d.npz", 1), "--epochs", "10")
    assert code == 2 and "--epochs 10: the number of epochs is part of the recipe" in err and "--recipe fixed" in err
    assert not (tmp_path / "st").exists()
