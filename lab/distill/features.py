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

from lab.distill.losses import log_softmax
from lab.models.gpt import GPT, Attention, apply_rope


@dataclass
class Outputs:
    """logits (B, T, V) or (B, V); hidden: L+1 tensors (B, T, C) or None; attention and value_relation:
    the last layer's log A and log VR, each (B, n_h, T, T), or None."""

    logits: torch.Tensor
    hidden: list[torch.Tensor] | None = None
    attention: torch.Tensor | None = None
    value_relation: torch.Tensor | None = None

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
    return log_softmax(scores.masked_fill(future, float("-inf")))


def attention_log_probs(attn: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """log A = log softmax(q kᵀ / √D + causal mask), float32 (B, n_h, T, T), for the input x (B, T, C)
    of ``attn``: rotary q and k, the n_kv key heads repeated to the n_h query heads."""
    q = apply_rope(_heads(attn, attn.q_proj, x), cos, sin)
    k = apply_rope(_heads(attn, attn.k_proj, x), cos, sin)
    return _causal_log_softmax(q, k.repeat_interleave(q.shape[1] // k.shape[1], dim=1))


def value_relation_log_probs(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """MiniLM's value relation log VR = log softmax(v vᵀ / √D + causal mask), float32 (B, n_h, T, T),
    for the input x (B, T, C) of ``attn``: the n_kv value heads repeated to the n_h query heads."""
    v = _heads(attn, attn.v_proj, x)
    v = v.repeat_interleave(attn.q_proj.out_features // attn.v_proj.out_features, dim=1)
    return _causal_log_softmax(v, v)


def gpt_outputs(model: GPT, idx: torch.Tensor, hidden: bool = False, attention: bool = False) -> Outputs:
    """``model(idx)`` for ids (B, T) int64, with the hidden states and/or the last layer's log A and
    log VR if asked."""
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
