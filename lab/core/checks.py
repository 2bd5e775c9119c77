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
    check_numbers(name, value, dims=None)                    real numbers (tensor, array, list) as a NumPy array
    check_device(name, value)                                a torch.device, or a str naming one ("cuda:0")
    check_path(name, value, folder=False)                    a file path (folder=True: a folder; None: either)
    check_group(name, value)                                 None (the default group) or a ProcessGroup
    check_list(name, value, item=None)                       a non-empty list or tuple, each element checked
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


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
    try:
        number = float(value)
    except OverflowError:                       # an int beyond float's range
        number = math.inf
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
    """``value`` is one of ``allowed``, of the same kind: a bool only where ``allowed`` holds bools (True == 1 in
    Python) and only a bool where it holds nothing else; a float only where it holds floats (2.0 == 2); never
    a tensor or an array."""
    bools, is_bool = [isinstance(a, (bool, np.bool_)) for a in allowed], isinstance(value, (bool, np.bool_))
    floats = [isinstance(v, Real) and not isinstance(v, Integral) for v in (value, *allowed)]
    if (is_bool and not any(bools)) or (bools and all(bools) and not is_bool) or (floats[0] and not any(floats[1:])):
        raise TypeError(f"{name} must be one of {tuple(allowed)}, got the {type(value).__name__} {value!r}")
    try:
        if isinstance(value, (torch.Tensor, np.ndarray)):
            raise TypeError
        found = value in allowed
    except (TypeError, ValueError, RuntimeError):              # unhashable, or a tensor's ambiguous truth
        raise TypeError(f"{name} must be one of {tuple(allowed)}, got {value!r:.80} ({type(value).__name__})") from None
    if not found:
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
    """``value`` is a floating-point tensor (rank in ``dims``, dtype in ``dtypes`` if given), only finite entries."""
    check_tensor(name, value, dims, dtypes)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite entries")
    return value


def check_matrix(name: str, value, dtypes: Collection[torch.dtype] | None = None) -> torch.Tensor:
    """``value`` is a 2-D floating-point tensor (dtype in ``dtypes`` if given) with only finite entries."""
    return check_float_tensor(name, value, 2, dtypes)


def check_numbers(name: str, value, dims: int | Collection[int] | None = None) -> np.ndarray:
    """``value`` — a tensor, NumPy array or (nested) sequence of real numbers; not a str, not bools — as a NumPy
    array with ``dims`` dimensions (one number or a set): a floating tensor as float64, anything else as given."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.double() if value.is_floating_point() else value).numpy()    # NumPy has no bfloat16
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError):                          # a str, a ragged list, a bf16 scalar
        raise TypeError(f"{name} must be real numbers (a tensor, array or list), got {value!r:.80}") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers (ints or floats), got {type(value).__name__} of dtype "
                        f"{array.dtype}: {value!r:.80}")
    allowed_dims = {dims} if isinstance(dims, int) else dims
    if allowed_dims is not None and array.ndim not in allowed_dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, sorted(allowed_dims)))} dimensions, "
                         f"got shape {array.shape}")
    return array


def check_device(name: str, value) -> torch.device:
    """``value`` as a torch.device: a torch.device, or a str naming one ("cpu", "cuda", "cuda:0")."""
    if isinstance(value, torch.device):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a torch.device or a str such as 'cpu' or 'cuda', got {value!r:.80} "
                        f"({type(value).__name__})")
    try:
        return torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name}={value!r} is not a device; use e.g. 'cpu', 'cuda' or 'cuda:0'") from None


def check_path(name: str, value, folder: bool | None = False) -> Path:
    """``value`` as a Path: a non-empty str or os.PathLike naming a file (``folder``: a folder; None: either) that
    may not exist yet, but is not an existing folder (``folder``: an existing file)."""
    if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str):
        raise TypeError(f"{name} must be a path (a str or pathlib.Path), got {value!r:.80} ({type(value).__name__})")
    path = Path(value)
    if not os.fspath(value):
        raise ValueError(f"{name}='' is not allowed; give a {'file' if folder is False else 'folder'} path")
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{name}={str(value)!r} is an existing file; give a folder (created if missing)")
    if folder is False and path.is_dir():
        raise ValueError(f"{name}={str(value)!r} is an existing folder; give a file path")
    return path


def check_list(name: str, value, item: Callable[[str, object], object] | None = None) -> list:
    """``value`` as a non-empty list: a list or tuple (a str is neither), each element checked by
    ``item(f"{name}[{i}]", element)`` (e.g. `check_int`), all before the caller does any work."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple, got {value!r:.80} ({type(value).__name__})")
    if not value:
        raise ValueError(f"{name}={value!r} is empty; give at least one value")
    if item is not None:
        for i, element in enumerate(value):
            item(f"{name}[{i}]", element)
    return list(value)


def check_group(name: str, value):
    """``value`` as a process group: None (the default group) or a torch.distributed.ProcessGroup."""
    if value is not None and not isinstance(value, dist.ProcessGroup):
        raise TypeError(f"{name} must be None (the default group) or a torch.distributed.ProcessGroup, got "
                        f"{value!r:.80} ({type(value).__name__})")
    return value


def _interval(low, high, low_closed: bool, high_closed: bool) -> str:
    left = "(-inf" if low is None else ("[" if low_closed else "(") + f"{low}"
    right = "inf)" if high is None else f"{high}" + ("]" if high_closed else ")")
    return f"{left}, {right}"
