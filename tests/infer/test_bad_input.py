"""lab.infer's bad-input table (see `tests.bad_input`): every public name refuses the realistic mistakes.

Everything runs on the CPU with the tiny GPT of `tests.tiny_models` (vocabulary 61, context 16, 2 layers, 4 query and
2 key/value heads of dimension 8); the rows of the measuring tools (draft, goodness of fit, latency, roofline, trace)
are in `tests.infer.bad_analysis`. `GraphedDecodeStep` needs a GPU to capture a graph, but it checks its arguments
before it looks at the device, so its cases run here too.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from lab.infer import (BlockAllocator, Decoder, GraphedDecodeStep, OutOfBlocksError, PagedKVCache,
                       PrefixCachingAllocator, Request, StaticKVCache, decode_step_cost, expected_speedup,
                       expected_tokens_per_step, filter_logits, forward_cached, generate, masked_attention,
                       next_token_probs, poisson_arrivals, sample, schedule, serve, shared_prompt_trace,
                       speculative_accept, speculative_generate, speed_of_light_ms, weight_bytes)
from lab.infer.serving_runs import paired_comparisons, predicted_row, roofline_step_time
from lab.infer.speculative_batch import (acceptance_over_rows, crossover_batch, crossover_formula,
                                         predicted_batch_speedup, speculative_generate_batch)
from tests.bad_input import NOT_GPT, Bad, merged
from tests.infer.bad_analysis import ANALYSIS
from tests.tiny_models import tiny_gpt

gpt = functools.cache(tiny_gpt)
IDS = torch.tensor([[1, 2, 3, 4]])                                   # (1, 4) int64 token ids
POS = torch.arange(4)[None]                                          # their positions
Z = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))   # logits (B, V)
NAN = torch.tensor([[0.0, float("nan"), 1.0]])
P = torch.softmax(torch.randn(3, 10, generator=torch.Generator().manual_seed(1)), -1)   # target (k + 1, V)
Q = torch.softmax(torch.randn(2, 10, generator=torch.Generator().manual_seed(2)), -1)   # draft (k, V)
DRAFTS = torch.tensor([1, 2])
QKV = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)       # q (B, n_h, T, D), k, v
MASK = torch.ones(1, 3, 5, dtype=torch.bool)                                            # (B, T, S)
COST = {"bytes": 1e9, "flops": 1e12}
ROWS = [{"rate": 1.0, "seed": s, "config": c, "ttft_p50": 1.0 + s} for s in range(3) for c in ("static", "continuous")]


def decoder(**kwargs):
    return lambda: Decoder(**{"model": gpt(), "batch": 1, "max_len": 8, **kwargs})


def extended(call):
    """``call`` on a decoder that holds the 4 tokens of IDS."""
    def run():
        d = Decoder(gpt(), 1, 8)
        d.extend(IDS)
        return call(d)
    return run


def gen(prompt=IDS, **kwargs):
    return lambda: generate(gpt(), prompt, **{"max_new_tokens": 3, **kwargs})


def static(**kwargs):
    return lambda: StaticKVCache(**{"model": gpt(), "batch": 1, "max_len": 8, **kwargs})


def cached(idx=IDS, positions=POS, attend_positions=POS, **kwargs):
    def run():
        attend = StaticKVCache(gpt(), 1, 8).attention(attend_positions)
        return forward_cached(**{"model": gpt(), "idx": idx, "positions": positions, "attend": attend, **kwargs})
    return run


def attention(q=QKV[0], k=QKV[1], v=QKV[2], mask=MASK):
    return lambda: masked_attention(q, k, v, mask)


def allocator(call):
    """``call`` on an allocator of 4 blocks of 2 slots where sequence "a" holds 3 tokens."""
    def run():
        a = BlockAllocator(4, 2)
        a.allocate("a", 3)
        return call(a)
    return run


def paged(seq_ids=(0,), positions=POS, **kwargs):
    def run():
        cache = PagedKVCache(**{"model": gpt(), "num_blocks": 4, "block_size": 2, **kwargs})
        cache.allocator.allocate(0, 4)
        return cache.attention(list(seq_ids) if isinstance(seq_ids, tuple) else seq_ids, positions)
    return run


def cost(**kwargs):
    return lambda: decode_step_cost(**{"model": gpt(), "batch": 1, "context": 8, **kwargs})


def request(i=0, n=2):
    return Request(i, IDS[0].clone(), n)


def served(requests=None, **kwargs):
    return lambda: serve(**{"model": gpt(), "requests": [request()] if requests is None else requests,
                            "max_batch": 2, **kwargs})


def accept(p=P, q=Q, drafts=DRAFTS, **kwargs):
    return lambda: speculative_accept(p, q, drafts, **kwargs)


def spec(draft=None, prompt=IDS[0], **kwargs):
    return lambda: speculative_generate(gpt(), gpt(1) if draft is None else draft, prompt,
                                        **{"max_new_tokens": 3, **kwargs})


CASES = merged({
    "GraphedDecodeStep": [
        Bad(lambda: GraphedDecodeStep(None, StaticKVCache(gpt(), 1, 8)), TypeError, rf"model {NOT_GPT}"),
        Bad(lambda: GraphedDecodeStep(gpt(), None), TypeError, r"cache must be a lab\.infer\.StaticKVCache"),
        Bad(lambda: GraphedDecodeStep(gpt(), StaticKVCache(gpt(), 1, 8), warmup=0), ValueError, r"warmup=0"),
        Bad(lambda: GraphedDecodeStep(gpt(), StaticKVCache(gpt(), 1, 8), warmup=True), TypeError,
            r"warmup must be an int, got True"),
        Bad(lambda: GraphedDecodeStep(gpt(), StaticKVCache(tiny_gpt(n_layer=1), 1, 8)), ValueError,
            r"cache holds 1 layers, the model has 2"),
    ],
    "Decoder": [
        Bad(decoder(model="gpt"), TypeError, rf"model {NOT_GPT}, got str"),
        Bad(decoder(batch=0, kv_cache=False), ValueError, r"batch=0 is out of range"),
        Bad(decoder(batch=True), TypeError, r"batch must be an int, got True"),
        Bad(decoder(max_len=17), ValueError, r"max_len=17 is out of range; allowed: \[1, 16\]"),
        Bad(decoder(kv_cache="no"), TypeError, r"kv_cache must be one of \(True, False\), got the str 'no'"),
        Bad(decoder(kv_cache=False, cuda_graph=True), ValueError, r"cuda_graph=True needs kv_cache=True"),
        Bad(extended(lambda d: d.extend(IDS.float())), TypeError, r"ids must have a dtype in"),
        Bad(extended(lambda d: d.extend(IDS[0])), ValueError, r"ids must have 2 dimensions, got shape \(4,\)"),
        Bad(extended(lambda d: d.extend(IDS.to("meta"))), ValueError, r"ids is on meta but the model on cpu"),
        Bad(extended(lambda d: d.extend(torch.ones(1, 5, dtype=torch.int64))), ValueError, r"ids of shape \(1, 5\)"),
        Bad(extended(lambda d: d.rewind(2.5)), TypeError, r"length must be an int, got 2\.5"),
        Bad(extended(lambda d: d.rewind(True)), TypeError, r"length must be an int, got True"),
        Bad(extended(lambda d: d.rewind(5)), ValueError, r"can only rewind to a length in \[0, 4\], got length=5"),
    ],
    "generate": [
        Bad(gen(IDS.float()), TypeError, r"prompt_ids must be an int64 tensor"),
        Bad(gen([1, 2, 3]), TypeError, r"prompt_ids must be an int64 tensor .* got list"),
        Bad(gen(IDS.to("meta")), ValueError, r"prompt_ids is on meta but the model on cpu"),
        Bad(gen(torch.tensor([[1, 61]])), ValueError, r"prompt_ids must lie in \[0, vocab_size=61\)"),
        Bad(gen(max_new_tokens=2.5), TypeError, r"max_new_tokens must be an int, got 2\.5"),
        Bad(gen(max_new_tokens=13), ValueError, r"max_new_tokens \(13\) exceeds the model's context"),
        Bad(gen(seed=True), TypeError, r"seed must be an int, got True"),
        Bad(gen(seed=-1), ValueError, r"seed=-1 is out of range"),
        Bad(gen(kv_cache="no"), TypeError, r"kv_cache must be one of \(True, False\), got the str 'no'"),
        Bad(gen(temperature=float("nan")), ValueError, r"temperature=nan"),
        Bad(gen(eos_token_id=61), ValueError, r"eos_token_id=61 is out of range"),
    ],
    "StaticKVCache": [
        Bad(static(model=None), TypeError, rf"model {NOT_GPT}"),
        Bad(static(dtype=torch.int16), ValueError, r"dtype=torch\.int16 is not allowed"),   # would truncate k, v
        Bad(static(dtype="float16"), TypeError, r"dtype must be a torch dtype"),
        Bad(static(batch=True), TypeError, r"batch must be an int, got True"),
        Bad(static(max_len=0), ValueError, r"max_len=0 is out of range"),
        Bad(static(max_len=17), ValueError, r"max_len=17 is out of range; allowed: \[1, 16\]"),
        Bad(lambda: StaticKVCache(gpt(), 1, 8).attention(POS.float()), TypeError, r"positions must have a dtype in"),
        Bad(lambda: StaticKVCache(gpt(), 1, 8).attention(POS[0]), ValueError, r"positions must have 2 dimensions"),
        Bad(lambda: StaticKVCache(gpt(), 1, 8).attention(POS.expand(2, 4)), ValueError,
            r"positions must have one row per cache row \(1\), got \(2, 4\)"),
        Bad(lambda: StaticKVCache(gpt(), 1, 8).attention(POS, n_keys=9), ValueError, r"n_keys=9 is out of range"),
    ],
    "forward_cached": [
        Bad(cached(model=nn.Linear(2, 2)), TypeError, rf"model {NOT_GPT}, got Linear"),
        Bad(cached(idx=IDS[0]), ValueError, r"idx must have 2 dimensions"),
        Bad(cached(idx=IDS.float()), TypeError, r"idx must have a dtype in"),
        Bad(cached(positions=POS[:, :3]), ValueError, r"positions must have shape \(1, 4\), got \(1, 3\)"),
        Bad(cached(positions=POS.float()), TypeError, r"positions must have a dtype in"),   # rope at 0.0, 1.0, ...
        Bad(cached(attend=None), TypeError, r"attend must be callable"),
    ],
    "masked_attention": [
        Bad(attention(mask=MASK.float()), TypeError, r"mask must have a dtype in \(torch\.bool,\)"),   # added as bias
        Bad(attention(mask=MASK[:, :, :4]), ValueError, r"mask must have shape \(B, T, S\) = \(1, 3, 5\)"),
        Bad(attention(k=torch.randn(1, 3, 5, 8), v=torch.randn(1, 3, 5, 8)), ValueError, r"k and v must have shape"),
        Bad(attention(v=torch.randn(1, 2, 4, 8)), ValueError, r"k and v must have shape .* v \(1, 2, 4, 8\)"),
        Bad(attention(q=QKV[0][0]), ValueError, r"q must have 4 dimensions"),
        Bad(attention(k=QKV[1].double()), TypeError, r"q, k and v must share one floating dtype"),
        Bad(attention(q=QKV[0].long()), TypeError, r"q, k and v must share one floating dtype, got q torch\.int64"),
    ],
    "BlockAllocator": [
        Bad(lambda: BlockAllocator(0, 2), ValueError, r"num_blocks=0 is out of range"),
        Bad(lambda: BlockAllocator(4, 2.5), TypeError, r"block_size must be an int, got 2\.5"),
        Bad(lambda: BlockAllocator(True, 2), TypeError, r"num_blocks must be an int, got True"),
        Bad(allocator(lambda a: a.allocate("b", True)), TypeError, r"n_tokens must be an int, got True"),
        Bad(allocator(lambda a: a.allocate(["b"], 2)), TypeError, r"seq_id must be hashable"),
        Bad(allocator(lambda a: a.blocks_for(2.5)), TypeError, r"n_tokens must be an int, got 2\.5"),
        Bad(allocator(lambda a: a.can_allocate(-1)), ValueError, r"n_tokens=-1 is out of range"),
        Bad(allocator(lambda a: a.slot("a", 1.5)), TypeError, r"position must be an int, got 1\.5"),
        Bad(allocator(lambda a: a.slot("a", True)), TypeError, r"position must be an int, got True"),
        Bad(allocator(lambda a: a.needs_block("b")), ValueError, r"seq_id='b' holds no blocks"),
        Bad(allocator(lambda a: a.append("b")), ValueError, r"seq_id='b' holds no blocks"),
        Bad(allocator(lambda a: (a.release("a"), a.release("a"))), ValueError, r"seq_id='a' holds no blocks"),
    ],
    "PagedKVCache": [
        Bad(paged(model=None), TypeError, rf"model {NOT_GPT}"),
        Bad(paged(dtype=torch.int16), ValueError, r"dtype=torch\.int16 is not allowed"),
        Bad(paged(num_blocks=0), ValueError, r"num_blocks=0 is out of range"),
        Bad(paged(block_size=True), TypeError, r"block_size must be an int, got True"),
        Bad(paged(allocator=dict), TypeError, r"allocator must be BlockAllocator or a subclass of it"),
        Bad(paged(seq_ids="0"), TypeError, r"seq_ids must be a list of sequence ids, one per row, got '0'"),
        Bad(paged(seq_ids=0), TypeError, r"seq_ids must be a list of sequence ids"),
        Bad(paged(seq_ids=(0, 0)), ValueError, r"2 seq_ids for 1 rows of positions"),
        Bad(paged(seq_ids=(5,)), ValueError, r"seq_id=5 holds no blocks"),
        Bad(paged(positions=POS.float()), TypeError, r"positions must have a dtype in"),
        Bad(paged(positions=POS[0]), ValueError, r"positions must have 2 dimensions"),
    ],
    "decode_step_cost": [
        Bad(cost(model=None), TypeError, rf"model {NOT_GPT}"),
        Bad(cost(batch=2.5), TypeError, r"batch must be an int, got 2\.5"),
        Bad(cost(batch=True), TypeError, r"batch must be an int, got True"),
        Bad(cost(batch=0), ValueError, r"batch=0"),
        Bad(cost(context=-1), ValueError, r"context=-1"),
        Bad(cost(kv_cache="no"), TypeError, r"kv_cache must be one of \(True, False\), got the str 'no'"),
        Bad(cost(kv_dtype_bytes=0), ValueError, r"kv_dtype_bytes=0 is out of range"),
        Bad(cost(weights=-5), ValueError, r"weights=-5 is out of range"),
    ],
    "speed_of_light_ms": [
        Bad(lambda: speed_of_light_ms([1e9, 1e12]), TypeError, r"cost must be a dict with 'bytes' and 'flops'"),
        Bad(lambda: speed_of_light_ms({"bytes": 1e9}), TypeError, r"cost must be a dict with 'bytes' and 'flops'"),
        Bad(lambda: speed_of_light_ms({"bytes": -1.0, "flops": 1.0}), ValueError, r"cost\['bytes'\]=-1\.0"),
        Bad(lambda: speed_of_light_ms({"bytes": 1.0, "flops": float("nan")}), ValueError, r"cost\['flops'\]=nan"),
        Bad(lambda: speed_of_light_ms(COST, bandwidth=0), ValueError, r"bandwidth=0 is out of range"),
        Bad(lambda: speed_of_light_ms(COST, peak_flops="1e15"), TypeError, r"peak_flops must be a real number"),
    ],
    "weight_bytes": [
        Bad(lambda: weight_bytes(None), TypeError, rf"model {NOT_GPT}, got NoneType"),
        Bad(lambda: weight_bytes(nn.Linear(2, 2)), TypeError, rf"model {NOT_GPT}, got Linear"),
    ],
    "filter_logits": [
        Bad(lambda: filter_logits(Z, top_k=0), ValueError, r"top_k=0 is out of range"),
        Bad(lambda: filter_logits(Z, top_k=True), TypeError, r"top_k must be an int, got True"),
        Bad(lambda: filter_logits(Z, top_p=1.5), ValueError, r"top_p=1\.5 is out of range"),        # kept all
        Bad(lambda: filter_logits(Z, top_p=float("nan")), ValueError, r"top_p=nan is out of range"),
        Bad(lambda: filter_logits(Z.long(), top_k=2), TypeError, r"logits must be a floating-point tensor"),
        Bad(lambda: filter_logits([1.0, 2.0], top_k=1), TypeError, r"logits must be a torch\.Tensor"),
        Bad(lambda: filter_logits(NAN, top_k=1), ValueError, r"logits has 1 NaN entries"),
    ],
    "next_token_probs": [
        Bad(lambda: next_token_probs(Z, temperature=-1.0), ValueError, r"temperature=-1\.0 is out of range"),
        Bad(lambda: next_token_probs(Z, top_p=0.0), ValueError, r"top_p=0\.0 is out of range"),
        Bad(lambda: next_token_probs(NAN), ValueError, r"logits has 1 NaN entries"),
        Bad(lambda: next_token_probs(torch.tensor(1.0)), TypeError, r"logits must be a floating-point tensor"),
    ],
    "sample": [
        Bad(lambda: sample(Z[None]), ValueError, r"logits must have 1 or 2 dimensions, got shape \(1, 2, 10\)"),
        Bad(lambda: sample(Z, generator="seed"), TypeError, r"generator must be a torch\.Generator or None, got str"),
        Bad(lambda: sample(Z, top_k=2.5), TypeError, r"top_k must be an int, got 2\.5"),
        Bad(lambda: sample(NAN), ValueError, r"logits has 1 NaN entries"),
    ],
    "Request": [
        Bad(lambda: Request(1.0, IDS[0], 2), TypeError, r"id must be an int, got 1\.0"),
        Bad(lambda: Request(0, IDS[0].float(), 2), TypeError, r"prompt must be a 1-D int64 tensor"),
        Bad(lambda: Request(0, IDS, 2), TypeError, r"prompt must be a 1-D int64 tensor .* shape \(1, 4\)"),
        Bad(lambda: Request(0, IDS[0, :0], 2), ValueError, r"prompt is empty"),
        Bad(lambda: Request(0, IDS[0], 0), ValueError, r"max_new_tokens=0 is out of range"),
        Bad(lambda: Request(0, IDS[0], 2, arrival=-1.0), ValueError, r"arrival=-1\.0 is out of range"),
    ],
    "PrefixCachingAllocator": [
        Bad(lambda: PrefixCachingAllocator(0, 2), ValueError, r"num_blocks=0 is out of range"),
        Bad(lambda: PrefixCachingAllocator(2, 2).allocate_prompt("a", [1] * 5), OutOfBlocksError, r"need 3 new"),
        Bad(lambda: PrefixCachingAllocator(2, 2).allocate_prompt([0], [1]), TypeError, r"seq_id must be hashable"),
        Bad(lambda: PrefixCachingAllocator(2, 2).allocate_prompt("a", []), ValueError, r"len\(tokens\)=0 is out"),
        Bad(lambda: PrefixCachingAllocator(2, 2).register("a", [1, 2], 2), ValueError, r"seq_id='a' holds no"),
    ],
    "poisson_arrivals": [
        Bad(lambda: poisson_arrivals(3, 0.0), ValueError, r"rate=0\.0 is out of range"),
        Bad(lambda: poisson_arrivals(2.5, 1.0), TypeError, r"n must be an int, got 2\.5"),
        Bad(lambda: poisson_arrivals(3, 1.0, seed=-1), ValueError, r"seed=-1 is out of range"),
    ],
    "shared_prompt_trace": [
        Bad(lambda: shared_prompt_trace(IDS[0].tolist(), 2, 1.0, 1, 2, (1, 2), (1, 2)), TypeError, r"tokens must be"),
        Bad(lambda: shared_prompt_trace(IDS[0], 2, 1.0, 1, 8, (1, 2), (1, 2)), ValueError, r"shorter than the text"),
        Bad(lambda: shared_prompt_trace(IDS[0], 2, 1.0, 0, 2, (1, 2), (1, 2)), ValueError, r"n_system=0 is out"),
        Bad(lambda: shared_prompt_trace(IDS[0], 2, 1.0, 1, 2, (2, 1), (1, 2)), ValueError, r"lo <= hi"),
    ],
    "roofline_step_time": [
        Bad(lambda: roofline_step_time(None, None), TypeError, rf"model {NOT_GPT}"),
        Bad(lambda: roofline_step_time(gpt(), {"bandwidth": 1e12}), TypeError, r"ceilings must be a lab\.core"),
    ],
    "predicted_row": [
        Bad(lambda: predicted_row("chunked", 8.0, 0), ValueError, r"config='chunked' is not allowed"),
        Bad(lambda: predicted_row("static", 0.0, 0), ValueError, r"rate=0\.0 is out of range"),
        Bad(lambda: predicted_row("static", 8.0, -1), ValueError, r"seed=-1 is out of range"),
    ],
    "paired_comparisons": [
        Bad(lambda: paired_comparisons({"rate": 1.0}, {"x": ("static", "continuous", "ttft_p50")}, [1.0]),
            TypeError, r"rows must be a list"),
        Bad(lambda: paired_comparisons(ROWS, {"x": ("static", "continuous", "ttft")}, [1.0]), ValueError,
            r"metric='ttft' is not allowed"),
        Bad(lambda: paired_comparisons(ROWS, {"x": ("static", "continuous", "ttft_p50")}, 1.0), TypeError,
            r"rates must be a non-empty list"),
        Bad(lambda: paired_comparisons(ROWS, {"x": ("static", "continuous", "ttft_p50")}, [2.0]), ValueError,
            r"rows hold 0 seed\(s\) of config='static' at rate=2\.0"),
    ],
    "schedule": [
        Bad(lambda: schedule([request()], 2, "fifo"), ValueError, r"policy"),
        Bad(lambda: schedule([request(n=13)], 2, context_length=8), ValueError, r"exceeds the context"),
        Bad(lambda: schedule([request()], 2, context_length=2.5), TypeError, r"context_length must be an int"),
    ],
    "serve": [
        Bad(served(model=None), TypeError, rf"model {NOT_GPT}"),
        Bad(served(requests=(r for r in [request()])), TypeError, r"requests must be a list .* got generator"),
        Bad(lambda: serve(gpt(), request(), 2), TypeError, r"requests must be a list .* got Request"),
        Bad(served(requests="abc"), TypeError, r"requests must be a list .* got str"),
        Bad(served(requests=[request(), request()]), ValueError, r"requests must have unique ids, got \[.*\] twice"),
        Bad(served(requests=[request(n=13)]), ValueError, r"request 0: prompt \+ max_new_tokens = 17 tokens"),
        Bad(served(max_batch=True), TypeError, r"max_batch must be an int, got True"),
        Bad(served(policy="fifo"), ValueError, r"policy='fifo' is not allowed"),
        Bad(served(progress="no"), TypeError, r"progress must be one of \(True, False\), got the str 'no'"),
        Bad(served(num_blocks=2.5), TypeError, r"num_blocks must be an int, got 2\.5"),
        Bad(served(block_size=0), ValueError, r"block_size=0 is out of range"),
        Bad(served(policy="static", chunk_size=4), ValueError, r"chunk_size=4 needs policy='continuous'"),
        Bad(served(token_budget=8), ValueError, r"token_budget=8 needs chunk_size"),
        Bad(served(chunk_size=4, token_budget=2), ValueError, r"token_budget=2 is out of range"),
        Bad(served(chunk_size=0), ValueError, r"chunk_size=0 is out of range"),
        Bad(served(prefix_cache="yes"), TypeError, r"prefix_cache must be one of \(True, False\)"),
        Bad(served(step_time=0.1), TypeError, r"step_time must be None or a callable"),
    ],
    "expected_speedup": [
        Bad(lambda: expected_speedup(0.5, 4, -0.1), ValueError, r"cost_ratio=-0\.1 is out of range"),
        Bad(lambda: expected_speedup(0.5, 4, 0.1, verify_ratio=0), ValueError, r"verify_ratio=0 is out of range"),
        Bad(lambda: expected_speedup(1.5, 4, 0.1), ValueError, r"alpha=1\.5 is out of range"),
        Bad(lambda: expected_speedup(0.5, True, 0.1), TypeError, r"k must be an int, got True"),
    ],
    "expected_tokens_per_step": [
        Bad(lambda: expected_tokens_per_step(float("nan"), 4), ValueError, r"alpha=nan is out of range"),
        Bad(lambda: expected_tokens_per_step(0.5, 0), ValueError, r"k=0 is out of range"),
        Bad(lambda: expected_tokens_per_step(0.5, 2.5), TypeError, r"k must be an int, got 2\.5"),
        Bad(lambda: expected_tokens_per_step("0.5", 4), TypeError, r"alpha must be a real number"),
    ],
    "speculative_accept": [
        Bad(accept(drafts=[1, 2]), TypeError, r"draft_tokens must be a torch\.Tensor, got list"),
        Bad(accept(drafts=DRAFTS.float()), TypeError, r"draft_tokens must have a dtype in"),
        Bad(accept(drafts=DRAFTS[None]), ValueError, r"draft_tokens must have 1 dimensions"),
        Bad(accept(drafts=torch.tensor([1, 10])), ValueError, r"draft_tokens must be token ids in \[0, 10\)"),
        Bad(accept(p=P[:, 0], q=Q[:, 0]), ValueError, r"p must have 2 dimensions"),
        Bad(accept(p=P.tolist()), TypeError, r"p must be a torch\.Tensor"),
        Bad(accept(q=torch.randn(2, 10)), ValueError, r"q must hold probabilities"),            # logits, not probs
        Bad(accept(q=Q[:1]), ValueError, r"need p \(k\+1, V\) and q \(k, V\) for k=2"),
        Bad(accept(generator="seed"), TypeError, r"generator must be a torch\.Generator or None, got str"),
    ],
    "speculative_generate": [
        Bad(spec(draft=nn.Linear(2, 2)), TypeError, rf"draft {NOT_GPT}, got Linear"),
        Bad(lambda: speculative_generate(None, gpt(), IDS[0], 3), TypeError, rf"target {NOT_GPT}"),
        Bad(spec(draft=tiny_gpt(vocab_size=50)), ValueError, r"draft vocab_size=50 and target vocab_size=61"),
        Bad(spec(prompt=IDS.expand(2, 4)), ValueError, r"prompt_ids must be one sequence .*, got a batch of 2"),
        Bad(spec(k=0), ValueError, r"k=0 is out of range"),
        Bad(spec(seed=True), TypeError, r"seed must be an int, got True"),
        Bad(spec(cuda_graph="yes"), TypeError, r"cuda_graph must be one of \(True, False\), got the str 'yes'"),
        Bad(spec(max_new_tokens=-1), ValueError, r"max_new_tokens=-1 is out of range"),
        Bad(spec(top_p=0.0), ValueError, r"top_p=0\.0 is out of range"),
    ],
    "speculative_generate_batch": [
        Bad(lambda: speculative_generate_batch(None, gpt(), IDS, 3), TypeError, rf"target {NOT_GPT}"),
        Bad(lambda: speculative_generate_batch(gpt(), tiny_gpt(vocab_size=50), IDS, 3), ValueError, r"draft vocab"),
        Bad(lambda: speculative_generate_batch(gpt(), gpt(1), "1 2 3", 3), TypeError, r"prompt_ids must be a list"),
        Bad(lambda: speculative_generate_batch(gpt(), gpt(1), [], 3), ValueError, r"prompt_ids=\[\] is empty"),
        Bad(lambda: speculative_generate_batch(gpt(), gpt(1), [IDS], 3), ValueError, r"prompt_ids\[0\] must be one"),
        Bad(lambda: speculative_generate_batch(gpt(), gpt(1), IDS, 10), ValueError,
            r"\(4 tokens\) \+ max_new_tokens=10 \+ k=4 = 18 positions exceed the target's context_length=16"),
        Bad(lambda: speculative_generate_batch(gpt(), gpt(1), IDS, 3, k=0), ValueError, r"k=0 is out of range"),
        Bad(lambda: speculative_generate_batch(gpt(), gpt(1), IDS, 3, seed=True), TypeError, r"seed must be an int"),
        Bad(lambda: speculative_generate_batch(gpt(), gpt(1), IDS, 3, temperature=-1), ValueError, r"temperature=-1"),
    ],
    "acceptance_over_rows": [
        Bad(lambda: acceptance_over_rows("rows"), TypeError, r"results must be a list or tuple"),
        Bad(lambda: acceptance_over_rows([1, 2, 3]), TypeError, r"results\[0\] must be a SpeculativeResult, got int"),
        Bad(lambda: acceptance_over_rows(speculative_generate_batch(gpt(), gpt(1), IDS, 3)), ValueError,
            r"at least 3 rows that tested a draft token, got 1"),
    ],
    "predicted_batch_speedup": [
        Bad(lambda: predicted_batch_speedup(None, gpt(), 0.8, 4, 1, 8), TypeError, rf"target {NOT_GPT}"),
        Bad(lambda: predicted_batch_speedup(gpt(), gpt(1), 1.5, 4, 1, 8), ValueError, r"alpha=1\.5 is out of range"),
        Bad(lambda: predicted_batch_speedup(gpt(), gpt(1), 0.8, 2.0, 1, 8), TypeError, r"k must be an int"),
        Bad(lambda: predicted_batch_speedup(gpt(), gpt(1), 0.8, 4, 0, 8), ValueError, r"batch=0 is out of range"),
        Bad(lambda: predicted_batch_speedup(gpt(), gpt(1), 0.8, 4, 1, 8, bandwidth=0), ValueError, r"bandwidth=0"),
    ],
    "crossover_batch": [
        Bad(lambda: crossover_batch(gpt(), "draft", 0.8, 4, 8), TypeError, rf"draft {NOT_GPT}, got str"),
        Bad(lambda: crossover_batch(gpt(), gpt(1), 0.8, 4, 0), ValueError, r"context=0 is out of range"),
        Bad(lambda: crossover_batch(gpt(), gpt(1), 0.8, 4, 8, max_batch=0), ValueError, r"max_batch=0 is out of"),
    ],
    "crossover_formula": [
        Bad(lambda: crossover_formula(gpt(), gpt(1), -0.1, 4, 8), ValueError, r"alpha=-0\.1 is out of range"),
        Bad(lambda: crossover_formula(gpt(), gpt(1), 0.8, 4, 1.5), TypeError, r"context must be an int, got 1\.5"),
        Bad(lambda: crossover_formula(gpt(), gpt(1), 0.8, 4, 8, peak_flops=-1), ValueError, r"peak_flops=-1"),
    ],
}, ANALYSIS)           # the draft, goodness of fit, latency, lookup, roofline, trace (tests.infer.bad_analysis)

NO_INPUT = {
    "OutOfBlocksError": "an exception class: `BlockAllocator` raises it, a caller never builds one",
    "ServeResult": "the record `serve` returns: built by `lab` only, from its own counts",
}
