"""Weight-only int4 matmul: y = x Ŵᵀ with Ŵ = s·(q − z) dequantized in registers, never in memory.

Shapes: x (M, K) bf16 / fp16 / fp32; the weight W (N, K) as ``packed`` (K/2, N) uint8 in the
group-interleaved layout of `lab.quant.packing` (byte r of group G holds input column G·g + i in its
low nibble and G·g + g/2 + i in its high nibble, i = r − G·g/2), ``scales`` and ``zeros`` (K/g, N)
float (zeros hold the integer zero points); y (M, N) in x's dtype, accumulated in fp32.

The kernel: program (pid_m, pid_n, pid_k) owns the output tile y[BLOCK_M, BLOCK_N] and a 1/split_k
share of the packed rows. Each step loads BLOCK_K packed rows (BLOCK_K divides g/2, so the tile lies
in one group G: one row of scales and zeros serves it), unpacks the two nibbles with a mask and a
shift into two dense Wᵀ tiles (BLOCK_K, BLOCK_N) of input columns k_lo = r + G·g/2 and k_lo + g/2,
dequantizes them in fp32, casts to x's dtype and calls tl.dot twice with the matching x tiles. With
split_k > 1 the partial tiles are added into an fp32 buffer (tl.atomic_add), which is cast to x's
dtype at the end: decode (M ≤ 16) has only N/BLOCK_N output tiles, too few to keep every SM
streaming weights, and splitting K multiplies the number of programs.

Bytes moved (the decode case is memory bound; FLOPs 2·M·N·K as for bf16):
  bf16 weight:  2·N·K
  int4 weight:  N·K/2 (codes) + 2·(N·K/g)·e_s (scales and zeros, e_s bytes each) → 0.25 + 1/g of bf16 for e_s = 2
so at batch 1 the ideal speed-up over a bf16 matmul is ≈ 3.8× (g = 128); at the 3.35 TB/s of an H100 SXM5's
datasheet (`lab.core.ceilings.DATASHEETS`, not a measurement) an 8192×8192 layer takes ≈ 10.3 µs instead
of ≈ 40 µs.

`int4_weight_only_matmul` dispatches: CUDA tensors → the Triton kernel; CPU tensors → the PyTorch path
(unpack, dequantize, matmul) unless ``TRITON_INTERPRET=1`` (the kernel under Triton's interpreter;
import or reload this module inside `lab.core.runtime.triton_interpret`).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from lab.core.checks import check_int, check_tensor

X_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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


def _check(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
           group_size: int) -> None:
    if not torch.is_tensor(x) or x.dtype not in X_DTYPES or x.dim() != 2:
        raise TypeError(f"x must be a 2-D tensor of dtype in {X_DTYPES}, got "
                        f"{f'{x.dtype} {tuple(x.shape)}' if torch.is_tensor(x) else type(x).__name__}")
    if not torch.is_tensor(packed) or packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"packed must be a 2-D uint8 tensor (K/2, N), got "
                        f"{f'{packed.dtype} {tuple(packed.shape)}' if torch.is_tensor(packed) else type(packed).__name__}")
    if not packed.is_contiguous():
        raise ValueError("packed must be contiguous (K/2, N) row-major, as pack_int4 returns it")
    K = x.shape[1]
    if packed.shape[0] * 2 != K:
        raise ValueError(f"packed has {packed.shape[0]} rows; it must have K/2 = {K // 2} rows for x of shape "
                         f"{tuple(x.shape)}")
    check_int("group_size", group_size)
    if group_size < 32 or group_size % 32 or K % group_size:
        raise ValueError(f"group_size={group_size!r} must be a multiple of 32 dividing K={K} (the kernel's tiles "
                         "of 16 packed rows must lie inside one group)")
    check_scales(x, packed, scales, zeros, (K // group_size, packed.shape[1]))


def check_scales(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 expected: tuple[int, int]) -> None:
    """scales and zeros: float tensors of shape ``expected`` (K/g, N) with equal strides, on x's device."""
    for name, t in (("scales", scales), ("zeros", zeros)):
        if not torch.is_tensor(t) or t.dtype not in SCALE_DTYPES or tuple(t.shape) != expected:
            raise TypeError(f"{name} must be a float tensor of shape {expected} (K/g, N), got "
                            f"{f'{t.dtype} {tuple(t.shape)}' if torch.is_tensor(t) else type(t).__name__}")
    if scales.stride() != zeros.stride():
        raise ValueError("scales and zeros must have the same strides")
    if len({x.device, packed.device, scales.device, zeros.device}) != 1:
        raise ValueError("x, packed, scales, zeros must be on one device")


def int4_weight_only_matmul_torch(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                      group_size: int) -> torch.Tensor:
    """The PyTorch path: Ŵ = s·(q − z) from the unpacked codes, then x Ŵᵀ in fp32, returned in x's dtype."""
    from lab.quant.packing import dequantize_int4  # here, not at the top: lab.quant imports this module

    _check(x, packed, scales, zeros, group_size)
    return (x.float() @ dequantize_int4(packed, scales, zeros, group_size).T).to(x.dtype)


def block_sizes(M: int, N: int, K: int, group_size: int,
                dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps), hand-picked: BLOCK_K divides g/2 (≤ 64);
    decode sizes split K so that ≈ 4 programs per SM of an H100 (132 SMs) stream the weight.

    fp32 x takes smaller tiles: its ``ieee`` dot is an FMA loop, not a tensor-core instruction, and
    the bf16 tiles spill registers there (the sm_90 static check, `lab.kernels.compile`, found it).
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
    """The Triton kernel; ``block`` = (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps), default `block_sizes`."""
    _check(x, packed, scales, zeros, group_size)
    M, K = x.shape
    N = packed.shape[1]
    block_m, block_n, block_k, split_k, num_warps = block or block_sizes(M, N, K, group_size, x.dtype)
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


def int4_weight_only_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                group_size: int) -> torch.Tensor:
    """y (M, N) = x Ŵᵀ for a packed int4 weight; Triton on CUDA or under the interpreter, else PyTorch."""
    check_tensor("x", x)  # before reading its device: a list gets a TypeError that names it
    if x.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return int4_weight_only_matmul_triton(x, packed, scales, zeros, group_size)
    return int4_weight_only_matmul_torch(x, packed, scales, zeros, group_size)
