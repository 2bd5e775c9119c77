"""lab.params.seeds (suite params-seeds): chapter 1's training runs at each seed, kept as per-document sums that
a run at one seed reads back (`lab.core.records.seeded_sums`)."""

from __future__ import annotations

import json

import pytest
import torch

from lab.core.records import seeded_sums
from lab.models import load_pretrained_lm, load_tokenizer
from lab.params import seeds

RUNS = {"sharing": ["untied", "tied", "albert"], "sweep": ["0.001", "0.003", "0.01"],
        "task": ["pretrained", "adamw", "adafactor", "adam8bit", "int4 base", "LoRA", "QLoRA"],
        "forgetting": ["pretrained", "adamw", "LoRA"]}


def test_record_holds_every_run_at_each_seed_and_matches_a_direct_run(monkeypatch):
    settings = {**seeds.QUICK, "eval_tokens": 256, "sharing_steps": 1, "steps": 1}
    monkeypatch.setattr(seeds, "QUICK", settings)
    record = json.loads(json.dumps(seeds.run(torch.device("cpu"), quick=True, progress=False)))
    assert record["seeds"] == [0, 1, 2] and record["settings"] == settings
    experiments = record["experiments"]
    assert {name: list(e["sums"]) for name, e in experiments.items()} == RUNS
    assert sum(experiments["forgetting"]["sizes"]) == 256                # tokens from the test documents
    task = experiments["task"]["sums"]
    assert task["pretrained"][0] == task["pretrained"][2] and task["adamw"][0] != task["adamw"][1]  # batch order
    assert task["LoRA"][0] != task["LoRA"][1]
    lm, tokenizer = load_pretrained_lm("lab"), load_tokenizer()
    for name, (losses, groups) in seeds.task_losses(lm, tokenizer, settings, 2).items():
        sums, sizes = seeded_sums(record, name, {"lr": settings["lr"]}, 2, losses, groups, tolerance=1e-9)
        assert sums["pretrained" if name != "sweep" else "0.003"].shape == (3, len(sizes))


def test_runs_on_the_cpu_only():
    with pytest.raises(ValueError, match="runs on the cpu"):
        seeds.run(torch.device("cuda"), quick=True)
