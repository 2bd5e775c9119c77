"""The registry of shapes to compile: what the callers run, as they declare it, and the launches it makes.

A kernel file does not know who calls it, and neither does this tool: each caller (a chapter's suite, the
staged GPU run, the CUDA tests) declares the shapes it runs as `MatmulShapes` / `PagedShapes`, and
``python -m lab.bench static`` hands their union to `launches`. Every shape is compiled for every dtype the
wrapper accepts on a GPU (x / q in bf16, fp16 and fp32; int4 scales in x's dtype, as every caller passes
them; the int8 kernel's three out dtypes, each with every block of its tuning set: a GPU may pick any).
int4 v2 takes the shapes with g a multiple of 64, at M ≤ `lab.kernels.int4.MAX_M` and, for a larger M, at the
rows of its chunks (16, and M mod 16: `lab.quant.linear.Int4Linear` runs v2 on chunks of 16 rows); the int4
dequantize kernel (whose launch does not depend on M) every weight of those shapes. ``"dense"`` shapes compile
the dense baseline (`lab.kernels.dense`); ``"fp4"`` shapes the FP4 GEMV (`lab.kernels.fp4_gemv`) in both of its
formats, MXFP4 and NVFP4 (M ≤ `lab.kernels.int4.MAX_M`: the kernel refuses more rows).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from lab.kernels import dense, fp4_gemv, int4, int8, paged_attention, sparse24
from lab.kernels.aot.launches import (Launch, dtype_label, launch_dense, launch_fp4, launch_int4,
                                      launch_int4_dequantize, launch_int8, launch_paged, launch_sparse24,
                                      recording_with_companions)


@dataclass(frozen=True)
class MatmulShapes:
    """A caller's matmuls: every M of ``batches`` with every weight (N, K) = (out_features, in_features)."""

    label: str
    kernels: tuple[str, ...]                    # ⊆ ("int4", "int8", "sparse24", "dense", "fp4")
    batches: tuple[int, ...]
    weights: tuple[tuple[int, int], ...]
    group_size: int = 0                         # int4's g


@dataclass(frozen=True)
class PagedShapes:
    """A caller's paged decode steps: B sequences, H query / H_kv kv heads of dim D, for every block-table
    width in ``widths`` (the table's row stride is an int argument: widths 1, multiples of 16 and the rest
    specialise differently)."""

    label: str
    B: int
    H: int
    H_kv: int
    D: int
    block_size: int
    widths: tuple[int, ...]


Case = tuple[str, Callable[[], None]]          # (source label, a call of the wrapper)


def _matmuls(shapes: Sequence, kernel: str) -> Iterator[MatmulShapes]:
    return (s for s in shapes if isinstance(s, MatmulShapes) and kernel in s.kernels)


def _chunk_rows(M: int) -> set[int]:
    """The row counts of M rows cut into chunks of at most `lab.kernels.int4.MAX_M`."""
    return {min(M, int4.MAX_M), M % int4.MAX_M} - {0}


def int4_cases(shapes: Sequence, version: str = "v1") -> Iterator[Case]:
    for s in _matmuls(shapes, "int4"):
        if version == "v2" and s.group_size % 64:
            continue
        Ms = list(s.batches) if version == "v1" else sorted({m for M in s.batches for m in _chunk_rows(M)})
        for M, (N, K), dtype in itertools.product(Ms, s.weights, int4.X_DTYPES):
            yield (f"{s.label}: M={M} N={N} K={K} g={s.group_size} x,scales={dtype_label(dtype)}"
                   f"{' (v2)' * (version == 'v2')}",
                   lambda M=M, N=N, K=K, g=s.group_size, dtype=dtype: launch_int4(M, N, K, g, dtype, dtype, version))


def int4_dequantize_cases(shapes: Sequence) -> Iterator[Case]:
    for s in (s for s in _matmuls(shapes, "int4") if s.group_size % 64 == 0):
        for (N, K), dtype in itertools.product(s.weights, int4.X_DTYPES):
            yield (f"{s.label}: N={N} K={K} g={s.group_size} {dtype_label(dtype)} (dequantize)",
                   lambda N=N, K=K, g=s.group_size, dtype=dtype: launch_int4_dequantize(N, K, g, dtype, dtype))


def dense_cases(shapes: Sequence) -> Iterator[Case]:
    for s in _matmuls(shapes, "dense"):
        for M, (N, K), dtype in itertools.product(s.batches, s.weights, dense.DTYPES):
            yield (f"{s.label}: M={M} N={N} K={K} {dtype_label(dtype)} (dense)",
                   lambda M=M, N=N, K=K, dtype=dtype: launch_dense(M, N, K, dtype))


def fp4_cases(shapes: Sequence) -> Iterator[Case]:
    for s in _matmuls(shapes, "fp4"):
        for M, (N, K), fmt, dtype in itertools.product(s.batches, s.weights, fp4_gemv.FORMATS, fp4_gemv.X_DTYPES):
            yield (f"{s.label}: M={M} N={N} K={K} {fmt} {dtype_label(dtype)}",
                   lambda M=M, N=N, K=K, fmt=fmt, dtype=dtype: launch_fp4(M, N, K, fmt, dtype))


def int8_cases(shapes: Sequence) -> Iterator[Case]:
    for s in _matmuls(shapes, "int8"):
        for M, (N, K), out in itertools.product(s.batches, s.weights, int8.OUT_DTYPES):
            for i, block in enumerate(int8.candidates(M)):
                yield (f"{s.label}: M={M} N={N} K={K} out={dtype_label(out)}{f' (candidate {i})' * (i > 0)}",
                       lambda M=M, N=N, K=K, out=out, block=block: launch_int8(M, N, K, out, block))


def sparse24_cases(shapes: Sequence, version: str = "v1") -> Iterator[Case]:
    for s in _matmuls(shapes, "sparse24"):
        for M, (N, K), dtype in itertools.product(s.batches, s.weights, sparse24.DTYPES):
            yield (f"{s.label}: M={M} N={N} K={K} {dtype_label(dtype)}{' (v2)' * (version == 'v2')}",
                   lambda M=M, N=N, K=K, dtype=dtype: launch_sparse24(M, N, K, dtype, version))


def paged_cases(shapes: Sequence, version: str = "v1") -> Iterator[Case]:
    for s in (s for s in shapes if isinstance(s, PagedShapes)):
        for width, dtype in itertools.product(s.widths, paged_attention.DTYPES):
            yield (f"{s.label}: B={s.B} H={s.H} H_kv={s.H_kv} D={s.D} block={s.block_size} table width={width} "
                   f"{dtype_label(dtype)}{' (v2)' * (version == 'v2')}",
                   lambda s=s, width=width, dtype=dtype:
                   launch_paged(s.B, s.H, s.H_kv, s.D, s.block_size, width, dtype, version))


# main kernel → its cases (the companions are recorded with it)
CASES = {"int4_matmul": int4_cases, "int8_matmul": int8_cases, "sparse24_matmul": sparse24_cases,
         "paged_attention": paged_cases, "int4_gemv_v2": lambda shapes: int4_cases(shapes, "v2"),
         "paged_attention_v2": lambda shapes: paged_cases(shapes, "v2"),
         "sparse24_matmul_v2": lambda shapes: sparse24_cases(shapes, "v2"), "int4_dequantize": int4_dequantize_cases,
         "dense_matmul": dense_cases, "fp4_matmul": fp4_cases}


def launches(shapes: Sequence[MatmulShapes | PagedShapes]) -> list[tuple[str, Launch]]:
    """(source label, launch) of every case of ``shapes``, in order: each wrapper call must launch its kernel
    once (and each companion at most once)."""
    out = []
    for kernel, cases in CASES.items():
        with recording_with_companions(kernel) as (recorded, companions):
            for label, call in cases(shapes):
                before, companions_before = len(recorded), [len(c) for c in companions]
                call()
                if len(recorded) != before + 1:
                    raise RuntimeError(f"{label}: the wrapper launched {len(recorded) - before} kernels, expected 1")
                out.append((label, recorded[-1]))
                out += [(label, c[-1]) for c, n in zip(companions, companions_before) if len(c) > n]
    return out
