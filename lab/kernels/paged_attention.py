"""Decode attention over a paged KV cache: o = softmax(q Kᵀ / √D) V, reading K and V block by block.

Shapes: q (B, H, D) — one new token per sequence; pools k, v (num_blocks, block_size, H_kv, D);
``tables`` (B, max_blocks) int32 block tables (entries past a sequence's length are ignored);
``lengths`` (B,) int32 ≥ 1, the number of cached positions of each sequence (the new token's
included); o (B, H, D) in q's dtype. Query head h reads kv head h // G, G = H / H_kv.

The kernel: program (b, j) owns kv head j of sequence b and its G query heads. It walks the
sequence's blocks in order; for block i it loads the physical block tables[b, i] of k and v
(block_size × D each), computes the G × block_size scores, masks slots ≥ length, and folds them
into a running softmax (FlashAttention's online rescaling: running max m, normaliser ℓ, output
accumulator a; a ← a·e^{m−m'} + e^{s−m'} V, ℓ ← ℓ·e^{m−m'} + Σ e^{s−m'}), so no score matrix and
no gathered copy of the cache ever reaches memory.

Bytes moved (memory bound: ≈ 2 FLOPs per byte of cache read):
  K and V of sequence b:  2 · H_kv · D · b_e · ⌈len_b / block_size⌉ · block_size
  q and o:                2 · H · D · b_e per sequence
The B · H_kv programs each stream one sequence's head; with few sequences and long contexts that
is too little parallelism to fill a GPU, and splitting each sequence over several programs
(flash-decoding) is the next step.

`paged_attention_decode` dispatches: CUDA tensors → the Triton kernel; CPU tensors → the PyTorch
path (gather the blocks, masked softmax) unless ``TRITON_INTERPRET=1`` (the kernel under Triton's
interpreter; import or reload this module inside `lab.core.runtime.triton_interpret`).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from lab.core.checks import check_tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# Reductions through tl.reduce with combine functions of this module: tl.sum / tl.max are @triton.jit
# functions of Triton's standard library, created when triton is imported, so they do not switch to
# the interpreter when the tests set TRITON_INTERPRET=1 and reload this module; these do.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


# The block table's row stride (its width) is not specialised: a table that grows one block at a
# time would otherwise compile again at width 1 and at each multiple of 16.
@triton.jit(do_not_specialize=["stride_tb"])
def _paged_attention_decode_kernel(q_ptr, k_ptr, v_ptr, table_ptr, len_ptr, o_ptr,
                                   stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_tb,
                                   stride_ob, stride_oh, scale,
                                   G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
                                   BLOCK_SIZE: tl.constexpr):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    offs_s = tl.arange(0, BLOCK_SIZE)
    g_ok = offs_g < G
    heads = kv_head * G + offs_g                                       # the query heads of this kv head
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_ok[:, None], other=0.0).to(tl.float32)          # (G_PAD, D)
    length = tl.load(len_ptr + b)
    m = tl.full((G_PAD,), float("-inf"), tl.float32)                   # running max of the scores
    norm = tl.full((G_PAD,), 0.0, tl.float32)                         # running Σ exp(s − m)
    acc = tl.full((G_PAD, D), 0.0, tl.float32)                         # running Σ exp(s − m) v
    for i in range(0, (length + BLOCK_SIZE - 1) // BLOCK_SIZE):
        block = tl.load(table_ptr + b * stride_tb + i).to(tl.int64)
        kv_offs = block * stride_kb + offs_s[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :]
        k = tl.load(k_ptr + kv_offs).to(tl.float32)                   # (BLOCK_SIZE, D)
        v = tl.load(v_ptr + kv_offs).to(tl.float32)
        s = tl.reduce(q[:, None, :] * k[None, :, :], 2, _add) * scale     # (G_PAD, BLOCK_SIZE)
        s = tl.where((i * BLOCK_SIZE + offs_s)[None, :] < length, s, float("-inf"))
        m_new = tl.maximum(m, tl.reduce(s, 1, _max))
        rescale = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        norm = norm * rescale + tl.reduce(p, 1, _add)
        acc = acc * rescale[:, None] + tl.reduce(p[:, :, None] * v[None, :, :], 1, _add)
        m = m_new
    out = acc / norm[:, None]
    tl.store(o_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=g_ok[:, None])


def _check(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
           lengths: torch.Tensor, check_lengths: bool = True) -> None:
    if not torch.is_tensor(q) or q.dtype not in DTYPES or q.dim() != 3:
        raise TypeError(f"q must be a (B, H, D) tensor of dtype in {DTYPES}, got "
                        f"{f'{q.dtype} {tuple(q.shape)}' if torch.is_tensor(q) else type(q).__name__}")
    B, H, D = q.shape
    if k_pool.dim() != 4 or k_pool.shape != v_pool.shape or k_pool.shape[3] != D or k_pool.dtype != v_pool.dtype:
        raise ValueError(f"k_pool and v_pool must both have shape (num_blocks, block_size, H_kv, D={D}), "
                         f"got {tuple(k_pool.shape)} and {tuple(v_pool.shape)}")
    if H % k_pool.shape[2]:
        raise ValueError(f"H={H} query heads must be a multiple of H_kv={k_pool.shape[2]}")
    if tables.dtype != torch.int32 or tables.dim() != 2 or tables.shape[0] != B:
        raise TypeError(f"tables must be int32 (B={B}, max_blocks), got {tables.dtype} {tuple(tables.shape)}")
    if lengths.dtype != torch.int32 or tuple(lengths.shape) != (B,):
        raise TypeError(f"lengths must be int32 of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}")
    if len({q.device, k_pool.device, v_pool.device, tables.device, lengths.device}) != 1:
        raise ValueError("q, k_pool, v_pool, tables, lengths must be on one device")
    if check_lengths and B:
        _check_ranges(tables, lengths, k_pool.shape[0], k_pool.shape[1])


def _check_ranges(tables: torch.Tensor, lengths: torch.Tensor, num_blocks: int, block_size: int) -> None:
    """lengths in [1, max_blocks·block_size], and every table entry a sequence uses (the first
    ⌈len_b / block_size⌉ of row b) a block of the pool: an entry −1 would silently read the last block."""
    if lengths.min() < 1 or lengths.max() > tables.shape[1] * block_size:
        raise ValueError(f"lengths must lie in [1, max_blocks · block_size = {tables.shape[1] * block_size}], "
                         f"got values in [{lengths.min().item()}, {lengths.max().item()}]")
    used = torch.arange(tables.shape[1], device=tables.device) < (lengths[:, None] + block_size - 1) // block_size
    bad = used & ((tables < 0) | (tables >= num_blocks))
    if bad.any():
        b, i = bad.nonzero()[0].tolist()
        raise ValueError(f"tables[{b}, {i}]={tables[b, i].item()} is not a block of the pool: the entries a "
                         f"sequence uses must lie in [0, num_blocks={num_blocks})")


def paged_attention_decode_torch(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                 tables: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The PyTorch path: gather every sequence's blocks, masked softmax in fp32, output in q's dtype."""
    _check(q, k_pool, v_pool, tables, lengths)
    B, H, D = q.shape
    H_kv = k_pool.shape[2]
    blocks = tables.long().clamp(0, k_pool.shape[0] - 1)             # entries past a length are masked below
    k = k_pool[blocks].flatten(1, 2).float()                         # (B, S, H_kv, D)
    v = v_pool[blocks].flatten(1, 2).float()
    k = k.repeat_interleave(H // H_kv, dim=2)                        # (B, S, H, D)
    v = v.repeat_interleave(H // H_kv, dim=2)
    scores = torch.einsum("bhd,bshd->bhs", q.float(), k) / math.sqrt(D)
    valid = torch.arange(k.shape[1], device=q.device) < lengths[:, None].long()
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.einsum("bhs,bshd->bhd", torch.softmax(scores, dim=-1), v).to(q.dtype)


def paged_attention_decode_triton(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                                  lengths: torch.Tensor, check_lengths: bool = True) -> torch.Tensor:
    """The Triton kernel (one program per sequence and kv head).

    ``check_lengths=False`` skips the range checks of ``lengths`` and ``tables`` (they read both back
    from the device: a synchronisation per call) for callers that built them from their own allocator.
    """
    _check(q, k_pool, v_pool, tables, lengths, check_lengths)
    check_kernel_layout(q, k_pool, v_pool)
    B, H, D = q.shape
    block_size, H_kv = k_pool.shape[1], k_pool.shape[2]
    G = H // H_kv
    out = torch.empty_like(q)
    _paged_attention_decode_kernel[(B, H_kv)](
        q, k_pool, v_pool, tables, lengths, out, q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1),
        k_pool.stride(2), tables.stride(0), out.stride(0), out.stride(1), 1.0 / math.sqrt(D),
        G=G, G_PAD=triton.next_power_of_2(G), D=D, BLOCK_SIZE=block_size, num_warps=num_warps(q.dtype, G, D))
    return out


def check_kernel_layout(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, min_size: int = 2,
                        kernel: str = "the Triton kernel") -> None:
    """What a Triton kernel needs beyond `_check`: a power-of-two head dimension and block size of at least
    ``min_size``, pools that share strides, and a contiguous last dimension of q and the pools."""
    for name, n in (("head dimension D", q.shape[2]), ("block_size", k_pool.shape[1])):
        if n & (n - 1) or n < min_size:
            raise ValueError(f"{kernel} needs a power-of-two {name} >= {min_size}, got {n}")
    if k_pool.stride() != v_pool.stride() or k_pool.stride(3) != 1 or q.stride(2) != 1:
        raise ValueError("k_pool and v_pool must share strides, and the last dimension of q and the pools "
                         "must be contiguous")


def num_warps(dtype: torch.dtype, G: int, D: int) -> int:
    """Warps per program: 8 for fp32 with G_PAD·D ≥ 512 (at 4 warps that tile spills registers on sm_90,
    as the static check `lab.kernels.compile` found), else 4 (Triton's default)."""
    return 8 if dtype == torch.float32 and triton.next_power_of_2(G) * D >= 512 else 4


def paged_attention_decode(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                           lengths: torch.Tensor, check_lengths: bool = True) -> torch.Tensor:
    """o (B, H, D); Triton on CUDA or under the interpreter, else PyTorch."""
    check_tensor("q", q)  # before reading its device: a list gets a TypeError that names it
    if q.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return paged_attention_decode_triton(q, k_pool, v_pool, tables, lengths, check_lengths)
    return paged_attention_decode_torch(q, k_pool, v_pool, tables, lengths)
