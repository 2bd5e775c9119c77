"""lab.kernels.aot.model: the sm_90 static model's arithmetic on synthetic compile records, and reading a record.

The static targets of the v2 kernels (int4 v2 at M = 1 issue-bound at no more than 0.8 of its memory-bound
time, M = 16 within 1.3× of M = 1; paged v2 at least 132 programs at B = 1; 2:4 v2 loads of at least 8
bytes) are checked against the committed record, made under triton 3.6.0 (the GPU machine's), not recompiled
here.
"""

from __future__ import annotations

import math

import pytest
import torch

from lab.kernels.aot import model as static_model
from lab.kernels.aot.launches import Launch
from lab.kernels.aot.pipes import CLOCK_HZ, HBM_LATENCY_S, pipe_rate

F, L = CLOCK_HZ, HBM_LATENCY_S


def _launch(kernel: str, grid: tuple, warps: int, args: tuple = (), **constexprs) -> Launch:
    return Launch(kernel, args, tuple(sorted({"num_warps": warps, **constexprs}.items())), grid)


def _compiled(mnemonics: dict, total: int, ctas_per_sm: int, load_bytes: list, num_stages: int = 3) -> dict:
    loop = sum(mnemonics.values())
    return {"main_loop": {"instructions": loop, "classes": {}, "mnemonics": mnemonics, "global_load_bytes": load_bytes},
            "sass_instructions": total, "registers": 32, "occupancy": {"ctas_per_sm": ctas_per_sm},
            "num_stages": num_stages}


def _int4_v2():
    """v2 at M = 1 on 1024 × 1024, g = 128 (8 groups): 80 N tiles × split 2 = 160 programs of 8 warps, one
    per SM at a time, then a reduction of the 2 splits over 32 programs of 1 warp."""
    row = static_model.Row("v2", "int4_gemv_v2", {"M": 1, "N": 1024, "K": 1024, "g": 128}, torch.bfloat16,
                           lambda: None)
    launches = [_launch("int4_gemv_v2", (80, 2), 8),
                _launch("int4_gemv_v2_reduce", (32,), 1, (None, None, 1024, 2))]
    compiled = [_compiled({"LOP3": 40, "FFMA": 20, "LDGSTS": 4, "BAR": 35, "BRA": 1}, 300, 1, [16, 16, 16, 16]),
                _compiled({"FADD": 2, "LDG": 2, "LEA": 5, "BRA": 1}, 50, 32, [4, 4])]
    return row, launches, compiled


def test_waves_busiest_sm_latency_and_the_sum_over_launches():
    row, launches, compiled = _int4_v2()
    rates = static_model.ceilings()
    out = static_model.predict(row, launches, compiled, rates)
    main, reduce = out["kernels"]
    # 160 programs on 132 SMs, one at a time: 2 waves, 28 SMs run 2 programs; each loops ⌈8 / 2⌉ = 4 times
    assert (main["waves"], main["busiest_sm_programs"], main["iterations_per_program"]) == (2, 2, 4)
    assert main["issue_us"] == pytest.approx(2 * 8 * (100 * 4 + 200) / (4 * F) * 1e6)
    assert main["pipe_us"]["alu"] == pytest.approx(2 * 8 * 4 * 40 / (2 * F) * 1e6)
    assert main["pipe_us"]["fp32"] == pytest.approx(2 * 8 * 4 * 20 / (4 * F) * 1e6)
    assert main["pipe_us"]["lsu"] == pytest.approx(2 * 8 * 4 * 4 / (1 * F) * 1e6) and "BAR" not in main["pipe_us"]
    # bytes: the reduction reads the 4·S·M·N partials and writes e·M·N; the main kernel the rest
    n_bytes = 1024 * 1024 // 2 + 2 * 8 * 1024 * 2 + 2 * 1024 + (2 * 4 * 1024 * 2 + 2 * 1024)
    assert (main["bytes"], reduce["bytes"]) == (n_bytes - 10240, 4 * 2 * 1024 + 2 * 1024) and out["bytes"] == n_bytes
    # LDGSTS with 3 stages: 2 iterations in flight, 1 program × 8 warps × 32 × 64 bytes × 2 per SM
    assert main["bytes_in_flight_per_sm"] == 8 * 32 * 64 * 2
    assert main["latency_us"] == pytest.approx((n_bytes - 10240) * L / (132 * 32768) * 1e6)
    assert main["bound_by_h200"] == "issue" and main["predicted_us_h200"] == main["issue_us"]
    # the reduction: 1 warp per program (one scheduler), 2 splits, its loop unrolled twice (2 LDG in the compiled
    # body, 1 per split): one pass; 256 bytes in flight on each of 32 SMs
    assert (reduce["busiest_sm_programs"], reduce["iterations_per_program"]) == (1, 1)
    assert reduce["issue_us"] == pytest.approx((10 * 1 + 40) / F * 1e6) and reduce["iterations"] == 32
    assert reduce["latency_us"] == pytest.approx(10240 * L / (32 * 256) * 1e6)        # 1.25 load latencies
    assert reduce["bound_by_h200"] == "latency" and reduce["compute_bound_us_h200"] is None
    # the kernels run one after the other
    assert out["predicted_us_h200"] == pytest.approx(main["issue_us"] + reduce["latency_us"])
    assert out["issue_us"] == out["issue_bound_us"] == pytest.approx(main["issue_us"] + reduce["issue_us"])
    assert out["memory_bound_us_h200"] == pytest.approx(n_bytes / rates["h200"].bandwidth * 1e6)
    assert out["memory_bound_us_h100"] == pytest.approx(n_bytes / rates["h100"].bandwidth * 1e6)
    assert out["compute_bound_us_h200"] == pytest.approx(2 * 1024 * 1024 / rates["h200"].peak_flops * 1e6)
    assert out["warp_instructions"] == 8 * (100 * 8 * 80 + 160 * 200) + 1 * (10 * 1 * 32 + 32 * 40)
    assert (out["programs"], out["waves"], out["launches"]) == (160, 2, 2)
    assert static_model.table({"rows": [out]}).endswith("issue + latency")     # what binds each kernel


def test_a_conversion_heavy_kernel_is_bound_by_its_pipe():
    """v1 at M = 1 on 1024 × 1024: 16 N tiles × split 4 = 64 programs of 4 warps, ⌈(512 / 64) / 4⌉ = 2 steps
    each; 40 conversions per iteration at 16 per SM and clock against 50 instructions at 4."""
    row = static_model.Row("v1", "int4_matmul", {"M": 1, "N": 1024, "K": 1024, "g": 128}, torch.bfloat16,
                           lambda: None)
    launch = _launch("int4_matmul", (1, 16, 4), 4, BLOCK_K=64)
    record = _compiled({"I2F": 32, "F2FP": 8, "LDGSTS": 2, "FMUL": 8}, 150, 5, [16] * 8)
    out = static_model.predict(row, [launch], [record], static_model.ceilings())
    kernel, = out["kernels"]
    assert (kernel["busiest_sm_programs"], kernel["iterations_per_program"], kernel["iterations"]) == (1, 2, 8 * 16)
    assert kernel["issue_us"] == pytest.approx(4 * (50 * 2 + 100) / (4 * F) * 1e6)
    assert kernel["pipe_us"]["conversion"] == pytest.approx(4 * 2 * 40 / (0.5 * F) * 1e6)
    assert kernel["latency_us"] == pytest.approx(602112 * L / (64 * 4 * 32 * 128 * 2) * 1e6)
    assert kernel["bound_by_h200"] == "conversion" and out["bytes"] == 602112
    assert out["predicted_us_h200"] == pytest.approx(640 / F * 1e6) and out["pipe_us"] == kernel["pipe_us"]


def test_the_paged_decode_v2_splits_its_bytes_and_trip_counts():
    """B = 2 sequences of 2,048 tokens (128 blocks), split in S = 40 ranges of up to 4 blocks; the combine pass
    reads the fp32 m, ℓ and a partials of each (b, h), 16 splits per trip (3 trips), and writes o."""
    shape = {"B": 2, "H": 32, "H_kv": 8, "D": 128, "block_size": 16, "context": 2048}
    row = static_model.Row("v2", "paged_attention_v2", shape, torch.bfloat16, lambda: None)
    main = _launch("paged_attention_v2", (2, 8, 40), 4, (None,) * 14 + (4, 40, 0.1))
    combine = _launch("paged_attention_v2_combine", (2, 32), 4, (None,) * 6 + (40,), CHUNK=16)
    assert static_model.ITERATIONS[main.kernel](shape, main) == (128 * 2 * 8, 4)
    assert static_model.ITERATIONS[combine.kernel](shape, combine) == (3 * 64, 3)
    parts = static_model.launch_bytes(row, [main, combine])
    assert parts[1] == 4 * 2 * 32 * 40 * 130 + 2 * 2 * 32 * 128
    assert sum(parts) == static_model.call_bytes(row, [main, combine])
    int4_row, launches, _ = _int4_v2()
    assert sum(static_model.launch_bytes(int4_row, launches)) == static_model.call_bytes(int4_row, launches)


def test_the_fp4_gemv_counts_its_blocks_and_splits_its_bytes():
    """MXFP4 at M = 1 on 1024 × 1024 in steps of 2 blocks of 32 columns (16 steps): 8 tiles × split 4, each
    program ⌈16 / 4⌉ = 4 steps; the reduction reads the 4·S·M·N bytes of partials and writes e·M·N, the main
    kernel the rest."""
    row = static_model.Row("fp4", "fp4_matmul", {"M": 1, "N": 1024, "K": 1024, "fmt": "mxfp4"}, torch.bfloat16,
                           lambda: None)
    main = _launch("fp4_matmul", (8, 4), 4, B=32, BLOCKS=2)
    reduce = _launch("fp4_matmul_reduce", (32,), 1, (None, None, 1024, 4))
    assert static_model.ITERATIONS[main.kernel](row.shape, main) == (16 * 8, 4)
    n_bytes = 1024 * 1024 // 2 + 1024 * 1024 // 32 + 2 * 1024 + 2 * 1024 + 8 * 4 * 1024     # codes, S, x, y, partials
    assert static_model.call_bytes(row, [main, reduce]) == n_bytes
    assert static_model.launch_bytes(row, [main, reduce]) == [n_bytes - 18432, 4 * 4 * 1024 + 2 * 1024]


def test_pipe_rates_are_the_guide_table_per_warp():
    assert {p: pipe_rate(p) for p in ("fp32", "fp16", "alu", "imad", "conversion", "mufu", "lsu")} == {
        "fp32": 4, "fp16": 4, "alu": 2, "imad": 2, "conversion": 0.5, "mufu": 0.5, "lsu": 1}


def test_a_kernel_that_fails_to_compile_is_an_error():
    row = static_model.rows()[0]
    with pytest.raises(RuntimeError, match=r"int4_matmul at .* does not compile: boom"):
        static_model.predict(row, [_launch("int4_matmul", (1, 1, 1), 4)], [{"error": "x", "error_summary": "boom"}],
                             static_model.ceilings())


def test_issue_rate_is_the_datasheet_product():
    assert static_model.ISSUE_RATE == 132 * 4 * 1.98e9 and math.isclose(static_model.ISSUE_RATE, 1.04544e12)
