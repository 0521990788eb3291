"""What `pip install` puts into site-packages: edgelora and edgelora_export (the export/ folder), nothing else."""
import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_list_names_every_package_folder():
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools]\n", 1)[1].split("\n[", 1)[0]
    packages = ast.literal_eval(re.search(r"^packages = (\[.*?\])", section, re.S | re.M)[1])  # tomllib is 3.11+
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edgelora").rglob("__init__.py")}
    assert sorted(packages) == sorted(folders | {"edgelora_export"})
    assert re.search(r'^package-dir = \{ *edgelora_export = "export" *\}$', section, re.M), section


def test_the_wheel_holds_no_top_level_export(tmp_path):
    pytest.importorskip("setuptools", minversion="68")
    src = tmp_path / "src"                      # a copy: building in place would leave build/ in the clone
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("edgelora", "export"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                          "--wheel-dir", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("edgelora-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"edgelora",
                                                                                            "edgelora_export"}
    assert "edgelora_export/torch_export.py" in names and "edgelora/data/demo_bundle/backbone.onnx" in names
