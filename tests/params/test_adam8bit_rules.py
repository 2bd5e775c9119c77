"""`lab.params.Adam8bit`'s 32-bit rule (tensors under ``min_8bit_size``, "optim_bits" 32 groups) and the stable
embedding (`lab.params.stable_embedding`), against fp32 torch.optim.AdamW and bitsandbytes
itself (requirements.txt pins 0.50.2, whose CPU backend steps ``bnb.optim.Adam8bit`` on CPU tensors, as
0.50.0 and later do; skipped where bitsandbytes is not importable)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lab.formats.blockwise import dequantize_blockwise, dynamic_map, quantize_blockwise
from lab.params import Adam8bit, StableEmbedding, adam8bit_param_groups, stable_embedding
from lab.params.adam8bit import adam8bit_state_bytes
from lab.params.measured_memory import optimizer_state_tensors, storage_bytes

ADAMW = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8}   # weight_decay: given every time


def _steps(params: list[nn.Parameter], opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    """``steps`` steps on pseudo-random gradients, N(0, 1) times a scale in [0.1, 1.1), the same for every
    optimizer. (Scales spread over many decades would let an 8-bit v round to 0 under a non-zero m, a step of
    m / ε, with our nearest-code quantizer; bitsandbytes' CPU quantizer never rounds a positive v to 0.)"""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) * (0.1 + torch.rand(p.shape, generator=gen))).to(p.dtype)
        opt.step()


def _pair(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> tuple[nn.Parameter, nn.Parameter]:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    return nn.Parameter(w.clone()), nn.Parameter(w.clone())


@pytest.mark.parametrize("shape", [(4095,), (63, 65), (7,), ()])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_a_tensor_under_min_8bit_size_moves_bit_for_bit_as_adamw(shape, weight_decay):
    ours, ref = _pair(shape)
    opt = Adam8bit([ours], **ADAMW, weight_decay=weight_decay)
    _steps([ours], opt, 30)
    _steps([ref], torch.optim.AdamW([ref], **ADAMW, weight_decay=weight_decay), 30)
    assert torch.equal(ours, ref)
    state = opt.state[ours]
    assert state.keys() == {"step", "m", "v"} and state["step"] == 30
    assert all(state[k].dtype == torch.float32 and state[k].shape == (ours.numel(),) for k in ("m", "v"))


@pytest.mark.parametrize("shape", [(4096,), (64, 64)])
def test_a_tensor_of_min_8bit_size_elements_is_quantized(shape):
    ours, ref = _pair(shape)
    opt = Adam8bit([ours], **ADAMW, weight_decay=0.01)
    _steps([ours], opt, 5)
    _steps([ref], torch.optim.AdamW([ref], **ADAMW, weight_decay=0.01), 5)
    assert opt.state[ours].keys() == {"step", "m_codes", "m_absmax", "v_codes", "v_absmax"}
    assert opt.state[ours]["m_codes"].dtype == torch.uint8
    assert 0 < (ours - ref).abs().max() < 0.05             # 8-bit m, v: near AdamW, not equal


def test_min_8bit_size_zero_quantizes_every_tensor_and_a_group_sets_its_own():
    small, big, ref = nn.Parameter(torch.ones(7)), *_pair((64, 64))
    opt = Adam8bit([{"params": [small]}, {"params": [big], "optim_bits": 32}], **ADAMW, weight_decay=0.01,
                   min_8bit_size=0)
    _steps([small, big], opt, 10)
    _steps([torch.ones(7, requires_grad=True), ref], torch.optim.AdamW([ref], **ADAMW, weight_decay=0.01), 10)
    assert "m_codes" in opt.state[small] and "m" in opt.state[big]
    assert torch.equal(big, ref)                           # 4,096 elements, but an "optim_bits" 32 group
    opt.add_param_group({"params": [nn.Parameter(torch.ones(3))], "min_8bit_size": 4})
    assert [g["min_8bit_size"] for g in opt.param_groups] == [0, 0, 4]


def test_a_bf16_parameter_under_min_8bit_size_keeps_fp32_state_and_takes_adamws_step():
    ours, ref = _pair((40,), torch.bfloat16)
    ref32 = nn.Parameter(ref.detach().float())
    opt = Adam8bit([ours], **ADAMW, weight_decay=0.1)
    _steps([ours], opt, 1)
    _steps([ref32], torch.optim.AdamW([ref32], **ADAMW, weight_decay=0.1), 1)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, ref32.detach().bfloat16())
    assert opt.state[ours]["m"].dtype == torch.float32


SHAPES = [(4095,), (4096,), (64, 64), (8, 512), (5, 3), (), (70, 70)]


@pytest.mark.parametrize("B", [64, 2048])
@pytest.mark.parametrize("min_8bit_size", [0, 4096, 4097, 10 ** 6])
def test_state_bytes_count_the_32bit_rule(B, min_8bit_size):
    params = [nn.Parameter(torch.randn(s)) for s in SHAPES]
    opt = Adam8bit(params, block_size=B, min_8bit_size=min_8bit_size)
    _steps(params, opt, 1)
    assert adam8bit_state_bytes(SHAPES, B, min_8bit_size) == storage_bytes(optimizer_state_tensors(opt))


def test_state_bytes_formula():
    assert adam8bit_state_bytes([(4095,)]) == 8 * 4095                  # fp32 m and v
    assert adam8bit_state_bytes([(4096,)]) == 2 * 4096 + 8 * 2          # codes + one absmax per block, each
    assert adam8bit_state_bytes([(4095,)], min_8bit_size=0) == 2 * 4095 + 8 * 2
    assert adam8bit_state_bytes([()]) == 8
    with pytest.raises(ValueError, match=r"min_8bit_size=-1 is out of range"):
        adam8bit_state_bytes([(4, 4)], min_8bit_size=-1)
    with pytest.raises(TypeError, match=r"min_8bit_size must be an int, got 4096\.0"):
        adam8bit_state_bytes([(4, 4)], min_8bit_size=4096.0)


# ---------------------------------------------------------------- the stable embedding
def test_stable_embedding_layer_is_xavier_then_layernorm():
    torch.manual_seed(0)
    layer = StableEmbedding(300, 40)
    assert isinstance(layer.norm, nn.LayerNorm) and layer.norm.normalized_shape == (40,)
    bound = (6 / (300 + 40)) ** 0.5
    assert layer.weight.abs().max() <= bound and layer.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    out = layer(torch.tensor([[1, 2, 3], [4, 5, 299]]))
    assert out.shape == (2, 3, 40) and out.dtype == torch.float32
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 3), atol=5e-3, rtol=0)   # var / (var + ε)


@pytest.mark.parametrize("tie", [True, False])
def test_stable_embedding_replaces_a_gpts_lookup_and_keeps_its_tie(tiny_gpt, tie):
    model = tiny_gpt(vocab_size=256, tie_embeddings=tie)
    head = model.lm_head.weight
    n_before = model.num_parameters()
    assert stable_embedding(model) is model and isinstance(model.embed_tokens, StableEmbedding)
    assert (model.lm_head.weight is model.embed_tokens.weight) is tie
    assert tie or model.lm_head.weight is head                 # an untied head keeps its own weights
    assert model.embed_tokens.weight.abs().max() <= (6 / (256 + 32)) ** 0.5   # Xavier uniform
    assert model.num_parameters() == n_before + 2 * 32             # the LayerNorm's γ and β
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    assert model(idx).shape == (2, 16, 256)
    with pytest.raises(ValueError, match="already has a StableEmbedding"):
        stable_embedding(model)


@pytest.mark.parametrize("tie", [True, False])
def test_adam8bit_keeps_the_stable_embeddings_state_in_32_bits(tiny_gpt, tie):
    model = stable_embedding(tiny_gpt(vocab_size=256, tie_embeddings=tie))   # E: 256 × 32 = 8,192 elements
    groups = adam8bit_param_groups(model)
    assert [g.get("optim_bits", 8) for g in groups] == [8, 32]
    assert groups[1]["params"] == [model.embed_tokens.weight]
    opt = Adam8bit(groups, lr=1e-3)
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    opt.step()
    kinds = {name: "m" in opt.state[p] for name, p in model.named_parameters()}
    assert kinds["embed_tokens.weight"] and kinds["embed_tokens.norm.weight"]   # override; under 4,096
    assert tie or not kinds["lm_head.weight"]                     # an untied head: 8-bit
    assert opt.state[model.embed_tokens.weight]["m"].dtype == torch.float32


def test_param_groups_leave_out_frozen_parameters_and_empty_groups(tiny_gpt):
    model = tiny_gpt()
    model.embed_tokens.weight.requires_grad_(False)
    groups = adam8bit_param_groups(model)
    assert len(groups) == 1 and all(p.requires_grad for p in groups[0]["params"])


# ---------------------------------------------------------------- against bitsandbytes
@pytest.fixture(scope="module")
def bnb():
    return pytest.importorskip("bitsandbytes")


def test_the_dynamic_maps_are_bitsandbytes_up_to_float32_rounding(bnb):
    """Ours is the float64 map rounded once (within ½ ulp); bitsandbytes computes it in float32 (measured: 1.4e-7
    relative at most, 72 and 100 of the 256 values differ from ours)."""
    eps = torch.finfo(torch.float32).eps
    for signed in (True, False):
        ours, theirs = dynamic_map(signed), bnb.functional.create_dynamic_map(signed=signed)
        exact = dynamic_map(signed, torch.float64)
        assert ((ours.double() - exact).abs() <= eps / 2 * exact.abs()).all()
        assert ((ours - theirs).abs() <= 2 * eps * theirs.abs()).all()


@pytest.mark.parametrize("shape", [(4095,), (4096,), (63, 65), (64, 64), (7,), ()])
def test_the_32bit_rule_is_bitsandbytes(bnb, shape):
    ours, theirs = _pair(shape)
    opt, ref = Adam8bit([ours]), bnb.optim.Adam8bit([theirs])
    _steps([ours], opt, 1)
    _steps([theirs], ref, 1)
    assert ("m" in opt.state[ours]) is (ref.state[theirs]["state1"].dtype == torch.float32)


def test_the_32bit_step_is_bitsandbytes_up_to_rounding(bnb):
    ours, theirs = _pair((4095,))
    _steps([ours], Adam8bit([ours], lr=1e-3, weight_decay=0.01), 100)
    _steps([theirs], bnb.optim.Adam8bit([theirs], lr=1e-3, weight_decay=0.01), 100)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)   # measured 2.4e-7 (0.50.2)


def test_one_8bit_step_from_bitsandbytes_state_is_bitsandbytes_step(bnb):
    """From bitsandbytes' own 8-bit state after 5 steps, one step of each: the parameters agree to rounding,
    the absmax exactly, and where the codes differ ours is the nearest one (bitsandbytes' CPU quantizer looks
    the code up in 65,536 equal bins of [−1, 1], not the nearest: up to one bin, 2/65,535, farther)."""
    theirs = nn.Parameter(0.1 * torch.randn(256, 96, generator=torch.Generator().manual_seed(0)))
    ref = bnb.optim.Adam8bit([theirs], lr=1e-3, weight_decay=0.01)
    _steps([theirs], ref, 5)
    st = ref.state[theirs]
    B = theirs.numel() // st["absmax1"].numel()                   # 256 since bitsandbytes 0.44.0, 2048 before
    ours = nn.Parameter(theirs.detach().clone())
    opt = Adam8bit([ours], lr=1e-3, weight_decay=0.01, block_size=B)
    before = {k: st[k].clone() for k in ("state1", "absmax1", "state2", "absmax2")}
    opt.state[ours] = {"step": st["step"], "m_codes": before["state1"].flatten(), "m_absmax": before["absmax1"],
                       "v_codes": before["state2"].flatten(), "v_absmax": before["absmax2"]}
    _steps([ours], opt, 1, seed=2)
    _steps([theirs], ref, 1, seed=2)
    ulp = torch.finfo(torch.float32).eps * theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=4 * ulp)
    g, (beta1, beta2) = ours.grad, ref.param_groups[0]["betas"]
    for i, (name, beta) in enumerate((("m", beta1), ("v", beta2))):
        code = st[f"qmap{i + 1}"]                                  # bitsandbytes' map: its fp32 state exactly
        x = dequantize_blockwise(before[f"state{i + 1}"].flatten(), before[f"absmax{i + 1}"], code, B, g.shape)
        x = x.mul_(beta).add_(g, alpha=1 - beta) if name == "m" else x.mul_(beta).addcmul_(g, g, value=1 - beta)
        q, absmax = quantize_blockwise(x, code, B)
        assert torch.equal(absmax, st[f"absmax{i + 1}"])
        torch.testing.assert_close(opt.state[ours][f"{name}_absmax"], absmax, rtol=1e-6, atol=0)   # our map
        scaled = x.flatten() / absmax.repeat_interleave(B)
        excess = (scaled - code[st[f"state{i + 1}"].flatten().long()]).abs() - (scaled - code[q.long()]).abs()
        assert excess.min() >= 0 and excess.max() <= 2 / 65535 + 1e-7, name
        assert (q == st[f"state{i + 1}"].flatten()).float().mean() > 0.98, name


def test_an_8bit_trajectory_stays_near_bitsandbytes(bnb):
    """100 steps on the same gradients, block size 256 (bitsandbytes'): ours and bitsandbytes' 8-bit runs are
    closer to each other than either is to fp32 Adam (measured with 0.50.2: ‖ours − bnb‖ / ‖W‖ = 6.8e-5,
    ‖bnb − fp32‖ / ‖W‖ = 2.5e-4, ‖ours − fp32‖ / ‖W‖ = 2.5e-4)."""
    ours, theirs = _pair((256, 96))
    ref32 = nn.Parameter(ours.detach().clone())
    _steps([ours], Adam8bit([ours], lr=1e-3, block_size=256), 100)
    _steps([theirs], bnb.optim.Adam8bit([theirs], lr=1e-3), 100)
    _steps([ref32], torch.optim.Adam([ref32], lr=1e-3), 100)
    assert (ours - theirs).norm() < 0.5 * (theirs - ref32).norm()
