"""lab.prune: every public name refuses bad input with a named TypeError / ValueError (see `tests.bad_input`)."""

from __future__ import annotations

import torch

from lab.prune import (compress, decompress, forward_flops, keep_top_fraction, layer_errors, layer_hessian,
                       layer_sensitivity, magnitude_mask, nm_mask, obs_prune_row_bruteforce, obs_saliency, obs_update,
                       prune_model, prune_structured_by_importance, reconstruction_error, refit_columns,
                       sparsegpt_prune, sparsity_of, speedup_against_bound, structured_prune, sweep_name, wanda_mask)
from tests.bad_input import Bad
from tests.tiny_models import tiny_gpt

W = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
X = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
H = torch.eye(8)
CALIB = torch.randint(0, 61, (2, 8), generator=torch.Generator().manual_seed(2))
NAN = torch.full((8,), float("nan"))


def _prune(**kwargs):
    return prune_model(tiny_gpt(), **({"method": "wanda", "sparsity": 0.5, "calib_tokens": CALIB, "progress": False}
                                      | kwargs))


def _by_importance(**kwargs):
    return prune_structured_by_importance(tiny_gpt(), **({"calib_tokens": CALIB, "head_fraction": 0.5,
                                                          "channel_fraction": 0.5} | kwargs))


def _sensitivity(**kwargs):
    args = {"calib_tokens": CALIB, "method": "wanda", "sparsity": 0.5, "eval_fn": lambda m: 0.0, "progress": False}
    return layer_sensitivity(tiny_gpt(), **(args | kwargs))


CASES: dict[str, list[Bad]] = {
    "compress": [
        Bad(lambda: compress(torch.randn(8), 2, 4), ValueError, r"weight must have 2 dimensions"),
        Bad(lambda: compress(W, n=True), TypeError, r"n must be an int, got True"),
        Bad(lambda: compress(torch.randn(4, 6)), ValueError, r"m=4 is not allowed; use a divisor of in_features=6"),
    ],
    "decompress": [
        Bad(lambda: decompress(torch.zeros(4, 4), torch.zeros(4, 1, dtype=torch.uint8), 8.0), TypeError,
            r"in_features must be an int, got 8\.0"),
        Bad(lambda: decompress(torch.zeros(4, 4), torch.zeros(4, 1, dtype=torch.uint8), 6), ValueError,
            r"in_features=6"),
    ],
    "forward_flops": [
        Bad(lambda: forward_flops(tiny_gpt(), 0), ValueError, r"seq_len=0 is out of range"),
        Bad(lambda: forward_flops(tiny_gpt(), 4.0), TypeError, r"seq_len must be an int, got 4\.0"),
        Bad(lambda: forward_flops(torch.nn.Linear(2, 2), 4), TypeError, r"model must be a lab GPT .*got Linear"),
    ],
    "keep_top_fraction": [
        Bad(lambda: keep_top_fraction(W, 1.0), ValueError, r"sparsity=1\.0 is out of range"),
        Bad(lambda: keep_top_fraction(W, 0.5, per_row="yes"), TypeError, r"per_row must be one of \(False, True\)"),
        Bad(lambda: keep_top_fraction(W, 0.5, per_row=1), TypeError, r"per_row must be one of .*got the int 1"),
        Bad(lambda: keep_top_fraction(W.flatten(), 0.5), ValueError, r"score must have 2 dimensions"),
        Bad(lambda: keep_top_fraction(W * NAN[0], 0.5), ValueError, r"score contains NaN"),
    ],
    "layer_errors": [
        Bad(lambda: layer_errors(W, X[:7], 0.5), ValueError, r"X must have shape \(d_in, N\) = \(8, N\)"),
        Bad(lambda: layer_errors(W[0], X, 0.5), ValueError, r"W must have 2 dimensions"),
        Bad(lambda: layer_errors(W.tolist(), X, 0.5), TypeError, r"W must be a torch\.Tensor, got list"),
        Bad(lambda: layer_errors(torch.zeros(4, 8), X, 0.5), ValueError, r"W @ X is zero \(W or X"),
        Bad(lambda: layer_errors(W, X, 0.5, n=2), ValueError, r"n and m must be given together"),
    ],
    "layer_hessian": [
        Bad(lambda: layer_hessian(torch.randn(8, 0)), ValueError, r"X must hold at least one sample"),
        Bad(lambda: layer_hessian(torch.randn(8)), ValueError, r"X must have 2 dimensions"),
        Bad(lambda: layer_hessian(torch.ones(8, 3, dtype=torch.int64)), TypeError, r"X must be a floating-point"),
    ],
    "layer_sensitivity": [
        Bad(lambda: _sensitivity(eval_fn="perplexity"), TypeError, r"eval_fn must be callable"),
        Bad(lambda: _sensitivity(blocksize=0), ValueError, r"blocksize=0 is out of range"),
        Bad(lambda: _sensitivity(layers=[0]), TypeError, r"prune_kwargs \['layers'\] are not allowed"),
        Bad(lambda: _sensitivity(calib_tokens=CALIB + 61), ValueError, r"calib_tokens must hold ids in \[0, vocab"),
        Bad(lambda: _sensitivity(method="obd"), ValueError, r"method='obd' is not allowed"),
    ],
    "magnitude_mask": [
        Bad(lambda: magnitude_mask(W, True), TypeError, r"sparsity must be a real number, got True"),
        Bad(lambda: magnitude_mask(W, float("nan")), ValueError, r"sparsity=nan"),
        Bad(lambda: magnitude_mask(W.int(), 0.5), TypeError, r"weight must be a floating-point tensor"),
    ],
    "nm_mask": [
        Bad(lambda: nm_mask(W, 2, 3), ValueError, r"m=3 is not allowed; use a divisor of in_features=8"),
        Bad(lambda: nm_mask(W, 2.0, 4), TypeError, r"n must be an int, got 2\.0"),
        Bad(lambda: nm_mask(W, 5, 4), ValueError, r"n=5, m=4 is not allowed"),
    ],
    "obs_prune_row_bruteforce": [
        Bad(lambda: obs_prune_row_bruteforce(W, torch.eye(4), 1), ValueError, r"w must have 1 dimensions"),
        Bad(lambda: obs_prune_row_bruteforce(W[0], torch.zeros(8, 8), 1), ValueError, r"H must be positive definite"),
        Bad(lambda: obs_prune_row_bruteforce(W[0], torch.triu(torch.ones(8, 8)), 1), ValueError,
            r"H must be symmetric"),
        Bad(lambda: obs_prune_row_bruteforce(W[0], H, 9), ValueError, r"k=9 is out of range; allowed: \[0, 8\]"),
        Bad(lambda: obs_prune_row_bruteforce(W[0], H.tolist(), 1), TypeError, r"H must be a torch\.Tensor"),
    ],
    "obs_saliency": [
        Bad(lambda: obs_saliency(W[0], torch.eye(1)), ValueError, r"H_inv must have shape \(d, d\) = \(8, 8\)"),
        Bad(lambda: obs_saliency(W[0].tolist(), H), TypeError, r"w must be a torch\.Tensor, got list"),
        Bad(lambda: obs_saliency(W[0], H * NAN[0]), ValueError, r"H_inv contains NaN"),
    ],
    "obs_update": [
        Bad(lambda: obs_update(W[0], H, True), TypeError, r"q must be an int, got True"),
        Bad(lambda: obs_update(W[0], H, -1), ValueError, r"q=-1 is out of range; allowed: \[0, 7\]"),
        Bad(lambda: obs_update(W[0], torch.eye(1), 0), ValueError, r"H_inv must have shape \(d, d\) = \(8, 8\)"),
        Bad(lambda: obs_update(W, H, 0), ValueError, r"w must have 1 dimensions"),
    ],
    "prune_model": [
        Bad(lambda: _prune(layers=[True]), TypeError, r"layers must be a sequence of int .*\[True\]"),
        Bad(lambda: _prune(layers="0"), TypeError, r"layers must be a sequence of int layer indices"),
        Bad(lambda: _prune(method="magnitude", blocksize=0), ValueError, r"blocksize=0 is out of range"),
        Bad(lambda: _prune(percdamp=-0.1), ValueError, r"percdamp=-0\.1 is out of range"),
        Bad(lambda: _prune(batch_size=0), ValueError, r"batch_size=0 is out of range"),
        Bad(lambda: _prune(calib_tokens=CALIB - 61), ValueError, r"calib_tokens must hold ids in \[0, vocab_size"),
        Bad(lambda: _prune(calib_tokens=CALIB.tolist()), TypeError, r"calib_tokens must be a torch\.Tensor"),
        Bad(lambda: prune_model(torch.nn.Linear(8, 8), "magnitude", 0.5, None), TypeError, r"model must be a lab GPT"),
        Bad(lambda: _prune(sparsity=1.0), ValueError, r"sparsity=1\.0 is out of range"),
    ],
    "prune_structured_by_importance": [
        Bad(lambda: _by_importance(batch_size=0), ValueError, r"batch_size=0 is out of range"),
        Bad(lambda: _by_importance(calib_tokens=CALIB + 61), ValueError, r"calib_tokens must hold ids in"),
        Bad(lambda: _by_importance(calib_tokens=CALIB[:0]), ValueError, r"calib_tokens must not be empty"),
        Bad(lambda: _by_importance(head_fraction=1.0), ValueError, r"head_fraction=1\.0 is out of range"),
        Bad(lambda: _by_importance(channel_fraction="0.5"), TypeError, r"channel_fraction must be a real number"),
        Bad(lambda: _by_importance(refit="yes"), TypeError, r"refit must be one of \(False, True\), got the str 'yes'"),
        Bad(lambda: _by_importance(refit=True, percdamp=-0.1), ValueError, r"percdamp=-0\.1 is out of range"),
    ],
    "reconstruction_error": [
        Bad(lambda: reconstruction_error(W.tolist(), W, X), TypeError, r"W must be a torch\.Tensor, got list"),
        Bad(lambda: reconstruction_error(W, W[:, :4], X), ValueError, r"shapes do not match: W \(4, 8\), W_hat"),
        Bad(lambda: reconstruction_error(W, W, X[0]), ValueError, r"X must have 2 dimensions"),
    ],
    "refit_columns": [
        Bad(lambda: refit_columns(W, H, [0, 8]), ValueError, r"keep\[1\]=8 is out of range; allowed: \[0, 7\]"),
        Bad(lambda: refit_columns(W, H, [2, 2]), ValueError, r"keep must hold distinct column indices in \[0, 8\)"),
        Bad(lambda: refit_columns(W, H, 3), TypeError, r"keep must be a list of column indices .*got 3"),
        Bad(lambda: refit_columns(W, torch.eye(4), [0]), ValueError, r"gram must have shape .*\(8, 8\), got"),
        Bad(lambda: refit_columns(W, H, [0], percdamp=float("nan")), ValueError, r"percdamp=nan is out of range"),
        Bad(lambda: refit_columns(W, 0 * H, [0], percdamp=0.0), ValueError, r"gram\[keep\]\[:, keep\] \+ λI is not"),
        Bad(lambda: refit_columns(W.tolist(), H, [0]), TypeError, r"weight must be a torch\.Tensor, got list"),
    ],
    "sparsegpt_prune": [
        Bad(lambda: sparsegpt_prune(W, H, 0.5, blocksize=True), TypeError, r"blocksize must be an int, got True"),
        Bad(lambda: sparsegpt_prune(W, torch.eye(9), 0.5), ValueError, r"hessian must have shape"),
        Bad(lambda: sparsegpt_prune(W, H, 0.5, mask=torch.ones(4, 8)), TypeError, r"mask must be a torch\.bool"),
        Bad(lambda: sparsegpt_prune(W, H, 0.5, percdamp=float("inf")), ValueError, r"percdamp=inf"),
    ],
    "sparsity_of": [
        Bad(lambda: sparsity_of(torch.nn.Linear(2, 2)), TypeError, r"model must be a lab GPT .*got Linear"),
    ],
    "speedup_against_bound": [
        Bad(lambda: speedup_against_bound({"ci_low": 1.0, "ci_high": 1.1}, 0.0), ValueError, r"bound=0\.0"),
        Bad(lambda: speedup_against_bound({"ci_low": 1.0, "ci_high": float("nan")}, 1.0), ValueError,
            r"speedup\['ci_high'\]=nan is out of range"),
        Bad(lambda: speedup_against_bound({"ci_low": "1.0", "ci_high": 1.1}, 1.0), TypeError,
            r"speedup\['ci_low'\] must be a real number"),
        Bad(lambda: speedup_against_bound([1.0, 1.1], 1.0), TypeError, r"speedup must be a .*paired_ratio result"),
        Bad(lambda: speedup_against_bound({"ci_low": 1.2, "ci_high": 1.1}, 1.0), ValueError,
            r"speedup must be a .*paired_ratio result"),
    ],
    "structured_prune": [
        Bad(lambda: structured_prune(tiny_gpt(), heads=[]), TypeError, r"heads must be a dict"),
        Bad(lambda: structured_prune(tiny_gpt(), heads={0: 1}), TypeError, r"heads\[0\] must be a list of indices"),
        Bad(lambda: structured_prune(tiny_gpt(), mlp_channels={0: "01"}), TypeError,
            r"mlp_channels\[0\] must be a list of indices, got '01'"),
        Bad(lambda: structured_prune(tiny_gpt(), heads={True: [0, 1]}), TypeError,
            r"layer index of heads must be an int, got True"),
        Bad(lambda: structured_prune(torch.nn.Linear(2, 2)), TypeError, r"model must be a lab GPT"),
        Bad(lambda: structured_prune(tiny_gpt(), heads={0: [0, 1]}, calib_tokens=CALIB.float()), ValueError,
            r"calib_tokens must be an int64 tensor"),
        Bad(lambda: structured_prune(tiny_gpt(), calib_tokens=CALIB, percdamp=-1), ValueError, r"percdamp=-1 is out"),
        Bad(lambda: structured_prune(tiny_gpt(), calib_tokens=CALIB, batch_size=0.5), TypeError,
            r"batch_size must be an int, got 0\.5"),
    ],
    "wanda_mask": [
        Bad(lambda: wanda_mask(W, NAN, 0.5), ValueError, r"act_norm contains NaN"),
        Bad(lambda: wanda_mask(W, -torch.ones(8), 0.5), ValueError, r"act_norm must be non-negative"),
        Bad(lambda: wanda_mask(W, torch.ones(4), 0.5), ValueError, r"act_norm must have shape \(in_features,\)"),
        Bad(lambda: wanda_mask(W, torch.ones(8), 0.6, 2, 4), ValueError, r"sparsity=0\.6 disagrees with n=2, m=4"),
    ],
    "sweep_name": [
        Bad(lambda: sweep_name("obs", "50%"), ValueError, r"method='obs' is not allowed"),
        Bad(lambda: sweep_name("wanda", 0.5), ValueError, r"pattern=0\.5 must be a sparsity such as '50%' or '2:4'"),
        Bad(lambda: sweep_name("wanda", "4:8"), ValueError, r"pattern='4:8' must be a sparsity"),
    ],
}

NO_INPUT: dict[str, str] = {}
