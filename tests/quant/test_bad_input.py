"""The bad-input table of `lab.quant` (see `tests.bad_input`): every public name refuses the realistic mistakes
with a ValueError or TypeError that names the argument."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from lab.formats.nf4 import NF4Tensor, quantize_nf4
from lab.layerwise import InputStats
from lab.quant import (ChannelAbsMaxObserver, Int4Linear, Int8DecomposedLinear, MinMaxObserver, MSEObserver, NF4Linear,
                       PercentileObserver, QuantizedTensor, W8A8Linear, activation_abs_max, awq_scale_search,
                       dequantize, fake_quantize, fake_quantize_with, finish_qat, gptq_quantize,
                       group_smoothing_factors, int4_model, int8_decomposed_model, nf4_model, outlier_columns,
                       pack_int4, pack_int4_v2, pack_quantized_weight, plant_outliers, prepare_qat, qparams, quantize,
                       quantize_model, quantize_with, rtn_quantize, rtn_quantize_model, size_comparisons,
                       smoothing_factors, smoothquant, unpack_int4, unpack_int4_v2, w8a8_quantize_model, weight_name,
                       weight_runs)
from tests.bad_input import NOT_GPT, Bad, T, V, merged
from tests.quant.bad_fp8 import FP8
from tests.quant.bad_mx import MX
from tests.tiny_models import tiny_gpt

W = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
W64 = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
H = torch.eye(16)
NAN = torch.tensor([1.0, float("nan")])
CODES = torch.randint(0, 16, (4, 16), generator=torch.Generator().manual_seed(2))
IDS = torch.randint(0, 61, (2, 8), generator=torch.Generator().manual_seed(3))
Q_PROJ = "layers.0.attn.q_proj"
SUMS, SIZES = torch.ones(3, 4).numpy(), torch.full((4,), 8).numpy()       # a calibration record's sums


@functools.cache
def _qt() -> QuantizedTensor:
    return rtn_quantize(W64, 4, 32)


@functools.cache
def _nf4() -> NF4Tensor:
    return quantize_nf4(W64)


def _swapped() -> nn.Module:
    """A tiny GPT whose first decoder linear is no longer an nn.Linear (a quantized or replaced layer)."""
    model = tiny_gpt()
    model.layers[0].attn.q_proj = nn.Identity()
    return model


def _qt_with(**fields) -> QuantizedTensor:
    qt = quantize(W, 4, granularity="channel")
    return QuantizedTensor(**{**qt.__dict__, **fields})


def _stats(x: torch.Tensor | None = None) -> InputStats:
    stats = InputStats()
    if x is not None:
        stats(None, (x,), None)
    return stats


def _observed(observer, x: torch.Tensor = W):
    observer.update(x)
    return observer


def _linear(in_features: int = 16, out_features: int = 8) -> nn.Linear:
    return nn.Linear(in_features, out_features)


CASES: dict[str, list[Bad]] = merged(MX, FP8, {  # tests.quant.bad_mx, tests.quant.bad_fp8
    "QuantizedTensor": [
        Bad(lambda: _qt_with(qdata=W), TypeError, r"qdata must have a dtype"),
        Bad(lambda: _qt_with(qdata=[1, 2]), TypeError, r"qdata must be a torch.Tensor"),
        Bad(lambda: _qt_with(granularity="row"), ValueError, r"granularity='row'"),
        Bad(lambda: _qt_with(qmax=255), ValueError, r"qmax=255"),
        Bad(lambda: _qt_with(bits=True), TypeError, r"bits must be an int"),
        Bad(lambda: _qt_with(scale=torch.ones(3)), ValueError, r"scale and zero_point must have shape \(8,\)"),
        Bad(lambda: _qt_with(group_size=4), ValueError, r"group_size=4"),
        Bad(lambda: _qt_with(granularity="group", group_size=5), ValueError, r"group_size=5"),
    ],
    "dequantize": [Bad(lambda: dequantize(W), TypeError, r"qt must be a QuantizedTensor")],
    "fake_quantize": [
        Bad(lambda: fake_quantize(W, 4, "yes"), TypeError, r"symmetric.*'yes'"),
        Bad(lambda: fake_quantize(W, True), TypeError, r"bits must be an int, got True"),
        Bad(lambda: fake_quantize(NAN, 4), ValueError, r"x contains NaN"),
        Bad(lambda: fake_quantize(W, 4, granularity="group", group_size=5), ValueError, r"group_size=5"),
        Bad(lambda: fake_quantize(W.long(), 4), TypeError, r"x must be a floating-point tensor"),
    ],
    "fake_quantize_with": [
        Bad(lambda: fake_quantize_with([1.0], 0.1, 0, 0, 15), TypeError, r"x must be a torch.Tensor"),
        Bad(lambda: fake_quantize_with(W.long(), 0.1, 0, 0, 15), ValueError, r"x.dtype=torch.int64"),
        Bad(lambda: fake_quantize_with(W, 0.0, 0, 0, 15), ValueError, r"scale=0.0"),
        Bad(lambda: fake_quantize_with(W, torch.tensor([[0.1], [-0.1]]), 0, 0, 15), ValueError,
            r"scale must hold positive scales"),
        Bad(lambda: fake_quantize_with(W, torch.ones(3), 0, 0, 15), ValueError, r"scale of shape \(3,\)"),
        Bad(lambda: fake_quantize_with(W, 0.1, torch.tensor(0.5), 0, 15), TypeError, r"zero_point must have a dtype"),
        Bad(lambda: fake_quantize_with(W, 0.1, 0, 15, 0), ValueError, r"qmax=0"),
        Bad(lambda: fake_quantize_with(W, 0.1, 0, 0.0, 15), TypeError, r"qmin must be an int"),
    ],
    "quantize_with": [
        T(lambda: quantize_with(W.tolist(), 0.1, 0, 0, 15), r"x must be a torch\.Tensor, got list"),
        T(lambda: quantize_with(W.long(), 0.1, 0, 0, 15), r"x must be a floating-point tensor"),
        V(lambda: quantize_with(NAN, 0.1, 0, 0, 15), r"x contains NaN"),
        V(lambda: quantize_with(W, 0.0, 0, 0, 15), r"scale=0\.0 is out of range"),
        V(lambda: quantize_with(W, torch.full((8, 1), -0.1), 0, 0, 15), r"scale must hold positive scales"),
        T(lambda: quantize_with(W, 0.1, torch.tensor(7.5), 0, 15), r"zero_point must have a dtype"),
        T(lambda: quantize_with(W, 0.1, 0.5, 0, 15), r"zero_point must be an int, got 0\.5"),
        V(lambda: quantize_with(W, torch.ones(3), 0, 0, 15), r"scale of shape \(3,\) must broadcast"),
        V(lambda: quantize_with(W, 0.1, 0, 15, 0), r"qmax=0 is out of range"),
        T(lambda: quantize_with(W, 0.1, 0, True, 15), r"qmin must be an int, got True"),
        V(lambda: quantize_with(W, 0.1, 0, 0, 2 ** 16 - 1), r"qmin=0, qmax=65535 do not fit the int16"),
    ],
    "prepare_qat": [
        T(lambda: prepare_qat(nn.Linear(2, 2), 4), rf"model {NOT_GPT}, got Linear"),
        V(lambda: prepare_qat(tiny_gpt(), 1), r"bits=1 is out of range; allowed: \[2, 8\]"),
        V(lambda: prepare_qat(tiny_gpt(), 4, 0), r"group_size=0 is out of range"),
        T(lambda: prepare_qat(tiny_gpt(), 4, 8.0), r"group_size must be an int, got 8\.0"),
        V(lambda: prepare_qat(tiny_gpt(), 4, 5), r"group_size=5 must divide layers\.0\.attn\.q_proj's in_features=32"),
        T(lambda: prepare_qat(tiny_gpt(), 4, symmetric="yes"), r"symmetric must be one of \(False, True\)"),
        V(lambda: prepare_qat(prepare_qat(tiny_gpt(), 4), 4), r"layers\.0\.attn\.q_proj weight is parametrized"),
        T(lambda: prepare_qat(_swapped(), 4), r"layers\.0\.attn\.q_proj must be an nn\.Linear .*got Identity")],
    "finish_qat": [
        T(lambda: finish_qat("model"), rf"model {NOT_GPT}, got str"),
        V(lambda: finish_qat(tiny_gpt()), r"model has no fake-quantized weight to finish: prepare it with prepare_qat"),
    ],
    "qparams": [
        Bad(lambda: qparams(torch.tensor(float("nan")), 1.0, 4, False), ValueError, r"lo contains NaN"),
        Bad(lambda: qparams(2.0, 1.0, 4, False), ValueError, r"lo and hi .* lo <= hi"),
        Bad(lambda: qparams(torch.zeros(3), torch.ones(2, 1), 4, False), ValueError, r"lo and hi .* one shape"),
        Bad(lambda: qparams("-1", 1.0, 4, False), TypeError, r"lo must be a real number"),
        Bad(lambda: qparams(-1.0, 1.0, 4, "no"), TypeError, r"symmetric.*'no'"),
        Bad(lambda: qparams(-1.0, 1.0, 9, False), ValueError, r"bits=9"),
    ],
    "quantize": [
        Bad(lambda: quantize(W, 4, "no"), TypeError, r"symmetric.*'no'"),
        Bad(lambda: quantize(W, 4.0), TypeError, r"bits must be an int, got 4.0"),
        Bad(lambda: quantize(torch.empty(0), 4), ValueError, r"x must not be empty"),
        Bad(lambda: quantize(W, 4, granularity="channel", axis=True), TypeError, r"axis must be an int, got True"),
        Bad(lambda: quantize(W, 4, granularity="channel", axis=2), ValueError, r"axis=2"),
        Bad(lambda: quantize(W, 4, granularity="group", group_size=0), ValueError, r"group_size=0"),
        Bad(lambda: quantize([1.0, 2.0], 4), TypeError, r"x must be a torch.Tensor"),
    ],
    "gptq_quantize": [
        Bad(lambda: gptq_quantize(W, [[1.0]], 4), TypeError, r"hessian must be a torch.Tensor"),
        Bad(lambda: gptq_quantize(W, torch.eye(8), 4, actorder=True), ValueError, r"hessian must have shape"),
        Bad(lambda: gptq_quantize(W, H, 4, actorder="no"), TypeError, r"actorder.*'no'"),
        Bad(lambda: gptq_quantize(W, H, 4, symmetric=None), TypeError, r"symmetric.*None"),
        Bad(lambda: gptq_quantize(W, H, 4, percdamp=-0.1), ValueError, r"percdamp=-0.1"),
        Bad(lambda: gptq_quantize(W, H, 4, blocksize=True), TypeError, r"blocksize must be an int, got True"),
        Bad(lambda: gptq_quantize(W, H, 4, group_size=5), ValueError, r"group_size=5"),
        Bad(lambda: gptq_quantize(W[0], H, 4), ValueError, r"weight must have 2 dimensions"),
    ],
    "Int4Linear": [
        Bad(lambda: Int4Linear(W64), TypeError, r"qtensor must be a QuantizedTensor"),
        Bad(lambda: Int4Linear(rtn_quantize(W64, 3, 32)), ValueError, r"qtensor must be a 2-D, 4-bit.*bits=3"),
        Bad(lambda: Int4Linear(_qt(), torch.zeros(3)), ValueError, r"bias must have shape \(out_features,\)"),
        Bad(lambda: Int4Linear(_qt(), [0.0] * 8), TypeError, r"bias must be a torch.Tensor"),
        Bad(lambda: Int4Linear(_qt(), scale_dtype=torch.int8), ValueError, r"scale_dtype=torch.int8"),
        Bad(lambda: Int4Linear(_qt())(torch.randn(2, 32)), ValueError, r"x must have shape \(\.\.\., in_features=64\)"),
        Bad(lambda: Int4Linear(_qt())(torch.ones(2, 64, dtype=torch.float64)), TypeError, r"x must have a dtype"),
        Bad(lambda: Int4Linear(_qt())([1.0] * 64), TypeError, r"x must be a torch.Tensor"),
    ],
    "NF4Linear": [
        T(lambda: NF4Linear(W64), r"weight must be an NF4Tensor .*got Tensor"),
        V(lambda: NF4Linear(_nf4(), torch.zeros(3)), r"bias must have shape \(out_features,\) = \(8,\)"),
        T(lambda: NF4Linear(_nf4(), [0.0] * 8), r"bias must be a torch\.Tensor"),
        V(lambda: NF4Linear(_nf4(), torch.full((8,), float("nan"))), r"bias contains NaN"),
        V(lambda: NF4Linear(_nf4())(torch.randn(2, 32)), r"x must have shape \(\.\.\., in_features=64\)"),
        T(lambda: NF4Linear(_nf4())(torch.ones(2, 64, dtype=torch.int64)), r"x must be a floating-point tensor"),
        T(lambda: NF4Linear(_nf4())([1.0] * 64), r"x must be a torch\.Tensor"),
    ],
    "nf4_model": [
        T(lambda: nf4_model(_linear()), rf"model {NOT_GPT}, got Linear"),
        V(lambda: nf4_model(tiny_gpt()), r"block_size=64 is not allowed; use an even divisor of K=32"),
        T(lambda: nf4_model(tiny_gpt(), 16, "yes"), r"double_quant must be a bool, got 'yes'"),
        V(lambda: nf4_model(_swapped(), 16), r"'layers\.0\.attn\.q_proj' is a Identity, not an nn\.Linear"),
    ],
    "W8A8Linear": [
        Bad(lambda: W8A8Linear(W), TypeError, r"linear must be an nn.Linear"),
        Bad(lambda: W8A8Linear(_linear(), "tensor", torch.tensor(0.0)), ValueError, r"act_scale=0.0"),
        Bad(lambda: W8A8Linear(_linear(), "tensor", float("nan")), ValueError, r"act_scale=nan"),
        Bad(lambda: W8A8Linear(_linear(), "tensor", torch.ones(16)), TypeError, r"act_scale must be a real number"),
        Bad(lambda: W8A8Linear(_linear(), "channel"), ValueError, r"act='channel'"),
        Bad(lambda: W8A8Linear(_linear(), act_bits=True), TypeError, r"act_bits must be an int, got True"),
        Bad(lambda: W8A8Linear(_linear(), smooth=[1.0] * 16), TypeError, r"smooth must be a torch.Tensor"),
        Bad(lambda: W8A8Linear(_linear(), smooth=torch.full((16,), float("inf"))), ValueError, r"smooth contains"),
        Bad(lambda: W8A8Linear(_linear(), smooth=torch.ones(8)), ValueError, r"smooth must hold 16"),
        Bad(lambda: W8A8Linear(_linear())(torch.randn(2, 8)), ValueError, r"x must have shape .*in_features=16"),
        Bad(lambda: W8A8Linear(_linear())(torch.ones(2, 16, dtype=torch.long)), TypeError, r"x must have a dtype"),
    ],
    "Int8DecomposedLinear": [
        T(lambda: Int8DecomposedLinear(W), r"linear must be an nn.Linear"),
        V(lambda: Int8DecomposedLinear(_linear(), 0.0), r"threshold=0.0 is out of range"),
        T(lambda: Int8DecomposedLinear(_linear(), "6"), r"threshold must be a real number"),
        V(lambda: Int8DecomposedLinear(_linear())(torch.randn(2, 8)), r"x must have shape .*in_features=16"),
        T(lambda: Int8DecomposedLinear(_linear())(torch.ones(2, 16, dtype=torch.long)), r"x must have a dtype"),
    ],
    "int8_decomposed_model": [
        T(lambda: int8_decomposed_model(_linear()), r"model must be a lab GPT"),
        V(lambda: int8_decomposed_model(tiny_gpt(), float("nan")), r"threshold=nan"),
        V(lambda: int8_decomposed_model(_swapped()), r"'layers\.0\.attn\.q_proj' is a Identity, not an nn\.Linear"),
    ],
    "size_comparisons": [
        V(lambda: size_comparisons({"fp32": SUMS}, SIZES, "RTN", "rtn"), r"method='RTN' is not allowed"),
        V(lambda: size_comparisons({"fp32": SUMS}, SIZES, "Wanda 50%", "wanda"), r"runs has no 'fp32' run or no run"),
        V(lambda: size_comparisons({"Wanda 50% · 512": SUMS}, SIZES, "Wanda 50%", "wanda"), r"runs has no 'fp32'"),
    ],
    "outlier_columns": [
        V(lambda: outlier_columns(W, -1.0), r"threshold=-1.0 is out of range"),
        T(lambda: outlier_columns(W, True), r"threshold must be a real number"),
        T(lambda: outlier_columns([1.0, 7.0]), r"x must be a torch.Tensor"),
        T(lambda: outlier_columns(torch.ones(2, 3, dtype=torch.long)), r"x must have a dtype"),
        V(lambda: outlier_columns(torch.ones(())), r"x must have at least 1 dimension"),
    ],
    "int4_model": [
        Bad(lambda: int4_model(_linear(), {}), TypeError, r"model must be a lab GPT"),
        Bad(lambda: int4_model(tiny_gpt(), []), TypeError, r"report must be the dict"),
        Bad(lambda: int4_model(tiny_gpt(), {}), ValueError, r"report has no quantized weight"),
        Bad(lambda: int4_model(tiny_gpt(), {Q_PROJ: {}}), ValueError, r"report has no quantized weight"),
        Bad(lambda: int4_model(tiny_gpt(), {}, scale_dtype="bf16"), TypeError, r"scale_dtype must be a torch dtype"),
    ],
    "w8a8_quantize_model": [
        Bad(lambda: w8a8_quantize_model(_linear()), TypeError, r"model must be a lab GPT"),
        Bad(lambda: w8a8_quantize_model(tiny_gpt(), names=Q_PROJ), TypeError, r"names must be a list"),
        Bad(lambda: w8a8_quantize_model(tiny_gpt(), names=["layers.0.attn"]), ValueError, r"'layers.0.attn' is a"),
        Bad(lambda: w8a8_quantize_model(tiny_gpt(), act="tensor", calib_forward=3), TypeError,
            r"calib_forward=3"),
        Bad(lambda: w8a8_quantize_model(tiny_gpt(), act="tensor"), ValueError, r"act='tensor' needs calib_forward"),
        Bad(lambda: w8a8_quantize_model(tiny_gpt(), make_observer=None), TypeError, r"make_observer=None"),
        Bad(lambda: w8a8_quantize_model(tiny_gpt(), smooth={"layers.0.q_proj": torch.ones(32)}), ValueError,
            r"smooth has factors for \['layers.0.q_proj'\]"),
        Bad(lambda: w8a8_quantize_model(tiny_gpt(), smooth=[torch.ones(32)]), TypeError, r"smooth must be a dict"),
        Bad(lambda: w8a8_quantize_model(tiny_gpt(), act_bits=1), ValueError, r"act_bits=1"),
    ],
    "quantize_model": [
        Bad(lambda: quantize_model(_linear(), "rtn", 4), TypeError, r"model must be a lab GPT"),
        Bad(lambda: quantize_model(tiny_gpt(), "round", 4), ValueError, r"method='round'"),
        Bad(lambda: quantize_model(tiny_gpt(), "gptq", 4), ValueError, r"method='gptq' needs calib_tokens"),
        Bad(lambda: quantize_model(tiny_gpt(), "gptq", 4, None, IDS.float()), ValueError, r"calib_tokens must be"),
        Bad(lambda: quantize_model(tiny_gpt(), "rtn", 4, True), TypeError, r"group_size must be an int, got True"),
        Bad(lambda: quantize_model(tiny_gpt(), "rtn", 4, 5), ValueError, r"group_size=5"),
        Bad(lambda: quantize_model(tiny_gpt(), "rtn", 4, symmetric="yes"), TypeError, r"symmetric.*'yes'"),
        Bad(lambda: quantize_model(tiny_gpt(), "gptq", 4, None, IDS, percdamp=-1), ValueError, r"percdamp=-1"),
        Bad(lambda: quantize_model(tiny_gpt(), "gptq", 4, None, IDS, blocksize=0), ValueError, r"blocksize=0"),
        Bad(lambda: quantize_model(tiny_gpt(), "awq", 4, None, IDS, awq_grid=2.5), TypeError, r"awq_grid must be"),
        Bad(lambda: quantize_model(tiny_gpt(), "rtn", 4, None, IDS, batch_size=0), ValueError, r"batch_size=0"),
    ],
    "rtn_quantize": [
        Bad(lambda: rtn_quantize(W, 4, 0), ValueError, r"group_size=0"),
        Bad(lambda: rtn_quantize(W, 4, False), TypeError, r"group_size must be an int, got False"),
        Bad(lambda: rtn_quantize(W, 4, 5), ValueError, r"group_size=5"),
        Bad(lambda: rtn_quantize(W[0], 4), ValueError, r"weight must have 2 dimensions"),
        Bad(lambda: rtn_quantize(W.tolist(), 4), TypeError, r"weight must be a torch.Tensor"),
        Bad(lambda: rtn_quantize(W.masked_fill(W > 1, float("nan")), 4), ValueError, r"weight contains NaN"),
        Bad(lambda: rtn_quantize(W, 4, symmetric="no"), TypeError, r"symmetric.*'no'"),
    ],
    "rtn_quantize_model": [
        Bad(lambda: rtn_quantize_model(tiny_gpt(), 4, 0), ValueError, r"group_size=0"),
        Bad(lambda: rtn_quantize_model(tiny_gpt(), 4, None, "no"), TypeError, r"symmetric.*'no'"),
        Bad(lambda: rtn_quantize_model(tiny_gpt(), 4.0), TypeError, r"bits must be an int"),
        Bad(lambda: rtn_quantize_model(_linear(), 4), TypeError, r"model must be a lab GPT"),
    ],
    "ChannelAbsMaxObserver": [
        Bad(lambda: ChannelAbsMaxObserver().update(torch.tensor(1.0)), ValueError, r"x must have shape \(\.\.\., C\)"),
        Bad(lambda: _observed(ChannelAbsMaxObserver()).update(torch.randn(3, 1)), ValueError,
            r"x must have shape .*\(16\), got \(3, 1\)"),
        Bad(lambda: ChannelAbsMaxObserver().update(NAN), ValueError, r"x contains NaN"),
        Bad(lambda: ChannelAbsMaxObserver().update([1.0]), TypeError, r"x must be a torch.Tensor"),
    ],
    "MinMaxObserver": [
        Bad(lambda: MinMaxObserver().update([1.0]), TypeError, r"x must be a torch.Tensor"),
        Bad(lambda: MinMaxObserver().update(torch.ones(3, dtype=torch.int64)), TypeError, r"x must be a floating"),
        Bad(lambda: _observed(MinMaxObserver()).qparams(4, "no"), TypeError, r"symmetric.*'no'"),
        Bad(lambda: _observed(MinMaxObserver()).range(True), TypeError, r"bits must be an int, got True"),
        Bad(lambda: MinMaxObserver().qparams(8), ValueError, r"update\(x\)"),
    ],
    "MSEObserver": [
        Bad(lambda: MSEObserver(seed=1.5), TypeError, r"seed must be an int"),
        Bad(lambda: MSEObserver(seed=-1), ValueError, r"seed=-1"),
        Bad(lambda: MSEObserver(n_grid=0), ValueError, r"n_grid=0"),
        Bad(lambda: MSEObserver(min_ratio=0.0), ValueError, r"min_ratio=0.0"),
        Bad(lambda: _observed(MSEObserver(n_grid=2)).range(1), ValueError, r"bits=1"),
        Bad(lambda: _observed(MSEObserver(n_grid=2)).range(4, "x"), TypeError, r"symmetric.*'x'"),
    ],
    "PercentileObserver": [
        Bad(lambda: PercentileObserver(50.0), ValueError, r"percentile=50.0"),
        Bad(lambda: PercentileObserver(seed="a"), TypeError, r"seed must be an int"),
        Bad(lambda: PercentileObserver(max_samples=True), TypeError, r"max_samples must be an int, got True"),
        Bad(lambda: _observed(PercentileObserver()).range(bits=1), ValueError, r"bits=1"),
    ],
    "pack_int4": [
        Bad(lambda: pack_int4(W, 8), TypeError, r"q must be a 2-D integer tensor"),
        Bad(lambda: pack_int4(CODES, True), TypeError, r"group_size must be an int, got True"),
        Bad(lambda: pack_int4(CODES + 1, 8), ValueError, r"q must hold 4-bit codes"),
        Bad(lambda: pack_int4(CODES, 3), ValueError, r"group_size=3"),
    ],
    "pack_int4_v2": [
        Bad(lambda: pack_int4_v2(CODES, 2), ValueError, r"group_size=2"),
        Bad(lambda: pack_int4_v2(CODES.float(), 8), TypeError, r"q must be a 2-D integer tensor"),
    ],
    "pack_quantized_weight": [
        Bad(lambda: pack_quantized_weight(W), TypeError, r"qt must be a QuantizedTensor"),
        Bad(lambda: pack_quantized_weight(rtn_quantize(W, 4, symmetric=True)), ValueError, r"qmin=-8"),
        Bad(lambda: pack_quantized_weight(quantize(W, 4)), ValueError, r"granularity='tensor'"),
        Bad(lambda: pack_quantized_weight(rtn_quantize(W, 4, 8), layout="v3"), ValueError,
            r"layout='v3' is not allowed"),
    ],
    "unpack_int4": [
        Bad(lambda: unpack_int4(W, 8), TypeError, r"packed must be a 2-D uint8 tensor"),
        Bad(lambda: unpack_int4(torch.zeros(4, 8, dtype=torch.uint8), 3), ValueError, r"group_size=3"),
    ],
    "unpack_int4_v2": [
        Bad(lambda: unpack_int4_v2(torch.zeros(4, 8, dtype=torch.uint8), 8), TypeError, r"packed must be a 2-D int16"),
        Bad(lambda: unpack_int4_v2(torch.zeros(4, 2, dtype=torch.int16), 3), ValueError, r"group_size=3"),
    ],
    "activation_abs_max": [
        Bad(lambda: activation_abs_max(tiny_gpt(), 3), TypeError, r"forward must be a callable"),
        Bad(lambda: activation_abs_max(tiny_gpt(), lambda: None, Q_PROJ), TypeError, r"names must be a list"),
        Bad(lambda: activation_abs_max(_linear(), lambda: None), TypeError, r"model must be a lab GPT"),
        Bad(lambda: activation_abs_max(tiny_gpt(), lambda: None, ["layers.9.attn.q_proj"]), ValueError,
            r"model has no submodule 'layers.9.attn.q_proj'"),
        Bad(lambda: activation_abs_max(tiny_gpt(), lambda: None), ValueError, r"forward\(\) ran no input through"),
    ],
    "awq_scale_search": [
        Bad(lambda: awq_scale_search(W, _stats(W), lambda w: w), TypeError, r"weights must be a list"),
        Bad(lambda: awq_scale_search([], _stats(W), lambda w: w), ValueError, r"weights must hold at least one"),
        Bad(lambda: awq_scale_search([W], None, lambda w: w), TypeError, r"stats must be the InputStats"),
        Bad(lambda: awq_scale_search([W], _stats(), lambda w: w), ValueError, r"stats has seen no input"),
        Bad(lambda: awq_scale_search([W], _stats(W), 3), TypeError, r"quantize_weight must be a callable"),
        Bad(lambda: awq_scale_search([W[:, :4]], _stats(W), lambda w: w), ValueError, r"weights\[0\] has shape"),
        Bad(lambda: awq_scale_search([W], _stats(W), lambda w: w, n_grid=True), TypeError, r"n_grid must be an int"),
    ],
    "group_smoothing_factors": [
        Bad(lambda: group_smoothing_factors(tiny_gpt(), {}, Q_PROJ), TypeError, r"groups must be a list"),
        Bad(lambda: group_smoothing_factors(tiny_gpt(), {}, [Q_PROJ]), TypeError, r"groups must be a list"),
        Bad(lambda: group_smoothing_factors(tiny_gpt(), {}, [[Q_PROJ]]), ValueError, r"act_stats has no entry"),
        Bad(lambda: group_smoothing_factors(tiny_gpt(), {}, [], alpha=2), ValueError, r"alpha=2"),
        Bad(lambda: group_smoothing_factors(tiny_gpt(), {Q_PROJ: torch.ones(5)}, [[Q_PROJ]]), ValueError,
            r"act_abs_max has 5 entries"),
        Bad(lambda: group_smoothing_factors(tiny_gpt(), {}, [["layers.0.attn"]]), ValueError, r"'layers.0.attn' is a"),
    ],
    "smoothing_factors": [
        Bad(lambda: smoothing_factors(torch.ones(16), W, 0.5), TypeError, r"weights must be a list"),
        Bad(lambda: smoothing_factors(torch.ones(1), [W], 0.5), ValueError, r"act_abs_max has 1 entries"),
        Bad(lambda: smoothing_factors(torch.full((16,), float("nan")), [W], 0.5), ValueError, r"act_abs_max contains"),
        Bad(lambda: smoothing_factors(-torch.ones(16), [W], 0.5), ValueError, r"act_abs_max must hold maxima"),
        Bad(lambda: smoothing_factors(torch.ones(16), [], 0.5), ValueError, r"weights must hold at least one"),
        Bad(lambda: smoothing_factors([1.0] * 16, [W], 0.5), TypeError, r"act_abs_max must be a torch.Tensor"),
        Bad(lambda: smoothing_factors(torch.ones(16), [W, W[:, :8]], 0.5), ValueError, r"weights\[1\] has shape"),
        Bad(lambda: smoothing_factors(torch.ones(16), [W], 1.5), ValueError, r"alpha=1.5"),
    ],
    "plant_outliers": [
        Bad(lambda: plant_outliers(torch.nn.Linear(4, 4), 50.0, 2), TypeError, r"model must be a lab GPT"),
        Bad(lambda: plant_outliers(tiny_gpt(), 0.0, 2), ValueError, r"factor=0\.0 is out of range"),
        Bad(lambda: plant_outliers(tiny_gpt(), True, 2), TypeError, r"factor must be a real number, got True"),
        Bad(lambda: plant_outliers(tiny_gpt(), 50.0, 0), ValueError, r"n_channels=0 is out of range"),
        Bad(lambda: plant_outliers(tiny_gpt(), 50.0, 10_000), ValueError, r"n_channels=10000 is out of range"),
        Bad(lambda: plant_outliers(tiny_gpt(), 50.0, 2, seed=-1), ValueError, r"seed=-1 is out of range")],
    "smoothquant": [
        Bad(lambda: smoothquant(tiny_gpt(), []), TypeError, r"act_stats must be the dict"),
        Bad(lambda: smoothquant(tiny_gpt(), {}), ValueError, r"act_stats has no entry 'layers.0.attn.q_proj'"),
        Bad(lambda: smoothquant(tiny_gpt(), {}, alpha=True), TypeError, r"alpha must be a real number"),
        Bad(lambda: smoothquant(_linear(), {}), TypeError, r"model must be a lab GPT")],
    "weight_name": [Bad(lambda: weight_name("hqq", 4, "g", 64), ValueError, r"method='hqq' is not allowed"),
                    Bad(lambda: weight_name("rtn", 1, "g", 64), ValueError, r"bits=1 is out of range"),
                    Bad(lambda: weight_name("rtn", 4, "group", 64), ValueError, r"grid='group' is not allowed"),
                    Bad(lambda: weight_name("rtn", 4, "g", 0), ValueError, r"group_size=0 is out of range")],
    "weight_runs": [Bad(lambda: weight_runs(4), TypeError, r"bits must be a list or tuple, got 4"),
                    Bad(lambda: weight_runs([4, 16]), ValueError, r"bits\[1\]=16 is out of range")],
})

NO_INPUT: dict[str, str] = {}


def test_smoothquant_refuses_before_folding_any_layer():
    """A missing entry for the last layer leaves the model untouched (every factor is checked first)."""
    model = tiny_gpt()
    stats = {name: torch.ones(32) for name in (f"layers.{i}.{n}" for i in range(2)
                                               for n in ("attn.q_proj", "mlp.gate_proj"))}
    stats["layers.1.mlp.gate_proj"] = torch.ones(5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"act_abs_max has 5 entries"):
        smoothquant(model, stats)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_int4_model_refuses_before_swapping_any_linear():
    """A report whose last weight is not 4-bit leaves every linear of the model an nn.Linear."""
    model = tiny_gpt()
    report = rtn_quantize_model(tiny_gpt(), 4, 16)
    last = list(report)[-1]
    report[last] = {"qtensor": rtn_quantize(model.get_submodule(last).weight, 3, 16)}
    with pytest.raises(ValueError, match=r"bits=3"):
        int4_model(model, report)
    assert type(model.get_submodule(list(report)[0])) is nn.Linear
