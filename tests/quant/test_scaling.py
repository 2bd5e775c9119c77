"""lab.quant.scaling (AWQ scale search, SmoothQuant, scale folding) against RTN on the same grid, the SmoothQuant
formula s_j = max|X_j|^α / max|W_j|^(1−α) evaluated by hand, and the unchanged model's logits."""

from __future__ import annotations

import copy

import pytest
import torch

from lab.layerwise import InputStats
from lab.models import GPT
from lab.quant import (activation_abs_max, awq_scale_search, dequantize, plant_outliers, rtn_quantize, smoothing_factors,
                       smoothquant)
from lab.quant.scaling import SCALE_GROUPS, fold_scales
from tests.quant.test_gptq import W0, _error, _gen
from tests.quant.test_model import CALIB, _captured_inputs, _linears
from tests.tiny_models import tiny_gpt

# ---------------------------------------------------------------------------------------------
# AWQ scale search
# ---------------------------------------------------------------------------------------------

def _salient_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """X (N, d) with a few salient channels (10-30x larger), as AWQ assumes."""
    g = _gen(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X[:, torch.randperm(d, generator=g)[:3]] *= torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    return X


def _stats(X: torch.Tensor) -> InputStats:
    stats = InputStats()
    stats(None, (X,), None)
    return stats


def test_input_stats_closed_forms():
    X = _salient_inputs(50, 12, 3)
    stats = InputStats()
    stats(None, (X[:20].reshape(4, 5, 12),), None)
    stats(None, (X[20:],), None)
    torch.testing.assert_close(stats.gram, X.T @ X)
    assert stats.n_tokens == 50
    torch.testing.assert_close(stats.abs_mean, X.abs().mean(0).float())
    assert torch.equal(stats.abs_max, X.abs().amax(0).float())


@pytest.mark.parametrize("group_size", [None, 16])
def test_awq_search_at_alpha_zero_is_rtn_and_best_is_no_worse(group_size):
    X = _salient_inputs(200, 32, 4)
    weights = [torch.randn(12, 32, generator=_gen(5)), torch.randn(20, 32, generator=_gen(6))]

    def rtn(w: torch.Tensor) -> torch.Tensor:
        return dequantize(rtn_quantize(w, 3, group_size))

    s, alpha, errors = awq_scale_search(weights, _stats(X), rtn, n_grid=10)
    assert len(errors) == 10
    rtn_error = sum(_error(w, rtn(w), X.T) for w in weights)
    assert errors[0] == pytest.approx(rtn_error, rel=1e-9)
    best = min(range(10), key=errors.__getitem__)
    assert alpha == best / 10 and min(errors) <= errors[0]
    searched = sum(_error(w, rtn(w * s[None, :]) / s[None, :], X.T) for w in weights)
    assert searched == pytest.approx(errors[best], rel=1e-9)
    assert min(errors) < 0.9 * errors[0]                      # salient channels: scaling helps clearly
    # s ∝ mean|X_j|^α, normalised so that max(s)·min(s) = 1
    raw = X.abs().mean(0).float().pow(alpha)
    torch.testing.assert_close(s, raw / (raw.max() * raw.min()).sqrt())
    assert (s.max() * s.min()).item() == pytest.approx(1.0, rel=1e-5)


def test_awq_search_rejects_bad_grid():
    with pytest.raises(ValueError, match=r"n_grid=0 is out of range; allowed: \[1, inf\)"):
        awq_scale_search([W0], _stats(torch.randn(5, 8)), lambda w: w, n_grid=0)


# ---------------------------------------------------------------------------------------------
# SmoothQuant and folding
# ---------------------------------------------------------------------------------------------

def _outlier_gpt() -> GPT:
    """A tiny GPT whose norm outputs have a few outlier channels (as trained LLMs do)."""
    model = tiny_gpt(seed=3)
    with torch.no_grad():
        for block in model.layers:
            block.attn_norm.weight[[2, 9]] = 25.0
            block.mlp_norm.weight[[5]] = -18.0
    return model


def test_smoothing_factors_formula():
    a = torch.tensor([4.0, 1.0, 0.0, 9.0])
    w1, w2 = torch.tensor([[1.0, -2.0, 0.5, 0.0]]), torch.tensor([[-3.0, 0.5, 0.25, 0.0]])
    s = smoothing_factors(a, [w1, w2], 0.5)
    w_max = torch.tensor([3.0, 2.0, 0.5, 1e-5])
    torch.testing.assert_close(s, torch.tensor([4.0, 1.0, 1e-5, 9.0]).sqrt() / w_max.sqrt())
    torch.testing.assert_close(smoothing_factors(a, [w1], 1.0), torch.tensor([4.0, 1.0, 1e-5, 9.0]))
    torch.testing.assert_close(smoothing_factors(a, [w1], 0.0), 1 / torch.tensor([1.0, 2.0, 0.5, 1e-5]))


@pytest.mark.parametrize("alpha", [0.5, 0.8])
@torch.no_grad()
def test_smoothquant_keeps_logits_and_moves_maxima_as_the_formula_says(alpha):
    model = _outlier_gpt()
    ref = model(CALIB)
    before = _captured_inputs(model, CALIB)
    act_stats = activation_abs_max(model, lambda: model(CALIB))
    w_before = {name: module.weight.detach().clone() for name, module in _linears(model)}
    factors = smoothquant(model, act_stats, alpha)
    torch.testing.assert_close(model(CALIB), ref, rtol=1e-4, atol=1e-5)
    after = _captured_inputs(model, CALIB)
    assert set(factors) == {f"layers.{i}.{p}" for i in range(2) for p in ("attn_norm", "mlp_norm")}
    for i in range(2):
        for producer, linears in SCALE_GROUPS[:2]:
            names = [f"layers.{i}.{n}" for n in linears]
            a = before[names[0]].abs().amax(0)                                 # max_t |X_j|
            w = torch.stack([w_before[n].abs().amax(0) for n in names]).amax(0)  # max over the group's rows
            s = a.pow(alpha) / w.pow(1 - alpha)
            torch.testing.assert_close(factors[f"layers.{i}.{producer}"], s, rtol=1e-5, atol=0)
            new_a = after[names[0]].abs().amax(0)
            new_w = torch.stack([dict(_linears(model))[n].weight.abs().amax(0) for n in names]).amax(0)
            torch.testing.assert_close(new_a, a / s, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(new_w, w * s, rtol=1e-5, atol=0)
            # a/s = (a·w)^(1−α) and w·s = (a·w)^α: the ranges meet at α = 0.5
            torch.testing.assert_close(new_a, (a * w).pow(1 - alpha), rtol=1e-4, atol=1e-6)
            if alpha == 0.5:
                torch.testing.assert_close(new_a, new_w, rtol=1e-4, atol=1e-6)
            assert new_a.max() / new_a.median() < a.max() / a.median()       # the outliers are flattened
    # the down_proj group is not smoothed
    assert torch.equal(model.layers[0].mlp.down_proj.weight, w_before["layers.0.mlp.down_proj"])


@torch.no_grad()
def test_folding_random_scales_into_every_group_keeps_logits():
    model = tiny_gpt(seed=4)
    ref = model(CALIB)
    g = _gen(8)
    for block in model.layers:
        for producer, linears in SCALE_GROUPS:
            width = block.get_submodule(linears[0]).in_features
            fold_scales(block, producer, linears, torch.exp(torch.randn(width, generator=g)))
    torch.testing.assert_close(model(CALIB), ref, rtol=1e-4, atol=1e-5)


def test_fold_scales_by_hand():
    model = tiny_gpt(seed=5)
    block = model.layers[0]
    up, down = block.mlp.up_proj.weight.detach().clone(), block.mlp.down_proj.weight.detach().clone()
    s = torch.arange(1, 49, dtype=torch.float32) / 10
    fold_scales(block, "mlp.up_proj", ("mlp.down_proj",), s)
    torch.testing.assert_close(block.mlp.up_proj.weight, up / s[:, None])
    torch.testing.assert_close(block.mlp.down_proj.weight, down * s[None, :])


@pytest.mark.parametrize("s, match", [
    (torch.ones(32, 1), r"s must be a 1-D tensor of positive finite scales"),
    (torch.zeros(32), r"positive finite"),
    (-torch.ones(32), r"positive finite"),
    (torch.full((32,), float("nan")), r"positive finite"),
    (torch.full((32,), float("inf")), r"positive finite"),
    ([1.0] * 32, r"s must be a 1-D tensor"),
    (torch.ones(31), r"s has 31 entries but attn_norm has 32 output channels"),
])
def test_fold_scales_bad_input(s, match):
    block = tiny_gpt().layers[0]
    before = copy.deepcopy(block.state_dict())
    with pytest.raises(ValueError, match=match):
        fold_scales(block, "attn_norm", ("attn.q_proj", "attn.k_proj", "attn.v_proj"), s)
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())


def test_smoothquant_bad_input():
    model = tiny_gpt()
    stats = activation_abs_max(model, lambda: model(CALIB))
    with pytest.raises(ValueError, match=r"alpha=1\.5 is out of range; allowed: a finite number in \[0\.0, 1\.0\]"):
        smoothquant(model, stats, 1.5)
    with pytest.raises(ValueError, match=r"alpha=-0\.1"):
        smoothing_factors(torch.ones(4), [torch.ones(2, 4)], -0.1)
    with pytest.raises(ValueError, match=r"act_stats has no entry 'layers\.0\.attn\.q_proj'"):
        smoothquant(model, {}, 0.5)


# ---------------------------------------------------------------------------------------------
# planted outliers
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_planted_outliers_preserve_the_function_and_enlarge_their_channels():
    """α = 50 on 2 channels per norm: the logits move only by rounding; the planted channels of the inputs of
    q_proj and gate_proj are about 50× their unplanted values, the others unchanged; the draw is the seed's."""
    model = tiny_gpt()
    planted_model = copy.deepcopy(model)
    before = activation_abs_max(model, lambda: model(CALIB))
    channels = plant_outliers(planted_model, 50.0, 2, seed=3)
    torch.testing.assert_close(planted_model(CALIB), model(CALIB), rtol=1e-4, atol=1e-4)
    after = activation_abs_max(planted_model, lambda: planted_model(CALIB))
    assert sorted(channels) == [f"layers.{i}.{n}" for i in range(len(model.layers)) for n in ("attn_norm", "mlp_norm")]
    for i in range(len(model.layers)):
        for norm, linear in (("attn_norm", "attn.q_proj"), ("mlp_norm", "mlp.gate_proj")):
            c = channels[f"layers.{i}.{norm}"]
            assert c.shape == (2,) and c.unique().numel() == 2
            key = f"layers.{i}.{linear}"
            others = torch.ones_like(before[key], dtype=torch.bool)
            others[c] = False
            torch.testing.assert_close(after[key][c], 50.0 * before[key][c], rtol=1e-3, atol=0)
            torch.testing.assert_close(after[key][others], before[key][others], rtol=1e-4, atol=1e-6)
    again = plant_outliers(copy.deepcopy(model), 50.0, 2, seed=3)
    assert all(torch.equal(again[k], channels[k]) for k in channels)
