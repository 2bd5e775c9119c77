"""`NF4Linear`: a frozen linear layer stored in NF4 (`lab.formats.nf4`) that computes in bf16, QLoRA's base.

QLoRA (Dettmers et al. 2023) keeps one storage type, NF4 with double-quantized block scales, and one
compute type, bf16: every product dequantizes the weight on the fly,

    y = (x_bf16 Ŵ_bf16ᵀ) cast to x's dtype (+ b),        Ŵ_bf16 = dequantize_nf4(W_NF4, bf16),

and backward needs only ∂L/∂x = (∂L/∂y)_bf16 Ŵ_bf16 (W is frozen): Ŵ is dequantized again from the codes,
so neither the layer nor the autograd graph keeps a float copy of W. (bitsandbytes' ``Linear4bit`` does the
same on a GPU; here the dequantization is PyTorch's, on any device.) The bias, if any, stays in float and is
added in x's dtype. `nf4_model` swaps every decoder linear of a lab `GPT` for one; `lab.params.lora`
puts LoRA on top of them. Cast a model to another dtype before `nf4_model`, not after: ``model.to(dtype)``
would round the fp32 block scales (buffers), and the layer refuses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.core.checks import check_float_tensor, check_tensor
from lab.formats.nf4 import NF4Tensor, dequantize_nf4, quantize_nf4
from lab.quant.linear import check_linear_names, decoder_linear_names, replace_linears

COMPUTE_DTYPE = torch.bfloat16


class _NF4Matmul(torch.autograd.Function):
    """y = x Ŵᵀ in bf16, x (M, K) → y (M, N) in x's dtype; backward ∂L/∂x = (∂L/∂y) Ŵ, Ŵ dequantized anew."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        return (x.to(COMPUTE_DTYPE) @ layer.dequantize().T).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        W_t = ctx.layer.dequantize().T.contiguous()   # Ŵᵀ (K, N): CPU bf16 GEMMs run ~10× slower on Ŵ (N, K) as is
        return F.linear(grad_y.to(COMPUTE_DTYPE), W_t).to(grad_y.dtype), None


class NF4Linear(nn.Module):
    """y = x Ŵᵀ (+ b) over a frozen NF4 weight (module docstring), computed in bf16.

    ``weight``: an `NF4Tensor` (N, K) from `lab.formats.nf4.quantize_nf4`; ``bias``: None or (N,) floating,
    kept as a frozen parameter. x (..., K), floating → y (..., N) in x's dtype. The NF4Tensor's tensors are
    buffers ("packed", "absmax", and with double quantization "absmax_scales", "absmax_mean").
    """

    def __init__(self, weight: NF4Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(weight, NF4Tensor):
            raise TypeError(f"weight must be an NF4Tensor (lab.formats.nf4.quantize_nf4), got {type(weight).__name__}")
        self.out_features, self.in_features = weight.shape
        if bias is not None and check_float_tensor("bias", bias, 1).shape != (self.out_features,):
            raise ValueError(f"bias must have shape (out_features,) = ({self.out_features},), got {tuple(bias.shape)}")
        self.block_size, self.dq_block = weight.block_size, weight.dq_block
        for name in ("packed", "absmax", "absmax_scales", "absmax_mean"):
            self.register_buffer(name, getattr(weight, name))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def quantized(self) -> NF4Tensor:
        """The stored weight as an `NF4Tensor` (the buffers, on the layer's device)."""
        return NF4Tensor(self.packed, self.absmax, self.block_size, self.absmax_scales, self.absmax_mean,
                         self.dq_block)

    def dequantize(self, dtype: torch.dtype = COMPUTE_DTYPE) -> torch.Tensor:
        """Ŵ (N, K) of ``dtype`` (bf16 by default: what the forward and backward multiply by)."""
        return dequantize_nf4(self.quantized(), dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block_size={self.block_size}, double_quant={self.absmax_mean is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not check_tensor("x", x).is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., in_features={self.in_features}), got {tuple(x.shape)}")
        y = _NF4Matmul.apply(x.reshape(-1, self.in_features), self).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def nf4_model(model: nn.Module, block_size: int = 64, double_quant: bool = True) -> nn.Module:
    """Swap every decoder linear of a lab `GPT` (`decoder_linear_names`) for an `NF4Linear` of its weight
    (`quantize_nf4` with ``block_size`` B, an even divisor of every linear's d_in, and ``double_quant``), in
    place; returns the model. Every layer is quantized before any is swapped in (a refused call leaves the
    model as it was)."""
    names = decoder_linear_names(model)
    check_linear_names(model, names)
    layers = {name: NF4Linear(quantize_nf4(lin.weight, block_size, double_quant), lin.bias)
              for name, lin in ((name, model.get_submodule(name)) for name in names)}
    replace_linears(model, names, lambda name, lin: layers[name])
    return model
