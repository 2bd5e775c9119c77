"""Activation checkpointing, from scratch: keep a layer's input, recompute the rest in backward.

Symbols: L = n_layer, B = batch, T = sequence length, C = d_model, F = d_ff, Ψ parameters,
k = ``every``. A decoder layer y = Block(x, cos, sin) normally leaves autograd its whole saved set
(`lab.params.memory.activation_bytes`, "per layer": 40·BTC + 16·BTF + … bytes in fp32). A
checkpointed layer runs its forward under ``no_grad`` and keeps only x, 4·BTC bytes (the residual
stream is fp32 in fp32 and under autocast; cos, sin (T, D) are shared by all layers). In backward it
re-runs Block(x, cos, sin) with grad enabled, under the autocast state of the forward, and backprops
dL/dy through that fresh graph to get dL/dx and dL/dW of the layer's weights; the graph is freed
before the next layer's turn, so at most one layer's full saved set is alive at a time.

`checkpoint_layers(model, every=k)` checkpoints layers 0, k, 2k, … (L_c = ⌈L/k⌉ of them):

    saved activations:  (L − L_c)·per_layer + L_c·4·BTC + model terms        (k = 1: L·4·BTC + model)
    recompute cost:     one more forward of those layers, ≈ 2·Ψ_layer·BT·L_c matmul FLOPs (Ψ_layer
                        weights per layer) on top of ≈ 6·Ψ·BT for forward + backward, a time ratio
                        ≈ 1 + L_c·Ψ_layer / (3Ψ) ≤ 4/3 (k = 1); `recompute_time_ratio` measures it.

It is exact: the recomputed forward is the same computation on the same inputs, so outputs and
gradients equal the plain model's (`checkpoint_gradient_error` measures the largest difference, and
the one to ``torch.utils.checkpoint`` on the same layers). Dropout would need the RNG state saved
with x and restored before the recompute; the lab GPT has no dropout (nor any other random op), so nothing is saved.
Forward hooks on a checkpointed layer's submodules fire twice per step (forward, then recompute).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lab.core.checks import check_int
from lab.core.timing import time_ms
from lab.models.gpt import GPT, Block, check_gpt, rope_cos_sin


class _Recompute(torch.autograd.Function):
    """y = run(x, cos, sin) saving only (x, cos, sin); backward recomputes run with grad enabled.

    The layer's parameters W are inputs of the Function (``*params``, unused by forward) so that
    backward can return dL/dW the way autograd returns any input's gradient.
    """

    @staticmethod
    def forward(ctx, run, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *params: torch.Tensor):
        device = x.device.type
        ctx.run, ctx.params = run, params
        ctx.autocast = {"device_type": device, "enabled": torch.is_autocast_enabled(device),
                        "dtype": torch.get_autocast_dtype(device)}
        ctx.save_for_backward(x, cos, sin)
        with torch.no_grad():
            return run(x, cos, sin)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, cos, sin = ctx.saved_tensors
        needs = (ctx.needs_input_grad[1], *ctx.needs_input_grad[4:])   # x, then each W
        x = x.detach().requires_grad_(needs[0])
        with torch.enable_grad(), torch.autocast(**ctx.autocast):
            y = ctx.run(x, cos, sin)
        wanted = [t for t, need in zip((x, *ctx.params), needs) if need]
        grads = iter(torch.autograd.grad(y, wanted, dy))
        dx, *dW = (next(grads) if need else None for need in needs)
        return None, dx, None, None, *dW


class CheckpointedBlock(Block):
    """A decoder `Block` whose forward goes through `_Recompute` (set by `checkpoint_layers`).

    Same parameters, names and state_dict as the Block it was; (B, T, C) → (B, T, C), any float dtype.
    """

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return _Recompute.apply(super().forward, x, cos, sin, *self.parameters())


def checkpoint_layers(model: GPT, every: int | None) -> GPT:
    """Checkpoint decoder layers 0, every, 2·every, … (``every`` a positive int, or None for none)
    of a lab GPT in place and return it.

    Each chosen ``model.layers[i]`` becomes a `CheckpointedBlock` (its class is switched; its
    parameters, their names and the state_dict do not change); every other layer becomes a plain
    `Block` again, so a second call replaces the first and ``every=None`` undoes checkpointing.
    A block shared by several layers (`lab.params.sharing.share_layers`) must be chosen at all of
    them or at none (every=1 or None).
    """
    check_gpt("model", model)
    if every is not None:
        check_int("every", every)
    picked = [every is not None and i % every == 0 for i in range(len(model.layers))]
    chosen = {id(block) for block, pick in zip(model.layers, picked) if pick}
    for i, (block, pick) in enumerate(zip(model.layers, picked)):
        if not isinstance(block, Block):
            raise TypeError(f"model.layers[{i}] must be a lab.models.gpt.Block, got {type(block).__name__}")
        if (id(block) in chosen) != pick:
            raise ValueError(f"every={every} is not allowed for this model: layer {i} shares its block with "
                             "a layer checkpointed differently; use every=1 or None")
    for block in model.layers:
        block.__class__ = CheckpointedBlock if id(block) in chosen else Block
    return model


def _check_step(model: GPT, batch: int, seq_len: int, every: int) -> torch.Tensor:
    """(batch, seq_len) int64 random token ids (seed 0) on the model's device, after checking the arguments."""
    check_gpt("model", model)
    check_int("batch", batch)
    check_int("seq_len", seq_len, 1, model.config.context_length)
    check_int("every", every)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no parameter with requires_grad=True; there is no gradient to compute")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=gen)
    return idx.to(next(model.parameters()).device)


def _gradients(model: GPT, idx: torch.Tensor, forward) -> list[torch.Tensor]:
    """dL/dW of every trainable parameter for the LM loss of ``forward(model, idx)``, idx its own targets."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(forward(model, idx).flatten(0, 1), idx.flatten()).backward()
    return [p.grad for p in model.parameters() if p.requires_grad]


def _torch_checkpointed(every: int):
    """The lab GPT's forward with layers 0, every, 2·every, … run through ``torch.utils.checkpoint``."""
    def forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_cos_sin(idx.shape[1], model.config.head_dim, model.config.rope_theta, idx.device)
        x = model.embed_tokens(idx)
        for i, block in enumerate(model.layers):
            x = checkpoint(block, x, cos, sin, use_reentrant=False) if i % every == 0 else block(x, cos, sin)
        return model.lm_head(model.norm(x))
    return forward


def checkpoint_gradient_error(model: GPT, every: int, batch: int, seq_len: int) -> dict[str, float]:
    """Largest |dL/dW| difference, over every parameter of ``model``, between `checkpoint_layers`
    (``every``) and the plain model ("plain") and between it and ``torch.utils.checkpoint``
    (non-reentrant) on the same layers ("torch"): one backward of the LM loss on (batch, seq_len)
    random token ids (seed 0), used as their own targets. ``model`` is not changed (copies are run).
    """
    idx = _check_step(model, batch, seq_len, every)
    plain = checkpoint_layers(copy.deepcopy(model), None)
    ours = _gradients(checkpoint_layers(copy.deepcopy(plain), every), idx, GPT.__call__)
    references = {"plain": _gradients(plain, idx, GPT.__call__),
                  "torch": _gradients(plain, idx, _torch_checkpointed(every))}
    return {name: max((g - r).abs().max().item() for g, r in zip(ours, grads))
            for name, grads in references.items()}


def recompute_time_ratio(model: GPT, batch: int, seq_len: int, every: int, repeats: int = 5) -> float:
    """Time of forward + backward of the LM loss with `checkpoint_layers` (``every``) over the time
    without it (`lab.core.timing.time_ms`, median of ``repeats``) on the model's device; > 1 is
    the recompute cost. ``model`` is not changed (a copy is timed). Inputs: (batch, seq_len) int64
    random token ids (seed 0), used as their own targets.
    """
    idx = _check_step(model, batch, seq_len, every)
    check_int("repeats", repeats)
    device = idx.device
    timed = copy.deepcopy(model)

    def step() -> None:
        _gradients(timed, idx, GPT.__call__)

    checkpoint_layers(timed, None)
    plain_ms = time_ms(step, device, repeats)
    checkpoint_layers(timed, every)
    return time_ms(step, device, repeats) / plain_ms
