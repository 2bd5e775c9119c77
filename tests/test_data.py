"""lab.data: the corpus splits (sha256 buckets), the evaluation slice, bad input."""

from __future__ import annotations

import hashlib

import pytest
import torch

from lab import data

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


def test_eval_tokens_is_the_prefix_of_the_test_split(tokenizer):
    tokens = data.eval_tokens(tokenizer, n_tokens=1000)
    assert tokens.dtype == torch.int64 and tokens.shape == (1000,)
    assert torch.equal(tokens, data.tokenize_split("test", tokenizer)[:1000])
    docs = data.corpus_documents("test")
    first = tokenizer(docs[0][1], add_special_tokens=False)["input_ids"]  # independent re-tokenization
    assert tokens[: min(len(first), 1000)].tolist() == first[:1000]
    assert len(data.eval_tokens(tokenizer)) == data.EVAL_TOKENS


@pytest.mark.parametrize("n_tokens, error, match", [(1, ValueError, r"n_tokens=1 is out of range; allowed: \[2, inf\)"),
                                                    (100.0, TypeError, r"n_tokens must be an int, got 100.0"),
                                                    (10**9, ValueError, "exceeds the test split")])
def test_eval_tokens_rejects_bad_lengths(tokenizer, n_tokens, error, match):
    with pytest.raises(error, match=match):
        data.eval_tokens(tokenizer, n_tokens=n_tokens)


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
