"""`distill`: train a student on a teacher's outputs.

Loss per step on a batch (inputs, y):

    L = α·T²·KL(p_T^τ ‖ p_S^τ) + (1 − α)·CE(p_S, y)          (`kd_loss`; α = 0 is plain CE)
      + β_h · hidden_state_loss(h_S, h_T, hidden_map)        (DistilBERT / TinyBERT)
      + β_a · attention_transfer_loss(A_S, A_T, attention_map)  (MiniLM)

AdamW, linear warm-up + cosine decay (`lab.models.train.lr_at`), gradient clipping, bf16 autocast
on a GPU. The teacher runs without gradients; a `TeacherCache` keeps its outputs per batch so
that several students trained on the same batches pay for the teacher once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from lab.distill.features import Outputs, OutputsFn, gpt_outputs
from lab.distill.losses import (
    attention_transfer_loss,
    cross_entropy,
    hidden_state_loss,
    kd_loss,
)
from lab.distill.students import init_from_teacher, uniform_layer_map
from lab.models.train import lr_at

Batch = tuple[object, torch.Tensor]  # (model inputs: ids (B, T) or a dict of tensors, labels)


def _to(inputs: object, device: torch.device) -> object:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class TeacherCache:
    """The teacher's `Outputs` for batch number i, computed once under ``no_grad`` and kept.

    Valid only for one fixed list of batches: index i must always mean the same batch.
    keep=False recomputes every time (long GPU runs, where the logits of every batch would not fit).
    """

    def __init__(self, teacher: nn.Module, outputs_fn: OutputsFn = gpt_outputs, keep: bool = True) -> None:
        self.teacher = teacher.eval()
        self.outputs_fn = outputs_fn
        self.keep = keep
        self._store: dict[int, Outputs] = {}

    @torch.no_grad()
    def __call__(self, index: int, inputs: object, hidden: bool, attention: bool) -> Outputs:
        cached = self._store.get(index)
        if cached is None or (hidden and cached.hidden is None) or (attention and cached.attention is None):
            device = next(self.teacher.parameters()).device
            with _autocast(device):
                out = self.outputs_fn(self.teacher, _to(inputs, device), hidden, attention)
            cached = Outputs(out.logits.float(), None if out.hidden is None else [h.float() for h in out.hidden],
                             None if out.attention is None else [a.float() for a in out.attention])
            if self.keep:
                self._store[index] = cached
        return cached


def _check(steps: int, batches: Sequence[Batch], lr: float, hidden_weight: float, attention_weight: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if len(batches) == 0:
        raise ValueError("batches must hold at least one (inputs, labels) pair")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    for name, w in (("hidden_weight", hidden_weight), ("attention_weight", attention_weight)):
        if not w >= 0:
            raise ValueError(f"{name} must be >= 0, got {w}")


def distill(teacher: nn.Module | TeacherCache, student: nn.Module, batches: Sequence[Batch], steps: int, *,
            temperature: float = 2.0, alpha: float = 0.5, kind: str = "forward",
            hidden_weight: float = 0.0, hidden_kind: str = "cosine",
            hidden_map: Sequence[tuple[int, int]] | None = None,
            attention_weight: float = 0.0, attention_map: Sequence[tuple[int, int]] | None = None,
            init_student_from_teacher: bool = False, lr: float = 1e-3, warmup: int = 10,
            weight_decay: float = 0.1, grad_clip: float = 1.0, eval_every: int = 0,
            eval_fn: Callable[[nn.Module], float] | None = None, outputs_fn: OutputsFn = gpt_outputs,
            ignore_index: int = -100, progress: bool = True, desc: str = "distill") -> dict:
    """Train ``student`` in place for ``steps`` steps on ``batches`` (cycled); return the record.

    ``batches``: (inputs, y) pairs; inputs go to ``outputs_fn(model, inputs, hidden, attention)``
    (default: a lab `GPT` on ids (B, T)); y are labels of the logits' leading shape, with
    ``ignore_index`` for padding (for (B, T) labels also excluded from the feature losses).
    ``teacher``: a model, or a `TeacherCache` shared between runs on the same ``batches``.
    ``hidden_map`` / ``attention_map``: (student, teacher) index pairs; default TinyBERT's uniform
    map (hidden states m ↔ m·L/M; attention layers m−1 ↔ m·L/M − 1).
    ``init_student_from_teacher``: DistilBERT's initialisation (`init_from_teacher`) before training.
    With α = 0 and no feature loss the teacher is never run: the hard-label baseline.

    The record holds per-step ``loss`` and ``lr``, ``eval`` pairs (step, eval_fn) at step 0 and
    every ``eval_every`` steps, ``seconds`` and ``examples_seen``.
    """
    _check(steps, batches, lr, hidden_weight, attention_weight)
    cache = teacher if isinstance(teacher, TeacherCache) else TeacherCache(teacher, outputs_fn)
    if init_student_from_teacher:
        init_from_teacher(student, cache.teacher)
    use_hidden, use_attention = hidden_weight > 0, attention_weight > 0
    needs_teacher = alpha > 0 or use_hidden or use_attention
    device = next(student.parameters()).device
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
                             {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    record: dict = {"loss": [], "lr": [], "eval": []}
    if eval_fn is not None and eval_every:
        record["eval"].append((0, float(eval_fn(student.eval()))))
    start, seen = time.perf_counter(), 0
    student.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        index = step % len(batches)
        inputs, y = batches[index]
        inputs, y = _to(inputs, device), y.to(device)
        with _autocast(device):
            out = outputs_fn(student, inputs, use_hidden, use_attention)
        if not needs_teacher:
            loss = cross_entropy(out.logits, y, ignore_index)
        else:
            t_out = cache(index, inputs, use_hidden, use_attention).to(device)
            loss = kd_loss(out.logits, t_out.logits, y, temperature, alpha, kind, ignore_index)
            mask = (y != ignore_index) if y.dim() == 2 else None
            if use_hidden:
                pairs = hidden_map or uniform_layer_map(len(out.hidden) - 1, len(t_out.hidden) - 1)
                loss = loss + hidden_weight * hidden_state_loss(out.hidden, t_out.hidden, pairs, hidden_kind, mask)
            if use_attention:
                pairs = attention_map or [(m - 1, t - 1) for m, t in
                                          uniform_layer_map(len(out.attention), len(t_out.attention))]
                loss = loss + attention_weight * attention_transfer_loss(out.attention, t_out.attention, pairs, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        opt.step()
        seen += len(y)
        record["loss"].append(loss.item())
        record["lr"].append(opt.param_groups[0]["lr"])
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if eval_fn is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            record["eval"].append((step + 1, float(eval_fn(student.eval()))))
            student.train()
    student.eval()
    record["seconds"] = time.perf_counter() - start
    record["examples_seen"] = seen
    return record
