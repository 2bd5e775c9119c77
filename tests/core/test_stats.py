"""lab.core.stats: the paired cluster bootstrap against a direct computation, its coverage on synthetic
losses with per-document effects (the test split's document sizes), seeds resampled with documents,
Holm's adjustment against a direct computation, the verbs, the seed summary against scipy, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from lab.core.stats import (EQUIVALENCE_MARGIN, T_975, compare, compare_sums, document_sums, holm, seed_spread,
                            t_quantile_975, verdict, verdicts)

# scored tokens per test document in lab.data.eval_sample(tokenizer, 8192) (tests/test_data.py checks them)
SAMPLE_SIZES = np.array([263, 100, 60, 47, 99, 109, 36, 426, 212, 395, 55, 53, 141, 84, 227, 556, 4, 204, 505,
                         721, 162, 5, 8, 402, 23, 886, 329, 1396, 4, 678, 2])


def synthetic(rng, effect_sd: float = 0.03, effect: float = 0.01):
    """Losses of two models on the sample's documents: b − a = a document's effect + token noise."""
    groups = np.repeat(np.arange(len(SAMPLE_SIZES)), SAMPLE_SIZES)
    per_document = rng.normal(effect, effect_sd, size=len(SAMPLE_SIZES))
    a = rng.gamma(2.0, 1.5, size=len(groups))
    return a, a + per_document[groups] + rng.normal(0.0, 0.3, size=len(groups)), groups


def test_compare_sums_of_document_sums_is_compare():
    rng = np.random.default_rng(3)
    a, b, groups = synthetic(rng)
    seeds = np.stack([b, b + rng.normal(0, 0.05, len(b)), b - 0.02])               # (3, N)
    sums_a, sizes = document_sums(a, groups)
    sums_b, sizes_b = document_sums(seeds, groups)
    assert sums_a.shape == (1, 31) and sums_b.shape == (3, 31) and sizes.tolist() == SAMPLE_SIZES.tolist()
    assert np.array_equal(sizes, sizes_b) and np.allclose(sums_b[1, 5], seeds[1][groups == 5].sum())
    direct, from_sums = compare(a, seeds, groups, n_boot=500), compare_sums(sums_a[0], sums_b, sizes, n_boot=500)
    assert from_sums.keys() == direct.keys()
    for key, value in direct.items():
        assert from_sums[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_compare_equals_a_direct_bootstrap_t():
    a, b, groups = synthetic(np.random.default_rng(1))
    result = compare(a, b, groups, n_boot=300, seed=7)
    d, g = b - a, len(SAMPLE_SIZES)
    rng = np.random.default_rng(7)
    rng.integers(0, 1, size=(300, 1))                                    # the seed draw (one seed)
    draws = rng.integers(0, g, size=(300, g))

    def ratio_and_se(docs):
        picked = np.concatenate([d[groups == j] for j in docs])
        sums = np.array([d[groups == j].sum() for j in docs])
        est = picked.mean()
        return est, math.sqrt(g / (g - 1) * ((sums - est * SAMPLE_SIZES[docs]) ** 2).sum()) / len(picked)

    delta, se = ratio_and_se(np.arange(g))
    t = np.array([(e - delta) / s for e, s in map(ratio_and_se, draws)])
    assert result["delta_log_ppl"] == pytest.approx(d.mean(), abs=1e-12)
    assert result["se"] == pytest.approx(se, rel=1e-9)
    assert result["ci_low"] == pytest.approx(delta - np.quantile(t, 0.975) * se, rel=1e-9)
    assert result["ci_high"] == pytest.approx(delta - np.quantile(t, 0.025) * se, rel=1e-9)
    tail = min((t >= delta / se).sum(), (t <= delta / se).sum())
    assert result["p"] == pytest.approx(min(1.0, 2 * (tail + 1) / 301))
    assert (result["n_tokens"], result["n_documents"], result["n_seeds"]) == (len(d), g, 1)
    assert result["ratio"] == pytest.approx(np.exp(d.mean()))


def test_tensors_and_arrays_give_the_same_result():
    a, b, groups = synthetic(np.random.default_rng(2))
    assert compare(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(groups), n_boot=200) == \
        compare(a, b, groups, n_boot=200)


def test_resampling_documents_covers_a_population_effect_about_95_percent_of_the_time():
    """Per-document effects (sd 0.03 around 0.01) on the sample's 31 documents: the bootstrap-t interval
    covers 0.01 in 95.1% of 1,000 trials, the percentile interval of the same replicates in 92.5%
    (the figures in lab.core.stats's docstring; here 600 trials, ±1.8 points of binomial noise)."""
    rng, hits, percentile_hits = np.random.default_rng(0), 0, 0
    for trial in range(600):
        a, b, groups = synthetic(rng)
        result = compare(a, b, groups, n_boot=1000, seed=trial)
        hits += result["ci_low"] <= 0.01 <= result["ci_high"]
        sums, sizes = np.bincount(groups, b - a), SAMPLE_SIZES
        draws = np.random.default_rng(trial).integers(0, len(sizes), size=(1000, len(sizes)))
        low, high = np.quantile(sums[draws].sum(1) / sizes[draws].sum(1), [0.025, 0.975])
        percentile_hits += low <= 0.01 <= high
    assert 0.93 <= hits / 600 <= 0.98 and percentile_hits < hits, (hits / 600, percentile_hits / 600)


def test_seeds_and_documents_resampled_together_cover_about_95_percent():
    """Three seeds whose effects differ by a shift (sd 0.1) shared by every document, on top of the document
    effects: the interval covers 0.01 in 94.8% of 1,000 trials (lab.core.stats's docstring; here 400)."""
    rng, hits = np.random.default_rng(5), 0
    for trial in range(400):
        a, b, groups = synthetic(rng)
        seeds = np.stack([b + rng.normal(0.0, 0.1) + rng.normal(0.0, 0.3, size=len(b)) for _ in range(3)])
        result = compare(a, seeds, groups, n_boot=1000, seed=trial)
        hits += result["ci_low"] <= 0.01 <= result["ci_high"]
    assert 0.91 <= hits / 400 <= 0.99, hits / 400


def test_seeds_widen_the_interval_by_their_spread():
    """Three seeds whose effects differ by a shift shared by every document: resampling seeds with the
    documents widens the interval beyond that of the seeds' mean losses."""
    a, b, groups = synthetic(np.random.default_rng(3), effect_sd=0.0)
    seeds = np.stack([b + shift for shift in (-0.02, 0.0, 0.02)])
    together, mean_only = compare(a, seeds, groups, n_boot=1000), compare(a, seeds.mean(0), groups, n_boot=1000)
    assert together["n_seeds"] == 3 and together["delta_log_ppl"] == pytest.approx(mean_only["delta_log_ppl"])
    assert together["ci_high"] - together["ci_low"] > 1.5 * (mean_only["ci_high"] - mean_only["ci_low"])


def test_holm_equals_the_step_down_written_out():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → max(0.06, 0.04) = 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_the_verbs():
    identical = compare(np.arange(100.0) % 7, np.arange(100.0) % 7, np.arange(100) // 10)
    assert identical["p"] == 1.0 and verdict(identical) == "equivalent"
    assert verdict({"ci_low": -0.2, "ci_high": -0.1, "p": 0.001}) == "lower"
    assert verdict({"ci_low": 0.1, "ci_high": 0.2, "p": 0.001}) == "higher"
    assert verdict({"ci_low": 0.1, "ci_high": 0.2, "p": 0.001}, p_adjusted=0.06) == "inconclusive"
    inside = {"ci_low": -EQUIVALENCE_MARGIN / 2, "ci_high": EQUIVALENCE_MARGIN / 2, "p": 0.5}
    assert verdict(inside) == "equivalent" and verdict(inside, margin=EQUIVALENCE_MARGIN / 4) == "inconclusive"
    assert verdict({"ci_low": -0.05, "ci_high": 0.05}) == "inconclusive"


def test_holm_turns_a_marginal_difference_inconclusive_in_a_family():
    strong = {"ci_low": 0.1, "ci_high": 0.3, "p": 0.001}
    marginal = {"ci_low": 0.001, "ci_high": 0.3, "p": 0.04}
    assert verdicts({"m": marginal}) == {"m": "higher"}
    family = verdicts({"s": strong, "m": marginal, "m2": dict(marginal, p=0.03)})
    assert family == {"s": "higher", "m": "inconclusive", "m2": "inconclusive"}   # Holm: 2·0.03 > 0.05


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
    (lambda: compare([1.0, 2.0, 3.0], [1.0, 2.0], [0, 1, 2]), ValueError, "same tokens"),
    (lambda: compare([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0], [0, 1, 2]), ValueError, "non-finite"),
    (lambda: compare(np.ones((2, 2, 2)), np.ones((2, 2, 2)), [0, 1]), ValueError, "seeds, N"),
    (lambda: compare(np.ones((2, 4)), np.ones((3, 4)), [0, 1, 2, 3]), ValueError, "same seeds"),
    (lambda: compare(np.ones(4), np.ones((2, 4)), [0, 1, 2, 3]), ValueError, "2 seeds are too few"),
    (lambda: compare(np.ones(4), np.ones(4), [0, 0, 1, 1]), ValueError, "at least 3"),
    (lambda: compare(np.ones(4), np.ones(4), [0, 1, 2]), ValueError, "groups must be"),
    (lambda: compare(np.ones(4), np.ones(4), [0.0, 1.0, 2.0, 3.0]), ValueError, "integers"),
    (lambda: compare(np.ones(9), np.ones(9), np.arange(9), n_boot=10), ValueError, "n_boot=10"),
    (lambda: compare_sums(np.ones(4), np.ones(4), [1, 2, 3]), ValueError, "same G documents"),
    (lambda: compare_sums(np.ones(3), np.ones(3), [1.0, 2.0, 3.0]), ValueError, "integers >= 1"),
    (lambda: compare_sums(np.ones(3), np.ones(3), [1, 0, 3]), ValueError, "integers >= 1"),
    (lambda: compare_sums(np.ones(2), np.ones(2), [1, 1]), ValueError, "G >= 3 documents"),
    (lambda: compare_sums(np.ones(1), np.ones(1), [4]), ValueError, "G >= 3 documents"),
    (lambda: compare_sums([1.0, np.inf, 1.0], np.ones(3), [1, 2, 3]), ValueError, "non-finite"),
    (lambda: compare_sums(np.ones((2, 3)), np.ones((2, 3)), [1, 2, 3]), ValueError, "2 seeds are too few"),
    (lambda: compare_sums(np.ones((3, 3)), np.ones((4, 3)), [1, 2, 3]), ValueError, "same seeds"),
    (lambda: document_sums(np.ones(4), [0, 1, 2]), ValueError, "groups must be"),
    (lambda: holm([0.5, 1.5]), ValueError, "p_values=1.5"),
    (lambda: verdict({"ci_low": 0.0, "ci_high": 1.0}, margin=0.0), ValueError, "margin=0.0"),
    (lambda: verdicts({}), ValueError, "at least one"),
    (lambda: seed_spread([1.0]), ValueError, "at least 2 seeds"),
    (lambda: seed_spread([1.0, float("inf")]), ValueError, "finite"),
    (lambda: verdict({"ci_low": 0.1, "ci_high": -0.1}), ValueError, "ci_low <= ci_high"),
    (lambda: t_quantile_975(0), ValueError, "df=0"),
])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_paired_ratio_is_the_t_interval_of_the_log_ratios():
    from lab.core.stats import paired_ratio

    a, b = [2.0, 2.2, 1.9, 2.5], [1.0, 1.0, 1.1, 1.2]
    logs = np.log(np.array(a) / np.array(b))
    low, high = scipy.stats.t.interval(0.95, 3, loc=logs.mean(), scale=scipy.stats.sem(logs))
    r = paired_ratio(a, b)
    assert r["ratio"] == pytest.approx(np.exp(logs.mean())) and r["n"] == 4
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((np.exp(low), np.exp(high)), rel=1e-4)
    with pytest.raises(ValueError, match="paired 1-D"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([1.0, 0.0], [1.0, 1.0])


def test_paired_t_p_is_the_paired_t_test_of_the_log_ratios():
    from lab.core.stats import paired_t_p

    a, b = [2.0, 2.2, 1.9, 2.5], [1.0, 1.0, 1.1, 1.2]
    expected = scipy.stats.ttest_rel(np.log(a), np.log(b)).pvalue
    assert paired_t_p(a, b) == pytest.approx(expected, rel=1e-9)
    assert paired_t_p([2.0, 4.0], [1.0, 2.0]) == 1.0                  # every ratio the same: no spread, p = 1
