"""Weight-only int4 matmul: y = x Ŵᵀ with Ŵ = s·(q − z) dequantized in registers, never in memory.

Shapes: x (M, K) bf16 / fp16 / fp32; W (N, K) as 4-bit codes q in a layout of `lab.formats.int4` (v1:
(K/2, N) uint8, group-interleaved, g a multiple of 32; v2: (N, K/4) int16, planar per group, g a multiple
of 64), ``scales`` and ``zeros`` (K/g, N) float (zeros: the integer zero points); y (M, N) in x's dtype,
accumulated in fp32. The PyTorch reference (the CPU path) dequantizes Ŵ in fp32 and multiplies.

v1 (`int4_weight_only_matmul`, the kernel the chapter derives, any M): program (pid_m, pid_n, pid_k) owns
the output tile y[BLOCK_M, BLOCK_N] and a 1/split_k share of the packed rows. Each step loads BLOCK_K
packed rows (BLOCK_K divides g/2, so the tile lies in one group G: one row of scales and zeros serves it),
unpacks the two nibbles with a mask and a shift into two dense Wᵀ tiles (BLOCK_K, BLOCK_N) of input
columns k_lo = r + G·g/2 and k_lo + g/2, dequantizes them in fp32, casts to x's dtype and calls tl.dot
twice with the matching x tiles. With split_k > 1 the partial tiles are added into an fp32 buffer
(tl.atomic_add), which is cast to x's dtype at the end: decode (M ≤ 16) has only N/BLOCK_N output tiles,
too few to keep every SM streaming weights, and splitting K multiplies the number of programs.

v2 (`int4_gemv_v2`, decode: M ≤ `MAX_M`), the same product built to Hopper's issue rate, changes per group:

* **Layout** (`lab.formats.int4.pack_int4_v2`, once, at quantization time): a thread reads 8 words (16
  bytes) with one vector load, and nibble p of a tile of words is the dense tile of the group's plane p
  (g/4 columns): no shuffles. v1 reads bytes (K/2, N) transposed, one byte per thread per row.
* **int4 → 16-bit float by bit manipulation** (no int→float conversion instruction): for a code q,
  ``(w >> 4p) & 0xF | 0x6400`` is the fp16 bit pattern of 1024 + q (0x4300: bf16 128 + q), exact.
  Compiled, one inline-PTX ``lop3.b32`` (after a ``shr.b32`` for p > 0) does it for the two 16-bit
  words of a 32-bit register at once (`dequant_asm`, Marlin's trick): 7 instructions per 8 codes. Under
  Triton's interpreter, which cannot run PTX, the same bit operations run element by element. v1
  converts each code with I2F, then subtracts, multiplies and converts back in fp32.
* **Scale and zero point once per group and output, not once per weight**: with X_G = Σ_{k∈G} x_k,
  Σ_{k∈G} x_k·s(q_k − z) = s·(Σ x_k (c + q_k) − (c + z)·X_G), c the magic constant (1024, 128, or 0
  for fp32 x). The tensor cores compute Σ x_k (c + q_k) in fp32 (the products are exact); the
  correction is 2 FMAs per output and group, 2·BLOCK_M / g per weight.
* **Operands swapped** (yᵀ = Ŵ xᵀ): the weight tile is the dot's left operand (BLOCK_N rows), the ≤ 16 rows
  of x its right one, padded to 8 (M ≤ 8) or 16 (compiled by Triton 3.6 for sm_90: mma.sync at 8 rows,
  Hopper's wgmma at 16); the result is stored transposed.
* **Split-K without atomics or memsets**: program (n, k) owns BLOCK_N outputs and every SPLIT_K-th
  group; with SPLIT_K > 1 it writes its fp32 partial sums to slot k of a (SPLIT_K, M, N) buffer that
  `_reduce_kernel` sums and casts. v1 zeroes an fp32 buffer, adds atomically and casts: 2 extra kernels.

What v2 saves, chapter 3 predicts with the sm_90 static model (`lab.kernels.aot.model`): warp-instructions per
KB of codes, and the issue-bound time against the memory-bound time, of each version.

Bytes moved per call (decode is memory bound; FLOPs 2·M·N·K as for bf16), e the element size of x (scales
and zeros in x's dtype), S = SPLIT_K:

    N·K/2 + 2·(N·K/g)·e  (codes; scales and zeros)  +  e·M·K  (x)  +  e·M·N  (y)
    v1, S > 1: + 4·M·N (zeroing the fp32 buffer) + 8·S·M·N (atomic adds: read and write) + 4·M·N (the cast)
    v2, S > 1: + 8·S·M·N (the partials, written, then read by `_reduce_kernel`)

`call_bytes` computes it (for e = 2 the weight's bytes, codes plus scales and zeros, are 1/4 + 2/g of a bf16
weight's 2·N·K).

`int4_weight_only_matmul` and `int4_gemv_v2` dispatch: CUDA tensors → Triton; CPU tensors → the PyTorch
reference unless ``TRITON_INTERPRET=1`` (Triton's interpreter: import or reload this module inside
`lab.core.runtime.triton_interpret`).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from lab.core.checks import check_block, check_choice, check_int, check_tensor
from lab.core.runtime import runs_triton
from lab.formats.int4 import dequantize_int4
from lab.kernels.split import balanced_split

X_DTYPES = SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_M = 16                        # the v2 GEMV's largest M
# (bit pattern OR-ed onto a code, the value c it adds) per x dtype: fp16 1024 + q, bf16 128 + q
MAGIC = {torch.float16: (0x6400, 1024.0), torch.bfloat16: (0x4300, 128.0), torch.float32: (0, 0.0)}
REDUCE_BLOCK = 32                 # outputs per program of the split-K reduction: one warp, 1 per thread
PARTIAL_BYTES_FRACTION = 0.05     # split-K partials (written and read) at most this share of the weight bytes


def _describe(t) -> str:
    return f"{t.dtype} {tuple(t.shape)}" if torch.is_tensor(t) else type(t).__name__


def check_scales(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 expected: tuple[int, int]) -> None:
    """scales and zeros: float tensors of shape ``expected`` (K/g, N) with equal strides, on x's device."""
    for name, t in (("scales", scales), ("zeros", zeros)):
        if not torch.is_tensor(t) or t.dtype not in SCALE_DTYPES:
            raise TypeError(f"{name} must be a float tensor (K/g, N) = {expected}, got {_describe(t)}")
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} (K/g, N), got {tuple(t.shape)}")
    if scales.stride() != zeros.stride():
        raise ValueError("scales and zeros must have the same strides")
    if len({x.device, packed.device, scales.device, zeros.device}) != 1:
        raise ValueError("x, packed, scales, zeros must be on one device")


def _check_v1(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              group_size: int) -> None:
    if not torch.is_tensor(x) or x.dtype not in X_DTYPES or x.dim() != 2:
        raise TypeError(f"x must be a 2-D tensor of dtype in {X_DTYPES}, got {_describe(x)}")
    if not torch.is_tensor(packed) or packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"packed must be a 2-D uint8 tensor (K/2, N), got {_describe(packed)}")
    if not packed.is_contiguous():
        raise ValueError("packed must be contiguous (K/2, N) row-major, as pack_int4 returns it")
    if packed.shape[0] * 2 != (K := x.shape[1]):
        raise ValueError(f"packed has {packed.shape[0]} rows; it must have K/2 = {K // 2} for x {tuple(x.shape)}")
    check_int("group_size", group_size)
    if group_size < 32 or group_size % 32 or K % group_size:
        raise ValueError(f"group_size={group_size!r} must be a multiple of 32 dividing K={K} (the kernel's tiles "
                         "of 16 packed rows must lie inside one group)")
    check_scales(x, packed, scales, zeros, (K // group_size, packed.shape[1]))


def _check_v2(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              group_size: int, max_m: int | None = MAX_M) -> None:
    if not torch.is_tensor(x) or x.dtype not in X_DTYPES or x.dim() != 2:
        raise TypeError(f"x must be a 2-D tensor of dtype in {X_DTYPES}, got {_describe(x)}")
    M, K = x.shape
    if max_m is not None and not 1 <= M <= max_m:
        raise ValueError(f"x has M={M} rows; the v2 GEMV takes 1 to {MAX_M} (larger M: "
                         "int4_weight_only_matmul, v1)")
    if x.stride(1) != 1:
        raise ValueError(f"x must be contiguous along K (stride(1) == 1), got strides {x.stride()}")
    if not torch.is_tensor(packed) or packed.dtype != torch.int16 or packed.dim() != 2:
        raise TypeError(f"packed must be a 2-D int16 tensor (N, K/4) from pack_int4_v2, got {_describe(packed)}")
    if not packed.is_contiguous():
        raise ValueError("packed must be contiguous (N, K/4) row-major, as pack_int4_v2 returns it")
    if packed.shape[1] * 4 != K:
        raise ValueError(f"packed has {packed.shape[1]} columns; it must have K/4 = {K / 4:g} for x of shape "
                         f"{tuple(x.shape)} (v1's (K/2, N) uint8 layout is not v2's: use pack_int4_v2)")
    check_int("group_size", group_size)
    if group_size < 64 or group_size % 64 or K % group_size:
        raise ValueError(f"group_size={group_size!r} must be a multiple of 64 dividing K={K} (a plane of g/4 "
                         "columns is the dot's K dimension, at least 16)")
    check_scales(x, packed, scales, zeros, (K // group_size, packed.shape[0]))
    if scales.stride(1) != 1:
        raise ValueError(f"scales and zeros must be contiguous along N, got strides {scales.stride()}")


# --- the PyTorch reference (the CPU path) ----------------------------------------------------------------

def int4_weight_only_matmul_torch(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                                  group_size: int) -> torch.Tensor:
    """The PyTorch path: Ŵ = s·(q − z) from the unpacked codes, then x Ŵᵀ in fp32, returned in x's dtype."""
    _check_v1(x, packed, scales, zeros, group_size)
    return (x.float().contiguous() @ dequantize_int4(packed, scales, zeros, group_size).T).to(x.dtype)


def int4_gemv_v2_torch(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                       group_size: int) -> torch.Tensor:
    """The PyTorch path: Ŵ = s·(q − z) from the v2 codes, then x Ŵᵀ in fp32, returned in x's dtype (any M)."""
    _check_v2(x, packed, scales, zeros, group_size, max_m=None)
    return (x.float().contiguous() @ dequantize_int4(packed, scales, zeros, group_size).T).to(x.dtype)


# --- v1: any M, split-K by atomic adds -------------------------------------------------------------------

# M and split_k are not specialised (no separate compilation for M = 1 or for each split): decode and
# prefill shapes then share a handful of compilations, on the GPU and in the static check.
@triton.jit(do_not_specialize=["M", "split_k"])
def _int4_matmul_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, M, N, K,
                        stride_xm, stride_xk, stride_wk, stride_wn, stride_sg, stride_sn, stride_ym, stride_yn,
                        split_k, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    HALF: tl.constexpr = GROUP // 2
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    steps = (K // 2) // BLOCK_K
    for step in range(pid_k, steps, split_k):
        r0 = step * BLOCK_K
        g = r0 // HALF                                      # the tile's group
        offs_r = r0 + tl.arange(0, BLOCK_K)
        packed = tl.load(w_ptr + offs_r[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                         mask=n_ok[None, :], other=0)
        s = tl.load(s_ptr + g * stride_sg + offs_n * stride_sn, mask=n_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + g * stride_sg + offs_n * stride_sn, mask=n_ok, other=0.0).to(tl.float32)
        w_lo = (((packed & 15).to(tl.float32) - z[None, :]) * s[None, :]).to(x_ptr.dtype.element_ty)
        w_hi = (((packed >> 4).to(tl.float32) - z[None, :]) * s[None, :]).to(x_ptr.dtype.element_ty)
        k_lo = offs_r + g * HALF
        x_lo = tl.load(x_ptr + offs_m[:, None] * stride_xm + k_lo[None, :] * stride_xk,
                       mask=m_ok[:, None], other=0.0)
        x_hi = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k_lo + HALF)[None, :] * stride_xk,
                       mask=m_ok[:, None], other=0.0)
        acc = tl.dot(x_lo, w_lo, acc, input_precision=INPUT_PRECISION)
        acc = tl.dot(x_hi, w_hi, acc, input_precision=INPUT_PRECISION)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    y_ok = m_ok[:, None] & n_ok[None, :]
    if ATOMIC:
        tl.atomic_add(y_ptrs, acc, mask=y_ok)
    else:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_ok)


def block_sizes_v1(M: int, N: int, K: int, group_size: int,
                   dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps), hand-picked: BLOCK_K divides g/2 (≤ 64);
    decode sizes split K so that ≈ 4 programs per SM of an H100 (132 SMs) stream the weight.

    fp32 x takes smaller tiles: its ``ieee`` dot is an FMA loop, not a tensor-core instruction, and
    the bf16 tiles spill registers there (the sm_90 compile, `lab.kernels.aot`, found it).
    """
    block_k = min(64 if dtype != torch.float32 else 16, group_size // 2)
    if M <= 16:
        block_n = 64
        n_tiles = triton.cdiv(N, block_n)
        split_k = max(1, min((K // 2) // block_k, 528 // n_tiles))
        return 16, block_n, block_k, split_k, 4
    if dtype == torch.float32:
        return (32, 32, block_k, 1, 4) if M <= 128 else (32, 64, block_k, 1, 4)
    if M <= 128:
        return 64, 64, block_k, 1, 4
    return 128, 128, block_k, 1, 8


def int4_weight_only_matmul_triton(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                       group_size: int, block: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """The Triton kernel; ``block`` = (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps), default `block_sizes_v1`."""
    _check_v1(x, packed, scales, zeros, group_size)
    M, K = x.shape
    N = packed.shape[1]
    block_m, block_n, block_k, split_k, num_warps = block_sizes_v1(M, N, K, group_size, x.dtype) if block is None \
        else check_block("block", block, ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps"), ("SPLIT_K",))
    if (group_size // 2) % block_k:
        raise ValueError(f"BLOCK_K={block_k} must divide group_size/2 = {group_size // 2}")
    out_dtype = x.dtype if split_k == 1 else torch.float32
    y = (torch.empty if split_k == 1 else torch.zeros)(M, N, device=x.device, dtype=out_dtype)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n), split_k)
    _int4_matmul_kernel[grid](
        x, packed, scales, zeros, y, M, N, K, x.stride(0), x.stride(1), packed.stride(0), packed.stride(1),
        scales.stride(0), scales.stride(1), y.stride(0), y.stride(1), split_k,
        GROUP=group_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, ATOMIC=split_k > 1,
        INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=num_warps)
    return y.to(x.dtype)


# --- v2: decode GEMV, M ≤ MAX_M --------------------------------------------------------------------------

# tl.sum and tl.zeros are @triton.jit functions of Triton's library, created when triton is imported:
# they do not switch to the interpreter when a test reloads this module under TRITON_INTERPRET=1.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _plane(words, xt, part, SHIFT: tl.constexpr, MAGIC_BITS: tl.constexpr, DEQUANT_ASM: tl.constexpr,
           INPUT_PRECISION: tl.constexpr):
    """part + (c + q) xᵀ for plane q = (words >> SHIFT) & 0xF of a (BLOCK_N, PLANE) int16 tile."""
    if MAGIC_BITS == 0:                                                  # fp32 x: exact int → float
        w = ((words >> SHIFT) & 0xF).to(tl.float32)
    elif DEQUANT_ASM == "":                                              # the interpreter: the same bits
        w = (((words >> SHIFT) & 0xF) | MAGIC_BITS).to(xt.dtype, bitcast=True)
    else:                                                                # compiled: 2 codes per instruction
        w = tl.inline_asm_elementwise(DEQUANT_ASM, "=r,r", [words], dtype=xt.dtype, is_pure=True, pack=2)
    return tl.dot(w, xt, part, input_precision=INPUT_PRECISION)


# M and split_k are runtime values (not specialised): one compilation per dtype, group size and M ≤ 8 / ≤ 16.
@triton.jit(do_not_specialize=["M", "split_k"])
def _int4_gemv_v2_kernel(x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_sg, split_k,
                         GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                         MAGIC_BITS: tl.constexpr, MAGIC_VALUE: tl.constexpr,
                         ASM_0: tl.constexpr, ASM_1: tl.constexpr, ASM_2: tl.constexpr, ASM_3: tl.constexpr,
                         INPUT_PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    PLANE: tl.constexpr = GROUP // 4                                    # columns per plane = words per group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_j = tl.arange(0, PLANE)
    n_ok = offs_n < N
    m_ok = offs_m < M
    acc = tl.full((BLOCK_N, BLOCK_M), 0.0, tl.float32)                  # yᵀ tile
    for G in range(pid_k, K // GROUP, split_k):
        words = tl.load(w_ptr + offs_n[:, None] * stride_wn + (G * PLANE + offs_j)[None, :],
                        mask=n_ok[:, None], other=0)                     # (BLOCK_N, PLANE) int16
        s = tl.load(s_ptr + G * stride_sg + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + G * stride_sg + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        x_ptrs = x_ptr + offs_m[None, :] * stride_xm + (G * GROUP + offs_j)[:, None]    # xᵀ of plane 0
        x_mask = m_ok[None, :]
        xt0 = tl.load(x_ptrs, mask=x_mask, other=0.0)                    # (PLANE, BLOCK_M)
        xt1 = tl.load(x_ptrs + PLANE, mask=x_mask, other=0.0)
        xt2 = tl.load(x_ptrs + 2 * PLANE, mask=x_mask, other=0.0)
        xt3 = tl.load(x_ptrs + 3 * PLANE, mask=x_mask, other=0.0)
        part = tl.full((BLOCK_N, BLOCK_M), 0.0, tl.float32)             # Σ_{k∈G} x_k (c + q_k)
        part = _plane(words, xt0, part, 0, MAGIC_BITS, ASM_0, INPUT_PRECISION)
        part = _plane(words, xt1, part, 4, MAGIC_BITS, ASM_1, INPUT_PRECISION)
        part = _plane(words, xt2, part, 8, MAGIC_BITS, ASM_2, INPUT_PRECISION)
        part = _plane(words, xt3, part, 12, MAGIC_BITS, ASM_3, INPUT_PRECISION)
        x_planes = (xt0.to(tl.float32) + xt1.to(tl.float32)) + (xt2.to(tl.float32) + xt3.to(tl.float32))
        x_sum = tl.reduce(x_planes, 0, _add)                            # X_G (BLOCK_M,)
        acc += s[:, None] * (part - (MAGIC_VALUE + z)[:, None] * x_sum[None, :])
    out_ptrs = out_ptr + pid_k * M * N + offs_m[None, :] * N + offs_n[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


@triton.jit(do_not_specialize=["MN", "split_k"])
def _reduce_kernel(partial_ptr, y_ptr, MN, split_k, BLOCK: tl.constexpr):
    """y = Σ_k partial[k] over the split_k slots of a (split_k, M, N) fp32 buffer, cast to y's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < MN
    total = tl.full((BLOCK,), 0.0, tl.float32)
    for k in range(split_k):
        total += tl.load(partial_ptr + k * MN + offs, mask=ok, other=0.0)
    tl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty), mask=ok)


def dequant_asm(magic_bits: int) -> tuple[str, str, str, str]:
    """PTX of plane p = 0…3 for two 16-bit words in one 32-bit register r: (r >> 4p) & 0x000F000F | magic,
    one LOP3 (lookup table 0xEA = (a & b) | c), after a shift for p > 0: the fp16 / bf16 pair c + q.
    Empty strings for fp32 x (no magic): the kernel converts the codes with I2F."""
    if magic_bits == 0:
        return ("",) * 4
    magic = f"0x{magic_bits * 0x10001:08x}"
    lop = "lop3.b32 $0, {}, 0x000f000f, " + magic + ", 0xea;"
    return (lop.format("$1"),) + tuple(
        "{ .reg .b32 t; shr.b32 t, $1, " + str(4 * p) + "; " + lop.format("t") + " }" for p in (1, 2, 3))


def block_sizes_v2(M: int, N: int, K: int, group_size: int,
                   dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int]:
    """(BLOCK_N, SPLIT_K, num_warps): 256 outputs per program and 8 warps (of 64 / 128 / 256 outputs with
    4 or 8 warps, the fewest instructions per weight in the sm_90 static model, `lab.kernels.aot.model`); fp32 x
    (an FMA dot, no tensor cores) 64 outputs and 4 warps: the wider tile spills registers on sm_90.
    SPLIT_K balances the SMs (`lab.kernels.split.balanced_split` over the K/g groups), at most the larger of
    a cap that keeps the fp32 partials (written, then read: 8·SPLIT_K·M·N bytes) under
    `PARTIAL_BYTES_FRACTION` of the weight's N·K/2 bytes and the split that gives one program per SM."""
    check_int("M", M)
    block_n, num_warps = (64, 4) if dtype == torch.float32 else (256, 8)
    n_tiles = triton.cdiv(N, block_n)
    cap = int(PARTIAL_BYTES_FRACTION * K / (16 * M))
    most = max(cap, math.ceil(132 / n_tiles))
    return block_n, balanced_split(n_tiles, max(1, K // group_size), most), num_warps


def int4_gemv_v2_triton(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                        group_size: int, block: tuple[int, int, int] | None = None) -> torch.Tensor:
    """The Triton kernels; ``block`` = (BLOCK_N, SPLIT_K, num_warps), default `block_sizes_v2`."""
    _check_v2(x, packed, scales, zeros, group_size)
    M, K = x.shape
    N = packed.shape[0]
    block_n, split_k, num_warps = block_sizes_v2(M, N, K, group_size, x.dtype) if block is None else check_block(
        "block", block, ("BLOCK_N", "SPLIT_K", "num_warps"), ("SPLIT_K",))
    magic_bits, magic_value = MAGIC[x.dtype]
    asm = dequant_asm(magic_bits) if os.environ.get("TRITON_INTERPRET") != "1" else ("",) * 4
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    out = y if split_k == 1 else torch.empty(split_k, M, N, device=x.device, dtype=torch.float32)
    _int4_gemv_v2_kernel[(triton.cdiv(N, block_n), split_k)](
        x, packed, scales, zeros, out, M, N, K, x.stride(0), packed.stride(0), scales.stride(0), split_k,
        GROUP=group_size, BLOCK_N=block_n, BLOCK_M=8 if M <= 8 else 16, MAGIC_BITS=magic_bits,
        MAGIC_VALUE=magic_value, ASM_0=asm[0], ASM_1=asm[1], ASM_2=asm[2], ASM_3=asm[3],
        INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=num_warps)
    if split_k > 1:
        _reduce_kernel[(triton.cdiv(M * N, REDUCE_BLOCK),)](out, y, M * N, split_k, BLOCK=REDUCE_BLOCK, num_warps=1)
    return y


# --- bytes and dispatch ----------------------------------------------------------------------------------

def call_bytes(M: int, N: int, K: int, g: int, element_bytes: int, version: str, split_k: int) -> int:
    """The DRAM bytes of one call of ``version`` ("v1" or "v2") with SPLIT_K = ``split_k`` (module docstring),
    each operand read once; ``element_bytes`` = e, the size of x's (and the scales') elements."""
    check_choice("version", version, ("v1", "v2"))
    for name, value in dict(M=M, N=N, K=K, g=g, element_bytes=element_bytes, split_k=split_k).items():
        check_int(name, value)
    e = element_bytes
    weight = N * K // 2 + 2 * (K // g) * N * e                  # codes, scales and zeros (in x's dtype)
    out = e * M * N
    if split_k > 1 and version == "v1":                         # memset, atomic read-modify-write, cast
        out = 4 * M * N + 2 * 4 * M * N * split_k + 4 * M * N + e * M * N
    elif split_k > 1:                                           # partials written, read by the reduction
        out = 2 * 4 * M * N * split_k + e * M * N
    return weight + e * M * K + out


def int4_weight_only_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                            group_size: int) -> torch.Tensor:
    """y (M, N) = x Ŵᵀ for a packed int4 weight; Triton on CUDA or under the interpreter, else PyTorch."""
    check_tensor("x", x)  # before reading its device: a list gets a TypeError that names it
    if runs_triton(x.device):
        return int4_weight_only_matmul_triton(x, packed, scales, zeros, group_size)
    return int4_weight_only_matmul_torch(x, packed, scales, zeros, group_size)


def int4_gemv_v2(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int) -> torch.Tensor:
    """y (M, N) = x Ŵᵀ for a v2-packed int4 weight; Triton on CUDA or under the interpreter, else PyTorch."""
    x = check_tensor("x", x).contiguous()                  # a strided view of x (M ≤ 16 rows): copied, not refused
    if runs_triton(x.device):
        return int4_gemv_v2_triton(x, packed, scales, zeros, group_size)
    return int4_gemv_v2_torch(x, packed, scales, zeros, group_size)
