"""The one training loop of the book: a model, a stream of batches and a loss function.

Each step t = 0 … S−1 (S = ``steps``):

    η_t = lr_at(t, S, η, warm-up)                 linear warm-up, then cosine decay to 0.1·η (min_lr_ratio)
    L_t = loss_fn(model, batch_t)                 under bf16 autocast on CUDA
    ∇ = ∂L_t/∂θ;  ∇ ← ∇ · min(1, c / ‖∇‖)          (gradient clipping at norm c, if c is set)
    θ ← AdamW(θ, ∇; η_t, β = (0.9, 0.95), λ)      decay λ on the matrices (dim ≥ 2) only (`adamw`)

Autocast lowers only matmul-like operations to bf16 and runs the reductions the losses use
(log-softmax, exp, sums, norms) in fp32, the dtype of the ``.float()`` logits and features they
read, so a loss computed inside the autocast region equals the one computed after the forward.
The chapters differ only in ``loss_fn``: next-token cross-entropy (`lab.models.next_token.train_lm`),
a distillation loss (`lab.distill.KDLoss`), or one parallel strategy's local loss
(`lab.parallel.strategies`, which also passes its own optimizer, e.g. ZeRO's, and for pipeline
parallelism a ``loss_fn`` that back-propagates itself).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lab.core.checks import check_int, check_number

BETAS = (0.9, 0.95)
LossFn = Callable[[nn.Module, object], torch.Tensor]   # (model, batch) → 0-dim loss L


@dataclass(frozen=True)
class Optim:
    """AdamW settings: peak learning rate η > 0, ``warmup`` steps, decay λ ≥ 0, clipping norm c (None = off)."""

    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        check_number("lr", self.lr, 0.0, closed=(False, True))
        check_int("warmup", self.warmup, 0)
        check_number("weight_decay", self.weight_decay, 0.0)
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, 0.0, closed=(False, True))
        check_number("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from lr to min_lr_ratio·lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(params: list[nn.Parameter], optim: Optim) -> torch.optim.AdamW:
    """AdamW with two groups: weight decay λ on matrices and embeddings (dim ≥ 2), none on gains and biases."""
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=optim.lr, betas=BETAS)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (matmuls in bf16, reductions in fp32); a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def to_device(batch, device: torch.device):
    """``batch`` with every tensor in it (also inside tuples, lists and dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def train(model: nn.Module, batches: Iterable, loss_fn: LossFn, steps: int, *, optim: Optim = Optim(),
          optimizer: torch.optim.Optimizer | None = None, backward: bool = True,
          log_loss: Callable[[torch.Tensor], float] | None = None, eval_every: int = 0,
          eval_fn: Callable[[nn.Module], float] | None = None, progress: bool | str = True) -> dict:
    """Train ``model`` in place for ``steps`` steps, one batch of ``batches`` each; return the record.

    ``batches``: an iterable yielding at least ``steps`` batches, drawn one per step (a generator
    draws lazily); every tensor in a batch is moved to the model's device. ``loss_fn(model, batch)``
    returns the batch's loss L (0-dim). ``optim``: learning rate, schedule, decay and clipping;
    ``optimizer``: one built by the caller (ZeRO, or one parameter group), else `adamw` over the
    parameters that require grad. ``backward=False``: ``loss_fn`` has run the backward pass itself
    (the pipeline schedule interleaves forwards and backwards); L is then only recorded.
    ``log_loss(L)``: the number recorded (default ``L.item()``; data-parallel ranks average over
    the group). ``eval_fn(model)`` runs in eval mode at step 0, every ``eval_every`` steps and after
    the last. ``progress``: a tqdm bar (a string names it), False for none.

    The record: per-step ``loss``, ``lr`` and ``step_seconds``, ``eval`` pairs (step, value) and
    the total ``seconds`` (the step-0 evaluation excluded).
    """
    check_int("steps", steps)
    check_int("eval_every", eval_every, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer if optimizer is not None else adamw(params, optim)
    device = next(model.parameters()).device
    log_loss = log_loss or torch.Tensor.item
    record: dict = {"loss": [], "lr": [], "step_seconds": [], "eval": []}
    evaluate = eval_fn is not None and eval_every > 0
    if evaluate:
        record["eval"].append((0, float(eval_fn(model.eval()))))
    start = time.perf_counter()
    model.train()
    stream = iter(batches)
    bar = tqdm(range(steps), desc=progress if isinstance(progress, str) else "train", disable=not progress)
    for step in bar:
        step_start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, optim.lr, optim.warmup, optim.min_lr_ratio)
        batch = next(stream, None)
        if batch is None:
            raise ValueError(f"batches ran out after {step} batches; steps={steps} needs one batch per step")
        batch = to_device(batch, device)
        opt.zero_grad()
        with autocast(device):
            loss = loss_fn(model, batch)
        if backward:
            loss.backward()
        if optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        opt.step()
        record["step_seconds"].append(time.perf_counter() - step_start)
        record["loss"].append(log_loss(loss.detach()))
        record["lr"].append(opt.param_groups[0]["lr"])
        bar.set_postfix(loss=f"{record['loss'][-1]:.3f}")
        if evaluate and ((step + 1) % eval_every == 0 or step + 1 == steps):
            record["eval"].append((step + 1, float(eval_fn(model.eval()))))
            model.train()
    model.eval()
    record["seconds"] = time.perf_counter() - start
    return record
