"""What this machine gives the book: ``python -m lab.doctor``.

Prints the versions of Python and the libraries `lab` is built on, the device `lab` will use (and
the GPU's name), the Triton mode, and which of `lab`'s accelerated paths run here and which fall
back to PyTorch, with the reason. Triton modes:

    compiled     a CUDA GPU is present: the kernels are JIT-compiled for it
    interpreted  ``TRITON_INTERPRET=1``: the kernels run in Triton's CPU interpreter (tests)
    unavailable  no GPU (or no Triton): every kernel's PyTorch path runs instead

Each notebook's set-up cell prints `summary()`, one line, so a reader sees at once what ran where.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

import lab
from lab.core.runtime import get_device

LIBRARIES = ("torch", "triton", "transformers", "tokenizers", "numpy")
# lab path → what it needs beyond a CPU
ACCELERATED = {
    "int4 weight-only matmul (lab.kernels.int4)": "triton",
    "int8 W8A8 matmul (lab.kernels.int8)": "triton",
    "2:4 sparse matmul (lab.kernels.sparse24)": "triton",
    "paged decode attention (lab.kernels.paged_attention)": "triton",
    "CUDA-graph decode step (lab.infer.cuda_graph)": "cuda",
    "sparse tensor cores for 2:4 (torch semi-structured)": "cuda",
}


def versions() -> dict[str, str | None]:
    """Python and library versions; None for a library that is not installed."""
    out: dict[str, str | None] = {"python": platform.python_version(), "lab": lab.__version__}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def triton_mode() -> tuple[str, str]:
    """(mode, reason): mode in ("compiled", "interpreted", "unavailable")."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "unavailable", "triton is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpreted", "TRITON_INTERPRET=1"
    if not torch.cuda.is_available():
        return "unavailable", "no CUDA GPU"
    return "compiled", f"CUDA GPU {torch.cuda.get_device_name()}"


def paths() -> dict[str, str]:
    """lab path → "accelerated" or "PyTorch fallback: <why>" on this machine."""
    mode, reason = triton_mode()
    cuda = torch.cuda.is_available()
    out = {}
    for name, needs in ACCELERATED.items():
        if needs == "triton" and mode != "unavailable":
            out[name] = "Triton interpreter (CPU)" if mode == "interpreted" else "Triton kernel"
        elif needs == "cuda" and cuda:
            out[name] = "CUDA"
        else:
            out[name] = f"PyTorch fallback: {reason if needs == 'triton' else 'no CUDA GPU'}"
    return out


def summary() -> str:
    """One line: device, torch and triton versions, Triton mode, how many paths fall back."""
    v, device = versions(), get_device()
    mode, reason = triton_mode()
    where = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
    fallbacks = sum(p.startswith("PyTorch fallback") for p in paths().values())
    return (f"lab {v['lab']} | device {where} | torch {v['torch']} | triton {v['triton']}, kernels {mode} "
            f"({reason}) | {fallbacks} of {len(ACCELERATED)} accelerated paths on their PyTorch fallback")


def report() -> str:
    """The full report `python -m lab.doctor` prints."""
    device = get_device()
    lines = ["versions:"] + [f"  {k:<13} {v or 'not installed'}" for k, v in versions().items()]
    lines.append(f"device:         {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                                                else f" ({platform.machine()}, {os.cpu_count()} cores)"))
    mode, reason = triton_mode()
    lines.append(f"triton mode:    {mode} ({reason})")
    lines.append("paths:")
    lines += [f"  {name}: {status}" for name, status in paths().items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
