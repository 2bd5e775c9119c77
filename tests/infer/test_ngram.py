"""lab.infer.ngram: prompt-lookup drafts against a brute-force search, and the one-hot acceptance rate
against the general rule α = Σ_x min(p(x), q(x)) with q one-hot."""

from __future__ import annotations

import pytest
import torch

from lab.infer.ngram import one_hot_acceptance, prompt_lookup_draft


def brute_force(row: list[int], n: int) -> list[int]:
    out = []
    for t in range(len(row)):
        found = -1
        if t >= n - 1:
            for u in range(t - 1, n - 2, -1):           # the latest earlier occurrence
                if row[u - n + 1:u + 1] == row[t - n + 1:t + 1]:
                    found = row[u + 1]
                    break
        out.append(found)
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_prompt_lookup_matches_brute_force(n):
    ids = torch.randint(0, 4, (3, 40), generator=torch.Generator().manual_seed(n))
    drafts = prompt_lookup_draft(ids, n)
    assert drafts.tolist() == [brute_force(row, n) for row in ids.tolist()]


def test_prompt_lookup_on_a_repeated_phrase():
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 9, 5, 6]])
    assert prompt_lookup_draft(ids, 2).tolist() == [[-1, -1, -1, -1, -1, 7, 8, -1, -1, 7]]


def test_one_hot_acceptance_is_the_general_rule_with_one_hot_q():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(2, 6, 5, generator=g, dtype=torch.float64), -1)
    drafts = torch.tensor([[0, 1, -1, 4, 2, -1], [3, -1, -1, 0, 0, 1]])
    got = one_hot_acceptance(p, drafts)
    has = drafts >= 0
    q = torch.nn.functional.one_hot(drafts[has], 5).double()
    alpha = torch.minimum(p[has], q).sum(-1).mean().item()                # Σ_x min(p, q)
    assert got["alpha"] == pytest.approx(alpha)
    assert got["coverage"] == pytest.approx(has.double().mean().item())
    assert got["greedy"] == pytest.approx((p[has].argmax(-1) == drafts[has]).double().mean().item())


def test_bad_input_raises():
    with pytest.raises(TypeError, match="ids must have a dtype"):
        prompt_lookup_draft(torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="n=0"):
        prompt_lookup_draft(torch.zeros(1, 4, dtype=torch.int64), 0)
    p = torch.full((1, 3, 2), 0.5)
    with pytest.raises(ValueError, match="drafts must have shape"):
        one_hot_acceptance(p, torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="no draft"):
        one_hot_acceptance(p, torch.full((1, 3), -1))
    with pytest.raises(ValueError, match="p must hold probabilities"):               # logits, not probabilities
        one_hot_acceptance(torch.randn(1, 3, 2), torch.zeros(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"drafts must be token ids in \[0, 2\) or -1"):
        one_hot_acceptance(p, torch.tensor([[0, 2, -1]]))
