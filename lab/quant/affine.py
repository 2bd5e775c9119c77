"""Affine (uniform) quantization of a tensor to b-bit integers, and back.

A real value x is stored as an integer q on the grid {qmin, …, qmax} with a scale s > 0 and an integer
zero point z (the integer that represents x = 0 exactly):

    q = clamp(round(x / s) + z, qmin, qmax),        x̂ = s · (q − z)

Asymmetric (unsigned grid qmin = 0, qmax = 2ᵇ − 1), from the range [lo, hi] of the values, widened to
contain 0 (lo ← min(lo, 0), hi ← max(hi, 0)) so that 0 stays exact:

    s = (hi − lo) / (2ᵇ − 1),        z = clamp(round(−lo / s), qmin, qmax)

Symmetric (signed grid qmin = −2ᵇ⁻¹, qmax = 2ᵇ⁻¹ − 1, z = 0), from m = max(|lo|, |hi|):

    s = m / qmax

(the code −2ᵇ⁻¹ is never produced by rounding, only by clamping: the grid is symmetric about 0).
A range of width 0 (an all-zero slice) gets s = 1, so that the zero slice stays exactly zero; so does a range
so narrow (< 2ᵇ·1e-38) that s would be subnormal and 1/s overflow to inf.

Inside the range the rounding error is |x − x̂| ≤ s/2 (uniform over (−s/2, s/2] for smooth data:
mean-squared error s²/12); outside it, x̂ is clipped to s·(qmin − z) or s·(qmax − z).

As in PyTorch's kernels, x / s is computed as x · (1/s) in float32 and rounded half to even
(`torch.round`), so `fake_quantize` with the same s and z equals
``torch.fake_quantize_per_tensor_affine`` / ``…_per_channel_affine`` bit for bit.

Granularity: one (s, z) for the whole tensor ("tensor"); one per index along ``axis`` ("channel",
e.g. axis 0 = the output channels of a weight W (C_out, C_in)); or, for a 2-D tensor, one per index
along ``axis`` and per group of ``group_size`` consecutive elements along the other dimension
("group": for W (C_out, C_in) and axis 0, one (s, z) per row and per block of g input columns, so
scale has shape (C_out, C_in / g)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from lab.core.checks import (check_choice, check_divisor, check_float_dtype, check_float_tensor, check_int,
                             check_number, check_tensor)

GRANULARITIES = ("tensor", "channel", "group")
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass(frozen=True)
class QuantizedTensor:
    """Integers ``qdata`` plus what is needed to map them back: x̂ = scale · (qdata − zero_point).

    ``qdata``: int16 tensor of x's shape with values in [qmin, qmax];
    ``scale`` float32 and ``zero_point`` int32, of shape () for "tensor", (C,) for "channel"
    (C = size along ``axis``), and x's shape with the grouped dimension divided by ``group_size`` for
    "group"; ``group_size`` is None unless granularity is "group".
    """

    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    bits: int
    granularity: str
    axis: int
    group_size: int | None

    def __post_init__(self) -> None:
        check_tensor("qdata", self.qdata, dtypes=INT_DTYPES)
        check_tensor("zero_point", self.zero_point, dtypes=INT_DTYPES)
        check_float_dtype("scale.dtype", check_tensor("scale", self.scale).dtype)
        check_bits(self.bits)
        if (self.qmin, self.qmax) not in (grid(self.bits, False), grid(self.bits, True)):
            raise ValueError(f"qmin={self.qmin!r}, qmax={self.qmax!r} is not a {self.bits}-bit grid; allowed: "
                             f"{grid(self.bits, False)} or {grid(self.bits, True)}")
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_int("axis", self.axis, 0, max(self.qdata.dim() - 1, 0))
        if self.granularity != "group" and self.group_size is not None:
            raise ValueError(f"group_size={self.group_size!r} is not allowed with granularity="
                             f"{self.granularity!r}; use None")
        shape = {"tensor": (), "channel": tuple(self.shape[self.axis:self.axis + 1])}.get(self.granularity)
        if shape is None:                               # "group": a 2-D tensor, one (s, z) per row and group
            check_tensor("qdata", self.qdata, 2)
            other = 1 - self.axis
            check_divisor("group_size", self.group_size, self.shape[other], f"qdata.shape[{other}]")
            shape = tuple(n // self.group_size if d == other else n for d, n in enumerate(self.shape))
        if self.scale.shape != shape or self.zero_point.shape != shape:
            raise ValueError(f"scale and zero_point must have shape {shape} for granularity={self.granularity!r}, "
                             f"got {tuple(self.scale.shape)} and {tuple(self.zero_point.shape)}")

    @property
    def shape(self) -> torch.Size:
        return self.qdata.shape


def grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax): (−2ᵇ⁻¹, 2ᵇ⁻¹ − 1) if symmetric else (0, 2ᵇ − 1).

    With the symmetric scale s = max|x| / (2ᵇ⁻¹ − 1) rounding reaches only ±(2ᵇ⁻¹ − 1): 2ᵇ − 1 levels.
    The reference GPTQ code's symmetric mode keeps all 2ᵇ (s = 2·max|x| / (2ᵇ − 1), zero point 2ᵇ⁻¹).
    """
    check_bits(bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def check_bits(bits: int, name: str = "bits") -> None:
    """``bits`` (the argument ``name``) is an int in [2, 8]."""
    check_int(name, bits, 2, 8)


def check_grid(bits: int, symmetric: bool) -> None:
    """``bits`` is an int in [2, 8] and ``symmetric`` a bool."""
    check_bits(bits)
    check_choice("symmetric", symmetric, (False, True))


def check_quant_input(x: torch.Tensor, name: str = "x") -> None:
    """``x`` is a non-empty floating-point tensor with only finite values (what a range can be taken of)."""
    check_float_tensor(name, x)
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def _check_layout(x: torch.Tensor, granularity: str, group_size: int, axis: int) -> int:
    """Validate the granularity arguments for x; return axis as a non-negative index."""
    check_choice("granularity", granularity, GRANULARITIES)
    if granularity == "tensor":
        return 0
    check_int("axis", axis, -x.dim(), x.dim() - 1)
    axis %= x.dim()
    if granularity == "group":
        if x.dim() != 2:
            raise ValueError(f"granularity='group' needs a 2-D tensor, got shape {tuple(x.shape)}")
        check_divisor("group_size", group_size, x.shape[1 - axis], f"x.shape[{1 - axis}]")
    return axis


def _grouped(x: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """2-D x viewed as (C, n_groups, g) with C along ``axis``."""
    rows = x if axis == 0 else x.T
    return rows.reshape(rows.shape[0], -1, group_size)


def value_range(x: torch.Tensor, granularity: str, group_size: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of x per tensor / channel / group, float32, in the shape of `QuantizedTensor.scale`."""
    x = x.detach().float()
    if granularity == "tensor":
        return x.min(), x.max()
    if granularity == "channel":
        flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        return flat.amin(1), flat.amax(1)
    groups = _grouped(x, axis, group_size)
    lo, hi = groups.amin(-1), groups.amax(-1)
    return (lo, hi) if axis == 0 else (lo.T, hi.T)


def qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero_point int32) of the module-docstring formulas for ranges [lo, hi]: finite floats or
    float tensors of one shape, lo ≤ hi."""
    check_grid(bits, symmetric)
    for name, value in (("lo", lo), ("hi", hi)):
        check_float_tensor(name, value) if torch.is_tensor(value) else check_number(name, value)
    low, high = torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)
    if low.shape != high.shape or (low > high).any():
        raise ValueError(f"lo and hi must be ranges of one shape with lo <= hi, got lo={lo}, hi={hi}")
    return range_qparams(lo, hi, bits, symmetric)


def range_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int,
                  symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`qparams` without its argument checks, for ranges that `lab` computed itself (no read-back)."""
    qmin, qmax = grid(bits, symmetric)
    lo = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0.0)
    hi = torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0.0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale >= torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))
    if not symmetric:
        zero_point = torch.clamp(torch.round(-lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def broadcast_param(p: torch.Tensor, shape: torch.Size, granularity: str, axis: int,
                    group_size: int | None) -> torch.Tensor:
    """A per-tensor/channel/group parameter expanded to broadcast against a tensor of ``shape``."""
    if granularity == "tensor":
        return p
    if granularity == "channel":
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return p.reshape(view)
    return p.repeat_interleave(group_size, dim=1 - axis)


def quantize_with(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                  qmax: int) -> torch.Tensor:
    """q = clamp(round(x · (1/s)) + z, qmin, qmax) as int16 for a float x with finite entries; s > 0 (float) and
    z (integer) are numbers or tensors that broadcast against x, qmin < qmax ints within int16's range."""
    check_float_tensor("x", x)
    _check_grid_params(x, scale, zero_point, qmin, qmax)
    if qmin < -2 ** 15 or qmax >= 2 ** 15:
        raise ValueError(f"qmin={qmin}, qmax={qmax} do not fit the int16 the codes are stored in; allowed: "
                         f"[{-2 ** 15}, {2 ** 15 - 1}]")
    return _quantize_with(x, scale, zero_point, qmin, qmax)


def _quantize_with(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                   qmax: int) -> torch.Tensor:
    """`quantize_with` without its argument checks, for the grids `lab` computed itself."""
    q = torch.round(x.float() * (1.0 / scale)) + zero_point
    return torch.clamp(q, qmin, qmax).to(torch.int16)


def quantize(x: torch.Tensor, bits: int, symmetric: bool = False, granularity: str = "tensor",
             group_size: int = 128, axis: int = 0) -> QuantizedTensor:
    """Quantize x (any float dtype and shape) with min–max ranges at the given granularity.

    bits ∈ [2, 8]; ``granularity`` "tensor" | "channel" | "group" (2-D only, ``group_size`` must divide
    the dimension other than ``axis``). Formulas in the module docstring.
    """
    check_quant_input(x)
    check_grid(bits, symmetric)
    axis = _check_layout(x, granularity, group_size, axis)
    lo, hi = value_range(x, granularity, group_size, axis)
    scale, zero_point = range_qparams(lo, hi, bits, symmetric)
    qmin, qmax = grid(bits, symmetric)
    group = group_size if granularity == "group" else None
    q = _quantize_with(x, broadcast_param(scale, x.shape, granularity, axis, group),
                      broadcast_param(zero_point, x.shape, granularity, axis, group), qmin, qmax)
    return QuantizedTensor(q, scale, zero_point, qmin, qmax, bits, granularity, axis, group)


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """x̂ = s · (q − z), float32, of the quantized tensor's shape."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
    scale = broadcast_param(qt.scale, qt.shape, qt.granularity, qt.axis, qt.group_size)
    zero_point = broadcast_param(qt.zero_point, qt.shape, qt.granularity, qt.axis, qt.group_size)
    return (qt.qdata.float() - zero_point) * scale


def split_rows(qt: QuantizedTensor, sizes: Sequence[int]) -> list[QuantizedTensor]:
    """A QuantizedTensor quantized along axis 0 ("channel" or "group": one grid per row) cut into blocks
    of ``sizes`` consecutive rows, each with its rows of ``scale`` and ``zero_point``: the parts of weights
    that were stacked, (Σ rows, C_in), to be quantized together."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
    if qt.granularity == "tensor" or qt.axis != 0:
        raise ValueError(f"qt must have one grid per row (granularity 'channel' or 'group', axis 0), "
                         f"got granularity={qt.granularity!r}, axis={qt.axis}")
    if any(n < 1 for n in sizes) or sum(sizes) != qt.shape[0]:
        raise ValueError(f"sizes must be positive and add up to qt's {qt.shape[0]} rows, got {list(sizes)}")
    parts = zip(qt.qdata.split(list(sizes)), qt.scale.split(list(sizes)), qt.zero_point.split(list(sizes)))
    return [replace(qt, qdata=q, scale=s, zero_point=z) for q, s, z in parts]


class _RoundWithStraightThrough(torch.autograd.Function):
    """Forward: x̂ = s·(clamp(round(x/s) + z, qmin, qmax) − z). Backward (straight-through estimator):
    ∂x̂/∂x = 1 where round(x/s) + z lies inside [qmin, qmax], 0 where it was clipped."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = torch.round(x.float() * (1.0 / scale)) + zero_point
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return ((torch.clamp(q, qmin, qmax) - zero_point) * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    """A tensor of ``shape`` broadcasts against one of ``target`` without changing target's shape."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def fake_quantize_with(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                       qmax: int) -> torch.Tensor:
    """x̂ = s·(q − z) in x's dtype with the straight-through gradient; s > 0 (float) and z (integer) are numbers
    or tensors that broadcast against x, qmin < qmax ints."""
    check_float_dtype("x.dtype", check_tensor("x", x).dtype)
    _check_grid_params(x, scale, zero_point, qmin, qmax)
    return _RoundWithStraightThrough.apply(x, scale, zero_point, qmin, qmax)


def _check_grid_params(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> None:
    """s > 0 (a number or float tensor) and z (an int or integer tensor) broadcast against x; qmin < qmax ints."""
    check_int("qmin", qmin, None)
    check_int("qmax", qmax, qmin + 1)
    if not torch.is_tensor(scale):
        check_number("scale", scale, low=0, closed=(False, True))
    elif (check_float_tensor("scale", scale) <= 0).any():
        raise ValueError(f"scale must hold positive scales, got {scale}")
    if torch.is_tensor(zero_point):
        check_tensor("zero_point", zero_point, dtypes=INT_DTYPES)
    else:
        check_int("zero_point", zero_point, None)
    for name, p in (("scale", scale), ("zero_point", zero_point)):
        if torch.is_tensor(p) and not _broadcasts(p.shape, x.shape):
            raise ValueError(f"{name} of shape {tuple(p.shape)} must broadcast against x of shape {tuple(x.shape)}")


def fake_quantize(x: torch.Tensor, bits: int, symmetric: bool = False, granularity: str = "tensor",
                  group_size: int = 128, axis: int = 0) -> torch.Tensor:
    """Quantize and dequantize x in one differentiable step (for quantization-aware training).

    Same arguments and grid as `quantize`; the ranges are x's current min–max (treated as constants
    by autograd); the gradient is the straight-through estimator of `fake_quantize_with`.
    """
    check_quant_input(x)
    check_grid(bits, symmetric)
    axis = _check_layout(x, granularity, group_size, axis)
    scale, zero_point = range_qparams(*value_range(x, granularity, group_size, axis), bits, symmetric)
    group = group_size if granularity == "group" else None
    return _RoundWithStraightThrough.apply(x, broadcast_param(scale, x.shape, granularity, axis, group),
                                           broadcast_param(zero_point, x.shape, granularity, axis, group),
                                           *grid(bits, symmetric))


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int | None = None,
                 symmetric: bool = False) -> QuantizedTensor:
    """Round-to-nearest of W (C_out, C_in) per output channel, or per group of ``group_size`` columns."""
    check_tensor("weight", weight, 2)
    check_quant_input(weight, "weight")
    if group_size is not None:
        check_int("group_size", group_size)
    granularity = "channel" if group_size is None else "group"
    return quantize(weight.detach(), bits, symmetric, granularity, group_size or 1, axis=0)
