"""Properties of lab.prune's entry checks: views give the contiguous result, bad sizes are refused by name,
formula helpers return finite non-negative values on valid input."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.prune import (forward_flops, keep_top_fraction, layer_hessian, magnitude_mask, nm_mask, obs_saliency,
                       obs_update, reconstruction_error, sparsegpt_prune, speedup_against_bound, structured_prune,
                       wanda_mask)
from tests.properties import NOT_INTS, SEEDS, VIEWS, randn, view
from tests.tiny_models import tiny_gpt

FAST = settings(max_examples=25)


@functools.cache
def _model():
    return tiny_gpt()




@FAST
@given(seed=SEEDS, rows=st.integers(2, 5), groups=st.integers(1, 3), sparsity=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
       how=VIEWS)
def test_masks_of_views_equal_those_of_the_contiguous_weight(seed, rows, groups, sparsity, how):
    W = randn(rows, 4 * groups, seed=seed, dtype=torch.float64)
    V = view(W, how)
    assert not V.is_contiguous() and torch.equal(V, W)
    norms = randn(4 * groups, seed=seed + 1, dtype=torch.float64).abs()
    assert torch.equal(magnitude_mask(V, sparsity), magnitude_mask(W, sparsity))
    assert torch.equal(keep_top_fraction(V, sparsity, per_row=True), keep_top_fraction(W, sparsity, per_row=True))
    assert torch.equal(nm_mask(V, 2, 4), nm_mask(W, 2, 4))
    assert torch.equal(wanda_mask(V, norms, sparsity), wanda_mask(W, norms, sparsity))
    strided_norms = torch.stack([norms, norms], dim=1)[:, 0]
    assert not strided_norms.is_contiguous()
    assert torch.equal(wanda_mask(V, strided_norms, sparsity), wanda_mask(W, norms, sparsity))


@FAST
@given(seed=SEEDS, rows=st.integers(1, 4), d=st.sampled_from([4, 8]), n_samples=st.integers(8, 24),
       how=VIEWS)
def test_obs_and_sparsegpt_of_views_equal_the_contiguous_result(seed, rows, d, n_samples, how):
    W, X = randn(rows, d, seed=seed, dtype=torch.float64), randn(d, n_samples, seed=seed + 1, dtype=torch.float64)
    H = layer_hessian(X)
    torch.testing.assert_close(layer_hessian(view(X, how)), H, rtol=1e-12, atol=1e-12)
    W_hat, mask = sparsegpt_prune(W, H, 0.5, blocksize=4)
    W_hat_v, mask_v = sparsegpt_prune(view(W, how), view(H, how), 0.5, blocksize=4)
    assert torch.equal(mask_v, mask)
    torch.testing.assert_close(W_hat_v, W_hat, rtol=1e-12, atol=1e-12)
    error = reconstruction_error(W, W_hat, X)
    assert error >= 0 and error == pytest.approx(reconstruction_error(view(W, how), W_hat, view(X, how)))
    H_inv = torch.linalg.inv(H + 0.01 * torch.eye(d, dtype=H.dtype))
    saliency = obs_saliency(W, H_inv)
    assert saliency.shape == W.shape and bool((saliency >= 0).all())
    torch.testing.assert_close(obs_saliency(view(W, how), view(H_inv, how)), saliency)
    delta = obs_update(W[0], H_inv, d - 1)
    assert delta[d - 1] == pytest.approx(-W[0, d - 1].item())


@FAST
@given(value=NOT_INTS)
def test_sizes_that_are_not_ints_are_refused_by_name(value):
    W, H = randn(2, 8, seed=0, dtype=torch.float64), torch.eye(8, dtype=torch.float64)
    for name, call in [("n", lambda: nm_mask(W, value, 4)), ("m", lambda: nm_mask(W, 2, value)),
                       ("blocksize", lambda: sparsegpt_prune(W, H, 0.5, blocksize=value)),
                       ("q", lambda: obs_update(W[0], H, value)), ("seq_len", lambda: forward_flops(_model(), value))]:
        with pytest.raises(TypeError, match=rf"^{name} must be an int, got "):
            call()


@FAST
@given(value=st.integers(-5, 0))
def test_sizes_below_one_are_refused_by_name(value):
    W, H = randn(2, 8, seed=0, dtype=torch.float64), torch.eye(8, dtype=torch.float64)
    for name, call in [("m", lambda: nm_mask(W, 1, value)), ("seq_len", lambda: forward_flops(_model(), value)),
                       ("blocksize", lambda: sparsegpt_prune(W, H, 0.5, blocksize=value))]:
        with pytest.raises(ValueError, match=rf"{name}={value} is (out of range|not allowed)"):
            call()


@FAST
@given(sparsity=st.one_of(st.floats(1.0, 10.0), st.floats(-10.0, -1e-9), st.just(float("nan")), st.just(float("inf"))))
def test_sparsities_outside_the_unit_interval_are_refused(sparsity):
    W = randn(2, 8, seed=0, dtype=torch.float64)
    for call in (lambda: magnitude_mask(W, sparsity), lambda: keep_top_fraction(W, sparsity),
                 lambda: wanda_mask(W, torch.ones(8, dtype=W.dtype), sparsity),
                 lambda: sparsegpt_prune(W, torch.eye(8, dtype=W.dtype), sparsity)):
        with pytest.raises(ValueError, match=r"sparsity=.* is out of range; allowed: a finite number in \[0\.0, 1"):
            call()


@FAST
@given(seq_len=st.integers(1, 64))
def test_forward_flops_is_a_positive_int_that_grows_with_the_sequence(seq_len):
    flops = forward_flops(_model(), seq_len)
    assert isinstance(flops, int) and 0 < flops < forward_flops(_model(), seq_len + 1)


@settings(max_examples=10)
@given(heads=st.sampled_from([[0, 1], [2, 3], [0, 2]]), channels=st.lists(st.integers(0, 47), max_size=6, unique=True))
def test_structured_pruning_never_raises_the_flops(heads, channels):
    model = tiny_gpt()
    before = forward_flops(model, 8)
    structured_prune(model, heads={0: heads}, mlp_channels={1: channels})
    assert 0 < forward_flops(model, 8) < before


@FAST
@given(low=st.floats(0.01, 100.0), width=st.floats(0.0, 10.0), bound=st.floats(0.01, 100.0))
def test_speedup_against_bound_answers_a_verb_for_any_valid_interval(low, width, bound):
    speedup = {"ci_low": low, "ci_high": low + width}
    assert speedup_against_bound(speedup, bound) in {"higher", "lower", "equivalent", "inconclusive"}
    with pytest.raises(ValueError, match=r"speedup\['ci_low'\]=-"):
        speedup_against_bound({"ci_low": -low, "ci_high": low}, bound)
    with pytest.raises(ValueError, match=r"bound=-"):
        speedup_against_bound(speedup, -bound)
