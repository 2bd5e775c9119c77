"""Suite ``leaderboard`` of `lab.bench` (chapter 7): every route of the book applied to one model.

The book's pretrained model (pydoc-gpt) goes through each route of `ROUTES`, and each result is
measured the same way, in one run:

* ``params``: the weights the stored form keeps (nonzero ones for the sparse routes);
* ``bytes``: the size of the stored form written with `lab.params.safetensors_io` (header, codes,
  scales, zero points, sparsity metadata, embeddings and norms: everything needed to run it);
  float tensors are stored in bf16;
* ``read_bytes``: the bytes a decode step reads (every weight once per token): ``bytes``, except that a
  weight stored as bit-packed codes with no kernel (int3) runs dequantized and is read in bf16;
* ``delta``: the paired comparison `lab.core.stats.compare` of its per-token losses against the dense
  bf16 model's on the same evaluation tokens (`lab.data.eval_sample`; ``Settings.eval_tokens``, by default
  every scorable token of the test split, where the chapters score an 8,192-token sample):
  Δ = mean(ℓ_route − ℓ_dense) nats with its 95% interval, which resamples the documents and, for a
  route that depends on a seed (``Route.seeded``: calibration windows, a student's training), the
  seeds of ``Settings.seeds`` together; the perplexity change 100·(e^Δ − 1) %; and its ``verdict``,
  Holm-corrected across the routes (`lab.core.stats.verdicts`);
* ``versus``: the same paired comparison against each route `VERSUS` pairs it with (the FP4 formats
  against int4), Δ = its log PPL − the other's, for the reader to correct as one family;
* ``matmul_time_vs_dense``: the time of the matmuls at a large batch (compute-bound) predicted from
  the dense-equivalent weights out·in of every linear over its tensor-core rate relative to bf16
  (`MATMUL_RATE`: int8 and 2:4-sparse tensor cores run at 2× bf16 dense on Hopper, datasheet), over
  the dense model's;
* ``decode_ms_per_token``: greedy decoding with the KV cache on this device, the median time of
  ``prompt + n`` generated tokens less that of ``prompt + 1``, divided by n − 1 (`lab.core.timing`);
* on a GPU, ``tokens_per_s`` and ``fraction_of_sol``: the memory-bound time ``bytes / bandwidth``
  (the device's datasheet bandwidth, `lab.core.ceilings`) over the measured time per token.

The evaluated model is the stored form itself (its modules: `Int4Linear`, `W8A8Linear`,
`Sparse24Linear`, `FP4Linear`), with every float tensor rounded to bf16, as it would be loaded from disk. int3
has no kernel in `lab`: its codes are stored bit-packed and it runs as dequantized float weights.
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

from lab.capstone.pareto import dominance
from lab.capstone.routes import MATMUL_RATE, ROUTES, VERSUS, FP4Linear, Route, Settings
from lab.core.checks import check_choice, check_device, check_int, check_tensor
from lab.core.records import REPO_ROOT, device_name
from lab.core.report import COMPARISON_KEYS, percent
from lab.core.stats import compare, verdicts
from lab.core.timing import time_ms
from lab.formats.sparse24 import pack_bits
from lab.infer.generate import generate
from lab.models.gpt import GPT, check_gpt
from lab.models.next_token import random_batch
from lab.params.counting import unique_state_dict
from lab.params.safetensors_io import save_safetensors
from lab.perplexity import EvalSample
from lab.prune.semi_structured import Sparse24Linear
from lab.quant.affine import QuantizedTensor, dequantize
from lab.quant.linear import Int4Linear, W8A8Linear

CONTEXT_KEYS = ("dense", "train_ids", "settings", "device", "seed", "calib", "dense_matmul_time")   # `seed_contexts`


def _check_codes(model: nn.Module, codes: dict) -> None:
    """codes: {name of a parameter of model: its QuantizedTensor} (an unknown name would be dropped silently)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(codes, dict):
        raise TypeError(f"codes must be a dict, got {type(codes).__name__}")
    names = dict(model.named_parameters())
    for name, qt in codes.items():
        if name not in names or not isinstance(qt, QuantizedTensor):
            raise ValueError(f"codes must map names of model's parameters to QuantizedTensors, got {name!r}: "
                             f"{type(qt).__name__}")


def _check_contexts(ctxs: list[dict], name: str = "ctxs") -> None:
    """ctxs: a non-empty list of the build contexts `seed_contexts` makes (``name`` "ctx": one of them)."""
    if not isinstance(ctxs, (list, tuple)) or not ctxs:
        raise (ValueError if isinstance(ctxs, (list, tuple)) else TypeError)(
            f"ctxs must be a non-empty list of build contexts (seed_contexts), got {type(ctxs).__name__}")
    for i, ctx in enumerate(ctxs):
        if not isinstance(ctx, dict) or set(CONTEXT_KEYS) - ctx.keys():
            raise ValueError(f"{name if name == 'ctx' else f'{name}[{i}]'} must be a build context: a dict with the "
                             f"keys {CONTEXT_KEYS} (seed_contexts), got "
                             f"{sorted(ctx) if isinstance(ctx, dict) else type(ctx).__name__}")


@torch.no_grad()
def round_to_bf16(model: nn.Module) -> nn.Module:
    """Every float parameter and buffer rounded to the nearest bf16 value, in place (dtypes kept)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            tensor.copy_(tensor.to(torch.bfloat16))
    return model


def stored_tensors(model: nn.Module, codes: dict) -> dict[str, torch.Tensor]:
    """The tensors of the stored form: the state dict with shared tensors once (a tied head), floats in
    bf16, and each weight named in ``codes`` replaced by its b-bit codes packed LSB-first per row
    (``.codes``, uint8) with its scales (bf16) and zero points (uint8): `unique_state_dict` in bf16
    with the codes swapped in."""
    _check_codes(model, codes)
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
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict, got {type(tensors).__name__}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_safetensors(tensors, path, checksum=False)
        return path.stat().st_size


def kept_weights(model: nn.Module, codes: dict) -> int:
    """Weights the stored form keeps: the nonzero float parameters (a shared tensor once; all of a
    weight stored as ``codes``) plus the codes of the `Int4Linear`/`W8A8Linear`/`FP4Linear`s and the kept
    values of the `Sparse24Linear`s."""
    _check_codes(model, codes)
    count, seen = sum(qt.qdata.numel() for qt in codes.values()), {model.get_parameter(n).data_ptr() for n in codes}
    for module in model.modules():
        if isinstance(module, (Int4Linear, W8A8Linear, FP4Linear)):
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
    (`MATMUL_RATE`: `W8A8Linear` int8, `Sparse24Linear` 2:4 sparse, every other linear bf16, weight-only
    `Int4Linear` and `FP4Linear` included)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rate = lambda m: MATMUL_RATE["int8" if isinstance(m, W8A8Linear) else
                                 "2:4 sparse" if isinstance(m, Sparse24Linear) else "bf16"]
    return sum(m.out_features * m.in_features / rate(m) for m in model.modules()
               if isinstance(m, (nn.Linear, Int4Linear, W8A8Linear, Sparse24Linear, FP4Linear)))


def decode_ms_per_token(model: GPT, prompt: torch.Tensor, n: int, device: torch.device, repeats: int) -> float:
    """Median ms per generated token of greedy KV-cache decoding: (t(prompt + n) − t(prompt + 1)) / (n − 1)."""
    check_gpt("model", model)
    check_tensor("prompt", prompt, 2, (torch.int64,))
    check_int("repeats", repeats)
    if check_int("n", n, None) < 2:
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


def build(route: Route, ctx: dict) -> tuple[GPT, dict]:
    """The route's stored form on the context's device with every float rounded to bf16, and its codes
    (the weights of the codes loaded back from them, as from disk)."""
    if not isinstance(route, Route):
        raise TypeError(f"route must be a Route, got {type(route).__name__}")
    _check_contexts([ctx], "ctx")
    model, codes = route.build(ctx)
    model = round_to_bf16(model.to(ctx["device"]).eval())
    with torch.no_grad():
        for name, qt in codes.items():
            model.get_parameter(name).copy_(dequantize(qt))
    return model, codes


def measure(route: Route, ctxs: list[dict], sample: EvalSample) -> tuple[dict, torch.Tensor]:
    """One row of the leaderboard (see the module docstring) without its Δ, and the route's per-token
    losses, (S, n) float64: one row per seed context in ``ctxs`` (one for a route that is not seeded)."""
    if not isinstance(route, Route):
        raise TypeError(f"route must be a Route, got {type(route).__name__}")
    _check_contexts(ctxs)
    if not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be a lab.perplexity.EvalSample, got {type(sample).__name__}")
    s, device = ctxs[0]["settings"], ctxs[0]["device"]
    losses = []
    for ctx in ctxs if route.seeded else ctxs[:1]:
        model, codes = build(route, ctx)
        losses.append(sample.token_losses(model))
    prompt = sample.tokens[:s.decode_prompt][None].to(device)            # the last seed's model is timed
    stored = stored_bytes(stored_tensors(model, codes))
    row = {"route": route.name, "params": kept_weights(model, codes), "bytes": stored,
           "read_bytes": stored_bytes(stored_tensors(model, {})) if codes else stored, "n_seeds": len(losses),
           "perplexity": math.exp(torch.stack(losses).mean().item()),
           "matmul_time_vs_dense": matmul_time(model) / ctxs[0]["dense_matmul_time"],
           "decode_ms_per_token": decode_ms_per_token(model, prompt, s.decode_tokens, device, s.repeats),
           "calibration": route.calibration, "training": route.training, "matmul": route.matmul}
    if device.type == "cuda":
        from lab.core.ceilings import device_ceilings

        ceilings = device_ceilings(device)                     # bandwidth in bytes/s, measured or datasheet
        row["tokens_per_s"] = 1e3 / row["decode_ms_per_token"]
        row["fraction_of_sol"] = row["read_bytes"] / ceilings.bandwidth / (row["decode_ms_per_token"] / 1e3)
        row["sol_source"] = ceilings.source
    return row, torch.stack(losses)


def seed_contexts(dense: GPT, train_ids: torch.Tensor, settings: Settings, device: torch.device) -> list[dict]:
    """One build context per seed of ``settings.seeds``: the bf16 dense model, the calibration windows drawn
    from ``train_ids`` with that seed, the settings; routes of one seed share it (a student is trained once)."""
    check_gpt("dense", dense)
    if not isinstance(settings, Settings):
        raise TypeError(f"settings must be a Settings, got {type(settings).__name__}")
    cfg = dense.config
    for name, length in (("calib_len", settings.calib_len), ("student_seq", settings.student_seq)):
        if length > cfg.context_length:
            raise ValueError(f"settings.{name}={length} exceeds the model's context_length={cfg.context_length}")
    check_tensor("train_ids", train_ids, 1, (torch.int64,))
    if len(train_ids) < max(settings.calib_len, settings.student_seq) + 2 or not (
            0 <= int(train_ids.min()) and int(train_ids.max()) < cfg.vocab_size):
        raise ValueError(f"train_ids must hold more than max(calib_len, student_seq) + 1 ids in [0, vocab_size="
                         f"{cfg.vocab_size}), got {len(train_ids)} ids")
    device = check_device("device", device)
    base = round_to_bf16(copy.deepcopy(dense).to(device).eval())
    shared = {"dense": base, "train_ids": train_ids, "settings": settings, "device": device,
              "dense_matmul_time": matmul_time(base)}
    return [{**shared, "seed": seed, "calib": random_batch(train_ids, settings.calib_samples, settings.calib_len,
                                                          torch.Generator().manual_seed(seed))[0].to(device)}
            for seed in settings.seeds]


def leaderboard(dense: GPT, sample: EvalSample, train_ids: torch.Tensor, settings: Settings = Settings(),
                device: torch.device | str = "cpu", routes: tuple[Route, ...] = ROUTES,
                progress: bool = True) -> list[dict]:
    """The rows of every route in ``routes`` on ``dense`` (a lab `GPT`, copied, never changed).

    ``sample``: the evaluation sample (`lab.data.eval_sample`); ``train_ids``: (M,) int64 ids from which
    the calibration windows and the student's batches are drawn, at each seed of ``settings.seeds``. The
    first route is the reference of every Δ (its own Δ is 0); each row's ``verdict`` is Holm-corrected
    across the other routes, ``versus`` holds its `VERSUS` comparisons, and ``dominated_by``
    lists the routes that dominate it (`pareto.dominance`).
    """
    check_gpt("dense", dense)
    if not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be a lab.perplexity.EvalSample, got {type(sample).__name__}")
    sample.check_fits(dense.config.context_length, "dense.config.context_length")
    if not isinstance(routes, (tuple, list)) or not all(isinstance(r, Route) for r in routes):
        raise TypeError(f"routes must be a tuple of Routes, got {routes!r:.80}")
    if not routes:
        raise ValueError("routes is empty: nothing to measure")
    check_choice("progress", progress, (True, False))
    device = check_device("device", device)
    ctxs = seed_contexts(dense, train_ids, settings, device)
    stamp = {"commit": git_commit(), "device": device_name(device),
             "command": "python -m lab.bench leaderboard --device " + device.type}
    rows, losses = [], []
    for route in tqdm(routes, desc="leaderboard", disable=not progress):
        row, route_losses = measure(route, ctxs, sample)
        rows.append({**row, **stamp})
        losses.append(route_losses)
    comparisons = {r["route"]: compare(losses[0], route_losses, sample.documents)
                   for r, route_losses in zip(rows[1:], losses[1:])}
    verbs = verdicts(comparisons) if comparisons else {}
    for row in rows:
        cmp = comparisons.get(row["route"], {"delta_log_ppl": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p": 1.0})
        row["delta_log_ppl"] = [cmp["delta_log_ppl"], cmp["ci_low"], cmp["ci_high"]]
        row["delta_ppl_pct"] = [percent(d) for d in row["delta_log_ppl"]]
        row["p"], row["verdict"] = cmp["p"], verbs.get(row["route"], "reference")
        row["n_documents"] = int(sample.documents.unique().numel())
    for row, versus_row in zip(rows, _versus(rows, losses, sample.documents)):
        row["versus"] = versus_row
    for row, dominated_by in zip(rows, dominance(rows, losses, sample.documents)):
        row["dominated_by"] = dominated_by
    return rows


def _versus(rows: list[dict], losses: list[torch.Tensor], documents: torch.Tensor) -> list[dict]:
    """For each row, {other route: `compare` of the other's losses with its own (Δ = its log PPL − the other's;
    the keys `lab.core.report.record_comparisons` reads)} for each route `VERSUS` pairs it with that is among
    ``rows``; ``losses``: per row, its (S, n) per-token losses; ``documents`` (n,)."""
    index = {row["route"]: i for i, row in enumerate(rows)}
    result = []
    for row, route_losses in zip(rows, losses):
        pairs = {other: compare(losses[index[other]], route_losses, documents)
                 for other in VERSUS.get(row["route"], ()) if other in index}
        result.append({other: {k: cmp[k] for k in sorted(COMPARISON_KEYS)} for other, cmp in pairs.items()})
    return result


def slug(text: str) -> str:
    """A record-name form of a route or constraint: lower case, each run of other characters one "_"."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
