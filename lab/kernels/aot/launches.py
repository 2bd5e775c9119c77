"""The launches the kernel wrappers make, recorded instead of run.

The wrappers are called with ``meta`` tensors while their module's kernels are replaced by recorders (the
main kernel and its `COMPANIONS`, the second passes): block sizes, warps, split-K,
INPUT_PRECISION, G / G_PAD / D / BLOCK_SIZE and every stride come from the wrapper's own code (its
``block_sizes``), so a change there changes what is compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Iterator

import torch

from lab.formats.sparse24 import meta_shape
from lab.kernels import dense, fp4_gemv, int4, int4_dequant, int8, paged_attention, sparse24

# kernel name → (module, attribute of the @triton.jit kernel); the names are the records' keys
KERNELS = {
    "int4_matmul": ("lab.kernels.int4", "_int4_matmul_kernel"),
    "int8_matmul": ("lab.kernels.int8", "_int8_matmul_kernel"),
    "sparse24_matmul": ("lab.kernels.sparse24", "_sparse24_matmul_kernel"),
    "paged_attention": ("lab.kernels.paged_attention", "_paged_attention_decode_kernel"),
    "int4_gemv_v2": ("lab.kernels.int4", "_int4_gemv_v2_kernel"),
    "int4_gemv_v2_reduce": ("lab.kernels.int4", "_reduce_kernel"),
    "paged_attention_v2": ("lab.kernels.paged_attention", "_paged_decode_split_kernel"),
    "paged_attention_v2_combine": ("lab.kernels.paged_attention", "_combine_kernel"),
    "sparse24_matmul_v2": ("lab.kernels.sparse24", "_sparse24_v2_kernel"),
    "dense_matmul": ("lab.kernels.dense", "_dense_matmul_kernel"),
    "dense_matmul_reduce": ("lab.kernels.int4", "_reduce_kernel"),     # int4's split-K reduction, reused
    "int4_dequantize": ("lab.kernels.int4_dequant", "_dequantize_kernel"),
    "fp4_matmul": ("lab.kernels.fp4_gemv", "_fp4_matmul_kernel"),
    "fp4_matmul_reduce": ("lab.kernels.int4", "_reduce_kernel"),        # int4's split-K reduction, reused
}
# kernels a wrapper launches after its main kernel (recorded with it): the second passes of the v2 kernels and
# of the dense baseline's and the FP4 GEMV's split-K
COMPANIONS = {"int4_gemv_v2": ("int4_gemv_v2_reduce",), "paged_attention_v2": ("paged_attention_v2_combine",),
              "dense_matmul": ("dense_matmul_reduce",), "fp4_matmul": ("fp4_matmul_reduce",)}


@dataclasses.dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a launch: only its dtype matters to the compiler (its address is 16-byte aligned)."""
    dtype: str                      # torch dtype name, e.g. "bfloat16"


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as a wrapper makes it (picklable: it travels to the compile processes)."""
    kernel: str                     # a key of KERNELS
    args: tuple                     # TensorArg | int | float, in the kernel's parameter order
    kwargs: tuple                   # sorted (name, value) pairs: constexprs and launch options
    grid: tuple = ()                # the launch grid (programs per axis), as the wrapper gave it


class _LaunchRecorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` records a `Launch`."""

    def __init__(self, kernel: str) -> None:
        self.kernel = kernel
        self.launches: list[Launch] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            frozen = tuple(TensorArg(str(a.dtype).removeprefix("torch.")) if torch.is_tensor(a) else a for a in args)
            self.launches.append(Launch(self.kernel, frozen, tuple(sorted(kwargs.items())),
                                        tuple(grid) if isinstance(grid, tuple) else ()))
        return launch


@contextlib.contextmanager
def recording(kernel: str) -> Iterator[list[Launch]]:
    """Replace the kernel of ``KERNELS[kernel]`` by a recorder while the block runs; yields its launches."""
    module_name, attribute = KERNELS[kernel]
    module = importlib.import_module(module_name)
    original = getattr(module, attribute)
    recorder = _LaunchRecorder(kernel)
    setattr(module, attribute, recorder)
    try:
        yield recorder.launches
    finally:
        setattr(module, attribute, original)


@contextlib.contextmanager
def recording_with_companions(kernel: str) -> Iterator[tuple[list[Launch], list[list[Launch]]]]:
    """`recording` of ``kernel`` and of each of its `COMPANIONS`: yields (its launches, one list per companion)."""
    with recording(kernel) as recorded, contextlib.ExitStack() as stack:
        yield recorded, [stack.enter_context(recording(c)) for c in COMPANIONS.get(kernel, ())]


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def dtype_label(dtype: torch.dtype) -> str:
    """"bf16", "fp16" or "fp32" (the dtype's name otherwise), as the records' source labels write it."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def launch_int4(M: int, N: int, K: int, group_size: int, dtype: torch.dtype, scale_dtype: torch.dtype,
                version: str = "v1") -> None:
    """v1: packed codes (K/2, N) uint8; v2: (N, K/4) int16 (`lab.formats.int4.pack_int4_v2`)."""
    scales = _meta(K // group_size, N, dtype=scale_dtype)
    if version == "v1":
        packed, wrapper = _meta(K // 2, N, dtype=torch.uint8), int4.int4_weight_only_matmul_triton
    else:
        packed, wrapper = _meta(N, K // 4, dtype=torch.int16), int4.int4_gemv_v2_triton
    wrapper(_meta(M, K, dtype=dtype), packed, scales, torch.empty_like(scales), group_size)


def launch_int4_dequantize(N: int, K: int, group_size: int, dtype: torch.dtype, scale_dtype: torch.dtype) -> None:
    """Ŵ (N, K) in ``dtype`` from v2-packed codes (N, K/4) int16 (`lab.kernels.int4_dequant`)."""
    scales = _meta(K // group_size, N, dtype=scale_dtype)
    int4_dequant.dequantize_int4_v2_triton(_meta(N, K // 4, dtype=torch.int16), scales, torch.empty_like(scales),
                                           group_size, dtype)


def launch_fp4(M: int, N: int, K: int, fmt: str, dtype: torch.dtype) -> None:
    """x (M, K) in ``dtype``; FP4 codes (N, K/2) uint8 and scales (N, K/B) uint8 of ``fmt`` (`lab.kernels.fp4_gemv`)."""
    block = fp4_gemv.FORMATS[fmt][0]
    fp4_gemv.fp4_matmul_triton(_meta(M, K, dtype=dtype), _meta(N, K // 2, dtype=torch.uint8),
                               _meta(N, K // block, dtype=torch.uint8), 1.0, fmt)


def launch_int8(M: int, N: int, K: int, out_dtype: torch.dtype, block: tuple | None = None) -> None:
    """``block`` None: the default (`lab.kernels.int8.block_sizes`; what a meta tensor gets from `tuned_block`)."""
    int8.int8_matmul_triton(_meta(M, K, dtype=torch.int8), _meta(N, K, dtype=torch.int8),
                            _meta(M, dtype=torch.float32), _meta(N, dtype=torch.float32), out_dtype, block)


def launch_dense(M: int, N: int, K: int, dtype: torch.dtype) -> None:
    """x (M, K) and W (N, K) row-major of one dtype (the dense baseline; with its split-K reduction at decode)."""
    dense.dense_matmul_triton(_meta(M, K, dtype=dtype), _meta(N, K, dtype=dtype))


def launch_sparse24(M: int, out_features: int, in_features: int, dtype: torch.dtype, version: str = "v1") -> None:
    wrapper = sparse24.sparse24_matmul_triton if version == "v1" else sparse24.sparse24_matmul_v2_triton
    wrapper(_meta(M, in_features, dtype=dtype), _meta(out_features, in_features // 2, dtype=dtype),
            _meta(*meta_shape(out_features, in_features, 2, 4), dtype=torch.uint8), out_features, in_features)


def launch_paged(B: int, H: int, H_kv: int, D: int, block_size: int, width: int, dtype: torch.dtype,
                 version: str = "v1") -> None:
    """A decode step of B sequences whose block tables are ``width`` blocks wide (v2: the split kernel and
    its combine pass)."""
    num_blocks = B * width + 1
    pool = _meta(num_blocks, block_size, H_kv, D, dtype=dtype)
    wrapper = (paged_attention.paged_attention_decode_triton if version == "v1"
               else paged_attention.paged_attention_decode_v2_triton)
    wrapper(_meta(B, H, D, dtype=dtype), pool, torch.empty_like(pool), _meta(B, width, dtype=torch.int32),
            _meta(B, dtype=torch.int32), check_lengths=False)
