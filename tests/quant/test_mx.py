"""lab.quant.mx: MX (OCP v1.0 §6.3) and NVFP4 block quantization against a block-by-block reference written here,
torch's E8M0 dtype, exact round trips of values already on the grid, the error bound of the block's grid, the
fp4 storage layout, and the model helper on the tiny GPT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lab.formats.fp4 import dequantize_fp4, e2m1_codes, unpack_fp4
from lab.quant.linear import decoder_linear_names
from lab.quant.minifloat import FORMATS, cast
from lab.quant.mx import MX_FORMATS, fp4_weight, mx_quantize_model, quantize_mx
from tests.tiny_models import tiny_gpt

MX = [fmt for fmt in MX_FORMATS if fmt != "nvfp4"]


def _weights(rows: int = 4, K: int = 64, seed: int = 0) -> torch.Tensor:
    """Gaussian rows whose blocks of 16 differ in magnitude by up to 2^±20, one block all zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, K, generator=g) * torch.exp2(torch.randint(-20, 21, (rows, K // 16, 1), generator=g)
                                                        .float()).repeat_interleave(16, dim=1).squeeze(-1)
    x[0, :32] = 0.0
    return x


def _reference(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(elements, block scales, global scale), one block at a time with Python floats: the formulas of the MX spec
    §6.3 and of Transformer Engine's NVFP4 cast, rounding each value with `cast`."""
    elem, B = MX_FORMATS[fmt]
    f = FORMATS[elem]
    s_g = torch.tensor(x.abs().max().item() / (6 * 448)).item() if fmt == "nvfp4" else 1.0   # float32 s_g
    s_g = s_g or 1.0
    P, scales = torch.zeros_like(x), torch.zeros(x.shape[0], x.shape[1] // B)
    for n in range(x.shape[0]):
        for b in range(x.shape[1] // B):
            V = x[n, b * B:(b + 1) * B].double()
            amax = V.abs().max().item()
            if fmt == "nvfp4":
                scale = cast(torch.tensor([amax / (6 * s_g)]), "e4m3").item()
                divisor = scale * s_g
            else:
                E = math.floor(math.log2(amax)) - f.emax if amax > 0 else -127
                scale = divisor = 2.0 ** max(-127, min(127, E))
            scales[n, b] = scale
            if divisor > 0:
                P[n, b * B:(b + 1) * B] = cast(V / divisor, elem).clamp(-f.max_finite, f.max_finite)
    return P, scales, s_g


@pytest.mark.parametrize("fmt", list(MX_FORMATS))
def test_quantize_mx_is_the_block_by_block_reference(fmt):
    x = _weights()
    t = quantize_mx(x, fmt)
    P, scales, s_g = _reference(x, fmt)
    assert torch.equal(t.elements, P) and torch.equal(t.scales, scales) and t.global_scale.item() == s_g
    assert torch.equal(t.dequantize(), (P.double() * scales.double().repeat_interleave(t.block, 1) * s_g).float())


@pytest.mark.parametrize("fmt", MX)
def test_the_shared_scale_is_torchs_e8m0(fmt):
    """E8M0 codes E + 127, read back by torch.float8_e8m0fnu, and torch's own cast of X to it; the all-zero block
    gets the smallest scale 2^−127 (code 0), tiny blocks are clamped to it."""
    x = torch.cat([_weights(), torch.full((1, 64), 1e-44)])
    t = quantize_mx(x, fmt)
    codes = t.scale_codes()
    assert codes.dtype == torch.uint8 and torch.equal(codes.view(torch.float8_e8m0fnu).float(), t.scales)
    assert torch.equal(t.scales.to(torch.float8_e8m0fnu).view(torch.uint8), codes)
    assert codes[0, 0] == 0 and (codes[-1] == 0).all() and t.elements[0, :32].eq(0).all()


@pytest.mark.parametrize("fmt", MX)
def test_values_on_the_grid_come_back_exactly(fmt):
    """x = X · P with P values of the element format and X = 2^E per block, each block holding one value of the
    top binade (so that floor(log2 amax) − emax = E): quantize_mx gives back P, X and x bit for bit."""
    f = FORMATS[MX_FORMATS[fmt][0]]
    g = torch.Generator().manual_seed(1)
    values = torch.unique(cast(torch.linspace(-f.max_finite, f.max_finite, 4001), MX_FORMATS[fmt][0]))
    P = values[torch.randint(0, len(values), (4, 128), generator=g)]
    P[:, ::32] = 2.0 ** f.emax
    X = torch.exp2(torch.randint(-100, 100, (4, 4), generator=g).float())
    x = (P * X.repeat_interleave(32, dim=1)).float()
    t = quantize_mx(x, fmt)
    assert torch.equal(t.elements, P) and torch.equal(t.scales, X) and torch.equal(t.dequantize(), x)


def test_nvfp4_values_on_the_grid_come_back_exactly():
    """x = P · s_b · s_g with E4M3 block scales s_b (448 in one block: s_g = amax / 2688 = 2^−3) and one ±6 per
    block."""
    g = torch.Generator().manual_seed(2)
    P = cast(torch.randn(4, 64, generator=g) * 3, "e2m1")
    P[:, ::16] = 6.0
    s_b = cast(torch.rand(4, 4, generator=g) * 400 + 0.01, "e4m3")
    s_b[0, 0] = 448.0
    x = P * s_b.repeat_interleave(16, dim=1) * 2.0 ** -3
    t = quantize_mx(x, "nvfp4")
    assert t.global_scale.item() == 2.0 ** -3 and torch.equal(t.scales, s_b)
    assert torch.equal(t.elements, P) and torch.equal(t.dequantize(), x)


@pytest.mark.parametrize("fmt", list(MX_FORMATS))
def test_the_error_is_at_most_half_a_step_of_the_blocks_grid_or_saturation(fmt):
    """|x − x̂| ≤ q/2 · S with S the block's X (or s_b · s_g) and q the element grid's step at |x| / S; a value
    whose |x| / S is past the largest element comes back as ±largest · S. An NVFP4 block whose s_b rounds to 0
    (amax / (6 · s_g) ≤ 2^−10, half E4M3's smallest step) comes back as 0. MX puts every block's amax / X in
    [2^emax, 2^(emax+1))."""
    x = _weights(8, 128, seed=3)
    t = quantize_mx(x, fmt)
    f = FORMATS[t.element_format]
    S = (t.scales.double() * t.global_scale.double()).repeat_interleave(t.block, dim=1)
    flushed = S == 0
    v = x.double() / torch.where(flushed, 1.0, S)
    k = torch.floor(torch.log2(v.abs().clamp(min=1e-300))).clamp(min=f.min_normal_exponent)
    q = torch.exp2(k - f.mantissa_bits)
    err = (x.double() - t.dequantize().double()).abs()
    inside, saturated = ~flushed & (v.abs() <= f.max_finite), ~flushed & (v.abs() > f.max_finite)
    assert (err[inside] <= q[inside] / 2 * S[inside]).all()
    assert torch.equal(t.elements[saturated].abs(), torch.full_like(t.elements[saturated], f.max_finite))
    assert (t.elements[flushed] == 0).all() and (x[flushed].abs() <= 2.0 ** -10 * 6 * t.global_scale).all()
    assert flushed.any() == (fmt == "nvfp4") and saturated.any()
    if fmt != "nvfp4":
        top = (x.abs().reshape(8, -1, 32).amax(-1) / t.scales)[x.abs().reshape(8, -1, 32).amax(-1) > 0]
        assert ((top >= 2.0 ** f.emax) & (top < 2.0 ** (f.emax + 1))).all()


def test_e5m2_elements_saturate_instead_of_overflowing():
    """amax = 1.99 gives X = 2^(0 − 15) and 1.99 / X = 65,208 (E5M2 would round it to inf): clamped to 57,344."""
    t = quantize_mx(torch.tensor([1.99] + [0.0] * 31), "mxfp8_e5m2")
    assert t.elements[0].item() == 57344.0 and t.dequantize()[0].item() == 1.75


@pytest.mark.parametrize("fmt", list(MX_FORMATS))
def test_an_all_zero_tensor_stays_zero(fmt):
    t = quantize_mx(torch.zeros(2, 64), fmt)
    assert torch.equal(t.dequantize(), torch.zeros(2, 64)) and t.global_scale.item() == 1.0
    assert (t.scales == (0.0 if fmt == "nvfp4" else 2.0 ** -127)).all()


@pytest.mark.parametrize("fmt, bits", [("mxfp8_e4m3", 8.25), ("mxfp8_e5m2", 8.25), ("mxfp6_e3m2", 6.25),
                                       ("mxfp6_e2m3", 6.25), ("mxfp4", 4.25), ("nvfp4", 4.5 + 32 / 8192)])
def test_bytes_count_elements_scales_and_the_global_scale(fmt, bits):
    t = quantize_mx(_weights(64, 128), fmt)
    assert t.bits_per_element == bits
    element_bits = FORMATS[t.element_format].bits
    assert t.nbytes == 64 * 128 * element_bits // 8 + 64 * 128 // t.block + (4 if fmt == "nvfp4" else 0)


def test_nvfp4_per_row_global_scales_are_per_token():
    """With global_per_row each row has its own s_g (4 bytes each) and quantizes as it would alone."""
    x = _weights(6, 64, seed=4)
    t = quantize_mx(x, "nvfp4", global_per_row=True)
    assert t.global_scale.shape == (6,) and t.nbytes == 6 * 64 // 2 + 6 * 4 + 6 * 4
    for n in range(6):
        alone = quantize_mx(x[n:n + 1], "nvfp4")
        assert torch.equal(t.dequantize()[n], alone.dequantize()[0]) and t.global_scale[n] == alone.global_scale


@pytest.mark.parametrize("fmt, scale_format", [("mxfp4", "e8m0"), ("nvfp4", "e4m3")])
def test_fp4_weight_is_the_storage_layout_of_the_tensor(fmt, scale_format):
    t = quantize_mx(_weights(8, 64, seed=5), fmt)
    packed, scales, s_g = fp4_weight(t)
    assert packed.shape == (8, 32) and packed.dtype == scales.dtype == torch.uint8
    assert scales.shape == (8, 64 // t.block) and isinstance(s_g, float) and (s_g == 1.0) == (fmt == "mxfp4")
    assert torch.equal(dequantize_fp4(packed, scales, s_g, scale_format), t.dequantize())
    assert torch.equal(packed[:, 0] & 0xF, e2m1_codes(t.elements[:, 0]))             # column 0: the low nibble
    assert torch.equal(packed[:, 0] >> 4, e2m1_codes(t.elements[:, 1]))
    assert torch.equal(unpack_fp4(packed), e2m1_codes(t.elements))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_e4m3"])
def test_mx_quantize_model_puts_the_format_into_every_decoder_linear(fmt):
    model, original = tiny_gpt(d_ff=64), tiny_gpt(d_ff=64)
    quantized, nbytes = mx_quantize_model(model, fmt)
    assert quantized is model
    expected = 0
    for name in decoder_linear_names(model):
        t = quantize_mx(original.get_submodule(name).weight, fmt)
        assert torch.equal(model.get_submodule(name).weight, t.dequantize())
        expected += t.nbytes
    assert nbytes == expected
    assert torch.equal(model.lm_head.weight, original.lm_head.weight)                  # lm_head stays


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_the_activation_path_quantizes_each_linears_input_per_token(fmt):
    model, _ = mx_quantize_model(tiny_gpt(d_ff=64), fmt, activations=True)
    q_proj = model.layers[0].attn.q_proj
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(6))
    x_hat = quantize_mx(x, fmt, global_per_row=fmt == "nvfp4").dequantize()
    assert not torch.equal(x_hat, x) and torch.equal(q_proj(x), F.linear(x_hat, q_proj.weight, q_proj.bias))
    ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(7))
    weight_only, _ = mx_quantize_model(tiny_gpt(d_ff=64), fmt)
    with torch.no_grad():
        both = model(ids)
        assert not torch.allclose(both, weight_only(ids))
        assert torch.allclose(both[1:], model(ids[1:]), rtol=0, atol=1e-5)            # no batch dependence


def test_a_refused_model_is_left_as_it_was():
    """The tiny GPT's down_proj reads 48 features, no multiple of 32: refused before any linear changes."""
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"down_proj\.in_features=48"):
        mx_quantize_model(model, "mxfp4", activations=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())
