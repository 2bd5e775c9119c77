"""The seeds suites' shared core: methods applied to copies of the book's model, scored at each seed.

A method that reads calibration data or training batches gives a different model at each seed; chapters 2
and 3 compare methods with intervals that resample those seeds with the test documents. `score_methods` runs
every method at every seed on the evaluation sample; `run_seeded` is a whole suite on the book's model (the
notebooks' evaluation tokens and calibration windows), returning the record `lab.core.records.seeded_sums`
reads back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from lab.core.checks import check_int
from lab.core.records import add_seed
from lab.data import eval_sample, tokenize_split
from lab.models import load_pretrained_lm, load_tokenizer
from lab.models.next_token import calibration_windows
from lab.perplexity import EvalSample

__all__ = ["score_methods", "run_seeded", "Methods"]

Methods = dict[str, dict[str, tuple[bool, Callable]]]    # {experiment: {run: (seeded, method(model, seed))}}


def score_methods(model: torch.nn.Module, methods: Methods, sample: EvalSample, seeds, progress: bool = True,
                  desc: str = "runs") -> tuple[dict, dict]:
    """Each method of ``methods`` applied to a copy of ``model``, scored on ``sample`` at each seed.

    methods: {experiment: {run: (seeded, method)}}, where ``method(model, seed)`` changes the model in place; a
    number it returns (a layer error) is kept, anything else ignored. A method with ``seeded`` False does not
    depend on the seed: it runs once and its losses stand for every seed. Every experiment also holds "fp32",
    ``model`` itself. seeds: the seeds, each handed to the methods (calibration samples, fine-tuning batches).
    Returns (losses, kept): losses {seed: {experiment: {run: per-token NLL (n,) float64}}}, what
    `lab.core.records.add_seed` takes one seed at a time; kept {run: [its number at each seed]}, for the runs
    whose method returned one.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(methods, dict) or not all(isinstance(runs, dict) for runs in methods.values()):
        raise TypeError(f"methods must be {{experiment: {{run: (seeded, method)}}}}, got {methods!r:.200}")
    seeds = list(seeds)
    for i, seed in enumerate(seeds):
        check_int(f"seeds[{i}]", seed, 0)
    fp32 = sample.token_losses(model)
    once: dict[tuple[str, str], tuple] = {}    # the last run of each (experiment, run)
    losses: dict = {seed: {experiment: {"fp32": fp32} for experiment in methods} for seed in seeds}
    kept: dict[str, list] = {}
    todo = [(seed, experiment, run, seeded, method) for seed in seeds
            for experiment, runs in methods.items() for run, (seeded, method) in runs.items()]
    for seed, experiment, run, seeded, method in tqdm(todo, desc=desc, disable=not progress):
        if seeded or (experiment, run) not in once:
            copied = copy.deepcopy(model)
            value = method(copied, seed)
            once[experiment, run] = sample.token_losses(copied), value
        nll, value = once[experiment, run]
        losses[seed][experiment][run] = nll
        if isinstance(value, (int, float)):
            kept.setdefault(run, []).append(float(value))
    return losses, kept


def run_seeded(suite: str, device: torch.device, settings: dict, seeds, progress: bool,
               methods_of: Callable[[torch.nn.Module, dict[int, torch.Tensor], torch.Tensor], Methods]) -> dict:
    """Suite ``suite`` on the book's model: `score_methods` of ``methods_of(model, calibs, train_ids)`` at each
    seed, on the CPU (where the notebooks that check its record run).

    settings: "eval_tokens" (`lab.data.eval_sample`) and, for a suite that calibrates, "calib_samples" and
    "calib_len" (calibs: {seed: (n, len) train-split ids}, `lab.models.next_token.calibration_windows`; {}
    without them). Returns the record's body {"seeds",
    "settings", "threads", "experiments": {name: {"sizes", "sums": {run: (S, G) nested lists}}}}, and "kept":
    {run: [the number its method returned, per seed]} when a method returned one.
    """
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: suite {suite} runs on the cpu, where the notebooks that check "
                         "against its record run")
    tokenizer, lm = load_tokenizer(), load_pretrained_lm("lab")
    sample, train_ids = eval_sample(tokenizer, settings["eval_tokens"]), tokenize_split("train", tokenizer)
    calibs = {}
    if "calib_samples" in settings:
        n_tokens, window = settings["calib_samples"] * settings["calib_len"], settings["calib_len"]
        calibs = {seed: calibration_windows(train_ids, n_tokens, window, seed) for seed in seeds}
    losses, kept = score_methods(lm, methods_of(lm, calibs, train_ids), sample, seeds, progress, suite)
    experiments: dict = {}
    for seed in seeds:
        add_seed(experiments, {name: (runs, sample.documents) for name, runs in losses[seed].items()})
    return {"seeds": list(seeds), "settings": settings, "threads": torch.get_num_threads(),
            "experiments": experiments, **({"kept": kept} if kept else {})}
