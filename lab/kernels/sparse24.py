"""y = x Wᵀ with W stored in the compressed 2:4 format of `lab.formats.sparse24`.

Shapes: x (M, K) fp16 / bf16 / fp32; W (N, K) given as ``values`` (N, K/2) in x's dtype and ``meta``
(N, ⌈K/8⌉) uint8 (two 2-bit positions per group of 4: group g in nibble g mod 2 of byte g // 2); y (M, N)
in x's dtype, accumulated in fp32. The PyTorch reference (the CPU path) decompresses W and multiplies.

v1 (`sparse24_matmul`, the readable kernel of chapter 2, Triton-tutorial style): program (pid_m, pid_n)
owns the output tile y[BLOCK_M, BLOCK_N]. For each K-step it loads the x tile (BLOCK_M, BLOCK_K), and for
the weight only the compressed tile: values (BLOCK_N, BLOCK_K/2) and meta (BLOCK_N, BLOCK_K/8). It expands
them in registers into the dense tile Wᵀ[BLOCK_K, BLOCK_N]: for input column k, group g = k//4,
position p = k mod 4, nibble = meta[n, g//2] >> 4·(g mod 2), p₀ = nibble & 3, p₁ = nibble >> 2,
  Wᵀ[k, n] = values[n, 2g] if p = p₀,  values[n, 2g+1] if p = p₁,  0 otherwise   (tl.where),
then calls tl.dot on the dense tile. Rows/columns past M, N, K are masked (loaded as 0, not stored).

v2 (`sparse24_matmul_v2`: coalesced vector loads, each value read once; K a multiple of 32) changes:

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

Bytes moved per call, v1 and v2 alike (e = the element size of x):

    e·N·K/2  (values)  +  N·K/8  (meta)  +  e·M·K  (x)  +  e·M·N  (y)

`call_bytes` computes it; a dense weight moves e·N·K instead of the first two terms (9/16 of it for
e = 2). FLOPs are 2·M·N·K in both cases: the tensor cores still do dense work, the win is bytes. For
decode-like small M the intensity ≈ 2MNK / (e·N·K) = M FLOP/byte (e = 2) is far below a GPU's ridge point
(`lab.core.ceilings`), so time ≈ bytes / bandwidth; chapter 2 predicts the times with the sm_90 static
model (`lab.kernels.aot.model`) and measures them on a GPU. For large M both are compute-bound and
these kernels gain nothing (their tl.dot is dense); only sparse tensor cores (mma.sp via
`torch.sparse.to_sparse_semi_structured`) can halve the FLOP time there.

`sparse24_matmul` and `sparse24_matmul_v2` dispatch: CUDA tensors → the Triton kernel; CPU tensors → the
PyTorch reference unless ``TRITON_INTERPRET=1``, in which case the Triton kernel runs in Triton's CPU
interpreter (the module must then be imported — or reloaded — while the variable is set, because
``@triton.jit`` reads it at definition time; see `lab.core.runtime`). The kernels call only builtins of
triton.language (tl.full, not tl.zeros): the library's own @jit helpers such as tl.zeros were defined when
triton was first imported and are not interpretable unless triton itself was imported with the variable set.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lab.core.checks import check_block, check_int, check_tensor
from lab.core.runtime import runs_triton
from lab.formats.sparse24 import decompress, meta_shape

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, out_features: int,
           in_features: int) -> None:
    for name, t in (("x", x), ("values", values), ("meta", meta)):
        check_tensor(name, t)
    check_int("out_features", out_features)
    check_int("in_features", in_features)
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"x must have shape (M, in_features={in_features}), got {tuple(x.shape)}")
    if x.dtype not in DTYPES or values.dtype != x.dtype:
        raise TypeError(f"x and values must share one dtype of {DTYPES}, got x {x.dtype}, values {values.dtype}")
    if in_features % 4:
        raise ValueError(f"in_features={in_features} must be divisible by 4 for 2:4")
    if tuple(values.shape) != (out_features, in_features // 2):
        raise ValueError(f"values must have shape {(out_features, in_features // 2)}, got {tuple(values.shape)}")
    expected = meta_shape(out_features, in_features, 2, 4)
    if meta.dtype != torch.uint8:
        raise TypeError(f"meta must be uint8 (its 2-bit positions packed), got {meta.dtype}")
    if tuple(meta.shape) != expected:
        raise ValueError(f"meta must have shape {expected}, got {tuple(meta.shape)}")
    if not (x.device == values.device == meta.device):
        raise ValueError(f"x, values, meta must be on one device, got {x.device}, {values.device}, {meta.device}")


# --- the PyTorch reference (the CPU path) ----------------------------------------------------------------

def sparse24_matmul_torch(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                          out_features: int, in_features: int) -> torch.Tensor:
    """The PyTorch path: y = x · decompress(values, meta)ᵀ, (M, out_features) in x's dtype."""
    _check(x, values, meta, out_features, in_features)
    return x.contiguous() @ decompress(values, meta, in_features).t()   # a view of x: the same bits as x


# --- v1: the dense Wᵀ tile gathered element by element ---------------------------------------------------

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


def block_sizes_v1(M: int, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps) for M rows of x (hand-picked, not autotuned).

    Small M (decode): the minimum tl.dot height 16 and narrow N tiles, so N/32 programs keep
    the SMs busy streaming the weight; large M: square-ish tiles that reuse each loaded tile.
    fp32 (an FMA dot, no tensor cores) and the largest bf16 tile take shorter K steps: the wider
    ones spill registers on sm_90 (the sm_90 compile, `lab.kernels.aot`, found it).
    """
    if dtype == torch.float32:
        return (16, 32, 32, 4) if M <= 16 else (64, 64, 16, 8)
    if M <= 16:
        return 16, 32, 128, 4
    if M <= 128:
        return 64, 64, 64, 4
    return 128, 128, 32, 8


def sparse24_matmul_triton(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, out_features: int,
                           in_features: int, block: tuple[int, int, int, int] | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel; ``block`` = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps), default `block_sizes_v1`.

    BLOCK_K must be a multiple of 8 (whole metadata bytes); every block size ≥ 16 on a GPU.
    ``out``: optional (M, out_features) tensor of x's dtype and device to write y into.
    """
    _check(x, values, meta, out_features, in_features)
    block_m, block_n, block_k, num_warps = block_sizes_v1(x.shape[0], x.dtype) if block is None else check_block(
        "block", block, ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps"))
    if block_k % 8:
        raise ValueError(f"BLOCK_K={block_k} must be a multiple of 8")
    values, meta = values.contiguous(), meta.contiguous()
    M = x.shape[0]
    y = torch.empty(M, out_features, device=x.device, dtype=x.dtype) if out is None else check_tensor("out", out)
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


# --- v2: vector loads, expansion in registers, operands swapped ------------------------------------------

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


def block_sizes_v2(M: int, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): x rows padded to 8 / 16 / 64. Decode: 64 weight rows (N/64
    programs: 128 on an 8192-row layer, about one per SM) and 128 columns (64 values and 16 metadata bytes
    per row, 16-byte loads). Prefill: 128 × 64 on 8 warps, fp32 (an FMA dot) 32 × 64: the larger tiles
    spill registers on sm_90 (the sm_90 compile, `lab.kernels.aot`)."""
    block_m = 8 if M <= 8 else 16 if M <= 16 else 64
    if dtype == torch.float32:
        return min(block_m, 16), 32, 64, 4
    if M <= 16:
        return block_m, 64, 128, 4
    return block_m, 128, 64, 8


def sparse24_matmul_v2_triton(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, out_features: int,
                              in_features: int, block: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """The Triton kernel; ``block`` = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps), default `block_sizes_v2`.
    x must be contiguous along K, values and meta row-major contiguous; K and BLOCK_K multiples of 32."""
    _check(x, values, meta, out_features, in_features)
    if x.stride(1) != 1 or not values.is_contiguous() or not meta.is_contiguous():
        raise ValueError("the v2 kernel needs x contiguous along K and values, meta contiguous (row-major)")
    if in_features % 32:
        raise ValueError(f"in_features={in_features} must be a multiple of 32 for the v2 kernel (it reads the "
                         "metadata as 32-bit words of 8 groups); use sparse24_matmul (v1)")
    M = x.shape[0]
    block_m, block_n, block_k, num_warps = block_sizes_v2(M, x.dtype) if block is None else check_block(
        "block", block, ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps"))
    if block_k % 32:
        raise ValueError(f"BLOCK_K={block_k} must be a multiple of 32")
    y = torch.empty(M, out_features, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(out_features, block_n), triton.cdiv(M, block_m))
    # k_words = K/32 is an argument of its own: divisible by 16 (K a multiple of 512), Triton knows the words'
    # mask is uniform over a 16-byte vector and loads them as one
    _sparse24_v2_kernel[grid](x, values, meta.view(torch.int32), y, M, out_features, in_features, in_features // 32,
                              x.stride(0), values.stride(0), meta.stride(0) // 4, y.stride(0), BLOCK_M=block_m,
                              BLOCK_N=block_n, BLOCK_K=block_k,
                              INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=num_warps)
    return y


# --- bytes and dispatch ----------------------------------------------------------------------------------

def call_bytes(M: int, N: int, K: int, element_bytes: int) -> int:
    """The DRAM bytes of one call of v1 or v2 (module docstring); ``element_bytes`` = e, the size of x's elements."""
    for name, value in dict(M=M, N=N, K=K, element_bytes=element_bytes).items():
        check_int(name, value)
    e = element_bytes
    return e * N * K // 2 + N * K // 8 + e * M * K + e * M * N


def sparse24_matmul(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                    out_features: int, in_features: int) -> torch.Tensor:
    """y = x Wᵀ (M, out_features) for W in compressed 2:4 form; Triton on CUDA or under the
    interpreter (``TRITON_INTERPRET=1``), else the PyTorch path."""
    check_tensor("x", x)  # before reading its device: a list gets a TypeError that names it
    if runs_triton(x.device):
        return sparse24_matmul_triton(x, values, meta, out_features, in_features)
    return sparse24_matmul_torch(x, values, meta, out_features, in_features)


def sparse24_matmul_v2(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, out_features: int,
                       in_features: int) -> torch.Tensor:
    """y = x Wᵀ; Triton on CUDA or under the interpreter, else the PyTorch reference (a strided x is copied)."""
    check_tensor("x", x)
    if runs_triton(x.device):
        return sparse24_matmul_v2_triton(x.contiguous(), values, meta, out_features, in_features)
    return sparse24_matmul_torch(x, values, meta, out_features, in_features)
