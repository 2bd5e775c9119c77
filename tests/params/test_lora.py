"""lab.params.lora: LoRA and QLoRA against the formula in float64, merging, freezing, memory, training."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lab.models.gpt import GPTConfig
from lab.models.next_token import lm_loss
from lab.params.counting import gpt_param_count
from lab.params.lora import (FrozenInt4Linear, LoRALinear, add_lora, decoder_linear_shapes, lora_memory,
                             lora_training_memory, merge_logit_error, merge_lora, trainable_parameters)
from lab.params.measured_memory import measure_training_memory_cpu
from lab.quant.affine import dequantize
from lab.quant.linear import Int4Linear, int4_model
from lab.quant.model import quantize_model

R, ALPHA, G = 8, 16.0, 32
QV = ("q_proj", "v_proj")


def _linear(d_in=24, d_out=16, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out, bias=bias)


def _randomize_B(lora: LoRALinear, seed=1):
    with torch.no_grad():
        lora.B.copy_(0.1 * torch.randn(lora.B.shape, generator=torch.Generator().manual_seed(seed)))


def _reference(x, W, b, lora):
    """W x + b + (α/r)·B A x in float64."""
    x, W, A, B = x.double(), W.double(), lora.A.double(), lora.B.double()
    y = x @ W.T + lora.alpha / lora.r * (x @ A.T) @ B.T
    return y if b is None else y + b.double()


def _int4_gpt(tiny_gpt):
    """A tiny GPT (d_ff=64: every input width a multiple of g=32) with int4 decoder linears; the report too."""
    model = tiny_gpt(d_ff=64)
    report = quantize_model(model, "rtn", 4, G, progress=False)
    return int4_model(model, report), report


# ---------------------------------------------------------------- one layer
def test_fresh_lora_equals_base_and_is_initialised_as_in_the_paper():
    lin = _linear()
    lora = LoRALinear(lin, 4, 8.0)
    x = torch.randn(3, 5, 24)
    assert torch.equal(lora(x), lin(x))                              # B = 0
    assert not lin.weight.requires_grad and not lin.bias.requires_grad
    assert lora.A.requires_grad and lora.B.requires_grad
    assert lora.A.shape == (4, 24) and lora.B.shape == (16, 4) and lora.A.dtype == torch.float32
    assert torch.count_nonzero(lora.B) == 0
    bound = 1 / math.sqrt(24)                            # kaiming_uniform_(a=√5): U(−1/√d_in, 1/√d_in)
    assert lora.A.abs().max() <= bound and lora.A.std() > bound / 3
    assert lora.scaling == 2.0


@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_formula_in_float64(bias):
    lin = _linear(bias=bias)
    lora = LoRALinear(lin, 4, 8.0)
    _randomize_B(lora)
    x = torch.randn(2, 7, 24)
    expected = _reference(x, lin.weight, lin.bias, lora)
    assert (lora(x).double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize("bias", [True, False])
def test_merge_equals_unmerged(bias):
    lora = LoRALinear(_linear(bias=bias), 4, 8.0)
    _randomize_B(lora)
    merged = lora.merge()
    x = torch.randn(4, 6, 24)
    assert type(merged) is nn.Linear and merged.weight.dtype == torch.float32
    assert (bias and merged.bias is not None) or (not bias and merged.bias is None)
    assert not any(p.requires_grad for p in merged.parameters())
    with torch.no_grad():
        assert (merged(x) - lora(x)).abs().max() <= 1e-6
        torch.testing.assert_close(merged.weight, lora.base.weight + lora.scaling * lora.B @ lora.A)


def test_merge_keeps_a_bf16_base_in_bf16():
    lora = LoRALinear(_linear().to(torch.bfloat16), 4, 8.0)
    _randomize_B(lora)
    x = torch.randn(3, 24, dtype=torch.bfloat16)
    assert lora(x).dtype == torch.bfloat16 and lora.A.dtype == torch.float32
    merged = lora.merge()
    assert merged.weight.dtype == torch.bfloat16
    torch.testing.assert_close(merged(x), lora(x), atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------- a model
def test_add_lora_freezes_everything_else_and_gradients_reach_only_A_and_B(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    before = model(idx)
    names = add_lora(model, R, ALPHA, QV)
    assert names == [f"layers.{i}.attn.{p}" for i in range(2) for p in QV]
    loras = [model.get_submodule(n) for n in names]
    assert all(isinstance(m, LoRALinear) for m in loras)
    assert trainable_parameters(model) == sum(R * (m.in_features + m.out_features) for m in loras) == 1792
    assert torch.equal(model(idx), before)                           # B = 0: the model is unchanged
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{ab}" for n in names for ab in "AB"}
    lm_loss(model(idx[:, :-1]), idx[:, 1:]).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    assert all(m.B.grad.abs().max() > 0 for m in loras)             # ∂L/∂A = 0 at B = 0, ∂L/∂B is not


def test_targets_are_name_suffixes(tiny_gpt):
    assert add_lora(tiny_gpt(), R, ALPHA, ["attn.q_proj"]) == ["layers.0.attn.q_proj", "layers.1.attn.q_proj"]
    assert add_lora(tiny_gpt(), R, ALPHA, ("layers.1.mlp.down_proj",)) == ["layers.1.mlp.down_proj"]
    assert len(add_lora(tiny_gpt(), 4, ALPHA, ("q_proj", "k_proj", "v_proj", "o_proj"))) == 8


@pytest.mark.parametrize("base", ["float32", "int4"])
def test_a_few_lora_steps_reduce_the_loss_and_merging_keeps_the_model(tiny_gpt, base):
    model = tiny_gpt(d_ff=64) if base == "float32" else _int4_gpt(tiny_gpt)[0]
    add_lora(model, R, ALPHA, QV)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-2)
    batch = torch.randint(0, model.config.vocab_size, (4, 17), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(25):
        loss = lm_loss(model(batch[:, :-1]), batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses                    # random tokens: ln 61 ≈ 4.11 → ≈ 3.8
    with torch.no_grad():
        trained = model(batch[:, :-1])
        assert len(merge_lora(model)) == 4
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        assert trainable_parameters(model) == 0
        assert (model(batch[:, :-1]) - trained).abs().max() < 1e-5


@pytest.mark.parametrize("base", ["float32", "int4"])
def test_merge_logit_error_is_float32_rounding_and_leaves_the_model_unchanged(tiny_gpt, base):
    model = tiny_gpt(d_ff=64) if base == "float32" else _int4_gpt(tiny_gpt)[0]
    names = add_lora(model, R, ALPHA, QV)
    for i, name in enumerate(names):
        _randomize_B(model.get_submodule(name), seed=i)
    idx = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(idx)
    assert 0 <= merge_logit_error(model, idx) <= 1e-5
    assert all(isinstance(model.get_submodule(name), LoRALinear) for name in names)
    with torch.no_grad():
        assert torch.equal(model(idx), before)
    with pytest.raises(ValueError, match="no LoRALinear to merge"):
        merge_logit_error(tiny_gpt(), idx)


# ---------------------------------------------------------------- QLoRA
def test_qlora_forward_and_backward_equal_the_dequantized_linear_plus_lora(tiny_gpt):
    model, report = _int4_gpt(tiny_gpt)
    base = model.layers[0].attn.q_proj
    assert isinstance(base, Int4Linear)
    lora = LoRALinear(base, R, ALPHA)
    _randomize_B(lora)
    W_hat = dequantize(report["layers.0.attn.q_proj"]["qtensor"])
    x = torch.randn(2, 5, 32, requires_grad=True)
    y = lora(x)
    assert (y.double() - _reference(x.detach(), W_hat, None, lora)).abs().max() < 1e-5
    g = torch.randn_like(y)
    y.backward(g)
    x_ref = x.detach().clone().requires_grad_()
    A, B = lora.A.detach().clone().requires_grad_(), lora.B.detach().clone().requires_grad_()
    (F.linear(x_ref, W_hat) + lora.scaling * F.linear(F.linear(x_ref, A), B)).backward(g)
    for got, want in ((x.grad, x_ref.grad), (lora.A.grad, A.grad), (lora.B.grad, B.grad)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (lora.merge()(x) - lora(x)).abs().max() <= 1e-6


def test_qlora_keeps_no_float_copy_of_the_weight(tiny_gpt):
    lora = LoRALinear(_int4_gpt(tiny_gpt)[0].layers[0].mlp.down_proj, R, ALPHA)  # W: (32, 64)
    assert set(lora.state_dict()) == {"A", "B", "base.packed", "base.scales", "base.zeros"}
    assert lora.state_dict()["base.packed"].dtype == torch.uint8
    saved = []
    x = torch.randn(3, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lora(x).sum().backward()
    assert saved and all(t.numel() < 32 * 64 for t in saved)       # x, A x, A, B: never a (32, 64) Ŵ


def test_qlora_model_trains_as_lora_over_the_dequantized_weights_and_saves_the_same(tiny_gpt):
    qlora, report = _int4_gpt(tiny_gpt)
    lora = tiny_gpt(d_ff=64)
    with torch.no_grad():
        for name, entry in report.items():
            lora.get_submodule(name).weight.copy_(dequantize(entry["qtensor"]))
    for model in (qlora, lora):
        torch.manual_seed(0)                                         # the same A in both
        for i, name in enumerate(add_lora(model, R, ALPHA, QV)):
            _randomize_B(model.get_submodule(name), seed=i)
    # every int4 linear, the MLP's without LoRA too, recomputes Ŵ in backward
    assert sum(type(m) is FrozenInt4Linear for m in qlora.modules()) == 14 == len(report)
    assert not any(type(m) is Int4Linear for m in qlora.modules())
    idx = torch.randint(0, qlora.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (qlora, lora):
        lm_loss(model(idx[:, :-1]), idx[:, 1:]).backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the same saved tensors as the float32 base: no dequantized Ŵ is kept for backward
    saved = [measure_training_memory_cpu(m, 2, 12)["activations"] for m in (qlora, lora, tiny_gpt(d_ff=64))]
    assert saved[0] == saved[1] < saved[2], saved


def test_lora_memory_is_exact_and_qlora_is_smaller_than_a_bf16_base(tiny_gpt):
    bf16 = tiny_gpt(d_ff=64).to(torch.bfloat16)
    add_lora(bf16, R, ALPHA, QV)
    int4 = _int4_gpt(tiny_gpt)[0].to(torch.bfloat16)
    add_lora(int4, R, ALPHA, QV)
    n_train = 1792                                                   # 2 layers × r·((32 + 32) + (32 + 16))
    cfg = bf16.config
    linears = [(m.in_features, m.out_features) for m in int4.modules() if isinstance(m, Int4Linear)]
    other = gpt_param_count(cfg) - sum(k * n for k, n in linears)
    expected_int4 = 2 * other + sum(k * n // 2 + 2 * 2 * (k // G) * n for k, n in linears)
    for model, frozen in ((bf16, 2 * gpt_param_count(cfg)), (int4, expected_int4)):
        m = lora_memory(model)
        assert m == {"frozen": frozen, "trainable": 4 * n_train, "gradients": 4 * n_train,
                     "optimizer": 8 * n_train, "total": frozen + 16 * n_train}
    assert lora_memory(int4)["total"] < lora_memory(bf16)["total"]
    idx = torch.randint(0, cfg.vocab_size, (1, 8))
    assert int4(idx).dtype == torch.bfloat16 and torch.isfinite(int4(idx)).all()


ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEARS = ATTENTION + ("gate_proj", "up_proj", "down_proj")


@pytest.mark.parametrize("targets", [QV, ATTENTION, ALL_LINEARS, ("down_proj", "q_proj")])
def test_lora_training_memory_equals_the_bytes_of_the_built_models(tiny_gpt, targets):
    bf16 = tiny_gpt(d_ff=64).to(torch.bfloat16)
    add_lora(bf16, R, ALPHA, targets)
    int4 = _int4_gpt(tiny_gpt)[0].to(torch.bfloat16)
    add_lora(int4, R, ALPHA, targets)
    cfg = bf16.config
    assert lora_training_memory(cfg, R, targets) == lora_memory(bf16)
    assert lora_training_memory(cfg, R, targets, "int4", G) == lora_memory(int4)
    assert lora_training_memory(cfg, R, targets)["trainable"] == 4 * trainable_parameters(bf16)


def test_decoder_linear_shapes_are_the_modules_of_a_layer(tiny_gpt):
    model = tiny_gpt()
    built = {name.rpartition(".")[2]: (m.in_features, m.out_features)
             for name, m in model.layers[0].named_modules() if isinstance(m, nn.Linear)}
    assert decoder_linear_shapes(model.config) == built


def test_lora_training_memory_of_llama_shapes_by_hand():
    # Llama-2-7B, r = 8 on q and v (the chapter's example): 2·8·8192·32 = 4,194,304 trainable numbers
    llama7 = GPTConfig(vocab_size=32000, context_length=4096, d_model=4096, n_layer=32, n_head=32,
                       n_kv_head=32, d_ff=11008, tie_embeddings=False)
    m = lora_training_memory(llama7, 8, QV)
    assert m["trainable"] == 4 * 4_194_304 and m["frozen"] == 2 * 6_738_415_616
    # Llama-2-70B, r = 16 on q, k, v, o: 80·16·(2·8192 + 2·(8192 + 1024) + 2·8192) = 65,536,000
    llama70 = GPTConfig(vocab_size=32000, context_length=4096, d_model=8192, n_layer=80, n_head=64,
                        n_kv_head=8, d_ff=28672, tie_embeddings=False)
    m = lora_training_memory(llama70, 16, ATTENTION, "int4", 64)
    linears = 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672)
    assert m["optimizer"] == 8 * 65_536_000
    assert m["frozen"] == linears * 9 // 16 + 2 * (gpt_param_count(llama70) - linears)   # 0.5 + 4/64


@pytest.mark.parametrize("kwargs, error, match", [
    ({"config": "cfg"}, TypeError, r"config must be a lab.models.gpt.GPTConfig, got str"),
    ({"targets": "q_proj"}, TypeError, r"targets must be an iterable of linear names"),
    ({"targets": ("attn",)}, ValueError, r"targets=\('attn',\) is not allowed; use one or more of"),
    ({"targets": ()}, ValueError, r"targets=\(\) is not allowed"),
    ({"r": 0}, ValueError, r"r=0 is out of range"),
    ({"r": 17}, ValueError, r"r=17 is out of range; allowed: \[1, 16\]"),
    ({"base": "int8"}, ValueError, r"base='int8' is not allowed; use one of \('bf16', 'int4'\)"),
    ({"base": "int4"}, ValueError, r"group_size=None is not allowed with base='int4'"),
    ({"base": "int4", "group_size": 3}, ValueError, r"group_size=3 is not allowed; .*even"),
    ({"base": "int4", "group_size": 128}, ValueError, r"group_size=128 is not allowed; use a divisor"),
    ({"group_size": 32}, ValueError, r"group_size=32 is not allowed with base='bf16'"),
])
def test_lora_training_memory_bad_input(tiny_gpt, kwargs, error, match):
    args = {"config": tiny_gpt(d_ff=64).config, "r": R, "targets": QV, **kwargs}
    with pytest.raises(error, match=match):
        lora_training_memory(**args)


def test_matches_peft(tiny_gpt):
    import peft  # pinned in requirements.txt: the comparison must run, never skip
    ours, theirs = tiny_gpt(), tiny_gpt()
    names = add_lora(ours, R, ALPHA, QV)
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(QV))
    theirs = peft.inject_adapter_in_model(config, theirs)
    with torch.no_grad():
        for i, name in enumerate(names):
            lora, layer = ours.get_submodule(name), theirs.get_submodule(name)
            _randomize_B(lora, seed=i)
            layer.lora_A["default"].weight.copy_(lora.A)
            layer.lora_B["default"].weight.copy_(lora.B)
        idx = torch.randint(0, ours.config.vocab_size, (2, 12))
        torch.testing.assert_close(ours(idx), theirs(idx), atol=1e-5, rtol=0)
        assert (ours(idx) - tiny_gpt()(idx)).abs().max() > 1e-3      # the adapters are active
    assert {n for n, p in theirs.named_parameters() if p.requires_grad} == \
        {f"{n}.lora_{ab}.default.weight" for n in names for ab in "AB"}


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("r, alpha, error, match", [
    (0, 16.0, ValueError, r"r=0 .*\[1, 16\]"), (17, 16.0, ValueError, r"r=17"),
    (2.0, 16.0, TypeError, r"r must be an int"), (True, 16.0, TypeError, r"r must be an int"),
    (4, 0.0, ValueError, r"alpha=0.0 .*\(0.0, inf\)"), (4, -1, ValueError, r"alpha=-1"),
    (4, "16", TypeError, r"alpha must be a real number"), (4, math.inf, ValueError, r"alpha=inf"),
])
def test_bad_rank_or_alpha(r, alpha, error, match):
    with pytest.raises(error, match=match):
        LoRALinear(_linear(), r, alpha)


def test_bad_base():
    with pytest.raises(TypeError, match="base must be an nn.Linear, .*Int4Linear or .*NF4Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(4, 4, 1), 2, 4.0)


@pytest.mark.parametrize("targets, error, match", [
    (("q_prj",), ValueError, r"\['q_prj'\] match no module.*layers.0.attn.q_proj"),
    (("q_proj", "nope"), ValueError, r"\['nope'\] match no module"),
    ("q_proj", TypeError, r"targets must be an iterable of module-name suffixes.*'q_proj'"),
    ((), TypeError, r"targets must hold non-empty strings, got \(\)"),
    ((3,), TypeError, r"targets must hold non-empty strings, got \(3,\)"),
    (("attn",), TypeError, r"'layers.0.attn', a Attention; allowed: nn.Linear, Int4Linear or NF4Linear"),
])
def test_bad_targets_leave_the_model_unchanged(tiny_gpt, targets, error, match):
    model = tiny_gpt()
    with pytest.raises(error, match=match):
        add_lora(model, R, ALPHA, targets)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_bad_rank_in_add_lora_leaves_the_model_unchanged_and_no_double_wrapping(tiny_gpt):
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"r=0"):
        add_lora(model, 0, ALPHA, QV)
    assert all(p.requires_grad for p in model.parameters())
    q, v = model.layers[0].attn.q_proj, model.layers[0].attn.v_proj     # r too large for v_proj only
    r_big = min(q.in_features, q.out_features)
    assert r_big > min(v.in_features, v.out_features)
    with pytest.raises(ValueError, match=rf"r={r_big} is out of range"):
        add_lora(model, r_big, ALPHA, QV)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    add_lora(model, R, ALPHA, QV)
    with pytest.raises(TypeError, match=r"'layers.0.attn.q_proj', a LoRALinear"):
        add_lora(model, R, ALPHA, QV)


def test_bad_models():
    with pytest.raises(ValueError, match="no LoRALinear to merge; call add_lora first"):
        merge_lora(nn.Sequential(nn.Linear(2, 2)))
    for fn in (lambda m: add_lora(m, R, ALPHA), merge_lora, lora_memory, trainable_parameters):
        with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
            fn("model")
