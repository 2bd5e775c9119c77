"""What this machine gives the book: ``python -m lab.doctor``.

Prints the versions of Python and the libraries `lab` is built on, the device `lab` will use (and
the GPU's name), the Triton mode, and which of `lab`'s accelerated paths run here and which fall
back to PyTorch, with the reason. Triton modes:

    compiled     a CUDA GPU is present: the kernels are JIT-compiled for it
    interpreted  ``TRITON_INTERPRET=1``: the kernels run in Triton's CPU interpreter (tests)
    unavailable  no GPU (or no Triton): every kernel's PyTorch path runs instead

Each notebook's set-up cell prints `summary()`, one line, so a reader sees at once what ran where.
`kernels()` lists, per layer and shape range, the kernel a CUDA device (or the interpreter) launches,
from the layers' own selection functions.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

import lab
from lab.core.runtime import get_device
from lab.infer.paged import paged_decode_kernel
from lab.kernels.int4 import MAX_M, int4_gemv_v2, int4_weight_only_matmul
from lab.kernels.int4_dequant import dequantize_int4_v2
from lab.kernels.int8 import candidates
from lab.prune.semi_structured import sparse24_kernel
from lab.quant.linear import CHUNKED_MAX_M, V2_GROUP_SIZES, int4_path

__all__ = [
    "versions", "triton_mode", "paths", "kernels", "summary", "report",
]

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


def kernels() -> list[tuple[str, str, str]]:
    """(layer, shapes, kernel) for each rule by which a layer picks its kernel on CUDA tensors."""
    int8_tiles = " / ".join(f"{candidates(m)[0][:3]}" for m in (1, 64, 1024))
    cuda, g = torch.device("cuda"), f"g in {V2_GROUP_SIZES}"
    int4 = {"v1": int4_weight_only_matmul.__name__, "v2": int4_gemv_v2.__name__,
            "v2 chunks": f"{int4_gemv_v2.__name__} on chunks of {MAX_M} rows",
            "dequantize + dense": f"{dequantize_int4_v2.__name__} once, then a dense matmul"}
    return [("Int4Linear", f"{g}, M ≤ {MAX_M}", int4[int4_path(MAX_M, "v2", cuda)]),
            ("Int4Linear", f"{g}, {MAX_M} < M ≤ {CHUNKED_MAX_M}", int4[int4_path(CHUNKED_MAX_M, "v2", cuda)]),
            ("Int4Linear", f"{g}, M > {CHUNKED_MAX_M}", int4[int4_path(CHUNKED_MAX_M + 1, "v2", cuda)]),
            ("Int4Linear", "other g, any M", int4[int4_path(1, "v1", cuda)]),
            ("W8A8Linear", "M ≤ 16 / ≤ 128 / larger", f"int8_matmul, tiles {int8_tiles} (grouped order, tuned)"),
            ("Sparse24Linear", "in_features a multiple of 32, any M", sparse24_kernel(32).__name__),
            ("Sparse24Linear", "other in_features", sparse24_kernel(8).__name__),
            ("PagedKVCache", "decode, head_dim and block_size ≥ 16", paged_decode_kernel(16, 16).__name__),
            ("PagedKVCache", "decode, smaller heads or blocks", paged_decode_kernel(8, 16).__name__),
            ("PagedKVCache", "prefill (T > 1)", "gathered blocks, masked attention (PyTorch)")]


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
    lines.append("kernels on a CUDA device:")
    lines += [f"  {layer:<15} {shapes:<38} {kernel}" for layer, shapes, kernel in kernels()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
