"""The bad-input cases of lab.infer's measuring tools (part of tests/infer/test_bad_input.py's table): the draft and
its teacher-forced scores, the goodness-of-fit tests, the latency sweeps, prompt lookup, the roofline model, the
serving trace and the speculative result record.

Every call is refused before a model runs or a clock starts: the tiny GPT of `tests.tiny_models` (vocabulary 61,
context 16) and a one-window evaluation sample are all they need.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from lab.infer import (SpeculativeResult, attainable_flops, decoder_linear_bytes_at, generated_token_probs,
                       ks_uniform_test, kv_bytes_per_position, load_draft, log_likelihood_z_test, matmul_cost,
                       prefill_crossover_tokens, randomized_pit, sample_lookup_drafts, speculative_costs,
                       speculative_speedups, step_latencies, synthetic_trace, teacher_forced)
from lab.perplexity import EvalSample
from tests.bad_input import NOT_GPT, Bad
from tests.tiny_models import tiny_gpt

gpt = functools.cache(tiny_gpt)
IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])                       # (1, 8) int64 token ids
WINDOW = torch.tensor([1, 2, 3, 1, 2, 3, 4, 5])                       # 2 tokens of context, 6 scored
SAMPLE = EvalSample((WINDOW,), (2,), WINDOW[2:].clone(), torch.zeros(6, dtype=torch.int64))
TEXT = torch.arange(100) % 61                                         # a "text" of 100 token ids
PROBS = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), -1)   # (N, V)
TOKENS = torch.tensor([0, 1, 2, 3, 4])
U = torch.rand(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def forced(sample=SAMPLE, drafts=None, target=gpt, draft=lambda: gpt(1)):
    """teacher_forced on the tiny pair; ``target`` and ``draft`` are built when the call runs."""
    return lambda: teacher_forced(target(), draft(), sample, drafts)


def gtp(sequences=IDS, prompt_len=2, model=gpt, **kwargs):
    return lambda: generated_token_probs(model(), sequences, prompt_len, **kwargs)


def latencies(ids=IDS, prompt_len=2, kv_cache=True, model=gpt, **kwargs):
    return lambda: step_latencies(model(), ids, prompt_len, kv_cache, **kwargs)


def costs(ids=IDS, prompt_len=2, ks=(1, 2), target=gpt, **kwargs):
    return lambda: speculative_costs(target(), gpt(1), ids, prompt_len, ks, **kwargs)


def speedups(prompts=IDS, new_tokens=3, runs=None, target=gpt, **kwargs):
    return lambda: speculative_speedups(target(), gpt(1), prompts, new_tokens,
                                        {"k = 1": (1, 1.0)} if runs is None else runs, **kwargs)


def trace(tokens=TEXT, n_requests=3, prompt_lengths=(2, 5), output_lengths=(1, 2), **kwargs):
    return lambda: synthetic_trace(tokens, n_requests, prompt_lengths, output_lengths, **kwargs)


def result(tokens=IDS[0], accepted=(2, 0), drafted=(2, 2)):
    return lambda: SpeculativeResult(tokens, list(accepted) if isinstance(accepted, tuple) else accepted,
                                     list(drafted) if isinstance(drafted, tuple) else drafted)


ANALYSIS = {
    "load_draft": [
        Bad(lambda: load_draft(dtype=torch.int8), ValueError, r"dtype=torch\.int8 is not allowed"),
        Bad(lambda: load_draft(3), TypeError, r"path must be a path .*got 3"),
        Bad(lambda: load_draft(__file__), ValueError, r"path=.*bad_analysis\.py' is an existing file"),
    ],
    "teacher_forced": [
        Bad(forced(target=lambda: nn.Linear(2, 2)), TypeError, rf"target {NOT_GPT}, got Linear"),
        Bad(forced(draft=lambda: tiny_gpt(vocab_size=50)), ValueError, r"draft vocab_size=50 and target vocab_size=61"),
        Bad(forced(sample=[WINDOW]), TypeError, r"sample must be a lab\.perplexity\.EvalSample .* got list"),
        Bad(forced(sample=EvalSample((torch.arange(20),), (2,), torch.arange(2, 20), torch.zeros(18).long())),
            ValueError, r"sample has windows of 20 tokens, more than the target's context_length=16"),
        Bad(forced(sample=EvalSample((WINDOW + 60,), (2,), WINDOW[2:] + 60, torch.zeros(6).long())), ValueError,
            r"sample\.inputs must be token ids in \[0, vocab_size=61\), got values in \[61, 65\]"),
        Bad(forced(drafts=[WINDOW[2:]]), TypeError, r"drafts must be None or a dict"),
        Bad(forced(drafts={"n1": [1] * 6}), TypeError, r"drafts\['n1'\] must be a torch\.Tensor, got list"),
        Bad(forced(drafts={"n1": WINDOW}), ValueError, r"drafts\['n1'\] must be \(n,\) = \(6,\) int64"),
        Bad(forced(drafts={"n1": torch.full((6,), -5)}), ValueError,    # was read as "no draft"
            r"drafts\['n1'\] must be token ids in \[0, 61\) or -1 \(no draft\), got values in \[-5, -5\]"),
        Bad(forced(drafts={"n1": torch.full((6,), 61)}), ValueError, r"drafts\['n1'\] must be token ids in \[0, 61\)"),
    ],
    "generated_token_probs": [
        Bad(gtp(model=lambda: nn.Linear(2, 2)), TypeError, rf"model {NOT_GPT}, got Linear"),
        Bad(gtp(sequences=IDS[0]), ValueError, r"sequences must have 2 dimensions, got shape \(8,\)"),
        Bad(gtp(sequences=IDS.tolist()), TypeError, r"sequences must be a torch\.Tensor, got list"),
        Bad(gtp(sequences=IDS + 60), ValueError, r"sequences must be token ids in \[0, vocab_size=61\)"),
        Bad(gtp(sequences=torch.ones(1, 30, dtype=torch.int64)), ValueError,
            r"sequences of 30 tokens need 29 positions, more than the model's context_length=16"),
        Bad(gtp(prompt_len=True), TypeError, r"prompt_len must be an int, got True"),
        Bad(gtp(prompt_len=8), ValueError, r"prompt_len=8 is out of range; allowed: \[1, 7\]"),
        Bad(gtp(temperature=float("nan")), ValueError, r"temperature=nan is out of range"),
        Bad(gtp(top_p=1.5), ValueError, r"top_p=1\.5 is out of range"),
    ],
    "ks_uniform_test": [
        Bad(lambda: ks_uniform_test(U.tolist()), TypeError, r"u must be a torch\.Tensor, got list"),
        Bad(lambda: ks_uniform_test(torch.tensor([0.1, float("nan")])), ValueError,      # was D = nan, p = 0
            r"u contains NaN or infinite entries"),
        Bad(lambda: ks_uniform_test(U + 0.5), ValueError, r"u must lie in \[0, 1\]"),      # was a p-value
        Bad(lambda: ks_uniform_test(torch.tensor([0, 1])), TypeError, r"u must be a floating-point tensor"),
        Bad(lambda: ks_uniform_test(U[None]), ValueError, r"u must be a non-empty 1-D tensor, got shape \(1, 50\)"),
    ],
    "randomized_pit": [
        Bad(lambda: randomized_pit(PROBS.tolist(), TOKENS), TypeError, r"probs must be a torch\.Tensor, got list"),
        Bad(lambda: randomized_pit(torch.randn(5, 7), TOKENS), ValueError,                  # logits: u was 0
            r"probs must hold probabilities: finite, >= 0, rows summing to 1"),
        Bad(lambda: randomized_pit(PROBS, TOKENS.float()), TypeError, r"tokens must have a dtype in"),
        Bad(lambda: randomized_pit(PROBS, TOKENS[:4]), ValueError, r"need probs \(N, V\) and tokens \(N,\)"),
        Bad(lambda: randomized_pit(PROBS, TOKENS + 3), ValueError, r"tokens must be token ids in \[0, 7\)"),
        Bad(lambda: randomized_pit(PROBS, TOKENS, 3), TypeError, r"generator must be a torch\.Generator or None"),
    ],
    "log_likelihood_z_test": [
        Bad(lambda: log_likelihood_z_test(torch.randn(5, 7), TOKENS), ValueError,           # was z = nan
            r"probs must hold probabilities"),
        Bad(lambda: log_likelihood_z_test(torch.eye(7)[:5], TOKENS), ValueError,             # was z = nan
            r"probs are one-hot in every row"),
        Bad(lambda: log_likelihood_z_test(PROBS[:0], TOKENS[:0]), ValueError, r"tokens is empty"),   # was z = nan
        Bad(lambda: log_likelihood_z_test(PROBS, TOKENS - 1), ValueError, r"tokens must be token ids in \[0, 7\)"),
        Bad(lambda: log_likelihood_z_test(PROBS[0], TOKENS), ValueError, r"probs must have 2 dimensions"),
    ],
    "step_latencies": [
        Bad(latencies(model=lambda: None), TypeError, rf"model {NOT_GPT}, got NoneType"),
        Bad(latencies(ids=IDS[0]), ValueError, r"ids must have 2 dimensions, got shape \(8,\)"),
        Bad(latencies(ids=IDS.float()), TypeError, r"ids must have a dtype in"),
        Bad(latencies(ids=IDS + 60), ValueError, r"ids must be token ids in \[0, vocab_size=61\)"),
        Bad(latencies(prompt_len=True), TypeError, r"prompt_len must be an int, got True"),       # was timed
        Bad(latencies(prompt_len=2.5), TypeError, r"prompt_len must be an int, got 2\.5"),
        Bad(latencies(prompt_len=8), ValueError, r"prompt_len=8 is out of range; allowed: \[1, 7\]"),
        Bad(latencies(chunk=7), ValueError, r"chunk=7 is out of range; allowed: \[1, 6\]"),        # was []
        Bad(latencies(kv_cache="no"), TypeError, r"kv_cache must be one of \(True, False\), got the str 'no'"),
        Bad(latencies(repeats=0), ValueError, r"repeats=0 is out of range"),
    ],
    "speculative_costs": [
        Bad(costs(target=lambda: None), TypeError, rf"target {NOT_GPT}, got NoneType"),
        Bad(costs(ks=2), TypeError, r"ks must be a list of draft lengths .*got 2 \(int\)"),
        Bad(costs(ks="12"), TypeError, r"ks must be a list of draft lengths"),
        Bad(costs(ks=[True]), TypeError, r"ks\[0\] must be an int, got True"),
        Bad(costs(ks=[]), ValueError, r"ks must be a non-empty list"),
        Bad(costs(ids=IDS.float()), TypeError, r"ids must have a dtype in"),
        Bad(costs(ids=IDS.expand(2, 8)), ValueError, r"ids must be \(1, T\) token ids, got shape \(2, 8\)"),
        Bad(costs(prompt_len=2.5), TypeError, r"prompt_len must be an int, got 2\.5"),
        Bad(costs(prompt_len=6), ValueError, r"prompt_len=6 must leave room for a step of 3 tokens"),
        Bad(costs(rounds=1), ValueError, r"rounds=1 is out of range; allowed: \[2, inf\)"),
    ],
    "speculative_speedups": [
        Bad(speedups(target=lambda: None), TypeError, rf"target {NOT_GPT}, got NoneType"),
        Bad(speedups(prompts=IDS.tolist()), TypeError, r"prompts must be a torch\.Tensor, got list"),
        Bad(speedups(prompts=IDS.int()), TypeError, r"prompts must have a dtype in \(torch\.int64,\)"),
        Bad(speedups(prompts=IDS[0]), ValueError, r"prompts must be \(P, T0\) token ids"),
        Bad(speedups(prompts=IDS + 60), ValueError, r"prompts must be token ids in \[0, vocab_size=61\)"),
        Bad(speedups(new_tokens=9), ValueError, r"prompts of 8 tokens \+ new_tokens=9 exceed the target's"),
        Bad(speedups(runs=[(1, 1.0)]), TypeError, r"runs must be a dict \{name: \(k, temperature\)\}, got list"),
        Bad(speedups(runs={"k1": 1}), TypeError, r"runs\['k1'\] must be a pair \(k, temperature\), got 1"),
        Bad(speedups(runs={"k1": (1, "1.0")}), TypeError, r"runs\['k1'\] temperature must be a real number"),
        Bad(speedups(runs={"plain, τ = 1": (1, 1.0)}), ValueError,    # overwrote the plain run it is compared with
            r"runs\['plain, τ = 1'\]: names starting with 'plain, τ = ' are taken"),
        Bad(speedups(seed=True), TypeError, r"seed must be an int, got True"),
        Bad(speedups(rounds=1), ValueError, r"rounds=1 is out of range"),
    ],
    "sample_lookup_drafts": [
        Bad(lambda: sample_lookup_drafts([WINDOW]), TypeError, r"sample must be a lab\.perplexity\.EvalSample"),
        Bad(lambda: sample_lookup_drafts(SAMPLE, 0), ValueError, r"n=0 is out of range"),
        Bad(lambda: sample_lookup_drafts(SAMPLE, True), TypeError, r"n must be an int, got True"),
    ],
    "attainable_flops": [
        Bad(lambda: attainable_flops("10", 1e12, 1e15), TypeError, r"intensity must be a real number, got '10'"),
        Bad(lambda: attainable_flops(-1.0, 1e12, 1e15), ValueError, r"intensity=-1\.0 is out of range"),   # was < 0
        Bad(lambda: attainable_flops(float("nan"), 1e12, 1e15), ValueError, r"intensity=nan is out of range"),
        Bad(lambda: attainable_flops(True, 1e12, 1e15), TypeError, r"intensity must be a real number, got True"),
        Bad(lambda: attainable_flops(torch.tensor([1.0, -2.0]), 1e12, 1e15), ValueError,
            r"intensity must be finite and >= 0 \(FLOP/byte\), got values in \[-2, 1\]"),
        Bad(lambda: attainable_flops(torch.tensor([True]), 1e12, 1e15), TypeError, r"intensity must be a tensor of"),
        Bad(lambda: attainable_flops(10.0, bandwidth=0), ValueError, r"bandwidth=0 is out of range"),
    ],
    "decoder_linear_bytes_at": [
        Bad(lambda: decoder_linear_bytes_at(None, 4), TypeError, rf"model {NOT_GPT}, got NoneType"),
        Bad(lambda: decoder_linear_bytes_at(gpt(), -4), ValueError, r"bits_per_weight=-4 is out of range"),   # < 0
        Bad(lambda: decoder_linear_bytes_at(gpt(), "4"), TypeError, r"bits_per_weight must be a real number"),
        Bad(lambda: decoder_linear_bytes_at(gpt(), True), TypeError, r"bits_per_weight must be a real number"),
    ],
    "kv_bytes_per_position": [
        Bad(lambda: kv_bytes_per_position(None, 2), TypeError, rf"model {NOT_GPT}, got NoneType"),
        Bad(lambda: kv_bytes_per_position(gpt(), 0), ValueError, r"dtype_bytes=0 is out of range"),           # was 0
        Bad(lambda: kv_bytes_per_position(gpt(), torch.bfloat16), TypeError,
            r"dtype_bytes must be a real number, got torch\.bfloat16"),
        Bad(lambda: kv_bytes_per_position(gpt(), True), TypeError, r"dtype_bytes must be a real number, got True"),
    ],
    "matmul_cost": [
        Bad(lambda: matmul_cost(0, 8, 8), ValueError, r"M=0 is out of range"),
        Bad(lambda: matmul_cost(1, 8.0, 8), TypeError, r"N must be an int, got 8\.0"),
        Bad(lambda: matmul_cost(1, 8, 8, bits_per_weight=0), ValueError, r"bits_per_weight=0 is out of range"),
        Bad(lambda: matmul_cost(1, 8, 8, act_bytes=True), TypeError, r"act_bytes must be a real number, got True"),
    ],
    "prefill_crossover_tokens": [
        Bad(lambda: prefill_crossover_tokens(None, 1e12, 1e15), TypeError, rf"model {NOT_GPT}"),
        Bad(lambda: prefill_crossover_tokens(gpt(), -1.0, 1e15), ValueError, r"bandwidth=-1\.0 is out of range"),
        Bad(lambda: prefill_crossover_tokens(gpt(), 1e12, 1e15, batch=0), ValueError, r"batch=0 is out of range"),
        Bad(lambda: prefill_crossover_tokens(gpt(), 1e12, 1e15, weights="1"), TypeError,
            r"weights must be a real number"),
    ],
    "synthetic_trace": [
        Bad(trace(tokens=TEXT.tolist()), TypeError, r"tokens must be a torch\.Tensor, got list"),
        Bad(trace(tokens=TEXT[None]), ValueError, r"tokens must have 1 dimensions, got shape \(1, 100\)"),
        Bad(trace(tokens=TEXT.float()), TypeError, r"tokens must have a dtype in \(torch\.int64,\)"),
        Bad(trace(n_requests=True), TypeError, r"n_requests must be an int, got True"),
        Bad(trace(prompt_lengths=5), TypeError, r"prompt_lengths must be a pair \(lo, hi\) of ints, got 5"),
        Bad(trace(prompt_lengths=(2.5, 5)), TypeError, r"prompt_lengths lo must be an int, got 2\.5"),
        Bad(trace(output_lengths=(1, True)), TypeError, r"output_lengths hi must be an int, got True"),
        Bad(trace(prompt_lengths=(5, 2)), ValueError, r"need 1 <= lo <= hi .* prompt_lengths=\(5, 2\)"),
        Bad(trace(prompt_lengths=(2, 100)), ValueError,
            r"prompts shorter than the text, got prompt_lengths=\(2, 100\).*, 100 tokens"),
        Bad(trace(seed=-1), ValueError, r"seed=-1 is out of range"),
        Bad(trace(seed=2.5), TypeError, r"seed must be an int, got 2\.5"),
    ],
    "SpeculativeResult": [     # chapter 6's notebook pools the counts of several runs into one
        Bad(result(tokens=[1, 2]), TypeError, r"tokens must be a torch\.Tensor, got list"),
        Bad(result(accepted=(2,)), ValueError, r"accepted and drafted must have one entry per step, got 1 and 2"),
        Bad(result(accepted=(3, 0)), ValueError, r"accepted\[0\]=3 is out of range; allowed: \[0, 2\]"),
        Bad(result(drafted=(2, -1)), ValueError, r"drafted\[1\]=-1 is out of range"),
        Bad(result(accepted=3), TypeError, r"accepted must be a list of ints, one per step, got int"),
        Bad(result(accepted=(1.0, 0)), TypeError, r"accepted\[0\] must be an int, got 1\.0"),
    ],
}
