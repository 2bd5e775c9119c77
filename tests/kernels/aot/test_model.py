"""lab.kernels.aot.model: the sm_90 static model of the kernels, its arithmetic and the static targets.

The targets are compiled here (under the pinned triton; `make kernels-static` writes the committed record
under 3.6.0, the GPU machine's): the int4 v2 GEMV on 8192 × 8192, g = 128 must be issue-bound at no more
than 0.8 of its memory-bound time at the H200's 4.8 TB/s at M = 1, and within 1.3× of that time at M = 16;
the paged v2 decode must run at least 132 programs at B = 1 (2,048 tokens, 32 / 8 heads, head dim 128);
every global load in the main loop of the 2:4 v2 kernel must be a vector of at least 8 bytes per thread.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from lab.kernels.aot import model as static_model
from lab.kernels.aot.launches import Launch

FIELDS = ("version", "kernel", "shape", "bytes", "warp_instructions", "issue_bound_us", "memory_bound_us_h200",
          "programs")


def test_the_v2_kernels_meet_their_static_targets():
    rows = [r for r in static_model.rows() if (r.kernel == "int4_gemv_v2" and r.shape["M"] in (1, 16))
            or (r.kernel == "paged_attention_v2" and r.shape["B"] == 1) or r.kernel == "sparse24_matmul_v2"]
    m1, m16, sparse1, sparse16, paged = static_model.model(rows, jobs=1, progress=False)["rows"]
    # 2:4 v2 on 8192 × 8192: every global load of the main loop a vector of >= 8 bytes per thread
    for sparse in (sparse1, sparse16):
        widths = sparse["kernels"][0]["global_load_bytes"]
        assert widths and min(widths) >= 8, (sparse["shape"], widths)
    # paged v2 at B = 1, 2,048 cached tokens, 32 query / 8 kv heads, head dim 128: >= 132 programs
    assert paged["shape"]["B"] == 1 and paged["programs"] >= 132, paged
    assert "LDGSTS" in paged["kernels"][0]["main_loop_mnemonics"]        # K / V blocks loaded asynchronously
    assert (m1["shape"]["M"], m16["shape"]["M"]) == (1, 16)
    assert m1["issue_bound_us"] <= 0.8 * m1["memory_bound_us_h200"], m1
    assert m16["predicted_us_h200"] <= 1.3 * m1["predicted_us_h200"], (m16, m1)
    assert m1["programs"] >= 4 * 132 and m16["programs"] >= 132
    main_kernel = m1["kernels"][0]["main_loop_mnemonics"]
    assert "HGMMA" in main_kernel and "I2F" not in main_kernel          # wgmma, and no int → float conversion


def _launch(kernel: str, grid: tuple, warps: int, args: tuple = ()) -> Launch:
    return Launch(kernel, args, (("num_warps", warps),), grid)


def _compiled(loop: int, total: int) -> dict:
    return {"main_loop": {"instructions": loop, "classes": {}, "mnemonics": {}}, "sass_instructions": total,
            "registers": 32}


def test_the_model_arithmetic_on_synthetic_compiles():
    """v2 at M = 1 on 1024 × 1024, g = 128: 4 N tiles × 8 groups = 32 loop iterations in all; a reduction of
    4 splits over 32 programs of 1 warp."""
    row = static_model.Row("v2", "int4_gemv_v2", {"M": 1, "N": 1024, "K": 1024, "g": 128}, torch.bfloat16,
                     lambda: None)
    launches = [_launch("int4_gemv_v2", (4, 4), 8), _launch("int4_gemv_v2_reduce", (32,), 1, (None, None, 1024, 4))]
    rates = static_model.ceilings()
    out = static_model.predict(row, launches, [_compiled(100, 300), _compiled(10, 50)], rates)
    main_instr = 8 * (100 * 32 + 16 * 200)           # warps · (I_loop · T + programs · I_rest)
    reduce_instr = 1 * (10 * 4 * 32 + 32 * 40)
    assert out["warp_instructions"] == main_instr + reduce_instr
    expected_issue = (main_instr / (min(528, 16 * 8) * static_model.CLOCK_HZ)
                      + reduce_instr / (min(528, 32) * static_model.CLOCK_HZ)) * 1e6
    assert out["issue_bound_us"] == pytest.approx(expected_issue)
    n_bytes = 1024 * 1024 // 2 + 2 * 8 * 1024 * 2 + 2 * 1024 + (2 * 4 * 1024 * 4 + 2 * 1024)
    assert out["bytes"] == n_bytes and out["programs"] == 16 and out["launches"] == 2
    assert out["memory_bound_us_h200"] == pytest.approx(n_bytes / rates["h200"].bandwidth * 1e6)
    assert out["predicted_us_h200"] == max(out["issue_bound_us"], out["memory_bound_us_h200"],
                                           out["compute_bound_us_h200"])
    assert out["compute_bound_us_h200"] == pytest.approx(2 * 1024 * 1024 / rates["h200"].peak_flops * 1e6)


def test_a_kernel_that_fails_to_compile_is_an_error():
    row = static_model.rows()[0]
    with pytest.raises(RuntimeError, match=r"int4_matmul at .* does not compile: boom"):
        static_model.predict(row, [_launch("int4_matmul", (1, 1, 1), 4)], [{"error": "x", "error_summary": "boom"}],
                       static_model.ceilings())


def test_issue_rate_is_the_datasheet_product():
    assert static_model.ISSUE_RATE == 132 * 4 * 1.98e9 and math.isclose(static_model.ISSUE_RATE, 1.04544e12)


def test_headline_and_table_rows_read_the_record(repo_root):
    record = json.loads((repo_root / "results" / "kernels_sm90.json").read_text())
    h = static_model.headline(record)
    int4 = static_model.int4_rows(record)
    assert h["static_v2_issue_over_memory_m1"] == int4["v2", 1]["issue_bound_us"] / int4["v2", 1]["memory_bound_us_h200"]
    assert h["static_v1_warp_instr_per_kb"] == int4["v1", 1]["warp_instructions"] / (8192 * 8192 / 2 / 1024)
    bf16 = 2 * (8192 * 8192 + 2 * 8192) / record["ceilings"]["h200"]["bandwidth_bytes_per_s"] * 1e6
    assert h["static_bf16_over_v2_m1"] == pytest.approx(bf16 / int4["v2", 1]["predicted_us_h200"])
    assert h["static_paged_programs_b1"] == 8 and h["static_paged_v2_programs_b1"] >= 132
    rows = static_model.table_rows(record)
    assert len(rows) == len(record["rows"]) and rows[0]["warp-instr / weight"] > 0
    assert next(r for r in rows if r["kernel"] == "paged_attention")["warp-instr / weight"] is None
