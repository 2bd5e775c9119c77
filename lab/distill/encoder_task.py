"""The encoder experiment: which standard-library package does a documentation paragraph describe?

Data (built here, documented in the chapter): the book's corpus, the reStructuredText sources of
the Python 3.11 documentation from the Debian package ``python3.11-doc`` (`lab.data`). A class is
a group of documents with a common path prefix (default: the pages of ``asyncio``, ``email``,
``tkinter``, ``unittest`` and ``logging`` under ``library/``); each example is one prose
paragraph (directives, code, headings, lists and tables dropped; Sphinx roles such as
``:func:`len``` reduced to their text), labelled with its class. Documents, not paragraphs, are
split: within each class every 4th document in sha256(path) order is a test document, so no test
paragraph shares a page with a training one.

Teacher: all-MiniLM-L6-v2 (`lab.models.load_pretrained_encoder`) with a linear head on its
mean-pooled token states, the head trained on the training paragraphs (logistic regression,
the encoder frozen). Student: the same architecture with 2 of the 6 layers, initialised from
teacher layers 0 and 3 (`init_from_teacher`), trained on the teacher's logits by `distill`
(`KDLoss` reading the models through `classifier_outputs`).
"""

from __future__ import annotations

import copy
import hashlib
import re

import torch
from torch import nn

from lab.core.checks import check_choice, check_fraction, check_int, check_number
from lab.data import SPLITS, corpus_documents
from lab.distill.features import Outputs
from lab.distill.losses import cross_entropy
from lab.distill.students import init_from_teacher
from lab.models.loop import Optim

STUDENTS = ("kd", "hard", "kd-random")         # `run_encoder_task`'s students
CLASSES = ("library/asyncio", "library/email", "library/tkinter", "library/unittest", "library/logging")
_ROLE = re.compile(r":[\w:.+-]+:`~?([^`<]*?)\s*(<[^>]*>)?`")   # :func:`len` → len
_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_+")                 # `text <url>`_ → text


def _prose_paragraphs(text: str, min_chars: int) -> list[str]:
    """Paragraphs of plain prose from one reStructuredText document, markup reduced to text."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        first = lines[0]
        if (first[:1] in (" ", "\t", ".", "*", "-", "+", "|", "=", "#", ">") or re.match(r"\d+\.|\S+::", first)
                or any(re.fullmatch(r"([=\-~^*#\"'`+])\1{2,}", ln.strip()) for ln in lines)):
            continue  # indented code/quotes, directives, lists, tables, headings
        para = " ".join(ln.strip() for ln in lines)
        para = _LINK.sub(r"\1", _ROLE.sub(r"\1", para)).replace("``", "").replace("**", "")
        if len(para) >= min_chars and sum(c.isalpha() or c.isspace() for c in para) >= 0.85 * len(para):
            out.append(para)
    return out


def paragraph_dataset(n_train: int = 40, n_test: int = 20, min_chars: int = 100, seed: int = 0,
                      classes: tuple[str, ...] = CLASSES) -> dict[str, list]:
    """Balanced labelled paragraphs: ``n_train`` / ``n_test`` per class (label = index in ``classes``).

    A class is a path prefix of the corpus's documents. Returns {"train_texts", "train_labels",
    "train_documents", "test_texts", "test_labels", "test_documents", "classes"}, where ``<part>_documents``
    is the path of the document each paragraph comes from (paragraphs of one page are not independent: a
    comparison over them resamples the documents); ValueError if a class has too few paragraphs.
    """
    check_int("n_train", n_train)
    check_int("n_test", n_test)
    docs = [d for split in SPLITS for d in corpus_documents(split)]
    gen = torch.Generator().manual_seed(seed)
    data: dict[str, list] = {f"{part}_{field}": [] for part in ("train", "test")
                             for field in ("texts", "labels", "documents")}
    data["classes"] = list(classes)
    for label, prefix in enumerate(classes):
        paths = sorted((p for p, _ in docs if p.startswith(prefix)),
                       key=lambda p: hashlib.sha256(p.encode()).hexdigest())
        test_docs, members = set(paths[::4]), set(paths)
        pools: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}  # (path, paragraph)
        for path, text in docs:
            if path in members:
                pools["test" if path in test_docs else "train"] += [(path, para) for para in
                                                                    _prose_paragraphs(text, min_chars)]
        for part, n in (("train", n_train), ("test", n_test)):
            if len(pools[part]) < n:
                raise ValueError(f"class {prefix!r} has only {len(pools[part])} {part} paragraphs, asked for {n}")
            pick = torch.randperm(len(pools[part]), generator=gen)[:n].tolist()
            data[f"{part}_texts"] += [pools[part][i][1] for i in pick]
            data[f"{part}_documents"] += [pools[part][i][0] for i in pick]
            data[f"{part}_labels"] += [label] * n
    return data


class EncoderClassifier(nn.Module):
    """logits (B, K) = head(mean over real tokens of encoder(ids).last_hidden_state)."""

    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled token states (B, C): Σ_t m_t h_t / Σ_t m_t."""
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask))


def classifier_outputs(model: EncoderClassifier, inputs: dict, hidden: bool = False,
                       attention: bool = False) -> Outputs:
    """`Outputs` of an `EncoderClassifier` for `distill`: logits (B, K); hidden states if asked."""
    if attention:
        raise ValueError("attention maps are not collected for the encoder task; use attention_weight=0")
    if not hidden:
        return Outputs(model(**inputs))
    out = model.encoder(**inputs, output_hidden_states=True)
    m = inputs["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
    logits = model.head((out.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1.0))
    return Outputs(logits, list(out.hidden_states))


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Token ids and attention mask (N, max_length), truncated and padded."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def predict(model: EncoderClassifier, inputs: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Logits (N, K) over all examples, in batches."""
    model.eval()
    n = len(inputs["input_ids"])
    return torch.cat([model(**{k: v[i:i + batch_size] for k, v in inputs.items()}) for i in range(0, n, batch_size)])


def fit_head(model: EncoderClassifier, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
             weight_decay: float = 1e-2, steps: int = 200) -> float:
    """Train only the linear head (logistic regression on frozen pooled features) with L-BFGS.

    Minimises CE(head(x̄), y) + weight_decay·‖W‖²; returns that objective at the end.
    """
    with torch.no_grad():
        n = len(labels)
        feats = torch.cat([model.pooled(**{k: v[i:i + 64] for k, v in inputs.items()}) for i in range(0, n, 64)])
    opt = torch.optim.LBFGS(model.head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = cross_entropy(model.head(feats), labels) + weight_decay * model.head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(closure().detach())


def bert_student(teacher: EncoderClassifier, n_layer: int = 2, from_teacher: bool = True,
                 freeze_embeddings: bool = True) -> EncoderClassifier:
    """A copy of ``teacher`` with ``n_layer`` encoder layers (teacher layers ⌊i·L/M⌋ when from_teacher).

    from_teacher=False re-initialises every encoder layer and the head (embeddings stay the
    teacher's). ``freeze_embeddings`` keeps the 30522×C word embeddings fixed (fast CPU training).
    """
    student = copy.deepcopy(teacher)
    n_teacher = len(teacher.encoder.encoder.layer)
    if not 1 <= n_layer <= n_teacher:
        raise ValueError(f"n_layer must lie in [1, {n_teacher}], got {n_layer}")
    student.encoder.encoder.layer = student.encoder.encoder.layer[:n_layer]
    student.encoder.config.num_hidden_layers = n_layer
    if from_teacher:
        init_from_teacher(student, teacher)
    else:
        for module in list(student.encoder.encoder.layer.modules()) + [student.head]:
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()
    student.encoder.embeddings.requires_grad_(not freeze_embeddings)
    return student


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of examples whose arg-max logit is the label."""
    return (logits.argmax(-1) == labels).float().mean().item()


def run_encoder_task(encoder: nn.Module, tokenizer, *, n_train: int = 40, n_test: int = 20, max_length: int = 32,
                     epochs: int = 3, batch_size: int = 32, lr: float = 3e-4, temperature: float = 2.0,
                     alpha: float = 1.0, n_layer: int = 2, students: tuple[str, ...] = ("kd", "hard"),
                     seed: int = 0, data_seed: int | None = None, progress: bool = True) -> dict:
    """Teacher (encoder + fitted head) vs ``n_layer``-layer students, test accuracy of each.

    students: "kd" (teacher-layer init, `kd_loss` with ``temperature``, ``alpha``), "hard" (same
    init, labels only), "kd-random" (KD from randomly initialised layers). Returns a JSON-ready
    dict with the data sizes, accuracies, the fraction of the teacher's accuracy each student
    retains, the parameter counts, and per test paragraph whether each model was right
    (``teacher_correct``, ``student_<name>_correct``: lists of 0/1, for paired comparisons) with the
    document each test paragraph comes from (``test_documents``: index into the sorted test pages, ints;
    the ``groups`` of `lab.core.stats.compare`, which then resamples whole pages). ``data_seed`` draws the
    paragraphs (default ``seed``); ``seed`` the heads' initialisation and the batch order, so that runs at
    several seeds with one ``data_seed`` score the same test paragraphs.
    """
    from lab.distill.loop import KDLoss, TeacherCache, distill

    _check_task_args(encoder, tokenizer, n_train=n_train, n_test=n_test, max_length=max_length, epochs=epochs,
                     batch_size=batch_size, lr=lr, temperature=temperature, alpha=alpha, n_layer=n_layer,
                     students=students, seed=seed, data_seed=data_seed, progress=progress)
    device = next(encoder.parameters()).device
    data = paragraph_dataset(n_train, n_test, seed=seed if data_seed is None else data_seed)
    train, test = ({k: v.to(device) for k, v in encode(tokenizer, data[f"{part}_texts"], max_length).items()}
                   for part in ("train", "test"))
    y_train, y_test = (torch.tensor(data[f"{part}_labels"], device=device) for part in ("train", "test"))
    torch.manual_seed(seed)
    teacher = EncoderClassifier(encoder, len(data["classes"])).to(device)
    fit_head(teacher, train, y_train)
    teacher_logits = predict(teacher, test)
    pages = sorted(set(data["test_documents"]))
    result = {"classes": data["classes"], "n_train": len(y_train), "n_test": len(y_test), "max_length": max_length,
              "test_documents": [pages.index(path) for path in data["test_documents"]],
              "teacher_accuracy": accuracy(teacher_logits, y_test),
              "teacher_correct": (teacher_logits.argmax(-1) == y_test).int().tolist(),
              "teacher_params": sum(p.numel() for p in teacher.parameters())}
    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed)).to(device)
    batches = [({k: v[order[i:i + batch_size]] for k, v in train.items()}, y_train[order[i:i + batch_size]])
               for i in range(0, len(y_train), batch_size)]
    cache = TeacherCache(teacher, classifier_outputs)
    settings = {"kd": (True, alpha), "hard": (True, 0.0), "kd-random": (False, alpha)}
    for name in students:
        from_teacher, a = settings[name]
        student = bert_student(teacher, n_layer, from_teacher=from_teacher)
        kd = KDLoss(cache, temperature=temperature, alpha=a, outputs_fn=classifier_outputs)
        distill(student, batches, epochs * len(batches), kd, optim=Optim(lr, warmup=max(1, len(batches) // 2)),
                progress=progress and f"encoder student ({name})")
        logits = predict(student, test)
        acc = accuracy(logits, y_test)
        result[f"student_{name}_accuracy"] = acc
        result[f"student_{name}_correct"] = (logits.argmax(-1) == y_test).int().tolist()
        result[f"student_{name}_retained"] = acc / result["teacher_accuracy"]
        result["student_params"] = sum(p.numel() for p in student.parameters())
    return result



def _check_task_args(encoder: nn.Module, tokenizer, *, n_train: int, n_test: int, max_length: int, epochs: int,
                     batch_size: int, lr: float, temperature: float, alpha: float, n_layer: int,
                     students: tuple[str, ...], seed: int, data_seed: int | None, progress: bool) -> None:
    """`run_encoder_task`'s arguments, checked before the corpus is read or the teacher's head is fitted."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "config") or not isinstance(layers, nn.ModuleList):
        raise TypeError("encoder must be a transformers BERT encoder (a BertModel, as `load_pretrained_encoder` "
                        f"returns: .config, .encoder.layer), got {type(encoder).__name__}")
    if next(encoder.parameters(), None) is None:
        raise ValueError("encoder has no parameters (they give the device the task runs on)")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be the encoder's tokenizer (callable on a list of texts), got "
                        f"{tokenizer!r:.80} ({type(tokenizer).__name__})")
    for name, value in (("n_train", n_train), ("n_test", n_test), ("epochs", epochs), ("batch_size", batch_size)):
        check_int(name, value)
    # [CLS] and [SEP] take two of the max_length positions: fewer than 3 leaves no room for the paragraph
    check_int("max_length", max_length, 3, getattr(encoder.config, "max_position_embeddings", None))
    check_number("lr", lr, 0.0, closed=(False, True))
    check_number("temperature", temperature, 0.0, closed=(False, True))
    check_fraction("alpha", alpha)
    check_int("n_layer", n_layer, 1, len(layers))
    if not isinstance(students, (tuple, list)):
        raise TypeError(f"students must be a tuple of student names from {STUDENTS}, got {students!r:.80}")
    for name in students:
        check_choice("students", name, STUDENTS)
    check_int("seed", seed, None)
    if data_seed is not None:
        check_int("data_seed", data_seed, None)
    check_choice("progress", progress, (False, True))
