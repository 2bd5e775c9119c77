"""lab.runtime, lab.data, lab.models, lab.metrics and the training loop, each against a reference.

References: `transformers`' LlamaForCausalLM (same weights, same logits), a direct
full-context cross-entropy, a uniform model whose perplexity is exactly the vocabulary
size, sha256 for the splits, and plain `torch` for Triton kernels run by the interpreter.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import data, runtime
from lab.metrics import nll_per_token, perplexity
from lab.models import (
    GPT,
    GPTConfig,
    from_llama,
    load_pretrained_encoder,
    load_pretrained_lm,
    load_tokenizer,
    to_llama,
    train_lm,
)
from lab.models.pretrained import LM_DIR, checkpoint_sha256
from lab.models.train import lr_at, random_batch

NO_CUDA = not torch.cuda.is_available()


def tiny_config(**overrides) -> GPTConfig:
    cfg = dict(vocab_size=61, context_length=16, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48)
    cfg.update(overrides)
    return GPTConfig(**cfg)


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


# ---------------------------------------------------------------------------------------------
# lab.runtime
# ---------------------------------------------------------------------------------------------

def test_get_device_default_and_override(monkeypatch):
    monkeypatch.delenv("LAB_DEVICE", raising=False)
    assert runtime.get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("LAB_DEVICE", " CPU ")
    assert runtime.get_device() == torch.device("cpu")


def test_get_device_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("LAB_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"LAB_DEVICE='tpu' is not allowed"):
        runtime.get_device()


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-GPU error path")
def test_get_device_cuda_without_gpu_is_an_error(monkeypatch):
    monkeypatch.setenv("LAB_DEVICE", "cuda")
    with pytest.raises(ValueError, match="cuda.is_available"):
        runtime.get_device()


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_everything_makes_every_rng_repeat():
    runtime.seed_everything(1234)
    first = _draw()
    runtime.seed_everything(1234)
    assert _draw() == first
    runtime.seed_everything(1235)
    assert _draw() != first


@pytest.mark.parametrize("seed, error, match", [(1.5, TypeError, "seed must be an int"),
                                                (True, TypeError, "seed must be an int"),
                                                (-1, ValueError, "seed must lie in"),
                                                (2**32, ValueError, "seed must lie in")])
def test_seed_everything_rejects_bad_seeds(seed, error, match):
    with pytest.raises(error, match=match):
        runtime.seed_everything(seed)


def test_has_triton_gpu_is_false_when_interpreting_or_without_gpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert runtime.has_triton_gpu() is False
    monkeypatch.delenv("TRITON_INTERPRET")
    if NO_CUDA:
        assert runtime.has_triton_gpu() is False


def test_triton_interpret_runs_a_kernel_on_cpu_and_restores_the_environment(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with runtime.triton_interpret():
        import triton
        import triton.language as tl

        @triton.jit
        def masked_add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n  # the last block is partial
            x = tl.load(x_ptr + offs, mask=mask)
            y = tl.load(y_ptr + offs, mask=mask)
            tl.store(out_ptr + offs, x + y, mask=mask)

        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
        out = torch.full_like(x, float("nan"))
        masked_add[(triton.cdiv(1000, 256),)](x, y, out, 1000, BLOCK=256)
    torch.testing.assert_close(out, x + y, rtol=0, atol=0)
    assert "TRITON_INTERPRET" not in os.environ


# ---------------------------------------------------------------------------------------------
# lab.data
# ---------------------------------------------------------------------------------------------

def test_split_of_follows_sha256_buckets():
    for path in ["library/os.rst.txt", "tutorial/index.rst.txt", "whatsnew/3.11.rst.txt", ""]:
        bucket = int(hashlib.sha256(path.encode()).hexdigest(), 16) % 100
        expected = "train" if bucket < 90 else "validation" if bucket < 95 else "test"
        assert data.split_of(path) == expected


@pytest.fixture(scope="module")
def splits():
    return {name: data.load_corpus(name) for name in data.SPLITS}


def test_splits_are_disjoint_complete_and_deterministic(splits):
    all_files = {f.relative_to(data.fetch_corpus()).as_posix()
                 for f in data.fetch_corpus().rglob("*.rst.txt")}
    paths = {name: list(ds["path"]) for name, ds in splits.items()}
    assert sum(len(p) for p in paths.values()) == len(all_files) == data.corpus_manifest()["files"]
    assert set().union(*map(set, paths.values())) == all_files
    for name, ps in paths.items():
        assert ps == sorted(ps) and all(data.split_of(p) == name for p in ps)
        assert len(ps) > 0
    assert list(data.load_corpus("test")["path"]) == paths["test"]  # same order on reload
    assert len(paths["train"]) > 5 * len(paths["test"])


def test_load_corpus_is_a_dataset_of_path_and_text(splits):
    import datasets

    ds = splits["validation"]
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["path", "text"]
    row = ds[0]
    assert row["text"] == (data.fetch_corpus() / row["path"]).read_text(encoding="utf-8")


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match=r"split='dev' is not allowed"):
        data.load_corpus("dev")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_eval_tokens_is_the_prefix_of_the_test_split(tokenizer):
    tokens = data.eval_tokens(tokenizer, n_tokens=1000)
    assert tokens.dtype == torch.int64 and tokens.shape == (1000,)
    assert torch.equal(tokens, data.tokenize_split("test", tokenizer)[:1000])
    docs = data.corpus_documents("test")
    first = tokenizer(docs[0][1], add_special_tokens=False)["input_ids"]  # independent re-tokenization
    assert tokens[: min(len(first), 1000)].tolist() == first[:1000]
    assert len(data.eval_tokens(tokenizer)) == data.EVAL_TOKENS


@pytest.mark.parametrize("n_tokens, match", [(1, "n_tokens must be an int >= 2"),
                                             (100.0, "n_tokens must be an int >= 2"),
                                             (10**9, "exceeds the test split")])
def test_eval_tokens_rejects_bad_lengths(tokenizer, n_tokens, match):
    with pytest.raises(ValueError, match=match):
        data.eval_tokens(tokenizer, n_tokens=n_tokens)


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


def test_from_llama_round_trip_is_exact():
    model = tiny_gpt(3, tie_embeddings=False)
    back = from_llama(to_llama(model))
    assert back.config == model.config
    original, copied = model.state_dict(), back.state_dict()
    assert original.keys() == copied.keys()
    assert all(torch.equal(original[k], copied[k]) for k in original)


@pytest.mark.parametrize("overrides, match", [
    ({"d_model": 0}, r"GPTConfig.d_model must be a positive int, got 0"),
    ({"n_layer": 2.0}, r"GPTConfig.n_layer must be a positive int"),
    ({"n_head": True}, r"GPTConfig.n_head must be a positive int"),
    ({"d_model": 30, "n_head": 4}, r"d_model=30 must be divisible by n_head=4"),
    ({"n_head": 4, "n_kv_head": 3}, r"n_head=4 must be divisible by n_kv_head=3"),
    ({"d_model": 12, "n_head": 4, "n_kv_head": 2}, r"head dimension .* must be even"),
])
def test_gpt_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
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


def test_pretrained_lm_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"impl='jax' is not allowed"):
        load_pretrained_lm("jax")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_pretrained_lm("lab", path=tmp_path)


def test_pretrained_encoder_loads_offline():
    model, tok = load_pretrained_encoder()
    assert model.config.hidden_size == 384
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    batch = tok(["Parameters live in memory."], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (1, batch["input_ids"].shape[1], 384)
    assert torch.isfinite(hidden).all()


# ---------------------------------------------------------------------------------------------
# lab.metrics: sliding-window perplexity
# ---------------------------------------------------------------------------------------------

class UniformLM(torch.nn.Module):
    """Logits all zero: p(x) = 1/V for every token, so NLL = log V and PPL = V."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, self.vocab_size) + 0 * self.anchor


def test_perplexity_equals_direct_cross_entropy_within_one_window():
    model = tiny_gpt(5)
    tokens = torch.randint(0, 61, (16,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(tokens[None])[0].double()
    reference = math.exp(F.cross_entropy(logits[:-1], tokens[1:]).item())
    assert perplexity(model, tokens, context_length=16, stride=8) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("n, context_length, stride", [(50, 8, 4), (50, 8, 3), (50, 8, 1), (50, 8, 7),
                                                       (17, 16, 15), (9, 64, 32), (2, 2, 1)])
def test_sliding_window_scores_every_token_exactly_once(n, context_length, stride):
    V = 13
    tokens = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(n))
    nll = nll_per_token(UniformLM(V), tokens, context_length, stride, batch_size=3)
    assert nll.shape == (n - 1,) and nll.dtype == torch.float64
    # log-softmax runs in float32, so "exactly" means to float32 rounding
    torch.testing.assert_close(nll, torch.full((n - 1,), math.log(V), dtype=torch.float64),
                               rtol=0, atol=1e-6)
    assert perplexity(UniformLM(V), tokens, context_length, stride) == pytest.approx(V, rel=1e-6)


def test_sliding_window_matches_full_context_when_the_window_covers_everything():
    model = tiny_gpt(6)
    tokens = torch.randint(0, 61, (16,), generator=torch.Generator().manual_seed(6))
    full = nll_per_token(model, tokens, context_length=16, stride=8)
    # stride 1: token t is scored by a window ending at t, which starts at 0 while t < 16
    torch.testing.assert_close(nll_per_token(model, tokens, context_length=16, stride=1), full)


@pytest.mark.parametrize("tokens, kwargs, match", [
    (torch.zeros(2, 8, dtype=torch.int64), {}, "tokens must be a 1-D int64 tensor"),
    (torch.zeros(8), {}, "tokens must be a 1-D int64 tensor"),
    (torch.zeros(1, dtype=torch.int64), {}, "at least 2 entries"),
    (torch.zeros(8, dtype=torch.int64), {"stride": 0}, "0 < stride < context_length"),
    (torch.zeros(8, dtype=torch.int64), {"context_length": 4, "stride": 5}, "0 < stride < context_length"),
    (torch.zeros(8, dtype=torch.int64), {"context_length": 4, "stride": 4}, "0 < stride < context_length"),
    (torch.zeros(8, dtype=torch.int64), {"context_length": 1, "stride": 1}, "context_length >= 2"),
    (torch.zeros(8, dtype=torch.int64), {"batch_size": 0}, "batch_size must be >= 1"),
])
def test_perplexity_rejects_bad_inputs(tokens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        perplexity(UniformLM(5), tokens, **kwargs)


# ---------------------------------------------------------------------------------------------
# lab.models.train
# ---------------------------------------------------------------------------------------------

def test_lr_schedule_warms_up_linearly_then_decays_by_cosine():
    steps, lr, warmup = 100, 1e-3, 10
    sched = [lr_at(s, steps, lr, warmup) for s in range(steps)]
    assert sched[:warmup] == pytest.approx([lr * (s + 1) / warmup for s in range(warmup)])
    assert sched[warmup] == pytest.approx(lr)  # the peak
    assert sched[55] == pytest.approx(lr * (0.1 + 0.9 * 0.5))  # halfway through the cosine
    assert all(a >= b for a, b in zip(sched[warmup:], sched[warmup + 1:]))
    assert sched[-1] > 0.1 * lr and sched[-1] == pytest.approx(0.1 * lr, rel=0.01)


def test_random_batch_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(100)
    x, y = random_batch(tokens, 4, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 10)
    assert torch.equal(y, x + 1)  # consecutive tokens: target = next token
    with pytest.raises(ValueError, match="need more than seq_len"):
        random_batch(torch.arange(11), 1, 10, torch.Generator())


def test_training_lowers_the_loss_and_is_deterministic():
    tokens = torch.arange(8).repeat(200)  # a periodic sequence: perfectly predictable
    runs = []
    for _ in range(2):
        model = tiny_gpt(0, vocab_size=8, n_layer=1)
        runs.append(train_lm(model, tokens, steps=40, batch_size=8, seq_len=12, lr=1e-2, warmup=5,
                             seed=0, progress=False))
    loss = runs[0]["loss"]
    assert runs[0]["loss"] == runs[1]["loss"]
    assert loss[0] == pytest.approx(math.log(8), rel=0.1)  # starts near uniform guessing
    assert np.mean(loss[-5:]) < 0.25 * np.mean(loss[:5])
    assert runs[0]["tokens_seen"] == 40 * 8 * 12


@pytest.mark.parametrize("kwargs, match", [({"steps": 0}, "steps must be a positive int"),
                                           ({"steps": 2, "batch_size": 1.5}, "batch_size must be a positive int"),
                                           ({"steps": 2, "lr": 0.0}, "lr must be > 0")])
def test_train_lm_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_lm(tiny_gpt(), torch.arange(100) % 61, progress=False, **kwargs)
