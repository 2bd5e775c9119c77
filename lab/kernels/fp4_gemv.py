"""FP4 weight-only matmul for decode: y = x Ŵᵀ with Ŵ an E2M1 weight in blocks of B columns, each block scaled by
one 8-bit scale (MXFP4: B = 32, E8M0 scales; NVFP4: B = 16, E4M3 scales times a global fp32 scale s_g).

Shapes: x (M, K) bf16 / fp16 / fp32, M small (a GEMV: M = 1 is the target, at most `MAX_M` rows in the kernel);
``packed`` (N, K/2) uint8, the low nibble of byte j of row n holding code q[n, 2j], the high nibble q[n, 2j + 1];
``scales`` (N, K/B) uint8; y (M, N) in x's dtype, accumulated in fp32 (`lab.formats.fp4` defines the layout):

    Ŵ[n, k] = v(q[n, k]) · S[n, k // B] · s_g,      v(c) = ±{0, 0.5, 1, 1.5, 2, 3, 4, 6},
    S = 2^(byte − 127) (E8M0, 255: NaN; MXFP4's s_g is 1)  or  the E4M3 number of the byte (NVFP4).

The PyTorch reference (the CPU path) dequantizes Ŵ in fp32 (`lab.formats.fp4.dequantize_fp4`) and multiplies.

The kernel. Hopper (sm_90) has no FP4 tensor core: its wgmma and mma.sync take fp16, bf16, tf32, fp8 and int8,
so the codes are widened in registers. Blackwell has one (PTX ISA facts, NVIDIA's documentation, not measured
here: sm_100a's ``tcgen05.mma`` with ``.kind::mxf4`` and ``.kind::mxf4nvf4`` multiplies E2M1 operands with
their E8M0 scales per 32 or E4M3 scales per 16 elements in the tensor core). Program (n, k) owns BLOCK_N rows
and every SPLIT_K-th step of BLOCKS blocks of B columns (64 columns where K allows: more bytes in flight per
step); per block it

* loads the B/8 32-bit words of each row (8 codes each, little-endian: nibble t of word i is column 8i + t) and
  writes the codes as fp16 bit patterns of v(c) · 2^−14, two per 32-bit operation: for t = 0 … 3,
  ``(w << (12 − 4t)) & 0x80008000 | (w << (9 − 4t)) & 0x0E000E00`` (a negative shift goes right) puts nibbles t
  and t + 4 into the word's two 16-bit halves, the sign on fp16's sign bit and E2M1's exponent and mantissa
  bits on fp16's two lowest exponent bits and its top mantissa bit: v(c) · 2^−14 exactly (e = 0: an fp16
  subnormal, m · 2^−15), with no int → float conversion; the eight tiles, joined, are the block's columns;
* multiplies that (BLOCK_N, B) tile, in x's dtype (exact: 2 significant bits), with the block's xᵀ on the
  tensor cores (operands swapped as in int4's v2, x padded to 8 or 16 rows), fp32 products exact;
* decodes the rows' scales (E8M0: the fp32 bits byte << 23; E4M3: a bitcast to fp8e4nv) and adds S times
  that partial sum to the fp32 accumulator: the scale multiplies the block's sum, not each weight, so no
  weight leaves fp16's range whatever S is.

The accumulator is multiplied by s_g · 2^14 at the end. Split-K as the dense baseline (`lab.kernels.dense`):
with SPLIT_K > 1 the fp32 partials go to a (SPLIT_K, M, N) buffer that int4's `_reduce_kernel` sums and casts.
Each code still costs about two integer instructions, a share of the shuffles into the tensor cores' operand
layout and, for bf16 x, a conversion from fp16: at M = 1 the sm_90 static model finds the kernel bound by
instruction issue, not by DRAM (int4's v2 shows the cure: inline PTX on the operand registers themselves).

Bytes moved per call (what bounds a decode GEMV from below; FLOPs 2·M·N·K), e the element size of x, S = SPLIT_K:

    N·K/2  (codes)  +  N·K/B  (scales)  +  e·M·K  (x)  +  e·M·N  (y)     S > 1: + 8·S·M·N (partials)

`call_bytes` computes it. The weight moves 1/2 + 1/B bytes per element against bf16's 2: a GEMV streaming the
weight at the same bandwidth is at most 2 / (1/2 + 1/B) times faster than the bf16 one (3.76 for MXFP4, 3.56
for NVFP4) — a predicted ceiling, the memory term of the sm_90 static model (`lab.kernels.aot.model`), not a
measurement.

`fp4_matmul` dispatches: CUDA tensors → Triton; CPU tensors → the PyTorch reference unless
``TRITON_INTERPRET=1`` (import or reload this module, and int4's for the reduction, inside
`lab.core.runtime.triton_interpret`). Under the interpreter, whose tl.dot multiplies bf16 bit patterns as
integers, bf16 tiles are multiplied in fp32: the same exact products, the same sums.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from lab.core.checks import check_block, check_choice, check_int, check_number, check_tensor
from lab.core.runtime import runs_triton
from lab.formats.fp4 import dequantize_fp4
from lab.kernels import int4
from lab.kernels.int4 import MAX_M, PARTIAL_BYTES_FRACTION, REDUCE_BLOCK
from lab.kernels.split import balanced_split

X_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FORMATS = {"mxfp4": (32, "e8m0"), "nvfp4": (16, "e4m3")}      # fmt → (block B, scale format of lab.formats.fp4)
BLOCK_FIELDS = ("BLOCK_N", "SPLIT_K", "num_warps")
STEP_COLUMNS = 64                 # columns per step of the K loop (BLOCKS = 64/B blocks) where K allows
SPLIT_COLUMNS = 128               # the fewest columns of K a program of a split takes (the dense kernel's BLOCK_K)


def _check(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float, fmt: str,
           max_m: int | None = MAX_M) -> None:
    check_tensor("x", x, 2, X_DTYPES)
    check_tensor("packed", packed, 2, (torch.uint8,))
    check_tensor("scales", scales, 2, (torch.uint8,))
    check_number("global_scale", global_scale, low=0.0, closed=(False, True))
    check_choice("fmt", fmt, tuple(FORMATS))
    (M, K), N, B = x.shape, packed.shape[0], FORMATS[fmt][0]
    if max_m is not None and not 1 <= M <= max_m:
        raise ValueError(f"x has M={M} rows; the FP4 GEMV kernel takes 1 to {max_m}")
    if K == 0 or K % B:
        raise ValueError(f"x has K={K} columns; {fmt} needs a positive multiple of its block B={B}")
    if N == 0 or packed.shape[1] * 2 != K or not packed.is_contiguous():
        raise ValueError(f"packed must be contiguous (N, K/2) = (N, {K // 2}) uint8 for x of shape {tuple(x.shape)}, "
                         f"got {tuple(packed.shape)} with strides {packed.stride()}")
    if tuple(scales.shape) != (N, K // B) or not scales.is_contiguous():
        raise ValueError(f"scales must be contiguous (N, K/B) = {(N, K // B)} uint8 for {fmt} (B={B}), got "
                         f"{tuple(scales.shape)} with strides {scales.stride()}")
    if len({x.device, packed.device, scales.device}) != 1:
        raise ValueError(f"x, packed, scales must be on one device, got {x.device}, {packed.device}, {scales.device}")


# --- the PyTorch reference (the CPU path) ----------------------------------------------------------------

def fp4_matmul_torch(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float,
                     fmt: str) -> torch.Tensor:
    """The PyTorch path: Ŵ in fp32 (`lab.formats.fp4.dequantize_fp4`), then x Ŵᵀ in fp32, in x's dtype (any M)."""
    _check(x, packed, scales, global_scale, fmt, max_m=None)
    w_hat = dequantize_fp4(packed, scales, global_scale, FORMATS[fmt][1])
    return (x.float().contiguous() @ w_hat.T).to(x.dtype)


# --- the Triton kernel -----------------------------------------------------------------------------------

@triton.jit
def _shifted(words, S: tl.constexpr):
    """words << S, or >> −S for S < 0."""
    if S >= 0:
        out = words << S
    else:
        out = words >> -S
    return out


@triton.jit
def _e2m1_fp16_pairs(words, T: tl.constexpr):
    """fp16 v(c) · 2^−14 of nibbles T and T + 4 of uint32 words of 8 codes (module docstring): two tiles."""
    bits = (_shifted(words, 12 - 4 * T) & 0x80008000) | (_shifted(words, 9 - 4 * T) & 0x0E000E00)
    lo = bits.to(tl.int16).to(tl.float16, bitcast=True)
    hi = (bits >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return lo, hi


@triton.jit
def _e2m1_words(words):
    """(BLOCK_N, 8·W) fp16 v(c) · 2^−14 of (BLOCK_N, W) uint32 words, in column order (nibble t of word i: 8i + t)."""
    t0, t4 = _e2m1_fp16_pairs(words, 0)
    t1, t5 = _e2m1_fp16_pairs(words, 1)
    t2, t6 = _e2m1_fp16_pairs(words, 2)
    t3, t7 = _e2m1_fp16_pairs(words, 3)
    even = tl.join(tl.join(t0, t4), tl.join(t2, t6))                   # [n, i, h, j1] → t = 4h + 2·j1
    odd = tl.join(tl.join(t1, t5), tl.join(t3, t7))
    w = tl.join(even, odd)                                              # [n, i, h, j1, j0] → t = 4h + 2·j1 + j0
    return tl.reshape(w, (words.shape[0], words.shape[1] * 8))


@triton.jit
def _scale(code, E4M3: tl.constexpr):
    """S of uint8 scale codes in fp32: E4M3's number, or E8M0's 2^(code − 127) (0: 2^−127, subnormal; 255: NaN)."""
    if E4M3:
        s = code.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        nan = tl.full(s.shape, 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)
        s = tl.where((code & 0x7F) == 0x7F, nan, s)                 # NaN: the interpreter reads 0x7F as 480
    else:
        c = code.to(tl.int32)
        bits = tl.where(c == 0, 0x400000, tl.where(c == 255, 0x7FC00000, c << 23))
        s = bits.to(tl.float32, bitcast=True)
    return s


@triton.jit
def _scaled_block(x_ptr, w_ptr, s_ptr, b, offs_n, n_ok, offs_m, m_ok, K, stride_xm, B: tl.constexpr,
                  E4M3: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """S · (Σ_{k ∈ block b} v(q[n, k]) · 2^−14 · x[m, k]): the (BLOCK_N, BLOCK_M) fp32 share of block b."""
    offs_j = tl.arange(0, B // 8)
    offs_k = tl.arange(0, B)
    words = tl.load(w_ptr + offs_n[:, None] * (K // 8) + (b * (B // 8) + offs_j)[None, :], mask=n_ok[:, None],
                    other=0)                                            # (BLOCK_N, B/8) 32-bit words
    w = _e2m1_words(words)                                              # (BLOCK_N, B): v · 2^−14, k in order
    xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + (b * B + offs_k)[:, None], mask=m_ok[None, :],
                 other=0.0)                                             # (B, BLOCK_M)
    if DOT_FP32:
        part = tl.dot(w.to(tl.float32), xt.to(tl.float32), input_precision="ieee")
    else:
        part = tl.dot(w.to(xt.dtype), xt, input_precision=INPUT_PRECISION)
    code = tl.load(s_ptr + offs_n * (K // B) + b, mask=n_ok, other=0)
    return part * _scale(code, E4M3)[:, None]


# M and split_k are runtime values (not specialised): one compilation per format, dtype, BLOCKS and BLOCK_M.
@triton.jit(do_not_specialize=["M", "split_k"])
def _fp4_matmul_kernel(x_ptr, w_ptr, s_ptr, out_ptr, global_scale, M, N, K, stride_xm, split_k,
                       B: tl.constexpr, BLOCKS: tl.constexpr, E4M3: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_M: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    w_ptr = w_ptr.to(tl.pointer_type(tl.uint32))                        # packed (N, K/2) bytes as (N, K/8) words
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_ok = offs_n < N
    m_ok = offs_m < M
    acc = tl.full((BLOCK_N, BLOCK_M), 0.0, tl.float32)                  # yᵀ tile
    for step in range(pid_k, K // (B * BLOCKS), split_k):               # a step: BLOCKS blocks of B columns
        for j in tl.static_range(BLOCKS):
            acc += _scaled_block(x_ptr, w_ptr, s_ptr, step * BLOCKS + j, offs_n, n_ok, offs_m, m_ok, K, stride_xm,
                                 B, E4M3, DOT_FP32, INPUT_PRECISION)
    acc = acc * (global_scale * 16384.0)                                # s_g · 2^14
    out_ptrs = out_ptr + pid_k * M * N + offs_m[None, :] * N + offs_n[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


def block_sizes(M: int, N: int, K: int, fmt: str, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int]:
    """(BLOCK_N, SPLIT_K, num_warps), hand-picked: 4 warps and the widest of 128, 64 rows (fp32 x, an FMA dot:
    64, 32) that still gives 132 programs of `SPLIT_COLUMNS` columns, else 32 rows (the book's small layers: more
    programs share the per-program instructions). SPLIT_K balances the SMs (`lab.kernels.split.balanced_split`
    over steps of `SPLIT_COLUMNS`: a program gets at least that many columns, not one block, so that a small
    layer is not split into one-block programs and a reduction over many partials), at most the larger of a cap
    that keeps the fp32 partials (8·SPLIT_K·M·N bytes) under `PARTIAL_BYTES_FRACTION` of the codes' N·K/2 and
    the split that gives one program per SM."""
    for name, value in dict(M=M, N=N, K=K).items():
        check_int(name, value)
    check_choice("fmt", fmt, tuple(FORMATS))
    check_choice("dtype", dtype, X_DTYPES)
    steps = triton.cdiv(K, SPLIT_COLUMNS)
    widest = 64 if dtype == torch.float32 else 128
    block_n = next((b for b in (widest, widest // 2) if triton.cdiv(N, b) * steps >= 132), 32)
    n_tiles = triton.cdiv(N, block_n)
    cap = int(PARTIAL_BYTES_FRACTION * K / (16 * M))
    split_k = balanced_split(n_tiles, steps, max(cap, math.ceil(132 / n_tiles)))
    return block_n, split_k, 4


def fp4_matmul_triton(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float, fmt: str,
                      block: tuple[int, int, int] | None = None) -> torch.Tensor:
    """The Triton kernel (and int4's reduction when SPLIT_K > 1); ``block`` = (BLOCK_N, SPLIT_K, num_warps),
    default `block_sizes`; BLOCK_N ≥ 16 (tl.dot)."""
    _check(x, packed, scales, global_scale, fmt)
    if x.stride(1) != 1:
        raise ValueError(f"x must be contiguous along K (stride(1) == 1), got strides {x.stride()}")
    if packed.data_ptr() % 4:
        raise ValueError(f"packed must start at a multiple of 4 bytes (the kernel reads 32-bit words), got a view at "
                         f"byte offset {packed.storage_offset()}")
    (M, K), N = x.shape, packed.shape[0]
    block_n, split_k, num_warps = block_sizes(M, N, K, fmt, x.dtype) if block is None else check_block(
        "block", block, BLOCK_FIELDS, ("SPLIT_K",))
    if block_n < 16:
        raise ValueError(f"block BLOCK_N={block_n} is not allowed: tl.dot needs at least 16 rows")
    B, scale_format = FORMATS[fmt]
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    out = y if split_k == 1 else torch.empty(split_k, M, N, device=x.device, dtype=torch.float32)
    _fp4_matmul_kernel[(triton.cdiv(N, block_n), split_k)](
        x, packed, scales, out, float(global_scale), M, N, K, x.stride(0), split_k, B=B,
        BLOCKS=math.gcd(K // B, STEP_COLUMNS // B), E4M3=scale_format == "e4m3",
        BLOCK_N=block_n, BLOCK_M=8 if M <= 8 else 16, DOT_FP32=interpreted and x.dtype == torch.bfloat16,
        INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=num_warps)
    if split_k > 1:
        int4._reduce_kernel[(triton.cdiv(M * N, REDUCE_BLOCK),)](out, y, M * N, split_k, BLOCK=REDUCE_BLOCK,
                                                                 num_warps=1)
    return y


# --- bytes and dispatch ----------------------------------------------------------------------------------

def call_bytes(N: int, K: int, M: int, fmt: str, element_bytes: int, split_k: int | None = None) -> int:
    """The DRAM bytes of one call (module docstring), each operand read once; ``element_bytes`` = e (2: bf16 or
    fp16, 4: fp32); ``split_k`` = S, by default the one `block_sizes` picks for that element size."""
    for name, value in dict(N=N, K=K, M=M).items():
        check_int(name, value)
    check_choice("fmt", fmt, tuple(FORMATS))
    check_choice("element_bytes", element_bytes, (2, 4))
    e, B = element_bytes, FORMATS[fmt][0]
    if split_k is None:
        split_k = block_sizes(M, N, K, fmt, torch.float32 if e == 4 else torch.bfloat16)[1]
    check_int("split_k", split_k)
    partials = 8 * split_k * M * N if split_k > 1 else 0
    return N * K // 2 + N * K // B + e * M * K + e * M * N + partials


def fp4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float,
               fmt: str) -> torch.Tensor:
    """y (M, N) = x Ŵᵀ for an FP4 weight (``fmt`` "mxfp4" or "nvfp4"); Triton on CUDA or under the interpreter,
    else PyTorch."""
    x = check_tensor("x", x).contiguous()                  # a strided view of x (a few rows): copied, not refused
    if runs_triton(x.device):
        return fp4_matmul_triton(x, packed, scales, global_scale, fmt)
    return fp4_matmul_torch(x, packed, scales, global_scale, fmt)
