"""Decode attention over a paged KV cache: o = softmax(q Kᵀ / √D) V, reading K and V block by block.

Shapes: q (B, H, D) — one new token per sequence; pools k, v (num_blocks, block_size, H_kv, D);
``tables`` (B, max_blocks) int32 block tables (entries past a sequence's length are ignored);
``lengths`` (B,) int32 ≥ 1, the number of cached positions of each sequence (the new token's
included); o (B, H, D) in q's dtype. Query head h reads kv head h // G, G = H / H_kv. The PyTorch
reference (the CPU path) gathers every sequence's blocks and takes a masked softmax in fp32.

v1 (`paged_attention_decode`, the readable kernel of chapter 6): program (b, j) owns kv head j of
sequence b and its G query heads. It walks the sequence's blocks in order; for block i it loads the
physical block tables[b, i] of k and v (block_size × D each), computes the G × block_size scores, masks
slots ≥ length, and folds them into a running softmax (FlashAttention's online rescaling: running max m,
normaliser ℓ, output accumulator a; a ← a·e^{m−m'} + e^{s−m'} V, ℓ ← ℓ·e^{m−m'} + Σ e^{s−m'}), so no
score matrix and no gathered copy of the cache ever reaches memory. The B · H_kv programs each stream
one sequence's head; with few sequences and long contexts that is too little parallelism to fill a GPU.

v2 (`paged_attention_decode_v2`, flash-decoding: the sequence split; D and block_size at least 16) changes:

* **Parallelism.** v1 runs B·H_kv programs: a handful at B = 1 (a grouped-query layer of Llama-3-8B's or
  Mistral-7B's shape, 32 query and 8 kv heads, has 8; Llama-2-7B's has 32 kv heads) on a GPU of 132 SMs. v2 splits each sequence's blocks into S contiguous ranges (`num_splits`: about 4
  programs per SM, each range at least 4 blocks), so B·H_kv·S programs stream the cache.
* **A second, small pass.** Program (b, j, s) folds its blocks into a running max m_s, normaliser ℓ_s and
  output a_s (FlashAttention's online rescaling, as in v1) and writes them (fp32) for its G query heads.
  `_combine_kernel` merges the S partials of each (b, h): m = max_s m_s, w_s = e^{m_s − m},
  o = Σ_s w_s a_s / Σ_s w_s ℓ_s, loading `COMBINE_CHUNK` splits at once (a (16, D) tile: their loads are in
  flight together, where a loop over single splits waits for each in turn).
* **Tensor cores.** v1 forms q Kᵀ and P V with broadcast products and tl.reduce: FMA instructions. v2
  calls tl.dot for both (the G query heads of a kv head padded to 16 rows, P rounded to the cache's dtype
  as FlashAttention does). Chapter 6 counts the instructions of both with the sm_90 static model
  (`lab.kernels.aot.model`) and compares their issue-bound and memory-bound times.
* **Asynchronous loads.** The block loop is software-pipelined (``num_stages`` = 3, cp.async): the table
  entry and the K / V block of the next iterations are in flight while the current block is reduced.
* The table's row stride and the split size are runtime values (not specialised), so a growing table
  compiles once.

Bytes moved per call (memory bound: ≈ 2 FLOPs per byte of cache read) for B sequences of ``context``
cached tokens each, e the element size of q and the cache, n = ⌈context / block_size⌉ blocks each:

    2·B·H_kv·D·e·n·block_size  (K and V)  +  2·B·H·D·e  (q, o)  +  4·B·n  (the block tables)
    v2: + 8·B·H·S·(D + 2)  (the fp32 partials m, ℓ, a: written, then read by `_combine_kernel`)

`call_bytes` computes it.

`paged_attention_decode` and `paged_attention_decode_v2` dispatch: CUDA tensors → the Triton kernels;
CPU tensors → the PyTorch reference unless ``TRITON_INTERPRET=1`` (the kernels under Triton's
interpreter; import or reload this module inside `lab.core.runtime.triton_interpret`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lab.core.checks import check_choice, check_int, check_tensor
from lab.core.runtime import runs_triton

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
PROGRAMS_TARGET = 4 * 132          # programs that keep every SM of an H100 / H200 busy (v2)
MIN_BLOCKS_PER_SPLIT = 4
COMBINE_CHUNK = 16                 # splits the combine pass loads at once (v2)


# Reductions through tl.reduce with combine functions of this module: tl.sum / tl.max are @triton.jit
# functions of Triton's standard library, created when triton is imported, so they do not switch to
# the interpreter when the tests set TRITON_INTERPRET=1 and reload this module; these do.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


def _check(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
           lengths: torch.Tensor, check_lengths: bool = True) -> None:
    if not torch.is_tensor(q) or q.dtype not in DTYPES or q.dim() != 3:
        raise TypeError(f"q must be a (B, H, D) tensor of dtype in {DTYPES}, got "
                        f"{f'{q.dtype} {tuple(q.shape)}' if torch.is_tensor(q) else type(q).__name__}")
    B, H, D = q.shape
    for name, t in (("k_pool", k_pool), ("v_pool", v_pool), ("tables", tables), ("lengths", lengths)):
        check_tensor(name, t)
    check_choice("check_lengths", check_lengths, (True, False))
    if k_pool.dim() != 4 or k_pool.shape != v_pool.shape or k_pool.shape[3] != D or k_pool.dtype != v_pool.dtype:
        raise ValueError(f"k_pool and v_pool must both have shape (num_blocks, block_size, H_kv, D={D}), "
                         f"got {tuple(k_pool.shape)} and {tuple(v_pool.shape)}")
    check_tensor("k_pool", k_pool, dtypes=DTYPES)
    if not k_pool.shape[2] or H % k_pool.shape[2]:
        raise ValueError(f"k_pool has H_kv={k_pool.shape[2]} kv heads (dim 2); q's H={H} query heads must be a "
                         f"multiple of H_kv={k_pool.shape[2]} (at least 1)")
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


# --- the PyTorch reference (the CPU path) ----------------------------------------------------------------

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


# --- v1: one program per sequence and kv head, FMA products ----------------------------------------------

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


def num_warps(dtype: torch.dtype, G: int, D: int) -> int:
    """Warps per program: 8 for fp32 with G_PAD·D ≥ 512 (at 4 warps that tile spills registers on sm_90,
    as the sm_90 compile `lab.kernels.aot` found), else 4 (Triton's default)."""
    return 8 if dtype == torch.float32 and triton.next_power_of_2(G) * D >= 512 else 4


def paged_attention_decode_triton(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                                  lengths: torch.Tensor, check_lengths: bool = True) -> torch.Tensor:
    """The Triton kernel (one program per sequence and kv head).

    ``check_lengths=False`` skips the range checks of ``lengths`` and ``tables`` (they read both back
    from the device: a synchronisation per call) for callers that built them from their own allocator.
    """
    _check(q, k_pool, v_pool, tables, lengths, check_lengths)
    check_kernel_layout(q, k_pool, v_pool)
    tables, lengths = tables.contiguous(), lengths.contiguous()      # the kernel reads them with unit strides
    B, H, D = q.shape
    block_size, H_kv = k_pool.shape[1], k_pool.shape[2]
    G = H // H_kv
    out = torch.empty_like(q)
    _paged_attention_decode_kernel[(B, H_kv)](
        q, k_pool, v_pool, tables, lengths, out, q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1),
        k_pool.stride(2), tables.stride(0), out.stride(0), out.stride(1), 1.0 / math.sqrt(D),
        G=G, G_PAD=triton.next_power_of_2(G), D=D, BLOCK_SIZE=block_size, num_warps=num_warps(q.dtype, G, D))
    return out


# --- v2: the sequence split over programs, tl.dot, a combine pass ----------------------------------------

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
def _combine_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, stride_ob, stride_oh, n_splits, D: tl.constexpr,
                    CHUNK: tl.constexpr):
    """o[b, h] = Σ_s e^{m_s − m} a_s / Σ_s e^{m_s − m} ℓ_s over the splits of (b, h), CHUNK splits at a time
    (their loads in flight together), merged online.

    Split 0 always holds a block (lengths ≥ 1) and only trailing splits can be empty (m_s = −∞, ℓ_s = 0,
    a_s = 0; masked splits load the same), so the running maximum is finite from the first chunk on and an
    empty split's weight e^{−∞} is 0."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_d = tl.arange(0, D)
    base = (b * tl.num_programs(1) + h) * n_splits
    m = tl.full((1,), float("-inf"), tl.float32)
    norm = tl.full((1,), 0.0, tl.float32)
    out = tl.full((D,), 0.0, tl.float32)
    for first in range(0, n_splits, CHUNK):
        offs_s = first + tl.arange(0, CHUNK)
        ok = offs_s < n_splits
        m_c = tl.load(m_ptr + base + offs_s, mask=ok, other=float("-inf"))              # (CHUNK,)
        l_c = tl.load(l_ptr + base + offs_s, mask=ok, other=0.0)
        a_c = tl.load(acc_ptr + (base + offs_s)[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
        m_new = tl.maximum(m, tl.reduce(m_c, 0, _max))
        alpha = tl.exp(m - m_new)
        beta = tl.exp(m_c - m_new)                                                      # (CHUNK,)
        norm = norm * alpha + tl.reduce(l_c * beta, 0, _add)
        out = out * alpha + tl.reduce(a_c * beta[:, None], 0, _add)
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
    tables, lengths = tables.contiguous(), lengths.contiguous()      # the kernels read them with unit strides
    B, H, D = q.shape
    block_size, H_kv = k_pool.shape[1], k_pool.shape[2]
    max_blocks = tables.shape[1]
    S = num_splits(B, H_kv, max_blocks) if splits is None else check_int("splits", splits, None)
    if not 1 <= S <= max(1, max_blocks):
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
    _combine_kernel[(B, H)](m, norm, acc, out, out.stride(0), out.stride(1), S, D=D, CHUNK=COMBINE_CHUNK,
                            num_warps=4)
    return out


# --- bytes and dispatch ----------------------------------------------------------------------------------

def call_bytes(B: int, H: int, H_kv: int, D: int, block_size: int, context: int, element_bytes: int,
               version: str, splits: int = 1) -> int:
    """The DRAM bytes of one call of ``version`` ("v1" or "v2", with S = ``splits``) for B sequences of
    ``context`` cached tokens (module docstring); ``element_bytes`` = e, the size of q's and the cache's elements."""
    check_choice("version", version, ("v1", "v2"))
    for name, value in dict(B=B, H=H, H_kv=H_kv, D=D, block_size=block_size, context=context,
                            element_bytes=element_bytes, splits=splits).items():
        check_int(name, value)
    e, blocks = element_bytes, math.ceil(context / block_size)
    cache = 2 * B * H_kv * D * e * blocks * block_size
    partials = 2 * B * H * splits * (D + 2) * 4 if version == "v2" else 0   # m, ℓ, a per split: written, read
    return cache + 2 * B * H * D * e + 4 * B * blocks + partials


def paged_attention_decode(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                           lengths: torch.Tensor, check_lengths: bool = True) -> torch.Tensor:
    """o (B, H, D); Triton on CUDA or under the interpreter, else PyTorch."""
    check_tensor("q", q)  # before reading its device: a list gets a TypeError that names it
    check_choice("check_lengths", check_lengths, (True, False))
    if runs_triton(q.device):
        return paged_attention_decode_triton(q, k_pool, v_pool, tables, lengths, check_lengths)
    return paged_attention_decode_torch(q, k_pool, v_pool, tables, lengths)


def paged_attention_decode_v2(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                              lengths: torch.Tensor, check_lengths: bool = True) -> torch.Tensor:
    """o (B, H, D); Triton on CUDA or under the interpreter, else the PyTorch reference."""
    check_tensor("q", q)
    check_choice("check_lengths", check_lengths, (True, False))
    if runs_triton(q.device):
        return paged_attention_decode_v2_triton(q, k_pool, v_pool, tables, lengths, check_lengths)
    return paged_attention_decode_torch(q, k_pool, v_pool, tables, lengths)
