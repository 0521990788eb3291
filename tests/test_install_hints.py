"""Every install hint can be followed: edgelora is not on PyPI, so no message, docstring or
README line may say `pip install 'edgelora[...]'`; hints install from the clone (`pip install -e '.[extra]'`)
and name an extra that pyproject.toml defines."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", ROOT / "run"] + sorted((ROOT / "docs").glob("*.md")) + sorted(p for d in ("edgelora", "export", "device_bench", "tests")
                                                     for p in (ROOT / d).rglob("*.py") if p != Path(__file__).resolve())
UNPUBLISHED = re.compile(r"""pip install +["']?edgelora\[""")
FROM_CLONE = re.compile(r"""pip install -e +["']?\.\[([\w,]+)\]""")


def test_no_hint_installs_edgelora_from_pypi():
    found = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES for i, line in enumerate(p.read_text().splitlines(), 1)
             if UNPUBLISHED.search(line)]
    assert not found, f"hints to install the unpublished package from PyPI: {found}"


def test_hints_from_the_clone_name_real_extras():
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^(\w+) *= *\[", section, re.M))           # (tomllib needs Python 3.11)
    assert {"demo", "export", "test"} <= extras, extras
    named = {(str(p.relative_to(ROOT)), e) for p in SOURCES for m in FROM_CLONE.finditer(p.read_text())
             for e in m.group(1).split(",")}
    assert {e for _, e in named} >= {"demo", "export"}, named        # the demo's and export's hints exist
    assert all(e in extras for _, e in named), sorted(x for x in named if x[1] not in extras)
