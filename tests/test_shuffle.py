"""The specified PRNG (edgelora/core/shuffle.py): known answers, so every client can check its port."""
import numpy as np
import pytest

from edgelora.core import lora
from edgelora.core.shuffle import SplitMix64, init_values


def test_splitmix64_known_answers():
    # SplitMix64 from seed 0: the reference outputs of Steele et al.'s algorithm (also Java's SplittableRandom)
    rng = SplitMix64(0, stream=0)
    assert rng.next_u64(3).tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    # vectorised draws continue exactly where the previous call stopped
    a, b = SplitMix64(7), SplitMix64(7)
    assert np.array_equal(np.concatenate([a.next_u64(5), a.next_u64(4)]), b.next_u64(9))
    assert SplitMix64(-1, 0).state == 2**64 - 1 and SplitMix64(0, 1).state == 2**63


def test_permutation_is_a_fixed_fisher_yates():
    p = SplitMix64(0).permutation(10)
    assert sorted(p.tolist()) == list(range(10))
    # the same spec, written out one draw at a time (what the JS client does)
    rng, a = SplitMix64(0), list(range(10))
    for i in range(9, 0, -1):
        j = ((int(rng.next_u64(1)[0]) >> 32) * (i + 1)) >> 32
        a[i], a[j] = a[j], a[i]
    assert p.tolist() == a
    assert not np.array_equal(SplitMix64(0).permutation(50), SplitMix64(1).permutation(50))
    assert SplitMix64(3).permutation(1).tolist() == [0] and SplitMix64(3).permutation(0).size == 0


def test_init_values_follow_the_spec():
    a = init_values((3, 2), 2, seed=5)
    rng = SplitMix64(5, 0)
    u = (rng.next_u64(10) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    want = np.concatenate([(2 * u[:6] - 1) / np.sqrt(3), (2 * u[6:] - 1) / np.sqrt(2)]).astype(np.float32)
    assert np.array_equal(np.concatenate([x.ravel() for x in a]), want)
    flat = lora.init(lora.Layout(("a", "b"), (3, 2), 4, 2, True), seed=5)
    assert np.array_equal(flat[:10], want) and not flat[10:].any()


def test_error_seed_type():
    with pytest.raises(TypeError, match="seed should be an integer"):
        SplitMix64(1.5)


def test_a_permutation_takes_about_32_bytes_a_sample_at_its_peak():
    """Lists of Python ints took about 92 bytes a sample (1M samples: 92 MB at every epoch's shuffle)."""
    import tracemalloc
    tracemalloc.start()
    SplitMix64(3).permutation(100_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak / 100_000 < 40, peak / 100_000
