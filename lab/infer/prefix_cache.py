"""Prefix caching: blocks of the paged KV cache shared by every request whose prompt starts the same way.

Requests of a server often share a long prefix (a system prompt, a few-shot preamble). Its keys and
values are the same for all of them: a token's k and v depend only on the tokens before it. vLLM's
automatic prefix caching ("Automatic Prefix Caching", vLLM design docs; RFC vllm-project/vllm#2614)
names a *full* block j of a sequence by a hash chained over its prefix,

    h_j = hash((h_{j−1}, tokens of block j)),    h_{−1} = None,

so two blocks have the same name only if they hold the same tokens after the same prefix (the table
is keyed by the pair (h_{j−1}, tokens), so the tokens themselves are compared, and only a 64-bit
collision of two whole prefixes could confuse two blocks). A block stays in the table after the
sequences that wrote it are gone:

* every block is either free (never named), referenced by r ≥ 1 block tables (``refs``), or cached
  and unreferenced (``evictable``): its content is kept until a new allocation needs a block and no
  free one is left, and then the least recently released one is evicted (LRU order; a table is
  released last block first, so the tail of a prefix goes before its head);
* a new sequence takes the longest run of named blocks that matches its tokens (``match``), bumps
  their reference counts, and needs fresh blocks for the rest only. Only prompt tokens are run past
  the hits. When every prompt token hits, the last one is still run, to get the logits of the first
  new token; it writes into a block that other tables may hold, so that block is copied first
  (copy-on-write: a fresh block, the pools' contents of every layer copied, `PagedKVCache.copy_block`).
  vLLM v1 avoids the write instead, by capping a hit at T₀ − 1 tokens (the last block is recomputed).

Only blocks the caller `register`s are named: the scheduler names the full blocks of a prompt once
their keys and values are written, never a block of generated tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from lab.core.checks import check_int
from lab.infer.paged import BlockAllocator, OutOfBlocksError

Key = tuple[int | None, tuple[int, ...]]          # (h_{j−1}, tokens of block j)


class PrefixCachingAllocator(BlockAllocator):
    """`BlockAllocator` whose full prompt blocks, once registered, are shared and cached (reference counts, LRU)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self.refs: dict[int, int] = {}                        # block → number of tables holding it (≥ 1)
        self.cached: dict[Key, int] = {}                      # (h_{j−1}, tokens) → block
        self.key_of: dict[int, Key] = {}                      # block → its key, for every cached block
        self.evictable: OrderedDict[int, None] = OrderedDict()   # cached with refs 0, least recent first
        self.chains: dict[Hashable, list[int]] = {}           # seq_id → h_0, h_1, … of its named blocks

    @property
    def n_free(self) -> int:
        return len(self.free) + len(self.evictable)

    def _take(self) -> int:
        """A free block, else the least recently released cached one (evicted: its name is forgotten)."""
        if self.free:
            block = self.free.pop()
        else:
            block, _ = self.evictable.popitem(last=False)
            del self.cached[self.key_of.pop(block)]
        self.refs[block] = 1
        return block

    def _keys(self, tokens: Sequence[int], n_blocks: int, parent: int | None = None) -> list[Key]:
        """The keys (h_{j−1}, tokens of block j) of the first ``n_blocks`` full blocks of ``tokens``, h₋₁ = parent."""
        keys, b = [], self.block_size
        for j in range(n_blocks):
            keys.append((parent, tuple(tokens[j * b:(j + 1) * b])))
            parent = hash(keys[-1])
        return keys

    def match(self, tokens: Sequence[int]) -> list[int]:
        """The cached blocks holding the longest run of full blocks that starts ``tokens`` (a lookup only)."""
        hits = []
        for key in self._keys(tokens, len(tokens) // self.block_size):
            if key not in self.cached:
                break
            hits.append(self.cached[key])
        return hits

    def _needs(self, tokens: Sequence[int], hits: list[int]) -> int:
        """Blocks an allocation of ``tokens`` takes from the free and evictable ones: the misses, a copy of the
        last hit if the whole prompt hits and another table holds that block, and the hits now evictable."""
        n = len(tokens)
        copy = len(hits) * self.block_size == n and self.refs.get(hits[-1], 0) >= 1
        return self.blocks_for(n) - len(hits) + copy + sum(b in self.evictable for b in hits)

    def can_allocate_prompt(self, tokens: Sequence[int]) -> bool:
        """Whether `allocate_prompt` of ``tokens`` finds its blocks."""
        return self._needs(tokens, self.match(tokens)) <= self.n_free

    def allocate_prompt(self, seq_id: Hashable, tokens: Sequence[int]) -> tuple[int, list[tuple[int, int]]]:
        """Blocks for a new sequence of ``tokens``, shared where they hit. Returns (c, copies): c, the tokens whose
        keys and values are already cached (at most T₀ − 1), and the (src, dst) blocks to copy before running
        tokens c … T₀ − 1 (copy-on-write of a shared last block)."""
        if not isinstance(seq_id, Hashable):
            raise TypeError(f"seq_id must be hashable (an int or a str), got {type(seq_id).__name__}")
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id!r} already holds blocks")
        n = check_int("len(tokens)", len(tokens))
        hits = self.match(tokens)
        if self._needs(tokens, hits) > self.n_free:
            raise OutOfBlocksError(f"{n} tokens need {self._needs(tokens, hits)} new blocks, {self.n_free} of "
                                   f"{self.num_blocks} are free or evictable")
        for block in hits:
            self.evictable.pop(block, None)
            self.refs[block] = self.refs.get(block, 0) + 1
        self.tables[seq_id] = hits + [self._take() for _ in range(self.blocks_for(n) - len(hits))]
        self.lengths[seq_id] = n
        self.chains[seq_id] = [hash(key) for key in self._keys(tokens, len(hits))]
        c = min(len(hits) * self.block_size, n - 1)
        return c, self.copy_on_write(seq_id, c // self.block_size) if c < len(hits) * self.block_size else []

    def copy_on_write(self, seq_id: Hashable, j: int) -> list[tuple[int, int]]:
        """Make block j of the sequence its own before it is written: [(src, dst)] if another table holds it
        (dst, a fresh block, replaces it in this table; the caller copies the pools), else []."""
        table = self._owned(seq_id)
        check_int("j", j, 0, len(table) - 1)
        src = table[j]
        if self.refs[src] == 1:
            return []
        if not self.n_free:
            raise OutOfBlocksError(f"sequence {seq_id!r} must copy block {src} and no block is free")
        self.refs[src] -= 1
        table[j] = self._take()
        return [(src, table[j])]

    def register(self, seq_id: Hashable, tokens: Sequence[int], n_written: int) -> None:
        """Name the full blocks within the first ``n_written`` of the sequence's ``tokens`` (keys and values
        written); a block whose name another block already has stays unnamed (a duplicate)."""
        table, chain = self._owned(seq_id), self.chains.setdefault(seq_id, [])
        check_int("n_written", n_written, 0, self.lengths[seq_id])
        keys = self._keys(tokens[len(chain) * self.block_size:], n_written // self.block_size - len(chain),
                          chain[-1] if chain else None)
        for j, key in enumerate(keys, start=len(chain)):
            if key not in self.cached:
                self.cached[key], self.key_of[table[j]] = table[j], key
            chain.append(hash(key))

    def release(self, seq_id: Hashable) -> None:
        """Drop the sequence's references, last block first; a block no table holds becomes evictable if it is
        named, else free."""
        for block in reversed(self._owned(seq_id)):
            self.refs[block] -= 1
            if not self.refs[block]:
                del self.refs[block]
                if block in self.key_of:
                    self.evictable[block] = None
                else:
                    self.free.append(block)
        del self.tables[seq_id], self.lengths[seq_id]
        self.chains.pop(seq_id, None)
