"""The command line of `lab.bench`.

    python -m lab.bench SUITE [--out DIR] [--quick] [--device cpu|cuda] [--no-progress]
    python -m lab.bench gpu [--budget-s 480] [--out DIR] [--dry-run] [--stages a,b,...] [--no-progress]
    python -m lab.bench static [--out DIR] [--jobs N] [--no-progress]

A suite writes ``DIR/<suite>_<device-kind>.json`` (``..._quick.json`` with ``--quick``); ``gpu`` runs
the staged GPU run of `lab.bench.gpu`, one record per stage; ``static`` the kernels' ahead-of-time sm_90
compile and static model (`lab.bench.static`, CPU only), ``DIR/kernels_sm90.json``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lab.bench import bench_provenance, gpu, static
from lab.core.atomic import atomic_write_json
from lab.core.records import RESULTS_DIR, check_out_dir, device_kind
from lab.core.runtime import get_device

# suite name → its module, each in its chapter, with `run(device, quick, progress) -> dict`
SUITES = {
    "params": "lab.params.suite",
    "params-seeds": "lab.params.seeds",
    "prune": "lab.prune.suite",
    "prune-seeds": "lab.prune.seeds",
    "quant": "lab.quant.suite",
    "quant-seeds": "lab.quant.seeds",
    "distill": "lab.distill.suite",
    "distill-seeds": "lab.distill.seeds",
    "distill-grid": "lab.distill.grid",
    "distill-on-policy": "lab.distill.on_policy_runs",
    "parallel": "lab.parallel.suite",
    "infer": "lab.infer.suite",
    "leaderboard": "lab.capstone.suite",
    "planted": "lab.quant.planted",
    "calibration": "lab.quant.calibration",
    "fp8-training": "lab.quant.fp8_training",
    "mx-formats": "lab.quant.mx_runs",
    "spec-batch": "lab.infer.spec_batch_runs",
    "serving": "lab.infer.serving_runs",
}
NESTED = {"parallel": "full"}  # suites whose result has keys of its own that a record uses ("device_type")


def run_suite(name: str, device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """The result of suite ``name`` (a key of `SUITES`) on ``device``, ready to merge into its record."""
    result = importlib.import_module(SUITES[name]).run(device, quick, progress)
    return {NESTED[name]: result} if name in NESTED else result


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its subcommand parsers (by name, for their own error messages)."""
    parser = argparse.ArgumentParser(prog="python -m lab.bench",
                                     description="Benchmark records for the book, written to results/.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUITE",
                                     help=f"one of {', '.join(SUITES)}, gpu (the staged GPU run) or static "
                                          "(the kernels' sm_90 compile and static model)")
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON record(s)")
    shared.add_argument("--no-progress", action="store_true", help="hide progress bars")
    subparsers = {}
    for name, target in SUITES.items():
        sub = commands.add_parser(name, parents=[shared], help=f"suite {name} ({target})")
        sub.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
        sub.add_argument("--device", choices=("cpu", "cuda"), default=None,
                         help="default: lab.core.runtime.get_device()")
        subparsers[name] = sub
    subparsers["gpu"] = commands.add_parser("gpu", parents=[shared], help="the staged GPU run (lab.bench.gpu)",
                                            description="Every GPU-only measurement as one staged command "
                                            "within a time budget; one JSON record per stage.")
    gpu.add_arguments(subparsers["gpu"])
    subparsers["static"] = commands.add_parser("static", parents=[shared], help="the kernels' sm_90 compile and "
                                               "static model (lab.bench.static)", description=static.__doc__.splitlines()[0])
    static.add_arguments(subparsers["static"])
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run it.

    Returns the record written (a suite) or the folder of the stage records (``gpu``, which exits
    with status 1 after its summary when a stage failed or timed out).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    sub = subparsers[args.command]
    try:
        check_out_dir(args.out)
        if args.command == "gpu":
            stages = gpu.check_run(gpu.parse_stages(args.stages), args.budget_s, args.out, args.dry_run)
        if args.command == "static" and args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    except ValueError as error:
        sub.error(str(error))
    if args.command == "static":
        return static.write_record(args, argv)
    if args.command == "gpu":
        records = gpu.run_gpu(stages, args.budget_s, args.out, args.dry_run, argv, not args.no_progress)
        if any(r["status"] in ("failed", "timeout") for r in records):
            raise SystemExit(1)
        return args.out
    if args.device == "cuda" and not torch.cuda.is_available():
        sub.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device) if args.device else get_device()
    record = bench_provenance(device, argv)
    record["suite"], record["quick"] = args.command, args.quick
    record.update(run_suite(args.command, device, args.quick, not args.no_progress))
    name = f"{args.command}_{device_kind(device)}{'_quick' if args.quick else ''}.json"
    path = atomic_write_json(args.out / name, record)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
