"""The device runtime stays small enough to read (STYLE.md): no function over 50 lines, no module over 300."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgelora"
MAX_FUNCTION, MAX_MODULE = 50, 300   # lines, from `def` (decorators included) to the body's last line


def long_functions(source: str, limit: int = MAX_FUNCTION) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of every function or method in `source` longer than `limit` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if node.end_lineno - first + 1 > limit:
                found.append((node.name, first, node.end_lineno - first + 1))
    return found


def modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_the_tree_is_found():
    assert len(modules()) > 50 and ROOT.joinpath("core", "loop.py").is_file()


def test_no_function_over_50_lines():
    long = [f"{path.relative_to(ROOT.parent)}:{line} {name} ({n} lines)"
            for path in modules() for name, line, n in long_functions(path.read_text())]
    assert not long, f"functions over {MAX_FUNCTION} lines (split them): {long}"


def test_no_module_over_300_lines():
    long = [f"{path.relative_to(ROOT.parent)} ({n} lines)" for path in modules()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE]
    assert not long, f"modules over {MAX_MODULE} lines (one concept per module: split them): {long}"


@pytest.mark.parametrize("body, found", [(50, []), (51, [("f", 1, 51)])])
def test_a_long_function_is_found(body, found):
    """The check itself: a 51-line function (a decorated method, its `def` line included) is reported, 50 not."""
    source = "@staticmethod\ndef f():\n" + "    x = 1\n" * (body - 2)
    assert long_functions(source) == found
    nested = "class C:\n    def g(self):\n" + "        pass\n" * 60
    assert long_functions(nested) == [("g", 2, 61)]
