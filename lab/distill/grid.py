"""Suite ``distill-grid`` of `lab.bench` (chapter 4): the notebook's (τ, α) grid at every batch seed.

`notebooks/04_distillation` compares, at each temperature τ, α = 0.5 with α = 1 on the 2-layer teacher-initialised
student, over three batch orders stacked (seeds and documents resampled together). Training every cell of the grid
at every seed does not fit the notebook's time on one CPU core, so this suite trains them, as the notebook did
(`lab.distill.experiments.temperature_alpha_grid` on the first ``steps`` batches of
`lm_batches(..., seed=seed)`), and keeps their per-document loss sums on the evaluation sample (experiment
``grid``, runs named by `cell_name`: "tau 1 alpha 0.5"). The notebook re-trains one cell at its own seed, checks it
against the record's row for that seed (`lab.core.records.seeded_sums`) and compares the rest from the record
(`lab.core.stats.compare_sums`).
"""

from __future__ import annotations

import torch

from lab.core.checks import check_fraction, check_number
from lab.distill.experiments import lm_batches, temperature_alpha_grid
from lab.distill.loop import TeacherCache
from lab.distill.seeds import record_by_seed

# The notebook's defaults (its parameters cell: EVAL_TOKENS, BATCH, SEQ, GRID_STEPS, TAUS, ALPHAS); it checks
# them against the record's.
SETTINGS = {"eval_tokens": 4096, "batch": 4, "seq": 64, "steps": 8, "depth": 2,
            "temperatures": [1.0, 2.0, 4.0, 8.0], "alphas": [0.5, 1.0]}
QUICK = {**SETTINGS, "eval_tokens": 512, "seq": 32, "steps": 2, "temperatures": [1.0, 8.0]}


def cell_name(tau: float, alpha: float) -> str:
    """The record's name of a grid cell: "tau 1 alpha 0.5" for τ = 1.0, α = 0.5 (τ > 0, α in [0, 1], numbers)."""
    check_number("tau", tau, 0.0, closed=(False, True))
    check_fraction("alpha", alpha)
    return f"tau {tau:g} alpha {alpha:g}"


def grid_losses(teacher, train_ids: torch.Tensor, sample, settings: dict,
                seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every cell of the grid trained on the batches of ``seed``: ({`cell_name`: per-token NLL on ``sample``
    (N,) float64}, sample.documents (N,) int64).

    ``teacher``: the lab GPT the students are cut from; ``train_ids``: 1-D int64 train ids; ``settings``: as
    `SETTINGS`. The batches are `lm_batches(train_ids, steps, batch, seq, seed=seed)`, the first ``steps`` of
    the notebook's (its generator draws them in order).
    """
    s = settings
    batches = lm_batches(train_ids, s["steps"], s["batch"], s["seq"], seed=seed)
    rows = temperature_alpha_grid(TeacherCache(teacher), batches, sample, s["depth"], s["temperatures"], s["alphas"],
                                  steps=s["steps"], progress=False)
    return {cell_name(r["tau"], r["alpha"]): r["token_losses"] for r in rows}, sample.documents


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """`grid_losses` (experiment "grid") at each seed of `SEEDS` (`lab.distill.seeds.record_by_seed`).
    quick=True: `QUICK`'s tiny settings."""
    settings = QUICK if quick else SETTINGS
    return record_by_seed("distill-grid", device, settings, progress,
                          lambda teacher, train_ids, sample, seed: {
                              "grid": grid_losses(teacher, train_ids, sample, settings, seed)})
