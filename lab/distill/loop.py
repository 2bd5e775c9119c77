"""`distill`: train a student on a teacher's outputs — `lab.models.loop.train` with the loss `KDLoss`.

Loss of one batch (inputs, y):

    L = α·τ²·KL(p_T^τ ‖ p_S^τ) + (1 − α)·CE(p_S, y)          (`kd_loss`; α = 0 is plain CE)
      + β_h · hidden_state_loss(h_S, h_T, hidden_map)        (DistilBERT: the last layer's cosine)
      + β_a · minilm_loss(A_S, A_T, VR_S, VR_T)              (MiniLM: the last layer's relations)

The optimisation is the book's one loop (AdamW, warm-up + cosine, clipping, bf16 autocast on a
GPU). The teacher runs without gradients; a `TeacherCache` keeps its outputs per batch so that
several students trained on the same batches pay for the teacher once.

Symbols as in `book/notation.md`: τ the temperature (``temperature``), subscripts S and T the
student and the teacher, L_S and L_T their numbers of layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lab.core.checks import check_choice, check_fraction, check_int, check_number, check_tensor
from lab.distill.features import Outputs, OutputsFn, gpt_outputs
from lab.distill.losses import HIDDEN_KINDS, KINDS, _check_pairs, cross_entropy, hidden_state_loss, kd_loss, minilm_loss
from lab.models.loop import Optim, autocast, to_device, train

Batch = tuple[object, torch.Tensor]  # (model inputs: ids (B, T) or a dict of tensors, labels)


class TeacherCache:
    """The teacher's `Outputs` for batch number i, computed once under ``no_grad`` and kept.

    Valid only for one fixed list of batches: index i must always mean the same batch.
    keep=False recomputes every time (long GPU runs, where the logits of every batch would not fit).
    """

    def __init__(self, teacher: nn.Module, outputs_fn: OutputsFn = gpt_outputs, keep: bool = True) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        if next(teacher.parameters(), None) is None:
            raise ValueError(f"teacher {type(teacher).__name__} has no parameters (they give the device it runs on)")
        _check_callable("outputs_fn", outputs_fn)
        check_choice("keep", keep, (True, False))
        self.teacher = teacher.eval()
        self.outputs_fn = outputs_fn
        self.keep = keep
        self._store: dict[int, Outputs] = {}

    @torch.no_grad()
    def __call__(self, index: int, inputs: object, hidden: bool, attention: bool) -> Outputs:
        cached = self._store.get(index)
        if cached is None or (hidden and cached.hidden is None) or (attention and cached.attention is None):
            device = next(self.teacher.parameters()).device
            with autocast(device):
                out = self.outputs_fn(self.teacher, to_device(inputs, device), hidden, attention)
            hidden_states = None if out.hidden is None else [h.float() for h in out.hidden]
            maps = [None if m is None else m.float() for m in (out.attention, out.value_relation)]
            cached = Outputs(out.logits.float(), hidden_states, *maps)
            if self.keep:
                self._store[index] = cached
        return cached


@dataclass(frozen=True)
class KDLoss:
    """The distillation loss L of one batch (index i, inputs, y), for `lab.models.loop.train`.

    ``teacher``: a `TeacherCache` (or a model, wrapped in one); i is its key. ``temperature`` τ,
    ``alpha`` α, ``kind`` ("forward" / token-level "reverse" KL): `kd_loss`. ``hidden_weight`` β_h with
    ``hidden_kind`` and ``hidden_map`` ((student, teacher) hidden-state pairs; default DistilBERT's
    [(L_S, L_T)], the last layer's output; TinyBERT's is `uniform_layer_map` with "mse"):
    `hidden_state_loss`. ``attention_weight`` β_a: MiniLM's `minilm_loss` on the last layers' attention
    distributions and value relations. y uses ``ignore_index`` for padding (for
    (B, T) labels also excluded from the feature losses). ``outputs_fn(model, inputs, hidden, attention)``
    reads the student (default: a lab `GPT` on ids (B, T)). With α = 0 and no feature loss the
    teacher is never run: the hard-label baseline.
    """

    teacher: TeacherCache | nn.Module
    temperature: float = 2.0
    alpha: float = 0.5
    kind: str = "forward"
    hidden_weight: float = 0.0
    hidden_kind: str = "cosine"
    hidden_map: Sequence[tuple[int, int]] | None = None
    attention_weight: float = 0.0
    ignore_index: int = -100
    outputs_fn: OutputsFn = gpt_outputs

    def __post_init__(self) -> None:
        _check_callable("outputs_fn", self.outputs_fn)
        if not isinstance(self.teacher, TeacherCache):
            object.__setattr__(self, "teacher", TeacherCache(self.teacher, self.outputs_fn))
        check_number("temperature", self.temperature, 0.0, closed=(False, True))
        check_fraction("alpha", self.alpha)
        check_choice("kind", self.kind, KINDS)
        check_number("hidden_weight", self.hidden_weight, 0.0)
        check_choice("hidden_kind", self.hidden_kind, HIDDEN_KINDS)
        check_number("attention_weight", self.attention_weight, 0.0)
        check_int("ignore_index", self.ignore_index, None)
        if self.hidden_map is not None:
            _check_pairs(self.hidden_map, name="hidden_map")
            if self.hidden_weight == 0:
                raise ValueError(f"hidden_map={self.hidden_map!r} is set but hidden_weight=0.0 turns the hidden-state "
                                 "loss off; set hidden_weight > 0 or leave hidden_map None")

    def __call__(self, student: nn.Module, batch: tuple[int, object, torch.Tensor]) -> torch.Tensor:
        if not (isinstance(batch, tuple) and len(batch) == 3):      # `distill` builds it; a direct call may not
            raise TypeError(f"batch must be a tuple (index, inputs, labels), got {batch!r:.80}")
        index, inputs, y = batch
        use_hidden, use_attention = self.hidden_weight > 0, self.attention_weight > 0
        out = self.outputs_fn(student, inputs, use_hidden, use_attention)
        if not (self.alpha > 0 or use_hidden or use_attention):
            return cross_entropy(out.logits, y, self.ignore_index)
        t_out = self.teacher(index, inputs, use_hidden, use_attention).to(out.logits.device)
        loss = kd_loss(out.logits, t_out.logits, y, self.temperature, self.alpha, self.kind, self.ignore_index)
        mask = (y != self.ignore_index) if y.dim() == 2 else None
        if use_hidden:
            pairs = self.hidden_map or [(len(out.hidden) - 1, len(t_out.hidden) - 1)]
            loss = loss + self.hidden_weight * hidden_state_loss(out.hidden, t_out.hidden, pairs, self.hidden_kind,
                                                                 mask)
        if use_attention:
            loss = loss + self.attention_weight * minilm_loss(out.attention, t_out.attention, out.value_relation,
                                                              t_out.value_relation, mask)
        return loss


def distill(student: nn.Module, batches: Sequence[Batch], steps: int, loss: KDLoss, *, optim: Optim = Optim(),
            eval_every: int = 0, eval_fn: Callable[[nn.Module], float] | None = None,
            progress: bool | str = True) -> dict:
    """Train ``student`` in place for ``steps`` steps on ``batches`` (cycled) with ``loss``; return the record.

    ``batches``: (inputs, y) pairs; step t trains on batch t mod len(batches), which is also the
    teacher cache's key. ``optim``, ``eval_every``, ``eval_fn``, ``progress``: as in `lab.models.loop.train`
    (``eval`` pairs at step 0, every ``eval_every`` steps and at the end). The record is that
    loop's plus ``examples_seen``. DistilBERT's initialisation is a separate step before:
    `init_from_teacher` (or `gpt_student`).
    """
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be an nn.Module, got {type(student).__name__}")
    check_int("steps", steps)
    if not isinstance(batches, Sequence) or isinstance(batches, (str, bytes)):
        raise TypeError(f"batches must be a list of (inputs, labels) pairs, got {type(batches).__name__}")
    if len(batches) == 0:
        raise ValueError("batches must hold at least one (inputs, labels) pair")
    for i, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"batches[{i}] must be an (inputs, labels) pair, got {type(batch).__name__}")
        check_tensor(f"batches[{i}] labels", batch[1], dtypes=(torch.int64, torch.int32))
    _check_callable("loss", loss)
    if not isinstance(optim, Optim):
        raise TypeError(f"optim must be an Optim, got {type(optim).__name__}")
    check_int("eval_every", eval_every, 0)
    if eval_fn is not None:
        _check_callable("eval_fn", eval_fn)
    elif eval_every:
        raise ValueError(f"eval_every={eval_every!r} needs an eval_fn to call; pass eval_fn or eval_every=0")
    if not isinstance(progress, (bool, str)):
        raise TypeError(f"progress must be a bool or a bar name (str), got {progress!r}")
    n = len(batches)
    numbered = ((t % n, *batches[t % n]) for t in range(steps))
    record = train(student, numbered, loss, steps, optim=optim, eval_every=eval_every, eval_fn=eval_fn,
                   progress="distill" if progress is True else progress)
    record["examples_seen"] = sum(len(batches[t % n][1]) for t in range(steps))
    return record


def _check_callable(name: str, value) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {value!r}")
