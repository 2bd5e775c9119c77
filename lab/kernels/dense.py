"""The dense baseline: y = x Wᵀ for a plain bf16 / fp16 / fp32 W, what the int4 and 2:4 kernels are measured against.

Shapes: x (M, K), W (N, K) row-major (an nn.Linear weight), both of one dtype of bf16 / fp16 / fp32; y (M, N)
in that dtype, accumulated in fp32:

    y[m, n] = Σ_k x[m, k] · W[n, k]

The PyTorch reference (the CPU path) multiplies in fp32 and casts. The Triton kernel is one loop for every M,
with one switch, SWAP (BLOCK_M ≤ 16), that picks the dot's left operand:

* **Decode** (M ≤ `MAX_M`: the structure of int4's v2 GEMV, `lab.kernels.int4`, without the dequantization,
  so int4 v2 against this one is kernel against kernel). Operands swapped, yᵀ = W xᵀ: the weight tile
  (BLOCK_N, BLOCK_K), contiguous along K and read with 16-byte vector loads (K a multiple of 16: Triton then
  knows each row's start is aligned), is the dot's left operand
  (128 rows), the ≤ 16 rows of x its right one, padded to 8 (M ≤ 8) or 16 (compiled by Triton 3.6 for sm_90:
  mma.sync at 8 rows, Hopper's wgmma at 16); the result is stored transposed. The weight tiles go through
  shared memory (Triton's pipeline: cp.async, 3 stages). Split-K without atomics: program (n, k) owns
  BLOCK_N outputs and every SPLIT_K-th step of BLOCK_K columns; with SPLIT_K > 1 it writes its fp32 partial
  sums to slot k of a (SPLIT_K, M, N) buffer that int4's `_reduce_kernel` sums and casts (no memset, no
  tl.atomic_add). Decode has only N/BLOCK_N output tiles, too few to keep every SM streaming the weight:
  splitting K multiplies the programs, balanced over the SMs (`block_sizes`: 2 per SM of 132 on an 8192 × 8192
  layer at M = 1).
* **Prefill** (M > 16: the Triton tutorial's tiled GEMM). Program (pid_m, pid_n) owns the output tile
  y[BLOCK_M, BLOCK_N] and all of K, x the left operand and Wᵀ the right one; programs walk GROUP_M rows of
  tiles column by column (grouped order: a wave reuses its x and W tiles from L2, as `lab.kernels.int8`
  explains).

Rows and columns past M, N, K are masked (loaded as 0, not stored): any M, N, K ≥ 1 and any strides.

Bytes moved per call (memory bound for decode, FLOPs 2·M·N·K), e the element size, S = SPLIT_K:

    e·N·K  (W)  +  e·M·K  (x)  +  e·M·N  (y)     S > 1: + 8·S·M·N (the partials, written, then read)

`call_bytes` computes it. At M = 1 the weight is almost all of it; for e = 2 the int4 weight, codes plus scales
and zeros, moves 1/4 + 2/g of its bytes (`lab.kernels.int4.call_bytes`), the 2:4 one 9/16
(`lab.kernels.sparse24.call_bytes`).

`dense_matmul` dispatches: CUDA tensors → the Triton kernel; CPU tensors → the PyTorch reference unless
``TRITON_INTERPRET=1`` (Triton's interpreter: import or reload this module, and int4's for the reduction,
inside `lab.core.runtime.triton_interpret`). The kernel calls only builtins of triton.language (tl.full, not
tl.zeros; see `lab.kernels.sparse24`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lab.core.checks import check_block, check_choice, check_int, check_tensor
from lab.core.runtime import runs_triton
from lab.kernels import int4, int8
from lab.kernels.int4 import MAX_M, PARTIAL_BYTES_FRACTION, REDUCE_BLOCK
from lab.kernels.split import balanced_split

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
GROUP_M = 8                       # rows of output tiles per group of the prefill's program order
BLOCK_FIELDS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps")


def _check(x: torch.Tensor, w: torch.Tensor) -> None:
    check_tensor("x", x, 2, DTYPES)
    check_tensor("w", w, 2, DTYPES)
    if w.dtype != x.dtype:
        raise TypeError(f"w must have x's dtype {x.dtype}, got {w.dtype}")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w has {w.shape[1]} columns; it must have x's K={x.shape[1]} (w is (N, K), an "
                         f"nn.Linear weight), got x {tuple(x.shape)} and w {tuple(w.shape)}")
    if 0 in x.shape or w.shape[0] == 0:
        raise ValueError(f"x (M, K) and w (N, K) must be non-empty, got x {tuple(x.shape)} and w {tuple(w.shape)}")
    if x.device != w.device:
        raise ValueError(f"x and w must be on one device, got {x.device} and {w.device}")


# --- the PyTorch reference (the CPU path) ----------------------------------------------------------------

def dense_matmul_torch(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The PyTorch path: x Wᵀ in fp32, returned in x's dtype (views of x and W give the bits of their copies)."""
    _check(x, w)
    return (x.float().contiguous() @ w.float().contiguous().T).to(x.dtype)


# --- the Triton kernel: decode (operands swapped, split-K) and prefill (tiled GEMM) ----------------------

# M and split_k are runtime values (not specialised): one compilation per dtype and tile, whatever M ≤ 8 / ≤ 16.
@triton.jit(do_not_specialize=["M", "split_k"])
def _dense_matmul_kernel(x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk, split_k,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         GROUP_M: tl.constexpr, SWAP: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    # grouped order (int8's): GROUP_M rows of tiles walked column by column; decode has one row of tiles
    pid_m, pid_n = int8.grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.full((BLOCK_N, BLOCK_M) if SWAP else (BLOCK_M, BLOCK_N), 0.0, tl.float32)   # yᵀ tile, or y tile
    for k0 in range(pid_k * BLOCK_K, K, split_k * BLOCK_K):          # every split_k-th step of BLOCK_K columns
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                    mask=n_ok[:, None] & k_ok[None, :], other=0.0)       # (BLOCK_N, BLOCK_K), rows along K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)       # (BLOCK_M, BLOCK_K)
        if SWAP:
            acc = tl.dot(w, tl.trans(x), acc, input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(x, tl.trans(w), acc, input_precision=INPUT_PRECISION)
    y = tl.trans(acc) if SWAP else acc
    # out: y (M, N), or the partials (split_k, M, N), slot pid_k; both contiguous
    tl.store(out_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :], y.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def block_sizes(M: int, N: int, K: int, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps), hand-picked; BLOCK_M ≤ 16 swaps the operands.

    Decode (M ≤ `MAX_M`): x padded to 8 or 16 rows, 128 weight rows of 128 columns (256 bytes of bf16 per
    row and step) on 4 warps (one warpgroup). SPLIT_K balances the SMs (`lab.kernels.split.balanced_split`
    over the K steps, as int4's `block_sizes_v2` does), at most the larger of a cap that keeps the fp32
    partials (written, then read: 8·SPLIT_K·M·N bytes) under `PARTIAL_BYTES_FRACTION` of the weight's e·N·K
    bytes and the split that gives one program per SM. Prefill: 128 × 128 tiles on 8 warps (64 rows on 4 up to
    M = 64). fp32 (an FMA dot, no tensor cores) takes smaller tiles: the larger ones spill registers on
    sm_90 (the sm_90 compile, `lab.kernels.aot`)."""
    for name, value in dict(M=M, N=N, K=K).items():
        check_int(name, value)
    check_choice("dtype", dtype, DTYPES)
    fp32 = dtype == torch.float32
    if M > MAX_M:
        if fp32:
            return 32, 64, 32, 1, 4
        return (64, 128, 64, 1, 4) if M <= 64 else (128, 128, 64, 1, 8)
    block_m = 8 if M <= 8 else 16
    block_n, block_k = (64, 32) if fp32 else (128, 128)
    n_tiles = triton.cdiv(N, block_n)
    cap = int(PARTIAL_BYTES_FRACTION * dtype.itemsize * K / (8 * M))
    split_k = balanced_split(n_tiles, triton.cdiv(K, block_k), max(cap, math.ceil(132 / n_tiles)))
    return block_m, block_n, block_k, split_k, 4


def dense_matmul_triton(x: torch.Tensor, w: torch.Tensor,
                        block: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """The Triton kernel (and int4's reduction when SPLIT_K > 1); ``block`` = (BLOCK_M, BLOCK_N, BLOCK_K,
    SPLIT_K, num_warps), default `block_sizes`. BLOCK_M ≤ 16 swaps the operands (decode); tl.dot needs
    BLOCK_M ≥ 8 and BLOCK_N, BLOCK_K ≥ 16."""
    _check(x, w)
    (M, K), N = x.shape, w.shape[0]
    block_m, block_n, block_k, split_k, num_warps = block_sizes(M, N, K, x.dtype) if block is None else check_block(
        "block", block, BLOCK_FIELDS, ("SPLIT_K",))
    if block_m < 8 or block_n < 16 or block_k < 16:
        raise ValueError(f"block (BLOCK_M, BLOCK_N, BLOCK_K) = {(block_m, block_n, block_k)} is not allowed: "
                         "tl.dot needs BLOCK_M ≥ 8 and BLOCK_N, BLOCK_K ≥ 16")
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    out = y if split_k == 1 else torch.empty(split_k, M, N, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n), split_k)
    _dense_matmul_kernel[grid](
        x, w, out, M, N, K, x.stride(0), x.stride(1), w.stride(0), w.stride(1), split_k,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=GROUP_M, SWAP=block_m <= MAX_M,
        INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=num_warps)
    if split_k > 1:
        int4._reduce_kernel[(triton.cdiv(M * N, REDUCE_BLOCK),)](out, y, M * N, split_k, BLOCK=REDUCE_BLOCK,
                                                                 num_warps=1)
    return y


# --- bytes and dispatch ----------------------------------------------------------------------------------

def call_bytes(M: int, N: int, K: int, element_bytes: int, split_k: int | None = None) -> int:
    """The DRAM bytes of one call (module docstring), each operand read once; ``element_bytes`` = e (2: bf16 or
    fp16, 4: fp32); ``split_k`` = S, by default the one `block_sizes` picks for that element size."""
    for name, value in dict(M=M, N=N, K=K).items():
        check_int(name, value)
    check_choice("element_bytes", element_bytes, (2, 4))
    e = element_bytes
    if split_k is None:
        split_k = block_sizes(M, N, K, torch.float32 if e == 4 else torch.bfloat16)[3]
    check_int("split_k", split_k)
    partials = 8 * split_k * M * N if split_k > 1 else 0
    return e * N * K + e * M * K + e * M * N + partials


def dense_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y (M, N) = x Wᵀ; Triton on CUDA or under the interpreter (``TRITON_INTERPRET=1``), else PyTorch."""
    check_tensor("x", x)  # before reading its device: a list gets a TypeError that names it
    if runs_triton(x.device):
        return dense_matmul_triton(x, w)
    return dense_matmul_torch(x, w)
