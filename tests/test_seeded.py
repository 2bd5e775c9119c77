"""lab.seeded: each method runs on a copy of the model at each seed, once when it reads no seed."""

from __future__ import annotations

import torch

from lab.perplexity import EvalSample
from lab.seeded import score_methods
from tests.tiny_models import tiny_gpt


def _sample() -> EvalSample:
    ids = torch.randint(0, 61, (3, 12), generator=torch.Generator().manual_seed(3))
    tokens = torch.cat([x[4:] for x in ids])
    return EvalSample(tuple(ids), (4, 4, 4), tokens, torch.arange(3).repeat_interleave(8))


def test_score_methods_runs_seeded_methods_per_seed_and_the_others_once():
    model, sample, calls = tiny_gpt(), _sample(), []

    def scaled(factor_of_seed):
        def method(m, seed):
            calls.append(seed)
            with torch.no_grad():
                m.lm_head.weight.mul_(factor_of_seed(seed))
            return float(factor_of_seed(seed))
        return method

    methods = {"e": {"by seed": (True, scaled(lambda k: 1.0 + k)), "once": (False, scaled(lambda k: 0.5)),
                     "report": (False, lambda m, k: {"not": "a number"})}}
    losses, kept = score_methods(model, methods, sample, [0, 2], progress=False)
    assert calls == [0, 0, 2]                                   # "once" ran at the first seed only
    fp32 = sample.token_losses(model)
    assert torch.equal(losses[0]["e"]["fp32"], fp32) and torch.equal(losses[2]["e"]["fp32"], fp32)
    assert torch.equal(losses[0]["e"]["once"], losses[2]["e"]["once"])
    assert torch.equal(losses[0]["e"]["by seed"], fp32)        # factor 1 at seed 0: the model itself
    assert not torch.equal(losses[2]["e"]["by seed"], fp32)
    assert torch.equal(losses[0]["e"]["report"], fp32)
    assert kept == {"by seed": [1.0, 3.0], "once": [0.5, 0.5]}  # numbers only
    assert torch.equal(sample.token_losses(model), fp32)        # the model itself is untouched

