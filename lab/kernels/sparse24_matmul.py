"""y = x Wᵀ with W stored in the compressed 2:4 format of `lab.prune.semi_structured`.

Shapes: x (M, K) fp16 / bf16 / fp32; W (N, K) given as ``values`` (N, K/2) in x's dtype and
``meta`` (N, ⌈K/8⌉) uint8 (two 2-bit positions per group of 4, two groups per byte, see
`lab.prune.semi_structured`); y (M, N) in x's dtype, accumulated in fp32.

The kernel (Triton-tutorial style): program (pid_m, pid_n) owns the output tile
y[BLOCK_M, BLOCK_N]. For each K-step it loads the x tile (BLOCK_M, BLOCK_K), and for the weight
only the compressed tile: values (BLOCK_N, BLOCK_K/2) and meta (BLOCK_N, BLOCK_K/8). It expands
them in registers into the dense tile Wᵀ[BLOCK_K, BLOCK_N]: for input column k, group g = k//4,
position p = k mod 4, nibble = meta[n, g//2] >> 4·(g mod 2), p₀ = nibble & 3, p₁ = nibble >> 2,
  Wᵀ[k, n] = values[n, 2g] if p = p₀,  values[n, 2g+1] if p = p₁,  0 otherwise   (tl.where),
then calls tl.dot on the dense tile. Rows/columns past M, N, K are masked (loaded as 0, not
stored). The tensor cores still do dense work: the win is bytes, not FLOPs.

Bytes moved (e = element size, 2 for fp16/bf16):
  dense:  e·N·K (weight) + e·M·K + e·M·N
  2:4:    e·N·K/2 (values) + N·K/8 (meta) + e·M·K + e·M·N      → 0.5625 of the weight bytes for e=2
FLOPs: 2·M·N·K in both cases. Roofline with the datasheet ceilings of an H100 SXM5
(`lab.core.ceilings.DATASHEETS`: 3.35 TB/s HBM3, 989 TFLOP/s dense fp16/bf16; peaks, not
measurements): the ridge point is ≈295 FLOP/byte. For decode-like small M the intensity is
≈ 2MNK / (e·N·K) = M FLOP/byte (e = 2), far below the ridge, so time ≈ bytes / bandwidth and
the ideal speed-up over a dense matmul is 1/0.5625 ≈ 1.78×; e.g. N = K = 4096, M = 1:
33.6 MB → 18.9 MB, ≈10.0 µs → ≈5.6 µs at full bandwidth. For large M (M ≳ 300) both are
compute-bound and this kernel gains nothing (its tl.dot is dense); only sparse tensor cores
(mma.sp via `torch.sparse.to_sparse_semi_structured`) can halve the FLOP time there.

`sparse24_matmul` dispatches: CUDA tensors → the Triton kernel; CPU tensors → the PyTorch
path (decompress, then matmul) unless ``TRITON_INTERPRET=1``, in which case the Triton kernel
runs in Triton's CPU interpreter (the module must then be imported — or reloaded — while the
variable is set, because ``@triton.jit`` reads it at definition time; see `lab.core.runtime`).
The kernel calls only builtins of triton.language (tl.full, not tl.zeros): the library's own
@jit helpers such as tl.zeros were defined when triton was first imported and are not
interpretable unless triton itself was imported with the variable set.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from lab.core.checks import check_tensor
from lab.prune.semi_structured import decompress, meta_shape

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# M is not specialised (no separate compilation for M = 1 or M divisible by 16): decode and prefill
# shapes share one compilation per block size, on the GPU and in the static check.
@triton.jit(do_not_specialize=["M"])
def _sparse24_matmul_kernel(x_ptr, values_ptr, meta_ptr, y_ptr, M, N, K,
                            stride_xm, stride_xk, stride_vn, stride_mn, stride_ym, stride_yn,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            INPUT_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # builtins only: see `sparse24_matmul`
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        # the compressed Wᵀ tile, indexed (k, n): group g = k // 4, position p = k % 4
        g = (offs_k // 4)[:, None]
        p = (offs_k % 4)[:, None]
        w_ok = k_ok[:, None] & n_ok[None, :]
        byte = tl.load(meta_ptr + offs_n[None, :] * stride_mn + g // 2, mask=w_ok, other=0).to(tl.int32)
        nibble = (byte >> ((g % 2) * 4)) & 15
        v_ptr = values_ptr + offs_n[None, :] * stride_vn + 2 * g
        v0 = tl.load(v_ptr, mask=w_ok, other=0.0)
        v1 = tl.load(v_ptr + 1, mask=w_ok, other=0.0)
        zero = tl.full((BLOCK_K, BLOCK_N), 0.0, v0.dtype)
        w = tl.where(p == (nibble & 3), v0, tl.where(p == (nibble >> 2), v1, zero))   # Wᵀ tile (BLOCK_K, BLOCK_N)
        acc = tl.dot(x, w, acc, input_precision=INPUT_PRECISION)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def block_sizes(M: int, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps) for M rows of x (hand-picked, not autotuned).

    Small M (decode): the minimum tl.dot height 16 and narrow N tiles, so N/32 programs keep
    the SMs busy streaming the weight; large M: square-ish tiles that reuse each loaded tile.
    fp32 (an FMA dot, no tensor cores) and the largest bf16 tile take shorter K steps: the wider
    ones spill registers on sm_90 (the static check, `lab.kernels.compile`, found it).
    """
    if dtype == torch.float32:
        return (16, 32, 32, 4) if M <= 16 else (64, 64, 16, 8)
    if M <= 16:
        return 16, 32, 128, 4
    if M <= 128:
        return 64, 64, 64, 4
    return 128, 128, 32, 8


def _check(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, out_features: int,
           in_features: int) -> None:
    for name, t in (("x", x), ("values", values), ("meta", meta)):
        check_tensor(name, t)
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"x must have shape (M, in_features={in_features}), got {tuple(x.shape)}")
    if x.dtype not in DTYPES or values.dtype != x.dtype:
        raise TypeError(f"x and values must share one dtype of {DTYPES}, got x {x.dtype}, values {values.dtype}")
    if in_features % 4:
        raise ValueError(f"in_features={in_features} must be divisible by 4 for 2:4")
    if tuple(values.shape) != (out_features, in_features // 2):
        raise ValueError(f"values must have shape {(out_features, in_features // 2)}, got {tuple(values.shape)}")
    expected = meta_shape(out_features, in_features, 2, 4)
    if meta.dtype != torch.uint8 or tuple(meta.shape) != expected:
        raise ValueError(f"meta must be uint8 of shape {expected}, got {meta.dtype} {tuple(meta.shape)}")
    if not (x.device == values.device == meta.device):
        raise ValueError(f"x, values, meta must be on one device, got {x.device}, {values.device}, {meta.device}")


def sparse24_matmul_torch(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                          out_features: int, in_features: int) -> torch.Tensor:
    """The PyTorch path: y = x · decompress(values, meta)ᵀ, (M, out_features) in x's dtype."""
    _check(x, values, meta, out_features, in_features)
    return x @ decompress(values, meta, in_features).t()


def sparse24_matmul_triton(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, out_features: int,
                           in_features: int, block: tuple[int, int, int, int] | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel; ``block`` = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps), default `block_sizes`.

    BLOCK_K must be a multiple of 8 (whole metadata bytes); every block size ≥ 16 on a GPU.
    ``out``: optional (M, out_features) tensor of x's dtype and device to write y into.
    """
    _check(x, values, meta, out_features, in_features)
    block_m, block_n, block_k, num_warps = block or block_sizes(x.shape[0], x.dtype)
    if block_k % 8:
        raise ValueError(f"BLOCK_K={block_k} must be a multiple of 8")
    values, meta = values.contiguous(), meta.contiguous()
    M = x.shape[0]
    y = torch.empty(M, out_features, device=x.device, dtype=x.dtype) if out is None else out
    if y.shape != (M, out_features) or y.dtype != x.dtype or y.device != x.device:
        raise ValueError(f"out must be {x.dtype} of shape {(M, out_features)} on {x.device}, "
                         f"got {y.dtype} {tuple(y.shape)} on {y.device}")
    grid = (triton.cdiv(M, block_m), triton.cdiv(out_features, block_n))
    _sparse24_matmul_kernel[grid](
        x, values, meta, y, M, out_features, in_features,
        x.stride(0), x.stride(1), values.stride(0), meta.stride(0), y.stride(0), y.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=num_warps)
    return y


def sparse24_matmul(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                    out_features: int, in_features: int) -> torch.Tensor:
    """y = x Wᵀ (M, out_features) for W in compressed 2:4 form; Triton on CUDA or under the
    interpreter (``TRITON_INTERPRET=1``), else the PyTorch path."""
    check_tensor("x", x)  # before reading its device: a list gets a TypeError that names it
    if x.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return sparse24_matmul_triton(x, values, meta, out_features, in_features)
    return sparse24_matmul_torch(x, values, meta, out_features, in_features)
