"""Chapter 7's choices from the leaderboard's rows: the Pareto front under uncertainty, the pick for each
constraint, and the table the chapter prints.

Route a *dominates* route b when a stores at most b's bytes and its per-token losses are lower than b's
with the paired interval of Δ = log PPL_a − log PPL_b wholly below 0 after Holm's correction across every
such pair of the leaderboard (`lab.core.stats.compare` on the same evaluation sample, seeds and documents
resampled together; `verdicts`). A route is on the front when nothing dominates it: two routes whose
quality the sample cannot tell apart both stay, whatever their point estimates.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_number, check_tensor
from lab.core.stats import compare, verdicts


def _check_rows(rows: list[dict], keys: tuple[str, ...], name: str = "rows") -> None:
    """rows: a list of leaderboard rows (dicts) that have ``keys``."""
    if not isinstance(rows, (list, tuple)):
        raise TypeError(f"{name} must be a list of leaderboard rows (dicts), got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(keys) - row.keys():
            raise ValueError(f"{name}[{i}] must be a leaderboard row with the keys {keys}, got "
                             f"{sorted(row) if isinstance(row, dict) else type(row).__name__}")


def dominance(rows: list[dict], losses: list[torch.Tensor], documents: torch.Tensor) -> list[list[str]]:
    """For each row, the routes that dominate it (see the module docstring), in the order of ``rows``.

    rows: leaderboard rows ("route", "bytes"); losses: per row, its (S, n) per-token losses on the sample;
    documents: (n,) the document of each token.
    """
    _check_rows(rows, ("route", "bytes"))
    check_tensor("documents", documents, 1)
    if not isinstance(losses, (list, tuple)) or len(losses) != len(rows):
        raise ValueError(f"losses must be a list of one (S, n) tensor per row ({len(rows)}), got "
                         f"{len(losses) if isinstance(losses, (list, tuple)) else type(losses).__name__}")
    for i, t in enumerate(losses):
        if check_tensor(f"losses[{i}]", t, 2).shape[1] != len(documents):
            raise ValueError(f"losses[{i}] must have shape (S, n = len(documents) = {len(documents)}), got "
                             f"{tuple(t.shape)}")
    pairs = {(i, j): compare(losses[j], losses[i], documents, n_boot=20_000)          # Δ = a − b: a = i, b = j
             for i, a in enumerate(rows) for j, b in enumerate(rows) if i != j and a["bytes"] <= b["bytes"]}
    if not pairs:
        return [[] for _ in rows]
    verbs = verdicts({f"{i},{j}": r for (i, j), r in pairs.items()})
    return [[rows[i]["route"] for (i, jj) in pairs if jj == j and verbs[f"{i},{j}"] == "lower"]
            for j in range(len(rows))]


def pareto_front(rows: list[dict]) -> list[str]:
    """The routes nothing dominates (their ``dominated_by`` is empty), in the order of ``rows``."""
    _check_rows(rows, ("route", "dominated_by"))
    return [r["route"] for r in rows if not r["dominated_by"]]


# (constraint, what decides, which routes may answer)
CONSTRAINTS = (
    ("memory-bound decode (batch 1)", "fewest bytes read per token", lambda r: True),
    ("batch serving (compute-bound)", "least predicted matmul time, then lowest Δ", lambda r: True),
    ("no calibration data", "fewest bytes read per token, no data at all",
     lambda r: not (r["calibration"] or r["training"])),
    ("no training budget", "fewest bytes read per token, no training", lambda r: not r["training"]),
)


def constraint_table(rows: list[dict], budget_pct: float) -> list[dict]:
    """For each of `CONSTRAINTS`, the route it picks among those whose perplexity change is within
    ``budget_pct`` percent at the upper end of its 95% interval, a tie going to the fewer stored bytes, then
    to the lower Δ:
    {"constraint", "decided by", "route", "bytes", "read_bytes", "delta_ppl_pct", "matmul_time_vs_dense"};
    route None when none qualifies. A route that stores bit-packed codes without a kernel is read in
    bf16 at decode (``read_bytes``): that, not the stored size, decides a memory-bound pick."""
    _check_rows(rows, ("route", "bytes", "read_bytes", "calibration", "training", "delta_log_ppl", "delta_ppl_pct",
                       "matmul_time_vs_dense"))
    if not check_number("budget_pct", budget_pct) >= 0:
        raise ValueError(f"budget_pct must be a number >= 0 (percent), got {budget_pct!r}")
    table = []
    for constraint, decided_by, allowed in CONSTRAINTS:
        ok = [r for r in rows if allowed(r) and r["delta_ppl_pct"][2] <= budget_pct]
        key = ((lambda r: (r["matmul_time_vs_dense"], r["delta_log_ppl"][0])) if decided_by.startswith("least")
               else (lambda r: (r["read_bytes"], r["bytes"], r["delta_log_ppl"][0])))
        pick = min(ok, key=key) if ok else None
        table.append({"constraint": constraint, "decided by": decided_by, "route": pick and pick["route"],
                      **{k: pick and pick[k] for k in ("bytes", "read_bytes", "delta_ppl_pct", "matmul_time_vs_dense")}})
    return table


def leaderboard_frame(rows: list[dict], gpu_rows: list[dict] = ()) -> "pd.DataFrame":
    """The leaderboard as a table, one row per route: weights, stored MB, MB read per decoded token, bytes ×
    dense, perplexity, its change [95% interval] and verdict (Holm across the routes), seeds, predicted
    matmul time at a large batch ("batch time"), this device's decode ms/token, and from ``gpu_rows`` (the
    rows of a GPU record, matched by route) tokens/s with the fraction of the memory-bound speed of light,
    "pending" where there is none."""
    import pandas as pd

    _check_rows(rows, ("route", "params", "bytes", "read_bytes", "perplexity", "delta_ppl_pct", "verdict", "n_seeds",
                       "matmul_time_vs_dense", "decode_ms_per_token"))
    if not rows:
        raise ValueError("rows is empty: no leaderboard to show")
    _check_rows(gpu_rows, ("route", "tokens_per_s", "fraction_of_sol"), "gpu_rows")
    gpu = {r["route"]: r for r in gpu_rows}
    dense_bytes = rows[0]["bytes"]
    table = []
    for r in rows:
        mid, low, high = r["delta_ppl_pct"]
        g = gpu.get(r["route"])
        table.append({"route": r["route"], "weights": f"{r['params']:,}", "MB": r["bytes"] / 1e6,
                      "MB read/token": r["read_bytes"] / 1e6, "× dense": r["bytes"] / dense_bytes,
                      "ppl": r["perplexity"], "Δ ppl % (95% CI)": f"{mid:+.2f} [{low:+.2f}, {high:+.2f}]",
                      "verdict": r["verdict"], "seeds": r["n_seeds"],
                      "batch time (pred.)": r["matmul_time_vs_dense"],
                      "CPU ms/token": r["decode_ms_per_token"],
                      "GPU tokens/s (× SOL)":
                          f"{g['tokens_per_s']:,.0f} ({g['fraction_of_sol']:.2f})" if g else "pending"})
    return pd.DataFrame(table).set_index("route")
