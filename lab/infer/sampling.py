"""From next-token logits to a next token: temperature, top-k, top-p (nucleus), greedy.

Logits z (…, V) of the model's last position become the sampling distribution

    p = softmax(filter(z / τ))          τ > 0 (temperature)
    p = onehot(argmax z)                τ = 0 (greedy)

where ``filter`` keeps the k largest logits (top-k), then the smallest set of tokens whose
probabilities under softmax(z / τ) add up to at least p_top (top-p), and sets the rest to −∞.
The order (temperature, then top-k, then top-p) is `transformers`' order, and the tests compare
`filter_logits` with its ``TopKLogitsWarper`` / ``TopPLogitsWarper``.

Speculative decoding (`lab.infer.speculative`) needs the distribution itself, not only a sample:
`next_token_probs` returns it, and `sample` draws from it with a seeded ``torch.Generator``.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_fraction, check_int, check_number, check_tensor


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """TypeError/ValueError unless τ ≥ 0 is finite (0 = greedy), top_k is None or an int ≥ 1 and top_p is
    None or in (0, 1]."""
    check_number("temperature", temperature, low=0)
    check_filters(top_k, top_p)


def check_filters(top_k: int | None, top_p: float | None) -> None:
    """TypeError/ValueError unless top_k is None or an int >= 1 and top_p is None or in (0, 1]."""
    if top_k is not None:
        check_int("top_k", top_k)
    if top_p is not None:
        check_fraction("top_p", top_p, closed=(False, True))


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits (…, V) with every token outside the top-k and outside the top-p nucleus set to −∞.

    Top-p keeps token i iff the probability mass of the tokens ranked strictly above it is < p_top,
    i.e. the smallest prefix of the sorted distribution with mass ≥ p_top (at least one token).
    Ties at the nucleus boundary: of two equally probable tokens that straddle it, the prefix keeps
    the one the sort puts first; `transformers`' ``TopPLogitsWarper`` (ascending sort, drop where the
    cumulative mass is ≤ 1 − p_top) can keep both.
    """
    check_filters(top_k, top_p)
    check_logits(logits)
    return _filter(logits, top_k, top_p)


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """`filter_logits` without its checks (a decoding loop checks once, before its first step)."""
    out = logits
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        mass_above = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_above >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def check_logits(logits) -> None:
    """``logits`` is a floating tensor (…, V) with no NaN (−inf, a masked token, is allowed)."""
    check_tensor("logits", logits)
    if not logits.is_floating_point() or logits.dim() < 1:
        raise TypeError(f"logits must be a floating-point tensor (..., V), got {logits.dtype} {tuple(logits.shape)}")
    if torch.isnan(logits).any():
        raise ValueError(f"logits has {int(torch.isnan(logits).sum())} NaN entries; a NaN cannot be sampled from")


def check_distribution(name: str, probs, tolerance: float = 1e-3) -> None:
    """``probs`` (…, V) holds probability distributions: finite, >= 0, each row summing to 1 within
    ``tolerance`` (logits or unnormalised scores are refused: they would be read as probabilities)."""
    check_tensor(name, probs)
    if not probs.is_floating_point() or probs.dim() < 1:
        raise TypeError(f"{name} must be a floating-point tensor of probabilities (..., V), got {probs.dtype} "
                        f"{tuple(probs.shape)}")
    sums = probs.sum(-1, dtype=torch.float32)
    tolerance = max(tolerance, torch.finfo(probs.dtype).eps)           # bf16 rows round to within its eps
    if not torch.isfinite(probs).all() or (probs < 0).any() or ((sums - 1).abs() > tolerance).any():
        raise ValueError(f"{name} must hold probabilities: finite, >= 0, rows summing to 1; got entries in "
                         f"[{probs.min().item():.3g}, {probs.max().item():.3g}] and row sums in "
                         f"[{sums.min().item():.4g}, {sums.max().item():.4g}] (softmax the logits first)")


def next_token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, check: bool = True) -> torch.Tensor:
    """The sampling distribution p (…, V), float32, rows summing to 1; one-hot at argmax when τ = 0.

    ``check=False`` skips the arguments' checks: a decoding loop checks them once before its first step
    (a NaN test reads the logits back from the device, a synchronisation per step)."""
    if check:
        check_sampling(temperature, top_k, top_p)
        check_logits(logits)
    if temperature == 0:
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    return torch.softmax(_filter(logits.float() / temperature, top_k, top_p), dim=-1)


def check_generator(generator: torch.Generator | None) -> None:
    """TypeError unless ``generator`` is None or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def sample_from(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of probs (B, V): token ids (B,) int64."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, check: bool = True) -> torch.Tensor:
    """Next tokens (B,) int64 for logits (B, V) (a 0-d token for (V,)): argmax when τ = 0, else a draw from
    `next_token_probs` (``check`` as there)."""
    if check:
        check_sampling(temperature, top_k, top_p)
        check_logits(logits)
        check_tensor("logits", logits, (1, 2))          # (B, V) or (V,): multinomial takes no more dimensions
        check_generator(generator)
    if temperature == 0:
        return logits.argmax(-1)
    return sample_from(next_token_probs(logits, temperature, top_k, top_p, check=False), generator)
