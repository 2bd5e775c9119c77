"""Suite ``leaderboard`` of `lab.bench` (chapter 7): every route of the book applied to one model.

The book's pretrained model (pydoc-gpt) goes through each route of `ROUTES`, and each result is
measured the same way, in one run:

* ``params``: the weights the stored form keeps (nonzero ones for the sparse routes);
* ``bytes``: the size of the stored form written with `lab.params.safetensors_io` (header, codes,
  scales, zero points, sparsity metadata, embeddings and norms: everything needed to run it);
  float tensors are stored in bf16;
* ``delta``: the paired comparison `lab.core.stats.compare` of its per-token losses against the dense
  bf16 model's on the same evaluation tokens: Δ = mean(ℓ_route − ℓ_dense) nats, with its 95% block
  bootstrap interval, and the perplexity change 100·(e^Δ − 1) %;
* ``matmul_time_vs_dense``: the time of the matmuls at a large batch (compute-bound) predicted from
  the dense-equivalent weights out·in of every linear over its tensor-core rate relative to bf16
  (`MATMUL_RATE`: int8 and 2:4-sparse tensor cores run at 2× bf16 dense on Hopper, datasheet), over
  the dense model's;
* ``decode_ms_per_token``: greedy decoding with the KV cache on this device, the median time of
  ``prompt + n`` generated tokens less that of ``prompt + 1``, divided by n − 1 (`lab.core.timing`);
* on a GPU, ``tokens_per_s`` and ``fraction_of_sol``: the memory-bound time ``bytes / bandwidth``
  (the device's datasheet bandwidth, `lab.core.ceilings`) over the measured time per token.

The evaluated model is the stored form itself (its modules: `Int4Linear`, `W8A8Linear`,
`Sparse24Linear`), with every float tensor rounded to bf16, as it would be loaded from disk. int3 has
no kernel in `lab`: its codes are stored bit-packed and it runs as dequantized float weights.
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lab.capstone.routes import MATMUL_RATE, ROUTES, Route, Settings
from lab.core.records import REPO_ROOT, device_name
from lab.core.stats import compare
from lab.core.timing import time_ms
from lab.formats.sparse24 import pack_bits
from lab.infer.generate import generate
from lab.models.gpt import GPT
from lab.models.next_token import random_batch
from lab.params.counting import unique_state_dict
from lab.params.safetensors_io import save_safetensors
from lab.perplexity import token_losses
from lab.prune.semi_structured import Sparse24Linear
from lab.quant.affine import dequantize
from lab.quant.linear import Int4Linear, W8A8Linear


@torch.no_grad()
def round_to_bf16(model: nn.Module) -> nn.Module:
    """Every float parameter and buffer rounded to the nearest bf16 value, in place (dtypes kept)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            tensor.copy_(tensor.to(torch.bfloat16))
    return model


def stored_tensors(model: nn.Module, codes: dict) -> dict[str, torch.Tensor]:
    """The tensors of the stored form: the state dict with shared tensors once (a tied head), floats in
    bf16, and each weight named in ``codes`` replaced by its b-bit codes packed LSB-first per row
    (``.codes``, uint8) with its scales (bf16) and zero points (uint8): `unique_state_dict` in bf16
    with the codes swapped in."""
    tensors = {}
    for name, t in unique_state_dict(model, torch.bfloat16).items():
        if name in codes:
            qt = codes[name]
            tensors[name + ".codes"] = pack_bits(qt.qdata.to(torch.int64), qt.bits)
            tensors[name + ".scale"] = qt.scale.to(torch.bfloat16)
            tensors[name + ".zero_point"] = qt.zero_point.to(torch.uint8)
        else:
            tensors[name] = t
    return tensors


def stored_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Size in bytes of ``tensors`` written as one safetensors file (header included)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_safetensors(tensors, path, checksum=False)
        return path.stat().st_size


def kept_weights(model: nn.Module, codes: dict) -> int:
    """Weights the stored form keeps: the nonzero float parameters (a shared tensor once; all of a
    weight stored as ``codes``) plus the codes of the `Int4Linear`/`W8A8Linear`s and the kept values
    of the `Sparse24Linear`s."""
    count, seen = sum(qt.qdata.numel() for qt in codes.values()), {model.get_parameter(n).data_ptr() for n in codes}
    for module in model.modules():
        if isinstance(module, (Int4Linear, W8A8Linear)):
            count += module.out_features * module.in_features
        elif isinstance(module, Sparse24Linear):
            count += module.out_features * module.in_features // 2
        for p in module.parameters(recurse=False):
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                count += int(p.count_nonzero())
    return count


def matmul_time(model: nn.Module) -> float:
    """Σ over the linears (the head included) of out·in / rate, the rate of its tensor-core path
    (`MATMUL_RATE`: `W8A8Linear` int8, `Sparse24Linear` 2:4 sparse, every other linear bf16)."""
    rate = lambda m: MATMUL_RATE["int8" if isinstance(m, W8A8Linear) else
                                 "2:4 sparse" if isinstance(m, Sparse24Linear) else "bf16"]
    return sum(m.out_features * m.in_features / rate(m) for m in model.modules()
               if isinstance(m, (nn.Linear, Int4Linear, W8A8Linear, Sparse24Linear)))


def decode_ms_per_token(model: GPT, prompt: torch.Tensor, n: int, device: torch.device, repeats: int) -> float:
    """Median ms per generated token of greedy KV-cache decoding: (t(prompt + n) − t(prompt + 1)) / (n − 1)."""
    if n < 2:
        raise ValueError(f"n must be >= 2 (the first token comes with the prefill), got {n}")
    times = [time_ms(lambda k=k: generate(model, prompt, k), device, repeats) for k in (1, n)]
    return max(times[1] - times[0], 1e-9) / (n - 1)


def git_commit() -> str:
    """The commit of the working tree, with "+dirty" when files differ from it ("unknown" outside git)."""
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                           check=True).stdout.strip()
        return run("rev-parse", "HEAD") + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measure(route: Route, ctx: dict, reference: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """One row of the leaderboard (see the module docstring) and the route's per-token losses."""
    s, device = ctx["settings"], ctx["device"]
    model, codes = route.build(ctx)
    model = round_to_bf16(model.to(device).eval())
    with torch.no_grad():
        for name, qt in codes.items():
            model.get_parameter(name).copy_(dequantize(qt))
    tensors = stored_tensors(model, codes)
    losses = token_losses(model, ctx["tokens"].to(device))
    cmp = compare(reference if reference is not None else losses, losses)
    pct = lambda d: 100.0 * math.expm1(d)
    prompt = ctx["tokens"][:s.decode_prompt][None].to(device)
    row = {"route": route.name, "params": kept_weights(model, codes), "bytes": stored_bytes(tensors),
           "perplexity": math.exp(losses.mean().item()),
           "delta_log_ppl": [cmp["delta_log_ppl"], cmp["ci_low"], cmp["ci_high"]],
           "delta_ppl_pct": [pct(cmp["delta_log_ppl"]), pct(cmp["ci_low"]), pct(cmp["ci_high"])],
           "matmul_time_vs_dense": matmul_time(model) / ctx["dense_matmul_time"],
           "decode_ms_per_token": decode_ms_per_token(model, prompt, s.decode_tokens, device, s.repeats),
           "calibration": route.calibration, "training": route.training, "matmul": route.matmul}
    if device.type == "cuda":
        from lab.core.ceilings import device_ceilings

        ceilings = device_ceilings(device)                     # bandwidth in bytes/s, measured or datasheet
        row["tokens_per_s"] = 1e3 / row["decode_ms_per_token"]
        row["fraction_of_sol"] = row["bytes"] / ceilings.bandwidth / (row["decode_ms_per_token"] / 1e3)
        row["sol_source"] = ceilings.source
    return row, losses


def leaderboard(dense: GPT, tokens: torch.Tensor, train_ids: torch.Tensor, settings: Settings = Settings(),
                device: torch.device | str = "cpu", routes: tuple[Route, ...] = ROUTES,
                progress: bool = True) -> list[dict]:
    """The rows of every route in ``routes`` on ``dense`` (a lab `GPT`, copied, never changed).

    ``tokens``: (N,) int64 evaluation ids; ``train_ids``: (M,) int64 ids from which the calibration
    windows and the student's batches are drawn (seeded by ``settings.seed``). The first route is the
    reference of every Δ (its own Δ is 0).
    """
    device = torch.device(device)
    base = round_to_bf16(copy.deepcopy(dense).to(device).eval())
    calib = random_batch(train_ids, settings.calib_samples, settings.calib_len,
                         torch.Generator().manual_seed(settings.seed))[0].to(device)
    ctx = {"dense": base, "calib": calib, "tokens": tokens, "train_ids": train_ids, "settings": settings,
           "device": device, "dense_matmul_time": matmul_time(base)}
    stamp = {"commit": git_commit(), "device": device_name(device),
             "command": "python -m lab.bench leaderboard --device " + device.type}
    rows, reference = [], None
    for route in tqdm(routes, desc="leaderboard", disable=not progress):
        row, losses = measure(route, ctx, reference)
        reference = losses if reference is None else reference
        rows.append({**row, **stamp})
    return rows


def slug(text: str) -> str:
    """A record-name form of a route or constraint: lower case, each run of other characters one "_"."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def pareto_front(rows: list[dict]) -> list[str]:
    """The routes no other route dominates: none has at most its bytes and at most its Δ (log-perplexity),
    one of them strictly less. In the order of ``rows``."""
    def dominates(a: dict, b: dict) -> bool:
        le = a["bytes"] <= b["bytes"] and a["delta_log_ppl"][0] <= b["delta_log_ppl"][0]
        return le and (a["bytes"] < b["bytes"] or a["delta_log_ppl"][0] < b["delta_log_ppl"][0])
    return [b["route"] for b in rows if not any(dominates(a, b) for a in rows)]


# (constraint, what decides, which routes may answer)
CONSTRAINTS = (
    ("memory-bound decode (batch 1)", "fewest bytes", lambda r: True),
    ("batch serving (compute-bound)", "least predicted matmul time, then lowest Δ", lambda r: True),
    ("no calibration data", "fewest bytes, no data at all", lambda r: not (r["calibration"] or r["training"])),
    ("no training budget", "fewest bytes, no training", lambda r: not r["training"]),
)


def constraint_table(rows: list[dict], budget_pct: float) -> list[dict]:
    """For each of `CONSTRAINTS`, the route it picks among those whose perplexity change is within
    ``budget_pct`` percent at the upper end of its 95% interval, a tie going to the lower Δ:
    {"constraint", "decided by", "route", "bytes", "delta_ppl_pct", "matmul_time_vs_dense"}; route None
    when none qualifies."""
    if not isinstance(budget_pct, (int, float)) or isinstance(budget_pct, bool) or not budget_pct >= 0:
        raise ValueError(f"budget_pct must be a number >= 0 (percent), got {budget_pct!r}")
    table = []
    for constraint, decided_by, allowed in CONSTRAINTS:
        ok = [r for r in rows if allowed(r) and r["delta_ppl_pct"][2] <= budget_pct]
        key = ((lambda r: (r["matmul_time_vs_dense"], r["delta_log_ppl"][0])) if decided_by.startswith("least")
               else (lambda r: (r["bytes"], r["delta_log_ppl"][0])))
        pick = min(ok, key=key) if ok else None
        table.append({"constraint": constraint, "decided by": decided_by, "route": pick and pick["route"],
                      **{k: pick and pick[k] for k in ("bytes", "delta_ppl_pct", "matmul_time_vs_dense")}})
    return table


def leaderboard_frame(rows: list[dict], gpu_rows: list[dict] = ()) -> "pd.DataFrame":
    """The leaderboard as a table, one row per route: weights, MB, bytes × dense, perplexity, its change
    [95% interval] and verdict, predicted matmul time at a large batch ("batch time"), this device's decode ms/token,
    and from ``gpu_rows`` (the rows of a GPU record, matched by route) tokens/s with the fraction of the
    memory-bound speed of light, "pending" where there is none."""
    import pandas as pd

    from lab.core.stats import verdict

    gpu = {r["route"]: r for r in gpu_rows}
    dense_bytes = rows[0]["bytes"]
    table = []
    for r in rows:
        mid, low, high = r["delta_ppl_pct"]
        g = gpu.get(r["route"])
        table.append({"route": r["route"], "weights": f"{r['params']:,}", "MB": r["bytes"] / 1e6,
                      "× dense": r["bytes"] / dense_bytes, "ppl": r["perplexity"],
                      "Δ ppl % (95% CI)": f"{mid:+.2f} [{low:+.2f}, {high:+.2f}]",
                      "verdict": "reference" if r is rows[0] else verdict(*r["delta_log_ppl"][1:]),
                      "batch time (pred.)": r["matmul_time_vs_dense"],
                      "CPU ms/token": r["decode_ms_per_token"],
                      "GPU tokens/s (× SOL)":
                          f"{g['tokens_per_s']:,.0f} ({g['fraction_of_sol']:.2f})" if g else "pending"})
    return pd.DataFrame(table).set_index("route")
