"""A static model of the book's kernels on Hopper, from their ahead-of-time sm_90 compile (no GPU).

One row per kernel version and shape (`rows`; ``python -m lab.bench static`` writes them into
``results/kernels_sm90.json``). For each, the launches the wrapper makes are recorded (the main kernel, then
its companions: the split-K reduction of int4 v2, the combine pass of the paged decode v2) and compiled
(`lab.kernels.aot.compile`). Each launch k, of P_k programs of w_k warps, gets the terms of
`lab.kernels.aot.pipes` (its placement on the 132 SMs in waves, from the compile's CTAs per SM; the busiest
SM's warp-instructions W_SM, I_loop · t + I_rest per warp of each of its P_SM programs, t the trip count of
the program that loops the most, `ITERATIONS`):

    issue_k    = W_SM / (min(4, resident warps) · 1.98 GHz)
    pipe_k,p   = the busiest SM's main-loop instructions of pipe p / (its rate per SM, from the CUDA guide's
                 table for compute capability 9.0, × min(4, resident warps)/4) / 1.98 GHz, for p in fp32, fp16,
                 alu, imad, conversion, mufu, lsu…
    latency_k  = bytes_k · L / (busy SMs · bytes in flight per SM)          Little's law, L = 374 ns
    memory_k   = bytes_k / bandwidth                                         the datasheet's
    compute_k  = 2·M·N·K / the dense tensor-core rate (main kernel only: bf16, or int8 for the int8 kernel)
    t_k        = max(issue_k, pipe_k,p, latency_k, memory_k, compute_k)

and the kernels of a call run one after another: predicted time = Σ_k t_k. bytes_k splits `call_bytes` (the
DRAM bytes of the formula in each kernel module's docstring, each operand read once, `launch_bytes`): a
companion its own reads and writes, the main kernel the rest. A row records each term (``issue_us``,
``pipe_us`` {pipe: µs}, ``latency_us``, ``memory_bound_us_<device>``, ``compute_bound_us_<device>``, each
summed over its kernels), ``predicted_us_<device>``, the main kernel's ``waves`` and, per kernel, the same
terms with its ``bytes``, ``ctas_per_sm``, ``waves``, ``busiest_sm_programs`` and the term that binds it
(``bound_by_<device>``). ``issue_bound_us`` (what chapter 3 reads) is ``issue_us``; ``warp_instructions``
counts the whole call, warps · (I_loop · T + P · I_rest) per kernel, T the trip count summed over programs.
Devices: "h200" and "h100" (`DEVICES`; same SMs and clock, their own bandwidth), from
`lab.core.ceilings.device_ceilings`: datasheet figures, labelled as such, until a GPU record in ``results/``
measures them.

The model is necessary, not sufficient: a kernel over one of its terms cannot run faster however it is
scheduled, but it can run slower. It cannot see the L2 (reuse across programs, or partials that never reach
DRAM), launch overhead and the gap between kernels, barriers and shared-memory bank conflicts or wide
shared-memory accesses, the dependencies between a warp's instructions (latency the warps on an SM fail to
hide), the tail of a wave (programs of uneven length inside it), loaded rather than idle memory latency,
and clock throttling below the boost clock. The staged GPU run measures what it misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import triton

from lab.kernels import dense, fp4_gemv, int4, int8, paged_attention, sparse24
from lab.kernels.aot.compile import compile_all
from lab.kernels.aot.launches import (launch_dense, launch_fp4, launch_int4, launch_int8, launch_paged, launch_sparse24,
                                      recording_with_companions)
from lab.kernels.aot.pipes import CLOCK_HZ, HBM_LATENCY_S, PIPES, SCHEDULERS, SMS, launch_terms, pipe_rate
from lab.kernels.aot.specialise import configuration

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
    (2:4 at M = 1, 16; the dense bf16 baseline at M = 1, 4, 16; MXFP4 and NVFP4 weights at M = 1);
    paged decode of a grouped-query layer of Llama-3-8B's shape (32 query / 8 kv heads, head dim 128) over 2,048 cached
    tokens at B = 1 and 32."""
    bf16 = torch.bfloat16
    out = []
    for M in (1, 4, 16):
        shape = _int4_shape(M)
        out.append(Row("v1", "int4_matmul", shape, bf16, lambda M=M: launch_int4(M, 8192, 8192, 128, bf16, bf16)))
        out.append(Row("v2", "int4_gemv_v2", shape, bf16, lambda M=M: launch_int4(M, 8192, 8192, 128, bf16, bf16, "v2")))
    for M in (1, 4, 16):                          # the baseline: the same layer in bf16 (`lab.kernels.dense`)
        out.append(Row("dense", "dense_matmul", {"M": M, "N": 8192, "K": 8192}, bf16,
                       lambda M=M: launch_dense(M, 8192, 8192, bf16)))
    for fmt in ("mxfp4", "nvfp4"):                 # FP4 weights, dequantized in registers (no FP4 MMA on sm_90)
        out.append(Row(fmt, "fp4_matmul", {"M": 1, "N": 8192, "K": 8192, "fmt": fmt}, bf16,
                       lambda fmt=fmt: launch_fp4(1, 8192, 8192, fmt, bf16)))
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
# the trip count of each kernel's main loop, and the bytes of one call and of each of its launches
# ---------------------------------------------------------------------------------------------------------

def _constexprs(launch) -> dict:
    return dict(launch.kwargs)


# Each returns (T, t): the trip count summed over every program of the launch, and the most one program runs.
# A split-K loop ``range(pid_k, steps, split_k)`` runs every step once per output tile, whatever the split,
# and ⌈steps / split_k⌉ times in program pid_k = 0.
def _int4_v1_iterations(shape: dict, launch) -> tuple[int, int]:
    grid_m, grid_n, split_k = launch.grid
    steps = shape["K"] // 2 // _constexprs(launch)["BLOCK_K"]
    return steps * grid_m * grid_n, math.ceil(steps / split_k)


def _int4_v2_iterations(shape: dict, launch) -> tuple[int, int]:
    groups = shape["K"] // shape["g"]
    return groups * launch.grid[0], math.ceil(groups / launch.grid[1])


def _dense_iterations(shape: dict, launch) -> tuple[int, int]:
    steps = math.ceil(shape["K"] / _constexprs(launch)["BLOCK_K"])
    return steps * launch.grid[0], math.ceil(steps / launch.grid[1])


def _fp4_iterations(shape: dict, launch) -> tuple[int, int]:
    steps = shape["K"] // (_constexprs(launch)["B"] * _constexprs(launch)["BLOCKS"])
    return steps * launch.grid[0], math.ceil(steps / launch.grid[1])


def _reduce_iterations(shape: dict, launch) -> tuple[int, int]:
    split_k = launch.args[3]
    return split_k * math.prod(launch.grid), split_k


def _k_steps(shape: dict, launch) -> tuple[int, int]:
    steps = math.ceil(shape["K"] / _constexprs(launch)["BLOCK_K"])
    return steps * math.prod(launch.grid), steps


def _paged_iterations(shape: dict, launch) -> tuple[int, int]:
    """Every block once per (sequence, kv head), however v2 splits the sequence; a v2 program at most
    ``blocks_per_split`` (its 15th argument) of them."""
    B, H_kv = launch.grid[:2]
    blocks = math.ceil(shape["context"] / shape["block_size"])
    most = min(blocks, launch.args[14]) if launch.kernel == "paged_attention_v2" else blocks
    return blocks * B * H_kv, most


def _combine_iterations(shape: dict, launch) -> tuple[int, int]:
    """The combine pass loops over its n_splits (7th argument) CHUNK at a time."""
    trips = math.ceil(launch.args[6] / _constexprs(launch)["CHUNK"])
    return trips * math.prod(launch.grid), trips


# loops the compiler unrolls (the split-K reductions' ``for k in range(split_k)``: ptxas copies the body 4
# times): kernel → the global loads of one source iteration; the compiled loop holds u = (its LDGs / that)
# of them, so it runs ⌊t / u⌋ times and the remainder loop, counted once in I_rest, the rest.
UNROLLED = {"int4_gemv_v2_reduce": 1, "dense_matmul_reduce": 1, "fp4_matmul_reduce": 1}

ITERATIONS: dict[str, Callable[[dict, object], tuple[int, int]]] = {
    "int4_matmul": _int4_v1_iterations, "int4_gemv_v2": _int4_v2_iterations,
    "int4_gemv_v2_reduce": _reduce_iterations, "int8_matmul": _k_steps, "sparse24_matmul": _k_steps,
    "sparse24_matmul_v2": _k_steps,
    "paged_attention": _paged_iterations, "paged_attention_v2": _paged_iterations,
    "paged_attention_v2_combine": _combine_iterations, "dense_matmul": _dense_iterations,
    "dense_matmul_reduce": _reduce_iterations, "fp4_matmul": _fp4_iterations, "fp4_matmul_reduce": _reduce_iterations,
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
    if row.kernel == "dense_matmul":
        return dense.call_bytes(s["M"], s["N"], s["K"], e, launches[0].grid[1])
    if row.kernel == "fp4_matmul":
        return fp4_gemv.call_bytes(s["N"], s["K"], s["M"], s["fmt"], e, launches[0].grid[1])
    if row.kernel in ("sparse24_matmul", "sparse24_matmul_v2"):
        return sparse24.call_bytes(s["M"], s["N"], s["K"], e)
    if row.kernel in ("paged_attention", "paged_attention_v2"):
        version, splits = ("v2", launches[0].grid[2]) if row.kernel == "paged_attention_v2" else ("v1", 1)
        return paged_attention.call_bytes(s["B"], s["H"], s["H_kv"], s["D"], s["block_size"], s["context"], e,
                                          version, splits)
    raise ValueError(f"no byte formula for kernel {row.kernel!r}")


def _reduce_bytes(row: Row, launch) -> int:
    """The split-K reduction (int4 v2's, the dense baseline's, the FP4 GEMV's): reads the 4·S·M·N bytes of fp32
    partials, writes e·M·N."""
    s, S = row.shape, launch.args[3]
    return 4 * S * s["M"] * s["N"] + E[row.dtype] * s["M"] * s["N"]


def _combine_bytes(row: Row, launch) -> int:
    """The paged decode v2's combine: reads the fp32 m, ℓ, a partials, 4·B·H·S·(D + 2), writes e·B·H·D."""
    s, S = row.shape, launch.args[6]
    return 4 * s["B"] * s["H"] * S * (s["D"] + 2) + E[row.dtype] * s["B"] * s["H"] * s["D"]


COMPANION_BYTES: dict[str, Callable[[Row, object], int]] = {
    "int4_gemv_v2_reduce": _reduce_bytes, "dense_matmul_reduce": _reduce_bytes, "fp4_matmul_reduce": _reduce_bytes,
    "paged_attention_v2_combine": _combine_bytes}


def launch_bytes(row: Row, launches: Sequence) -> list[int]:
    """`call_bytes` split by launch (main kernel first): each companion its own bytes, the main kernel the rest."""
    companions = [COMPANION_BYTES[launch.kernel](row, launch) for launch in launches[1:]]
    return [call_bytes(row, launches) - sum(companions), *companions]


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


def kernel_record(row: Row, launch, record: dict, n_bytes: int) -> dict:
    """One launch: its counts and device-independent terms (`lab.kernels.aot.pipes.launch_terms`)."""
    if record.get("error"):
        raise RuntimeError(f"{launch.kernel} at {row.shape} does not compile: {record['error_summary']}")
    loop = record["main_loop"] or {"instructions": 0, "classes": {}, "mnemonics": {}}
    I_loop = loop["instructions"]
    T, t = ITERATIONS[launch.kernel](row.shape, launch) if I_loop else (0, 0)
    programs, warps = math.prod(launch.grid), dict(launch.kwargs).get("num_warps", 4)
    if launch.kernel in UNROLLED:           # u source iterations per compiled one; the rest run once, in I_rest
        u = max(1, loop["mnemonics"].get("LDG", 0) // UNROLLED[launch.kernel])
        t //= u
        T = t * programs
    I_rest = record["sass_instructions"] - I_loop
    terms = launch_terms(programs, warps, t, loop, I_rest, record["occupancy"], record.get("num_stages", 3), n_bytes)
    return {"kernel": launch.kernel, "programs": programs, "warps": warps, "loop_instructions": I_loop,
            "iterations": T, "other_instructions": I_rest, "registers": record["registers"],
            "warp_instructions": warps * (I_loop * T + programs * I_rest), "bytes": n_bytes,
            "main_loop_classes": loop["classes"], "main_loop_mnemonics": loop["mnemonics"],
            "global_load_bytes": loop.get("global_load_bytes", []), **terms}


def device_terms(kernel: dict, device: str, c, flops: int | None) -> dict:
    """A kernel's memory and compute terms on one device (`lab.core.ceilings.Ceilings` ``c``; ``flops`` None
    for a companion or the paged decode), its time (the largest term) and the term that binds it."""
    rate = c.int8_ops if kernel["kernel"] == "int8_matmul" else c.peak_flops
    memory = kernel["bytes"] / c.bandwidth * 1e6
    compute = flops / rate * 1e6 if flops and rate else None
    terms = {"issue": kernel["issue_us"], **kernel["pipe_us"], "latency": kernel["latency_us"], "memory": memory,
             "compute": compute or 0.0}
    bound = max(terms, key=terms.get)
    return {f"memory_bound_us_{device}": memory, f"compute_bound_us_{device}": compute,
            f"predicted_us_{device}": terms[bound], f"bound_by_{device}": bound}


def _summed(kernels: Sequence[dict], key: str) -> float:
    """Σ over the kernels of a call (a term a kernel lacks, None, counts 0)."""
    return sum(k[key] or 0 for k in kernels)


def predict(row: Row, launches: Sequence, compiled: Sequence[dict], ceilings: dict) -> dict:
    """The row's record from its launches and their compile records (`lab.kernels.aot.compile.compile_launch`):
    each kernel's terms (`kernel_record`, `device_terms`), summed over the kernels of the call."""
    flops = call_flops(row)
    kernels = [kernel_record(row, launch, record, n_bytes)
               for launch, record, n_bytes in zip(launches, compiled, launch_bytes(row, launches))]
    for i, kernel in enumerate(kernels):
        for device, c in ceilings.items():
            kernel.update(device_terms(kernel, device, c, flops if i == 0 else None))
    pipes = {pipe: sum(k["pipe_us"].get(pipe, 0.0) for k in kernels) for pipe in PIPES}
    issue_us = _summed(kernels, "issue_us")
    out = {"version": row.version, "kernel": row.kernel, "shape": row.shape, "dtype": str(row.dtype)[6:],
           "bytes": _summed(kernels, "bytes"), "flops": flops,
           "warp_instructions": _summed(kernels, "warp_instructions"),
           "issue_us": issue_us, "issue_bound_us": issue_us, "pipe_us": {p: us for p, us in pipes.items() if us},
           "latency_us": _summed(kernels, "latency_us"), "programs": kernels[0]["programs"],
           "waves": kernels[0]["waves"], "launches": len(launches), "kernels": kernels}
    for device in ceilings:
        for term in ("memory_bound_us", "predicted_us"):
            out[f"{term}_{device}"] = _summed(kernels, f"{term}_{device}")
        out[f"compute_bound_us_{device}"] = kernels[0][f"compute_bound_us_{device}"]
    return out


def ceilings() -> dict:
    """`lab.core.ceilings.Ceilings` per device of `DEVICES` (measured when a record exists, else datasheet)."""
    from lab.core.ceilings import device_ceilings

    return {device: device_ceilings(key) for device, key in DEVICES.items()}


def model(selected: Sequence[Row] | None = None, jobs: int | None = 1, progress: bool = True,
          compiled: dict[str, dict] | None = None, reuse: dict[str, dict] | None = None) -> dict:
    """Rows and ceilings of the static model. Each distinct launch is compiled once (`compile_all` with ``jobs``
    processes and ``reuse``) unless ``compiled`` (compilation key → compile record) already holds it."""
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
    compiled.update(zip(missing, compile_all(list(missing.values()), jobs, progress, reuse)))
    device_ceilings = ceilings()
    out = [predict(row, row_launches, [compiled[key] for key in row_keys], device_ceilings)
           for row, row_launches, row_keys in zip(selected, launches, keys)]
    return {"issue_rate": {"sms": SMS, "schedulers_per_sm": SCHEDULERS, "clock_hz": CLOCK_HZ,
                           "source": "NVIDIA H100 / H200 SXM: 132 SMs, 4 warp schedulers each, 1.98 GHz boost"},
            "pipes": {pipe: pipe_rate(pipe) for pipe in PIPES},
            "hbm_latency_s": HBM_LATENCY_S,
            "ceilings": {d: {"bandwidth_bytes_per_s": c.bandwidth, "bf16_flops": c.peak_flops, "int8_ops": c.int8_ops,
                             "source": c.source, "int8_source": c.int8_source} for d, c in device_ceilings.items()},
            "triton": triton.__version__, "rows": out}


def table(record: dict) -> str:
    """One line per row of a record of this model: version, kernel, shape, programs, waves, MB, the terms
    (issue, the slowest pipe, latency, memory and compute on the H200), the predicted time and the terms that
    bind its kernels."""
    lines = [f"{'ver':<3} {'kernel':<18} {'shape':<40} {'progs':>5} {'waves':>5} {'MB':>6} {'issue':>7} "
             f"{'pipe (slowest)':>17} {'latency':>7} {'memory':>7} {'compute':>7} {'H200 µs':>8}  bound by"]
    for r in record["rows"]:
        shape = " ".join(f"{k}={v}" for k, v in r["shape"].items())
        pipe = max(r["pipe_us"].items(), key=lambda item: item[1], default=("-", 0.0))
        lines.append(f"{r['version']:<3} {r['kernel']:<18} {shape:<40} {r['programs']:>5} {r['waves']:>5} "
                     f"{r['bytes'] / 1e6:>6.2f} {r['issue_us']:>7.2f} {pipe[0]:>10} {pipe[1]:>6.2f} "
                     f"{r['latency_us']:>7.2f} {r['memory_bound_us_h200']:>7.2f} "
                     f"{r['compute_bound_us_h200'] or float('nan'):>7.2f} {r['predicted_us_h200']:>8.2f}  "
                     + " + ".join(k["bound_by_h200"] for k in r["kernels"]))
    return "\n".join(lines)
