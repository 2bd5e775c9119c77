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

`checkpoint_segments(model, segments=k)` is Chen et al.'s scheme (Training Deep Nets with Sublinear Memory Cost,
arXiv:1604.06174, §4): the L layers are cut into k contiguous segments, only each segment's input is kept, and in
backward one segment at a time is recomputed as a unit, its layers' saved sets alive only while its backward runs.
The paper's count, with the segments equal: cost = max_i cost(segment i) + O(k) = O(L/k) + O(k), which k = √L makes
O(2√L), for one extra forward pass per mini-batch. In bytes, a = one stored segment input (here the layer input,
4·BTC in fp32) and m = what one layer saves for backward ("per layer" above):

    peak activations:  max_j ((j + 1)·a + n_j·m), n_j the layers of segment j (the larger first): the paper's
                       k·a + (L/k)·m when k divides L (`segment_checkpoint_bytes`)
    least at k* = √(L·m/a), √L when m = a as in the paper's count (`optimal_segments`: the best k in 1 … L)
    recompute: every layer's forward runs twice, 2L block forwards per step for every k (`checkpoint_layers`: L + L_c)

A decoder layer saves far more than its input (fp32: m/a = 10 + 4F/C + (2 + H)/C, ≈ 21 at F = 2.75·C), so k* is
near or past L and per-layer checkpointing (k = L: L·a + m) beats √L segments (√L·(a + m)). Measured
(`measure_activation_peak_cpu`), the peak in backward is the formula − a + the token ids and RoPE tables (8·BT + 8·TD
bytes; the stored input of the segment being recomputed is also its first layer's saved input), unless the end of
the forward (k·a + the model terms above, the head's log-softmax 4·BTV among them) is higher.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

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


def _run_blocks(blocks: tuple[Block, ...], x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, C) through `Block.forward` of each of ``blocks`` in order, whatever their class."""
    for block in blocks:
        x = Block.forward(block, x, cos, sin)
    return x


class SegmentStart(Block):
    """The first block of a checkpointed segment (set by `checkpoint_segments`): runs ``self.segment`` (itself and
    the `SegmentMember` blocks after it) as one `_Recompute` unit that keeps only the segment's input x.

    Same parameters, names and state_dict as the Block it was; (B, T, C) → (B, T, C), any float dtype.
    """

    segment: tuple[Block, ...]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        params = [p for block in self.segment for p in block.parameters()]
        return _Recompute.apply(functools.partial(_run_blocks, self.segment), x, cos, sin, *params)


class SegmentMember(Block):
    """A later block of a checkpointed segment: its `SegmentStart` has run it already, so in the GPT's loop over
    the layers it passes x (B, T, C) through unchanged. Called on its own, outside its model, it does nothing."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x


def _switch(block: Block, cls: type[Block], segment: tuple[Block, ...] = ()) -> None:
    """Make ``block`` a ``cls`` (its parameters, their names and the state_dict do not change); a `SegmentStart`
    gets the blocks it runs, every other class loses them."""
    block.__class__ = cls
    block.__dict__.pop("segment", None)
    if cls is SegmentStart:
        block.segment = segment


def _check_blocks(model: GPT) -> list[Block]:
    """The decoder layers of the lab GPT ``model``, after checking that each is a `Block`."""
    check_gpt("model", model)
    for i, block in enumerate(model.layers):
        if not isinstance(block, Block):
            raise TypeError(f"model.layers[{i}] must be a lab.models.gpt.Block, got {type(block).__name__}")
    return list(model.layers)


def checkpoint_layers(model: GPT, every: int | None) -> GPT:
    """Checkpoint decoder layers 0, every, 2·every, … (``every`` a positive int, or None for none)
    of a lab GPT in place and return it.

    Each chosen ``model.layers[i]`` becomes a `CheckpointedBlock` (its class is switched; its
    parameters, their names and the state_dict do not change); every other layer becomes a plain
    `Block` again, so a second call replaces the first (or `checkpoint_segments`) and ``every=None``
    undoes checkpointing. A block shared by several layers (`lab.params.sharing.share_layers`) must
    be chosen at all of them or at none (every=1 or None).
    """
    blocks = _check_blocks(model)
    if every is not None:
        check_int("every", every)
    picked = [every is not None and i % every == 0 for i in range(len(blocks))]
    chosen = {id(block) for block, pick in zip(blocks, picked) if pick}
    for i, (block, pick) in enumerate(zip(blocks, picked)):
        if (id(block) in chosen) != pick:
            raise ValueError(f"every={every} is not allowed for this model: layer {i} shares its block with "
                             "a layer checkpointed differently; use every=1 or None")
    for block in blocks:
        _switch(block, CheckpointedBlock if id(block) in chosen else Block)
    return model


def _segment_spans(n_layer: int, segments: int) -> list[range]:
    """``segments`` contiguous spans covering layers 0 … n_layer − 1, sizes ⌈L/k⌉ first, then ⌊L/k⌋ (the later
    segments, whose backward runs while more stored inputs are alive, are the smaller)."""
    size, extra = divmod(n_layer, segments)
    stops = [j * size + min(j, extra) for j in range(segments + 1)]
    return [range(start, stop) for start, stop in zip(stops, stops[1:])]


def _check_segments(model: GPT, segments: int) -> list[Block]:
    """The blocks of ``model`` after checking ``segments`` (an int in [1, L]) and that no block is shared."""
    blocks = _check_blocks(model)
    check_int("segments", segments, 1, len(blocks))
    firsts: dict[int, int] = {}
    for i, block in enumerate(blocks):
        if (first := firsts.setdefault(id(block), i)) != i:
            raise ValueError(f"segments={segments} is not allowed for this model: layer {i} shares its block with "
                             f"layer {first}; segment checkpointing needs one block per layer "
                             "(checkpoint_layers(model, 1) handles shared blocks)")
    return blocks


def checkpoint_segments(model: GPT, segments: int | None) -> GPT:
    """Chen et al.'s checkpointing (module docstring) of a lab GPT in place: its L decoder layers cut into
    ``segments`` = k contiguous segments (an int in [1, L]; sizes ⌈L/k⌉ first, then ⌊L/k⌋), each run in forward
    without a graph and recomputed as one unit in backward, only its input x (B, T, C) kept. None undoes it.

    The first block of each segment becomes a `SegmentStart` that runs the whole segment, the others
    `SegmentMember` blocks that pass x through; parameters, their names and the state_dict do not change, and
    `checkpoint_layers` (or another call) replaces it. k = L is `checkpoint_layers` with every = 1. Layers that
    share a block (`lab.params.sharing.share_layers`) are refused. Returns ``model``.
    """
    if segments is None:
        return checkpoint_layers(model, None)
    blocks = _check_segments(model, segments)
    for span in _segment_spans(len(blocks), segments):
        segment = tuple(blocks[i] for i in span)
        _switch(segment[0], SegmentStart, segment)
        for block in segment[1:]:
            _switch(block, SegmentMember)
    return model


def segment_checkpoint_bytes(n_layer: int, segments: int, a: int, m: int) -> int:
    """Peak activation bytes of Chen et al.'s scheme for ``n_layer`` = L layers in the ``segments`` = k segments
    `checkpoint_segments` cuts (n_j layers in segment j = 0 … k − 1, ⌈L/k⌉ first, then ⌊L/k⌋):

        max_j ((j + 1)·a + n_j·m),   which is the paper's k·a + (L/k)·m when k divides L

    While segment j's backward runs, the inputs of segments 0 … j are still stored and its n_j layers' saved sets
    are alive. a: bytes of one stored segment input (the lab GPT: the layer input B·T·C, 4 bytes each in fp32);
    m: bytes one layer saves for backward (`lab.params.memory.activation_bytes`' "per layer"). k = L is
    per-layer checkpointing (L·a + m), k = 1 one recompute of the whole stack (a + L·m). Ints ≥ 0 in, an int out.
    """
    check_int("n_layer", n_layer)
    check_int("segments", segments, 1, n_layer)
    check_int("a", a, 0)
    check_int("m", m, 0)
    return max((j + 1) * a + len(span) * m for j, span in enumerate(_segment_spans(n_layer, segments)))


def optimal_segments(n_layer: int, a: int, m: int) -> int:
    """The k in 1 … ``n_layer`` whose `segment_checkpoint_bytes` is least (the smallest such k).

    With equal segments and k free, k·a + L·m/k is least at k* = √(L·m/a): √L when m = a (the paper's setting),
    L or more when m ≥ L·a. For a decoder layer m ≈ 21·a (module docstring): L = 24 gives k* ≈ 22.4, and k = 22
    (two 2-layer segments first, then 1-layer ones) costs 44·a, against 45·a at k = L and 109·a at k = 5 ≈ √L."""
    check_int("n_layer", n_layer)
    check_int("a", a, 0)
    check_int("m", m, 0)
    return min(range(1, n_layer + 1), key=lambda k: segment_checkpoint_bytes(n_layer, k, a, m))


def _check_step(model: GPT, batch: int, seq_len: int) -> torch.Tensor:
    """(batch, seq_len) int64 random token ids (seed 0) on the model's device, after checking the arguments."""
    check_gpt("model", model)
    check_int("batch", batch)
    check_int("seq_len", seq_len, 1, model.config.context_length)
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


def _torch_checkpointed(spans: list[range]):
    """The lab GPT's forward with the layers of each span run as one ``torch.utils.checkpoint`` unit (non-reentrant),
    every other layer plainly."""
    def forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_cos_sin(idx.shape[1], model.config.head_dim, model.config.rope_theta, idx.device)
        x = model.embed_tokens(idx)
        starts, i = {span.start: span for span in spans}, 0
        while i < len(model.layers):
            span = starts.get(i, range(i, i + 1))
            run = functools.partial(_run_blocks, tuple(model.layers[j] for j in span))
            x = checkpoint(run, x, cos, sin, use_reentrant=False) if i in starts else run(x, cos, sin)
            i = span.stop
        return model.lm_head(model.norm(x))
    return forward


def _gradient_error(model: GPT, idx: torch.Tensor, apply: Callable[[GPT], GPT], spans: list[range]) -> dict[str, float]:
    """Largest |dL/dW| difference between ``apply(copy of model)`` and the plain model ("plain") and between it and
    ``torch.utils.checkpoint`` over ``spans`` ("torch"), for the LM loss of ``idx``."""
    plain = checkpoint_layers(copy.deepcopy(model), None)
    ours = _gradients(apply(copy.deepcopy(plain)), idx, GPT.__call__)
    references = {"plain": _gradients(plain, idx, GPT.__call__),
                  "torch": _gradients(plain, idx, _torch_checkpointed(spans))}
    return {name: max((g - r).abs().max().item() for g, r in zip(ours, grads))
            for name, grads in references.items()}


def checkpoint_gradient_error(model: GPT, every: int, batch: int, seq_len: int) -> dict[str, float]:
    """Largest |dL/dW| difference, over every parameter of ``model``, between `checkpoint_layers`
    (``every``) and the plain model ("plain") and between it and ``torch.utils.checkpoint``
    (non-reentrant) on the same layers ("torch"): one backward of the LM loss on (batch, seq_len)
    random token ids (seed 0), used as their own targets. ``model`` is not changed (copies are run).
    """
    idx = _check_step(model, batch, seq_len)
    check_int("every", every)
    spans = [range(i, i + 1) for i in range(0, len(model.layers), every)]   # each checkpointed layer on its own
    return _gradient_error(model, idx, lambda m: checkpoint_layers(m, every), spans)


def segment_gradient_error(model: GPT, segments: int, batch: int, seq_len: int) -> dict[str, float]:
    """`checkpoint_gradient_error` for `checkpoint_segments` (``segments``): the largest |dL/dW| difference from the
    plain model ("plain") and from ``torch.utils.checkpoint`` run over the same segments ("torch"). ``model`` is
    not changed (copies are run); inputs (batch, seq_len) int64 random token ids (seed 0), their own targets."""
    idx = _check_step(model, batch, seq_len)
    n_layer = len(_check_segments(model, segments))
    return _gradient_error(model, idx, lambda m: checkpoint_segments(m, segments), _segment_spans(n_layer, segments))


def _time_ratio(model: GPT, idx: torch.Tensor, apply: Callable[[GPT], GPT], repeats: int) -> float:
    """Median forward + backward time of ``apply(copy of model)`` over the plain copy's (`time_ms`)."""
    check_int("repeats", repeats)
    timed = checkpoint_layers(copy.deepcopy(model), None)

    def step() -> None:
        _gradients(timed, idx, GPT.__call__)

    plain_ms = time_ms(step, idx.device, repeats)
    apply(timed)
    return time_ms(step, idx.device, repeats) / plain_ms


def recompute_time_ratio(model: GPT, batch: int, seq_len: int, every: int, repeats: int = 5) -> float:
    """Time of forward + backward of the LM loss with `checkpoint_layers` (``every``) over the time
    without it (`lab.core.timing.time_ms`, median of ``repeats``) on the model's device; > 1 is
    the recompute cost. ``model`` is not changed (a copy is timed). Inputs: (batch, seq_len) int64
    random token ids (seed 0), used as their own targets.
    """
    idx = _check_step(model, batch, seq_len)
    check_int("every", every)
    return _time_ratio(model, idx, lambda m: checkpoint_layers(m, every), repeats)


def segment_time_ratio(model: GPT, batch: int, seq_len: int, segments: int, repeats: int = 5) -> float:
    """`recompute_time_ratio` for `checkpoint_segments` (``segments``): the median forward + backward time of the
    LM loss over the plain model's on the model's device (a copy is timed). Every layer's forward runs twice, so
    by matmul FLOPs it is 1 + L·Ψ_layer / (3Ψ) (module docstring) for every k."""
    idx = _check_step(model, batch, seq_len)
    _check_segments(model, segments)
    return _time_ratio(model, idx, lambda m: checkpoint_segments(m, segments), repeats)


class _Held:
    """A saved tensor as the pack hook hands it to autograd; ``on_free()`` runs when autograd lets it go."""

    def __init__(self, tensor: torch.Tensor, on_free: Callable[[], None]) -> None:
        self.tensor, self.on_free = tensor, on_free

    def __del__(self) -> None:
        self.on_free()


def measure_activation_peak_cpu(model: GPT, batch: int, seq_len: int) -> dict[str, int]:
    """One forward + backward of the LM loss of a lab GPT on the CPU ((batch, seq_len) int64 random token ids,
    seed 0, used as their own targets) with every tensor autograd saves tracked from its pack hook until autograd
    frees it (the recomputes of checkpointing included), each storage counted once, parameters left out, as
    `lab.params.measured_memory.measure_training_memory_cpu` counts "activations". Returns ints:

        saved           bytes alive at the end of the forward
        peak            the most bytes alive at once in forward and backward (Chen et al.'s peak activations)
        block_forwards  decoder-layer forwards run: L plain, L + L_c with `checkpoint_layers`, 2L with segments

    ``model`` is not changed (a copy is run); any float dtype.
    """
    idx = _check_step(model, batch, seq_len)
    if idx.device.type != "cpu":
        raise ValueError(f"model must be on the CPU (CPU storages are counted), its parameters are on {idx.device}")
    run = copy.deepcopy(model)
    params = {p.untyped_storage().data_ptr() for p in run.parameters()}
    holders: dict[int, int] = {}
    count = {"alive": 0, "peak": 0, "block_forwards": 0}

    def free(ptr: int, nbytes: int) -> None:
        holders[ptr] -= 1
        if not holders[ptr]:
            del holders[ptr]
            count["alive"] -= nbytes

    def pack(t: torch.Tensor) -> _Held:
        ptr, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
        if ptr in params:
            return _Held(t, lambda: None)
        if ptr not in holders:
            count["alive"] += nbytes
            count["peak"] = max(count["peak"], count["alive"])
        holders[ptr] = holders.get(ptr, 0) + 1
        return _Held(t, functools.partial(free, ptr, nbytes))

    def counted(*_) -> None:
        count["block_forwards"] += 1

    for attn in {id(block.attn): block.attn for block in run.layers}.values():
        attn.register_forward_pre_hook(counted)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda held: held.tensor):
        loss = F.cross_entropy(run(idx).flatten(0, 1), idx.flatten())
        saved = count["alive"]
        loss.backward()
    return {"saved": saved, "peak": count["peak"], "block_forwards": count["block_forwards"]}
