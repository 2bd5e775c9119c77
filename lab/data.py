"""The book's corpus: the Python 3.11 documentation sources, from a pinned Debian package.

Source: Debian's ``python3.11-doc`` package (PSF licence), whose
``usr/share/doc/python3.11/html/_sources/`` holds ~500 reStructuredText files,
about 11 MB of real English technical prose. ``fetch_corpus()`` obtains it with
``apt-get download`` + ``dpkg -x`` (a package registry, like pip; nothing is read
from a dataset hub), once, into ``.data/`` at the repository root (or
``$LAB_DATA_DIR``).

Splits are by *document* (no paragraph of a test document is ever trained on):
a document goes to train / validation / test when ``sha256(path) mod 100`` is
in [0, 90) / [90, 95) / [95, 100). Every chapter measures quality on the same
*evaluation sample* (`eval_sample`): tokens drawn from every test document in proportion to its
length, each scored with context from its own document.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from lab.core.atomic import atomic_write, atomic_write_json
from lab.core.checks import check_choice, check_int, check_path
from lab.core.records import REPO_ROOT
from lab.perplexity import EvalSample

__all__ = [
    "data_dir", "corpus_dir", "fetch_corpus", "corpus_manifest", "split_of", "corpus_documents", "load_corpus",
    "tokenize_split", "test_documents", "eval_sample", "train_tokenizer",
]

CORPUS_PACKAGE = "python3.11-doc"
CORPUS_VERSIONS = ("3.11.2-6+deb12u9", "3.11.2-6+deb12u8")  # tried in order, then any
SOURCES_IN_PACKAGE = "usr/share/doc/python3.11/html/_sources"
SPLITS = {"train": (0, 90), "validation": (90, 95), "test": (95, 100)}
EVAL_TOKENS = 8192   # scored tokens of the shared evaluation sample (`eval_sample`)
EVAL_WINDOW = 128    # scored tokens per window of the sample
EVAL_CONTEXT = 128   # tokens of own-document context before each window (not scored)


def data_dir() -> Path:
    """Directory holding downloaded packages and caches (``$LAB_DATA_DIR`` or ``<repo>/.data``)."""
    return check_path("LAB_DATA_DIR", os.environ.get("LAB_DATA_DIR", REPO_ROOT / ".data"), folder=True)


def corpus_dir() -> Path:
    return data_dir() / CORPUS_PACKAGE


def _download_deb(workdir: Path) -> Path:
    """``apt-get download`` the pinned package version (or, failing that, the candidate)."""
    attempts = [f"{CORPUS_PACKAGE}={v}" for v in CORPUS_VERSIONS] + [CORPUS_PACKAGE]
    errors = []
    for spec in attempts:
        proc = subprocess.run(["apt-get", "download", spec], cwd=workdir,
                              capture_output=True, text=True)
        debs = sorted(workdir.glob(f"{CORPUS_PACKAGE}_*.deb"))
        if proc.returncode == 0 and debs:
            return debs[0]
        errors.append(f"{spec}: {proc.stderr.strip()[-200:]}")
    raise RuntimeError(
        "could not download the corpus package with apt-get; run `apt-get update` "
        "(as root) and retry. Errors:\n" + "\n".join(errors))


def fetch_corpus(force: bool = False) -> Path:
    """Download and unpack the corpus once; return the folder of ``.rst.txt`` sources.

    Writes ``MANIFEST.json`` (package version, file count, sha256 of the sources) and
    moves the folder into place with one rename, so a half-extracted corpus is never
    visible.
    """
    check_choice("force", force, (True, False))
    target = corpus_dir()
    if (target / "MANIFEST.json").exists() and not force:
        return target / "_sources"
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("fetch_corpus needs apt-get and dpkg (a Debian-based machine)")
    data_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir()) as tmp:
        tmp = Path(tmp)
        deb = _download_deb(tmp)
        subprocess.run(["dpkg", "-x", str(deb), str(tmp / "x")], check=True)
        staged = tmp / "corpus"
        staged.mkdir()
        shutil.move(str(tmp / "x" / SOURCES_IN_PACKAGE), str(staged / "_sources"))
        shutil.copy(tmp / "x" / "usr/share/doc" / CORPUS_PACKAGE / "copyright", staged / "copyright")
        files = sorted((staged / "_sources").rglob("*.rst.txt"))
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.read_bytes())
        manifest = {"package": CORPUS_PACKAGE, "deb": deb.name, "files": len(files),
                    "bytes": sum(f.stat().st_size for f in files), "sha256": digest.hexdigest()}
        atomic_write_json(staged / "MANIFEST.json", manifest)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target / "_sources"


def corpus_manifest() -> dict:
    """The manifest written by `fetch_corpus` (package, file count, bytes, sha256)."""
    fetch_corpus()
    return json.loads((corpus_dir() / "MANIFEST.json").read_text())


def split_of(path: str) -> str:
    """Which split a document belongs to, from the sha256 of its relative path."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str (a document's relative path), got {path!r} ({type(path).__name__})")
    bucket = int(hashlib.sha256(path.encode()).hexdigest(), 16) % 100
    for name, (lo, hi) in SPLITS.items():
        if lo <= bucket < hi:
            return name
    raise AssertionError("unreachable")


def _check_split(split: str) -> None:
    check_choice("split", split, SPLITS)


def _check_tokenizer(tokenizer) -> None:
    """A `transformers` tokenizer: callable on a list of texts, with a vocabulary and an int EOS id."""
    if not callable(tokenizer) or not hasattr(tokenizer, "get_vocab") or not isinstance(
            getattr(tokenizer, "eos_token_id", None), int):
        raise TypeError(f"tokenizer must be a transformers tokenizer with get_vocab() and an int eos_token_id, got "
                        f"{type(tokenizer).__name__}")


def corpus_documents(split: str) -> list[tuple[str, str]]:
    """Sorted ``(relative path, text)`` pairs of one split."""
    _check_split(split)
    root = fetch_corpus()
    docs = []
    for f in sorted(root.rglob("*.rst.txt")):
        rel = f.relative_to(root).as_posix()
        if split_of(rel) == split:
            docs.append((rel, f.read_text(encoding="utf-8")))
    return docs


def load_corpus(split: str):
    """One split as a `datasets.Dataset` with string columns ``path`` and ``text``."""
    _check_split(split)
    import datasets

    docs = corpus_documents(split)
    return datasets.Dataset.from_dict({"path": [p for p, _ in docs], "text": [t for _, t in docs]})


def tokenize_split(split: str, tokenizer) -> torch.Tensor:
    """All documents of a split, tokenized and joined with EOS: a 1-D int64 tensor.

    Cached under ``.data/tokens/`` keyed by the tokenizer's vocabulary hash. Reads the documents with
    `corpus_documents` (the order `load_corpus` uses), so it does not need the `datasets` package.
    """
    _check_split(split)
    _check_tokenizer(tokenizer)
    vocab_key = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:12]
    cache = data_dir() / "tokens" / f"{split}-{vocab_key}.pt"
    if cache.exists():
        return torch.load(cache)
    texts = [text for _, text in corpus_documents(split)]
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    tokens = torch.tensor(ids, dtype=torch.int64)
    buffer = io.BytesIO()
    torch.save(tokens, buffer)
    atomic_write(cache, [buffer.getbuffer()])  # a unique temporary file: parallel runs may race here
    return tokens


def test_documents(tokenizer) -> list[torch.Tensor]:
    """The test split's documents as token tensors (each ends with its EOS), in path order."""
    tokens = tokenize_split("test", tokenizer)
    ends = (tokens == tokenizer.eos_token_id).nonzero().flatten() + 1
    n_documents = len(corpus_documents("test"))
    if len(ends) != n_documents or ends[-1] != len(tokens):
        raise RuntimeError(f"the test split has {n_documents} documents but its tokens hold {len(ends)} EOS; "
                           "a document contains the EOS text")
    return list(torch.tensor_split(tokens, ends[:-1].tolist()))


def _shares(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders; the parts sum to ``total``)."""
    exact = [total * w / sum(weights) for w in weights]
    parts = [int(e) for e in exact]
    for i in sorted(range(len(exact)), key=lambda i: parts[i] - exact[i])[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _even(total: int, k: int) -> list[int]:
    """``total`` in k parts that differ by at most 1, the larger first."""
    return [total // k + (i < total % k) for i in range(k)]


def eval_sample(tokenizer, n_tokens: int | None = EVAL_TOKENS, window: int = EVAL_WINDOW,
                context: int = EVAL_CONTEXT) -> EvalSample:
    """The shared evaluation sample: ``n_tokens`` scored tokens drawn from every test document (None: every
    scorable token of the split, each window then a whole segment scored after its own-document context).

    Document g, with L_g tokens (EOS included), has L_g − 1 tokens that can be scored (its first has no
    context); it gets n_g of the n_tokens in proportion to L_g − 1 (largest remainders), so the sample's
    mean loss estimates the split's token-weighted mean, the quantity the split's perplexity is. Its
    scorable positions 1..L_g − 1 are cut into k_g = ⌈n_g / window⌉ consecutive segments of near-equal
    length; the last w tokens of each segment are scored (the n_g split near-evenly over the k_g windows),
    after up to ``context`` tokens of the same document that are not scored. A systematic sample:
    windows spread evenly through every document, deterministic, no seed. A token is scored only at the
    end of its segment, so a document's first tokens (whose context is short) are scored only in a short
    document; the sample leans toward tokens with full context, hence lower losses, by less than its sampling
    error (chapter 7's notebook: 58.7 on 8,192 tokens, 95% interval 41.3 to 87.6, against 51.9 on every
    scorable token of the split).
    Returns an `EvalSample` (tokens (n_tokens,) int64, documents (n_tokens,) int64).
    """
    check_int("window", window, 1)
    check_int("context", context, 1)
    if n_tokens is not None:
        check_int("n_tokens", n_tokens, 2)
    documents = test_documents(tokenizer)
    scorable = [len(d) - 1 for d in documents]
    n_tokens = sum(scorable) if n_tokens is None else n_tokens
    if n_tokens > sum(scorable):
        raise ValueError(f"n_tokens={n_tokens} exceeds the test split's {sum(scorable)} scorable tokens")
    inputs, n_context, docs = [], [], []
    for g, (doc, n_g) in enumerate(zip(documents, _shares(n_tokens, scorable))):
        if n_g == 0:
            continue
        k = -(-n_g // window)
        segment_end = 1
        for segment, w in zip(_even(len(doc) - 1, k), _even(n_g, k)):
            segment_end += segment
            begin = segment_end - w
            c = min(context, begin)
            inputs.append(doc[begin - c:segment_end])
            n_context.append(c)
            docs.append(torch.full((w,), g, dtype=torch.int64))
    tokens = torch.cat([x[c:] for x, c in zip(inputs, n_context)])
    return EvalSample(tuple(inputs), tuple(n_context), tokens, torch.cat(docs))


def train_tokenizer(texts, vocab_size: int = 8192):
    """Train a byte-level BPE tokenizer (GPT-2 style) and wrap it for `transformers`.

    Returns a `PreTrainedTokenizerFast` whose EOS token is ``<|endoftext|>``.
    """
    check_int("vocab_size", vocab_size, 260)                        # 256 bytes + specials
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be an iterable of strings (documents), got one string: training on its "
                        "characters one by one is not what was meant; pass [text]")
    if not isinstance(texts, Iterable) or (isinstance(texts, Sequence) and not all(isinstance(t, str) for t in texts)):
        raise TypeError(f"texts must be an iterable of strings (documents), got {type(texts).__name__} "
                        f"{str(texts)[:60]}")
    if isinstance(texts, Sequence) and not texts:
        raise ValueError("texts is empty: there is nothing to train the tokenizer on")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>")


if __name__ == "__main__":  # python -m lab.data : fetch the corpus and print its manifest
    print(json.dumps(corpus_manifest(), indent=2))
