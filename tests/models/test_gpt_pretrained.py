"""lab.models: the from-scratch GPT against transformers' Llama (same weights, same logits), the
pretrained checkpoints, and loading without a progress bar."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.models import GPT, from_llama, load_pretrained_encoder, load_pretrained_lm, to_llama
from lab.models.pretrained import LM_DIR, checkpoint_sha256, training_figures, training_record
from tests.tiny_models import tiny_config, tiny_gpt

# ---------------------------------------------------------------------------------------------
# lab.models: the from-scratch GPT against transformers' Llama
# ---------------------------------------------------------------------------------------------

@settings(max_examples=8, deadline=None, derandomize=True)
@given(n_head=st.sampled_from([2, 4, 8]), kv_divisor=st.sampled_from([1, 2, 4, 8]),
       head_dim=st.sampled_from([2, 8, 16]), n_layer=st.integers(1, 3),
       d_ff=st.integers(8, 64), tie=st.booleans(), T=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_gpt_logits_equal_transformers_llama(n_head, kv_divisor, head_dim, n_layer, d_ff, tie, T, seed):
    n_kv_head = max(1, n_head // kv_divisor)  # MHA, GQA and MQA
    model = tiny_gpt(seed, n_head=n_head, n_kv_head=n_kv_head, d_model=n_head * head_dim,
                     n_layer=n_layer, d_ff=d_ff, tie_embeddings=tie, rope_theta=500.0)
    hf = to_llama(model)
    idx = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)


def test_logits_to_keep_selects_positions_as_transformers_does():
    model = tiny_gpt(4)
    hf = to_llama(model)
    idx = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(idx)
        for keep, positions in [(3, slice(6, 9)), (torch.tensor([0, 4, 5]), [0, 4, 5])]:
            torch.testing.assert_close(model(idx, logits_to_keep=keep), full[:, positions], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(model(idx, logits_to_keep=keep), hf(idx, logits_to_keep=keep).logits,
                                       rtol=1e-5, atol=1e-5)
    for keep, error, match in [(-1, ValueError, r"logits_to_keep=-1 is out of range; allowed: \[0, 9\]"),
                               (True, TypeError, "logits_to_keep must be an int, got True"),
                               (torch.tensor([[1]]), ValueError, r"1-D int64 tensor, got shape \(1, 1\)")]:
        with pytest.raises(error, match=match):
            model(idx, logits_to_keep=keep)


def test_from_llama_round_trip_is_exact():
    model = tiny_gpt(3, tie_embeddings=False)
    back = from_llama(to_llama(model))
    assert back.config == model.config
    original, copied = model.state_dict(), back.state_dict()
    assert original.keys() == copied.keys()
    assert all(torch.equal(original[k], copied[k]) for k in original)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(change=st.sampled_from(["gelu", "linear rope", "head_dim", "bias"]))
def test_from_llama_refuses_a_llama_the_gpt_cannot_hold(change):
    """A Llama whose MLP, RoPE, head size or biases lab's GPT lacks is refused, not silently copied without them."""
    from transformers import LlamaForCausalLM

    from lab.models.pretrained import llama_config

    cfg = llama_config(tiny_config())
    if change == "gelu":
        cfg.hidden_act = "gelu"
    elif change == "linear rope":
        cfg.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10_000.0}
    elif change == "head_dim":
        cfg.head_dim = 16
    else:
        cfg.attention_bias = True
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"^hf (must be a plain Llama|has weights lab\.models\.GPT has no place for)"):
        from_llama(LlamaForCausalLM(cfg))


def test_to_llama_refuses_a_structurally_pruned_gpt():
    from lab.prune import structured_prune

    model = tiny_gpt()
    structured_prune(model, mlp_channels={1: [0, 5]})
    with pytest.raises(ValueError, match=r"^model has layers \[1\] narrower than its config gives"):
        to_llama(model)


@pytest.mark.parametrize("overrides, error, match", [
    ({"d_model": 0}, ValueError, r"GPTConfig.d_model=0 is out of range; allowed: \[1, inf\)"),
    ({"n_layer": 2.0}, TypeError, r"GPTConfig.n_layer must be an int, got 2.0"),
    ({"n_head": True}, TypeError, r"GPTConfig.n_head must be an int, got True"),
    ({"d_model": 30, "n_head": 4}, ValueError, r"d_model=30 must be divisible by n_head=4"),
    ({"n_head": 4, "n_kv_head": 3}, ValueError, r"n_head=4 must be divisible by n_kv_head=3"),
    ({"d_model": 12, "n_head": 4, "n_kv_head": 2}, ValueError, r"head dimension .* must be even"),
])
def test_gpt_config_rejects_bad_values(overrides, error, match):
    with pytest.raises(error, match=match):
        tiny_config(**overrides)


def test_gpt_rejects_bad_inputs():
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"idx must have shape \(B, T\)"):
        model(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="exceeds context_length=16"):
        model(torch.zeros(1, 17, dtype=torch.int64))


def test_pretrained_lm_loads_identically_in_both_implementations(tokenizer):
    hf = load_pretrained_lm("transformers")
    lab = load_pretrained_lm("lab")
    assert isinstance(lab, GPT)
    assert lab.num_parameters() == hf.num_parameters()
    ids = torch.tensor([tokenizer("The os module provides a portable way of using "
                                  "operating system dependent functionality.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(lab(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_committed_checkpoint_is_the_one_its_training_record_describes():
    """The bf16 weights on disk are byte-for-byte those the training run wrote (corruption check),
    and they reproduce the test-slice perplexity the run recorded."""
    record = json.loads((LM_DIR / "training_record.json").read_text())
    assert checkpoint_sha256() == record["model_safetensors_sha256"]
    assert record["n_parameters"] == load_pretrained_lm("lab").num_parameters() == 6_524_160


def test_training_figures_are_read_from_both_committed_records():
    from lab.infer.draft import DRAFT_DIR

    lm, draft = training_record(LM_DIR), training_record(DRAFT_DIR)
    figures = training_figures(lm, draft)
    assert figures["lm_train_minutes"] == lm["seconds"] / 60
    assert (figures["lm_val_ppl_first_step"], figures["lm_val_ppl_first"]) == tuple(lm["val_perplexity"][0])
    assert (figures["lm_val_ppl_last_step"], figures["lm_val_ppl_last"]) == tuple(lm["val_perplexity"][-1])
    assert figures["lm_val_ppl_first"] > figures["lm_val_ppl_last"]        # validation perplexity fell
    assert 1 < figures["lm_passes_over_train"] < 2                           # "about 1.6 passes"
    assert figures["draft_embedding_parameters"] == 8192 * 256
    assert figures["draft_ppl_before"] > figures["draft_ppl"] == draft["draft_eval_perplexity_bf16_checkpoint"]


def test_training_figures_refuse_a_record_of_another_kind(tmp_path):
    from lab.infer.draft import DRAFT_DIR

    lm, draft = training_record(LM_DIR), training_record(DRAFT_DIR)
    with pytest.raises(ValueError, match=r"lm is not a training record of its kind: it lacks .*'val_perplexity'"):
        training_figures(draft, draft)
    with pytest.raises(ValueError, match="not 0"):
        training_figures(lm, {**draft, "eval_perplexity": draft["eval_perplexity"][1:]})
    with pytest.raises(FileNotFoundError, match="has no training_record.json"):
        training_record(tmp_path)


def test_pretrained_lm_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"impl='jax' is not allowed"):
        load_pretrained_lm("jax")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_pretrained_lm("lab", path=tmp_path)


def test_loading_the_pretrained_models_draws_no_progress_bar(capfd):
    """A notebook's stored output must not keep transformers' "Loading weights" bar; the switch is restored."""
    from transformers.utils import logging as hf_logging

    load_pretrained_lm("lab")
    load_pretrained_encoder()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()


def test_pretrained_encoder_loads_offline():
    model, tok = load_pretrained_encoder()
    assert model.config.hidden_size == 384
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    batch = tok(["Parameters live in memory."], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (1, batch["input_ids"].shape[1], 384)
    assert torch.isfinite(hidden).all()
