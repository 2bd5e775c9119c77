"""Dequantize an int4 weight in v2's layout: Ŵ = s·(q − z), (N, K), written once in x's dtype.

Shapes: packed (N, K/4) int16 in v2's planar layout (`lab.formats.int4.pack_int4_v2`, g a multiple of 64),
``scales`` and ``zeros`` (K/g, N) float (zeros: the integer zero points); Ŵ (N, K) in ``dtype`` (bf16, fp16 or
fp32), computed in fp32 and rounded once. `lab.quant.linear.Int4Linear` calls it for a product of many rows
(prefill), where x Ŵᵀ is compute-bound: Ŵ is dequantized once and the dense matmul runs the tensor cores at
their full rate, instead of dequantizing each weight tile once per tile of rows inside a GEMM.

The kernel: program (n, G) owns BLOCK_N rows of group G. It loads the group's g/4 words per row (16-byte vector
loads along K) and its scale and zero per row, and writes the four planes p = 0 … 3: plane p is the nibble
(w >> 4p) & 0xF of every word and holds columns G·g + p·g/4 + j, j = 0 … g/4 − 1.

Bytes moved per call (e the element size of ``dtype``, scales and zeros of element size e_s):

    N·K/2  (codes)  +  2·(N·K/g)·e_s  (scales, zeros)  +  e·N·K  (Ŵ written)

`call_bytes` computes it. `dequantize_int4_v2` dispatches: CUDA tensors → Triton; CPU tensors → PyTorch
(`lab.formats.int4.dequantize_int4`, cast to ``dtype``) unless ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lab.core.checks import check_choice, check_int, check_tensor
from lab.core.runtime import runs_triton
from lab.formats.int4 import dequantize_int4
from lab.kernels.int4 import X_DTYPES, check_scales

BLOCK_N = 32                      # rows per program: 32 × g/4 words (4 KB of codes at g = 128)


def _check(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
           dtype: torch.dtype) -> None:
    check_tensor("packed", packed, 2, (torch.int16,))
    if not packed.is_contiguous():
        raise ValueError("packed must be contiguous (N, K/4) row-major, as pack_int4_v2 returns it")
    check_int("group_size", group_size)
    N, K = packed.shape[0], 4 * packed.shape[1]
    if group_size % 64 or K % group_size:
        raise ValueError(f"group_size={group_size} must be a multiple of 64 dividing K={K} (v2's layout)")
    check_choice("dtype", dtype, X_DTYPES)
    check_scales(packed, packed, scales, zeros, (K // group_size, N))          # shapes, dtypes, one device
    if scales.stride(1) != 1:
        raise ValueError(f"scales and zeros must be contiguous along N, got strides {scales.stride()}")


def dequantize_int4_v2_torch(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                             dtype: torch.dtype) -> torch.Tensor:
    """The PyTorch path: `lab.formats.int4.dequantize_int4` (fp32), rounded to ``dtype``."""
    _check(packed, scales, zeros, group_size, dtype)
    return dequantize_int4(packed, scales, zeros, group_size).to(dtype)


@triton.jit
def _dequantize_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, K, stride_wn, stride_sg,
                       GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    G = tl.program_id(1)
    PLANE: tl.constexpr = GROUP // 4                                   # words per group = columns per plane
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, PLANE)
    n_ok = offs_n < N
    words = tl.load(w_ptr + offs_n[:, None] * stride_wn + (G * PLANE + offs_j)[None, :], mask=n_ok[:, None],
                    other=0)                                            # (BLOCK_N, PLANE) int16
    s = tl.load(s_ptr + G * stride_sg + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    z = tl.load(z_ptr + G * stride_sg + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    out_ptrs = out_ptr + offs_n[:, None] * K + (G * GROUP + offs_j)[None, :]
    for p in tl.static_range(4):
        q = ((words >> (4 * p)) & 0xF).to(tl.float32)
        tl.store(out_ptrs + p * PLANE, ((q - z) * s).to(out_ptr.dtype.element_ty), mask=n_ok[:, None])


def dequantize_int4_v2_triton(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                              dtype: torch.dtype) -> torch.Tensor:
    """The Triton kernel: grid (⌈N / BLOCK_N⌉, K/g)."""
    _check(packed, scales, zeros, group_size, dtype)
    N, K = packed.shape[0], 4 * packed.shape[1]
    out = torch.empty(N, K, device=packed.device, dtype=dtype)
    _dequantize_kernel[(triton.cdiv(N, BLOCK_N), K // group_size)](
        packed, scales, zeros, out, N, K, packed.stride(0), scales.stride(0), GROUP=group_size, BLOCK_N=BLOCK_N,
        num_warps=4)
    return out


def call_bytes(N: int, K: int, g: int, element_bytes: int, scale_bytes: int) -> int:
    """The DRAM bytes of one call (module docstring)."""
    for name, value in dict(N=N, K=K, g=g, element_bytes=element_bytes, scale_bytes=scale_bytes).items():
        check_int(name, value)
    return N * K // 2 + 2 * (N * K // g) * scale_bytes + element_bytes * N * K


def dequantize_int4_v2(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                       dtype: torch.dtype) -> torch.Tensor:
    """Ŵ (N, K) in ``dtype`` from v2-packed codes; Triton on CUDA or under the interpreter, else PyTorch."""
    check_tensor("packed", packed)
    if runs_triton(packed.device):
        return dequantize_int4_v2_triton(packed, scales, zeros, group_size, dtype)
    return dequantize_int4_v2_torch(packed, scales, zeros, group_size, dtype)
