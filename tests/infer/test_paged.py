"""lab.infer.paged and lab.infer.scheduler.

References: invariants of the block allocator under random admission, growth and retirement
(hypothesis); the static-cache forward for the paged one; `lab.infer.generate` run on each request
alone for the scheduler's outputs. The decode kernel (`lab.kernels.paged_attention`) is tested in
tests/kernels/test_paged_attention.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.infer import BlockAllocator, OutOfBlocksError, PagedKVCache, Request, forward_cached, generate, serve
from lab.infer.scheduler import DRY_RUN_TOKEN, schedule, synthetic_trace
from lab.models import GPT, GPTConfig

CFG = GPTConfig(vocab_size=101, context_length=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64)


@pytest.fixture(scope="module")
def tiny(tiny_gpt) -> GPT:
    return tiny_gpt(**CFG.to_dict())


# --- the allocator -----------------------------------------------------------------------------------

def _check_invariants(alloc: BlockAllocator) -> None:
    owned = [b for table in alloc.tables.values() for b in table]
    assert len(owned) == len(set(owned)), "a block is owned by two sequences"
    assert not set(owned) & set(alloc.free), "a block is both owned and free"
    assert sorted(owned + alloc.free) == list(range(alloc.num_blocks)), "a block went missing"
    for seq, table in alloc.tables.items():
        assert len(table) == alloc.blocks_for(alloc.lengths[seq])   # no block more than needed
        slots = [alloc.slot(seq, t) for t in range(alloc.lengths[seq])]
        assert len(set(slots)) == len(slots)


@settings(max_examples=150, deadline=None)
@given(num_blocks=st.integers(1, 12), block_size=st.integers(1, 5),
       ops=st.lists(st.tuples(st.sampled_from(["admit", "grow", "retire"]), st.integers(0, 7), st.integers(1, 20)),
                    max_size=80))
def test_allocator_never_shares_a_block_and_returns_every_block(num_blocks, block_size, ops):
    alloc = BlockAllocator(num_blocks, block_size)
    for op, seq, n in ops:
        if op == "admit":
            if seq in alloc.tables:
                with pytest.raises(ValueError, match="already holds"):
                    alloc.allocate(seq, n)
            elif alloc.can_allocate(n):
                assert len(alloc.allocate(seq, n)) == alloc.blocks_for(n)
            else:
                with pytest.raises(OutOfBlocksError):
                    alloc.allocate(seq, n)
        elif op == "grow" and seq in alloc.tables:
            if alloc.needs_block(seq) and not alloc.free:
                with pytest.raises(OutOfBlocksError):
                    alloc.append(seq)
            else:
                before = alloc.lengths[seq]
                alloc.append(seq)
                assert alloc.lengths[seq] == before + 1
        elif op == "retire" and seq in alloc.tables:
            alloc.release(seq)
        _check_invariants(alloc)
    for seq in list(alloc.tables):
        alloc.release(seq)
    assert sorted(alloc.free) == list(range(num_blocks)) and not alloc.tables


def test_allocator_slots_and_errors():
    alloc = BlockAllocator(4, 3)
    alloc.allocate("a", 4)                                   # blocks 0, 1
    alloc.allocate("b", 2)                                   # block 2
    assert [alloc.slot("a", t) for t in range(4)] == [0, 1, 2, 3]
    assert alloc.slot("b", 1) == 7
    alloc.append("b"), alloc.append("b")                     # 3 tokens fill block 2, the 4th takes block 3
    assert alloc.tables["b"] == [2, 3] and alloc.slot("b", 3) == 9
    with pytest.raises(IndexError, match="position 4"):
        alloc.slot("b", 4)
    with pytest.raises(ValueError, match="seq_id='c' holds no blocks"):
        alloc.release("c")
    alloc.release("a")
    with pytest.raises(ValueError, match="seq_id='a' holds no blocks .* released already"):
        alloc.release("a")                                   # twice: a clear error, the pool unchanged
    assert sorted(alloc.free) == [0, 1]
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match=f"n_tokens.*{bad}"):
            alloc.allocate("d", bad)
    with pytest.raises(ValueError, match="num_blocks"):
        BlockAllocator(0, 4)


# --- the paged cache in the model --------------------------------------------------------------------------

def test_paged_forward_equals_static_forward(tiny):
    cache = PagedKVCache(tiny, num_blocks=20, block_size=4)
    prompts = [torch.randint(0, 101, (n,), generator=torch.Generator().manual_seed(n)) for n in (7, 3, 12)]
    for i, p in enumerate(prompts):
        cache.allocator.allocate(i, len(p))
        pos = torch.arange(len(p))[None]
        logits = forward_cached(tiny, p[None], pos, cache.attention([i], pos))
        assert torch.allclose(logits, tiny(p[None]), atol=1e-5)
    nxt = torch.tensor([[5], [6], [7]])
    for i in range(3):
        cache.allocator.append(i)
    pos = torch.tensor([[len(p)] for p in prompts])
    logits = forward_cached(tiny, nxt, pos, cache.attention([0, 1, 2], pos))
    for i, p in enumerate(prompts):
        assert torch.allclose(logits[i, 0], tiny(torch.cat([p, nxt[i]])[None])[0, -1], atol=1e-5)


# --- the scheduler ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trace():
    text = torch.randint(0, 101, (500,), generator=torch.Generator().manual_seed(0))
    return synthetic_trace(text, 14, (2, 20), (1, 24), seed=1)


@pytest.fixture(scope="module")
def alone(tiny, trace):
    return {r.id: generate(tiny, r.prompt, r.max_new_tokens)[len(r.prompt):] for r in trace}


@pytest.mark.parametrize("policy", ["static", "continuous"])
@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_serve_outputs_equal_generate_alone(tiny, trace, alone, policy, max_batch):
    result = serve(tiny, trace, max_batch, policy, block_size=4)
    assert set(result.outputs) == set(alone)
    for i, out in result.outputs.items():
        assert torch.equal(out, alone[i]), f"request {i} differs"
    assert result.generated_tokens == sum(r.max_new_tokens for r in trace)
    assert max(result.active_rows) <= max_batch and 0 < result.utilization <= 1
    # every generated token except each request's first comes from a decode step
    assert sum(result.active_rows) == result.generated_tokens - len(trace)


def test_continuous_batching_needs_fewer_steps_than_static(tiny, trace):
    static, continuous = serve(tiny, trace, 4, "static"), serve(tiny, trace, 4, "continuous")
    assert continuous.decode_steps < static.decode_steps
    assert continuous.utilization > static.utilization


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_serve_preempts_when_blocks_run_out_and_stays_exact(tiny, trace, alone, policy):
    result = serve(tiny, trace, 6, policy, num_blocks=12, block_size=4)   # 48 slots for up to 6 rows
    assert result.preemptions > 0
    for i, out in result.outputs.items():
        assert torch.equal(out, alone[i])


@pytest.mark.parametrize("policy", ["static", "continuous"])
@pytest.mark.parametrize("max_batch, num_blocks", [(1, None), (3, None), (8, None), (6, 12)])   # (6, 12) preempts
def test_schedule_is_serve_without_the_model(tiny, trace, policy, max_batch, num_blocks):
    real = serve(tiny, trace, max_batch, policy, num_blocks=num_blocks, block_size=4)
    dry = schedule(trace, max_batch, policy, tiny.config.context_length, num_blocks=num_blocks, block_size=4)
    assert dry.active_rows == real.active_rows and dry.decode_steps == real.decode_steps
    assert (dry.prefill_tokens, dry.preemptions) == (real.prefill_tokens, real.preemptions)
    assert dry.utilization == real.utilization and (num_blocks is None or dry.preemptions > 0)
    assert {i: len(t) for i, t in dry.outputs.items()} == {r.id: r.max_new_tokens for r in trace}
    assert all(bool((t == DRY_RUN_TOKEN).all()) for t in dry.outputs.values())


def test_serve_rejects_bad_input(tiny, trace):
    with pytest.raises(ValueError, match="policy"):
        serve(tiny, trace, 2, "fifo")
    with pytest.raises(ValueError, match="max_batch"):
        serve(tiny, trace, 0)
    with pytest.raises(ValueError, match="unique"):
        serve(tiny, [trace[0], trace[0]], 2)
    with pytest.raises(ValueError, match="exceeds the context"):
        serve(tiny, [Request(0, torch.zeros(60, dtype=torch.int64), 10)], 2)
    with pytest.raises(ValueError, match="cache"):
        serve(tiny, [Request(0, torch.zeros(10, dtype=torch.int64), 10)], 2, num_blocks=2, block_size=4)
    with pytest.raises(ValueError, match="prompt is empty"):
        Request(0, torch.zeros(0, dtype=torch.int64), 3)
    with pytest.raises(TypeError, match=r"1-D int64 tensor of token ids, got torch.float32 of shape \(4,\)"):
        Request(0, torch.zeros(4), 3)                                          # float ids
    with pytest.raises(TypeError, match=r"1-D int64 tensor of token ids, got torch.int64 of shape \(2, 4\)"):
        Request(0, torch.zeros(2, 4, dtype=torch.int64), 3)
    with pytest.raises(TypeError, match="max_new_tokens must be an int, got 2.5"):
        Request(0, torch.zeros(4, dtype=torch.int64), 2.5)
    with pytest.raises(ValueError, match="max_new_tokens=0 is out of range"):
        Request(0, torch.zeros(4, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"prompt token ids must lie in \[0, vocab_size=101\)"):
        serve(tiny, [Request(0, torch.tensor([1, 101]), 3)], 2)
    with pytest.raises(ValueError, match="num_blocks=0 is out of range"):      # not silently the default
        serve(tiny, trace, 2, num_blocks=0)
    with pytest.raises(ValueError, match="block_size=0 is out of range"):
        serve(tiny, trace, 2, block_size=0)
    with pytest.raises(ValueError, match="prompt_lengths"):
        synthetic_trace(torch.zeros(10, dtype=torch.int64), 3, (5, 20), (1, 2))
    with pytest.raises(ValueError, match="n_requests=-1 is out of range"):
        synthetic_trace(torch.zeros(100, dtype=torch.int64), -1, (5, 20), (1, 2))


@pytest.mark.parametrize("block_size, kernel", [(16, "paged_attention_decode_v2"), (4, "paged_attention_decode")])
def test_a_decode_step_reaches_its_kernel_under_the_interpreter(tiny_gpt, monkeypatch, block_size, kernel):
    """Under TRITON_INTERPRET=1 a decode step (T = 1) of the cache runs the Triton kernel `paged_decode_kernel`
    picks (v2 for head dimension and block size ≥ 16, else v1) and gives the logits of the full forward."""
    import lab.infer.paged as paged
    import lab.kernels.paged_attention as paged_module
    from tests.kernels.interpreted import reloaded

    model = tiny_gpt(**{**CFG.to_dict(), "d_model": 64})                       # head dimension 16
    assert paged.paged_decode_kernel(model.config.head_dim, block_size).__name__ == kernel
    prompt = torch.randint(0, 101, (21,), generator=torch.Generator().manual_seed(3))
    launched = []
    original = getattr(paged, kernel)
    monkeypatch.setattr(paged, kernel, lambda *args, **kwargs: launched.append(1) or original(*args, **kwargs))
    for _ in reloaded(paged_module):
        cache = PagedKVCache(model, num_blocks=8, block_size=block_size)
        cache.allocator.allocate(0, 20)
        pos = torch.arange(20)[None]
        forward_cached(model, prompt[None, :20], pos, cache.attention([0], pos))    # prefill: gather path
        cache.allocator.append(0)
        pos = torch.tensor([[20]])
        logits = forward_cached(model, prompt[None, 20:], pos, cache.attention([0], pos))
    assert len(launched) == model.config.n_layer                                 # one launch per layer
    torch.testing.assert_close(logits[0, 0], model(prompt[None])[0, -1], rtol=1e-4, atol=1e-4)


def test_paged_cache_refuses_an_integer_dtype(tiny):
    with pytest.raises(ValueError, match="dtype=torch.int16 is not allowed; use a floating-point dtype"):
        PagedKVCache(tiny, num_blocks=4, block_size=4, dtype=torch.int16)     # would truncate every k and v
