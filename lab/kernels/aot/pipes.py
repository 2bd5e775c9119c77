"""Hopper's per-SM limits and the time terms of one kernel launch (the static model, `lab.kernels.aot.model`).

An H100 / H200 SXM has 132 SMs, each with 4 schedulers (one warp-instruction per clock each) at a
1.98 GHz boost clock. A launch of P programs of w warps, c of which fit on an SM at a time
(`lab.kernels.aot.sm90.occupancy`), is placed round-robin: it runs in ⌈P / (132·c)⌉ waves, and the busiest SM
hosts P_SM = ⌈P / 132⌉ programs, r = min(P_SM, c) of them at a time. With t the trip count of the main loop
in the program that runs the most, I_loop one iteration and I_rest the rest of the kernel (`lab.kernels.aot.sass`):

    W_SM       = P_SM · w · (I_loop · t + I_rest)                    warp-instructions of the busiest SM
    issue      = W_SM / (min(4, r·w) · f)                             f = 1.98 GHz: one per scheduler and clock
    pipe p     = P_SM · w · t · n_p / (R_p · min(4, r·w)/4 · f)       n_p: opcodes of pipe p in one iteration
    latency    = bytes · L / (min(P, 132) · Q),   Q = r · w · 32 · b · d
    memory     = bytes / bandwidth

A pipe's rate R_p (warp-instructions per SM per clock) is shared by the SM's 4 sub-partitions, and a warp
runs on its own, so r·w < 4 resident warps reach only r·w/4 of it (as they reach r·w of the 4 schedulers).
Only the main loop is counted per pipe: the rest of a kernel runs once per program and the issue term counts
it. The latency term is Little's law: an SM keeps Q bytes in flight (b: the main loop's global-load bytes per
thread and iteration, `sass.global_load_bytes`; d = num_stages − 1 iterations ahead when the loop copies
asynchronously, LDGSTS or UTMALDG, else 1), so min(P, 132) busy SMs stream at most min(P, 132) · Q / L
bytes per second; L is one load's latency (a launch whose main loop loads nothing has no latency term). d
multiplies every global load of the loop, the synchronous ones too (``global_load_bytes`` does not tell them
apart): slightly optimistic where a pipelined loop also loads scales or a table entry with LDG.
Beyond the bandwidth that bound is the memory term, so the larger of the two is
bytes / min(bandwidth, min(P, 132) · Q / L).

Rates R_p: the CUDA C++ Programming Guide's table "Throughput of Native Arithmetic Instructions (Operations
per Clock Cycle per Multiprocessor)", column 9.0
(https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#arithmetic-instructions; the same table is
in the CUDA C++ Best Practices Guide, "Throughput of Native Arithmetic Instructions",
https://docs.nvidia.com/cuda/cuda-c-best-practices-guide/index.html#throughput-of-native-arithmetic-instructions),
divided by the operations of one warp-instruction (32; 64 for the 2-wide HFMA2 / HADD2 / HMUL2):

    fp32        FFMA, FADD, FMUL                        32-bit floating-point add, multiply, multiply-add: 128 → 4
    fp16        HFMA2, HADD2, HMUL2                     16-bit floating-point add, multiply, multiply-add: 256 → 4
    fp64        DFMA, DADD, DMUL                        64-bit floating-point add, multiply, multiply-add:  64 → 2
    alu         IADD3, LOP3, SHF, ISETP, ...            32-bit integer add, shift, bitwise AND / OR / XOR,
                                                        compare / minimum / maximum:                        64 → 2
    imad        IMAD                                    32-bit integer multiply, multiply-add:              64 → 2
    conversion  F2F, F2FP, I2F, F2I, I2I, ...           all other type conversions:                         16 → 0.5
    mufu        MUFU                                    32-bit reciprocal, rsqrt, log2, exp2, sin, cos:     16 → 0.5
    lsu         LDG, STG, LDS, STS, LDSM, LDGSTS, SHFL  load / store unit: 32 per SM (assumed) → 1

Assumptions, beyond the table: IMAD has a pipe of its own, as in the Nsight Compute Profiling Guide's pipeline
list (https://docs.nvidia.com/nsight-compute/ProfilingGuide: IMAD issues to the FMA pipe's heavy half, "fmaheavy",
the integer ALU instructions to "alu"); the FP32 instructions that share that half are not charged to it, so
a loop heavy in both IMAD and FFMA is bound a little higher than the model says. The other integer rows share
the alu pipe, as do the float compare / select / min / max (FSETP, FSEL, FMNMX) and the select and
bit-manipulation instructions the table does not list (SEL, PRMT, SGXT, LEA, VIADD, PLOP3); F2FP (two fp32
packed to a 16-bit pair) is a conversion at the table's 16. The load / store unit is not in the table: 32 LD/ST
units per SM (8 per sub-partition in the Hopper SM diagram of Luo et al., arXiv:2402.13499, Fig. 1), one
warp-instruction per clock whatever its width; warp shuffles (the table's 32 per clock) share it, as the same
profiling guide's lsu pipe lists them. Tensor-core instructions (HMMA,
HGMMA, IMMA, IGMMA) are left to the compute term (FLOPs / the datasheet rate); branches, barriers, moves,
predicates and the uniform datapath count at the issue rate only.

L = `HBM_LATENCY_S`, an assumed idle global-memory latency of Hopper: 656 cycles, the pointer-chase figure
attributed to Luo et al. for an H800, "Dissecting the NVIDIA Hopper Architecture through Microbenchmarking and
Multiple Level Analysis", arXiv:2501.12084 (2025), https://arxiv.org/abs/2501.12084, at the H800 PCIe's
1,755 MHz boost clock: 374 ns. The latency term is proportional to it; loaded, queues make the latency longer,
so the term is a lower bound too, and the GPU run's measurement is what settles it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

SMS, SCHEDULERS, CLOCK_HZ = 132, 4, 1.98e9
WARP_SIZE = 32
HBM_LATENCY_S = 656 / 1.755e9                  # 374 ns (module docstring)
ASYNC_COPIES = ("LDGSTS", "UTMALDG")           # a loop holding one is software-pipelined: num_stages − 1 ahead

# pipe → (operations per clock per SM (cc 9.0, the guide's table), operations per warp-instruction, opcodes)
PIPES: dict[str, tuple[int, int, frozenset[str]]] = {
    "fp32": (128, 32, frozenset({"FFMA", "FADD", "FMUL"})),
    "fp16": (256, 64, frozenset({"HFMA2", "HADD2", "HMUL2"})),
    "fp64": (64, 32, frozenset({"DFMA", "DADD", "DMUL"})),
    "imad": (64, 32, frozenset({"IMAD"})),
    "alu": (64, 32, frozenset({"IADD3", "VIADD", "LEA", "IABS", "SHF", "SGXT", "LOP3", "PLOP3", "ISETP",
                               "IMNMX", "FSETP", "FMNMX", "FSEL", "SEL", "PRMT", "BMSK"})),
    "conversion": (16, 32, frozenset({"F2F", "F2FP", "F2I", "I2F", "I2I", "I2FP", "F2IP", "I2IP", "FRND"})),
    "mufu": (16, 32, frozenset({"MUFU"})),
    "lsu": (32, 32, frozenset({"LDG", "STG", "LD", "ST", "LDL", "STL", "LDS", "STS", "LDSM", "STSM", "LDGSTS",
                               "ATOM", "ATOMG", "ATOMS", "RED", "REDG", "SHFL"})),
}


def pipe_rate(pipe: str) -> float:
    """R_p: warp-instructions of ``pipe`` per SM per clock."""
    ops_per_clock, ops_per_instruction, _ = PIPES[pipe]
    return ops_per_clock / ops_per_instruction


def pipe_counts(mnemonics: Mapping[str, int]) -> dict[str, int]:
    """n_p: the opcodes of each pipe in one iteration of the main loop (pipes with none left out)."""
    counts = {pipe: sum(n for m, n in mnemonics.items() if m in members) for pipe, (_, _, members) in PIPES.items()}
    return {pipe: n for pipe, n in counts.items() if n}


def placement(programs: int, ctas_per_sm: int) -> dict[str, int]:
    """Round-robin placement on the SMs: waves, P_SM (the busiest SM's programs), r (resident at a time)."""
    busiest = math.ceil(programs / SMS)
    return {"waves": math.ceil(programs / (SMS * ctas_per_sm)), "busiest_sm_programs": busiest,
            "resident_programs": min(busiest, ctas_per_sm)}


def bytes_in_flight(resident_programs: int, warps: int, load_bytes: Sequence[int], depth: int) -> int:
    """Q = r · w · 32 · b · d: the global-load bytes an SM keeps in flight."""
    return resident_programs * warps * WARP_SIZE * sum(load_bytes) * depth


def pipeline_depth(mnemonics: Mapping[str, int], num_stages: int) -> int:
    """d: num_stages − 1 iterations in flight when the loop copies asynchronously, else 1."""
    return max(1, num_stages - 1) if any(m in mnemonics for m in ASYNC_COPIES) else 1


def launch_terms(programs: int, warps: int, t: int, loop: dict, other: int, occupancy: dict,
                 num_stages: int, n_bytes: int) -> dict:
    """The device-independent terms of one launch (µs) and where it runs (module docstring): ``t`` the busiest
    program's trip count, ``loop`` the main loop's record (instructions, mnemonics, global_load_bytes),
    ``other`` = I_rest, ``occupancy`` the compile record's, ``n_bytes`` the launch's DRAM bytes."""
    where = placement(programs, occupancy["ctas_per_sm"])
    busiest, resident = where["busiest_sm_programs"], where["resident_programs"]
    lanes = min(SCHEDULERS, resident * warps)                       # schedulers (sub-partitions) in use
    sm_instructions = busiest * warps * (loop["instructions"] * t + other)
    pipes = {pipe: busiest * warps * t * n / (pipe_rate(pipe) * lanes / SCHEDULERS * CLOCK_HZ) * 1e6
             for pipe, n in pipe_counts(loop["mnemonics"]).items()}
    depth = pipeline_depth(loop["mnemonics"], num_stages)
    in_flight = bytes_in_flight(resident, warps, loop.get("global_load_bytes", []), depth)
    latency = n_bytes * HBM_LATENCY_S / (min(programs, SMS) * in_flight) * 1e6 if in_flight else 0.0
    return {**where, "ctas_per_sm": occupancy["ctas_per_sm"], "iterations_per_program": t,
            "sm_warp_instructions": sm_instructions, "issue_us": sm_instructions / (lanes * CLOCK_HZ) * 1e6,
            "pipe_us": pipes, "pipeline_depth": depth, "bytes_in_flight_per_sm": in_flight, "latency_us": latency}
