"""Properties of `lab.quant` on any input hypothesis draws: strided and transposed views give the result of the
contiguous tensor; bools, fractions and non-positive sizes are refused naming the argument; the grid formulas
give finite positive scales and in-range zero points for every valid range and refuse the invalid ones."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lab.layerwise import InputStats
from lab.quant import (ChannelAbsMaxObserver, Int4Linear, MSEObserver, PercentileObserver, W8A8Linear, awq_scale_search,
                       dequantize, fake_quantize, fake_quantize_with, gptq_quantize, pack_int4, pack_int4_v2, qparams,
                       quantize, quantize_model, rtn_quantize, smoothing_factors, unpack_int4, unpack_int4_v2)
from tests.properties import SEEDS, VIEWS, randn, view
from tests.tiny_models import tiny_gpt

SETTINGS = settings(max_examples=30)
NOT_A_SIZE = st.one_of(st.booleans(), st.integers(max_value=0), st.floats(allow_nan=True))   # 4.0 is no int either




def _assert_same_qt(a, b) -> None:
    assert torch.equal(a.qdata, b.qdata) and torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point)


# --- views: strided and transposed inputs give the contiguous result ---------------------------------------

@SETTINGS
@given(seed=SEEDS, layout=VIEWS, bits=st.integers(2, 8), symmetric=st.booleans(),
       granularity=st.sampled_from(["tensor", "channel", "group"]), axis=st.sampled_from([0, 1, -1]))
def test_quantize_of_a_view_is_that_of_the_contiguous_tensor(seed, layout, bits, symmetric, granularity, axis):
    x = randn(6, 8, seed=seed)
    v = view(x, layout)
    assert not v.is_contiguous()
    args = (bits, symmetric, granularity, 2, axis)
    _assert_same_qt(quantize(v, *args), quantize(x, *args))
    assert torch.equal(fake_quantize(v, *args), fake_quantize(x, *args))


@SETTINGS
@given(seed=SEEDS, layout=VIEWS, group_size=st.sampled_from([None, 4, 8]), actorder=st.booleans())
def test_rtn_and_gptq_of_views_are_those_of_the_contiguous_weight(seed, layout, group_size, actorder):
    W = randn(6, 8, seed=seed)
    X = randn(8, 20, seed=seed + 1)
    H = 2 * X @ X.T / 20
    _assert_same_qt(rtn_quantize(view(W, layout), 4, group_size), rtn_quantize(W, 4, group_size))
    _assert_same_qt(gptq_quantize(view(W, layout), view(H, layout), 4, group_size, actorder, blocksize=4),
                    gptq_quantize(W, H, 4, group_size, actorder, blocksize=4))


@functools.cache
def _layers() -> tuple[Int4Linear, W8A8Linear]:
    lin = nn.Linear(64, 12)
    return Int4Linear(rtn_quantize(lin.weight, 4, 32), lin.bias), W8A8Linear(lin)


@SETTINGS
@given(seed=SEEDS, layout=VIEWS, rows=st.integers(1, 5), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_quantized_linears_read_views_as_their_values(seed, layout, rows, dtype):
    x = randn(rows, 64, seed=seed).to(dtype)
    for layer in _layers():
        assert torch.equal(layer(view(x, layout)), layer(x))
        assert torch.equal(layer(view(x, layout)[None]), layer(x[None]))


@SETTINGS
@given(seed=SEEDS, layout=VIEWS)
def test_scaling_and_observers_read_views_as_their_values(seed, layout):
    W, x = randn(6, 8, seed=seed), randn(5, 8, seed=seed + 1)
    act = x.abs().amax(0)
    assert torch.equal(smoothing_factors(act, [view(W, layout)], 0.5), smoothing_factors(act, [W], 0.5))
    observers = ChannelAbsMaxObserver(), ChannelAbsMaxObserver()
    observers[0].update(view(x, layout))
    observers[1].update(x)
    assert torch.equal(observers[0].abs_max, observers[1].abs_max)
    stats = InputStats()
    stats(None, (x,), None)
    def rtn(w):
        return dequantize(rtn_quantize(w, 3))

    assert awq_scale_search([view(W, layout)], stats, rtn, 3)[2] == awq_scale_search([W], stats, rtn, 3)[2]


@SETTINGS
@given(seed=SEEDS, layout=VIEWS, group_size=st.sampled_from([4, 8, 16]))
def test_packing_reads_strided_codes_as_their_values(seed, layout, group_size):
    q = torch.randint(0, 16, (4, 16), generator=torch.Generator().manual_seed(seed))
    v = view(q, layout)
    assert torch.equal(pack_int4(v, group_size), pack_int4(q, group_size))
    assert torch.equal(unpack_int4(pack_int4(v, group_size), group_size), q.to(torch.uint8))
    assert torch.equal(pack_int4_v2(v, group_size), pack_int4_v2(q, group_size))
    assert torch.equal(unpack_int4_v2(pack_int4_v2(v, group_size), group_size), q.to(torch.uint8))


# --- sizes: a bool, a fraction or a non-positive number is refused, naming the argument ------------------------

@functools.cache
def _model():
    return tiny_gpt()


W8 = randn(8, 16, seed=0)
SIZES = {
    "bits": lambda v: quantize(W8, v),
    "group_size": lambda v: rtn_quantize(W8, 4, v),
    "blocksize": lambda v: gptq_quantize(W8, torch.eye(16), 4, blocksize=v),
    "n_grid": lambda v: MSEObserver(n_grid=v),
    "max_samples": lambda v: PercentileObserver(max_samples=v),
    "awq_grid": lambda v: quantize_model(_model(), "awq", 4, None, torch.zeros(1, 4, dtype=torch.long), awq_grid=v),
    "batch_size": lambda v: quantize_model(_model(), "rtn", 4, batch_size=v, progress=False),
}


@pytest.mark.parametrize("name", sorted(SIZES))
@settings(max_examples=15, deadline=None)
@given(value=NOT_A_SIZE)
def test_a_size_that_is_no_positive_int_is_refused(name, value):
    with pytest.raises((TypeError, ValueError), match=name):
        SIZES[name](value)


@SETTINGS
@given(value=st.one_of(st.booleans(), st.integers(max_value=-1), st.floats(allow_nan=True), st.text(max_size=2)))
def test_a_seed_that_is_no_non_negative_int_is_refused(value):
    with pytest.raises((TypeError, ValueError), match="seed"):
        MSEObserver(seed=value)


@SETTINGS
@given(value=st.one_of(st.floats(max_value=0.0), st.sampled_from([float("nan"), float("inf")]), st.booleans()))
def test_a_static_activation_scale_must_be_positive_and_finite(value):
    with pytest.raises((TypeError, ValueError), match="act_scale"):
        W8A8Linear(nn.Linear(4, 2), "tensor", torch.tensor(value) if isinstance(value, float) else value)


# --- the grid formulas ----------------------------------------------------------------------------------------

FINITE = st.floats(-1e4, 1e4, allow_subnormal=False)


@SETTINGS
@given(a=FINITE, b=FINITE, bits=st.integers(2, 8), symmetric=st.booleans())
def test_qparams_of_a_valid_range_are_a_grid_that_keeps_zero_exact(a, b, bits, symmetric):
    lo, hi = min(a, b), max(a, b)
    scale, zero_point = qparams(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    assert torch.isfinite(scale) and scale > 0 and qmin <= zero_point <= qmax
    assert fake_quantize_with(torch.zeros(3), scale, zero_point, qmin, qmax).eq(0).all()
    scale_of_floats, zero_point_of_floats = qparams(lo, hi, bits, symmetric)
    assert torch.equal(scale_of_floats, scale) and torch.equal(zero_point_of_floats, zero_point)


@SETTINGS
@given(a=FINITE, b=FINITE, bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_qparams_refuses_a_reversed_or_non_finite_range(a, b, bad):
    if a != b:
        with pytest.raises(ValueError, match="lo <= hi"):
            qparams(max(a, b), min(a, b), 4, False)
    with pytest.raises(ValueError, match="hi"):
        qparams(a, bad, 4, False)


@SETTINGS
@given(seed=SEEDS, scale=st.floats(1e-3, 10.0), zero_point=st.integers(0, 15))
def test_fake_quantize_with_is_torch_fake_quantize(seed, scale, zero_point):
    x = randn(5, 3, seed=seed) * 20
    scale, zero_point = torch.tensor(scale), torch.tensor(zero_point, dtype=torch.int32)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 15)
    assert torch.equal(fake_quantize_with(x, scale, zero_point, 0, 15), ref)
    assert torch.equal(fake_quantize_with(x.T, scale, zero_point, 0, 15), ref.T)


@SETTINGS
@given(seed=SEEDS, percentile=st.floats(50.0, 100.0, exclude_min=True), n=st.integers(1, 50))
def test_observed_ranges_are_ordered_and_inside_the_values_seen(seed, percentile, n):
    x = randn(n, seed=seed)
    percentiles, mse = PercentileObserver(percentile), MSEObserver(n_grid=5)
    for observer in (percentiles, mse):
        observer.update(x)
    lo, hi = percentiles.range(4)
    assert x.min() - 1e-6 <= lo <= hi <= x.max() + 1e-6
    lo, hi = mse.range(4)                                   # c·(min, max) for one c in [min_ratio, 1]
    assert lo <= hi and abs(lo) <= abs(x.min()) and abs(hi) <= abs(x.max())
