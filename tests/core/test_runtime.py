"""lab.core.runtime: device choice, seeding and the Triton switches."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from lab.core import runtime

NO_CUDA = not torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# lab.core.runtime
# ---------------------------------------------------------------------------------------------

def test_get_device_default_and_override(monkeypatch):
    monkeypatch.delenv("LAB_DEVICE", raising=False)
    assert runtime.get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("LAB_DEVICE", " CPU ")
    assert runtime.get_device() == torch.device("cpu")


def test_get_device_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("LAB_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"LAB_DEVICE='tpu' is not allowed; use one of \('cpu', 'cuda'\)"):
        runtime.get_device()


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-GPU error path")
def test_get_device_cuda_without_gpu_is_an_error(monkeypatch):
    monkeypatch.setenv("LAB_DEVICE", "cuda")
    with pytest.raises(ValueError, match="cuda.is_available"):
        runtime.get_device()


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_everything_makes_every_rng_repeat():
    runtime.seed_everything(1234)
    first = _draw()
    runtime.seed_everything(1234)
    assert _draw() == first
    runtime.seed_everything(1235)
    assert _draw() != first


@pytest.mark.parametrize("seed, error, match", [(1.5, TypeError, "seed must be an int"),
                                                (True, TypeError, "seed must be an int"),
                                                (-1, ValueError, r"seed=-1 is out of range; allowed: \[0, 4294967295"),
                                                (2**32, ValueError, r"seed=4294967296 is out of range")])
def test_seed_everything_rejects_bad_seeds(seed, error, match):
    with pytest.raises(error, match=match):
        runtime.seed_everything(seed)


def test_has_triton_gpu_is_false_when_interpreting_or_without_gpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert runtime.has_triton_gpu() is False
    monkeypatch.delenv("TRITON_INTERPRET")
    if NO_CUDA:
        assert runtime.has_triton_gpu() is False


def test_runs_triton_on_cuda_tensors_or_under_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert runtime.runs_triton(torch.device("cuda")) and not runtime.runs_triton(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert runtime.runs_triton(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not runtime.runs_triton(torch.device("cpu"))


def test_triton_interpret_runs_a_kernel_on_cpu_and_restores_the_environment(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with runtime.triton_interpret():
        import triton
        import triton.language as tl

        @triton.jit
        def masked_add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n  # the last block is partial
            x = tl.load(x_ptr + offs, mask=mask)
            y = tl.load(y_ptr + offs, mask=mask)
            tl.store(out_ptr + offs, x + y, mask=mask)

        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
        out = torch.full_like(x, float("nan"))
        masked_add[(triton.cdiv(1000, 256),)](x, y, out, 1000, BLOCK=256)
    torch.testing.assert_close(out, x + y, rtol=0, atol=0)
    assert "TRITON_INTERPRET" not in os.environ
