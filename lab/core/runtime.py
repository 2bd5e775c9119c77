"""Where code runs: device choice, seeding, and the Triton switches.

`get_device()` picks CUDA when present (override with ``LAB_DEVICE=cpu|cuda``),
`seed_everything` fixes every RNG the book uses, `has_triton_gpu()` says whether
Triton kernels can be compiled for a GPU here, `runs_triton(device)` whether `lab`'s
kernels take the Triton path for tensors on a device, and `triton_interpret()` runs
Triton kernels on the CPU through Triton's interpreter for correctness tests.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from lab.core.checks import check_choice, check_device, check_int

_DEVICES = ("cpu", "cuda")


def get_device() -> torch.device:
    """Return ``cuda`` if a GPU is visible, else ``cpu``; ``LAB_DEVICE`` overrides.

    Raises ValueError if ``LAB_DEVICE`` names something other than cpu/cuda, or
    asks for cuda on a machine without one.
    """
    requested = os.environ.get("LAB_DEVICE", "").strip().lower()
    if requested:
        check_choice("LAB_DEVICE", requested, _DEVICES)
        if requested == "cuda" and not torch.cuda.is_available():
            raise ValueError("LAB_DEVICE='cuda' but torch.cuda.is_available() is False")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and PyTorch (CPU and every GPU).

    Raises TypeError for a non-integer seed and ValueError outside [0, 2**32).
    """
    check_int("seed", seed, 0, 2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def has_triton_gpu() -> bool:
    """True when Triton is importable, a CUDA GPU is present and we are not interpreting."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def runs_triton(device: torch.device) -> bool:
    """Whether `lab`'s kernels run their Triton path for tensors on ``device``: CUDA, or any device
    under ``TRITON_INTERPRET=1`` (Triton's interpreter); otherwise they take their PyTorch path."""
    return check_device("device", device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


@contextlib.contextmanager
def triton_interpret() -> Iterator[None]:
    """Run Triton kernels *defined inside this block* through Triton's CPU interpreter.

    Triton reads ``TRITON_INTERPRET`` when a kernel is decorated with ``@triton.jit``,
    so kernels must be created (or their module imported) inside the block; the
    variable is restored afterwards.
    """
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
