"""Request traces for a server: mixed lengths, Poisson arrivals, and prompts that share system prompts.

Arrivals of independent users form a Poisson process of rate λ (requests/s): the gaps between
consecutive arrivals are independent exponentials, Δ ~ Exp(λ), so a_i = Σ_{j ≤ i} Δ_j. At λ below
the server's capacity the queue stays short and a request's latency is its own work; above it the
queue grows without bound and TTFT with it.

`shared_prompt_trace` is the trace of chapter 6's serving record: S system prompts of P tokens, each a
window of real text (the test split for the book's model), and n requests, each one system prompt drawn
uniformly followed by a user suffix (another window of real text, of a length drawn uniformly from a
range) and asking for a number of new tokens drawn uniformly from a range, arriving at Poisson times.
Every draw comes from one ``torch.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_int, check_number, check_tensor
from lab.infer.generate import check_seed
from lab.infer.requests import Request


def _check_range(name: str, pair: tuple[int, int]) -> tuple[int, int]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be a pair (lo, hi) of ints, got {pair!r:.80}")
    for end, value in zip(("lo", "hi"), pair):
        check_int(f"{name} {end}", value)
    if pair[0] > pair[1]:
        raise ValueError(f"need 1 <= lo <= hi for {name}, got {name}={tuple(pair)}")
    return tuple(pair)


def _uniform(lo: int, hi: int, gen: torch.Generator) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def _window(tokens: torch.Tensor, T: int, gen: torch.Generator) -> torch.Tensor:
    start = int(torch.randint(0, len(tokens) - T, (1,), generator=gen))
    return tokens[start:start + T].clone()


def synthetic_trace(tokens: torch.Tensor, n_requests: int, prompt_lengths: tuple[int, int],
                    output_lengths: tuple[int, int], seed: int = 0) -> list[Request]:
    """``n_requests`` requests whose prompts are windows of real text ``tokens`` (1-D int64), with prompt
    and output lengths drawn uniformly from the inclusive ranges (a mixed-length offline workload)."""
    check_tensor("tokens", tokens, 1, (torch.int64,))
    check_int("n_requests", n_requests, minimum=0)
    (p_lo, p_hi), (o_lo, o_hi) = _check_range("prompt_lengths", prompt_lengths), _check_range(
        "output_lengths", output_lengths)
    check_seed(seed)
    if p_hi >= len(tokens):
        raise ValueError(f"need prompts shorter than the text, got prompt_lengths={prompt_lengths}, "
                         f"{len(tokens)} tokens")
    gen = torch.Generator().manual_seed(seed)
    requests = []
    for i in range(n_requests):
        T, n = _uniform(p_lo, p_hi, gen), _uniform(o_lo, o_hi, gen)
        requests.append(Request(i, _window(tokens, T, gen), n))
    return requests


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """n arrival times (s) of a Poisson process of ``rate`` λ requests/s: a_i = Σ_{j ≤ i} Δ_j, Δ_j ~ Exp(λ)."""
    check_int("n", n, minimum=0)
    check_number("rate", rate, 0.0, closed=(False, True))
    check_seed(seed)
    gaps = torch.empty(n, dtype=torch.float64).exponential_(rate, generator=torch.Generator().manual_seed(seed))
    return gaps.cumsum(0).tolist()


def shared_prompt_trace(tokens: torch.Tensor, n_requests: int, rate: float, n_system: int, system_len: int,
                        suffix_lengths: tuple[int, int], output_lengths: tuple[int, int],
                        seed: int = 0) -> list[Request]:
    """``n_requests`` requests, each one of ``n_system`` system prompts of ``system_len`` tokens (windows of the
    real text ``tokens``, 1-D int64) followed by a user suffix of real text, arriving at rate λ = ``rate``
    (`poisson_arrivals`); suffix and output lengths uniform over the inclusive ranges (module docstring)."""
    check_tensor("tokens", tokens, 1, (torch.int64,))
    check_int("n_requests", n_requests, minimum=0)
    check_int("n_system", n_system)
    check_int("system_len", system_len)
    s_lo, s_hi = _check_range("suffix_lengths", suffix_lengths)
    o_lo, o_hi = _check_range("output_lengths", output_lengths)
    check_seed(seed)
    if max(system_len, s_hi) >= len(tokens):
        raise ValueError(f"need system prompts and suffixes shorter than the text ({len(tokens)} tokens), got "
                         f"system_len={system_len}, suffix_lengths={suffix_lengths}")
    arrivals = poisson_arrivals(n_requests, rate, seed)
    gen = torch.Generator().manual_seed(seed)
    systems = [_window(tokens, system_len, gen) for _ in range(n_system)]
    requests = []
    for i, a in enumerate(arrivals):
        system = systems[_uniform(0, n_system - 1, gen)]
        suffix = _window(tokens, _uniform(s_lo, s_hi, gen), gen)
        requests.append(Request(i, torch.cat([system, suffix]), _uniform(o_lo, o_hi, gen), a))
    return requests
