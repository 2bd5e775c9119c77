"""What a distillation loss reads from a model: logits, per-layer hidden states, attention maps.

`gpt_outputs` runs a lab `GPT` unchanged and collects, with forward hooks on ``model.layers``,

* hidden states h[0..L], each (B, T, C): h[0] is the embedding output (input of layer 0),
  h[i] the output of layer i − 1 (the residual stream before the final norm);
* attention log-probabilities log A[0..L−1], each (B, n_h, T, T): recomputed from the input each
  attention module receives, log softmax(q kᵀ / √D + causal mask) with rotary q, k and the
  n_kv key heads repeated to the n_h query heads (grouped-query attention), exactly as the
  model's own ``scaled_dot_product_attention`` weights them.

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
    """logits (B, T, V) or (B, V); hidden: L+1 tensors (B, T, C) or None; attention: L tensors (B, n_h, T, T)
    or None."""

    logits: torch.Tensor
    hidden: list[torch.Tensor] | None = None
    attention: list[torch.Tensor] | None = None

    def to(self, device: torch.device) -> Outputs:
        move = (lambda xs: None if xs is None else [x.to(device) for x in xs])
        return Outputs(self.logits.to(device), move(self.hidden), move(self.attention))


OutputsFn = Callable[[nn.Module, object, bool, bool], Outputs]


def attention_log_probs(attn: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """log A = log softmax(q kᵀ / √D + causal mask), float32 (B, n_h, T, T), for the input x (B, T, C)
    of ``attn``."""
    B, T, _ = x.shape
    D = attn.cfg.head_dim
    n_h, n_kv = attn.q_proj.out_features // D, attn.k_proj.out_features // D
    q = apply_rope(attn.q_proj(x).view(B, T, n_h, D).transpose(1, 2), cos, sin)
    k = apply_rope(attn.k_proj(x).view(B, T, n_kv, D).transpose(1, 2), cos, sin)
    k = k.repeat_interleave(n_h // n_kv, dim=1)
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(D)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    return log_softmax(scores.masked_fill(future, float("-inf")))


def gpt_outputs(model: GPT, idx: torch.Tensor, hidden: bool = False, attention: bool = False) -> Outputs:
    """``model(idx)`` for ids (B, T) int64, with hidden states and/or attention log-probs if asked."""
    states: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    handles = []
    if hidden:
        handles.append(model.layers[0].register_forward_pre_hook(lambda m, args: states.append(args[0])))
        handles += [block.register_forward_hook(lambda m, args, out: states.append(out)) for block in model.layers]
    if attention:
        handles += [block.attn.register_forward_pre_hook(lambda m, args: maps.append(attention_log_probs(m, *args)))
                    for block in model.layers]
    try:
        logits = model(idx)
    finally:
        for handle in handles:
            handle.remove()
    return Outputs(logits, states if hidden else None, maps if attention else None)
