"""The adapter's shape declared once (core/shape.py): every config derives from AdapterShape, with one rank
check in one wording (PEFT's: the field and the value), and the default alpha 2 r."""
import dataclasses

import pytest

from edgelora.core.shape import AdapterShape, check_rank, default_alpha
from edgelora.files.adapter import AdapterConfig
from edgelora.graphs.kit import KitRecipe
from edgelora.runtime.train_config import TrainConfig

FILE_FIELDS = dict(backbone_fingerprint="sha256:" + "0" * 64, target_taps=("t",), tap_widths=(3,), num_outputs=2,
                   task="classification")


def test_every_config_is_an_adapter_shape_with_the_same_fields_first():
    for cls in (TrainConfig, KitRecipe, AdapterConfig):
        assert issubclass(cls, AdapterShape)
        assert [f.name for f in dataclasses.fields(cls)][:3] == ["r", "lora_alpha", "bias"]
    assert (TrainConfig().r, TrainConfig().lora_alpha, TrainConfig().bias) == (4, None, True)
    assert KitRecipe(r=3).alpha == 6.0 == default_alpha(3) and KitRecipe(r=3).scale == 2.0
    assert AdapterConfig(**FILE_FIELDS).lora_alpha == 8.0   # written explicitly in adapter_config.json, as PEFT's


@pytest.mark.parametrize("make", [lambda r: AdapterShape(r), lambda r: TrainConfig(r=r), lambda r: KitRecipe(r=r),
                                  lambda r: AdapterConfig(r=r, **FILE_FIELDS)])
def test_error_a_rank_below_one_is_refused_in_one_wording(make):
    with pytest.raises(ValueError, match=r"^`r` should be a positive integer value but the value passed is 0$"):
        make(0)


def test_error_rank_checks_name_their_field():
    with pytest.raises(ValueError, match="`rank_grid` should be a positive integer value but the value passed is 0"):
        TrainConfig(r="auto", rank_grid=(2, 0))
    with pytest.raises(ValueError, match="`rank` should be a positive integer value but the value passed is True"):
        check_rank(True, "rank")
    with pytest.raises(ValueError, match="`lora_alpha` should be positive, found -1"):
        AdapterShape(4, -1.0)
