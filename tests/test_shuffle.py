"""The specified PRNG (edgelora/core/shuffle.py): known answers, so every client can check its port."""
import numpy as np
import pytest

from edgelora.core import lora
from edgelora.core.shuffle import PERMUTE_CHUNK, SplitMix64, init_values


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


def whole_draws_permutation(rng: SplitMix64, n: int) -> np.ndarray:
    """The spec with every draw made at once (the implementation before the draws came in chunks)."""
    bound = np.arange(n, 1, -1, dtype=np.uint64)
    js = ((rng.next_u64(max(n - 1, 0)) >> np.uint64(32)) * bound) >> np.uint64(32)
    a = list(range(n))
    for i, j in zip(range(n - 1, 0, -1), js.tolist()):
        a[i], a[j] = a[j], a[i]
    return np.array(a, np.int64)


@pytest.mark.parametrize("n", [2, PERMUTE_CHUNK, PERMUTE_CHUNK + 1, PERMUTE_CHUNK + 2, 3 * PERMUTE_CHUNK + 5])
def test_the_permutation_in_chunks_is_the_permutation_of_all_draws(n):
    """The same order for the same seed, epoch after epoch (the JS client and the kit share it)."""
    a, b = SplitMix64(11), SplitMix64(11)
    for _ in range(2):
        p = a.permutation(n)
        assert p.dtype == np.int32 and np.array_equal(p, whole_draws_permutation(b, n)) and a.state == b.state


def test_a_permutation_takes_4_bytes_a_sample_at_its_peak():
    """Lists of Python ints took about 92 bytes a sample (1M samples: 92 MB at every epoch's shuffle), arrays
    of 64-bit integers and of every draw 32; now the int32 result, swapped in place, and one chunk of draws."""
    import tracemalloc
    n = 200_000
    tracemalloc.start()
    p = SplitMix64(3).permutation(n)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert p.nbytes == 4 * n and peak < 4 * n + 2**20, peak / n
