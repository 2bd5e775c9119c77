"""Training with FP8 matmul inputs: a linear layer that rounds what its three GEMMs read (Micikevicius et al. 2022).

A linear layer y = x Wᵀ runs three GEMMs per training step, each with an fp32 accumulator:

    forward      y  = x̂ Ŵᵀ / (s_x s_W)            x̂ = cast_E4M3(s_x x),  Ŵ = cast_E4M3(s_W W)
    backward     ∂x = ĝ Ŵ / (s_g s_W)             ĝ = cast_E5M2(s_g ∂y)
                 ∂W = ĝᵀ x̂ / (s_g s_x)

(Transformer Engine's "HYBRID" format: E4M3's extra mantissa bit for weights and activations, E5M2's range for
gradients; each tensor with its own per-tensor scale, `lab.quant.fp8_scaling.FP8Scaler`). The optimizer keeps the
fp32 master weights W and updates them in fp32; Ŵ is cast again at every step. The bf16 baseline is the same
layer with every GEMM input rounded to bf16 (round to nearest even, no scale): bf16 mixed precision's GEMMs.
On a CPU the products are computed in float32 from the rounded values, which is what the tensor core computes
from its FP8 or bf16 inputs, up to the order of its fp32 additions.

`low_precision_model` converts every decoder linear of a lab `GPT` (the embedding and the tied output layer stay
fp32, as Transformer Engine leaves them to the framework); `restore_linears` puts back plain `nn.Linear` layers
holding the trained master weights.
"""

from __future__ import annotations

import torch
from torch import nn

from lab.core.checks import check_choice, check_int
from lab.quant.fp8_scaling import FP8Scaler
from lab.quant.linear import decoder_linear_names, replace_linears

__all__ = ["RECIPES", "LowPrecisionLinear", "low_precision_model", "restore_linears"]

RECIPES = ("bf16", "fp8 unscaled", "fp8 current", "fp8 delayed")


class _BF16:
    """The bf16 baseline's rounding, with `FP8Scaler.quantize`'s signature: (x rounded to bf16, as float32; 1)."""

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        return x.detach().to(torch.bfloat16).float(), 1.0


class _LowPrecisionMatmul(torch.autograd.Function):
    """y = x Wᵀ with the three GEMMs of the module docstring; x (..., K), W (N, K) float32 → y (..., N)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, layer: LowPrecisionLinear) -> torch.Tensor:
        x_hat, s_x = layer.x_scaler.quantize(x)
        w_hat, s_w = layer.w_scaler.quantize(weight)
        ctx.save_for_backward(x_hat, w_hat)
        ctx.scales, ctx.layer = (s_x, s_w), layer
        return (x_hat @ w_hat.T) * (1.0 / (s_x * s_w))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_hat, w_hat = ctx.saved_tensors
        s_x, s_w = ctx.scales
        g_hat, s_g = ctx.layer.g_scaler.quantize(grad)
        grad_x = (g_hat @ w_hat) * (1.0 / (s_g * s_w))
        grad_w = (g_hat.reshape(-1, g_hat.shape[-1]).T @ x_hat.reshape(-1, x_hat.shape[-1])) * (1.0 / (s_g * s_x))
        return grad_x, grad_w, None


class LowPrecisionLinear(nn.Module):
    """``linear``'s weight (fp32 master, trained) and bias, its GEMMs' inputs rounded by ``recipe``.

    ``recipe``: one of `RECIPES`: "bf16", or FP8 (E4M3 forward, E5M2 backward) with no scaling, current scaling
    or delayed scaling over ``history_len`` steps. ``x_scaler``, ``w_scaler``, ``g_scaler`` hold each tensor's
    scale and counters (`FP8Scaler`). Input (..., in_features) float32 → (..., out_features) float32.
    """

    def __init__(self, linear: nn.Linear, recipe: str = "fp8 delayed", history_len: int = 16) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        check_choice("recipe", recipe, RECIPES)
        check_int("history_len", history_len)
        self.recipe, self.in_features, self.out_features = recipe, linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        if recipe == "bf16":
            self.x_scaler = self.w_scaler = self.g_scaler = _BF16()
        else:
            scaling = recipe.removeprefix("fp8 ").replace("unscaled", "none")
            self.x_scaler = FP8Scaler("e4m3", scaling, history_len)
            self.w_scaler = FP8Scaler("e4m3", scaling, history_len)
            self.g_scaler = FP8Scaler("e5m2", scaling, history_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features or x.dtype != torch.float32:
            raise ValueError(f"x must be float32 (..., {self.in_features}), got {x.dtype} {tuple(x.shape)}")
        y = _LowPrecisionMatmul.apply(x, self.weight, self)
        return y if self.bias is None else y + self.bias

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` holding this layer's (master) weight and bias, the same Parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def low_precision_model(model: nn.Module, recipe: str, history_len: int = 16) -> nn.Module:
    """Swap every decoder linear of a lab `GPT` (float32) for a `LowPrecisionLinear` of ``recipe``; in place,
    returns the model. The embedding, the norms and the output layer stay float32."""
    names = decoder_linear_names(model)
    check_choice("recipe", recipe, RECIPES)
    check_int("history_len", history_len)
    for name in names:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear) or layer.weight.dtype != torch.float32:
            raise TypeError(f"model's {name} must be a float32 nn.Linear, got {type(layer).__name__} "
                            f"{getattr(layer, 'weight', torch.empty(0)).dtype}")
    replace_linears(model, names, lambda name, linear: LowPrecisionLinear(linear, recipe, history_len))
    return model


def restore_linears(model: nn.Module) -> dict[str, dict[str, float]]:
    """Put plain `nn.Linear` layers back in place of a model's `LowPrecisionLinear`s (their trained master
    weights); returns each FP8 layer's counters {name: {"x_flushed", "g_flushed", "x_saturated", ...}} as
    fractions of the elements cast (empty dicts for bf16)."""
    names = [n for n in decoder_linear_names(model) if isinstance(model.get_submodule(n), LowPrecisionLinear)]
    if not names:
        raise ValueError("model has no LowPrecisionLinear to restore: convert it with low_precision_model first")
    counters = {}
    for name in names:
        layer = model.get_submodule(name)
        counters[name] = {f"{t}_{what}": getattr(s, what) / max(s.elements, 1)
                          for t, s in (("x", layer.x_scaler), ("w", layer.w_scaler), ("g", layer.g_scaler))
                          if isinstance(s, FP8Scaler) for what in ("flushed", "saturated")}
    for name in names:
        model.set_submodule(name, model.get_submodule(name).to_linear())
    return counters
