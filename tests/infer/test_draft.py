"""The committed draft checkpoint of chapter 6 (`python -m lab.infer.draft`): what it is and where it came from."""

from __future__ import annotations

import json

import pytest

from lab.data import eval_tokens
from lab.infer.draft import DRAFT_DIR, load_draft
from lab.models import load_pretrained_lm, load_tokenizer
from lab.models.pretrained import LM_DIR, checkpoint_sha256
from lab.perplexity import perplexity


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((DRAFT_DIR / "training_record.json").read_text())


def test_draft_is_a_two_layer_copy_of_the_target_architecture():
    draft, target = load_draft(), load_pretrained_lm("lab")
    assert draft.config.n_layer == 2
    assert {**draft.config.to_dict(), "n_layer": 6} == target.config.to_dict()
    assert (DRAFT_DIR / "tokenizer.json").read_bytes() == (LM_DIR / "tokenizer.json").read_bytes()


def test_draft_checkpoint_matches_its_record(record):
    assert checkpoint_sha256(DRAFT_DIR) == record["model_safetensors_sha256"]
    assert record["target_sha256"] == checkpoint_sha256(LM_DIR)     # distilled from the committed target
    assert record["command"].startswith("python -m lab.infer.draft")


def test_draft_perplexity_is_the_recorded_one(record):
    tokens = eval_tokens(load_tokenizer(), record["eval_tokens"])
    ppl = perplexity(load_draft(), tokens, stride=128)
    assert ppl == pytest.approx(record["draft_eval_perplexity_bf16_checkpoint"], rel=1e-4)
    assert record["target_eval_perplexity"] < ppl < 2 * record["target_eval_perplexity"]
