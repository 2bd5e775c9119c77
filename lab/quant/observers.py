"""Calibration observers: the activation range [lo, hi] for *static* quantization.

Weights are known ahead of time, so their range is simply their min–max. Activations change with
every input; static quantization fixes (s, z) once from calibration batches, dynamic quantization
recomputes them for each token at run time (`lab.quant.linear.W8A8Linear`). An observer sees the calibration
activations one batch at a time (``update``) and proposes a range (``range``), then
``qparams(bits, symmetric)`` turns it into (s, z) with `lab.quant.affine.qparams`:

- `MinMaxObserver`: lo = min x, hi = max x over everything seen. No clipping error, but one outlier
  stretches s for every other value (rounding error s²/12 grows with the square of the range).
- `PercentileObserver`: lo, hi = the p-th lower and upper percentiles of the values seen; clips
  the rare extremes to shrink s.
- `MSEObserver`: lo, hi = c·(min, max) with the clipping factor c ∈ (0, 1] on a grid that minimises
  the quantization error Σ (x − x̂)² of the values seen at the given bit width — the balance of
  clipping error against rounding error.

`ChannelAbsMaxObserver` keeps max |x_j| per feature j (the last dimension): the per-channel
statistic SmoothQuant needs (`lab.quant.scaling`).

Percentile and MSE keep a seeded random sample of at most ``max_samples`` values per batch
(float32, on the CPU); the ranges are per tensor.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_fraction, check_int, check_number
from lab.quant.affine import _quantize_with, check_grid, check_quant_input, grid, qparams, range_qparams


class MinMaxObserver:
    """Running lo = min x, hi = max x over every batch passed to ``update``."""

    def __init__(self) -> None:
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        check_quant_input(x)
        x = x.detach().float()
        lo, hi = x.min().cpu(), x.max().cpu()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self, bits: int = 8, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        check_grid(bits, symmetric)
        if self.lo is None:
            raise ValueError("the observer has seen no data; call update(x) on calibration batches first")
        return self.lo, self.hi

    def qparams(self, bits: int, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) for the observed range, see `lab.quant.affine.qparams`."""
        check_grid(bits, symmetric)
        return qparams(*self.range(bits, symmetric), bits, symmetric)


class _SampleObserver(MinMaxObserver):
    """Keeps up to ``max_samples`` randomly chosen values of every batch (seeded) besides min and max."""

    def __init__(self, max_samples: int = 65536, seed: int = 0) -> None:
        super().__init__()
        check_int("max_samples", max_samples)
        check_int("seed", seed, 0, 2 ** 64 - 1)
        self.max_samples = max_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.samples: list[torch.Tensor] = []

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        flat = x.detach().float().flatten().cpu()
        if flat.numel() > self.max_samples:
            flat = flat[torch.randperm(flat.numel(), generator=self.generator)[:self.max_samples]]
        self.samples.append(flat)

    def _values(self) -> torch.Tensor:
        if not self.samples:
            raise ValueError("the observer has seen no data; call update(x) on calibration batches first")
        return torch.cat(self.samples)


class PercentileObserver(_SampleObserver):
    """lo, hi = the (100 − p)-th and p-th percentiles of the sampled values, p ∈ (50, 100]."""

    def __init__(self, percentile: float = 99.99, max_samples: int = 65536, seed: int = 0) -> None:
        super().__init__(max_samples, seed)
        self.percentile = check_number("percentile", percentile, 50, 100, closed=(False, True))

    def range(self, bits: int = 8, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        check_grid(bits, symmetric)
        values = self._values()
        p = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        lo, hi = torch.quantile(values, p)
        return lo, hi


class MSEObserver(_SampleObserver):
    """lo, hi = c·(min, max) with c on an even grid of ``n_grid`` points in [``min_ratio``, 1] minimising
    Σ (x − x̂)² over the sampled values at the requested bit width."""

    def __init__(self, n_grid: int = 100, min_ratio: float = 0.2, max_samples: int = 65536, seed: int = 0) -> None:
        super().__init__(max_samples, seed)
        check_int("n_grid", n_grid)
        check_fraction("min_ratio", min_ratio, closed=(False, True))
        self.ratios = torch.linspace(1.0, min_ratio, n_grid)

    def range(self, bits: int = 8, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        check_grid(bits, symmetric)
        values = self._values()
        qmin, qmax = grid(bits, symmetric)
        best, best_err = self.ratios[0], float("inf")
        for c in self.ratios:
            scale, zero_point = range_qparams(c * self.lo, c * self.hi, bits, symmetric)
            x_hat = (_quantize_with(values, scale, zero_point, qmin, qmax).float() - zero_point) * scale
            err = (values - x_hat).square().sum().item()
            if err < best_err:
                best, best_err = c, err
        return best * self.lo, best * self.hi


class ChannelAbsMaxObserver:
    """Running max over tokens of |x_j| for each feature j of x (…, C): ``abs_max`` (C,) float32."""

    def __init__(self) -> None:
        self.abs_max: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        check_quant_input(x)
        if x.dim() == 0 or (self.abs_max is not None and x.shape[-1] != self.abs_max.shape[0]):
            raise ValueError(f"x must have shape (..., C) with C the width seen so far "
                             f"({None if self.abs_max is None else self.abs_max.shape[0]}), got {tuple(x.shape)}")
        current = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).float().cpu()
        self.abs_max = current if self.abs_max is None else torch.maximum(self.abs_max, current)
