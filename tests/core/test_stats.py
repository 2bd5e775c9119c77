"""lab.core.stats: paired block bootstrap against a direct numpy computation, coverage on synthetic
losses with a known difference, the seed summary against scipy, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from lab.core.stats import T_975, block_sums, compare, seed_spread, t_quantile_975, verdict


def test_compare_equals_a_direct_numpy_block_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.gamma(2.0, 1.5, size=1000)
    b = a + rng.normal(0.05, 0.3, size=1000)
    result = compare(a, b, block=64, n_boot=500, seed=7)
    # the same bootstrap, written out block by block
    d = b - a
    blocks = [d[i:i + 64] for i in range(0, 1000, 64)]
    draws = np.random.default_rng(7).integers(0, len(blocks), size=(500, len(blocks)))
    reps = np.array([np.concatenate([blocks[j] for j in row]).mean() for row in draws])
    assert result["delta_log_ppl"] == pytest.approx(d.mean(), abs=1e-12)
    assert result["ci_low"] == pytest.approx(np.quantile(reps, 0.025), abs=1e-12)
    assert result["ci_high"] == pytest.approx(np.quantile(reps, 0.975), abs=1e-12)
    assert result["se"] == pytest.approx(reps.std(ddof=1), abs=1e-12)
    assert result["z"] == pytest.approx(d.mean() / reps.std(ddof=1))
    assert result["ratio"] == pytest.approx(np.exp(d.mean()))
    assert (result["n_tokens"], result["n_blocks"], result["block"]) == (1000, 16, 64)


def test_block_sums_keep_a_short_last_block():
    sums, sizes = block_sums(np.arange(10.0), 4)
    assert sums.tolist() == [6.0, 22.0, 17.0] and sizes.tolist() == [4, 4, 2]


def test_tensors_and_arrays_give_the_same_result():
    a = torch.rand(600, dtype=torch.float64)
    b = a + 0.01
    assert compare(a, b, block=50) == compare(a.numpy(), b.numpy(), block=50)


def test_interval_covers_a_known_difference_about_95_percent_of_the_time():
    """Correlated synthetic losses (an AR(1) difficulty shared by both models, plus an AR(1)
    difference around a known Δ): the 95% block interval should contain Δ in ≈ 95% of draws."""
    true_delta, n, trials, hits = 0.02, 4096, 200, 0
    rng = np.random.default_rng(0)
    for trial in range(trials):
        shared = np.empty(n)
        noise = np.empty(n)
        shared[0], noise[0] = rng.normal(), rng.normal()
        for t in range(1, n):
            shared[t] = 0.6 * shared[t - 1] + rng.normal()
            noise[t] = 0.5 * noise[t - 1] + rng.normal()
        a = 3.0 + 2.5 * shared
        b = a + true_delta + 0.1 * noise
        result = compare(a, b, block=128, n_boot=400, seed=trial)
        hits += result["ci_low"] <= true_delta <= result["ci_high"]
    assert 0.89 <= hits / trials <= 0.99, hits / trials


def test_identical_models_are_level_and_a_shift_is_detected():
    a = np.random.default_rng(2).gamma(2.0, 1.5, size=2048)
    same = compare(a, a.copy())
    assert same["delta_log_ppl"] == 0.0 and same["z"] == 0.0 and verdict(same["ci_low"], same["ci_high"]) == "level"
    worse = compare(a, a + 0.01 + 0.001 * np.random.default_rng(3).normal(size=2048))
    assert worse["ci_low"] > 0 and verdict(worse["ci_low"], worse["ci_high"]) == "higher"
    assert verdict(-0.2, -0.1) == "lower"


def test_t_quantiles_match_scipy():
    for df in range(1, 31):
        assert T_975[df - 1] == pytest.approx(scipy.stats.t.ppf(0.975, df), abs=1e-4)
    assert t_quantile_975(100) == pytest.approx(scipy.stats.norm.ppf(0.975), abs=1e-6)


def test_seed_spread_matches_a_t_interval():
    values = [1.013, 1.021, 1.017, 1.030, 1.009]
    s = seed_spread(values)
    low, high = scipy.stats.t.interval(0.95, 4, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert s["mean"] == pytest.approx(np.mean(values)) and s["sd"] == pytest.approx(np.std(values, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((low, high), abs=1e-6)
    assert (s["n"], s["min"], s["max"]) == (5, 1.009, 1.030)


@pytest.mark.parametrize("call, error, match", [
    (lambda: compare([1.0, 2.0, 3.0], [1.0, 2.0]), ValueError, "same tokens"),
    (lambda: compare([1.0, float("nan")], [1.0, 2.0]), ValueError, "non-finite"),
    (lambda: compare([[1.0, 2.0]], [[1.0, 2.0]]), ValueError, "1-D"),
    (lambda: compare(np.ones(100), np.ones(100), block=100), ValueError, "at least 2 blocks"),
    (lambda: compare(np.ones(100), np.ones(100), block=0), ValueError, "block=0"),
    (lambda: compare(np.ones(100), np.ones(100), block=2.5), TypeError, "block must be an int"),
    (lambda: compare(np.ones(100), np.ones(100), block=10, n_boot=10), ValueError, "n_boot=10"),
    (lambda: seed_spread([1.0]), ValueError, "at least 2 seeds"),
    (lambda: seed_spread([1.0, float("inf")]), ValueError, "finite"),
    (lambda: verdict(0.1, -0.1), ValueError, "ci_low <= ci_high"),
    (lambda: t_quantile_975(0), ValueError, "df=0"),
])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
