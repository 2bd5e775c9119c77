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

from lab.core.checks import check_float_dtype, check_int, check_tensor
from lab.models.gpt import GPT, apply_rope, check_gpt, rope_cos_sin_at

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
INDEX_DTYPES = (torch.int64, torch.int32)        # token ids and positions (checked by dtype only: no read-back)


def check_positions(positions: torch.Tensor, shape: tuple[int, ...] | None = None, name: str = "positions") -> None:
    """``positions`` is a (B, T) integer tensor (of ``shape`` if given); shape and dtype only, no read-back."""
    check_tensor(name, positions, 2, INDEX_DTYPES)
    if shape is not None and tuple(positions.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(positions.shape)}")


def check_token_ids(name: str, ids: torch.Tensor, model: GPT, dims: int = 2) -> None:
    """``ids`` is an int64/int32 tensor of ``dims`` dimensions holding token ids of ``model``'s vocabulary,
    [0, V) (an id past it would index the embedding out of range). Reads the range back: call it once, at entry."""
    check_tensor(name, ids, dims, INDEX_DTYPES)
    V = model.config.vocab_size
    if ids.numel() and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"{name} must be token ids in [0, vocab_size={V}), got values in "
                         f"[{ids.min().item()}, {ids.max().item()}]")


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
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 4)
    if not q.is_floating_point() or not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must share one floating dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    check_tensor("mask", mask, 3, (torch.bool,))            # a float mask would be added to the scores
    B, n_h, T, D = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    if v.shape != k.shape or k.shape[0] != B or k.shape[3] != D or n_kv == 0 or n_h % n_kv:
        raise ValueError(f"k and v must have shape (B, n_kv, S, D) with n_kv dividing n_h, for q (B, n_h, T, D) = "
                         f"{tuple(q.shape)}; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if mask.shape[0] not in (1, B) or mask.shape[1:] != (T, S):
        raise ValueError(f"mask must have shape (B, T, S) = ({B}, {T}, {S}) (or batch 1), got {tuple(mask.shape)}")
    return unchecked_attention(q, k, v, mask)


def unchecked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`masked_attention` without its checks: the caches call it in every layer with tensors they built."""
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
    check_gpt("model", model)
    check_tensor("idx", idx, 2, INDEX_DTYPES)
    check_positions(positions, idx.shape)
    if not callable(attend):
        raise TypeError(f"attend must be callable (layer, q, k, v) -> attention output, got {type(attend).__name__}")
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
        check_gpt("model", model)
        check_int("batch", batch)
        check_int("max_len", max_len, 1, model.config.context_length)      # at most the context length
        param = next(model.parameters())
        dtype = check_float_dtype("dtype", dtype) if dtype is not None else (
            param.dtype if param.is_floating_point() else torch.float32)
        D = model.config.head_dim
        self.batch, self.max_len = batch, max_len
        self.k = [torch.zeros(batch, block.attn.k_proj.out_features // D, max_len, D, dtype=dtype,
                              device=device or param.device) for block in model.layers]
        self.v = [torch.zeros_like(k) for k in self.k]

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    def attention(self, positions: torch.Tensor, n_keys: int | None = None) -> Attend:
        """The ``attend`` of a forward whose new tokens sit at ``positions`` (batch, T), integers < ``n_keys``
        (not checked: it would read them back at every step)."""
        check_positions(positions)
        if len(positions) != self.batch:
            raise ValueError(f"positions must have one row per cache row ({self.batch}), got {tuple(positions.shape)}")
        if n_keys is not None:
            check_int("n_keys", n_keys, 1, self.max_len)
        n_keys = self.max_len if n_keys is None else n_keys
        mask = causal_mask(positions, n_keys)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            index = positions[:, None, :, None].expand_as(k)
            self.k[layer].scatter_(2, index, k.to(self.k[layer].dtype))
            self.v[layer].scatter_(2, index, v.to(self.v[layer].dtype))
            k_all, v_all = self.k[layer][:, :, :n_keys], self.v[layer][:, :, :n_keys]
            return unchecked_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), mask)

        return attend
