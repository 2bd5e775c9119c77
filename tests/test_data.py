"""lab.data: the corpus splits (sha256 buckets), the evaluation slice, bad input."""

from __future__ import annotations

import hashlib

import pytest
import torch

from lab import data
from lab.perplexity import EvalSample

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


def test_test_documents_are_the_split_tokenized_one_by_one(tokenizer):
    documents = data.test_documents(tokenizer)
    texts = data.corpus_documents("test")
    assert len(documents) == len(texts) == 31
    for doc, (_, text) in zip(documents, texts[:3]):                 # an independent re-tokenization
        assert doc.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert torch.equal(torch.cat(documents), data.tokenize_split("test", tokenizer))


def test_eval_sample_draws_every_document_in_proportion_and_scores_with_its_own_context(tokenizer):
    sample = data.eval_sample(tokenizer)
    documents = data.test_documents(tokenizer)
    n = data.EVAL_TOKENS
    assert sample.tokens.shape == sample.documents.shape == (n,) and sample.tokens.dtype == torch.int64
    per_document = torch.bincount(sample.documents, minlength=len(documents))
    scorable = torch.tensor([len(d) - 1 for d in documents], dtype=torch.float64)
    assert (per_document - n * scorable / scorable.sum()).abs().max() < 1       # largest remainders
    from tests.core.test_stats import SAMPLE_SIZES
    assert per_document.tolist() == SAMPLE_SIZES.tolist()                    # the sizes the coverage test uses
    at, joined = 0, {g: "".join(map(chr, d.tolist())) for g, d in enumerate(documents)}
    for x, c in zip(sample.inputs, sample.n_context):
        w = len(x) - c
        g = int(sample.documents[at])
        assert (sample.documents[at:at + w] == g).all() and 1 <= c <= data.EVAL_CONTEXT and 1 <= w <= data.EVAL_WINDOW
        assert "".join(map(chr, x.tolist())) in joined[g]                      # context and window: one document
        assert torch.equal(sample.tokens[at:at + w], x[c:])
        at += w
    assert at == n


def test_eval_sample_losses_equal_scoring_each_window_alone():
    from tests.tiny_models import tiny_gpt

    model = tiny_gpt(vocab_size=50, context_length=16)
    x = [torch.randint(0, 50, (k,), generator=torch.Generator().manual_seed(k)) for k in (9, 12, 9)]
    sample = EvalSample(tuple(x), (3, 4, 8), torch.cat([x[0][3:], x[1][4:], x[2][8:]]),
                             torch.tensor([0] * 6 + [1] * 8 + [2]))
    losses = sample.token_losses(model, batch_size=2)
    expected = []
    for window, c in zip(x, sample.n_context):
        logp = torch.log_softmax(model(window[None]).double(), -1)[0]
        expected += [-logp[t - 1, window[t]].item() for t in range(c, len(window))]
    assert losses.dtype == torch.float64 and losses.tolist() == pytest.approx(expected, abs=1e-5)
    assert sample.perplexity(model) == pytest.approx(float(torch.tensor(expected).mean().exp()), rel=1e-5)


@pytest.mark.parametrize("n_tokens, error, match", [(1, ValueError, r"n_tokens=1 is out of range; allowed: \[2, inf\)"),
                                                    (100.0, TypeError, r"n_tokens must be an int, got 100.0"),
                                                    (10**9, ValueError, "exceeds the test split")])
def test_eval_sample_rejects_bad_lengths(tokenizer, n_tokens, error, match):
    with pytest.raises(error, match=match):
        data.eval_sample(tokenizer, n_tokens=n_tokens)


def test_token_cache_survives_parallel_writers(tokenizer, tmp_path, monkeypatch):
    """Notebooks run two at a time: writers that race on the cache each leave a complete file."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(data, "data_dir", lambda: tmp_path)
    monkeypatch.setattr(data, "corpus_documents", lambda split: [("a.rst.txt", "import os\n" * 200)])
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: data.tokenize_split("test", tokenizer), range(8)))
    assert all(torch.equal(r, results[0]) for r in results)
    assert [p.suffix for p in (tmp_path / "tokens").iterdir()] == [".pt"]  # no temporary file left
    assert torch.equal(data.tokenize_split("test", tokenizer), results[0])  # read back from the cache


def test_train_tokenizer_refuses_one_string_and_a_small_vocabulary():
    with pytest.raises(TypeError, match="texts must be an iterable of strings .* got one string"):
        data.train_tokenizer("def f(x): return x", 300)
    with pytest.raises(ValueError, match="vocab_size=100 is out of range"):
        data.train_tokenizer(["def f(x): return x"], 100)
