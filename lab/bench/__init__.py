"""Benchmark records for the book: ``python -m lab.bench SUITE [--out results/] [--quick]``.

Each suite run writes one JSON file, ``<out>/<suite>_<device-kind>.json`` (``..._quick.json`` with
``--quick``), stamped by `bench_provenance` (`lab.core.records.provenance` of the command). Every time in a record is
the median of `lab.core.timing.time_ms`: CUDA events through `triton.testing.do_bench` on a GPU,
``time.perf_counter`` on the CPU. Notebooks read the records with `lab.core.records.load_results`.

The suites live in their chapters:

* ``params`` (chapter 1, `lab.params.suite`): offloading (resident / naive / prefetch) and the memory
  model against measured peaks;
* ``prune`` (chapter 2, `lab.prune.suite`): 2:4 matmuls (dense vs semi-structured vs Triton) and a
  2:4 model forward;
* ``quant`` (chapter 3, `lab.quant.suite`): int4 weight-only and W8A8 matmuls against bf16 cuBLAS and
  PyTorch's int4/int8 ops, and one-token decode per format;
* ``distill`` (chapter 4, `lab.distill.suite.run`): the long distillation runs;
* ``parallel`` (chapter 5, `lab.parallel.suite.run`): each parallel strategy's training step on the
  local devices with nccl, or gloo on the CPU;
* ``infer`` (chapter 6, `lab.infer.suite`): decode tokens/s of every serving configuration beside its
  speed of light, and static vs continuous batching.

``python -m lab.bench gpu`` (`lab.bench.gpu`, its stages in `lab.bench.stages`) runs the GPU-only
measurements as one staged, budgeted run.
"""

import shlex
from collections.abc import Sequence

import torch

from lab.core.records import provenance

__all__ = ["bench_provenance"]


def bench_provenance(device: torch.device, argv: Sequence[str]) -> dict:
    """`lab.core.records.provenance` of ``device`` for the command ``python -m lab.bench <argv>``."""
    return provenance(device, "python -m lab.bench " + shlex.join(argv))
