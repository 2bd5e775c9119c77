"""Data parallelism: every rank holds the whole model, sees its own slice of the batch, and the
gradients are averaged with an all-reduce before the optimizer step.

    g = (1/N) Σ_r g_r          (N ranks, g_r the gradient of rank r's local mean loss)

`DataParallel` does what `torch.nn.parallel.DistributedDataParallel` does, in Python:
parameters are grouped into *buckets* of at most ``bucket_cap_mb`` MiB, in reverse
registration order (roughly the order in which backward produces their gradients). A
``register_post_accumulate_grad_hook`` on every parameter copies the gradient, multiplied by
1/N, into its bucket's flat buffer; when the last gradient of a bucket arrives, the bucket's
all-reduce starts asynchronously, so communication overlaps the rest of the backward pass.
A callback queued on the autograd engine waits for every bucket at the end of backward and
copies the averaged gradients back into ``p.grad``.

Per step each rank all-reduces Ψ gradient elements (payload 4Ψ bytes in fp32), i.e. sends
2(N−1)/N · 4Ψ bytes with the ring algorithm (`lab.parallel.comm`).

Gradient accumulation (`DataParallel.no_sync`). A rank's batch of b rows is split into k micro-batches of
b/k rows, and micro-batch i's mean loss L_i is scaled by 1/k, so the accumulated gradient is

    Σ_i ∇(L_i/k) = ∇((1/k) Σ_i L_i) = ∇ (mean loss over the b rows) = g_r

the gradient of one backward pass over all b rows, in exact arithmetic (in floating point the sums run in
another order: equal up to round-off). The first k−1 backward passes run under ``no_sync()``: the hooks
return at once, autograd adds into ``p.grad`` and nothing is communicated. The k-th runs outside it, and
the hook of each parameter then sees the accumulated ``p.grad`` and reduces it as usual: per step one
all-reduce of Ψ elements, not k, and the same average g = (1/N) Σ_r g_r. `reduce_gradients` does that
last reduction without a backward pass, for callers that run every backward themselves (a pipeline schedule).

What is exact and what is round-off: every rank ends with Σ_r (1/N)·g_r of the ranks' locally accumulated
g_r, so on N = 2 ranks (a sum of two terms has one order) bit for bit what one process computes from the two
local accumulations; against one backward pass over all N·b rows, equal to round-off only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from lab.core.checks import check_group, check_number
from lab.parallel import comm


class _Bucket:
    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        offsets = torch.tensor([0] + [p.numel() for p in params]).cumsum(0).tolist()
        self.views = {p: self.flat[o: o + p.numel()].view_as(p) for p, o in zip(params, offsets)}
        self.ready = 0
        self.work = None


class DataParallel(nn.Module):
    """Wrap ``module`` (same architecture on every rank); rank 0's parameters are broadcast.

    ``forward`` is ``module.forward``; after ``loss.backward()`` every ``p.grad`` holds the
    gradient averaged over ranks. Every parameter that requires grad must receive a gradient
    in each backward pass that reduces (else RuntimeError), and gradients must be zeroed between
    steps; `no_sync` accumulates micro-batches, ``group`` is the process group of the replicas.
    """

    def __init__(self, module: nn.Module, bucket_cap_mb: float = 25.0, group=None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        check_number("bucket_cap_mb", bucket_cap_mb, low=0, closed=(False, True))
        self.module, self.group = module, check_group("group", group)
        self.world_size = dist.get_world_size(group)
        params = [p for p in module.parameters() if p.requires_grad]
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                comm.broadcast(t, src=dist.get_global_rank(group, 0) if group else 0, group=group)
        self.buckets: list[_Bucket] = []
        cap, current, size = bucket_cap_mb * 2**20, [], 0
        for p in reversed(params):
            nbytes = p.numel() * p.element_size()
            if current and size + nbytes > cap:
                self.buckets.append(_Bucket(current))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            self.buckets.append(_Bucket(current))
        self._bucket_of = {p: b for b in self.buckets for p in b.params}
        self._callback_queued, self._sync = False, True
        for p in params:
            p.register_post_accumulate_grad_hook(self._grad_ready)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside only accumulate into ``p.grad`` (no all-reduce starts); the first backward
        outside reduces the accumulated gradients. Micro-batch losses scaled by 1/k: see the module docstring."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def reduce_gradients(self) -> None:
        """Average the accumulated ``p.grad`` over the ranks now, outside a backward pass: for backward passes
        that all ran under `no_sync` (a pipeline schedule runs each micro-batch's backward itself)."""
        for p in self._bucket_of:
            if p.grad is not None:              # else its bucket never starts, and _finish names its shape
                self._add_to_bucket(p)
        self._finish()

    def _grad_ready(self, p: nn.Parameter) -> None:
        if not self._sync:
            return
        if not self._callback_queued:
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._callback_queued = True
        self._add_to_bucket(p)

    def _add_to_bucket(self, p: nn.Parameter) -> None:
        """Copy p.grad · 1/N into its bucket; start the bucket's all-reduce when its last gradient is in."""
        bucket = self._bucket_of[p]
        torch.mul(p.grad, 1.0 / self.world_size, out=bucket.views[p])
        bucket.ready += 1
        if bucket.ready == len(bucket.params):
            bucket.work = comm.all_reduce(bucket.flat, group=self.group, async_op=True)

    def _finish(self) -> None:
        self._callback_queued = False
        for bucket in self.buckets:
            if bucket.work is None:
                missing = [tuple(p.shape) for p in bucket.params if p.grad is None]
                raise RuntimeError(f"DataParallel: a bucket's all-reduce never started; parameters of shapes "
                                   f"{missing} received no gradient in this backward pass")
            bucket.work.wait()
            bucket.work, bucket.ready = None, 0
            for p, view in bucket.views.items():
                p.grad.copy_(view)
