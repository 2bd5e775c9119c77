"""lab.quant.linear (Int4Linear, W8A8Linear and swapping them into a model) against independent references.

References: float64 matmuls with the dequantized weight, `torch.fake_quantize_per_channel_affine` /
`…_per_tensor_affine` for the W8A8 layer, and the fake-quantized float model for the swapped-in modules.
The layers run on the kernels' PyTorch paths, once on the int4 kernel under TRITON_INTERPRET=1, and (CUDA
test) on the compiled kernels.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lab.formats.sparse24 import compress, decompress
from lab.kernels import int4 as int4_module
from lab.kernels import int4_dequant as dequant_module
from lab.kernels import sparse24 as sparse24_module
from lab.kernels.int4 import call_bytes, int4_weight_only_matmul_torch
from lab.models import GPT
from lab.quant import (Int4Linear, W8A8Linear, dequantize, gptq_quantize, int4_model, pack_quantized_weight,
                       quantize_model, rtn_quantize, w8a8_quantize_model)
from lab.quant.linear import (CHUNKED_MAX_M, V2_GROUP_SIZES, Sparse24Int4Linear, decoder_linear_names, int4_matmul,
                              int4_path)
from tests.formats.test_sparse24 import random_nm
from tests.kernels.interpreted import reloaded
from tests.kernels.test_int4 import NO_CUDA, _assert_close, _gen
from tests.tiny_models import tiny_gpt as make_tiny_gpt


@pytest.fixture(scope="module")
def interpreted():
    """The int4, int4 dequantize and 2:4 kernel modules re-imported under TRITON_INTERPRET=1 (then restored)."""
    yield from reloaded(int4_module, dequant_module, sparse24_module)


def _linear(in_features: int, out_features: int, bias: bool, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("group_size", [32, None])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_linear_matches_the_dequantized_float_layer(group_size, bias, dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lin = _linear(64, 40, bias, seed=9)
    qt = rtn_quantize(lin.weight, 4, group_size)
    layer = Int4Linear(qt, lin.bias)
    layout = "v1" if group_size == 32 else "v2"                          # g = K = 64 per channel: v2
    assert layer.layout == layout and layer.group_size == (group_size or 64)
    assert layer.packed.shape == ((32, 40) if layout == "v1" else (40, 16)) and layer.packed.nbytes == 40 * 32
    x = torch.randn(2, 3, 64, generator=_gen(10)).to(dtype)
    y = layer(x)
    ref = x.double() @ dequantize(qt).double().T + (lin.bias.double() if bias else 0.0)
    assert y.shape == (2, 3, 40) and y.dtype == dtype
    _assert_close(y, ref, dtype)


def test_int4_linear_from_gptq_and_with_half_scales(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    W = torch.randn(24, 64, generator=_gen(11))
    X = torch.randn(64, 300, generator=_gen(12), dtype=torch.float64)
    qt = gptq_quantize(W, 2 * X @ X.T / 300, 4, 32)
    layer = Int4Linear(qt, scale_dtype=torch.float16)
    assert layer.scales.dtype == layer.zeros.dtype == torch.float16
    x = torch.randn(5, 64, generator=_gen(13))
    scales = qt.scale.half().double().repeat_interleave(32, 1)            # the fp16-rounded scales
    W_hat = (qt.qdata.double() - qt.zero_point.double().repeat_interleave(32, 1)) * scales
    _assert_close(layer(x), x.double() @ W_hat.T, torch.float32)


def test_int4_linear_under_interpreter(interpreted):
    """lab.quant.linear calls the kernel module's dispatcher, which now runs the interpreted kernel."""
    lin = _linear(64, 24, True, seed=14)
    qt = rtn_quantize(lin.weight, 4, 32)
    x = torch.randn(3, 64, generator=_gen(15))
    ref = x.double() @ dequantize(qt).double().T + lin.bias.double()
    _assert_close(Int4Linear(qt, lin.bias)(x), ref, torch.float32)


def test_int4_linear_on_the_cpu_gives_the_same_bits_in_either_layout(monkeypatch):
    """The v2 layout changes where the codes lie, not Ŵ: the CPU path is the fp32 reference of both (the
    notebooks' stored outputs do not move)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    qt = rtn_quantize(torch.randn(48, 256, generator=_gen(30)), 4, 128)
    layer = Int4Linear(qt)
    v1_packed, scales, zeros, g = pack_quantized_weight(qt)
    for M in (1, 16, 40, 200):
        x = torch.randn(M, 256, generator=_gen(M)).to(torch.bfloat16)
        assert torch.equal(layer(x), int4_weight_only_matmul_torch(x, v1_packed, scales, zeros, g))


@pytest.mark.parametrize("g", [32, 64])
def test_int4_matmul_takes_no_rows_and_strided_rows(monkeypatch, g):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer = Int4Linear(rtn_quantize(torch.randn(24, 128, generator=_gen(33)), 4, g))
    assert int4_matmul(torch.empty(0, 128), layer.packed, layer.scales, layer.zeros, g).shape == (0, 24)
    x = torch.randn(128, 3, generator=_gen(34))
    assert torch.equal(int4_matmul(x.T, layer.packed, layer.scales, layer.zeros, g),
                       int4_matmul(x.T.contiguous(), layer.packed, layer.scales, layer.zeros, g))


def test_int4_path_table(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert {int4_path(M, v, cpu) for M in (1, 500) for v in ("v1", "v2")} == {"torch"}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert [int4_path(M, "v2", cpu) for M in (1, 16, 17, CHUNKED_MAX_M, CHUNKED_MAX_M + 1)] == [
        "v2", "v2", "v2 chunks", "v2 chunks", "dequantize + dense"]
    assert int4_path(4096, "v1", cpu) == "v1" and CHUNKED_MAX_M == 128
    with pytest.raises(ValueError, match=r"layout='v3' is not allowed"):
        int4_path(1, "v3", cpu)


@pytest.mark.parametrize("g", V2_GROUP_SIZES)
def test_chunks_stop_where_dequantizing_moves_fewer_bytes(g):
    """c chunks of 16 rows read the weight c times; dequantize + dense reads it once and writes and reads a dense
    bf16 Ŵ (2·2NK bytes): chunks pay up to CHUNKED_MAX_M = 8 · 16 rows, not one chunk more."""
    N = K = 8192
    def chunked(c: int) -> int:
        return c * call_bytes(16, N, K, g, 2, "v2", 1)

    dense = call_bytes(16, N, K, g, 2, "v2", 1) + 2 * 2 * N * K
    c = CHUNKED_MAX_M // 16
    assert chunked(c) < dense < chunked(c + 1)


class _Counting:
    """A @triton.jit kernel with its launches counted (``kernel[grid](...)`` passes through)."""

    def __init__(self, kernel) -> None:
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("M, g, launches", [(1, 64, (1, 0, 0)), (16, 64, (1, 0, 0)), (40, 64, (3, 0, 0)),
                                             (CHUNKED_MAX_M + 1, 64, (0, 0, 1)), (5, 32, (0, 1, 0))])
def test_int4_linear_reaches_its_kernel_under_the_interpreter(interpreted, monkeypatch, M, g, launches):
    """Under TRITON_INTERPRET=1 (launches of v2, v1, dequantize): decode shapes launch the v2 GEMV (g = 64),
    16 < M ≤ 128 one per chunk of 16 rows, larger M the dequantize kernel (then a dense matmul), g = 32 the v1
    kernel; each equals the float64 product."""
    kernels = [(int4_module, "_int4_gemv_v2_kernel"), (int4_module, "_int4_matmul_kernel"),
               (dequant_module, "_dequantize_kernel")]
    counters = [_Counting(getattr(module, name)) for module, name in kernels]
    for (module, name), counter in zip(kernels, counters):
        monkeypatch.setattr(module, name, counter)
    lin = _linear(128, 72, True, seed=31)
    qt = rtn_quantize(lin.weight, 4, g)
    x = torch.randn(M, 128, generator=_gen(32))
    _assert_close(Int4Linear(qt, lin.bias)(x), x.double() @ dequantize(qt).double().T + lin.bias.double(),
                  torch.float32)
    assert tuple(c.launches for c in counters) == launches


def test_int4_linear_rejects_other_grids():
    W = torch.randn(8, 64)
    with pytest.raises(ValueError, match=r"bits=3"):
        Int4Linear(rtn_quantize(W, 3, 32))
    with pytest.raises(ValueError, match=r"qmin=-8"):
        Int4Linear(rtn_quantize(W, 4, 32, symmetric=True))
    with pytest.raises(ValueError, match=r"scale_dtype=torch.int8 is not allowed"):    # at construction, not forward
        Int4Linear(rtn_quantize(W, 4, 32), scale_dtype=torch.int8)


def _w8a8_reference(x: torch.Tensor, W: torch.Tensor, act_scale: torch.Tensor | None = None,
                    act_bits: int = 8) -> torch.Tensor:
    """Symmetric int8 fake quantization with PyTorch: W per output channel (s_n = max|W_n|/127), x per token
    (s_m = max|x_m|/qmax) or per tensor with ``act_scale``; then x̂ Ŵᵀ in float64."""
    w_scale = W.abs().amax(1) / 127
    W_hat = torch.fake_quantize_per_channel_affine(W, w_scale, torch.zeros(W.shape[0], dtype=torch.int32), 0, -128, 127)
    qmin, qmax = -(2 ** (act_bits - 1)), 2 ** (act_bits - 1) - 1
    if act_scale is None:
        x_scale = x.abs().amax(1) / qmax
        x_hat = torch.fake_quantize_per_channel_affine(x, x_scale, torch.zeros(x.shape[0], dtype=torch.int32), 0,
                                                       qmin, qmax)
    else:
        x_hat = torch.fake_quantize_per_tensor_affine(x, act_scale, torch.tensor(0, dtype=torch.int32), qmin, qmax)
    return x_hat.double() @ W_hat.double().T


@pytest.mark.parametrize("act_bits", [8, 6])
@pytest.mark.parametrize("bias", [False, True])
def test_w8a8_linear_per_token_matches_torch_fake_quant(act_bits, bias, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lin = _linear(48, 20, bias, seed=16)
    layer = W8A8Linear(lin, act_bits=act_bits)
    assert layer.w_q.dtype == torch.int8 and layer.w_scale.shape == (20,)
    x = torch.randn(2, 5, 48, generator=_gen(17))
    x[0, 1, 3] = 30.0                                          # an outlier token
    y = layer(x)
    ref = _w8a8_reference(x.reshape(-1, 48), lin.weight.detach(), act_bits=act_bits).reshape(2, 5, 20)
    ref = ref + (lin.bias.double() if bias else 0.0)
    assert y.shape == (2, 5, 20) and y.dtype == torch.float32
    _assert_close(y, ref, torch.float32)
    float_ref = lin(x).double()
    assert (y.double() - float_ref).norm() / float_ref.norm() < (0.02 if act_bits == 8 else 0.1)


def test_w8a8_linear_static_tensor_scale_clips_like_torch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lin = _linear(32, 12, False, seed=18)
    act_scale = torch.tensor(0.01)                            # range ±1.27: large inputs are clipped
    layer = W8A8Linear(lin, act="tensor", act_scale=act_scale)
    x = torch.randn(7, 32, generator=_gen(19))
    _assert_close(layer(x), _w8a8_reference(x, lin.weight.detach(), act_scale), torch.float32)


def test_w8a8_linear_with_smoothing_factors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lin = _linear(32, 12, True, seed=20)
    s = torch.exp(torch.randn(32, generator=_gen(21)))
    x = torch.randn(6, 32, generator=_gen(22))
    ref = _w8a8_reference(x / s, lin.weight.detach() * s[None, :]) + lin.bias.double()
    _assert_close(W8A8Linear(lin, smooth=s)(x), ref, torch.float32)


@pytest.mark.parametrize("kwargs, match", [
    ({"act": "channel"}, r"act='channel' is not allowed; use one of \('token', 'tensor'\)"),
    ({"act": "tensor"}, r"act='tensor' needs a static act_scale"),
    ({"act_scale": torch.tensor(0.1)}, r"act='tensor' needs a static act_scale"),
    ({"act_bits": 9}, r"bits=9"),
    ({"smooth": torch.ones(31)}, r"smooth must hold 32 positive factors"),
    ({"smooth": -torch.ones(32)}, r"smooth must hold 32 positive factors"),
])
def test_w8a8_linear_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        W8A8Linear(_linear(32, 8, False, seed=0), **kwargs)


def tiny_gpt(seed: int = 0) -> GPT:
    return make_tiny_gpt(seed, d_model=64, d_ff=96)


TOKENS = torch.randint(0, 61, (3, 16), generator=_gen(23))


@pytest.mark.parametrize("group_size", [32, None])
@torch.no_grad()
def test_int4_model_matches_the_fake_quantized_model(group_size, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = tiny_gpt()
    report = quantize_model(model, "rtn", 4, group_size, progress=False)
    ref = model(TOKENS)
    int4 = int4_model(copy.deepcopy(model), report)
    assert all(isinstance(int4.get_submodule(n), Int4Linear) for n in decoder_linear_names(int4))
    torch.testing.assert_close(int4(TOKENS), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"report has no quantized weight for \['layers\.0\.attn\.q_proj'"):
        int4_model(tiny_gpt(), {})


@torch.no_grad()
def test_w8a8_quantize_model_per_token_and_static(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = tiny_gpt(seed=1)
    ref = model(TOKENS)
    inputs, handles = {}, []
    for name in decoder_linear_names(model):
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: inputs.__setitem__(name, args[0])))
    model(TOKENS)
    for h in handles:
        h.remove()
    dynamic = w8a8_quantize_model(copy.deepcopy(model))
    assert all(isinstance(dynamic.get_submodule(n), W8A8Linear) for n in decoder_linear_names(model))
    assert isinstance(dynamic.lm_head, torch.nn.Linear) and not isinstance(dynamic.lm_head, W8A8Linear)
    static = copy.deepcopy(model)
    w8a8_quantize_model(static, act="tensor", calib_forward=lambda: static(TOKENS))
    for name in decoder_linear_names(model):
        layer = static.get_submodule(name)
        assert layer.act == "tensor"
        torch.testing.assert_close(layer.act_scale, inputs[name].abs().max() / 127, rtol=1e-6, atol=0)
    for quantized in (dynamic, static):
        out = quantized(TOKENS)
        assert (out - ref).norm() / ref.norm() < 0.02
    with pytest.raises(ValueError, match=r"act='tensor' needs calib_forward"):
        w8a8_quantize_model(tiny_gpt(), act="tensor")
    with pytest.raises(ValueError, match=r"act='row' is not allowed; use one of"):
        w8a8_quantize_model(tiny_gpt(), act="row")
    with pytest.raises(ValueError, match=r"model has no submodule 'layers\.5\.attn\.q_proj'"):
        w8a8_quantize_model(tiny_gpt(), names=["layers.5.attn.q_proj"])
    with pytest.raises(ValueError, match=r"'layers\.0\.attn_norm' is a RMSNorm, not an nn\.Linear"):
        w8a8_quantize_model(tiny_gpt(), names=["layers.0.attn_norm"])


# --- 2:4 with int4 values ----------------------------------------------------------------------------------

def test_sparse24_int4_linear_values_are_rounded_kept_values(interpreted):
    from lab.quant.affine import dequantize, rtn_quantize

    linear = torch.nn.Linear(64, 16, bias=False)
    with torch.no_grad():
        linear.weight.copy_(random_nm(16, 64, 2, 4, seed=5))
    layer = Sparse24Int4Linear(linear, group_size=8, dtype=torch.float32)
    values, meta = compress(linear.weight.detach())
    expected = decompress(dequantize(rtn_quantize(values, 4, 8)), meta, 64)      # (16, 64), still 2:4
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(layer(x), x @ expected.t(), rtol=1e-5, atol=1e-5)
    assert layer.packed.dtype == torch.uint8 and layer.packed.numel() == 16 * 32 // 2


# --- CUDA: the compiled kernels against the CPU path -----------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@torch.no_grad()
def test_cuda_quantized_models_match_the_cpu_path():
    model = tiny_gpt()
    report = quantize_model(model, "rtn", 4, 32, progress=False)
    cpu_int4 = int4_model(copy.deepcopy(model), report)
    gpu_int4 = int4_model(copy.deepcopy(model), report).cuda()
    torch.testing.assert_close(gpu_int4(TOKENS.cuda()).cpu(), cpu_int4(TOKENS), rtol=1e-2, atol=1e-2)
    cpu_w8a8 = w8a8_quantize_model(copy.deepcopy(model))
    gpu_w8a8 = w8a8_quantize_model(copy.deepcopy(model).cuda())
    ref = cpu_w8a8(TOKENS)
    torch.testing.assert_close(gpu_w8a8(TOKENS.cuda()).float().cpu(), ref.float(), rtol=2e-2,
                               atol=2e-2 * ref.abs().max().item())


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@torch.no_grad()
def test_cuda_int4_linear_paths_match_the_cpu_path():
    """v2's layout on a GPU: 3 rows in one GEMV, 48 in chunks of 16, 144 dequantized once, then dense (bf16)."""
    lin = _linear(256, 192, True, seed=40)
    for g in (64, 128):
        layer = Int4Linear(rtn_quantize(lin.weight, 4, g), lin.bias, scale_dtype=torch.bfloat16)  # as declared
        for M in (3, 48, 144):
            x = torch.randn(M, 256, generator=_gen(M)).to(torch.bfloat16)
            torch.testing.assert_close(layer.cuda()(x.cuda()).cpu().float(), layer.cpu()(x).float(), rtol=2e-2,
                                       atol=2e-2)
