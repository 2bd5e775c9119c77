"""A decode step captured once in a CUDA graph and replayed for every token.

A decode step of an L-layer model launches ≈ 15·L small kernels (norms, projections, rotary
embedding, cache writes, attention, MLP). On an H100 each launch costs a few µs of CPU time, so a
6-layer model spends ≈ 0.3 ms launching work that the GPU finishes far sooner: the step is
launch-bound, not memory-bound. A CUDA graph records the kernels of one step with their arguments
(pointers included) and replays them with one launch.

What a replay needs: every tensor the step reads or writes must sit at the same address in every
replay. So the inputs are static buffers (the token ids and positions are copied into them before
a replay), the KV cache is a `StaticKVCache` (allocated once), attention runs over all S_max cache
slots with a mask computed on the GPU from the positions buffer (no Python-side length), and the
logits come out in the graph's own output tensor. Sampling stays outside the graph.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_int, check_tensor
from lab.infer.kv_cache import INDEX_DTYPES, StaticKVCache, forward_cached
from lab.models.gpt import GPT, check_gpt


class GraphedDecodeStep:
    """Logits (B, V) of one new token per row at given positions, by replaying a captured CUDA graph."""

    def __init__(self, model: GPT, cache: StaticKVCache, warmup: int = 3) -> None:
        check_gpt("model", model)
        if not isinstance(cache, StaticKVCache):
            raise TypeError(f"cache must be a lab.infer.StaticKVCache (fixed addresses), got {type(cache).__name__}")
        if len(cache.k) != len(model.layers):
            raise ValueError(f"cache holds {len(cache.k)} layers, the model has {len(model.layers)}: build the cache "
                             "from this model")
        check_int("warmup", warmup)             # at least one step before capture (compilation, allocations)
        device = cache.k[0].device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model and cache on a CUDA device, got {device}")
        self.model, self.cache, self.warmup = model, cache, warmup
        self.tokens = torch.zeros(cache.batch, 1, dtype=torch.int64, device=device)
        self.positions = torch.zeros(cache.batch, 1, dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def _step(self) -> torch.Tensor:
        attend = self.cache.attention(self.positions, n_keys=None)
        return forward_cached(self.model, self.tokens, self.positions, attend)[:, -1]

    def _capture(self) -> None:
        # Warm-up on a side stream (Triton compilation, cuBLAS handles, allocator), then capture.
        # The warm-up steps run on the real inputs: they write the same keys and values the replay will.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions (B,) int64 → logits (B, V); the returned tensor is overwritten by the next call."""
        for name, t in (("tokens", tokens), ("positions", positions)):   # shape and dtype only: no read-back
            check_tensor(name, t, 1, INDEX_DTYPES)
            if len(t) != self.cache.batch:                                # copy_ would broadcast one row to all
                raise ValueError(f"{name} must have shape ({self.cache.batch},), got {tuple(t.shape)}")
        self.tokens.copy_(tokens.view(-1, 1))
        self.positions.copy_(positions.view(-1, 1))
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits
