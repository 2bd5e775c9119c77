"""LLM.int8()'s mixed-precision decomposition (Dettmers et al. 2022): int8 for most input columns, 16 bits for
the few that carry outliers.

For a linear y = x Wᵀ with x (M, K) and W (N, K), the columns of x whose largest magnitude reaches the
threshold τ form the outlier set O = {j : max_t |x_tj| ≥ τ}, found anew on every forward pass (the paper's
τ = 6.0). The product splits over the columns:

    y = x_O W_Oᵀ  (16-bit: both sides rounded to float16, accumulated in float32)
      + diag(s_x) · (Q(x_Ō) Q(W)ᵀ) · diag(s_W)      (int8 × int8, int32 accumulation)

Q is symmetric int8 rounding with one scale per row: s_x,t = max_j∉O |x_tj| / 127 per token ("vector-wise",
the outlier columns zeroed first) and s_W,n = max_j |W_nj| / 127 per output channel, fixed when the layer is
built. Zeroing x_O before the int8 product makes the int8 codes of W's outlier columns contribute nothing, so
the two sums cover each column exactly once. Outliers of the size the paper describes (a few channels, every
token) widen s_x,t of every token in plain per-token W8A8; here they leave it alone.

The module stores W twice (int8 codes and float16) for clarity; the paper's kernel keeps only what it uses.
"""

from __future__ import annotations

import torch
from torch import nn

from lab.core.checks import check_number, check_tensor
from lab.kernels.int8 import OUT_DTYPES, int8_matmul
from lab.quant.linear import (_check_input, check_linear_names, decoder_linear_names, quantize_rows_symmetric,
                              replace_linears)

THRESHOLD = 6.0   # τ of the paper: a column is an outlier where some |x_tj| ≥ 6


def outlier_columns(x: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """The outlier set O of a batch: bool (K,), True where max_t |x_tj| ≥ ``threshold`` for x (..., K) float."""
    check_tensor("x", x, dtypes=OUT_DTYPES)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension (..., K), got a 0-d tensor")
    threshold = check_number("threshold", threshold, 0, closed=(False, True))
    return x.detach().reshape(-1, x.shape[-1]).abs().amax(0) >= threshold


class Int8DecomposedLinear(nn.Module):
    """A linear computed as LLM.int8() does (module docstring): int8 vector-wise for the ordinary columns of the
    input, float16 for the outlier columns (max |x_j| ≥ ``threshold`` in the batch)."""

    def __init__(self, linear: nn.Linear, threshold: float = THRESHOLD) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        self.threshold = check_number("threshold", threshold, 0, closed=(False, True))
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        w_q, w_scale = quantize_rows_symmetric(weight, 8)
        self.register_buffer("w_q", w_q)                              # (N, K) int8
        self.register_buffer("w_scale", w_scale)                      # (N,) float32
        self.register_buffer("w16", weight.half())                    # (N, K) float16: the outlier columns' W
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features, OUT_DTYPES)
        x2 = x.reshape(-1, self.in_features)
        outliers = outlier_columns(x2, self.threshold)
        x_q, x_scale = quantize_rows_symmetric(x2.masked_fill(outliers, 0), 8)
        y = int8_matmul(x_q, self.w_q, x_scale, self.w_scale, torch.float32)
        if outliers.any():
            y = y + x2[:, outliers].half().float() @ self.w16[:, outliers].float().T
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


@torch.no_grad()
def int8_decomposed_model(model: nn.Module, threshold: float = THRESHOLD, names: list[str] | None = None
                          ) -> nn.Module:
    """Swap linears for `Int8DecomposedLinear`s in place (default: a lab `GPT`'s decoder linears); returns the
    model. Needs no calibration: the outlier columns are found in each batch."""
    threshold = check_number("threshold", threshold, 0, closed=(False, True))
    names = decoder_linear_names(model) if names is None else names
    check_linear_names(model, names)
    layers = {name: Int8DecomposedLinear(model.get_submodule(name), threshold) for name in names}
    replace_linears(model, names, lambda name, lin: layers[name])
    return model
