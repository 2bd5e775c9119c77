"""The KV cache: keep every position's keys and values so that a decode step computes one token.

Without a cache, producing token t re-runs the model on all t tokens: O(t) weight work and O(t²)
attention per token. Keys and values of earlier positions never change (causal attention), so a
cache stores them and a decode step runs the model on the new token only, attending to the stored
keys. Its size, for S cached positions per sequence and σ bytes per element,

    KV bytes = 2 · L · n_kv · D · S · B · σ           (`lab.params.memory.kv_cache_bytes`, with S = T)

Shapes (symbols of `book/notation.md`): B batch, T new tokens in this call, S cached positions
attended to (S_max = ``max_len``: the capacity of a `StaticKVCache`), L layers, n_h query heads,
n_kv key/value heads, G = n_h / n_kv, D head dimension, V vocabulary.

`forward_cached` walks a lab `GPT` (its own modules, so a model whose linears were swapped for
`lab.quant` int4/int8 layers or structurally pruned runs unchanged) and delegates the attention of
every layer to the cache: ``attend(layer, q, k, v)`` stores the new k, v and returns softmax(q kᵀ/√D
+ mask) v over all cached positions. `StaticKVCache` is one pre-allocated buffer per layer, so its
tensors never move: the precondition for capturing a decode step in a CUDA graph
(`lab.infer.cuda_graph`). The paged cache (`lab.infer.paged`) implements the same ``attend``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lab.core.checks import check_int
from lab.models.gpt import GPT, apply_rope, rope_cos_sin_at

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def causal_mask(positions: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Boolean mask (B, T, S), S = ``n_keys``: the query at positions[b, i] may see key j iff j ≤ positions[b, i]."""
    return torch.arange(n_keys, device=positions.device) <= positions[:, :, None]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √D, masked) v with grouped-query heads, without copying k and v per query head.

    q (B, n_h, T, D); k, v (B, n_kv, S, D); mask (B, T, S) bool; returns (B, n_h, T, D).
    Query head h uses kv head h // G (as ``repeat_interleave`` in `lab.models.gpt`): the G query
    heads of one kv head are folded into its rows, q → (B, n_kv, G·T, D), so each cached key is
    read once per kv head instead of G times.
    """
    B, n_h, T, D = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    G = n_h // n_kv
    q = q.reshape(B, n_kv, G * T, D)
    mask = mask[:, None, None].expand(B, 1, G, T, S).reshape(B, 1, G * T, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).reshape(B, n_h, T, D)


def forward_cached(model: GPT, idx: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
    """Logits (B, T, V) of new tokens idx (B, T) at absolute positions (B, T), attending through ``attend``.

    The layer computation is `lab.models.gpt.Block`'s: pre-norm attention and SwiGLU MLP, rotary
    embeddings at each token's own position.
    """
    B, T = idx.shape
    D = model.config.head_dim
    cos, sin = rope_cos_sin_at(positions, D, model.config.rope_theta)
    cos, sin = cos[:, None], sin[:, None]                            # (B, 1, T, D): broadcast over heads
    x = model.embed_tokens(idx)
    for i, block in enumerate(model.layers):
        attn = block.attn
        n_h, n_kv = attn.q_proj.out_features // D, attn.k_proj.out_features // D
        h = block.attn_norm(x)
        q = attn.q_proj(h).view(B, T, n_h, D).transpose(1, 2)
        k = attn.k_proj(h).view(B, T, n_kv, D).transpose(1, 2)
        v = attn.v_proj(h).view(B, T, n_kv, D).transpose(1, 2)
        y = attend(i, apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(B, T, n_h * D))
        x = x + block.mlp(block.mlp_norm(x))
    return model.lm_head(model.norm(x))


class StaticKVCache:
    """Keys and values of every layer in buffers allocated once: ``k[l]``, ``v[l]`` (B, n_kv of layer l, S_max, D).

    ``attention(positions, n_keys)`` returns the ``attend`` of one forward: it writes the new keys
    and values at their positions (``scatter_``, so rows may sit at different positions) and attends
    over the first S = ``n_keys`` slots with the causal mask. ``n_keys=None`` attends over all S_max
    slots (positions past a row's own are masked): a fixed shape, for CUDA graphs. Slots past the
    current length are never read unmasked, so rolling back (speculative decoding) only means
    writing the next tokens at earlier positions.
    """

    def __init__(self, model: GPT, batch: int, max_len: int, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        check_int("batch", batch)
        check_int("max_len", max_len)
        param = next(model.parameters())
        dtype = dtype or (param.dtype if param.is_floating_point() else torch.float32)
        D = model.config.head_dim
        self.batch, self.max_len = batch, max_len
        self.k = [torch.zeros(batch, block.attn.k_proj.out_features // D, max_len, D, dtype=dtype,
                              device=device or param.device) for block in model.layers]
        self.v = [torch.zeros_like(k) for k in self.k]

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    def attention(self, positions: torch.Tensor, n_keys: int | None = None) -> Attend:
        if n_keys is not None:
            check_int("n_keys", n_keys, 1, self.max_len)
        n_keys = self.max_len if n_keys is None else n_keys
        mask = causal_mask(positions, n_keys)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            index = positions[:, None, :, None].expand_as(k)
            self.k[layer].scatter_(2, index, k.to(self.k[layer].dtype))
            self.v[layer].scatter_(2, index, v.to(self.v[layer].dtype))
            k_all, v_all = self.k[layer][:, :, :n_keys], self.v[layer][:, :, :n_keys]
            return masked_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), mask)

        return attend
