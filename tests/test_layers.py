"""The package's layers (edgelora/__init__.py): imports point one way, with no cycle, and each layer needs
only its own third-party packages. Checked on the source (every import statement, module level or not)
and by importing each layer in a fresh interpreter where the packages it must not need cannot be imported.
The torch side, export/ (installed as edgelora_export), counts as a layer between ops and the CLI: it builds
on files and graphs, and `edgelora export` reaches it for torch models."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgelora"
LAYERS = ["core", "files", "graphs", "runtime", "ops", "cli", "fleet"]
RANK = {"core": 0, "files": 1, "graphs": 2, "runtime": 3, "ops": 4, "export": 4.5, "cli": 5, "fleet": 5}
# third-party packages a layer may not import (nor may anything below it)
FORBIDDEN = {"core": ["onnx", "onnxruntime", "safetensors", "torch", "flwr"],
             "files": ["onnx", "onnxruntime", "torch", "flwr"],
             "graphs": ["torch", "flwr"],
             "runtime": ["torch", "flwr"], "ops": ["torch", "flwr"]}


def modules() -> dict[str, Path]:
    """Module name -> source file, for edgelora and for export/ under its installed name edgelora_export."""
    found = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    return found | {("edgelora_export." + p.stem).removesuffix(".__init__"): p for p in (ROOT / "export").glob("*.py")}


def imports(name: str, path: Path) -> set[str]:
    """Absolute names of the edgelora modules `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in ("edgelora", "edgelora_export")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] in ("edgelora", "edgelora_export"):
                known = modules()
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return found


def layer(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "edgelora_export":
        return "export"
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_every_module_is_in_a_layer():
    strays = [n for n in modules() if n != "edgelora" and layer(n) is None]
    assert strays == [], f"modules outside the layer folders {LAYERS}: {strays}"


def test_no_import_reaches_a_higher_layer():
    upward = [f"{n} -> {m}" for n, p in modules().items() if layer(n)
              for m in imports(n, p) if layer(m) and RANK[layer(m)] > RANK[layer(n)]]
    assert upward == []


def test_no_import_cycle():
    graph = {n: {m for m in imports(n, p) if m in graph_keys} for graph_keys in [set(modules())]
             for n, p in modules().items()}
    graph = {n: deps - {n, "edgelora", "edgelora_export"} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(m):] + [n, m]) if m in path
                            else f"import cycle through {n} -> {m}")
            if m not in state:
                visit(m, path + [n])
        state[n] = 2
    for n in sorted(graph):
        if n not in state:
            visit(n, [])


@pytest.mark.parametrize("name", list(FORBIDDEN))
def test_layer_imports_without_the_packages_it_must_not_need(name):
    blocked = FORBIDDEN[name]
    targets = sorted(n for n in modules() if layer(n) and RANK[layer(n)] <= RANK[name])
    code = (f"import sys\nfor b in {blocked!r}: sys.modules[b] = None\n"
            f"import importlib\nfor t in {targets!r}: importlib.import_module(t)\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
