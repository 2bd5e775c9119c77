"""lab.quant.suite on the CPU: every int4 path (fp32 matmul, the dense kernel, v1, v2, the layer's) is checked
against float64 before it is timed, and v2 (the decode GEMV) is recorded as skipped above M = 16."""

from __future__ import annotations

import torch

from lab.quant.suite import bench_int4


def test_bench_int4_checks_every_path_and_skips_v2_above_its_batch_limit():
    rows = bench_int4(torch.device("cpu"), quick=True, progress=False, size=256, batches=(1, 16, 17),
                      group_size=128)
    assert [r["M"] for r in rows] == [1, 16, 17]
    for row in rows:
        assert set(row["paths"]) == {"fp32_matmul", "dense_triton", "int4_lab", "int4_lab_v2", "int4_layer"}
        assert row["paths"]["int4_layer"]["max_rel_err"] < 1e-4 and 0 <= row["paths"]["int4_layer"]["agreement"] <= 1
        v2 = row["paths"]["int4_lab_v2"]
        if row["M"] <= 16:
            assert v2["max_rel_err"] < 1e-4 and v2["ms"] > 0
            assert v2["bytes"] == row["paths"]["int4_lab"]["bytes"]           # the same bytes, another order
        else:
            assert v2 == {"skipped": "M = 17 > 16: v2 is the decode GEMV"}
        assert row["paths"]["int4_lab"]["max_rel_err"] < 1e-4
