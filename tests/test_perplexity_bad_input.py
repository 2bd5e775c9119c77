"""Bad input to lab.perplexity's public names: each refused with a message that names the argument."""

from __future__ import annotations

import functools

import torch

from lab.perplexity import EvalSample, perplexity, token_losses
from tests.bad_input import Bad
from tests.tiny_models import tiny_gpt

TOKENS = torch.randint(0, 61, (20,), generator=torch.Generator().manual_seed(0))
X = (torch.arange(10), torch.arange(6))


@functools.cache
def model():
    return tiny_gpt()


def sample(**changes) -> EvalSample:
    fields = dict(inputs=X, n_context=(2, 3), tokens=torch.arange(11), documents=torch.zeros(11, dtype=torch.int64))
    return EvalSample(**{**fields, **changes})


CASES: dict[str, list[Bad]] = {
    "token_losses": [
        Bad(lambda: token_losses(model(), TOKENS.tolist()), TypeError, r"tokens must be a torch\.Tensor, got list"),
        Bad(lambda: token_losses(model(), TOKENS, 16, True), TypeError, r"stride must be an int, got True"),  # = 1
        Bad(lambda: token_losses(model(), TOKENS, 16.0, 8), TypeError, r"context_length must be an int"),
        Bad(lambda: token_losses(model(), TOKENS, 16, 8, 2.5), TypeError, r"batch_size must be an int"),
        Bad(lambda: token_losses("gpt", TOKENS, 16, 8), TypeError, r"model must be a torch\.nn\.Module"),
        Bad(lambda: token_losses(model(), TOKENS, 16, 16), ValueError, r"0 < stride < context_length"),
        Bad(lambda: token_losses(model(), TOKENS.float(), 16, 8), ValueError, r"tokens must be a 1-D int64"),
    ],
    "perplexity": [
        Bad(lambda: perplexity(model(), TOKENS, 16, 8, progress="yes"), TypeError,
            r"progress must be one of \(True, False\)"),
        Bad(lambda: perplexity(model(), TOKENS[:1], 16, 8), ValueError, r"tokens needs at least 2 entries"),
    ],
    "EvalSample": [
        Bad(lambda: sample(n_context=(0, 3)), ValueError, r"n_context\[0\]=0 is out of range"),
        Bad(lambda: sample(n_context=(2, 6)), ValueError, r"n_context\[1\]=6 is out of range; allowed: \[1, 5\]"),
        Bad(lambda: sample(tokens=torch.arange(12)), ValueError, r"tokens must have shape \(11,\)"),
        Bad(lambda: sample(documents=torch.zeros(11)), TypeError, r"documents must have a dtype in"),
        Bad(lambda: sample(inputs=list(X)), TypeError, r"inputs must be a non-empty tuple, got list"),
        Bad(lambda: sample(inputs=(X[0].float(), X[1])), TypeError, r"inputs\[0\] must have a dtype in"),
        Bad(lambda: sample(n_context=(2,)), ValueError, r"inputs and n_context must have one entry per window"),
        Bad(lambda: sample().check_fits(8.5), TypeError, r"context_length must be an int, got 8\.5"),
        Bad(lambda: sample().check_fits(8), ValueError, r"sample has windows of 10 tokens, more than context_length=8"),
        Bad(lambda: sample().token_losses(model(), batch_size=0), ValueError, r"batch_size=0 is out of range"),
    ],
}

NO_INPUT: dict[str, str] = {}
