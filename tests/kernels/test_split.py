"""lab.kernels.split: the split-K that balances 132 SMs, on the shapes of chapter 3 and on small ones."""

from __future__ import annotations

import pytest

from lab.kernels.split import balanced_split, busiest_sm_steps


def test_the_busiest_sm_runs_an_even_share():
    # int4 v2, 8192 × 8192, g = 128: 32 tiles, 64 groups. 17 splits: 544 programs, 5 of 4 groups on some SMs
    assert busiest_sm_steps(32, 64, 17) == 20 and busiest_sm_steps(32, 64, 16) == 16
    # S = 4, 8, 16 tie at 16 steps; 8 is the fewest programs (256) that still give every SM one
    assert balanced_split(32, 64, 25) == 8
    # too few programs for every SM whatever the split (cap 4): the most programs among the ties
    assert balanced_split(32, 64, 4) == 4
    assert balanced_split(3, 4, 4) == 4 and balanced_split(200, 1, 10) == 1    # never more splits than steps


@pytest.mark.parametrize("args, error, match", [
    ((0, 4, 4), ValueError, r"tiles=0 is out of range"),
    ((4, 4, True), TypeError, r"most must be an int, got True"),
    ((4, 2.0, 4), TypeError, r"steps must be an int, got 2\.0"),
])
def test_bad_input_is_refused_by_name(args, error, match):
    with pytest.raises(error, match=match):
        balanced_split(*args)
