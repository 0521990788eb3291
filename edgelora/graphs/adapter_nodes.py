"""The skip adapters' forward pass as ONNX nodes (lora.forward), built once for every graph that needs it:
merged models and LoRA-input models (merge.py), the training kit's graphs (kit_graphs.py).

    y = y0 + s * [t_1 A_1 | ... | t_K A_K] @ B  (+ bias)

Each caller names its nodes its own way, through `op(op_type, inputs, role, **attrs) -> output name`;
`role` says which value a node computes: `h.<tap>` (t_k A_k), `h` (their concatenation), `hB`, `delta`
(s h B), `y` (+ y0) and `out` (+ bias).
"""
from __future__ import annotations

from typing import Callable, Protocol


class Op(Protocol):
    def __call__(self, op_type: str, inputs: list[str], role: str, **attrs) -> str: ...


def adapter_forward(op: Op, y0: str, taps: list[tuple[str, str, str]], b: str, scale: Callable[[], str],
                    bias: str | None, *, concat_one: bool = True) -> tuple[str, str]:
    """(y, h) of the adapters over `taps` [(tap name, tap value, its A)], B named `b`. `scale()` names the
    scalar s when it is first needed; `bias` None: no output bias. With one tap, `concat_one` False reads h
    directly (the kit); merged models have always concatenated (kept, so their bytes do not change)."""
    hs = [op("MatMul", [t, a], f"h.{name}") for name, t, a in taps]
    h = hs[0] if len(hs) == 1 and not concat_one else op("Concat", hs, "h", axis=1)
    delta = op("Mul", [op("MatMul", [h, b], "hB"), scale()], "delta")
    y = op("Add", [delta, y0], "y")
    return (y if bias is None else op("Add", [y, bias], "out")), h
