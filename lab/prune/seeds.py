"""Suite ``prune-seeds`` of `lab.bench` (chapter 2): the notebook's pruning runs at every calibration seed.

Wanda and SparseGPT read calibration data, so their perplexity depends on which windows they saw; the chapter's
intervals resample those seeds as well as the documents. Running every method at every seed does not fit the
notebook's three minutes, so this suite runs them and the notebook re-runs those of its own seed that it needs
and checks them against the record (`lab.core.records.seeded_sums`). Two experiments, each scored on the
notebook's evaluation tokens beside "fp32" (the book's model):

* ``sweep``: magnitude (over the whole matrix), Wanda and SparseGPT prune every decoder linear to each sparsity
  of `SPARSITIES`, unstructured ("wanda 50%"), and to 2:4 ("wanda 2:4");
* ``sensitivity``: Wanda at 50% on one decoder block at a time, the others dense ("block 0", ...).

Calibration: 32 windows of 128 train tokens per seed (`lab.models.next_token.calibration_windows`, the
notebook's windows). Magnitude pruning reads none: it runs once and stands for every seed.
"""

from __future__ import annotations

import re

import torch

from lab.core.checks import check_choice
from lab.prune.sequential import prune_model
from lab.seeded import Methods, run_seeded

SEEDS = (0, 1, 2)
SPARSITIES = (0.3, 0.5, 0.6, 0.7)
SETTINGS = {"eval_tokens": 8192, "calib_samples": 32, "calib_len": 128, "sparsities": list(SPARSITIES)}
QUICK = {**SETTINGS, "eval_tokens": 512, "calib_samples": 2, "calib_len": 32, "sparsities": [0.5]}


METHODS = ("magnitude", "wanda", "sparsegpt")


def sweep_name(method: str, pattern: str) -> str:
    """The record's name of a sweep run: ``sweep_name("wanda", "50%")`` is "wanda 50%"; pattern "2:4" for 2:4."""
    check_choice("method", method, METHODS)
    if not isinstance(pattern, str) or not (pattern == "2:4" or re.fullmatch(r"\d{1,2}%", pattern)):
        raise ValueError(f"pattern={pattern!r} must be a sparsity such as '50%' or '2:4'")
    return f"{method} {pattern}"


def methods(settings: dict, calibs: dict[int, torch.Tensor], n_layer: int) -> Methods:
    """{experiment: {run: (reads calibration data, method(model, seed))}} (`lab.seeded.score_methods`)."""
    patterns = {f"{s:.0%}": (s, None, None) for s in settings["sparsities"]} | {"2:4": (0.5, 2, 4)}
    sweep = {sweep_name(method, name): (method != "magnitude", lambda model, k, method=method, s=s, n=n, m=m:
                                        prune_model(model, method, s, None if method == "magnitude" else calibs[k],
                                                    n=n, m=m, progress=False))
             for method in METHODS for name, (s, n, m) in patterns.items()}
    sensitivity = {f"block {i}": (True, lambda model, k, i=i: prune_model(model, "wanda", 0.5, calibs[k],
                                                                          progress=False, layers=[i]))
                   for i in range(n_layer)}
    return {"sweep": sweep, "sensitivity": sensitivity}


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Every run of `methods` at each seed of `SEEDS`, on the CPU (the notebook's device): `lab.seeded.run_seeded`'s
    record."""
    settings = QUICK if quick else SETTINGS
    return run_seeded("prune-seeds", device, settings, SEEDS, progress,
                      lambda lm, calibs, train_ids: methods(settings, calibs, len(lm.layers)))
