"""lab.quant.model (RTN, GPTQ, AWQ on a whole tiny GPT) against reconstruction errors computed from the
activations themselves (captured with hooks on an unquantized copy of the model) and the unchanged model's logits."""

from __future__ import annotations

import copy

import pytest
import torch

from lab.layerwise import LINEARS
from lab.models import GPT
from lab.quant import dequantize, quantize_model, rtn_quantize_model
from lab.quant.scaling import SCALE_GROUPS
from tests.quant.test_gptq import _error, _gen
from tests.tiny_models import tiny_gpt

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
