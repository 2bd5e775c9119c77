"""lab.core.timing: the one timer (median after a warm-up) and check-then-time."""

from __future__ import annotations

import pytest
import torch

from lab.core.timing import check_then_time, time_ms


def test_time_ms_on_the_cpu_is_the_median_after_one_warm_up():
    import time

    calls = []

    def fn():
        calls.append(None)
        time.sleep(0.05 if len(calls) == 1 else 0.002)  # a slow first call (the warm-up) is left out

    ms = time_ms(fn, torch.device("cpu"), repeats=5)
    assert len(calls) == 6
    assert 2.0 <= ms < 40.0                                  # the 2 ms calls, not the 50 ms warm-up
    for bad, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="repeats"):
            time_ms(fn, torch.device("cpu"), bad)
    with pytest.raises(ValueError, match="device='meta' is not allowed"):
        time_ms(fn, torch.device("meta"), 1)


def test_check_then_time_times_only_right_paths():
    ref = torch.arange(1.0, 5.0, dtype=torch.float64)
    right = check_then_time(lambda: ref.float(), ref, 1e-6, torch.device("cpu"), 2)
    assert right["max_rel_err"] == 0.0 and right["agreement"] == 1.0 and right["ms"] > 0 and "wrong" not in right
    half = check_then_time(lambda: ref.float() + torch.tensor([0.0, 0.0, 1e-3, 1e-3]), ref, 1e-2,
                           torch.device("cpu"), 2)
    assert half["agreement"] == 0.5                           # 2 of 4 outputs are the correctly rounded ones
    timed = []
    wrong = check_then_time(lambda: timed.append(1) or ref * 1.1, ref, 1e-2, torch.device("cpu"), 2)
    assert wrong["ms"] is None and wrong["max_rel_err"] == pytest.approx(0.1) and "exceeds" in wrong["wrong"]
    assert len(timed) == 1                                    # checked once, never timed
    nan = check_then_time(lambda: ref * float("nan"), ref, 1e-2, torch.device("cpu"), 2)
    assert nan == {"max_rel_err": None, "ms": None, "wrong": "the output is not finite"}

    def missing_op():
        raise RuntimeError("_weight_int4pack_mm is not implemented for this release")

    raised = check_then_time(missing_op, ref, 1e-2, torch.device("cpu"), 2)
    assert raised["ms"] is None and raised["wrong"].startswith("raised RuntimeError: _weight_int4pack_mm")


def test_time_interleaved_runs_the_functions_in_turn():
    from lab.core.timing import time_interleaved

    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b"] * 4                                  # one warm-up each, then three rounds
    assert set(times) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0 for v in times.values())
    with pytest.raises(ValueError, match="rounds=1"):
        time_interleaved({"a": lambda: None}, rounds=1)


def test_check_then_time_records_an_output_of_another_shape_as_wrong():
    ref = torch.ones(3, dtype=torch.float64)
    for out, got in ((torch.ones(1), "shape (1,)"), (torch.ones(3, 1), "shape (3, 1)"), ([1.0] * 3, "a list")):
        entry = check_then_time(lambda: out, ref, 1e-2, torch.device("cpu"), 2)   # broadcasting would hide it
        assert entry["ms"] is None and entry["wrong"].startswith(f"returned {got}, not a tensor of the reference")
