"""W8A8 matmul: y = (A_q B_qᵀ) ⊙ (a_scale b_scaleᵀ) with int8 operands and the scales fused in the epilogue.

Shapes: A_q (M, K) int8 — activations quantized per token (row) with scales a_scale (M,) float32;
B_q (N, K) int8 — the weight quantized per output channel with scales b_scale (N,) float32;
y (M, N) in ``out_dtype`` (bf16 by default):

    y[m, n] = a_scale[m] · b_scale[n] · Σ_k A_q[m, k] · B_q[n, k]

The sum is exact in int32 (|Σ| ≤ 127²·K < 2³¹ for K < 133 000). The kernel (Triton-tutorial
tiling) loads int8 tiles, accumulates tl.dot into an int32 tile on the int8 tensor cores, and
multiplies by the two scale vectors before the single store: no int32 (M, N) matrix ever goes to
memory, which is what `torch._int_mm` followed by separate scaling has to do (4 bytes per output
written and read again).

Program order and tile (what v2 of this kernel changes; the arithmetic is the same):
* v1 launched a 2-D grid (row tiles, column tiles) whose first axis varies fastest when programs are
  dispatched: consecutive programs walk one column of output tiles top to bottom, sharing one column
  of B tiles and reading every row of A. Programs resident at one time then need all of A and a few
  columns of B: for a large A (prefill, M in the thousands) all of it must stay in L2 or be read again
  for every wave.
  Grouped order (the Triton tutorial's "L2 cache optimisations") walks ``GROUP_M`` rows of tiles
  column by column, so a wave needs ``GROUP_M`` rows of A tiles and more columns of B: B is read once
  per group of rows, A about once. ``GROUP_M = 1`` is row order, and ``GROUP_M`` ≥ the number of row
  tiles is v1's column order again. Which order moves fewer bytes from HBM depends on the shape and on
  the size of the L2, so the tuning set holds both.
* v1 used one hand-picked tile per M range. `candidates` lists a small set per range (the first is
  `block_sizes`: v1's tile, in grouped order above 128 rows); on a GPU `tuned_block` times each once
  per (device, M rounded up to a power of two, N, K, out dtype) with the one timer
  (`lab.core.timing.time_ms`) and keeps the fastest.
  Up to M = 128 (decode steps of a batch) there is a single candidate: a memory-bound product does not
  pay for a search, and a decode step may be captured in a CUDA graph, where nothing can be timed.

Bytes moved per call (each operand read once), e the element size of ``out_dtype``:

    M·K + N·K  (A_q, B_q)  +  4·(M + N)  (a_scale, b_scale)  +  e·M·N  (y)

`call_bytes` computes it.

`int8_matmul` dispatches: CUDA tensors → the Triton kernel; CPU tensors → the PyTorch path (the
same integer sum, computed exactly in chunks) unless ``TRITON_INTERPRET=1`` (the kernel under
Triton's interpreter; import or reload this module inside `lab.core.runtime.triton_interpret`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lab.core.checks import check_block, check_int, check_tensor
from lab.core.runtime import runs_triton

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_K = 133_000  # 127² · K must stay below 2³¹


def _check(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
           out_dtype: torch.dtype) -> None:
    for name, t in (("a", a), ("b", b)):
        if not torch.is_tensor(t) or t.dtype != torch.int8 or t.dim() != 2:
            raise TypeError(f"{name} must be a 2-D int8 tensor, got "
                            f"{f'{t.dtype} {tuple(t.shape)}' if torch.is_tensor(t) else type(t).__name__}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a (M, K) and b (N, K) must share K, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] >= MAX_K:
        raise ValueError(f"K={a.shape[1]} must be < {MAX_K} for an exact int32 accumulator")
    for name, t, n in (("a_scale", a_scale, a.shape[0]), ("b_scale", b_scale, b.shape[0])):
        if not torch.is_tensor(t) or t.dtype != torch.float32 or tuple(t.shape) != (n,):
            raise TypeError(f"{name} must be a float32 tensor of shape ({n},), got "
                            f"{f'{t.dtype} {tuple(t.shape)}' if torch.is_tensor(t) else type(t).__name__}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if len({a.device, b.device, a_scale.device, b_scale.device}) != 1:
        raise ValueError("a, b, a_scale, b_scale must be on one device")


# --- the PyTorch reference (the CPU path) ----------------------------------------------------------------

def int8_matmul_torch(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
                      out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The PyTorch path: the exact integer sum times the two scales.

    The sum is formed in float32 over chunks of 1024 columns (|partial| ≤ 128²·1024 = 2²⁴, exactly
    representable in float32) and the chunks are added in float64, so it equals the int32 sum.
    """
    _check(a, b, a_scale, b_scale, out_dtype)
    acc = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for k in range(0, a.shape[1], 1024):
        acc += (a[:, k:k + 1024].float() @ b[:, k:k + 1024].float().T).double()
    return (acc.float() * a_scale[:, None] * b_scale[None, :]).to(out_dtype)


# --- the Triton kernel (v2: grouped program order; a tuning set per M range) -----------------------------

# M is not specialised (no separate compilation for M = 1 or M divisible by 16): decode and prefill
# shapes share one compilation per block size, on the GPU and in the static check.
@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """The output tile (pid_m, pid_n) of program ``pid`` in grouped order: GROUP_M rows of tiles walked column
    by column (the last group may be shorter); also the dense baseline's (`lab.kernels.dense`)."""
    tiles_m = (M + BLOCK_M - 1) // BLOCK_M
    tiles_n = (N + BLOCK_N - 1) // BLOCK_N
    first_m = pid // (GROUP_M * tiles_n) * GROUP_M
    rows = min(tiles_m - first_m, GROUP_M)
    return first_m + (pid % (GROUP_M * tiles_n)) % rows, (pid % (GROUP_M * tiles_n)) // rows


@triton.jit(do_not_specialize=["M"])
def _int8_matmul_kernel(a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, y_ptr, M, N, K,
                        stride_am, stride_ak, stride_bn, stride_bk, stride_ym, stride_yn,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=m_ok[:, None] & k_ok[None, :], other=0)
        b = tl.load(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,   # B_qᵀ tile (K, N)
                    mask=k_ok[:, None] & n_ok[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    a_scale = tl.load(a_scale_ptr + offs_m, mask=m_ok, other=0.0)
    b_scale = tl.load(b_scale_ptr + offs_n, mask=n_ok, other=0.0)
    y = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             y.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


Block = tuple[int, int, int, int, int, int]   # (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)

# int8 tl.dot needs BLOCK_K ≥ 32 on a GPU; the largest tiles keep ≤ 147 KB of shared memory over 3 stages
_CANDIDATES: dict[str, tuple[Block, ...]] = {
    "decode": ((16, 64, 128, 1, 4, 3),),
    "medium": ((64, 128, 128, 8, 4, 3),),
    "large": ((128, 256, 128, 8, 8, 3), (128, 256, 128, 64, 8, 3),   # grouped; v1's column order (M ≤ 8192)
              (128, 128, 128, 8, 4, 4), (256, 128, 128, 8, 8, 3), (128, 256, 64, 8, 8, 4)),
}


def candidates(M: int) -> tuple[Block, ...]:
    """The small tuning set for M rows: decode (M ≤ 16), medium (M ≤ 128) or large (prefill, batched
    GEMM); the first is the default."""
    return _CANDIDATES["decode" if M <= 16 else "medium" if M <= 128 else "large"]


def block_sizes(M: int) -> Block:
    """The default block: the first of `candidates` (v1's hand-picked tile, in grouped order above decode)."""
    return candidates(M)[0]


_TUNED: dict[tuple, Block] = {}


def tuned_block(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
                out_dtype: torch.dtype) -> Block:
    """The fastest of `candidates` for this shape: timed once on a GPU (cached), `block_sizes` elsewhere
    and under CUDA-graph capture (where nothing can be timed) for a shape not tuned before."""
    (M, K), N = a.shape, b.shape[0]
    options = candidates(M)          # options[0] is `block_sizes(M)`
    if a.device.type != "cuda" or len(options) == 1:
        return options[0]
    key = (torch.cuda.get_device_name(a.device), triton.next_power_of_2(M), N, K, out_dtype)
    if key in _TUNED or torch.cuda.is_current_stream_capturing():
        return _TUNED.get(key, options[0])
    from lab.core.timing import time_ms

    ms = [time_ms(lambda c=c: int8_matmul_triton(a, b, a_scale, b_scale, out_dtype, block=c), a.device,
                  repeats=2) for c in options]
    _TUNED[key] = options[ms.index(min(ms))]
    return _TUNED[key]


def int8_matmul_triton(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
                       out_dtype: torch.dtype = torch.bfloat16, block: Block | None = None) -> torch.Tensor:
    """The Triton kernel; ``block`` = (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages), default
    `tuned_block`."""
    _check(a, b, a_scale, b_scale, out_dtype)
    a_scale, b_scale = a_scale.contiguous(), b_scale.contiguous()  # the kernel reads them with stride 1
    block_m, block_n, block_k, group_m, num_warps, num_stages = (
        tuned_block(a, b, a_scale, b_scale, out_dtype) if block is None else check_block(
            "block", block, ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages"),
            ("GROUP_M", "num_stages")))
    M, K = a.shape
    N = b.shape[0]
    y = torch.empty(M, N, device=a.device, dtype=out_dtype)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    _int8_matmul_kernel[grid](a, b, a_scale, b_scale, y, M, N, K, a.stride(0), a.stride(1),
                              b.stride(0), b.stride(1), y.stride(0), y.stride(1),
                              BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
                              num_warps=num_warps, num_stages=num_stages)
    return y


# --- bytes and dispatch ----------------------------------------------------------------------------------

def call_bytes(M: int, N: int, K: int, element_bytes: int) -> int:
    """The DRAM bytes of one call (module docstring); ``element_bytes`` = e, the size of y's elements."""
    for name, value in dict(M=M, N=N, K=K, element_bytes=element_bytes).items():
        check_int(name, value)
    return M * K + N * K + 4 * (M + N) + element_bytes * M * N


def int8_matmul(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
                out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """y (M, N) = (a bᵀ) ⊙ (a_scale b_scaleᵀ); Triton on CUDA or under the interpreter, else PyTorch."""
    check_tensor("a", a)  # before reading its device: a list gets a TypeError that names it
    if runs_triton(a.device):
        return int8_matmul_triton(a, b, a_scale, b_scale, out_dtype)
    return int8_matmul_torch(a, b, a_scale, b_scale, out_dtype)
