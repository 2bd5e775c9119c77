"""lab.kernels.int4_dequant (Ŵ from v2-packed codes) against Ŵ computed element by element from the codes.

The Triton kernel runs on the CPU under TRITON_INTERPRET=1 into a NaN-poisoned output: fp32 and fp16 results are
bit-exact (s·(q − z) is one fp32 product, rounded once); the interpreter truncates fp32 → bf16 where a GPU rounds
to nearest, so bf16 is checked to one unit in the last place. The CUDA test compares the compiled kernel.
"""

from __future__ import annotations

import pytest
import torch

from lab.formats.int4 import pack_int4_v2
from lab.kernels import int4_dequant as dequant_module
from tests.kernels.interpreted import reloaded
from tests.kernels.test_int4 import NO_CUDA, _PoisonedTorch, dequantized_weight, random_int4


@pytest.fixture(scope="module")
def interpreted():
    for (module,) in reloaded(dequant_module):
        yield module


@pytest.mark.parametrize("N, K, g", [(40, 256, 64), (72, 256, 128), (33, 128, 128)])   # N not a multiple of 32
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_kernel_writes_every_weight(interpreted, monkeypatch, N, K, g, dtype):
    q, scales, zeros = random_int4(N, K, g, seed=N + g)
    poisoned = _PoisonedTorch()
    monkeypatch.setattr(interpreted, "torch", poisoned)
    w_hat = interpreted.dequantize_int4_v2(pack_int4_v2(q, g), scales, zeros, g, dtype)
    ref = dequantized_weight(q, scales, zeros, g).to(dtype)             # float64 → dtype, rounded once
    assert poisoned.empty_calls == 1 and w_hat.shape == (N, K) and w_hat.dtype == dtype
    if dtype == torch.bfloat16:
        torch.testing.assert_close(w_hat.float(), ref.float(), rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(w_hat, ref)


def test_the_cpu_path_is_the_fp32_reference_rounded(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, scales, zeros = random_int4(24, 128, 64, seed=3)
    w_hat = dequant_module.dequantize_int4_v2(pack_int4_v2(q, 64), scales, zeros, 64, torch.bfloat16)
    assert torch.equal(w_hat, dequantized_weight(q, scales, zeros, 64).float().to(torch.bfloat16))


def test_call_bytes():
    # codes N·K/2, scales and zeros 2·(N·K/g)·4, Ŵ 2·N·K
    assert dequant_module.call_bytes(8192, 8192, 128, 2, 4) == 8192 * 8192 // 2 + 2 * 8192 * 64 * 4 + 2 * 8192 ** 2


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernel needs a CUDA GPU")
def test_cuda_dequantize_matches_the_reference():
    q, scales, zeros = random_int4(1024, 2048, 128, seed=5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w_hat = dequant_module.dequantize_int4_v2(pack_int4_v2(q, 128).cuda(), scales.cuda(), zeros.cuda(), 128,
                                                  dtype)
        assert torch.equal(w_hat.cpu(), dequantized_weight(q, scales, zeros, 128).float().to(dtype))
