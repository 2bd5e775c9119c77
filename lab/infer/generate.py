"""Autoregressive generation from scratch: prefill, then one decode step per new token.

Prefill runs the prompt (B, T₀) through the model once, filling the KV cache, and gives the
distribution of token T₀. Each decode step samples a token, feeds it back, and gets the next
distribution. With ``kv_cache=False`` every step re-runs the whole sequence instead (the baseline
whose per-token cost grows with the length). Greedy decoding (τ = 0) must reproduce
`transformers`' ``generate(do_sample=False)`` token for token; the tests check it.

`Decoder` holds the state both paths share (the cache or the token buffer and the current
length) and is reused by speculative decoding, which needs to feed several tokens at once and to
roll the cache back.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_choice, check_int, check_tensor
from lab.infer.cuda_graph import GraphedDecodeStep
from lab.infer.kv_cache import INDEX_DTYPES, StaticKVCache, forward_cached
from lab.infer.sampling import check_sampling, sample
from lab.models.gpt import GPT, check_gpt


class Decoder:
    """Next-token logits of B sequences that grow together, with a static KV cache or without one.

    ``extend(ids)`` appends ids (B, T) at positions length … length+T−1 and returns their logits
    (B, T, V); ``rewind(n)`` forgets every position ≥ n. ``cuda_graph=True`` replays single-token
    steps from a captured CUDA graph (`GraphedDecodeStep`; needs the KV cache and a GPU).
    """

    def __init__(self, model: GPT, batch: int, max_len: int, kv_cache: bool = True,
                 cuda_graph: bool = False) -> None:
        check_gpt("model", model)
        check_int("batch", batch)
        check_int("max_len", max_len, 1, model.config.context_length)  # at most the context length
        check_flags(kv_cache=kv_cache, cuda_graph=cuda_graph)
        if cuda_graph and not kv_cache:
            raise ValueError("cuda_graph=True needs kv_cache=True (the graph replays a cached decode step)")
        device = next(model.parameters()).device
        self.model, self.batch, self.max_len, self.length, self.device = model, batch, max_len, 0, device
        self.cache = StaticKVCache(model, batch, max_len) if kv_cache else None
        self.ids = None if kv_cache else torch.zeros(batch, max_len, dtype=torch.int64, device=device)
        self.graph = GraphedDecodeStep(model, self.cache) if cuda_graph else None

    @torch.no_grad()
    def extend(self, ids: torch.Tensor) -> torch.Tensor:
        check_tensor("ids", ids, 2, INDEX_DTYPES)      # ids < vocab_size not checked: a read-back per step
        if ids.device != self.device:
            raise ValueError(f"ids is on {ids.device} but the model on {self.device}")
        B, T = ids.shape
        start = self.length
        if B != self.batch or not 0 < T <= self.max_len - start:
            raise ValueError(f"ids of shape {tuple(ids.shape)} do not fit: batch {self.batch}, "
                             f"{self.max_len - start} of {self.max_len} positions left")
        if self.cache is None:
            self.ids[:, start:start + T] = ids
            logits = self.model(self.ids[:, :start + T])[:, start:]
        elif T == 1 and self.graph is not None:
            logits = self.graph(ids[:, 0], torch.full((B,), start, device=ids.device))[:, None].clone()
        else:
            positions = torch.arange(start, start + T, device=ids.device).expand(B, T)
            logits = forward_cached(self.model, ids, positions, self.cache.attention(positions, n_keys=start + T))
        self.length = start + T
        return logits

    def rewind(self, length: int) -> None:
        if not 0 <= check_int("length", length, minimum=None) <= self.length:
            raise ValueError(f"can only rewind to a length in [0, {self.length}], got length={length}")
        self.length = length


def check_flags(**flags: bool) -> None:
    """TypeError/ValueError unless every flag is True or False (a string such as "no" would read as True)."""
    for name, value in flags.items():
        check_choice(name, value, (True, False))


def check_seed(seed: int) -> None:
    """``seed`` of a ``torch.Generator``: an int in [0, 2⁶⁴)."""
    check_int("seed", seed, 0, 2**64 - 1)


def check_eos(model: GPT, eos_token_id: int | None) -> None:
    """TypeError/ValueError unless ``eos_token_id`` is None or a token id of the model's vocabulary, [0, V)."""
    if eos_token_id is not None:
        check_int("eos_token_id", eos_token_id, 0, model.config.vocab_size - 1)


def check_prompt(model: GPT, prompt_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The prompt as (B, T₀) int64 after checking it; ValueError/TypeError naming what is wrong."""
    check_gpt("model", model)
    if not torch.is_tensor(prompt_ids) or prompt_ids.dtype != torch.int64 or prompt_ids.dim() not in (1, 2):
        got = (f"{prompt_ids.dtype} {tuple(prompt_ids.shape)}" if torch.is_tensor(prompt_ids)
               else type(prompt_ids).__name__)
        raise TypeError(f"prompt_ids must be an int64 tensor of shape (T,) or (B, T), got {got}")
    ids = prompt_ids if prompt_ids.dim() == 2 else prompt_ids[None]
    device = next(model.parameters()).device
    if ids.device != device:
        raise ValueError(f"prompt_ids is on {ids.device} but the model on {device}; move it with .to({str(device)!r})")
    if ids.numel() == 0:
        raise ValueError(f"prompt_ids is empty (shape {tuple(prompt_ids.shape)}): give at least one token per row")
    V, context = model.config.vocab_size, model.config.context_length
    if ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"prompt_ids must lie in [0, vocab_size={V}), got values in [{ids.min()}, {ids.max()}]")
    check_int("max_new_tokens", max_new_tokens, 0)
    if ids.shape[1] > context:
        raise ValueError(f"the prompt has {ids.shape[1]} tokens, longer than the model's context of {context}")
    if ids.shape[1] + max_new_tokens > context:
        raise ValueError(f"prompt ({ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's context of {context} tokens")
    return ids


@torch.no_grad()
def generate(model: GPT, prompt_ids: torch.Tensor, max_new_tokens: int, kv_cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             eos_token_id: int | None = None, cuda_graph: bool = False) -> torch.Tensor:
    """The prompt followed by up to ``max_new_tokens`` generated tokens, shape (T₀ + n,) or (B, T₀ + n).

    τ = ``temperature`` = 0 is greedy decoding; τ > 0 samples from softmax(z/τ) after the optional
    top-k / top-p filters (`lab.infer.sampling`), with a ``torch.Generator`` seeded by ``seed``.
    With ``eos_token_id``, a row that produced it is padded with it and generation stops early once
    every row has (as `transformers` does).
    """
    ids = check_prompt(model, prompt_ids, max_new_tokens)
    check_sampling(temperature, top_k, top_p)
    check_eos(model, eos_token_id)
    check_seed(seed)
    check_flags(kv_cache=kv_cache, cuda_graph=cuda_graph)
    B, T0 = ids.shape
    if max_new_tokens == 0:
        return prompt_ids.clone()
    generator = torch.Generator(device=ids.device).manual_seed(seed)
    decoder = Decoder(model, B, T0 + max_new_tokens, kv_cache, cuda_graph)
    logits = decoder.extend(ids)[:, -1]
    out = [ids]
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        token = sample(logits, temperature, top_k, top_p, generator, check=step == 0)   # once: no sync per step
        if eos_token_id is not None:
            token = torch.where(finished, eos_token_id, token)
            finished |= token == eos_token_id
        out.append(token[:, None])
        if step + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
            break
        logits = decoder.extend(token[:, None])[:, -1]
    result = torch.cat(out, dim=1)
    return result if prompt_ids.dim() == 2 else result[0]
