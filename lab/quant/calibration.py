"""Suite ``calibration`` of `lab.bench` (chapters 2 and 3): how much calibration data GPTQ, SparseGPT and Wanda need.

The papers calibrate on 128 windows of 2,048 tokens (262,144 tokens); the book's notebooks use 32 windows of
128 (4,096 tokens), to fit their three minutes. This suite runs each method on `SIZES` tokens of the train
split, 512 to 131,072 (4 to 1,024 windows of 128, drawn by `lab.models.next_token.random_batch` from
``torch.Generator().manual_seed(seed)``: at 4,096 tokens exactly the notebooks' calibration windows), at each
seed of `SEEDS`, and scores every model on the notebooks' evaluation tokens:

* ``GPTQ w3``: 3 bits, groups of 64 input columns (chapter 3's setting where GPTQ and RTN differ most);
* ``SparseGPT 50%`` and ``Wanda 50%``: unstructured, every decoder linear (chapter 2).

The record keeps per-document loss sums (`lab.core.records.add_seed`), runs named "GPTQ w3 · 4096", ...;
a notebook checks its own run at 4,096 tokens against the row of its seed (`lab.core.records.seeded_sums`)
and compares each size with the largest (`lab.core.stats.compare_sums`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from tqdm.auto import tqdm

from lab.core.records import add_seed
from lab.core.stats import compare_sums
from lab.data import eval_sample, tokenize_split
from lab.models import load_pretrained_lm, load_tokenizer
from lab.models.next_token import calibration_windows
from lab.prune.sequential import prune_model
from lab.quant.model import quantize_model

SEEDS = (0, 1, 2)
SIZES = tuple(512 * 2**k for k in range(9))        # 512 … 131,072 calibration tokens
WINDOW = 128                                       # tokens per calibration window
METHODS = {"GPTQ w3": lambda m, c: quantize_model(m, "gptq", 3, 64, c, progress=False),
           "SparseGPT 50%": lambda m, c: prune_model(m, "sparsegpt", 0.5, c, progress=False),
           "Wanda 50%": lambda m, c: prune_model(m, "wanda", 0.5, c, progress=False)}
SETTINGS = {"eval_tokens": 8192, "sizes": list(SIZES), "window": WINDOW}
QUICK = {**SETTINGS, "eval_tokens": 512, "sizes": [256, 512], "window": 32}


def size_comparisons(runs: dict[str, np.ndarray], sizes: np.ndarray, method: str, prefix: str
                     ) -> tuple[dict[str, dict], dict[str, dict]]:
    """Two families for ``method`` (a key of `METHODS`) from a record's sums (`lab.core.records.seeded_sums`):
    each calibration size n against fp32, ``{prefix}_{n}_vs_fp32``, and each size below the largest N against
    N, ``{prefix}_{n}_vs_{N}`` (`lab.core.stats.compare_sums`, seeds and documents resampled)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; use one of {tuple(METHODS)}")
    sizes_run = sorted(int(run.rsplit(" · ", 1)[1]) for run in runs if run.startswith(f"{method} · "))
    if not sizes_run or "fp32" not in runs:
        raise ValueError(f"runs has no 'fp32' run or no run of method={method!r}; give the sums of a calibration "
                         "record (lab.core.records.seeded_sums)")
    largest = runs[f"{method} · {sizes_run[-1]}"]
    vs_fp32 = {f"{prefix}_{n}_vs_fp32": compare_sums(runs["fp32"], runs[f"{method} · {n}"], sizes)
               for n in sizes_run}
    vs_largest = {f"{prefix}_{n}_vs_{sizes_run[-1]}": compare_sums(largest, runs[f"{method} · {n}"], sizes)
                  for n in sizes_run[:-1]}
    return vs_fp32, vs_largest


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Every method of `METHODS` at every size and seed, on the CPU (the notebooks' device). Returns {"seeds",
    "settings", "threads", "experiments": {"calibration": {"sizes", "sums": {run: (S, G) nested lists}}}}."""
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: suite calibration runs on the cpu, where the notebooks that "
                         "check against its record run")
    settings = QUICK if quick else SETTINGS
    tokenizer, lm = load_tokenizer(), load_pretrained_lm("lab")
    sample, train_ids = eval_sample(tokenizer, settings["eval_tokens"]), tokenize_split("train", tokenizer)
    fp32 = sample.token_losses(lm)
    todo = [(seed, name, size) for seed in SEEDS for name in METHODS for size in settings["sizes"]]
    results: dict[int, dict[str, torch.Tensor]] = {seed: {"fp32": fp32} for seed in SEEDS}
    for seed, name, size in tqdm(todo, desc="calibration", disable=not progress):
        model = copy.deepcopy(lm)
        METHODS[name](model, calibration_windows(train_ids, size, settings["window"], seed))
        results[seed][f"{name} · {size}"] = sample.token_losses(model)
    experiments: dict = {}
    for seed in SEEDS:
        add_seed(experiments, {"calibration": (results[seed], sample.documents)})
    return {"seeds": list(SEEDS), "settings": settings, "threads": torch.get_num_threads(), "experiments": experiments}
