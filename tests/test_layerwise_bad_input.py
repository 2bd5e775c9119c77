"""Bad input to lab.layerwise's public names: each refused with a message that names the argument."""

from __future__ import annotations

import functools

import torch

from lab.layerwise import (capture_inputs, check_calib_tokens, check_layers, for_each_layer, output_error,
                           relative_output_error)
from tests.bad_input import Bad
from tests.tiny_models import tiny_gpt

W, G = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), torch.eye(4)
IDS = torch.randint(0, 61, (2, 8), generator=torch.Generator().manual_seed(1))


@functools.cache
def model():
    return tiny_gpt()


def nothing(i, block, stats):
    pass


CASES: dict[str, list[Bad]] = {
    "output_error": [
        Bad(lambda: output_error(W, W[:1], G), ValueError, r"w_hat must have w's shape \(3, 4\)"),   # broadcast before
        Bad(lambda: output_error(W, W, G[:3]), ValueError, r"gram \(4, 4\)"),
        Bad(lambda: output_error(W, W * float("nan"), G), ValueError, r"w_hat contains NaN"),
        Bad(lambda: output_error(W.tolist(), W, G), TypeError, r"w must be a torch\.Tensor"),
    ],
    "relative_output_error": [
        Bad(lambda: relative_output_error(torch.zeros(3, 4), W, G), ValueError, r"w X is zero"),      # ZeroDivision
        Bad(lambda: relative_output_error(W, W.long(), G), TypeError, r"w_hat must be a floating-point tensor"),
    ],
    "check_calib_tokens": [
        Bad(lambda: check_calib_tokens(model(), IDS.tolist()), TypeError, r"calib_tokens must be a torch\.Tensor"),
        Bad(lambda: check_calib_tokens(model(), IDS + 61), ValueError,
            r"calib_tokens must hold ids in \[0, vocab_size=61\), got values in"),          # IndexError deep inside
        Bad(lambda: check_calib_tokens(model(), IDS.float()), ValueError, r"calib_tokens must be an int64 tensor"),
    ],
    "check_layers": [
        Bad(lambda: check_layers(model(), 1), TypeError, r"layers must be a sequence of int layer indices, got 1"),
        Bad(lambda: check_layers(model(), [True]), TypeError, r"layers must be a sequence of int"),   # layer 1 before
        Bad(lambda: check_layers(model(), "01"), TypeError, r"layers must be a sequence of int"),
        Bad(lambda: check_layers(model(), []), ValueError, r"layers must be indices in \[0, 2\) \(at least one\)"),
        Bad(lambda: check_layers(model(), [2]), ValueError, r"layers must be indices in \[0, 2\)"),
    ],
    "for_each_layer": [
        Bad(lambda: for_each_layer(model(), IDS, "prune"), TypeError, r"process must be a callable"),
        Bad(lambda: for_each_layer(model(), IDS, nothing, batch_size=0), ValueError, r"batch_size=0 is out of range"),
        Bad(lambda: for_each_layer(model(), IDS, nothing, progress="no"), TypeError,
            r"progress must be one of \(True, False\)"),
        Bad(lambda: for_each_layer(model(), IDS, nothing, layers=[0, 0.5]), TypeError, r"layers must be a sequence"),
    ],
    "capture_inputs": [
        Bad(lambda: capture_inputs(model(), 3, IDS), TypeError, r"module must be a submodule of model or its name, "
                                                                 r"got int"),
        Bad(lambda: capture_inputs(model(), "layers.7", IDS), ValueError, r"module='layers\.7' is not a submodule"),
        Bad(lambda: capture_inputs(model(), "layers.0", IDS.tolist()), TypeError, r"inputs must be a torch\.Tensor"),
    ],
}

NO_INPUT: dict[str, str] = {
    "InputStats": "built with no argument; torch calls it as a forward hook with the module's own input",
}
