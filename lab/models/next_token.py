"""Next-token training of a language model: `lab.models.loop.train` with the cross-entropy loss on random windows.

Loss per step: L = −(1/(B·T)) Σ log p(x_{t+1} | x_{≤t}) over B random windows of T+1 tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lab.core.checks import check_int
from lab.models.loop import Optim, train


def random_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """B windows of T+1 consecutive tokens: inputs (B, T) and shifted targets (B, T), int64."""
    if len(tokens) < seq_len + 2:
        raise ValueError(f"tokens has {len(tokens)} entries; need more than seq_len+1={seq_len + 1}")
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=generator)
    windows = torch.stack([tokens[s: s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32; logits (B, T, V), targets (B, T) int64."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def lm_batch_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`lm_loss` of ``model`` (ids (B, T) → logits (B, T, V)) on one batch (x, y): the loop's ``loss_fn``."""
    x, y = batch
    return lm_loss(model(x), y)


def train_lm(model: torch.nn.Module, train_tokens: torch.Tensor, *, steps: int, batch_size: int = 16,
             seq_len: int = 128, lr: float = 1e-3, warmup: int = 20, weight_decay: float = 0.1,
             grad_clip: float = 1.0, seed: int = 0, eval_every: int = 0,
             eval_fn: Callable[[torch.nn.Module], float] | None = None,
             progress: bool = True) -> dict:
    """Train ``model`` (ids (B, T) → logits (B, T, V)) in place; return the training record.

    Each step draws B windows of T+1 tokens of ``train_tokens`` (`random_batch`, generator seeded
    with ``seed``). The record is `lab.models.loop.train`'s (per-step ``loss`` and ``lr``, ``eval`` pairs
    (step, eval_fn value) at step 0 and every ``eval_every`` steps, ``seconds``) plus ``tokens_seen``.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        check_int(name, value)
    gen = torch.Generator().manual_seed(seed)
    batches = (random_batch(train_tokens, batch_size, seq_len, gen) for _ in range(steps))
    record = train(model, batches, lm_batch_loss, steps, optim=Optim(lr, warmup, weight_decay, grad_clip),
                   eval_every=eval_every, eval_fn=eval_fn, progress=progress)
    record["tokens_seen"] = steps * batch_size * seq_len
    return record
