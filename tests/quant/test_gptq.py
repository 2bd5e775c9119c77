"""lab.quant.gptq, lab.quant.model and lab.quant.scaling against independent references.

References: a naive one-column-at-a-time GPTQ written here from the explicit inverse-Hessian OBQ update
(no Cholesky, no lazy blocks), round-to-nearest on the same grid, reconstruction errors computed from the
activations themselves (captured with hooks on an unquantized copy of the model), the SmoothQuant
formula s_j = max|X_j|^α / max|W_j|^(1−α) evaluated by hand, and the unchanged model's logits.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lab.layerwise import LINEARS, InputStats
from lab.models import GPT
from lab.quant import (
    activation_abs_max,
    awq_scale_search,
    dequantize,
    gptq_quantize,
    quantize_model,
    rtn_quantize,
    rtn_quantize_model,
    smoothing_factors,
    smoothquant,
)
from lab.quant.scaling import SCALE_GROUPS, fold_scales
from tests.tiny_models import tiny_gpt


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _calibration(d: int, n_samples: int, seed: int) -> torch.Tensor:
    """LLM-like inputs X (d, N): correlated features (a few latent factors plus noise), very different
    scales per feature and a few outlier features."""
    g = _gen(seed)
    latent = torch.randn(d // 4, n_samples, generator=g, dtype=torch.float64)
    mix = torch.randn(d, d // 4, generator=g, dtype=torch.float64)
    X = mix @ latent + 0.3 * torch.randn(d, n_samples, generator=g, dtype=torch.float64)
    scale = torch.exp(torch.randn(d, 1, generator=g, dtype=torch.float64))
    scale[torch.randperm(d, generator=g)[:2]] *= 10.0
    return X * scale


def _hessian(X: torch.Tensor) -> torch.Tensor:
    return 2.0 * X @ X.T / X.shape[1]


def _error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    """‖WX − ŴX‖²_F from the activations X (d, N), float64."""
    return ((W.double() - W_hat.double()) @ X.double()).square().sum().item()


def _row_grid(cols: torch.Tensor, bits: int, symmetric: bool):
    """One min-max grid per row of ``cols`` (rows, n) in float32: (s, z, qmin, qmax)."""
    lo = torch.clamp(cols.amin(1).float(), max=0.0)
    hi = torch.clamp(cols.amax(1).float(), min=0.0)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return torch.maximum(-lo, hi) / qmax, torch.zeros(cols.shape[0]), qmin, qmax
    qmin, qmax = 0, 2 ** bits - 1
    s = (hi - lo) / (qmax - qmin)
    return s, torch.clamp(torch.round(-lo / s), qmin, qmax), qmin, qmax


def naive_gptq(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None, actorder: bool,
               percdamp: float, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ one column at a time with the explicit inverse Hessian of the free columns (OBQ).

    H ← H + λI with λ = percdamp·mean(diag H); Hinv = H⁻¹. For each column j in visiting order (decreasing
    H_jj with ``actorder``): q_j = Q(w_j) on its grid; err = (w_j − q̂_j)/Hinv_jj;
    W ← W − err · Hinv[j, :] (this sets w_j = q̂_j and compensates the free columns); then j leaves the free
    set: Hinv ← Hinv − Hinv[:, j] Hinv[j, :] / Hinv_jj. Grids: per row from the original weights
    (``group_size`` None, or with ``actorder``: static groups), else per group from the current weights when
    the group's first column is reached. Returns (codes int64 (rows, d), final weights float64)."""
    W = W.double().clone()
    W0 = W.clone()
    d = W.shape[1]
    H = H.double() + percdamp * H.diagonal().mean() * torch.eye(d, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    order = torch.argsort(H.diagonal(), descending=True, stable=True).tolist() if actorder else range(d)
    codes = torch.zeros(W.shape, dtype=torch.int64)
    grids = {}
    for j in order:
        G = 0 if group_size is None else j // group_size
        if G not in grids:
            if group_size is None:
                source = W0
            else:
                source = (W0 if actorder else W)[:, G * group_size:(G + 1) * group_size]
            grids[G] = _row_grid(source, bits, symmetric)
        s, z, qmin, qmax = grids[G]
        q = torch.clamp(torch.round(W[:, j].float() * (1.0 / s)) + z, qmin, qmax)
        codes[:, j] = q.long()
        err = (W[:, j] - ((q - z) * s).double()) / Hinv[j, j]
        W -= err[:, None] * Hinv[j][None, :]
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j]) / Hinv[j, j]
    return codes, W


ROWS, D = 8, 32
X_CAL = _calibration(D, 256, 1)
H_CAL = _hessian(X_CAL)
W_CAL = torch.randn(ROWS, D, generator=_gen(2)) / D ** 0.5


# ---------------------------------------------------------------------------------------------
# GPTQ on one layer
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group_size", [None, 8])
@pytest.mark.parametrize("actorder", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_layer_error_below_rtn_on_the_same_grid(bits, group_size, actorder, symmetric):
    qt = gptq_quantize(W_CAL, H_CAL, bits, group_size, actorder=actorder, symmetric=symmetric, blocksize=16)
    rtn = rtn_quantize(W_CAL, bits, group_size, symmetric)
    if group_size is None or actorder:      # the grid is fixed from the original weights: RTN's grid
        assert torch.equal(qt.scale, rtn.scale) and torch.equal(qt.zero_point, rtn.zero_point)
    e_gptq, e_rtn = _error(W_CAL, dequantize(qt), X_CAL), _error(W_CAL, dequantize(rtn), X_CAL)
    assert e_gptq < 0.5 * e_rtn


CONFIGS = [(None, False), (None, True), (8, False), (8, True), (16, False)]


@pytest.mark.parametrize("group_size, actorder", CONFIGS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("percdamp", [0.0, 0.01])
def test_blocked_gptq_equals_naive_column_by_column_gptq(group_size, actorder, symmetric, percdamp):
    """Blocksizes aligned with the groups (multiples or divisors of g): the lazy block updates and the
    Cholesky rows of H⁻¹ must reproduce the explicit OBQ sweep code for code."""
    codes, W_ref = naive_gptq(W_CAL, H_CAL, 3, group_size, actorder, percdamp, symmetric)
    for blocksize in (1, 4, 8, 16, 128):
        qt = gptq_quantize(W_CAL, H_CAL, 3, group_size, actorder, percdamp, blocksize, symmetric)
        assert torch.equal(qt.qdata.long(), codes), blocksize
        torch.testing.assert_close(dequantize(qt).double(), W_ref, rtol=0, atol=1e-9)


# Regression: a group that extends past the current block (j + g > i2, when the blocksize is neither a
# multiple nor a divisor of group_size) must see the lazy update still pending from the block's earlier
# columns before its grid is computed; otherwise the result depends on the blocksize.
@pytest.mark.parametrize("group_size, blocksize", [(8, 5), (8, 12), (16, 12)])
def test_blocked_gptq_equals_naive_gptq_for_misaligned_blocksizes(group_size, blocksize):
    codes, W_ref = naive_gptq(W_CAL, H_CAL, 3, group_size, False, 0.01, False)
    qt = gptq_quantize(W_CAL, H_CAL, 3, group_size, False, 0.01, blocksize)
    differ = int((qt.qdata.long() != codes).sum())
    assert differ == 0, f"{differ} codes differ; group grids computed from stale (not yet updated) columns"
    torch.testing.assert_close(dequantize(qt).double(), W_ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("bits", [2, 3, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, 4])
def test_gptq_codes_lie_on_the_grid_and_dequantize_is_the_weight(bits, symmetric, group_size):
    qt = gptq_quantize(W_CAL, H_CAL, bits, group_size, symmetric=symmetric, blocksize=8)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    assert (qt.qmin, qt.qmax, qt.bits, qt.axis) == (qmin, qmax, bits, 0)
    assert qt.qdata.dtype == torch.int16 and qt.qdata.shape == W_CAL.shape
    assert qt.qdata.min() >= qmin and qt.qdata.max() <= qmax
    if group_size is None:
        assert qt.granularity == "channel" and qt.scale.shape == (ROWS,)
        s, z = qt.scale[:, None], qt.zero_point[:, None]
    else:
        assert qt.granularity == "group" and qt.group_size == 4 and qt.scale.shape == (ROWS, D // 4)
        s, z = qt.scale.repeat_interleave(4, 1), qt.zero_point.repeat_interleave(4, 1)
    assert (qt.scale > 0).all()
    if symmetric:
        assert (qt.zero_point == 0).all()
    assert torch.equal(dequantize(qt), (qt.qdata.float() - z) * s)


def test_gptq_dead_inputs_are_quantized_to_zero():
    X = X_CAL.clone()
    X[[3, 17]] = 0.0
    qt = gptq_quantize(W_CAL, _hessian(X), 4, 8)
    W_hat = dequantize(qt)
    assert (W_hat[:, [3, 17]] == 0).all() and torch.isfinite(W_hat).all()


def test_gptq_accepts_low_precision_weights():
    qt = gptq_quantize(W_CAL.to(torch.bfloat16), H_CAL.float(), 4, 8)
    ref = gptq_quantize(W_CAL.to(torch.bfloat16).float(), H_CAL.float(), 4, 8)
    assert torch.equal(qt.qdata, ref.qdata)


W0, H0 = torch.randn(4, 8), torch.eye(8)


@pytest.mark.parametrize("call, error, match", [
    (lambda: gptq_quantize(W0, H0, 1), ValueError, r"bits=1 .*\[2, 8\]"),
    (lambda: gptq_quantize(W0, H0, 9), ValueError, r"bits=9"),
    (lambda: gptq_quantize(W0, H0, 4, group_size=3), ValueError,
     r"group_size=3 is not allowed; use a divisor of in_features=8"),
    (lambda: gptq_quantize(W0, H0, 4, group_size=0), ValueError, r"group_size=0"),
    (lambda: gptq_quantize(W0, H0, 4, blocksize=0), ValueError, r"blocksize=0"),
    (lambda: gptq_quantize(W0, H0, 4, percdamp=-0.1), ValueError, r"percdamp=-0\.1"),
    (lambda: gptq_quantize(W0, torch.eye(9), 4), ValueError, r"hessian must have shape .*\(8, 8\)"),
    (lambda: gptq_quantize(W0, torch.randn(8, 8) + 10 * torch.eye(8), 4), ValueError, r"symmetric"),
    (lambda: gptq_quantize(W0, 2 * torch.ones(8, 8) - torch.eye(8), 4), ValueError, r"not positive definite"),
    (lambda: gptq_quantize(torch.ones(4, 8, dtype=torch.int32), H0, 4), TypeError,
     r"weight must be a floating-point tensor, got torch\.int32"),
    (lambda: gptq_quantize(torch.randn(8), H0, 4), ValueError, r"weight must have 2 dimensions, got shape \(8,\)"),
    (lambda: gptq_quantize(torch.full((4, 8), float("nan")), H0, 4), ValueError, r"weight contains NaN or infinite"),
    (lambda: gptq_quantize(W0, H0, 4, group_size=4.0), TypeError, r"group_size must be an int, got 4\.0"),
])
def test_gptq_bad_input_raises_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


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
# whole-model quantization on a tiny GPT
# ---------------------------------------------------------------------------------------------

CALIB = torch.randint(0, 61, (6, 16), generator=_gen(7))


def _linears(model: GPT):
    for i, block in enumerate(model.layers):
        for name in LINEARS:
            yield f"layers.{i}.{name}", block.get_submodule(name)


@torch.no_grad()
def _captured_inputs(model: GPT, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input (N, C_in) of every decoder linear while the model runs ``tokens``."""
    inputs, handles = {}, []
    for name, module in _linears(model):
        handles.append(module.register_forward_hook(
            lambda m, args, out, name=name: inputs.__setitem__(name, args[0].reshape(-1, args[0].shape[-1]))))
    model(tokens)
    for h in handles:
        h.remove()
    return inputs


_REPORTS: dict = {}


def _quantized(method: str, bits: int = 3, group_size: int | None = 16, **kwargs) -> tuple[GPT, dict]:
    key = (method, bits, group_size, tuple(sorted(kwargs.items())))
    if key not in _REPORTS:
        model = tiny_gpt()
        _REPORTS[key] = model, quantize_model(model, method, bits, group_size, CALIB, progress=False, **kwargs)
    return _REPORTS[key]


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
@pytest.mark.parametrize("group_size", [None, 16])
def test_quantize_model_sets_weights_to_dequantized_values(method, group_size):
    model, report = _quantized(method, 3, group_size)
    original = tiny_gpt()
    names = {name for name, _ in _linears(model)}
    assert set(report) == names
    for name, module in _linears(model):
        qt = report[name]["qtensor"]
        assert qt.bits == 3 and qt.group_size == group_size
        assert torch.equal(module.weight, dequantize(qt)), name
        assert 0 < report[name]["error"] < 1
        assert ("awq_alpha" in report[name]) == (method == "awq" and not name.endswith("o_proj"))
    before, after = original.state_dict(), model.state_dict()
    for key in after:
        if not any(key.startswith(name) for name in names):
            norm = key.endswith(("attn_norm.weight", "mlp_norm.weight")) and key.startswith("layers.")
            if method != "awq" or not norm:   # awq folds 1/s into the norms; nothing else changes
                assert torch.equal(after[key], before[key]), key


def test_quantize_model_reports_the_true_relative_errors():
    """Layer 0 sees the embeddings in every method; q/k/v of layer 1 see the outputs of the quantized layer 0."""
    model, report = _quantized("rtn")
    first = _captured_inputs(tiny_gpt(), CALIB)
    later = _captured_inputs(model, CALIB)
    original = dict(_linears(tiny_gpt()))
    for name, module in _linears(model):
        X = first[name] if name.startswith("layers.0.") else later.get(name)
        if name.startswith("layers.1.") and not name.endswith(("q_proj", "k_proj", "v_proj")):
            continue
        W = original[name].weight
        ref = _error(W, module.weight, X.T) / _error(W, torch.zeros_like(W), X.T)
        assert report[name]["error"] == pytest.approx(ref, rel=1e-6), name


@pytest.mark.parametrize("group_size", [None, 16])
def test_gptq_and_awq_errors_not_above_rtn(group_size):
    _, rtn = _quantized("rtn", 3, group_size)
    _, gptq = _quantized("gptq", 3, group_size)
    _, gptq_act = _quantized("gptq", 3, group_size, actorder=True)
    _, awq = _quantized("awq", 3, group_size)
    for name in rtn:
        assert gptq[name]["error"] < rtn[name]["error"], name
        assert gptq_act[name]["error"] < rtn[name]["error"], name
    # AWQ minimises the summed absolute error of the linears reading one input; in layer 0 the inputs are the
    # same as RTN's, so per group Σ rel_l · ‖W_l X‖² cannot exceed RTN's (α = 0 is on its search grid)
    inputs = _captured_inputs(tiny_gpt(), CALIB)
    model = dict(_linears(tiny_gpt()))
    for _, linears in SCALE_GROUPS:
        names = [f"layers.0.{n}" for n in linears]
        norms = {n: _error(model[n].weight, torch.zeros_like(model[n].weight), inputs[n].T) for n in names}
        awq_sum = sum(awq[n]["error"] * norms[n] for n in names)
        rtn_sum = sum(rtn[n]["error"] * norms[n] for n in names)
        assert awq_sum <= rtn_sum * (1 + 1e-6), linears
    assert awq["layers.0.attn.o_proj"]["error"] == rtn["layers.0.attn.o_proj"]["error"]


@torch.no_grad()
def test_awq_model_computes_the_folded_function():
    """AWQ folds s into norms / up_proj rows; with its quantized weights mapped back, the model is RTN-like."""
    model, _ = _quantized("awq", 8, 16)
    original = tiny_gpt()
    ref = original(CALIB)
    out = model(CALIB)
    assert (out - ref).norm() / ref.norm() < 0.05


def test_rtn_quantize_model_without_calibration():
    model = tiny_gpt()
    report = rtn_quantize_model(model, 4, 16)
    for name, module in _linears(model):
        W = dict(_linears(tiny_gpt()))[name].weight
        ref = torch.fake_quantize_per_channel_affine(
            W.reshape(-1, 16), *[t.flatten() for t in (report[name]["qtensor"].scale,
                                                       report[name]["qtensor"].zero_point)], 0, 0, 15)
        assert torch.equal(module.weight, ref.reshape(W.shape)) and report[name]["error"] is None


@pytest.mark.parametrize("call, match", [
    (lambda m: quantize_model(m, "hqq", 4, None, CALIB, progress=False),
     r"method='hqq' is not allowed; use one of .*'rtn'"),
    (lambda m: quantize_model(m, "rtn", 1, None, progress=False), r"bits=1"),
    (lambda m: quantize_model(m, "gptq", 9, None, CALIB, progress=False), r"bits=9"),
    (lambda m: quantize_model(m, "rtn", 4, 7, progress=False),
     r"group_size=7 is not allowed; use a divisor of gcd\(32, 48\)=16"),
    (lambda m: quantize_model(m, "rtn", 4, 0, progress=False), r"group_size=0"),
    (lambda m: quantize_model(m, "gptq", 4, None, None, progress=False), r"method='gptq' needs calib_tokens"),
    (lambda m: quantize_model(m, "awq", 4, None, None, progress=False), r"method='awq' needs calib_tokens"),
    (lambda m: quantize_model(m, "gptq", 4, None, CALIB.float(), progress=False), r"calib_tokens must be an int64"),
    (lambda m: quantize_model(m, "gptq", 4, None, CALIB[0], progress=False), r"calib_tokens must be an int64"),
    (lambda m: quantize_model(m, "gptq", 4, None, torch.zeros(2, 17, dtype=torch.int64), progress=False),
     r"seq_len=17 exceeds context_length=16"),
    (lambda m: quantize_model(m, "rtn", 4, None, torch.zeros(0, 4, dtype=torch.int64), progress=False),
     r"calib_tokens must not be empty"),
])
def test_quantize_model_bad_args(call, match):
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        call(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # nothing changed


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
