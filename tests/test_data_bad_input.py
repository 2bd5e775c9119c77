"""Bad input to lab.data's public names: each refused by name before the corpus is read or downloaded."""

from __future__ import annotations

from pathlib import Path

from lab import data
from tests.bad_input import Bad, V, with_env

CASES: dict[str, list[Bad]] = {
    "data_dir": [V(with_env("LAB_DATA_DIR", "", data.data_dir), r"LAB_DATA_DIR='' is not allowed"),
                 V(with_env("LAB_DATA_DIR", __file__, data.data_dir), r"LAB_DATA_DIR='.*' is an existing file")],
    "corpus_dir": [V(with_env("LAB_DATA_DIR", __file__, data.corpus_dir), r"LAB_DATA_DIR='.*' is an existing file")],
    "fetch_corpus": [Bad(lambda: data.fetch_corpus("yes"), TypeError, r"force must be one of \(True, False\)")],
    "split_of": [Bad(lambda: data.split_of(Path("library/os.rst.txt")), TypeError, r"path must be a str")],
    "corpus_documents": [Bad(lambda: data.corpus_documents("dev"), ValueError, r"split='dev' is not allowed"),
                         Bad(lambda: data.corpus_documents(0), ValueError, r"split=0 is not allowed")],
    "load_corpus": [Bad(lambda: data.load_corpus("Train"), ValueError, r"split='Train' is not allowed")],
    "tokenize_split": [
        Bad(lambda: data.tokenize_split("train", "gpt2"), TypeError, r"tokenizer must be a transformers tokenizer"),
        Bad(lambda: data.tokenize_split("valid", None), ValueError, r"split='valid' is not allowed"),
    ],
    "test_documents": [Bad(lambda: data.test_documents(None), TypeError, r"tokenizer must be a transformers")],
    "eval_sample": [
        Bad(lambda: data.eval_sample("gpt2"), TypeError, r"tokenizer must be a transformers tokenizer .* got str"),
        Bad(lambda: data.eval_sample(None, n_tokens=1), ValueError, r"n_tokens=1 is out of range"),
        Bad(lambda: data.eval_sample(None, n_tokens=8192.0), TypeError, r"n_tokens must be an int"),
        Bad(lambda: data.eval_sample(None, window=0), ValueError, r"window=0 is out of range"),
        Bad(lambda: data.eval_sample(None, context=True), TypeError, r"context must be an int, got True"),
    ],
    "train_tokenizer": [
        Bad(lambda: data.train_tokenizer("def f(): pass", 300), TypeError, r"texts must be an iterable of strings"),
        Bad(lambda: data.train_tokenizer(["def f(): pass", 3], 300), TypeError,
            r"texts must be an iterable of strings \(documents\), got list"),
        Bad(lambda: data.train_tokenizer(7, 300), TypeError, r"texts must be an iterable of strings .* got int"),
        Bad(lambda: data.train_tokenizer([], 300), ValueError, r"texts is empty"),
        Bad(lambda: data.train_tokenizer(["x"], 300.0), TypeError, r"vocab_size must be an int"),
    ],
}

NO_INPUT: dict[str, str] = {
    "corpus_manifest": "takes no argument: the manifest fetch_corpus wrote",
}
