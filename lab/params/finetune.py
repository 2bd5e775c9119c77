"""Fine-tuning runs that differ only in what they store: the optimizer, or which parameters train.

The second page of chapter 1 (`notebooks/01b_training_with_fewer_bytes`) compares optimizers (AdamW,
Adafactor, 8-bit Adam) and parameterisations (full fine-tuning, LoRA, QLoRA) at equal steps on
identical batches. Each run is the book's one loop, `lab.models.loop.train`, with the next-token loss
(`lab.models.next_token.lm_batch_loss`) and the learning rate η_t warmed up linearly over ``warmup`` steps,
then decayed by a cosine to 0.1·η (`lab.models.loop.lr_at`); gradients are clipped at norm ``grad_clip``.
The optimizer is built over the parameters with ``requires_grad`` only (after `add_lora`: each
LoRA layer's A and B), so its state holds K bytes per *trainable* parameter. Adam-type optimizers
use the loop's β = (0.9, 0.95); Adafactor keeps no first moment (β1 = None), its memory-saving form.

A run ends with the per-token losses ℓ_t (nats) of an evaluation sample (`lab.perplexity.EvalSample`:
the shared test sample `lab.data.eval_sample`, or `document_sample` of the task's held-out text);
two runs scored on the same sample are paired by `lab.core.stats.compare`, which resamples its groups:

    Δ = (1/N) Σ_t (ℓ^b_t − ℓ^a_t) = log PPL_b − log PPL_a.

`document_tokens` gives the tokens of one corpus document, the fine-tuning task of that page:
a document of the validation split, which pretraining never trained on. `lr_sweep` checks a peak rate:
one run per rate on the same batches, each scored on the same tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from lab.core.checks import check_choice, check_int, check_number
from lab.data import EVAL_CONTEXT, EVAL_WINDOW, corpus_documents, split_of
from lab.models.loop import BETAS, Optim, train
from lab.models.next_token import lm_batch_loss
from lab.params.lora import add_lora
from lab.params.measured_memory import make_optimizer, optimizer_state_tensors, storage_bytes
from lab.params.memory import OPTIMIZERS
from lab.perplexity import EvalSample

_WITH_BETAS = ("adam", "adamw", "adam8bit")


def document_tokens(path: str, tokenizer) -> torch.Tensor:
    """The tokens of one corpus document (``path`` relative to the sources, e.g.
    "library/sqlite3.rst.txt"): a 1-D int64 tensor, no EOS, tokenized as `lab.data.tokenize_split` does."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str such as 'library/sqlite3.rst.txt', got {type(path).__name__}")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a transformers tokenizer (callable on a text), got "
                        f"{type(tokenizer).__name__}")
    split = split_of(path)
    documents = dict(corpus_documents(split))
    if path not in documents:
        examples = sorted(documents)[:3]
        raise ValueError(f"path={path!r} is not a corpus document; allowed: the relative paths of "
                         f"lab.data.corpus_documents(split), e.g. {examples}")
    ids = tokenizer(documents[path], add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


def finetune(model: nn.Module, batches: Sequence, optimizer: str = "adamw", *, lr: float, warmup: int = 3,
             weight_decay: float = 0.0, grad_clip: float | None = 1.0,
             sample: EvalSample | None = None, progress: bool = False) -> dict:
    """Train the parameters of ``model`` that require grad, in place, one step per batch of ``batches``.

    ``batches``: a sequence of (x, y) pairs, ids (B, T) and next-token targets (B, T), int64 (every run
    of a comparison gets the same list). ``optimizer``: a name of `lab.params.memory.OPTIMIZERS`
    ("adamw", "adafactor", "adam8bit", …), built by `make_optimizer` with peak rate ``lr`` and decay
    ``weight_decay`` (Adafactor: fixed rate, no relative step, no parameter scaling).

    Returns `lab.models.loop.train`'s record (per-step ``loss``, ``lr``, ``seconds``) plus
    ``trainable_parameters`` (numbers trained), ``optimizer_state_bytes`` (storage of the optimizer's
    state tensors after the last step, 0-dim step counters excluded, as
    `lab.params.measured_memory.measure_training_memory_cpu` counts them) and ``token_losses``: the trained
    model's per-token NLL on ``sample`` (`EvalSample.token_losses`: float64 (N,), aligned with
    ``sample.tokens``), or None without it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batches, Sequence) or not len(batches):
        raise TypeError(f"batches must be a non-empty sequence (a list) of (x, y) pairs, got {batches!r:.80}")
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_number("lr", lr, 0.0, closed=(False, True))
    check_number("weight_decay", weight_decay, 0.0)
    check_choice("progress", progress, (False, True))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameter with requires_grad=True; nothing would be trained")
    if sample is not None and not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be a lab.perplexity.EvalSample (lab.data.eval_sample, document_sample) "
                        f"or None, got {type(sample).__name__}")
    context = getattr(getattr(model, "config", None), "context_length", None)
    if sample is not None and context is not None:               # before training: it is scored after it
        sample.check_fits(context, "the model's context_length")
    extra = {"betas": BETAS} if optimizer in _WITH_BETAS else {}
    opt = make_optimizer(params, optimizer, lr=lr, weight_decay=weight_decay, **extra)
    record = train(model, batches, lm_batch_loss, len(batches), optim=Optim(lr, warmup, weight_decay, grad_clip),
                   optimizer=opt, progress=progress)
    states = optimizer_state_tensors(opt)
    record["trainable_parameters"] = sum(p.numel() for p in params)
    record["optimizer_state_bytes"] = storage_bytes(states)
    record["token_losses"] = None
    if sample is not None:
        record["token_losses"] = sample.token_losses(model)
    return record


def document_sample(tokens: torch.Tensor, start: int, window: int = EVAL_WINDOW,
                    context: int = EVAL_CONTEXT) -> EvalSample:
    """Every token of ``tokens[start:]`` scored once: the held-out part of one document as an `EvalSample`.

    ``tokens``: one document, 1-D int64 (n,); 1 <= ``start`` < n. The n − start positions are cut into
    k = ⌈(n − start) / window⌉ consecutive windows of near-equal length (at most ``window``), each
    scored after the up to ``context`` tokens before it, from the same document (the text before
    ``start`` included), not scored, as `lab.data.eval_sample` scores the test documents.
    ``documents`` (n − start,) holds each token's window index: with one document, the windows are the
    units `lab.core.stats.compare` resamples, and its interval speaks of text like this document's.
    """
    if not (isinstance(tokens, torch.Tensor) and tokens.dim() == 1 and tokens.dtype == torch.int64):
        raise TypeError(f"tokens must be a 1-D int64 tensor (one document), got {tokens!r:.80}")
    if len(tokens) < 2:
        raise ValueError(f"tokens has {len(tokens)} token(s); a document to split needs at least 2")
    if bool((tokens < 0).any()):
        raise ValueError(f"tokens must hold token ids ≥ 0, got a minimum of {tokens.min().item()}")
    check_int("start", start, 1, len(tokens) - 1)
    check_int("window", window, 1)
    check_int("context", context, 1)
    k = -(-(len(tokens) - start) // window)
    inputs, n_context, documents = [], [], []
    for g, positions in enumerate(torch.arange(start, len(tokens)).tensor_split(k)):
        begin, end = int(positions[0]), int(positions[-1]) + 1
        c = min(context, begin)
        inputs.append(tokens[begin - c:end])
        n_context.append(c)
        documents.append(torch.full((end - begin,), g, dtype=torch.int64))
    return EvalSample(tuple(inputs), tuple(n_context), tokens[start:].clone(), torch.cat(documents))


def lr_sweep(model: nn.Module, batches: Sequence, rates: Sequence[float], sample: EvalSample, *,
             lora: dict | None = None) -> dict[float, torch.Tensor]:
    """Fine-tune a copy of ``model`` with AdamW at each peak rate of ``rates`` on the same ``batches``;
    return {rate: the trained copy's per-token NLL on ``sample``, float64 (N,)}, to compare the rates
    paired on the same tokens (`lab.core.stats.compare` over ``sample.documents``).

    ``lora``: None trains every parameter; else the keyword arguments of `lab.params.lora.add_lora`
    ({"r", "alpha", "targets"}), applied to each copy before it trains (its A drawn from the global
    generator). ``model`` itself is left unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(rates, str) or not isinstance(rates, Sequence) or not rates:
        raise TypeError(f"rates must be a non-empty sequence of peak learning rates, got {rates!r:.80}")
    for i, lr in enumerate(rates):                       # all of them before the first run trains
        check_number(f"rates[{i}]", lr, 0.0, closed=(False, True))
    if len(set(rates)) < len(rates):
        raise ValueError(f"rates={list(rates)!r} repeats a rate; each rate keys one result, give it once")
    if not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be a lab.perplexity.EvalSample (document_sample, lab.data.eval_sample), "
                        f"got {type(sample).__name__}")
    if lora is not None and not isinstance(lora, dict):
        raise TypeError(f"lora must be None or a dict of add_lora keyword arguments, got {type(lora).__name__}")
    losses = {}
    for lr in rates:
        trial = copy.deepcopy(model)
        if lora is not None:
            add_lora(trial, **lora)
        losses[lr] = finetune(trial, batches, "adamw", lr=lr, sample=sample)["token_losses"]
    return losses
