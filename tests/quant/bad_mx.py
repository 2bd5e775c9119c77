"""The bad-input cases of lab.quant's block formats (lab.quant.mx; part of tests/quant/test_bad_input.py's
table)."""

from __future__ import annotations

import torch
from torch import nn

from lab.quant import MXTensor, fp4_weight, mx_quantize_model, quantize_mx
from tests.bad_input import NOT_GPT, Bad, T, V
from tests.tiny_models import tiny_gpt

W64 = torch.randn(8, 64, generator=torch.Generator().manual_seed(8))


def _mx_with(**fields) -> MXTensor:
    t = quantize_mx(W64, "mxfp4")
    return MXTensor(**{**t.__dict__, **fields})


def _identity_q_proj() -> nn.Module:
    model = tiny_gpt(d_ff=64)
    model.layers[0].attn.q_proj = nn.Identity()
    return model


MX: dict[str, list[Bad]] = {
    "MXTensor": [
        V(lambda: _mx_with(fmt="mxfp5"), r"fmt='mxfp5' is not allowed"),
        T(lambda: _mx_with(elements=W64.double()), r"elements must have a dtype in \(torch\.float32,\)"),
        V(lambda: _mx_with(block=48), r"block=48 is not allowed; use a divisor of K=64"),
        V(lambda: _mx_with(scales=torch.ones(8, 3)), r"scales must have shape \(…, K/B\) = \(8, 2\)"),
        V(lambda: _mx_with(global_scale=torch.ones(3)), r"global_scale must have shape \(\) or \(8,\)"),
        V(lambda: _mx_with(elements=torch.tensor(1.0)), r"elements must have at least 1 dimension"),
    ],
    "quantize_mx": [
        V(lambda: quantize_mx(W64, "fp4"), r"fmt='fp4' is not allowed; use one of \('mxfp8_e4m3'"),
        V(lambda: quantize_mx(W64[:, :16], "mxfp4"), r"block=32 is not allowed; use a divisor of x\.shape\[-1\]=16"),
        V(lambda: quantize_mx(W64, "mxfp4", 0), r"block=0 is out of range"),
        T(lambda: quantize_mx(W64, "mxfp4", 16.0), r"block must be an int, got 16\.0"),
        T(lambda: quantize_mx(W64.long(), "mxfp4"), r"x must be a floating-point tensor"),
        V(lambda: quantize_mx(torch.tensor([1.0, float("nan")]), "nvfp4", 2), r"x contains NaN"),
        V(lambda: quantize_mx(torch.tensor(1.0), "nvfp4"), r"x must have at least 1 dimension"),
        V(lambda: quantize_mx(W64, "mxfp4", global_per_row=True), r"global_per_row=True is not allowed with fmt="),
        T(lambda: quantize_mx(W64, "nvfp4", global_per_row=1), r"global_per_row must be one of \(False, True\)"),
    ],
    "fp4_weight": [
        T(lambda: fp4_weight(W64), r"t must be an MXTensor"),
        V(lambda: fp4_weight(quantize_mx(W64, "mxfp6_e2m3")), r"t\.fmt='mxfp6_e2m3' is not allowed"),
        V(lambda: fp4_weight(quantize_mx(W64[0], "mxfp4")), r"t must be a weight \(N, K\) with one global scale"),
        V(lambda: fp4_weight(quantize_mx(W64, "nvfp4", global_per_row=True)), r"global_scale of shape \(8,\)"),
    ],
    "mx_quantize_model": [
        T(lambda: mx_quantize_model(nn.Linear(32, 32), "mxfp4"), rf"model {NOT_GPT}, got Linear"),
        V(lambda: mx_quantize_model(tiny_gpt(), "mxfp4"),
          r"mxfp4 block=32 is not allowed; use a divisor of layers\.0\.mlp\.down_proj\.in_features=48"),
        V(lambda: mx_quantize_model(tiny_gpt(d_ff=64), "int4"), r"fmt='int4' is not allowed"),
        T(lambda: mx_quantize_model(tiny_gpt(d_ff=64), "nvfp4", "yes"), r"activations must be one of \(False, True\)"),
        V(lambda: mx_quantize_model(_identity_q_proj(), "nvfp4"), r"'layers\.0\.attn\.q_proj' is a Identity"),
    ],
}

