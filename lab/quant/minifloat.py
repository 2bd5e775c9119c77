"""Minifloats from their bit fields: FP8 (E4M3, E5M2), FP6 (E3M2, E2M3) and FP4 (E2M1), the element formats of
the OCP Microscaling (MX) v1.0 specification (§5.3) and of NVIDIA's NVFP4; FP8 as in Micikevicius et al. 2022.

A format with E exponent bits, M mantissa bits and bias b = 2^(E−1) − 1 holds, besides ±0,

    normal numbers     (−1)^s · 2^(e − b) · (1 + m / 2^M),   e = 1 … e_max,   m = 0 … 2^M − 1,
    subnormal numbers  (−1)^s · 2^(1 − b) · (m / 2^M),       e = 0,           m = 1 … 2^M − 1.

Between 2^k and 2^(k+1) (k ≥ 1 − b) the values are spaced q_k = 2^(k − M); below 2^(1 − b) the subnormals are
spaced 2^(1 − b − M), the same step as the lowest binade. Rounding to nearest, ties to even, is then
x̂ = q · round_half_even(x / q) with q the spacing at |x|; a tie that carries into the next binade lands on a
value of it (1.111₂ · 2^k + q/2 → 2^(k+1)).

* E4M3 ("fn": finite, no infinities): b = 7, the exponent field 1111 is a normal binade except its top
  mantissa 111, which is NaN, so the largest value is 1.75 · 2^8 = 448; the smallest normal 2^−6, the
  smallest subnormal 2^−9. A finite value past ±448 and ±inf saturate to ±448 (torch's cast and Transformer
  Engine's do the same).
* E5M2 (IEEE-like): b = 15, the field 11111 is inf / NaN, largest 1.75 · 2^15 = 57,344, smallest normal
  2^−14, smallest subnormal 2^−16. A value whose rounding passes 57,344 becomes ±inf: from 61,440
  (57,344 plus half a step) on, the tie going to the even 2^16.
* E3M2, E2M3 (FP6) and E2M1 (FP4): every field is a number, no inf and no NaN (MX §5.3.2–5.3.3). Largest
  1.75 · 2^4 = 28, 1.875 · 2^2 = 7.5 and 1.5 · 2^2 = 6; smallest subnormal 2^−4, 2^−3 and 2^−1 (E2M1's 16
  codes are ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}). A value past the largest, and ±inf, saturate to it.

`cast` returns the rounded values in float32 (every value of these formats is one), the sign of zero kept; a
NaN input stays NaN (FP6 and FP4 have no code for it: the MX block formats refuse non-finite input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lab.core.checks import check_choice, check_tensor

__all__ = ["FloatFormat", "FORMATS", "cast"]


@dataclass(frozen=True)
class FloatFormat:
    """Bit fields of a minifloat: exponent bits E, mantissa bits M, bias b, the largest finite value and
    whether overflow goes to infinity (E5M2) or saturates (every other format here)."""

    exponent_bits: int
    mantissa_bits: int
    bias: int
    max_finite: float
    has_inf: bool

    @property
    def bits(self) -> int:
        """Bits of one value: sign, exponent and mantissa, 1 + E + M."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def min_normal_exponent(self) -> int:
        """k_min = 1 − b: the exponent of the smallest normal value, 2^k_min, and of the subnormals' step
        2^(k_min − M)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """emax_elem of the MX spec (§6.3): the exponent of the largest binade, 2^emax ≤ max_finite < 2^(emax+1)
        (8 for E4M3, 15 for E5M2, 4 for E3M2, 2 for E2M3 and E2M1)."""
        return math.frexp(self.max_finite)[1] - 1


FORMATS = {"e4m3": FloatFormat(4, 3, 7, 448.0, False), "e5m2": FloatFormat(5, 2, 15, 57344.0, True),
           "e3m2": FloatFormat(3, 2, 3, 28.0, False), "e2m3": FloatFormat(2, 3, 1, 7.5, False),
           "e2m1": FloatFormat(2, 1, 1, 6.0, False)}


def cast(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Round ``x`` (any shape, a floating dtype; inf and NaN allowed) to the nearest value of the minifloat
    ``fmt`` ("e4m3", "e5m2", "e3m2", "e2m3" or "e2m1"), ties to even; float32 of ``x``'s shape.

    q = 2^(max(k, k_min) − M) for |x| in [2^k, 2^(k+1)), x̂ = q · round_half_even(x / q) (in float32, or float64
    for a float64 ``x``: x / q is exact in both); then |x̂| > max_finite → ±inf (E5M2) or ±max_finite (the
    others), ±inf likewise, NaN stays.
    FP8 of a float32, float16 or bfloat16 input equals ``x.to(torch.float8_e4m3fn)`` / ``x.to(torch.float8_e5m2)``
    read back as float32, bit for bit (a float64 input is rounded once, from its exact value).
    """
    check_choice("fmt", fmt, tuple(FORMATS))
    if not check_tensor("x", x).is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    f = FORMATS[fmt]
    x_w = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)   # fp16/bf16 → fp32: exact
    _, e = torch.frexp(x_w)                                   # x = m · 2^e, 0.5 ≤ |m| < 1: k = e − 1
    k = torch.clamp(e - 1, min=f.min_normal_exponent)
    q = torch.ldexp(torch.ones_like(x_w), k - f.mantissa_bits)
    finite = torch.isfinite(x_w)
    rounded = torch.where(finite, torch.round(torch.where(finite, x_w, 0.0) / q) * q, x_w)
    rounded = torch.copysign(rounded, x_w)                    # keeps −0 and the sign of what rounds to 0
    limit = float("inf") if f.has_inf else f.max_finite
    over = rounded.abs() > f.max_finite
    rounded = torch.where(over, torch.copysign(torch.full_like(rounded, limit), x_w), rounded)
    return rounded.to(torch.float32)
