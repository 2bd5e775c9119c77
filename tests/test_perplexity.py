"""lab.perplexity: sliding-window perplexity against a direct full-context cross-entropy and a uniform model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lab.perplexity import perplexity, token_losses
from tests.tiny_models import tiny_gpt

# ---------------------------------------------------------------------------------------------
# lab.perplexity: sliding-window perplexity
# ---------------------------------------------------------------------------------------------

class UniformLM(torch.nn.Module):
    """Logits all zero: p(x) = 1/V for every token, so NLL = log V and PPL = V."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, idx: torch.Tensor, logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
        positions = len(logits_to_keep) if torch.is_tensor(logits_to_keep) else logits_to_keep or idx.shape[1]
        return torch.zeros(idx.shape[0], positions, self.vocab_size) + 0 * self.anchor


def test_perplexity_equals_direct_cross_entropy_within_one_window():
    model = tiny_gpt(5)
    tokens = torch.randint(0, 61, (16,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(tokens[None])[0].double()
    reference = math.exp(F.cross_entropy(logits[:-1], tokens[1:]).item())
    assert perplexity(model, tokens, context_length=16, stride=8) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("n, context_length, stride", [(50, 8, 4), (50, 8, 3), (50, 8, 1), (50, 8, 7),
                                                       (17, 16, 15), (9, 64, 32), (2, 2, 1)])
def test_sliding_window_scores_every_token_exactly_once(n, context_length, stride):
    V = 13
    tokens = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(n))
    nll = token_losses(UniformLM(V), tokens, context_length, stride, batch_size=3)
    assert nll.shape == (n - 1,) and nll.dtype == torch.float64
    # log-softmax runs in float32, so "exactly" means to float32 rounding
    torch.testing.assert_close(nll, torch.full((n - 1,), math.log(V), dtype=torch.float64),
                               rtol=0, atol=1e-6)
    assert perplexity(UniformLM(V), tokens, context_length, stride) == pytest.approx(V, rel=1e-6)


def test_sliding_window_matches_full_context_when_the_window_covers_everything():
    model = tiny_gpt(6)
    tokens = torch.randint(0, 61, (16,), generator=torch.Generator().manual_seed(6))
    full = token_losses(model, tokens, context_length=16, stride=8)
    # stride 1: token t is scored by a window ending at t, which starts at 0 while t < 16
    torch.testing.assert_close(token_losses(model, tokens, context_length=16, stride=1), full)


@pytest.mark.parametrize("tokens, kwargs, match", [
    (torch.zeros(2, 8, dtype=torch.int64), {}, "tokens must be a 1-D int64 tensor"),
    (torch.zeros(8), {}, "tokens must be a 1-D int64 tensor"),
    (torch.zeros(1, dtype=torch.int64), {}, "at least 2 entries"),
    (torch.zeros(8, dtype=torch.int64), {"stride": 0}, "0 < stride < context_length"),
    (torch.zeros(8, dtype=torch.int64), {"context_length": 4, "stride": 5}, "0 < stride < context_length"),
    (torch.zeros(8, dtype=torch.int64), {"context_length": 4, "stride": 4}, "0 < stride < context_length"),
    (torch.zeros(8, dtype=torch.int64), {"context_length": 1, "stride": 1}, "context_length >= 2"),
    (torch.zeros(8, dtype=torch.int64), {"batch_size": 0}, "batch_size must be >= 1"),
])
def test_perplexity_rejects_bad_inputs(tokens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        perplexity(UniformLM(5), tokens, **kwargs)

