"""Compile each configuration for sm_90 with Triton's real pipeline and measure its cubin; the check's verdict.

For each configuration (`lab.kernels.aot.specialise`) Triton's pipeline runs (TTIR → TTGIR → LLVM IR → PTX →
cubin, with the ptxas shipped in the triton wheel) for ``GPUTarget("cuda", 90, 32)``, each compilation from an
empty Triton cache (so each really compiles). Recorded per configuration: registers per thread, stack frame
and spill stores / loads (bytes) from the report of ptxas -v that Triton's own ptxas call prints
(``TRITON_DUMP_PTXAS_LOG``; the same binary and flags that made the cubin); shared memory = Triton's dynamic
allocation (``metadata.shared``) + ptxas' static ``smem``; CTAs per SM (`lab.kernels.aot.sm90.occupancy`);
and the main loop's SASS (`lab.kernels.aot.sass`). A configuration fails the check on a compile error, on any
register spill, or on a block needing more than the 227 KB of shared memory an sm_90 block may have.

A compile is a function of its `fingerprint` (the configuration's key, the kernel's source with the jitted
functions it calls, and the Triton version, which fixes the bundled ptxas): ``compile_all(..., reuse=record)``
takes the result of every configuration whose fingerprint an earlier record holds and compiles the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import math
import multiprocessing
import os
import re
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import triton
from tqdm.auto import tqdm

from lab.kernels.aot.launches import KERNELS, Launch
from lab.kernels.aot.sass import (INSTRUCTION_CLASSES, TENSOR_CORE_MNEMONICS, disassemble_text, global_load_bytes,
                                  main_loop, parse_ptxas_report, parse_sass, run_ptxas)
from lab.kernels.aot.sm90 import ARCH, LIMITS, SHARED_PER_BLOCK_MAX, WARP_SIZE, occupancy, target
from lab.kernels.aot.specialise import Configuration, quiet_fp_fusion_notice, specialise


def compile_launch(launch: Launch) -> dict:
    """Compile one launch for sm_90 and measure it: registers, spills, shared memory, CTAs/SM, main loop.

    Each compilation gets a fresh, empty Triton cache, so it always really compiles and Triton's ptxas call
    prints its report (``TRITON_DUMP_PTXAS_LOG``).
    """
    start = time.perf_counter()
    fn, options, signature, constexprs, attrs = specialise(launch)
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="lab-aot-") as tmp:
        try:
            with _environment(TRITON_CACHE_DIR=str(Path(tmp) / "cache"), TRITON_DUMP_PTXAS_LOG="1"), \
                    contextlib.redirect_stdout(log), quiet_fp_fusion_notice():
                kernel = triton.compile(triton.compiler.ASTSource(fn, signature, constexprs, attrs), target=target(),
                                        options=options.__dict__)
        except Exception as error:  # a compile error is a result of the check, reported with the configuration
            return {"error": f"{type(error).__name__}: {error}"[-4000:], "error_summary": error_summary(error),
                    "compile_seconds": round(time.perf_counter() - start, 2)}
        report = parse_ptxas_report(log.getvalue()) or run_ptxas(kernel.asm["ptx"], Path(tmp))
        text = disassemble_text(kernel.asm["cubin"], Path(tmp))
        sass = parse_sass(text)
    dynamic_shared = int(kernel.metadata.shared)
    shared = {"dynamic": dynamic_shared, "static": report["static_shared"],
              "total": dynamic_shared + report["static_shared"]}
    loop = main_loop(sass)
    if loop is not None:
        loop["global_load_bytes"] = global_load_bytes(text, int(loop["start"], 16), int(loop["end"], 16))
    return {"registers": report["registers"], "spill_stores": report["spill_stores"],
            "spill_loads": report["spill_loads"], "stack_frame": report["stack_frame"], "shared_memory": shared,
            "occupancy": occupancy(report["registers"], shared["total"], options.num_warps),
            "sass_instructions": len(sass), "main_loop": loop,
            "compile_seconds": round(time.perf_counter() - start, 2)}


def error_summary(error: BaseException) -> str:
    """One line: the error, the kernel line it points at (a CompilationError's caret), and its root cause
    with the failing assertion of Triton's source when the cause is a bare AssertionError."""
    lines = str(error).rstrip().splitlines()
    where = f" at `{lines[-2].strip()}`" if len(lines) >= 2 and lines[-1].strip() == "^" else ""
    root = error
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    if root is error:
        return f"{type(error).__name__}{where}: {lines[0] if lines and not where else ''}".rstrip(": ")
    message = str(root).strip().splitlines()[0] if str(root).strip() else ""
    frames = traceback.extract_tb(root.__traceback__)
    if not message and frames:
        message = frames[-1].line or ""
    return f"{type(error).__name__}{where}: {type(root).__name__}: {message}".rstrip(": ")


def failures(record: dict) -> list[str]:
    """Why a configuration's record fails the check (empty when it passes)."""
    if "error" in record:
        text = record["error"].strip()
        return [f"compile error: {record.get('error_summary') or (text.splitlines()[-1] if text else '?')}"]
    problems = []
    if record["spill_stores"] or record["spill_loads"]:
        problems.append(f"register spills: {record['spill_stores']} bytes stored, {record['spill_loads']} loaded")
    if record["shared_memory"]["total"] > SHARED_PER_BLOCK_MAX:
        problems.append(f"shared memory {record['shared_memory']['total']} bytes > {SHARED_PER_BLOCK_MAX} per block")
    return problems


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _cost_estimate(config: Configuration) -> float:
    """A guess of the compile time: tile volume × warps, × 4 for fp32 (FMA dots without tensor cores)."""
    volume = math.prod(v for k, v in config.spec["constexprs"].items() if k.startswith("BLOCK") or k in ("D", "G_PAD"))
    fp32 = next(iter(config.spec["signature"].values())) == "*fp32"
    return volume * config.spec["num_warps"] * (4 if fp32 else 1)


# the fields of a configuration's record that `compile_launch` measures: what a reused record contributes
COMPILE_FIELDS = ("registers", "spill_stores", "spill_loads", "stack_frame", "shared_memory", "occupancy",
                  "sass_instructions", "main_loop", "compile_seconds", "error", "error_summary")


def fingerprint(config: Configuration) -> str:
    """sha256 (16 hex digits) of what decides a configuration's compile: its key (kernel, signature, constants,
    attributes, options), the kernel's source with the jitted functions it calls (Triton's own
    ``JITFunction.cache_key``) and the Triton version."""
    module_name, attribute = KERNELS[config.launch.kernel]
    fn = getattr(importlib.import_module(module_name), attribute)
    text = json.dumps([config.key, fn.cache_key, triton.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reusable(record: Mapping) -> dict[str, dict]:
    """{fingerprint: compile fields} of the configurations of an earlier check's record (`check`) that carry a
    fingerprint: what ``compile_all(..., reuse=...)`` takes instead of compiling."""
    if not isinstance(record, Mapping) or not isinstance(record.get("configurations"), list):
        raise TypeError(f"record must be a check record with a 'configurations' list, got {str(record)[:200]}")
    return {r["fingerprint"]: {k: r[k] for k in COMPILE_FIELDS if k in r}
            for r in record["configurations"] if "fingerprint" in r}


def compile_all(configs: Sequence[Configuration], jobs: int | None = None, progress: bool = True,
                reuse: Mapping[str, dict] | None = None) -> list[dict]:
    """Compile every configuration (``jobs`` processes, default the CPU count); one record each, in order. A
    configuration whose `fingerprint` is a key of ``reuse`` (`reusable`) takes that result instead (``reused``)."""
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    prints = [fingerprint(config) for config in configs]
    reuse = reuse or {}
    results: list[dict | None] = [dict(reuse[p]) if p in reuse else None for p in prints]
    todo = [i for i, result in enumerate(results) if result is None]
    bar = tqdm(total=len(todo), desc=f"compile sm_{ARCH} (triton {triton.__version__})", disable=not progress)
    if jobs == 1 or len(todo) < 2:
        for i in todo:
            results[i] = compile_launch(configs[i].launch)
            bar.update()
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method)) as pool:
            order = sorted(todo, key=lambda i: -_cost_estimate(configs[i]))   # longest first
            futures = {pool.submit(compile_launch, configs[i].launch): i for i in order}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    bar.close()
    return [{"name": config.name, "kernel": config.launch.kernel, **config.spec, **result, "failures": failures(result),
             "n_launches": len(config.sources), "sources": compact_sources(config.sources), "fingerprint": p,
             "reused": i not in todo}
            for i, (config, result, p) in enumerate(zip(configs, results, prints))]


def _ranges(numbers: Sequence[int]) -> str:
    """"1,3-5,9" for [1, 3, 4, 5, 9]."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def compact_sources(labels: Sequence[str]) -> list[str]:
    """The labels with the table widths of otherwise equal paged-attention labels folded into ranges."""
    widths: dict[str, list[int]] = {}
    for label in labels:
        match = re.search(r"table width=(\d+)", label)
        key = label if match is None else label[:match.start(1)] + "{}" + label[match.end(1):]
        widths.setdefault(key, []).extend([int(match[1])] if match else [])
    return [key.replace("{}", _ranges(ws)) if ws else key for key, ws in widths.items()]


def _constexpr_text(record: dict) -> str:
    short = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_K": "K", "SPLIT_K": "split", "GROUP": "g",
             "INPUT_PRECISION": "prec", "BLOCK_SIZE": "bs"}
    def text(value) -> str:  # inline PTX (the int4 v2 dequantization) is shown by its length only
        return f"<{len(value)} chars>" if isinstance(value, str) and len(value) > 12 else str(value)

    return " ".join(f"{short.get(k, k)}={text(v)}" for k, v in record["constexprs"].items())


def _status(record: dict) -> str:
    if "error" in record:
        return "COMPILE ERROR"
    if record["spill_stores"] or record["spill_loads"]:
        return f"SPILLS {record['spill_stores']}/{record['spill_loads']} B"
    return "SMEM > 227 KB" if record["failures"] else "ok"


def table(records: Sequence[dict]) -> str:
    """One line per configuration: name, constexprs, pointer dtypes, warps/stages, registers, shared memory (KB),
    CTAs/SM, the main loop's instruction classes and tensor-core instructions, status."""
    header = (f"{'config':<19} {'constexprs':<41} {'pointers':<16} {'w/s':>4} {'regs':>4} {'smemKB':>6} {'CTA':>3}"
              f"  {'mem':>4} {'cvt':>4} {'fma':>4} {'shr':>4} {'oth':>4}  {'tensor core':<11}  status")
    lines = [header, "-" * len(header)]
    for r in records:
        pointers = ",".join(dict.fromkeys(v[1:] for v in r["signature"].values() if v.startswith("*")))
        head = f"{r['name']:<19} {_constexpr_text(r):<41} {pointers:<16} {r['num_warps']:>2}/{r['num_stages']}"
        if "error" in r:
            lines.append(f"{head}  {r['failures'][0][:90]}")
            continue
        loop = r["main_loop"] or {"classes": dict.fromkeys(INSTRUCTION_CLASSES, 0), "mnemonics": {}}
        counts = " ".join(f"{loop['classes'][name]:>4}" for name in INSTRUCTION_CLASSES)
        mma = ",".join(f"{m}x{n}" for m, n in loop["mnemonics"].items() if m in TENSOR_CORE_MNEMONICS) or "-"
        lines.append(f"{head} {r['registers']:>4} {r['shared_memory']['total'] / 1024:>6.1f} "
                     f"{r['occupancy']['ctas_per_sm']:>3}  {counts}  {mma:<11}  {_status(r)}")
    return "\n".join(lines)


def check(configs: Sequence[Configuration], jobs: int | None = None, progress: bool = True,
          reuse: Mapping[str, dict] | None = None) -> dict:
    """Compile ``configs`` (those whose fingerprint ``reuse`` holds are taken from it, `compile_all`); the
    record's body: target, limits, whether every configuration passes, the configurations' records, how many
    were compiled and the seconds it took."""
    start = time.perf_counter()
    records = compile_all(configs, jobs, progress, reuse)
    return {"target": {"backend": "cuda", "arch": ARCH, "warp_size": WARP_SIZE}, "limits": LIMITS,
            "ok": not any(r["failures"] for r in records), "n_configurations": len(records),
            "n_launches": sum(len(c.sources) for c in configs), "n_compiled": sum(not r["reused"] for r in records),
            "seconds": round(time.perf_counter() - start, 1),
            "configurations": records}
