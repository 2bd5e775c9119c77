"""lab.kernels.paged_attention_v2 (flash-decoding over a paged cache) against a float64 reference and v1.

The reference is tests/infer/test_paged.py's: softmax attention in float64, one sequence and head at a
time, from the slot formula. The kernels run under TRITON_INTERPRET=1 (fp32 and fp16) with NaN-filled
outputs and partials; the compiled kernels are compared on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from lab.kernels import paged_attention as v1_module
from lab.kernels import paged_attention_v2 as v2_module
from tests.infer.test_paged import NO_CUDA, _paged_inputs, _reference
from tests.kernels.interpreted import reloaded


@pytest.fixture(scope="module")
def interpreted():
    """v1 first: v2 takes v1's combine functions `_add` and `_max`, which must be the interpreted ones."""
    yield from reloaded(v1_module, v2_module)


def _nan_filled(monkeypatch, module) -> None:
    monkeypatch.setattr(module.torch, "empty", lambda *a, **k: torch.full(a, float("nan"), **k))
    monkeypatch.setattr(module.torch, "empty_like", lambda t: torch.full_like(t, float("nan")))


F32, F16 = torch.float32, torch.float16
CASES = [  # B, H, H_kv, D, block_size, lengths, splits, dtype
    (1, 4, 4, 16, 16, [1], None, F32),             # one token, one block
    (3, 8, 2, 32, 16, [1, 70, 17], 3, F32),        # uneven splits; sequence 0 leaves splits 1 and 2 empty
    (2, 6, 2, 16, 16, [64, 9], 1, F16),            # one split = v1's order of operations
    (2, 10, 2, 16, 16, [100, 33], None, F16),      # G = 5 query heads per kv head (padded to 16 rows)
    (1, 4, 2, 16, 32, [300], 10, F32),             # as many splits as blocks
]


@pytest.mark.parametrize("B, H, H_kv, D, block_size, lengths, splits, dtype", CASES)
def test_v2_under_interpreter_matches_float64_and_v1(interpreted, monkeypatch, B, H, H_kv, D, block_size, lengths,
                                                     splits, dtype):
    v1, v2 = interpreted
    args = _paged_inputs(B, H, H_kv, D, block_size, lengths, dtype, seed=B * D + block_size)
    with monkeypatch.context() as patch:
        _nan_filled(patch, v2)
        out = v2.paged_attention_decode_v2_triton(*args, splits=splits)
    assert out.dtype == dtype and not out.isnan().any(), "the kernels left outputs unwritten"
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert (out.double() - _reference(*args)).abs().max() < tol
    assert (out.double() - v1.paged_attention_decode_triton(*args).double()).abs().max() < tol


def test_splits_fill_the_gpu_at_batch_one():
    """A Llama-2-7B-shaped layer (8 kv heads) over 2,048 tokens in blocks of 16: ≥ 132 programs at B = 1."""
    S = v2_module.num_splits(1, 8, 2048 // 16)
    assert 8 * S >= 132 and 2048 // 16 / S >= v2_module.MIN_BLOCKS_PER_SPLIT
    assert v2_module.num_splits(32, 8, 128) * 32 * 8 >= 4 * 132
    assert v2_module.num_splits(64, 32, 1) == 1


def test_v2_dispatch_on_the_cpu_is_v1s_torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _paged_inputs(2, 4, 2, 16, 16, [5, 20], torch.float32, seed=0)
    assert torch.equal(v2_module.paged_attention_decode_v2(*args), v1_module.paged_attention_decode_torch(*args))


@pytest.mark.parametrize("change, splits, error, match", [
    (lambda a: _paged_inputs(2, 4, 2, 16, 8, [5, 30], torch.float32, seed=0), None, ValueError,
     r"power-of-two block_size >= 16"),
    (lambda a: a, 0, ValueError, r"splits=0 must be an int in \[1, max_blocks=3\]"),
    (lambda a: a, 4, ValueError, r"splits=4 must be an int"),
    (lambda a: (a[0].double(), *a[1:]), None, TypeError, "q must be"),
    (lambda a: (*a[:3], a[3].long(), a[4]), None, TypeError, "tables must be int32"),
])
def test_v2_rejects_bad_input(change, splits, error, match):
    args = _paged_inputs(2, 4, 2, 16, 16, [5, 30], torch.float32, seed=0)
    with pytest.raises(error, match=match):
        v2_module.paged_attention_decode_v2_triton(*change(args), splits=splits)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_v2_on_gpu_matches_float64_and_v1(dtype):
    args = _paged_inputs(5, 32, 8, 128, 16, [1, 16, 17, 200, 2048], dtype, seed=1)
    cuda = [a.cuda() for a in args]
    out = v2_module.paged_attention_decode_v2(*cuda)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert (out.cpu().double() - _reference(*args)).abs().max() < tol
    assert (out - v1_module.paged_attention_decode(*cuda)).abs().max().item() < tol
