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
"""

from __future__ import annotations

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
    in each backward pass (else RuntimeError), and gradients must be zeroed between steps.
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
        self._callback_queued = False
        for p in params:
            p.register_post_accumulate_grad_hook(self._grad_ready)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _grad_ready(self, p: nn.Parameter) -> None:
        if not self._callback_queued:
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._callback_queued = True
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
