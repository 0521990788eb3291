"""The code map (docs/code-map.md) names every folder of the package and every module of its layers (cli/ and fleet/ list
theirs in their own docstrings), once, in the folder it lives in, and nothing else."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_map() -> str:
    text = (ROOT / "docs" / "code-map.md").read_text()
    found = re.search(r"^```\n(.*?)^```", text, re.S | re.M)
    assert found, "docs/code-map.md has no code block holding the tree"
    return found.group(1)


def test_code_map_matches_the_tree():
    listed, folder, folders = [], None, set()
    for line in code_map().splitlines():   # "  core/   ..." opens a folder of edgelora/, "    lora.py  ..." a module
        if m := re.match(r"^  ([a-z_]+)/", line):
            folder = m.group(1)
            folders.add(folder)
        elif m := re.match(r"^    ([a-z_0-9]+\.py)\b", line):
            listed.append(f"edgelora/{folder}/{m.group(1)}")
    assert folders == {p.name for p in (ROOT / "edgelora").iterdir() if p.is_dir() and p.name != "__pycache__"}
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "edgelora").glob("*/*.py")
                     if p.name not in ("__init__.py", "__main__.py") and p.parent.name not in ("cli", "fleet"))
    assert sorted(set(listed)) == modules, (sorted(set(listed) - set(modules)), sorted(set(modules) - set(listed)))
    assert len(listed) == len(set(listed)), "a module is listed twice"
