"""One staged GPU run: ``python -m lab.bench gpu [--budget-s 480] [--out DIR] [--dry-run] [--stages a,b]``.

A GPU machine may be lent for a short window (the book's: 15 minutes, machine start included, one
command ≤ 10 minutes), so the GPU-only measurements run as one command of stages, in this order:

    stage          estimated GPU s   what
    cuda_tests      90   ``pytest -m cuda`` on the test files that hold CUDA tests (JUnit XML: counts, failures)
    kernels        100   int4 v1, v2 and the path `Int4Linear` takes (8192², g = 128, M = 1…32) vs the dense
                         Triton kernel, bf16 cuBLAS and ``torch._weight_int4pack_mm``; W8A8 (M = 4096, N = K =
                         8192) vs bf16 and ``torch._int_mm``; 2:4 vs dense and semi-structured; paged decode
                         attention vs the copy ceiling; the copy and bf16 matmul ceilings; each timed path
                         beside the static model's prediction for it (``measured_over_predicted``)
    params          45   suite ``params``: memory model vs measured, offload naive / prefetch / resident
    quant_decode    30   suite ``quant``'s one-token decode per format
    infer          120   suite ``infer``, short form (batches 1 and 8, 32 new tokens)
    prune           40   suite ``prune``, short form (one weight shape, and the 2:4 model forward)
    parallel        45   suite ``parallel`` on the local GPU(s) with nccl (one GPU: one nccl rank)

The estimates (``Stage.estimate_s``, guesses for an H100/H200-class GPU until a run records the
real wall times) decide the schedule: a stage whose estimate exceeds the time left of the budget is
skipped and recorded as skipped. Each stage's record is written as soon as it ends, so a run cut
off keeps what it finished: ``<out>/gpu_<stage>_<device-kind>.json`` (``..._dry.json`` for a dry
run), with `provenance`, the status (ok / failed / timeout / skipped), the estimate, the wall time
and the stage's result at the top level, like a suite record. A stage that raises is recorded with
its traceback and the run goes on; when the budget runs out inside a stage, a timer (SIGALRM)
stops it and it is recorded as ``timeout``. A summary table ends the run; the exit status is 1 if
any stage failed or timed out.

``--dry-run`` rehearses the whole run on the CPU with tiny shapes (the suites' ``quick`` mode, the
PyTorch paths; stage ``cuda_tests`` still runs pytest, where every CUDA test is skipped), scheduled
with the same estimates. The GPU machine has no ``datasets`` package and no encoder wheel; nothing
here needs them.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lab.bench import bench_provenance
from lab.bench.stages import KERNEL_SHAPES, STAGES, Stage, StageFailed
from lab.core.atomic import atomic_write_json
from lab.core.records import check_out_dir, device_kind

__all__ = ["KERNEL_SHAPES", "STAGES", "Stage", "StageFailed", "check_run", "parse_stages", "run_gpu",
           "summary_table"]

DEFAULT_BUDGET_S = 480.0


class BudgetExceeded(BaseException):
    """Raised inside a stage when the run's budget is spent (a BaseException: ``except Exception`` lets it pass)."""


# ---------------------------------------------------------------------------------------------- checks


def parse_stages(text: str) -> list[str]:
    """Comma-separated stage names → the selected stages in run order; ValueError naming unknown ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ValueError(f"--stages={text!r} names unknown stage(s) {unknown}; allowed: a comma-separated "
                         f"subset of {', '.join(STAGES)}")
    return [n for n in STAGES if n in names]


def check_run(stages: Sequence[str], budget_s: float, out: Path, dry_run: bool) -> list[str]:
    """The stages in run order, after checking every argument of `run_gpu`; ValueError naming a bad one."""
    stages = parse_stages(",".join(stages))
    if not budget_s > 0:
        raise ValueError(f"--budget-s={budget_s!r} is not allowed; give a number of seconds > 0")
    check_out_dir(out)
    if not dry_run and not torch.cuda.is_available():
        raise ValueError("the GPU run needs a CUDA device (torch.cuda.is_available() is False); "
                         "--dry-run rehearses it on the CPU")
    return stages


# ---------------------------------------------------------------------------------------------- the run


def _call_with_deadline(fn: Callable[[], dict], seconds: float) -> dict:
    """``fn()``, interrupted by `BudgetExceeded` after ``seconds`` (SIGALRM; only in the main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return fn()

    def expire(signum, frame):
        raise BudgetExceeded(f"the budget ran out after {seconds:.0f} s inside the stage")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _settle(device: torch.device) -> None:
    """Surface a stage's pending CUDA errors in that stage, and free what it left behind."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run_stage(stage: Stage, device: torch.device, quick: bool, progress: bool,
              seconds_left: float) -> tuple[dict, dict]:
    """(the stage's record fields: status, estimate, wall time; its result, or skip reason, error and traceback)."""
    fields: dict = {"stage": stage.name, "estimated_s": stage.estimate_s, "seconds_left_before": seconds_left}
    if stage.estimate_s > seconds_left:
        return {**fields, "status": "skipped", "wall_s": 0.0}, {
            "skipped": f"estimated {stage.estimate_s:g} s > {max(seconds_left, 0):.0f} s left of the budget"}
    start = time.monotonic()
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = _call_with_deadline(lambda: stage.run(device, quick, progress), seconds_left)
        _settle(device)
        status = "ok"
    except StageFailed as failure:
        result, status = {**failure.result, "error": str(failure)}, "failed"
    except BudgetExceeded as exc:
        result, status = {"error": str(exc), "traceback": traceback.format_exc()}, "timeout"
    except Exception as exc:  # noqa: BLE001 - recorded; the run goes on with the next stage
        result, status = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, "failed"
    fields.update(status=status, wall_s=time.monotonic() - start)
    if device.type == "cuda":
        try:
            fields["device_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        except RuntimeError:  # a stage that broke the CUDA context: its error is recorded already
            pass
    return fields, result


def _note(record: dict) -> str:
    if record["status"] == "skipped":
        return record["skipped"]
    if "error" in record:
        return (record["error"].splitlines() or [""])[0][:70]
    if record["stage"] == "cuda_tests":
        return f"{record['passed']} passed, {record['failed']} failed, {record['skipped']} skipped"
    untimed = sum(1 for part in ("int4", "int8") for row in record.get(part, [])
                  for e in row["paths"].values() if e.get("ms") is None)
    untimed += sum(len(row["wrong"]) for row in record.get("sparse24", []))
    untimed += sum(1 for row in record.get("paged_decode", []) if row["ms"] is None)
    return f"{untimed} path(s) wrong or unavailable, not timed" if untimed else ""


def summary_table(records: Sequence[dict]) -> str:
    """Stage, status, estimate, wall time and a note per record, and the totals."""
    lines = [f"{'stage':<13} {'status':<8} {'est. s':>7} {'wall s':>8}  note"]
    for r in records:
        lines.append(f"{r['stage']:<13} {r['status']:<8} {r['estimated_s']:>7.0f} {r['wall_s']:>8.1f}  {_note(r)}")
    lines.append(f"{'total':<13} {'':<8} {sum(r['estimated_s'] for r in records):>7.0f} "
                 f"{sum(r['wall_s'] for r in records):>8.1f}")
    return "\n".join(lines)


def run_gpu(stages: Sequence[str], budget_s: float, out: Path, dry_run: bool, argv: Sequence[str],
            progress: bool = True) -> list[dict]:
    """Run ``stages`` (names of `STAGES`, in run order) within ``budget_s`` seconds; write and return the records.

    ``dry_run``: on the CPU with tiny shapes. Raises ValueError for an unknown stage, a budget ≤ 0 or an
    ``out`` that is an existing file.
    """
    stages = check_run(stages, budget_s, out, dry_run)
    device = torch.device("cpu") if dry_run else torch.device("cuda")
    suffix = "_dry" if dry_run else ""
    start = time.monotonic()
    records = []
    for i, name in enumerate(stages, 1):
        stage = STAGES[name]
        left = budget_s - (time.monotonic() - start)
        print(f"[{i}/{len(stages)}] {name}: estimated {stage.estimate_s:g} s, {max(left, 0):.0f} s left", flush=True)
        record = {**bench_provenance(device, argv), "run": "gpu", "dry_run": dry_run, "budget_s": budget_s}
        fields, result = run_stage(stage, device, dry_run, progress, left)
        clash = (record.keys() | fields.keys()) & result.keys()
        if clash:
            raise RuntimeError(f"stage {name} returned keys {sorted(clash)} that the record itself uses")
        record.update(fields, **result)
        path = Path(out) / f"gpu_{name}_{device_kind(device)}{suffix}.json"
        try:
            atomic_write_json(path, record)
        except (TypeError, ValueError) as error:  # a NaN or an object JSON cannot hold: keep the rest
            record = {k: v for k, v in record.items() if k not in result}
            record.update(status="failed", error=f"the stage's result is not strict JSON: {error}")
            atomic_write_json(path, record)
        print(f"[{i}/{len(stages)}] {name}: {record['status']} in {record['wall_s']:.1f} s -> {path}", flush=True)
        records.append(record)
    print(summary_table(records), flush=True)
    return records


def add_arguments(parser) -> None:
    """The ``gpu`` command's options (on an `argparse` (sub)parser)."""
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds the stages may take in all (default {DEFAULT_BUDGET_S:g})")
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU with tiny shapes")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (run in that order; default all)")
