"""y = x Wᵀ for W in the compressed 2:4 format, version 2: coalesced vector loads, each value read once.

Same product and the same compressed format as `lab.kernels.sparse24_matmul` (v1, the readable kernel of
chapter 2): ``values`` (N, K/2) in x's dtype, ``meta`` (N, ⌈K/8⌉) uint8 with the two 2-bit positions of
group g in nibble g mod 2 of byte g // 2. What changes:

* **Loads.** v1 builds the dense Wᵀ tile (BLOCK_K, BLOCK_N) with one gather per dense element: every
  value is loaded twice per candidate position (4 times in all), every metadata byte 8 times, and the
  addresses of a warp span 32 rows (scalar, uncoalesced loads). v2 loads the tile's values as they lie,
  (BLOCK_N, BLOCK_K/2) with rows contiguous along K, and its metadata as (BLOCK_N, BLOCK_K/32) 32-bit
  words of 8 groups: each value and byte once, in vector loads of 16 bytes per thread.
* **Expansion in registers.** The pair of values of group g, v₀ and v₁, and its positions p₀ = nibble & 3,
  p₁ = nibble >> 2 give the four dense columns 4g + c = (v₀ if c = p₀, v₁ if c = p₁, else 0), joined into
  the dense (BLOCK_N, BLOCK_K) tile without touching memory.
* **Operands swapped** (yᵀ = W xᵀ): the weight tile is the dot's left operand (BLOCK_N rows), the rows of
  x its right one (8, 16, or 64 of them, padded), so decode (M ≤ 16) keeps a 128-row weight tile on
  Hopper's wgmma.

Bytes moved: e·N·K/2 (values) + N·K/8 (meta) + e·M·K + e·M·N, e the element size: 0.5625 of a dense
bf16 weight's bytes. The tensor cores still do dense work; the win is bytes.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from lab.core.checks import check_tensor
from lab.kernels.sparse24_matmul import _check


@triton.jit(do_not_specialize=["M"])
def _sparse24_v2_kernel(x_ptr, values_ptr, meta_ptr, y_ptr, M, N, K, k_words, stride_xm, stride_vn, stride_mn,
                        stride_ym,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        INPUT_PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    GROUPS: tl.constexpr = BLOCK_K // 4
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_ok = offs_n < N
    m_ok = offs_m < M
    acc = tl.full((BLOCK_N, BLOCK_M), 0.0, tl.float32)                 # yᵀ tile
    for k0 in range(0, K, BLOCK_K):
        offs_v = k0 // 2 + tl.arange(0, BLOCK_K // 2)                  # value columns of the tile
        offs_w = tl.multiple_of(k0 // 32, BLOCK_K // 32) + tl.arange(0, BLOCK_K // 32)  # metadata words (8 groups)
        v = tl.load(values_ptr + offs_n[:, None] * stride_vn + offs_v[None, :],
                    mask=n_ok[:, None] & (offs_v < K // 2)[None, :], other=0.0)       # (BLOCK_N, BLOCK_K/2)
        word = tl.load(meta_ptr + offs_n[:, None] * stride_mn + offs_w[None, :],
                       mask=n_ok[:, None] & (offs_w < k_words)[None, :], other=0)      # (BLOCK_N, BLOCK_K/32)
        v0, v1 = tl.split(tl.reshape(v, (BLOCK_N, GROUPS, 2)))        # the pair of each group
        # group 8t + i of word t sits in bits 4i…4i+3; nested joins put nibble i at position 4p + 2q + r = i
        nibble = tl.reshape(tl.join(tl.join(tl.join(word & 15, (word >> 16) & 15),
                                            tl.join((word >> 8) & 15, (word >> 24) & 15)),
                                    tl.join(tl.join((word >> 4) & 15, (word >> 20) & 15),
                                            tl.join((word >> 12) & 15, (word >> 28) & 15))), (BLOCK_N, GROUPS))
        p0 = nibble & 3
        p1 = nibble >> 2
        zero = tl.full((BLOCK_N, GROUPS), 0.0, v.dtype)
        d0 = tl.where(p0 == 0, v0, tl.where(p1 == 0, v1, zero))
        d1 = tl.where(p0 == 1, v0, tl.where(p1 == 1, v1, zero))
        d2 = tl.where(p0 == 2, v0, tl.where(p1 == 2, v1, zero))
        d3 = tl.where(p0 == 3, v0, tl.where(p1 == 3, v1, zero))
        w = tl.reshape(tl.join(tl.join(d0, d2), tl.join(d1, d3)), (BLOCK_N, BLOCK_K))    # columns 4g + c
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None],
                     mask=m_ok[None, :] & (offs_k < K)[:, None], other=0.0)              # (BLOCK_K, BLOCK_M)
        acc = tl.dot(w, xt, acc, input_precision=INPUT_PRECISION)
    tl.store(y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=n_ok[:, None] & m_ok[None, :])


def block_sizes(M: int, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): x rows padded to 8 / 16 / 64. Decode: 64 weight rows (N/64
    programs: 128 on an 8192-row layer, about one per SM) and 128 columns (64 values and 16 metadata bytes
    per row, 16-byte loads). Prefill: 128 × 64 on 8 warps, fp32 (an FMA dot) 32 × 64: the larger tiles
    spill registers on sm_90 (the static check, `lab.kernels.compile`)."""
    block_m = 8 if M <= 8 else 16 if M <= 16 else 64
    if dtype == torch.float32:
        return min(block_m, 16), 32, 64, 4
    if M <= 16:
        return block_m, 64, 128, 4
    return block_m, 128, 64, 8


def sparse24_matmul_v2_triton(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, out_features: int,
                              in_features: int, block: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """The Triton kernel; ``block`` = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps), default `block_sizes`.
    x must be contiguous along K, values and meta row-major contiguous; K and BLOCK_K multiples of 32."""
    _check(x, values, meta, out_features, in_features)
    if x.stride(1) != 1 or not values.is_contiguous() or not meta.is_contiguous():
        raise ValueError("the v2 kernel needs x contiguous along K and values, meta contiguous (row-major)")
    if in_features % 32:
        raise ValueError(f"in_features={in_features} must be a multiple of 32 for the v2 kernel (it reads the "
                         "metadata as 32-bit words of 8 groups); use sparse24_matmul (v1)")
    M = x.shape[0]
    block_m, block_n, block_k, num_warps = block or block_sizes(M, x.dtype)
    if block_k % 32:
        raise ValueError(f"BLOCK_K={block_k} must be a multiple of 32")
    y = torch.empty(M, out_features, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(out_features, block_n), triton.cdiv(M, block_m))
    # k_words = K/32 is an argument of its own: divisible by 16 (K a multiple of 512), Triton knows the words'
    # mask is uniform over a 16-byte vector and loads them as one
    _sparse24_v2_kernel[grid](x, values, meta.view(torch.int32), y, M, out_features, in_features, in_features // 32,
                              x.stride(0), values.stride(0), meta.stride(0) // 4, y.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                              INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=num_warps)
    return y


def sparse24_matmul_v2(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, out_features: int,
                       in_features: int) -> torch.Tensor:
    """y = x Wᵀ; Triton on CUDA or under the interpreter, else v1's PyTorch path."""
    from lab.kernels.sparse24_matmul import sparse24_matmul_torch

    check_tensor("x", x)
    if x.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return sparse24_matmul_v2_triton(x, values, meta, out_features, in_features)
    return sparse24_matmul_torch(x, values, meta, out_features, in_features)

