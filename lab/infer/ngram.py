"""Prompt-lookup drafting: an n-gram draft that costs no model at all.

Prompt-lookup decoding (Saxena 2023, in `transformers` as ``prompt_lookup_num_tokens``) drafts the next
token by matching the last n tokens x_{t−n+1} … x_t against the text seen so far (prompt and generated
tokens): if the same n-gram occurred before, ending at position u < t, the draft is the token that
followed it, d_{t+1} = x_{u+1} (the latest such occurrence). Where no earlier match exists there is no
draft, and the step is a plain decode step.

The draft's distribution is one-hot, q = δ_d, so speculative sampling accepts it with probability
min(1, p(d)/q(d)) = p(d), and α = E[p(d)] over the positions with a draft (greedy decoding: the share of
drafts equal to the target's argmax). Its cost ratio is c ≈ 0: a dictionary lookup per token.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_float_tensor, check_int, check_tensor
from lab.infer.sampling import check_distribution
from lab.perplexity import EvalSample


def prompt_lookup_draft(ids: torch.Tensor, n: int = 2) -> torch.Tensor:
    """Drafts d (B, T) int64 for ``ids`` x (B, T) int64: d[b, t] drafts x[b, t+1] from x[b, :t+1], −1 if none.

    d[b, t] = x[b, u+1] for the largest u < t with x[b, u−n+1 : u+1] = x[b, t−n+1 : t+1] (``n`` ≥ 1 tokens
    matched); −1 where t < n − 1 or no earlier occurrence. Each row is its own text.
    """
    check_tensor("ids", ids, 2, (torch.int64,))
    check_int("n", n)
    B, T = ids.shape
    drafts = torch.full((B, T), -1, dtype=torch.int64)
    for b, row in enumerate(ids.tolist()):
        last_next: dict[tuple[int, ...], int] = {}   # n-gram → the token that followed its latest occurrence
        for t in range(n - 1, T):
            gram = tuple(row[t - n + 1:t + 1])
            drafts[b, t] = last_next.get(gram, -1)
            if t + 1 < T:
                last_next[gram] = row[t + 1]
    return drafts


def one_hot_acceptance(p: torch.Tensor, drafts: torch.Tensor) -> dict[str, float]:
    """Acceptance of one-hot drafts: {"alpha": E[p(d)], "greedy": P(d = argmax p), "coverage": share drafted}.

    ``p``: the target's next-token distributions (B, T, V) float, p[b, t] for the token after position t;
    ``drafts``: (B, T) int64 from `prompt_lookup_draft` (−1: no draft; those positions are left out of
    α and of the greedy rate). ValueError if no position has a draft.
    """
    check_float_tensor("p", p, 3)
    check_distribution("p", p)
    check_tensor("drafts", drafts, 2, (torch.int64,))
    if drafts.shape != p.shape[:2]:
        raise ValueError(f"drafts must have shape {tuple(p.shape[:2])} (p without its vocabulary dim), "
                         f"got {tuple(drafts.shape)}")
    has = drafts >= 0
    if not has.any():
        raise ValueError("drafts has no draft (every entry is -1)")
    if drafts.min() < -1 or drafts.max() >= p.shape[-1]:
        raise ValueError(f"drafts must be token ids in [0, {p.shape[-1]}) or -1 (no draft), got values in "
                         f"[{drafts.min().item()}, {drafts.max().item()}]")
    p_d = p[has].gather(-1, drafts[has][:, None])[:, 0]                   # p(d) at the drafted positions
    return {"alpha": p_d.mean().item(),
            "greedy": (p[has].argmax(-1) == drafts[has]).double().mean().item(),
            "coverage": has.double().mean().item()}


def sample_lookup_drafts(sample: EvalSample, n: int = 2) -> torch.Tensor:
    """`prompt_lookup_draft` on every window of the evaluation ``sample``: (n_tokens,) int64, the draft of each
    scored token (−1 if none), aligned with ``sample.tokens``; the lookup sees the window so far, its
    context included (`lab.infer.draft.teacher_forced` scores the drafts)."""
    if not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be a lab.perplexity.EvalSample (lab.data.eval_sample builds one), got "
                        f"{type(sample).__name__}")
    check_int("n", n)
    out = []
    for x, c in zip(sample.inputs, sample.n_context):
        out.append(prompt_lookup_draft(x[None].cpu(), n)[0, c - 1:-1])     # the drafts of x[c:]
    return torch.cat(out)
