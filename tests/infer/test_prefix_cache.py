"""lab.infer.prefix_cache: the allocator of prefix caching, alone and in the paged cache.

References: the invariant that every block is free, cached and unreferenced, or referenced by exactly as many
block tables as hold it (hypothesis, random admissions, growth, registrations and retirements); an LRU order
written out by hand; the pools' contents before a copy-on-write.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.infer import OutOfBlocksError, PagedKVCache, PrefixCachingAllocator


def _check_invariants(alloc: PrefixCachingAllocator) -> None:
    held = [b for table in alloc.tables.values() for b in table]
    referenced = set(alloc.refs)
    assert referenced == set(held) and all(alloc.refs[b] == held.count(b) for b in referenced)
    parts = [set(alloc.free), set(alloc.evictable), referenced]
    assert sum(map(len, parts)) == alloc.num_blocks and set().union(*parts) == set(range(alloc.num_blocks))
    assert len(alloc.free) == len(set(alloc.free))
    assert set(alloc.evictable) <= set(alloc.key_of) and not set(alloc.free) & set(alloc.key_of)
    assert {alloc.cached[key]: key for key in alloc.cached} == alloc.key_of
    for seq, table in alloc.tables.items():
        assert len(table) == alloc.blocks_for(alloc.lengths[seq])


PREFIXES = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 9], [7, 7, 7, 7]]


@settings(max_examples=80, deadline=None)
@given(num_blocks=st.integers(2, 10), block_size=st.integers(1, 3),
       ops=st.lists(st.tuples(st.sampled_from(["admit", "grow", "retire"]), st.integers(0, 5), st.integers(0, 2),
                              st.integers(0, 4)), max_size=60))
def test_counts_stay_consistent_under_random_admissions_and_retirements(num_blocks, block_size, ops):
    alloc = PrefixCachingAllocator(num_blocks, block_size)
    for op, seq, prefix, extra in ops:
        tokens = PREFIXES[prefix] + [seq] * extra
        if op == "admit" and seq not in alloc.tables:
            if alloc.can_allocate_prompt(tokens):
                c, copies = alloc.allocate_prompt(seq, tokens)
                assert c <= len(tokens) - 1 and all(alloc.refs[dst] == 1 for _, dst in copies)
                alloc.register(seq, tokens, len(tokens))
            else:
                with pytest.raises(OutOfBlocksError):
                    alloc.allocate_prompt(seq, tokens)
        elif op == "grow" and seq in alloc.tables and alloc.n_free:
            alloc.append(seq)
        elif op == "retire" and seq in alloc.tables:
            alloc.release(seq)
        _check_invariants(alloc)
    for seq in list(alloc.tables):
        alloc.release(seq)
    assert not alloc.refs and len(alloc.free) + len(alloc.evictable) == num_blocks


def test_a_second_prompt_reuses_the_cached_blocks_and_eviction_is_lru():
    alloc = PrefixCachingAllocator(6, 2)
    a, b = [1, 2, 3, 4, 5], [6, 7, 8, 9]
    assert alloc.allocate_prompt("a", a) == (0, [])
    alloc.register("a", a, 5)                                # blocks [1, 2], [3, 4] named; [5] is not full
    table_a = list(alloc.tables["a"])
    assert alloc.allocate_prompt("a2", a[:4] + [0]) == (4, [])   # hits both full blocks
    assert alloc.tables["a2"][:2] == table_a[:2] and alloc.refs[table_a[0]] == 2
    alloc.release("a2"), alloc.release("a")
    assert list(alloc.evictable) == [table_a[1], table_a[0]]     # released last block first: the tail is older
    alloc.allocate_prompt("b", b)
    alloc.register("b", b, 4)
    table_b = list(alloc.tables["b"])
    alloc.release("b")
    evict_order = [table_a[1], table_a[0], table_b[1], table_b[0]]
    assert list(alloc.evictable) == evict_order
    alloc.allocate_prompt("c", [0] * 11)                          # 6 blocks: 2 free ones, then 4 evicted in order
    assert alloc.tables["c"][2:] == evict_order and not alloc.cached and not alloc.evictable
    assert alloc.match(a) == [] and alloc.match(b) == []


def test_the_hash_chain_tells_the_same_block_under_two_prefixes_apart():
    alloc = PrefixCachingAllocator(8, 2)
    alloc.allocate_prompt("x", [1, 2, 5, 6])
    alloc.register("x", [1, 2, 5, 6], 4)
    alloc.allocate_prompt("y", [3, 4, 5, 6])                     # block [5, 6] again, after another prefix
    alloc.register("y", [3, 4, 5, 6], 4)
    assert len(alloc.cached) == 4 and alloc.tables["x"][1] != alloc.tables["y"][1]
    assert alloc.match([3, 4, 5, 6, 7]) == alloc.tables["y"]
    assert alloc.match([9, 9, 5, 6]) == []                      # the same content without its prefix: no hit


def test_a_whole_prompt_hit_copies_the_shared_last_block_exactly(tiny_gpt):
    model = tiny_gpt()
    cache = PagedKVCache(model, 6, 2, allocator=PrefixCachingAllocator)
    alloc = cache.allocator
    for pool in cache.k + cache.v:
        pool.copy_(torch.randn(pool.shape, generator=torch.Generator().manual_seed(pool.numel())))
    tokens = [1, 2, 3, 4]
    alloc.allocate_prompt("a", tokens)
    alloc.register("a", tokens, 4)
    before = [pool.clone() for pool in cache.k + cache.v]
    c, copies = alloc.allocate_prompt("b", tokens)
    assert c == 3 and copies == [(alloc.tables["a"][1], alloc.tables["b"][1])]   # the last token is run again
    assert alloc.tables["b"][0] == alloc.tables["a"][0] and alloc.refs[alloc.tables["a"][1]] == 1
    src, dst = copies[0]
    cache.copy_block(src, dst)
    for pool, old in zip(cache.k + cache.v, before):
        assert torch.equal(pool[dst], old[src])                    # every layer's k and v
        assert torch.equal(pool[[b for b in range(6) if b != dst]], old[[b for b in range(6) if b != dst]])
    alloc.release("a")
    assert alloc.allocate_prompt("c", tokens)[1] == []            # "b" alone holds nothing shared to copy: no copy
    with pytest.raises(ValueError, match="dst=6 is out of range"):
        cache.copy_block(0, 6)
