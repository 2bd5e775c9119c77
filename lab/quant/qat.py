"""Quantization-aware training (QAT): train through the rounding with the straight-through estimator.

Post-training quantization (PTQ: RTN, GPTQ) rounds a finished model. QAT instead runs every forward
pass with the decoder weights fake-quantized, Ŵ = s·(clamp(round(W/s) + z) − z) with (s, z) from
the current min–max of each row or group (`lab.quant.affine.fake_quantize`), and updates the float
"latent" weights W with the gradient of the loss at Ŵ, passed through the rounding unchanged
(∂Ŵ/∂W ≈ 1, the straight-through estimator of Bengio et al. 2013). The latent weights learn to sit
where their rounded values serve the loss; after training, rounding them once gives the integer
model. Implemented with `torch.nn.utils.parametrize`, so the model's code is untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from lab.core.checks import check_int
from lab.quant.affine import check_bits, check_grid, fake_quantize
from lab.quant.linear import decoder_linear_names


class FakeQuantWeight(nn.Module):
    """W ↦ fake_quantize(W) per output channel (``group_size`` None) or per group of columns."""

    def __init__(self, bits: int, group_size: int | None = None, symmetric: bool = False) -> None:
        super().__init__()
        check_bits(bits)
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        granularity = "channel" if self.group_size is None else "group"
        return fake_quantize(weight, self.bits, self.symmetric, granularity, self.group_size or 1, axis=0)


def prepare_qat(model: nn.Module, bits: int, group_size: int | None = None, symmetric: bool = False) -> nn.Module:
    """Fake-quantize every decoder linear's weight of a lab `GPT` in each forward pass; in place, returns model.

    ``bits`` in [2, 8]; ``group_size``: None (one grid per output channel) or a divisor of every decoder
    linear's in_features (one grid per group of columns); ``symmetric``: a bool. A model prepared already
    (or holding any parametrized decoder weight) is refused: a second grid would round the rounded weights.
    """
    names = decoder_linear_names(model)
    check_grid(bits, symmetric)
    if group_size is not None:
        check_int("group_size", group_size)
    for name in names:
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"model's {name} must be an nn.Linear to be fake-quantized, got {type(linear).__name__}")
        if parametrize.is_parametrized(linear, "weight"):
            raise ValueError(f"model's {name} weight is parametrized already (prepare_qat was called on this "
                             "model): finish_qat it first, or prepare a fresh copy")
        if group_size is not None and linear.in_features % group_size:
            raise ValueError(f"group_size={group_size} must divide {name}'s in_features={linear.in_features}")
    for name in names:
        parametrize.register_parametrization(model.get_submodule(name), "weight",
                                             FakeQuantWeight(bits, group_size, symmetric))
    return model


def finish_qat(model: nn.Module) -> nn.Module:
    """Replace each parametrized weight by its fake-quantized value (the deployable Ŵ); in place, returns model.

    ``model``: a lab `GPT` that `prepare_qat` prepared (a model with no fake-quantized weight is refused).
    """
    linears = [model.get_submodule(name) for name in decoder_linear_names(model)]
    prepared = [linear for linear in linears if parametrize.is_parametrized(linear, "weight")]
    if not prepared:
        raise ValueError("model has no fake-quantized weight to finish: prepare it with prepare_qat (and train it) "
                         "first")
    for linear in prepared:
        parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
    return model
