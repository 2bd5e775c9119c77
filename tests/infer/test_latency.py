"""lab.infer.latency: per-step latencies, and the measured c, r_k and speed-up of speculative decoding.

References: the definitions c = t_draft / t_target and r_k = t_target(k + 1) / t_target(1), checked
with step times fixed by hand (the timer replaced), and a real run on a tiny random target and its
2-layer student (every figure positive and finite; nothing about speed asserted on a shared CPU).
"""

from __future__ import annotations

import math

import pytest
import torch

from lab.distill import gpt_student
from lab.infer import latency
from lab.infer.latency import speculative_speedup, step_latencies
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
    target, draft = pair
    calls = []

    def fake_steps(model, ids, prompt_len, kv_cache, repeats=1, chunk=1):
        calls.append((model is target, prompt_len, kv_cache, repeats, chunk))
        base = 4.0 if model is target else 1.0
        return [base * (1 + 0.25 * (chunk - 1)), 100.0, base * (1 + 0.25 * (chunk - 1))]  # median: base·(…)

    monkeypatch.setattr(latency, "step_latencies", fake_steps)
    prompts, ids = _inputs()
    out = speculative_speedup(target, draft, prompts, 3, [1, 2], ids, 8, repeats=1, step_repeats=2)
    assert out["target_step_ms"] == 4.0 and out["draft_step_ms"] == 1.0 and out["c"] == 0.25
    assert out["r"] == {1: 1.25, 2: 1.5}
    assert calls == [(True, 8, True, 2, 1), (False, 8, True, 2, 1), (True, 8, True, 2, 2), (True, 8, True, 2, 3)]
    assert out["speedup"] == {k: out["plain_ms"] / out["speculative_ms"][k] for k in (1, 2)}


def test_real_run_gives_positive_finite_figures(pair):
    target, draft = pair
    prompts, ids = _inputs()
    out = speculative_speedup(target, draft, prompts, 4, [1, 3], ids, 16, repeats=1, step_repeats=1)
    assert set(out["r"]) == set(out["speedup"]) == set(out["speculative_ms"]) == {1, 3}
    figures = [out["c"], out["plain_ms"], *out["r"].values(), *out["speedup"].values()]
    assert all(math.isfinite(v) and v > 0 for v in figures)


@pytest.mark.parametrize("bad, match", [(dict(ks=[]), "ks"), (dict(ks=[0]), "ks"), (dict(new_tokens=0), "new_tokens"),
                                        (dict(prompts=torch.zeros(6, dtype=torch.long)), "prompts"),
                                        (dict(ids=torch.zeros(2, 8, dtype=torch.long)), "ids")])
def test_bad_arguments_are_named(pair, bad, match):
    target, draft = pair
    prompts, ids = _inputs()
    kwargs = dict(prompts=prompts, new_tokens=3, ks=[1], ids=ids, prompt_len=8) | bad
    with pytest.raises(ValueError, match=match):
        speculative_speedup(target, draft, **kwargs)


def test_step_latencies(tiny_gpt):
    tiny = tiny_gpt(**STEPS_CFG.to_dict())
    ids = torch.randint(0, 300, (2, 12))
    for kv_cache in (True, False):
        times = step_latencies(tiny, ids, 4, kv_cache, repeats=2)
        assert len(times) == 8 and all(t > 0 for t in times)
    assert len(step_latencies(tiny, ids, 4, True, chunk=3)) == 2             # steps at positions 4 and 7
    with pytest.raises(ValueError, match="prompt_len"):
        step_latencies(tiny, ids, 12, True)
