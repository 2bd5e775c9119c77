"""The stages of the GPU run (`lab.bench.gpu`): what each measures, its estimated cost, and the kernel shapes.

A stage is a function (device, quick, progress) -> dict of JSON-ready results. ``quick`` is the dry
run: the CPU, tiny shapes, the PyTorch paths. A stage that finishes but found failures (failing CUDA
tests, a part that raised) raises `StageFailed` with its results, which are still recorded. The
estimates (``Stage.estimate_s``, GPU seconds including imports and Triton compiles) are guesses for an
H100/H200-class GPU until a run records the real wall times.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lab.core.records import REPO_ROOT, device_name, load_results
from lab.kernels.aot.shapes import MatmulShapes, PagedShapes

STATIC_RECORD = "kernels_sm90.json"      # the static model's record in results/ (`python -m lab.bench static`)
_CUDA_MARK = re.compile(r"^\s*@pytest\.mark\.cuda\b", re.MULTILINE)


class StageFailed(Exception):
    """A stage that ran to its end and found failures (failing tests, a part that raised); ``result`` is recorded."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


def cuda_test_files(root: Path = REPO_ROOT / "tests") -> list[Path]:
    """Test files with at least one ``@pytest.mark.cuda`` test, sorted (collecting only these is fast)."""
    return sorted(p for p in root.rglob("test_*.py") if _CUDA_MARK.search(p.read_text(encoding="utf-8")))


def junit_summary(path: Path) -> dict:
    """{"passed", "failed", "errors", "skipped", "failures": [{"id", "kind", "message"}]} from a JUnit XML report."""
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        bad = failure if failure is not None else error
        if bad is not None:
            counts["failed" if failure is not None else "errors"] += 1
            failures.append({"id": test_id, "kind": "failure" if failure is not None else "error",
                             "message": (bad.get("message") or (bad.text or "").strip())[:1000]})
        elif skipped is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures}


def cuda_tests(device: torch.device, quick: bool, progress: bool) -> dict:
    """``python -m pytest -m cuda <files> -q`` in a subprocess; counts and failures from its JUnit XML."""
    files = [str(p.relative_to(REPO_ROOT)) for p in cuda_test_files()]
    if not files:  # pytest given no file would collect the whole tests/ folder
        raise StageFailed("no test file holds a @pytest.mark.cuda test", {"files": []})
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", *files, "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        result = junit_summary(xml) if xml.exists() else {}
    result.update(pytest_command=shlex.join(["python", *cmd[1:-1]]), files=files, returncode=proc.returncode,
                  output_tail=(proc.stdout + proc.stderr)[-3000:])
    if device.type != "cuda":
        result["note"] = "no CUDA device: every CUDA test is skipped (a rehearsal of the collection and report)"
    if not result:
        raise StageFailed(f"pytest wrote no JUnit report (exit status {proc.returncode}); see output_tail", result)
    if not result["passed"] + result["skipped"] + len(result["failures"]):
        raise StageFailed(f"pytest collected no CUDA test (exit status {proc.returncode})", result)
    if result["failures"] or proc.returncode != 0:
        raise StageFailed(f"{len(result['failures'])} CUDA test(s) failed (pytest exit status {proc.returncode})",
                          result)
    return result


# The kernels stage's shapes: the goal shapes on a GPU, tiny ones for the dry run.
KERNEL_SHAPES = {
    "gpu": {"int4": {"size": 8192, "batches": (1, 2, 4, 8, 16, 32), "group_size": 128},
            "int8": {"size": 8192, "batches": (4096,)},
            "sparse24": {"shapes": [(4096, 4096), (8192, 8192), (11008, 4096)], "dtypes": [torch.bfloat16],
                         "batches": [1, 16, 2048]},
            "paged": {"heads": ((32, 8), (32, 32)), "head_dim": 128, "batches": (1, 8, 32), "context": 2048}},
    "dry": {"int4": {"size": 256, "batches": (1, 2), "group_size": 128},
            "int8": {"size": 256, "batches": (32,)},
            "sparse24": {"shapes": [(64, 128)], "dtypes": [torch.float32], "batches": [1, 16]},
            "paged": {"heads": ((4, 2), (4, 4)), "head_dim": 16, "batches": (1, 2), "context": 64}},
}


def kernel_shapes() -> list[MatmulShapes | PagedShapes]:
    """The ``kernels`` stage's shapes on a GPU (`KERNEL_SHAPES["gpu"]`), for the ahead-of-time compile."""
    from lab.infer.suite import paged_decode_shapes

    gpu = KERNEL_SHAPES["gpu"]
    out: list[MatmulShapes | PagedShapes] = [      # the int4 part times the dense baseline beside int4
        MatmulShapes("gpu run kernels stage", kinds, tuple(gpu[kind]["batches"]),
                     ((gpu[kind]["size"], gpu[kind]["size"]),), gpu[kind].get("group_size", 0))
        for kind, kinds in (("int4", ("int4", "dense")), ("int8", ("int8",)))]
    out.append(MatmulShapes("gpu run kernels stage sparse24", ("sparse24",), tuple(gpu["sparse24"]["batches"]),
                            tuple(gpu["sparse24"]["shapes"])))
    return out + paged_decode_shapes("gpu run kernels stage paged", **gpu["paged"])


def _run_parts(parts: dict[str, Callable[[], object]]) -> dict:
    """Run each part; one that raises is recorded as {"error", "traceback"} and the others still run."""
    result, broken = {}, []
    for name, part in parts.items():
        try:
            result[name] = part()
        except Exception as error:  # noqa: BLE001 - recorded, not hidden
            result[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            broken.append(name)
    if broken:
        raise StageFailed(f"part(s) {', '.join(broken)} raised", result)
    return result


# a path of the kernels stage → (version, kernel) of its row in the static model's record
STATIC_PATHS = {"int4_lab": ("v1", "int4_matmul"), "int4_lab_v2": ("v2", "int4_gemv_v2"),
                "int4_layer": ("v2", "int4_gemv_v2"),           # Int4Linear at M ≤ 16 (the rows the record has)
                "dense_triton": ("dense", "dense_matmul"), "int8_lab": ("v2", "int8_matmul"),
                "triton_24": ("v1", "sparse24_matmul"), "triton_24_v2": ("v2", "sparse24_matmul_v2"),
                "v1": ("v1", "paged_attention"), "v2": ("v2", "paged_attention_v2")}


def _measured(result: dict) -> list[tuple[str, dict, dict, dict]]:
    """(path, the static row's shape, the dict its ms is in, the dict to add the prediction to) of every timed
    bf16 path of the kernels stage's ``result`` (`lab.quant.suite`'s int4 and int8 rows, `lab.prune.suite`'s 2:4
    rows, `lab.infer.suite`'s paged decode rows)."""
    def rows(part: str) -> list[dict]:                     # a part that raised holds {"error", "traceback"}
        return result[part] if isinstance(result.get(part), list) else []

    out = []
    for row in rows("int4") + rows("int8"):
        for name, entry in row["paths"].items():
            g = {"g": row["group_size"]} if name.startswith("int4") else {}
            out.append((name, {"M": row["M"], "N": row["N"], "K": row["K"], **g}, entry, entry))
    for row in (r for r in rows("sparse24") if r["dtype"] == "bfloat16"):
        for name in row["ms"]:
            shape = {"M": row["batch"], "N": row["out_features"], "K": row["in_features"]}
            out.append((name, shape, {"ms": row["ms"][name]}, row.setdefault("predicted", {}).setdefault(name, {})))
    for row in (r for r in rows("paged_decode") if r["dtype"] == "bfloat16"):
        shape = {k: row[k] for k in ("B", "H", "H_kv", "D", "block_size", "context")}
        out.append((row["version"], shape, row, row))
    return out


def beside_predictions(result: dict, record: dict, device_name: str) -> int:
    """Add to each timed bf16 path of the kernels stage's ``result`` the static model's prediction for its kernel
    at that shape on this GPU (``record``: results/kernels_sm90.json; its H100 or H200 figures by
    ``device_name``): ``predicted_us`` and ``measured_over_predicted``, the model's error as a number. Returns
    how many paths got one (none on another GPU, or where the record has no row of that kernel and shape)."""
    device = next((d for d in ("h200", "h100") if d in device_name.lower()), None)
    rows = {(r["version"], r["kernel"], tuple(sorted(r["shape"].items()))): r for r in record.get("rows", [])}
    added = 0
    for name, shape, timed, into in _measured(result) if device else []:
        static = rows.get((*STATIC_PATHS.get(name, (None, None)), tuple(sorted(shape.items()))))
        if static and timed.get("ms"):
            into["predicted_us"] = static[f"predicted_us_{device}"]
            into["measured_over_predicted"] = timed["ms"] * 1e3 / into["predicted_us"]
            added += 1
    for row in result["sparse24"] if isinstance(result.get("sparse24"), list) else []:   # unpredicted paths dropped
        row["predicted"] = {name: p for name, p in row.get("predicted", {}).items() if p}
    return added


def kernels(device: torch.device, quick: bool, progress: bool) -> dict:
    """Kernel microbenchmarks at the goal shapes, each beside its PyTorch baseline, and the two ceilings; every
    timed path with a row in the static model's record beside that prediction (`beside_predictions`; the count
    in ``static_predictions``)."""
    from lab.core.ceilings import measure_ceilings
    from lab.infer.suite import bench_paged_decode
    from lab.prune.suite import bench_prune_linear
    from lab.quant.suite import bench_int4, bench_int8

    shapes = KERNEL_SHAPES["dry" if quick else "gpu"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ceilings = measure_ceilings(device, dtype, quick)
    result = {"shapes": {k: {n: ([str(d).removeprefix("torch.") for d in v] if n == "dtypes" else v)
                             for n, v in part.items()} for k, part in shapes.items()},
              "ceilings": ceilings}
    parts = {"int4": lambda: bench_int4(device, quick, progress, **shapes["int4"]),
             "int8": lambda: bench_int8(device, quick, progress, **shapes["int8"]),
             "sparse24": lambda: bench_prune_linear(device, quick, progress, **shapes["sparse24"]),
             "paged_decode": lambda: bench_paged_decode(device, quick, progress, **shapes["paged"],
                                                        bandwidth=ceilings["bandwidth"])}
    try:
        result.update(_run_parts(parts))
    except StageFailed as failed:                      # the parts that ran still get their predictions
        result.update(failed.result)
        raise StageFailed(str(failed), result) from failed
    finally:
        result["static_predictions"] = beside_predictions(result, load_results(STATIC_RECORD)[0],
                                                          device_name(device))
    return result


def params(device: torch.device, quick: bool, progress: bool) -> dict:
    from lab.params.suite import run

    return run(device, quick, progress)


def quant_decode(device: torch.device, quick: bool, progress: bool) -> dict:
    from lab.quant.suite import bench_decode

    return {"decode": bench_decode(device, quick, progress)}


def infer(device: torch.device, quick: bool, progress: bool) -> dict:
    from lab.infer.suite import run

    return run(device, quick, progress, short=True)


def prune(device: torch.device, quick: bool, progress: bool) -> dict:
    from lab.prune.suite import run

    return run(device, quick, progress, short=True)


def parallel(device: torch.device, quick: bool, progress: bool) -> dict:
    from lab.parallel.suite import run

    return {"full": run(device, quick, progress)}  # nested: its own "device_type" key


@dataclass(frozen=True)
class Stage:
    name: str
    estimate_s: float                                        # GPU seconds, imports and compiles included
    run: Callable[[torch.device, bool, bool], dict]          # (device, quick, progress) -> result


STAGES = {s.name: s for s in (Stage("cuda_tests", 90, cuda_tests), Stage("kernels", 100, kernels),
                              Stage("params", 45, params), Stage("quant_decode", 30, quant_decode),
                              Stage("infer", 120, infer), Stage("prune", 40, prune), Stage("parallel", 45, parallel))}
