"""lab.models.loop and lab.models.next_token: the one training loop, its schedule and train_lm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lab.models import train_lm
from lab.models.loop import Optim, lr_at, train
from lab.models.next_token import random_batch
from tests.tiny_models import tiny_gpt

# ---------------------------------------------------------------------------------------------
# lab.models.next_token
# ---------------------------------------------------------------------------------------------

def test_lr_schedule_warms_up_linearly_then_decays_by_cosine():
    steps, lr, warmup = 100, 1e-3, 10
    sched = [lr_at(s, steps, lr, warmup) for s in range(steps)]
    assert sched[:warmup] == pytest.approx([lr * (s + 1) / warmup for s in range(warmup)])
    assert sched[warmup] == pytest.approx(lr)  # the peak
    assert sched[55] == pytest.approx(lr * (0.1 + 0.9 * 0.5))  # halfway through the cosine
    assert all(a >= b for a, b in zip(sched[warmup:], sched[warmup + 1:]))
    assert sched[-1] > 0.1 * lr and sched[-1] == pytest.approx(0.1 * lr, rel=0.01)


def test_random_batch_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(100)
    x, y = random_batch(tokens, 4, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 10)
    assert torch.equal(y, x + 1)  # consecutive tokens: target = next token
    with pytest.raises(ValueError, match="need more than seq_len"):
        random_batch(torch.arange(11), 1, 10, torch.Generator())


def test_training_lowers_the_loss_and_is_deterministic():
    tokens = torch.arange(8).repeat(200)  # a periodic sequence: perfectly predictable
    runs = []
    for _ in range(2):
        model = tiny_gpt(0, vocab_size=8, n_layer=1)
        runs.append(train_lm(model, tokens, steps=40, batch_size=8, seq_len=12, lr=1e-2, warmup=5,
                             seed=0, progress=False))
    loss = runs[0]["loss"]
    assert runs[0]["loss"] == runs[1]["loss"]
    assert loss[0] == pytest.approx(math.log(8), rel=0.1)  # starts near uniform guessing
    assert np.mean(loss[-5:]) < 0.25 * np.mean(loss[:5])
    assert runs[0]["tokens_seen"] == 40 * 8 * 12


def test_train_lm_is_adamw_with_two_groups_clipping_and_the_schedule():
    """Reference: the loop written out with torch.optim.AdamW (decay on matrices only) and clip_grad_norm_."""
    tokens, kw = torch.arange(61).repeat(20), dict(steps=12, batch_size=4, seq_len=10, lr=5e-3, warmup=3)
    model, ref = tiny_gpt(0), tiny_gpt(0)
    record = train_lm(model, tokens, weight_decay=0.1, grad_clip=0.5, seed=2, progress=False, **kw)
    opt = torch.optim.AdamW([{"params": [p for p in ref.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in ref.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                            lr=kw["lr"], betas=(0.9, 0.95))
    gen, losses = torch.Generator().manual_seed(2), []
    for step in range(kw["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, kw["steps"], kw["lr"], kw["warmup"])
        x, y = random_batch(tokens, kw["batch_size"], kw["seq_len"], gen)
        loss = F.cross_entropy(ref(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
        losses.append(loss.item())
    assert record["loss"] == losses
    assert record["lr"] == [lr_at(s, kw["steps"], kw["lr"], kw["warmup"]) for s in range(kw["steps"])]
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name


def test_train_loop_eval_cadence_and_a_loss_that_back_propagates_itself():
    model, calls = tiny_gpt(0), []
    batches = [random_batch(torch.arange(61).repeat(4), 2, 8, torch.Generator().manual_seed(s)) for s in range(5)]

    def loss_fn(m, batch):                      # backward inside, as the pipeline schedule does
        loss = F.cross_entropy(m(batch[0]).flatten(0, 1), batch[1].flatten())
        loss.backward()
        return loss.detach()

    record = train(model, batches, loss_fn, 5, optim=Optim(1e-3, warmup=1), backward=False, eval_every=2,
                   eval_fn=lambda m: calls.append(m.training) or 1.0, progress=False)
    assert [s for s, _ in record["eval"]] == [0, 2, 4, 5] and calls == [False] * 4
    assert len(record["loss"]) == len(record["step_seconds"]) == 5 and not model.training
    with pytest.raises(ValueError, match="batches ran out after 5 batches; steps=6"):
        train(model, batches, loss_fn, 6, backward=False, progress=False)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"steps": 0}, ValueError, "steps=0 is out of range"),
    ({"steps": 2, "batch_size": 1.5}, TypeError, "batch_size must be an int"),
    ({"steps": 2, "lr": 0.0}, ValueError, "lr=0.0 is out of range"),
    ({"steps": 2, "warmup": -1}, ValueError, "warmup=-1 is out of range"),
    ({"steps": 2, "grad_clip": 0.0}, ValueError, "grad_clip=0.0 is out of range"),
])
def test_train_lm_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        train_lm(tiny_gpt(), torch.arange(100) % 61, progress=False, **kwargs)
