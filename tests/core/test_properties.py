"""lab.core, properties: the validators refuse every bool, fractional or out-of-range size naming the argument;
strided and transposed views give what their contiguous copies give; the formula helpers stay finite on valid
input; and every writer checks all its input first, so a refused call leaves the file (or record) byte-equal."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.core import (add_seed, atomic_write, atomic_write_json, below_text, check_choice, check_divisor, check_int,
                      check_number, check_numbers, check_power_of_two, compare, document_sums, holm, paired_ratio,
                      percent, record, record_comparison, record_comparisons, record_spread, seed_spread)

SETTINGS = settings(max_examples=25, deadline=None)
NAMES = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)
FINITE = st.floats(-1e6, 1e6, allow_nan=False)
RES = {"delta_log_ppl": 0.01, "ci_low": 0.0, "ci_high": 0.02, "p": 0.04, "n_seeds": 1, "n_documents": 31}


# the validators: a bool is never an int, a fractional or negative size is refused, the message names the argument

@SETTINGS
@given(NAMES, st.booleans())
def test_a_bool_is_never_a_size(name, flag):
    for check in (lambda v: check_int(name, v), lambda v: check_number(name, v), lambda v: check_power_of_two(name, v),
                  lambda v: check_divisor(name, v, 12, "total"), lambda v: check_choice(name, v, (0, 1, 2))):
        with pytest.raises(TypeError, match=rf"^{name} must be .*{flag}"):
            check(flag)


@SETTINGS
@given(NAMES, st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer()))
def test_a_fractional_size_is_refused_naming_the_argument(name, value):
    with pytest.raises(TypeError, match=rf"^{name} must be an int, got {re.escape(repr(value))}"):
        check_int(name, value)
    with pytest.raises(TypeError, match=rf"^{name} must be one of"):
        check_choice(name, value, (1, 2, 4))


@SETTINGS
@given(NAMES, st.integers(max_value=0))
def test_a_size_below_one_is_refused_with_its_value(name, value):
    with pytest.raises(ValueError, match=rf"^{name}={value} is out of range; allowed: \[1, inf\)"):
        check_int(name, value)
    with pytest.raises(ValueError, match=rf"^{name}={value}"):
        check_power_of_two(name, value)


@SETTINGS
@given(NAMES, st.one_of(st.integers(-10**6, 10**6), FINITE), st.floats(0.0, 1e3), st.floats(0.0, 1e3))
def test_check_number_returns_the_value_in_range_and_names_it_outside(name, value, below, above):
    low, high = float(value) - below, float(value) + above
    assert check_number(name, value, low, high) == float(value)
    if low < value:
        with pytest.raises(ValueError, match=rf"^{name}=.* is out of range"):
            check_number(name, low, value, None)
    for bad in (math.nan, math.inf, -math.inf, 10**400):
        with pytest.raises(ValueError, match=rf"^{name}="):
            check_number(name, bad)


@SETTINGS
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=8), st.sampled_from(["list", "array", "tensor", "tuple"]))
def test_check_numbers_is_the_same_array_from_every_container(values, kind):
    given_as = {"list": values, "tuple": tuple(values), "array": np.asarray(values), "tensor": torch.tensor(values)}
    assert np.array_equal(check_numbers("x", given_as[kind], 1), np.asarray(values))
    with pytest.raises(TypeError, match="^x must hold real numbers"):
        check_numbers("x", [v > 0 for v in values])


# strided and transposed views

@st.composite
def _losses(draw, seeds: int = 1):
    n_docs, per_doc = draw(st.integers(3, 5)), draw(st.integers(2, 4))
    n = n_docs * per_doc
    values = draw(st.lists(st.floats(0.0, 10.0), min_size=seeds * n, max_size=seeds * n))
    return torch.tensor(values, dtype=torch.float64).view(seeds, n), torch.arange(n) // per_doc


@SETTINGS
@given(_losses(seeds=3), st.integers(0, 2**16))
def test_transposed_and_strided_losses_compare_as_their_contiguous_copies(drawn, seed):
    losses, groups = drawn
    other = losses.flip(1)
    transposed = losses.t().contiguous().t()                               # (S, N) view of an (N, S) buffer
    assert not transposed.is_contiguous()
    strided = torch.stack([losses, other], -1)[..., 0]                     # every other element of a buffer
    want = compare(losses.contiguous(), other, groups, n_boot=200, seed=seed)
    assert compare(transposed, other, groups, n_boot=200, seed=seed) == want
    assert compare(strided, other, groups, n_boot=200, seed=seed) == want
    wide_groups = torch.stack([groups, groups], -1)[:, 1]
    assert compare(losses, other, wide_groups, n_boot=200, seed=seed) == want
    sums, sizes = document_sums(transposed[0], groups)
    assert np.array_equal(sums, document_sums(losses[0].clone(), groups)[0]) and sizes.sum() == losses.shape[1]


# formula helpers: finite and well-formed on valid input

@SETTINGS
@given(st.lists(st.floats(0.0, 1.0), min_size=0, max_size=8))
def test_holm_stays_in_zero_one_and_never_lowers_a_p_value(p):
    adjusted = holm(p)
    assert len(adjusted) == len(p) and all(0.0 <= a <= 1.0 and a >= v for a, v in zip(adjusted, p))
    order = np.argsort(p, kind="stable")
    assert all(adjusted[i] <= adjusted[j] for i, j in zip(order, order[1:]))


@SETTINGS
@given(st.floats(-700.0, 700.0))
def test_percent_is_finite_above_minus_100_and_increasing(delta):
    value = percent(delta)
    assert math.isfinite(value) and value >= -100.0
    assert percent(delta + 1.0) >= value if delta < 699.0 else True


@SETTINGS
@given(st.floats(0.0, 1e6), st.floats(1e-300, 1e6, exclude_min=False))
def test_below_text_always_gives_a_text(value, bound):
    text = below_text(value, bound)
    assert isinstance(text, str) and text and ("<" in text) == (value < bound)


@SETTINGS
@given(st.lists(FINITE, min_size=2, max_size=10))
def test_seed_spread_interval_holds_the_mean(values):
    s = seed_spread(values)
    assert all(math.isfinite(s[k]) for k in ("mean", "sd", "ci_low", "ci_high"))
    assert s["ci_low"] <= s["mean"] <= s["ci_high"] and s["n"] == len(values) and s["sd"] >= 0


@SETTINGS
@given(st.lists(st.tuples(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3)), min_size=2, max_size=10))
def test_paired_ratio_is_positive_and_inverts_when_swapped(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    r, swapped = paired_ratio(a, b), paired_ratio(b, a)
    assert 0 < r["ci_low"] <= r["ratio"] * (1 + 1e-12) and r["ratio"] <= r["ci_high"] * (1 + 1e-12)
    assert r["ratio"] * swapped["ratio"] == pytest.approx(1.0)


# writers: a refused call leaves the file exactly as it was

def _comparisons(path, bad: str):
    results = {"a": RES, "b": {**RES, **{"nan": {"delta_log_ppl": math.nan}, "seeds": {"n_seeds": "3"},
                                        "docs": {"n_documents": 2.5}, "huge": {"ci_high": 800.0}}[bad]}}
    return record_comparisons(results, path=path)


REFUSED = {                                   # writer -> calls that must be refused, each given the file's path
    "atomic_write": [lambda p: atomic_write(p, [b"new", "text"]), lambda p: atomic_write(p, b"new"),
                     lambda p: atomic_write(p, (c for c in (b"new", "text")))],           # a generator's bad chunk
    "atomic_write_json": [lambda p: atomic_write_json(p, {"a": math.nan}), lambda p: atomic_write_json(p, {1j: 1}),
                          lambda p: atomic_write_json(p, {"a": torch.ones(1)})],
    "record": [lambda p: record("new", math.nan, path=p), lambda p: record("", 1, path=p),
               lambda p: record("new", [1, {"a": 1}], path=p)],
    "record_comparisons": [lambda p: _comparisons(p, "nan"), lambda p: _comparisons(p, "seeds"),
                           lambda p: _comparisons(p, "docs"), lambda p: _comparisons(p, "huge"),
                           lambda p: record_comparisons({"a": RES, 5: RES}, path=p),
                           lambda p: record_comparisons({"a": RES}, unit_name=None, path=p)],
    "record_comparison": [lambda p: record_comparison("new", {**RES, "n_documents": 2.5}, path=p),
                          lambda p: record_comparison("new", {**RES, "ci_low": math.nan}, path=p),
                          lambda p: record_comparison("new", RES, margin=0.0, path=p)],
    "record_spread": [lambda p: record_spread("new", [1.0, 2.0], unit=None, path=p),
                      lambda p: record_spread("new", [1e308, -1e308, 1e308], path=p),
                      lambda p: record_spread("new", [1.0, 2.0], margin=-1.0, path=p)],
}


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([(w, i) for w, calls in REFUSED.items() for i in range(len(calls))]),
       st.dictionaries(NAMES, st.one_of(st.integers(), FINITE, st.text(max_size=5)), min_size=1, max_size=4))
def test_a_refused_write_leaves_the_file_byte_equal(tmp_path_factory, case, metrics):
    writer, index = case
    path = tmp_path_factory.mktemp("w") / "m.json"
    if writer == "atomic_write":
        atomic_write(path, [json.dumps(metrics).encode()])
    elif writer == "atomic_write_json":
        atomic_write_json(path, metrics)
    else:
        for name, value in metrics.items():
            record(name, value, path=path)
    before = path.read_bytes()
    with pytest.raises((TypeError, ValueError)):
        REFUSED[writer][index](path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]                   # no temporary file left


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 3), st.sampled_from(["short", "2-D", "list", "nan"]))
def test_a_refused_add_seed_leaves_the_record_as_it_was(earlier_seeds, bad):
    groups, experiments = torch.arange(12) // 4, {}
    for seed in range(earlier_seeds):
        add_seed(experiments, {"exp": ({"a": torch.full((12,), 1.0 + seed), "b": torch.ones(12)}, groups)})
    before = copy.deepcopy(experiments)
    wrong = {"short": torch.ones(6), "2-D": torch.ones(1, 12), "list": [1.0] * 12,
             "nan": torch.full((12,), math.nan)}[bad]
    with pytest.raises((TypeError, ValueError)):      # "exp" is fine, and so is run "c"; run "d" is refused
        add_seed(experiments, {"exp": ({"a": torch.ones(12), "b": torch.ones(12)}, groups),
                               "other": ({"c": torch.ones(12), "d": wrong}, groups)})
    assert experiments == before
