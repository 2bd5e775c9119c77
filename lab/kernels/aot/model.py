"""A static model of the book's kernels on Hopper, from their ahead-of-time sm_90 compile (no GPU).

One row per kernel version and shape (`rows`; ``python -m lab.bench static`` writes them into
``results/kernels_sm90.json``). For each, the launch the wrapper makes is recorded and compiled
(`lab.kernels.aot.compile`), and

    warp-instructions per call = Σ over its kernels  warps · (I_loop · T + programs · I_rest)

where I_loop is one iteration of the main loop (SASS instructions per thread, each counted once, as
`lab.kernels.aot.sass.main_loop` counts them), T its trip count summed over all programs (from the
shape and the wrapper's block sizes: `ITERATIONS`) and I_rest every other instruction of the kernel,
counted once per program (prologue and epilogue; a skipped or predicated-off instruction counts too). Then

    issue-bound time  = warp-instructions / (132 SMs · 4 schedulers · 1.98 GHz)   (one warp-instruction
                        per scheduler per cycle: an H100 / H200 SXM at its boost clock), or over the
                        schedulers a launch can occupy when it has fewer warps (programs · warps < 528),
                        kernel by kernel
    memory-bound time = bytes / bandwidth (`call_bytes`: the DRAM bytes of the formula in each kernel
                        module's docstring, its ``call_bytes``, each operand read once)
    compute-bound time = 2·M·N·K / the dense tensor-core rate (bf16, or int8 for the int8 kernel); the
                        paged decode runs on FMA units, whose time the issue bound already counts
    predicted time    = the largest of them.

Bandwidths and rates come from `lab.core.ceilings.device_ceilings`: the H200 SXM's and H100 SXM5's
datasheet figures (`lab.core.ceilings.DATASHEETS`), labelled as such, until a GPU record in ``results/``
measures them. The model
is necessary, not sufficient: it ignores latency, occupancy, L2 and launch overhead, so a kernel can
miss its prediction on the GPU (the staged GPU run measures it); a kernel over its issue bound cannot
reach the bandwidth however it is scheduled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import triton

from lab.kernels import int4, int8, paged_attention, sparse24
from lab.kernels.aot.compile import compile_all
from lab.kernels.aot.launches import launch_int4, launch_int8, launch_paged, launch_sparse24, recording_with_companions
from lab.kernels.aot.specialise import configuration

SMS, SCHEDULERS, CLOCK_HZ = 132, 4, 1.98e9
ISSUE_RATE = SMS * SCHEDULERS * CLOCK_HZ                 # warp-instructions per second
DEVICES = {"h200": "h200-sxm", "h100": "h100-sxm5"}     # record suffix → `DATASHEETS` key
E = {torch.bfloat16: 2, torch.float16: 2, torch.float32: 4}


@dataclass(frozen=True)
class Row:
    """One kernel version at one shape: how to launch it (``launch`` calls the wrapper on meta tensors)."""

    version: str
    kernel: str                                   # `lab.kernels.aot.launches.KERNELS` key of the main kernel
    shape: dict
    dtype: torch.dtype
    launch: Callable[[], None] = field(compare=False)


def _int4_shape(M: int, N: int = 8192, K: int = 8192, g: int = 128) -> dict:
    return {"M": M, "N": N, "K": K, "g": g}


def rows() -> list[Row]:
    """The shapes of the chapter's comparison: decode (M = 1, 4, 16) and prefill of an 8192 × 8192 layer
    (2:4 at M = 1, 16);
    paged decode of a grouped-query layer of Llama-3-8B's shape (32 query / 8 kv heads, head dim 128) over 2,048 cached
    tokens at B = 1 and 32."""
    bf16 = torch.bfloat16
    out = []
    for M in (1, 4, 16):
        shape = _int4_shape(M)
        out.append(Row("v1", "int4_matmul", shape, bf16, lambda M=M: launch_int4(M, 8192, 8192, 128, bf16, bf16)))
        out.append(Row("v2", "int4_gemv_v2", shape, bf16, lambda M=M: launch_int4(M, 8192, 8192, 128, bf16, bf16, "v2")))
    for M in (1, 16, 4096):
        out.append(Row("v2", "int8_matmul", {"M": M, "N": 8192, "K": 8192}, bf16,   # its default tile and order
                       lambda M=M: launch_int8(M, 8192, 8192, bf16)))
    for M in (1, 16):
        for version, kernel in (("v1", "sparse24_matmul"), ("v2", "sparse24_matmul_v2")):
            out.append(Row(version, kernel, {"M": M, "N": 8192, "K": 8192}, bf16,
                           lambda M=M, v=version: launch_sparse24(M, 8192, 8192, bf16, v)))
    for B in (1, 32):
        shape = {"B": B, "H": 32, "H_kv": 8, "D": 128, "block_size": 16, "context": 2048}
        out.append(Row("v1", "paged_attention", shape, bf16,
                       lambda B=B: launch_paged(B, 32, 8, 128, 16, 2048 // 16, bf16)))
        out.append(Row("v2", "paged_attention_v2", shape, bf16,
                       lambda B=B: launch_paged(B, 32, 8, 128, 16, 2048 // 16, bf16, "v2")))
    return out


# ---------------------------------------------------------------------------------------------------------
# the trip count of each kernel's main loop per program, and the bytes of one call
# ---------------------------------------------------------------------------------------------------------

def _constexprs(launch) -> dict:
    return dict(launch.kwargs)


# A split-K loop ``range(pid_k, steps, split_k)`` runs every step once per output tile, whatever the split.
def _int4_v1_iterations(shape: dict, launch) -> int:
    grid_m, grid_n, _ = launch.grid
    return shape["K"] // 2 // _constexprs(launch)["BLOCK_K"] * grid_m * grid_n


def _int4_v2_iterations(shape: dict, launch) -> int:
    return shape["K"] // shape["g"] * launch.grid[0]


def _reduce_iterations(shape: dict, launch) -> int:
    return launch.args[3] * math.prod(launch.grid)               # split_k per program


def _k_steps(shape: dict, launch) -> int:
    return math.ceil(shape["K"] / _constexprs(launch)["BLOCK_K"]) * math.prod(launch.grid)


def _paged_iterations(shape: dict, launch) -> int:
    """Every block once per (sequence, kv head), however v2 splits the sequence."""
    B, H_kv = launch.grid[:2]
    return math.ceil(shape["context"] / shape["block_size"]) * B * H_kv


def _combine_iterations(shape: dict, launch) -> int:
    return launch.args[6] * math.prod(launch.grid)               # n_splits per (b, h)


# the main loop's trip count summed over every program of a launch
ITERATIONS: dict[str, Callable[[dict, object], int]] = {
    "int4_matmul": _int4_v1_iterations, "int4_gemv_v2": _int4_v2_iterations,
    "int4_gemv_v2_reduce": _reduce_iterations, "int8_matmul": _k_steps, "sparse24_matmul": _k_steps,
    "sparse24_matmul_v2": _k_steps,
    "paged_attention": _paged_iterations, "paged_attention_v2": _paged_iterations,
    "paged_attention_v2_combine": _combine_iterations,
}


def call_bytes(row: Row, launches: Sequence) -> int:
    """DRAM bytes of one call of ``row``: the ``call_bytes`` of its kernel's module (each operand once), with
    the split of the launch the wrapper made (SPLIT_K of the int4 kernels, S of the paged decode v2)."""
    s, e = row.shape, E[row.dtype]
    if row.kernel == "int4_matmul":
        return int4.call_bytes(s["M"], s["N"], s["K"], s["g"], e, "v1", launches[0].grid[2])
    if row.kernel == "int4_gemv_v2":
        return int4.call_bytes(s["M"], s["N"], s["K"], s["g"], e, "v2", launches[0].grid[1])
    if row.kernel == "int8_matmul":
        return int8.call_bytes(s["M"], s["N"], s["K"], e)
    if row.kernel in ("sparse24_matmul", "sparse24_matmul_v2"):
        return sparse24.call_bytes(s["M"], s["N"], s["K"], e)
    if row.kernel in ("paged_attention", "paged_attention_v2"):
        version, splits = ("v2", launches[0].grid[2]) if row.kernel == "paged_attention_v2" else ("v1", 1)
        return paged_attention.call_bytes(s["B"], s["H"], s["H_kv"], s["D"], s["block_size"], s["context"], e,
                                          version, splits)
    raise ValueError(f"no byte formula for kernel {row.kernel!r}")


# ---------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------

def record_launches(row: Row) -> list:
    """The launches (main kernel first, then its companions) that ``row``'s wrapper call makes."""
    with recording_with_companions(row.kernel) as (recorded, companions):
        row.launch()
    return recorded + [launch for launches in companions for launch in launches]


def call_flops(row: Row) -> int | None:
    """2·M·N·K of the matmuls (None for the paged decode: no tensor cores)."""
    s = row.shape
    return 2 * s["M"] * s["N"] * s["K"] if "M" in s else None


def predict(row: Row, launches: Sequence, compiled: Sequence[dict], ceilings: dict) -> dict:
    """The row's record from its launches and their compile records (`lab.kernels.aot.compile.compile_launch`)."""
    warp_instructions, issue_s, kernels = 0, 0.0, []
    for launch, record in zip(launches, compiled):
        if record.get("error"):
            raise RuntimeError(f"{launch.kernel} at {row.shape} does not compile: {record['error_summary']}")
        loop = record["main_loop"]["instructions"] if record["main_loop"] else 0
        iterations = ITERATIONS[launch.kernel](row.shape, launch) if loop else 0
        programs = math.prod(launch.grid)
        warps = dict(launch.kwargs).get("num_warps", 4)
        kernel_instructions = warps * (loop * iterations + programs * (record["sass_instructions"] - loop))
        warp_instructions += kernel_instructions
        issue_s += kernel_instructions / (min(SMS * SCHEDULERS, programs * warps) * CLOCK_HZ)
        kernels.append({"kernel": launch.kernel, "programs": programs, "warps": warps, "loop_instructions": loop,
                        "iterations": iterations, "other_instructions": record["sass_instructions"] - loop,
                        "registers": record["registers"], "main_loop_classes": record["main_loop"]["classes"],
                        "main_loop_mnemonics": record["main_loop"]["mnemonics"],
                        "global_load_bytes": record["main_loop"].get("global_load_bytes", [])})
    n_bytes, flops = call_bytes(row, launches), call_flops(row)
    issue_us = issue_s * 1e6
    out = {"version": row.version, "kernel": row.kernel, "shape": row.shape, "dtype": str(row.dtype)[6:],
           "bytes": n_bytes, "flops": flops, "warp_instructions": warp_instructions, "issue_bound_us": issue_us,
           "programs": kernels[0]["programs"], "launches": len(launches), "kernels": kernels}
    for device, c in ceilings.items():
        rate = c.int8_ops if row.kernel == "int8_matmul" else c.peak_flops
        out[f"memory_bound_us_{device}"] = n_bytes / c.bandwidth * 1e6
        out[f"compute_bound_us_{device}"] = flops / rate * 1e6 if flops and rate else None
        out[f"predicted_us_{device}"] = max(issue_us, out[f"memory_bound_us_{device}"],
                                            out[f"compute_bound_us_{device}"] or 0.0)
    return out


def ceilings() -> dict:
    """`lab.core.ceilings.Ceilings` per device of `DEVICES` (measured when a record exists, else datasheet)."""
    from lab.core.ceilings import device_ceilings

    return {device: device_ceilings(key) for device, key in DEVICES.items()}


def model(selected: Sequence[Row] | None = None, jobs: int | None = 1, progress: bool = True,
          compiled: dict[str, dict] | None = None) -> dict:
    """Rows and ceilings of the static model. Each distinct launch is compiled once (`compile_all` with ``jobs``
    processes) unless ``compiled`` (compilation key → compile record) already holds it."""
    selected = rows() if selected is None else list(selected)
    compiled = dict(compiled or {})
    launches = [record_launches(row) for row in selected]
    keys, missing = [], {}
    for row_launches in launches:
        row_configs = [configuration(launch) for launch in row_launches]
        keys.append([c.key for c in row_configs])
        for c in row_configs:
            if c.key not in compiled:
                missing.setdefault(c.key, c)
    compiled.update(zip(missing, compile_all(list(missing.values()), jobs, progress)))
    device_ceilings = ceilings()
    out = [predict(row, row_launches, [compiled[key] for key in row_keys], device_ceilings)
           for row, row_launches, row_keys in zip(selected, launches, keys)]
    return {"issue_rate": {"sms": SMS, "schedulers_per_sm": SCHEDULERS, "clock_hz": CLOCK_HZ,
                           "source": "NVIDIA H100 / H200 SXM: 132 SMs, 4 warp schedulers each, 1.98 GHz boost"},
            "ceilings": {d: {"bandwidth_bytes_per_s": c.bandwidth, "bf16_flops": c.peak_flops, "int8_ops": c.int8_ops,
                             "source": c.source, "int8_source": c.int8_source} for d, c in device_ceilings.items()},
            "triton": triton.__version__, "rows": out}


def table(record: dict) -> str:
    """One line per row: version, kernel, shape, programs, warp-instructions, bytes, the three times."""
    lines = [f"{'ver':<3} {'kernel':<16} {'shape':<44} {'progs':>6} {'warp-instr':>11} {'MB':>7} "
             f"{'issue µs':>9} {'H200 mem µs':>11} {'compute µs':>10} {'H200 pred µs':>12}"]
    for r in record["rows"]:
        shape = " ".join(f"{k}={v}" for k, v in r["shape"].items())
        lines.append(f"{r['version']:<3} {r['kernel']:<16} {shape:<44} {r['programs']:>6} "
                     f"{r['warp_instructions']:>11,} {r['bytes'] / 1e6:>7.2f} {r['issue_bound_us']:>9.2f} {r['memory_bound_us_h200']:>11.2f} "
                     f"{r['compute_bound_us_h200'] or float('nan'):>10.2f} {r['predicted_us_h200']:>12.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# reading a record (chapter 3's notebook and page; the record is results/kernels_sm90.json)
# ---------------------------------------------------------------------------------------------------------

LAYER = 8192                                      # the N = K of the int4 rows


def table_rows(record: dict) -> list[dict]:
    """One readable row per kernel version and shape: programs, MB, warp-instructions per weight (matmuls),
    the issue-, memory-bound and predicted µs on the H200."""
    def per_weight(r: dict) -> float | None:
        s = r["shape"]
        return r["warp_instructions"] / (s["N"] * s["K"]) if "N" in s else None

    return [{"version": r["version"], "kernel": r["kernel"],
             "shape": " ".join(f"{k}={v}" for k, v in r["shape"].items()), "programs": r["programs"],
             "MB": r["bytes"] / 1e6, "warp-instr / weight": per_weight(r), "issue µs": r["issue_bound_us"],
             "memory µs (H200)": r["memory_bound_us_h200"], "predicted µs (H200)": r["predicted_us_h200"]}
            for r in record["rows"]]


def int4_rows(record: dict) -> dict[tuple[str, int], dict]:
    """(version, M) → row of the int4 kernels."""
    return {(r["version"], r["shape"]["M"]): r for r in record["rows"] if r["kernel"].startswith("int4")}


def bf16_gemv_us(record: dict, M: int) -> float:
    """The best a bf16 GEMV can do on the H200: its 2·N·K weight bytes (and x, y) at the bandwidth, in µs."""
    return 2 * (LAYER * LAYER + 2 * M * LAYER) / record["ceilings"]["h200"]["bandwidth_bytes_per_s"] * 1e6


def headline(record: dict) -> dict[str, float]:
    """The figures chapters 2, 3 and 6 state: v1 vs v2 of int4 (M = 1, 16), of 2:4 against a dense bf16
    GEMV (M = 1) and of the paged decode (B = 1, 32)."""
    int4_row = int4_rows(record)
    pred = {key: r["predicted_us_h200"] for key, r in int4_row.items()}
    codes_kb = LAYER * LAYER / 2 / 1024
    out = {}
    for v in ("v1", "v2"):
        out[f"static_{v}_issue_us_m1"] = int4_row[v, 1]["issue_bound_us"]
        out[f"static_{v}_warp_instr_per_kb"] = int4_row[v, 1]["warp_instructions"] / codes_kb
        out[f"static_{v}_issue_over_memory_m1"] = int4_row[v, 1]["issue_bound_us"] / int4_row[v, 1]["memory_bound_us_h200"]
    out["static_v2_memory_us_m1"] = int4_row["v2", 1]["memory_bound_us_h200"]
    out["static_v2_m16_over_m1"] = pred["v2", 16] / pred["v2", 1]
    out["static_v1_over_v2_m1"] = pred["v1", 1] / pred["v2", 1]
    out["static_bf16_over_v2_m1"] = bf16_gemv_us(record, 1) / pred["v2", 1]
    for v, kernel in (("v1", "sparse24_matmul"), ("v2", "sparse24_matmul_v2")):
        sparse = next(r for r in record["rows"] if r["kernel"] == kernel and r["shape"]["M"] == 1)
        out[f"static_sparse24_{v}_issue_over_memory_m1"] = sparse["issue_bound_us"] / sparse["memory_bound_us_h200"]
        out[f"static_dense_over_sparse24_{v}_m1"] = bf16_gemv_us(record, 1) / sparse["predicted_us_h200"]
    paged = {(r["version"], r["shape"]["B"]): r for r in record["rows"] if r["kernel"].startswith("paged")}
    out["static_paged_programs_b1"] = paged["v1", 1]["programs"]
    out["static_paged_v2_programs_b1"] = paged["v2", 1]["programs"]
    out["static_paged_v1_over_v2_b1"] = paged["v1", 1]["predicted_us_h200"] / paged["v2", 1]["predicted_us_h200"]
    for B in (1, 32):
        out[f"static_paged_v2_issue_over_memory_b{B}"] = (paged["v2", B]["issue_bound_us"]
                                                          / paged["v2", B]["memory_bound_us_h200"])
    return out
