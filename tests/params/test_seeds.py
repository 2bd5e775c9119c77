"""lab.params.seeds (suite params-seeds): chapter 1 and 1b's training runs at one seed, as their notebooks run
them, and the suite's record of every seed (with the runs stubbed: `lab.core.records` has the sums' own tests)."""

from __future__ import annotations

import json

import pytest
import torch

from lab.models import load_pretrained_lm, load_tokenizer
from lab.params import seeds

RUNS = {"sweep": ["0.001", "0.003", "0.01"],
        "task": ["pretrained", "adamw", "adafactor", "adam8bit", "int4 base", "LoRA", "QLoRA"],
        "forgetting": ["pretrained", "adamw", "LoRA"], "nf4": ["NF4 base", "QLoRA (NF4)"]}
# one step of 2 × 16 tokens; the held-out windows are the task document's last 1% and the sweep's 1% before
# them (2 groups each): the evaluations, not the steps, are what each run costs
TINY = {**seeds.QUICK, "eval_tokens": 256, "sharing_steps": 1, "steps": 1, "batch": 2, "seq": 16,
        "train_fraction": 0.99, "sweep_fraction": 0.98}


def test_task_losses_runs_every_fine_tuning_of_chapter_1b_and_leaves_the_model_unchanged():
    lm, tokenizer = load_pretrained_lm("lab"), load_tokenizer()
    before = {n: p.clone() for n, p in lm.state_dict().items()}
    out = seeds.task_losses(lm, tokenizer, TINY, 1)
    assert {name: list(losses) for name, (losses, _) in out.items()} == RUNS
    for name, (losses, groups) in out.items():
        assert all(v.shape == groups.shape and torch.isfinite(v).all() for v in losses.values()), name
    assert len(out["forgetting"][1]) == 256 and out["forgetting"][1].unique().numel() > 3   # every test document
    task = out["task"][0]
    assert not torch.equal(task["adamw"], task["pretrained"]) and not torch.equal(task["LoRA"], task["QLoRA"])
    nf4, groups = out["nf4"]
    assert torch.equal(groups, out["task"][1]) and not torch.equal(nf4["NF4 base"], nf4["QLoRA (NF4)"])
    assert not torch.equal(nf4["NF4 base"], task["int4 base"]) and not torch.equal(nf4["NF4 base"], task["pretrained"])
    assert all(torch.equal(before[n], p) for n, p in lm.state_dict().items())               # copies were trained
    losses, groups = seeds.sharing_losses(tokenizer, TINY, 1)
    assert list(losses) == ["untied", "tied", "albert"] and losses["tied"].shape == groups.shape == (256,)


def test_record_holds_every_run_at_each_seed(monkeypatch):
    def fake(seed):                                  # seed-dependent losses on 6 tokens of 3 groups
        return {"a": torch.full((6,), 1.0 + seed, dtype=torch.float64)}, torch.arange(6) // 2

    monkeypatch.setattr(seeds, "load_pretrained_lm", lambda name: None)
    monkeypatch.setattr(seeds, "sharing_losses", lambda tokenizer, settings, seed: fake(seed))
    monkeypatch.setattr(seeds, "task_losses", lambda lm, tokenizer, settings, seed: {"task": fake(seed)})
    monkeypatch.setattr(seeds, "bits_per_parameter", lambda lm, settings: {"QLoRA (NF4)": 4.127})
    record = json.loads(json.dumps(seeds.run(torch.device("cpu"), quick=True, progress=False)))
    assert record["seeds"] == [0, 1, 2] and record["settings"] == seeds.QUICK and record["threads"] >= 1
    assert record["experiments"]["task"] == {"sizes": [2, 2, 2], "sums": {"a": [[2.0] * 3, [4.0] * 3, [6.0] * 3]}}
    assert list(record["experiments"]) == ["sharing", "task"] and record["bits_per_parameter"] == {"QLoRA (NF4)": 4.127}


def test_bits_per_parameter_of_the_two_qlora_bases(tiny_gpt):
    bits = seeds.bits_per_parameter(tiny_gpt(), {"qlora_group": 16, "nf4_block": 16})
    # int4: fp32 scale and zero point per group of 16; NF4: 4 + 8/16 + 32/(16·B₂) with its last 256-block and mean
    assert bits["QLoRA"] == 4 + 64 / 16
    assert 4 + 8 / 16 + 32 / (16 * 256) < bits["QLoRA (NF4)"] < 4 + 8 / 16 + 0.1


def test_runs_on_the_cpu_only():
    with pytest.raises(ValueError, match="runs on the cpu"):
        seeds.run(torch.device("cuda"), quick=True)
