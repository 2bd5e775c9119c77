"""lab.core.report: metrics round-trip through JSON, land where the tests look, and bad input is refused."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.core import report


def test_record_then_read_round_trips_and_keeps_other_names(tmp_path):
    path = tmp_path / "nb.metrics.json"
    report.record("n_parameters", 6_524_160, path=path)
    report.record("ppl", 12.5, path=path)
    report.record("ok", True, path=path)
    report.record("curve", [1, 2.5, 3], path=path)
    report.record("ppl", 11.25, path=path)  # overwrite one name
    expected = {"n_parameters": 6_524_160, "ppl": 11.25, "ok": True, "curve": [1, 2.5, 3]}
    assert report.read(path) == expected
    assert json.loads(path.read_text()) == expected  # plain JSON, readable without lab
    assert [p.name for p in tmp_path.iterdir()] == ["nb.metrics.json"]  # no temp files left


def test_numpy_and_torch_scalars_are_unwrapped(tmp_path):
    path = tmp_path / "m.json"
    report.record("a", np.float32(0.5), path=path)
    report.record("b", torch.tensor(7), path=path)
    report.record("c", np.int64(3), path=path)
    assert report.read(path) == {"a": 0.5, "b": 7, "c": 3}


def test_path_resolution_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(report.ENV_VAR, raising=False)
    report.record("x", 1)
    assert report.read(tmp_path / report.DEFAULT_FILENAME) == {"x": 1}

    env_file = tmp_path / "sub" / "from_env.metrics.json"
    monkeypatch.setenv(report.ENV_VAR, str(env_file))
    report.record("y", 2)
    assert report.read() == {"y": 2}
    assert report.read(env_file) == {"y": 2}

    explicit = tmp_path / "explicit.json"
    report.record("z", 3, path=explicit)  # explicit path beats the environment
    assert report.read(explicit) == {"z": 3}
    assert report.read(env_file) == {"y": 2}


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(min_size=1).filter(str.strip),
                       st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                                 st.booleans(), st.text()),
                       min_size=1, max_size=5))
def test_any_valid_metrics_round_trip(tmp_path_factory, metrics):
    path = tmp_path_factory.mktemp("h") / "m.json"
    for name, value in metrics.items():
        report.record(name, value, path=path)
    assert report.read(path) == metrics


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan]])
def test_non_finite_values_are_refused(tmp_path, value):
    with pytest.raises(ValueError, match="must be finite"):
        report.record("bad", value, path=tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("value", [None, {"a": 1}, object(), torch.ones(2)])
def test_unsupported_values_are_refused(tmp_path, value):
    with pytest.raises(TypeError, match="value must be an int, float, str, bool or a list"):
        report.record("bad", value, path=tmp_path / "m.json")


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        report.record("  ", 1, path=tmp_path / "m.json")
    with pytest.raises(TypeError, match="name must be a str, got int"):
        report.record(3, 1, path=tmp_path / "m.json")


def test_reading_a_missing_file_says_nothing_was_recorded(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was recorded"):
        report.read(tmp_path / "absent.json")


def test_record_comparison_stores_percent_interval_text_and_verdict(tmp_path):
    from lab.core.stats import compare

    path = tmp_path / "m.json"
    a = np.random.default_rng(0).gamma(2.0, 1.5, size=2048)
    groups = np.arange(2048) // 64
    result = compare(a, a + 0.01 + 0.01 * np.random.default_rng(1).normal(size=2048), groups)
    assert report.record_comparison("b_vs_a", result, path=path) == "higher"
    metrics = report.read(path)
    mid, low, high = metrics["b_vs_a"]
    assert mid == pytest.approx(report.percent(result["delta_log_ppl"])) and low <= mid <= high
    assert low == pytest.approx(report.percent(result["ci_low"])) and metrics["b_vs_a_verdict"] == "higher"
    assert metrics["b_vs_a_text"] == f"{mid:+.2f}% (95% CI {low:+.2f}% to {high:+.2f}%; 32 documents resampled)"


def test_record_comparisons_apply_holm_across_the_family(tmp_path):
    path = tmp_path / "m.json"
    base = {"delta_log_ppl": 0.02, "ci_low": 0.001, "ci_high": 0.04, "n_seeds": 3, "n_documents": 31}
    verbs = report.record_comparisons({"x": dict(base, p=0.03), "y": dict(base, p=0.04)}, path=path)
    assert verbs == {"x": "inconclusive", "y": "inconclusive"}                  # 2·0.03 > 0.05
    assert report.record_comparisons({"x": dict(base, p=0.03)}, path=path) == {"x": "higher"}
    assert "3 seeds and 31 documents resampled" in report.read(path)["x_text"]
    inside = dict(base, delta_log_ppl=0.0, ci_low=-0.005, ci_high=0.005, p=1.0)
    assert report.record_comparisons({"z": inside}, path=path) == {"z": "equivalent"}   # inside ±1%


def test_record_comparison_refuses_what_is_not_a_comparison(tmp_path):
    with pytest.raises(TypeError, match="non-empty dict"):
        report.record_comparisons({}, path=tmp_path / "m.json")
    with pytest.raises(TypeError, match="compare result"):
        report.record_comparison("x", {"delta": 1.0}, path=tmp_path / "m.json")
    no_documents = {"delta_log_ppl": 0.1, "ci_low": 0.0, "ci_high": 0.2, "p": 0.01, "n_seeds": 1}
    with pytest.raises(TypeError, match="compare result"):                    # refused before anything is written
        report.record_comparison("y", no_documents, path=tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_record_spread_gives_the_t_interval_and_its_verdict(tmp_path):
    path = tmp_path / "m.json"
    mean, low, high = report.record_spread("gap", [0.4, 0.5, 0.6], path=path)
    assert mean == pytest.approx(0.5) and (low, high) == pytest.approx((0.5 - 0.2484, 0.5 + 0.2484), abs=1e-3)
    assert report.read(path)["gap_verdict"] == "higher" and "mean of 3 seeds" in report.read(path)["gap_text"]
    report.record_spread("flat", [-0.1, 0.0, 0.1], path=path)
    assert report.read(path)["flat_verdict"] == "equivalent"                    # inside ±1 (%)


def test_record_comparison_in_points_for_rates(tmp_path):
    path = tmp_path / "m.json"
    result = {"delta_log_ppl": -0.05, "ci_low": -0.15, "ci_high": 0.05, "p": 0.3, "n_seeds": 1, "n_documents": 200}
    assert report.record_comparison("acc", result, scale="points", path=path) == "inconclusive"
    assert report.read(path)["acc"] == pytest.approx([-5.0, -15.0, 5.0])
    assert report.read(path)["acc_text"] == "-5.00 points (95% CI -15.00 points to +5.00 points; 200 documents resampled)"
    with pytest.raises(ValueError, match="scale='log'"):
        report.record_comparison("acc", result, scale="log", path=path)


def test_a_quantity_below_its_bound_is_printed_as_the_bound():
    assert report.below_text(7.7e-08, 1e-6) == "< 1e-06"
    assert report.below_text(1.4e-07, 1e-6) == "< 1e-06"         # another CPU's digits, the same text
    assert report.below_text(0.0, 1e-4) == "< 1e-04"
    assert report.below_text(np.float32(2.3e-7), 2**-22) == "< 2.4e-07"   # 2⁻²² ≈ 2.38e-7, rounded up
    assert report.below_text(0.0, 2.44e-7) == "< 2.5e-07"         # never a bound below the true one
    assert report.below_text(0.0, 9.99e-5) == "< 1e-04"
    assert report.below_text(1e-6, 1e-6) == "1e-06"               # at the bound: a finding, printed
    assert report.below_text(3.3e-3, 1e-4) == "0.0033"


def test_below_text_refuses_what_is_not_a_non_negative_number():
    with pytest.raises(ValueError, match=r"value=-1e-07 is out of range; allowed: a finite number in \[0.0, inf\)"):
        report.below_text(-1e-7, 1e-6)
    with pytest.raises(ValueError, match="value=nan"):
        report.below_text(float("nan"), 1e-6)
    with pytest.raises(ValueError, match=r"bound=0 is out of range; allowed: a finite number in \(0.0, inf\)"):
        report.below_text(1e-7, 0)
    with pytest.raises(TypeError, match=r"bound must be a real number, got '1e-6' \(str\)"):
        report.below_text(1e-7, "1e-6")
    with pytest.raises(TypeError, match=r"value must be a real number, got True \(bool\)"):
        report.below_text(True, 1e-6)
