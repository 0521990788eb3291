"""The Skip-Cache's key index (edgelora/runtime/cache_index.py) against a dict, and its size."""
import os
import tracemalloc

import numpy as np
import pytest

from edgelora.runtime.cache_index import KeyIndex, key_array


def random_keys(n: int, seed: int = 0) -> np.ndarray:
    return key_array(np.random.default_rng(seed).integers(0, 256, (n, 16), dtype=np.uint8)).copy()


def test_rows_found_as_a_dict_would_with_keys_added_in_steps():
    keys = random_keys(5000)
    index = KeyIndex(keys[:1000])
    for a in range(1000, 5000, 800):   # added in steps, looked up in between
        index.add(keys[a:a + 800], a)
        probe = keys[np.random.default_rng(a).integers(0, a + 800, 300)]
        want = {k.tobytes(): i for i, k in enumerate(keys[:a + 800])}
        assert index.find(probe).tolist() == [want[k.tobytes()] for k in probe]
    assert len(index) == 5000 and np.array_equal(index.in_row_order(), keys)
    assert (index.find(random_keys(100, seed=1)) == -1).all()


def test_keys_sharing_their_first_8_bytes_are_told_apart():
    keys = random_keys(50)
    keys[10:20, 0] = keys[0, 0]     # eleven keys with the same hi, different lo
    index = KeyIndex(keys[:15])
    twin = keys[[0]].copy()
    twin[0, 1] ^= 1                 # same hi as ten indexed keys: not indexed
    assert index.find(twin).tolist() == [-1]
    index.add(keys[15:], 15)
    assert index.find(keys).tolist() == list(range(50))
    assert index.find(np.concatenate([twin, keys[[19, 0]]])).tolist() == [-1, 19, 0]


def test_keys_from_bytes_and_from_an_array_are_the_same():
    raw = [os.urandom(16) for _ in range(4)]
    as_bytes = key_array(raw)
    assert np.array_equal(as_bytes, key_array(np.frombuffer(b"".join(raw), np.uint8).reshape(4, 16)))
    assert [k.tobytes() for k in as_bytes] == raw


def test_error_a_key_of_the_wrong_length():
    with pytest.raises(ValueError, match="sample keys should be 16 bytes each, found 31 bytes for 2 keys"):
        key_array([b"a" * 16, b"b" * 15])


def test_the_index_takes_24_bytes_per_sample():
    """A dict of bytes keys and a list of them took about 130 bytes per sample."""
    keys = random_keys(200_000)
    tracemalloc.start()
    index = KeyIndex(keys[:100_000])
    index.add(keys[100_000:], 100_000)
    index.find(keys[:10])
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert held / len(index) <= 25, held / len(index)
