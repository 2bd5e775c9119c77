"""lab.infer.scheduler with prefix caching and chunked prefill, on a clock (lab.infer.load, lab.infer.requests), and
the serving record's parts (lab.infer.serving_runs).

References: `lab.infer.generate` run on each request alone for every output; `schedule` (the dry run) for
`serve`'s steps; latencies worked out by hand under a cost model of one second per step; the roofline's
`decode_step_cost` for a step of decode rows.
"""

from __future__ import annotations

import pytest
import torch

from lab.core.ceilings import datasheet_ceilings
from lab.infer import (PagedKVCache, Request, decode_step_cost, generate, paired_comparisons, poisson_arrivals,
                       predicted_row, roofline_step_time, schedule, serve, shared_prompt_trace, speed_of_light_ms)
from lab.infer.serving_runs import _h100_7b
from lab.infer.suite import LLAMA2_7B_SHAPE
from lab.models import GPTConfig

CFG = GPTConfig(vocab_size=101, context_length=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64)
TEXT = torch.randint(0, 101, (500,), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny(tiny_gpt):
    return tiny_gpt(**CFG.to_dict())


@pytest.fixture(scope="module")
def trace():
    """12 requests over 2 system prompts of 10 tokens, one of them twice as a whole prompt (a full hit)."""
    requests = shared_prompt_trace(TEXT, 11, 50.0, 2, 10, (1, 9), (1, 16), seed=3)
    twin = requests[0]
    return requests + [Request(11, twin.prompt[:8].clone(), 5, twin.arrival), Request(12, twin.prompt[:8].clone(), 7)]


@pytest.fixture(scope="module")
def alone(tiny, trace):
    return {r.id: generate(tiny, r.prompt, r.max_new_tokens)[len(r.prompt):] for r in trace}


def cost(spans: list[tuple[int, int]]) -> float:
    """A step cost model (seconds), so that the dry run's clock, and so its admissions, are `serve`'s."""
    return 0.004 + 0.0005 * sum(n for _, n in spans)


MODES = {"prefix": {"prefix_cache": True}, "chunked": {"chunk_size": 3},
         "chunked+prefix": {"chunk_size": 4, "token_budget": 6, "prefix_cache": True}}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_blocks", [None, 10])                        # 10 blocks of 4: preemption
def test_outputs_equal_generate_and_steps_equal_the_dry_run(tiny, trace, alone, mode, num_blocks, monkeypatch):
    copies = []
    copy = PagedKVCache.copy_block
    monkeypatch.setattr(PagedKVCache, "copy_block", lambda self, *blocks: copies.append(blocks) or copy(self, *blocks))
    real = serve(tiny, trace, 4, num_blocks=num_blocks, block_size=4, step_time=cost, **MODES[mode])
    assert all(torch.equal(real.outputs[i], alone[i]) for i in alone)
    dry = schedule(trace, 4, context_length=64, num_blocks=num_blocks, block_size=4, step_time=cost, **MODES[mode])
    assert (dry.steps, dry.active_rows, dry.prefill_tokens, dry.preemptions, dry.cached_prefix_tokens) == (
        real.steps, real.active_rows, real.prefill_tokens, real.preemptions, real.cached_prefix_tokens)
    assert (dry.first_token, dry.finish) == (real.first_token, real.finish)
    assert (real.preemptions > 0) == (num_blocks is not None)
    prompt_tokens = sum(len(r.prompt) for r in trace)
    if "prefix" in mode:               # every prompt token is either found in the cache or run (once or again)
        assert copies and real.cached_prefix_tokens >= 8 + 7                 # requests 11, 12: whole-prompt hits
        assert real.prefill_tokens + real.cached_prefix_tokens >= prompt_tokens
    else:
        assert real.cached_prefix_tokens == 0 and real.prefill_tokens >= prompt_tokens
    if "chunk_size" in MODES[mode]:
        budget = MODES[mode].get("token_budget", 4 + MODES[mode]["chunk_size"])
        assert max(d + p for d, p in real.steps) <= budget


def test_chunks_bound_the_prefill_work_of_a_step_and_the_default_budget(tiny, trace):
    whole = schedule(trace, 4, context_length=64, block_size=4)
    chunked = schedule(trace, 4, context_length=64, block_size=4, chunk_size=2)
    assert max(p for _, p in whole.steps) > 6
    assert all(d + p <= 4 + 2 for d, p in chunked.steps)                   # token_budget = max_batch + C
    with pytest.raises(ValueError, match="needs policy='continuous'"):
        serve(tiny, trace, 2, "static", chunk_size=4)
    with pytest.raises(ValueError, match="token_budget=4 is out of range"):
        schedule(trace, 4, chunk_size=4, token_budget=4)


def test_latencies_on_a_clock_of_one_second_per_step():
    r0 = Request(0, torch.arange(4), 3)                  # arrives at 0
    r1 = Request(1, torch.arange(4), 2, arrival=10.0)    # arrives while nothing runs: the clock jumps
    result = schedule([r1, r0], 2, context_length=16, step_time=lambda spans: 1.0)
    # steps: [prefill r0 + decode] → t = 1: tokens 1, 2; [decode] → t = 2: token 3; jump to 10; [r1] → t = 11
    assert result.first_token == {0: 1.0, 1: 11.0} and result.finish == {0: 2.0, 1: 11.0}
    assert result.first_tokens == {0: 2, 1: 2}                 # a whole prefill's row decodes in its step too
    assert result.ttft == {0: 1.0, 1: 1.0} and result.tpot == {0: 1.0, 1: 0.0}     # (2 − 1) / (3 − 2); 2 of 2
    assert result.percentiles("ttft") == {"p50": 1.0, "p90": 1.0, "p99": 1.0}
    assert result.goodput(1.0, 0.25) == pytest.approx(1 / 11) and result.goodput(1.0, 1.0) == pytest.approx(2 / 11)
    with pytest.raises(ValueError, match="metric='e2e' is not allowed"):
        result.percentiles("e2e")


def test_requests_wait_for_their_arrival_and_poisson_gaps_have_mean_one_over_rate(tiny):
    arrivals = poisson_arrivals(4000, 8.0, seed=1)
    gaps = torch.diff(torch.tensor([0.0] + arrivals))
    assert arrivals == poisson_arrivals(4000, 8.0, seed=1) and (gaps > 0).all()
    assert abs(gaps.mean().item() - 1 / 8) < 4 * (1 / 8) / 4000 ** 0.5        # sd of Exp(λ) is 1/λ
    trace = shared_prompt_trace(TEXT, 6, 2.0, 2, 8, (1, 4), (2, 5), seed=0)
    assert len({tuple(r.prompt[:8].tolist()) for r in trace}) <= 2
    result = serve(tiny, trace, 3, chunk_size=4, prefix_cache=True)
    assert all(result.first_token[r.id] > r.arrival and result.finish[r.id] >= result.first_token[r.id]
               for r in trace)


def test_a_chunk_rides_free_on_a_memory_bound_step_and_a_long_prefill_is_compute_bound():
    big = _h100_7b()[0]                                                   # Llama-2-7B's shape, bf16, on meta
    assert big.config == LLAMA2_7B_SHAPE and big.lm_head.weight.dtype == torch.bfloat16
    h100 = datasheet_ceilings()
    step_time = roofline_step_time(big, h100)
    decode = [(999, 1)] * 32                                              # 32 rows at context 1,000
    sol = speed_of_light_ms(decode_step_cost(big, 32, 1000), h100.bandwidth, h100.peak_flops)
    assert step_time(decode) == pytest.approx(sol["ms"] / 1e3, rel=1e-12) and sol["memory_ms"] > sol["compute_ms"]
    assert step_time(decode) < step_time(decode + [(0, 256)]) < 1.01 * step_time(decode)   # + the chunk's keys only
    prefill = [step_time([(0, T)]) for T in (1024, 2048, 4096)]            # compute bound: ∝ tokens, + attention
    assert all(2.0 < b / a < 2.3 for a, b in zip(prefill, prefill[1:]))
    assert step_time([(1024, 1024)]) > step_time([(0, 1024)])             # the same tokens, after a cached prefix


def test_the_predicted_runs_are_deterministic_and_comparisons_pair_seeds():
    rows = [predicted_row("continuous+chunked+prefix", 8.0, seed, quick=True) for seed in (0, 0, 1)]
    assert rows[0] == rows[1] and rows[0] != rows[2] and rows[0]["cached_prefix_tokens"] > 0
    rows = [{"rate": 1.0, "seed": s, "config": config,
             "ttft_p50": (1.0 + s) * (1 if config == "static" else 0.5 + 0.01 * s)}
            for s in range(5) for config in ("static", "continuous")]
    pairs = {"halved": ("static", "continuous", "ttft_p50"), "same": ("static", "static", "ttft_p50")}
    out = paired_comparisons(rows, pairs, [1.0])
    assert out["halved", 1.0]["ratio"] == pytest.approx(0.52, abs=0.002) and out["halved", 1.0]["verdict"] == "lower"
    assert (out["same", 1.0]["ratio"], out["same", 1.0]["p"], out["same", 1.0]["verdict"]) == (1.0, 1.0, "equivalent")


def test_the_serving_suite_runs_quick():
    from lab.infer.serving_runs import CONFIGS, PREDICTED_QUICK, QUICK, run

    record = run(torch.device("cpu"), quick=True, progress=False)
    assert len(record["rows"]) == len(record["seeds"]) * len(QUICK["rates"]) * len(CONFIGS)
    predicted = record["predicted_h100"]
    assert len(predicted["rows"]) == len(predicted["seeds"]) * len(PREDICTED_QUICK["rates"]) * len(CONFIGS)
    assert predicted["source"].startswith("datasheet") and predicted["rows"][0] == predicted_row(
        CONFIGS[0], PREDICTED_QUICK["rates"][0], 0, quick=True)
    assert {row["config"] for row in record["rows"]} == set(CONFIGS)
    for row in record["rows"] + record["sweep"]:
        assert row["ttft_p50"] <= row["ttft_p99"] and len(row["ttft"]) == QUICK["requests"]
        assert (row["cached_prefix_tokens"] > 0) == row["config"].endswith("prefix")
    with pytest.raises(ValueError, match="suite serving runs on the cpu"):
        run(torch.device("meta"), quick=True)
