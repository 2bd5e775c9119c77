"""Properties of lab.infer's entry points over many inputs (hypothesis).

Strided and transposed views of valid inputs give the contiguous input's result (attention, the cached forward
through the static and the paged cache, the sampling filters, the acceptance rule); a bool, fractional or negative
size is refused naming its argument; the cost formulas give finite non-negative figures on valid input; the
sampling distribution and the acceptance rule's outputs are what they claim to be.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.infer import (BlockAllocator, Decoder, GraphedDecodeStep, PagedKVCache, StaticKVCache, decode_step_cost,
                       expected_speedup, expected_tokens_per_step, filter_logits, forward_cached, generate,
                       masked_attention, next_token_probs, sample, speculative_accept, speed_of_light_ms)
from tests.tiny_models import tiny_gpt

gpt = functools.cache(tiny_gpt)                 # vocabulary 61, context 16, 2 layers, heads 4 / 2 of dimension 8
V, CONTEXT = 61, 16
SETTINGS = settings(max_examples=25, deadline=None)


def strided(t: torch.Tensor, how: str) -> torch.Tensor:
    """The values of ``t`` in a non-contiguous tensor: every other element of a wider buffer, or the transpose of
    a transposed copy (same shape and values, other strides)."""
    if how == "every other":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.transpose(0, -1).contiguous().transpose(0, -1)


HOW = st.sampled_from(["every other", "transposed"])
BAD_SIZE = st.one_of(st.booleans(), st.integers(-5, 0), st.floats(0.5, 8.5).filter(lambda x: x != int(x)))


# --- views: a strided input gives the contiguous input's result ---------------------------------------------------

@SETTINGS
@given(B=st.integers(1, 2), n_kv=st.integers(1, 2), G=st.integers(1, 2), T=st.integers(1, 3), extra=st.integers(0, 2),
       D=st.sampled_from([2, 4]), how=HOW, seed=st.integers(0, 2**16))
def test_masked_attention_of_views_equals_contiguous(B, n_kv, G, T, extra, D, how, seed):
    gen, S = torch.Generator().manual_seed(seed), T + extra
    q, k, v = (torch.randn(B, h, n, D, generator=gen) for h, n in ((n_kv * G, T), (n_kv, S), (n_kv, S)))
    positions = torch.arange(extra, S).expand(B, T)
    mask = torch.arange(S) <= positions[:, :, None]
    out = masked_attention(q, k, v, mask)
    views = [strided(t, how) for t in (q, k, v, mask)]
    assert how == "transposed" or not views[0].is_contiguous()         # D >= 2: every other element is a view
    torch.testing.assert_close(masked_attention(*views), out, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(B=st.integers(1, 2), T=st.integers(1, 6), how=HOW, seed=st.integers(0, 2**16))
def test_cached_forward_of_views_equals_contiguous(B, T, how, seed):
    """The static cache and the paged cache (its gather path, as on the CPU) read strided ids and positions as
    their values: the logits equal those of contiguous inputs, and the model's own forward."""
    model = gpt()
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(T).expand(B, T).contiguous()
    with torch.no_grad():
        reference = model(ids)
        for args in ((ids, positions), (strided(ids, how), strided(positions, how))):
            logits = forward_cached(model, *args, StaticKVCache(model, B, CONTEXT).attention(args[1], n_keys=T))
            torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
            paged = PagedKVCache(model, num_blocks=2 * B * 4, block_size=4)
            for b in range(B):
                paged.allocator.allocate(b, T)
            logits = forward_cached(model, *args, paged.attention(list(range(B)), args[1]))
            torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(rows=st.integers(1, 3), n=st.integers(2, 12), top_k=st.none() | st.integers(1, 14),
       top_p=st.none() | st.floats(0.01, 1.0), temperature=st.sampled_from([0.0, 0.7, 1.0, 2.0]), how=HOW,
       seed=st.integers(0, 2**16))
def test_sampling_is_a_distribution_and_views_change_nothing(rows, n, top_k, top_p, temperature, how, seed):
    z = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed))
    z[0, seed % n] = float("-inf")                                      # a masked token stays allowed
    kept = filter_logits(z, top_k, top_p)
    assert torch.equal(filter_logits(strided(z, how), top_k, top_p), kept)
    assert ((kept > float("-inf")).sum(-1) >= 1).all()                  # at least one token survives
    if top_k is not None and top_p is None:                            # top-k keeps k tokens (or all finite ones)
        assert ((kept > float("-inf")).sum(-1) >= torch.clamp((z > float("-inf")).sum(-1), max=top_k)).all()
    p = next_token_probs(z, temperature, top_k, top_p)
    assert torch.equal(next_token_probs(strided(z, how), temperature, top_k, top_p), p)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(rows))
    dropped = filter_logits(z / temperature if temperature else z, top_k, top_p) == float("-inf")
    assert (p[dropped] == 0).all()                                      # filtered after the temperature
    draws = [sample(x, temperature, top_k, top_p, torch.Generator().manual_seed(seed)) for x in (z, strided(z, how))]
    assert torch.equal(draws[0], draws[1]) and (p.gather(-1, draws[0][:, None]) > 0).all()


@SETTINGS
@given(k=st.integers(1, 4), n=st.integers(2, 8), how=HOW, seed=st.integers(0, 2**16))
def test_acceptance_rule_outputs_and_views(k, n, how, seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(k + 1, n, generator=gen), -1)
    q = torch.softmax(torch.randn(k, n, generator=gen), -1)
    drafts = torch.multinomial(q, 1, generator=gen)[:, 0]
    a, token = speculative_accept(p, q, drafts, torch.Generator().manual_seed(seed))
    assert 0 <= a <= k and 0 <= token < n
    views = strided(p, how), strided(q, how), strided(drafts, "every other")
    assert speculative_accept(*views, torch.Generator().manual_seed(seed)) == (a, token)


# --- sizes: a bool, a fraction or a non-positive count is refused, naming its argument ------------------------------

def _decoder() -> Decoder:
    decoder = Decoder(gpt(), 1, 8)
    decoder.extend(torch.tensor([[1, 2, 3]]))
    return decoder


SIZED = {   # argument → the call with a bad value in it
    "num_blocks": lambda x: BlockAllocator(x, 4),
    "block_size": lambda x: PagedKVCache(gpt(), 4, x),
    "n_tokens": lambda x: BlockAllocator(4, 2).allocate("a", x),
    "batch": lambda x: StaticKVCache(gpt(), x, 8),
    "max_len": lambda x: Decoder(gpt(), 1, x),
    "warmup": lambda x: GraphedDecodeStep(gpt(), StaticKVCache(gpt(), 1, 8), warmup=x),
    "context": lambda x: decode_step_cost(gpt(), 1, x),
    "n_keys": lambda x: StaticKVCache(gpt(), 1, 8).attention(torch.zeros(1, 1, dtype=torch.int64), x),
    "top_k": lambda x: filter_logits(torch.zeros(1, 4), top_k=x),
    "k": lambda x: expected_tokens_per_step(0.5, x),
    "length": lambda x: _decoder().rewind(x),
    "max_new_tokens": lambda x: generate(gpt(), torch.tensor([1]), x),
    "seed": lambda x: generate(gpt(), torch.tensor([1]), 1, seed=x),
}
ZERO_ALLOWED = {"length", "max_new_tokens", "seed"}       # these get x - 1 for a non-positive int x


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(SIZED)), value=BAD_SIZE)
def test_bad_sizes_are_refused_by_name(name, value):
    wrong_type = isinstance(value, (bool, float))
    if name in ZERO_ALLOWED and not wrong_type:
        value -= 1
    with pytest.raises(TypeError if wrong_type else ValueError, match=rf"\b{name}\b"):
        SIZED[name](value)


# --- formulas: finite and non-negative on valid input ----------------------------------------------------------------

@SETTINGS
@given(batch=st.integers(1, 512), context=st.integers(1, 1 << 16), kv_cache=st.booleans(),
       kv_bytes=st.sampled_from([0.5, 1, 2, 4]), bandwidth=st.floats(1e9, 1e13), peak=st.floats(1e12, 1e16))
def test_cost_formulas_are_finite_and_non_negative(batch, context, kv_cache, kv_bytes, bandwidth, peak):
    cost = decode_step_cost(gpt(), batch, context, kv_cache, kv_bytes)
    assert all(math.isfinite(x) and x > 0 for x in cost.values())
    sol = speed_of_light_ms(cost, bandwidth, peak)
    assert all(math.isfinite(x) and x >= 0 for x in sol.values())
    assert sol["ms"] == max(sol["memory_ms"], sol["compute_ms"])
    more = decode_step_cost(gpt(), batch + 1, context, kv_cache, kv_bytes)
    assert more["bytes"] >= cost["bytes"] and more["flops"] > cost["flops"]


@SETTINGS
@given(alpha=st.floats(0, 1), k=st.integers(1, 32), c=st.floats(0, 10), r=st.floats(0.01, 10))
def test_speculative_formulas_are_bounded(alpha, k, c, r):
    tokens = expected_tokens_per_step(alpha, k)
    assert 1 - 1e-9 <= tokens <= k + 1 + 1e-9
    speedup = expected_speedup(alpha, k, c, r)
    assert math.isfinite(speedup) and speedup > 0
    assert speedup == pytest.approx(tokens / (c * k + r))


@SETTINGS
@given(alpha=st.one_of(st.floats(allow_nan=True).filter(lambda x: not 0 <= x <= 1), st.booleans()),
       k=st.integers(1, 8))
def test_speculative_formulas_refuse_what_is_not_a_probability(alpha, k):
    with pytest.raises(TypeError if isinstance(alpha, bool) else ValueError, match="alpha"):
        expected_tokens_per_step(alpha, k)
