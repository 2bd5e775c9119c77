"""Suite ``planted`` of `lab.bench` (chapters 2 and 3): the methods made for outliers, on the book's model and on
its planted twin.

The book's model has no activation outliers, so the methods invented for them have nothing to do there.
`plant_outliers` (factor c = 50, 4 channels of every norm, seed 0) makes a twin that computes the same function
(logits equal up to rounding) but whose q/k/v and gate/up inputs carry a few channels 50× larger, the pattern
large models show. Every method runs on both, "book" and "planted", and is scored on the same evaluation
tokens, so a notebook can compare each method with its own model's fp32 losses and with the other methods:

* ``activations``: W8A8 with one static min–max scale per tensor, with dynamic per-token scales, LLM.int8()'s
  decomposition (outlier columns, max |x_j| ≥ 6, in float16; `lab.quant.int8_decomposition`), and
  SmoothQuant (α ∈ `ALPHAS`, folded into the norms) before per-tensor W8A8, and α = 0.5 before per-token.
* ``weights``: RTN, AWQ and GPTQ at 4 and 3 bits, groups of 64 input columns.
* ``pruning``: 50% unstructured by magnitude over the whole matrix, by magnitude within each row, by Wanda
  (|W_ij|·‖X_j‖ within each row) and by SparseGPT.

Methods that read calibration data run on each calibration sample of `SEEDS` (the notebooks' windows:
32 × 128 train tokens, `lab.models.next_token.calibration_windows`); the others run once and their
losses stand for every seed. The record keeps per-document loss sums (`lab.core.records.add_seed`); a notebook
checks its own runs against the row of its seed (`lab.core.records.seeded_sums`) and compares with
`lab.core.stats.compare_sums`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from lab.core.records import add_seed
from lab.data import eval_sample, tokenize_split
from lab.models import load_pretrained_lm, load_tokenizer
from lab.models.next_token import calibration_windows
from lab.perplexity import EvalSample
from lab.prune.sequential import prune_model
from lab.quant.int8_decomposition import int8_decomposed_model
from lab.quant.linear import w8a8_quantize_model
from lab.quant.model import quantize_model
from lab.quant.scaling import activation_abs_max, plant_outliers, smoothquant
from lab.seeded import Methods, score_methods

SEEDS = (0, 1, 2)
PLANT = {"factor": 50.0, "n_channels": 4, "seed": 0}
ALPHAS = (0.25, 0.5, 0.75)
SETTINGS = {"eval_tokens": 8192, "calib_samples": 32, "calib_len": 128, "group_size": 64, "sparsity": 0.5,
            "plant": PLANT, "alphas": list(ALPHAS)}
QUICK = {**SETTINGS, "eval_tokens": 512, "calib_samples": 2, "calib_len": 32}

Method = Callable[[nn.Module, int], None]   # (model, calibration seed) → None, in place


def _smoothed(alpha: float, act: str, calibs: dict[int, torch.Tensor]) -> Method:
    def method(model: nn.Module, seed: int) -> None:
        smoothquant(model, activation_abs_max(model, lambda: model(calibs[seed])), alpha)
        w8a8_quantize_model(model, act, 8, lambda: model(calibs[seed]))
    return method


def methods(settings: dict, calibs: dict[int, torch.Tensor]) -> dict[str, dict[str, tuple[bool, Method]]]:
    """{experiment: {run: (reads calibration data, method)}}: every method of the suite, by experiment, each
    calibrated on ``calibs[seed]`` (`lab.seeded.score_methods`' form)."""
    g, s = settings["group_size"], settings["sparsity"]
    activations = {
        "W8A8 per tensor": (True, lambda m, k: w8a8_quantize_model(m, "tensor", 8, lambda: m(calibs[k]))),
        "W8A8 per token": (False, lambda m, k: w8a8_quantize_model(m, "token")),
        "LLM.int8()": (False, lambda m, k: int8_decomposed_model(m)),
        **{f"SmoothQuant {a:g} per tensor": (True, _smoothed(a, "tensor", calibs)) for a in settings["alphas"]},
        "SmoothQuant 0.5 per token": (True, _smoothed(0.5, "token", calibs))}
    weights = {f"{name} w{b}": (name != "RTN", lambda m, k, key=key, b=b: quantize_model(
                   m, key, b, g, calibs[k], progress=False))
               for name, key in (("RTN", "rtn"), ("AWQ", "awq"), ("GPTQ", "gptq")) for b in (4, 3)}
    pruning = {name: (key == "wanda" or key == "sparsegpt",
                      lambda m, k, key=key: prune_model(m, key, s, calibs[k], progress=False))
               for name, key in (("magnitude", "magnitude"), ("row magnitude", "row_magnitude"), ("Wanda", "wanda"),
                                 ("SparseGPT", "sparsegpt"))}
    return {"activations": activations, "weights": weights, "pruning": pruning}


def book_and_planted() -> dict[str, nn.Module]:
    """{"book": the book's model, "planted": its twin with `PLANT`'s outliers}."""
    book = load_pretrained_lm("lab")
    planted = copy.deepcopy(book)
    plant_outliers(planted, **PLANT)
    return {"book": book, "planted": planted}


def score_book_and_planted(methods: Methods, sample: EvalSample, seeds, progress: bool,
                           suite: str) -> tuple[dict, dict]:
    """`lab.seeded.score_methods` of ``methods`` on both models of `book_and_planted`, each run named after its model
    ("book · W8A8 per token", ..., "planted · fp32"). Returns (the record's "experiments" {name: {"sizes", "sums"}}
    at ``seeds``, kept {run: [the number its method returned, per seed]})."""
    results: dict[int, dict[str, dict[str, torch.Tensor]]] = {seed: {} for seed in seeds}
    kept_runs: dict[str, list] = {}
    for name, model in book_and_planted().items():
        losses, kept = score_methods(model, methods, sample, seeds, progress, f"{suite}: {name}")
        for seed, experiments in losses.items():
            for experiment, runs in experiments.items():
                results[seed].setdefault(experiment, {}).update({f"{name} · {run}": nll for run, nll in runs.items()})
        kept_runs.update({f"{name} · {run}": values for run, values in kept.items()})
    experiments: dict = {}
    for seed in seeds:
        add_seed(experiments, {name: (runs, sample.documents) for name, runs in results[seed].items()})
    return experiments, kept_runs


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Every method of `methods` on "book" and "planted", at each seed of `SEEDS`, on the CPU (the notebooks'
    device). Runs are named "book · W8A8 per token", ..., and "book · fp32". Returns {"seeds", "settings",
    "threads", "experiments": {name: {"sizes", "sums": {run: (S, G) nested lists}}}}."""
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: suite planted runs on the cpu, where the notebooks that check "
                         "against its record run")
    settings = QUICK if quick else SETTINGS
    tokenizer = load_tokenizer()
    sample = eval_sample(tokenizer, settings["eval_tokens"])
    train_ids = tokenize_split("train", tokenizer)
    n_tokens, window = settings["calib_samples"] * settings["calib_len"], settings["calib_len"]
    calibs = {seed: calibration_windows(train_ids, n_tokens, window, seed) for seed in SEEDS}
    experiments, _ = score_book_and_planted(methods(settings, calibs), sample, SEEDS, progress, "planted")
    return {"seeds": list(SEEDS), "settings": settings, "threads": torch.get_num_threads(), "experiments": experiments}
