"""lab.infer.latency: per-step latencies, the measured c and r_k of speculative decoding, and its paired speed-ups.

References: the definitions c = t_draft / t_target and r_k = t_target(k + 1) / t_target(1), checked
with step times fixed by hand (the timer replaced); the speed-up as the paired ratio of interleaved rounds,
checked with round times fixed by hand; and real runs on a tiny random target and its 2-layer student
(every figure positive and finite; nothing about speed asserted on a shared CPU).
"""

from __future__ import annotations

import math

import pytest
import torch

from lab.distill import gpt_student
from lab.infer import latency
from lab.infer.latency import speculative_costs, speculative_speedups, step_latencies
from lab.models import GPT, GPTConfig

STEPS_CFG = GPTConfig(vocab_size=300, context_length=64, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=128)
CFG = GPTConfig(vocab_size=64, context_length=64, d_model=32, n_layer=3, n_head=4, n_kv_head=2, d_ff=64)


@pytest.fixture(scope="module")
def pair() -> tuple[GPT, GPT]:
    torch.manual_seed(0)
    target = GPT(CFG).eval()
    return target, gpt_student(target, 1)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 64, (2, 6), generator=g), torch.randint(0, 64, (1, 24), generator=g)


def test_c_and_r_follow_their_definitions(pair, monkeypatch):
    """c and r_k are ratios of time per step: a sweep's time over its number of steps (24 tokens from
    position 8: 16 one-token steps, 8 two-token steps, 5 three-token steps)."""
    target, draft = pair
    seen = {}

    def fake_rounds(fns, rounds):
        seen.update(keys=list(fns), rounds=rounds)
        per_step = {("target", 1): 4.0, ("draft", 1): 1.0, ("target", 2): 5.0, ("target", 3): 6.0}
        steps = {1: 16, 2: 8, 3: 5}
        return {key: [per_step[key] * steps[key[1]] * f for f in (1.0, 2.0)] for key in fns}   # load doubles

    monkeypatch.setattr(latency, "time_interleaved", fake_rounds)
    _, ids = _inputs()
    out = speculative_costs(target, draft, ids, 8, [1, 2], rounds=2)
    assert seen == {"keys": [("target", 1), ("draft", 1), ("target", 2), ("target", 3)], "rounds": 2}
    assert out["c"] == pytest.approx(0.25) and out["r"] == pytest.approx({1: 1.25, 2: 1.5})
    assert out["target_step_ms"] == pytest.approx(6.0) and out["draft_step_ms"] == pytest.approx(1.5)


def test_speedup_is_the_paired_ratio_of_interleaved_rounds(pair, monkeypatch):
    target, draft = pair
    seen = {}

    def fake_rounds(fns, rounds):
        seen.update(names=list(fns), rounds=rounds)
        return {name: ([10.0, 20.0, 40.0] if name.startswith("plain") else [5.0, 10.0, 10.0]) for name in fns}

    monkeypatch.setattr(latency, "time_interleaved", fake_rounds)
    prompts, _ = _inputs()
    out = speculative_speedups(target, draft, prompts, 3, {"greedy, k = 2": (2, 0.0), "k = 1": (1, 1.0)}, rounds=3)
    assert seen == {"names": ["plain, τ = 0", "plain, τ = 1", "greedy, k = 2", "k = 1"], "rounds": 3}
    ratio = math.exp((math.log(2) + math.log(2) + math.log(4)) / 3)            # geometric mean of 2, 2, 4
    assert out["k = 1"]["ratio"] == pytest.approx(ratio) and out["k = 1"]["n"] == 3
    assert out["k = 1"]["ci_low"] < ratio < out["k = 1"]["ci_high"]
    assert out["greedy, k = 2"]["plain_ms"] == 20.0 and out["greedy, k = 2"]["speculative_ms"] == 10.0
    from scipy.stats import ttest_1samp
    assert out["k = 1"]["p"] == pytest.approx(ttest_1samp([math.log(2), math.log(2), math.log(4)], 0).pvalue)
    assert out["k = 1"]["verdict"] in ("higher", "inconclusive")       # 3 rounds: Holm over the two runs decides
    assert out["k = 1"]["verdict"] == ("higher" if min(1, 2 * out["k = 1"]["p"]) < 0.05 else "inconclusive")


def test_real_run_gives_positive_finite_figures(pair):
    target, draft = pair
    prompts, ids = _inputs()
    costs = speculative_costs(target, draft, ids, 16, [1, 3], rounds=2)
    out = speculative_speedups(target, draft, prompts, 4, {"k = 1": (1, 1.0), "greedy": (3, 0.0)}, rounds=2)
    assert set(costs["r"]) == {1, 3} and set(out) == {"k = 1", "greedy"}
    figures = [costs["c"], *costs["r"].values(), *(v for r in out.values() for k, v in r.items() if k != "verdict")]
    assert all(math.isfinite(v) and v > 0 for v in figures)
    assert all(r["verdict"] in ("lower", "higher", "equivalent", "inconclusive") for r in out.values())


@pytest.mark.parametrize("bad, match", [(dict(runs={}), "runs"), (dict(runs={"a": (0, 1.0)}), "ks"),
                                        (dict(new_tokens=0), "new_tokens"),
                                        (dict(prompts=torch.zeros(6, dtype=torch.long)), "prompts")])
def test_bad_arguments_are_named(pair, bad, match):
    target, draft = pair
    prompts, _ = _inputs()
    kwargs = dict(prompts=prompts, new_tokens=3, runs={"k = 1": (1, 1.0)}) | bad
    with pytest.raises(ValueError, match=match):
        speculative_speedups(target, draft, **kwargs)
    _, ids = _inputs()
    with pytest.raises(ValueError, match="ids"):
        speculative_costs(target, draft, torch.zeros(2, 8, dtype=torch.long), 4, [1])
    with pytest.raises(ValueError, match="ks"):
        speculative_costs(target, draft, ids, 4, [])
    with pytest.raises(ValueError, match="prompt_len=22"):
        speculative_costs(target, draft, ids, 22, [2])


def test_step_latencies(tiny_gpt):
    tiny = tiny_gpt(**STEPS_CFG.to_dict())
    ids = torch.randint(0, 300, (2, 12))
    for kv_cache in (True, False):
        times = step_latencies(tiny, ids, 4, kv_cache, repeats=2)
        assert len(times) == 8 and all(t > 0 for t in times)
    assert len(step_latencies(tiny, ids, 4, True, chunk=3)) == 2             # steps at positions 4 and 7
    for kv_cache in (True, False):                                          # every 3rd step: 4, 7 and 10
        assert len(step_latencies(tiny, ids, 4, kv_cache, stride=3)) == 3
    assert len(step_latencies(tiny, ids, 4, True, chunk=2, stride=5)) == 2   # steps at positions 4 and 9
    with pytest.raises(ValueError, match="stride"):
        step_latencies(tiny, ids, 4, True, stride=0)
    with pytest.raises(ValueError, match="prompt_len"):
        step_latencies(tiny, ids, 12, True)
