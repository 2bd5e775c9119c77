"""lab.params.counting and lab.params.memory against closed forms, transformers and measured storage."""

import json

import pytest
import torch

from lab.models.gpt import GPT, GPTConfig
from lab.models.pretrained import LM_DIR, gpt_config_from_llama, load_pretrained_encoder, load_pretrained_lm
from lab.params.counting import (bytes_per_dtype, categorize, count_parameters, dtype_bytes, gpt_param_count,
                                 model_bytes, parameter_table, plot_parameter_breakdown)
from lab.params.measured_memory import (cache_nbytes, measure_decode_memory_cuda, measure_training_memory_cpu,
                                        measure_training_memory_cuda)
from lab.params.memory import (activation_bytes, gpt3_layer_activation_bytes, inference_memory, kv_cache_bytes,
                               llama_layer_activation_bytes, training_memory, training_peak_bytes)

CONFIGS = [
    GPTConfig(vocab_size=512, context_length=32, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=96),
    GPTConfig(vocab_size=300, context_length=64, d_model=32, n_layer=3, n_head=2, n_kv_head=1, d_ff=80,
              tie_embeddings=False),
    GPTConfig(vocab_size=256, context_length=16, d_model=48, n_layer=1, n_head=6, n_kv_head=6, d_ff=128),
]
needs_lm = pytest.mark.skipif(not (LM_DIR / "model.safetensors").exists(), reason="no pretrained LM checkpoint")


def _model(cfg):
    torch.manual_seed(0)
    return GPT(cfg)


# ---------------------------------------------------------------- counting
@pytest.mark.parametrize("cfg", CONFIGS)
def test_closed_form_equals_counted_and_categories(cfg):
    model = _model(cfg)
    c = count_parameters(model, by="category")
    assert gpt_param_count(cfg) == c["total"] == sum(p.numel() for p in model.parameters())
    V, C, L, F, D = cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.d_ff, cfg.head_dim
    expected = {"embeddings": V * C, "attention": L * (2 * C * cfg.n_head * D + 2 * C * cfg.n_kv_head * D),
                "mlp": L * 3 * C * F, "norm": L * 2 * C + C}
    if not cfg.tie_embeddings:
        expected["head"] = V * C
    assert c["counts"] == expected
    assert c["shared"] == ({"lm_head.weight": "embed_tokens.weight"} if cfg.tie_embeddings else {})
    for by in ("module", "dtype", "tensor"):
        assert sum(count_parameters(model, by)["counts"].values()) == c["total"]


def test_dtype_bytes_and_model_bytes():
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.int64,
                  torch.float8_e4m3fn, torch.bool):
        assert dtype_bytes(dtype) == torch.empty(0, dtype=dtype).element_size()
    assert [r["bytes"] for r in bytes_per_dtype((torch.float32, torch.bfloat16))] == [4, 2]
    model = _model(CONFIGS[0])
    model.layers[0].mlp.to(torch.bfloat16)
    by_dtype = count_parameters(model, by="dtype")
    mlp = 3 * 64 * 96
    assert by_dtype["counts"] == {"float32": gpt_param_count(CONFIGS[0]) - mlp, "bfloat16": mlp}
    n = by_dtype["total"]
    assert model_bytes(model) == 4 * (n - mlp) + 2 * mlp == sum(by_dtype["bytes"].values())
    assert model_bytes(model, torch.float16) == 2 * n


def test_categorize_names_from_three_codebases():
    assert categorize("model.layers.3.self_attn.k_proj.weight") == "attention"
    assert categorize("model.layers.3.post_attention_layernorm.weight") == "norm"
    assert categorize("encoder.layer.0.attention.output.dense.weight") == "attention"
    assert categorize("encoder.layer.0.output.dense.weight") == "mlp"
    assert categorize("encoder.layer.0.attention.output.LayerNorm.bias") == "norm"
    assert categorize("embeddings.position_embeddings.weight") == "embeddings"
    assert categorize("lm_head.weight") == "head"


@needs_lm
def test_pretrained_lm_counts_agree_between_lab_and_transformers():
    hf = load_pretrained_lm("transformers")
    lab = load_pretrained_lm("lab")
    c_hf, c_lab = count_parameters(hf, "category"), count_parameters(lab, "category")
    assert c_hf["counts"] == c_lab["counts"]
    assert c_hf["total"] == gpt_param_count(gpt_config_from_llama(hf.config)) == hf.num_parameters()
    assert c_hf["shared"] == {"lm_head.weight": "model.embed_tokens.weight"}
    rows = parameter_table(hf, "category")
    assert sum(r["fraction"] for r in rows) == pytest.approx(1.0)
    ax = plot_parameter_breakdown(hf, "category")
    assert sorted(b.get_width() for b in ax.patches) == pytest.approx(sorted(n / 1e6 for n in c_hf["counts"].values()))


def test_bert_encoder_categories():
    bert, _ = load_pretrained_encoder()
    c = count_parameters(bert, "category")
    cfg = bert.config
    assert c["total"] == sum(p.numel() for p in bert.parameters())
    assert "other" not in c["counts"]
    H = cfg.hidden_size
    assert c["counts"]["embeddings"] == H * (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size)
    assert c["counts"]["attention"] == cfg.num_hidden_layers * 4 * (H * H + H)
    assert c["counts"]["mlp"] == cfg.num_hidden_layers * (2 * H * cfg.intermediate_size + cfg.intermediate_size + H)


def test_counting_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"by='layer' is not allowed.*module"):
        count_parameters(_model(CONFIGS[0]), by="layer")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        count_parameters("gpt")
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        dtype_bytes("fp16")
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        gpt_param_count({"d_model": 8})


# ---------------------------------------------------------------- training memory model
def test_bytes_per_parameter_table():
    n = 1000
    per_param = {(o, p): training_memory(n, o, p)["total"] / n
                 for o in ("adam", "sgd", "sgd-momentum") for p in ("fp32", "bf16-mixed", "bf16")}
    assert per_param[("adam", "bf16-mixed")] == 16 == per_param[("adam", "fp32")]
    assert per_param[("adam", "bf16")] == 8
    assert per_param[("sgd", "fp32")] == 8 and per_param[("sgd-momentum", "fp32")] == 12
    m = training_memory(n, "adamw", "fp16-mixed")
    assert (m["weights"], m["gradients"], m["master_weights"], m["optimizer_states"]) == (2 * n, 2 * n, 4 * n, 8 * n)
    # ZeRO paper, section 3.1: a 7.5B-parameter model with mixed-precision Adam needs 120 GB
    assert training_memory(7_500_000_000, "adam", "fp16-mixed")["total"] == 120 * 10**9
    assert training_memory(10, activations_bytes=7)["total"] == 167


def test_training_memory_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"optimizer='adagrad' is not allowed.*adam"):
        training_memory(10, optimizer="adagrad")
    with pytest.raises(ValueError, match=r"precision='fp8' is not allowed.*bf16-mixed"):
        training_memory(10, precision="fp8")
    with pytest.raises(ValueError, match=r"n_params=-1 is out of range; allowed: \[0, inf\)"):
        training_memory(-1)
    with pytest.raises(ValueError, match="config, batch and seq_len must be given together"):
        training_memory(10, config=CONFIGS[0])
    with pytest.raises(ValueError, match=r"batch=0 is out of range; allowed: \[1, inf\)"):
        activation_bytes(CONFIGS[0], 0, 4)
    with pytest.raises(ValueError, match=r"seq_len=33 is not allowed.*context_length=32"):
        activation_bytes(CONFIGS[0], 1, 33)
    with pytest.raises(ValueError, match=r"dtype='int3' is not allowed"):
        inference_memory(CONFIGS[0], 1, 4, "int3")


@pytest.mark.parametrize("cfg,batch,seq_len", [(CONFIGS[0], 2, 16), (CONFIGS[1], 3, 20), (CONFIGS[2], 2, 16)])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd-momentum"])
def test_training_memory_matches_measured_storage_fp32(cfg, batch, seq_len, optimizer):
    measured = measure_training_memory_cpu(_model(cfg), batch, seq_len, optimizer, "fp32")
    predicted = training_memory(gpt_param_count(cfg), optimizer, "fp32", config=cfg, batch=batch, seq_len=seq_len)
    for key in ("weights", "gradients", "master_weights", "optimizer_states"):
        assert measured[key] == predicted[key], key
    # the spec asks for 10%; on torch 2.13 the saved-tensor formula is exact, so hold it to 1%
    assert measured["activations"] == pytest.approx(predicted["activations"], rel=0.01)
    assert measured["total"] == pytest.approx(predicted["total"], rel=0.01)


@pytest.mark.parametrize("cfg,batch,seq_len", [(CONFIGS[0], 2, 16), (CONFIGS[1], 3, 20)])
def test_training_memory_matches_measured_storage_bf16_autocast(cfg, batch, seq_len):
    measured = measure_training_memory_cpu(_model(cfg), batch, seq_len, "adamw", "bf16-mixed")
    predicted = training_memory(gpt_param_count(cfg), "adamw", "bf16-mixed", config=cfg, batch=batch, seq_len=seq_len)
    # autocast keeps fp32 weights and grads (4 + 4) where ZeRO keeps 2 + 2 + a 4-byte master copy
    assert measured["weights"] + measured["gradients"] == (predicted["weights"] + predicted["gradients"]
                                                           + predicted["master_weights"])
    assert measured["optimizer_states"] == predicted["optimizer_states"]
    assert measured["activations"] == pytest.approx(predicted["activations"], rel=0.01)


@pytest.mark.parametrize("optimizer", ["adafactor", "adam8bit"])
def test_shaped_optimizer_state_equals_measured_storage(optimizer):
    from lab.params.counting import unique_parameters

    cfg = CONFIGS[0]
    model = _model(cfg)
    shapes = [tuple(p.shape) for _, p in unique_parameters(model)[0]]
    measured = measure_training_memory_cpu(model, 2, 16, optimizer, "fp32")
    predicted = training_memory(gpt_param_count(cfg), optimizer, "fp32", config=cfg, batch=2, seq_len=16,
                                shapes=shapes)
    assert measured["optimizer_states"] == predicted["optimizer_states"]
    assert predicted["optimizer_states"] < training_memory(gpt_param_count(cfg), "adamw", "fp32")["optimizer_states"]
    with pytest.raises(ValueError, match="needs the parameter shapes"):
        training_memory(gpt_param_count(cfg), optimizer, "fp32")
    with pytest.raises(ValueError, match="must agree"):
        training_memory(gpt_param_count(cfg) + 1, optimizer, "fp32", shapes=shapes)


# ---------------------------------------------------------------- inference memory
def test_16bit_layer_activation_counts_of_a_7b_layer():
    """Korthikanti et al.'s GPT-3 count, with and without dropout, and the Llama count, at C = 4096, H = 32,
    T = 4096, B = 1 (the paper's worked size): 34 + 5·H·T/C = 194 bytes per token and channel."""
    cfg = GPTConfig(vocab_size=32000, context_length=4096, d_model=4096, n_layer=32, n_head=32, n_kv_head=32,
                    d_ff=11008, tie_embeddings=False)
    assert gpt3_layer_activation_bytes(cfg, 1, 4096) == 4096 * 4096 * 194 == 3_254_779_904
    assert gpt3_layer_activation_bytes(cfg, 1, 4096, dropout=False) == 4096 * 4096 * (32 + 2 * 32)
    assert gpt3_layer_activation_bytes(cfg, 2, 4096) == 2 * gpt3_layer_activation_bytes(cfg, 1, 4096)
    per_token = 2 * (8 * 4096 + 4 * 11008)                       # the eight C-wide and four F-wide tensors
    explicit, fused = llama_layer_activation_bytes(cfg, 1, 4096), llama_layer_activation_bytes(cfg, 1, 4096, True)
    assert explicit == 4096 * per_token + 2 * 32 * 4096 ** 2    # + the softmax output, H·T² elements
    assert fused == 4096 * per_token + 4 * 32 * 4096             # + an fp32 log-sum-exp per head and position
    assert llama_layer_activation_bytes(cfg, 3, 512, True) == 3 * llama_layer_activation_bytes(cfg, 1, 512, True)
    with pytest.raises(TypeError, match="config must be a lab.models.gpt.GPTConfig"):
        llama_layer_activation_bytes("7b", 1, 4096)
    with pytest.raises(ValueError, match="seq_len=0 is out of range"):
        gpt3_layer_activation_bytes(cfg, 1, 0)


def test_kv_cache_against_a_hand_sized_tensor():
    cfg = CONFIGS[0]
    for dtype in (torch.float32, torch.bfloat16, "fp16"):
        dt = {"fp16": torch.float16}.get(dtype, dtype)
        cache = torch.empty(cfg.n_layer, 2, 3, cfg.n_kv_head, 17, cfg.head_dim, dtype=dt)  # (L, k/v, B, H_kv, T, D)
        mem = inference_memory(cfg, 3, 17, dtype)
        assert mem["kv_cache"] == cache.nbytes == kv_cache_bytes(cfg, 3, 17, dtype)
        assert mem["weights"] == model_bytes(_model(cfg), dt)
        assert mem["total"] == mem["weights"] + mem["kv_cache"]


@needs_lm
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_against_transformers_dynamic_cache(dtype):
    hf = load_pretrained_lm("transformers", dtype=dtype)
    cfg = gpt_config_from_llama(hf.config)
    B, T = 2, 11
    with torch.no_grad():
        out = hf(torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(0)), use_cache=True)
    mem = inference_memory(cfg, B, T, dtype)
    assert cache_nbytes(out.past_key_values) == mem["kv_cache"]
    assert model_bytes(hf) == mem["weights"]


# ---------------------------------------------------------------- GPU checks (run on a GPU machine)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_cuda_peak_memory_within_10_percent(repo_root):
    cfg = GPTConfig()
    records = []
    for precision, batch, seq_len in (("bf16-mixed", 8, 256), ("fp32", 4, 256)):
        measured = measure_training_memory_cuda(_model(cfg), batch, seq_len, "adamw", precision)
        predicted = training_peak_bytes(cfg, batch, seq_len, "adamw", precision)
        records.append({"kind": "train", "precision": precision, "batch": batch, "seq_len": seq_len,
                        "measured_peak": measured["peak"], "predicted_peak": predicted,
                        "cublas_workspace": measured["cublas_workspace"], "ratio": measured["peak"] / predicted})
    hf = load_pretrained_lm("transformers")
    hf_cfg = gpt_config_from_llama(hf.config)
    for batch, seq_len in ((64, 64), (256, 64)):
        measured = measure_decode_memory_cuda(hf, batch, seq_len, torch.bfloat16)
        predicted = inference_memory(hf_cfg, batch, seq_len, torch.bfloat16)
        assert measured["kv_cache"] == predicted["kv_cache"]
        records.append({"kind": "decode", "batch": batch, "seq_len": seq_len, "measured_peak": measured["peak"],
                        "predicted_peak": predicted["total"], "cublas_workspace": measured["cublas_workspace"],
                        "ratio": measured["peak"] / predicted["total"]})
    out = repo_root / "results" / "params_memory_cuda.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "records": records}, indent=1))
    for r in records:
        assert r["cublas_workspace"] > 0, r          # the workspace is measured, not assumed
        assert r["ratio"] == pytest.approx(1.0, abs=0.10), r
