"""Block formats with a shared scale per B values: OCP Microscaling (MX) v1.0 and NVIDIA's NVFP4.

A tensor x (…, K) is cut along its last dimension (K, the reduction dimension of a weight W (N, K) and of an
activation (T, K)) into blocks of B consecutive values V_1 … V_B; each block keeps one scale and B elements of
a minifloat (`lab.quant.minifloat`):

    fmt          element   B    scale                      bits per value
    mxfp8_e4m3   E4M3      32   E8M0 X = 2^E               8 + 8/32 = 8.25
    mxfp8_e5m2   E5M2      32   E8M0                       8.25
    mxfp6_e3m2   E3M2      32   E8M0                       6.25
    mxfp6_e2m3   E2M3      32   E8M0                       6.25
    mxfp4        E2M1      32   E8M0                       4.25
    nvfp4        E2M1      16   E4M3 s_b, and fp32 s_g     4 + 8/16 = 4.5, plus 32 bits per tensor

MX (spec §6.3, "conversion from a vector of scalar elements"). With emax_elem the exponent of the element
format's largest binade (`FloatFormat.emax`: 8, 15, 4, 2, 2 for the rows above),

    E   = floor(log2(max_i |V_i|)) − emax_elem,  clamped to E8M0's [−127, 127] (§5.4.1; 0xFF is NaN)
    X   = 2^E,        P_i = cast(V_i / X),        V̂_i = X · P_i,

cast rounding to nearest, ties to even, and saturating (spec §6.3: "clamping normal numbers"): max |V_i| / X lies
in [2^emax, 2^(emax+1)), whose top is past the largest element (448, 57,344, 28, 7.5, 6), so a block's largest
values can clamp to it, losing up to 12.5% of amax (E4M3, E5M2, E3M2), 6.25% (E2M3) or 25% (E2M1). An all-zero
block gets E = −127, as in Microsoft's microxcaling reference (mx/mx_ops.py, whose default rounding sends exact
ties away from zero instead).

NVFP4 (NVIDIA's two-level scaling, as Transformer Engine computes it: transformer_engine/common/cast/nvfp4/
core_nvfp4.cuh, ``compute_global_encode_scaling_factor_FP4``, ``compute_decoding_scaling_factor``,
``compute_scaling_coefficient``): a per-tensor float32 s_g maps the tensor's amax to 6 · 448, the largest E2M1
times the largest E4M3, and an E4M3 scale per block of 16 maps the block's amax to 6:

    s_g = amax(x) / (6 · 448)   (1 when that is 0),     s_b = cast_e4m3(max_i |V_i| / (6 · s_g)),
    P_i = cast_e2m1(V_i / (s_b · s_g))   (0 when s_b rounds to 0),     V̂_i = s_b · s_g · P_i.

Elements are divided by the rounded s_b (as ``compute_scaling_coefficient`` does), exactly in float64 where the
kernels multiply by a float32 reciprocal (the two can differ on a value within a float32 rounding of a tie). For
activations ``global_per_row=True`` takes s_g per row (per token), as Transformer Engine's per-token NVFP4 cast
(cast/nvfp4/quantize_nvfp4_per_token.cu) does, so that a token's quantization does not depend on its batch.

`fp4_weight` writes an mxfp4 / nvfp4 weight in `lab.formats.fp4`'s layout; `mx_quantize_model` puts a format
into every decoder linear of a lab GPT (weights, and optionally the linears' inputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lab.core.checks import check_choice, check_divisor, check_tensor
from lab.formats.fp4 import E8M0_BIAS, e2m1_codes, pack_fp4
from lab.quant.affine import check_quant_input
from lab.quant.linear import check_linear_names, decoder_linear_names
from lab.quant.minifloat import FORMATS, cast

__all__ = ["MX_FORMATS", "MXTensor", "quantize_mx", "fp4_weight", "mx_quantize_model"]

MX_FORMATS = {"mxfp8_e4m3": ("e4m3", 32), "mxfp8_e5m2": ("e5m2", 32), "mxfp6_e3m2": ("e3m2", 32),
              "mxfp6_e2m3": ("e2m3", 32), "mxfp4": ("e2m1", 32), "nvfp4": ("e2m1", 16)}   # fmt: (element, B)
E8M0_MIN, E8M0_MAX = -127, 127
NVFP4_RANGE = 6.0 * 448.0                       # largest E2M1 × largest E4M3


@dataclass(frozen=True, eq=False)
class MXTensor:
    """x (…, K) in a block format (module docstring), as `quantize_mx` returns it.

    elements      P, float32 (…, K): values of the element format (``element_format``)
    scales        float32 (…, K/B): X = 2^E (MX) or s_b (NVFP4) per block
    global_scale  float32 s_g: () per tensor, or x.shape[:-1] per row (NVFP4 with ``global_per_row``); 1 for MX
    fmt, block    the format (a key of `MX_FORMATS`) and B, a divisor of K
    """

    elements: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor
    fmt: str
    block: int

    def __post_init__(self) -> None:
        check_choice("fmt", self.fmt, tuple(MX_FORMATS))
        for name in ("elements", "scales", "global_scale"):
            check_tensor(name, getattr(self, name), dtypes=(torch.float32,))
        if self.elements.dim() == 0:
            raise ValueError("elements must have at least 1 dimension (the blocked K), got shape ()")
        *lead, K = self.shape
        check_divisor("block", self.block, K, "K")
        if self.scales.shape != (*lead, K // self.block):
            raise ValueError(f"scales must have shape (…, K/B) = {(*lead, K // self.block)}, "
                             f"got {tuple(self.scales.shape)}")
        if self.global_scale.shape not in ((), tuple(lead)):
            raise ValueError(f"global_scale must have shape () or {tuple(lead)}, got {tuple(self.global_scale.shape)}")

    @property
    def shape(self) -> torch.Size:
        return self.elements.shape

    @property
    def element_format(self) -> str:
        """The minifloat of the elements, a key of `lab.quant.minifloat.FORMATS`."""
        return MX_FORMATS[self.fmt][0]

    @property
    def nbytes(self) -> int:
        """Bytes stored: the elements at their bits each, one byte per block scale, 4 per global scale (NVFP4)."""
        element_bits = self.elements.numel() * FORMATS[self.element_format].bits
        global_bytes = 4 * self.global_scale.numel() if self.fmt == "nvfp4" else 0
        return math.ceil(element_bits / 8) + self.scales.numel() + global_bytes

    @property
    def bits_per_element(self) -> float:
        """8 · nbytes / numel, scales included: 4.25 for mxfp4, 4.5 + 32/numel for nvfp4."""
        return 8 * self.nbytes / self.elements.numel()

    def dequantize(self) -> torch.Tensor:
        """V̂ = P · X (MX) or P · s_b · s_g (NVFP4): float32 (…, K), the products in float64, rounded once."""
        *lead, K = self.shape
        P = self.elements.double().reshape(*lead, K // self.block, self.block)
        g = self.global_scale.double().reshape(*self.global_scale.shape, 1, 1)
        return (P * self.scales.double()[..., None] * g).reshape(self.shape).float()

    def scale_codes(self) -> torch.Tensor:
        """The scales as stored, uint8 (…, K/B): E8M0's biased exponent E + 127 (MX), E4M3's bit pattern (NVFP4)."""
        if self.fmt == "nvfp4":
            return self.scales.to(torch.float8_e4m3fn).view(torch.uint8)
        _, e = torch.frexp(self.scales)                  # X = 2^E = 0.5 · 2^(E + 1)
        return (e - 1 + E8M0_BIAS).to(torch.uint8)


def _shared_scale(amax: torch.Tensor, elem: str) -> torch.Tensor:
    """X = 2^E, E = floor(log2 amax) − emax_elem clamped to [−127, 127] (−127 for amax = 0): float64."""
    _, e = torch.frexp(amax)                            # amax = m · 2^e, ½ ≤ m < 1: floor(log2 amax) = e − 1
    E = torch.where(amax > 0, e - 1 - FORMATS[elem].emax, E8M0_MIN).clamp(E8M0_MIN, E8M0_MAX)
    return torch.exp2(E.double())


def _nvfp4_scales(amax: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_g, s_b) of the block maxima ``amax`` (…, K/B, 1) float64: s_g (…, 1, 1) per row or (1, …, 1) per tensor,
    a float32 number (1 where amax / 2688 is 0 in float32), s_b = cast_e4m3(amax / (6 · s_g)) (…, K/B, 1)."""
    a = amax.amax(dim=-2, keepdim=True) if per_row else amax.amax().reshape([1] * amax.dim())
    s_g = (a / NVFP4_RANGE).float().double()
    s_g = torch.where(s_g > 0, s_g, 1.0)
    return s_g, cast(amax / (6.0 * s_g), "e4m3").double()


def quantize_mx(x: torch.Tensor, fmt: str, block: int | None = None, global_per_row: bool = False) -> MXTensor:
    """x (…, K), a floating tensor with finite entries, in the block format ``fmt`` (a key of `MX_FORMATS`) with
    blocks of ``block`` consecutive values along the last dimension (None: the format's 32 or 16; a divisor of
    K). ``global_per_row``: NVFP4's s_g per row of x instead of per tensor (MX formats have no s_g).
    Module docstring for the formulas."""
    check_quant_input(x)
    check_choice("fmt", fmt, tuple(MX_FORMATS))
    check_choice("global_per_row", global_per_row, (False, True))
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension (the blocked K), got shape ()")
    elem, default_block = MX_FORMATS[fmt]
    block = default_block if block is None else block
    *lead, K = x.shape
    check_divisor("block", block, K, "x.shape[-1]")
    if global_per_row and fmt != "nvfp4":
        raise ValueError(f"global_per_row=True is not allowed with fmt={fmt!r}: only nvfp4 has a global scale")
    V = x.detach().double().reshape(*lead, K // block, block)
    amax = V.abs().amax(dim=-1, keepdim=True)
    if fmt == "nvfp4":
        s_g, s_b = _nvfp4_scales(amax, global_per_row)
        divisor = s_b * s_g
        P = torch.where(divisor > 0, cast(V / torch.where(divisor > 0, divisor, 1.0), elem), 0.0)
        scales, global_scale = s_b, s_g.reshape(lead if global_per_row else ())
    else:
        scales = _shared_scale(amax, elem)
        P = cast(V / scales, elem).clamp(-FORMATS[elem].max_finite, FORMATS[elem].max_finite)  # E5M2: inf → max
        global_scale = torch.ones(())
    return MXTensor(P.reshape(x.shape).float(), scales.squeeze(-1).float(), global_scale.float(), fmt, block)


def fp4_weight(t: MXTensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """An mxfp4 / nvfp4 weight (N, K) in `lab.formats.fp4`'s layout: (packed E2M1 codes (N, K/2) uint8, the low
    nibble holding the even k; scales (N, K/B) uint8, E8M0 biased exponents (mxfp4) or E4M3 bit patterns
    (nvfp4); the global scale s_g, a float32 number, 1.0 for mxfp4). ``lab.formats.fp4.dequantize_fp4`` of
    them is ``t.dequantize()``."""
    if not isinstance(t, MXTensor):
        raise TypeError(f"t must be an MXTensor (lab.quant.mx.quantize_mx), got {type(t).__name__}")
    check_choice("t.fmt", t.fmt, ("mxfp4", "nvfp4"))
    if len(t.shape) != 2 or t.global_scale.dim() != 0:
        raise ValueError(f"t must be a weight (N, K) with one global scale, got shape {tuple(t.shape)} and "
                         f"global_scale of shape {tuple(t.global_scale.shape)}")
    return pack_fp4(e2m1_codes(t.elements)), t.scale_codes(), float(t.global_scale)


def _fake_quantize_input(fmt: str) -> Callable[[nn.Module, tuple], tuple]:
    """A forward pre-hook replacing a linear's input x (…, K) by its `quantize_mx` round trip (s_g per token)."""
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        x_hat = quantize_mx(x, fmt, global_per_row=fmt == "nvfp4").dequantize()
        return (x_hat.to(x.dtype), *args[1:])
    return hook


@torch.no_grad()
def mx_quantize_model(model: nn.Module, fmt: str, activations: bool = False) -> tuple[nn.Module, int]:
    """Every decoder linear of a lab `GPT` (q/k/v/o, gate/up/down; embeddings, norms and lm_head stay) gets the
    weight Ŵ = quantize_mx(W, fmt).dequantize(), in place; with ``activations`` its input is fake-quantized too,
    per token, in the same format (a forward pre-hook: W4A4 for mxfp4 / nvfp4). Every linear is checked and
    quantized before any is changed. Returns (model, bytes of the quantized weights, `MXTensor.nbytes` summed)."""
    names = decoder_linear_names(model)
    check_linear_names(model, names)
    check_choice("fmt", fmt, tuple(MX_FORMATS))
    check_choice("activations", activations, (False, True))
    linears = {name: model.get_submodule(name) for name in names}
    for name, linear in linears.items():
        check_divisor(f"{fmt} block", MX_FORMATS[fmt][1], linear.in_features, f"{name}.in_features")
    quantized = {name: quantize_mx(linear.weight, fmt) for name, linear in linears.items()}
    for name, linear in linears.items():
        linear.weight.copy_(quantized[name].dequantize().to(linear.weight.dtype))
        if activations:
            linear.register_forward_pre_hook(_fake_quantize_input(fmt))
    return model, sum(t.nbytes for t in quantized.values())
