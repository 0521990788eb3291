"""Crash safety: `edgelora finetune` killed with SIGKILL never loses the saved adapter (device_bench/crash.py).

A small run of the crash harness: 6 trials, half killed just before a file-system step while the cache,
a checkpoint or the adapter is written (one of each at least), half at a random time. The full run
(60 trials) is `python -m device_bench.crash`.
"""
import pytest

from device_bench import crash


@pytest.mark.skipif(not hasattr(crash.signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_never_loses_the_adapter_and_resume_is_bit_exact(tmp_path):
    r = crash.run_trials(6, seed=0, root=tmp_path, log=lambda s: None)
    assert r["adapters_lost"] == 0
    assert r["problems"] == [] and r["leftover_temp_files"] == []
    assert r["resumed_bit_exact"] == 6
    assert r["kills_by_mode"].get("step", 0) == 3 and r["kills"] >= 3
    for phase in crash.WRITE_PHASES:  # every write window was hit at least once
        assert r["kills_by_phase"].get(phase, 0) >= 1, r["kills_by_phase"]
