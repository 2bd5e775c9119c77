"""lab.distill.seeds (suite distill-seeds): every student (language model and encoder) at each seed, kept as
per-document sums that a run of the same students at one seed reads back (`lab.core.records.seeded_sums`)."""

from __future__ import annotations

import json

import pytest
import torch

from lab.core.records import seeded_sums
from lab.data import eval_sample, tokenize_split
from lab.distill import seeds
from lab.models import load_pretrained_encoder, load_pretrained_lm, load_tokenizer


def test_record_holds_each_seed_and_matches_a_direct_run(monkeypatch):
    settings = {**seeds.QUICK, "lm_runs": [[2, "hard", "teacher"], [2, "kd", "teacher"]], "eval_tokens": 256}
    monkeypatch.setattr(seeds, "QUICK", settings)
    record = json.loads(json.dumps(seeds.run(torch.device("cpu"), quick=True, progress=False)))
    assert record["seeds"] == [0, 1, 2] and record["settings"] == settings
    entry = record["experiments"]["lm"]
    assert sum(entry["sizes"]) == 256 and sorted(entry["sums"]) == ["2_hard_teacher", "2_kd_teacher"]
    rows = entry["sums"]["2_kd_teacher"]
    assert len(rows) == 3 and len(rows[0]) == len(entry["sizes"]) and rows[0] != rows[1]   # batch orders differ
    tokenizer = load_tokenizer()
    sample = eval_sample(tokenizer, 256)
    losses, groups = seeds.student_losses(load_pretrained_lm("lab"), tokenize_split("train", tokenizer), sample,
                                          settings, 1)
    sums, sizes = seeded_sums(record, "lm", {"steps": 2}, 1, losses, groups, tolerance=1e-9)
    assert sums["2_hard_teacher"].shape == (3, len(sizes))
    encoder = record["experiments"]["encoder"]                         # the encoder students, same paragraphs
    assert sorted(encoder["sums"]) == ["hard", "kd"] and len(encoder["sums"]["kd"]) == 3
    errors, pages = seeds.encoder_errors(*load_pretrained_encoder(), settings, 2)
    assert sum(encoder["sizes"]) == len(pages) and all(0 <= e <= n for row in encoder["sums"]["kd"]
                                                       for e, n in zip(row, encoder["sizes"]))
    seeded_sums(record, "encoder", {"encoder": settings["encoder"]}, 2, errors, pages, tolerance=1e-9)


def test_runs_on_the_cpu_only():
    with pytest.raises(ValueError, match="runs on the cpu"):
        seeds.run(torch.device("cuda"), quick=True)
