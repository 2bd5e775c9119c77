"""Decode attention over a paged KV cache, version 2: split along the sequence (flash-decoding).

Same result as `lab.kernels.paged_attention` (v1, the readable kernel of chapter 6): o = softmax(q Kᵀ/√D) V
for one new token per sequence, K and V read block by block through the block tables. What changes:

* **Parallelism.** v1 runs one program per sequence and kv head: B·H_kv programs, 8 at B = 1 for a
  Llama-2-7B-shaped layer (32 query / 8 kv heads), on a GPU of 132 SMs. v2 splits each sequence's blocks
  into S contiguous ranges (`num_splits`: about 4 programs per SM, each range at least 4 blocks), so
  B·H_kv·S programs stream the cache: 256 at B = 1 over 2,048 cached tokens.
* **A second, small pass.** Program (b, j, s) folds its blocks into a running max m_s, normaliser ℓ_s and
  output a_s (FlashAttention's online rescaling, as in v1) and writes them (fp32) for its G query heads.
  `_combine_kernel` merges the S partials of each (b, h): m = max_s m_s, w_s = e^{m_s − m},
  o = Σ_s w_s a_s / Σ_s w_s ℓ_s. It reads and writes B·H·S·(D + 2)·4 bytes, 6 % of the cache bytes at
  B = 1 over 2,048 tokens (D = 128, S = 32).
* **Tensor cores.** v1 forms q Kᵀ and P V with broadcast products and tl.reduce: FMA instructions, about
  1,800 per thread per 16-token block at head dim 128 (sm_90 static check). v2 calls tl.dot for both
  (the G query heads of a kv head padded to 16 rows, P rounded to the cache's dtype as FlashAttention
  does): about 210. At B = 32 this turns the predicted time from issue-bound to memory-bound.
* **Asynchronous loads.** The block loop is software-pipelined (``num_stages`` = 3, cp.async): the table
  entry and the K / V block of the next iterations are in flight while the current block is reduced.
* The table's row stride and the split size are runtime values (not specialised), so a growing table
  compiles once.

Shapes: q (B, H, D); pools k, v (num_blocks, block_size, H_kv, D); tables (B, max_blocks) int32; lengths
(B,) int32 ≥ 1; o (B, H, D) in q's dtype. D and block_size powers of two, at least 16.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from lab.core.checks import check_tensor
# v1's combine functions (a test reloads v1, then this module, under the interpreter: see lab.kernels.paged_attention)
from lab.kernels.paged_attention import _add, _check, _max, check_kernel_layout

PROGRAMS_TARGET = 4 * 132          # programs that keep every SM of an H100 / H200 busy
MIN_BLOCKS_PER_SPLIT = 4


@triton.jit(do_not_specialize=["stride_tb", "blocks_per_split", "n_splits"])
def _paged_decode_split_kernel(q_ptr, k_ptr, v_ptr, table_ptr, len_ptr, m_ptr, l_ptr, acc_ptr,
                               stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_tb,
                               blocks_per_split, n_splits, scale,
                               G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                               INPUT_PRECISION: tl.constexpr):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    offs_s = tl.arange(0, BLOCK_SIZE)
    g_ok = offs_g < G
    heads = kv_head * G + offs_g
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_ok[:, None], other=0.0)                          # (G_PAD, D), G_PAD ≥ 16 for tl.dot
    length = tl.load(len_ptr + b)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, (length + BLOCK_SIZE - 1) // BLOCK_SIZE)
    m = tl.full((G_PAD,), float("-inf"), tl.float32)
    norm = tl.full((G_PAD,), 0.0, tl.float32)
    acc = tl.full((G_PAD, D), 0.0, tl.float32)
    for i in tl.range(first, last, num_stages=3):
        block = tl.load(table_ptr + b * stride_tb + i).to(tl.int64)
        kv_offs = block * stride_kb + offs_s[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :]
        k = tl.load(k_ptr + kv_offs)                                   # (BLOCK_SIZE, D)
        v = tl.load(v_ptr + kv_offs)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * scale   # (G_PAD, BLOCK_SIZE) fp32
        s = tl.where((i * BLOCK_SIZE + offs_s)[None, :] < length, s, float("-inf"))
        m_new = tl.maximum(m, tl.reduce(s, 1, _max))
        rescale = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        norm = norm * rescale + tl.reduce(p, 1, _add)
        acc = tl.dot(p.to(v.dtype), v, acc * rescale[:, None], input_precision=INPUT_PRECISION)
        m = m_new
    n_heads = tl.num_programs(1) * G
    slot = (b * n_heads + heads) * n_splits + split                    # (G_PAD,) partial of (b, h, split)
    tl.store(m_ptr + slot, m, mask=g_ok)
    tl.store(l_ptr + slot, norm, mask=g_ok)
    tl.store(acc_ptr + slot[:, None] * D + offs_d[None, :], acc, mask=g_ok[:, None])


@triton.jit(do_not_specialize=["n_splits"])
def _combine_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, stride_ob, stride_oh, n_splits, D: tl.constexpr):
    """o[b, h] = Σ_s e^{m_s − m} a_s / Σ_s e^{m_s − m} ℓ_s over the splits of (b, h), in one online pass.

    Split 0 always holds a block (lengths ≥ 1) and only trailing splits can be empty (m_s = −∞, ℓ_s = 0,
    a_s = 0), so the running maximum is finite from the first split on."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_d = tl.arange(0, D)
    one = tl.arange(0, 1)
    base = (b * tl.num_programs(1) + h) * n_splits
    m = tl.full((1,), float("-inf"), tl.float32)
    norm = tl.full((1,), 0.0, tl.float32)
    out = tl.full((D,), 0.0, tl.float32)
    for s in range(n_splits):
        m_s = tl.load(m_ptr + base + s + one)
        m_new = tl.maximum(m, m_s)
        alpha = tl.exp(m - m_new)
        beta = tl.exp(m_s - m_new)
        norm = norm * alpha + tl.load(l_ptr + base + s + one) * beta
        out = out * alpha + tl.load(acc_ptr + (base + s) * D + offs_d) * beta
        m = m_new
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_d, (out / norm).to(o_ptr.dtype.element_ty))


def num_splits(B: int, H_kv: int, max_blocks: int) -> int:
    """S: about `PROGRAMS_TARGET` programs in all, each split at least `MIN_BLOCKS_PER_SPLIT` blocks."""
    return max(1, min(math.ceil(PROGRAMS_TARGET / max(1, B * H_kv)), math.ceil(max_blocks / MIN_BLOCKS_PER_SPLIT)))


def paged_attention_decode_v2_triton(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                     tables: torch.Tensor, lengths: torch.Tensor, check_lengths: bool = True,
                                     splits: int | None = None) -> torch.Tensor:
    """The two Triton kernels; ``splits`` = S (default `num_splits`); ``check_lengths`` as in v1."""
    _check(q, k_pool, v_pool, tables, lengths, check_lengths)
    check_kernel_layout(q, k_pool, v_pool, 16, "the v2 kernel (tl.dot)")
    B, H, D = q.shape
    block_size, H_kv = k_pool.shape[1], k_pool.shape[2]
    max_blocks = tables.shape[1]
    S = num_splits(B, H_kv, max_blocks) if splits is None else splits
    if not isinstance(S, int) or not 1 <= S <= max(1, max_blocks):
        raise ValueError(f"splits={S!r} must be an int in [1, max_blocks={max_blocks}]")
    per_split = math.ceil(max_blocks / S)
    G = H // H_kv
    m = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    norm = torch.empty_like(m)
    acc = torch.empty(B, H, S, D, device=q.device, dtype=torch.float32)
    out = torch.empty_like(q)
    _paged_decode_split_kernel[(B, H_kv, S)](
        q, k_pool, v_pool, tables, lengths, m, norm, acc, q.stride(0), q.stride(1), k_pool.stride(0),
        k_pool.stride(1), k_pool.stride(2), tables.stride(0), per_split, S, 1.0 / math.sqrt(D),
        G=G, G_PAD=max(16, triton.next_power_of_2(G)), D=D, BLOCK_SIZE=block_size,
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=4)
    _combine_kernel[(B, H)](m, norm, acc, out, out.stride(0), out.stride(1), S, D=D, num_warps=1)
    return out


def paged_attention_decode_v2(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                              lengths: torch.Tensor, check_lengths: bool = True) -> torch.Tensor:
    """o (B, H, D); Triton on CUDA or under the interpreter, else v1's PyTorch path."""
    from lab.kernels.paged_attention import paged_attention_decode_torch

    check_tensor("q", q)
    if q.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return paged_attention_decode_v2_triton(q, k_pool, v_pool, tables, lengths, check_lengths)
    return paged_attention_decode_torch(q, k_pool, v_pool, tables, lengths)
