"""FP8 from its bit fields: the two formats of Hopper's tensor cores, E4M3 and E5M2 (Micikevicius et al. 2022).

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

`cast` returns the rounded values in float32 (every FP8 value is one), NaN kept, the sign of zero kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lab.core.checks import check_choice, check_tensor

__all__ = ["FP8Format", "FORMATS", "cast"]


@dataclass(frozen=True)
class FP8Format:
    """Bit fields of an FP8 format: exponent bits E, mantissa bits M, bias b, the largest finite value and
    whether overflow goes to infinity (E5M2) or saturates (E4M3, which has no infinity)."""

    exponent_bits: int
    mantissa_bits: int
    bias: int
    max_finite: float
    has_inf: bool

    @property
    def min_normal_exponent(self) -> int:
        """k_min = 1 − b: the exponent of the smallest normal value, 2^k_min, and of the subnormals' step
        2^(k_min − M)."""
        return 1 - self.bias


FORMATS = {"e4m3": FP8Format(4, 3, 7, 448.0, False), "e5m2": FP8Format(5, 2, 15, 57344.0, True)}


def cast(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Round ``x`` (any shape, a floating dtype; inf and NaN allowed) to the nearest value of FP8 format
    ``fmt`` ("e4m3" or "e5m2"), ties to even; float32 of ``x``'s shape.

    q = 2^(max(k, k_min) − M) for |x| in [2^k, 2^(k+1)), x̂ = q · round_half_even(x / q) (in float64, where
    x / q is exact); then |x̂| > max_finite → ±inf (E5M2) or ±max_finite (E4M3), ±inf likewise, NaN stays.
    For float32, float16 and bfloat16 inputs equal to ``x.to(torch.float8_e4m3fn)`` / ``x.to(torch.float8_e5m2)``
    read back as float32, bit for bit (a float64 input is rounded once, from its exact value).
    """
    check_choice("fmt", fmt, tuple(FORMATS))
    if not check_tensor("x", x).is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    f = FORMATS[fmt]
    x64 = x.detach().to(torch.float64)
    _, e = torch.frexp(x64)                                   # x = m · 2^e, 0.5 ≤ |m| < 1: k = e − 1
    k = torch.clamp(e.to(torch.float64) - 1, min=f.min_normal_exponent)
    q = torch.exp2(k - f.mantissa_bits)
    finite = torch.isfinite(x64)
    rounded = torch.where(finite, torch.round(torch.where(finite, x64, 0.0) / q) * q, x64)
    rounded = torch.copysign(rounded, x64)                    # keeps −0 and the sign of what rounds to 0
    limit = float("inf") if f.has_inf else f.max_finite
    over = rounded.abs() > f.max_finite
    rounded = torch.where(over, torch.copysign(torch.full_like(rounded, limit), x64), rounded)
    return rounded.to(torch.float32)
