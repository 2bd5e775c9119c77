"""What a distillation loss reads from a model: logits, per-layer hidden states, the last layer's relations.

`gpt_outputs` runs a lab `GPT` unchanged and collects, with forward hooks on ``model.layers``,

* hidden states h[0..L], each (B, T, C): h[0] is the embedding output (input of layer 0),
  h[i] the output of layer i − 1 (the residual stream before the final norm);
* the last layer's self-attention relations (MiniLM's), recomputed from the input its attention
  module receives, each (B, n_h, T, T) float32 log-probabilities under the model's causal mask:
  log A = log softmax(q kᵀ / √D + mask) with rotary q, k, exactly as the model's own
  ``scaled_dot_product_attention`` weights the values, and the value relation
  log VR = log softmax(v vᵀ / √D + mask). The n_kv key/value heads are repeated to the n_h query
  heads (grouped-query attention), as the model does.

The hooks only read; the logits are those of ``model(idx)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lab.core.checks import check_choice, check_tensor
from lab.distill.losses import FLOATS, _log_softmax
from lab.models.gpt import GPT, Attention, apply_rope, check_gpt


@dataclass
class Outputs:
    """logits (B, T, V) or (B, V); hidden: L+1 tensors (B, T, C) or None; attention and value_relation:
    the last layer's log A and log VR, each (B, n_h, T, T), or None."""

    logits: torch.Tensor
    hidden: list[torch.Tensor] | None = None
    attention: torch.Tensor | None = None
    value_relation: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_tensor("logits", self.logits, (2, 3), FLOATS)
        if self.hidden is not None and not (isinstance(self.hidden, (list, tuple))
                                            and all(isinstance(h, torch.Tensor) for h in self.hidden)):
            raise TypeError(f"hidden must be a list of tensors (B, T, C) or None, got {type(self.hidden).__name__}")
        for name in ("attention", "value_relation"):
            if getattr(self, name) is not None:
                check_tensor(name, getattr(self, name), 4, FLOATS)

    def to(self, device: torch.device) -> Outputs:
        hidden = None if self.hidden is None else [h.to(device) for h in self.hidden]
        maps = [None if m is None else m.to(device) for m in (self.attention, self.value_relation)]
        return Outputs(self.logits.to(device), hidden, *maps)


OutputsFn = Callable[[nn.Module, object, bool, bool], Outputs]


def _heads(attn: Attention, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """proj(x) for x (B, T, C), split into heads of D = ``attn.cfg.head_dim``: (B, heads, T, D)."""
    B, T, _ = x.shape
    D = attn.cfg.head_dim
    return proj(x).view(B, T, proj.out_features // D, D).transpose(1, 2)


def _causal_log_softmax(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log softmax(a bᵀ / √D + causal mask), float32 (B, n, T, T), for a and b (B, n, T, D)."""
    T, D = a.shape[-2], a.shape[-1]
    scores = a.float() @ b.float().transpose(-1, -2) / math.sqrt(D)
    future = torch.ones(T, T, dtype=torch.bool, device=a.device).triu(1)
    return _log_softmax(scores.masked_fill(future, float("-inf")))


def _check_input(attn: Attention, x: torch.Tensor) -> None:
    """``attn`` is a lab GPT attention module and x its input (B, T, C) float with C = its model width."""
    if not isinstance(attn, Attention):
        raise TypeError(f"attn must be a lab GPT Attention module (model.layers[i].attn), got {type(attn).__name__}")
    check_tensor("x", x, 3, FLOATS)
    if x.shape[-1] != attn.q_proj.in_features or x.numel() == 0:
        raise ValueError(f"x must have shape (B, T, C) with C = d_model = {attn.q_proj.in_features} and B, T >= 1, "
                         f"got {tuple(x.shape)}")


def attention_log_probs(attn: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """log A = log softmax(q kᵀ / √D + causal mask), float32 (B, n_h, T, T), for the input x (B, T, C)
    of ``attn``: rotary q and k, the n_kv key heads repeated to the n_h query heads; cos, sin (T, D) of
    `lab.models.gpt.rope_cos_sin`."""
    _check_input(attn, x)
    want = (x.shape[1], attn.cfg.head_dim)
    for name, table in (("cos", cos), ("sin", sin)):
        check_tensor(name, table, dtypes=FLOATS)
        if tuple(table.shape[-2:]) != want or table.dim() > 4:
            raise ValueError(f"{name} must have shape (T, D) = {want} (rope_cos_sin), got {tuple(table.shape)}")
    q = apply_rope(_heads(attn, attn.q_proj, x), cos, sin)
    k = apply_rope(_heads(attn, attn.k_proj, x), cos, sin)
    return _causal_log_softmax(q, k.repeat_interleave(q.shape[1] // k.shape[1], dim=1))


def value_relation_log_probs(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """MiniLM's value relation log VR = log softmax(v vᵀ / √D + causal mask), float32 (B, n_h, T, T),
    for the input x (B, T, C) of ``attn``: the n_kv value heads repeated to the n_h query heads."""
    _check_input(attn, x)
    v = _heads(attn, attn.v_proj, x)
    v = v.repeat_interleave(attn.q_proj.out_features // attn.v_proj.out_features, dim=1)
    return _causal_log_softmax(v, v)


def gpt_outputs(model: GPT, idx: torch.Tensor, hidden: bool = False, attention: bool = False) -> Outputs:
    """``model(idx)`` for ids (B, T) int64, with the hidden states and/or the last layer's log A and
    log VR if asked."""
    check_gpt("model", model)
    check_tensor("idx", idx, 2, (torch.int64, torch.int32))
    check_choice("hidden", hidden, (True, False))
    check_choice("attention", attention, (True, False))
    states: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    handles = []
    if hidden:
        handles.append(model.layers[0].register_forward_pre_hook(lambda m, args: states.append(args[0])))
        handles += [block.register_forward_hook(lambda m, args, out: states.append(out)) for block in model.layers]
    if attention:
        handles.append(model.layers[-1].attn.register_forward_pre_hook(
            lambda m, args: maps.extend((attention_log_probs(m, *args), value_relation_log_probs(m, args[0])))))
    try:
        logits = model(idx)
    finally:
        for handle in handles:
            handle.remove()
    return Outputs(logits, states if hidden else None, *(maps if attention else (None, None)))
