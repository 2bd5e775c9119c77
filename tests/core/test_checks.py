"""lab.core.checks: every validator accepts what it allows, and names the argument, the value and the rule otherwise."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.core.checks import (check_choice, check_device, check_divisor, check_float_tensor, check_fraction, check_int,
                             check_matrix, check_number, check_numbers, check_path, check_power_of_two, check_tensor)


def test_check_int():
    assert check_int("steps", 3) == 3
    assert check_int("offset", 0, minimum=0) == 0
    assert check_int("k", 10**6, minimum=None) == 10**6
    for bad, error in ((True, TypeError), (2.0, TypeError), ("3", TypeError), (0, ValueError), (11, ValueError)):
        with pytest.raises(error, match=r"steps"):
            check_int("steps", bad, 1, 10)
    with pytest.raises(ValueError, match=r"steps=0 is out of range; allowed: \[1, 10\]"):
        check_int("steps", 0, 1, 10)


def test_check_number_and_fraction():
    assert check_number("lr", 3) == 3.0 and isinstance(check_number("lr", 3), float)
    assert check_fraction("sparsity", 0.0) == 0.0
    for bad in (math.inf, math.nan, -0.1, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            check_fraction("sparsity", bad)
    with pytest.raises(ValueError, match=r"lr=0 is out of range; allowed: a finite number in \(0, inf\)"):
        check_number("lr", 0, low=0, closed=(False, True))  # the value as given, not as float
    with pytest.raises(ValueError, match=r"top_p=0.0 is out of range; allowed: a finite number in \(0.0, 1.0\]"):
        check_fraction("top_p", 0.0, closed=(False, True))
    with pytest.raises(TypeError, match="alpha must be a real number, got True"):
        check_number("alpha", True)
    with pytest.raises(ValueError, match=r"temperature=0.0 .* \(0.0, inf\)"):
        check_number("temperature", 0.0, low=0.0, closed=(False, True))


def test_check_choice_and_power_of_two():
    check_choice("kind", "forward", ("forward", "reverse"))
    check_choice("flag", True, (True, False))
    with pytest.raises(TypeError, match="stage must be one of .* got the bool True"):
        check_choice("stage", True, (0, 1, 2, 3))                          # True == 1, but a bug
    with pytest.raises(ValueError, match=r"kind='sideways' is not allowed; use one of \('forward', 'reverse'\)"):
        check_choice("kind", "sideways", ("forward", "reverse"))
    assert [check_power_of_two("block", v) for v in (1, 2, 2048)] == [1, 2, 2048]
    for bad in (3, 2049):
        with pytest.raises(ValueError, match=f"block={bad} is not allowed; use a positive power of two"):
            check_power_of_two("block", bad)
    with pytest.raises(ValueError, match="block=0 is out of range"):
        check_power_of_two("block", 0)


def test_check_divisor():
    assert [check_divisor("group_size", g, 12, "in_features") for g in (1, 4, 12)] == [1, 4, 12]
    with pytest.raises(ValueError, match=r"group_size=5 is not allowed; use a divisor of in_features=12"):
        check_divisor("group_size", 5, 12, "in_features")
    with pytest.raises(ValueError, match=r"group_size=0 is out of range; allowed: \[1, inf\)"):
        check_divisor("group_size", 0, 12, "in_features")
    with pytest.raises(TypeError, match="group_size must be an int, got 4.0"):
        check_divisor("group_size", 4.0, 12, "in_features")


def test_check_tensor_and_matrix():
    w = torch.randn(3, 4)
    assert check_matrix("weight", w) is w
    assert check_tensor("ids", torch.zeros(2, 5, dtype=torch.int64), dims=(1, 2), dtypes=(torch.int64,)) is not None
    with pytest.raises(TypeError, match="weight must be a torch.Tensor, got list"):
        check_matrix("weight", [[1.0]])
    with pytest.raises(ValueError, match=r"weight must have 2 dimensions, got shape \(3,\)"):
        check_matrix("weight", torch.randn(3))
    with pytest.raises(TypeError, match="floating-point"):
        check_matrix("weight", torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_matrix("weight", torch.tensor([[1.0, math.nan]]))
    x = torch.randn(2, 3, 4)
    assert check_float_tensor("x", x) is x and check_float_tensor("x", x, dims=(2, 3)) is x
    with pytest.raises(ValueError, match=r"x must have 1 or 2 dimensions, got shape \(2, 3, 4\)"):
        check_float_tensor("x", x, dims=(1, 2))
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int32"):
        check_float_tensor("x", torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="x contains NaN or infinite entries"):
        check_float_tensor("x", torch.tensor([math.inf]))
    with pytest.raises(TypeError, match=r"ids must have a dtype in \(torch.int64,\), got torch.float32"):
        check_tensor("ids", torch.zeros(2), dtypes=(torch.int64,))


def test_check_choice_accepts_its_members_of_the_same_kind():
    check_choice("stage", np.int64(2), (1, 2, 3))                           # a NumPy int is an int
    check_choice("kind", np.str_("a"), ("a", "b"))
    check_choice("flag", np.bool_(True), (False, True))
    check_choice("scale", 0.5, (0.5, 1.0))
    check_choice("dtype", torch.float32, (torch.float32, torch.bfloat16))


def test_check_numbers_device_and_path_return_what_they_checked(tmp_path):
    bf16 = torch.tensor([1.5, 2.0], dtype=torch.bfloat16)
    assert check_numbers("x", bf16).dtype == np.float64 and check_numbers("x", bf16).tolist() == [1.5, 2.0]
    strided = torch.arange(12.0).view(3, 4).t()[::2]
    assert np.array_equal(check_numbers("x", strided, 2), strided.contiguous().numpy())
    assert check_numbers("x", [torch.tensor(1.0), torch.tensor(2.0)], 1).tolist() == [1.0, 2.0]
    assert check_numbers("x", range(3), 1).tolist() == [0, 1, 2]
    assert check_device("device", "cpu") == torch.device("cpu")
    assert check_device("device", torch.device("cuda", 1)) == torch.device("cuda", 1)    # no GPU needed to name one
    assert check_path("path", "a/b.json") == Path("a/b.json")
    assert check_path("out", tmp_path, folder=True) == tmp_path and check_path("out", tmp_path / "new", True)
