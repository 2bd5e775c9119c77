"""lab.infer: sampling filters, the static KV cache, `generate` and the CUDA-graph decode step.

References: `transformers`' logits warpers (temperature, top-k, top-p) and its ``generate`` on the same
checkpoint; the uncached forward of `lab.models.GPT` (itself tested against ``LlamaForCausalLM``); the
KV-cache memory formula of chapter 1.
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from lab.infer import Decoder, StaticKVCache, filter_logits, forward_cached, generate, next_token_probs, sample
from lab.infer.kv_cache import causal_mask, masked_attention
from lab.models import GPT, GPTConfig, load_pretrained_lm, to_llama
from lab.params.memory import kv_cache_bytes
from lab.quant import w8a8_quantize_model

NO_CUDA = not torch.cuda.is_available()
CFG = GPTConfig(vocab_size=97, context_length=48, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64)


@pytest.fixture(scope="module")
def tiny(tiny_gpt) -> GPT:
    return tiny_gpt(**CFG.to_dict())


@pytest.fixture(scope="module")
def pretrained() -> GPT:
    return load_pretrained_lm("lab")


def _ids(B: int, T: int, V: int = CFG.vocab_size, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --- sampling ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("top_k", [1, 5, 50, 200])
def test_top_k_equals_transformers(top_k):
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(top_k))
    ref = TopKLogitsWarper(top_k)(None, z.clone())
    assert torch.equal(filter_logits(z, top_k=top_k), ref)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_then_top_p_equals_transformers(top_p, temperature):
    z = torch.randn(6, 300, generator=torch.Generator().manual_seed(int(100 * top_p)))
    ref = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, z.clone()))
    ours = filter_logits(z / temperature, top_p=top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert torch.allclose(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_next_token_probs_are_distributions_and_greedy_is_one_hot():
    z = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    p = next_token_probs(z, 0.7, top_k=10, top_p=0.8)
    assert torch.allclose(p.sum(-1), torch.ones(3)) and ((p > 0).sum(-1) <= 10).all()
    g = next_token_probs(z, 0.0)
    assert torch.equal(g.argmax(-1), z.argmax(-1)) and torch.equal(g.sum(-1), torch.ones(3))
    assert torch.equal(sample(z, 0.0), z.argmax(-1))
    assert torch.equal(sample(z, 1.0, top_k=1, generator=torch.Generator().manual_seed(3)), z.argmax(-1))


def test_sample_follows_the_distribution():
    z = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(20_000, 4)
    draws = sample(z, 1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert torch.allclose(freq, torch.softmax(z[0].double(), -1), atol=0.01)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"temperature": -0.1}, ValueError, r"temperature=-0.1 is out of range; allowed: a finite number in \[0, inf\)"),
    ({"temperature": float("nan")}, ValueError, "temperature=nan"),
    ({"top_p": 0.0}, ValueError, r"top_p=0.0 is out of range; allowed: a finite number in \(0.0, 1.0\]"),
    ({"top_p": 1.5}, ValueError, "top_p=1.5"),
    ({"top_k": 0}, ValueError, r"top_k=0 is out of range; allowed: \[1, inf\)"),
    ({"top_k": 2.5}, TypeError, "top_k must be an int, got 2.5"),
])
def test_sampling_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        sample(torch.zeros(1, 5), **{"temperature": 1.0, **kwargs})


# --- the cache ----------------------------------------------------------------------------------------

def test_masked_attention_equals_repeated_heads_sdpa():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 5, 16, generator=g)
    k, v = torch.randn(2, 2, 9, 16, generator=g), torch.randn(2, 2, 9, 16, generator=g)
    positions = torch.tensor([[4, 5, 6, 7, 8], [2, 3, 4, 5, 6]])
    mask = causal_mask(positions, 9)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), attn_mask=mask[:, None])
    assert torch.allclose(masked_attention(q, k, v, mask), ref, atol=1e-6)


@pytest.mark.parametrize("chunks", [[11], [1] * 11, [4, 1, 1, 5], [7, 3, 1]])
def test_cached_logits_equal_uncached(tiny, chunks):
    ids = _ids(3, sum(chunks))
    full = tiny(ids)
    decoder = Decoder(tiny, 3, 20)
    parts, start = [], 0
    for n in chunks:
        parts.append(decoder.extend(ids[:, start:start + n]))
        start += n
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_cached_logits_equal_uncached_on_the_pretrained_model(pretrained):
    ids = _ids(2, 40, V=8192)
    decoder = Decoder(pretrained, 2, 64)
    cached = torch.cat([decoder.extend(ids[:, :30])] + [decoder.extend(ids[:, t:t + 1]) for t in range(30, 40)], 1)
    assert (cached - pretrained(ids)).abs().max() < 1e-4


def test_rows_at_different_positions(tiny):
    """StaticKVCache writes each row at its own position (what the paged scheduler relies on too)."""
    a, b = _ids(1, 9, seed=1), _ids(1, 6, seed=2)
    cache = StaticKVCache(tiny, 2, 16)
    padded = torch.cat([a, torch.cat([b, b[:, :3]], 1)])               # row 1 only uses its first 6
    pos = torch.arange(9).expand(2, 9)
    forward_cached(tiny, padded, pos, cache.attention(pos, 9))
    step = torch.tensor([[3], [4]])
    step_pos = torch.tensor([[9], [6]])
    logits = forward_cached(tiny, step, step_pos, cache.attention(step_pos, 10))
    assert torch.allclose(logits[0, 0], tiny(torch.cat([a, step[:1]], 1))[0, -1], atol=1e-5)
    assert torch.allclose(logits[1, 0], tiny(torch.cat([b, step[1:]], 1))[0, -1], atol=1e-5)


def test_rewind_overwrites_stale_positions(tiny):
    ids = _ids(1, 12)
    decoder = Decoder(tiny, 1, 16)
    decoder.extend(ids[:, :8])
    decoder.extend(_ids(1, 3, seed=9))          # speculative tokens that get rejected
    decoder.rewind(8)
    assert torch.allclose(decoder.extend(ids[:, 8:]), tiny(ids)[:, 8:], atol=1e-5)
    with pytest.raises(ValueError, match="rewind"):
        decoder.rewind(13)


def test_static_cache_size_is_the_chapter_1_formula(pretrained):
    cache = StaticKVCache(pretrained, 4, 200, dtype=torch.bfloat16)
    assert cache.nbytes() == kv_cache_bytes(pretrained.config, 4, 200, torch.bfloat16)


def test_cached_forward_runs_quantized_layers(tiny):
    """Swapped-in lab.quant layers run unchanged under the cache (their own kernels)."""
    import copy

    q = w8a8_quantize_model(copy.deepcopy(tiny))
    ids = _ids(2, 10)
    decoder = Decoder(q, 2, 10)
    cached = torch.cat([decoder.extend(ids[:, :6])] + [decoder.extend(ids[:, t:t + 1]) for t in range(6, 10)], 1)
    assert torch.allclose(cached, q(ids), atol=1e-4)


# --- generate ---------------------------------------------------------------------------------------

def test_greedy_generate_equals_transformers(pretrained):
    hf = to_llama(pretrained)
    hf.generation_config.eos_token_id = None
    ids = _ids(3, 17, V=8192, seed=5)
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False)
    ours = generate(pretrained, ids, 40)
    assert torch.equal(ours, ref)
    assert torch.equal(generate(pretrained, ids, 40, kv_cache=False), ref)


def test_generate_with_eos_stops_like_transformers(pretrained):
    hf = to_llama(pretrained)
    ids = _ids(2, 5, V=8192, seed=11)
    plain = generate(pretrained, ids, 30)
    eos = int(plain[0, 8])                        # a token row 0 emits early
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                      eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(generate(pretrained, ids, 30, eos_token_id=eos), ref)


def test_sampled_generate_is_seeded_and_cache_independent(tiny):
    ids = _ids(2, 4)
    a = generate(tiny, ids, 20, temperature=0.9, top_k=40, top_p=0.95, seed=7)
    assert torch.equal(a, generate(tiny, ids, 20, temperature=0.9, top_k=40, top_p=0.95, seed=7))
    assert torch.equal(a, generate(tiny, ids, 20, kv_cache=False, temperature=0.9, top_k=40, top_p=0.95, seed=7))
    assert not torch.equal(a, generate(tiny, ids, 20, temperature=0.9, top_k=40, top_p=0.95, seed=8))


def test_generate_shapes(tiny):
    ids = _ids(1, 5)[0]
    assert generate(tiny, ids, 7).shape == (12,)
    assert torch.equal(generate(tiny, ids, 0), ids)
    assert generate(tiny, _ids(4, 5), 3).shape == (4, 8)


@pytest.mark.parametrize("prompt, kwargs, error, match", [
    (torch.zeros(0, dtype=torch.int64), {}, ValueError, "empty"),
    (torch.zeros(2, 0, dtype=torch.int64), {}, ValueError, "empty"),
    (torch.zeros(3, dtype=torch.int64), {"max_new_tokens": -1}, ValueError, "max_new_tokens"),
    (torch.zeros(3, dtype=torch.int64), {"temperature": -1.0}, ValueError, "temperature"),
    (torch.zeros(3, dtype=torch.int64), {"top_p": 0.0}, ValueError, "top_p"),
    (torch.zeros(3, dtype=torch.int64), {"top_p": 1.01}, ValueError, "top_p"),
    (torch.zeros(49, dtype=torch.int64), {}, ValueError, "longer than the model's context of 48"),
    (torch.zeros(40, dtype=torch.int64), {"max_new_tokens": 9}, ValueError, "exceeds the model's context"),
    (torch.full((3,), 97), {}, ValueError, "vocab_size"),
    (torch.zeros(3, dtype=torch.int32), {}, TypeError, "int64"),
])
def test_generate_rejects_bad_input(tiny, prompt, kwargs, error, match):
    with pytest.raises(error, match=match):
        generate(tiny, prompt, **{"max_new_tokens": 4, **kwargs})


def test_decoder_rejects_overflow_and_graph_without_cache(tiny):
    decoder = Decoder(tiny, 1, 4)
    with pytest.raises(ValueError, match="do not fit"):
        decoder.extend(_ids(1, 5))
    with pytest.raises(ValueError, match="cuda_graph=True needs kv_cache=True"):
        Decoder(tiny, 1, 4, kv_cache=False, cuda_graph=True)
    with pytest.raises(ValueError, match="max_len"):
        Decoder(tiny, 1, 49)
    with pytest.raises(ValueError, match="CUDA graphs need"):
        Decoder(tiny, 1, 8, cuda_graph=True)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_cuda_graph_decode_equals_eager_on_gpu(pretrained):
    model = pretrained.cuda()
    ids = _ids(4, 20, V=8192).cuda()
    eager = generate(model, ids, 60)
    graphed = generate(model, ids, 60, cuda_graph=True)
    assert torch.equal(eager, graphed)
    decoder, graph_decoder = Decoder(model, 4, 64), Decoder(model, 4, 64, cuda_graph=True)
    decoder.extend(ids)
    graph_decoder.extend(ids)
    for t in range(5):
        tok = ids[:, t:t + 1]
        assert torch.allclose(decoder.extend(tok), graph_decoder.extend(tok), atol=1e-4)


# --- bad input that used to slip through -------------------------------------------------------------

@pytest.mark.parametrize("eos, error, match", [
    (CFG.vocab_size, ValueError, r"eos_token_id=97 is out of range; allowed: \[0, 96\]"),
    (-1, ValueError, r"eos_token_id=-1 is out of range"),
    (2.0, TypeError, r"eos_token_id must be an int, got 2.0"),
    (True, TypeError, r"eos_token_id must be an int, got True"),
])
def test_generate_rejects_an_eos_token_outside_the_vocabulary(tiny, eos, error, match):
    with pytest.raises(error, match=match):
        generate(tiny, _ids(1, 4), 3, eos_token_id=eos)


@pytest.mark.parametrize("make", [lambda m: None, to_llama], ids=["None", "transformers"])
def test_generate_names_the_model_class_it_needs(tiny, make):
    with pytest.raises(TypeError, match=r"lab\.models\.GPT.*from_llama"):
        generate(make(tiny), _ids(1, 4), 3)
