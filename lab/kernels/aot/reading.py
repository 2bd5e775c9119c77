"""Reading a record of the static model (``results/kernels_sm90.json``): the rows and figures chapters 2, 3
and 6 state, every one *predicted* (the sm_90 compile under the record's Triton, the model of
`lab.kernels.aot.model`, datasheet bandwidths).

"X faster than Y" is a ratio of two predicted times, each the sum over a call's kernels of the largest of
its terms (issue, a pipe, latency, memory, compute); "issue over memory" compares the issue term alone with
the memory-bound time (the target the v2 kernels were built to: issue at most 0.8 of memory at M = 1, so
that the instructions are not what limits the stream); "predicted over memory" how far the whole call is
from streaming its bytes at the bandwidth. The baseline of the matmuls is the dense kernel
(`lab.kernels.dense`) on the same layer, compiled and modelled like the others.
"""

from __future__ import annotations

LAYER = 8192                                      # the N = K of the matmul rows
SHOWN = ("M", "g", "B")                           # the shape keys `table_rows` shows


def table_rows(record: dict) -> list[dict]:
    """One readable row per kernel and shape (H200, predicted µs): the main kernel's waves, the issue term, the
    slowest pipe, latency, memory, the prediction and the term that binds each kernel of the call. The shape
    shows what varies (M and g of the 8192 × 8192 matmuls, B of the paged decode over 2,048 tokens with 32 / 8
    heads of 128)."""
    out = []
    for r in record["rows"]:
        pipe, pipe_us = max(r["pipe_us"].items(), key=lambda item: item[1], default=("-", 0.0))
        out.append({"kernel": f"{r['kernel']} ({r['version']})",
                    "shape": " ".join(f"{k}={v}" for k, v in r["shape"].items() if k in SHOWN), "waves": r["waves"],
                    "issue": r["issue_us"], "slowest pipe": f"{pipe} {pipe_us:.2f}", "latency": r["latency_us"],
                    "memory": r["memory_bound_us_h200"], "predicted": r["predicted_us_h200"],
                    "bound by": " + ".join(k["bound_by_h200"] for k in r["kernels"])})
    return out


def rows_by(record: dict, kernel_prefix: str, key: str) -> dict[tuple[str, int], dict]:
    """(version, shape[key]) → row, for the rows whose kernel starts with ``kernel_prefix``."""
    return {(r["version"], r["shape"][key]): r for r in record["rows"] if r["kernel"].startswith(kernel_prefix)}


def int4_rows(record: dict) -> dict[tuple[str, int], dict]:
    """(version, M) → row of the int4 kernels."""
    return rows_by(record, "int4", "M")


def dense_us(record: dict, M: int) -> float:
    """The dense baseline's predicted µs on the H200 for the 8192 × 8192 layer at M rows."""
    return rows_by(record, "dense", "M")["dense", M]["predicted_us_h200"]


def _over_memory(row: dict, term: str) -> float:
    return row[term] / row["memory_bound_us_h200"]


def headline(record: dict) -> dict[str, float]:
    """The figures chapters 2, 3 and 6 state: v1 vs v2 of int4 (M = 1, 16) and both against the dense kernel
    (M = 1), 2:4 v1 and v2 against the dense kernel (M = 1), MXFP4 and NVFP4 weights against it (M = 1), the
    paged decode v1 vs v2 (B = 1, 32)."""
    int4 = int4_rows(record)
    pred = {key: r["predicted_us_h200"] for key, r in int4.items()}
    codes_kb = LAYER * LAYER / 2 / 1024
    out = {}
    for v in ("v1", "v2"):
        out[f"static_{v}_issue_us_m1"] = int4[v, 1]["issue_us"]
        out[f"static_{v}_warp_instr_per_kb"] = int4[v, 1]["warp_instructions"] / codes_kb
        out[f"static_{v}_issue_over_memory_m1"] = _over_memory(int4[v, 1], "issue_us")
        out[f"static_{v}_predicted_over_memory_m1"] = _over_memory(int4[v, 1], "predicted_us_h200")
    out["static_v1_conversion_over_memory_m1"] = int4["v1", 1]["pipe_us"]["conversion"] / int4["v1", 1][
        "memory_bound_us_h200"]
    out["static_v2_memory_us_m1"] = int4["v2", 1]["memory_bound_us_h200"]
    out["static_v2_us_m1"] = pred["v2", 1]
    out["static_v2_m16_over_m1"] = pred["v2", 16] / pred["v2", 1]
    out["static_v1_over_v2_m1"] = pred["v1", 1] / pred["v2", 1]
    out["static_dense_us_m1"] = dense_us(record, 1)
    out["static_dense_over_v2_m1"] = dense_us(record, 1) / pred["v2", 1]
    sparse = rows_by(record, "sparse24", "M")
    for v in ("v1", "v2"):
        out[f"static_sparse24_{v}_predicted_over_memory_m1"] = _over_memory(sparse[v, 1], "predicted_us_h200")
        out[f"static_dense_over_sparse24_{v}_m1"] = dense_us(record, 1) / sparse[v, 1]["predicted_us_h200"]
    fp4 = rows_by(record, "fp4", "M")
    for fmt in ("mxfp4", "nvfp4"):
        out[f"static_{fmt}_memory_us_m1"] = fp4[fmt, 1]["memory_bound_us_h200"]
        out[f"static_{fmt}_us_m1"] = fp4[fmt, 1]["predicted_us_h200"]
        out[f"static_dense_over_{fmt}_m1"] = dense_us(record, 1) / fp4[fmt, 1]["predicted_us_h200"]
        out[f"static_{fmt}_issue_over_memory_m1"] = _over_memory(fp4[fmt, 1], "issue_us")
        out[f"static_dense_over_{fmt}_memory_m1"] = rows_by(record, "dense", "M")["dense", 1][
            "memory_bound_us_h200"] / fp4[fmt, 1]["memory_bound_us_h200"]
    paged = rows_by(record, "paged", "B")
    out["static_paged_programs_b1"] = paged["v1", 1]["programs"]
    out["static_paged_v2_programs_b1"] = paged["v2", 1]["programs"]
    out["static_paged_v1_over_v2_b1"] = paged["v1", 1]["predicted_us_h200"] / paged["v2", 1]["predicted_us_h200"]
    for B in (1, 32):
        out[f"static_paged_v2_predicted_over_memory_b{B}"] = _over_memory(paged["v2", B], "predicted_us_h200")
    return out
