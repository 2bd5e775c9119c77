"""lab.infer.speculative_batch and suite ``spec-batch`` (`lab.infer.spec_batch_runs`, quick path).

References: `generate` of each row alone (greedy rows must equal it token for token) and `speculative_generate` of
each row alone (the same accepted counts, step by step); a draft equal to the target (every draft token accepted
whatever position each row sits at); the randomized-PIT and log-likelihood tests of `lab.infer.goodness_of_fit`
for sampled rows, which must fail for a rule that accepts every draft token; `expected_speedup` and a linear scan
over B for the roofline prediction and its crossover.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lab.infer import (acceptance_over_rows, crossover_batch, crossover_formula, decode_step_cost, expected_speedup,
                       generate, predicted_batch_speedup)
from lab.infer import speculative_batch as batch_module
from lab.infer import speculative_generate, speculative_generate_batch
from lab.infer.goodness_of_fit import generated_token_probs, ks_uniform_test, log_likelihood_z_test, randomized_pit
from lab.infer.speculative import SpeculativeResult
from lab.models import GPT, GPTConfig
from tests.infer.test_speculative import CFG, _sharp

LENGTHS = (1, 9, 4, 12, 2)                    # ragged prompts: row b sits at its own positions from the start
NEW, K = 20, 3


@pytest.fixture(scope="module")
def pair() -> tuple[GPT, GPT]:
    """test_speculative's pair: a sharp 2-layer target and a flatter 1-layer draft (acceptance ≈ 0.2 when sampling)."""
    return _sharp(0), _sharp(1, n_layer=1, scale=2.0)


@pytest.fixture(scope="module")
def rows() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, CFG.vocab_size, (n,), generator=g) for n in LENGTHS]


def _drafted(accepted: list[int], new_tokens: int, k: int) -> list[int]:
    """The draft lengths a row must have used: min(k, room − 1) before each pass, room = tokens still wanted."""
    out, done = [], 0
    for a in accepted:
        out.append(min(k, new_tokens - done - 1))
        done += a + 1
    return out


def test_greedy_rows_equal_generate_and_single_row_speculation(pair, rows):
    target, draft = pair
    plain = [generate(target, x, NEW) for x in rows]
    single = [speculative_generate(target, draft, x, NEW, k=K).accepted for x in rows]
    for B in range(1, len(rows) + 1):
        results = speculative_generate_batch(target, draft, rows[:B], NEW, k=K)
        assert [r.tokens.tolist() for r in results] == [y.tolist() for y in plain[:B]]
        assert [r.accepted for r in results] == single[:B]           # the same acceptances, pass by pass
    same_length = torch.stack([rows[2], rows[2]])                       # a (B, T0) tensor works too
    results = speculative_generate_batch(target, draft, same_length, NEW, k=K)
    assert all(torch.equal(r.tokens, plain[2]) for r in results)


def test_ragged_bookkeeping_per_row(pair, rows):
    target, draft = pair
    results = speculative_generate_batch(target, draft, rows, NEW, k=4, temperature=1.0, seed=3)
    for r, x in zip(results, rows):
        assert sum(r.accepted) + r.steps == NEW and len(r.tokens) == len(x) + NEW
        assert r.drafted == _drafted(r.accepted, NEW, 4)
        assert torch.equal(r.tokens[:len(x)], x)
    assert len({r.steps for r in results}) > 1                         # rows advanced at different rates
    same = speculative_generate_batch(target, copy.deepcopy(target), rows, 26, k=4)
    for r in same:                                                     # a perfect draft at every row's position
        assert r.accepted == [4] * 5 + [0] and r.drafted == [4] * 5 + [0] and r.acceptance_rate == 1.0


def test_sampled_rows_follow_the_target_and_a_wrong_rule_fails(pair, monkeypatch):
    target, draft = pair
    prompt = torch.tensor([[3, 1, 4]]).expand(64, 3)

    def probs_and_tokens() -> tuple[torch.Tensor, torch.Tensor]:
        results = speculative_generate_batch(target, draft, prompt, 12, k=3, temperature=1.0, seed=0)
        return generated_token_probs(target, torch.stack([r.tokens for r in results]), 3)

    exact = probs_and_tokens()
    assert ks_uniform_test(randomized_pit(*exact, torch.Generator().manual_seed(0)))[1] > 0.01
    assert log_likelihood_z_test(*exact)[1] > 0.01

    def accept_everything(p, q, draft_tokens, generator, check=True):
        return len(draft_tokens), int(torch.multinomial(p[-1], 1, generator=generator))

    monkeypatch.setattr(batch_module, "speculative_accept", accept_everything)
    wrong = probs_and_tokens()
    assert log_likelihood_z_test(*wrong)[1] < 1e-6


def test_acceptance_over_rows_pools_tested_tokens():
    results = [SpeculativeResult(torch.arange(9), [2, 0], [2, 2]), SpeculativeResult(torch.arange(9), [1, 1], [3, 2]),
               SpeculativeResult(torch.arange(9), [0, 3, 0], [3, 3, 1]), SpeculativeResult(torch.arange(9), [0], [0])]
    out = acceptance_over_rows(results)
    assert out["alpha"] == pytest.approx((2 + 2 + 3) / (2 + 1 + 2 + 2 + 1 + 3 + 1))      # the last row tested none
    assert out["tokens_per_step"] == pytest.approx((7 + 8) / 8)
    assert out["alpha_low"] <= out["alpha"] <= out["alpha_high"] and out["rows"] == 4 and out["steps"] == 8
    with pytest.raises(ValueError, match="at least 3 rows"):
        acceptance_over_rows(results[2:])


@pytest.fixture(scope="module")
def shapes() -> tuple[GPT, GPT]:
    """A bf16 target of 8 layers and its 2-layer draft, for the roofline (sizes only: random weights)."""
    config = GPTConfig(vocab_size=512, context_length=64, d_model=128, n_layer=8, n_head=4, n_kv_head=4, d_ff=256)
    torch.manual_seed(0)
    return GPT(config).to(torch.bfloat16), GPT(GPTConfig(**{**config.to_dict(), "n_layer": 2})).to(torch.bfloat16)


def test_prediction_is_memory_bound_at_batch_1_and_loses_at_large_batch(shapes):
    target, draft = shapes
    one = predicted_batch_speedup(target, draft, 0.8, 4, 1, 64)
    c = decode_step_cost(draft, 1, 64)["bytes"] / decode_step_cost(target, 1, 64)["bytes"]
    assert one["verify_memory_bound"] and one["r"] == 1.0 and one["c"] == pytest.approx(c)
    assert one["speedup"] == pytest.approx(expected_speedup(0.8, 4, c))             # E / (ck + 1)
    big = predicted_batch_speedup(target, draft, 0.8, 4, 1 << 14, 1)
    assert not big["verify_memory_bound"] and big["speedup"] < 1


def test_crossover_is_where_the_speedup_falls_below_1(shapes):
    target, draft = shapes
    B = crossover_batch(target, draft, 0.8, 4, 1)
    speedups = [predicted_batch_speedup(target, draft, 0.8, 4, b, 1)["speedup"] for b in (1, B // 2, B - 1, B)]
    assert min(speedups[:-1]) >= 1 > speedups[-1]                       # the first B with S < 1
    formula = crossover_formula(target, draft, 0.8, 4, 1)
    assert formula["crossover"] == pytest.approx(B, abs=1)
    B_v = int(formula["verify_bound"])                                  # compute bound past B_v rows
    bound = [predicted_batch_speedup(target, draft, 0.8, 4, b, 1)["verify_memory_bound"] for b in (B_v, B_v + 1)]
    assert bound == [True, False] and B_v < B
    assert crossover_formula(target, draft, 0.8, 4, 4096) == {"verify_bound": None, "crossover": None}   # long cache
    assert crossover_batch(target, draft, 0.8, 4, 4096, max_batch=1 << 12) is None


def test_suite_quick_path():
    from lab.infer.spec_batch_runs import QUICK, run

    record = run(torch.device("cpu"), quick=True, progress=False)
    assert all(record["live"]["equal_generate"])
    for k in QUICK["ks"]:
        for B in QUICK["batches"]:
            a, s = record["acceptance"][k][B], record["speedup"][k][B]
            assert 0 <= a["alpha"] <= 1 and a["rows"] == QUICK["prompts"]
            assert s["ci_low"] <= s["ratio"] <= s["ci_high"] and s["verdict"] in ("lower", "higher", "equivalent",
                                                                                   "inconclusive")
            assert record["explained"][k][B] > 0
    curve = record["predicted"]["tiny"][4][1]["curve"]
    assert [point["batch"] for point in curve] == QUICK["predicted_batches"]
