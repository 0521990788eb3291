"""The README and docs, run: every `$ ...` command and every Python example of README.md and of the docs
that continue its walkthrough (WALKTHROUGH, in that order), in a fresh folder, must give the output they
show; the other docs hold no such step. Not run: `./run demo|test` (they build virtual environments; CI
runs `./run test` itself).

How shown output is compared: line by line; a line `...` stands for any number of lines and `...` inside a
line for any text. Timings (a number followed by `s`, JSON `seconds`) are ignored. Before the first training
step numbers must agree to one unit of the last digit shown; after it (training results vary a little with
the CPU and BLAS) counts within 3 (or 5 %), percentages within 2 points, fractions within 0.02, other values
within 10 %. A successful `edgelora finetune` is checked by its exit code and the adapter it writes, not by
its text (its report is the recipe selection's, which changes as that does).
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edgelora.cli import main
from tests.helpers import js_client

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# README's quick start, then the docs that continue it on its files, in the order a reader follows them
WALKTHROUGH = [README] + [ROOT / "docs" / name for name in ("export.md", "deploy.md", "js-client.md", "personalize.md")]
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?")
TRAINING = ("edgelora finetune", "edgelora personalize", "finetune(")   # (the demo's saved files are exact)


def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(the prose just before, the block's lines without their indent) for every indented code block."""
    out, prose, block = [], [], None
    for line in text.splitlines() + [""]:
        if line.startswith("    ") and (block is not None or not prose or not prose[-1].strip()):
            block = [] if block is None else block
            block.append(line[4:])
        elif block is not None and not line.strip():
            block.append("")
        else:
            if block is not None:
                while block and not block[-1]:
                    block.pop()
                out.append(("\n".join(prose), block))
                block, prose = None, []
            prose.append(line)
    return out


def steps(text: str) -> list[tuple[str, str, list[str]]]:
    """The README as ("shell", command, shown output) and ("python", code, shown output) steps, in order."""
    out, blocks = [], code_blocks(text)
    for i, (_, block) in enumerate(blocks):
        if block and block[0].startswith("$ "):
            for line in block:
                if line.startswith("$ "):
                    out.append(("shell", line[2:], []))
                elif line.strip():
                    out[-1][2].append(line)
        elif block and block[0].startswith(("import ", "from ")):
            shown = blocks[i + 1][1] if i + 1 < len(blocks) and "prints" in blocks[i + 1][0] else []
            out.append(("python", "\n".join(block), shown))
    return out


def _numbers_agree(e: str, a: str, after: str, loose: bool) -> bool:
    x, y = float(e.replace(",", "")), float(a.replace(",", ""))
    if abs(x) < 1e-4 and abs(y) < 1e-4:          # e.g. a max difference: both negligible
        return True
    if not loose:
        if "." not in e or "e" in e:
            return x == y
        digits = len(e.split(".")[1])               # one unit of the last digit shown, or 1e-6 relative
        return abs(x - y) <= max(1.0001 * 10**-digits, 1e-6 * abs(x))
    if after.lstrip().startswith("%"):
        return abs(x - y) <= 2
    if "." not in e and "e" not in e:
        return abs(x - y) <= max(3, 0.05 * abs(x))
    return abs(x - y) <= (0.02 if abs(x) <= 1 else 0.1 * abs(x))


def line_agrees(shown: str, got: str, loose: bool) -> bool:
    """`got` has the text of `shown` ("..." = anything) and numbers that agree (timings ignored)."""
    parts, pattern = NUMBER.split(shown), ""
    numbers = NUMBER.findall(shown)
    for k, text in enumerate(parts):
        pattern += ".*".join(re.escape(t) for t in text.split("...")) + (f"({NUMBER.pattern})" if k < len(numbers) else "")
    m = re.fullmatch(pattern, got.rstrip())
    if m is None:
        return False
    for k, (e, a) in enumerate(zip(numbers, m.groups())):
        after, before = parts[k + 1], parts[k]
        if re.match(r"\s*s\b", after) or before.rstrip().endswith('"seconds":'):
            continue                                  # a timing
        if not _numbers_agree(e, a, after, loose):
            return False
    return True


def output_agrees(shown: list[str], got: list[str], loose: bool) -> bool:
    if not shown:
        return not got
    if shown[0].strip() == "...":
        return len(shown) == 1 or any(output_agrees(shown[1:], got[i:], loose) for i in range(len(got) + 1))
    return bool(got) and line_agrees(shown[0], got[0], loose) and output_agrees(shown[1:], got[1:], loose)


def run_shell(command: str) -> tuple[int, list[str]]:
    argv = shlex.split(command)
    if argv[0] in ("python", "node"):                # the README's scripts and JS client, run from the clone
        exe = sys.executable if argv[0] == "python" else js_client()
        p = subprocess.run([exe, str(ROOT / argv[1]), *argv[2:]], capture_output=True, text=True)
        return p.returncode, (p.stdout + p.stderr).splitlines()
    assert argv[0] == "edgelora", command
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv[1:])
    return code, (out.getvalue() + err.getvalue()).splitlines()


def run_python(code: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    return out.getvalue().splitlines()


def walk(selected) -> list[str]:
    """Run the selected README steps in order in the current folder; returns what disagreed."""
    problems, loose = [], False
    for kind, what, shown in selected:
        if kind == "shell":
            code, got = run_shell(what)
            want = 2 if any(": error:" in line for line in shown) else 0
            if code != want:
                problems.append(f"$ {what}\n  exit code {code}, expected {want}:\n  " + "\n  ".join(got[-5:]))
            elif what.startswith("edgelora finetune") and code == 0:
                out = Path(shlex.split(what)[shlex.split(what).index("--out") + 1])
                if not (out / "adapter_config.json").is_file():
                    problems.append(f"$ {what}\n  wrote no adapter in {out}")
            elif not output_agrees(shown, got, loose):
                problems.append(f"$ {what}\n  shown:\n    " + "\n    ".join(shown) + "\n  got:\n    " + "\n    ".join(got))
        else:
            got = run_python(what)
            if not output_agrees(shown, got, loose):
                problems.append(f"python:\n{what}\n  shown:\n    " + "\n    ".join(shown) + "\n  got:\n    " + "\n    ".join(got))
        loose = loose or any(t in what for t in TRAINING)
    return problems


def walkthrough_text() -> str:
    return "\n\n".join(path.read_text() for path in WALKTHROUGH)


def is_export(step) -> bool:
    return step[0] == "python" and "export_model" in step[1]


def test_readme_commands_and_python_examples_give_the_shown_results(tmp_path, monkeypatch):
    pytest.importorskip("sklearn", reason="the README starts from `edgelora demo`, which reads scikit-learn's digits "
                                          "(from the clone: pip install -e '.[demo]', or ./run test)")
    selected = [s for s in steps(walkthrough_text()) if not is_export(s)]
    kinds = [s[1].split()[1] if s[0] == "shell" and s[1].startswith("edgelora") else s[0] for s in selected]
    for needed in ("demo", "eval", "finetune", "predict", "cache", "merge", "personalize", "store", "python"):
        assert needed in kinds, f"the walkthrough found no `{needed}` step in README.md and docs: {kinds}"
    monkeypatch.chdir(tmp_path)
    problems = walk(selected)
    assert not problems, "README.md/docs disagree with what their commands print:\n\n" + "\n\n".join(problems)


def test_every_runnable_doc_is_in_the_walkthrough():
    """A doc outside WALKTHROUGH shows commands as plain text, so no `$ ...` or Python step goes unrun."""
    others = [p for p in sorted((ROOT / "docs").glob("*.md")) if p not in WALKTHROUGH]
    unrun = {p.name: [s[1][:60] for s in steps(p.read_text())] for p in others}
    assert not {k: v for k, v in unrun.items() if v}, f"steps no test runs (add the doc to WALKTHROUGH): {unrun}"


@pytest.mark.torch
def test_readme_export_example_gives_the_shown_result(tmp_path, monkeypatch):
    selected = [s for s in steps(walkthrough_text()) if is_export(s)]
    assert len(selected) == 1 and selected[0][2], selected
    monkeypatch.chdir(tmp_path)
    problems = walk(selected)
    assert not problems, "\n\n".join(problems)
    assert (tmp_path / "fan_bundle" / "edgelora_bundle.json").is_file()


@pytest.mark.parametrize("shown, got, loose, agrees", [
    ("  accuracy    49.12 %", "  accuracy    49.12 %", False, True),
    ("  accuracy    49.12 %", "  accuracy    49.14 %", False, False),
    ("  accuracy    88.2 %", "  accuracy    86.5 %", True, True),
    ("  accuracy    88.2 %", "  accuracy    85.0 %", True, False),
    ('{"accuracy": 0.8866, "seconds": 0.049}', '{"accuracy": 0.8716, "seconds": 3.5}', True, True),
    ('{"accuracy": 0.8866, "seconds": 0.049}', '{"accuracy": 0.8466, "seconds": 0.049}', True, False),
    ("time cache fill 0.103 s, total 2.60 s", "time cache fill 9.1 s, total 12.00 s", False, True),
    ("wrote x (397,) for 397 samples", "wrote x (396,) for 397 samples", False, False),
    ("scanner-7: PUBLISHED - published (...)", "scanner-7: PUBLISHED - published (anything here)", False, True),
    ("scanner-7: PUBLISHED - published", "scanner-7: REJECTED - rejected", True, False),
])
def test_line_comparison(shown, got, loose, agrees):
    assert line_agrees(shown, got, loose) is agrees


def test_elided_lines():
    assert output_agrees(["a 1", "...", "c 3"], ["a 1", "b", "b", "c 3"], False)
    assert output_agrees(["a 1", "..."], ["a 1"], False)
    assert not output_agrees(["a 1", "...", "c 3"], ["a 1", "b"], False)
    assert not output_agrees(["a 1"], ["a 1", "extra"], False)


def test_demo_deliveries_refuses_to_replace_a_file_it_did_not_write(tmp_path, capsys):
    import runpy

    import numpy as np
    deliveries = runpy.run_path(str(ROOT / "examples" / "demo_deliveries.py"))
    np.savez(tmp_path / "finetune.npz", x=np.zeros((12, 4), np.float32), y=np.arange(12) % 3)
    (tmp_path / "day2.npz").write_text("my notes")
    assert deliveries["main"]([str(tmp_path)]) == 2
    assert "would replace" in capsys.readouterr().err and (tmp_path / "day2.npz").read_text() == "my notes"
    (tmp_path / "day2.npz").unlink()
    assert deliveries["main"]([str(tmp_path)]) == 0
    days = [np.load(tmp_path / f"day{d}.npz")["y"] for d in (1, 2, 3)]
    assert sum(len(y) for y in days) == 12
    assert (np.load(tmp_path / "day2_bad.npz")["y"] != days[1]).all()      # every label wrong
