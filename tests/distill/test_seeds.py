"""lab.distill.seeds (suite distill-seeds): chapter 4's language-model and encoder students at one seed, as its
notebook runs them, and the suite's record of every seed (with the runs stubbed: `lab.core.records` has the
sums' own tests)."""

from __future__ import annotations

import json

import pytest
import torch

from lab.data import eval_sample, tokenize_split
from lab.distill import seeds
from lab.models import load_pretrained_encoder, load_pretrained_lm, load_tokenizer

TINY = {**seeds.QUICK, "lm_runs": [[2, "hard", "teacher"], [2, "kd", "teacher"]], "eval_tokens": 256}


def test_students_at_one_seed_differ_by_their_loss_and_score_the_same_tokens():
    tokenizer = load_tokenizer()
    sample = eval_sample(tokenizer, 256)
    losses, groups = seeds.student_losses(load_pretrained_lm("lab"), tokenize_split("train", tokenizer), sample,
                                          TINY, 1)
    assert list(losses) == ["2_hard_teacher", "2_kd_teacher"] and torch.equal(groups, sample.documents)
    assert losses["2_kd_teacher"].shape == (256,) and not torch.equal(losses["2_kd_teacher"], losses["2_hard_teacher"])
    errors, pages = seeds.encoder_errors(*load_pretrained_encoder(), TINY, 1)
    assert sorted(errors) == ["hard", "kd"] and errors["kd"].shape == pages.shape
    assert set(errors["kd"].tolist()) <= {0.0, 1.0}                      # 1 − correct, per paragraph


def test_record_holds_every_run_at_each_seed(monkeypatch):
    def fake(seed):                                  # seed-dependent losses on 6 tokens of 3 groups
        return {"a": torch.full((6,), 1.0 + seed, dtype=torch.float64)}, torch.arange(6) // 2

    for name in ("load_pretrained_lm", "eval_sample", "tokenize_split"):
        monkeypatch.setattr(seeds, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(seeds, "load_pretrained_encoder", lambda: (None, None))
    monkeypatch.setattr(seeds, "encoder_unavailable", lambda: None)
    monkeypatch.setattr(seeds, "student_losses", lambda teacher, ids, sample, settings, seed: fake(seed))
    monkeypatch.setattr(seeds, "encoder_errors", lambda encoder, tokenizer, settings, seed: fake(2 * seed))
    record = json.loads(json.dumps(seeds.run(torch.device("cpu"), quick=True, progress=False)))
    assert record["seeds"] == [0, 1, 2] and record["settings"] == seeds.QUICK and record["threads"] >= 1
    assert record["experiments"]["lm"] == {"sizes": [2, 2, 2], "sums": {"a": [[2.0] * 3, [4.0] * 3, [6.0] * 3]}}
    assert record["experiments"]["encoder"]["sums"]["a"][2] == [10.0] * 3


def test_runs_on_the_cpu_only():
    with pytest.raises(ValueError, match="runs on the cpu"):
        seeds.run(torch.device("cuda"), quick=True)
