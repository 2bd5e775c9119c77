"""The kernels on Hopper without a GPU: their ahead-of-time sm_90 compile and static model, one record.

    python -m lab.bench static [--out DIR] [--jobs N] [--reuse RECORD] [--no-progress]

collects the shapes every caller runs (`SHAPE_SOURCES`: the suites of chapters 2, 3 and 6, the staged GPU
run's ``kernels`` stage and the CUDA tests, each declaring its own shapes), records the launches the
wrappers make for them (`lab.kernels.aot.shapes`), compiles every distinct configuration for sm_90
(`lab.kernels.aot.compile`: registers, spills, shared memory, CTAs per SM, the main loop's SASS), predicts the
time of each row of the static model from those compiles (`lab.kernels.aot.model`), and writes one record,
``DIR/kernels_sm90.json``: the check's fields (``ok``, ``configurations``) and the model's (``issue_rate``,
``ceilings``, ``rows``). It prints both tables and exits with status 1, after writing the record and naming
each failing configuration, when a configuration fails to compile, spills registers or needs more than the
227 KB of shared memory an sm_90 block may have. ``make check-kernels`` runs it under triton 3.6.0 (the GPU
machine's) into ``_build/``, with ``--reuse results/kernels_sm90.json``: a configuration whose fingerprint
(compilation key, kernel source, Triton version; `lab.kernels.aot.compile.fingerprint`) the committed record
holds takes that record's compile, the others compile. ``make kernels-static`` compiles every configuration
and writes the committed record in ``results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lab.bench import bench_provenance, stages
from lab.core.atomic import atomic_write_json
from lab.core.records import device_name
from lab.infer import suite as infer_suite
from lab.kernels.aot import model as static_model
from lab.kernels.aot.compile import check, reusable, table
from lab.kernels.aot.shapes import MatmulShapes, PagedShapes, launches
from lab.kernels.aot.sm90 import ARCH, DEVICE_LABEL
from lab.kernels.aot.specialise import configurations
from lab.models.gpt import GPTConfig
from lab.prune import suite as prune_suite
from lab.quant import suite as quant_suite
from lab.quant.linear import decoder_linear_shapes

OUT_NAME = "kernels_sm90.json"
Shapes = list[MatmulShapes | PagedShapes]


TINY_TEST_GPT = GPTConfig(vocab_size=61, context_length=16, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=96)
# The shapes the CUDA-only tests launch, by test: each of those tests takes its shapes from here.
CUDA_TEST_SHAPES: dict[str, Shapes] = {
    "test_cuda_int4_kernel_matches_torch_references": [
        MatmulShapes("test cuda int4 kernel", ("int4",), (1, 7, 16, 64, 300), ((1024, 2048),), g) for g in (128, 64)],
    "test_cuda_int8_kernel_matches_the_integer_product": [
        MatmulShapes("test cuda int8 kernel", ("int8",), (1, 16, 100, 256), ((512, 1024),))],
    "test_cuda_quantized_models_match_the_cpu_path": [   # 3 × 16 tokens of a tiny GPT, int4 with g = 32
        MatmulShapes("test cuda quantized models (tiny gpt)", ("int4", "int8"), (3 * TINY_TEST_GPT.context_length,),
                     decoder_linear_shapes(TINY_TEST_GPT), 32)],
    "test_cuda_int4_linear_paths_match_the_cpu_path": [   # v2 GEMV, chunks of 16 rows, dequantize + dense
        MatmulShapes("test cuda int4 linear paths", ("int4",), (3, 48, 144), ((192, 256),), g) for g in (64, 128)],
    "test_cuda_fp4_kernel_matches_the_reference": [
        MatmulShapes("test cuda fp4 kernel", ("fp4",), (1, 3, 16), ((1000, 2048),))],
    "test_cuda_dense_kernel_matches_float64": [
        MatmulShapes("test cuda dense kernel", ("dense",), (1, 5, 16, 33, 300), ((1024, 2048), (1000, 1024)))],
    "test_torch_semi_structured_linear_matches_float64": [
        MatmulShapes("test cuda semi-structured", ("sparse24",), (10,), ((256, 512),))],
    "test_paged_decode_kernel_on_gpu": [                # lengths up to 513 tokens, one spare block per row
        PagedShapes("test cuda paged decode", 5, 32, 8, 128, 16, (-(-513 // 16) + 1,))],
}


def cuda_test_shapes() -> Shapes:
    """The shapes the CUDA-only tests launch (`CUDA_TEST_SHAPES`)."""
    return [s for shapes_of_test in CUDA_TEST_SHAPES.values() for s in shapes_of_test]


# the registry: each caller's declaration of the shapes it runs
SHAPE_SOURCES: tuple[Callable[[], Shapes], ...] = (quant_suite.kernel_shapes, stages.kernel_shapes,
                                                   prune_suite.kernel_shapes, infer_suite.kernel_shapes,
                                                   cuda_test_shapes)


def shapes() -> Shapes:
    return [s for source in SHAPE_SOURCES for s in source()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compile processes (default: the CPU count)")
    parser.add_argument("--reuse", type=Path, default=None, metavar="RECORD",
                        help="an earlier kernels_sm90.json: configurations with the same fingerprint take its "
                             "compile instead of compiling (default: compile every one)")


def record_provenance(argv: Sequence[str]) -> dict:
    """`bench_provenance` of this command, for the sm_90 target compiled on this host."""
    fields = bench_provenance(torch.device("cpu"), argv)
    fields.update(device=DEVICE_LABEL, device_type="cuda", host=device_name(torch.device("cpu")))
    return fields


def write_record(args: argparse.Namespace, argv: Sequence[str]) -> Path:
    """Compile, model, write ``args.out / kernels_sm90.json``, print; exit 1 if a configuration fails."""
    configs = configurations(launches(shapes()))
    reuse = reusable(json.loads(Path(args.reuse).read_text(encoding="utf-8"))) if args.reuse else None
    print(f"sm_{ARCH}: {len(configs)} distinct compilations for {sum(len(c.sources) for c in configs)} launches, "
          f"{args.jobs} processes" + (f", reusing {args.reuse}'s compiles of unchanged ones" if reuse else ""))
    checked = check(configs, args.jobs, progress=not args.no_progress, reuse=reuse)
    compiled = {c.key: r for c, r in zip(configs, checked["configurations"])}
    try:
        modelled = static_model.model(jobs=args.jobs, progress=not args.no_progress, compiled=compiled, reuse=reuse)
    except RuntimeError as error:          # a row's kernel does not compile: the record keeps the check alone
        print(f"static model left out: {error}", file=sys.stderr)
        modelled = {}
    path = atomic_write_json(Path(args.out) / OUT_NAME, {**record_provenance(argv), **checked, **modelled})
    print(table(checked["configurations"]))
    if modelled:
        print(static_model.table(modelled))
    print(f"wrote {path} ({checked['n_configurations']} configurations, {checked['n_compiled']} compiled here, "
          f"{len(modelled.get('rows', []))} model rows)")
    failed = [r for r in checked["configurations"] if r["failures"]]
    for r in failed:
        print(f"FAILED {r['name']} ({r['num_warps']} warps; from {r['sources'][0]}): " + "; ".join(r["failures"]),
              file=sys.stderr)
    if failed:
        raise SystemExit(1)
    return path
