"""The bad-input cases of `lab.core.checks`, the validators every module uses (part of tests/core/test_bad_input.py's
table)."""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from lab.core import (check_block, check_choice, check_device, check_divisor, check_float_dtype, check_float_tensor,
                      check_fraction, check_group, check_int, check_list, check_matrix, check_number, check_numbers,
                      check_path, check_power_of_two, check_tensor)
from tests.bad_input import Bad, T, V


@functools.cache
def _dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="core_bad_checks_"))
    atexit.register(shutil.rmtree, root, True)
    (root / "file.txt").write_text("x")
    return root


CHECKS: dict[str, list[Bad]] = {
    "check_int": [
        T(lambda: check_int("n", True), r"n must be an int, got True \(bool\)"),
        T(lambda: check_int("n", 2.5), r"n must be an int, got 2\.5"),
        T(lambda: check_int("n", "3"), r"n must be an int, got '3'"),
        V(lambda: check_int("n", 0), r"n=0 is out of range; allowed: \[1, inf\)"),
        V(lambda: check_int("n", 11, 1, 10), r"n=11 is out of range; allowed: \[1, 10\]"),
    ],
    "check_number": [
        V(lambda: check_number("lr", math.nan), r"lr=nan is out of range"),
        T(lambda: check_number("lr", True), r"lr must be a real number, got True"),
        T(lambda: check_number("lr", "0.1"), r"lr must be a real number, got '0\.1'"),
        V(lambda: check_number("lr", 10**400), r"lr=1000+ is out of range"),       # not OverflowError
        V(lambda: check_number("lr", 0.0, 0.0, closed=(False, True)), r"lr=0\.0 .* \(0\.0, inf\)"),
    ],
    "check_fraction": [
        V(lambda: check_fraction("p", 1.5), r"p=1\.5 is out of range; allowed: a finite number in"),
        V(lambda: check_fraction("p", -0.1), r"p=-0\.1"), V(lambda: check_fraction("p", math.nan), r"p=nan"),
        T(lambda: check_fraction("p", True), r"p must be a real number, got True"),
        V(lambda: check_fraction("p", 0.0, closed=(False, True)), r"p=0\.0 .* \(0\.0, 1\.0\]"),
    ],
    "check_choice": [
        T(lambda: check_choice("stage", True, (0, 1, 2, 3)), r"stage must be one of .* got the bool True"),
        T(lambda: check_choice("stage", 2.0, (1, 2, 3)), r"stage must be one of .* got the float 2\.0"),
        T(lambda: check_choice("quick", 1, (False, True)), r"quick must be one of .* got the int 1"),
        T(lambda: check_choice("stage", torch.tensor(2), (1, 2, 3)), r"stage must be one of"),
        T(lambda: check_choice("kind", ["a"], {"a", "b"}), r"kind must be one of .* \['a'\] \(list\)"),
        V(lambda: check_choice("kind", "c", ("a", "b")), r"kind='c' is not allowed; use one of"),
    ],
    "check_power_of_two": [
        V(lambda: check_power_of_two("block", 6), r"block=6 is not allowed; use a positive power of two"),
        T(lambda: check_power_of_two("block", True), r"block must be an int, got True"),
        T(lambda: check_power_of_two("block", 64.0), r"block must be an int, got 64\.0"),
    ],
    "check_divisor": [
        V(lambda: check_divisor("group_size", 5, 12, "in_features"), r"group_size=5 .* a divisor of in_features=12"),
        T(lambda: check_divisor("group_size", 4.0, 12, "in_features"), r"group_size must be an int"),
        V(lambda: check_divisor("group_size", 0, 12, "in_features"), r"group_size=0 is out of range"),
    ],
    "check_tensor": [
        T(lambda: check_tensor("x", [1.0]), r"x must be a torch\.Tensor, got list"),
        V(lambda: check_tensor("x", torch.ones(2), 2), r"x must have 2 dimensions, got shape \(2,\)"),
        T(lambda: check_tensor("ids", torch.ones(2), dtypes=(torch.int64,)), r"ids must have a dtype in"),
    ],
    "check_float_tensor": [
        T(lambda: check_float_tensor("x", torch.ones(2, dtype=torch.int32)), r"x must be a floating-point tensor"),
        V(lambda: check_float_tensor("x", torch.tensor([1.0, math.nan])), r"x contains NaN"),
        V(lambda: check_float_tensor("x", torch.ones(2, 2).t(), 1), r"x must have 1 dimensions"),
    ],
    "check_matrix": [
        V(lambda: check_matrix("w", torch.ones(3)), r"w must have 2 dimensions, got shape \(3,\)"),
        T(lambda: check_matrix("w", [[1.0]]), r"w must be a torch\.Tensor"),
        V(lambda: check_matrix("w", torch.full((2, 2), math.inf)), r"w contains NaN or infinite"),
    ],
    "check_float_dtype": [
        T(lambda: check_float_dtype("dtype", "bfloat16"), r"dtype must be a torch dtype"),
        V(lambda: check_float_dtype("dtype", torch.int8), r"dtype=torch\.int8 is not allowed"),
    ],
    "check_block": [
        V(lambda: check_block("block", (64, 48), ("BLOCK_M", "BLOCK_N")), r"block BLOCK_N=48 is not allowed"),
        T(lambda: check_block("block", 64, ("BLOCK_M", "BLOCK_N")), r"block must be a tuple"),
        T(lambda: check_block("block", (True, 64), ("BLOCK_M", "BLOCK_N")), r"block BLOCK_M must be"),
        V(lambda: check_block("block", (64, 0), ("BLOCK_M", "SPLIT_K"), counts=("SPLIT_K",)), r"block SPLIT_K=0"),
    ],
    "check_numbers": [
        T(lambda: check_numbers("losses", "1.5"), r"losses must be real numbers"),
        T(lambda: check_numbers("losses", [True, False]), r"losses must hold real numbers .* dtype bool"),
        T(lambda: check_numbers("losses", [[1.0], [2.0, 3.0]]), r"losses must be real numbers"),
        T(lambda: check_numbers("losses", ["1", "2"]), r"losses must hold real numbers"),
        T(lambda: check_numbers("losses", torch.ones(2, dtype=torch.complex64)), r"losses must hold"),
        V(lambda: check_numbers("losses", np.ones((2, 2)), 1), r"losses must have 1 dimensions"),
    ],
    "check_device": [
        T(lambda: check_device("device", 0), r"device must be a torch\.device or a str"),
        T(lambda: check_device("device", None), r"device must be a torch\.device"),
        V(lambda: check_device("device", "gpu"), r"device='gpu' is not a device"),
    ],
    "check_path": [
        T(lambda: check_path("path", 5), r"path must be a path"),
        V(lambda: check_path("path", ""), r"path='' is not allowed"),
        V(lambda: check_path("path", _dir()), r"path='.*' is an existing folder"),
        V(lambda: check_path("out", _dir() / "file.txt", folder=True), r"out='.*' is an existing file"),
    ],
    "check_list": [
        T(lambda: check_list("rates", "1e-3"), r"rates must be a list or tuple, got '1e-3' \(str\)"),
        V(lambda: check_list("rates", []), r"rates=\[\] is empty; give at least one value"),
        V(lambda: check_list("rates", [1, 0], check_int), r"rates\[1\]=0 is out of range"),
    ],
    "check_group": [
        T(lambda: check_group("group", 2), r"group must be None \(the default group\) or a .*ProcessGroup, got 2"),
        T(lambda: check_group("group", "gloo"), r"group must be None"),
    ],
}
