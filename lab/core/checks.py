"""Argument validators shared by every module of `lab`.

Each raises with a message that names the argument, repeats the value it got and says what is
allowed: TypeError when the value has the wrong type, ValueError when it has the right type but is
out of range. ``bool`` is never accepted where a number is expected (``True`` is an ``int`` in
Python, but ``steps=True`` is a bug, not one step).

    check_int(name, value, minimum=1, maximum=None)        an int in [minimum, maximum]
    check_number(name, value, low=None, high=None, ...)     a finite real number in a range
    check_fraction(name, value, closed=(True, True))         a real number in [0, 1] (ends optional)
    check_choice(name, value, allowed)                       one of a fixed set
    check_power_of_two(name, value)                          a positive power of two
    check_divisor(name, value, total, total_name)            a positive int that divides total
    check_tensor(name, value, dims=None, dtypes=None)        a tensor of given rank / dtypes
    check_float_tensor(name, value, dims=None, dtypes=None)  a floating tensor with no NaN/inf
    check_matrix(name, value, dtypes=None)                   a 2-D floating tensor with no NaN/inf
    check_float_dtype(name, value)                           a floating-point torch dtype
    check_block(name, value, fields, counts)                 a kernel's tile: powers of two (counts: ints)
"""

from __future__ import annotations

import math
from collections.abc import Collection
from numbers import Real

import numpy as np
import torch


def check_int(name: str, value, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (either end None = unbounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value!r} is out of range; allowed: {_interval(minimum, maximum, True, True)}")
    return value


def check_number(name: str, value, low: float | None = None, high: float | None = None,
                 closed: tuple[bool, bool] = (True, True)) -> float:
    """``value`` as a float: a finite real number (not a bool) between low and high (None = unbounded)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    number = float(value)
    too_low = low is not None and (number < low or (number == low and not closed[0]))
    too_high = high is not None and (number > high or (number == high and not closed[1]))
    if not math.isfinite(number) or too_low or too_high:
        raise ValueError(f"{name}={value!r} is out of range; allowed: a finite number in "
                         f"{_interval(low, high, *closed)}")
    return number


def check_fraction(name: str, value, closed: tuple[bool, bool] = (True, True)) -> float:
    """``value`` as a float in [0, 1]; ``closed`` says whether 0 and 1 themselves are allowed."""
    return check_number(name, value, 0.0, 1.0, closed)


def check_block(name: str, value, fields: tuple[str, ...], counts: Collection[str] = ()) -> tuple[int, ...]:
    """``value`` as a kernel's tile: one power of two per name of ``fields`` (a Triton block is tl.arange's
    length; num_warps), except the fields named in ``counts`` (split-K, GROUP_M, stages): positive ints."""
    if not isinstance(value, (tuple, list)) or len(value) != len(fields):
        raise TypeError(f"{name} must be a tuple ({', '.join(fields)}), got {value!r}")
    for field, v in zip(fields, value):
        if field in counts:
            check_int(f"{name} {field}", v)
        else:
            check_power_of_two(f"{name} {field}", v)
    return tuple(value)


def check_float_dtype(name: str, value) -> torch.dtype:
    """``value`` as a floating-point torch dtype (an integer dtype would truncate what is stored in it)."""
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch dtype such as torch.bfloat16, got {value!r}")
    if not value.is_floating_point:
        raise ValueError(f"{name}={value} is not allowed; use a floating-point dtype (float32, bfloat16, float16)")
    return value


def check_choice(name: str, value, allowed: Collection) -> None:
    """``value`` is one of ``allowed`` (a bool only where ``allowed`` holds bools: True == 1 in Python)."""
    if isinstance(value, (bool, np.bool_)) and not any(isinstance(a, (bool, np.bool_)) for a in allowed):
        raise TypeError(f"{name} must be one of {tuple(allowed)}, got the bool {value!r}")
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; use one of {tuple(allowed)}")


def check_power_of_two(name: str, value) -> int:
    """``value`` as a positive power of two (1, 2, 4, …)."""
    check_int(name, value, 1)
    if value & (value - 1):
        raise ValueError(f"{name}={value!r} is not allowed; use a positive power of two")
    return value


def check_divisor(name: str, value, total: int, total_name: str) -> int:
    """``value`` as a positive int that divides ``total`` (named ``total_name`` in the message)."""
    check_int(name, value, 1)
    if total % value:
        raise ValueError(f"{name}={value!r} is not allowed; use a divisor of {total_name}={total}")
    return value


def check_tensor(name: str, value, dims: int | Collection[int] | None = None,
                 dtypes: Collection[torch.dtype] | None = None) -> torch.Tensor:
    """``value`` is a tensor with ``dims`` dimensions (one number or a set) and a dtype in ``dtypes``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    allowed_dims = {dims} if isinstance(dims, int) else dims
    if allowed_dims is not None and value.dim() not in allowed_dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, sorted(allowed_dims)))} dimensions, "
                         f"got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name} must have a dtype in {tuple(dtypes)}, got {value.dtype}")
    return value


def check_float_tensor(name: str, value, dims: int | Collection[int] | None = None,
                       dtypes: Collection[torch.dtype] | None = None) -> torch.Tensor:
    """``value`` is a floating-point tensor (rank in ``dims``, dtype in ``dtypes`` if given) with only finite entries."""
    check_tensor(name, value, dims, dtypes)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite entries")
    return value


def check_matrix(name: str, value, dtypes: Collection[torch.dtype] | None = None) -> torch.Tensor:
    """``value`` is a 2-D floating-point tensor (dtype in ``dtypes`` if given) with only finite entries."""
    return check_float_tensor(name, value, 2, dtypes)


def _interval(low, high, low_closed: bool, high_closed: bool) -> str:
    left = "(-inf" if low is None else ("[" if low_closed else "(") + f"{low}"
    right = "inf)" if high is None else f"{high}" + ("]" if high_closed else ")")
    return f"{left}, {right}"
