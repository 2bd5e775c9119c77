"""Suite ``mx-formats`` of `lab.bench` (chapter 3): MXFP4 and NVFP4 on the book's model and on its planted twin.

Every decoder linear of the model in the format (`lab.quant.mx.mx_quantize_model`), its weights only ("weights")
or its weights and its inputs, one global scale per token ("W4A4"), scored on the notebook's evaluation tokens
beside the model itself ("fp32"). The runs read no data and no seed, so the record holds one row per run;
"book" is the book's model, "planted" its twin with `lab.quant.planted.PLANT`'s outlier channels
(`lab.quant.planted.book_and_planted`), where a block of 32 or 16 inputs shares its scale with an outlier.
Runs are named "book · mxfp4 weights", ..., "planted · fp32"; the record's "bits" holds each run's bits per
weight of the decoder linears, scales counted. The notebook re-runs one and reads the rest.
"""

from __future__ import annotations

import torch

from lab.data import eval_sample
from lab.models import load_tokenizer
from lab.quant.mx import mx_quantize_model
from lab.quant.planted import PLANT, score_book_and_planted
from lab.seeded import Methods

__all__ = ["mx_run_name"]

SEED = 0                                          # a formality: no run reads a seed
SETTINGS = {"eval_tokens": 8192, "formats": ["mxfp4", "nvfp4"], "plant": PLANT}
QUICK = {**SETTINGS, "eval_tokens": 512}


def mx_run_name(fmt: str, activations: bool) -> str:
    """The record's name of a run on one model: "mxfp4 weights", "nvfp4 W4A4"."""
    if not isinstance(activations, bool):
        raise TypeError(f"activations must be a bool, got {activations!r}")
    if fmt not in SETTINGS["formats"]:
        raise ValueError(f"fmt={fmt!r} is not allowed; use one of {SETTINGS['formats']}")
    return f"{fmt} {'W4A4' if activations else 'weights'}"


def methods(settings: dict) -> Methods:
    """{"formats": {run: (False, method(model, seed) → bits per weight)}} (`lab.seeded.score_methods`)."""
    def method(fmt: str, activations: bool):
        def quantize(model: torch.nn.Module, seed: int) -> float:
            n_weights = sum(m.weight.numel() for m in model.layers.modules() if isinstance(m, torch.nn.Linear))
            return 8 * mx_quantize_model(model, fmt, activations)[1] / n_weights
        return quantize
    return {"formats": {mx_run_name(f, a): (False, method(f, a)) for f in settings["formats"] for a in (False, True)}}


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Every run on "book" and "planted", on the CPU (the notebook's device): {"seeds": [0], "settings", "threads",
    "experiments": {"formats": {"sizes", "sums"}}, "bits": {run: bits per weight}}."""
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: suite mx-formats runs on the cpu, where the notebook that checks "
                         "against its record runs")
    settings = QUICK if quick else SETTINGS
    sample = eval_sample(load_tokenizer(), settings["eval_tokens"])
    experiments, kept = score_book_and_planted(methods(settings), sample, [SEED], progress, "mx-formats")
    return {"seeds": [SEED], "settings": settings, "threads": torch.get_num_threads(), "experiments": experiments,
            "bits": {run: values[0] for run, values in kept.items()}}
