"""Suite ``quant-seeds`` of `lab.bench` (chapter 3): the notebook's quantization runs at every seed.

GPTQ, AWQ and static activation scales read calibration data, and a fine-tuning reads its batches, so their
perplexity depends on a seed; the chapter's intervals resample the seeds as well as the documents. Running every
method at every seed does not fit the notebook's three minutes, so this suite runs them and the notebook re-runs
those of its own seed that it needs and checks them against the record (`lab.core.records.seeded_sums`).
Three experiments, each scored on the notebook's evaluation tokens beside "fp32" (the book's model):

* ``weights``: every decoder linear rounded by RTN, GPTQ or AWQ: "rtn w4 g64" (groups of 64 input columns),
  "gptq w3 channel" (one scale per output channel), ...; the record also keeps each run's mean layer error
  ‖WX − ŴX‖²_F / ‖WX‖²_F on the calibration inputs (``layer_errors``, one value per seed);
* ``w8a8``: W8A8 with dynamic per-token activation scales ("W8A8 per token") and with one static min–max scale
  per tensor from the calibration windows ("W8A8 per tensor");
* ``qat``: `QAT_STEPS` steps of fine-tuning with the 2-bit grid in the forward pass ("QAT"), and the same
  fine-tuning in fp32 then RTN ("fine-tune then RTN"), on the batches of seed k + 1.

Calibration: 32 windows of 128 train tokens per seed (`lab.models.next_token.calibration_windows`, the
notebook's windows). Runs that read no seed (RTN, per-token W8A8) run once and stand for every seed.
"""

from __future__ import annotations

import torch
from torch import nn

from lab.core.checks import check_choice, check_int, check_list
from lab.models.next_token import train_lm
from lab.quant.linear import w8a8_quantize_model
from lab.quant.model import quantize_model, rtn_quantize_model
from lab.quant.qat import finish_qat, prepare_qat
from lab.seeded import Methods, run_seeded

SEEDS = (0, 1, 2)
SETTINGS = {"eval_tokens": 8192, "calib_samples": 32, "calib_len": 128, "group_size": 64,
            "bits": [8, 4, 3, 2], "qat": {"bits": 2, "steps": 30, "batch": 4, "lr": 1e-4}}
QUICK = {**SETTINGS, "eval_tokens": 512, "calib_samples": 2, "calib_len": 32, "group_size": 16, "bits": [4],
         "qat": {"bits": 2, "steps": 2, "batch": 2, "lr": 1e-4}}


def weight_runs(bits: list[int]) -> list[tuple[str, int, str]]:
    """(method, bits, grid) of experiment ``weights``: RTN at every width, GPTQ below 8 bits and AWQ at 3 bits in
    groups ("g"), RTN and GPTQ at 4 and 3 bits per channel ("channel")."""
    check_list("bits", bits, lambda name, b: check_int(name, b, 2, 8))
    runs = [("rtn", b, "g") for b in bits] + [("gptq", b, "g") for b in bits if b < 8] + [("awq", 3, "g")]
    return runs + [(m, b, "channel") for m in ("rtn", "gptq") for b in (4, 3) if b in bits]


def weight_name(method: str, bits: int, grid: str, group_size: int) -> str:
    """The record's name of a weight run: "gptq w3 g64" in groups of ``group_size``, "gptq w3 channel" per
    channel (``grid`` "g" or "channel")."""
    check_choice("method", method, ("rtn", "gptq", "awq"))
    check_int("bits", bits, 2, 8)
    check_choice("grid", grid, ("g", "channel"))
    check_int("group_size", group_size)
    return f"{method} w{bits} {f'g{group_size}' if grid == 'g' else 'channel'}"


def _qat(settings: dict, train_ids: torch.Tensor, with_grid: bool):
    """method(model, seed): the fine-tuning of experiment ``qat``, with the grid in the forward pass or after."""
    q, g = settings["qat"], settings["group_size"]

    def method(model: nn.Module, seed: int) -> None:
        if with_grid:
            prepare_qat(model, q["bits"], g)
        train_lm(model, train_ids, steps=q["steps"], batch_size=q["batch"], seq_len=settings["calib_len"],
                 lr=q["lr"], warmup=5, weight_decay=0.0, seed=seed + 1, progress=False)
        if with_grid:
            finish_qat(model)
        else:
            rtn_quantize_model(model, q["bits"], g)
    return method


def methods(settings: dict, calibs: dict[int, torch.Tensor], train_ids: torch.Tensor) -> Methods:
    """{experiment: {run: (reads a seed, method(model, seed))}} (`lab.seeded.score_methods`); a weight run's
    method returns its mean layer error."""
    g = settings["group_size"]

    def rounded(method: str, bits: int, grid: str):
        def rounding(model: nn.Module, seed: int) -> float:
            errors = quantize_model(model, method, bits, g if grid == "g" else None, calibs[seed], progress=False)
            return sum(r["error"] for r in errors.values()) / len(errors)
        return rounding

    weights = {weight_name(m, b, grid, g): (m != "rtn", rounded(m, b, grid)) for m, b, grid in weight_runs(
        settings["bits"])}
    w8a8 = {"W8A8 per token": (False, lambda model, k: w8a8_quantize_model(model, "token", 8)),
            "W8A8 per tensor": (True, lambda model, k: w8a8_quantize_model(model, "tensor", 8,
                                                                           lambda: model(calibs[k])))}
    qat = {"QAT": (True, _qat(settings, train_ids, True)),
           "fine-tune then RTN": (True, _qat(settings, train_ids, False))}
    return {"weights": weights, "w8a8": w8a8, "qat": qat}


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Every run of `methods` at each seed of `SEEDS`, on the CPU (the notebook's device): `lab.seeded.run_seeded`'s
    record, its weight runs' mean layer errors as "layer_errors" {run: [one per seed]}."""
    settings = QUICK if quick else SETTINGS
    record = run_seeded("quant-seeds", device, settings, SEEDS, progress,
                        lambda lm, calibs, train_ids: methods(settings, calibs, train_ids))
    record["layer_errors"] = record.pop("kept")
    return record
