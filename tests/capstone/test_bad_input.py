"""Bad input to lab.capstone's public names: each refused with a message that names the argument, before any
route is built or timed."""

from __future__ import annotations

import functools
import math

import torch

from lab.capstone import (FP4Linear, Route, Settings, build, constraint_table, decode_ms_per_token, dominance,
                          kept_weights, leaderboard, leaderboard_frame, matmul_time, measure, pareto_front,
                          round_to_bf16, run, seed_contexts, slug, stored_bytes, stored_tensors)
from lab.capstone.routes import ROUTES
from lab.perplexity import EvalSample
from lab.quant.affine import rtn_quantize
from lab.quant.mx import quantize_mx
from tests.bad_input import NOT_GPT, Bad
from tests.tiny_models import tiny_gpt

SAMPLE = EvalSample((torch.arange(10),), (2,), torch.arange(2, 10), torch.zeros(8, dtype=torch.int64))
LONG = EvalSample((torch.arange(40),), (2,), torch.arange(2, 40), torch.zeros(38, dtype=torch.int64))
TRAIN = torch.randint(0, 61, (200,), generator=torch.Generator().manual_seed(0))
SMALL = Settings(calib_samples=1, calib_len=8, student_seq=8, decode_prompt=2, decode_tokens=2, repeats=1, seeds=(0,))
ROW = {"route": "dense", "bytes": 10, "read_bytes": 10, "calibration": False, "training": False,
       "delta_log_ppl": [0.0, 0.0, 0.0], "delta_ppl_pct": [0.0, 0.0, 0.0], "matmul_time_vs_dense": 1.0,
       "dominated_by": []}


@functools.cache
def model():
    return tiny_gpt()


def ctx() -> dict:
    return {"dense": model(), "train_ids": TRAIN, "settings": SMALL, "device": torch.device("cpu"), "seed": 0,
            "calib": TRAIN[:8][None], "dense_matmul_time": 1.0}


def codes(name: str = "layers.0.mlp.up_proj.weight") -> dict:
    return {name: rtn_quantize(model().layers[0].mlp.up_proj.weight, 4, 16)}


W = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))

CASES: dict[str, list[Bad]] = {
    "FP4Linear": [
        Bad(lambda: FP4Linear(W), TypeError, r"weight must be an MXTensor \(lab\.quant\.mx\.quantize_mx\), got Tensor"),
        Bad(lambda: FP4Linear(quantize_mx(W, "mxfp8_e4m3")), ValueError, r"weight\.fmt='mxfp8_e4m3' is not allowed"),
        Bad(lambda: FP4Linear(quantize_mx(W, "nvfp4", block=32)), ValueError,
            r"weight must have nvfp4's blocks of 16 \(the kernel's\), got blocks of 32"),
        Bad(lambda: FP4Linear(quantize_mx(W, "mxfp4"))(torch.zeros(3, 16)), ValueError,
            r"x must be a tensor of shape \(\.\.\., in_features=32\), got \(3, 16\)"),
    ],
    "build": [
        Bad(lambda: build("dense bf16", ctx()), TypeError, r"route must be a Route, got str"),
        Bad(lambda: build(ROUTES[0], {"dense": model()}), ValueError, r"ctx must be a build context: a dict with"),
    ],
    "decode_ms_per_token": [
        Bad(lambda: decode_ms_per_token(model(), torch.zeros(1, 2, dtype=torch.int64), 1, "cpu", 1), ValueError,
            r"n must be >= 2"),
        Bad(lambda: decode_ms_per_token(model(), torch.zeros(1, 2, dtype=torch.int64), 2.5, "cpu", 1), TypeError,
            r"n must be an int, got 2\.5"),
        Bad(lambda: decode_ms_per_token(model(), torch.zeros(1, 2, dtype=torch.int64), 3, "cpu", 0), ValueError,
            r"repeats=0 is out of range"),
        Bad(lambda: decode_ms_per_token(model(), torch.zeros(1, 2), 3, "cpu", 1), TypeError,
            r"prompt must have a dtype in"),
        Bad(lambda: decode_ms_per_token("gpt", torch.zeros(1, 2, dtype=torch.int64), 3, "cpu", 1), TypeError,
            rf"model {NOT_GPT}, got str"),
    ],
    "kept_weights": [
        Bad(lambda: kept_weights(model(), codes("layers.0.mlp.up")), ValueError,
            r"codes must map names of model's parameters to QuantizedTensors, got 'layers\.0\.mlp\.up'"),
        Bad(lambda: kept_weights(model(), list(codes())), TypeError, r"codes must be a dict, got list"),
    ],
    "leaderboard": [
        Bad(lambda: leaderboard("gpt", SAMPLE, TRAIN, SMALL), TypeError, rf"dense {NOT_GPT}, got str"),
        Bad(lambda: leaderboard(model(), SAMPLE.tokens, TRAIN, SMALL), TypeError, r"sample must be a lab\.perplexity"),
        Bad(lambda: leaderboard(model(), LONG, TRAIN, SMALL), ValueError,
            r"sample has windows of 40 tokens, more than dense\.config\.context_length=16"),
        Bad(lambda: leaderboard(model(), SAMPLE, TRAIN, SMALL, routes=ROUTES[0]), TypeError,
            r"routes must be a tuple of Routes"),
        Bad(lambda: leaderboard(model(), SAMPLE, TRAIN, SMALL, routes=()), ValueError, r"routes is empty"),
        Bad(lambda: leaderboard(model(), SAMPLE, TRAIN, SMALL, progress="no"), TypeError,
            r"progress must be one of \(True, False\)"),
        Bad(lambda: leaderboard(model(), SAMPLE, TRAIN.float(), SMALL), TypeError, r"train_ids must have a dtype in"),
        Bad(lambda: leaderboard(model(), SAMPLE, TRAIN, SMALL, device="gpu"), ValueError, r"device='gpu' is not a"),
        Bad(lambda: leaderboard(model(), SAMPLE, TRAIN, {"calib_len": 8}), TypeError,
            r"settings must be a Settings, got dict"),
    ],
    "matmul_time": [Bad(lambda: matmul_time("gpt"), TypeError, r"model must be a torch\.nn\.Module, got str")],
    "measure": [
        Bad(lambda: measure(ROUTES[0].name, [ctx()], SAMPLE), TypeError, r"route must be a Route, got str"),
        Bad(lambda: measure(ROUTES[0], [], SAMPLE), ValueError, r"ctxs must be a non-empty list"),
        Bad(lambda: measure(ROUTES[0], ctx(), SAMPLE), TypeError, r"ctxs must be a non-empty list .* got dict"),
        Bad(lambda: measure(ROUTES[0], [ctx()], SAMPLE.inputs), TypeError, r"sample must be a lab\.perplexity"),
        Bad(lambda: measure(ROUTES[0], [ctx(), {}], SAMPLE), ValueError, r"ctxs\[1\] must be a build context"),
    ],
    "round_to_bf16": [Bad(lambda: round_to_bf16(model().state_dict()), TypeError, r"model must be a torch\.nn")],
    "seed_contexts": [
        Bad(lambda: seed_contexts(model(), TRAIN[:9], SMALL, "cpu"), ValueError,
            r"train_ids must hold more than max\(calib_len, student_seq\) \+ 1 ids .* got 9 ids"),
        Bad(lambda: seed_contexts(model(), TRAIN + 100, SMALL, "cpu"), ValueError, r"train_ids .* vocab_size=61"),
        Bad(lambda: seed_contexts(model(), TRAIN, Settings(calib_len=32), "cpu"), ValueError,
            r"settings\.calib_len=32 exceeds the model's context_length=16"),
        Bad(lambda: seed_contexts(model(), TRAIN[None], SMALL, "cpu"), ValueError, r"train_ids must have 1 dimensions"),
    ],
    "slug": [Bad(lambda: slug(7), TypeError, r"text must be a str, got int")],
    "stored_bytes": [Bad(lambda: stored_bytes([torch.zeros(2)]), TypeError, r"tensors must be a dict, got list")],
    "stored_tensors": [
        Bad(lambda: stored_tensors(model(), codes("up_proj.weight")), ValueError,
            r"codes must map names of model's parameters"),                        # dropped silently before
        Bad(lambda: stored_tensors(model(), {"layers.0.mlp.up_proj.weight": torch.zeros(2)}), ValueError,
            r"codes must map .* to QuantizedTensors, got 'layers\.0\.mlp\.up_proj\.weight': Tensor"),
    ],
    "constraint_table": [
        Bad(lambda: constraint_table([ROW], True), TypeError, r"budget_pct must be a real number, got True"),
        Bad(lambda: constraint_table([ROW], math.nan), ValueError, r"budget_pct=nan is out of range"),
        Bad(lambda: constraint_table([ROW], -1), ValueError, r"budget_pct must be a number >= 0"),
        Bad(lambda: constraint_table([{"route": "dense"}], 5.0), ValueError, r"rows\[0\] must be a leaderboard row"),
    ],
    "dominance": [
        Bad(lambda: dominance([ROW, ROW], [torch.zeros(1, 3)], torch.zeros(3)), ValueError,
            r"losses must be a list of one \(S, n\) tensor per row \(2\), got 1"),
        Bad(lambda: dominance([ROW], [torch.zeros(1, 3)], torch.zeros(4)), ValueError,
            r"losses\[0\] must have shape \(S, n = len\(documents\) = 4\)"),
        Bad(lambda: dominance(ROW, [torch.zeros(1, 3)], torch.zeros(3)), TypeError, r"rows must be a list"),
    ],
    "leaderboard_frame": [
        Bad(lambda: leaderboard_frame([]), ValueError, r"rows is empty"),                           # IndexError
        Bad(lambda: leaderboard_frame([ROW]), ValueError, r"rows\[0\] must be a leaderboard row"),
    ],
    "pareto_front": [
        Bad(lambda: pareto_front([{"route": "dense"}]), ValueError, r"rows\[0\] must be a leaderboard row with the "
                                                                   r"keys \('route', 'dominated_by'\)"),
        Bad(lambda: pareto_front(ROW), TypeError, r"rows must be a list of leaderboard rows"),
    ],
    "Route": [
        Bad(lambda: Route("x", lambda c: c, False, False, "fp8"), ValueError, r"matmul='fp8' is not allowed"),
        Bad(lambda: Route("x", lambda c: c, "yes", False, "bf16"), TypeError,
            r"calibration must be one of \(True, False\)"),
        Bad(lambda: Route("x", None, False, False, "bf16"), TypeError, r"build a callable"),
    ],
    "Settings": [
        Bad(lambda: Settings(decode_tokens=1), ValueError, r"decode_tokens=1 is out of range"),
        Bad(lambda: Settings(seeds=3), TypeError, r"seeds must be a non-empty tuple of ints, got 3"),
        Bad(lambda: Settings(seeds=(0, 1.5)), TypeError, r"seeds entry must be an int, got 1\.5"),
        Bad(lambda: Settings(group_size=True), TypeError, r"group_size must be an int, got True"),
        Bad(lambda: Settings(eval_tokens=0), ValueError, r"eval_tokens=0 is out of range"),
    ],
    "run": [Bad(lambda: run("cpu", quick="yes"), TypeError, r"quick must be one of \(True, False\), got the str"),
            Bad(lambda: run("gpu"), ValueError, r"device='gpu' is not a device")],
}

NO_INPUT: dict[str, str] = {"git_commit": "takes no argument: the commit of the repository it runs in"}
