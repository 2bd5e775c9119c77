"""Floating-point formats and dynamic loss scaling, from the bit layout up.

A binary float with e exponent bits and m mantissa (fraction) bits, bias β = 2^(e−1) − 1:

    max               = 2^β · (2 − 2^−m)        (largest exponent field 2^e − 2 is e_max = β)
                      = 2^(β+1) · (2 − 2^(1−m)) for a finite-only format (FP8 E4M3: 448)
    smallest normal   = 2^(1−β)
    smallest subnormal= 2^(1−β−m)
    machine epsilon   = 2^−m                    (spacing of the numbers in [1, 2))
    spacing at x      = 2^(max(⌊log2 |x|⌋, 1−β) − m)   (one unit in the last place)

Dynamic loss scaling (Micikevicius et al. 2018, as in ``torch.amp.GradScaler``): multiply the
loss by s; unscale the gradients by 1/s; if any is inf/nan skip the step and set s ← s·backoff,
otherwise step and, after ``growth_interval`` finite steps in a row, s ← s·growth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from lab.core.checks import check_float_dtype, check_float_tensor, check_fraction, check_int, check_number, check_tensor

# (exponent bits e, mantissa bits m); total bits = 1 + e + m
FORMATS = {torch.float64: (11, 52), torch.float32: (8, 23), torch.bfloat16: (8, 7), torch.float16: (5, 10),
           torch.float8_e5m2: (5, 2), torch.float8_e4m3fn: (4, 3)}
# Finite-only formats ("fn"): no infinity; the all-ones exponent field holds normal numbers but for its all-ones
# mantissa (NaN), so e_max = β + 1 and the largest mantissa is 2 − 2^(1−m): E4M3's 2^8 · 1.75 = 448.
FINITE_ONLY = (torch.float8_e4m3fn,)


def _layout(dtype) -> tuple[int, int]:
    check_float_dtype("dtype", dtype)
    if dtype not in FORMATS:
        allowed = tuple(str(d).removeprefix("torch.") for d in FORMATS)
        raise ValueError(f"dtype={dtype!r} is not allowed; use one of torch.{{{', '.join(allowed)}}}")
    return FORMATS[dtype]


def float_format_info(dtype: torch.dtype) -> dict:
    """Bits, exponent_bits, mantissa_bits, bias, max, smallest_normal, smallest_subnormal, eps
    of a float format, computed from its bit layout (formulas in the module docstring)."""
    e, m = _layout(dtype)
    bias = 2 ** (e - 1) - 1
    largest = math.ldexp(2 - 2.0 ** (1 - m), bias + 1) if dtype in FINITE_ONLY else math.ldexp(2 - 2.0**-m, bias)
    return {"dtype": str(dtype).removeprefix("torch."), "bits": 1 + e + m, "exponent_bits": e,
            "mantissa_bits": m, "bias": bias, "max": largest,
            "smallest_normal": math.ldexp(1.0, 1 - bias), "smallest_subnormal": math.ldexp(1.0, 1 - bias - m),
            "eps": 2.0**-m}


def _check_real(x) -> torch.Tensor:
    """``x`` is a tensor of real numbers: floating or integer, not complex, not bool."""
    check_tensor("x", x)
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"x must hold real numbers (a floating or integer tensor), got {x.dtype}")
    return x


def round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x rounded to the nearest ``dtype`` number (round-half-to-even, by casting), returned as float64."""
    _layout(dtype)
    _check_real(x)
    return x.to(dtype).to(torch.float64)


def spacing(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ULP of ``dtype`` at x: 2^(max(⌊log2|x|⌋, 1−β) − m), float64 (x = 0 gives the smallest subnormal;
    x finite, real)."""
    e, m = _layout(dtype)
    _check_real(x)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite entries, which have no spacing")
    bias = 2 ** (e - 1) - 1
    x64 = x.to(torch.float64)
    _, exp = torch.frexp(x64.abs())  # |x| = f·2^exp, f in [0.5, 1) → ⌊log2|x|⌋ = exp − 1
    exponent = torch.where(x64 == 0, 1 - bias, exp - 1).clamp(min=1 - bias)
    return torch.ldexp(torch.ones_like(x64), exponent - m)


def underflow_fraction(grads: Iterable[torch.Tensor], dtype: torch.dtype = torch.float16,
                       scale: float = 1.0) -> float:
    """Fraction of the nonzero gradient values g for which round_to(g·scale, dtype) is 0.

    ``grads``: an iterable of floating tensors with finite entries (or one tensor)."""
    _layout(dtype)
    check_number("scale", scale, low=0, closed=(False, True))
    if torch.is_tensor(grads):
        grads = [grads]
    elif isinstance(grads, (str, bytes)) or not isinstance(grads, Iterable):
        raise TypeError(f"grads must be an iterable of gradient tensors, got {grads!r:.80}")
    nonzero = zero = 0
    for i, g in enumerate(grads):
        check_float_tensor(f"grads[{i}]", g)
        g = g.detach().to(torch.float64).flatten()
        g = g[g != 0]
        nonzero += g.numel()
        zero += int(((g * scale).to(dtype) == 0).sum())
    if nonzero == 0:
        raise ValueError("grads hold no nonzero value")
    return zero / nonzero


def plot_format_ranges(ax=None):
    """Bar per format (fp32, bf16, fp16, FP8 E5M2 and E4M3) from log2(smallest subnormal) to log2(max), normal
    range darker; returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is not None and not isinstance(ax, plt.Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 2.5))
    shown = (torch.float32, torch.bfloat16, torch.float16, torch.float8_e5m2, torch.float8_e4m3fn)
    for i, dtype in enumerate(shown):
        info = float_format_info(dtype)
        lo, mid, hi = (math.log2(info[k]) for k in ("smallest_subnormal", "smallest_normal", "max"))
        ax.barh(i, mid - lo, left=lo, color="tab:orange", alpha=0.5, label="subnormal" if i == 0 else None)
        ax.barh(i, hi - mid, left=mid, color="tab:blue", label="normal" if i == 0 else None)
        ax.text(hi + 2, i, f"eps = 2^-{info['mantissa_bits']}", va="center")
    ax.set_yticks(range(len(shown)), ["fp32", "bf16", "fp16", "fp8 E5M2", "fp8 E4M3"])
    ax.set_xlabel("log2 |x|")
    ax.set_xlim(-160, 190)
    ax.legend(loc="upper left")
    return ax


def plot_rounding(x: torch.Tensor | None = None, ax=None):
    """Relative rounding error |round_to(x) − x|/|x| and ULP/|x| for fp32, bf16, fp16 over x; returns the Axes."""
    import matplotlib.pyplot as plt

    if x is not None:
        _check_real(check_tensor("x", x, 1))
        if not (x.numel() and bool((x > 0).all()) and bool(torch.isfinite(x).all())):
            raise ValueError(f"x must hold positive finite numbers (a log axis), got {x!r:.80}")
    if ax is not None and not isinstance(ax, plt.Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    x = torch.logspace(-8, 5, 2000, dtype=torch.float64) if x is None else x.to(torch.float64)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    for dtype, color in ((torch.float32, "tab:green"), (torch.bfloat16, "tab:red"), (torch.float16, "tab:blue")):
        name = str(dtype).removeprefix("torch.")
        ax.loglog(x, ((round_to(x, dtype) - x).abs() / x).clamp(min=1e-12), ".", ms=1, color=color, alpha=0.4)
        ax.loglog(x, spacing(x, dtype) / x, color=color, label=f"{name}: ULP/|x|")
    ax.set_xlabel("x")
    ax.set_ylabel("relative error")
    ax.legend()
    return ax


class DynamicLossScaler:
    """Dynamic loss scaling with the same arithmetic as ``torch.amp.GradScaler`` (scale kept in fp32).

    Per iteration: ``scale_loss(loss).backward()``; optionally ``unscale_(optimizer)`` (e.g. to clip);
    ``step(optimizer)`` (unscales if needed, skips when a gradient is inf/nan); ``update()``.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000) -> None:
        check_number("init_scale", init_scale, low=0, closed=(False, True))
        check_number("growth_factor", growth_factor, low=1, closed=(False, True))
        check_fraction("backoff_factor", backoff_factor, closed=(False, False))
        check_int("growth_interval", growth_interval)
        self._scale = torch.tensor(float(init_scale), dtype=torch.float32)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = growth_interval
        self.growth_tracker = 0  # finite steps in a row since the last change
        self._found_inf: bool | None = None  # None: not unscaled in this iteration

    @property
    def scale(self) -> float:
        return float(self._scale)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """loss · s (s as a float32 tensor)."""
        if not torch.is_tensor(loss):
            raise TypeError(f"loss must be a torch.Tensor, got {type(loss).__name__}")
        return loss * self._scale.to(loss.device)

    def unscale_(self, optimizer_or_grads) -> bool:
        """Multiply every gradient in place by fp32(1/s); return found_inf (any inf/nan)."""
        if self._found_inf is not None:
            raise RuntimeError("unscale_() was already called since the last update()")
        if isinstance(optimizer_or_grads, torch.optim.Optimizer):
            grads = [p.grad for group in optimizer_or_grads.param_groups for p in group["params"]
                     if p.grad is not None]
        else:
            grads = list(optimizer_or_grads) if isinstance(optimizer_or_grads, Iterable) else [None]
            if not all(torch.is_tensor(g) for g in grads):
                raise TypeError("optimizer_or_grads must be a torch.optim.Optimizer or an iterable of tensors, "
                                f"got {type(optimizer_or_grads).__name__}")
        inv_scale = self._scale.double().reciprocal().float()
        found_inf = False
        for g in grads:
            found_inf |= not bool(torch.isfinite(g).all())
            g.mul_(inv_scale.to(g.device))
        self._found_inf = found_inf
        return found_inf

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale (if not yet done) and call optimizer.step() unless a gradient was inf/nan; True if it stepped."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if self._found_inf is None:
            self.unscale_(optimizer)
        if self._found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """s ← s·backoff after an overflow; s ← s·growth after growth_interval finite steps in a row."""
        if self._found_inf is None:
            raise RuntimeError("update() needs unscale_() or step() first in this iteration")
        if self._found_inf:
            self._scale = (self._scale.double() * self.backoff_factor).float()  # fp32(s·b), as torch does
            self.growth_tracker = 0
        else:
            self.growth_tracker += 1
            if self.growth_tracker == self.growth_interval:
                grown = (self._scale.double() * self.growth_factor).float()
                if torch.isfinite(grown):
                    self._scale = grown
                self.growth_tracker = 0
        self._found_inf = None
