"""Pipeline parallelism: consecutive layers on consecutive ranks, micro-batches flowing through.

The model is cut into p stages; stage s runs on rank s, receives activations from s−1 and
sends its output to s+1 (``send``/``recv``); backward runs the other way with gradients. A
batch is split into m micro-batches so that stages work on different micro-batches at once.

Schedules (per stage, a list of ("F", j) / ("B", j) for micro-batch j):
* GPipe (Huang et al. 2019): all m forwards, then all m backwards. Stage s holds the
  activations of all m micro-batches at the peak.
* 1F1B (PipeDream-Flush, Narayanan et al. 2021): p−s−1 warm-up forwards, then alternately one
  forward and one backward, then the remaining backwards. At most p−s micro-batches in flight.

With forward time t_f and backward time t_b per micro-batch and stage, both finish in
(m+p−1)(t_f+t_b), of which each stage is busy m(t_f+t_b): the idle ("bubble") fraction is
(p−1)/(m+p−1) for both; 1F1B saves activation memory, not time.

Interleaved 1F1B (Narayanan et al. 2021, Megatron-LM): each rank holds v model chunks (stage s owns
virtual stages s, s+p, …, s+(v−1)p of the v·p-deep pipeline), each costing t_f/v and t_b/v. A
micro-batch crosses the ranks v times, and the idle time at the ends shrinks v-fold: the step takes
(m + (p−1)/v)(t_f+t_b), a bubble of (p−1)/(v·m) of the ideal m(t_f+t_b), for v times the messages.
`interleaved_order` is Megatron's order; `simulate_schedule` runs any per-stage orders on an ideal
machine (no communication cost) and returns their timeline.

`gpt_stage` cuts a lab GPT: stage 0 owns the embedding, the last stage the final norm and LM
head. A tied embedding / LM-head weight becomes two copies (first and last stage) whose
gradients are summed by an all-reduce between those two ranks after backward, so they stay
equal. `CostStage` is a stage of known cost (it sleeps t_f forward and t_b backward), used
to measure the schedules' bubbles free of CPU contention.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from lab.core.checks import check_choice, check_float_dtype, check_group, check_int, check_number, check_tensor
from lab.models.gpt import GPT, check_gpt, rope_cos_sin
from lab.parallel import comm

SCHEDULES = ("gpipe", "1f1b")


def schedule_order(schedule: str, n_stages: int, stage: int, n_micro: int) -> list[tuple[str, int]]:
    """The order in which ``stage`` (0-based, of p = ``n_stages``) runs forwards and backwards."""
    check_choice("schedule", schedule, SCHEDULES)
    check_int("n_stages", n_stages)
    check_int("n_micro", n_micro)
    check_int("stage", stage, 0, n_stages - 1)
    if schedule == "gpipe":
        return [("F", j) for j in range(n_micro)] + [("B", j) for j in range(n_micro)]
    warmup = min(n_stages - stage - 1, n_micro)
    order = [("F", j) for j in range(warmup)]
    for j in range(n_micro - warmup):
        order += [("F", warmup + j), ("B", j)]
    return order + [("B", j) for j in range(n_micro - warmup, n_micro)]


def interleaved_order(n_stages: int, stage: int, n_micro: int, n_chunks: int) -> list[tuple[str, int, int]]:
    """Megatron-LM's interleaved 1F1B order of ``stage``: a list of (kind, chunk c, micro-batch j).

    p = ``n_stages``, m = ``n_micro`` (a multiple of p), v = ``n_chunks``. Virtual micro-batch k
    (0 ≤ k < m·v) runs on chunk (k mod p·v) // p, backwards on chunk v−1−(k mod p·v) // p, for
    micro-batch (k // p·v)·p + k mod p. Warm-up: (v−1)·p + 2(p−s−1) forwards for v > 1
    (p−s−1 for v = 1, where the order is `schedule_order`'s 1F1B), at most m·v; then one
    forward and one backward alternately; then the remaining backwards.
    """
    check_int("n_stages", n_stages)
    check_int("stage", stage, 0, n_stages - 1)
    check_int("n_chunks", n_chunks)
    check_int("n_micro", n_micro)
    p, v, m = n_stages, n_chunks, n_micro
    if m % p:
        raise ValueError(f"n_micro={m} must be a multiple of n_stages={p} for the interleaved schedule")
    total = m * v
    warmup = min((v - 1) * p + (p - stage - 1) * (2 if v > 1 else 1), total)

    def entry(kind: str, k: int) -> tuple[str, int, int]:
        chunk = (k % (p * v)) // p
        return kind, (chunk if kind == "F" else v - 1 - chunk), (k // (p * v)) * p + k % p

    order = [entry("F", k) for k in range(warmup)]
    for k in range(total - warmup):
        order += [entry("F", warmup + k), entry("B", k)]
    return order + [entry("B", k) for k in range(total - warmup, total)]


def _step(e) -> tuple:
    """A step of an order as (kind, chunk, micro-batch): (kind, j) is chunk 0."""
    e = tuple(e) if isinstance(e, (tuple, list)) else e
    return (e[0], 0, e[1]) if isinstance(e, tuple) and len(e) == 2 else e


def simulate_schedule(orders: list[list[tuple]], t_forward: float, t_backward: float) -> list[dict]:
    """Run per-stage orders on an ideal pipeline: each step starts once its stage is free and its input is ready.

    ``orders[s]``: stage s's list of (kind, j) (as `schedule_order`) or (kind, c, j) (as
    `interleaved_order`, v = 1 + the largest chunk c). Virtual stage q = c·p + s; F(q, j) needs
    F(q−1, j), B(q, j) needs B(q+1, j) (the last virtual stage: F(q, j)). A chunk's forward takes
    t_f/v = ``t_forward``/v, its backward t_b/v; messages cost nothing. Returns events
    {"stage", "kind", "chunk", "micro", "start", "end"} (as `PipelineSchedule.events`); ValueError
    if the orders deadlock.
    """
    check_number("t_forward", t_forward, low=0, closed=(False, True))
    check_number("t_backward", t_backward, low=0, closed=(False, True))
    if not isinstance(orders, (list, tuple)) or not all(isinstance(order, (list, tuple)) for order in orders):
        raise TypeError(f"orders must be a list of per-stage lists of steps, got {orders!r}")
    p = check_int("len(orders)", len(orders))
    steps = [[_step(e) for e in order] for order in orders]
    for e in (e for order in steps for e in order):
        if not (isinstance(e, tuple) and len(e) == 3):
            raise TypeError(f"orders must hold steps (kind, j) or (kind, chunk, j), got {e!r}")
        check_choice("orders' kind", e[0], ("F", "B"))
        check_int("orders' chunk", e[1], 0)
        check_int("orders' micro-batch", e[2], 0)
    if not any(steps):
        raise ValueError(f"orders={orders!r} holds no step")
    v = 1 + max(c for order in steps for _, c, _ in order)
    done: dict[tuple[str, int, int], float] = {}
    clock, pos, events = [0.0] * p, [0] * p, []
    while any(pos[s] < len(steps[s]) for s in range(p)):
        progressed = False
        for s in range(p):
            if pos[s] == len(steps[s]):
                continue
            kind, c, j = steps[s][pos[s]]
            q = c * p + s
            if kind == "F":
                dep = ("F", q - 1, j) if q > 0 else None
            else:
                dep = ("B", q + 1, j) if q < p * v - 1 else ("F", q, j)
            if dep is not None and dep not in done:
                continue
            start = max(clock[s], done.get(dep, 0.0))
            clock[s] = done[(kind, q, j)] = start + (t_forward if kind == "F" else t_backward) / v
            events.append({"stage": s, "kind": kind, "chunk": c, "micro": j, "start": start, "end": clock[s]})
            pos[s] += 1
            progressed = True
        if not progressed:
            stuck = {s: steps[s][pos[s]] for s in range(p) if pos[s] < len(steps[s])}
            raise ValueError(f"orders deadlock: every stage waits for an input that never comes, at {stuck}")
    return events


def layer_split(n_layer: int, n_stages: int, layers_per_stage: list[int] | None = None) -> list[int]:
    """Layers per stage: ``layers_per_stage`` checked, or n_layer/p each (ValueError if p ∤ n_layer)."""
    check_int("n_layer", n_layer)
    check_int("n_stages", n_stages)
    if layers_per_stage is None:
        if n_layer % n_stages:
            raise ValueError(f"n_layer={n_layer} is not divisible by the number of pipeline stages {n_stages}; "
                             "pass layers_per_stage to split unevenly")
        return [n_layer // n_stages] * n_stages
    if isinstance(layers_per_stage, (str, bytes)) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in layers_per_stage):
        raise TypeError(f"layers_per_stage must be a list of ints, got {layers_per_stage!r}")
    if len(layers_per_stage) != n_stages or sum(layers_per_stage) != n_layer or min(layers_per_stage) < 0:
        raise ValueError(f"layers_per_stage={layers_per_stage} must be {n_stages} non-negative ints summing "
                         f"to n_layer={n_layer}")
    for s, n in enumerate(layers_per_stage):
        if n == 0 and 0 < s < n_stages - 1:
            raise ValueError(f"stage {s} of {n_stages} would have no parameters (layers_per_stage={layers_per_stage})")
    return list(layers_per_stage)


class GPTStage(nn.Module):
    """Layers [first, last) of a lab GPT; stage 0 adds the embedding, the last stage norm + head.

    Input: token ids (b, T) int64 on stage 0, else hidden states (b, T, C). Output: hidden
    states (b, T, C), or logits (b, T, V) on the last stage.
    """

    def __init__(self, model: GPT, first: int, last: int, is_first: bool, is_last: bool, tied_group) -> None:
        super().__init__()
        self.config = model.config
        self.layers = nn.ModuleList(copy.deepcopy(model.layers[i]) for i in range(first, last))
        # one deepcopy of both ends, so that a single stage (p = 1) keeps a tied embedding / LM head tied
        embed, norm, head = copy.deepcopy((model.embed_tokens, model.norm, model.lm_head))
        self.embed_tokens = embed if is_first else None
        self.norm = norm if is_last else None
        self.lm_head = head if is_last else None
        self.tied_group = tied_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed_tokens is not None:
            x = self.embed_tokens(x)
        cos, sin = rope_cos_sin(x.shape[1], self.config.head_dim, self.config.rope_theta, x.device)
        for block in self.layers:
            x = block(x, cos, sin)
        return x if self.lm_head is None else self.lm_head(self.norm(x))

    def after_backward(self) -> None:
        """Sum the gradients of the two copies of a tied embedding / LM-head weight."""
        if self.tied_group is not None:
            tied = self.embed_tokens.weight if self.embed_tokens is not None else self.lm_head.weight
            comm.all_reduce(tied.grad, group=self.tied_group)


def gpt_stage(model: GPT, group=None, layers_per_stage: list[int] | None = None) -> GPTStage:
    """This rank's stage of ``model`` (p = group size). A collective: every rank must call it."""
    check_gpt("model", model)
    p, s = dist.get_world_size(check_group("group", group)), dist.get_rank(group)
    split = layer_split(model.config.n_layer, p, layers_per_stage)
    bounds = torch.tensor([0] + split).cumsum(0).tolist()
    tied_group = None
    if model.config.tie_embeddings and p > 1:
        ranks = [dist.get_global_rank(group, 0) if group else 0, dist.get_global_rank(group, p - 1) if group else p - 1]
        tied_group = dist.new_group(ranks)
        tied_group = tied_group if s in (0, p - 1) else None
    return GPTStage(model, bounds[s], bounds[s + 1], s == 0, s == p - 1, tied_group)


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t_forward, t_backward):
        ctx.t_backward = t_backward
        time.sleep(t_forward)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.t_backward)
        return grad, None, None


class CostStage(nn.Module):
    """y = x ⊙ w (w of shape (width,)), taking ``t_forward`` s forward and ``t_backward`` s backward."""

    def __init__(self, width: int, t_forward: float, t_backward: float) -> None:
        super().__init__()
        check_int("width", width)
        check_number("t_forward", t_forward, low=0)
        check_number("t_backward", t_backward, low=0)
        self.weight = nn.Parameter(torch.ones(width))
        self.t_forward, self.t_backward = t_forward, t_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if check_tensor("x", x).dim() == 0 or x.shape[-1] != self.weight.numel():
            raise ValueError(f"x has shape {tuple(x.shape)}; CostStage(width={self.weight.numel()}) takes (…, width)")
        return _Sleep.apply(x * self.weight, self.t_forward, self.t_backward)


class PipelineSchedule:
    """Run one training step's forwards and backwards of ``stage`` in the order of ``schedule``.

    ``act_shape``: shape of one micro-batch's activation between stages, e.g. (b, T, C);
    ``act_dtype`` its dtype. ``loss_fn(output, target)`` is applied on the last stage; the loss
    of each micro-batch is scaled by 1/m so the gradients are those of the batch mean.
    ``events`` lists, after `run`, every forward/backward as {"stage", "kind", "micro",
    "start", "end"} (time.perf_counter seconds, a clock shared by the processes of a machine).
    """

    def __init__(self, stage: nn.Module, n_micro: int, schedule: str, act_shape: tuple[int, ...],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 act_dtype: torch.dtype = torch.float32, group=None) -> None:
        check_int("n_micro", n_micro)
        check_choice("schedule", schedule, SCHEDULES)
        check_group("group", group)
        if not isinstance(stage, nn.Module):
            raise TypeError(f"stage must be an nn.Module, got {type(stage).__name__}")
        if not any(p.requires_grad for p in stage.parameters()):
            raise ValueError("stage has no parameters that require grad: every pipeline stage needs some")
        if not isinstance(act_shape, (tuple, list)):
            raise TypeError(f"act_shape must be a tuple of ints, got {act_shape!r}")
        for size in act_shape:
            check_int("act_shape's size", size)
        check_float_dtype("act_dtype", act_dtype)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be a function (output, target) -> loss, got {loss_fn!r}")
        self.stage, self.n_micro, self.schedule, self.group = stage, n_micro, schedule, group
        self.act_shape, self.act_dtype, self.loss_fn = tuple(act_shape), act_dtype, loss_fn
        self.p, self.s = dist.get_world_size(group), dist.get_rank(group)
        self.events: list[dict] = []

    def _peer(self, stage: int) -> int:
        return dist.get_global_rank(self.group, stage) if self.group else stage

    def _check_batch(self, inputs: torch.Tensor | None, targets: torch.Tensor | None) -> None:
        first, last, m = self.s == 0, self.s == self.p - 1, self.n_micro
        for name, tensor, needed in (("inputs", inputs, first), ("targets", targets, last)):
            if needed and (check_tensor(name, tensor).dim() == 0 or tensor.shape[0] % m):
                raise ValueError(f"{name} must be a tensor whose batch size is divisible by n_micro={m} "
                                 f"on this stage, got shape {tuple(tensor.shape)}")
        if last and self.loss_fn is None:
            raise ValueError("loss_fn=None, but the last stage applies it: pass PipelineSchedule a loss_fn")

    def run(self, inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> float | None:
        """Forward and backward of one batch; return the mean loss on the last stage, else None.

        ``inputs`` (B, …) on stage 0 and ``targets`` (B, …) on the last stage are split into m
        micro-batches along dim 0 (ValueError unless m divides B). Gradients accumulate in
        the stage's parameters.
        """
        first, last, m = self.s == 0, self.s == self.p - 1, self.n_micro
        self._check_batch(inputs, targets)
        micro_in = inputs.chunk(m) if first else None
        micro_tg = targets.chunk(m) if last else None
        device = next(self.stage.parameters()).device
        saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        sends, losses = [], []
        self.events = []
        for kind, j in schedule_order(self.schedule, self.p, self.s, m):
            if kind == "F":
                if first:
                    x = micro_in[j]
                else:
                    x = torch.empty(self.act_shape, dtype=self.act_dtype, device=device)
                    comm.recv(x, self._peer(self.s - 1), group=self.group)
                    x.requires_grad_(True)
                start = time.perf_counter()
                y = self.stage(x)
                if last:
                    y = self.loss_fn(y, micro_tg[j]) / m
                    losses.append(y.detach())
                end = time.perf_counter()
                if not last:
                    if y.shape != self.act_shape or y.dtype != self.act_dtype:
                        raise ValueError(f"stage {self.s} outputs {tuple(y.shape)} {y.dtype}; the next stage receives "
                                         f"act_shape={self.act_shape}, act_dtype={self.act_dtype}")
                    out = y.detach().contiguous()
                    sends.append((comm.isend(out, self._peer(self.s + 1), group=self.group), out))
                saved[j] = (x, y)
            else:
                x, y = saved.pop(j)
                grad = None
                if not last:
                    grad = torch.empty(self.act_shape, dtype=y.dtype, device=device)
                    comm.recv(grad, self._peer(self.s + 1), group=self.group)
                start = time.perf_counter()
                y.backward(grad)
                end = time.perf_counter()
                if not first:
                    out = x.grad.contiguous()
                    sends.append((comm.isend(out, self._peer(self.s - 1), group=self.group), out))
            self.events.append({"stage": self.s, "kind": kind, "micro": j, "start": start, "end": end})
        for work, _ in sends:
            work.wait()
        if hasattr(self.stage, "after_backward"):
            self.stage.after_backward()
        return float(torch.stack(losses).sum()) if last else None
