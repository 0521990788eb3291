"""An adapter's shape: its rank r, its scale lora_alpha / r, whether it learns an output bias (PEFT's names).

Every place that declares an adapter's shape derives from AdapterShape (TrainConfig, KitRecipe,
AdapterConfig, the fleet's AdapterSpec) or builds one (FleetSettings.shape), so the fields, the default
alpha and the checks are written once.
"""
from __future__ import annotations

from dataclasses import dataclass


def default_alpha(r: int, lora_alpha: float | None = None) -> float:
    """lora_alpha, or 2 r when not given (scale s = 2): the default of every trainer and of the fleet."""
    return float(lora_alpha if lora_alpha is not None else 2.0 * r)


def check_rank(r, name: str = "r") -> None:
    """ValueError naming the field and the value unless `r` is a positive integer (PEFT's wording)."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"`{name}` should be a positive integer value but the value passed is {r!r}")


def check_alpha(lora_alpha, name: str = "lora_alpha", most: float = float("inf")) -> None:
    """ValueError naming the field and the value unless `lora_alpha` is None (the default, 2 r) or in (0, most]."""
    if lora_alpha is not None and not 0 < lora_alpha <= most:
        bound = "" if most == float("inf") else f" and at most {most:g}"
        raise ValueError(f"`{name}` should be positive{bound}, found {lora_alpha}")


@dataclass(frozen=True)
class AdapterShape:
    """Rank, alpha and output bias of a set of skip adapters (what must match to warm-start or average them)."""
    r: int = 4                               # rank
    lora_alpha: float | None = None          # scale s = lora_alpha / r; None -> 2 r
    bias: bool = True                        # learn an output bias too

    def __post_init__(self):
        check_rank(self.r)
        check_alpha(self.lora_alpha)

    @property
    def alpha(self) -> float:
        """lora_alpha, or its default 2 r."""
        return default_alpha(self.r, self.lora_alpha)

    @property
    def scale(self) -> float:
        """s = alpha / r, the factor on every adapter's output."""
        return self.alpha / self.r
