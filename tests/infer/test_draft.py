"""The committed draft checkpoint of chapter 6 (`python -m lab.infer.draft`): what it is and where it came from;
`teacher_forced`, the pair scored on the evaluation sample, against `EvalSample.token_losses` and by hand."""

from __future__ import annotations

import json

import pytest
import torch

from lab.data import eval_sample, tokenize_split
from lab.infer.draft import DRAFT_DIR, load_draft, teacher_forced
from lab.infer.ngram import prompt_lookup_draft, sample_lookup_drafts
from lab.models import GPT, GPTConfig, load_pretrained_lm, load_tokenizer
from lab.models.pretrained import LM_DIR, checkpoint_sha256
from lab.perplexity import EvalSample, perplexity


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
    """The committed record predates `eval_sample`: its perplexities are on the first tokens of the test split."""
    tokens = tokenize_split("test", load_tokenizer())[:record["eval_tokens"]]
    ppl = perplexity(load_draft(), tokens, stride=128)
    assert ppl == pytest.approx(record["draft_eval_perplexity_bf16_checkpoint"], rel=1e-4)
    assert record["target_eval_perplexity"] < ppl < 2 * record["target_eval_perplexity"]


def test_teacher_forced_scores_both_models_on_the_sample():
    cfg = GPTConfig(vocab_size=50, context_length=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64)
    torch.manual_seed(0)
    target, draft = GPT(cfg).eval(), GPT(cfg).eval()
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randint(0, 50, (20,), generator=g), torch.randint(0, 50, (12,), generator=g))
    n_context = (8, 3)
    tokens = torch.cat([x[c:] for x, c in zip(inputs, n_context)])
    sample = EvalSample(inputs, n_context, tokens, torch.tensor([0] * 12 + [1] * 9))
    drafts = torch.cat([prompt_lookup_draft(x[None], 1)[0, c - 1:-1] for x, c in zip(inputs, n_context)])
    assert torch.equal(sample_lookup_drafts(sample, 1), drafts)
    out = teacher_forced(target, draft, sample, {"n1": drafts})
    assert torch.allclose(out["target_nll"], sample.token_losses(target), atol=1e-6)
    assert torch.allclose(out["draft_nll"], sample.token_losses(draft), atol=1e-6)
    x, c = inputs[1], n_context[1]                                      # the second window by hand
    with torch.no_grad():
        p, q = (torch.softmax(m(x[None])[0, c - 1:-1], -1) for m in (target, draft))
    rows = slice(12, 21)
    assert torch.allclose(out["alpha"][rows], torch.minimum(p, q).sum(-1).double(), atol=1e-6)
    assert torch.equal(out["argmax_agree"][rows], (p.argmax(-1) == q.argmax(-1)).double())
    has = drafts >= 0
    assert out["p_draft_n1"][~has].isnan().all() and not out["p_draft_n1"][has].isnan().any()
    d = drafts[rows]
    assert torch.allclose(out["p_draft_n1"][rows][d >= 0], p[d >= 0].gather(-1, d[d >= 0, None])[:, 0].double())
    with pytest.raises(ValueError, match="drafts"):
        teacher_forced(target, draft, sample, {"bad": drafts[:3]})


def test_sample_pair_on_the_book_models_draft_is_worse():
    sample = eval_sample(load_tokenizer(), 1024)
    out = teacher_forced(load_pretrained_lm("lab"), load_draft(), sample)
    assert out["draft_nll"].mean() > out["target_nll"].mean()
    assert 0.5 < out["alpha"].mean() < 1 and 0.5 < out["argmax_agree"].mean() < 1
