"""The one timer of every benchmark: the median time of one call, in milliseconds.

* CUDA: `triton.testing.do_bench` with ``return_mode="median"``. It times each call with a pair of
  CUDA events (GPU time, no host-side launch jitter), flushes the L2 cache before every call (so a
  weight that fits in L2 is not read from it for free), runs ``CUDA_WARMUP_MS`` of warm-up and then
  as many timed calls as fit in ``CUDA_REP_MS_PER_REPEAT · repeats`` ms, at least one. A call much
  longer than that is still made 1 + 5 (its estimate) + 1 (warm-up) + 1 (timed) times.
* CPU: one warm-up call, then ``repeats`` calls, each timed with `time.perf_counter`; their median.

Both return the median, so one slow outlier (a page fault, a context switch) does not move the figure.
Functions that run for a whole generation or a training step use it too: their host-side work
shows up in the CUDA-event time as GPU idle time between the two events.

`check_then_time` is how every kernel benchmark uses it: one path's output against a float64
reference first, then the timer only for a path that is right.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping

import torch

from lab.core.checks import check_device, check_float_tensor, check_int, check_number

CUDA_WARMUP_MS = 100
CUDA_REP_MS_PER_REPEAT = 50


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int = 10) -> float:
    """Median time of one ``fn()`` call in ms on ``device`` (cpu or cuda); ``repeats`` ≥ 1 sets the sample size."""
    _check_callable("fn", fn)
    check_int("repeats", repeats)
    device = check_device("device", device)
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=CUDA_WARMUP_MS, rep=CUDA_REP_MS_PER_REPEAT * repeats,
                              return_mode="median"))
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r} is not allowed; use 'cpu' or 'cuda'")
    fn()  # warm-up: first-call costs (allocation, lazy initialisation) are not the steady state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def check_then_time(fn: Callable[[], torch.Tensor], reference: torch.Tensor, tol: float, device: torch.device,
                    repeats: int = 10) -> dict:
    """Check one path against a float64 ``reference``, then time it only if it is right.

    Returns {"max_rel_err": max |fn() − reference| / max |reference|, "agreement": the fraction of outputs equal
    to the reference rounded to the output's dtype (1.0: every element correctly rounded; a bf16 kernel that
    accumulates in another order agrees on most elements, not all), "ms": `time_ms`} for a right path, and
    {"max_rel_err": that error or None, "ms": None, "wrong": why} for one whose error exceeds ``tol``,
    is not finite, that raises (a private PyTorch op missing from this release, an unsupported
    dtype) or returns no tensor of the reference's shape: a wrong path is recorded, never timed, and never
    stops the other paths. ``reference`` must be a finite float64 tensor.
    """
    _check_callable("fn", fn)
    check_float_tensor("reference", reference, dtypes=(torch.float64,))
    check_number("tol", tol, 0.0)
    check_int("repeats", repeats)
    check_device("device", device)
    try:
        out = fn()
    except Exception as error:  # noqa: BLE001 - e.g. a Triton CompilationError, a missing private op
        return {"max_rel_err": None, "ms": None, "wrong": f"raised {type(error).__name__}: {error}"[:2000]}
    if not isinstance(out, torch.Tensor) or out.shape != reference.shape:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        return {"max_rel_err": None, "ms": None,
                "wrong": f"returned {got}, not a tensor of the reference's shape {tuple(reference.shape)}"}
    err = ((out.double() - reference).abs().max() / reference.abs().max().clamp(min=1e-30)).item()
    if not math.isfinite(err):
        return {"max_rel_err": None, "ms": None, "wrong": "the output is not finite"}
    if not err <= tol:
        return {"max_rel_err": err, "ms": None,
                "wrong": f"max relative error {err:.3g} vs float64 exceeds {tol:g}"}
    agreement = (out == reference.to(out.dtype)).double().mean().item() if out.numel() else 1.0
    return {"max_rel_err": err, "agreement": agreement, "ms": time_ms(fn, device, repeats)}


def time_interleaved(fns: Mapping[str, Callable[[], object]], rounds: int = 15) -> dict[str, list[float]]:
    """CPU times in ms of several functions measured in turn, round after round (a, b, c, a, b, c, …) after
    one warm-up call each: a load on the machine that comes and goes falls on every function alike, so
    the ratio of two of them within a round is paired. Returns {name: [ms of round 1, …, round ``rounds``]};
    `lab.core.stats.paired_ratio` turns two of them into a speed-up with its interval."""
    check_int("rounds", rounds, minimum=2)
    if not isinstance(fns, Mapping):
        raise TypeError(f"fns must be a dict {{name: function}}, got {type(fns).__name__}")
    if not fns:
        raise ValueError("fns must name at least one function to time")
    for name, fn in fns.items():
        _check_callable(f"fns[{name!r}]", fn)
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a function of no arguments, got {fn!r:.80}")
