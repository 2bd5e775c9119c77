"""The paged KV cache: fixed-size blocks of token slots handed out on demand (vLLM's PagedAttention).

A static cache reserves S_max slots for every sequence, so a server holding requests of mixed
lengths wastes most of its cache memory on slots that are never written, and the wasted memory is
what limits the batch size. A paged cache splits the memory into ``num_blocks`` blocks of
``block_size`` slots. A sequence owns a *block table*, the list of its blocks; its token at
position t lives in slot

    slot(t) = table[t // block_size] · block_size + t mod block_size

of the pool, and a new block is taken only when position t crosses a block boundary. At most
block_size − 1 slots per sequence are wasted, and finished sequences return their blocks at once.

`BlockAllocator` is the bookkeeping (pure Python, tested with random admissions and retirements:
no block is ever owned twice, every block comes back). `PagedKVCache` adds the pools,
k and v (num_blocks, block_size, H_kv, D) per layer, and the ``attend`` of `forward_cached` for a
batch of sequences: new keys and values are written at their slots; a single-token decode step on
a GPU (or under ``TRITON_INTERPRET=1``) reads the blocks in place with the kernel `paged_decode_kernel`
picks from `lab.kernels.paged_attention` (v2, the split sequence, when the head dimension and the block
size are at least 16; else v1), every other call gathers each sequence's blocks into a padded
(B, H_kv, S, D) tensor and uses the masked attention of `lab.infer.kv_cache`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from lab.core.checks import check_float_dtype, check_int
from lab.core.runtime import runs_triton
from lab.infer.kv_cache import Attend, causal_mask, check_positions, unchecked_attention
from lab.kernels.paged_attention import paged_attention_decode, paged_attention_decode_v2
from lab.models.gpt import GPT, check_gpt

BLOCK_SIZE = 16          # positions per block, the default of `PagedKVCache` and `lab.infer.serve`


def paged_decode_kernel(head_dim: int, block_size: int) -> Callable[..., torch.Tensor]:
    """The kernel a decode step of `PagedKVCache` launches: v2 (flash-decoding, tl.dot) when ``head_dim`` and
    ``block_size`` are both at least 16, else v1."""
    check_int("head_dim", head_dim)
    check_int("block_size", block_size)
    return paged_attention_decode_v2 if min(head_dim, block_size) >= 16 else paged_attention_decode


class OutOfBlocksError(RuntimeError):
    """Raised when a sequence needs a block and none is free (the scheduler preempts before this)."""


class BlockAllocator:
    """Block tables of sequences over ``num_blocks`` blocks of ``block_size`` token slots."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        check_int("num_blocks", num_blocks)
        check_int("block_size", block_size)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free = list(range(num_blocks - 1, -1, -1))     # a stack: block 0 is handed out first
        self.tables: dict[Hashable, list[int]] = {}
        self.lengths: dict[Hashable, int] = {}

    def blocks_for(self, n_tokens: int) -> int:
        """⌈n_tokens / block_size⌉."""
        return -(-check_int("n_tokens", n_tokens, 0) // self.block_size)

    @property
    def n_free(self) -> int:
        """Blocks a new allocation may take (a subclass may count blocks it can evict)."""
        return len(self.free)

    def can_allocate(self, n_tokens: int) -> bool:
        return self.blocks_for(n_tokens) <= self.n_free

    def _take(self) -> int:
        """One block for a sequence: the top of the free stack."""
        return self.free.pop()

    def _owned(self, seq_id: Hashable) -> list[int]:
        """The block table of ``seq_id`` (TypeError if it is unhashable, ValueError if it holds no blocks)."""
        if not isinstance(seq_id, Hashable):
            raise TypeError(f"seq_id must be hashable (an int or a str), got {type(seq_id).__name__}")
        if seq_id not in self.tables:
            raise ValueError(f"seq_id={seq_id!r} holds no blocks (never allocated, or released already)")
        return self.tables[seq_id]

    def allocate(self, seq_id: Hashable, n_tokens: int) -> list[int]:
        """Blocks for a new sequence of ``n_tokens`` ≥ 1 tokens; returns its block table."""
        if not isinstance(seq_id, Hashable):
            raise TypeError(f"seq_id must be hashable (an int or a str), got {type(seq_id).__name__}")
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id!r} already holds blocks")
        check_int("n_tokens", n_tokens)
        if not self.can_allocate(n_tokens):
            raise OutOfBlocksError(f"{n_tokens} tokens need {self.blocks_for(n_tokens)} blocks, "
                                   f"{self.n_free} of {self.num_blocks} are free")
        self.tables[seq_id] = [self._take() for _ in range(self.blocks_for(n_tokens))]
        self.lengths[seq_id] = n_tokens
        return self.tables[seq_id]

    def needs_block(self, seq_id: Hashable) -> bool:
        """Whether appending one token to the sequence takes a new block."""
        return len(self._owned(seq_id)) * self.block_size == self.lengths[seq_id]

    def append(self, seq_id: Hashable) -> None:
        """Grow the sequence by one token, taking a new block when it crosses a block boundary."""
        table = self._owned(seq_id)
        if self.needs_block(seq_id):
            if not self.n_free:
                raise OutOfBlocksError(f"sequence {seq_id!r} needs a new block and none is free")
            table.append(self._take())
        self.lengths[seq_id] += 1

    def release(self, seq_id: Hashable) -> None:
        """Return every block of the sequence to the free list (ValueError if it holds none, e.g. released twice)."""
        self.free.extend(reversed(self._owned(seq_id)))
        del self.tables[seq_id], self.lengths[seq_id]

    def slot(self, seq_id: Hashable, position: int) -> int:
        """The pool slot of the sequence's token at ``position`` (IndexError outside the sequence)."""
        self._owned(seq_id)
        check_int("position", position, minimum=None)
        if not 0 <= position < self.lengths[seq_id]:
            raise IndexError(f"position {position} is outside sequence {seq_id!r} of length {self.lengths[seq_id]}")
        block, offset = divmod(position, self.block_size)
        return self.tables[seq_id][block] * self.block_size + offset


class PagedKVCache:
    """Pools k[l], v[l] of shape (num_blocks, block_size, H_kv, D) per layer, shared by all sequences; their
    bookkeeping is an ``allocator`` (`BlockAllocator`, or `lab.infer.prefix_cache.PrefixCachingAllocator`)."""

    def __init__(self, model: GPT, num_blocks: int, block_size: int = BLOCK_SIZE, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, allocator: type[BlockAllocator] = BlockAllocator) -> None:
        check_gpt("model", model)
        if not (isinstance(allocator, type) and issubclass(allocator, BlockAllocator)):
            raise TypeError(f"allocator must be BlockAllocator or a subclass of it, got {allocator!r:.80}")
        self.allocator = allocator(num_blocks, block_size)
        param = next(model.parameters())
        dtype = check_float_dtype("dtype", dtype) if dtype is not None else (
            param.dtype if param.is_floating_point() else torch.float32)
        D = model.config.head_dim
        self.k = [torch.zeros(num_blocks, block_size, block.attn.k_proj.out_features // D, D, dtype=dtype,
                              device=device or param.device) for block in model.layers]
        self.v = [torch.zeros_like(k) for k in self.k]

    @property
    def block_size(self) -> int:
        return self.allocator.block_size

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    def copy_block(self, src: int, dst: int) -> None:
        """Copy block ``src``'s keys and values into block ``dst``, in every layer (copy-on-write)."""
        for name, block in (("src", src), ("dst", dst)):
            check_int(name, block, 0, self.allocator.num_blocks - 1)
        for pool in self.k + self.v:
            pool[dst] = pool[src]

    def attention(self, seq_ids: Sequence[Hashable], positions: torch.Tensor) -> Attend:
        """The ``attend`` for rows ``seq_ids`` whose new tokens sit at ``positions`` (B, T).

        Every position must already be allocated (`BlockAllocator.allocate` / ``append``).
        """
        alloc, device = self.allocator, self.k[0].device
        if isinstance(seq_ids, str) or not isinstance(seq_ids, Sequence):
            raise TypeError(f"seq_ids must be a list of sequence ids, one per row, got {seq_ids!r}")
        check_positions(positions)
        B, T = positions.shape
        if len(seq_ids) != B:
            raise ValueError(f"{len(seq_ids)} seq_ids for {B} rows of positions")
        pos = positions.tolist()
        slots = torch.tensor([alloc.slot(s, p) for s, row in zip(seq_ids, pos) for p in row], device=device)  # (B·T,)
        lengths = torch.tensor([row[-1] + 1 for row in pos], dtype=torch.int32, device=device)
        width = max(len(alloc.tables[s]) for s in seq_ids)
        tables = torch.tensor([alloc.tables[s] + [0] * (width - len(alloc.tables[s])) for s in seq_ids],
                              dtype=torch.int32, device=device)
        gather_index = tables.long()
        decode_kernel = (paged_decode_kernel(self.k[0].shape[3], alloc.block_size) if T == 1 and runs_triton(device)
                         else None)
        mask = None if decode_kernel else causal_mask(positions, width * alloc.block_size)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k_pool, v_pool = self.k[layer], self.v[layer]
            H_kv, D = k_pool.shape[2], k_pool.shape[3]
            k_pool.view(-1, H_kv, D)[slots] = k.transpose(1, 2).reshape(B * T, H_kv, D).to(k_pool.dtype)
            v_pool.view(-1, H_kv, D)[slots] = v.transpose(1, 2).reshape(B * T, H_kv, D).to(v_pool.dtype)
            if decode_kernel:
                # lengths come from this allocator's own tables: no range check (it would synchronise)
                return decode_kernel(q[:, :, 0], k_pool, v_pool, tables, lengths, check_lengths=False)[:, :, None]
            # gather: (B, blocks, block_size, H_kv, D) → (B, H_kv, S, D), S = width · block_size
            k_seq = k_pool[gather_index].flatten(1, 2).transpose(1, 2).to(q.dtype)
            v_seq = v_pool[gather_index].flatten(1, 2).transpose(1, 2).to(q.dtype)
            return unchecked_attention(q, k_seq, v_seq, mask)

        return attend
