"""lab.infer.speculative and lab.infer.goodness_of_fit.

References: the closed forms of the acceptance rule (the emitted token has the target's distribution;
P(accept) = Σ min(p, q)); Pearson's χ² and Kolmogorov–Smirnov tests against `scipy.stats`; plain
`generate` for greedy speculative decoding (identical tokens) and, for sampling, the randomized-PIT
test of the generated tokens under the target, which must pass for the exact rule and fail for a
rule that accepts every draft token.
"""

from __future__ import annotations

import copy

import pytest
import scipy.stats
import torch

from lab.infer import expected_speedup, expected_tokens_per_step, generate
from lab.infer import speculative as speculative_module
from lab.infer import speculative_accept, speculative_generate
from lab.infer.goodness_of_fit import (chi_square_test, generated_token_probs, kolmogorov_sf, ks_uniform_test,
                                       log_likelihood_z_test, randomized_pit)
from lab.infer.speculative import residual_distribution
from lab.models import GPT, GPTConfig

CFG = GPTConfig(vocab_size=23, context_length=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64)


def _sharp(seed: int, n_layer: int = 2, scale: float = 8.0) -> GPT:
    """A random GPT whose next-token distributions are far from uniform (its final norm scaled up)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**CFG.to_dict(), "n_layer": n_layer})).eval()
    with torch.no_grad():
        model.norm.weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def target() -> GPT:
    return _sharp(0)


@pytest.fixture(scope="module")
def draft() -> GPT:
    """Another random model, 1 layer, flatter: acceptance rate ≈ 0.2 against the target."""
    return _sharp(1, n_layer=1, scale=2.0)


def _random_dist(shape, seed, sharpness=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(*shape, generator=g, dtype=torch.float64), -1)


# --- the formulas ------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 0.99, 1.0])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_expected_tokens_per_step_is_the_geometric_sum(alpha, k):
    assert expected_tokens_per_step(alpha, k) == pytest.approx(sum(alpha ** i for i in range(k + 1)))
    assert expected_speedup(alpha, k, 0.0) == pytest.approx(expected_tokens_per_step(alpha, k))
    assert expected_speedup(alpha, k, 0.5) == pytest.approx(expected_tokens_per_step(alpha, k) / (0.5 * k + 1))
    assert expected_speedup(alpha, k, 0.5, 1.5) == pytest.approx(expected_tokens_per_step(alpha, k) / (0.5 * k + 1.5))


@pytest.mark.parametrize("call, match", [
    (lambda: expected_tokens_per_step(1.2, 3), "alpha"), (lambda: expected_tokens_per_step(0.5, 0), "k"),
    (lambda: expected_speedup(0.5, 2, -1.0), "cost_ratio"), (lambda: expected_speedup(0.5, 2, 0.1, 0.0), "verify_ratio"),
])
def test_formulas_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_residual_makes_the_emitted_token_exact_in_closed_form():
    p, q = _random_dist((50, 11), 0), _random_dist((50, 11), 1)
    accept = torch.minimum(p, q)                                      # q(x)·min(1, p(x)/q(x))
    emitted = accept + (1 - accept.sum(-1, keepdim=True)) * residual_distribution(p, q)
    assert torch.allclose(emitted, p, atol=1e-12)
    assert torch.equal(residual_distribution(p, p), p)


@pytest.mark.parametrize("k", [1, 3])
def test_speculative_accept_emits_the_target_distribution(k):
    """Monte Carlo of the rule: the first emitted token ~ p_1 (χ²), and P(d_1 accepted) = Σ min(p_1, q_1)."""
    V, trials = 7, 8000
    p, q = _random_dist((k + 1, V), 10 + k).float(), _random_dist((k, V), 20 + k).float()
    gen = torch.Generator().manual_seed(k)
    first, accepted_first = torch.zeros(V), 0
    for _ in range(trials):
        draft = torch.multinomial(q, 1, generator=gen)[:, 0]
        a, nxt = speculative_accept(p, q, draft, gen)
        first[int(draft[0]) if a >= 1 else nxt] += 1
        accepted_first += a >= 1
    _, p_value = chi_square_test(first, p[0])
    assert p_value > 1e-3
    alpha = torch.minimum(p[0], q[0]).sum().item()
    assert abs(accepted_first / trials - alpha) < 4 * (alpha * (1 - alpha) / trials) ** 0.5


def test_speculative_accept_checks_shapes():
    with pytest.raises(ValueError, match="k\\+1"):
        speculative_accept(torch.ones(2, 5) / 5, torch.ones(2, 5) / 5, torch.tensor([0, 1]))


# --- the statistics against scipy ---------------------------------------------------------------------------

@pytest.mark.parametrize("x", [0.3, 0.6, 1.0, 1.36, 2.0])
def test_kolmogorov_sf_equals_scipy(x):
    assert kolmogorov_sf(x) == pytest.approx(scipy.stats.kstwobign.sf(x), abs=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.03])
def test_ks_uniform_test_equals_scipy(shift):
    u = (torch.rand(3000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + shift).clamp(max=1.0)
    D, p = ks_uniform_test(u)
    ref = scipy.stats.kstest(u.numpy(), "uniform", method="asymp")
    assert D == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(scipy.stats.kstwobign.sf(D * 3000 ** 0.5), rel=1e-9)
    assert abs(p - ref.pvalue) < 0.02


def test_chi_square_equals_scipy():
    observed = torch.tensor([18.0, 25, 31, 26])
    probs = torch.tensor([0.2, 0.25, 0.3, 0.25])
    stat, p = chi_square_test(observed, probs)
    ref = scipy.stats.chisquare(observed.numpy(), (probs * observed.sum()).numpy())
    assert stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=1e-6)


def test_randomized_pit_is_uniform_for_exact_samples_and_not_for_wrong_ones():
    gen = torch.Generator().manual_seed(0)
    probs = _random_dist((4000, 9), 3).float()
    exact = torch.multinomial(probs, 1, generator=gen)[:, 0]
    wrong = torch.multinomial(_random_dist((4000, 9), 4).float(), 1, generator=gen)[:, 0]
    assert ks_uniform_test(randomized_pit(probs, exact, gen))[1] > 0.01
    assert ks_uniform_test(randomized_pit(probs, wrong, gen))[1] < 1e-6


def test_log_likelihood_z_test_is_standard_normal_for_exact_samples_and_detects_a_close_q():
    gen = torch.Generator().manual_seed(1)
    p = _random_dist((3000, 12), 5).float()
    q = (0.85 * p + 0.15 * _random_dist((3000, 12), 6).float())             # total variation ≈ 0.1 from p
    zs = [log_likelihood_z_test(p, torch.multinomial(p, 1, generator=gen)[:, 0])[0] for _ in range(40)]
    assert abs(sum(zs) / 40) < 0.5 and 0.6 < torch.tensor(zs).std().item() < 1.5   # ≈ N(0, 1)
    z, p_value = log_likelihood_z_test(p, torch.multinomial(q, 1, generator=gen)[:, 0])
    assert p_value < 1e-4
    assert log_likelihood_z_test(p, p.argmax(-1))[0] > 5                     # too likely is caught too


def test_stats_reject_bad_input():
    with pytest.raises(ValueError, match="tokens"):
        randomized_pit(torch.ones(3, 4) / 4, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-empty"):
        ks_uniform_test(torch.zeros(0))
    with pytest.raises(ValueError, match="tokens"):
        log_likelihood_z_test(torch.ones(3, 4) / 4, torch.zeros(3, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="prompt_len"):
        generated_token_probs(GPT(CFG), torch.zeros(2, 5, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="positive expected"):
        chi_square_test(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))


# --- speculative_generate ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("prompt_len", [1, 9])
def test_greedy_speculative_equals_greedy_generate(target, draft, k, prompt_len):
    prompt = torch.randint(0, CFG.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len))
    result = speculative_generate(target, draft, prompt, 30, k=k)
    assert torch.equal(result.tokens, generate(target, prompt, 30))
    assert sum(result.accepted) + result.steps == 30
    assert all(a <= d for a, d in zip(result.accepted, result.drafted))


def test_draft_equal_to_target_accepts_everything(target):
    prompt = torch.arange(5)
    result = speculative_generate(target, copy.deepcopy(target), prompt, 26, k=4)
    assert result.acceptance_rate == 1.0 and result.accepted[:5] == [4] * 5 and result.tokens_per_step == 26 / 6
    sampled = speculative_generate(target, copy.deepcopy(target), prompt, 26, k=4, temperature=1.0, seed=1)
    assert sampled.acceptance_rate > 0.95


def test_sampled_speculative_decoding_passes_the_pit_test_and_a_wrong_rule_fails(target, draft, monkeypatch):
    """The generated tokens' PIT values under the target are uniform for the exact rule; accepting
    every draft token (sampling from the draft) is caught by the same test."""
    prompt = torch.tensor([3, 1, 4])

    def probs_and_tokens(n_runs: int) -> tuple[torch.Tensor, torch.Tensor]:
        runs = torch.stack([speculative_generate(target, draft, prompt, 12, k=3, temperature=1.0, seed=s).tokens
                            for s in range(n_runs)])
        return generated_token_probs(target, runs, len(prompt))

    exact = probs_and_tokens(60)
    assert ks_uniform_test(randomized_pit(*exact, torch.Generator().manual_seed(0)))[1] > 0.01
    assert log_likelihood_z_test(*exact)[1] > 0.01

    def accept_everything(p, q, draft_tokens, generator, check=True):
        return len(draft_tokens), int(torch.multinomial(p[-1], 1, generator=generator))

    monkeypatch.setattr(speculative_module, "speculative_accept", accept_everything)
    wrong = probs_and_tokens(60)
    assert ks_uniform_test(randomized_pit(*wrong, torch.Generator().manual_seed(0)))[1] < 1e-6
    assert log_likelihood_z_test(*wrong)[1] < 1e-6


def test_speculative_rejects_bad_input(target, draft):
    with pytest.raises(ValueError, match=r"k=0 is out of range; allowed: \[1, inf\)"):
        speculative_generate(target, draft, torch.arange(3), 5, k=0)
    with pytest.raises(ValueError, match="prompt_ids must be one sequence"):
        speculative_generate(target, draft, torch.zeros(2, 3, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="empty"):
        speculative_generate(target, draft, torch.zeros(0, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="top_p"):
        speculative_generate(target, draft, torch.arange(3), 5, temperature=1.0, top_p=2.0)
    other = GPT(GPTConfig(**{**CFG.to_dict(), "vocab_size": 24}))
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, other, torch.arange(3), 5)


def test_acceptance_rate_counts_tested_tokens_only():
    from lab.infer.speculative import SpeculativeResult

    result = SpeculativeResult(torch.arange(20), accepted=[4, 1, 0, 2], drafted=[4, 4, 4, 2])
    assert result.acceptance_rate == 7 / (4 + 2 + 1 + 2)
    assert result.tokens_per_step == (7 + 4) / 4


def _uniform(rows: int, V: int = 4) -> torch.Tensor:
    return torch.full((rows, V), 1.0 / V)


@pytest.mark.parametrize("p, q, drafts, match", [
    # the drafted token has q = 0: it cannot have come from q, and 0/0 would accept a token p rules out
    (torch.tensor([[0.0, 1.0, 0, 0], [0.25] * 4]), torch.tensor([[0.0, 1.0, 0, 0]]), [0],
     r"q gives draft token\(s\) \[0\] probability 0"),
    (torch.randn(2, 4), _uniform(1), [1], "p must hold probabilities"),             # logits, not probabilities
    (_uniform(2), _uniform(1) * 2, [1], "q must hold probabilities"),
    (_uniform(2), _uniform(1), [4], r"draft_tokens must be token ids in \[0, 4\)"),
])
def test_speculative_accept_refuses_what_is_not_a_draw_from_q(p, q, drafts, match):
    with pytest.raises(ValueError, match=match):
        speculative_accept(p, q, torch.tensor(drafts))


def test_sampling_refuses_nan_logits():
    from lab.infer.sampling import next_token_probs, sample

    logits = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(ValueError, match="logits has 1 NaN entries"):
        sample(logits, temperature=1.0)
    with pytest.raises(ValueError, match="logits has 1 NaN entries"):
        next_token_probs(logits)
    masked = torch.tensor([[0.0, float("-inf"), 1.0]])                    # a masked token is allowed
    assert next_token_probs(masked)[0, 1] == 0


def test_bf16_probabilities_are_probabilities():
    from lab.infer.sampling import check_distribution

    p = torch.softmax(torch.randn(512, 8192, generator=torch.Generator().manual_seed(0)), -1).bfloat16()
    check_distribution("p", p)                       # rows off 1 by bf16 rounding (up to ~0.003) pass


def test_generate_checks_its_logits_once_not_every_step(tiny_gpt, monkeypatch):
    """A NaN test reads the logits back from the device: once per call, not once per decoding step."""
    import lab.infer.sampling as sampling

    calls = []
    real = sampling.check_logits
    monkeypatch.setattr(sampling, "check_logits", lambda logits: calls.append(1) or real(logits))
    generate(tiny_gpt(), torch.zeros(1, 3, dtype=torch.int64), 6, temperature=1.0)
    assert len(calls) == 1
