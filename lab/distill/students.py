"""Students: shallower copies of a teacher, and DistilBERT's initialisation from teacher layers.

A student keeps the teacher's width C (so teacher weights fit it) and has L_S < L_T layers
(student and teacher depths, ``n_student`` and ``n_teacher``). DistilBERT initialises it by
"taking one layer out of two" of the teacher: student layer i starts as teacher layer
``teacher_layer_indices(L_T, L_S)[i]`` = ⌊i·L_T/L_S⌋ (L_T = 6: L_S = 3 → 0, 2, 4; L_S = 2 → 0, 3),
and embeddings, norms and output head are copied as they are.
TinyBERT's layer-wise losses pair layers with its uniform map π(m) = m·L_T/L_S (`uniform_layer_map`);
DistilBERT's cosine loss and MiniLM's relations use the last layer only.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn

from lab.core.checks import check_choice, check_int
from lab.models.gpt import GPT, check_gpt

# "layers.3.attn.q_proj.weight" (lab GPT) or "encoder.layer.3.attention..." (transformers BERT)
_LAYER_KEY = re.compile(r"(^|\.)(layers|layer)\.(\d+)\.")


def _check_depths(n_teacher: int, n_student: int) -> None:
    check_int("n_teacher", n_teacher)
    check_int("n_student", n_student)
    if n_student > n_teacher:
        raise ValueError(f"n_student={n_student} must be <= n_teacher={n_teacher}")


def teacher_layer_indices(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layer ⌊i·L_T/L_S⌋ for student layer i = 0 … L_S−1 (every other layer when L_S = L_T/2)."""
    _check_depths(n_teacher, n_student)
    return [i * n_teacher // n_student for i in range(n_student)]


def uniform_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Hidden-state pairs (m, ⌊m·L_T/L_S⌋) for m = 1 … L_S: student output m learns teacher output π(m).

    Indices count hidden states (0 = embeddings, m = output of layer m−1); for attention maps
    of layers use (m − 1, π(m) − 1).
    """
    _check_depths(n_teacher, n_student)
    return [(m, m * n_teacher // n_student) for m in range(1, n_student + 1)]


def _n_layers(state: dict[str, torch.Tensor]) -> int:
    indices = {int(m.group(3)) for k in state if (m := _LAYER_KEY.search(k))}
    if indices != set(range(len(indices))) or not indices:
        raise ValueError("model has no numbered layers ('layers.i.' or 'layer.i.' in its parameter names)")
    return len(indices)


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module) -> list[int]:
    """Copy the teacher's weights into ``student`` in place; return the teacher layer of each student layer.

    Both models must be the same architecture except for depth (names like ``layers.i.`` or
    ``layer.i.``); every non-layer tensor (embeddings, norms, head) is copied as is, student
    layer i from teacher layer ⌊i·L_T/L_S⌋.
    """
    for name, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    s_state, t_state = student.state_dict(), teacher.state_dict()
    indices = teacher_layer_indices(_n_layers(t_state), _n_layers(s_state))
    for key, value in s_state.items():
        src = _LAYER_KEY.sub(lambda m: f"{m.group(1)}{m.group(2)}.{indices[int(m.group(3))]}.", key, count=1)
        if src not in t_state or t_state[src].shape != value.shape:
            raise ValueError(f"student tensor {key} {tuple(value.shape)} has no teacher counterpart of that shape "
                             f"({src}); the student must be the teacher's architecture with fewer layers")
        value.copy_(t_state[src])
    return indices


def gpt_student(teacher: GPT, n_layer: int, from_teacher: bool = True, seed: int = 0) -> GPT:
    """A lab `GPT` with the teacher's config but ``n_layer`` layers, in eval mode.

    from_teacher=True: DistilBERT's initialisation (`init_from_teacher`); else the GPT's own
    random initialisation, seeded by ``seed``.
    """
    check_gpt("teacher", teacher)
    check_int("n_layer", n_layer, 1, teacher.config.n_layer)
    check_choice("from_teacher", from_teacher, (True, False))
    check_int("seed", seed, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = GPT(replace(teacher.config, n_layer=n_layer))
    param = next(teacher.parameters())
    student = student.to(device=param.device, dtype=param.dtype)
    if from_teacher:
        init_from_teacher(student, teacher)
    return student.eval()
