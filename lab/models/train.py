"""A plain next-token training loop: AdamW, linear warm-up + cosine decay, gradient clipping.

Loss per step: L = −(1/(B·T)) Σ log p(x_{t+1} | x_{≤t}) over B random windows of T+1 tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def random_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """B windows of T+1 consecutive tokens: inputs (B, T) and shifted targets (B, T), int64."""
    if len(tokens) < seq_len + 2:
        raise ValueError(f"tokens has {len(tokens)} entries; need more than seq_len+1={seq_len + 1}")
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=generator)
    windows = torch.stack([tokens[s: s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from lr to min_lr_ratio·lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lm(model: torch.nn.Module, train_tokens: torch.Tensor, *, steps: int, batch_size: int = 16,
             seq_len: int = 128, lr: float = 1e-3, warmup: int = 20, weight_decay: float = 0.1,
             grad_clip: float = 1.0, seed: int = 0, eval_every: int = 0,
             eval_fn: Callable[[torch.nn.Module], float] | None = None,
             progress: bool = True) -> dict:
    """Train ``model`` (ids (B, T) → logits (B, T, V)) in place; return the training record.

    The record holds per-step ``loss`` and ``lr``, ``eval`` pairs (step, eval_fn value) every
    ``eval_every`` steps, ``tokens_seen`` and ``seconds``.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    device = next(model.parameters()).device
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    record: dict = {"loss": [], "lr": [], "eval": []}
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc="train", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        x, y = random_batch(train_tokens, batch_size, seq_len, gen)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        record["loss"].append(loss.item())
        record["lr"].append(opt.param_groups[0]["lr"])
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if eval_fn is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            model.eval()
            record["eval"].append((step + 1, float(eval_fn(model))))
            model.train()
    model.eval()
    record["tokens_seen"] = steps * batch_size * seq_len
    record["seconds"] = time.perf_counter() - start
    return record
