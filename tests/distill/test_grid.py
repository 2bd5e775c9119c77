"""lab.distill.grid (suite distill-grid): chapter 4's (τ, α) grid at one seed, as its notebook trains a cell, and
the suite's record of every cell at every seed (with the training stubbed: `lab.core.records` has the sums' own
tests). Tiny models: a 4-layer tiny GPT as the teacher, random ids as the train split."""

from __future__ import annotations

import json

import pytest
import torch

from lab.distill import TeacherCache, grid
from lab.distill import seeds as distill_seeds
from lab.distill.experiments import lm_batches, temperature_alpha_grid
from lab.perplexity import EvalSample
from tests.tiny_models import tiny_gpt

TINY = {"eval_tokens": 18, "batch": 2, "seq": 8, "steps": 2, "depth": 2, "temperatures": [1.0, 4.0],
        "alphas": [0.5, 1.0]}
TRAIN_IDS = torch.randint(0, 61, (400,), generator=torch.Generator().manual_seed(0))


def tiny_sample() -> EvalSample:
    """18 scored tokens in 3 windows of 3 documents, each window 2 context tokens + 6 scored (fits 16)."""
    windows = tuple(torch.randint(0, 61, (8,), generator=torch.Generator().manual_seed(g)) for g in range(3))
    return EvalSample(windows, (2, 2, 2), torch.cat([w[2:] for w in windows]), torch.arange(3).repeat_interleave(6))


def test_cell_names_and_their_bad_input():
    assert grid.cell_name(1.0, 0.5) == "tau 1 alpha 0.5" and grid.cell_name(8, 1) == "tau 8 alpha 1"
    with pytest.raises(ValueError, match="tau"):
        grid.cell_name(0.0, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        grid.cell_name(1.0, 1.5)
    with pytest.raises(TypeError, match="alpha"):
        grid.cell_name(1.0, True)


def test_every_cell_at_one_seed_is_the_notebooks_cell_on_the_first_batches():
    teacher, sample = tiny_gpt(n_layer=4), tiny_sample()
    losses, groups = grid.grid_losses(teacher, TRAIN_IDS, sample, TINY, 1)
    assert list(losses) == ["tau 1 alpha 0.5", "tau 1 alpha 1", "tau 4 alpha 0.5", "tau 4 alpha 1"]
    assert torch.equal(groups, sample.documents)
    assert all(v.shape == (18,) and v.dtype == torch.float64 for v in losses.values())
    assert not torch.equal(losses["tau 4 alpha 0.5"], losses["tau 4 alpha 1"])
    # the notebook re-trains one cell on the first steps of its longer batch order
    longer = lm_batches(TRAIN_IDS, 5, TINY["batch"], TINY["seq"], seed=1)[:TINY["steps"]]
    cell = temperature_alpha_grid(TeacherCache(teacher), longer, sample, 2, [4.0], [0.5], steps=TINY["steps"],
                                  progress=False)[0]
    assert torch.equal(cell["token_losses"], losses["tau 4 alpha 0.5"])
    other, _ = grid.grid_losses(teacher, TRAIN_IDS, sample, TINY, 2)
    assert not torch.equal(other["tau 4 alpha 0.5"], losses["tau 4 alpha 0.5"])    # another batch order


def test_record_holds_every_cell_at_each_seed(monkeypatch):
    def fake(teacher, ids, sample, settings, seed):        # seed-dependent losses on 6 tokens of 3 groups
        return {"tau 1 alpha 1": torch.full((6,), 1.0 + seed, dtype=torch.float64)}, torch.arange(6) // 2

    for name in ("load_pretrained_lm", "load_tokenizer", "eval_sample", "tokenize_split"):
        monkeypatch.setattr(distill_seeds, name, lambda *args, **kwargs: None)   # record_by_seed's loads
    monkeypatch.setattr(grid, "grid_losses", fake)
    record = json.loads(json.dumps(grid.run(torch.device("cpu"), quick=True, progress=False)))
    assert record["seeds"] == [0, 1, 2] and record["settings"] == grid.QUICK and record["threads"] >= 1
    assert record["experiments"] == {"grid": {"sizes": [2, 2, 2],
                                              "sums": {"tau 1 alpha 1": [[2.0] * 3, [4.0] * 3, [6.0] * 3]}}}


def test_runs_on_the_cpu_only():
    with pytest.raises(ValueError, match="runs on the cpu"):
        grid.run(torch.device("cuda"), quick=True)
