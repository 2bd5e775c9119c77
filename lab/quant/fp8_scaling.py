"""Per-tensor FP8 scaling, current and delayed (Micikevicius et al. 2022; Transformer Engine's two recipes).

E4M3 holds magnitudes from 2^−9 to 448 and E5M2 from 2^−16 to 57,344 (`lab.quant.minifloat`). A tensor X is
multiplied by a scale s before the cast, so that its largest magnitude lands at the top of the format:

    s = x_max / (amax · 2^margin),     X_fp8 = cast(clamp(s · X, −x_max, x_max)),     X ≈ X_fp8 / s,

with x_max the format's largest finite value and amax = max |X|. A product of two scaled tensors is computed
from the FP8 values and rescaled once: X Wᵀ ≈ (X_fp8 W_fp8ᵀ) / (s_X s_W), the FP8 GEMM with an fp32
accumulator and an fp32 epilogue. Values past x_max / s are clipped — as Transformer Engine's recipes describe;
the ones that would have rounded to another value, |s·x| ≥ x_max + q_top / 2 (q_top the spacing of the top
binade), count as *saturated* — and values below half the smallest subnormal, 2^(k_min − M − 1) / s, flush to
zero.

Where amax comes from is the recipe:

* **current**: the amax of this tensor, read before the cast (a second pass over it);
* **delayed**: the largest of the last H recorded amaxes (Transformer Engine's ``amax_history_len`` and its
  default ``amax_compute_algo="max"``): the scale of step t is set after step t − 1, from steps t − H … t − 1,
  and the tensor's own amax is recorded after its cast. It starts as Transformer Engine starts, at s = 1 with
  an empty history. A tensor whose amax grows faster than its history saturates until the history catches up;
* **none**: s = 1, the cast alone (what scaling prevents: small gradients flush to zero in E5M2).

An amax of 0 leaves the scale unchanged; a tensor with NaN or infinite entries is refused.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from lab.core.checks import check_choice, check_int, check_number, check_tensor
from lab.quant.minifloat import FORMATS, cast

__all__ = ["SCALINGS", "fp8_scale", "FP8Scaler"]

SCALINGS = ("none", "current", "delayed")
FP8 = ("e4m3", "e5m2")


def fp8_scale(amax: float, fmt: str, margin: int = 0) -> float:
    """s = x_max / (amax · 2^margin) for a tensor of largest magnitude ``amax`` > 0 cast to ``fmt``."""
    check_choice("fmt", fmt, FP8)
    check_number("amax", amax, 0.0, closed=(False, False))
    check_int("margin", margin, 0)
    return FORMATS[fmt].max_finite / (amax * 2.0**margin)


class FP8Scaler:
    """The scale of one tensor that is cast to FP8 again and again (an input, a weight, a gradient).

    ``quantize(X)`` returns (X_fp8, s): X_fp8 float32 of X's shape, every entry an FP8 value of ``fmt``, and the
    scale s it was cast with (X ≈ X_fp8 / s). ``scaling``: "current", "delayed" (``history_len`` H amaxes) or
    "none"; ``margin``: the scale is lowered by 2^margin. Counters over every call: ``elements``, ``saturated``
    (|s·x| ≥ x_max + q_top / 2: clipped to ±x_max from a value that would not round to it) and ``flushed``
    (x ≠ 0 cast to 0).
    """

    def __init__(self, fmt: str, scaling: str = "delayed", history_len: int = 16, margin: int = 0) -> None:
        check_choice("fmt", fmt, FP8)
        check_choice("scaling", scaling, SCALINGS)
        check_int("history_len", history_len)
        check_int("margin", margin, 0)
        self.fmt, self.scaling, self.margin = fmt, scaling, margin
        self.scale = 1.0
        self.history: deque[float] = deque(maxlen=history_len)
        self.elements = self.saturated = self.flushed = 0

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(X_fp8, s) for ``x`` (a floating tensor, any shape, finite); updates the scale as the recipe says."""
        if not check_tensor("x", x).is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        x = x.detach()
        amax = float(x.abs().max()) if x.numel() else 0.0
        if not math.isfinite(amax):
            raise ValueError(f"x holds NaN or infinite entries (amax = {amax}); an FP8 scale needs finite values")
        if self.scaling == "current":
            self._rescale(amax)
        s = self.scale
        f = FORMATS[self.fmt]
        x_max = f.max_finite
        scaled = x.float() * s
        x_fp8 = cast(scaled.clamp(-x_max, x_max), self.fmt)
        q_top = 2.0 ** (f.emax - f.mantissa_bits)                 # the spacing of the top binade
        self.elements += x.numel()
        self.saturated += int((scaled.abs() >= x_max + q_top / 2).sum())
        self.flushed += int(((x_fp8 == 0) & (x != 0)).sum())
        if self.scaling == "delayed":
            self.history.append(amax)
            self._rescale(max(self.history))
        return x_fp8, s

    def _rescale(self, amax: float) -> None:
        if amax > 0:
            self.scale = fp8_scale(amax, self.fmt, self.margin)
