"""Run a function on N local processes joined by a `torch.distributed` process group.

``launch(fn, world_size, *args)`` starts ``world_size`` fresh Python processes
(``torch.multiprocessing``, so it works from a notebook: `_start_method`), initialises
the default process group in each (TCP rendezvous on a free local port, backend chosen
by `default_backend`, a ``timeout`` on every collective), calls
``fn(*args)`` on every rank and returns the ranks' return values as a list indexed by
rank. ``fn`` and its arguments and results must be picklable, so ``fn`` lives in a module
(``lab.parallel.*``), not in a notebook.

A rank that raises makes the launch raise `RuntimeError` naming that rank, with its
traceback. The other ranks do not hang: a collective whose peer has died fails (gloo
notices the closed connection, otherwise the process-group ``timeout`` fires), and the
launcher terminates whatever is still running after ``timeout`` seconds more.

A spawned process imports torch, ``fn``'s module and, at its first optimizer, ``torch._dynamo``
(``torch.optim`` imports it there): seconds of CPU per rank and launch. For gloo on a platform with a
fork server, the server imports them once (`_preloaded`), when the first launch starts it, and forks
every rank of every launch from itself, already imported; it runs nothing else, so each fork starts
without a process group, in the environment variables the server started with. nccl ranks are spawned,
each a fresh interpreter, as CUDA requires.

Under ``torchrun`` the same functions run unchanged: `init_from_env` builds the group from
the ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` variables torchrun sets.
"""

from __future__ import annotations

import datetime
import io
import os
import pickle
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from lab.core.checks import check_choice, check_int, check_number

BACKENDS = ("gloo", "nccl")


def _start_method(backend: str) -> str:
    """"forkserver" for gloo where the platform has it, else "spawn" (always for nccl)."""
    return "forkserver" if backend == "gloo" and "forkserver" in mp.get_all_start_methods() else "spawn"


def _preloaded(fn: Callable[..., Any]) -> list[str]:
    """The modules the fork server imports before it forks a rank: ``torch._dynamo``, which every
    ``torch.optim`` optimizer imports when it is first built, and the module that defines ``fn``."""
    module = getattr(fn, "__module__", None)
    return ["torch._dynamo"] + ([module] if module and module != "__main__" else [])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend(world_size: int) -> str:
    """``nccl`` when every rank can have its own CUDA GPU, else ``gloo`` (CPU)."""
    if torch.cuda.is_available() and dist.is_nccl_available() and torch.cuda.device_count() >= world_size:
        return "nccl"
    return "gloo"


def rank_device() -> torch.device:
    """The device this rank computes on: ``cuda:<local rank>`` under nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return torch.device("cpu")


def init_from_env(backend: str | None = None, timeout: float = 60.0) -> None:
    """Join the process group torchrun describes in the environment (``env://``)."""
    world_size = int(os.environ["WORLD_SIZE"])
    backend = backend or default_backend(world_size)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))


def _worker(rank: int, fn: Callable, args: tuple, world_size: int, port: int, backend: str,
            timeout: float, threads: int, results) -> None:
    torch.set_num_threads(threads)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout))
        buffer = io.BytesIO()  # plain bytes: a tensor in shared memory would die with this process
        torch.save(fn(*args), buffer)
        results.put((rank, "ok", buffer.getvalue(), time.time()))
    except BaseException:
        results.put((rank, "error", traceback.format_exc(), time.time()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _check_launch(fn: Callable[..., Any], world_size: int, args: tuple, backend: str | None, timeout: float,
                  threads: int) -> str:
    """`launch`'s arguments, checked before any process starts; returns the backend."""
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {fn!r}")
    check_int("world_size", world_size)
    check_int("threads", threads)
    backend = default_backend(world_size) if backend is None else backend
    check_choice("backend", backend, BACKENDS)
    gpus = torch.cuda.device_count() if backend == "nccl" and dist.is_nccl_available() else 0
    if backend == "nccl" and gpus < world_size:
        raise ValueError(f"backend='nccl' needs one CUDA GPU per rank, world_size={world_size}, found {gpus}")
    check_number("timeout", timeout, low=0, closed=(False, True))  # seconds
    try:  # spawned processes receive fn and args by pickle: a lambda or a local function cannot travel
        pickle.dumps((fn, args))
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise TypeError(f"fn={getattr(fn, '__qualname__', fn)!r} and its args must be picklable (a function "
                        f"defined at the top level of an importable module): {error}") from None
    return backend


def launch(fn: Callable[..., Any], world_size: int, *args, backend: str | None = None,
           timeout: float = 60.0, threads: int = 1) -> list:
    """Run ``fn(*args)`` on ``world_size`` new processes; return ``[result of rank 0, ...]``.

    ``backend``: ``"gloo"``/``"nccl"`` or None for `default_backend`; ``timeout``: seconds a
    collective may wait before it fails; ``threads``: ``torch.set_num_threads`` per rank.
    Raises ValueError for a bad world size, backend or timeout, and RuntimeError (with the
    failing rank's traceback) when a rank raises.
    """
    backend = _check_launch(fn, world_size, args, backend, timeout, threads)
    method = _start_method(backend)
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_preloaded(fn))   # read when the server starts: by the first launch
    results = ctx.Queue()
    procs = mp.start_processes(_worker, args=(fn, args, world_size, free_port(), backend, timeout, threads,
                                              results),
                               nprocs=world_size, join=False, start_method=method)
    messages: dict[int, tuple] = {}

    def drain() -> None:
        while True:
            try:
                rank, status, value, stamp = results.get(timeout=0.05)
            except queue_module.Empty:
                return
            messages[rank] = (status, value, stamp)

    try:
        while True:
            drain()
            if procs.join(timeout=0.1, grace_period=timeout + 5):
                break
    except ProcessException as exc:
        drain()
        errors = sorted((stamp, rank, value) for rank, (status, value, stamp) in messages.items()
                        if status == "error")
        if not errors:
            raise RuntimeError(f"rank {exc.error_index} died without a Python error: {exc}") from exc
        _, first_rank, first_trace = errors[0]
        others = ", ".join(str(rank) for _, rank, _ in errors[1:]) or "none"
        raise RuntimeError(f"rank {first_rank} of {world_size} failed (ranks failing after it: {others}):\n"
                           f"{first_trace}") from None
    deadline = time.monotonic() + timeout
    while len(messages) < world_size and time.monotonic() < deadline:
        drain()
    missing = sorted(set(range(world_size)) - messages.keys())
    if missing:
        raise RuntimeError(f"ranks {missing} exited without returning a result")
    return [torch.load(io.BytesIO(messages[rank][1]), weights_only=False) for rank in range(world_size)]
