"""The collectives `lab.parallel` uses, each counted by every active `CommCounter`.

Every function here calls the `torch.distributed` collective of the same name (gloo on the
CPU, nccl on GPUs) and reports two quantities per call to the counters open around it:

* **payload bytes**: the bytes of the tensor handed to the collective. For ``all_reduce``
  and ``broadcast`` the tensor itself (S); for ``reduce_scatter`` the full input (S = N ×
  output); for ``all_gather`` the full output (S = N × input); for ``send``/``recv`` the
  tensor sent or received.
* **sent bytes per rank** under the bandwidth-optimal ring algorithms, N = group size:
  all-reduce 2(N−1)/N · S (a reduce-scatter then an all-gather), reduce-scatter and
  all-gather (N−1)/N · S each, broadcast S (pipelined: every rank but the last forwards the
  whole tensor; counted as S for every rank), send S, recv 0.
  This is a formula applied to the payload, not a measurement of the wire: the backend may
  pick another algorithm (NCCL trees, gloo's halving-doubling) with the same or a similar
  volume.

Time spent inside a blocking call, or in ``wait()`` of an asynchronous one, is added to
``seconds``: the communication time the caller is exposed to.

gloo in torch 2.13 supports every collective used here, including reduce-scatter and
all-gather into a single flat tensor (`torch.distributed.reduce_scatter_single`,
`torch.distributed.all_gather_single`), so nothing is emulated.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lab.core.checks import check_int, check_number

_ACTIVE: list[CommCounter] = []


@dataclass
class OpStats:
    calls: int = 0
    payload_bytes: int = 0
    sent_bytes: float = 0.0


class CommCounter:
    """Context manager counting calls, payload bytes and ring sent bytes of every collective.

    ``with CommCounter() as c: ...``; then ``c.ops[name]`` (an `OpStats`), ``c.payload_bytes``,
    ``c.sent_bytes``, ``c.calls``, ``c.seconds``, or ``c.summary()`` as a plain dict.
    Counters nest: each open counter sees every call made while it is open.
    """

    def __init__(self) -> None:
        self.ops: dict[str, OpStats] = defaultdict(OpStats)
        self.seconds = 0.0

    def __enter__(self) -> CommCounter:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.ops.values())

    @property
    def payload_bytes(self) -> int:
        return sum(s.payload_bytes for s in self.ops.values())

    @property
    def sent_bytes(self) -> float:
        return sum(s.sent_bytes for s in self.ops.values())

    def summary(self) -> dict:
        return {"ops": {k: vars(v).copy() for k, v in self.ops.items()}, "calls": self.calls,
                "payload_bytes": self.payload_bytes, "sent_bytes": self.sent_bytes, "seconds": self.seconds}


def ring_sent_bytes(op: str, payload_bytes: float, n: int) -> float:
    """Bytes one rank sends for ``op`` on a payload of S bytes over N ranks (ring algorithms)."""
    check_number("payload_bytes", payload_bytes, low=0)
    check_int("n", n)
    factors = {"all_reduce": 2 * (n - 1) / n, "reduce_scatter": (n - 1) / n, "all_gather": (n - 1) / n,
               "broadcast": 1.0 if n > 1 else 0.0, "send": 1.0, "recv": 0.0}
    if op not in factors:
        raise ValueError(f"op={op!r} is not allowed; use one of {tuple(factors)}")
    return factors[op] * payload_bytes


class _TimedWork:
    """An async collective's handle whose ``wait()`` time is charged to the open counters."""

    def __init__(self, work, counters: list[CommCounter]) -> None:
        self.work, self.counters = work, counters

    def wait(self) -> None:
        start = time.perf_counter()
        self.work.wait()
        for c in self.counters:
            c.seconds += time.perf_counter() - start


def _run(op: str, payload: torch.Tensor, group, call, async_op: bool = False):
    n = dist.get_world_size(group)
    nbytes = payload.numel() * payload.element_size()
    counters = list(_ACTIVE)
    for c in counters:
        stats = c.ops[op]
        stats.calls += 1
        stats.payload_bytes += nbytes
        stats.sent_bytes += ring_sent_bytes(op, nbytes, n)
    start = time.perf_counter()
    work = call()
    if async_op:
        return _TimedWork(work, counters)
    for c in counters:
        c.seconds += time.perf_counter() - start
    return None


def all_reduce(tensor: torch.Tensor, group=None, async_op: bool = False):
    """In place: tensor ← Σ_ranks tensor."""
    return _run("all_reduce", tensor, group,
                lambda: dist.all_reduce(tensor, group=group, async_op=async_op), async_op)


def reduce_scatter(output: torch.Tensor, input: torch.Tensor, group=None, async_op: bool = False):
    """output (S/N,) on rank r ← Σ_ranks input[r·S/N:(r+1)·S/N]; input flat (S,)."""
    return _run("reduce_scatter", input, group,
                lambda: dist.reduce_scatter_single(output, input, group=group, async_op=async_op), async_op)


def all_gather(output: torch.Tensor, input: torch.Tensor, group=None, async_op: bool = False):
    """output (S,) ← concatenation over ranks of input (S/N,)."""
    return _run("all_gather", output, group,
                lambda: dist.all_gather_single(output, input, group=group, async_op=async_op), async_op)


def broadcast(tensor: torch.Tensor, src: int = 0, group=None) -> None:
    """In place: tensor ← tensor of rank ``src``."""
    _run("broadcast", tensor, group, lambda: dist.broadcast(tensor, src=src, group=group))


def isend(tensor: torch.Tensor, dst: int, group=None, tag: int = 0) -> _TimedWork:
    """Start sending ``tensor`` to rank ``dst``; call ``wait()`` before reusing the tensor. A receive matches a
    send of the same ``tag``: two kinds of message between the same two ranks take two tags."""
    return _run("send", tensor, group, lambda: dist.isend(tensor, dst=dst, group=group, tag=tag), True)


def irecv(tensor: torch.Tensor, src: int, group=None, tag: int = 0) -> _TimedWork:
    """Start receiving into ``tensor`` what rank ``src`` sends with ``tag``; ``wait()`` before reading it."""
    return _run("recv", tensor, group, lambda: dist.irecv(tensor, src=src, group=group, tag=tag), True)


def recv(tensor: torch.Tensor, src: int, group=None, tag: int = 0) -> None:
    """Block until ``tensor`` holds what rank ``src`` sent with ``tag``."""
    _run("recv", tensor, group, lambda: dist.recv(tensor, src=src, group=group, tag=tag))
