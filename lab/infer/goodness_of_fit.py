"""Tests that a sampler draws from the distribution it claims to: randomized PIT + Kolmogorov–Smirnov,
and Pearson's χ².

Randomized probability integral transform (PIT): for a token x drawn from a distribution p over an
ordered vocabulary, u = F(x⁻) + U·p(x), with F(x⁻) = Σ_{y<x} p(y) and U ~ U[0, 1), is uniform on
[0, 1). For a generated sequence, each token's u computed from the target's conditional p(· | prefix)
is uniform given everything before it, so the u's of every generated token are i.i.d. U[0, 1) exactly
when the sampler is exact. The Kolmogorov–Smirnov statistic D = sup |F_n(u) − u| then tests that:
under the null, √n·D follows Kolmogorov's distribution, P(√n·D > λ) = 2 Σ_{j≥1} (−1)^{j−1} e^{−2j²λ²}
(asymptotic in n; `scipy.stats.kstwobign` is the reference in the tests).

χ²: X² = Σ (O_i − E_i)² / E_i over bins with expected counts E_i; under the null X² ~ χ²(bins − 1),
whose survival function is the regularized upper incomplete gamma Q((bins − 1)/2, X²/2).
"""

from __future__ import annotations

import math

import torch

from lab.core.checks import check_float_tensor, check_int, check_tensor
from lab.infer.kv_cache import INDEX_DTYPES, check_token_ids
from lab.infer.sampling import check_distribution, check_generator, check_sampling, next_token_probs
from lab.models.gpt import check_gpt


def _check_draws(probs: torch.Tensor, tokens: torch.Tensor) -> None:
    """probs (N, V) distributions (not logits) and tokens (N,) ids in [0, V) on the same device."""
    check_tensor("probs", probs, 2)
    check_tensor("tokens", tokens, 1, INDEX_DTYPES)
    if tokens.shape != (probs.shape[0],):
        raise ValueError(f"need probs (N, V) and tokens (N,), got {tuple(probs.shape)} and {tuple(tokens.shape)}")
    if tokens.device != probs.device:
        raise ValueError(f"tokens is on {tokens.device} but probs on {probs.device}")
    check_distribution("probs", probs)
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= probs.shape[1]):
        raise ValueError(f"tokens must be token ids in [0, {probs.shape[1]}), got values in "
                         f"[{tokens.min().item()}, {tokens.max().item()}]")


def randomized_pit(probs: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """u (N,) float64 in [0, 1) for tokens (N,) drawn from the rows of probs (N, V)."""
    _check_draws(probs, tokens)
    check_generator(generator)
    p = probs.double()
    p_x = p.gather(1, tokens[:, None])[:, 0]
    below = torch.cumsum(p, dim=-1).gather(1, tokens[:, None])[:, 0] - p_x                 # F(x⁻)
    u = torch.rand(len(tokens), generator=generator, dtype=torch.float64, device=p.device)
    return (below + u * p_x).clamp(0.0, 1.0)


def kolmogorov_sf(x: float, terms: int = 100) -> float:
    """P(K > x) for Kolmogorov's limiting distribution K."""
    if x <= 0:
        return 1.0
    total = sum((-1) ** (j - 1) * math.exp(-2 * j * j * x * x) for j in range(1, terms + 1))
    return min(1.0, max(0.0, 2 * total))


def ks_uniform_test(u: torch.Tensor) -> tuple[float, float]:
    """(D, p-value) of the one-sample Kolmogorov–Smirnov test of u against U[0, 1] (asymptotic p)."""
    check_float_tensor("u", u)                                  # NaN would sort anywhere and poison D
    if u.dim() != 1 or len(u) < 1:
        raise ValueError(f"u must be a non-empty 1-D tensor, got shape {tuple(u.shape)}")
    if u.min() < 0 or u.max() > 1:
        raise ValueError(f"u must lie in [0, 1] (randomized_pit's values), got values in "
                         f"[{u.min().item():.4g}, {u.max().item():.4g}]")
    x = torch.sort(u.double().cpu()).values
    n = len(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    D = max((i / n - x).max().item(), (x - (i - 1) / n).max().item())
    return D, kolmogorov_sf(math.sqrt(n) * D)


def chi_square_test(observed: torch.Tensor, expected_probs: torch.Tensor) -> tuple[float, float]:
    """(X², p-value) of Pearson's goodness-of-fit test of counts (bins,) against probabilities (bins,)."""
    if observed.shape != expected_probs.shape or observed.dim() != 1 or len(observed) < 2:
        raise ValueError(f"need observed and expected_probs of one shape (bins >= 2,), got "
                         f"{tuple(observed.shape)} and {tuple(expected_probs.shape)}")
    expected = expected_probs.double() / expected_probs.double().sum() * observed.double().sum()
    if (expected <= 0).any():
        raise ValueError("every bin needs a positive expected probability")
    stat = ((observed.double() - expected) ** 2 / expected).sum()
    df = torch.tensor(len(observed) - 1, dtype=torch.float64)
    return stat.item(), torch.special.gammaincc(df / 2, stat / 2).item()


def log_likelihood_z_test(probs: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float]:
    """(z, two-sided p-value) of the log-likelihood score test that tokens (N,) were drawn from the rows of
    probs (N, V).

    Under the null, ℓ_i = log p_i(x_i) has mean −H(p_i) and variance Var_{p_i}[log p_i] given the past, so
    z = Σ (ℓ_i + H(p_i)) / √(Σ Var_{p_i}[log p_i]) is ≈ N(0, 1) (martingale central limit theorem). Tokens
    from another distribution q shift the mean of ℓ_i to −H(q_i, p_i), the cross-entropy, and z drifts
    with √N: a far more powerful test than the PIT's KS against a q close to p.
    """
    _check_draws(probs, tokens)
    if not len(tokens):
        raise ValueError("tokens is empty: the score test needs at least one token")
    p = probs.double()
    log_p = torch.log(p.clamp(min=torch.finfo(torch.float64).tiny))
    entropy = -(p * log_p).sum(-1)
    variance = (p * log_p**2).sum(-1) - entropy**2
    if variance.sum() <= 0:                                  # z = 0 / 0
        raise ValueError("probs are one-hot in every row (greedy decoding?): every token is certain and the score "
                         "test is undefined")
    z = ((log_p.gather(1, tokens[:, None])[:, 0] + entropy).sum() / variance.sum().sqrt()).item()
    return z, math.erfc(abs(z) / math.sqrt(2))


@torch.no_grad()
def generated_token_probs(model, sequences: torch.Tensor, prompt_len: int, temperature: float = 1.0,
                          top_k: int | None = None, top_p: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs (N·(T − T₀), V), tokens (N·(T − T₀),)): every generated token of ``sequences`` (N, T) (prompt_len
    prompt tokens each) with the model's own sampling distribution p(· | prefix) for it, under the given
    temperature and filters; the inputs of `randomized_pit` and `log_likelihood_z_test`."""
    check_gpt("model", model)
    check_token_ids("sequences", sequences, model)
    if sequences.device != (device := next(model.parameters()).device):
        raise ValueError(f"sequences is on {sequences.device} but the model on {device}")
    if sequences.shape[1] - 1 > model.config.context_length:
        raise ValueError(f"sequences of {sequences.shape[1]} tokens need {sequences.shape[1] - 1} positions, more "
                         f"than the model's context_length={model.config.context_length}")
    check_int("prompt_len", prompt_len, 1, sequences.shape[1] - 1)
    check_sampling(temperature, top_k, top_p)
    n_new = sequences.shape[1] - prompt_len                                 # predicts tokens prompt_len … T−1
    logits = model(sequences[:, :-1], logits_to_keep=n_new)                 # the head on those positions only
    probs = next_token_probs(logits, temperature, top_k, top_p).flatten(0, 1)
    return probs, sequences[:, prompt_len:].flatten()
