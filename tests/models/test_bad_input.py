"""lab.models: every public name refuses bad input with a named TypeError / ValueError (see `tests.bad_input`).

The pretrained loaders refuse before anything is imported or loaded, so these cases cost nothing.
"""

from __future__ import annotations

import functools

import torch

from lab.models import (GPT, GPTConfig, calibration_windows, from_llama, lm_batch_loss, load_pretrained_lm,
                        load_tokenizer, random_batch, to_llama, train_lm, training_figures, training_record)
from lab.models.pretrained import LM_DIR
from lab.prune import structured_prune
from tests.bad_input import NOT_GPT, Bad, T, V
from tests.tiny_models import tiny_config, tiny_gpt

TOKENS = torch.arange(200) % 61
IDS = torch.tensor([[1, 2, 3]])


@functools.cache
def _model() -> GPT:
    return tiny_gpt()


class _Dict(torch.nn.Module):
    """A model that returns a dict (as a transformers model returns an output object), not the logits."""

    def forward(self, idx: torch.Tensor) -> dict:
        return {"logits": idx}


@functools.cache
def _pruned() -> GPT:
    model = tiny_gpt()
    structured_prune(model, heads={0: [0, 1]})
    return model


def _train(**kwargs):
    args = {"steps": 1, "batch_size": 2, "seq_len": 8, "progress": False}
    return train_lm(tiny_gpt(), **({"train_tokens": TOKENS} | args | kwargs))


GEN = torch.Generator().manual_seed(0)
BATCH = (TOKENS[:16].view(2, 8), TOKENS[1:17].view(2, 8))


@functools.cache
def _records() -> tuple[dict, dict]:
    """The stored training records of the pretrained LM and of the draft (lab.infer.draft.DRAFT_DIR)."""
    return training_record(LM_DIR), training_record(LM_DIR.parent / "pydoc-gpt-draft")


def _figures(lm=None, draft=None):
    return lambda: training_figures(_records()[0] | (lm or {}), _records()[1] | (draft or {}))


CASES: dict[str, list[Bad]] = {
    "GPT": [
        Bad(lambda: GPT({"vocab_size": 61}), TypeError, r"cfg must be a GPTConfig, got dict"),
        Bad(lambda: _model()(IDS.float()), TypeError, r"idx must have a dtype in \(torch\.int64, torch\.int32\)"),
        Bad(lambda: _model()(IDS.tolist()), TypeError, r"idx must be a torch\.Tensor, got list"),
        Bad(lambda: _model()(IDS[0]), ValueError, r"idx must have shape \(B, T\), got \(3,\)"),
        Bad(lambda: _model()(torch.zeros(1, 17, dtype=torch.int64)), ValueError, r"exceeds context_length=16"),
        Bad(lambda: _model()(IDS, logits_to_keep=4), ValueError, r"logits_to_keep=4 is out of range"),
        Bad(lambda: _model()(IDS, logits_to_keep=True), TypeError, r"logits_to_keep must be an int, got True"),
    ],
    "GPTConfig": [
        Bad(lambda: tiny_config(rope_theta=0.0), ValueError, r"GPTConfig\.rope_theta=0\.0 is out of range"),
        Bad(lambda: tiny_config(rope_theta=float("nan")), ValueError, r"GPTConfig\.rope_theta=nan"),
        Bad(lambda: tiny_config(norm_eps=-1e-5), ValueError, r"GPTConfig\.norm_eps=-1e-05 is out of range"),
        Bad(lambda: tiny_config(norm_eps="1e-5"), TypeError, r"GPTConfig\.norm_eps must be a real number"),
        Bad(lambda: tiny_config(tie_embeddings="no"), TypeError, r"GPTConfig\.tie_embeddings must be one of"),
        Bad(lambda: tiny_config(n_head=True), TypeError, r"GPTConfig\.n_head must be an int, got True"),
        Bad(lambda: tiny_config(d_ff=0), ValueError, r"GPTConfig\.d_ff=0 is out of range"),
        Bad(lambda: GPTConfig(vocab_size="8192"), TypeError, r"GPTConfig\.vocab_size must be an int, got '8192'"),
        Bad(lambda: tiny_config(n_kv_head=3), ValueError, r"n_head=4 must be divisible by n_kv_head=3"),
    ],
    "train_lm": [
        Bad(lambda: _train(train_tokens=TOKENS.tolist()), TypeError, r"train_tokens must be a torch\.Tensor"),
        Bad(lambda: _train(train_tokens=TOKENS.float()), TypeError, r"train_tokens must have a dtype in"),
        Bad(lambda: _train(train_tokens=TOKENS.view(10, 20)), ValueError, r"train_tokens must have 1 dimensions"),
        Bad(lambda: _train(train_tokens=TOKENS[:9]), ValueError, r"train_tokens has 9 tokens; need more than"),
        Bad(lambda: _train(train_tokens=TOKENS + 1), ValueError, r"train_tokens must hold ids in \[0, 61\)"),
        Bad(lambda: _train(seq_len=17), ValueError, r"seq_len=17 is out of range; allowed: \[1, 16\]"),
        Bad(lambda: _train(seed=1.5), TypeError, r"seed must be an int, got 1\.5"),
        Bad(lambda: _train(eval_every=1), TypeError, r"eval_fn must be callable .*eval_every=1, got None"),
        Bad(lambda: _train(eval_fn="perplexity"), TypeError, r"eval_fn must be callable"),
        Bad(lambda: _train(steps=True), TypeError, r"steps must be an int, got True"),
        Bad(lambda: _train(lr=float("nan")), ValueError, r"lr=nan is out of range"),
        Bad(lambda: train_lm("gpt", TOKENS, steps=1), TypeError, r"model must be a torch\.nn\.Module, got str"),
    ],
    "random_batch": [
        T(lambda: random_batch(TOKENS.tolist(), 2, 8, GEN), r"tokens must be a torch\.Tensor, got list"),
        T(lambda: random_batch(TOKENS.float(), 2, 8, GEN), r"tokens must have a dtype in \(torch\.int64,\)"),
        V(lambda: random_batch(TOKENS.view(10, 20), 2, 8, GEN), r"tokens must have 1 dimensions"),
        T(lambda: random_batch(TOKENS, True, 8, GEN), r"batch_size must be an int, got True"),
        V(lambda: random_batch(TOKENS, 2, 0, GEN), r"seq_len=0 is out of range"),
        T(lambda: random_batch(TOKENS, 2, 8, 0), r"generator must be a torch\.Generator, got 0"),
        V(lambda: random_batch(TOKENS[:9], 2, 8, GEN), r"tokens has 9 entries; need more than seq_len\+1=9"),
    ],
    "calibration_windows": [
        V(lambda: calibration_windows(TOKENS, 200, 128, 0), r"n_tokens=200 must be a multiple of window=128"),
        V(lambda: calibration_windows(TOKENS, 64, 128, 0), r"n_tokens=64 is out of range"),
        T(lambda: calibration_windows(TOKENS, 256.0, 128, 0), r"n_tokens must be an int"),
    ],
    "lm_batch_loss": [
        T(lambda: lm_batch_loss("gpt", BATCH), r"model must be a torch\.nn\.Module, got str"),
        T(lambda: lm_batch_loss(_model(), BATCH[0]), r"batch must be an \(ids, targets\) pair of tensors"),
        T(lambda: lm_batch_loss(_model(), (BATCH[0], BATCH[1].float())), r"batch targets must have a dtype"),
        V(lambda: lm_batch_loss(_model(), (BATCH[0], BATCH[1][:, :3])), r"batch targets must have the ids' shape"),
        V(lambda: lm_batch_loss(_model(), (BATCH[0][0], BATCH[1][0])), r"batch ids must have 2 dimensions"),
        V(lambda: lm_batch_loss(torch.nn.Identity(), BATCH), r"model must map ids \(2, 8\) to logits \(B, T, V\)"),
        T(lambda: lm_batch_loss(_Dict(), BATCH),
          r"model must return the logits \(B, T, V\) as a tensor, got dict"),
    ],
    "training_record": [
        T(lambda: training_record(3), r"path must be a path .*got 3"),
        V(lambda: training_record(__file__), r"path=.*test_bad_input\.py' is an existing file"),
    ],
    "training_figures": [
        T(lambda: training_figures("lm", _records()[1]), r"lm must be a training record .*got 'lm' \(str\)"),
        V(lambda: training_figures(*reversed(_records())), r"lm is not a training record of its kind: it lacks"),
        V(_figures(lm={"val_perplexity": []}), r"lm\['val_perplexity'\] must be a non-empty list of \(step,"),
        V(_figures(lm={"train_tokens": 0}), r"lm\['train_tokens'\]=0 is out of range"),
        V(_figures(draft={"config": "tiny"}), r"draft\['config'\] must be the draft's GPTConfig as a dict"),
        V(_figures(draft={"eval_perplexity": [[300, 40.0]]}), r"draft\['eval_perplexity'\] starts at step 300"),
    ],
    "load_pretrained_lm": [
        Bad(lambda: load_pretrained_lm("jax"), ValueError, r"impl='jax' is not allowed"),
        Bad(lambda: load_pretrained_lm("lab", dtype=torch.int8), ValueError, r"dtype=torch\.int8 is not allowed"),
        Bad(lambda: load_pretrained_lm("lab", dtype="float32"), TypeError, r"dtype must be a torch dtype"),
        Bad(lambda: load_pretrained_lm("lab", path=3), TypeError, r"path must be a path"),
    ],
    "load_tokenizer": [
        Bad(lambda: load_tokenizer(3), TypeError, r"path must be a path .*got 3"),
        Bad(lambda: load_tokenizer(["checkpoints"]), TypeError, r"path must be a path"),
        Bad(lambda: load_tokenizer(__file__), ValueError, r"path=.*test_bad_input\.py' is an existing file"),
    ],
    "to_llama": [
        Bad(lambda: to_llama(torch.nn.Linear(2, 2)), TypeError, rf"model {NOT_GPT}, got Linear"),
        Bad(lambda: to_llama(_pruned()), ValueError, r"model has layers \[0\] narrower than its config gives"),
    ],
    "from_llama": [
        Bad(lambda: from_llama(torch.nn.Linear(2, 2)), TypeError, r"hf must be a transformers LlamaForCausalLM"),
        Bad(lambda: from_llama(_model()), TypeError, r"hf must be a transformers LlamaForCausalLM, got GPT"),
    ],
}

NO_INPUT: dict[str, str] = {
    "load_pretrained_encoder": "takes no argument: loads the one encoder shipped in the pinned wheel",
}
