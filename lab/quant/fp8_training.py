"""Suite ``fp8-training`` of `lab.bench` (chapter 5): the book's model trained with bf16 and with FP8 GEMM inputs.

Each run continues the pretrained model's training on the train split, `SETTINGS`' steps of B × T tokens (the
batches of seed k + 1, `lab.models.next_token.train_lm`: AdamW, warm-up then cosine, clipping at 1), with every
decoder linear's three GEMMs reading rounded inputs (`lab.quant.fp8_linear`, one run per recipe of `RECIPES`:
"bf16", "fp8 unscaled", "fp8 current", "fp8 delayed") and fp32 master weights, then scores the trained master
weights (float32) on the evaluation sample. The runs differ only in the rounding of the GEMM inputs, so a paired
comparison of their per-document losses (`lab.core.stats.compare_sums`, resampling seeds and documents) says
what FP8 training costs at this scale, and the loss curves show when. The notebook re-runs the FP8 run of its
seed and checks it against the record (`lab.core.records.seeded_sums`).

The record (`lab.seeded.run_seeded`'s) adds "curves": {recipe: [per seed: {"loss": per-step training losses,
"x_flushed", "w_flushed", "g_flushed", "x_saturated", ...: the fraction of each tensor's entries cast to 0 from
a non-zero value, or clipped, over the run, averaged over the layers}]}.
"""

from __future__ import annotations

import torch
from torch import nn

from lab.core.checks import check_choice, check_int
from lab.models.next_token import train_lm
from lab.quant.fp8_linear import RECIPES, low_precision_model, restore_linears
from lab.seeded import Methods, run_seeded

__all__ = ["train_with_recipe"]

SEEDS = (0, 1, 2)
SETTINGS = {"eval_tokens": 8192, "steps": 30, "batch": 4, "seq": 128,
            "lr": 1e-4, "warmup": 5, "history_len": 16}
QUICK = {**SETTINGS, "eval_tokens": 512, "steps": 2, "batch": 2, "seq": 32}


def train_with_recipe(model: nn.Module, recipe: str, train_ids: torch.Tensor, settings: dict, seed: int) -> dict:
    """Train ``model`` (a float32 lab `GPT`) in place with its decoder GEMMs rounded by ``recipe`` (`RECIPES`), on
    the batches of seed ``seed`` + 1, and put plain linears holding the trained master weights back.

    settings: "steps", "batch", "seq", "lr", "warmup", "history_len" (`SETTINGS`). Returns {"loss": per-step
    training losses} and, for the FP8 recipes, each counter of `restore_linears` averaged over the layers.
    """
    check_choice("recipe", recipe, RECIPES)
    check_int("seed", seed, 0)
    if not isinstance(settings, dict) or not set(SETTINGS) - {"eval_tokens"} <= settings.keys():
        raise TypeError(f"settings must be a dict with the keys of lab.quant.fp8_training.SETTINGS, got "
                        f"{settings!r:.200}")
    low_precision_model(model, recipe, settings["history_len"])
    record = train_lm(model, train_ids, steps=settings["steps"], batch_size=settings["batch"],
                      seq_len=settings["seq"], lr=settings["lr"], warmup=settings["warmup"], weight_decay=0.0,
                      seed=seed + 1, progress=False)
    counters = restore_linears(model)
    means = {key: sum(c[key] for c in counters.values()) / len(counters) for key in next(iter(counters.values()))}
    return {"loss": record["loss"], **means}


def methods(settings: dict, train_ids: torch.Tensor, curves: dict[str, list]) -> Methods:
    """{"recipes": {recipe: (True, method(model, seed))}} (`lab.seeded.score_methods`); each method appends its
    run's `train_with_recipe` result to ``curves[recipe]``, one per seed in the order the seeds run."""
    def method(recipe: str):
        def run_recipe(model: nn.Module, seed: int) -> None:
            curves.setdefault(recipe, []).append(train_with_recipe(model, recipe, train_ids, settings, seed))
        return run_recipe
    return {"recipes": {recipe: (True, method(recipe)) for recipe in RECIPES}}


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Every recipe at each seed of `SEEDS`, on the CPU (the notebook's device): `lab.seeded.run_seeded`'s record
    plus "curves"."""
    settings = QUICK if quick else SETTINGS
    curves: dict[str, list] = {}
    record = run_seeded("fp8-training", device, settings, SEEDS, progress,
                        lambda lm, calibs, train_ids: methods(settings, train_ids, curves))
    record["curves"] = curves
    return record
