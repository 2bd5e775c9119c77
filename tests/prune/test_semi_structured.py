"""lab.prune.semi_structured: Sparse24Linear and PyTorch's semi-structured tensors, against independent references.

References: the pruned dense linear, the int4-rounded kept values decompressed, float64 matmuls, and (CUDA
only) `torch.sparse.to_sparse_semi_structured` next to the book's kernel on the same weight.
"""

from __future__ import annotations

import pytest
import torch

from lab.bench.static import CUDA_TEST_SHAPES
from lab.formats.sparse24 import compress
from lab.kernels.sparse24 import sparse24_matmul
from lab.prune.semi_structured import Sparse24Linear, sparse_linear_torch, to_semi_structured_torch
from tests.formats.test_sparse24 import random_nm

NO_CUDA = not torch.cuda.is_available()

CUDA_SPARSE24, = CUDA_TEST_SHAPES["test_torch_semi_structured_linear_matches_float64"]   # compiled for sm_90


# --- PyTorch's semi-structured path (CUDA) ---------------------------------------------------------------------

def test_to_semi_structured_torch_needs_cuda():
    w = random_nm(64, 64, 2, 4, seed=9, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"needs a CUDA tensor.*device=cpu"):
        to_semi_structured_torch(w)
    with pytest.raises(TypeError, match=r"w_sparse must come from to_semi_structured_torch"):
        sparse_linear_torch(torch.zeros(1, 64), w)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="torch semi-structured sparse tensors need CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_semi_structured_linear_matches_float64(dtype):
    (N, K), = CUDA_SPARSE24.weights                                    # 256 × 512, M = 2 · 5 rows
    w = random_nm(N, K, 2, 4, seed=10, dtype=dtype).cuda()
    x = torch.randn(2, 5, K, generator=torch.Generator().manual_seed(11)).to(dtype).cuda()
    y = sparse_linear_torch(x, to_semi_structured_torch(w))
    ref = x.double() @ w.double().t()
    assert y.shape == (2, 5, N) and CUDA_SPARSE24.batches == (10,)
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    values, meta = compress(w)
    y24 = sparse24_matmul(x.view(10, 512), values, meta, 256, 512)
    torch.testing.assert_close(y24.double(), ref.view(10, 256), rtol=2e-2, atol=2e-2 * ref.abs().max().item())


# --- Sparse24Linear --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [False, True])
def test_sparse24_linear_equals_the_pruned_dense_linear(bias):
    linear = torch.nn.Linear(64, 24, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(random_nm(24, 64, 2, 4, seed=3))
    layer = Sparse24Linear(linear, dtype=torch.float32)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
    assert layer.values.shape == (24, 32) and layer.meta.shape == (24, 8)


def test_sparse24_linear_rejects_bad_input():
    lin = torch.nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight.mul_(torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(2))          # 2:4 in every row
    with pytest.raises(ValueError, match="dtype=torch.int8 is not allowed; use a floating-point dtype"):
        Sparse24Linear(lin, dtype=torch.int8)                                # would truncate the weights
    with pytest.raises(TypeError, match="dtype must be a torch dtype"):
        Sparse24Linear(lin, dtype="bfloat16")
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        Sparse24Linear(torch.nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        Sparse24Linear(torch.nn.Linear(8, 4))


@pytest.mark.parametrize("in_features, kernel", [(64, "sparse24_matmul_v2"), (48, "sparse24_matmul")])
def test_sparse24_linear_reaches_its_kernel_under_the_interpreter(in_features, kernel, monkeypatch):
    """v2 when the inputs are a multiple of 32, else v1; at a decode shape (M = 1) and a prefill one, the
    interpreted Triton kernel agrees with the PyTorch path."""
    import lab.kernels.sparse24 as sparse24_module
    import lab.prune.semi_structured as layer_module
    from tests.kernels.interpreted import reloaded

    linear = torch.nn.Linear(in_features, 24, bias=True)
    with torch.no_grad():
        linear.weight.copy_(random_nm(24, in_features, 2, 4, seed=12))
    layer = Sparse24Linear(linear, dtype=torch.float32)
    launched = []
    assert layer_module.sparse24_kernel(in_features).__name__ == kernel
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    original = getattr(layer_module, kernel)
    monkeypatch.setattr(layer_module, kernel, lambda *args: launched.append(len(args[0])) or original(*args))
    xs = [torch.randn(m, in_features, generator=torch.Generator().manual_seed(m)) for m in (1, 9)]
    expected = [layer(x) for x in xs]                               # the PyTorch path
    for _ in reloaded(sparse24_module):
        for x, y in zip(xs, expected):
            torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    assert launched == [1, 9, 1, 9]
