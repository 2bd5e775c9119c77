"""The measurement behind the tolerances: how a pair's excess is measured and a tolerance derived."""

from __future__ import annotations

import json
import math

import pytest

from tests.notebook_outputs import MULTIPLE, Pair, numbers
from tests.output_spread import _one_digit_up, derived, excess, fragile_claims


def _pair(a: str, b: str, exact: bool = False, percent: bool = False) -> Pair:
    [x], [y] = numbers(a, exact, percent)[1], numbers(b, exact, percent)[1]
    return Pair(0, "text/plain", x, y, "default")


@pytest.mark.parametrize("a, b, expected", [
    ("29.24", "29.25", 0.0),                          # one printed digit apart: rounding
    ("29.24", "29.27", 0.02 / 29.27),                 # relative beyond the digit, for |x| >= SMALL
    ("8.7e-06", "8.2e-06", 0.4e-6),                   # absolute below SMALL
    ("1,024", "1,024", 0.0),
    ("1,024", "1,025", math.inf),                     # integers are exact
])
def test_excess_is_the_difference_beyond_the_printed_rounding(a, b, expected):
    assert excess(_pair(a, b)) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_a_derived_tolerance_is_multiple_times_the_spread_rounded_up():
    found = [_pair("29.24", "29.27"), _pair("8.7e-06", "8.2e-06"), _pair("+0.50%", "+0.53%")]
    tolerance = derived(found)
    assert tolerance.rel == _one_digit_up(MULTIPLE * 0.02 / 29.27)
    assert tolerance.abs == _one_digit_up(MULTIPLE * 0.4e-6) and tolerance.points == _one_digit_up(MULTIPLE * 0.02)
    assert all(tolerance.allows(p.a, p.b) for p in found)


@pytest.mark.parametrize("x, up", [(0.000643, 0.0007), (7.000000000000001e-4, 7e-4), (9.99e-4, 1e-3),
                                   (0.85, 0.9), (0.0, 0.0)])
def test_one_digit_rounds_up(x, up):
    assert _one_digit_up(x) == up


def test_a_verb_whose_end_moves_near_zero_is_fragile(tmp_path):
    def run(folder: str, interval: list[float]) -> None:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "03_quantization.metrics.json").write_text(
            json.dumps({"qat_vs_finetune_then_rtn": interval, "gptq_vs_rtn_4_channel": [0.08, -0.22, 0.38]}))
    run("a", [-1.3, -2.6, -0.10])
    run("b", [-1.2, -2.5, -0.08])           # high end 0.08 from 0, moved 0.02: 0.08 <= 5 × 0.02
    [row] = fragile_claims([tmp_path / "a", tmp_path / "b"])
    assert "qat_vs_finetune_then_rtn 'lower': its high end 0.080 from 0, moved 0.020" in row
